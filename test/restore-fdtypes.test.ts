// Restore of epoll sets, signalfds, timerfds and inotify files (docs/RESTORE.md, kinds 7-10):
// a program holding them (test/fixtures/restore_fdtypes.c) is checkpointed through the real
// mount, saved with `cp -a`, ended with `echo kill > done`, restored with `ckptfs restore`,
// and then checks itself when told to through its fifo, writing "ok NAME" / "FAIL: ..." to
// its log. Restored processes are not our children and nobody reaps them: they are killed
// at teardown and stay zombies.

import { execFileSync, spawn } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import type { Duplex } from 'stream'
import t, { type Test } from 'tap'
import { asObjRef, type FileTable, type ProcessState } from '../lib/model'
import { framePlan, RecordBuilder, type PlannedRecord } from '../lib/restore/fdplan'
import { planFileRecords } from '../lib/restore/files'
import { ckptfs, ckptfsOk, mountFor } from './lib/mount'
import { buildTarget, repo, sleep, startTarget, type Target } from './lib/targets'
import { reseal } from './lib/restore'

const bin = buildTarget('restore_fdtypes')

/** A fresh directory under /tmp, removed at teardown. */
function workdir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-fdtypes-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

async function waitUntil(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  for (const deadline = Date.now() + ms; !cond();) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(20)
  }
}

const exists = (pid: number) => fs.existsSync(`/proc/${pid}`)
const read = (file: string) => fs.readFileSync(file, 'utf8').trim()

/** Every entry below `dir` (relative paths), for "nothing new was left here". */
function listTree(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).sort()
}

/**
 * Starts the fixture in `dir`, checkpoints it, saves the tree to DIR/saved with `cp -a`, ends
 * the checkpoint with `kill` and waits until its PID is free.
 */
async function savedFixture(t: Test, mnt: string, dir: string): Promise<{ target: Target; saved: string }> {
  const target = await startTarget(bin, [dir])
  t.teardown(() => target.kill())
  const checkpoint = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', checkpoint, saved])
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill\n')
  await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid))
  return { target, saved }
}

/** The objrefs under SAVED/files whose fd_type is `type`. */
function filesOfType(saved: string, type: string): string[] {
  const files = path.join(saved, 'files')
  return fs.readdirSync(files).filter((n) => read(path.join(files, n, 'fd_type')) === type)
}

const CHECKS = [
  'epoll: nothing ready before the writes', 'epoll: close-on-exec', 'epoll: five items keyed by the fd numbers they were added with',
  'epoll: pipe read end, EPOLLIN data 0x1111', 'epoll: EPOLLET (no second event for the same byte)', 'epoll: eventfd, EPOLLIN data 0x2222',
  'epoll: EPOLLONESHOT (disarmed after one event)', 'epoll: item added as fd 20, file now at 14', 'epoll: fd 20 stays closed',
  'epoll: item added as fd 21, file now at 15', 'epoll: fd 21 is /dev/null again', 'epoll: item added as fd 40, file now at 25', 'epoll: fd 40 stays closed',
  'signalfd: reads SIGUSR1 sent after the restore', 'signalfd: SFD_NONBLOCK and close-on-exec',
  'timerfd: the pending expiration is still there', 'timerfd: 2 s interval', 'timerfd: the 2 s timer fires', 'timerfd: and fires again 2 s later',
  'timerfd: the 1 s one-shot fires once', 'timerfd: the one-shot is disarmed after it fired', 'timerfd: clocks (BOOTTIME, MONOTONIC)', 'timerfd: TFD_NONBLOCK',
  'inotify: creations reported with wd 1 and 3, nothing else', 'inotify: IN_NONBLOCK', 'inotify: masks (IN_CREATE | IN_DELETE)', 'inotify: a new watch gets wd 4',
]

