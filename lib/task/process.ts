// Process-wide state of a task: identity, credentials, limits, signal actions, timers and the
// mm fields. Capture (from /proc and injected calls), the task-PID/ entries that show it, and
// the loader that reads a saved copy back, with the same names in one place.

import type { Credentials, ITimer, MmFields, PosixTimer, Problem, ProcessState, Rlimit, SigAction, TaskImage, Vma } from '../model'
import { asPid } from '../model'
import { CkptError } from '../errors'
import type { SavedDir } from '../files/saved'
import { native } from '../native'
import { attr, each, PUBLIC, sub, type TableEntry } from '../tree/node'
import { checkedBytes } from '../tree/checked'
import {
  absolutePath, decimal, decimalList, decimalU64, deferred, field, flag, FormatError, hexNumber, hexU64, int32, loadEach,
  octalNumber, readCheckedBytes, readValue, text, uint32, type Codec,
} from './fields'
import { exclusive, inject, succeeded, SYS, type CallWithResult } from './inject'
import { vmaName } from './memory'

/** A process ID as saved: 0 (none) up to the largest int32. */
const PID_NUMBER = decimal(0, 0x7fffffff)
import { captureSeccomp, loadSeccomp, seccompEntry } from './seccomp'
import {
  liveThread, parseLimits, parseTimers, readProcBytes, readProcLink, readProcText, RLIM_INFINITY, RLIMITS, STAT, StatFields,
  StatusFields,
} from './procfs'

// ---------------------------------------------------------------------------------------
// Signals

const SIGKILL = 9
const SIGSTOP = 19
const SIGNAL_NAMES = [
  'SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGILL', 'SIGTRAP', 'SIGABRT', 'SIGBUS', 'SIGFPE', 'SIGKILL', 'SIGUSR1',
  'SIGSEGV', 'SIGUSR2', 'SIGPIPE', 'SIGALRM', 'SIGTERM', 'SIGSTKFLT', 'SIGCHLD', 'SIGCONT', 'SIGSTOP', 'SIGTSTP',
  'SIGTTIN', 'SIGTTOU', 'SIGURG', 'SIGXCPU', 'SIGXFSZ', 'SIGVTALRM', 'SIGPROF', 'SIGWINCH', 'SIGIO', 'SIGPWR', 'SIGSYS',
]

/** SIGHUP .. SIGSYS by name; real-time signals as SIG32 .. SIG64 (glibc's SIGRTMIN moves). */
export function signalName(signal: number): string {
  return SIGNAL_NAMES[signal - 1] ?? `SIG${signal}`
}

/** SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU: the signals that stop a process. */
export const STOP_SIGNALS = [19, 20, 21, 22]

/** Signals whose action can be read and set: all but SIGKILL and SIGSTOP. */
export const ACTION_SIGNALS = Array.from({ length: 64 }, (_, i) => i + 1).filter((s) => s !== SIGKILL && s !== SIGSTOP)

/** Size of one siginfo_t record as PTRACE_PEEKSIGINFO returns it. */
export const SIGINFO_SIZE = 128

// ---------------------------------------------------------------------------------------
// Capture

const PR_GET_PDEATHSIG = 2
const PR_GET_CHILD_SUBREAPER = 37
const PR_GET_DUMPABLE = 3
const PR_GET_SECUREBITS = 27
const PR_GET_NO_NEW_PRIVS = 39
const PR_GET_THP_DISABLE = 42
const ITIMER_WHICH = ['real', 'virtual', 'prof'] as const
/** struct kernel_sigaction {handler, flags, restorer, mask}, itimerval and itimerspec: 4 x u64. */
const FOUR_WORDS = 32

/**
 * Captures the process-wide state of task `pid` (all of whose threads `tids` are frozen;
 * `stopSignal`: the group stop it was frozen in, 0 if none). Seccomp filters are captured
 * (seccomp.ts); strict mode is each thread's (threads.ts). The calls injected here pass a
 * thread in strict mode: the task is held with PTRACE_O_SUSPEND_SECCOMP.
 */
