// File locks (lib/files/locks.ts, lib/restore/locks.ts): a program holding POSIX, flock and
// open file description locks (test/fixtures/restore_locks.c) is checkpointed through the
// real mount, saved with `cp -a`, ended with `echo kill > done` and restored from the tree
// and from the image. After each restore the kernel lists the same locks on the same fds,
// and other processes are refused exactly the conflicting ones. A lock another process took
// meanwhile fails the restore by name, leaving nothing behind; a saved lock the description
// could not hold is refused by the validator.

import { spawn, spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import { ckptfs, mountFor } from './lib/mount'
import { checkpointSaveKill, exists, launch, reseal, restoreOk, runChecks, waitUntil, workdir, type Target } from './lib/restore'
import { buildTarget, repo } from './lib/targets'

const bin = buildTarget('restore_locks')
const mnt = mountFor(t)
const FDS = [3, 4, 5, 6]

/** The "lock:" lines of each fd's fdinfo, without their running number. */
function lockLines(pid: number): Record<number, string[]> {
  const out: Record<number, string[]> = {}
  for (const fd of FDS) {
    out[fd] = fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').split('\n').filter((l) => l.startsWith('lock:')).map((l) => l.replace(/^lock:\s+\d+:\s+/, ''))
  }
  return out
}

/** What other processes may take now: each attempt is non-blocking; true when it was granted. */
function othersMay(dir: string): Record<string, boolean> {
  const script = `
import fcntl, json, os, struct, sys
d = sys.argv[1]
F_OFD_SETLK = 37
def attempt(fn):
    try:
        fn()
        return True
    except OSError:
        return False
def ofd(name, kind, start, length):
    # Each try on a description of its own, closed after (which drops its OFD lock), so
    # that the tries do not conflict with each other.
    def take():
        fd = os.open(os.path.join(d, name), os.O_RDWR)
        try:
            fcntl.fcntl(fd, F_OFD_SETLK, struct.pack('hhqqi', kind, 0, start, length, 0))
        finally:
            os.close(fd)
    return take
posix = open(os.path.join(d, 'posix.dat'), 'r+')
whole = open(os.path.join(d, 'flock.dat'))
print(json.dumps({
  'posix write 5-14': attempt(lambda: fcntl.lockf(posix, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 5)),
  'posix write 20-29': attempt(lambda: fcntl.lockf(posix, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 20)),
  'posix read 100-199': attempt(lambda: fcntl.lockf(posix, fcntl.LOCK_SH | fcntl.LOCK_NB, 100, 100)),
  'posix write 200-209': attempt(lambda: fcntl.lockf(posix, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 200)),
  'flock shared': attempt(lambda: fcntl.flock(whole, fcntl.LOCK_SH | fcntl.LOCK_NB)),
  'ofd write 7-9': attempt(ofd('ofd.dat', fcntl.F_WRLCK, 7, 3)),
  'ofd read 7-9': attempt(ofd('ofd.dat', fcntl.F_RDLCK, 7, 3)),
}))
`
  const r = spawnSync('python3', ['-c', script, dir], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`python3: ${r.stderr}`)
  return JSON.parse(r.stdout)
}

/** What others may take while the fixture holds its locks (and what they may not). */
const WHILE_HELD = {
  'posix write 5-14': false, 'posix write 20-29': true, 'posix read 100-199': true, 'posix write 200-209': false,
  'flock shared': false, 'ofd write 7-9': false, 'ofd read 7-9': true,
}

async function killRestored(pid: number): Promise<void> {
  process.kill(pid, 'SIGKILL')
  await waitUntil(`PID ${pid} to be gone`, () => !exists(pid))
}

function killAtTeardown(tt: { teardown(fn: () => void): void }, target: Target): void {
  tt.teardown(() => {
    try {
      if (fs.readlinkSync(`/proc/${target.pid}/exe`) === bin) process.kill(target.pid, 'SIGKILL')
    } catch {
      // gone
    }
  })
}

t.test('POSIX, flock and OFD locks come back on their fds, from the tree and from the image', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir], { dir })
  killAtTeardown(t, target)
  const before = lockLines(target.pid)
  t.same(before[3].map((l) => l.split(/\s+/).slice(0, 3).join(' ')), ['POSIX ADVISORY WRITE', 'POSIX ADVISORY READ'], 'the fixture holds its two POSIX locks on fd 3')
  t.same(othersMay(dir), WHILE_HELD, 'others are refused what conflicts, before the checkpoint')

  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved, { image: true })
  const locksOf = (fd: number) => {
    const objref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', String(fd), 'fd'), 'utf8').trim()
    return fs.readFileSync(path.join(saved, 'files', objref, 'locks'), 'utf8')
  }
  t.equal(locksOf(3), 'posix write 5 14\nposix read 100 EOF\n', 'files/N/locks of fd 3: both POSIX ranges')
  t.equal(locksOf(4), 'flock write 0 EOF\n', 'fd 4: the exclusive flock')
  t.equal(locksOf(5), 'ofd read 7 9\n', 'fd 5: the OFD read lock')
  t.equal(locksOf(6), '', 'fd 6 (another description of posix.dat) holds none')
  t.same(othersMay(dir), Object.fromEntries(Object.keys(WHILE_HELD).map((k) => [k, true])), 'with the process gone, every lock is free')

  restoreOk(mnt, saved, target.pid)
  t.same(lockLines(target.pid), before, 'restored from the tree: fdinfo lists the same locks on the same fds')
  t.same(othersMay(dir), WHILE_HELD, 'and others are refused the same ones')
  await killRestored(target.pid)

  const fromImage = ckptfs('restore', `${saved}.image`, '--mount', mnt)
  t.equal(fromImage.status, 0, `restored from the image alone (${fromImage.stderr.trim()})`)
  t.same(lockLines(target.pid), before, 'restored from the image: the same locks')
  t.same(othersMay(dir), WHILE_HELD, 'and others are refused the same ones')
})

