// The mount's life cycle (issue 13): `ckptfs umount` and `ckptfs mount` find a mount's server by
// the record it keeps in /run/ckptfs, never by its command line or the caller's environment.
// A zombie server (its parent has not reaped it) has exited; a server started with
// --foreground (through the bin, with a relative mount point) is found and ended, and the task
// it froze resumes; after a server was SIGKILLed, `ckptfs mount` cleans up and mounts again, and
// `ckptfs umount` from another $TMPDIR removes what it left.

import { spawn, spawnSync, type ChildProcess } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import t, { type Test } from 'tap'
import { SMALL_FILE } from '../lib/restore/areatree'
import { processStart, readRecord, recordPath, serverRuns, STATE_DIR, type ServerRecord } from '../mount/records'
import { cliShellWords, ckptfs, ckptfsOk, ckptfsWith, mounted, mountFor, userEnv } from './lib/mount'
import { procState, waitUntil } from './lib/restore'
import { buildTarget, repo, startTarget, threadIds, threadState } from './lib/targets'

const spinner = buildTarget('spinner')

function allStopped(pid: number): boolean {
  return threadIds(pid).every((tid) => threadState(pid, tid) === 't')
}

/** A fresh directory for a mount point; at teardown: unmounted (if still) and removed. */
function scratch(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-life-'))
  t.teardown(() => {
    if (mounted(path.join(dir, 'mnt'))) ckptfs('umount', path.join(dir, 'mnt'))
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return dir
}

/** Kills a process this test started (by its PID) at teardown, if it still runs. */
function killAtTeardown(t: Test, child: ChildProcess): void {
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
}

/** Waits until `mnt` is mounted and its server has recorded itself; returns the record. */
async function served(mnt: string, child: ChildProcess): Promise<ServerRecord> {
  await waitUntil(`${mnt} to be mounted`, () => {
    if (child.exitCode !== null) throw new Error(`the server exited (${child.exitCode}) before mounting ${mnt}`)
    return mounted(mnt) && readRecord(mnt) !== undefined
  }, 30_000)
  return readRecord(mnt)!
}

t.test('a zombie server has exited: umount does not wait for its parent to reap it', async (t) => {
  const mnt = path.join(scratch(t), 'mnt')
  // The shell becomes `sleep`, which never reaps the server it started.
  const parent = spawn('sh', ['-c', `${cliShellWords} mount "$0" --foreground & exec sleep 600`, mnt], { stdio: 'ignore', env: userEnv })
  killAtTeardown(t, parent)
  const record = await served(mnt, parent)
  t.not(record.pid, parent.pid, 'the server is the child of the non-reaping parent')

  const r = ckptfs('umount', mnt)
  t.equal(r.status, 0, `umount succeeds ${r.stderr}`)
  t.notOk(mounted(mnt), 'unmounted')
  t.equal(procState(record.pid), 'Z', 'the server is a zombie: exited, not reaped by its parent')
  t.notOk(serverRuns(record), 'which counts as exited')
  t.equal(readRecord(mnt), undefined, 'its record is gone')
  t.notOk(fs.existsSync(record.backing), 'and so is its backing directory')
})

t.test('a server started with --foreground is found by umount, which resumes what it froze', async (t) => {
  const dir = scratch(t)
  const mnt = path.join(dir, 'mnt')
  // Through the package's bin, flags first and a relative mount point: nothing in its command
  // line says "mount/cli.js mount /absolute/mnt --foreground". (`env -u NODE_OPTIONS`: as
  // test/lib/mount.ts userNode says why.)
  const server = spawn('env', ['-u', 'NODE_OPTIONS', path.join(repo, 'bin', 'ckptfs'), 'mount', '--foreground', 'mnt'], { cwd: dir, stdio: 'ignore', env: userEnv })
  killAtTeardown(t, server)
  const exited = new Promise<number | null>((resolve) => server.on('exit', (code) => resolve(code)))
  const record = await served(mnt, server)
  t.equal(record.pid, server.pid, 'the record names the foreground server')

  const target = await startTarget(spinner, ['2', '0'])
  t.teardown(() => target.kill())
  ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  t.ok(allStopped(target.pid), 'the task is frozen')

  const r = ckptfs('umount', mnt)
  t.equal(r.status, 0, `umount succeeds ${r.stderr}`)
  t.equal(await exited, 0, 'the foreground server ended (exit status 0)')
  t.notOk(mounted(mnt), 'unmounted')
  t.notOk(allStopped(target.pid), 'the task it froze runs again')
  const ticks = target.lines.length
  await target.waitFor(new RegExp(`^tick ${ticks + 1}$`))
  t.equal(readRecord(mnt), undefined, 'the record is gone')
  t.notOk(fs.existsSync(record.backing), 'and so is the backing directory')
})

/** Mounts, puts a large file in the restore area's backing directory, SIGKILLs the server. */
async function killedServer(t: Test): Promise<{ mnt: string; record: ServerRecord }> {
  const mnt = mountFor(t)
  fs.mkdirSync(path.join(mnt, 'restore', 'copied'))
  fs.writeFileSync(path.join(mnt, 'restore', 'copied', 'large'), Buffer.alloc(2 * SMALL_FILE, 7))
  const record = readRecord(mnt)!
  t.equal(fs.readdirSync(record.backing).length, 1, 'the large file is in the backing directory')
  process.kill(record.pid, 'SIGKILL')
  await waitUntil(`server ${record.pid} to die`, () => processStart(record.pid)?.running !== true)
  return { mnt, record }
}

t.test('after its server was SIGKILLed, ckptfs mount cleans up the dead mount and mounts again', async (t) => {
  const { mnt, record } = await killedServer(t)
  t.ok(mounted(mnt), 'the dead mount is still there')
  const r = ckptfs('mount', mnt)
  t.equal(r.status, 0, `mount succeeds ${r.stderr}`)
  t.strictSame(fs.readdirSync(mnt).sort(), ['by-pid', 'checkpoint', 'restore'], 'and the new mount answers')
  const now = readRecord(mnt)!
  t.not(now.pid, record.pid, 'served by the new server')
  t.not(now.backing, record.backing, 'with a new backing directory')
  t.notOk(fs.existsSync(record.backing), 'the dead server\'s backing directory is removed')
  t.equal(ckptfs('mount', mnt).status, 1, 'a second mount on a live one is refused')
})

t.test('ckptfs umount of a dead mount removes its leftovers whatever the caller\'s $TMPDIR', async (t) => {
  const { mnt, record } = await killedServer(t)
  const otherTmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-othertmp-'))
  t.teardown(() => fs.rmSync(otherTmp, { recursive: true, force: true }))
  const r = ckptfsWith({ env: { ...userEnv, TMPDIR: otherTmp } }, 'umount', mnt)
  t.equal(r.status, 0, `umount succeeds ${r.stderr}`)
  t.notOk(mounted(mnt), 'the dead mount is gone')
  t.notOk(fs.existsSync(record.backing), 'and the backing directory the server left')
  t.equal(readRecord(mnt), undefined, 'and its record')
})

t.test('the server keeps its files only below directories nobody else can change', async (t) => {
  const dir = scratch(t)
  const open = path.join(dir, 'open')
  fs.mkdirSync(open)
  fs.chmodSync(open, 0o777) // world-writable, not sticky: another user could swap its entries
  const r = ckptfsWith({ env: { ...userEnv, TMPDIR: open } }, 'mount', path.join(dir, 'mnt'))
  t.equal(r.status, 1, 'mount refuses')
  t.match(r.stderr, `${open}: writable by others (mode 777) and not sticky`, 'naming the directory and why')
  t.strictSame(fs.readdirSync(open), [], 'and leaves nothing there')
  t.notOk(mounted(path.join(dir, 'mnt')), 'nothing is mounted')
})

t.test('a server that cannot mount removes its backing directory and record', async (t) => {
  const dir = scratch(t)
  const tmp = path.join(dir, 'tmp')
  fs.mkdirSync(tmp, { mode: 0o700 })
  const notADir = path.join(dir, 'file')
  fs.writeFileSync(notADir, 'a regular file, not a mount point\n')
  const r = ckptfsWith({ env: { ...userEnv, TMPDIR: tmp } }, 'mount', notADir)
  t.equal(r.status, 1, `mount fails ${r.stderr}`)
  t.match(r.stderr, /cannot mount/, 'saying so')
  t.strictSame(fs.readdirSync(tmp), [], 'the backing directory it made is gone')
  t.equal(readRecord(notADir), undefined, 'and so is its record')
})

t.test('umount removes only a backing directory a server made, whatever a record says', async (t) => {
  const dir = scratch(t)
  const mnt = path.join(dir, 'mnt')
  // A directory that is not private (mode 0755) under the name a server would give it.
  const notPrivate = path.join(dir, 'ckptfs-area-kept')
  fs.mkdirSync(notPrivate, { mode: 0o755 })
  fs.chmodSync(notPrivate, 0o755)
  fs.writeFileSync(path.join(notPrivate, 'data'), 'kept\n')
  const gone = spawnSync('true').pid! // a PID whose process has exited: the "server" is dead
  fs.mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 })
  fs.writeFileSync(recordPath(mnt), JSON.stringify({ pid: gone, started: '1', mnt, backing: notPrivate }) + '\n', { mode: 0o600 })
  t.teardown(() => fs.rmSync(recordPath(mnt), { force: true }))
  const r = ckptfs('umount', mnt)
  t.equal(r.status, 1, 'umount refuses')
  t.match(r.stderr, `${notPrivate}: mode 755, not 700`, 'naming the directory and why')
  t.equal(fs.readFileSync(path.join(notPrivate, 'data'), 'utf8'), 'kept\n', 'which is left alone')

  fs.writeFileSync(recordPath(mnt), JSON.stringify({ pid: gone, started: '1', mnt, backing: '/etc' }) + '\n', { mode: 0o600 })
  const other = ckptfs('umount', mnt)
  t.equal(other.status, 1, 'a record naming any other directory is refused')
  t.match(other.stderr, 'not a server record of', 'as not a server record')
  t.ok(fs.existsSync('/etc/passwd'), 'and nothing is removed')
})
