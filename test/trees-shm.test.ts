// Shared mappings of deleted files (issue 17): a /dev/shm page with process-shared semaphores
// and a memfd page shared by a parent and its child, a lone process's deleted file, and
// python3's multiprocessing.Pool (its semaphores are deleted /dev/shm files). Each is
// checkpointed, copied (`cp -a` and the image), killed and restored, and must carry on:
// test/fixtures/shm_deleted.c checks every round that each process sees the other's writes.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfs, ckptfsOk, mountFor } from './lib/mount'
import { exists, launch, waitUntil, workdir, type Target } from './lib/restore'
import { buildTarget, repo } from './lib/targets'
import { childrenOf } from '../lib/pstree'

const poolScript = path.join(repo, 'test', 'fixtures', 'pool.py')
const mnt = mountFor(t)
const fixture = buildTarget('shm_deleted')
// Below a subreaper: this machine's PID 1 never reaps, and a killed child's PID must be free to restore it.
const sleeper = buildTarget('sleeper')

const exeOf = (pid: number): string | undefined => {
  try {
    return fs.readlinkSync(`/proc/${pid}/exe`)
  } catch {
    return undefined
  }
}

/** Kills, at teardown and only while they still run `exe`, the processes a test started. */
function killAtTeardown(t: Test, pids: () => number[], exe: (pid: number) => boolean): void {
  t.teardown(() => {
    for (const pid of [...pids()].reverse()) {
      if (exe(pid)) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          // gone meanwhile
        }
      }
    }
  })
}

/** Checkpoints `root`'s tree, copies it and its image out, ends it and waits until its PIDs are free. */
async function saveAndKill(dir: string, root: number, pids: number[]): Promise<{ saved: string; image: string }> {
  const ck = ckptfsOk('checkpoint', String(root), '--mount', mnt)
  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', ck, saved])
  const image = path.join(dir, 'saved-image')
  fs.mkdirSync(image)
  execFileSync('cp', ['-a', `${ck}.image`, path.join(image, 'checkpoint.image')])
  fs.writeFileSync(path.join(ck, 'done'), 'kill\n')
  await waitUntil('every PID of the original to be free', () => pids.every((pid) => !exists(pid)), 15_000)
  return { saved, image }
}

const rounds = (target: Target) => target.lines().filter((l) => l.startsWith('round ')).map((l) => Number(l.slice(6)))

/** The restored process goes on counting its rounds (each round checks itself) from where it was, with no FAIL. */
async function carriesOn(t: Test, target: Target, before: number): Promise<void> {
  await target.waitFor(new RegExp(`^round ${before + 20}$`, 'm'), 20_000)
  t.same(target.lines().filter((l) => l.startsWith('FAIL')), [], 'no round failed')
  const seen = rounds(target)
  t.same(seen.slice(0, before + 20), Array.from({ length: before + 20 }, (_, i) => i + 1), 'the rounds went on from where they were')
}

/** The (dev inode path) of `pid`'s shared mappings of deleted files. */
function deletedShared(pid: number): Array<{ id: string; path: string }> {
  return fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter(Boolean).map((line) => line.split(/\s+/)).filter((f) => f[1][3] === 's' && f.slice(5).join(' ').endsWith(' (deleted)') && f[5] !== '/dev/zero')
    .map((f) => ({ id: `${f[3]} ${f[4]}`, path: f.slice(5).join(' ') }))
}

/** The inodes of `pid`'s MAP_SHARED anonymous mappings (/dev/zero (deleted)), one per mapping. */
function sharedAnonymous(pid: number): string[] {
  return fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter(Boolean).map((line) => line.split(/\s+/)).filter((f) => f[1][3] === 's' && f.slice(5).join(' ') === '/dev/zero (deleted)').map((f) => f[4])
}

async function startTree(t: Test): Promise<{ target: Target; p: number; c: number; dir: string }> {
  const dir = workdir(t, 'ckptfs-shmtree-')
  const target = await launch(t, [sleeper, 'subreaper', fixture, 'tree'], { dir, ready: (tg) => /^round 3$/m.test(tg.text()) })
  const m = /^ready pid=(\d+) child=(\d+)$/m.exec(target.text())!
  const [p, c] = [Number(m[1]), Number(m[2])]
  killAtTeardown(t, () => [p, c], (pid) => exeOf(pid) === fixture)
  return { target, p, c, dir }
}

async function restoreTree(t: Test, from: 'saved' | 'image'): Promise<void> {
  const { target, p, c, dir } = await startTree(t)
  const before = deletedShared(p)
  t.equal(before.length, 2, `the parent maps two deleted files shared (${before.map((b) => b.path).join(', ')})`)
  const copies = await saveAndKill(dir, p, [p, c])
  const count = rounds(target).length
  const r = ckptfs('restore', from === 'saved' ? copies.saved : copies.image, '--mount', mnt)
  t.equal(r.status, 0, `restore exits 0 (${r.stderr.trim()})`)
  t.equal(r.stdout.trim(), String(p), 'it prints the parent\'s PID')
  const [parentMaps, childMaps] = [deletedShared(p), deletedShared(c)]
  t.equal(parentMaps.length, 2, 'the parent maps two files shared again')
  t.same(childMaps.map((m) => m.id).sort(), parentMaps.map((m) => m.id).sort(), 'the child maps the very same two files (device and inode)')
  t.ok(parentMaps.some((m) => m.path.startsWith('/dev/shm/')), 'the /dev/shm file is recreated in /dev/shm')
  t.ok(parentMaps.some((m) => m.path.startsWith('/memfd:ckptfs-shmtree')), 'the memfd is a memfd of its name')
  const [parentAnon, childAnon] = [sharedAnonymous(p), sharedAnonymous(c)]
  t.equal(parentAnon.length, 2, 'the parent maps two parts of the shared anonymous object')
  t.same(new Set([...parentAnon, ...childAnon]).size, 1, 'one object: the parent\'s two parts and the child\'s whole mapping')
  await carriesOn(t, target, count)
}