t.test('epoll sets, signalfd, timerfds and inotify are restored and work', async (t) => {
  const mnt = mountFor(t)
  const dir = workdir(t)
  const { target, saved } = await savedFixture(t, mnt, dir)
  const pid = target.pid

  // What the restore works from: every epoll item names the file it watches, wherever it is now.
  const fdObj = (fd: number) => read(path.join(saved, `task-${pid}`, 'fds', String(fd), 'fd'))
  const [ep] = filesOfType(saved, 'epoll')
  const itemsDir = path.join(saved, 'files', ep, 'items')
  const items = fs.readdirSync(itemsDir).map((n) => ({ tfd: Number(read(path.join(itemsDir, n, 'tfd'))), target: read(path.join(itemsDir, n, 'target')) }))
  t.same(
    items.sort((a, b) => a.tfd - b.tfd),
    [[10, 10], [12, 12], [20, 14], [21, 15], [40, 25]].map(([tfd, held]) => ({ tfd, target: fdObj(held) })),
    'items of closed, reused and high fd numbers name the fds that hold their files now',
  )
  const [inotify] = filesOfType(saved, 'inotify')
  t.same(fs.readdirSync(path.join(saved, 'files', inotify, 'watches')).sort(), ['1', '3'], 'inotify watches 1 and 3')
  t.equal(read(path.join(saved, 'files', filesOfType(saved, 'signalfd')[0], 'sigmask')), '0x200', 'signalfd mask: SIGUSR1')

  const before = listTree(dir)
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 0, `ckptfs restore: ${r.stderr.trim()}`)
  t.equal(r.stdout.trim(), String(pid), 'it answers the PID')
  if (r.status !== 0) return
  t.same(listTree(dir), before, 'nothing new in its directory (the placeholder watch is on a memfd)')
  // The fixture's own fds and any it inherited: 20 and 40 were only borrowed for their items.
  const fdList = (dir: string) => fs.readdirSync(dir).map(Number).sort((a, b) => a - b)
  const fds = fdList(`/proc/${pid}/fd`)
  t.same(fds, fdList(path.join(saved, `task-${pid}`, 'fds')), 'exactly the fds it had')
  t.notOk(fds.includes(20) || fds.includes(40), 'not 20 nor 40')

  process.kill(pid, 'SIGUSR1')
  const ctl = fs.openSync(path.join(dir, 'ctl'), fs.constants.O_WRONLY | fs.constants.O_NONBLOCK)
  fs.writeSync(ctl, 'check\n')
  fs.closeSync(ctl)
  const log = () => fs.readFileSync(path.join(dir, 'log'), 'utf8')
  await waitUntil('the fixture to finish its checks', () => /^done \d+ failures$/m.test(log()), 20_000)
  const lines = log().split('\n')
  t.same(lines.filter((l) => l.startsWith('FAIL')), [], 'no check failed')
  for (const name of CHECKS) t.ok(lines.includes(`ok ${name}`), `ok ${name}`)
})

t.test('an epoll item whose file no fd holds, or a watch without a path, is refused by name; nothing is left behind', async (t) => {
  const mnt = mountFor(t)
  const dir = workdir(t)
  const { target, saved } = await savedFixture(t, mnt, dir)
  const [ep] = filesOfType(saved, 'epoll')
  const [inotify] = filesOfType(saved, 'inotify')
  const itemsDir = path.join(saved, 'files', ep, 'items')
  const item20 = fs.readdirSync(itemsDir).find((n) => read(path.join(itemsDir, n, 'tfd')) === '20')!
  const before = listTree(dir)

  const refused = (what: string, file: string, expected: RegExp) => {
    const kept = fs.readFileSync(file)
    fs.writeFileSync(file, '\n')
    reseal(saved) // edited on purpose: the validator judges it, not values_crc32c
    const r = ckptfs('restore', saved, '--mount', mnt)
    fs.writeFileSync(file, kept)
    reseal(saved)
    t.equal(r.status, 1, `${what}: exit status 1`)
    t.match(r.stderr, expected, `${what}: says which and why`)
    t.equal(r.stderr.split('\n').length, 2, `${what}: one line`)
    t.notOk(exists(target.pid), `${what}: no process ${target.pid}`)
    t.same(listTree(dir), before, `${what}: nothing new in its directory`)
  }
  refused('an epoll item without its file', path.join(itemsDir, item20, 'target'),
    new RegExp(`^ckptfs restore: .*files/${ep}/items/${item20}: watches a file that no fd of the task holds \\(it was added as fd 20\\): the item cannot be restored\\n$`))
  refused('an inotify watch without a path', path.join(saved, 'files', inotify, 'watches', '3', 'path'),
    new RegExp(`^ckptfs restore: .*files/${inotify}/watches/3/path: the watched inode \\(ino \\d+\\) was not found at checkpoint and no fd of the task holds it: the watch cannot be restored\\n$`))

  // Undamaged again, the same tree restores.
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 0, `the undamaged tree restores: ${r.stderr.trim()}`)
})

