// Everything one mounted ckptfs server holds: its open checkpoints, the cache of filled nodes,
// the restore area, and the root directory that shows them.
//
// Root layout (SPEC "The tree", plus two control files for shell scripts):
//   checkpoint-N/   one per open checkpoint
//   checkpoint-N.image  the same checkpoint as one file, beside its tree
//   restore/        write a saved tree here to restore it
//   checkpoint      write "PID" (lazy) or "PID copy" to open a checkpoint of PID; add
//                   " inspect" when a checkpoint that cannot be restored is expected
//   by-pid/PID      "checkpoint-N" of PID's newest checkpoint, or "error: WHY" of the last try

import { EventEmitter } from 'events'
import { NodeCache } from './cache'
import { Checkpoint } from './checkpoint'
import { asCommandError, CkptError, messageOf } from './errors'
import { descendantsOf, holds } from './lifecycle'
import { asPid, type CheckpointMode } from './model'
import { dropAllGaps } from './netgap'
import { RestoreArea } from './restore/area'
import { commandFile, lineFile, type DirNode, type FileNode, type Node } from './tree/node'
import { PhaseTimer } from './trace'

export interface SessionEvents {
  /** A checkpoint ended: every node under this path is gone. */
  removed: [path: string]
  /** What a node under this path shows changed (by-pid/PID): the mount must not keep its size. */
  changed: [path: string]
}

export class Session extends EventEmitter<SessionEvents> {
  readonly cache: NodeCache
  readonly restore: RestoreArea
  private readonly checkpoints = new Map<number, Checkpoint>()
  private readonly lastByPid = new Map<number, string>()
  /** The request being handled for each PID (settled: never rejects). */
  private readonly opening = new Map<number, Promise<void>>()
  private nextId = 1
  /**
   * The `checkpoint` control file's path as /proc/PID/fd shows it (set by the server): whoever
   * holds it open is the one asking, and must not be frozen by its own request.
   */
  controlFilePath: string | undefined

  constructor(cacheBytes: number, restoreBacking: string) {
    super()
    this.cache = new NodeCache(cacheBytes)
    this.restore = new RestoreArea(restoreBacking)
  }

  /**
   * Opens a checkpoint of `pid`; returns its directory name. Requests for one PID run one
   * after the other, so a second request sees the first one's checkpoint and is refused
   * with its name, instead of racing it to ptrace the task. Unless `inspect`, one that could
   * not be restored fails (ENOTRECOVERABLE) but stays open, frozen as any checkpoint, for
   * inspection: by-pid/PID names it and its `problems` say why.
   */
  async checkpoint(pid: number, mode: CheckpointMode, inspect = false): Promise<string> {
    const before = this.opening.get(pid) ?? Promise.resolve()
    const attempt = before.then(() => this.openCheckpoint(pid, mode, inspect))
    const settled = attempt.then(() => undefined, () => undefined)
    this.opening.set(pid, settled)
    void settled.then(() => {
      if (this.opening.get(pid) === settled) this.opening.delete(pid)
    })
    return attempt
  }

  private async openCheckpoint(pid: number, mode: CheckpointMode, inspect: boolean): Promise<string> {
    const timer = new PhaseTimer('checkpoint')
    try {
      return await this.openCheckpointTimed(pid, mode, inspect, timer)
    } finally {
      timer.report(`of ${pid}`)
    }
  }

