// The mount, the CLI and the life of a checkpoint, on real processes through a real mount:
// freezing, done, copy mode, several checkpoints, a task that dies, a server that dies, a
// reader that dies, access, read-only trees, sizes that match, and the shell-only way.

import { execFileSync, spawn, spawnSync } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import t, { type Test } from 'tap'
import { SMALL_FILE } from '../lib/restore/areatree'
import { readRecord, serverRuns } from '../mount/records'
import { ckptfs, ckptfsOk, mounted, mountFor } from './lib/mount'
import { buildTarget, sleep, startTarget, threadIds, threadState, type Target } from './lib/targets'

const spinner = buildTarget('spinner')
// One server for the tests that need only a working mount, each with its own target and
// checkpoint (a mount and its umount are two CLI runs and a server start); the tests of the
// mount's own life, its numbering and its listing make their own.
const shared = mountFor(t)

function cpuTicks(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return Number(fields[11]) + Number(fields[12])
}

async function spinnerTarget(t: Test, threads = 2, mib = 0): Promise<Target> {
  const target = await startTarget(spinner, [String(threads), String(mib)])
  t.teardown(() => target.kill())
  return target
}

/** The checkpoint directory is gone: not listed, and stat fails (the kernel may keep the name for its entry timeout, never its attributes). */
function ended(dir: string): boolean {
  if (fs.readdirSync(path.dirname(dir)).includes(path.basename(dir))) return false
  try {
    fs.statSync(dir)
    return false
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT'
  }
}

/** Waits until `pid` is gone from /proc: dead and reaped by its parent. */
async function reaped(pid: number, ms = 5000): Promise<boolean> {
  for (let waited = 0; waited < ms; waited += 50) {
    if (!fs.existsSync(`/proc/${pid}`)) return true
    await sleep(50)
  }
  return false
}

function allStopped(pid: number): boolean {
  return threadIds(pid).every((tid) => threadState(pid, tid) === 't')
}

/** Every file under `dir`, relative, with its stat size and the bytes a read returns. */
function walk(dir: string, rel = ''): Array<{ rel: string; size: number; data: Buffer }> {
  const out: Array<{ rel: string; size: number; data: Buffer }> = []
  for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
    const p = path.join(rel, name)
    const st = fs.statSync(path.join(dir, p))
    if (st.isDirectory()) out.push(...walk(dir, p))
    else out.push({ rel: p, size: st.size, data: p.endsWith('pages') || p.endsWith('image') ? Buffer.alloc(0) : fs.readFileSync(path.join(dir, p)) })
  }
  return out
}

t.test('mount and umount', async (t) => {
  const mnt = mountFor(t)
  t.ok(mounted(mnt), 'mounted when `ckptfs mount` returns')
  t.same(fs.readdirSync(mnt).sort(), ['by-pid', 'checkpoint', 'restore'])
  ckptfsOk('umount', mnt)
  t.notOk(mounted(mnt), 'unmounted')
  const again = ckptfs('umount', mnt)
  t.equal(again.status, 1)
  t.match(again.stderr, /is not a ckptfs mount/)
})

t.test('usage errors and bad PIDs', async (t) => {
  t.equal(ckptfs('frobnicate').status, 2)
  t.equal(ckptfs('checkpoint').status, 2)
  t.equal(ckptfs('checkpoint', 'abc').status, 2)
  const mnt = shared
  const r = ckptfs('checkpoint', '999999', '--mount', mnt)
  t.equal(r.status, 1)
  t.match(r.stderr, /^ckptfs checkpoint: no process 999999\n$/)
})

