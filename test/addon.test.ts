// Tests of the native helper on real processes that this test starts itself
// (test/fixtures/sleeper.c, compiled into test/fixtures/bin/). Every fixture is killed in
// teardown, frozen or not, even when a test fails.
import t, { Test } from 'tap'
import { ChildProcess, execFileSync, spawn, execFile } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import type { Addon, NativeError } from '../addon/index'
import { userNode } from './lib/mount'

const addon: Addon = require('../addon/build/Release/ckptfs.node')

const fixtureSrc = path.join(__dirname, 'fixtures', 'sleeper.c')
const binDir = path.join(__dirname, 'fixtures', 'bin')
const fixtureBin = path.join(binDir, 'sleeper')

const SIGTRAP = 5
const SIGUSR1 = 10
const SIGUSR2 = 12
const PTRACE_EVENT_STOP = 128
const sigbit = (s: number) => 1n << BigInt(s - 1)

// struct user_regs_struct offsets (x86-64)
const REG = { rax: 80, orig_rax: 120, rip: 128, rsp: 152 }
const reg = (regs: Buffer, off: number) => regs.readBigInt64LE(off)

function buildFixture(): void {
  fs.mkdirSync(binDir, { recursive: true })
  const fresh = fs.existsSync(fixtureBin) && fs.statSync(fixtureBin).mtimeMs >= fs.statSync(fixtureSrc).mtimeMs
  if (!fresh) execFileSync('gcc', ['-O1', '-Wall', '-pthread', '-o', fixtureBin, fixtureSrc], { stdio: 'inherit' })
}

const sleep = (ms: number) => new Promise<void>(resolve => setTimeout(resolve, ms))

interface Fixture {
  pid: number
  child: ChildProcess
  lines: string[]
  /** First line (at index >= from) matching re, waiting up to ms for it. */
  waitFor(re: RegExp, from?: number, ms?: number): Promise<RegExpMatchArray>
  write(s: string): void
  exited: Promise<number | null>
}

async function startFixture(tt: Test, mode: string): Promise<Fixture> {
  const child = spawn(fixtureBin, [mode], { stdio: ['pipe', 'pipe', 'inherit'] })
  const lines: string[] = []
  let waiters: (() => void)[] = []
  let partial = ''
  child.stdout!.setEncoding('utf8')
  child.stdout!.on('data', (chunk: string) => {
    const parts = (partial + chunk).split('\n')
    partial = parts.pop()!
    lines.push(...parts)
    const w = waiters
    waiters = []
    w.forEach(f => f())
  })
  const exited = new Promise<number | null>(resolve => child.on('exit', code => resolve(code)))
  const fx: Fixture = {
    pid: 0,
    child,
    lines,
    exited,
    write: s => child.stdin!.write(s),
    async waitFor(re, from = 0, ms = 3000) {
      const deadline = Date.now() + ms
      for (;;) {
        for (let i = from; i < lines.length; i++) {
          const m = lines[i].match(re)
          if (m) return m
        }
        const left = deadline - Date.now()
        if (left <= 0) throw new Error(`fixture ${mode}: no line matching ${re} (got ${JSON.stringify(lines.slice(-5))})`)
        await new Promise<void>(resolve => {
          const timer = setTimeout(resolve, left)
          waiters.push(() => {
            clearTimeout(timer)
            resolve()
          })
        })
      }
    },
  }
  tt.teardown(async () => {
    if (fx.pid) {
      // Frozen or not: thaw(kill) if we hold it, then SIGKILL anyway.
      await addon.thaw(fx.pid, true).catch(() => undefined)
      try {
        process.kill(fx.pid, 'SIGKILL')
      } catch {}
    }
    // The intermediate parent exits once it has reaped the target.
    const timer = setTimeout(() => child.kill('SIGKILL'), 2000)
    await exited
    clearTimeout(timer)
  })
  fx.pid = Number((await fx.waitFor(/^pid (\d+)$/))[1])
  await fx.waitFor(/^ready$/)
  return fx
}

function taskStates(pid: number): string[] {
  return fs.readdirSync(`/proc/${pid}/task`).map(tid => {
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2)[0]
  })
}

function cpuTicks(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return Number(f[11]) + Number(f[12]) // utime, stime
}

function statusHex(pid: number, field: string): bigint {
  const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`^${field}:\\s*([0-9a-f]+)$`, 'm'))
  return BigInt('0x' + m![1])
}

interface Mapping {
  start: bigint
  end: bigint
  perms: string
  name: string
}

function maps(pid: number): Mapping[] {
  return fs
    .readFileSync(`/proc/${pid}/maps`, 'utf8')
    .trim()
    .split('\n')
    .map(line => {
      const f = line.split(/\s+/)
      const [s, e] = f[0].split('-')
      return { start: BigInt('0x' + s), end: BigInt('0x' + e), perms: f[1], name: f[5] ?? '' }
    })
}

const inside = (addr: bigint, m: Mapping) => addr >= m.start && addr < m.end

function lastTick(fx: Fixture): number {
  for (let i = fx.lines.length - 1; i >= 0; i--) if (fx.lines[i].startsWith('tick ')) return i
  return -1
}

function isNativeError(err: unknown, code: string): boolean {
  const e = err as NativeError
  return e instanceof Error && e.code === code && typeof e.errno === 'number'
}

buildFixture()

