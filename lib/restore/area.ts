// The restore/ directory: a writable area where users copy saved trees (`cp -a`, `tar x`).
// Its contents live in a private backing directory on disk, so a copied multi-GiB tree never
// sits in the server's memory. Each top-level entry restore/NAME also has two virtual files:
//   done    write 1 to restore NAME (empty writes, as cp makes, change nothing)
//   status  "saved" | "restoring" | "restored PID" | "error: WHY"
// They appear once they are created (cp and tar create them with O_EXCL: a name that existed
// already would fail the copy) or, for status, once a restore has started; the saved copies
// of done and status that cp writes are accepted and dropped.
// The backing directory is local: its calls are synchronous (each is a few microseconds; going
// through the thread pool made every FUSE operation of a copy several times slower).

import * as fs from 'fs'
import * as path from 'path'
import { CkptError, messageOf } from '../errors'
import { DiskDir } from '../files/saved'
import { commandFile, lineFile, type DirNode, type FileNode, type Node } from '../tree/node'
import { restoreSaved } from './index'

const VIRTUAL = new Set(['done', 'status'])

export class RestoreArea {
  private readonly states = new Map<string, string>()
  /** Virtual files made visible by a create ("NAME/done", "NAME/status"). */
  private readonly shown = new Set<string>()
  /** Where each directory node of this area lives on disk (for rename between them). */
  private readonly realPaths = new WeakMap<DirNode, string>()

  constructor(readonly backing: string) {
    fs.mkdirSync(backing, { recursive: true, mode: 0o700 })
  }

  dispose(): void {
    fs.rmSync(this.backing, { recursive: true, force: true })
  }

  root(): DirNode {
    return this.dir(this.backing, 0)
  }

  /** Restores restore/NAME; returns the new PID. Also used by `ckptfs restore`. */
  async restore(name: string): Promise<number> {
    if (this.states.get(name) === 'restoring') throw new CkptError(`restore/${name}: a restore is already running`, 'EBUSY')
    this.states.set(name, 'restoring')
    try {
      const pid = await restoreSaved(new DiskDir(path.join(this.backing, name)), name)
      this.states.set(name, `restored ${pid}`)
      return pid
    } catch (err) {
      this.states.set(name, `error: ${messageOf(err)}`)
      throw err instanceof CkptError ? err : new CkptError(messageOf(err))
    }
  }

  private visible(name: string, file: string): boolean {
    if (this.shown.has(`${name}/${file}`)) return true
    const state = this.states.get(name)
    return file === 'status' && state !== undefined && state !== 'saved'
  }

  private dir(real: string, depth: number): DirNode {
    const topName = depth === 1 ? path.basename(real) : undefined
    const node: DirNode = {
      kind: 'dir',
      perm: 0o755,
      list: async () => {
        const names = fs.readdirSync(real)
        if (!topName) return names
        return [...names.filter((n) => !VIRTUAL.has(n)), ...[...VIRTUAL].filter((v) => this.visible(topName, v))]
      },
      lookup: async (name) => {
        if (topName && VIRTUAL.has(name)) return this.visible(topName, name) ? this.virtual(topName, name) : undefined
        return this.node(path.join(real, name), depth + 1)
      },
      mkdir: async (name) => {
        fs.mkdirSync(path.join(real, name), { mode: 0o755 })
        if (depth === 0) this.states.set(name, 'saved')
      },
      create: async (name) => {
        if (depth === 0) throw new CkptError('restore/: copy a directory (a saved checkpoint-N tree), not a file', 'EPERM')
        if (topName && VIRTUAL.has(name)) {
          this.shown.add(`${topName}/${name}`)
          return
        }
        fs.closeSync(fs.openSync(path.join(real, name), 'w', 0o644))
      },
      remove: async (name) => {
        if (topName && VIRTUAL.has(name)) {
          this.shown.delete(`${topName}/${name}`)
          return
        }
        const target = path.join(real, name)
        if (fs.lstatSync(target).isDirectory()) fs.rmdirSync(target)
        else fs.unlinkSync(target)
        if (depth === 0) {
          this.states.delete(name)
          for (const v of VIRTUAL) this.shown.delete(`${name}/${v}`)
        }
      },
      rename: async (from, toDir, toName) => {
        const dest = this.realPaths.get(toDir)
        if (!dest) throw new CkptError('restore/: cannot move out of the restore area', 'EPERM')
        fs.renameSync(path.join(real, from), path.join(dest, toName))
      },
    }
    this.realPaths.set(node, real)
    return node
  }

  private async node(real: string, depth: number): Promise<Node | undefined> {
    let stat: fs.Stats
    try {
      stat = fs.lstatSync(real)
    } catch {
      return undefined
    }
    if (stat.isDirectory()) return this.dir(real, depth)
    if (!stat.isFile()) return undefined
    return passthroughFile(real)
  }

  private virtual(name: string, file: string): FileNode {
    if (file === 'done') return commandFile(() => this.restore(name).then(() => undefined))
    // The saved status that cp -a copies in is accepted and dropped.
    const status = lineFile(async () => this.states.get(name) ?? 'saved')
    return { ...status, perm: 0o644, write: async () => undefined, truncate: async () => undefined }
  }
}

function passthroughFile(real: string): FileNode {
  return {
    kind: 'file',
    perm: 0o644,
    volatile: true,
    size: async () => fs.statSync(real).size,
    read: async (offset, length) => {
      const fd = fs.openSync(real, 'r')
      try {
        const buf = Buffer.allocUnsafe(length)
        const n = fs.readSync(fd, buf, 0, length, offset)
        return buf.subarray(0, n)
      } finally {
        fs.closeSync(fd)
      }
    },
    write: async (offset, data) => {
      const fd = fs.openSync(real, 'r+')
      try {
        for (let done = 0; done < data.length;) done += fs.writeSync(fd, data, done, data.length - done, offset + done)
      } finally {
        fs.closeSync(fd)
      }
    },
    truncate: async (size) => fs.truncateSync(real, size),
  }
}
