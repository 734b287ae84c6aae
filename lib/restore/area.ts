// The restore/ directory: a writable area where users copy saved trees (`cp -a`, `tar x`).
// Its contents are an AreaTree (lib/restore/areatree.ts): small files in the server's memory,
// large ones in a private backing directory on disk. Each top-level entry restore/NAME also
// has two virtual files:
//   done    write 1 to restore NAME (empty writes, as cp makes, change nothing);
//           `allow-replaced` restores it accepting files replaced since the checkpoint;
//           `lazy` restores it lazily (lib/restore/lazy.ts: the write returns once it runs)
//   status  "saved" | "restoring" | "restoring: WHAT IT WAITS FOR" | "restored PID" | "error: WHY";
//           after a lazy restore "restored PID, filling its pages" until the last page is
//           in, then "restored PID, every page in after S s"
// They appear once they are created (cp and tar create them with O_EXCL: a name that existed
// already would fail the copy) or, for status, once a restore has started; the saved copies
// of done and status that cp writes are accepted and dropped.
// While restore/NAME is being restored, its tree cannot be changed (EBUSY).

import * as fs from 'fs'
import { asCommandError, CkptError, messageOf } from '../errors'
import { commandFile, lineFile, type DirNode, type FileNode, type Node } from '../tree/node'
import { AreaDir, AreaTree, type AreaEntry, type AreaFile } from './areatree'
import type { RestoreOptions } from './engine'
import type { LazyOutcome } from './lazy'
import { restoreSaved } from './index'

const VIRTUAL = new Set(['done', 'status'])

/** Whether process `pid` exists and has not exited (a zombie has). */
function running(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !/^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2))
  } catch {
    return false
  }
}

export class RestoreArea {
  private readonly tree: AreaTree
  private readonly states = new Map<string, string>()
  /** What a running restore waits for (a zombie holding its PID), shown after "restoring: ". */
  private readonly waits = new Map<string, string>()
  /** Virtual files made visible by a create ("NAME/done", "NAME/status"). */
  private readonly shown = new Set<string>()
  /** The area directory each directory node shows, and its restore/NAME (for rename between them). */
  private readonly dirsOf = new WeakMap<DirNode, { dir: AreaDir; top: string | undefined }>()

  constructor(backing: string) {
    this.tree = new AreaTree(backing)
  }

  dispose(): void {
    this.tree.dispose()
  }

  root(): DirNode {
    return this.dir(this.tree.root, undefined)
  }

  /**
   * Restores restore/NAME; returns the new PID. While the process restored from NAME runs, a
   * second `done` (two writers at once, or a late retry) is refused and leaves `status`
   * showing its PID. Once that process has ended, or after an error, NAME may be restored again.
   */
  async restore(name: string, options: RestoreOptions = {}): Promise<number> {
    const state = this.states.get(name)
    if (state === 'restoring') throw new CkptError(`restore/${name}: a restore is already running`, 'EBUSY')
    const restored = /^restored ([0-9]+)/.exec(state ?? '')
    if (restored && running(Number(restored[1]))) throw new CkptError(`restore/${name}: ${state} already, and that process still runs`, 'EBUSY')
    const dir = this.tree.root.entries.get(name)
    if (dir?.kind !== 'dir') throw new CkptError(`restore/${name}: no such saved checkpoint`, 'ENOENT')
    this.states.set(name, 'restoring')
    try {
      let fill: Promise<LazyOutcome> | undefined
      const lazy = options.lazy ? (f: Promise<LazyOutcome>) => { fill = f } : undefined
      const pid = await restoreSaved(dir, name, { ...options, lazy, note: (line) => this.waits.set(name, line) })
      this.states.set(name, fill ? `restored ${pid}, filling its pages` : `restored ${pid}`)
      fill?.then((done) => {
        this.states.set(name, done.ended ? `restored ${pid}, which ended before its last page was in` : `restored ${pid}, every page in after ${done.seconds.toFixed(3)} s`)
      }, (err: unknown) => this.states.set(name, `error: ${messageOf(err)}`))
      return pid
    } catch (err) {
      this.states.set(name, `error: ${messageOf(err)}`)
      throw asCommandError(err)
    } finally {
      this.waits.delete(name)
    }
  }

  private visible(name: string, file: string): boolean {
    if (this.shown.has(`${name}/${file}`)) return true
    const state = this.states.get(name)
    return file === 'status' && state !== undefined && state !== 'saved'
  }

