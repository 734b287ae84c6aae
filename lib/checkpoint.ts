// One checkpoint of a process and all its descendants (lib/pstree.ts): freezing them,
// capturing them (lazily or all at once), the checkpoint-N directory, and ending it through `done`.
//
// Why no task is ever left frozen: threads are seized without PTRACE_O_EXITKILL, so if this
// server dies for any reason the kernel detaches them and they run on; `done`, `umount` and
// the server's exit handlers thaw every open checkpoint; a client dying mid-read changes
// nothing (the task stays frozen until `done`, which still works).

import * as fs from 'fs'
import { currentBootId } from './boot'
import { CkptError, errnoOf, messageOf } from './errors'
import { filesDir, fdsDir } from './files/tree'
import { imageSource } from './image/encode'
import { lazy, type CheckpointMode, type Pid, type Problem, type TaskImage, type Tid, type TreeImage } from './model'
import { lifeState, waitUntil } from './lifecycle'
import { releaseConnections } from './netgap'
import { freezeTree, thawTasks, type FrozenTree } from './pstree'
import { listFds } from './procfs'
import { captureProcess, processProblems } from './task/process'
import { captureThreads } from './task/threads'
import { allocCopyArena, captureVmas, planCopy, scanTask, type TaskScan } from './task/memory'
import { taskDir } from './task/tree'
import { PhaseTimer } from './trace'
import { zombieDir } from './task/zombie'
import { captureTreeFiles, taskFileTables } from './treefiles'
import { attr, bytes, commandFile, FILE_PERM, lineFile, PUBLIC, stream, tableDir, type ContentCache, type DirNode, type FileNode, type TableEntry, type TaskOwners } from './tree/node'

export type CheckpointState = 'frozen' | 'running' | 'ended'

/** How long `kill` waits for the killed task's threads to die. */
const KILL_WAIT_MS = 10_000

export class Checkpoint {
  private state: CheckpointState = 'frozen'
  /** Why the checkpoint failed or the task vanished; shown by `status`. */
  private failure: string | undefined
  private ending: Promise<void> | undefined
  /** The condensed image, sized once and then read in pieces. */
  readonly image = lazy(() => imageSource(this.task, { mode: this.mode, bootId: this.bootId, others: this.tree.tasks.slice(1), zombies: this.tree.zombies }))
  /** The boot this checkpoint was made on (lib/boot.ts). */
  readonly bootId = currentBootId()

  private constructor(
    readonly id: number,
    readonly pid: Pid,
    readonly mode: CheckpointMode,
    /** PID (the root) and its descendants, parents first. */
    readonly tree: TreeImage,
    /** Who the tree and image belong to: whom /proc shows as the owners of /proc/PID and its files. */
    readonly owner: TaskOwners,
  ) {}

  /** The root process, PID itself. */
  get task(): TaskImage {
    return this.tree.tasks[0]
  }

  /** Every live process of the tree, root first. */
  private get pids(): Pid[] {
    return this.tree.tasks.map((t) => t.pid)
  }

  get name(): string {
    return `checkpoint-${this.id}`
  }

  get ended(): boolean {
    return this.state === 'ended'
  }

