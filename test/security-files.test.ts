// Issue 12, holes 2 and 3, replayed as an unprivileged local user (test/lib/unprivileged.ts):
// files reopened on restore are opened with the restored task's credentials and must be the
// saved file; unlinked files come back without ever having a name, owned as saved, and only
// where the task could write.

import { execFileSync, spawn } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'

type Tap = Pick<typeof t, 'equal' | 'match' | 'notOk'>
import { ckptfs, ckptfsAsync, ckptfsOk, mountFor } from './lib/mount'
import { checkpointSaveKill, exists, launch, listTree, procState, reseal, syscallOf, waitUntil, workdir, type Target } from './lib/restore'
import { asUser, attacker, runAs, shAs } from './lib/unprivileged'

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void
}

const mnt = mountFor(t)
const user = attacker()

/** A directory of the user's own in their home (removed at teardown). */
function userDir(tt: Teardownable): string {
  const dir = fs.mkdtempSync(path.join(user.home, 'ckptfs-sec-'))
  fs.chmodSync(dir, 0o755)
  fs.chownSync(dir, user.uid, user.gid)
  tt.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A directory only root can change, others can read: where root's own files are. */
function rootDir(tt: Teardownable): string {
  const dir = workdir(tt, 'ckptfs-sec-root-')
  fs.chmodSync(dir, 0o755)
  return dir
}

/**
 * Starts `script` as the user in `dir` (its cwd); the script ends by exec'ing sleep (or a copy), and the
 * target is ready once it sleeps. Its output file belongs to the user, as a shell of theirs
 * would have made it.
 */
async function launchAsUser(tt: Teardownable, dir: string, script: string): Promise<Target> {
  const out = path.join(dir, 'out')
  fs.writeFileSync(out, '')
  fs.chownSync(out, user.uid, user.gid)
  return launch(tt, asUser(user, ['sh', '-c', script]), {
    dir,
    ready: (tg) => {
      try {
        return /sleep$/.test(fs.readlinkSync(`/proc/${tg.pid}/exe`)) && syscallOf(tg.pid) === 230
      } catch {
        return false
      }
    },
  })
}

/** Checkpoints the target, keeps a copy of the tree (root's, outside the user's reach) and kills it. */
async function saveAndKill(tt: Teardownable, target: Target): Promise<string> {
  const saved = path.join(workdir(tt), 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  return saved
}

/** The target of fd `fd` of `pid` and what it is (owner, mode). */
function fdInfo(pid: number, fd: number): { link: string; uid: number; mode: number; data: string } {
  const p = `/proc/${pid}/fd/${fd}`
  const st = fs.statSync(p)
  return { link: fs.readlinkSync(p), uid: st.uid, mode: st.mode & 0o7777, data: fs.readFileSync(p, 'utf8') }
}

/** Expects `ckptfs restore` (with `extra` options) to fail with `expected`, leaving no process behind. */
function refused(tt: Tap, saved: string, pid: number, expected: RegExp, what: string, extra: string[] = []): void {
  const r = ckptfs('restore', saved, '--mount', mnt, ...extra)
  tt.equal(r.status, 1, `${what}: refused`)
  tt.match(r.stderr, expected, `${what}: says why, naming the fd`)
  tt.notOk(exists(pid), `${what}: no process ${pid} left`)
}

function restoredOk(saved: string, pid: number, extra: string[] = []): void {
  const r = ckptfs('restore', saved, '--mount', mnt, ...extra)
  if (r.status !== 0 || r.stdout.trim() !== String(pid)) throw new Error(`ckptfs restore exited ${r.status}: ${r.stderr.trim()}`)
}

/** Runs `fn` with fs.protected_hardlinks off (so the user may link to root's file), then puts it back. */
function withoutProtectedHardlinks<T>(fn: () => T): T {
  const knob = '/proc/sys/fs/protected_hardlinks'
  const before = fs.readFileSync(knob, 'utf8').trim()
  if (before !== '0') fs.writeFileSync(knob, '0')
  try {
    return fn()
  } finally {
    if (before !== '0') fs.writeFileSync(knob, before)
  }
}

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`
}

t.test('a file swapped for a link to a root-only file is never reopened', async (t) => {
  const dir = userDir(t)
  const root = rootDir(t)
  const secret = path.join(root, 'secret')
  fs.writeFileSync(secret, 'root only\n', { mode: 0o600 })
  const data = path.join(dir, 'data.txt')
  const target = await launchAsUser(t, dir, `printf 'mine\\n' > data.txt && exec 3<>data.txt && exec sleep 100000`)
  t.equal(fdInfo(target.pid, 3).link, data, 'the user\'s process holds data.txt at fd 3')
  const saved = await saveAndKill(t, target)
  t.equal(fs.readFileSync(path.join(saved, 'boot_id'), 'utf8'), fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8'), 'the tree records the boot that made it')
  const objref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '3', 'fd'), 'utf8').trim()
  t.equal(fs.readFileSync(path.join(saved, 'files', objref, 'uid'), 'utf8'), `${user.uid}\n`, 'the tree records the file\'s owner')
  const before = listTree(dir)

  // The symlink: the open as the user fails (root's file is 0600), with or without the option.
  shAs(user, `cd ${shQuote(dir)} && rm data.txt && ln -s ${shQuote(secret)} data.txt`)
  refused(t, saved, target.pid, new RegExp(`fd 3 \\(files/${objref}\\): open ${data}: Permission denied\\n$`), 'symlink to root\'s 0600 file')
  refused(t, saved, target.pid, new RegExp(`fd 3 \\(files/${objref}\\): open ${data}: Permission denied\\n$`), 'the same with --allow-replaced', ['--allow-replaced'])
  t.same(listTree(dir), before, 'nothing was left in the user\'s directory')

  // The hard link (protected_hardlinks forbids it by default; the attack needs it off).
  shAs(user, `rm ${shQuote(data)}`)
  withoutProtectedHardlinks(() => shAs(user, `ln ${shQuote(secret)} ${shQuote(data)}`))
  t.equal(fs.statSync(data).ino, fs.statSync(secret).ino, 'data.txt is now a hard link to root\'s file')
  refused(t, saved, target.pid, new RegExp(`fd 3 \\(files/${objref}\\): open ${data}: Permission denied\\n$`), 'hard link to root\'s 0600 file')
  refused(t, saved, target.pid, new RegExp(`fd 3 \\(files/${objref}\\): open ${data}: Permission denied\\n$`), 'the same with --allow-replaced', ['--allow-replaced'])

  // A file the user may open, but not the saved one: refused by the identity check, which
  // only the option relaxes.
  const shared = path.join(root, 'shared')
  fs.writeFileSync(shared, 'anyone\'s\n', { mode: 0o666 })
  fs.chmodSync(shared, 0o666)
  shAs(user, `rm ${shQuote(data)} && ln -s ${shQuote(shared)} ${shQuote(data)}`)
  refused(t, saved, target.pid, new RegExp(`fd 3 \\(files/${objref}\\): ${data} is not the saved file \\(owner 0:0, saved ${user.uid}:${user.gid}\\); if it was replaced on purpose, restore with --allow-replaced\\n$`), 'a root-owned file the user may write')

  // The user's own file, rewritten by an editor (a new inode, same owner and mode): the
  // identity check refuses it on this boot; the option accepts it.
  const savedMode = (parseInt(fs.readFileSync(path.join(saved, 'files', objref, 'inode_mode'), 'utf8'), 8) & 0o7777).toString(8)
  shAs(user, `cd ${shQuote(dir)} && rm data.txt && printf 'edited\\n' > data.txt.new && chmod ${savedMode} data.txt.new && mv data.txt.new data.txt`)
  // (The new file may be given the saved one's freed inode number: then its birth time tells.)
  refused(t, saved, target.pid, new RegExp(`fd 3 \\(files/${objref}\\): ${data} is not the saved file \\((device [0-9]+ inode [0-9]+, saved device [0-9]+ inode [0-9]+|${newFileWithSavedNumber})\\)`), 'the user\'s file replaced by a rename')
  restoredOk(saved, target.pid, ['--allow-replaced'])
  t.equal(fdInfo(target.pid, 3).data, 'edited\n', 'with --allow-replaced the restored process has the new data.txt')
  t.equal(fs.readFileSync(`/proc/${target.pid}/status`, 'utf8').match(/^Uid:\s+(\d+)/m)![1], String(user.uid), 'as the user')
})

/** What the stub says of a file with the saved inode number but another birth time. */
const newFileWithSavedNumber = 'inode [0-9]+ born at [0-9]+ ns, saved born at [0-9]+ ns: a new file given the saved inode number'

/**
 * As the user, in `dir`: creates files until one is given inode number `ino` (freed when the
 * saved file was removed), names it `name` with mode `mode`, and removes the others. False
 * when the filesystem did not hand the number out again.
 */
function newFileWithInode(dir: string, ino: bigint, name: string, mode: number): boolean {
  const script = `
import os, sys
d, want, name, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4], 8)
made = []
found = False
for i in range(20000):
    p = os.path.join(d, 'candidate.%d' % i)
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    ino = os.fstat(fd).st_ino
    if ino == want:
        os.write(fd, b'a new file\\n')
        os.fchmod(fd, mode)
        os.close(fd)
        os.rename(p, os.path.join(d, name))
        found = True
        break
    os.close(fd)
    made.append(p)