export async function captureProcess(pid: number, tids: number[], stopSignal = 0): Promise<ProcessState> {
  const live = await liveThread(pid, tids)
  // The status under the injection lock: no batch runs in the task while it is read (threads.ts).
  const [statText, statusText, limitsText, timersText, personalityText, comm, cmdline, environ, auxv, exe, cwd, root] = await Promise.all([
    readProcText(pid, 'stat', live), exclusive(pid, () => readProcText(pid, 'status', live)), readProcText(pid, 'limits', live),
    readProcText(pid, 'timers'), readProcText(pid, 'personality', live), readProcText(pid, 'comm'),
    readProcBytes(pid, 'cmdline', live), readProcBytes(pid, 'environ', live), readProcBytes(pid, 'auxv', live),
    readProcLink(pid, 'exe', live), readProcLink(pid, 'cwd', live), readProcLink(pid, 'root', live),
  ])
  const stat = new StatFields(statText)
  const status = new StatusFields(statusText)
  const seccompMode = status.number('Seccomp')
  const timerListing = parseTimers(timersText)

  const calls: CallWithResult[] = [
    ...ACTION_SIGNALS.map((signal) => ({ nr: SYS.rt_sigaction, args: [BigInt(signal), 0n, 0n, 8n], out: { arg: 2, size: FOUR_WORDS } })),
    ...ITIMER_WHICH.map((_, which) => ({ nr: SYS.getitimer, args: [BigInt(which), 0n], out: { arg: 1, size: FOUR_WORDS } })),
    ...timerListing.flatMap((t) => [
      { nr: SYS.timer_gettime, args: [BigInt(t.id), 0n], out: { arg: 1, size: FOUR_WORDS } },
      { nr: SYS.timer_getoverrun, args: [BigInt(t.id)] },
    ]),
    { nr: SYS.prctl, args: [BigInt(PR_GET_NO_NEW_PRIVS), 0n, 0n, 0n, 0n] },
    { nr: SYS.prctl, args: [BigInt(PR_GET_DUMPABLE), 0n, 0n, 0n, 0n] },
    { nr: SYS.prctl, args: [BigInt(PR_GET_SECUREBITS), 0n, 0n, 0n, 0n] },
    { nr: SYS.prctl, args: [BigInt(PR_GET_THP_DISABLE), 0n, 0n, 0n, 0n] },
    // The thread injected into: the main thread unless it has exited.
    { nr: SYS.prctl, args: [BigInt(PR_GET_PDEATHSIG), 0n, 0n, 0n, 0n], out: { arg: 1, size: 4 } },
    { nr: SYS.prctl, args: [BigInt(PR_GET_CHILD_SUBREAPER), 0n, 0n, 0n, 0n], out: { arg: 1, size: 4 } },
    { nr: SYS.brk, args: [0n] },
  ]
  const results = await inject(pid, live, calls)
  let next = 0
  const take = (what: string) => succeeded(results[next++], `task-${pid}: ${what}`)

  const sigactions: SigAction[] = ACTION_SIGNALS.map((signal) => {
    const out = take(`rt_sigaction(${signalName(signal)})`).out
    return { signal, handler: word(out, 0), flags: word(out, 1), restorer: word(out, 2), mask: word(out, 3) }
  })
  const itimers: ITimer[] = ITIMER_WHICH.map((which) => {
    const out = take(`getitimer(${which})`).out
    return { which, intervalUs: timeval(out, 0), valueUs: timeval(out, 2) }
  })
  const posixTimers: PosixTimer[] = timerListing.map((t) => {
    const spec = take(`timer_gettime(${t.id})`).out
    const overrun = Number(take(`timer_getoverrun(${t.id})`).ret)
    return { ...t, intervalNs: timespec(spec, 0), valueNs: timespec(spec, 2), overrun }
  })
  const noNewPrivs = take('prctl(PR_GET_NO_NEW_PRIVS)').ret === 1n
  const dumpable = Number(take('prctl(PR_GET_DUMPABLE)').ret)
  const securebits = Number(take('prctl(PR_GET_SECUREBITS)').ret)
  const thpDisable = Number(take('prctl(PR_GET_THP_DISABLE)').ret)
  const pdeathSignal = take('prctl(PR_GET_PDEATHSIG)').out.readInt32LE(0)
  const childSubreaper = take('prctl(PR_GET_CHILD_SUBREAPER)').out.readInt32LE(0) !== 0
  const brk = take('brk(0)').ret

  const [uid, euid, suid, fsuid] = status.numbers('Uid')
  const [gid, egid, sgid, fsgid] = status.numbers('Gid')
  const creds: Credentials = {
    uid, euid, suid, fsuid, gid, egid, sgid, fsgid,
    groups: status.numbers('Groups'),
    capInheritable: status.mask('CapInh'), capPermitted: status.mask('CapPrm'), capEffective: status.mask('CapEff'),
    capBounding: status.mask('CapBnd'), capAmbient: status.mask('CapAmb'),
    securebits,
  }
  const mm: MmFields = {
    startCode: stat.bigint(STAT.startCode), endCode: stat.bigint(STAT.endCode),
    startData: stat.bigint(STAT.startData), endData: stat.bigint(STAT.endData),
    startBrk: stat.bigint(STAT.startBrk), brk,
    startStack: stat.bigint(STAT.startStack),
    argStart: stat.bigint(STAT.argStart), argEnd: stat.bigint(STAT.argEnd),
    envStart: stat.bigint(STAT.envStart), envEnd: stat.bigint(STAT.envEnd),
    auxv, exe,
  }
  const sharedPendingSiginfo = await native.peekSiginfo(live, true)
  // Every thread's own chain (the frozen threads are seized with PTRACE_O_SUSPEND_SECCOMP, so
  // the calls injected above ran unfiltered).
  const seccomp = await captureSeccomp(pid, tids)
  return {
    pid: asPid(pid),
    comm: comm.replace(/\n$/, ''),
    exe, cmdline, environ, cwd, root,
    umask: parseInt(status.text('Umask'), 8),
    personality: parseInt(personalityText.trim(), 16),
    ppid: stat.number(STAT.ppid),
    pgid: stat.number(STAT.pgrp),
    sid: stat.number(STAT.session),
    ttyNr: stat.number(STAT.ttyNr),
    noNewPrivs,
    dumpable,
    thpDisable,
    pdeathSignal,
    childSubreaper,
    stopSignal,
    seccompMode,
    ...seccomp,
    creds,
    rlimits: parseLimits(limitsText),
    sigactions,
    sharedPendingMask: status.mask('ShdPnd'),
    sharedPendingSiginfo,
    itimers,
    posixTimers,
    mm,
  }
}

