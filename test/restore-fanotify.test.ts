// Restore of fanotify groups (lib/files/fanotify.ts, the stub's open_fanotify_object): a program
// holding groups with inode, mount and filesystem marks (test/fixtures/restore_fanotify.c) is
// checkpointed through the real mount, saved with `cp -a`, ended with `echo kill > done`,
// restored from the tree or from the image alone, and then checks itself when told to through
// its fifo: fdinfo as before, and events delivered by every mark. Restored processes are not
// our children: they are killed at teardown (by PID, while they run the fixture).

import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfs, mountFor } from './lib/mount'
import { checkpointSaveKill, exists, launch, listTree, reseal, restoreOk, waitUntil, workdir, type Target } from './lib/restore'
import { buildTarget } from './lib/targets'
import { asUser, attacker } from './lib/unprivileged'

const bin = buildTarget('restore_fanotify')
const mnt = mountFor(t)
const read = (file: string) => fs.readFileSync(file, 'utf8').trim()

/** The objrefs under SAVED/files whose fd_type is `type`. */
function filesOfType(saved: string, type: string): string[] {
  const files = path.join(saved, 'files')
  return fs.readdirSync(files).filter((n) => read(path.join(files, n, 'fd_type')) === type)
}

/** The marks of files/OBJREF, in their order: every entry of each. */
function marksOf(saved: string, objref: string): Array<Record<string, string>> {
  const dir = path.join(saved, 'files', objref, 'marks')
  return fs.readdirSync(dir).sort((a, b) => Number(a) - Number(b)).map((n) => {
    const mark: Record<string, string> = {}
    for (const name of fs.readdirSync(path.join(dir, n))) mark[name] = read(path.join(dir, n, name))
    return mark
  })
}

/** Tells the fixture to check itself; returns its FAIL lines and whether it finished. */
async function runChecks(target: Target): Promise<{ lines: string[]; done: boolean }> {
  const ctl = fs.openSync(path.join(target.dir, 'ctl'), fs.constants.O_WRONLY | fs.constants.O_NONBLOCK)
  fs.writeSync(ctl, 'check\n')
  fs.closeSync(ctl)
  const log = () => fs.readFileSync(path.join(target.dir, 'log'), 'utf8')
  let done = true
  await waitUntil('the fixture to finish its checks', () => /^done \d+ failures$/m.test(log()), 20_000).catch(() => {
    done = false
  })
  return { lines: log().split('\n'), done }
}

const CHECKS = [
  'group A: fdinfo as before (flags, marks, masks, handle)', 'group B: fdinfo as before', "the open /proc/self/fdinfo/10 reads group A's fdinfo", 'group A: close-on-exec', 'group B: O_NONBLOCK, not close-on-exec',
  'group A: inode mark reports open, modify, close-write', 'group A: the ignored mask (FAN_ACCESS) survives the modify',
  'group A: mount mark reports close-write of another file', 'group B: filesystem mark reports a directory created',
  "group C: the unlinked file's mark reports modify",
]

async function expectChecks(tt: Test, target: Target, names: string[]): Promise<void> {
  const { lines, done } = await runChecks(target)
  tt.ok(done, 'the fixture finished its checks')
  tt.same(lines.filter((l) => l.startsWith('FAIL')), [], 'no check failed')
  for (const name of names) tt.ok(lines.includes(`ok ${name}`), `ok ${name}`)
}

t.test('fanotify groups and their inode, mount and filesystem marks are restored from the tree and work', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)

  const groups = filesOfType(saved, 'fanotify')
  t.equal(groups.length, 3, 'three fanotify descriptions')
  const byFd = (fd: number) => read(path.join(saved, `task-${target.pid}`, 'fds', String(fd), 'fd'))
  const [a, b, c] = [10, 11, 13].map(byFd)
  t.equal(read(path.join(saved, 'files', a, 'init_flags')), '0x13', 'group A: FAN_UNLIMITED_QUEUE | FAN_NONBLOCK | FAN_CLOEXEC')
  t.equal(read(path.join(saved, 'files', a, 'event_f_flags')), '0100000', 'group A: events O_RDONLY | O_LARGEFILE')
  const marksA = marksOf(saved, a)
  t.same(marksA.map((m) => m.kind), ['mount', 'inode'], 'group A: the mount mark (newest) first, as fdinfo lists them')
  t.match(marksA[1], { path: path.join(dir, 'marked'), mflags: '0x40', mask: '0x2a', ignored_mask: '0x1', fhandle_type: /^\d+$/, fhandle: /^([0-9a-f]{2})+$/ },
    'group A: the inode mark: its path, FAN_MARK_IGNORED_SURV_MODIFY, masks and file handle')
  t.ok(marksA[0].path.startsWith('/') && marksA[0].mnt_id !== '0', `group A: the mount mark names a mount point (${marksA[0].path})`)
  t.match(marksOf(saved, b), [{ kind: 'filesystem', mask: '0x48000100' }], 'group B: one filesystem mark, FAN_CREATE | FAN_ONDIR')
  t.match(marksOf(saved, c), [{ kind: 'inode', path: '' }], "group C: the unlinked file's mark has no path")

  const before = listTree(dir)
  restoreOk(mnt, saved, target.pid)
  t.same(listTree(dir).filter((f) => !before.includes(f)), [], 'nothing new in its directory')
  await expectChecks(t, target, CHECKS)
})

