// System calls run inside a frozen thread to read state that /proc does not show (signal
// actions, timers, the alternate stack, brk). Each batch maps its own scratch area for the
// results; the per-task lock keeps that short-lived mapping out of a concurrent memory scan.

import { constants } from 'os'
import type { InjectedCall } from '../../addon/index'
import { CkptError, messageOf } from '../errors'
import { native } from '../native'

/** x86-64 system call numbers used here. */
export const SYS = {
  brk: 12,
  rt_sigaction: 13,
  getitimer: 36,
  sigaltstack: 131,
  get_robust_list: 274,
  prctl: 157,
  timer_gettime: 224,
  timer_getoverrun: 225,
} as const

/**
 * One call; `out` names the argument that points at a result area of `size` bytes, and
 * `second` another argument pointing `at` bytes into the same area (get_robust_list).
 */
export interface CallWithResult {
  nr: number
  args: bigint[]
  out?: { arg: number; size: number; second?: { arg: number; at: number } }
}

export interface CallResult {
  /** The raw return value (negative errno on failure). */
  ret: bigint
  /** The call's result area (empty when it had none). */
  out: Buffer
}

const locks = new Map<number, Promise<unknown>>()

/**
 * Runs `work` while no other capture of task `pid` maps or scans its address space: injected
 * batches add a scratch mapping for a moment, and a /proc/PID/smaps read must not see it. The
 * status reads take it too: a batch's mask and its single-step SIGTRAP show there meanwhile.
 */
export function exclusive<T>(pid: number, work: () => Promise<T>): Promise<T> {
  const before = locks.get(pid) ?? Promise.resolve()
  const run = before.then(work, work)
  const settled = run.then(() => undefined, () => undefined)
  locks.set(pid, settled)
  void settled.then(() => { if (locks.get(pid) === settled) locks.delete(pid) })
  return run
}

/** Runs `calls` in frozen thread `tid` of task `pid`, in one batch. */
export async function inject(pid: number, tid: number, calls: CallWithResult[]): Promise<CallResult[]> {
  let scratchSize = 0
  const placed: Array<{ offset: number; size: number }> = []
  const injected: InjectedCall[] = calls.map((call) => {
    if (!call.out) {
      placed.push({ offset: 0, size: 0 })
      return { nr: call.nr, args: call.args }
    }
    const offset = scratchSize
    scratchSize += (call.out.size + 15) & ~15
    placed.push({ offset, size: call.out.size })
    const args = [...call.args]
    args[call.out.arg] = BigInt(offset)
    let scratchArgs = 1 << call.out.arg
    if (call.out.second) {
      args[call.out.second.arg] = BigInt(offset + call.out.second.at)
      scratchArgs |= 1 << call.out.second.arg
    }
    return { nr: call.nr, args, scratchArgs }
  })
  const batch = await exclusive(pid, async () => {
    try {
      return await native.injectBatch(tid, Math.max(scratchSize, 16), null, injected)
    } catch (err) {
      throw new CkptError(`task-${pid}: system calls injected into thread ${tid} failed: ${messageOf(err)}`)
    }
  })
  return placed.map(({ offset, size }, i) => ({ ret: batch.results[i], out: batch.scratch.subarray(offset, offset + size) }))
}

/** The result of a call that must succeed. */
export function succeeded(result: CallResult, what: string): CallResult {
  if (result.ret < 0n) throw new CkptError(`${what}: ${errnoName(Number(-result.ret))}`)
  return result
}

function errnoName(errno: number): string {
  const entry = Object.entries(constants.errno).find(([, n]) => n === errno)
  return entry ? entry[0] : `errno ${errno}`
}