const word = (buf: Buffer, index: number): bigint => buf.readBigUInt64LE(index * 8)
const timeval = (buf: Buffer, index: number): bigint => word(buf, index) * 1_000_000n + word(buf, index + 1)
const timespec = (buf: Buffer, index: number): bigint => word(buf, index) * 1_000_000_000n + word(buf, index + 1)

// ---------------------------------------------------------------------------------------
// What prevents a restore

/** Everything about the task that a restore cannot bring back, one problem each, named by its place in the tree. */
/** `liveTids`: the threads that have not exited (the captured ones, or those /proc shows). */
export function processProblems(p: Pick<ProcessState, 'pid'>, liveTids: readonly number[], vmas: Vma[]): Problem[] {
  const task = `task-${p.pid}`
  const problems: Problem[] = []
  if (!liveTids.includes(Number(p.pid))) {
    problems.push({ where: `${task}/threads/${p.pid}`, why: 'the main thread has exited: a restore cannot re-create a process without it' })
  }
  for (const vma of vmas) {
    const why = vmaProblem(vma)
    if (why) problems.push({ where: `${task}/memory/vmas/${vmaName(vma)}`, why })
  }
  return problems
}

function vmaProblem(vma: Vma): string | undefined {
  const flags = vma.vmFlags.split(' ')
  // The kernel's own mappings (vvar is VM_PFNMAP) are re-created by the kernel, not from the tree.
  if (vma.kind === 'vvar' || vma.kind === 'vsyscall' || vma.kind === 'vdso') return undefined
  if (vma.path === '/secretmem (deleted)') return 'memfd_secret memory: its contents cannot be read from outside the task'
  if (vma.kind === 'special') return `special mapping ${vma.path}: cannot be saved or re-created`
  if (/^socket:\[\d+\]$/.test(vma.path)) return `a mapping of ${vma.path} (a packet socket's ring, PACKET_RX_RING or PACKET_TX_RING mapped): its frames are the kernel's, which a restore cannot map again`
  if (flags.includes('ht')) return 'hugetlbfs mapping: not supported'
  if (flags.includes('io') || flags.includes('pf')) return `device memory (${vma.path || 'no path'}): not checkpointable`
  return undefined
}

// ---------------------------------------------------------------------------------------
// Value formats