  private async openCheckpointTimed(pid: number, mode: CheckpointMode, inspect: boolean, timer: PhaseTimer): Promise<string> {
    // Frozen as the root of a tree, or as one of its descendants.
    const running = [...this.checkpoints.values()].find((c) => c.mode === 'lazy' && !c.ended && c.tree.tasks.some((task) => task.pid === pid))
    if (running) {
      const within = running.pid === pid ? '' : ` (in the tree of ${running.pid})`
      throw this.remember(pid, new CkptError(`process ${pid} is frozen by ${running.name} already${within}`, 'EBUSY'))
    }
    // PID 1 is everyone's ancestor: Checkpoint.open refuses it with its own reason.
    if (mode === 'lazy' && pid !== 1) this.refuseCallerAncestor(pid)
    // A copy of the caller's ancestor: the caller waits inside the mount for the answer and
    // could not stop; it (with anything below it) stays out of the tree.
    const caller = mode === 'copy' ? this.callerBelow(pid) : undefined
    const leaveOut = new Map(caller !== undefined && caller !== pid ? [[caller, 'the process asking for the checkpoint']] : [])
    timer.mark('caller')
    const id = this.nextId++
    let checkpoint: Checkpoint
    try {
      checkpoint = await Checkpoint.open(id, asPid(pid), mode, leaveOut, timer)
    } catch (err) {
      throw this.remember(pid, asCommandError(err))
    }
    this.checkpoints.set(id, checkpoint)
    this.lastByPid.set(pid, checkpoint.name)
    this.emit('changed', '/by-pid')
    if (!inspect) {
      if (timer.enabled) {
        // Timed apart for CKPTFS_TRACE; problems() reuses them (a failure is its to report).
        await checkpoint.task.fileTable().catch(() => undefined)
        timer.mark('file tables')
        await Promise.all(checkpoint.tree.tasks.map((task) => task.vmas().catch(() => undefined)))
        timer.mark('memory maps')
      }
      const problems = await checkpoint.problems().catch((err: unknown) => [{ where: 'capture', why: messageOf(err) }])
      timer.mark('problems')
      if (problems.length > 0) {
        const more = problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''
        throw new CkptError(`process ${pid} cannot be restored: ${problems[0].where}: ${problems[0].why}${more}; ${checkpoint.name} stays open for inspection`, 'ENOTRECOVERABLE')
      }
    }
    return checkpoint.name
  }

  /**
   * A lazy checkpoint freezes PID and its descendants until `done`: if the one asking is among
   * them (its shell, or any ancestor of the command), nothing could ever write `done`.
   */
  private refuseCallerAncestor(pid: number): void {
    const caller = this.callerBelow(pid)
    if (caller === undefined) return
    const who = caller === pid ? 'the process asking for it' : `an ancestor of the process asking for it (pid ${caller})`
    throw this.remember(pid, new CkptError(`process ${pid} is ${who}: freezing it would freeze the caller for good; use --copy (write "${pid} copy") to inspect it`, 'EDEADLK'))
  }

  /** PID or the descendant of PID that holds the control file open (the one asking), if any. */
  private callerBelow(pid: number): number | undefined {
    const file = this.controlFilePath
    if (file === undefined) return undefined
    return [pid, ...descendantsOf(pid)].find((p) => p !== process.pid && holds(p, file))
  }

  /**
   * by-pid/PID shows a refused request's error only while PID has no open checkpoint: the
   * name of an open one stays, so a script that reads it after its own request succeeded
   * never finds another request's error there.
   */
  private remember(pid: number, err: CkptError): CkptError {
    if (!this.openCheckpointName(pid)) {
      this.lastByPid.set(pid, `error: ${err.message}`)
      this.emit('changed', '/by-pid')
    }
    return err
  }

  /** The name of PID's newest checkpoint if it is still open. */
  private openCheckpointName(pid: number): string | undefined {
    const match = /^checkpoint-([0-9]+)$/.exec(this.lastByPid.get(pid) ?? '')
    return match && this.checkpoints.has(Number(match[1])) ? match[0] : undefined
  }

  /**
   * Handles a write to checkpoint-N/done. `kill` of a checkpoint that could not be restored is
   * refused (EPERM, the checkpoint stays open) unless written as `kill!`.
   */
  async done(id: number, text: string): Promise<void> {
    let checkpoint = this.checkpoints.get(id)
    if (!checkpoint) throw new CkptError(`checkpoint-${id} has ended`, 'ENOENT')
    const kill = text === 'kill' || text === 'kill!'
    if (text === 'kill') {
      const refusal = await checkpoint.killRefusal()
      if (refusal) throw new CkptError(refusal, 'EPERM')
      // Another write of done may have ended it meanwhile.
      checkpoint = this.checkpoints.get(id)
      if (!checkpoint) throw new CkptError(`checkpoint-${id} has ended`, 'ENOENT')
    }
    this.checkpoints.delete(id)
    this.cache.dropPrefix(`c${id}/`)
    this.emit('removed', `/${checkpoint.name}`)
    this.emit('removed', `/${checkpoint.name}.image`)
    this.emit('changed', '/by-pid') // "ended: checkpoint-N"
    await checkpoint.end(kill ? 'kill' : 'resume').catch((err: unknown) => {
      throw asCommandError(err)
    })
  }

