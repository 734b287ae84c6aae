// File locks across a process tree (issue 17): a POSIX lock belongs to a process, and
// /proc/PID/fdinfo shows each process only its own, so a description that a parent and its
// child share holds each one's POSIX locks under its task-PID; its OFD (and flock) locks
// belong to the description and are listed once. test/fixtures/tree_locks.c holds them.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfsOk, mountFor } from './lib/mount'
import { checkpointSaveKill, restoreOk, workdir } from './lib/restore'
import { buildTarget, startTarget } from './lib/targets'
import { readImage } from '../lib/image/decode'
import { lockProblem, parseLocksText } from '../lib/files/locks'
import { asPid } from '../lib/model'

const mnt = mountFor(t)
const bin = buildTarget('tree_locks')

/** The "lock:" lines of fdinfo/3, without their running number and inode. */
function fdinfoLocks(pid: number): string[] {
  return fs.readFileSync(`/proc/${pid}/fdinfo/3`, 'utf8').split('\n').filter((l) => l.startsWith('lock:'))
    .map((l) => l.replace(/^lock:\s+\d+:\s+/, '').replace(/\s+\S+:\S+:\d+\s+/, ' ').replace(/\s+/g, ' '))
}

async function startLocks(t: Test): Promise<{ p: number; c: number; dir: string }> {
  const dir = workdir(t)
  const target = await startTarget(bin, [dir], /^ready pid=/)
  const m = /^ready pid=(\d+) child=(\d+)$/.exec(target.lines.find((l) => l.startsWith('ready'))!)!
  const p = Number(m[1])
  const c = Number(m[2])
  t.teardown(() => {
    for (const pid of [c, p]) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/exe`) === bin) process.kill(pid, 'SIGKILL')
      } catch {
        // gone
      }
    }
    target.kill()
  })
  return { p, c, dir }
}

t.test('a description shared by parent and child holds each one\'s POSIX locks under its task, its OFD lock once', async (t) => {
  const { p, c } = await startLocks(t)
  // What the kernel shows each process: its own POSIX lock and the description's OFD lock.
  t.same(fdinfoLocks(p).sort(), [`OFDLCK ADVISORY READ -1 50 59`, `POSIX ADVISORY WRITE ${p} 0 4`], 'the parent sees its POSIX lock and the OFD lock')
  t.same(fdinfoLocks(c).sort(), [`OFDLCK ADVISORY READ -1 50 59`, `POSIX ADVISORY WRITE ${c} 10 19`], 'the child sees its own POSIX lock and the OFD lock')

  const dir = ckptfsOk('checkpoint', String(p), '--mount', mnt, '--inspect')
  t.teardown(() => {
    try {
      if (fs.existsSync(path.join(dir, 'done'))) fs.writeFileSync(path.join(dir, 'done'), 'resume')
    } catch {
      // ended already
    }
  })
  const objref = fs.readFileSync(path.join(dir, `task-${p}`, 'fds', '3', 'fd'), 'utf8').trim()
  t.equal(fs.readFileSync(path.join(dir, `task-${c}`, 'fds', '3', 'fd'), 'utf8').trim(), objref, 'one description: the child\'s fd 3 names the parent\'s OBJREF')
  const shown = fs.readFileSync(path.join(dir, 'files', objref, 'locks'), 'utf8')
  t.same(shown.split('\n').filter(Boolean).sort(), [
    `ofd read 50 59`,
    `posix write 0 4 task-${p}`,
    `posix write 10 19 task-${c}`,
  ].sort(), 'files/OBJREF/locks: the OFD lock once, each POSIX lock with the task holding it')

  const work = workdir(t)
  const image = path.join(work, 'tree.image')
  execFileSync('cp', [`${dir}.image`, image])
  const loaded = await readImage(image)
  const file = loaded.fileTable.files.find((f) => String(f.objref) === objref)!
  t.same(file.locks.map((l) => [l.kind, l.start, l.end, l.owner]).sort(), [
    ['ofd', 50n, 59n, undefined],
    ['posix', 0n, 4n, p],
    ['posix', 10n, 19n, c],
  ].sort(), 'the image carries each POSIX lock\'s owner')
  fs.writeFileSync(path.join(dir, 'done'), 'resume')
})

t.test('restored, each process of the tree holds its own POSIX lock again, and the description its OFD lock once', async (t) => {
  const { p, c, dir } = await startLocks(t)
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, p, saved)
  restoreOk(mnt, saved, p)
  t.same(fdinfoLocks(p).sort(), [`OFDLCK ADVISORY READ -1 50 59`, `POSIX ADVISORY WRITE ${p} 0 4`], 'the parent holds its POSIX lock, through the OFD lock\'s description')
  t.same(fdinfoLocks(c).sort(), [`OFDLCK ADVISORY READ -1 50 59`, `POSIX ADVISORY WRITE ${c} 10 19`], 'the child holds its own POSIX lock')
})

t.test('a lone process\'s POSIX locks name no owner, as before trees', async (t) => {
  const { c } = await startLocks(t)
  const dir = ckptfsOk('checkpoint', String(c), '--mount', mnt)
  t.teardown(() => {
    try {
      if (fs.existsSync(path.join(dir, 'done'))) fs.writeFileSync(path.join(dir, 'done'), 'resume')
    } catch {
      // ended already
    }
  })
  const objref = fs.readFileSync(path.join(dir, `task-${c}`, 'fds', '3', 'fd'), 'utf8').trim()
  t.same(fs.readFileSync(path.join(dir, 'files', objref, 'locks'), 'utf8').split('\n').filter(Boolean).sort(), ['ofd read 50 59', 'posix write 10 19'])
  fs.writeFileSync(path.join(dir, 'done'), 'resume')
})

t.test('the locks file and the validator: an owner only on a POSIX lock, a process ID', async (t) => {
  const fail = (why: string) => new Error(why)
  t.same(parseLocksText('posix write 0 4 task-42\nofd read 50 59\n', fail), [
    { kind: 'posix', write: true, start: 0n, end: 4n, owner: 42 },
    { kind: 'ofd', write: false, start: 50n, end: 59n },
  ])
  t.throws(() => parseLocksText('posix write 0 4 task-0\n', fail), /line 1: not "KIND MODE START END \[task-PID\]"/, 'task-0 is no process')
  t.throws(() => parseLocksText('posix write 0 4 42\n', fail), /line 1: not "KIND MODE START END \[task-PID\]"/, 'the owner is written task-PID')
  const rw = 3
  t.equal(lockProblem([{ kind: 'posix', write: true, start: 0n, end: 4n, owner: asPid(42) }], rw), undefined)
  t.equal(lockProblem([{ kind: 'ofd', write: false, start: 50n, end: 59n, owner: asPid(42) }], rw), 'line 1 (ofd read 50 59 task-42): a ofd lock belongs to its description, not to a process (task-PID)')
  t.equal(lockProblem([{ kind: 'flock', write: false, start: 0n, end: undefined, owner: asPid(42) }], rw), 'line 1 (flock read 0 EOF task-42): a flock lock belongs to its description, not to a process (task-PID)')
})
