// Issue 12 hole 4 (copies readable by everyone) and issue 13 (the image inside the tree).
// A checkpoint's nodes carry /proc's modes and the task's owner, so `cp -a` and `tar` copies
// are as private as the process was: the attacks are replayed as an unprivileged user
// (test/lib/unprivileged.ts) against copies of a root process's checkpoint. The image sits
// beside the tree as checkpoint-N.image, so `cp -a checkpoint-N` copies the checkpoint once,
// and every way of restoring keeps working with the new modes.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import { DiskDir } from '../lib/files/saved'
import { loadSaved } from '../lib/restore/load'
import { showCheckpoint } from '../lib/show'
import { ckptfsOk, mountFor } from './lib/mount'
import { exists, launch, runChecks, waitUntil, workdir, type Target } from './lib/restore'
import { buildTarget } from './lib/targets'
import { asUser, attacker, runAs, type LocalUser } from './lib/unprivileged'

// Holds an unlinked file ("unlinked"), a pipe holding "pipe" and an eventfd (small_fds.h).
const small = buildTarget('restore_small', ['-static'])
const nondumpable = buildTarget('nondumpable')
const user = attacker()

/** The private parts of a saved tree: what /proc keeps to the owner. */
function privateParts(saved: string, pid: number): Record<string, string> {
  const task = path.join(saved, `task-${pid}`)
  const vmas = path.join(task, 'memory', 'vmas')
  const withPages = fs.readdirSync(vmas).find((v) => fs.statSync(path.join(vmas, v, 'pages')).size > 0)
  const files = path.join(saved, 'files')
  const described = (type: string, extra: (dir: string) => boolean) => fs.readdirSync(files).find((o) => {
    const dir = path.join(files, o)
    return fs.readFileSync(path.join(dir, 'fd_type'), 'utf8') === `${type}\n` && extra(dir)
  })
  const unlinked = described('file', (dir) => fs.readFileSync(path.join(dir, 'unlinked'), 'utf8') === '1\n')
  const pipe = described('pipe', (dir) => fs.statSync(path.join(dir, 'buffered')).size > 0)
  if (!withPages || !unlinked || !pipe) throw new Error(`${saved}: no stored pages, unlinked file or pipe data (${withPages}, ${unlinked}, ${pipe})`)
  return {
    environ: path.join(task, 'environ'),
    auxv: path.join(task, 'mm', 'auxv'),
    regs: path.join(task, 'threads', String(pid), 'regs'),
    xstate: path.join(task, 'threads', String(pid), 'xstate'),
    pages: path.join(vmas, withPages, 'pages'),
    'unlinked contents': path.join(files, unlinked, 'contents'),
    'pipe buffer': path.join(files, pipe, 'buffered'),
  }
}

function catAs(who: LocalUser, file: string): { status: number | null; stdout: string; stderr: string } {
  return runAs(who, ['cat', file])
}

/** Every entry below `dir` (itself included), with its owner. */
function owners(dir: string): Array<{ rel: string; uid: number; gid: number }> {
  const out = [{ rel: '.', uid: fs.lstatSync(dir).uid, gid: fs.lstatSync(dir).gid }]
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name)
    const st = fs.lstatSync(p)
    if (st.isDirectory()) out.push(...owners(p).map((o) => ({ ...o, rel: o.rel === '.' ? name : path.join(name, o.rel) })))
    else out.push({ rel: name, uid: st.uid, gid: st.gid })
  }
  return out
}

async function killAndWait(pid: number): Promise<void> {
  process.kill(pid, 'SIGKILL')
  await waitUntil(`PID ${pid} to be gone`, () => !exists(pid))
}

function restoreInArea(mnt: string, from: string, name: string): string {
  const dest = path.join(mnt, 'restore', name)
  execFileSync('cp', ['-a', from, dest])
  fs.writeFileSync(path.join(dest, 'done'), '1\n')
  return fs.readFileSync(path.join(dest, 'status'), 'utf8')
}

