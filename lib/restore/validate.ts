// The one validator of a saved checkpoint: what the values mean, checked on the model once
// a loader has parsed a tree (lib/restore/load.ts) or an image (lib/image/decode.ts), so a
// tree and the image made from it always get the same verdict. Loaders check syntax (is it a
// number, is the file there); this checks every range and cross-reference a restore relies
// on. A refusal names the tree path of the offending value for both inputs
// ("task-42/comm: ...", "files/7/f_flags: ..."): an image has the same structure.

import { CkptError } from '../errors'
import { validateCommon } from '../files/common'
import type { ValidationContext } from '../files/handler'
import { handlerOf } from '../files/index'
import { pathProblem } from '../files/saved'
import type { FdEntry, FileTable, ProcessState, ThreadState, Vma, ZombieTask } from '../model'
import { inheritable, inheritedRunsProblem, sameInheritableArea, storesPages, vmaDevProblem, vmaKind, vmaName, vmFlagsProblem } from '../task/memory'
import { ACTION_SIGNALS, notAnActionSignal, processProblems, SIGINFO_SIZE, signalName } from '../task/process'
import { RLIMITS } from '../task/procfs'
import { validateSeccomp } from '../task/seccomp'
import { ROBUST_LIST_HEAD_SIZE, USER_REGS_SIZE } from '../task/threads'
import { NGROUPS_MAX, NSIG, TASK_SIZE, XSAVE_FEATURES_AT, XSTATE_MAX, XSTATE_MIN } from '../abi'

/** The parts of a checkpoint the validator reads (lib/restore/load.ts: SavedCheckpoint). */
export interface CheckpointParts {
  pid: number
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
  fileTable: FileTable
  /** The rest of a process tree (lib/restore/pstree.ts): its other processes and zombies. */
  others?: TreeTaskParts[]
  zombies?: ZombieTask[]
}

/** A process of the tree other than the root: its fds name the root's files. */
export interface TreeTaskParts {
  pid: number
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
  fds: FdEntry[]
}

const PAGE = 4096n
/** The legacy vsyscall page is the one mapping above TASK_SIZE. */
const VSYSCALL_START = 0xffffffffff600000n
const COMM_MAX = 15
/** struct rseq is 32 bytes and 32-byte aligned; the kernel takes larger areas (new fields), never past a page here. */
const RSEQ_MIN = 32
const RSEQ_MAX = 4096
const SS_ONSTACK = 1
const SS_DISABLE = 2
const SS_AUTODISARM = 1 << 31
const XSAVE_HEADER_AT = 512
const CS_INDEX = 17

const fail = (where: string, why: string, errno: 'EINVAL' | 'ENOTSUP' = 'EINVAL'): CkptError => new CkptError(`${where}: ${why}`, errno)
const hex = (n: bigint | number): string => `0x${n.toString(16)}`

/** Validates a whole loaded checkpoint; throws the first problem, named by its tree path. */
export async function validateCheckpoint(saved: CheckpointParts): Promise<void> {
  if (saved.process.pid !== saved.pid) throw fail(`task-${saved.pid}`, `the process record is for PID ${saved.process.pid}`)
  validateTask(saved)
  const others = saved.others ?? []
  for (const other of others) {
    if (other.process.pid !== other.pid) throw fail(`task-${other.pid}`, `the process record is for PID ${other.process.pid}`)
    validateTask(other)
  }
  await validateFileTable(saved.fileTable, `task-${saved.pid}`, others.map((o) => ({ task: `task-${o.pid}`, fds: o.fds })))
  validateTree(saved)
  validateInherited(saved)
}

/** The process, its threads and its memory (task-PID/ without fds/). */
export function validateTask(t: Pick<CheckpointParts, 'process' | 'threads' | 'vmas'>): void {
  const task = `task-${t.process.pid}`
  validateProcess(t.process, task, t.threads)
  validateThreads(t.threads, task)
  validateVmas(t.vmas, task)
  const [problem] = processProblems(t.process, t.threads.map((th) => th.tid), t.vmas)
  if (problem) throw fail(problem.where, problem.why, 'ENOTSUP')
}

// ---------------------------------------------------------------------------------------
// The process

