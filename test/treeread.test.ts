// The one-walk read of a saved tree (addon/src/treeread.c): its io_uring walk (a directory's
// entries a chunk at a time: opens, statx of the opened fds, reads, closes in batches) must
// give byte for byte what the walk of one system call per step gives, on a tree with every
// kind of entry a user could plant (symbolic links to a file and to a directory, a fifo, a
// socket, an empty file, files over the inline limit, directories of more entries than a
// chunk, files of another owner and writable by others), and leave no fd open, also when the
// walk fails.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as net from 'net'
import * as path from 'path'
import t from 'tap'
import { native } from '../lib/native'
import { workdir } from './lib/restore'

const readTree = (top: string, inlineMax: number, budget: number, useRing: boolean) => native.readTree(top, inlineMax, budget, useRing)
const openFds = () => fs.readdirSync('/proc/self/fd').length
/** io_uring may be set up here (kernel.io_uring_disabled 0, or 1 for root). */
const ringExpected = (() => {
  try {
    return Number(fs.readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8')) < 2
  } catch {
    return fs.existsSync('/proc/sys/kernel') // a kernel without the switch has io_uring on
  }
})()

function plant(top: string): void {
  const nobody = Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim())
  for (const task of ['files', 'task-1']) {
    for (let d = 0; d < 150; d++) {
      const dir = path.join(top, task, String(d))
      fs.mkdirSync(dir, { recursive: true })
      for (let f = 0; f < (d % 7) * 12; f++) fs.writeFileSync(path.join(dir, `v${f}`), `${d}.${f}\n`.repeat(f % 5))
    }
  }
  const odd = path.join(top, 'task-1', 'odd')
  fs.mkdirSync(path.join(odd, 'a', 'b', 'c'), { recursive: true })
  fs.writeFileSync(path.join(odd, 'a', 'b', 'c', 'deep'), 'deep\n')
  fs.writeFileSync(path.join(odd, 'big'), Buffer.alloc(5000, 'x')) // over the inline limit used below
  fs.writeFileSync(path.join(odd, 'empty'), '')
  fs.writeFileSync(path.join(odd, 'theirs'), 'theirs\n')
  fs.chownSync(path.join(odd, 'theirs'), nobody, nobody)
  fs.writeFileSync(path.join(odd, 'open'), 'open\n', { mode: 0o666 })
  fs.chmodSync(path.join(odd, 'open'), 0o666)
  fs.symlinkSync('/etc/passwd', path.join(odd, 'to-file'))
  fs.symlinkSync(path.join(top, 'files'), path.join(odd, 'to-dir'))
  execFileSync('mkfifo', [path.join(odd, 'fifo')])
}

t.test('the io_uring walk reads what the walk of one call per step reads, and closes every fd', async (t) => {
  const top = path.join(workdir(t, 'ckptfs-treeread-'), 'tree')
  plant(top)
  // A socket file: getdents says DT_SOCK, so it is lstat'ed and recorded, never opened.
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(path.join(top, 'task-1', 'odd', 'sock'), resolve))
  t.teardown(() => server.close())
  const before = openFds()
  for (const [inlineMax, budget] of [[64 << 10, 256 << 20], [4096, 256 << 20]]) {
    const sync = await readTree(top, inlineMax, budget, false)
    const ring = await readTree(top, inlineMax, budget, true)
    t.equal(sync.ringed, 0, 'useRing false: the synchronous walk')
    if (ringExpected) t.ok(ring.ringed >= 1, `io_uring set up for the walk (${ring.ringed} threads)`)
    t.equal(ring.length, sync.length, `inline limit ${inlineMax}: as many bytes`)
    t.ok(ring.equals(sync), `inline limit ${inlineMax}: the same bytes`)
    t.equal(openFds(), before, `inline limit ${inlineMax}: no fd left open`)
  }
  // What the loaders see of it (snapshot.ts): the kinds, a symbolic link never followed.
  const { readSnapshot } = await import('../lib/restore/snapshot')
  const snap = await readSnapshot(top)
  const odd = snap.root.dir('task-1').dir('odd')
  t.same([...odd.list()].map(([n, e]) => [n, e.kind, e.symlink]).sort(), [
    ['a', 'dir', false], ['big', 'file', false], ['empty', 'file', false], ['fifo', 'other', false], ['open', 'file', false],
    ['sock', 'other', false], ['theirs', 'file', false], ['to-dir', 'other', true], ['to-file', 'other', true],
  ], 'kinds as lstat says them')
  t.equal(odd.dir('a').dir('b').dir('c').text('deep', 100, { crc32c: 0 }), 'deep\n', 'a file four levels down')
  t.equal(snap.userOrWritable, 2, 'the file of another owner and the file others may write are counted')
})

