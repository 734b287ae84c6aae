// Task capture on a real process with one of everything (test/fixtures/taskzoo.c): every value
// against /proc and against what the program says it set, page contents against the bytes it
// wrote, the task-PID/ tree written out the way `cp -a` would and loaded back, damaged trees
// refused with the file named, and the program running on unharmed after the thaw.

import { spawn } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import t, { type Test } from 'tap'
import { NodeCache } from '../lib/cache'
import { asPid, asTid, lazy, type FileTable, type TaskImage, type ThreadState, type Vma } from '../lib/model'
import { native } from '../lib/native'
import { loadTask } from '../lib/task/load'
import { validateTask } from '../lib/restore/validate'
import { captureVmas, PAGE_SIZE, planCopy, rangesOf, vmaKind } from '../lib/task/memory'
import { captureProcess, processProblems } from '../lib/task/process'
import { captureThreads } from '../lib/task/threads'
import { parseLimits, parseTimers, readProcBytes, readProcTextSync } from '../lib/task/procfs'
import { DiskDir } from '../lib/files/saved'
import { taskDir } from '../lib/task/tree'
import type { DirNode } from '../lib/tree/node'
import { buildTarget, identityOf, killIfSame, startTarget, threadIds, threadState } from './lib/targets'
import { reseal } from './lib/restore'

const PAGE = PAGE_SIZE
const RESERVATION = 1 << 30
const SIGUSR1 = 10
const SIGUSR2 = 12
const SIGINT = 2
const SIGTERM = 15
const SA_SIGINFO = 4n
const SA_RESTART = 0x10000000n
const bit = (signal: number): bigint => 1n << BigInt(signal - 1)

/** The bytes taskzoo.c fills a region with (its `pattern`). */
function pattern(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length)
  for (let i = 0; i < length; i++) out[i] = (i * 7 + seed * 13 + (i >> 12)) & 0xff
  return out
}

function statField(pid: number, n: number): string {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[n - 3]
}

function statusLine(pid: number, key: string, tid = pid): string {
  const line = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8').split('\n').find((l) => l.startsWith(key + ':'))
  return line ? line.slice(key.length + 1).trim() : ''
}

/** The mapping holding `addr`. */
function vmaAt(vmas: Vma[], addr: bigint): Vma {
  const vma = vmas.find((v) => v.start <= addr && addr < v.end)
  if (!vma) throw new Error(`no mapping holds 0x${addr.toString(16)}`)
  return vma
}

/** Stored pages of `vma` that fall inside [addr, addr+length), as offsets from `addr`. */
function storedPagesWithin(vma: Vma, addr: bigint, length: number): number[] {
  const pages: number[] = []
  for (const run of vma.stored) {
    for (let at = run.offset; at < run.offset + run.length; at += BigInt(PAGE)) {
      const page = vma.start + at
      if (page >= addr && page < addr + BigInt(length)) pages.push(Number(page - addr) / PAGE)
    }
  }
  return pages
}

/** Reads [addr, addr+length) of the task through the VMA's `pages` source (it must be stored). */
async function readStored(vma: Vma, addr: bigint, length: number): Promise<Buffer> {
  let pagesOffset = 0
  for (const run of vma.stored) {
    const runStart = vma.start + run.offset
    if (addr >= runStart && addr + BigInt(length) <= runStart + run.length) {
      return vma.pages.read(pagesOffset + Number(addr - runStart), length)
    }
    pagesOffset += Number(run.length)
  }
  throw new Error(`0x${addr.toString(16)}+${length} is not stored in ${vma.path || vma.kind}`)
}

async function allPages(vma: Vma): Promise<Buffer> {
  return vma.pages.read(0, vma.pages.size)
}

const noFds: DirNode = { kind: 'dir', perm: 0o555, list: async () => [], lookup: async () => undefined }

/** Writes a tree node out the way `cp -a` does: size first, then reads in 128 KiB pieces. */
async function saveTree(t: Test, node: DirNode, dest: string): Promise<void> {
  fs.mkdirSync(dest)
  for (const name of await node.list()) {
    const child = await node.lookup(name)
    if (!child) throw new Error(`${dest}/${name}: listed but not found`)
    if (child.kind === 'dir') {
      await saveTree(t, child, path.join(dest, name))
      continue
    }
    const size = await child.size()
    const fd = fs.openSync(path.join(dest, name), 'w')
    let at = 0
    for (;;) {
      const piece = await child.read(at, 128 * 1024)
      if (piece.length === 0) break
      fs.writeSync(fd, piece)
      at += piece.length
    }
    fs.closeSync(fd)
    if (at !== size) t.fail(`${dest}/${name}: size says ${size}, read gave ${at}`)
  }
}