t.test('freeze and thaw a process blocked in nanosleep', async t => {
  const fx = await startFixture(t, 'basic')
  await fx.waitFor(/^tick 1$/)
  let frozen = await addon.freeze(fx.pid)
  // The fixture sleeps 20 ms between ticks: a freeze can land outside the sleep (writing its
  // tick, or just as the sleep returned). Those stops are right too, but this test is about
  // the one inside the sleep, so it thaws and tries again then.
  for (let tries = 0; tries < 20; tries++) {
    const regs = (await addon.getThreadRegisters(fx.pid)).regs
    if (reg(regs, REG.orig_rax) === 230n && reg(regs, REG.rax) === -516n) break
    await addon.thaw(fx.pid, false)
    await sleep(7)
    frozen = await addon.freeze(fx.pid)
  }
  t.equal(frozen.length, 1)
  t.equal(frozen[0].tid, fx.pid)
  const st = frozen[0].status
  t.equal(st & 0xff, 0x7f, 'WIFSTOPPED')
  t.equal((st >> 8) & 0xff, SIGTRAP, 'interrupt stop reports SIGTRAP')
  t.equal(st >> 16, PTRACE_EVENT_STOP, 'PTRACE_EVENT_STOP')
  t.same(taskStates(fx.pid), ['t'])

  await t.rejects(addon.freeze(fx.pid), { code: 'EBUSY' }, 'second freeze of the same pid')

  const r = await addon.getThreadRegisters(fx.pid)
  t.equal(r.regs.length, 216)
  t.ok(r.xstate.length > 512, `xstate length ${r.xstate.length}`)
  t.equal(addon.xstateSize(), r.xstate.length, 'xstateSize (CPUID) is the length ptrace gives')
  const rip = reg(r.regs, REG.rip)
  const rsp = reg(r.regs, REG.rsp)
  const m = maps(fx.pid)
  t.ok(m.some(x => x.perms.includes('x') && inside(rip, x)), `rip 0x${rip.toString(16)} in executable text`)
  t.ok(m.some(x => x.name === '[stack]' && inside(rsp, x)), `rsp 0x${rsp.toString(16)} in [stack]`)
  t.equal(reg(r.regs, REG.orig_rax), 230n, 'stopped in clock_nanosleep')
  t.equal(reg(r.regs, REG.rax), -516n, 'ERESTART_RESTARTBLOCK')
  t.equal(r.sigmask & sigbit(SIGUSR2), sigbit(SIGUSR2), 'SIGUSR2 blocked')
  t.not(r.rseq.pointer, 0n, 'glibc registered rseq')
  t.equal(r.rseq.size, 32)
  t.equal(r.rseq.signature, 0x53053053)

  const ticks = lastTick(fx)
  await sleep(150)
  t.equal(lastTick(fx), ticks, 'no output while frozen')

  await addon.setThreadRegisters(fx.pid, r.regs)
  await t.rejects(addon.setThreadRegisters(fx.pid, Buffer.alloc(10)), { code: 'EINVAL' })

  await addon.thaw(fx.pid, false)
  await fx.waitFor(/^tick /, ticks + 1)
  t.not(taskStates(fx.pid)[0], 't', 'running again')
  await t.rejects(addon.thaw(fx.pid, false), { code: 'ESRCH' }, 'thaw of a pid that is not frozen')
})

t.test('freeze stops every thread of a 3-thread process', async t => {
  const fx = await startFixture(t, 'threads')
  await fx.waitFor(/^tick 2 /)
  const frozen = await addon.freeze(fx.pid)
  t.equal(frozen.length, 3)
  t.same(
    frozen.map(f => f.tid).sort(),
    fs.readdirSync(`/proc/${fx.pid}/task`).map(Number).sort(),
  )
  t.same(taskStates(fx.pid), ['t', 't', 't'])
  const cpu = cpuTicks(fx.pid)
  const ticks = lastTick(fx)
  await sleep(300)
  t.equal(cpuTicks(fx.pid), cpu, 'no CPU used while frozen')
  t.equal(lastTick(fx), ticks)
  const before = fx.lines[ticks].split(' ').map(Number)
  await addon.thaw(fx.pid, false)
  const m = await fx.waitFor(/^tick \d+ (\d+) (\d+)$/, ticks + 2)
  t.ok(Number(m[1]) > before[2] && Number(m[2]) > before[3], 'worker threads run on')
})

t.test('a thread in epoll_wait resumes without seeing EINTR', async t => {
  const fx = await startFixture(t, 'epoll')
  await sleep(50) // let it block
  await addon.freeze(fx.pid)
  const r = await addon.getThreadRegisters(fx.pid)
  t.equal(reg(r.regs, REG.orig_rax), 232n, 'stopped in epoll_wait')
  t.equal(reg(r.regs, REG.rax), -4n, 'the interrupt made it return -EINTR')
  await addon.thaw(fx.pid, false)
  await sleep(50)
  fx.write('ping\n')
  await fx.waitFor(/^got ping$/)
  t.notOk(fx.lines.includes('EINTR'), 'no EINTR seen by the program')
  // And it is back in epoll_wait for the next line.
  fx.write('pong\n')
  await fx.waitFor(/^got pong$/)

  // An ignored signal (SIGWINCH, default action ignore) queued while traced is no reason
  // for an EINTR either.
  await sleep(20)
  await addon.freeze(fx.pid)
  process.kill(fx.pid, 'SIGWINCH')
  await sleep(20)
  t.equal(statusHex(fx.pid, 'ShdPnd') & sigbit(28), sigbit(28), 'SIGWINCH queued while traced')
  await addon.thaw(fx.pid, false)
  await sleep(20)
  fx.write('again\n')
  await fx.waitFor(/^got again$/)
  t.notOk(fx.lines.includes('EINTR'), 'still no EINTR')
})