t.test('a lock another process took meanwhile fails the restore by name; a lock the description cannot hold is refused', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir], { dir })
  killAtTeardown(t, target)
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)

  // Another process holds flock.dat exclusively until we end it.
  const holder = spawn('python3', ['-c', 'import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); print("held", flush=True); time.sleep(600)', path.join(dir, 'flock.dat')], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => {
    holder.kill('SIGKILL')
  })
  await new Promise<void>((resolve) => holder.stdout!.once('data', () => resolve()))
  const objref4 = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '4', 'fd'), 'utf8').trim()
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 1, 'the restore fails')
  t.match(r.stderr, new RegExp(`files/${objref4}: take its flock write lock on bytes 0-EOF of ${path.join(dir, 'flock.dat')} again \\(fd 4\\): (EAGAIN|EWOULDBLOCK)`), 'naming the description, the lock and why')
  t.notOk(exists(target.pid), 'no process is left')
  holder.kill('SIGKILL')
  await new Promise((resolve) => holder.once('exit', resolve))
  restoreOk(mnt, saved, target.pid)
  t.equal(lockLines(target.pid)[4].length, 1, 'once the other process is gone, the restore takes the lock')
  await killRestored(target.pid)

  // fd 6 is open read-only: a write lock through it is not something the task could hold.
  const objref6 = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '6', 'fd'), 'utf8').trim()
  const locks6 = path.join(saved, 'files', objref6, 'locks')
  // Each edit is sealed (ckptfs seal), so that the validator judges it, not the checksum.
  const edit = (text: string) => {
    fs.writeFileSync(locks6, text)
    reseal(saved)
  }
  const unsealed = (() => {
    fs.writeFileSync(locks6, 'flock write 0 EOF\n')
    return ckptfs('restore', saved, '--mount', mnt)
  })()
  t.match(unsealed.stderr, `files/${objref6}/locks: damaged`, 'an edit not sealed is refused as damage first')
  edit('posix write 0 EOF\n')
  const bad = ckptfs('restore', saved, '--mount', mnt)
  t.equal(bad.status, 1, 'a write lock on a read-only description: refused')
  t.match(bad.stderr, `files/${objref6}/locks: line 1 (posix write 0 EOF): a write lock needs a description open for writing (f_mode 1)`, 'naming the file and the line')
  edit('posix write 9 3\n')
  t.match(ckptfs('restore', saved, '--mount', mnt).stderr, `files/${objref6}/locks: line 1 (posix write 9 3): not a range of file offsets`, 'an end before the start: refused')
  edit('lease read 0 EOF\n')
  t.match(ckptfs('restore', saved, '--mount', mnt).stderr, `files/${objref6}/locks: line 1: not "KIND MODE START END [task-PID]"`, 'an unknown kind: refused')
  t.notOk(exists(target.pid), 'no process is left')
})

/** Every fd's "lock:" lines of `pid`'s fdinfo, without their running number. */
function allLockLines(pid: number): Record<string, string[]> {
  const out: Record<string, string[]> = {}
  for (const fd of fs.readdirSync(`/proc/${pid}/fdinfo`)) {
    const locks = fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').split('\n').filter((l) => l.startsWith('lock:')).map((l) => l.replace(/^lock:\s+\d+:\s+/, ''))
    if (locks.length > 0) out[fd] = locks
  }
  return out
}

/** For each database: whether another connection may start writing now (sqlite3 says "database is locked" when not). */
function sqliteWritable(dir: string): Record<string, boolean> {
  const script = `
import json, sqlite3, sys
out = {}
for mode in ('journal', 'wal'):
    db = sqlite3.connect(f'{sys.argv[1]}/{mode}.db', timeout=0, isolation_level=None)
    try:
        db.execute('BEGIN IMMEDIATE')
        db.execute('ROLLBACK')
        out[mode] = True
    except sqlite3.OperationalError as e:
        if 'locked' not in str(e):
            raise
        out[mode] = False
    db.close()
print(json.dumps(out))
`
  const r = spawnSync('python3', ['-c', script, dir], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`python3: ${r.stderr}`)
  return JSON.parse(r.stdout)
}

t.test('sqlite3 with a transaction open (journal and WAL) carries on and commits after restore', async (t) => {
  const dir = workdir(t)
  const script = path.join(repo, 'test', 'fixtures', 'sqlite_txn.py')
  const target = await launch(t, ['python3', script, dir], { dir })
  const before = allLockLines(target.pid)
  t.ok(Object.keys(before).length >= 2, `sqlite3 holds POSIX locks on its databases (on ${Object.keys(before).length} fds)`)
  t.same(sqliteWritable(dir), { journal: false, wal: false }, 'another connection cannot write while the transactions are open')

  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  // Not opened meanwhile: a new connection would roll back the hot journal and delete the WAL
  // (sqlite3's recovery after a crash), which the restored transactions depend on.
  restoreOk(mnt, saved, target.pid)
  t.same(allLockLines(target.pid), before, 'restored: the same locks on the same fds')
  t.same(sqliteWritable(dir), { journal: false, wal: false }, 'another connection is refused again')

  const checks = await runChecks(target)
  t.ok(checks.done, 'the restored program finished its transactions')
  t.same(checks.failed, [], 'every check passed')
  t.equal(checks.ok.length, 6, 'all six checks ran')
})