t.test('mapping kinds from maps lines', async (t) => {
  const kinds: Array<[string, string, string]> = [
    ['rw-p', '[heap]', 'heap'], ['rw-p', '[stack]', 'stack'], ['r-xp', '[vdso]', 'vdso'],
    ['r--p', '[vvar]', 'vvar'], ['r--p', '[vvar_vclock]', 'vvar'], ['--xp', '[vsyscall]', 'vsyscall'],
    ['rw-p', '', 'anonymous'], ['rw-p', '[anon:jit]', 'anonymous'], ['rw-s', '[anon_shmem:pool]', 'shared-anonymous'],
    ['rw-s', '/dev/zero (deleted)', 'shared-anonymous'], ['rw-s', '/SYSV0000162e (deleted)', 'shared-anonymous'],
    ['r--p', '/usr/lib/libc.so.6', 'file-private'], ['rw-s', '/memfd:buf (deleted)', 'file-shared'],
    ['rw-s', '/secretmem (deleted)', 'file-shared'], ['r-xp', '[uprobes]', 'special'],
  ]
  for (const [perms, path, kind] of kinds) t.equal(vmaKind({ perms, path }), kind, `${perms} ${path || '(anonymous)'}`)
})

t.test('stored runs back to back: which memory a pages range is', async (t) => {
  const runs = [{ start: 0x10000n, length: 0x2000n }, { start: 0x20000n, length: 0x1000n }, { start: 0x30000n, length: 0x3000n }]
  t.same(rangesOf(runs, 0, 0x6000), runs, 'everything')
  t.same(rangesOf(runs, 0x1800, 0x1000), [{ start: 0x11800n, length: 0x800n }, { start: 0x20000n, length: 0x800n }], 'across a run boundary')
  t.same(rangesOf(runs, 0x3000, 0x100), [{ start: 0x30000n, length: 0x100n }], 'start of the last run')
  t.same(rangesOf(runs, 0x5fff, 10), [{ start: 0x32fffn, length: 1n }], 'clipped at the end')
})

t.test('/proc files are read whole, in small pieces (no 64 KiB buffer per file: issue 13, server RSS)', async (t) => {
  // readFile gives each file whose stat size is 0 (all of /proc) a fresh 64 KiB buffer; a
  // dozen per checkpoint fragmented the server's heap (README, Benchmarks, "Server memory").
  const sizes: number[] = []
  const spied = ['allocUnsafe', 'allocUnsafeSlow', 'alloc'] as const
  const originals = spied.map((name) => Buffer[name])
  spied.forEach((name, i) => {
    const original = originals[i] as (size: number) => Buffer
    ;(Buffer as unknown as Record<string, unknown>)[name] = (size: number, ...rest: unknown[]) => {
      sizes.push(size)
      return (original as (...a: unknown[]) => Buffer).call(Buffer, size, ...rest)
    }
  })
  // An idle process, so that what a second read shows is the same.
  const idle = spawn('sleep', ['60'], { stdio: 'ignore' })
  t.teardown(() => idle.kill('SIGKILL'))
  await new Promise((r) => idle.once('spawn', r))
  let status: Buffer
  let smaps: Buffer
  try {
    status = await readProcBytes(idle.pid!, 'status')
    smaps = await readProcBytes(idle.pid!, 'smaps')
  } finally {
    spied.forEach((name, i) => ((Buffer as unknown as Record<string, unknown>)[name] = originals[i]))
  }
  t.ok(Math.max(...sizes) < 64 * 1024, `no buffer of 64 KiB or more for a read (largest ${Math.max(...sizes)} bytes)`)
  t.match(status.toString(), /^Name:\tsleep\n/, 'status read whole')
  t.ok(smaps.length > 4000, `smaps (${smaps.length} bytes) is longer than one piece`)
  // Pss lines move with every other process mapping the same libraries: compared without them.
  const steady = (text: string) => text.split('\n').filter((line) => !line.startsWith('Pss')).join('\n')
  t.equal(steady(smaps.toString()), steady(fs.readFileSync(`/proc/${idle.pid}/smaps`, 'utf8')), 'and read whole, every byte (Pss lines aside)')
})

