// Issue 12, hole 6: one validator for trees and images. Replayed as an unprivileged local
// user: the user's own process is checkpointed by root and the user gets the saved copy; the
// user then crafts trees (by editing files with the shell) and images (with the project's own
// encoder, run as that user) holding what a restore must refuse, and asks root to restore
// them. Before, a tree could name /dev/kmsg (the device check ran only at capture) and an
// image could carry a 20-byte comm, a relative path, rseq_size 1203533128, a description no fd
// names, a missing signal action, a hugetlbfs mapping or a timerfd clock no timerfd can use.
// Now each is refused before anything is created, naming the tree path of the value, the same
// for the tree and for the image, and the PID stays free.

import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { treeToImage } from '../lib/image/convert'
import { restorePath } from '../lib/restore/index'
import { ckptfs, cliShellWords, mountFor } from './lib/mount'
import * as R from './lib/restore'
import { buildTarget, repo } from './lib/targets'
import { asUser, attacker, runAs, shAs } from './lib/unprivileged'

/**
 * Run as the attacker with node: loads the saved tree (argv[2]) with the project's loader,
 * changes the model as argv[4] says and writes it as OUT/image (argv[3]) with the project's
 * encoder. Prints the tree path the restore must name.
 */
const CRAFT = `
const fs = require('fs')
const path = require('path')
const dist = ${JSON.stringify(path.join(repo, 'dist', 'lib'))}
const { loadSaved } = require(dist + '/restore/load.js')
const { DiskDir } = require(dist + '/files/saved.js')
const { imageSource } = require(dist + '/image/encode.js')
const [tree, out, change] = process.argv.slice(2)
;(async () => {
  const s = await loadSaved(new DiskDir(tree), 'saved')
  const task = 'task-' + s.pid
  const files = s.fileTable.files
  const nextObjref = Math.max(...files.map((f) => f.objref)) + 1
  const nextFd = Math.max(...s.fileTable.fds.map((e) => e.fd)) + 1
  const add = (d, named = true) => {
    files.push({ ...d, objref: nextObjref })
    if (named) s.fileTable.fds.push({ fd: nextFd, closeOnExec: false, objref: nextObjref })
  }
  const data = files.find((f) => f.type === 'file' && !f.unlinked)
  const devnull = files.find((f) => f.type === 'chr')
  const stack = s.vmas.find((v) => v.kind === 'stack')
  let where
  switch (change) {
    case 'comm': s.process.comm = 'twenty-bytes-of-name'; where = task + '/comm'; break
    case 'relative-path': data.path = 'data.txt'; where = 'files/' + data.objref + '/path'; break
    case 'rseq-size': s.threads[0].rseq.size = 1203533128; where = task + '/threads/' + s.threads[0].tid + '/rseq_size'; break
    case 'unnamed': add(files.find((f) => f.type === 'eventfd'), false); where = 'files/' + nextObjref; break
    case 'signal-action': s.process.sigactions = s.process.sigactions.filter((a) => a.signal !== 10); where = task + '/signals/actions/10'; break
    case 'hugetlbfs': stack.vmFlags += ' ht'; where = task + '/memory/vmas/' + stack.start.toString(16).padStart(8, '0') + '-' + stack.end.toString(16).padStart(8, '0'); break
    case 'timerfd-clock':
      add({ type: 'timerfd', target: 'anon_inode:[timerfd]', flags: 2, mode: 3, pos: 0n, mntId: 15, ino: 1n, notCheckpointable: undefined, locks: [],
        clockid: 5, ticks: 0n, settimeFlags: 0, valueNs: 0n, intervalNs: 0n })
      where = 'files/' + nextObjref + '/clockid'
      break
    case 'kmsg': Object.assign(devnull, { path: '/dev/kmsg', target: '/dev/kmsg', rdev: 0x10bn }); where = 'files/' + devnull.objref + '/rdev'; break
    case 'block-device':
      add({ ...devnull, type: 'blk', path: '/dev/sda', target: '/dev/sda', rdev: 0x800n, inodeMode: 0o60660 })
      where = 'files/' + nextObjref + '/rdev'
      break
    default: throw new Error('unknown change ' + change)
  }
  const source = await imageSource({
    pid: s.pid, tids: s.threads.map((th) => th.tid),
    process: async () => s.process, threads: async () => s.threads, vmas: async () => s.vmas, fileTable: async () => s.fileTable,
  })
  fs.mkdirSync(out)
  fs.writeFileSync(path.join(out, 'image'), await source.read(0, source.size))
  process.stdout.write(where)
})().catch((err) => {
  process.stderr.write(String(err && err.stack || err))
  process.exit(1)
})
`