  /** Resumes every frozen task and forgets the checkpoints. */
  async close(): Promise<void> {
    const all = [...this.checkpoints.values()]
    this.checkpoints.clear()
    await Promise.allSettled(all.map((c) => c.end('resume')))
    // Connections killed at a checkpoint and never restored: their peers' packets pass again.
    await dropAllGaps()
  }

  /**
   * Removes the restore area's backing files. Called once the mount is gone: with trees of
   * many small files this takes long on a disk that discards each freed block (minutes for
   * a few 10,000-fd trees on this machine), and the mount should not linger meanwhile.
   */
  disposeRestoreArea(): void {
    this.restore.dispose()
  }

  root(): DirNode {
    const fixed: Record<string, () => Node> = {
      restore: () => this.restore.root(),
      checkpoint: () => this.controlFile(),
      'by-pid': () => this.byPidDir(),
    }
    return {
      kind: 'dir',
      perm: 0o755,
      list: async () => [...[...this.checkpoints.values()].flatMap((c) => [c.name, `${c.name}.image`]), ...Object.keys(fixed)],
      lookup: async (name) => {
        const make = fixed[name]
        if (make) return make()
        const match = /^checkpoint-([1-9][0-9]*)(\.image)?$/.exec(name)
        const checkpoint = match ? this.checkpoints.get(Number(match[1])) : undefined
        if (!checkpoint) return undefined
        if (match![2]) return checkpoint.imageFile(this.cache)
        return checkpoint.directory(this.cache, (text) => this.done(checkpoint.id, text))
      },
    }
  }

  /**
   * `checkpoint`: "PID [copy] [inspect]" opens a checkpoint; a failed one fails the write. Each
   * open of the file gets its own node (paths outside checkpoint-N are looked up afresh), so
   * reading the same open file after the write returns the answer to that request alone:
   * "checkpoint-N" or "error: WHY", whatever other requests ran meanwhile.
   */
  private controlFile(): FileNode {
    let answer = Buffer.alloc(0)
    const command = commandFile(async (text) => {
      const match = /^([0-9]+)(?:\s+(lazy|copy))?(\s+inspect)?$/.exec(text)
      try {
        if (!match) throw new CkptError(`checkpoint: expected "PID", "PID copy" or either followed by " inspect", got ${JSON.stringify(text.slice(0, 40))}`, 'EINVAL')
        answer = Buffer.from(`${await this.checkpoint(Number(match[1]), (match[2] as CheckpointMode | undefined) ?? 'lazy', match[3] !== undefined)}\n`)
      } catch (err) {
        const refused = asCommandError(err)
        answer = Buffer.from(`error: ${refused.message}\n`)
        throw refused
      }
    })
    return {
      ...command,
      size: async () => answer.length,
      read: async (offset, length) => answer.subarray(offset, offset + length),
    }
  }

  private byPidDir(): DirNode {
    return {
      kind: 'dir',
      perm: 0o555,
      list: async () => [...this.lastByPid.keys()].map(String),
      lookup: async (name) => {
        const pid = Number(name)
        if (!this.lastByPid.has(pid)) return undefined
        return lineFile(async () => this.currentNameFor(pid))
      },
    }
  }

  private currentNameFor(pid: number): string {
    const last = this.lastByPid.get(pid)!
    const match = /^checkpoint-([0-9]+)$/.exec(last)
    if (match && !this.checkpoints.has(Number(match[1]))) return `ended: ${last}`
    return last
  }
}