t.test('readProcTextSync reads a /proc file longer than its buffer whole', async (t) => {
  // 1,000 mapped files: a maps file of about 100 KiB, more than the 64 KiB piece (maps, not
  // smaps: smaps's Pss moves as other processes map the same libraries). The target is
  // stopped, so two reads see the same text.
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'procsync-'))
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }))
  const target = await startTarget(buildTarget('restore_manymaps'), [work, '1000'], /^ready pid=/)
  t.teardown(() => target.kill())
  process.kill(target.pid, 'SIGSTOP')
  const expected = fs.readFileSync(`/proc/${target.pid}/maps`, 'utf8')
  t.ok(expected.length > 64 * 1024, `maps is ${expected.length} bytes`)
  t.equal(readProcTextSync(target.pid, 'maps'), expected, 'every byte, in order')
  t.equal(readProcTextSync(target.pid, 'stat', target.pid), fs.readFileSync(`/proc/${target.pid}/task/${target.pid}/stat`, 'utf8'), 'a thread\'s file')
  t.throws(() => readProcTextSync(2 ** 22 + 1, 'stat'), { name: 'CkptError', errno: 'ESRCH', message: /^\/proc\/4194305\/stat: ENOENT/ }, 'a gone process: ESRCH, naming the file')
})

t.test('/proc parsers', async (t) => {
  const timers = parseTimers('ID: 3\nsignal: 14/00007f0000001000\nnotify: thread/tid.4242\nClockID: 0\nID: 7\nsignal: 0/0000000000000000\nnotify: none/pid.4241\nClockID: 1\n')
  t.same(timers, [
    { id: 3, signal: 14, sigevValue: 0x7f0000001000n, notify: 'thread/tid.4242', clockid: 0 },
    { id: 7, signal: 0, sigevValue: 0n, notify: 'none/pid.4241', clockid: 1 },
  ])
  t.throws(() => parseTimers('ID: 3\nsignal: 14/0\n'), /timers: incomplete entry for timer 3/)
  const limits = parseLimits(fs.readFileSync('/proc/self/limits', 'utf8'))
  t.same(limits.map((l) => l.resource), Array.from({ length: 16 }, (_, i) => i), 'all 16, in RLIMIT order')
  t.equal(limits.find((l) => l.name === 'cpu')?.soft, (1n << 64n) - 1n, 'unlimited is RLIM_INFINITY')
})