t.test('injectBatch getpid; registers, mask and pending signals are kept', async t => {
  const fx = await startFixture(t, 'basic')
  await fx.waitFor(/^tick 1$/)
  await addon.freeze(fx.pid)
  process.kill(fx.pid, 'SIGUSR1') // unblocked, handled: must stay pending, not be delivered or lost
  await sleep(20)
  t.equal(statusHex(fx.pid, 'ShdPnd') & sigbit(SIGUSR1), sigbit(SIGUSR1), 'SIGUSR1 pending')
  const before = await addon.getThreadRegisters(fx.pid)
  const mapsBefore = fs.readFileSync(`/proc/${fx.pid}/maps`, 'utf8')

  const res = await addon.injectBatch(fx.pid, 0, null, [
    { nr: 39, args: [] }, // getpid
    { nr: 186, args: [] }, // gettid
    { nr: 3, args: [12345n] }, // close(12345) -> -EBADF
  ])
  t.same(res.results, [BigInt(fx.pid), BigInt(fx.pid), -9n])
  t.equal(res.scratch.length, 0)

  const after = await addon.getThreadRegisters(fx.pid)
  t.ok(after.regs.equals(before.regs), 'registers restored exactly')
  t.equal(after.sigmask, before.sigmask, 'signal mask restored')
  t.ok(after.xstate.equals(before.xstate), 'xstate untouched')
  t.equal(statusHex(fx.pid, 'ShdPnd') & sigbit(SIGUSR1), sigbit(SIGUSR1), 'SIGUSR1 still pending')
  t.equal(fs.readFileSync(`/proc/${fx.pid}/maps`, 'utf8'), mapsBefore, 'no mapping left behind')

  const ticks = lastTick(fx)
  await addon.thaw(fx.pid, false)
  await fx.waitFor(/^usr1$/, ticks + 1)
  await fx.waitFor(/^tick /, lastTick(fx) + 1)
  t.pass('runs on after thaw and got its signal')
})

t.test('injectBatch with a scratch area: rt_sigaction and emulated rt_sigprocmask', async t => {
  const fx = await startFixture(t, 'basic')
  const handler = BigInt((await fx.waitFor(/^handler (0x[0-9a-f]+)$/))[1])
  await addon.freeze(fx.pid)
  const mapsBefore = fs.readFileSync(`/proc/${fx.pid}/maps`, 'utf8')
  const init = Buffer.alloc(16, 0xab)
  const res = await addon.injectBatch(fx.pid, 4096, init, [
    { nr: 13, args: [BigInt(SIGUSR1), 0n, 64n, 8n], scratchArgs: 0b100 }, // rt_sigaction(SIGUSR1, NULL, scratch+64, 8)
    { nr: 14, args: [0n, 0n, 128n, 8n], scratchArgs: 0b100 }, // rt_sigprocmask(SIG_BLOCK, NULL, scratch+128, 8)
    { nr: 14, args: [0n, 0n, 0n, 7n] }, // bad sigsetsize -> -EINVAL
  ])
  t.same(res.results, [0n, 0n, -22n])
  t.equal(res.scratch.length, 4096)
  t.ok(res.scratch.subarray(0, 16).equals(init), 'scratchInit copied in')
  t.equal(res.scratch.readBigUInt64LE(64), handler, 'the handler the fixture installed')
  t.equal(res.scratch.readBigUInt64LE(128) & sigbit(SIGUSR2), sigbit(SIGUSR2), 'the real mask, not the batch mask')
  t.equal(fs.readFileSync(`/proc/${fx.pid}/maps`, 'utf8'), mapsBefore, 'scratch unmapped')
  await t.rejects(addon.injectBatch(fx.pid, 0, null, [{ nr: 39, args: [], scratchArgs: 1 }]), { code: 'EINVAL' })
  const ticks = lastTick(fx)
  await addon.thaw(fx.pid, false)
  await fx.waitFor(/^tick /, ticks + 1)
})

t.test('injectBatch leaves an ignored SIGTRAP ignored', async t => {
  const fx = await startFixture(t, 'trapign')
  await addon.freeze(fx.pid)
  t.equal(statusHex(fx.pid, 'SigIgn') & sigbit(SIGTRAP), sigbit(SIGTRAP))
  const before = await addon.getThreadRegisters(fx.pid)
  const res = await addon.injectBatch(fx.pid, 64, null, [
    { nr: 39, args: [] },
    { nr: 13, args: [BigInt(SIGTRAP), 0n, 0n, 8n], scratchArgs: 0b100 },
  ])
  t.same(res.results, [BigInt(fx.pid), 0n])
  t.equal(res.scratch.readBigUInt64LE(0), 1n, 'SIG_IGN')
  t.equal(statusHex(fx.pid, 'SigIgn') & sigbit(SIGTRAP), sigbit(SIGTRAP), 'still ignored')
  const after = await addon.getThreadRegisters(fx.pid)
  t.ok(after.regs.equals(before.regs), 'registers restored exactly')
  const ticks = lastTick(fx)
  await addon.thaw(fx.pid, false)
  await fx.waitFor(/^tick /, ticks + 1)
})

t.test('peekSiginfo', async t => {
  const fx = await startFixture(t, 'basic')
  await addon.freeze(fx.pid)
  process.kill(fx.pid, 'SIGUSR2') // blocked: stays queued
  await sleep(20)
  const shared = await addon.peekSiginfo(fx.pid, true)
  t.equal(shared.length, 128)
  t.equal(shared.readInt32LE(0), SIGUSR2, 'si_signo')
  t.equal((await addon.peekSiginfo(fx.pid, false)).length, 0, 'nothing thread-directed')
  await addon.thaw(fx.pid, false)
})