t.test('the same from the image alone', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved, { image: true })
  const r = ckptfs('show', `${saved}.image`)
  t.match(r.stdout, /anon_inode:\[fanotify\] \(2 marks: mount \/\S*, inode \S+\/marked\)/, 'ckptfs show: the marks of group A')
  restoreOk(mnt, `${saved}.image`, target.pid)
  await expectChecks(t, target, CHECKS)
})

t.test('a mark that cannot be restored is refused by name; nothing is left behind', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const a = read(path.join(saved, `task-${target.pid}`, 'fds', '10', 'fd'))
  const before = listTree(dir)
  const refused = (what: string, file: string, value: string, expected: RegExp) => {
    const kept = fs.readFileSync(file)
    fs.writeFileSync(file, value)
    reseal(saved) // edited on purpose: the validator judges it, not values_crc32c
    const r = ckptfs('restore', saved, '--mount', mnt)
    fs.writeFileSync(file, kept)
    reseal(saved)
    t.equal(r.status, 1, `${what}: exit status 1`)
    t.match(r.stderr, expected, `${what}: says which and why`)
    t.notOk(exists(target.pid), `${what}: no process ${target.pid}`)
    t.same(listTree(dir), before, `${what}: nothing new in its directory`)
  }
  const marks = path.join(saved, 'files', a, 'marks')
  refused('a mount mark without a mount point', path.join(marks, '0', 'path'), '\n',
    new RegExp(`^ckptfs restore: .*files/${a}/marks/0/path: no mount point of the marked mount was found at checkpoint: the mark cannot be restored\\n$`))
  refused('an unknown mark flag', path.join(marks, '1', 'mflags'), '0x80\n',
    new RegExp(`^ckptfs restore: .*files/${a}/marks/1/mflags: 0x80 has flags other than FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE and FAN_MARK_IGNORE\\n$`))
  refused('an unknown kind', path.join(marks, '1', 'kind'), 'mntns\n',
    new RegExp(`^ckptfs restore: .*files/${a}/marks/1/kind: "mntns" is not one of inode, mount, filesystem\\n$`))

  restoreOk(mnt, saved, target.pid)
  t.pass('the undamaged tree restores')
})

// Replayed as an unprivileged user (test/lib/unprivileged.ts): a user may hold a fanotify
// group only in FID mode with inode marks. Their saved tree, edited to ask for more, must not
// get it from a restore run by root: the stub makes the group and its marks with the task's
// credentials, and the kernel refuses.
t.test("a user's saved fanotify group comes back; edited to ask for what the user may not have, it is refused", async (t) => {
  const user = attacker()
  const dir = fs.mkdtempSync(path.join(user.home, 'ckptfs-fanotify-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.chownSync(dir, user.uid, user.gid)
  const userBin = path.join(dir, 'restore_fanotify')
  fs.copyFileSync(bin, userBin)
  fs.chmodSync(userBin, 0o755)
  // Its output file is the user's, as a shell of theirs would have made it.
  fs.writeFileSync(path.join(dir, 'out'), '')
  fs.chownSync(path.join(dir, 'out'), user.uid, user.gid)
  const target = await launch(t, asUser(user, [userBin, dir, 'user']), { dir })
  t.equal(fs.statSync(`/proc/${target.pid}`).uid, user.uid, 'the fixture runs as the user')
  const saved = path.join(workdir(t), 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const group = read(path.join(saved, `task-${target.pid}`, 'fds', '10', 'fd'))
  const files = path.join(saved, 'files', group)
  t.equal(read(path.join(files, 'init_flags')), '0x202', 'FAN_REPORT_FID | FAN_NONBLOCK')

  const refused = (what: string, edits: Array<[string, string]>, expected: RegExp) => {
    const kept = edits.map(([file]) => fs.readFileSync(path.join(files, file)))
    for (const [file, value] of edits) fs.writeFileSync(path.join(files, file), value)
    reseal(saved) // edited on purpose: the restore judges it, not values_crc32c
    const r = ckptfs('restore', saved, '--mount', mnt)
    edits.forEach(([file], i) => fs.writeFileSync(path.join(files, file), kept[i]))
    reseal(saved)
    t.equal(r.status, 1, `${what}: refused`)
    t.match(r.stderr, expected, `${what}: says why`)
    t.notOk(exists(target.pid), `${what}: no process ${target.pid}`)
  }
  refused('an unlimited queue (CAP_SYS_ADMIN only)', [['init_flags', '0x212\n']],
    new RegExp(`^ckptfs restore: .*fd 10 \\(files/${group}\\): fanotify_init\\(0x212, 0100000\\): Operation not permitted\\n$`))
  refused('a mount mark on / (CAP_SYS_ADMIN only)', [['marks/0/kind', 'mount\n'], ['marks/0/path', '/\n']],
    new RegExp(`^ckptfs restore: .*fd 10 \\(files/${group}\\)/marks/0: fanotify_mark / mask 0xa: Operation not permitted\\n$`))

  restoreOk(mnt, saved, target.pid)
  t.equal(fs.statSync(`/proc/${target.pid}`).uid, user.uid, 'restored as the user')
  await expectChecks(t, target, ['group D: fdinfo as before', 'group D: inode mark reports modify and close-write'])
})