t.test('lazy checkpoint freezes every thread; done resumes, kill kills', async (t) => {
  const mnt = mountFor(t)
  const target = await spinnerTarget(t, 3)
  const dir = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  t.equal(dir, path.join(mnt, 'checkpoint-1'))
  t.ok(allStopped(target.pid), 'all threads stopped')
  const before = cpuTicks(target.pid)
  await sleep(500)
  t.equal(cpuTicks(target.pid), before, 'no CPU time while frozen')
  t.equal(fs.readFileSync(path.join(dir, 'status'), 'utf8'), 'frozen\n')
  t.same(fs.readdirSync(dir).sort(), ['boot_id', 'done', 'files', 'mode', 'pid', 'problems', 'status', `task-${target.pid}`, 'values_crc32c'].sort())
  t.same(fs.readdirSync(mnt).filter((n) => n.startsWith('checkpoint-')).sort(), ['checkpoint-1', 'checkpoint-1.image'], 'the image is beside the tree, not in it')

  fs.writeFileSync(path.join(dir, 'done'), '')
  t.ok(allStopped(target.pid), 'an empty write to done changes nothing')
  t.ok(fs.existsSync(dir))

  // Stat'ed just before done, so the kernel holds their attributes (kept a second: server.ts).
  const status = path.join(dir, 'status')
  const byPid = path.join(mnt, 'by-pid', String(target.pid))
  t.equal(fs.statSync(byPid).size, 'checkpoint-1\n'.length)
  t.ok(fs.statSync(status).isFile() && fs.statSync(`${dir}.image`).isFile())
  const ticks = target.lines.length
  fs.writeFileSync(path.join(dir, 'done'), '1\n')
  t.ok(ended(dir), 'the checkpoint directory is gone after done')
  t.ok(ended(`${dir}.image`), 'at once, with its image')
  t.throws(() => fs.statSync(status), { code: 'ENOENT' }, 'and every node in it')
  t.equal(fs.statSync(byPid).size, fs.readFileSync(byPid).length, 'by-pid/PID changed: its size in stat is what it reads')
  await target.waitFor(new RegExp(`^tick ${ticks + 1}$`))
  t.ok(cpuTicks(target.pid) > before, 'runs on after done')

  const dir2 = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  t.equal(path.basename(dir2), 'checkpoint-2', 'N counts up')
  fs.writeFileSync(path.join(dir2, 'done'), 'kill')
  t.ok(await reaped(target.pid), 'kill kills the task, and its parent reaps it')
})

t.test('copy mode lets the task run on and keeps the data readable', async (t) => {
  const mnt = shared
  const target = await spinnerTarget(t, 1)
  const dir = ckptfsOk('checkpoint', String(target.pid), '--copy', '--mount', mnt)
  t.notOk(allStopped(target.pid), 'running')
  t.equal(fs.readFileSync(path.join(dir, 'status'), 'utf8'), 'running\n')
  t.equal(fs.readFileSync(path.join(dir, 'mode'), 'utf8'), 'copy\n')
  const ticks = target.lines.length
  await target.waitFor(new RegExp(`^tick ${ticks + 2}$`))
  t.ok(fs.readdirSync(path.join(dir, `task-${target.pid}`, 'fds')).includes('1'), 'tree readable while the task runs')
  fs.writeFileSync(path.join(dir, 'done'), '1')
  t.ok(ended(dir))
})

t.test('several checkpoints at once; one process cannot be frozen twice', async (t) => {
  const mnt = mountFor(t)
  const a = await spinnerTarget(t, 1)
  const b = await spinnerTarget(t, 1)
  const da = ckptfsOk('checkpoint', String(a.pid), '--mount', mnt)
  const db = ckptfsOk('checkpoint', String(b.pid), '--mount', mnt)
  t.not(da, db)
  const twice = ckptfs('checkpoint', String(a.pid), '--mount', mnt)
  t.equal(twice.status, 1)
  t.match(twice.stderr, /frozen by checkpoint-1 already/)
  const readers = await Promise.all([da, db, da, db].map((d) => fs.promises.readFile(path.join(d, 'status'), 'utf8')))
  t.same(readers, ['frozen\n', 'frozen\n', 'frozen\n', 'frozen\n'])
  ckptfsOk('umount', mnt)
  t.notOk(allStopped(a.pid) || allStopped(b.pid), 'umount resumes every frozen task')
})

t.test('a task killed while frozen: status says so and its parent can reap it', async (t) => {
  const mnt = shared
  const target = await spinnerTarget(t, 1)
  const dir = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  process.kill(target.pid, 'SIGKILL')
  await sleep(200)
  t.match(fs.readFileSync(path.join(dir, 'status'), 'utf8'), /^error: process \d+ exited while frozen\n$/)
  t.ok(await reaped(target.pid), 'its parent could reap it')
  fs.writeFileSync(path.join(dir, 'done'), '1')
})

t.test('a server killed with SIGKILL leaves no task frozen', async (t) => {
  const mnt = mountFor(t)
  const target = await spinnerTarget(t, 2)
  ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  t.ok(allStopped(target.pid))
  // A file too large to be kept in memory: it goes to the restore area's backing directory.
  fs.mkdirSync(path.join(mnt, 'restore', 'copied'))
  fs.writeFileSync(path.join(mnt, 'restore', 'copied', 'large'), Buffer.alloc(2 * SMALL_FILE, 7))
  const { pid: server, backing } = readRecord(mnt)!
  process.kill(server, 'SIGKILL')
  await sleep(300)
  t.notOk(allStopped(target.pid), 'the kernel detached the task; it runs')
  const ticks = target.lines.length
  await target.waitFor(new RegExp(`^tick ${ticks + 1}$`))
  t.ok(fs.existsSync(backing), 'the dead server left its restore area behind')
  ckptfsOk('umount', mnt)
  t.notOk(mounted(mnt), 'umount removes a mount whose server died')
  t.notOk(fs.existsSync(backing), 'and the restore area the server left behind')
  t.equal(readRecord(mnt), undefined, 'and its record')
})