t.test('readMemory and readMemoryInto', async t => {
  const fx = await startFixture(t, 'basic')
  const m = await fx.waitFor(/^mem (0x[0-9a-f]+) (\d+)$/)
  const addr = BigInt(m[1])
  const len = Number(m[2])
  const expected = Buffer.alloc(len)
  for (let i = 0; i < len; i++) expected[i] = (i * 7 + 3) & 0xff
  const got = await addon.readMemory(fx.pid, addr, len)
  t.ok(got.equals(expected), 'readMemory content')
  t.equal((await addon.readMemory(fx.pid, addr, 0)).length, 0)

  const into = Buffer.alloc(110, 0xee)
  await addon.readMemoryInto(
    fx.pid,
    [
      { start: addr + 10n, length: 50n },
      { start: addr + 5000n, length: 50n },
    ],
    into,
    10,
  )
  t.ok(into.subarray(10, 60).equals(expected.subarray(10, 60)))
  t.ok(into.subarray(60, 110).equals(expected.subarray(5000, 5050)))
  t.equal(into[9], 0xee, 'nothing written before intoOffset')
  await t.rejects(addon.readMemoryInto(fx.pid, [{ start: addr, length: 200n }], into, 0), { code: 'ERANGE' })

  // The synchronous variant: the same bytes, the same checks, at most 1 MiB.
  const now = Buffer.alloc(110, 0xee)
  addon.readMemoryIntoNow(fx.pid, [{ start: addr + 10n, length: 50n }, { start: addr + 5000n, length: 50n }], now, 10)
  t.ok(now.equals(into), 'readMemoryIntoNow reads what readMemoryInto reads')
  t.throws(() => addon.readMemoryIntoNow(fx.pid, [{ start: addr, length: 200n }], now, 0), { code: 'ERANGE' })
  t.throws(() => addon.readMemoryIntoNow(fx.pid, [{ start: 0x1000n, length: 16n }], now, 0), { code: 'EFAULT', message: /^process_vm_readv\(pid \d+, 0x1000, 16\): Bad address$/ })
  t.throws(() => addon.readMemoryIntoNow(fx.pid, [{ start: addr, length: BigInt(2 << 20) }], Buffer.alloc(2 << 20), 0), { code: 'EINVAL' }, 'more than 1 MiB goes through the pool')

  const err = await addon.readMemory(fx.pid, 0x1000n, 4096).then(
    () => null,
    (e: unknown) => e,
  )
  t.ok(isNativeError(err, 'EFAULT'), 'EFAULT for an unmapped address')
  t.match((err as Error).message, /^process_vm_readv\(pid \d+, 0x1000, 4096\): Bad address$/)
  await t.rejects(addon.readMemory(2 ** 22 + 1, addr, 16), { code: 'ESRCH' })
})

t.test('scanPagemap finds exactly the 16 touched pages of a 1 GiB mapping', async t => {
  const fx = await startFixture(t, 'pagemap')
  const base = BigInt((await fx.waitFor(/^map (0x[0-9a-f]+)$/))[1])
  const end = base + (1n << 30n)
  const t0 = process.hrtime.bigint()
  const runs = await addon.scanPagemap(fx.pid, base, end, true)
  const ms = Number(process.hrtime.bigint() - t0) / 1e6
  t.comment(`scanPagemap over 1 GiB: ${ms.toFixed(2)} ms, ${runs.length} runs`)
  const pages = runs.reduce((n, r) => n + Number(r.length / 4096n), 0)
  t.equal(pages, 16)
  t.same(
    runs.map(r => [Number((r.start - base) / 4096n), Number(r.length / 4096n)]),
    [[0, 3], [100, 1], [1000, 5], [50000, 1], [200000, 5], [262143, 1]],
  )
  t.ok(ms < 200, 'fast')
  const all = await addon.scanPagemap(fx.pid, base, end, false)
  t.same(all, runs, 'anonymous pages are private either way')

  // Read the pages found, back to back.
  const buf = Buffer.alloc(pages * 4096)
  await addon.readMemoryInto(fx.pid, runs, buf, 0)
  const indices: number[] = []
  for (let off = 0; off < buf.length; off += 4096) indices.push(Number(buf.readBigUInt64LE(off)))
  t.same(indices, [0, 1, 2, 100, 1000, 1001, 1002, 1003, 1004, 50000, 200000, 200001, 200002, 200003, 200004, 262143])
  await t.rejects(addon.scanPagemap(fx.pid, base + 1n, end, true), { code: 'EINVAL' })
})