  /** Refuses changes to restore/NAME while it is being restored. */
  private unchanging(top: string | undefined): void {
    if (top !== undefined && this.states.get(top) === 'restoring') throw new CkptError(`restore/${top}: a restore of it is running`, 'EBUSY')
  }

  /** The node of `dir`; `top` is the restore/NAME it is in (undefined for restore/ itself). */
  private dir(dir: AreaDir, top: string | undefined): DirNode {
    const atTop = top !== undefined && this.tree.root.entries.get(top) === dir
    const tree = this.tree
    const node: DirNode = {
      kind: 'dir',
      perm: 0o755,
      list: async () => {
        const names = [...dir.entries.keys()]
        if (!atTop) return names
        return [...names.filter((n) => !VIRTUAL.has(n)), ...[...VIRTUAL].filter((v) => this.visible(top!, v))]
      },
      lookup: async (name) => {
        if (atTop && VIRTUAL.has(name)) return this.visible(top!, name) ? this.virtual(top!, name) : undefined
        const entry = dir.entries.get(name)
        return entry && this.node(entry, top ?? name)
      },
      mkdir: async (name) => {
        this.unchanging(top)
        tree.mkdir(dir, name)
        if (top === undefined) this.states.set(name, 'saved')
      },
      create: async (name) => {
        if (top === undefined) throw new CkptError('restore/: copy a directory (a saved checkpoint-N tree), not a file', 'EPERM')
        if (atTop && VIRTUAL.has(name)) {
          this.shown.add(`${top}/${name}`)
          return
        }
        this.unchanging(top)
        tree.create(dir, name)
      },
      remove: async (name) => {
        if (atTop && VIRTUAL.has(name)) {
          this.shown.delete(`${top}/${name}`)
          return
        }
        this.unchanging(top ?? name)
        tree.remove(dir, name)
        if (top === undefined) this.forget(name)
      },
      rename: async (from, toNode, toName) => {
        const to = this.dirsOf.get(toNode)
        if (!to) throw new CkptError('restore/: cannot move out of the restore area', 'EPERM')
        const toRoot = to.top === undefined
        if (toRoot && dir.entries.get(from)?.kind === 'file') throw new CkptError('restore/: copy a directory (a saved checkpoint-N tree), not a file', 'EPERM')
        const toAtTop = !toRoot && tree.root.entries.get(to.top!) === to.dir
        if ((atTop && VIRTUAL.has(from)) || (toAtTop && VIRTUAL.has(toName))) {
          throw new CkptError(`${atTop && VIRTUAL.has(from) ? from : toName}: the restore area's own control files cannot be moved`, 'EPERM')
        }
        this.unchanging(top ?? from)
        this.unchanging(to.top ?? toName)
        tree.rename(dir, from, to.dir, toName)
        if (top === undefined) this.forget(from)
        if (toRoot) {
          this.forget(toName)
          this.states.set(toName, 'saved')
        }
      },
    }
    this.dirsOf.set(node, { dir, top })
    return node
  }

  private forget(name: string): void {
    this.states.delete(name)
    for (const v of VIRTUAL) this.shown.delete(`${name}/${v}`)
  }

  private node(entry: AreaEntry, top: string): Node {
    return entry.kind === 'dir' ? this.dir(entry, top) : this.file(entry, top)
  }

  private file(file: AreaFile, top: string): FileNode {
    return {
      kind: 'file',
      perm: 0o644,
      volatile: true,
      size: async () => file.size,
      read: async (offset, length) => file.read(offset, length),
      write: async (offset, data) => {
        this.unchanging(top)
        file.write(offset, data)
      },
      truncate: async (size) => {
        this.unchanging(top)
        file.truncate(size)
      },
    }
  }

  private virtual(name: string, file: string): FileNode {
    if (file === 'done') return commandFile((text) => this.restore(name, { allowReplaced: text === 'allow-replaced', lazy: text === 'lazy' ? () => undefined : undefined }).then(() => undefined))
    // The saved status that cp -a copies in is accepted and dropped.
    const status = lineFile(async () => {
      const state = this.states.get(name) ?? 'saved'
      const wait = this.waits.get(name)
      return state === 'restoring' && wait ? `restoring: ${wait}` : state
    })
    return { ...status, perm: 0o644, write: async () => undefined, truncate: async () => undefined }
  }
}