t.test('taskzoo: capture, tree, load-back, thaw', async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'taskzoo-'))
  const binary = buildTarget('taskzoo')
  // Started through sh so that it is not this process's child: libuv reaps its own children
  // with waitpid() on SIGCHLD and would swallow the ptrace stops the freeze waits for.
  const target = await startTarget('/bin/sh', ['-c', 'exec 3<&0; "$@" <&3 & wait', 'sh', binary, work], /^ready$/, { cwd: work, stdin: 'pipe' })
  const said = new Map(target.lines.filter((l) => l.includes('=')).map((l) => l.split('=') as [string, string]))
  const pid = Number(said.get('pid'))
  const identity = identityOf(pid)
  let frozen = false
  t.teardown(async () => {
    if (frozen) await native.thaw(pid, false).catch(() => undefined)
    killIfSame(pid, identity)
    target.kill()
    fs.rmSync(work, { recursive: true, force: true })
  })
  const addr = (key: string): bigint => BigInt(said.get(key) ?? `missing ${key}`)
  const num = (key: string): number => Number(said.get(key) ?? NaN)

  const planned = await planCopy(pid)
  const tids = (await native.freeze(pid)).map((f) => f.tid).sort((a, b) => a - b)
  frozen = true
  t.same(tids, threadIds(pid), 'every thread frozen')
  t.ok(tids.every((tid) => threadState(pid, tid) === 't'), 'all in tracing stop')

  const [proc, threads, vmas] = await Promise.all([captureProcess(pid, tids), captureThreads(pid, tids), captureVmas(pid, 'lazy')])
  t.same(processProblems(proc, threads.map((th) => th.tid), vmas), [], 'nothing prevents a restore')

  t.test('process', async (t) => {
    t.equal(proc.pid, pid)
    t.equal(proc.comm, 'taskzoo-main')
    t.equal(proc.exe, fs.realpathSync(binary))
    t.equal(proc.cwd, fs.realpathSync(work))
    t.equal(proc.root, '/')
    t.same(proc.cmdline, Buffer.from(`${binary}\0${work}\0`))
    t.same(proc.environ, fs.readFileSync(`/proc/${pid}/environ`))
    t.equal(proc.umask, 0o027)
    t.equal(proc.personality, 0x0040000, 'ADDR_NO_RANDOMIZE')
    t.equal(proc.ppid, Number(/^PPid:\s+(\d+)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]), 'the sh that started it, as /proc/PID/status says')
    t.equal(proc.pgid, Number(statField(pid, 5)))
    t.equal(proc.sid, Number(statField(pid, 6)))
    t.equal(proc.ttyNr, Number(statField(pid, 7)))
    t.equal(proc.noNewPrivs, true)
    t.equal(proc.dumpable, 1)
    t.equal(proc.seccompMode, 0)

    const ids = (key: string) => statusLine(pid, key).split(/\s+/).map(Number)
    const c = proc.creds
    t.same([c.uid, c.euid, c.suid, c.fsuid], ids('Uid'))
    t.same([c.gid, c.egid, c.sgid, c.fsgid], ids('Gid'))
    t.same(c.groups, statusLine(pid, 'Groups') ? ids('Groups') : [])
    t.equal(c.capEffective, BigInt('0x' + statusLine(pid, 'CapEff')))
    t.equal(c.capPermitted, BigInt('0x' + statusLine(pid, 'CapPrm')))
    t.equal(c.capInheritable, BigInt('0x' + statusLine(pid, 'CapInh')))
    t.equal(c.capBounding, BigInt('0x' + statusLine(pid, 'CapBnd')))
    t.equal(c.capAmbient, BigInt('0x' + statusLine(pid, 'CapAmb')))
    t.equal(c.securebits, 0)

    t.equal(proc.rlimits.length, 16)
    const nofile = proc.rlimits.find((r) => r.name === 'nofile')
    t.equal(nofile?.resource, 7)
    t.equal(nofile?.soft, 777n)
    const stack = proc.rlimits.find((r) => r.name === 'stack')
    t.match(fs.readFileSync(`/proc/${pid}/limits`, 'utf8'), new RegExp(`Max stack size\\s+${stack?.soft}\\s`))

    t.equal(proc.sigactions.length, 62, 'every signal but SIGKILL and SIGSTOP')
    const usr2 = proc.sigactions.find((a) => a.signal === SIGUSR2)
    t.equal(usr2?.handler, addr('sigusr2_handler'))
    t.equal((usr2?.flags ?? 0n) & (SA_SIGINFO | SA_RESTART), SA_SIGINFO | SA_RESTART)
    t.equal(usr2?.mask, bit(SIGINT) | bit(SIGTERM))
    t.equal(proc.sigactions.find((a) => a.signal === SIGUSR1)?.handler, 0n, 'SIG_DFL')

    t.equal(proc.sharedPendingMask, bit(SIGUSR1))
    t.equal(proc.sharedPendingMask, BigInt('0x' + statusLine(pid, 'ShdPnd')))
    t.equal(proc.sharedPendingSiginfo.length, 128, 'one queued siginfo')
    t.equal(proc.sharedPendingSiginfo.readInt32LE(0), SIGUSR1, 'si_signo')
    t.equal(proc.sharedPendingSiginfo.readInt32LE(8), -1, 'si_code SI_QUEUE')
    t.equal(proc.sharedPendingSiginfo.readInt32LE(24), 4242, 'si_value')

    const real = proc.itimers.find((i) => i.which === 'real')
    t.equal(real?.intervalUs, 7200_250_000n)
    t.ok(real && real.valueUs <= 3600_000_000n && real.valueUs > 3500_000_000n, `itimer value ${real?.valueUs}`)
    t.equal(proc.itimers.find((i) => i.which === 'virtual')?.valueUs, 0n)
    t.equal(proc.posixTimers.length, 1)
    const timer = proc.posixTimers[0]
    t.equal(timer.id, num('posix_timer_id'))
    t.equal(timer.signal, 37, 'SIGRTMIN+3')
    t.equal(timer.sigevValue, 0xabcdefn)
    t.equal(timer.notify, `signal/pid.${pid}`)
    t.equal(timer.clockid, 1, 'CLOCK_MONOTONIC')
    t.equal(timer.intervalNs, 4000_000_005_000n)
    t.ok(timer.valueNs <= 3000_000_000_000n && timer.valueNs > 2900_000_000_000n, `timer value ${timer.valueNs}`)
    t.equal(timer.overrun, 0)

    const mm = proc.mm
    const stat = (n: number) => BigInt(statField(pid, n))
    t.same([mm.startCode, mm.endCode, mm.startStack], [stat(26), stat(27), stat(28)])
    t.same([mm.startData, mm.endData, mm.startBrk], [stat(45), stat(46), stat(47)])
    t.same([mm.argStart, mm.argEnd, mm.envStart, mm.envEnd], [stat(48), stat(49), stat(50), stat(51)])
    t.equal(mm.brk, addr('brk'))
    t.same(mm.auxv, fs.readFileSync(`/proc/${pid}/auxv`))
    t.equal(mm.exe, proc.exe)
  })

  t.test('threads', async (t) => {
    t.same(threads.map((th) => th.tid), tids)
    const byTid = (tid: number): ThreadState => threads.find((th) => th.tid === tid)!
    const main = byTid(pid)
    t.equal(main.comm, 'taskzoo-main')
    t.same(main.syscall, { nr: 0, result: -512n }, 'main thread in read(), ERESTARTSYS')
    t.same(main.altstack, { sp: addr('altstack_sp'), size: BigInt(num('altstack_size')), flags: 0 })
    for (const n of [1, 2]) {
      const th = byTid(num(`thread${n}_tid`))
      t.equal(th.comm, `zoo-t${n}`)
      t.same(th.syscall, { nr: 34, result: -514n }, `thread ${n} in pause(), ERESTARTNOHAND`)
      t.equal(th.fsBase, addr(`thread${n}_fs_base`))
      const tls = await native.readMemory(pid, addr(`thread${n}_tls_addr`), 8)
      t.equal(tls.readBigInt64LE(0), BigInt(num(`thread${n}_tls_value`)), `thread ${n} TLS value`)
      t.equal(th.altstack.flags, 2, 'SS_DISABLE')
    }
    const tlsOffset = (n: number) => addr(`thread${n}_tls_addr`) - byTid(num(`thread${n}_tid`)).fsBase
    t.equal(tlsOffset(1), tlsOffset(2), 'TLS variable at the same fs_base offset in both threads')
    const worker1 = byTid(num('thread1_tid'))
    t.equal(worker1.pendingMask, bit(36))
    t.equal(worker1.pendingSiginfo.length, 128)
    t.equal(worker1.pendingSiginfo.readInt32LE(0), 36)
    t.equal(worker1.pendingSiginfo.readInt32LE(24), 77)
    for (const th of threads) {
      t.equal(th.regs.length, 216)
      t.ok(th.xstate.length >= 576, `xstate ${th.xstate.length} bytes`)
      t.equal(th.sigmask & (bit(SIGUSR1) | bit(36)), bit(SIGUSR1) | bit(36), 'SIGUSR1 and SIGRTMIN+2 blocked')
      t.equal(th.sigmask, BigInt('0x' + statusLine(pid, 'SigBlk', th.tid)))
      t.equal(th.pendingMask, BigInt('0x' + statusLine(pid, 'SigPnd', th.tid)))
      t.equal(th.gsBase, 0n)
      t.equal(th.rseq.size, 32)
      t.equal(th.rseq.signature, 0x53053053)
      t.equal(th.rseq.pointer, th.fsBase + 2336n, 'glibc rseq area')
    }
  })

  t.test('memory', async (t) => {
    const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n')
    t.same(vmas.map((v) => `${v.start.toString(16).padStart(8, '0')}-${v.end.toString(16).padStart(8, '0')} ${v.perms}`),
      maps.map((l) => l.split(' ').slice(0, 2).join(' ')), 'every mapping, as /proc/PID/maps')

    const heap = vmaAt(vmas, addr('heap'))
    t.equal(heap.kind, 'heap')
    t.same(await readStored(heap, addr('heap'), num('heap_len')), pattern(num('heap_len'), 1))

    const stack = vmaAt(vmas, addr('stack_data'))
    t.equal(stack.kind, 'stack')
    t.same(await readStored(stack, addr('stack_data'), num('stack_data_len')), pattern(num('stack_data_len'), 2))

    const anon = vmaAt(vmas, addr('anon'))
    t.equal(anon.kind, 'anonymous')
    t.same(storedPagesWithin(anon, addr('anon'), 8 * PAGE), [0, 1, 2, 3], 'only the 4 touched pages of 8')
    t.same(await readStored(anon, addr('anon'), 4 * PAGE), pattern(4 * PAGE, 3))

    const sharedAnon = vmaAt(vmas, addr('shared_anon'))
    t.equal(sharedAnon.kind, 'shared-anonymous')
    t.equal(sharedAnon.path, '/dev/zero (deleted)')
    t.same(await allPages(sharedAnon), pattern(2 * PAGE, 4))

    const filePrivate = vmaAt(vmas, addr('file_private'))
    t.equal(filePrivate.kind, 'file-private')
    t.equal(filePrivate.path, path.join(fs.realpathSync(work), 'private.dat'))
    t.same(filePrivate.stored, [{ offset: BigInt(PAGE), length: BigInt(PAGE) }], 'only the dirty private copy')
    t.same(await allPages(filePrivate), pattern(PAGE, 6))

    const fileShared = vmaAt(vmas, addr('file_shared'))
    t.equal(fileShared.kind, 'file-shared')
    t.same(fileShared.stored, [])
    t.equal(fileShared.pages.size, 0, 'the file holds the data')
    t.same(fs.readFileSync(path.join(work, 'shared.dat')).subarray(0, PAGE), pattern(PAGE, 8))

    const readOnly = vmaAt(vmas, addr('read_only'))
    t.equal(readOnly.perms, 'r--p')
    t.same(await readStored(readOnly, addr('read_only'), 2 * PAGE), pattern(2 * PAGE, 9))
    const noAccess = vmaAt(vmas, addr('no_access'))
    t.equal(noAccess.perms, '---p')
    t.same(await readStored(noAccess, addr('no_access'), 2 * PAGE), pattern(2 * PAGE, 10), 'PROT_NONE pages read too')

    const reservation = vmaAt(vmas, addr('reservation'))
    t.equal(reservation.start, addr('reservation'))
    t.equal(reservation.end - reservation.start, BigInt(RESERVATION))
    t.match(reservation.vmFlags, /\bnr\b/, 'MAP_NORESERVE shows in VmFlags')
    t.equal(reservation.pages.size, 16 * PAGE, '1 GiB reservation stores its 16 touched pages')
    t.same(storedPagesWithin(reservation, reservation.start, RESERVATION), Array.from({ length: 16 }, (_, i) => i * (RESERVATION / 16 / PAGE)))
    for (let i = 0; i < 16; i++) {
      t.same(await reservation.pages.read(i * PAGE, PAGE), pattern(PAGE, 20 + i), `reservation page ${i}`)
    }
    const straddling = await reservation.pages.read(PAGE - 100, 200)
    t.same(straddling, Buffer.concat([pattern(PAGE, 20).subarray(PAGE - 100), pattern(PAGE, 21).subarray(0, 100)]), 'a read across two runs')

    const vdso = vmas.find((v) => v.path === '[vdso]')!
    t.equal(vdso.kind, 'vdso')
    t.equal(vdso.pages.size, Number(vdso.end - vdso.start), 'vdso stored whole')
    t.same(await allPages(vdso), await native.readMemory(pid, vdso.start, vdso.pages.size))
    for (const v of vmas.filter((m) => m.path === '[vvar]' || m.path === '[vvar_vclock]' || m.path === '[vsyscall]')) {
      t.equal(v.pages.size, 0, `${v.path} recorded by address only`)
    }
  })

  t.test('copy mode reads the same bytes', async (t) => {
    const total = vmas.reduce((sum, v) => sum + v.pages.size, 0)
    t.ok(planned.bytes > 0 && Math.abs(planned.bytes - total) < 64 * PAGE, `planned ${planned.bytes}, stored ${total}`)
    // Two given buffers, then one of its own: a copy held in several pieces.
    const into = [Buffer.alloc(Math.floor(total / 4)), Buffer.alloc(Math.floor(total / 4))]
    const copied = await captureVmas(pid, 'copy', into)
    t.same(copied.map((v) => [v.start, v.stored]), vmas.map((v) => [v.start, v.stored]))
    for (const [i, v] of copied.entries()) {
      if (!(await allPages(v)).equals(await allPages(vmas[i]))) t.fail(`${v.path || v.kind} at 0x${v.start.toString(16)} differs`)
    }
    const reservation = vmaAt(copied, addr('reservation'))
    t.same(await reservation.pages.read(3 * PAGE, PAGE), pattern(PAGE, 23))
  })

  t.test('tree: lazy, sizes true, saved and loaded back', async (t) => {
    const captured = { process: 0, threads: 0, vmas: 0 }
    const task: TaskImage = {
      pid: asPid(pid),
      tids: tids.map(asTid),
      process: lazy(async () => { captured.process++; return proc }),
      threads: lazy(async () => { captured.threads++; return threads }),
      vmas: lazy(async () => { captured.vmas++; return vmas }),
      fileTable: lazy(async (): Promise<FileTable> => ({ fds: [], files: [] })),
    }
    const root = taskDir(task, { key: 'c1/task', cache: new NodeCache(64 << 20) }, noFds)
    const names = await root.list()
    for (const name of ['comm', 'creds', 'rlimits', 'signals', 'timers', 'mm', 'threads', 'memory', 'fds']) t.ok(names.includes(name), name)
    const threadsDir = await root.lookup('threads')
    t.same(threadsDir?.kind === 'dir' && (await threadsDir.list()), tids.map(String), 'threads/ lists TIDs')
    t.same(captured, { process: 0, threads: 0, vmas: 0 }, 'listing captures nothing')
    const umask = await root.lookup('umask')
    t.equal(umask?.kind === 'file' && (await umask.read(0, 100)).toString(), '027\n')
    t.same(captured, { process: 1, threads: 0, vmas: 0 }, 'one attribute captures the process part only')

    const saved = fs.mkdtempSync(path.join(os.tmpdir(), 'taskzoo-tree-'))
    t.teardown(() => fs.rmSync(saved, { recursive: true, force: true }))
    const taskName = `task-${pid}`
    await saveTree(t, root, path.join(saved, taskName))

    const at = (rel: string) => fs.readFileSync(path.join(saved, taskName, rel), 'utf8')
    t.equal(at('signals/actions/12/name'), 'SIGUSR2\n')
    t.equal(at('signals/actions/12/mask'), '0x4002\n')
    const shown = fs.readdirSync(path.join(saved, taskName, 'signals', 'actions'))
    t.ok(shown.includes('12') && !shown.includes('10') && shown.length < 10, `signals/actions/ shows the non-default actions only (SIGUSR2, not SIGUSR1): ${shown.join(' ')}`)
    t.equal(at('rlimits/nofile/soft'), '777\n')
    t.equal(at('rlimits/as/hard'), 'unlimited\n')
    t.equal(at(`threads/${pid}/syscall_result`), '-512\n')
    t.equal(at('personality'), '0x40000\n')
    const resName = `${addr('reservation').toString(16)}-${(addr('reservation') + BigInt(RESERVATION)).toString(16)}`
    t.equal(fs.statSync(path.join(saved, taskName, 'memory/vmas', resName, 'pages')).size, 16 * PAGE, 'pages file at its true size')
    t.match(at('memory/maps'), new RegExp(`^${resName} rw-p 00000000 00:00 0 anonymous ${16 * PAGE} rd,wr,mr,mw,me,nr`, 'm'))

    const loaded = await loadTask(new DiskDir(saved), taskName)
    t.same(loaded.process, proc, 'process state round-trips')
    t.same(loaded.threads, threads, 'thread state round-trips')
    t.same(loaded.vmas.map(({ pages: _p, ...rest }) => rest), vmas.map(({ pages: _p, ...rest }) => rest), 'mappings round-trip')
    for (const [i, v] of loaded.vmas.entries()) {
      if (!(await allPages(v)).equals(await allPages(vmas[i]))) t.fail(`pages of ${v.path || v.kind} at 0x${v.start.toString(16)} differ`)
    }

    t.test('damaged copies are refused, naming the file', async (t) => {
      // Each damage changes the saved tree in place and returns how to undo it.
      const file = (rel: string) => path.join(saved, rel)
      // A value file changed on purpose is resealed (ckptfs seal), so the loaders and the
      // validator judge it rather than values_crc32c; a raw file's damage is left to its checksum.
      const isValue = (rel: string) => !fs.existsSync(`${file(rel)}_crc32c`)
      const rewrite = (rel: string, data: string | Buffer) => {
        const original = fs.readFileSync(file(rel))
        fs.writeFileSync(file(rel), data)
        if (isValue(rel)) reseal(saved)
        return () => {
          fs.writeFileSync(file(rel), original)
          if (isValue(rel)) reseal(saved)
        }
      }
      const truncate = (rel: string, size: number) => rewrite(rel, fs.readFileSync(file(rel)).subarray(0, size))
      const remove = (rel: string) => {
        const original = fs.readFileSync(file(rel))
        fs.rmSync(file(rel))
        return () => fs.writeFileSync(file(rel), original)
      }
      const main = `${taskName}/threads/${pid}`
      const resDir = `${taskName}/memory/vmas/${resName}`
      const damages: Array<[string, () => () => void, RegExp]> = [
        ['truncated pages', () => truncate(`${resDir}/pages`, 15 * PAGE), new RegExp(`^${resDir}/pages: ${15 * PAGE} bytes, stored runs need ${16 * PAGE}$`)],
        // Damage to raw bytes is what their checksum file (regs_crc32c) catches first.
        ['short regs', () => truncate(`${main}/regs`, 215), new RegExp(`^${main}/regs: bytes 0-214 do not match their CRC32C`)],
        ['bad umask', () => rewrite(`${taskName}/umask`, '0999\n'), new RegExp(`^${taskName}/umask: not an octal number`)],
        ['no newline', () => rewrite(`${taskName}/ppid`, '1'), new RegExp(`^${taskName}/ppid: `)],
        ['unknown entry', () => {
          fs.writeFileSync(file(`${taskName}/creds/extra`), '1\n')
          reseal(saved)
          return () => {
            fs.rmSync(file(`${taskName}/creds/extra`))
            reseal(saved)
          }
        },
          new RegExp(`^${taskName}/creds/extra: unknown entry`)],
        ['ip not matching regs', () => rewrite(`${main}/ip`, '0x1234\n'), new RegExp(`^${main}/ip: 4660 does not match regs`)],
        ['misaligned run', () => rewrite(`${resDir}/stored_runs`, '0x10 0x1000\n'), new RegExp(`^${resDir}/stored_runs: run 1 .* not whole pages`)],
        ['run beyond the mapping', () => rewrite(`${resDir}/stored_runs`, '0x40000000 0x10000\n'), new RegExp(`^${resDir}/stored_runs: .* ends beyond the mapping`)],
        ['soft above hard', () => rewrite(`${taskName}/rlimits/nofile/hard`, '10\n'), new RegExp(`^${taskName}/rlimits/nofile/soft: 777 is above the hard limit 10`)],
        ['kind not fitting path', () => rewrite(`${resDir}/kind`, 'heap\n'), new RegExp(`^${resDir}/kind: heap does not fit`)],
        ['maps not matching vmas', () => rewrite(`${resDir}/vm_flags`, 'rd wr\n'), new RegExp(`^${taskName}/memory/maps: line \\d+ does not match vmas/`)],
        ['strict mode not the main thread\'s', () => rewrite(`${taskName}/seccomp_mode`, '1\n'), new RegExp(`^${taskName}/seccomp_mode: 1, but ${main}/seccomp_strict is 0: both are the main thread's`)],
        ['seccomp filters missing', () => rewrite(`${taskName}/seccomp_mode`, '2\n'), new RegExp(`^${taskName}/seccomp/threads/\\d+: missing, but seccomp_mode is 2 \\(filters\\)`)],
        ['siginfo for a signal not pending', () => rewrite(`${taskName}/signals/pending`, '0x0\n'),
          new RegExp(`^${taskName}/signals/pending_siginfo: record 0 is for signal 10`)],
        ['missing xstate', () => remove(`${main}/xstate`), new RegExp(`^${main}/xstate: missing`)],
        ['thread dir not a TID', () => {
          fs.renameSync(file(main), file(`${taskName}/threads/main`))
          return () => fs.renameSync(file(`${taskName}/threads/main`), file(main))
        }, new RegExp(`^${taskName}/threads/main: not a thread ID`)],
      ]
      for (const [what, damage, expected] of damages) {
        const undo = damage()
        try {
          // Loading parses; the validator checks meaning (ranges, what cannot be restored): both, as a restore does.
          await t.rejects(loadTask(new DiskDir(saved), taskName).then(validateTask), { message: expected }, what)
        } finally {
          undo()
        }
      }
      await t.resolves(loadTask(new DiskDir(saved), taskName).then(validateTask), 'loads again once every damage is undone')
    })
  })

  t.test('thaw: the program runs on unharmed', async (t) => {
    await native.thaw(pid, false)
    frozen = false
    target.child.stdin!.write('check\n')
    const [line] = await target.waitFor(/^check .*/)
    t.equal(line, 'check ok')
    t.ok(threadIds(pid).every((tid) => threadState(pid, tid) !== 't'), 'no thread left stopped')
  })
})
