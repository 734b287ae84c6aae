// Restore of multi-threaded processes, of programs no one here wrote, from the image alone and
// without a mount, and several restores at once on one server.

import { execFileSync, spawn } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfsOk, cliCommand, mountFor, userEnv, userNode } from './lib/mount'
import { checkpointSaveKill, launch, restoreOk, runChecks, waitUntil, workdir, exists, sleep, type Target } from './lib/restore'
import { buildTarget, threadIds, threadState } from './lib/targets'

const threadsFixture = buildTarget('restore_threads')
const counter = buildTarget('counter')
// One server for every test but the one that unmounts its own (restored processes are
// reparented to init, never the server's).
const shared = mountFor(t)

/** The numbers a counting program wrote, per tag ("a 5" -> tag a), or untagged. */
function counts(file: string): Map<string, number[]> {
  const out = new Map<string, number[]>()
  for (const line of fs.readFileSync(file, 'utf8').split('\n').filter(Boolean)) {
    const [tag, n] = line.includes(' ') ? line.split(' ') : ['', line]
    out.set(tag, [...(out.get(tag) ?? []), Number(n)])
  }
  return out
}

function gapless(numbers: number[]): boolean {
  return numbers.every((n, i) => i === 0 || n === numbers[i - 1] + 1)
}

/**
 * Lets a counting program run, checkpoints it, saves it to DIR/saved, kills and restores it,
 * waits `ms`, then checks that every counter (`tags`; '' for an untagged one) went on by
 * more than three with no gap and no repeat.
 */
async function countsOnAfterRestore(t: Test, mnt: string, target: Target, log: string, tags: string[], ms: number): Promise<void> {
  await sleep(300)
  await checkpointSaveKill(mnt, target.pid, path.join(target.dir, 'saved'))
  const before = counts(log)
  restoreOk(mnt, path.join(target.dir, 'saved'), target.pid)
  await sleep(ms)
  const after = counts(log)
  for (const tag of tags) {
    const name = tag ? `thread ${tag}` : 'the counter'
    t.ok(after.get(tag)!.length > before.get(tag)!.length + 3, `${name} counts on`)
    t.ok(gapless(after.get(tag)!), `${name}: no gap, no repeat`)
  }
}

t.test('a process with four threads, each blocked its own way, comes back whole', async (t) => {
  const mnt = shared
  const dir = workdir(t)
  const target = await launch(t, [threadsFixture, dir], { dir, ready: (tg) => /^ready pid=\d+ tids=/m.test(tg.text()) })
  const ready = await target.waitFor(/^ready pid=(\d+) tids=([\d,]+)$/m)
  const tids = [target.pid, ...ready[2].split(',').map(Number)].sort((a, b) => a - b)
  t.same(threadIds(target.pid), tids)
  await checkpointSaveKill(mnt, target.pid, path.join(dir, 'saved'))
  const since = target.text().length
  restoreOk(mnt, path.join(dir, 'saved'), target.pid)
  t.same(threadIds(target.pid), tids, 'every thread has its TID again')
  const checks = await runChecks(target, since)
  t.ok(checks.done, 'the fixture finished its checks')
  t.same(checks.failed, [], 'no check failed')
  t.equal(checks.ok.length, 6)
})

t.test('a multi-threaded process running as another user comes back with its credentials in every thread', async (t) => {
  const mnt = shared
  const dir = workdir(t)
  fs.chmodSync(dir, 0o755) // the fixture, as nobody, looks for DIR/go
  // Its output file is its own: a restore reopens its fds as nobody, as nobody could open them.
  fs.writeFileSync(path.join(dir, 'out'), '')
  fs.chownSync(path.join(dir, 'out'), 65534, 65534)
  const argv = ['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', threadsFixture, dir]
  const target = await launch(t, argv, { dir, ready: (tg) => /^ready pid=\d+ tids=/m.test(tg.text()) })
  const creds = (tid: number) => {
    const status = fs.readFileSync(`/proc/${target.pid}/task/${tid}/status`, 'utf8')
    return ['Uid', 'Gid', 'Groups', 'CapEff', 'CapPrm', 'NoNewPrivs'].map((k) => status.match(new RegExp(`^${k}:[ \\t]*(.*)$`, 'm'))?.[1].trim()).join(' | ')
  }
  const tids = threadIds(target.pid)
  const before = tids.map(creds)
  t.match(before[0], /^65534\s+65534\s+65534\s+65534 \| 65534\s+65534\s+65534\s+65534 \|  \| 0+ \| 0+ \| 0$/, 'the fixture runs as nobody with no capabilities')
  await checkpointSaveKill(mnt, target.pid, path.join(dir, 'saved'))
  const since = target.text().length
  restoreOk(mnt, path.join(dir, 'saved'), target.pid)
  t.same(threadIds(target.pid), tids, 'every thread has its TID again')
  t.same(tids.map(creds), before, 'every thread has its ids, groups and capabilities again')
  const checks = await runChecks(target, since)
  t.ok(checks.done, 'the fixture finished its checks')
  t.same(checks.failed, [], 'no check failed')
})

t.test('python3 with threads counts on with no gap and no repeat', async (t) => {
  const mnt = shared
  const dir = workdir(t)
  const log = path.join(dir, 'count.log')
  fs.writeFileSync(path.join(dir, 'count.py'), [
    'import os, sys, threading, time',
    'fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)',
    'def count(tag):',
    '    n = 0',
    '    while True:',
    '        n += 1',
    '        os.write(fd, f"{tag} {n}\\n".encode())',
    '        time.sleep(0.05)',
    'for tag in ("a", "b"):',
    '    threading.Thread(target=count, args=(tag,), daemon=True).start()',
    'print(f"ready pid={os.getpid()}", flush=True)',
    'count("m")',
  ].join('\n'))
  const target = await launch(t, ['python3', path.join(dir, 'count.py'), log], { dir })
  t.ok(threadIds(target.pid).length >= 3, 'three threads')
  await countsOnAfterRestore(t, mnt, target, log, ['a', 'b', 'm'], 600)
})