function validateProcess(p: ProcessState, task: string, threads: ThreadState[]): void {
  checkComm(p.comm, `${task}/comm`)
  for (const [name, value] of [['exe', p.exe], ['cwd', p.cwd], ['root', p.root]] as const) {
    const why = pathProblem(value)
    if (why !== undefined) throw fail(`${task}/${name}`, why)
  }
  if (p.mm.exe !== p.exe) throw fail(`${task}/exe`, `${JSON.stringify(p.exe)}, but the mm's exe link is ${JSON.stringify(p.mm.exe)}`)
  if (p.umask < 0 || p.umask > 0o777) throw fail(`${task}/umask`, `0${p.umask.toString(8)} is not a umask`)
  if (p.dumpable < 0 || p.dumpable > 2) throw fail(`${task}/dumpable`, `${p.dumpable} is out of range [0, 2]`)
  if (p.creds.groups.length > NGROUPS_MAX) throw fail(`${task}/creds/groups`, `${p.creds.groups.length} groups, at most ${NGROUPS_MAX}`)
  validateRlimits(p, task)
  validateSignals(p, task)
  validateTimers(p, task, threads)
  validateMm(p, task)
  validateSeccomp(p, threads.map((t) => t.tid), threads.filter((t) => t.seccompStrict).map((t) => t.tid))
}

function checkComm(comm: string, where: string): void {
  if (Buffer.byteLength(comm) > COMM_MAX) throw fail(where, `longer than ${COMM_MAX} bytes`)
  if (comm.includes('\n') || comm.includes('\0')) throw fail(where, 'holds a newline or a NUL byte')
}

function validateRlimits(p: ProcessState, task: string): void {
  RLIMITS.forEach(({ name }, resource) => {
    // By number and name alike: a tree names each by its directory, an image carries both.
    const found = p.rlimits.filter((r) => r.resource === resource && r.name === name)
    if (found.length === 0) throw fail(`${task}/rlimits/${name}`, 'missing')
    if (found.length > 1) throw fail(`${task}/rlimits/${name}`, 'given twice')
    const [limit] = found
    if (limit.soft > limit.hard) throw fail(`${task}/rlimits/${name}/soft`, `${limit.soft} is above the hard limit ${limit.hard}`)
  })
  const unknown = p.rlimits.find((r) => RLIMITS[r.resource]?.name !== r.name)
  if (unknown) throw fail(`${task}/rlimits/${unknown.name}`, `resource ${unknown.resource} is not one this kernel has by that name`)
}

function validateSignals(p: ProcessState, task: string): void {
  const actions = `${task}/signals/actions`
  const extra = p.sigactions.find((a) => notAnActionSignal(a.signal))
  if (extra) throw fail(`${actions}/${extra.signal}`, notAnActionSignal(extra.signal)!)
  for (const signal of ACTION_SIGNALS) {
    const found = p.sigactions.filter((a) => a.signal === signal).length
    if (found === 0) throw fail(`${actions}/${signal}`, 'missing')
    if (found > 1) throw fail(`${actions}/${signal}`, `${signalName(signal)} has ${found} actions`)
  }
  checkSiginfo(p.sharedPendingSiginfo, p.sharedPendingMask, `${task}/signals/pending_siginfo`)
}

/** siginfo records: whole 128-byte records, each for a signal set in `mask`. */
function checkSiginfo(data: Buffer, mask: bigint, where: string): void {
  if (data.length % SIGINFO_SIZE !== 0) throw fail(where, `${data.length} bytes is not a whole number of ${SIGINFO_SIZE}-byte siginfo records`)
  for (let at = 0; at < data.length; at += SIGINFO_SIZE) {
    const signo = data.readInt32LE(at)
    if (signo < 1 || signo > NSIG || !(mask & (1n << BigInt(signo - 1)))) {
      throw fail(where, `record ${at / SIGINFO_SIZE} is for signal ${signo}, which is not in the pending mask`)
    }
  }
}

function validateTimers(p: ProcessState, task: string, threads: ThreadState[]): void {
  for (const which of ['real', 'virtual', 'prof'] as const) {
    const n = p.itimers.filter((t) => t.which === which).length
    if (n !== 1) throw fail(`${task}/timers/itimer_${which}`, n === 0 ? 'missing' : 'given twice')
  }
  for (const timer of p.posixTimers) {
    const where = `${task}/timers/posix/${timer.id}`
    if (timer.id < 0 || timer.id > 0x7fffffff) throw fail(where, 'not a timer ID')
    if (timer.signal < 0 || timer.signal > NSIG) throw fail(`${where}/signal`, `${timer.signal} is out of range [0, ${NSIG}]`)
    const notify = /^(signal|none|thread)\/(pid|tid)\.(\d+)$/.exec(timer.notify)
    if (!notify) throw fail(`${where}/notify`, `not KIND/pid.N or KIND/tid.N: ${JSON.stringify(timer.notify)}`)
    if (notify[2] === 'tid' && !threads.some((t) => t.tid === Number(notify[3]))) {
      throw fail(`${where}/notify`, `signals thread ${notify[3]}, which is not a thread of the task`)
    }
  }
}