t.test('plan fields are little-endian, as the stub reads them; strings are length and UTF-8 bytes', async (t) => {
  const cases: Array<[string, (b: RecordBuilder) => RecordBuilder, (b: Buffer) => Buffer]> = [
    ['u32', (b) => b.u32(0xfedcba98), (e) => (e.writeUInt32LE(0xfedcba98), e.subarray(0, 4))],
    ['i32 negative', (b) => b.i32(-2), (e) => (e.writeInt32LE(-2), e.subarray(0, 4))],
    ['u64 above 2^53', (b) => b.u64(0x1234_5678_9abc_def0n), (e) => (e.writeBigUInt64LE(0x1234_5678_9abc_def0n), e.subarray(0, 8))],
    ['u64 of a negative offset', (b) => b.u64(-5n), (e) => (e.writeBigUInt64LE(2n ** 64n - 5n), e.subarray(0, 8))],
    ['ASCII string', (b) => b.string('/dev/null'), () => Buffer.concat([Buffer.from([9, 0, 0, 0]), Buffer.from('/dev/null')])],
    ['UTF-8 string', (b) => b.string('/tmp/ü😀'), () => Buffer.concat([Buffer.from([11, 0, 0, 0]), Buffer.from('/tmp/ü😀')])],
    ['bytes', (b) => b.bytes(Buffer.from([1, 2, 3])), () => Buffer.from([3, 0, 0, 0, 1, 2, 3])],
  ]
  for (const [what, build, expected] of cases) t.strictSame(build(new RecordBuilder()).toBuffer(), expected(Buffer.alloc(8)), what)
  const many = new RecordBuilder()
  for (let i = 0; i < 1000; i++) many.u32(i).string(`/f${i}`)
  const built = many.toBuffer()
  let at = 0
  let ok = true
  for (let i = 0; i < 1000 && ok; i++) {
    ok = built.readUInt32LE(at) === i && built.readUInt32LE(at + 4) === `/f${i}`.length && built.toString('utf8', at + 8, at + 8 + `/f${i}`.length) === `/f${i}`
    at += 8 + `/f${i}`.length
  }
  t.ok(ok && at === built.length, 'a payload of 2,000 fields keeps every field in place')
})

/** The plan's header with no groups: 8 words, then flags, fsuid, fsgid, the effective set (2 words) and the group count. */
const PLAN_HEADER = 56
/** Plans made here run the stub as root with every capability: opens as root (the file checks have tests of their own). */
const rootFileCreds = { fsuid: 0, fsgid: 0, groups: [], capEffective: (1n << 41n) - 1n }
const noFileChecks = { sameBoot: false, allowReplaced: false }

t.test('plan records go in the order of the lowest fd naming them, objrefs dense or sparse', async (t) => {
  const proc = { pid: 1, sid: 2, pgid: 3, rlimits: [], creds: rootFileCreds } as unknown as ProcessState
  // Objrefs [a, b, c]; fd 3 names c, fds 4 and 9 name a, nothing names b: c, a, then b.
  const order = (a: number, b: number, c: number): number[] => {
    const table = {
      fds: [{ fd: 9, closeOnExec: false, objref: asObjRef(a) }, { fd: 3, closeOnExec: false, objref: asObjRef(c) }, { fd: 4, closeOnExec: true, objref: asObjRef(a) }],
      files: [a, b, c].map((objref) => ({ objref: asObjRef(objref) })),
    } as unknown as FileTable
    const records = [a, b, c].map((objref) => ({ kind: 1, objref: asObjRef(objref), payload: new RecordBuilder().u32(objref) }))
    const plan = framePlan(table, proc, records as PlannedRecord[], noFileChecks).bytes
    const seen: number[] = []
    for (let at = PLAN_HEADER, i = 0; i < 3; i++, at += 16) {
      t.equal(plan.readUInt32LE(at + 8), 4, 'payload length')
      t.equal(plan.readUInt32LE(at + 12), plan.readUInt32LE(at + 4), 'the payload follows its own record')
      seen.push(plan.readUInt32LE(at + 4))
    }
    t.equal(plan.length, PLAN_HEADER + 3 * 16 + 3 * 12, 'header, records, fd table: nothing else')
    return seen
  }
  t.strictSame(order(1, 2, 3), [3, 1, 2], 'objrefs 1..3 (a table by objref)')
  t.strictSame(order(7, 1_000_000, 2_000_000_000), [2_000_000_000, 7, 1_000_000], 'objrefs up to 2e9 (a map)')
})

