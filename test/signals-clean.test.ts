// No SIGTRAP of ours reaches a program, and no signal of its own is lost: the single-step traps
// and the runner's int3 of injected calls (addon/src/inject.c) are the tracer's, a SIGTRAP that
// was pending or is queued by an injected call is the program's. A SIGTRAP the program never
// got would kill most programs with a core dump once thawed or restored (its default action).
// test/fixtures/trapcount.c counts the SIGTRAPs it handles.

import * as fs from 'fs'
import t, { type Test } from 'tap'
import { native } from '../lib/native'
import { captureProcess } from '../lib/task/process'
import { captureThreads } from '../lib/task/threads'
import { buildTarget, startTarget, threadIds, threadState } from './lib/targets'

const SIGTRAP = 5
const SIGUSR1 = 10
const SIGRTMIN_2 = 36
const SYS = { getpid: 39, gettid: 186, rt_tgsigqueueinfo: 297 }
const bit = (signal: number): bigint => 1n << BigInt(signal - 1)
const CAPTURES = 40

/** SigPnd, ShdPnd and SigBlk of every thread, as /proc shows them. */
function signalSets(pid: number, tids: number[]): Record<number, { own: bigint; shared: bigint; blocked: bigint }> {
  const out: Record<number, { own: bigint; shared: bigint; blocked: bigint }> = {}
  for (const tid of tids) {
    const status = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8')
    const hex = (key: string) => BigInt('0x' + new RegExp(`^${key}:\\s*([0-9a-f]+)$`, 'm').exec(status)![1])
    out[tid] = { own: hex('SigPnd'), shared: hex('ShdPnd'), blocked: hex('SigBlk') }
  }
  return out
}

async function startTrapcount(t: Test) {
  const target = await startTarget(buildTarget('trapcount'), [], /^ready pid=/, { stdin: 'pipe' })
  let frozen = false
  t.teardown(async () => {
    if (frozen) await native.thaw(target.pid, true).catch(() => undefined)
    target.kill()
  })
  const tids = threadIds(target.pid)
  return {
    pid: target.pid,
    tids,
    freeze: async () => { await native.freeze(target.pid); frozen = true },
    thaw: async () => { await native.thaw(target.pid, false); frozen = false },
    /** The SIGTRAPs the program has handled so far. */
    traps: async (): Promise<number> => {
      const seen = target.lines.length
      target.child.stdin!.write('count\n')
      for (let waited = 0; waited < 10000; waited += 20) {
        const m = target.lines.slice(seen).map((l) => /^traps (\d+)$/.exec(l)).find((x) => x)
        if (m) return Number(m[1])
        if (target.child.exitCode !== null || target.child.signalCode !== null) throw new Error('trapcount exited')
        await new Promise((r) => setTimeout(r, 20))
      }
      throw new Error('trapcount did not answer within 10 s')
    },
  }
}

t.test(`captured ${CAPTURES} times: every thread keeps its pending signals and gets no SIGTRAP`, async (t) => {
  const fx = await startTrapcount(t)
  t.equal(fx.tids.length, 3, 'three threads')
  const start = signalSets(fx.pid, fx.tids)
  t.equal(start[fx.pid].shared, bit(SIGUSR1), 'SIGUSR1 pending for the process')
  t.equal(start[fx.tids[1]].own, bit(SIGRTMIN_2), 'SIGRTMIN+2 pending for the first worker')
  let differ = 0
  for (let i = 0; i < CAPTURES; i++) {
    await fx.freeze()
    const [, threads] = await Promise.all([captureProcess(fx.pid, fx.tids), captureThreads(fx.pid, fx.tids)])
    const frozen = signalSets(fx.pid, fx.tids)
    for (const th of threads) {
      if (th.pendingMask !== start[th.tid].own) t.fail(`capture ${i}: thread ${th.tid} captured pending 0x${th.pendingMask.toString(16)}, was 0x${start[th.tid].own.toString(16)}`)
    }
    await fx.thaw()
    const thawed = signalSets(fx.pid, fx.tids)
    for (const tid of fx.tids) {
      for (const [when, sets] of [['frozen after the capture', frozen], ['after the thaw', thawed]] as const) {
        if (sets[tid].own !== start[tid].own || sets[tid].shared !== start[tid].shared || sets[tid].blocked !== start[tid].blocked) {
          differ++
          t.fail(`capture ${i}, ${when}: thread ${tid} pending 0x${sets[tid].own.toString(16)} shared 0x${sets[tid].shared.toString(16)} blocked 0x${sets[tid].blocked.toString(16)}, before the freeze 0x${start[tid].own.toString(16)} 0x${start[tid].shared.toString(16)} 0x${start[tid].blocked.toString(16)}`)
        }
      }
    }
  }
  t.equal(differ, 0, 'SigPnd, ShdPnd and SigBlk of every thread as before each freeze, frozen and thawed')
  t.equal(await fx.traps(), 0, 'no SIGTRAP reached the program')
  t.ok(threadIds(fx.pid).every((tid) => threadState(fx.pid, tid) !== 't'), 'no thread left stopped')
})