  /**
   * Freezes `pid` with all its descendants and opens a checkpoint of them. In copy mode
   * everything is captured now and the tree runs on before this returns; in lazy mode it
   * stays frozen until end().
   */
  static async open(id: number, pid: Pid, mode: CheckpointMode, leaveOut: ReadonlyMap<number, string> = new Map(), timer = new PhaseTimer('checkpoint')): Promise<Checkpoint> {
    assertProcessExists(pid)
    // Copy mode: the buffer for the pages is sized and touched while the task still runs, so
    // the task is stopped only for the copy itself (first touches are the costly part here).
    // A copy of more than 1 GiB is held in several buffers (node makes none over 4 GiB).
    const arena = mode === 'copy' ? await allocCopyArena(Math.ceil((await planCopy(pid)).bytes * 1.02) + 4096).catch((err: unknown) => {
      throw new CkptError(`checkpoint of process ${pid} failed: no memory for its copy: ${messageOf(err)}`)
    }) : undefined
    const frozen: FrozenTree = await freezeTree(pid, leaveOut).catch((err: unknown) => {
      if (err instanceof CkptError) throw err
      throw new CkptError(`cannot freeze process ${pid}: ${explainFreezeError(pid, err)}`, errnoOf(err) === 'ESRCH' ? 'ESRCH' : 'EPERM')
    })
    timer.mark(`freeze (${frozen.live.length} processes)`)
    const frozenPids = frozen.live.map((t) => t.pid)
    let owner: TaskOwners
    try {
      owner = treeOwner(frozenPids)
    } catch (err) {
      await thawTasks(frozenPids, false).catch(() => undefined)
      throw new CkptError(`checkpoint of process ${pid} failed: ${messageOf(err)}`)
    }
    const copy = mode === 'copy'
    // One files/ for the whole tree: a description several tasks hold is captured once.
    const tableOf = taskFileTables(lazy(() => captureTreeFiles(frozenPids, { copy })))
    // Each task's pagemap is scanned once, when its memory (or a child's) is first needed: a
    // child's pages at its parent's frames are recorded as inherited, not stored again.
    const hasChildren = new Set(frozen.live.map((t) => t.parent))
    const scans = new Map<number, () => Promise<TaskScan>>()
    for (const t of frozen.live) {
      const parentScan = t.parent === undefined ? undefined : scans.get(t.parent)
      scans.set(t.pid, lazy(() => scanTask(t.pid, { frames: hasChildren.has(t.pid), parent: parentScan?.(), parentPid: t.parent })))
    }
    const tasks = frozen.live.map(({ pid: taskPid, tids, stopSignal }): TaskImage => ({
      pid: taskPid,
      tids,
      process: lazy(() => captureProcess(taskPid, tids, stopSignal)),
      threads: lazy(() => captureThreads(taskPid, tids)),
      // The arena was sized for the root's pages; the others get buffers of their own.
      vmas: lazy(() => captureVmas(taskPid, mode, taskPid === pid ? arena : undefined, scans.get(taskPid)!())),
      fileTable: tableOf(taskPid),
    }))
    const checkpoint = new Checkpoint(id, pid, mode, { root: pid, tasks, zombies: frozen.zombies, left: frozen.left }, owner)
    if (copy) {
      try {
        await Promise.all(tasks.flatMap((task) => [task.process(), task.threads(), task.vmas(), task.fileTable()]))
      } catch (err) {
        await releaseConnections(frozenPids, 'resume').catch(() => undefined)
        await thawTasks(frozenPids, false).catch(() => undefined)
        throw new CkptError(`checkpoint of process ${pid} failed: ${messageOf(err)}`)
      }
      // The task runs on: its connections leave repair mode (their saved state ages from now).
      await releaseConnections(frozenPids, 'resume')
      timer.mark('copy')
      await thawTasks(frozenPids, false)
      timer.mark('thaw')
      checkpoint.state = 'running'
    }
    return checkpoint
  }

  /**
   * Ends the checkpoint: resumes every task of the tree (or kills them all) and forgets the
   * captured state. A kill returns once every thread is dead (gone, or a zombie only its
   * parent can reap), so a script may restore right after it.
   */
  end(action: 'resume' | 'kill'): Promise<void> {
    this.ending ??= (async () => {
      const wasFrozen = this.state === 'frozen' && this.failure === undefined
      this.state = 'ended'
      if (action === 'kill') {
        if (wasFrozen) await thawTasks(this.pids, true)
        else if (this.mode === 'copy') [...this.pids].reverse().forEach(safeKill)
        // Connections held in repair mode close silently; their peers' packets stay dropped until their restore (lib/netgap.ts).
        await this.awaitDeath().finally(() => releaseConnections(this.pids, 'kill'))
      } else {
        await releaseConnections(this.pids, 'resume').finally(() => (wasFrozen ? thawTasks(this.pids, false) : undefined))
      }
    })()
    return this.ending
  }

  private async awaitDeath(): Promise<void> {
    const ids = this.tree.tasks.flatMap((t) => [t.pid, ...t.tids])
    const dead = await waitUntil(() => ids.every((id) => lifeState(id) !== 'alive'), { limitMs: KILL_WAIT_MS })
    if (!dead) {
      const alive = this.pids.filter((p) => lifeState(p) === 'alive')
      throw new CkptError(`process ${alive.join(', ')} of the tree of ${this.pid} was sent SIGKILL but is still alive after ${KILL_WAIT_MS / 1000} s`, 'EBUSY')
    }
  }

  /**
   * Why a plain `kill` must be refused: the reasons this checkpoint cannot be restored, while
   * the process still lives (killing it would lose it). Empty when a kill loses nothing.
   */
  async killRefusal(): Promise<string | undefined> {
    if (lifeState(this.pid) !== 'alive' || this.failure !== undefined) return undefined
    const problems = await this.problems().catch((err: unknown) => [{ where: 'capture', why: messageOf(err) }])
    if (problems.length === 0) return undefined
    const more = problems.length > 1 ? ` (and ${problems.length - 1} more in ${this.name}/problems)` : ''
    return `${this.name} cannot be restored (${problems[0].where}: ${problems[0].why}${more}), so a plain kill would lose process ${this.pid}: write "kill!" to done to kill it anyway, or "resume" to let it run`
  }

