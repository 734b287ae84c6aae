// The restore area (MNT/restore/) as a file system: what is copied in reads back byte for
// byte whether the server keeps it in memory or in its backing directory; files written in
// pieces, at offsets, truncated or grown past the in-memory size; rename, rmdir and unlink
// answer as the system calls do; the restore/ top level takes directories only; a tree being
// restored cannot be changed.

import { execFileSync, spawnSync } from 'child_process'
import { randomBytes } from 'crypto'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import t, { type Test } from 'tap'
import { RestoreArea } from '../lib/restore/area'
import { AreaTree, SMALL_FILE, type AreaFile } from '../lib/restore/areatree'
import type { DirNode, FileNode } from '../lib/tree/node'
import { readRecord } from '../mount/records'
import { mountFor } from './lib/mount'

/** Every file and directory under `dir`, relative, with its kind and bytes. */
function contents(dir: string, rel = ''): Array<[string, string]> {
  const out: Array<[string, string]> = []
  for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
    const p = path.join(rel, name)
    const st = fs.lstatSync(path.join(dir, p))
    if (st.isDirectory()) out.push([p, 'dir'], ...contents(dir, p))
    else out.push([p, `${st.size} ${fs.readFileSync(path.join(dir, p)).toString('base64')}`])
  }
  return out
}