t.test('a budget smaller than the files: the same files held either way (one thread walks)', async (t) => {
  const top = path.join(workdir(t, 'ckptfs-treeread-'), 'tree')
  plant(path.join(top, 'only'))
  const sync = await readTree(top, 64 << 10, 3000, false)
  const ring = await readTree(top, 64 << 10, 3000, true)
  t.ok(ring.equals(sync), 'the same bytes')
  t.ok(ring.length < (await readTree(top, 64 << 10, 256 << 20, true)).length, 'and fewer than without the budget')
})

t.test('a walk that fails (nested too deep) says so alike and closes every fd', async (t) => {
  const top = path.join(workdir(t, 'ckptfs-treeread-'), 'tree')
  let dir = path.join(top, 'task-1')
  for (let i = 0; i < 70; i++) {
    fs.mkdirSync(dir, { recursive: true })
    for (let f = 0; f < 70; f++) fs.writeFileSync(path.join(dir, `f${f}`), 'x\n')
    dir = path.join(dir, 'd')
  }
  const before = openFds()
  const failure = async (useRing: boolean) => readTree(top, 64 << 10, 256 << 20, useRing).then(() => 'read', (err: Error) => err.message)
  const sync = await failure(false)
  t.match(sync, /task-1\/d\/.*: nested too deep for a saved checkpoint/, 'the synchronous walk refuses it')
  t.equal(await failure(true), sync, 'the io_uring walk refuses it alike')
  t.equal(openFds(), before, 'no fd left open')
})

t.test('of two failures, the first in the listing\'s order is reported, whichever thread met it', async (t) => {
  const top = path.join(workdir(t, 'ckptfs-treeread-'), 'tree')
  const files = path.join(top, 'files')
  for (let d = 0; d < 200; d++) {
    fs.mkdirSync(path.join(files, `n${d}`), { recursive: true })
    for (let f = 0; f < 10; f++) fs.writeFileSync(path.join(files, `n${d}`, `f${f}`), 'x\n')
  }
  // Two chains too deep, far apart in files/ (its entries are shared out between the threads).
  const listed = execFileSync('ls', ['-U', files], { encoding: 'utf8' }).trim().split('\n')
  const [early, late] = [listed[10], listed[listed.length - 10]]
  for (const name of [early, late]) {
    let dir = path.join(files, name)
    for (let i = 0; i < 70; i++) dir = path.join(dir, 'd')
    fs.mkdirSync(dir, { recursive: true })
  }
  fs.mkdirSync(path.join(top, 'task-1'))
  const before = openFds()
  for (const useRing of [false, true, true, true]) {
    const message = await readTree(top, 64 << 10, 256 << 20, useRing).then(() => 'read', (err: Error) => err.message)
    t.match(message, new RegExp(`/files/${early}/d/.*: nested too deep`), `useRing ${useRing}: the first in getdents' order (${early}, not ${late})`)
  }
  t.equal(openFds(), before, 'no fd left open')
})

t.test('useRing must be a boolean', async (t) => {
  await t.rejects(native.readTree('/', 1, 1, 'yes' as unknown as boolean), /useRing must be a boolean/)
})