for p in made:
    os.unlink(p)
print('found' if found else 'not found')
`
  const r = runAs(user, ['python3', '-c', script, dir, String(ino), name, mode.toString(8)])
  if (r.status !== 0) throw new Error(`python3 as the user failed: ${r.stderr}`)
  return r.stdout.trim() === 'found'
}

t.test('a new file given the saved file\'s inode number is not the saved file', async (t) => {
  const dir = userDir(t)
  const data = path.join(dir, 'data.txt')
  const target = await launchAsUser(t, dir, `printf 'mine\\n' > data.txt && exec 3<>data.txt && exec sleep 100000`)
  const st = fs.statSync(data, { bigint: true })
  const saved = await saveAndKill(t, target)
  const objref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '3', 'fd'), 'utf8').trim()
  const btime = fs.readFileSync(path.join(saved, 'files', objref, 'btime'), 'utf8').trim()
  t.equal(btime, String(st.birthtimeNs), 'the tree records the file\'s birth time')
  if (st.birthtimeNs === 0n) return t.pass('the rest needs birth times', { skip: `${dir}'s filesystem keeps no birth time` })

  shAs(user, `rm ${shQuote(data)}`)
  if (!newFileWithInode(dir, st.ino, 'data.txt', Number(st.mode) & 0o7777)) return t.pass('the rest needs the saved inode number again', { skip: `${dir}'s filesystem did not give inode ${st.ino} to a new file` })
  const now = fs.statSync(data, { bigint: true })
  t.match({ ino: now.ino, uid: now.uid, mode: now.mode }, { ino: st.ino, uid: st.uid, mode: st.mode }, 'data.txt is a new file with the saved inode number, owner and mode')
  refused(t, saved, target.pid, new RegExp(`fd 3 \\(files/${objref}\\): ${data} is not the saved file \\(${newFileWithSavedNumber}\\); if it was replaced on purpose, restore with --allow-replaced\\n$`), 'the new file')
  restoredOk(saved, target.pid, ['--allow-replaced'])
  t.equal(fdInfo(target.pid, 3).data, 'a new file\n', 'with --allow-replaced the restored process has the new data.txt')
})