t.test('node (V8 and libuv threads, epoll, eventfds) counts on with no gap and no repeat', async (t) => {
  const mnt = shared
  const dir = workdir(t)
  const log = path.join(dir, 'count.log')
  fs.writeFileSync(path.join(dir, 'count.js'), [
    "const fs = require('fs')",
    "const fd = fs.openSync(process.argv[2], 'a')",
    'let n = 0',
    'console.log(`ready pid=${process.pid}`)',
    'setInterval(() => fs.writeSync(fd, `${++n}\\n`), 40)',
    '// Keeps the libuv thread pool busy too.',
    'setInterval(() => fs.readFile(__filename, () => {}), 25)',
  ].join('\n'))
  const target = await launch(t, userNode(path.join(dir, 'count.js'), log).flat(), { dir })
  t.ok(threadIds(target.pid).length >= 6, `node has ${threadIds(target.pid).length} threads`)
  await countsOnAfterRestore(t, mnt, target, log, [''], 800)
})

/** The numbers a single counter appended to `log` after byte `offset`. */
function appended(log: string, offset: number): number[] {
  return fs.readFileSync(log, 'utf8').slice(offset).split('\n').filter(Boolean).map(Number)
}

t.test('restore from the image alone, and without any mount', async (t) => {
  const dir = workdir(t)
  const log = path.join(dir, 'count.log')
  const mnt = mountFor(t)
  const target = await launch(t, [counter, log, '20'], { dir, ready: () => fs.existsSync(log) && fs.readFileSync(log, 'utf8').length > 0 })
  const checkpoint = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  const frozenAt = Math.max(...appended(log, 0))
  fs.mkdirSync(path.join(dir, 'only-image'))
  fs.copyFileSync(`${checkpoint}.image`, path.join(dir, 'only-image', 'image'))
  fs.copyFileSync(`${checkpoint}.image`, path.join(dir, 'saved.img'))
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill')
  await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid))

  // A directory holding only `image`, copied into the mount's restore/ area.
  let offset = fs.statSync(log).size
  execFileSync('cp', ['-a', path.join(dir, 'only-image'), path.join(mnt, 'restore', 'img')])
  fs.writeFileSync(path.join(mnt, 'restore', 'img', 'done'), '1\n')
  t.equal(fs.readFileSync(path.join(mnt, 'restore', 'img', 'status'), 'utf8'), `restored ${target.pid}\n`)
  await sleep(300)
  let after = appended(log, offset)
  t.ok(after.length > 3 && after.every((n, i) => n === frozenAt + 1 + i), `from the image it counts on from ${frozenAt} with no gap`)
  process.kill(target.pid, 'SIGKILL')
  await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid))
  ckptfsOk('umount', mnt)

  // Without a mount (--no-mount: other ckptfs mounts may exist on a shared machine): the
  // command restores by itself, from the image file. The image holds the state at the
  // checkpoint, so the count starts again from there.
  offset = fs.statSync(log).size
  t.equal(ckptfsOk('restore', path.join(dir, 'saved.img'), '--no-mount'), String(target.pid), 'restored with its PID')
  await sleep(300)
  after = appended(log, offset)
  t.ok(after.length > 3 && after.every((n, i) => n === frozenAt + 1 + i), 'counts on from the checkpoint again')
})

t.test('several restores at once, while another checkpoint is open', async (t) => {
  const mnt = shared
  const dirs = [workdir(t), workdir(t)]
  const targets = await Promise.all(dirs.map((dir) => {
    const log = path.join(dir, 'count.log')
    return launch(t, [counter, log, '20'], { dir, ready: () => fs.existsSync(log) && fs.readFileSync(log, 'utf8').length > 0 })
  }))
  const frozenDir = workdir(t)
  const frozenLog = path.join(frozenDir, 'count.log')
  const frozen = await launch(t, [counter, frozenLog, '20'], { dir: frozenDir, ready: () => fs.existsSync(frozenLog) && fs.readFileSync(frozenLog, 'utf8').length > 0 })
  for (let i = 0; i < 2; i++) await checkpointSaveKill(mnt, targets[i].pid, path.join(dirs[i], 'saved'))
  const open = ckptfsOk('checkpoint', String(frozen.pid), '--mount', mnt)

  const results = await Promise.all(dirs.map((dir) => new Promise<string>((resolve) => {
    const child = spawn(...cliCommand('restore', path.join(dir, 'saved'), '--mount', mnt), { env: userEnv, stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c))
    child.on('exit', () => resolve(out.trim()))
  })))
  t.same(results, targets.map((tg) => String(tg.pid)), 'both restored with their PIDs')
  t.equal(fs.readFileSync(path.join(open, 'status'), 'utf8'), 'frozen\n', 'the open checkpoint is untouched')
  t.ok(threadIds(frozen.pid).every((tid) => threadState(frozen.pid, tid) === 't'), 'and its task still frozen')
  await sleep(300)
  for (const dir of dirs) t.ok(gapless(counts(path.join(dir, 'count.log')).get('')!), `${path.basename(dir)}: counts on with no gap`)
  fs.writeFileSync(path.join(open, 'done'), '1')
})