t.test("copies of a root process's checkpoint are as private as /proc keeps it, and restore", async (t) => {
  const mnt = mountFor(t)
  const dir = workdir(t) // 0755: the attacker can reach the copies; only their own modes protect them
  const target: Target = await launch(t, [small, dir], { dir })
  const pid = target.pid
  t.not(catAs(user, `/proc/${pid}/environ`).status, 0, '/proc itself keeps the environment from the attacker')

  const checkpoint = ckptfsOk('checkpoint', String(pid), '--mount', mnt)
  t.same(fs.readdirSync(mnt).filter((n) => n.startsWith('checkpoint-')).sort(), ['checkpoint-1', 'checkpoint-1.image'], 'the image is beside the tree')
  t.notOk(fs.readdirSync(checkpoint).includes('image'), 'and not inside it')
  const image = fs.statSync(`${checkpoint}.image`)
  t.equal(image.mode & 0o777, 0o400, 'checkpoint-N.image is 0400')
  t.same([image.uid, image.gid], [0, 0], "and root's, as the task is")

  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', checkpoint, saved])
  execFileSync('cp', ['-a', `${checkpoint}.image`, `${saved}.image`])
  execFileSync('tar', ['-C', mnt, '-cf', path.join(dir, 'saved.tar'), 'checkpoint-1'])
  t.notOk(fs.existsSync(path.join(saved, 'image')), 'cp -a of checkpoint-N holds no image')
  const untarred = path.join(dir, 'untarred')
  fs.mkdirSync(untarred)
  execFileSync('tar', ['-C', untarred, '-xpf', path.join(dir, 'saved.tar')])

  for (const [where, copy] of [['cp -a', saved], ['tar', path.join(untarred, 'checkpoint-1')]] as const) {
    for (const [what, file] of Object.entries(privateParts(copy, pid))) {
      const st = fs.statSync(file)
      t.ok(st.size > 0, `${where}: ${what} holds data`)
      t.equal(st.mode & 0o077, 0, `${where}: ${what} is private (mode 0${(st.mode & 0o777).toString(8)})`)
      const r = catAs(user, file)
      t.not(r.status, 0, `${where}: the attacker cannot read ${what}`)
      t.match(r.stderr, /Permission denied/, `${where}: ${what}: EACCES`)
      t.equal(r.stdout, '', `${where}: ${what}: not a byte`)
    }
    const cmdline = catAs(user, path.join(copy, `task-${pid}`, 'cmdline'))
    t.equal(cmdline.status, 0, `${where}: cmdline stays readable, as in /proc`)
    t.equal(cmdline.stdout, fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1'), `${where}: and is the process's`)
  }
  const imageRead = catAs(user, `${saved}.image`)
  t.not(imageRead.status, 0, 'the attacker cannot read the image copy')
  t.match(imageRead.stderr, /Permission denied/)

  // The process ends; the image goes with its tree.
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill\n')
  await waitUntil(`PID ${pid} to be gone`, () => !exists(pid))
  t.same(fs.readdirSync(mnt).filter((n) => n.startsWith('checkpoint-')), [], 'after done neither checkpoint-1 nor its image is listed')
  t.throws(() => fs.statSync(`${checkpoint}.image`), { code: 'ENOENT' }, 'and the image is gone')

  // Restoring from every copy still works with the private modes.
  t.equal(restoreInArea(mnt, saved, 'copy'), `restored ${pid}\n`, 'cp -a of the copy into restore/ restores')
  const checks = await runChecks(target)
  t.same(checks.failed, [], 'the restored process finds its fds, unlinked file and pipe data')
  t.ok(checks.done && checks.ok.length > 0, `${checks.ok.length} checks passed`)
  await killAndWait(pid)
  fs.rmSync(path.join(dir, 'go'))

  t.equal(ckptfsOk('restore', `${saved}.image`, '--mount', mnt), String(pid), 'ckptfs restore of the copied checkpoint-1.image')
  await killAndWait(pid)

  const onlyImage = path.join(dir, 'only-image')
  fs.mkdirSync(onlyImage)
  execFileSync('cp', ['-a', `${saved}.image`, path.join(onlyImage, 'checkpoint-1.image')])
  t.equal(restoreInArea(mnt, onlyImage, 'img'), `restored ${pid}\n`, 'a directory holding only checkpoint-1.image restores in restore/')
  await killAndWait(pid)

  t.equal(ckptfsOk('restore', path.join(untarred, 'checkpoint-1'), '--mount', mnt), String(pid), 'ckptfs restore of the untarred tree')
  await killAndWait(pid)
})

t.test("a copy of a user's own checkpoint is that user's", async (t) => {
  const mnt = mountFor(t)
  const dir = workdir(t)
  fs.chownSync(dir, user.uid, user.gid)
  const target = await launch(t, asUser(user, [small, dir]), { dir })
  const pid = target.pid
  const checkpoint = ckptfsOk('checkpoint', String(pid), '--mount', mnt)
  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', checkpoint, saved])
  execFileSync('cp', ['-a', `${checkpoint}.image`, `${saved}.image`])

  const all = [...owners(saved), { rel: '(image)', uid: fs.statSync(`${saved}.image`).uid, gid: fs.statSync(`${saved}.image`).gid }]
  const foreign = all.filter((o) => o.uid !== user.uid || o.gid !== user.gid)
  t.same(foreign, [], `all ${all.length} entries of the copy and the image belong to ${user.name}`)
  for (const [what, file] of [...Object.entries(privateParts(saved, pid)), ['image', `${saved}.image`]]) {
    const r = runAs(user, ['sh', '-c', 'cat "$0" | cksum', file])
    t.equal(r.status, 0, `the owner reads ${what}`)
    t.equal(r.stdout, execFileSync('sh', ['-c', 'cat "$0" | cksum', file], { encoding: 'utf8' }), `${what}: the same bytes as root reads`)
  }
  const again = runAs(user, ['cp', '-a', saved, path.join(dir, 'copied-by-owner')])
  t.equal(again.status, 0, `the owner can cp -a the copy in turn: ${again.stderr.trim()}`)
  fs.writeFileSync(path.join(checkpoint, 'done'), '1\n')
})

t.test("the data of a task that is not dumpable is root's, as /proc shows it", async (t) => {
  // ssh-agent and the like make themselves non-dumpable so that not even their own user can
  // read their memory: /proc gives such a task's files to root (its directory stays the
  // user's, for ps), and so does the tree.
  const mnt = mountFor(t)
  const dir = workdir(t)
  fs.chownSync(dir, user.uid, user.gid)
  const target = await launch(t, asUser(user, [nondumpable]), { dir })
  const pid = target.pid
  t.same([fs.statSync(`/proc/${pid}`).uid, fs.statSync(`/proc/${pid}/environ`).uid], [user.uid, 0], '/proc: the directory is the user\'s, environ root\'s')
  t.not(runAs(user, ['cat', `/proc/${pid}/environ`]).status, 0, 'and /proc keeps the environment from the task\'s own user')
  const checkpoint = ckptfsOk('checkpoint', String(pid), '--mount', mnt)
  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', checkpoint, saved])
  const uidOf = (p: string) => fs.statSync(p).uid
  t.same([uidOf(saved), uidOf(path.join(saved, `task-${pid}`))], [user.uid, user.uid], 'checkpoint-N and task-PID stay the user\'s')
  t.same([uidOf(`${checkpoint}.image`), uidOf(path.join(saved, `task-${pid}`, 'environ')), uidOf(path.join(saved, `task-${pid}`, 'memory'))], [0, 0, 0],
    'the image, environ and memory/ are root\'s')
  fs.writeFileSync(path.join(checkpoint, 'done'), '1\n')
  const r = catAs(user, path.join(saved, `task-${pid}`, 'environ'))
  t.not(r.status, 0, 'the task\'s own user cannot read the environment from the copy either')
  t.match(r.stderr, /Permission denied/)
})

t.test("a root daemon dumpable again with a user's euid: its memory stays root's, as /proc's ptrace check keeps it", async (t) => {
  // /proc gives such a task's files to its euid, but lets only a caller with all its uids
  // (and its capabilities) read them: a copy's owner and mode must not give the user more.
  const mnt = mountFor(t)
  const dir = workdir(t)
  const daemon = `import ctypes, os, sys, time\nsecret = 'root-only ' * 500\nos.setresgid(0, ${user.gid}, 0)\nos.setresuid(0, ${user.uid}, 0)\nctypes.CDLL(None).prctl(4, 1, 0, 0, 0)\nprint('ready pid=%d' % os.getpid(), flush=True)\ntime.sleep(100000)`
  const target = await launch(t, ['python3', '-c', daemon], { dir })
  const pid = target.pid
  t.same(fs.statSync(`/proc/${pid}/environ`).uid, user.uid, '/proc: environ is the euid\'s')
  t.not(runAs(user, ['cat', `/proc/${pid}/environ`]).status, 0, 'yet /proc keeps it from that user (ptrace check: real and saved uids are root\'s)')
  const checkpoint = ckptfsOk('checkpoint', String(pid), '--mount', mnt, '--copy')
  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', checkpoint, saved])
  fs.writeFileSync(path.join(checkpoint, 'done'), '1\n')
  const task = path.join(saved, `task-${pid}`)
  t.same([fs.statSync(task).uid, fs.statSync(path.join(task, 'environ')).uid, fs.statSync(path.join(task, 'memory')).uid], [user.uid, 0, 0], 'task-PID is the euid\'s, environ and memory/ root\'s')
  t.not(catAs(user, path.join(task, 'environ')).status, 0, 'the user cannot read its environment from the copy')
  t.not(runAs(user, ['ls', path.join(task, 'memory')]).status, 0, 'nor list its memory')
})

t.test('a directory holding two images is refused, naming them', async (t) => {
  const dir = workdir(t)
  fs.writeFileSync(path.join(dir, 'checkpoint-1.image'), 'x')
  fs.writeFileSync(path.join(dir, 'image'), 'x')
  await t.rejects(loadSaved(new DiskDir(dir), 'two'), /^two: 2 image files \((checkpoint-1\.image, image|image, checkpoint-1\.image)\); a saved checkpoint has one$/)
  await t.rejects(showCheckpoint(dir), /2 image files/)
  fs.rmSync(path.join(dir, 'image'))
  await t.rejects(loadSaved(new DiskDir(dir), 'one'), /image/, 'one NAME.image is read as the image (this one is no image)')
  t.notMatch(await loadSaved(new DiskDir(dir), 'one').catch((err: Error) => err.message), /not a saved checkpoint/, 'and not taken for an empty directory')
})