t.test('scanPagemaps answers each range with its own runs, as scanPagemap would, in one call', async t => {
  const fx = await startFixture(t, 'pagemap')
  const base = BigInt((await fx.waitFor(/^map (0x[0-9a-f]+)$/))[1])
  const page = (n: number) => base + BigInt(n) * 4096n
  // The cuts fall inside runs (pages 0-2 and 1000-1004): a run must not reach across a cut.
  const ranges = [
    { start: page(0), end: page(2), privateOnly: true },
    { start: page(2), end: page(1001), privateOnly: false },
    { start: page(1001), end: page(262144), privateOnly: true },
  ]
  const answers = await addon.scanPagemaps(fx.pid, ranges)
  t.same(
    answers.map((runs) => runs.map((r) => [Number((r.start - base) / 4096n), Number(r.length / 4096n)])),
    [[[0, 2]], [[2, 1], [100, 1], [1000, 1]], [[1001, 4], [50000, 1], [200000, 5], [262143, 1]]],
  )
  for (const [i, r] of ranges.entries()) t.same(answers[i], await addon.scanPagemap(fx.pid, r.start, r.end, r.privateOnly), `range ${i} as scanPagemap answers it`)
  t.same(await addon.scanPagemaps(fx.pid, []), [], 'no ranges, no answers')
  await t.rejects(addon.scanPagemaps(fx.pid, [ranges[0], { start: page(0) + 1n, end: page(2), privateOnly: true }]), { code: 'EINVAL', message: /^scanPagemaps\(pid \d+, 0x[0-9a-f]+, 0x[0-9a-f]+\): range must be page-aligned: Invalid argument$/ })
  await t.rejects(addon.scanPagemaps(2 ** 22 + 1, ranges), { code: 'ESRCH' })

  // Frames (issue 17): each kept page's frame; a scan given those frames as its parent's, and
  // the parent's PID, takes as inherited every page the parent stored and still maps at that
  // very frame. Here the "parent" is the process itself: all its kept pages but the one the
  // recorded frames say the parent did not store.
  const area = { start: page(999), end: page(1006), privateOnly: true }
  const [withFrames] = await addon.scanPagemaps(fx.pid, [{ ...area, frames: true }])
  const frames = withFrames.frames!
  t.equal(frames.length, 7 * 8, 'one frame per page of the range')
  const frameAt = (n: number) => frames.readBigUInt64LE(n * 8)
  t.same([0, 1, 2, 3, 4, 5, 6].map((n) => frameAt(n) !== 0n), [false, true, true, true, true, true, false], 'a frame for each touched page (1000-1004), 0 elsewhere')
  t.equal(withFrames.inherited, undefined, 'no parent frames given: no inherited runs')
  const parent = Buffer.from(frames)
  parent.writeBigUInt64LE(0n, 3 * 8) // page 1002: "the parent stored nothing there"
  const [split] = await addon.scanPagemaps(fx.pid, [{ ...area, parentFrames: parent }], fx.pid)
  const pagesOf = (runs: Array<{ start: bigint; length: bigint }>) => runs.map((r) => [Number((r.start - base) / 4096n), Number(r.length / 4096n)])
  t.same(pagesOf(split), [[1002, 1]], 'the page not at the parent\'s frame is stored')
  t.same(pagesOf(split.inherited!), [[1000, 2], [1003, 2]], 'the pages at the parent\'s frames are inherited')
  const [unseen] = await addon.scanPagemaps(fx.pid, [{ ...area, parentFrames: parent }])
  t.same([pagesOf(unseen), pagesOf(unseen.inherited!)], [[[1000, 5]], []], 'without the parent\'s PID (its frames cannot be read again) every page is stored')
  await t.rejects(addon.scanPagemaps(fx.pid, [{ ...area, parentFrames: Buffer.alloc(8) }]), { code: 'EINVAL', message: /parentFrames has 8 bytes, the range 7 pages/ })
})

t.test('kcmpFile, getFd, close', async t => {
  const fx = await startFixture(t, 'fds')
  const [a, b, c] = (await fx.waitFor(/^fds (\d+) (\d+) (\d+) (\d+) (\d+)$/)).slice(1).map(Number)
  t.equal(addon.kcmpFile(fx.pid, a, b), 0, 'dup shares the description')
  t.not(addon.kcmpFile(fx.pid, a, c), 0, 'separate opens do not')
  t.throws(() => addon.kcmpFile(fx.pid, a, 999), { code: 'EBADF' })
  t.same(addon.kcmpGroups(fx.pid, [c, b, a]), [c, Math.min(a, b), Math.min(a, b)], 'kcmpGroups labels each fd with the lowest fd of its description')
  t.throws(() => addon.kcmpGroups(fx.pid, [a, 999]), { code: 'EBADF' })
  const fd = addon.getFd(fx.pid, a)
  t.equal(fs.readlinkSync(`/proc/self/fd/${fd}`), '/dev/null')
  addon.close(fd)
  t.throws(() => addon.close(fd), { code: 'EBADF', errno: 9, message: `close(${fd}): Bad file descriptor` })
  t.throws(() => addon.getFd(fx.pid, 999), { code: 'EBADF' })
})

t.test('peekPipe shows the buffered bytes without consuming them', async t => {
  const fx = await startFixture(t, 'fds')
  const [a, , , p0, p1] = (await fx.waitFor(/^fds (\d+) (\d+) (\d+) (\d+) (\d+)$/)).slice(1).map(Number)
  await addon.freeze(fx.pid)
  t.equal((await addon.peekPipe(fx.pid, p0)).toString(), 'hello', 'through the read end')
  t.equal((await addon.peekPipe(fx.pid, p1)).toString(), 'hello', 'through the write end')
  t.equal((await addon.peekPipe(fx.pid, p0)).toString(), 'hello', 'again')
  await t.rejects(addon.peekPipe(fx.pid, a), { code: 'EBADF' }, '/dev/null is not a pipe')
  await addon.thaw(fx.pid, false)
  fx.write('read\n')
  await fx.waitFor(/^pipe hello$/)
  t.pass('the program still reads hello')
})

t.test('thaw(kill) kills the frozen process', async t => {
  const fx = await startFixture(t, 'basic')
  await addon.freeze(fx.pid)
  await addon.thaw(fx.pid, true)
  t.equal(await fx.exited, 128 + 9, 'the target died of SIGKILL')
  t.notOk(fs.existsSync(`/proc/${fx.pid}`), 'and was reaped')
})