function scratch(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-area-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

const errnoOf = (fn: () => void): string | undefined => {
  try {
    fn()
    return undefined
  } catch (err) {
    return (err as NodeJS.ErrnoException).code
  }
}

t.test('cp -a in and out: every byte, small files in memory, large ones in the backing directory', async (t) => {
  const mnt = mountFor(t)
  const src = scratch(t)
  const tree = path.join(src, 'saved')
  fs.mkdirSync(path.join(tree, 'a', 'b', 'c'), { recursive: true })
  fs.writeFileSync(path.join(tree, 'value'), '42\n')
  fs.writeFileSync(path.join(tree, 'empty'), '')
  fs.writeFileSync(path.join(tree, 'a', 'utf8'), 'über /tmp/ß\n')
  fs.writeFileSync(path.join(tree, 'a', 'binary'), Buffer.from([0xff, 0xfe, 0, 1, 0x80, 0x0a, 0xc3]))
  fs.writeFileSync(path.join(tree, 'a', 'b', 'exactly-small'), randomBytes(SMALL_FILE))
  fs.writeFileSync(path.join(tree, 'a', 'b', 'c', 'large'), randomBytes(3 * SMALL_FILE + 12345))
  fs.writeFileSync(path.join(tree, 'a', 'b', 'c', 'pages'), randomBytes(4 << 20))

  const r = spawnSync('cp', ['-a', tree, path.join(mnt, 'restore', 'saved')], { encoding: 'utf8' })
  t.equal(r.status, 0, `cp -a into restore/ ${r.stderr}`)
  t.strictSame(contents(path.join(mnt, 'restore', 'saved')), contents(tree), 'reads back byte for byte')
  const backing = readRecord(mnt)!.backing
  t.equal(fs.readdirSync(backing).length, 2, 'only the two files larger than the in-memory size are on disk')

  const out = path.join(src, 'out')
  t.equal(spawnSync('cp', ['-a', path.join(mnt, 'restore', 'saved'), out]).status, 0, 'cp -a back out')
  t.strictSame(contents(out), contents(tree), 'the copy out is the same')

  t.equal(spawnSync('rm', ['-r', path.join(mnt, 'restore', 'saved')]).status, 0, 'rm -r')
  t.strictSame(fs.readdirSync(path.join(mnt, 'restore')), [], 'restore/ is empty again')
  t.strictSame(fs.readdirSync(backing), [], 'and so is the backing directory')
})

t.test('writes in pieces, at offsets, past the end, truncation: as a local file', async (t) => {
  const mnt = mountFor(t)
  const local = path.join(scratch(t), 'local')
  fs.mkdirSync(local)
  const area = path.join(mnt, 'restore', 'w')
  fs.mkdirSync(area)
  const appended = randomBytes(SMALL_FILE + 100)
  const steps: Array<[string, (dir: string) => void]> = [
    ['write "abc\\n"', (d) => fs.writeFileSync(path.join(d, 'f'), 'abc\n')],
    ['overwrite at offset 1', (d) => withFd(d, (fd) => fs.writeSync(fd, 'XY', 1))],
    ['write past the end (a hole)', (d) => withFd(d, (fd) => fs.writeSync(fd, Buffer.from('tail'), 0, 4, 20))],
    ['truncate shorter', (d) => fs.truncateSync(path.join(d, 'f'), 7)],
    ['truncate longer', (d) => fs.truncateSync(path.join(d, 'f'), 30)],
    ['append past the in-memory size', (d) => fs.appendFileSync(path.join(d, 'f'), appended)],
    ['overwrite inside, on disk now', (d) => withFd(d, (fd) => fs.writeSync(fd, 'middle', 5000))],
    ['truncate to a small size again', (d) => fs.truncateSync(path.join(d, 'f'), 10)],
    ['truncate to nothing', (d) => fs.truncateSync(path.join(d, 'f'), 0)],
    ['write again', (d) => fs.writeFileSync(path.join(d, 'f'), 'again\n')],
  ]
  for (const [what, step] of steps) {
    step(local)
    step(area)
    t.strictSame(fs.readFileSync(path.join(area, 'f')), fs.readFileSync(path.join(local, 'f')), what)
    t.equal(fs.statSync(path.join(area, 'f')).size, fs.statSync(path.join(local, 'f')).size, `${what}: size`)
  }
})

function withFd(dir: string, fn: (fd: number) => void): void {
  const fd = fs.openSync(path.join(dir, 'f'), 'r+')
  try {
    fn(fd)
  } finally {
    fs.closeSync(fd)
  }
}

t.test('rename, rmdir and unlink answer as the system calls do', async (t) => {
  const mnt = mountFor(t)
  const top = path.join(mnt, 'restore', 'r')
  fs.mkdirSync(path.join(top, 'd1', 'inner'), { recursive: true })
  fs.mkdirSync(path.join(top, 'd2'))
  fs.mkdirSync(path.join(top, 'empty'))
  fs.writeFileSync(path.join(top, 'f1'), 'one\n')
  fs.writeFileSync(path.join(top, 'f2'), 'two\n')

  fs.renameSync(path.join(top, 'f1'), path.join(top, 'f2'))
  t.equal(fs.readFileSync(path.join(top, 'f2'), 'utf8'), 'one\n', 'a file renamed onto a file replaces it')
  t.notOk(fs.existsSync(path.join(top, 'f1')), 'and is gone from its old name')
  t.equal(errnoOf(() => fs.renameSync(path.join(top, 'd2'), path.join(top, 'd1'))), 'ENOTEMPTY', 'a directory onto a non-empty one: ENOTEMPTY')
  t.equal(errnoOf(() => fs.renameSync(path.join(top, 'f2'), path.join(top, 'empty'))), 'EISDIR', 'a file onto a directory: EISDIR')
  t.equal(errnoOf(() => fs.renameSync(path.join(top, 'd2'), path.join(top, 'f2'))), 'ENOTDIR', 'a directory onto a file: ENOTDIR')
  fs.renameSync(path.join(top, 'd2'), path.join(top, 'empty'))
  t.strictSame(fs.readdirSync(top).sort(), ['d1', 'empty', 'f2'], 'a directory onto an empty one replaces it')
  fs.renameSync(path.join(top, 'f2'), path.join(top, 'd1', 'inner', 'moved'))
  t.equal(fs.readFileSync(path.join(top, 'd1', 'inner', 'moved'), 'utf8'), 'one\n', 'moved between directories')
  t.equal(errnoOf(() => fs.rmdirSync(path.join(top, 'd1'))), 'ENOTEMPTY', 'rmdir of a non-empty directory: ENOTEMPTY')
  t.equal(errnoOf(() => fs.mkdirSync(path.join(top, 'd1'))), 'EEXIST', 'mkdir of an existing name: EEXIST')
  t.equal(errnoOf(() => fs.renameSync(path.join(top, 'd1', 'inner', 'moved'), path.join(mnt, 'restore', 'moved'))), 'EPERM', 'restore/ holds directories only')
  t.equal(errnoOf(() => fs.writeFileSync(path.join(mnt, 'restore', 'file'), 'x')), 'EPERM', 'a file cannot be created there either')

  fs.renameSync(top, path.join(mnt, 'restore', 'renamed'))
  t.strictSame(fs.readdirSync(path.join(mnt, 'restore')), ['renamed'], 'a saved tree renamed at the top')
  t.equal(fs.readFileSync(path.join(mnt, 'restore', 'renamed', 'd1', 'inner', 'moved'), 'utf8'), 'one\n', 'with everything in it')
  fs.unlinkSync(path.join(mnt, 'restore', 'renamed', 'd1', 'inner', 'moved'))
  fs.rmdirSync(path.join(mnt, 'restore', 'renamed', 'd1', 'inner'))
  t.strictSame(fs.readdirSync(path.join(mnt, 'restore', 'renamed', 'd1')), [], 'unlink and rmdir')
})

t.test('a tree being restored cannot be changed; its status says so', async (t) => {
  const area = new RestoreArea(scratch(t))
  t.teardown(() => area.dispose())
  const root = area.root()
  await root.mkdir!('saved')
  const saved = (await root.lookup('saved')) as DirNode
  await saved.mkdir!('task-1')
  await saved.create!('stray')
  // The restore loads synchronously until it fails on this incomplete tree: every attempt is
  // made before it gets a turn (each operation decides before its first await).
  const restoring = area.restore('saved')
  const unlink = saved.remove!('stray')
  const removeTree = root.remove!('saved')
  const mkdir = saved.mkdir!('x')
  const rename = root.rename!('saved', root, 'other')
  const again = area.restore('saved')
  await t.rejects(unlink, { errno: 'EBUSY', message: /restore\/saved: a restore of it is running/ }, 'unlink: EBUSY')
  await t.rejects(removeTree, { errno: 'EBUSY', message: /restore\/saved: a restore of it is running/ }, 'removing the tree: EBUSY')
  await t.rejects(mkdir, { errno: 'EBUSY', message: /restore\/saved: a restore of it is running/ }, 'mkdir: EBUSY')
  await t.rejects(rename, { errno: 'EBUSY', message: /restore\/saved: a restore of it is running/ }, 'rename: EBUSY')
  await t.rejects(again, { errno: 'EBUSY', message: 'restore/saved: a restore is already running' }, 'a second restore: EBUSY')
  await t.rejects(restoring, { name: 'CkptError' }, 'the restore itself fails on the incomplete tree')
  const status = (await saved.lookup('status')) as FileNode
  t.match((await status.read(0, 4096)).toString(), /^error: /, 'status: error: WHY')
  await saved.remove!('stray')
  t.strictSame((await saved.list()).sort(), ['status', 'task-1'], 'once it has ended, the tree can be changed again')
})

t.test('past its memory limit the area moves files to disk, and gives the memory back', async (t) => {
  const backing = scratch(t)
  const limit = 256 << 10
  const tree = new AreaTree(backing, limit)
  t.teardown(() => tree.dispose())
  const dir = tree.mkdir(tree.root, 'saved')
  const data = Array.from({ length: 10 }, () => randomBytes(40 << 10))
  data.forEach((d, i) => tree.create(dir, `f${i}`).write(0, d))
  t.ok(tree.heldBytes <= limit, `at most the limit is held (${tree.heldBytes} bytes)`)
  t.equal(fs.readdirSync(backing).length, 10 - Math.floor(limit / (40 << 10)), 'the files that did not fit are on disk')
  data.forEach((d, i) => t.strictSame((dir.entries.get(`f${i}`) as AreaFile).read(0, 1 << 20), d, `f${i} reads back whole`))
  for (let i = 0; i < 10; i++) tree.remove(dir, `f${i}`)
  t.equal(tree.heldBytes, 0, 'removing them frees their memory')
  t.strictSame(fs.readdirSync(backing), [], 'and their backing files')
})

t.test('a file that cannot move to disk leaves no backing file behind, and says why', async (t) => {
  // A backing directory on a tmpfs of 32 KiB: a file grown past the in-memory size does not fit.
  const backing = scratch(t)
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=32k,mode=0700', 'ckptfs-test', backing])
  t.teardown(() => execFileSync('umount', [backing]))
  const tree = new AreaTree(backing)
  const dir = tree.mkdir(tree.root, 'saved')
  const file = tree.create(dir, 'pages')
  const first = randomBytes(SMALL_FILE)
  file.write(0, first)
  t.notOk(file.onDisk, 'the first 64 KiB are held in memory')
  let err: unknown
  try {
    file.write(SMALL_FILE, randomBytes(SMALL_FILE))
  } catch (e) {
    err = e
  }
  t.match(err, { errno: 'ENOSPC', message: new RegExp(`cannot move a file of ${SMALL_FILE} bytes to ${backing}/1: .*ENOSPC`) }, 'growing it fails with ENOSPC, naming the file')
  t.strictSame(fs.readdirSync(backing), [], 'no partial backing file is left')
  t.notOk(file.onDisk, 'the file stays in memory')
  t.ok(file.read(0, 2 * SMALL_FILE).equals(first), 'with the contents it had')
})