t.test('trees and images crafted by an unprivileged user are refused alike, naming the value', async (t) => {
  const user = attacker()
  const exe = buildTarget('fuzz_target', ['-static'])
  const mnt = mountFor(t)
  const dir = R.workdir(t)
  fs.chmodSync(dir, 0o755)
  fs.chownSync(dir, user.uid, user.gid)
  // The user's own process: stdin /dev/null (a character device to rewrite), fds 3-7 of small_fds.h.
  const target = await R.launch(t, asUser(user, [exe, dir]), { dir })
  const pid = target.pid
  t.equal(fs.statSync(`/proc/${pid}`).uid, user.uid, `the target ${pid} runs as ${user.name}`)

  // Root checkpoints it; the user gets the copy of their own process.
  const saved = path.join(dir, 'saved')
  await R.checkpointSaveKill(mnt, pid, saved)
  for (const p of R.listTree(saved)) fs.lchownSync(path.join(saved, p), user.uid, user.gid)
  fs.lchownSync(saved, user.uid, user.gid)
  const task = `task-${pid}`

  const refused = (t: Test, input: string, where: string, what: string) => {
    const r = ckptfs('restore', input, '--mount', mnt)
    t.equal(r.status, 1, `${what}: ckptfs restore fails (stdout ${JSON.stringify(r.stdout.trim())})`)
    t.match(r.stderr.trim(), new RegExp(`(^|: )${where.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `), `${what}: the refusal names ${where}: ${r.stderr.trim()}`)
    t.notOk(R.exists(pid), `${what}: no process ${pid} is left`)
  }

  t.test('a tree naming /dev/kmsg, edited with the shell', async (t) => {
    const tree = path.join(dir, 'kmsg-tree')
    // cp -a keeps the tree's read-only modes; the copy is the user's, who may change them.
    shAs(user, `cp -a '${saved}' '${tree}' && chmod -R u+w '${tree}'`)
    const objref = fs.readFileSync(path.join(tree, task, 'fds', '0', 'fd'), 'utf8').trim()
    t.equal(fs.readFileSync(path.join(tree, 'files', objref, 'path'), 'utf8'), '/dev/null\n', 'fd 0 is /dev/null')
    shAs(user, `cd '${tree}/files/${objref}' && echo /dev/kmsg > path && echo /dev/kmsg > target && echo 267 > rdev`)
    // The user reseals the edit (ckptfs seal): values_crc32c detects damage, not tampering; the validator decides.
    shAs(user, `${cliShellWords} seal '${tree}' >/dev/null`)
    refused(t, tree, `files/${objref}/rdev`, 'the /dev/kmsg tree')
    // The image made from it, as `ckptfs restore TREE --mount` makes it, gets the same verdict from the server.
    const image = path.join(dir, 'kmsg-image')
    fs.mkdirSync(image)
    await treeToImage(tree, path.join(image, 'image'))
    refused(t, image, `files/${objref}/rdev`, 'the image made from the /dev/kmsg tree')
    // And without a mount, as root restores by itself.
    await t.rejects(restorePath(tree), { message: new RegExp(`^files/${objref}/rdev: chr: /dev/kmsg`) }, 'restorePath refuses the tree')
    t.notOk(R.exists(pid), `no process ${pid} is left`)
  })

  const crafted: Array<[string, string]> = [
    ['comm', 'a 20-byte comm'],
    ['relative-path', 'a relative path that would reach the stub\'s open'],
    ['rseq-size', 'rseq_size 1203533128'],
    ['unnamed', 'a description no fd names'],
    ['signal-action', 'a missing signal action'],
    ['hugetlbfs', 'a hugetlbfs mapping'],
    ['timerfd-clock', 'a timerfd clock no timerfd can use'],
    ['kmsg', '/dev/kmsg'],
    ['block-device', 'a block device'],
  ]
  const script = path.join(dir, 'craft.js')
  fs.writeFileSync(script, CRAFT, { mode: 0o644 })
  for (const [change, what] of crafted) {
    t.test(`an image with ${what}, made by the user`, async (t) => {
      const out = path.join(dir, `image-${change}`)
      const made = runAs(user, ['/usr/bin/node', script, saved, out, change], { cwd: dir })
      t.equal(made.status, 0, `the user made the image (${made.stderr.trim().slice(0, 300)})`)
      if (made.status !== 0) return
      t.equal(fs.statSync(path.join(out, 'image')).uid, user.uid, 'the image is the user\'s')
      refused(t, out, made.stdout.trim(), `the image with ${what}`)
    })
  }
})