t.test('freeze under a signal flood', async t => {
  // SIGALRM every 100 us: freeze meets signal-delivery-stops, which it must deliver.
  const fx = await startFixture(t, 'sigflood')
  await fx.waitFor(/^tick 2 /)
  let ok = 0
  for (let i = 0; i < 20; i++) {
    const frozen = await addon.freeze(fx.pid)
    const states = taskStates(fx.pid)
    const regs = await Promise.all(frozen.map(f => addon.getThreadRegisters(f.tid)))
    if (frozen.length === 2 && states.every(s => s === 't') && regs.every(r => r.regs.length === 216)) ok++
    await addon.thaw(fx.pid, false)
    await sleep(2)
  }
  t.equal(ok, 20, 'every round stopped both threads')
  const from = lastTick(fx)
  const a = Number((await fx.waitFor(/^tick \d+ (\d+)$/, from + 1))[1])
  const b = Number((await fx.waitFor(/^tick \d+ (\d+)$/, from + 3))[1])
  t.ok(b > a, 'still handling its signals')
})

t.test('freeze catches threads created during freeze', async t => {
  const fx = await startFixture(t, 'churn')
  await fx.waitFor(/^tick 2 /)
  let ok = 0
  for (let i = 0; i < 20; i++) {
    const frozen = await addon.freeze(fx.pid)
    const tids = fs.readdirSync(`/proc/${fx.pid}/task`).map(Number).sort()
    const states = taskStates(fx.pid)
    if (states.every(s => s === 't') && JSON.stringify(frozen.map(f => f.tid).sort()) === JSON.stringify(tids)) ok++
    else t.comment(`round ${i}: states ${states} tids ${tids} frozen ${frozen.map(f => f.tid)}`)
    await addon.thaw(fx.pid, false)
    await sleep(2)
  }
  t.equal(ok, 20, 'every listed thread was frozen, every round')
  const from = lastTick(fx)
  const a = (await fx.waitFor(/^tick \d+ (\d+) (\d+)$/, from + 1)).slice(1).map(Number)
  const b = (await fx.waitFor(/^tick \d+ (\d+) (\d+)$/, from + 3)).slice(1).map(Number)
  t.ok(b[0] > a[0] && b[1] > a[1], 'still creating threads')
})

t.test('a process whose main thread has exited', async t => {
  const fx = await startFixture(t, 'zombie')
  await fx.waitFor(/^tick 1$/)
  const frozen = await addon.freeze(fx.pid)
  t.equal(frozen.length, 1, 'only the live thread')
  t.not(frozen[0].tid, fx.pid)
  const res = await addon.injectBatch(frozen[0].tid, 0, null, [{ nr: 39, args: [] }])
  t.same(res.results, [BigInt(fx.pid)])
  const ticks = lastTick(fx)
  await addon.thaw(fx.pid, false)
  await fx.waitFor(/^tick /, ticks + 1)
})

t.test('a stopped (SIGSTOP) process stays stopped', async t => {
  const fx = await startFixture(t, 'basic')
  await fx.waitFor(/^tick 1$/)
  process.kill(fx.pid, 'SIGSTOP')
  for (let i = 0; i < 100 && taskStates(fx.pid)[0] !== 'T'; i++) await sleep(5)
  t.same(taskStates(fx.pid), ['T'])
  const frozen = await addon.freeze(fx.pid)
  t.equal((frozen[0].status >> 8) & 0xff, 19, 'group-stop reported with SIGSTOP')
  t.equal(frozen[0].status >> 16, PTRACE_EVENT_STOP)
  t.same(taskStates(fx.pid), ['t'])
  const res = await addon.injectBatch(fx.pid, 0, null, [{ nr: 39, args: [] }])
  t.same(res.results, [BigInt(fx.pid)])
  await addon.thaw(fx.pid, false)
  await sleep(20)
  t.same(taskStates(fx.pid), ['T'], 'back in its group-stop')
  const ticks = lastTick(fx)
  process.kill(fx.pid, 'SIGCONT')
  await fx.waitFor(/^tick /, ticks + 1)
})

t.test('injectBatch that changes the SIGTRAP disposition', async t => {
  const fx = await startFixture(t, 'basic')
  await addon.freeze(fx.pid)
  const sa = Buffer.alloc(64)
  sa.writeBigUInt64LE(1n, 0) // SIG_IGN
  const res = await addon.injectBatch(fx.pid, 64, sa, [
    { nr: 13, args: [BigInt(SIGTRAP), 0n, 32n, 8n], scratchArgs: 0b110 }, // set SIG_IGN, old at +32
    { nr: 39, args: [] },
    { nr: 13, args: [BigInt(SIGTRAP), 0n, 0n, 8n], scratchArgs: 0b100 }, // read back at +0
  ])
  t.same(res.results, [0n, BigInt(fx.pid), 0n])
  t.equal(res.scratch.readBigUInt64LE(32), 0n, 'was SIG_DFL')
  t.equal(res.scratch.readBigUInt64LE(0), 1n, 'SIG_IGN survived the following calls')
  t.equal(statusHex(fx.pid, 'SigIgn') & sigbit(SIGTRAP), sigbit(SIGTRAP))
  const ticks = lastTick(fx)
  await addon.thaw(fx.pid, false)
  await fx.waitFor(/^tick /, ticks + 1)
})

t.test('thaw after the frozen process was killed by someone else', async t => {
  const fx = await startFixture(t, 'basic')
  await addon.freeze(fx.pid)
  process.kill(fx.pid, 'SIGKILL')
  await sleep(20)
  await addon.thaw(fx.pid, false)
  t.equal(await fx.exited, 128 + 9, 'died and was reaped by its parent')
})