t.test('umount unmounts first, then the server removes what was copied into restore/ and exits', async (t) => {
  const mnt = mountFor(t)
  const record = readRecord(mnt)!
  const { backing } = record
  fs.mkdirSync(path.join(mnt, 'restore', 'copied'))
  fs.mkdirSync(path.join(mnt, 'restore', 'copied', 'sub'))
  for (let i = 0; i < 200; i++) fs.writeFileSync(path.join(mnt, 'restore', 'copied', 'sub', `f${i}`), `${i}\n`)
  for (let i = 0; i < 3; i++) fs.writeFileSync(path.join(mnt, 'restore', 'copied', `large${i}`), Buffer.alloc(SMALL_FILE + 1, i))
  t.equal(fs.readdirSync(backing).length, 3, 'the large files live in the backing directory, the small ones in memory')
  ckptfsOk('umount', mnt)
  t.notOk(mounted(mnt), 'unmounted')
  t.notOk(fs.existsSync(backing), 'the copied files are gone')
  t.notOk(serverRuns(record), 'and the server has exited when umount returns (gone, or a zombie not reaped yet)')
  t.equal(readRecord(mnt), undefined, 'and removed its record')
})

t.test('a reader that dies mid-read changes nothing', async (t) => {
  const mnt = shared
  const target = await spinnerTarget(t, 1, 256)
  const dir = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  const reader = spawn('cat', [`${dir}.image`], { stdio: ['ignore', 'pipe', 'ignore'] })
  await new Promise((r) => reader.stdout.once('data', r))
  reader.kill('SIGKILL')
  await new Promise((r) => reader.once('exit', r))
  t.ok(allStopped(target.pid), 'still frozen')
  t.equal(fs.readFileSync(path.join(dir, 'status'), 'utf8'), 'frozen\n', 'the server still answers')
  fs.writeFileSync(path.join(dir, 'done'), '1')
  t.notOk(allStopped(target.pid), 'done still resumes it')
})

t.test('the tree is read-only, private, and its sizes match its contents', async (t) => {
  const mnt = shared
  const target = await spinnerTarget(t, 1)
  const dir = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  t.throws(() => fs.writeFileSync(path.join(dir, 'status'), 'x'), { code: 'EACCES' })
  t.throws(() => fs.writeFileSync(path.join(dir, 'newfile'), 'x'), /EACCES|EROFS/)
  t.throws(() => fs.mkdirSync(path.join(dir, 'files', 'x')), /EACCES|EROFS/)
  const other = spawnSync('runuser', ['-u', 'nobody', '--', 'ls', mnt], { encoding: 'utf8' })
  t.not(other.status, 0, 'another user cannot list the mount')
  t.match(other.stderr, /Permission denied/)

  const files = walk(dir)
  t.ok(files.length > 20, `${files.length} files`)
  for (const f of files) if (f.data.length || f.size === 0) t.equal(f.data.length, f.size, `${f.rel}: size matches`)
  const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-copy-'))
  t.teardown(() => fs.rmSync(copy, { recursive: true, force: true }))
  execFileSync('cp', ['-a', dir, path.join(copy, 'saved')])
  const copied = walk(path.join(copy, 'saved'))
  t.same(copied.map((f) => [f.rel, f.size]), files.map((f) => [f.rel, f.size]), 'cp -a copies every file at its size')
  for (let i = 0; i < files.length; i++) if (files[i].data.length) t.ok(copied[i].data.equals(files[i].data), `${files[i].rel}: same bytes`)
  fs.writeFileSync(path.join(dir, 'done'), '1')
})

t.test('a shell script can checkpoint with echo and cat alone', async (t) => {
  const mnt = shared
  const target = await spinnerTarget(t, 1)
  const out = execFileSync('bash', ['-c', `echo ${target.pid} > ${mnt}/checkpoint && cat ${mnt}/by-pid/${target.pid}`], { encoding: 'utf8' })
  t.match(out, /^checkpoint-\d+\n$/)
  const name = out.trim()
  t.ok(allStopped(target.pid))
  const bad = spawnSync('bash', ['-c', `echo 999999 > ${mnt}/checkpoint`], { encoding: 'utf8' })
  t.not(bad.status, 0, 'a failed checkpoint fails the write')
  t.equal(fs.readFileSync(`${mnt}/by-pid/999999`, 'utf8'), 'error: no process 999999\n')
  execFileSync('bash', ['-c', `echo 1 > ${mnt}/${name}/done`])
  t.equal(fs.readFileSync(`${mnt}/by-pid/${target.pid}`, 'utf8'), `ended: ${name}\n`)
})