function validateMm(p: ProcessState, task: string): void {
  const mm = p.mm
  const ordered: Array<[string, bigint, string, bigint]> = [
    ['end_code', mm.endCode, 'start_code', mm.startCode], ['end_data', mm.endData, 'start_data', mm.startData],
    ['brk', mm.brk, 'start_brk', mm.startBrk], ['arg_end', mm.argEnd, 'arg_start', mm.argStart],
    ['env_end', mm.envEnd, 'env_start', mm.envStart],
  ]
  for (const [name, value, startName, start] of ordered) {
    if (value < start) throw fail(`${task}/mm/${name}`, `${hex(value)} is below ${startName} ${hex(start)}`)
    if (value > TASK_SIZE) throw fail(`${task}/mm/${name}`, `${hex(value)} is not a user-space address`)
  }
  if (mm.startStack > TASK_SIZE) throw fail(`${task}/mm/start_stack`, `${hex(mm.startStack)} is not a user-space address`)
  const auxv = mm.auxv
  if (auxv.length % 16 !== 0 || auxv.length < 16 || auxv.readBigUInt64LE(auxv.length - 16) !== 0n) {
    throw fail(`${task}/mm/auxv`, `${auxv.length} bytes is not a list of 16-byte entries ending with AT_NULL`)
  }
}

// ---------------------------------------------------------------------------------------
// Threads

function validateThreads(threads: ThreadState[], task: string): void {
  const seen = new Set<number>()
  for (const t of threads) {
    const where = `${task}/threads/${t.tid}`
    if (seen.has(t.tid)) throw fail(where, 'the thread is given twice')
    seen.add(t.tid)
    if (t.tid < 1 || t.tid > 0x7fffffff) throw fail(where, 'not a thread ID')
    checkComm(t.comm, `${where}/comm`)
    if (t.regs.length !== USER_REGS_SIZE) throw fail(`${where}/regs`, `${t.regs.length} bytes, struct user_regs_struct has ${USER_REGS_SIZE}`)
    const cs = t.regs.readBigUInt64LE(CS_INDEX * 8)
    if ((cs & 3n) !== 3n) throw fail(`${where}/regs`, `cs ${hex(cs)} is not a user-mode segment`)
    if (t.xstate.length < XSTATE_MIN || t.xstate.length > XSTATE_MAX) throw fail(`${where}/xstate`, `${t.xstate.length} bytes, an xsave area has ${XSTATE_MIN} .. ${XSTATE_MAX}`)
    const features = t.xstate.readBigUInt64LE(XSAVE_FEATURES_AT)
    const present = t.xstate.readBigUInt64LE(XSAVE_HEADER_AT)
    if ((present & ~features) !== 0n) throw fail(`${where}/xstate`, `xstate_bv ${hex(present)} has components outside the saved XCR0 ${hex(features)}`)
    checkSiginfo(t.pendingSiginfo, t.pendingMask, `${where}/pending_siginfo`)
    validateRseq(t, where)
    if ((t.altstack.flags & ~(SS_ONSTACK | SS_DISABLE | SS_AUTODISARM)) !== 0) throw fail(`${where}/altstack_flags`, `${hex(t.altstack.flags >>> 0)} has unknown bits`)
    const { head, length } = t.robustList
    if (length !== ROBUST_LIST_HEAD_SIZE && !(head === 0n && length === 0n)) throw fail(`${where}/robust_list_len`, `${length}: the kernel takes only ${ROBUST_LIST_HEAD_SIZE}`)
    for (const [name, address] of [['robust_list_head', head], ['clear_child_tid', t.clearChildTid]] as const) {
      if (address >= TASK_SIZE) throw fail(`${where}/${name}`, `${hex(address)} is not a user-space address`)
    }
  }
}