t.test('an unlinked setuid file comes back unnamed, owned by the user, and only where the user may write', async (t) => {
  const dir = userDir(t)
  const work = path.join(dir, 'work')
  fs.mkdirSync(work, { mode: 0o755 })
  fs.chownSync(work, user.uid, user.gid)
  const target = await launchAsUser(t, dir, `cd work && printf 'x' > s && chmod 4755 s && exec 4<s && rm s && cd .. && exec sleep 100000`)
  t.match(fdInfo(target.pid, 4), { link: `${path.join(work, 's')} (deleted)`, uid: user.uid, mode: 0o4755 }, 'the user\'s process holds an unlinked 04755 file of its own')
  const saved = await saveAndKill(t, target)

  // The attacker watches the directory during the restore and takes any name that appears.
  const grabbed = path.join(dir, 'grabbed')
  const grabber = `while :; do for f in ${shQuote(work)}/* ${shQuote(work)}/.[!.]*; do [ -e "$f" ] && mv "$f" ${shQuote(grabbed)}; done; done`
  const watcher = execFileSync('sh', ['-c', `${asUser(user, ['sh', '-c', grabber]).map(shQuote).join(' ')} >/dev/null 2>&1 & echo $!`], { encoding: 'utf8' }).trim()
  // inotify says "rename" when a name is created, moved in or out, or removed ("change" is a
  // write or chmod: the unnamed file's, reported with the kernel's "#INODE" placeholder).
  const names: string[] = []
  const watch = fs.watch(work, (event, name) => {
    if (event === 'rename') names.push(String(name))
  })
  try {
    restoredOk(saved, target.pid)
    await new Promise((r) => setTimeout(r, 300)) // inotify events queued during the restore
  } finally {
    watch.close()
    const pids = execFileSync('sh', ['-c', `pgrep -P ${Number(watcher)} || true`], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number)
    for (const p of [Number(watcher), ...pids]) {
      try {
        process.kill(p, 'SIGKILL')
      } catch {
        // gone already
      }
    }
  }
  t.same(names, [], 'no name ever appeared in the file\'s directory during the restore')
  t.same(fs.readdirSync(work), [], 'the directory is empty')
  t.notOk(fs.existsSync(grabbed), 'the attacker grabbed nothing')
  const fd4 = fdInfo(target.pid, 4)
  // An O_TMPFILE never had a name: /proc shows the kernel's placeholder "#INODE".
  t.match(fd4, { link: new RegExp(`^${work}/#[0-9]+ \\(deleted\\)$`), uid: user.uid, data: 'x' }, 'the restored file is unnamed, the user\'s, with its contents')
  t.equal(fd4.mode, 0o4755, 'its setuid bit is one the user set on a file of theirs')
  process.kill(target.pid, 'SIGKILL')
  await waitUntil('the restored process to end', () => !exists(target.pid))

  // A saved owner the user cannot give: refused (no root-owned setuid copy), nothing left.
  const objref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '4', 'fd'), 'utf8').trim()
  const uidFile = path.join(saved, 'files', objref, 'uid')
  fs.writeFileSync(uidFile, '0\n')
  reseal(saved) // edited on purpose: the restore judges the owner, not values_crc32c
  const before = listTree(dir)
  refused(t, saved, target.pid, new RegExp(`fd 4 \\(files/${objref}\\): give the recreated ${path.join(work, 's')} its saved owner 0:${user.gid}: Operation not permitted\\n$`), 'a root-owned copy')
  fs.writeFileSync(uidFile, `${user.uid}\n`)
  reseal(saved)
  t.same(listTree(dir), before, 'nothing was left behind')

  // A directory the user can no longer write to: nothing is created there.
  fs.chownSync(work, 0, 0)
  refused(t, saved, target.pid, new RegExp(`fd 4 \\(files/${objref}\\): recreate ${path.join(work, 's')} as an unnamed file in ${work}: Permission denied\\n$`), 'a directory only root may write')
  t.same(fs.readdirSync(work), [], 'nothing was created in it')
})