/** comm: its length is checked by lib/restore/validate.ts, for trees and images alike. */
const commText = text()
const rlimitValue: Codec<bigint> = {
  show: (v) => (v === RLIM_INFINITY ? 'unlimited' : v),
  parse: (value) => (value === 'unlimited' ? RLIM_INFINITY : decimalU64.parse(value)),
}
const u32Hex = hexNumber(0xffffffff)
/** What prctl(PR_GET_THP_DISABLE) returns: 0, 1, or 1 | PR_THP_DISABLE_EXCEPT_ADVISED (2). */
const thpDisableValue: Codec<number> = {
  show: (v) => v,
  parse: (value) => {
    const v = decimal(0, 3).parse(value)
    if (v === 2) throw new FormatError('2 is not a PR_GET_THP_DISABLE value (0, 1 or 3)')
    return v
  },
}
/** A stop signal (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) or 0. */
const stopSignalValue: Codec<number> = {
  show: (v) => v,
  parse: (value) => {
    const v = decimal(0, 64).parse(value)
    if (v !== 0 && !STOP_SIGNALS.includes(v)) throw new FormatError(`${v} is not a stop signal (SIGSTOP 19, SIGTSTP 20, SIGTTIN 21, SIGTTOU 22) or 0`)
    return v
  },
}
const notifyText = text((v) => (/^(signal|none|thread)\/(pid|tid)\.\d+$/.test(v) ? undefined : `not KIND/pid.N or KIND/tid.N: ${JSON.stringify(v)}`))

// ---------------------------------------------------------------------------------------
// Tree: the process part of task-PID/

// All of creds/ is in /proc/PID/status, which every user may read.
const credsEntries: TableEntry<Credentials>[] = [
  field('uid', uint32, (c) => c.uid, PUBLIC), field('euid', uint32, (c) => c.euid, PUBLIC),
  field('suid', uint32, (c) => c.suid, PUBLIC), field('fsuid', uint32, (c) => c.fsuid, PUBLIC),
  field('gid', uint32, (c) => c.gid, PUBLIC), field('egid', uint32, (c) => c.egid, PUBLIC),
  field('sgid', uint32, (c) => c.sgid, PUBLIC), field('fsgid', uint32, (c) => c.fsgid, PUBLIC),
  field('groups', decimalList, (c) => c.groups, PUBLIC),
  field('cap_inheritable', hexU64, (c) => c.capInheritable, PUBLIC),
  field('cap_permitted', hexU64, (c) => c.capPermitted, PUBLIC),
  field('cap_effective', hexU64, (c) => c.capEffective, PUBLIC),
  field('cap_bounding', hexU64, (c) => c.capBounding, PUBLIC),
  field('cap_ambient', hexU64, (c) => c.capAmbient, PUBLIC),
  field('securebits', u32Hex, (c) => c.securebits, PUBLIC),
]

const rlimitEntries: TableEntry<Rlimit>[] = [
  // /proc/PID/limits is readable by every user.
  field('soft', rlimitValue, (r) => r.soft, PUBLIC),
  field('hard', rlimitValue, (r) => r.hard, PUBLIC),
]

const actionEntries: TableEntry<SigAction>[] = [
  attr('name', (a) => signalName(a.signal)),
  field('handler', hexU64, (a) => a.handler),
  field('flags', hexU64, (a) => a.flags),
  field('restorer', hexU64, (a) => a.restorer),
  field('mask', hexU64, (a) => a.mask),
]

const signalEntries: TableEntry<ProcessState>[] = [
  // The pending set is in /proc/PID/status (ShdPnd); siginfo and handler addresses are not.
  field('pending', hexU64, (p) => p.sharedPendingMask, PUBLIC),
  ...checkedBytes('pending_siginfo', (p: ProcessState) => p.sharedPendingSiginfo),
  // Only the signals whose action is not the default (SIG_DFL, no flags, no mask): a process
  // that handles three signals shows three directories, not 62 (each of 6 files: most of a
  // small process's tree, and of what `cp -a` copies through FUSE). A missing one is SIG_DFL.
  each('actions', async (p) => new Map(p.sigactions.filter((a) => !isDefaultAction(a)).map((a) => [String(a.signal), a])), actionEntries),
]

const itimerEntries: TableEntry<ITimer>[] = [
  field('value_us', decimalU64, (t) => t.valueUs),
  field('interval_us', decimalU64, (t) => t.intervalUs),
]