  /** One line: frozen | running | error: WHY (SPEC "The tree"). */
  async status(): Promise<string> {
    if (this.failure) return `error: ${this.failure}`
    const exited = this.state === 'frozen' ? this.pids.find((p) => !isAlive(p)) : undefined
    if (exited !== undefined) {
      const tree = this.pids.length > 1 ? ` (of the tree of ${this.pid}; the others run on)` : ''
      this.failure = `process ${exited} exited while frozen${tree}`
      // Reaps the ptrace notifications so the real parent can see the exit; the tree can no
      // longer be restored whole, so nothing stays frozen for it.
      await releaseConnections(this.pids, 'resume').catch(() => undefined)
      await thawTasks(this.pids, false).catch(() => undefined)
      return `error: ${this.failure}`
    }
    const problems = await this.problems().catch((err: unknown) => [{ where: 'capture', why: messageOf(err) }])
    if (problems.length > 0) {
      const more = problems.length > 1 ? ` (and ${problems.length - 1} more in problems)` : ''
      return `error: not checkpointable: ${problems[0].where}: ${problems[0].why}${more}`
    }
    return this.state === 'ended' ? 'ended' : this.state
  }

  /**
   * What would prevent a restore, one per resource. Needs the file table, the memory map and
   * /proc, never memory contents nor a capture that injects system calls (process and thread
   * state): every checkpoint asks this at once, and an injection leaves its marks (a thread
   * blocked in a call is seen elsewhere, a single-step trap kills the task if the server dies).
   */
  async problems(): Promise<Problem[]> {
    // The file tables and the memory maps side by side: each waits on /proc reads.
    const [table, taskProblems] = await Promise.all([this.task.fileTable(), Promise.all(this.tree.tasks.map(async (task) => {
      const [vmas, liveTids] = await Promise.all([task.vmas(), this.liveTids(task)])
      // Already named task-PID/...: in a tree as for a lone process.
      return processProblems({ pid: task.pid }, liveTids, vmas)
    }))])
    const fileProblems = table.files.filter((f) => f.notCheckpointable).map((f) => ({ where: `files/${f.objref}`, why: f.notCheckpointable! }))
    return [...fileProblems, ...taskProblems.flat(), ...treeProblems(this.tree)]
  }

  /** The live threads: as captured in copy mode (the task runs on), else from /proc. */
  private async liveTids(task: TaskImage): Promise<number[]> {
    if (this.mode === 'copy') return (await task.threads()).map((t) => t.tid)
    return task.tids.filter((tid) => threadAlive(task.pid, tid))
  }

  /**
   * checkpoint-N.image, next to the tree rather than in it, so `cp -a checkpoint-N` copies the
   * checkpoint once. Private to the owner, as the memory and registers in it are in /proc.
   */
  imageFile(cache: ContentCache): FileNode {
    const file = stream('image', (c: Checkpoint) => c.image()).make(this, { key: `c${this.id}.image`, cache }) as FileNode
    return { ...file, owner: this.owner }
  }

  /** The checkpoint-N directory: listable by everyone, as /proc/PID is; its private parts are 0400/0500. */
  directory(cache: ContentCache, onDone: (data: string) => Promise<void>): DirNode {
    const scope = { key: `c${this.id}`, cache }
    const entries: TableEntry<Checkpoint>[] = [
      // done: "kill" kills the task (refused while `problems` is not empty), "kill!" kills it
      // whatever the problems; anything else resumes it. Writable by the owner only (the
      // mount's owner writes it anyway), and empty, so a copy of it never does anything.
      { name: 'done', make: () => ({ ...commandFile(onDone), perm: 0o600 }) },
      // Private: a failure may name the task's files.
      { name: 'status', make: (c) => ({ ...lineFile(() => c.status()), perm: FILE_PERM.private }) },
      attr('mode', (c) => c.mode, PUBLIC),
      attr('boot_id', (c) => c.bootId),
      attr('pid', (c) => c.pid, PUBLIC),
      // One line per problem; none makes an empty file (not a lone newline), so `[ -s problems ]` tests it.
      bytes('problems', async (c) => Buffer.from((await c.problems()).map((p) => `${p.where}: ${p.why}\n`).join(''))),
      { name: 'files', make: (c, s) => filesDir(c.task.fileTable, { key: `${s.key}/files`, cache: s.cache }) },
      // One task-PID/ per process of the tree; listing them captures nothing.
      ...this.tree.tasks.map((task): TableEntry<Checkpoint> => ({
        name: `task-${task.pid}`,
        make: (c, s) => {
          const key = `${s.key}/task-${task.pid}`
          // A frozen task's fd numbers do not change: list them straight from /proc. A task
          // that runs on (copy mode) is shown as captured.
          const names = c.mode === 'lazy' ? () => listFds(task.pid) : undefined
          return taskDir(task, { key, cache: s.cache }, fdsDir(task.fileTable, { key: `${key}/fds`, cache: s.cache }, names))
        },
      })),
      ...this.tree.zombies.map((zombie): TableEntry<Checkpoint> => ({
        name: `task-${zombie.pid}`,
        make: (_c, s) => zombieDir(zombie, { key: `${s.key}/task-${zombie.pid}`, cache: s.cache }),
      })),
    ]
    return { ...tableDir<Checkpoint>(this, entries, scope, PUBLIC), owner: this.owner }
  }
}