/** The registration the restore makes again: the kernel would take sizes and flags a restore must not pass on. */
function validateRseq(t: ThreadState, where: string): void {
  const { pointer, size, flags } = t.rseq
  if ((pointer === 0n) !== (size === 0)) throw fail(`${where}/rseq_size`, `${size} with rseq_pointer ${hex(pointer)}: both or neither must be 0`)
  if (size === 0) {
    if (flags !== 0) throw fail(`${where}/rseq_flags`, `${hex(flags)} without an rseq registration`)
    return
  }
  if (size < RSEQ_MIN || size > RSEQ_MAX) throw fail(`${where}/rseq_size`, `${size} is out of range [${RSEQ_MIN}, ${RSEQ_MAX}] (struct rseq is ${RSEQ_MIN} bytes)`)
  if (pointer % BigInt(RSEQ_MIN) !== 0n) throw fail(`${where}/rseq_pointer`, `${hex(pointer)} is not aligned to ${RSEQ_MIN} bytes, as struct rseq is`)
  if (pointer + BigInt(size) > TASK_SIZE) throw fail(`${where}/rseq_pointer`, `${hex(pointer)} + ${size} bytes is not in user space`)
  if (flags !== 0) throw fail(`${where}/rseq_flags`, `${hex(flags)}: an rseq area is registered with flags 0`)
}

// ---------------------------------------------------------------------------------------
// Memory

function validateVmas(vmas: Vma[], task: string): void {
  let previous: Vma | undefined
  for (const v of [...vmas].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))) {
    const where = `${task}/memory/vmas/${vmaName(v)}`
    if (v.start % PAGE !== 0n || v.end % PAGE !== 0n || v.start >= v.end) throw fail(where, 'not a page-aligned, non-empty range')
    const inUserSpace = v.end <= TASK_SIZE || (v.kind === 'vsyscall' && v.start === VSYSCALL_START)
    if (!inUserSpace) throw fail(where, 'not in user space')
    if (previous && v.start < previous.end) throw fail(where, `overlaps ${vmaName(previous)}`)
    previous = v
    if (!/^[r-][w-][x-][ps]$/.test(v.perms)) throw fail(`${where}/perms`, `not like rw-p: ${JSON.stringify(v.perms)}`)
    if (v.offset % PAGE !== 0n) throw fail(`${where}/offset`, `${hex(v.offset)} is not page-aligned`)
    const badDev = vmaDevProblem(v.dev)
    if (badDev !== undefined) throw fail(`${where}/dev`, badDev)
    const badFlags = vmFlagsProblem(v.vmFlags)
    if (badFlags !== undefined) throw fail(`${where}/vm_flags`, badFlags)
    const kind = vmaKind(v)
    if (v.kind !== kind) throw fail(`${where}/kind`, `${v.kind} does not fit perms ${v.perms} and path ${JSON.stringify(v.path)} (${kind})`)
    // A file mapping is made again from its path: the restore opens it as it is.
    const badPath = kind === 'file-private' || kind === 'file-shared' ? pathProblem(v.path) : undefined
    if (badPath !== undefined) throw fail(`${where}/path`, badPath)
    let stored = 0n
    let after = 0n
    for (const [i, run] of v.stored.entries()) {
      const what = `run ${i + 1} (${hex(run.offset)} ${hex(run.length)})`
      if (run.offset % PAGE !== 0n || run.length % PAGE !== 0n || run.length === 0n) throw fail(`${where}/stored_runs`, `${what} is not whole pages`)
      if (run.offset < after) throw fail(`${where}/stored_runs`, `${what} overlaps or precedes the run before it`)
      if (run.offset + run.length > v.end - v.start) throw fail(`${where}/stored_runs`, `${what} ends beyond the mapping (${hex(v.end - v.start)} bytes)`)
      after = run.offset + run.length
      stored += run.length
    }
    if (!storesPages(v) && v.stored.length > 0) throw fail(`${where}/stored_runs`, `a ${v.kind} mapping stores no pages`)
    if (BigInt(v.pages.size) !== stored) throw fail(`${where}/pages`, `${v.pages.size} bytes, stored runs need ${stored}`)
    if (v.inherited !== undefined && v.inherited.length > 0) {
      if (!inheritable(v)) throw fail(`${where}/inherited_runs`, `this ${v.kind} mapping (perms ${v.perms}, VmFlags ${JSON.stringify(v.vmFlags)}) cannot hold its parent's pages (only private anonymous, heap and stack memory that fork passes on)`)
      const badRuns = inheritedRunsProblem(v.inherited, v.stored, v.end - v.start)
      if (badRuns !== undefined) throw fail(`${where}/inherited_runs`, badRuns)
    }
  }
}