t.test('writeMemory', async t => {
  const fx = await startFixture(t, 'basic')
  const addr = BigInt((await fx.waitFor(/^mem (0x[0-9a-f]+) (\d+)$/))[1])
  const handler = BigInt((await fx.waitFor(/^handler (0x[0-9a-f]+)$/))[1])
  await addon.freeze(fx.pid)
  const data = Buffer.from('written by ckptfs')
  await addon.writeMemory(fx.pid, addr + 100n, data)
  t.ok((await addon.readMemory(fx.pid, addr + 100n, data.length)).equals(data), 'read back')
  t.equal((await addon.readMemory(fx.pid, addr + 99n, 1))[0], (99 * 7 + 3) & 0xff, 'neighbours untouched')
  await t.rejects(addon.writeMemory(fx.pid, handler, Buffer.from([0x90])), { code: 'EFAULT' }, 'read-only text')
  await addon.thaw(fx.pid, false)
})

// Runs in a child node process under `sleeper subreaper`: the restored process is reparented
// to the nearest subreaper, and this machine's PID 1 never reaps.
const restorerScript = (addonPath: string, stub: string) => `
const a = require(${JSON.stringify(addonPath)})
const fs = require('fs')
const stat = (pid) => { const s = fs.readFileSync('/proc/' + pid + '/stat', 'utf8'); return s.slice(s.lastIndexOf(')') + 2).split(' ') }
const status = (pid, f) => fs.readFileSync('/proc/' + pid + '/status', 'utf8').match(new RegExp('^' + f + ':\\\\s*(\\\\S+)', 'm'))[1]
const freePid = () => { for (;;) { const p = 20000 + Math.floor(Math.random() * 12000); if (!fs.existsSync('/proc/' + p)) return p } }
const plan = (magic) => { const b = Buffer.alloc(56); b.write(magic, 0); b.writeUInt32LE(2, 4); b.writeInt32LE(10, 8); return b }
const gone = async (pid) => { for (let i = 0; i < 200; i++) { if (!fs.existsSync('/proc/' + pid)) return true; await new Promise(r => setTimeout(r, 10)) } return false }
;(async () => {
  const out = {}
  const pid = freePid()
  await a.spawnRestorer(pid, ${JSON.stringify(stub)}, plan('CKRS'), 10)
  out.pid = pid
  out.state = stat(pid)[0]
  const keeper = Number(stat(pid)[1])
  out.keptByKeeper = keeper !== process.pid && Number(stat(keeper)[1]) === process.pid
  out.tracer = fs.existsSync('/proc/' + process.pid + '/task/' + status(pid, 'TracerPid'))
  out.exe = fs.readlinkSync('/proc/' + pid + '/exe')
  out.fds = fs.readdirSync('/proc/' + pid + '/fd').map(fd => fd + ' ' + fs.readlinkSync('/proc/' + pid + '/fd/' + fd))
  out.environ = fs.readFileSync('/proc/' + pid + '/environ', 'utf8')
  out.sigIgn = status(pid, 'SigIgn')
  const regs = await a.getThreadRegisters(pid)
  out.sigBlk = regs.sigmask.toString(16)
  out.rseq = regs.rseq.pointer.toString()
  const code = 0x10000000n, scratch = 0x20000000n
  const m = await a.injectBatch(pid, 0, null, [{ nr: 9, args: [code, 4096n, 7n, 0x100022n, -1n, 0n] }])
  out.codeMapped = m.results[0] === code
  await a.writeMemory(pid, code, Buffer.from([0x0f, 0x05]))
  const r = await a.injectBatch(pid, 4096, Buffer.from('hi'), [
    { nr: 39, args: [] },
    { nr: 28, args: [scratch, 4096n, 0n] },
    { nr: 13, args: [10n, 0n, 64n, 8n], scratchArgs: 4 },
  ], { scratchAddr: scratch, syscallAddr: code })
  out.placed = r.results.map(String)
  out.scratchHi = r.scratch.subarray(0, 2).toString()
  out.scratchGone = !fs.readFileSync('/proc/' + pid + '/maps', 'utf8').includes('20000000-')
  out.exitkillKept = (await a.injectBatch(pid, 0, null, [{ nr: 39, args: [] }], { syscallAddr: code })).results[0] === BigInt(pid)
  await a.setThreadState(pid, regs.xstate, 0x200n)
  out.maskSet = (await a.getThreadRegisters(pid)).sigmask.toString(16)
  await a.thaw(pid, true)
  out.killed = await gone(pid)

  out.taken = await a.spawnRestorer(process.pid, ${JSON.stringify(stub)}, plan('CKRS'), 10).then(() => 'resolved', (e) => e.code)
  const bad = freePid()
  out.badPlan = await a.spawnRestorer(bad, ${JSON.stringify(stub)}, plan('XXXX'), 10).then(() => 'resolved', (e) => e.message)
  out.badPlanGone = await gone(bad)
  const nostub = freePid()
  out.noStub = await a.spawnRestorer(nostub, '/nonexistent/restorer', plan('CKRS'), 10).then(() => 'resolved', (e) => e.message)
  out.noStubGone = await gone(nostub)
  console.log(JSON.stringify(out))
})().catch((e) => { console.log(JSON.stringify({ error: String(e && e.stack || e) })); process.exit(1) })
`

