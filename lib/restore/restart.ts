// How a thread that the checkpoint stopped inside a system call carries on after a restore
// (../shared/notes/restore-pitfalls.md, section 6). orig_rax is always -1 in the registers
// it resumes with, so no restart logic of the restorer's own state fires on the way out.
//
// - A call the kernel would restart (-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND,
//   -ERESTART_RESTARTBLOCK) is issued again. select, pselect6 and ppoll wrote the time they
//   had left into their timeout at the checkpoint, so issued again they wait only that.
// - A relative nanosleep or clock_nanosleep (-ERESTART_RESTARTBLOCK) whose caller passed a
//   `rem` holds the time it had left there (the kernel wrote it when the checkpoint woke it).
//   The kernel resumes such a sleep through the thread's restart block, which a new process
//   does not have: the same call is injected with that time (rem as the request) and
//   interrupted at its entry, so it returns at once as a signal would have made it, with the
//   restart block holding the deadline; the thread then resumes in restart_syscall, exactly
//   as the kernel resumes an interrupted sleep, and waits only the time left.
// - An epoll_wait, epoll_pwait, epoll_pwait2 or rt_sigtimedwait that the checkpoint alone woke
//   (-EINTR, and no signal waiting that would interrupt it) is issued again, as a resumed
//   task's is (addon/src/freeze.c, fix_interrupted_wait).
// - A thread resuming through restart_syscall (-ERESTART_RESTARTBLOCK with orig_rax
//   restart_syscall: it was frozen and resumed before, by ckptfs or a SIGSTOP, or restored as
//   above) no longer says which call it made; the `mov $NR, %eax` right before its syscall
//   instruction (how glibc and most code make a call) does, and it is treated as that call.
//   Unidentified, it gets EINTR, as restart_syscall in a new process would give it.
// A poll(), epoll_wait() or rem-less nanosleep keeps its timeout in a register, or in the
// kernel only: the time it had left is not visible from user space, so it waits its whole
// timeout again.

import type { InjectedCall } from '../../addon/index'
import type { ProcessState, ThreadState } from '../model'
import { native } from '../native'

/** Index of each register in struct user_regs_struct (x86-64), in 8-byte words. */
const R = { r10: 7, rax: 10, rsi: 13, rdi: 14, orig_rax: 15, rip: 16 } as const

const ERESTART_RESTARTBLOCK = -516n
/** The kernel's restart codes: -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK. */
const RESTART_CODES = new Set([-512n, -513n, -514n, ERESTART_RESTARTBLOCK])
const EINTR = -4n
const NR = { nanosleep: 35n, clockNanosleep: 230n, restartSyscall: 219n, rtSigtimedwait: 128n, epollWait: 232n, epollPwait: 281n, epollPwait2: 441n }
const WAITS_WITHOUT_RESTART = new Set([NR.epollWait, NR.epollPwait, NR.epollPwait2, NR.rtSigtimedwait])
const TIMER_ABSTIME = 1n
const SIG_DFL = 0n, SIG_IGN = 1n
/** SIGCHLD, SIGURG, SIGWINCH, SIGCONT: ignored unless handled. */
const IGNORED_BY_DEFAULT = [17, 23, 28, 18]

const get = (regs: Buffer, r: number): bigint => regs.readBigInt64LE(r * 8)
const set = (regs: Buffer, r: number, v: bigint): void => {
  regs.writeBigInt64LE(BigInt.asIntN(64, v), r * 8)
}

/**
 * A thread stopped inside a system call the kernel would restart is set to issue the call
 * again; orig_rax is always -1.
 */
export function restartFixup(saved: Buffer): Buffer {
  const regs = Buffer.from(saved)
  const origRax = get(regs, R.orig_rax)
  if (origRax >= 0n && RESTART_CODES.has(get(regs, R.rax))) {
    set(regs, R.rax, origRax)
    set(regs, R.rip, get(regs, R.rip) - 2n)
  }
  set(regs, R.orig_rax, -1n)
  return regs
}

/**
 * The registers restored thread `thread` resumes with (see above). Runs in the thread (its
 * memory restored, all other state set but the registers) when a sleep's restart block is
 * to be made: nothing may be injected into the thread after that.
 */