t.test('mapped files and the cwd: the saved file, opened as the user; allow-replaced written to done', async (t) => {
  const dir = userDir(t)
  const program = path.join(dir, 'mysleep')
  const sub = path.join(dir, 'sub')
  const target = await launchAsUser(t, dir, `cp /bin/sleep mysleep && mkdir sub && cd sub && exec ../mysleep 100000`)
  const saved = await saveAndKill(t, target)

  // An upgrade replaced the program (same owner and mode, a new inode): its mappings refuse it.
  shAs(user, `cd ${shQuote(dir)} && cp mysleep mysleep.new && mv mysleep.new mysleep`)
  refused(t, saved, target.pid, new RegExp(`task-${target.pid}/memory/vmas/[0-9a-f]+-[0-9a-f]+: ${program} is not the file that was mapped \\(device [0-9a-f:]+ inode [0-9]+, saved [0-9a-f:]+ inode [0-9]+\\); if it was replaced on purpose, restore with --allow-replaced\\n$`), 'a replaced program')

  // Accepted when the user says so, through the mount: allow-replaced written to done.
  const area = path.join(mnt, 'restore', `sec-${target.pid}`)
  execFileSync('cp', ['-a', saved, area])
  t.teardown(() => fs.rmSync(area, { recursive: true, force: true }))
  fs.writeFileSync(path.join(area, 'done'), 'allow-replaced\n')
  t.equal(fs.readFileSync(path.join(area, 'status'), 'utf8'), `restored ${target.pid}\n`, 'echo allow-replaced > done restores it')
  t.equal(fs.readlinkSync(`/proc/${target.pid}/cwd`), sub, 'in its cwd')
  process.kill(target.pid, 'SIGKILL')
  await waitUntil('the restored process to end', () => !exists(target.pid))

  // A cwd the user can no longer enter: refused, even with the option.
  fs.chownSync(sub, 0, 0)
  fs.chmodSync(sub, 0o700)
  // The restorer does not enter it for the process either: the user's copy could name any directory.
  refused(t, saved, target.pid, new RegExp(`chdir ${sub} as the task \\(fsuid ${user.uid}, fsgid ${user.gid}\\): EACCES \\(13\\); the restorer does not enter it in the task's place: the checkpoint is not stored by root alone\\n$`), 'a cwd only root may enter', ['--allow-replaced'])
})

