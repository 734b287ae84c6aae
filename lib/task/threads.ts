// Per-thread state: registers, the xsave area, signal mask and pending signals, rseq, the
// system call a thread was in and its alternate signal stack. Capture, the threads/TID/
// entries and the loader of a saved copy.

import type { SigAltStack, TaskImage, ThreadState } from '../model'
import { asTid } from '../model'
import { CkptError, messageOf } from '../errors'
import type { SavedDir } from '../files/saved'
import { native } from '../native'
import { checkedBytes } from '../tree/checked'
import { DIR_PERM, PUBLIC, tableDir, type DirNode, type Scope, type TableEntry } from '../tree/node'
import { decimalS64, decimalU64, field, flag, hexNumber, hexU64, int32, loadEach, readCheckedBytes, readValue, text, uint32 } from './fields'
import { exclusive, inject, succeeded, SYS } from './inject'
import { loadSiginfo } from './process'
import { readProcText, StatusFields } from './procfs'
import { XSAVE_FEATURES_AT, XSTATE_MAX, XSTATE_MIN } from '../abi'

/** struct user_regs_struct on x86-64: 27 words; the ones read here, by index. */
export const USER_REGS_SIZE = 27 * 8
const REG = { rax: 10, origRax: 15, rip: 16, cs: 17, rsp: 19, fsBase: 21, gsBase: 22 } as const
const reg = (regs: Buffer, index: number): bigint => regs.readBigUInt64LE(index * 8)

/** stack_t: {ss_sp u64, ss_flags i32 (+pad), ss_size u64}. */
const STACK_T_SIZE = 24
/** prctl(PR_GET_TID_ADDRESS, &out): the thread's clear_child_tid (CONFIG_CHECKPOINT_RESTORE). */
const PR_GET_TID_ADDRESS = 40

/** Captures every thread of task `pid` (all frozen). */
export async function captureThreads(pid: number, tids: number[]): Promise<ThreadState[]> {
  return Promise.all(tids.map((tid) => captureThread(pid, tid)))
}

async function captureThread(pid: number, tid: number): Promise<ThreadState> {
  const where = `task-${pid}/threads/${tid}`
  const [cpu, comm, status, pendingSiginfo, altstack] = await Promise.all([
    native.getThreadRegisters(tid).catch((err: unknown) => {
      throw new CkptError(`${where}: cannot read its registers: ${messageOf(err)}`, 'ESRCH')
    }),
    readProcText(pid, 'comm', tid),
    // Under the task's injection lock: while a call is injected into this thread (below, or
    // the process capture's batch in the main thread), the trap of its single step is a
    // SIGTRAP the kernel has queued and not yet taken, and SigPnd shows it. Captured, the
    // tree's pending set is wrong, and a restore takes an epoll_wait's or sigtimedwait's EINTR
    // for a genuine one (lib/restore/restart.ts) (CI14: SigPnd 0x10 on a busy machine).
    exclusive(pid, () => readProcText(pid, 'status', tid)),
    native.peekSiginfo(tid, false),
    inject(pid, tid, [
      { nr: SYS.sigaltstack, args: [0n, 0n], out: { arg: 1, size: STACK_T_SIZE } },
      { nr: SYS.prctl, args: [BigInt(PR_GET_TID_ADDRESS), 0n, 0n, 0n, 0n], out: { arg: 1, size: 8 } },
      { nr: SYS.get_robust_list, args: [0n, 0n, 0n], out: { arg: 1, size: 16, second: { arg: 2, at: 8 } } },
    ]),
  ])
  const stack = succeeded(altstack[0], `${where}: sigaltstack`).out
  const clearChildTid = succeeded(altstack[1], `${where}: prctl(PR_GET_TID_ADDRESS)`).out.readBigUInt64LE(0)
  const robust = succeeded(altstack[2], `${where}: get_robust_list`).out
  const fields = new StatusFields(status)
  return {
    tid: asTid(tid),
    comm: comm.replace(/\n$/, ''),
    regs: cpu.regs,
    xstate: cpu.xstate,
    ...fromRegs(cpu.regs),
    sigmask: cpu.sigmask,
    pendingMask: fields.mask('SigPnd'),
    pendingSiginfo,
    rseq: cpu.rseq,
    altstack: { sp: stack.readBigUInt64LE(0), flags: stack.readInt32LE(8), size: stack.readBigUInt64LE(16) },
    clearChildTid,
    robustList: { head: robust.readBigUInt64LE(0), length: robust.readBigUInt64LE(8) },
    seccompStrict: fields.number('Seccomp') === 1,
  }
}