/**
 * Inherited runs (issue 17): a process holds pages as its parent's only where its parent, a
 * process of the tree, has the same private anonymous area (same range, kind, and nothing
 * that keeps fork from passing it on) and content there, stored or itself inherited; so
 * every inherited page is some ancestor's stored page, and a child gets only what the same
 * tree gives its parent. The root's parent is outside the tree: it inherits nothing.
 */
function validateInherited(saved: CheckpointParts): void {
  const tasks = [{ pid: saved.pid, ppid: saved.process.ppid, vmas: saved.vmas }, ...(saved.others ?? []).map((o) => ({ pid: o.pid, ppid: o.process.ppid, vmas: o.vmas }))]
  const byPid = new Map(tasks.map((t) => [t.pid, t]))
  const vmaAt = new Map<number, Map<bigint, Vma>>()
  for (const t of tasks) {
    for (const v of t.vmas) {
      if (v.inherited === undefined || v.inherited.length === 0) continue
      const where = `task-${t.pid}/memory/vmas/${vmaName(v)}/inherited_runs`
      const parent = t.pid === saved.pid ? undefined : byPid.get(t.ppid)
      if (!parent) throw fail(where, `its parent (${t.ppid}) is not a process of the tree: there is nothing to inherit from`)
      if (!vmaAt.has(parent.pid)) vmaAt.set(parent.pid, new Map(parent.vmas.map((x) => [x.start, x])))
      const p = vmaAt.get(parent.pid)!.get(v.start)
      if (!p || !sameInheritableArea(v, p)) throw fail(where, `task-${parent.pid} has no ${v.kind} mapping ${vmaName(v)} that fork passes on (${p ? `its is ${p.kind}, ${vmaName(p)}, VmFlags ${JSON.stringify(p.vmFlags)}` : 'none there'})`)
      const content = [...p.stored, ...(p.inherited ?? [])].sort((a, b) => (a.offset < b.offset ? -1 : 1))
      let c = 0
      for (const [i, run] of v.inherited.entries()) {
        // Walk the parent's content runs (ascending, apart) over [run.offset, run.offset + run.length).
        let at = run.offset
        const end = run.offset + run.length
        while (c > 0 && content[c - 1].offset + content[c - 1].length > at) c--
        while (at < end) {
          while (c < content.length && content[c].offset + content[c].length <= at) c++
          if (c >= content.length || content[c].offset > at) throw fail(where, `run ${i + 1} (${hex(run.offset)} ${hex(run.length)}): task-${parent.pid} has no content at offset ${hex(at)} of ${vmaName(p)} (neither stored nor inherited)`)
          at = content[c].offset + content[c].length
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// The file table

/**
 * Adds to `named` the descriptions in flight (passed with SCM_RIGHTS, queued in a socket) that a
 * named description holds, and those they hold in turn: reachable, though no fd names them.
 */
async function addInFlight(table: FileTable, named: Set<number>): Promise<void> {
  const byRef = new Map(table.files.map((d) => [d.objref as number, d]))
  const todo = [...named]
  while (todo.length) {
    const d = byRef.get(todo.pop()!)
    const passes = d && handlerOf(d).passes
    if (!passes) continue
    for (const ref of await passes(d)) {
      if (named.has(ref) || !byRef.has(ref)) continue
      named.add(ref)
      todo.push(ref)
    }
  }
}

/** The file table of task `task` (task-PID): fds, descriptions and what each type's handler checks. */
export async function validateFileTable(table: FileTable, task: string, otherTasks: Array<{ task: string; fds: FdEntry[] }> = []): Promise<void> {
  const objrefs = new Set<number>()
  for (const d of table.files) {
    if (d.objref < 1 || d.objref > 0x7fffffff) throw fail(`files/${d.objref}`, 'not an object reference')
    if (objrefs.has(d.objref)) throw fail(`files/${d.objref}`, 'described twice')
    objrefs.add(d.objref)
  }
  const named = new Set<number>()
  // A tree's files are every task's: each task's fds name them, and each is named by some fd.
  for (const { task: owner, fds } of [{ task, fds: table.fds }, ...otherTasks]) {
    const fdNumbers = new Set<number>()
    for (const e of fds) {
      const where = `${owner}/fds/${e.fd}`
      if (e.fd < 0 || e.fd > 0x7fffffff) throw fail(where, 'not an fd number')
      if (fdNumbers.has(e.fd)) throw fail(where, 'the fd is given twice')
      fdNumbers.add(e.fd)
      if (!objrefs.has(e.objref)) throw fail(`${where}/fd`, `names files/${e.objref}, which does not exist`)
      named.add(e.objref)
    }
  }
  if (table.files.some((d) => !named.has(d.objref))) await addInFlight(table, named)
  const unnamed = table.files.find((d) => !named.has(d.objref))
  if (unnamed) throw fail(`files/${unnamed.objref}`, otherTasks.length > 0 ? 'no fd of any task-PID/fds refers to it' : `no fd in ${task}/fds refers to it`)

  const ctx: ValidationContext = { table, objrefs }
  for (const d of table.files) {
    validateCommon(d)
    // Most handlers check synchronously: no promise for each of 10,000 /dev/null fds.
    const checked = handlerOf(d).validate?.(d, ctx)
    if (checked instanceof Promise) await checked
  }
}

// ---------------------------------------------------------------------------------------
// The process tree

/**
 * The links between the processes of a tree: each process other than the root, and each
 * zombie, has its parent in the tree, listed before it (parents first); the root's parent is
 * outside; a PID names one process; a session or process group other than the root's is led
 * by a process of the tree (a restore makes the leader first, then its members join).
 */
function validateTree(saved: CheckpointParts): void {
  const others = saved.others ?? []
  const zombies = saved.zombies ?? []
  if (others.length === 0 && zombies.length === 0) return
  const root = saved.process
  const members = [
    { pid: saved.pid, ppid: root.ppid, pgid: root.pgid, sid: root.sid, zombie: false },
    ...others.map((o) => ({ pid: o.pid, ppid: o.process.ppid, pgid: o.process.pgid, sid: o.process.sid, zombie: false })),
    ...zombies.map((z) => ({ pid: z.pid, ppid: z.ppid, pgid: z.pgid, sid: z.sid, zombie: true })),
  ]
  for (const z of zombies) checkComm(z.comm, `task-${z.pid}/comm`)
  const byPid = new Map<number, (typeof members)[number]>()
  const tids = new Map<number, number>()
  for (const task of [{ pid: saved.pid, threads: saved.threads }, ...others]) {
    for (const { tid } of task.threads) {
      if (tids.has(tid) && tids.get(tid) !== task.pid) throw fail(`task-${task.pid}/threads/${tid}`, `thread ${tid} is also a thread of task-${tids.get(tid)}`)
      tids.set(tid, task.pid)
    }
  }
  members.forEach((m, i) => {
    const where = `task-${m.pid}`
    if (byPid.has(m.pid)) throw fail(where, `process ${m.pid} is in the tree twice`)
    if (i > 0 && tids.has(m.pid) && tids.get(m.pid) !== m.pid) throw fail(where, `${m.pid} is a thread of task-${tids.get(m.pid)}`)
    if (i === 0) {
      if (members.some((o) => o.pid === m.ppid)) throw fail(`${where}/ppid`, `${m.ppid}: the root's parent is a process of its own tree`)
    } else {
      const parent = byPid.get(m.ppid)
      if (!parent) throw fail(`${where}/ppid`, `${m.ppid} is not a process of the tree listed before it (the root is ${saved.pid}; parents come first)`)
      if (parent.zombie) throw fail(`${where}/ppid`, `${m.ppid} is a zombie: it cannot have children`)
    }
    byPid.set(m.pid, m)
  })
  for (const m of members) {
    const where = `task-${m.pid}`
    if (m.sid !== root.sid) {
      const leader = byPid.get(m.sid)
      if (!leader || leader.sid !== leader.pid) throw fail(`${where}/sid`, `session ${m.sid} is neither the root's session (${root.sid}) nor led by a process of the tree`)
    }
    if (m.pgid !== root.pgid) {
      const leader = byPid.get(m.pgid)
      if (!leader || leader.pgid !== leader.pid) throw fail(`${where}/pgid`, `process group ${m.pgid} is neither the root's group (${root.pgid}) nor led by a process of the tree`)
      if (leader.sid !== m.sid) throw fail(`${where}/pgid`, `process group ${m.pgid} is in session ${leader.sid}, not in this process's session ${m.sid}`)
    }
  }
}