export async function resumeRegisters(thread: ThreadState, proc: ProcessState): Promise<Buffer> {
  const saved = thread.regs
  const rax = get(saved, R.rax)
  let nr = get(saved, R.orig_rax)
  if (nr === NR.restartSyscall && rax === ERESTART_RESTARTBLOCK) {
    const made = await callBeforeSyscallInsn(thread)
    if (made === undefined || made === NR.restartSyscall) return restartFixup(saved)
    nr = made
  }
  if (nr >= 0n && rax === ERESTART_RESTARTBLOCK) {
    const call = sleepWithTimeLeft(nr, saved)
    if (call) {
      const [result] = (await native.injectBatch(thread.tid, 0, null, [call])).results
      const regs = Buffer.from(saved)
      set(regs, R.orig_rax, -1n)
      if (result === ERESTART_RESTARTBLOCK) {
        // What the kernel does with an interrupted sleep on the way back to user space.
        set(regs, R.rax, NR.restartSyscall)
        set(regs, R.rip, get(regs, R.rip) - 2n)
        return regs
      }
      if (result === 0n) {
        // No time was left: the sleep is over, as it would have ended meanwhile.
        set(regs, R.rax, 0n)
        return regs
      }
      // The saved rem is not a time the kernel takes (a damaged tree): start the call over.
    }
    const regs = Buffer.from(saved)
    set(regs, R.rax, nr)
    set(regs, R.rip, get(regs, R.rip) - 2n)
    set(regs, R.orig_rax, -1n)
    return regs
  }
  if (nr >= 0n && rax === EINTR && WAITS_WITHOUT_RESTART.has(nr) && !signalWaiting(thread, proc) && (await afterSyscallInsn(thread))) {
    const regs = Buffer.from(saved)
    set(regs, R.rax, nr)
    set(regs, R.rip, get(regs, R.rip) - 2n)
    set(regs, R.orig_rax, -1n)
    return regs
  }
  return restartFixup(saved)
}

/** The same sleep, asking for the time that `rem` says was left, interrupted at its entry; none when that time is not known. */
function sleepWithTimeLeft(nr: bigint, regs: Buffer): InjectedCall | undefined {
  if (nr === NR.nanosleep) {
    const rem = get(regs, R.rsi)
    return rem === 0n ? undefined : { nr: Number(NR.nanosleep), args: [rem, rem], interruptAtEntry: true }
  }
  if (nr === NR.clockNanosleep) {
    // An absolute sleep is restarted by the kernel as the call itself (-ERESTARTNOHAND): not here.
    const flags = get(regs, R.rsi)
    const rem = get(regs, R.r10)
    if (flags & TIMER_ABSTIME || rem === 0n) return undefined
    return { nr: Number(NR.clockNanosleep), args: [BigInt.asUintN(64, get(regs, R.rdi)), 0n, rem, rem], interruptAtEntry: true }
  }
  return undefined
}

/** A pending signal, not blocked and not ignored, that will interrupt the wait anyway: its EINTR is genuine. */
function signalWaiting(thread: ThreadState, proc: ProcessState): boolean {
  const deliverable = (thread.pendingMask | proc.sharedPendingMask) & ~thread.sigmask
  for (let sig = 1; sig <= 64; sig++) {
    if (!(deliverable & (1n << BigInt(sig - 1)))) continue
    const handler = proc.sigactions.find((a) => a.signal === sig)?.handler ?? SIG_DFL
    if (handler === SIG_IGN || (handler === SIG_DFL && IGNORED_BY_DEFAULT.includes(sig))) continue
    return true
  }
  return false
}

/** The number a `mov $NR, %eax` right before the syscall instruction that the saved rip follows loads. */
async function callBeforeSyscallInsn(thread: ThreadState): Promise<bigint | undefined> {
  const rip = BigInt.asUintN(64, get(thread.regs, R.rip))
  const code = await native.readMemory(thread.tid, rip - 7n, 7).catch(() => undefined)
  if (!code || code[0] !== 0xb8 || code[5] !== 0x0f || code[6] !== 0x05) return undefined
  return BigInt(code.readUInt32LE(1))
}

/** Whether the two bytes before the saved rip are a `syscall` instruction (0f 05). */
async function afterSyscallInsn(thread: ThreadState): Promise<boolean> {
  const rip = BigInt.asUintN(64, get(thread.regs, R.rip))
  const insn = await native.readMemory(thread.tid, rip - 2n, 2).catch(() => undefined)
  return insn !== undefined && insn[0] === 0x0f && insn[1] === 0x05
}