t.test('spawnRestorer, placement, setThreadState', async t => {
  const addonPath = path.join(__dirname, '..', 'addon', 'build', 'Release', 'ckptfs.node')
  const stub = path.join(__dirname, '..', 'addon', 'build', 'Release', 'restorer')
  const stdout = await new Promise<string>((resolve, reject) =>
    execFile(fixtureBin, ['subreaper', ...userNode('-e', restorerScript(addonPath, stub)).flat()], { timeout: 20000 }, (err, out) =>
      err ? reject(new Error(`${err.message}\n${out}`)) : resolve(out),
    ),
  )
  const out = JSON.parse(stdout.trim().split('\n').pop()!)
  t.notOk(out.error, 'script ran')
  t.equal(out.state, 't', 'stopped after its "ok"')
  t.ok(out.keptByKeeper, 'while it is restored its parent is a keeper process, never the server')
  t.ok(out.tracer, 'traced by the server')
  t.equal(out.exe, stub)
  t.same(out.fds, [], 'the stub closed its working fds, nothing else leaked')
  t.equal(out.environ, 'GLIBC_TUNABLES=glibc.pthread.rseq=0\0')
  t.equal(out.sigIgn, '0000000000000000', "no ignored signals inherited from node (SIGPIPE)")
  t.equal(out.sigBlk, '0', 'empty signal mask')
  t.equal(out.rseq, '0', 'no rseq registration')
  t.ok(out.codeMapped, 'injected mmap of a code page')
  t.same(out.placed, [String(out.pid), '0', '0'], 'calls through the given syscall, scratch at the given address')
  t.equal(out.scratchHi, 'hi')
  t.ok(out.scratchGone, 'scratch unmapped')
  t.ok(out.exitkillKept, 'still injectable')
  t.equal(out.maskSet, '200', 'setThreadState set the mask')
  t.ok(out.killed, 'thaw(kill) ended it')
  t.equal(out.taken, 'EEXIST', 'a taken PID')
  t.match(out.badPlan, /^restorer\(pid \d+\): error: plan: bad magic$/, "the stub's own error line")
  t.ok(out.badPlanGone, 'killed after its error')
  t.match(out.noStub, /execve: ENOENT/)
  t.ok(out.noStubGone)
})

t.test('errors', async t => {
  await t.rejects(addon.freeze(2 ** 22 + 1), { code: 'ESRCH' })
  await t.rejects(addon.getThreadRegisters(2 ** 22 + 1), { code: 'ESRCH' })
  await t.rejects(addon.thaw(2 ** 22 + 1, false), { code: 'ESRCH' })
  await t.rejects((addon.freeze as (x: unknown) => Promise<unknown>)('1'), TypeError, 'argument errors reject too')
})

t.test('an idle tracer does not keep node alive', async t => {
  const fx = await startFixture(t, 'basic')
  const script = `
    const a = require(${JSON.stringify(path.join(__dirname, '..', 'addon', 'build', 'Release', 'ckptfs.node'))})
    a.freeze(${fx.pid}).then(() => a.thaw(${fx.pid}, false)).then(() => console.log('done'))
  `
  const out = await new Promise<string>((resolve, reject) =>
    execFile(...userNode('-e', script), { timeout: 10000 }, (err, stdout) => (err ? reject(err) : resolve(stdout))),
  )
  t.equal(out.trim(), 'done', 'exited by itself')
  const ticks = lastTick(fx)
  await fx.waitFor(/^tick /, ticks + 1)
})

t.test('lazyFill refuses pieces that overlap or lie outside the registered ranges, before touching the uffd', async t => {
  // Ranges and pieces as lib/restore/lazy.ts encodes them; an eventfd stands in for the uffd
  // (refused before any ioctl, and closed as a uffd would be). The checks are per segment
  // (addon/src/uffd.c keeps no per-page table): a page twice, a segment past its range's end
  // or across a gap between ranges, and one not page-aligned are all refused.
  const range = (start: bigint, len: bigint) => {
    const b = Buffer.alloc(16)
    b.writeBigUInt64LE(start)
    b.writeBigUInt64LE(len, 8)
    return b
  }
  const piece = (segs: Array<[bigint, bigint]>) => {
    const b = Buffer.alloc(16 + 16 * segs.length + 24)
    b.writeUInt32LE(segs.length, 4)
    b.writeUInt32LE(1, 8)
    let total = 0n
    segs.forEach(([a, n], i) => {
      b.writeBigUInt64LE(a, 16 + 16 * i)
      b.writeBigUInt64LE(n, 24 + 16 * i)
      total += n
    })
    b.writeBigInt64LE(0n, 16 + 16 * segs.length)
    b.writeBigUInt64LE(total, 32 + 16 * segs.length)
    return b
  }
  const order = Buffer.from([0, 0, 0, 0, 1, 0, 0, 0])
  const refused = async (ranges: Buffer, pieces: Buffer[]) => {
    const fd = addon.eventFd()
    await t.rejects(addon.lazyFill(fd, process.pid, ranges, Buffer.concat(pieces), order, -1, Buffer.alloc(0)), /a piece outside the ranges, twice, or not page-aligned/)
    t.throws(() => fs.fstatSync(fd), { code: 'EBADF' }, 'the fd given was closed')
  }
  const base = 0x7f0000000000n
  await refused(range(base, 0x10000n), [piece([[base, 0x2000n]]), piece([[base + 0x1000n, 0x2000n]])]) // a page twice
  await refused(range(base, 0x10000n), [piece([[base + 0x2000n, 0x1000n]]), piece([[base + 0x8000n, 0x9000n]])]) // past the range's end
  await refused(Buffer.concat([range(base, 0x4000n), range(base + 0x8000n, 0x4000n)]), [piece([[base, 0x1000n]]), piece([[base + 0x3000n, 0x2000n]])]) // across a gap
  await refused(range(base, 0x10000n), [piece([[base, 0x1000n]]), piece([[base + 0x1800n, 0x1000n]])]) // not page-aligned
})