/** The values ThreadState keeps next to the raw registers (they must agree with them). */
function fromRegs(regs: Buffer): Pick<ThreadState, 'fsBase' | 'gsBase' | 'syscall'> {
  return {
    fsBase: reg(regs, REG.fsBase),
    gsBase: reg(regs, REG.gsBase),
    syscall: { nr: Number(BigInt.asIntN(64, reg(regs, REG.origRax))), result: BigInt.asIntN(64, reg(regs, REG.rax)) },
  }
}

// ---------------------------------------------------------------------------------------
// Tree: threads/TID/

/** comm: its length is checked by lib/restore/validate.ts, for trees and images alike. */
const commText = text()
const u32Hex = hexNumber(0xffffffff)
/** Its known bits (SS_ONSTACK, SS_DISABLE, SS_AUTODISARM) are checked by lib/restore/validate.ts. */
const altstackFlags = hexNumber(0xffffffff)

// Public where /proc/PID/task/TID shows the value to every user (comm; the blocked and pending
// sets in status); registers, addresses and siginfo are private, as /proc keeps them.
const threadEntries: TableEntry<ThreadState>[] = [
  field('comm', commText, (t) => t.comm, PUBLIC),
  ...checkedBytes('regs', (t: ThreadState) => t.regs),
  ...checkedBytes('xstate', (t: ThreadState) => t.xstate),
  field('ip', hexU64, (t) => reg(t.regs, REG.rip)),
  field('sp', hexU64, (t) => reg(t.regs, REG.rsp)),
  field('fs_base', hexU64, (t) => t.fsBase),
  field('gs_base', hexU64, (t) => t.gsBase),
  field('sigmask', hexU64, (t) => t.sigmask, PUBLIC),
  field('pending', hexU64, (t) => t.pendingMask, PUBLIC),
  ...checkedBytes('pending_siginfo', (t: ThreadState) => t.pendingSiginfo),
  field('syscall_nr', int32, (t) => t.syscall.nr),
  field('syscall_result', decimalS64, (t) => t.syscall.result),
  field('rseq_pointer', hexU64, (t) => t.rseq.pointer),
  field('rseq_size', uint32, (t) => t.rseq.size),
  field('rseq_signature', u32Hex, (t) => t.rseq.signature),
  field('rseq_flags', u32Hex, (t) => t.rseq.flags),
  field('altstack_sp', hexU64, (t) => t.altstack.sp),
  field('altstack_size', decimalU64, (t) => t.altstack.size),
  field('altstack_flags', altstackFlags, (t) => t.altstack.flags >>> 0),
  field('clear_child_tid', hexU64, (t) => t.clearChildTid),
  field('robust_list_head', hexU64, (t) => t.robustList.head),
  field('robust_list_len', decimalU64, (t) => t.robustList.length),
  // As /proc/PID/task/TID/status shows every user (its Seccomp line).
  field('seccomp_strict', flag, (t) => t.seccompStrict, PUBLIC),
]

/**
 * threads/: lists the thread IDs without capturing anything; looking one up captures the
 * threads part of the task (registers of all threads, read once).
 */
export function threadsEntry(): TableEntry<TaskImage> {
  return {
    name: 'threads',
    make: (task, scope): DirNode => ({
      kind: 'dir',
      perm: DIR_PERM.public, // as /proc/PID/task
      list: async () => task.tids.map(String),
      lookup: async (name) => {
        if (!task.tids.some((tid) => String(tid) === name)) return undefined
        const thread = (await task.threads()).find((t) => String(t.tid) === name)
        const childScope: Scope = { key: `${scope.key}/threads/${name}`, cache: scope.cache }
        return thread && tableDir(thread, threadEntries, childScope, PUBLIC)
      },
    }),
  }
}

// ---------------------------------------------------------------------------------------
// Loading a saved copy

const XSAVE_HEADER_AT = 512