t.test('a tree saved before owners were recorded is refused, naming the file', async (t) => {
  const dir = userDir(t)
  const target = await launchAsUser(t, dir, `exec 3<>data.txt && exec sleep 100000`)
  const saved = await saveAndKill(t, target)
  const objref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '3', 'fd'), 'utf8').trim()
  fs.rmSync(path.join(saved, 'files', objref, 'uid'))
  refused(t, saved, target.pid, new RegExp(`files/${objref}/uid: missing: this tree was saved before ckptfs recorded file owners`), 'no uid file')
})

t.test("a saved file the user swaps for a link while root restores is never opened: root's fifo keeps its bytes", async (t) => {
  // The user's own shell starts the target and does not reap it until told: the killed
  // original stays a zombie holding the PID, so root's restore waits, after reading the tree,
  // and the user swaps a file of it in that window.
  const dir = userDir(t)
  // (Not a shell: one reaps every child while it waits for a command of its own.)
  const target = `exec >out 2>&1 </dev/null; printf unlinked > gone && exec 4<gone && rm gone && exec sleep 100000`
  const keeper = `import os, subprocess, time\nopen('child', 'w').write(str(subprocess.Popen(['sh', '-c', ${JSON.stringify(target)}]).pid))\nwhile not os.path.exists('reap'): time.sleep(0.05)`
  const [file, ...args] = asUser(user, ['python3', '-c', keeper])
  const parent = spawn(file, args, { cwd: dir, stdio: 'ignore' })
  t.teardown(() => {
    fs.writeFileSync(path.join(dir, 'reap'), '')
    parent.kill('SIGKILL')
  })
  await waitUntil('the user\'s target to sleep', () => {
    const pid = Number(fs.existsSync(path.join(dir, 'child')) && fs.readFileSync(path.join(dir, 'child'), 'utf8'))
    return pid > 0 && syscallOf(pid) === 230 && fs.existsSync(`/proc/${pid}/fd/4`)
  })
  const pid = Number(fs.readFileSync(path.join(dir, 'child'), 'utf8'))
  const checkpoint = ckptfsOk('checkpoint', String(pid), '--mount', mnt)
  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', checkpoint, saved]) // the user's, as the mount gives a task's files to its owner
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill\n')
  await waitUntil(`PID ${pid} to be a zombie`, () => procState(pid) === 'Z')
  const objref = fs.readFileSync(path.join(saved, `task-${pid}`, 'fds', '4', 'fd'), 'utf8').trim()
  const contents = path.join(saved, 'files', objref, 'contents')

  // Root's fifo, with bytes in it: opened by root for the user, they would be gone (or, with no
  // writer, root's restore would wait in open for ever; a device would be opened as root).
  const fifo = path.join(rootDir(t), 'fifo')
  execFileSync('mkfifo', ['-m', '0600', fifo])
  const held = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK)
  t.teardown(() => fs.closeSync(held))
  fs.writeSync(held, "root's bytes\n")

  let swapped = false
  const r = await ckptfsAsync(['restore', saved, '--mount', mnt], {
    onStderr: (all) => {
      if (swapped || !/waiting up to 10 s/.test(all)) return
      swapped = true
      shAs(user, `chmod u+w ${shQuote(path.dirname(contents))} && rm ${shQuote(contents)} && ln -s ${shQuote(fifo)} ${shQuote(contents)} && touch ${shQuote(path.join(dir, 'reap'))}`)
    },
  })
  t.ok(swapped, 'the user swapped the file while the restore waited for the PID')
  t.equal(r.status, 1, 'refused')
  t.match(r.stderr, new RegExp(`${contents.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: is a symbolic link now, not the regular file the walk of the saved checkpoint read: refused`), 'naming the file and what it is now')
  t.notOk(exists(pid), 'no process left')
  const left = Buffer.alloc(64)
  t.equal(left.toString('utf8', 0, fs.readSync(held, left)), "root's bytes\n", "root's fifo was never opened: its bytes are all there")
})