t.test('a capture reads no thread\'s status while a call is injected into it', async (t) => {
  // While a call is injected, the trap of its single step is a queued SIGTRAP for a moment, and
  // /proc shows it in SigPnd: a capture that read the status then recorded a SIGTRAP the
  // program never had (CI14), which a restore would queue again. A read made during a batch
  // shows the batch's mask (everything blocked) in SigBlk: every status read the captures make
  // is looked at. Both captures run side by side, five times, as a checkpoint runs them.
  const fx = await startTrapcount(t)
  const real = signalSets(fx.pid, fx.tids)
  await fx.freeze()
  const tidOf = new Map(fx.tids.map((tid) => [`/proc/${fx.pid}/task/${tid}/status`, tid]))
  const during: string[] = []
  let reads = 0
  const realOpen = fs.promises.open
  ;(fs.promises as { open: typeof realOpen }).open = async (...args: Parameters<typeof realOpen>) => {
    const handle = await realOpen(...args)
    const tid = tidOf.get(String(args[0]))
    if (tid !== undefined) {
      const realRead = handle.read.bind(handle) as (buffer: Buffer, ...rest: unknown[]) => Promise<{ bytesRead: number }>
      ;(handle as unknown as { read: typeof realRead }).read = async (buffer: Buffer, ...rest: unknown[]) => {
        const result = await realRead(buffer, ...rest)
        const blocked = /^SigBlk:\s*([0-9a-f]+)$/m.exec(buffer.toString('utf8', 0, result.bytesRead))
        if (blocked) {
          reads++
          if (BigInt('0x' + blocked[1]) !== real[tid].blocked) during.push(`thread ${tid}: SigBlk ${blocked[1]}`)
        }
        return result
      }
    }
    return handle
  }
  try {
    for (let i = 0; i < 5; i++) await Promise.all([captureProcess(fx.pid, fx.tids), captureThreads(fx.pid, fx.tids)])
  } finally {
    ;(fs.promises as { open: typeof realOpen }).open = realOpen
  }
  t.ok(reads >= 15, `${reads} status reads looked at`)
  t.same(during, [], 'none made while a batch ran in the thread (SigBlk is its own)')
  await fx.thaw()
})

t.test('a SIGTRAP an injected call queues to its own thread stays pending, with its siginfo, and arrives once', async (t) => {
  const fx = await startTrapcount(t)
  await fx.freeze()
  const before = signalSets(fx.pid, fx.tids)[fx.pid]
  // siginfo_t: si_signo, si_errno, si_code SI_QUEUE (-1), si_pid at 16, si_uid at 20, si_value at 24.
  const info = Buffer.alloc(128)
  info.writeInt32LE(SIGTRAP, 0)
  info.writeInt32LE(-1, 8)
  info.writeInt32LE(fx.pid, 16)
  info.writeBigUInt64LE(0x7e57n, 24)
  // Calls before and after it: the batch starts single-stepping and goes on after the queueing.
  const res = await native.injectBatch(fx.pid, 128, info, [
    { nr: SYS.getpid, args: [] },
    { nr: SYS.rt_tgsigqueueinfo, args: [BigInt(fx.pid), BigInt(fx.pid), BigInt(SIGTRAP), 0n], scratchArgs: 0b1000 },
    { nr: SYS.gettid, args: [] },
    { nr: SYS.getpid, args: [] },
  ])
  t.same(res.results, [BigInt(fx.pid), 0n, BigInt(fx.pid), BigInt(fx.pid)])
  const after = signalSets(fx.pid, fx.tids)[fx.pid]
  t.equal(after.own, before.own | bit(SIGTRAP), 'SIGTRAP pending in the thread')
  t.equal(after.blocked, before.blocked, 'its mask as before')
  const queued = await native.peekSiginfo(fx.pid, false)
  const records = Array.from({ length: queued.length / 128 }, (_, i) => queued.subarray(i * 128, i * 128 + 128))
  const trap = records.find((r) => r.readInt32LE(0) === SIGTRAP)
  t.ok(trap, 'its siginfo queued')
  t.equal(trap?.readInt32LE(8), -1, 'si_code SI_QUEUE, as sent')
  t.equal(trap?.readBigUInt64LE(24), 0x7e57n, 'si_value as sent')
  // A later batch leaves it alone too.
  const again = await native.injectBatch(fx.pid, 0, null, [{ nr: SYS.getpid, args: [] }, { nr: SYS.gettid, args: [] }])
  t.same(again.results, [BigInt(fx.pid), BigInt(fx.pid)])
  t.equal(signalSets(fx.pid, fx.tids)[fx.pid].own, before.own | bit(SIGTRAP), 'still pending after another batch')
  await fx.thaw()
  t.equal(await fx.traps(), 1, 'handled once after the thaw')
})