const posixTimerEntries: TableEntry<PosixTimer>[] = [
  field('signal', decimal(0, 64), (t) => t.signal),
  field('sigev_value', hexU64, (t) => t.sigevValue),
  field('notify', notifyText, (t) => t.notify),
  field('clockid', int32, (t) => t.clockid),
  field('value_ns', decimalU64, (t) => t.valueNs),
  field('interval_ns', decimalU64, (t) => t.intervalNs),
  field('overrun', int32, (t) => t.overrun),
]

function itimer(p: ProcessState, which: ITimer['which']): ITimer {
  const found = p.itimers.find((t) => t.which === which)
  if (!found) throw new CkptError(`task-${p.pid}: no itimer_${which}`)
  return found
}

const timerEntries: TableEntry<ProcessState>[] = [
  ...ITIMER_WHICH.map((which) => sub(`itimer_${which}`, (p: ProcessState) => itimer(p, which), itimerEntries)),
  each('posix', async (p) => new Map(p.posixTimers.map((t) => [String(t.id), t])), posixTimerEntries),
]

const MM_ADDRESSES = [
  ['start_code', 'startCode'], ['end_code', 'endCode'], ['start_data', 'startData'], ['end_data', 'endData'],
  ['start_brk', 'startBrk'], ['brk', 'brk'], ['start_stack', 'startStack'],
  ['arg_start', 'argStart'], ['arg_end', 'argEnd'], ['env_start', 'envStart'], ['env_end', 'envEnd'],
] as const

const mmEntries: TableEntry<MmFields>[] = [
  ...MM_ADDRESSES.map(([name, key]) => field(name, hexU64, (m: MmFields) => m[key])),
  ...checkedBytes('auxv', (m: MmFields) => m.auxv),
]

// Public where /proc shows the value to every user (cmdline; comm, ids, tty in stat; umask,
// no_new_privs and seccomp mode in status); exe, cwd, root, environ and personality need a
// ptrace check or the owner there, and stay private.
const processFiles: TableEntry<ProcessState>[] = [
  field('comm', commText, (p) => p.comm, PUBLIC),
  field('exe', absolutePath, (p) => p.exe),
  field('cwd', absolutePath, (p) => p.cwd),
  field('root', absolutePath, (p) => p.root),
  ...checkedBytes('cmdline', (p: ProcessState) => p.cmdline, PUBLIC),
  ...checkedBytes('environ', (p: ProcessState) => p.environ),
  field('umask', octalNumber(0o777), (p) => p.umask, PUBLIC),
  field('personality', u32Hex, (p) => p.personality),
  field('ppid', uint32, (p) => p.ppid, PUBLIC),
  field('pgid', uint32, (p) => p.pgid, PUBLIC),
  field('sid', uint32, (p) => p.sid, PUBLIC),
  field('tty_nr', uint32, (p) => p.ttyNr, PUBLIC),
  field('no_new_privs', flag, (p) => p.noNewPrivs, PUBLIC),
  field('dumpable', decimal(0, 2), (p) => p.dumpable),
  field('thp_disable', thpDisableValue, (p) => p.thpDisable),
  field('pdeath_signal', decimal(0, 64), (p) => p.pdeathSignal),
  field('child_subreaper', flag, (p) => p.childSubreaper),
  // /proc/PID/stat shows every user the state (T: stopped).
  field('stop_signal', stopSignalValue, (p) => p.stopSignal, PUBLIC),
  field('seccomp_mode', decimal(0, 2), (p) => p.seccompMode, PUBLIC),
]

/** The entries of task-PID/ that show the process part; nothing is captured until one is read. */
export function processEntries(): TableEntry<TaskImage>[] {
  return [
    ...deferred((t: TaskImage) => t.process(), processFiles),
    sub('creds', async (t: TaskImage) => (await t.process()).creds, credsEntries, PUBLIC),
    each('rlimits', async (t: TaskImage) => new Map((await t.process()).rlimits.map((r) => [r.name, r])), rlimitEntries, PUBLIC),
    sub('signals', (t: TaskImage) => t.process(), signalEntries, PUBLIC),
    sub('timers', (t: TaskImage) => t.process(), timerEntries),
    sub('mm', async (t: TaskImage) => (await t.process()).mm, mmEntries),
    seccompEntry(),
  ]
}