/** Reads threads/ of a saved task-PID/ back; every thread directory is named by its TID. */
export async function loadThreads(dir: SavedDir): Promise<ThreadState[]> {
  const names = dir.names()
  if (names.length === 0) throw new CkptError(`${dir.rel}: no threads`, 'EINVAL')
  const threads = await loadEach(names, async (name) => {
    if (!/^[1-9]\d{0,9}$/.test(name) || Number(name) > 2 ** 31 - 1) throw dir.fail(name, 'not a thread ID (decimal)')
    return loadThread(dir.dir(name), Number(name))
  })
  return threads.sort((a, b) => a.tid - b.tid)
}

async function loadThread(dir: SavedDir, tid: number): Promise<ThreadState> {
  const regs = await readCheckedBytes(dir, 'regs', USER_REGS_SIZE)
  if (regs.length !== USER_REGS_SIZE) throw dir.fail('regs', `${regs.length} bytes, struct user_regs_struct has ${USER_REGS_SIZE}`)
  if ((reg(regs, REG.cs) & 3n) !== 3n) throw dir.fail('regs', `cs 0x${reg(regs, REG.cs).toString(16)} is not a user-mode segment`)
  const derived = fromRegs(regs)
  const agree = <V>(name: string, value: V, saved: V): void => {
    if (saved !== value) throw dir.fail(name, `${String(saved)} does not match regs (${String(value)})`)
  }
  agree('ip', reg(regs, REG.rip), readValue(dir, 'ip', hexU64))
  agree('sp', reg(regs, REG.rsp), readValue(dir, 'sp', hexU64))
  agree('fs_base', derived.fsBase, readValue(dir, 'fs_base', hexU64))
  agree('gs_base', derived.gsBase, readValue(dir, 'gs_base', hexU64))
  agree('syscall_nr', derived.syscall.nr, readValue(dir, 'syscall_nr', int32))
  agree('syscall_result', derived.syscall.result, readValue(dir, 'syscall_result', decimalS64))

  const xstate = await readCheckedBytes(dir, 'xstate', XSTATE_MAX)
  if (xstate.length < XSTATE_MIN) throw dir.fail('xstate', `${xstate.length} bytes, an xsave area has at least ${XSTATE_MIN}`)
  const features = xstate.readBigUInt64LE(XSAVE_FEATURES_AT)
  const present = xstate.readBigUInt64LE(XSAVE_HEADER_AT)
  if ((present & ~features) !== 0n) {
    throw dir.fail('xstate', `xstate_bv 0x${present.toString(16)} has components outside the saved XCR0 0x${features.toString(16)}`)
  }

  const pendingMask = readValue(dir, 'pending', hexU64)
  const rseq = {
    pointer: readValue(dir, 'rseq_pointer', hexU64),
    size: readValue(dir, 'rseq_size', uint32),
    signature: readValue(dir, 'rseq_signature', u32Hex),
    flags: readValue(dir, 'rseq_flags', u32Hex),
  }

  const thread: ThreadState = {
    tid: asTid(tid),
    comm: readValue(dir, 'comm', commText),
    regs,
    xstate,
    ...derived,
    sigmask: readValue(dir, 'sigmask', hexU64),
    pendingMask,
    pendingSiginfo: await loadSiginfo(dir, 'pending_siginfo'),
    rseq,
    altstack: await loadAltstack(dir),
    clearChildTid: readValue(dir, 'clear_child_tid', hexU64),
    robustList: await loadRobustList(dir),
    // A tree saved before strict mode was kept has none: strict mode was refused then.
    seccompStrict: dir.has('seccomp_strict') ? readValue(dir, 'seccomp_strict', flag) : false,
  }
  dir.finish()
  return thread
}

/** The kernel takes a list head only with the length of its struct robust_list_head. */
export const ROBUST_LIST_HEAD_SIZE = 24n

async function loadRobustList(dir: SavedDir): Promise<ThreadState['robustList']> {
  const head = readValue(dir, 'robust_list_head', hexU64)
  const length = readValue(dir, 'robust_list_len', decimalU64)
  if (length !== ROBUST_LIST_HEAD_SIZE && !(head === 0n && length === 0n)) throw dir.fail('robust_list_len', `${length}: the kernel takes only ${ROBUST_LIST_HEAD_SIZE}`)
  return { head, length }
}

async function loadAltstack(dir: SavedDir): Promise<SigAltStack> {
  const flags = readValue(dir, 'altstack_flags', altstackFlags)
  return { sp: readValue(dir, 'altstack_sp', hexU64), size: readValue(dir, 'altstack_size', decimalU64), flags: flags | 0 }
}