// The stub alone (no ptrace, no engine): a plan from the planners, the stub run as our child
// with its plan, control and reply fds at the working base, then its fd table read from /proc.
t.test('the stub adds epoll items at numbers held by other files, in its working area and above the fd limit; absolute timers', async (t) => {
  const common = { target: 'anon_inode:[eventfd]', flags: 0o2, mode: 3, pos: 0n, mntId: 0, ino: 0n, notCheckpointable: undefined, locks: [] }
  const item = (tfd: number, data: bigint) => ({ tfd, events: 0x1 /* EPOLLIN */, data, targetObjref: asObjRef(2) })
  // epoll at fd 4 (objref 1), eventfd at fd 5 (objref 2). Items of the eventfd at: 4 (the
  // epoll's own number), 5 (its own), 9 and 10 (the working area: base 6, plan 6, control 7,
  // reply 8, then the epoll's and the eventfd's working fds) and 100 (above the fd limit).
  // And at fd 3 a CLOCK_REALTIME timerfd set with TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET,
  // 5 s to go, 2 expirations pending.
  const table: FileTable = {
    fds: [{ fd: 3, closeOnExec: false, objref: asObjRef(3) }, { fd: 4, closeOnExec: true, objref: asObjRef(1) }, { fd: 5, closeOnExec: false, objref: asObjRef(2) }],
    files: [
      { ...common, objref: asObjRef(1), target: 'anon_inode:[eventpoll]', type: 'epoll', items: [item(4, 4n), item(5, 5n), item(9, 9n), item(10, 10n), item(100, 100n)] },
      { ...common, objref: asObjRef(2), type: 'eventfd', count: 1n, semaphore: false },
      { ...common, objref: asObjRef(3), target: 'anon_inode:[timerfd]', type: 'timerfd', clockid: 0, ticks: 2n, settimeFlags: 3, valueNs: 5_000_000_000n, intervalNs: 0n },
    ],
  }
  const proc = { pid: 1, sid: 2, pgid: 3, rlimits: [], creds: rootFileCreds } as unknown as ProcessState
  const plan = framePlan(table, proc, await planFileRecords(table), noFileChecks)
  t.equal(plan.workFdBase, 6, 'the working area starts at 6')
  const dir = workdir(t)
  const planFile = path.join(dir, 'plan')
  fs.writeFileSync(planFile, plan.bytes)
  const planFd = fs.openSync(planFile, 'r')
  const stdio: Array<'ignore' | 'pipe' | number> = Array(6).fill('ignore')
  stdio.push(planFd, 'pipe', 'pipe')
  const stub = spawn(path.join(repo, 'addon', 'build', 'Release', 'restorer'), ['6', '7', '8'], { stdio })
  fs.closeSync(planFd)
  t.teardown(() => stub.kill('SIGKILL'))
  // Beyond stdin, stdout and stderr Node types stdio entries loosely: 7 and 8 are our pipes.
  const io = stub.stdio as unknown as Duplex[]
  const reply = new Promise<string>((resolve) => {
    let said = ''
    io[8].setEncoding('utf8').on('data', (chunk: string) => {
      said += chunk
      if (said.includes('\n')) resolve(said)
    })
  })
  io[7].write('g')
  t.equal(await reply, 'ok\n', 'the stub answers ok')
  const pid = stub.pid!
  await waitUntil('the stub to close its working fds', () => fs.readdirSync(`/proc/${pid}/fd`).length === 3)
  t.same(fs.readdirSync(`/proc/${pid}/fd`).map(Number).sort((a, b) => a - b), [3, 4, 5], 'only the task fds are left')
  t.equal(fs.readlinkSync(`/proc/${pid}/fd/4`), 'anon_inode:[eventpoll]', 'fd 4 is the epoll again')
  t.match(fs.readFileSync(`/proc/${pid}/fdinfo/4`, 'utf8'), /flags:\s+02000002\n/, 'close-on-exec, as before it lent its number')
  const fdinfo = fs.readFileSync(`/proc/${pid}/fdinfo/4`, 'utf8')
  const items = [...fdinfo.matchAll(/tfd:\s*(\d+) events:\s*([0-9a-f]+) data:\s*([0-9a-f]+)/g)].map((m) => [Number(m[1]), m[2], BigInt('0x' + m[3])])
  t.same(items.sort((a, b) => (a[0] as number) - (b[0] as number)), [4, 5, 9, 10, 100].map((n) => [n, '19', BigInt(n)]), 'every item, at its number, with its data')

  const timer = fs.readFileSync(`/proc/${pid}/fdinfo/3`, 'utf8')
  t.match(timer, /\nclockid: 0\nticks: 2\nsettime flags: 03\n/, 'the timerfd: its clock, pending expirations and settime flags')
  const left = /it_value: \((\d+), (\d+)\)/.exec(timer)
  const leftNs = left ? Number(left[1]) * 1e9 + Number(left[2]) : 0
  t.ok(leftNs > 4e9 && leftNs <= 5e9, `5 s to go, made absolute at the restore (${leftNs} ns left)`)
})