// ---------------------------------------------------------------------------------------
// Loading a saved copy

const MAX_ARGS_BYTES = 2 * 1024 * 1024
const MAX_AUXV_BYTES = 4096
const MAX_QUEUED_SIGINFO = 4096

/** Reads the process part of a saved task-PID/ (`dir`) back, validating every value. */
export async function loadProcess(dir: SavedDir, pid: number): Promise<ProcessState> {
  const exe = readValue(dir, 'exe', absolutePath)

  const signals = dir.dir('signals')
  const sharedPendingMask = readValue(signals, 'pending', hexU64)
  const sharedPendingSiginfo = await loadSiginfo(signals, 'pending_siginfo')
  const sigactions = await loadActions(signals.dir('actions'))
  signals.finish()

  const timers = dir.dir('timers')
  const itimers = await loadItimers(timers)
  const posixTimers = await loadPosixTimers(timers.dir('posix'))
  timers.finish()

  return {
    pid: asPid(pid),
    comm: readValue(dir, 'comm', commText),
    exe,
    cwd: readValue(dir, 'cwd', absolutePath),
    root: readValue(dir, 'root', absolutePath),
    cmdline: await readCheckedBytes(dir, 'cmdline', MAX_ARGS_BYTES),
    environ: await readCheckedBytes(dir, 'environ', MAX_ARGS_BYTES),
    umask: readValue(dir, 'umask', octalNumber(0o777)),
    personality: readValue(dir, 'personality', u32Hex),
    // PIDs: the image holds them as int32, so a larger number is refused here too.
    ppid: readValue(dir, 'ppid', PID_NUMBER),
    pgid: readValue(dir, 'pgid', PID_NUMBER),
    sid: readValue(dir, 'sid', PID_NUMBER),
    ttyNr: readValue(dir, 'tty_nr', uint32),
    noNewPrivs: readValue(dir, 'no_new_privs', flag),
    dumpable: readValue(dir, 'dumpable', decimal(0, 2)),
    thpDisable: readValue(dir, 'thp_disable', thpDisableValue),
    pdeathSignal: readValue(dir, 'pdeath_signal', decimal(0, 64)),
    // A tree saved before it was kept has none: the restore then did not set it.
    childSubreaper: dir.has('child_subreaper') ? readValue(dir, 'child_subreaper', flag) : false,
    stopSignal: readValue(dir, 'stop_signal', stopSignalValue),
    seccompMode: readValue(dir, 'seccomp_mode', decimal(0, 2)),
    ...(await loadSeccomp(dir)),
    creds: await loadCreds(dir.dir('creds')),
    rlimits: await loadRlimits(dir.dir('rlimits')),
    sigactions,
    sharedPendingMask,
    sharedPendingSiginfo,
    itimers,
    posixTimers,
    mm: await loadMm(dir.dir('mm'), exe),
  }
}

async function loadCreds(dir: SavedDir): Promise<Credentials> {
  const creds: Credentials = {
    uid: readValue(dir, 'uid', uint32), euid: readValue(dir, 'euid', uint32),
    suid: readValue(dir, 'suid', uint32), fsuid: readValue(dir, 'fsuid', uint32),
    gid: readValue(dir, 'gid', uint32), egid: readValue(dir, 'egid', uint32),
    sgid: readValue(dir, 'sgid', uint32), fsgid: readValue(dir, 'fsgid', uint32),
    groups: readValue(dir, 'groups', decimalList),
    capInheritable: readValue(dir, 'cap_inheritable', hexU64),
    capPermitted: readValue(dir, 'cap_permitted', hexU64),
    capEffective: readValue(dir, 'cap_effective', hexU64),
    capBounding: readValue(dir, 'cap_bounding', hexU64),
    capAmbient: readValue(dir, 'cap_ambient', hexU64),
    securebits: readValue(dir, 'securebits', u32Hex),
  }
  dir.finish()
  return creds
}

async function loadRlimits(dir: SavedDir): Promise<Rlimit[]> {
  const limits = await loadEach([...RLIMITS.entries()], async ([resource, { name }]): Promise<Rlimit> => {
    const one = dir.dir(name)
    const soft = readValue(one, 'soft', rlimitValue)
    const hard = readValue(one, 'hard', rlimitValue)
    one.finish()
    return { resource, name, soft, hard }
  })
  dir.finish()
  return limits
}