function assertProcessExists(pid: Pid): void {
  if (!Number.isInteger(pid) || pid <= 0) throw new CkptError(`not a process ID: ${pid}`, 'EINVAL')
  if (!fs.existsSync(`/proc/${pid}`)) throw new CkptError(`no process ${pid}`, 'ESRCH')
  if (fs.existsSync(`/proc/${pid}/task/${pid}`) === false) throw new CkptError(`${pid} is a thread, not a process: checkpoint its process`, 'EINVAL')
  // Freezing init would stall every process that waits on it (reaping, shutdown).
  if (pid === 1) throw new CkptError('process 1 is init: it cannot be checkpointed', 'EPERM')
  if (pid === process.pid) throw new CkptError(`process ${pid} is this ckptfs server`, 'EINVAL')
}

/**
 * The owners of a tree's checkpoint: the root's, as below; if another task's private files
 * belong to someone else (a setuid child, a child that dropped privileges), the private part
 * belongs to root, so no copy shows one user another's memory.
 */
function treeOwner(pids: Pid[]): TaskOwners {
  const [root, ...others] = pids.map(procOwner)
  const mixed = others.some((o) => o.data.uid !== root.data.uid || o.data.gid !== root.data.gid)
  return mixed ? { task: root.task, data: { uid: 0, gid: 0 } } : root
}

/**
 * What keeps a tree from being restored whole: a descendant left out of the checkpoint (a
 * restore makes every process of the tree, lib/restore/pstree.ts, but not one it lacks).
 */
function treeProblems(tree: TreeImage): Problem[] {
  return tree.left.map(({ pid, why }) => ({ where: `process ${pid}`, why: `a descendant of ${tree.root} left out of the checkpoint, with its own descendants: ${why}` }))
}

/**
 * The owners /proc shows: of /proc/PID (the task's euid and egid) and of its private files
 * (the same, or root when the task is not dumpable). Read while the task is frozen. /proc
 * also keeps the private files' contents behind a ptrace check, which a copy's mode cannot
 * make: their owner may read them only if all the task's uids and gids are that owner's and it
 * holds no capability (a dumpable root daemon with its euid set to a user's keeps root's
 * memory and environment); else the private files are root's.
 */
function procOwner(pid: Pid): TaskOwners {
  const dir = fs.statSync(`/proc/${pid}`)
  const data = fs.statSync(`/proc/${pid}/environ`)
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const ids = (name: string) => (new RegExp(`^${name}:\\s+(.*)$`, 'm').exec(status)?.[1] ?? '').trim().split(/\s+/).slice(0, 3).map(Number)
  const only = (list: number[], id: number) => list.length === 3 && list.every((x) => x === id)
  const capPrm = /^CapPrm:\s+([0-9a-f]+)$/m.exec(status)?.[1]
  const ownersAlone = only(ids('Uid'), data.uid) && only(ids('Gid'), data.gid) && capPrm !== undefined && /^0+$/.test(capPrm)
  return { task: { uid: dir.uid, gid: dir.gid }, data: ownersAlone || data.uid === 0 ? { uid: data.uid, gid: data.gid } : { uid: 0, gid: 0 } }
}

function explainFreezeError(pid: Pid, err: unknown): string {
  const code = (err as { code?: string }).code
  if (code === 'EPERM') {
    const tracer = tracerOf(pid)
    if (tracer) return `it is traced already, by process ${tracer} (${commandOf(tracer)}): a debugger or another checkpoint`
    return 'not permitted to ptrace it'
  }
  if (code === 'ESRCH') return 'it exited'
  return messageOf(err)
}

/** The PID that ptraces `pid` (TracerPid in /proc/PID/status), if any. */
function tracerOf(pid: Pid): number | undefined {
  try {
    const m = /^TracerPid:\s*([0-9]+)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m && m[1] !== '0' ? Number(m[1]) : undefined
  } catch {
    return undefined
  }
}

function commandOf(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
  } catch {
    return 'gone'
  }
}

function isAlive(pid: Pid): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    return false
  }
}

/** Whether thread `tid` of `pid` has not exited (a leader that exited shows as a zombie). */
function threadAlive(pid: Pid, tid: Tid): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    return state !== 'Z' && state !== 'X'
  } catch {
    return false
  }
}

function safeKill(pid: Pid): void {
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    // Already gone: that is what was asked.
  }
}