t.test('a parent and child sharing a deleted /dev/shm page (semaphores) and a memfd page: restored from a cp -a copy, they play on', (t) => restoreTree(t, 'saved'))

t.test('the same tree restored from its image', (t) => restoreTree(t, 'image'))

async function startAlone(t: Test, dir: string, files: string, ...more: string[]): Promise<{ target: Target; pid: number }> {
  const target = await launch(t, [fixture, 'alone', files, ...more], { dir, ready: (tg) => /^round 3$/m.test(tg.text()) })
  const pid = Number(/^ready pid=(\d+)$/m.exec(target.text())![1])
  killAtTeardown(t, () => [pid], (p) => exeOf(p) === fixture)
  return { target, pid }
}

t.test('a lone process mapping a deleted file of its directory shared: restored, the file holds its bytes and is an unnamed file there', async (t) => {
  const dir = workdir(t, 'ckptfs-shmalone-')
  const files = path.join(dir, 'files')
  fs.mkdirSync(files)
  const { target, pid } = await startAlone(t, dir, files)
  const { saved } = await saveAndKill(dir, pid, [pid])
  const count = rounds(target).length
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 0, `restore exits 0 (${r.stderr.trim()})`)
  const maps = deletedShared(pid)
  t.equal(maps.length, 1, 'one deleted file mapped shared')
  t.match(maps[0]?.path, new RegExp(`^${files}/#\\d+ \\(deleted\\)$`), 'an O_TMPFILE of the saved directory')
  t.same(fs.readdirSync(files), [], `and nothing named is left there (${fs.readdirSync(files).join(', ')})`)
  await carriesOn(t, target, count)
})

t.test('a lone process whose deleted file\'s directory is gone: the file comes back as a memfd', async (t) => {
  const dir = workdir(t, 'ckptfs-shmalone-')
  const files = path.join(dir, 'files')
  fs.mkdirSync(files)
  const { target, pid } = await startAlone(t, dir, files)
  const { saved } = await saveAndKill(dir, pid, [pid])
  fs.rmdirSync(files)
  const count = rounds(target).length
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 0, `restore exits 0 (${r.stderr.trim()})`)
  const maps = deletedShared(pid)
  t.match(maps[0]?.path, /^\/memfd:ckptfs-shmalone-\d+ \(deleted\)$/, 'a memfd named after the file')
  await carriesOn(t, target, count)
})

t.test('a deleted file both mapped shared and held open by an fd is refused by name, and nothing is left', async (t) => {
  const dir = workdir(t, 'ckptfs-shmalone-')
  const files = path.join(dir, 'files')
  fs.mkdirSync(files)
  const { pid } = await startAlone(t, dir, files, 'open')
  const { saved } = await saveAndKill(dir, pid, [pid])
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 1, 'the restore fails')
  t.match(r.stderr, new RegExp(`task-${pid}/memory/vmas/[0-9a-f]+-[0-9a-f]+: maps ${files}/ckptfs-shmalone-${pid} \\(deleted\\), a deleted file that files/\\d+ holds open too`), 'naming the mapping, the file and its description')
  t.notOk(exists(pid), 'no process is left')
  t.same(fs.readdirSync(files), [], 'nor any file')
})

async function restorePool(t: Test, from: 'saved' | 'image'): Promise<void> {
  const dir = workdir(t, 'ckptfs-shmpool-')
  const target = await launch(t, [sleeper, 'subreaper', 'python3', poolScript], { dir, ready: (tg) => tg.lines().length >= 3 })
  // python3 may be a launcher (pyenv's shim) that execs the interpreter: the subreaper's one child runs it by now.
  const [root] = childrenOf(target.pid)
  const python = exeOf(root)
  t.ok(root, `the pool's parent is ${root}`)
  const below = (pid: number): number[] => childrenOf(pid).flatMap((c) => [c, ...below(c)])
  const members = [root, ...below(root)]
  killAtTeardown(t, () => members, (pid) => exeOf(pid) === python)
  t.ok(members.length >= 4, `the parent and its workers (${members.length} processes)`)
  t.ok(deletedShared(root).some((m) => m.path.startsWith('/dev/shm/sem.')), 'the pool\'s semaphores are deleted /dev/shm files mapped shared')
  const copies = await saveAndKill(dir, root, members)
  const count = target.lines().length
  const r = ckptfs('restore', from === 'saved' ? copies.saved : copies.image, '--mount', mnt)
  t.equal(r.status, 0, `restore exits 0 (${r.stderr.trim()})`)
  t.equal(r.stdout.trim(), String(root), 'it prints the parent\'s PID')
  await target.waitFor(new RegExp(`(?:.*\\n){${count + 10}}`), 20_000)
  const sums = target.lines().map(Number)
  t.same(sums, sums.map((_, i) => 10 * i + 45), 'every map of the pool returned the right sum, in order, after the restore')
}

// From the copied tree only: the image path of these mappings is the C fixture's (above), and
// each Pool cycle costs a minute of CI (the `cp -a` of its lazily filled 77 MB checkpoint).
t.test('python3 multiprocessing.Pool restored from a cp -a copy carries on', (t) => restorePool(t, 'saved'))