/** Why `signal` can have no saved action (the same words for a tree and an image), or undefined. */
export function notAnActionSignal(signal: number): string | undefined {
  if (ACTION_SIGNALS.includes(signal)) return undefined
  return signal === SIGKILL || signal === SIGSTOP ? `${signalName(signal)}'s action cannot be set` : 'not the number of a signal with an action (1-64 but SIGKILL and SIGSTOP)'
}

/** SIG_DFL with no flags, mask or restorer: what a process starts with, and what `actions/` leaves out. */
export function isDefaultAction(a: SigAction): boolean {
  return a.handler === 0n && a.flags === 0n && a.restorer === 0n && a.mask === 0n
}

/** The saved actions (`actions/SIGNUM/`, the non-default ones), and SIG_DFL for every other signal. */
async function loadActions(dir: SavedDir): Promise<SigAction[]> {
  const saved = await loadEach(dir.names(), async (entry): Promise<SigAction> => {
    const signal = /^[1-9][0-9]?$/.test(entry) ? Number(entry) : NaN
    const wrong = notAnActionSignal(signal)
    if (wrong) throw dir.fail(entry, wrong)
    const one = dir.dir(entry)
    const name = one.text('name')
    if (name !== signalName(signal)) throw one.fail('name', `${JSON.stringify(name)} is not signal ${signal} (${signalName(signal)})`)
    const action = {
      signal,
      handler: readValue(one, 'handler', hexU64),
      flags: readValue(one, 'flags', hexU64),
      restorer: readValue(one, 'restorer', hexU64),
      mask: readValue(one, 'mask', hexU64),
    }
    one.finish()
    return action
  })
  dir.finish()
  const bySignal = new Map(saved.map((a) => [a.signal, a]))
  return ACTION_SIGNALS.map((signal) => bySignal.get(signal) ?? { signal, handler: 0n, flags: 0n, restorer: 0n, mask: 0n })
}

/** siginfo records (lib/restore/validate.ts checks they are whole and for pending signals). */
export async function loadSiginfo(dir: SavedDir, name: string): Promise<Buffer> {
  return readCheckedBytes(dir, name, MAX_QUEUED_SIGINFO * SIGINFO_SIZE)
}

async function loadItimers(dir: SavedDir): Promise<ITimer[]> {
  const timers: ITimer[] = []
  for (const which of ITIMER_WHICH) {
    const one = dir.dir(`itimer_${which}`)
    timers.push({ which, valueUs: readValue(one, 'value_us', decimalU64), intervalUs: readValue(one, 'interval_us', decimalU64) })
    one.finish()
  }
  return timers
}

async function loadPosixTimers(dir: SavedDir): Promise<PosixTimer[]> {
  const timers = await loadEach(dir.names(), async (entry): Promise<PosixTimer> => {
    if (!/^(0|[1-9]\d{0,9})$/.test(entry) || Number(entry) > 2 ** 31 - 1) throw dir.fail(entry, 'not a timer ID (decimal)')
    const one = dir.dir(entry)
    const timer = {
      id: Number(entry),
      signal: readValue(one, 'signal', decimal(0, 64)),
      sigevValue: readValue(one, 'sigev_value', hexU64),
      notify: readValue(one, 'notify', notifyText),
      clockid: readValue(one, 'clockid', int32),
      valueNs: readValue(one, 'value_ns', decimalU64),
      intervalNs: readValue(one, 'interval_ns', decimalU64),
      overrun: readValue(one, 'overrun', int32),
    }
    one.finish()
    return timer
  })
  return timers.sort((a, b) => a.id - b.id)
}

async function loadMm(dir: SavedDir, exe: string): Promise<MmFields> {
  const at = (name: string) => readValue(dir, name, hexU64)
  const mm: MmFields = {
    startCode: await at('start_code'), endCode: await at('end_code'),
    startData: await at('start_data'), endData: await at('end_data'),
    startBrk: await at('start_brk'), brk: await at('brk'),
    startStack: await at('start_stack'),
    argStart: await at('arg_start'), argEnd: await at('arg_end'),
    envStart: await at('env_start'), envEnd: await at('env_end'),
    auxv: await readCheckedBytes(dir, 'auxv', MAX_AUXV_BYTES),
    exe,
  }
  dir.finish()
  return mm
}
