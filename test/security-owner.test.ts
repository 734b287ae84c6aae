// Issue 12: a checkpoint stored in a user's files comes back only as that user. A saved tree
// or image is code run with the credentials it names; a user who owns a copy of their own
// checkpoint can rewrite those credentials. Replayed as the unprivileged user
// (test/lib/unprivileged.ts): root checkpoints the user's process and copies it into the
// user's directory; the user edits creds/ (in a tree, an image made with the project's own
// converter, a tar), and root's `ckptfs restore` must refuse it, naming the file and the file
// whose owner decided, and leave nothing behind. What root alone stored restores as before.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { smallCrc32c } from '../lib/checksum'
import { storedByOwners, storedBySnapshot } from '../lib/restore/owner'
import { readSnapshot } from '../lib/restore/snapshot'
import { ckptfs, ckptfsOk, cliShellWords, mountFor } from './lib/mount'
import { checkpointSaveKill, exists, launch, listTree, waitUntil, workdir } from './lib/restore'
import { buildTarget, repo } from './lib/targets'
import { attacker, launchAs, runAs, shAs } from './lib/unprivileged'

const small = buildTarget('restore_small', ['-static'])
const user = attacker()
const RULE = "a checkpoint stored in a user's files comes back only as that user"
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** The real, effective, saved and filesystem uids of a running process, from /proc. */
function uidsOf(pid: number): number[] {
  const line = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'))!
  return line.split(/\s+/).slice(1, 5).map(Number)
}

async function killAndWait(pid: number): Promise<void> {
  process.kill(pid, 'SIGKILL')
  await waitUntil(`PID ${pid} to be gone`, () => !exists(pid))
}

t.test("a user's checkpoint with edited credentials is refused; unchanged it comes back as the user", async (t) => {
  const mnt = mountFor(t)
  const { target, dir } = await launchAs(t, user, small)
  const pid = target.pid
  t.same(uidsOf(pid), [user.uid, user.uid, user.uid, user.uid], `the target ${pid} runs as ${user.name}`)

  // Root checkpoints it and copies it (tree and image) into the user's directory: the copy is
  // the user's, as the mount gives a task's files to its owner.
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, pid, saved, { image: true })
  const foreign = listTree(saved).filter((p) => fs.lstatSync(path.join(saved, p)).uid !== user.uid)
  t.same(foreign, [], `every entry of the copy belongs to ${user.name}`)
  t.equal(fs.statSync(`${saved}.image`).uid, user.uid, 'and so does the image')
  const task = `task-${pid}`

  const restoredAsUser = async (t: Test, args: string[], what: string) => {
    const r = ckptfs('restore', ...args)
    t.equal(r.status, 0, `${what}: restored (${r.stderr.trim()})`)
    t.equal(r.stdout.trim(), String(pid), `${what}: with its PID`)
    if (r.status !== 0) return
    t.same(uidsOf(pid), [user.uid, user.uid, user.uid, user.uid], `${what}: the process runs as ${user.name}, not root`)
    await killAndWait(pid)
  }
  const refused = (t: Test, args: string[], file: string, value: string, decider: string, what: string) => {
    const r = ckptfs('restore', ...args)
    t.equal(r.status, 1, `${what}: refused (stdout ${JSON.stringify(r.stdout.trim())})`)
    const expected = `${file}: ${value}, but ${decider} is owned by uid ${user.uid} (${user.name}): ${RULE}`
    t.match(r.stderr.trim(), new RegExp(`^ckptfs restore: ${escape(expected)}$`), `${what}: ${r.stderr.trim()}`)
    t.notOk(exists(pid), `${what}: no process ${pid} is left`)
    t.same(fs.readdirSync(path.join(mnt, 'restore')), [], `${what}: nothing is left in restore/`)
  }

  t.test('unchanged, root restores it: the process comes back as the user', async (t) => {
    await restoredAsUser(t, [saved, '--no-mount'], 'the tree, --no-mount')
    await restoredAsUser(t, [saved, '--mount', mnt], 'the tree, --mount')
    await restoredAsUser(t, [`${saved}.image`, '--no-mount'], 'the image, --no-mount')
    await restoredAsUser(t, [`${saved}.image`, '--mount', mnt], 'the image, --mount')
  })

  // The user's copy of the tree, writable by them (cp -a keeps the read-only modes).
  const edited = (name: string, script: string): string => {
    const tree = path.join(dir, name)
    shAs(user, `cp -a '${saved}' '${tree}' && chmod -R u+w '${tree}' && cd '${tree}/${task}/creds' && ${script}`)
    // The user reseals their edit (ckptfs seal, as they may): values_crc32c detects damage,
    // not tampering, and what stops them is the owner check.
    shAs(user, `${cliShellWords} seal '${tree}' >/dev/null`)
    return tree
  }

  t.test('the user sets euid 0 in the tree', async (t) => {
    const tree = edited('euid0', 'echo 0 > euid')
    for (const how of [['--no-mount'], ['--mount', mnt]]) {
      refused(t, [tree, ...how], `${tree}/${task}/creds/euid`, '0', tree, `ckptfs restore TREE ${how[0]}`)
    }
  })

  t.test('the user sets every uid to 0 and every capability', async (t) => {
    const full = fs.readFileSync(`/proc/self/status`, 'utf8').match(/^CapBnd:\s*([0-9a-f]+)$/m)![1]
    const tree = edited('root', `for f in uid euid suid fsuid gid egid sgid fsgid; do echo 0 > $f; done; for f in cap_permitted cap_effective cap_inheritable cap_ambient; do echo 0x${full} > $f; done`)
    refused(t, [tree, '--no-mount'], `${tree}/${task}/creds/uid`, '0', tree, 'uids and capabilities')
  })

  t.test('the user keeps their uids but takes capabilities, or a group they are not in', async (t) => {
    const full = fs.readFileSync(`/proc/self/status`, 'utf8').match(/^CapBnd:\s*([0-9a-f]+)$/m)![1]
    const caps = edited('caps', `echo 0x${full} > cap_permitted && echo 0x${full} > cap_effective`)
    refused(t, [caps, '--no-mount'], `${caps}/${task}/creds/cap_permitted`, `0x${BigInt(`0x${full}`).toString(16)} (capabilities)`, caps, 'capabilities')
    const gid = edited('gid', 'echo 0 > egid')
    refused(t, [gid, '--mount', mnt], `${gid}/${task}/creds/egid`, `0 (not a group of uid ${user.uid})`, gid, 'egid 0')
    const securebits = edited('securebits', 'echo 0x4 > securebits')
    refused(t, [securebits, '--no-mount'], `${securebits}/${task}/creds/securebits`, "0x4 (SECBIT_NO_SETUID_FIXUP: a set-user-ID program would keep root's capabilities after it drops root)", securebits, 'SECBIT_NO_SETUID_FIXUP')
  })

  t.test('the user raises a hard limit above the restorer\'s own (a real-time priority)', async (t) => {
    // The command (the restorer) inherits this process's limits.
    const own = Number(/^Max realtime priority\s+\S+\s+(\d+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'))![1])
    const raised = own + 1
    const tree = edited('rtprio', `cd ../rlimits/rtprio && echo ${raised} > soft && echo ${raised} > hard`)
    const r = ckptfs('restore', tree, '--no-mount')
    t.equal(r.status, 1, 'refused')
    const expected = `${tree}/${task}/rlimits/rtprio/hard: ${raised}, above the restorer's own ${own}, but ${tree} is owned by uid ${user.uid} (${user.name}): a checkpoint stored in a user's files gets no limit its user could not have raised`
    t.equal(r.stderr.trim(), `ckptfs restore: ${expected}`, 'naming the limit and the owner')
    t.notOk(exists(pid), 'no process is left')
  })

  t.test('the user adds a timer on an alarm clock (CAP_WAKE_ALARM: wakes a suspended machine)', async (t) => {
    // The task makes its POSIX timers again while it still holds the restorer's capabilities.
    const timer = `cd ../timers/posix && mkdir 0 && cd 0 && echo 14 > signal && echo 0x0 > sigev_value && echo signal/pid.${pid} > notify && echo 8 > clockid && echo 1000000000 > value_ns && echo 0 > interval_ns && echo 0 > overrun`
    const tree = edited('alarm', timer)
    const r = ckptfs('restore', tree, '--no-mount')
    t.equal(r.status, 1, 'refused')
    t.equal(r.stderr.trim(), `ckptfs restore: ${tree}/${task}/timers/posix/0/clockid: 8 (CLOCK_REALTIME_ALARM), but ${tree} is owned by uid ${user.uid} (${user.name}): a timer on an alarm clock needs CAP_WAKE_ALARM, and a checkpoint stored in a user's files is restored only with what that user could do`, 'naming the timer and the owner')
    t.notOk(exists(pid), 'no process is left')
  })

  t.test('the user gives their process a root directory of their own (a chroot)', async (t) => {
    // A set-user-ID program run from a cwd outside it would load the user's ld.so as root.
    const tree = edited('chroot', `cd .. && rm -f root && echo '${dir}' > root`)
    const r = ckptfs('restore', tree, '--no-mount')
    t.equal(r.status, 1, 'refused')
    t.equal(r.stderr.trim(), `ckptfs restore: ${tree}/${task}/root: ${dir}, but ${tree} is owned by uid ${user.uid} (${user.name}): a checkpoint stored in a user's files comes back with / as its root (a user cannot chroot)`, 'naming the root and the owner')
    t.notOk(exists(pid), 'no process is left')
  })

  t.test('an image with euid 0, made by the user with the project converter', async (t) => {
    const tree = edited('image-src', 'echo 0 > euid')
    const image = path.join(dir, 'evil.image')
    const convert = `require(${JSON.stringify(path.join(repo, 'dist', 'lib', 'image', 'convert.js'))}).treeToImage(process.argv[1], process.argv[2]).catch((e) => { console.error(e.message); process.exit(1) })`
    const made = runAs(user, ['/usr/bin/node', '-e', convert, tree, image], { cwd: dir })
    t.equal(made.status, 0, `the user made ${image}: ${made.stderr.trim()}`)
    t.equal(fs.statSync(image).uid, user.uid, 'the image is the user\'s')
    for (const how of [['--no-mount'], ['--mount', mnt]]) {
      refused(t, [image, ...how], `${image}: ${task}/creds/euid`, '0', image, `ckptfs restore IMAGE ${how[0]}`)
    }
    // A directory holding only that image: the directory and the image are the user's.
    const holder = path.join(dir, 'holder')
    shAs(user, `mkdir '${holder}' && cp '${image}' '${holder}/image'`)
    refused(t, [holder, '--no-mount'], `${holder}: ${task}/creds/euid`, '0', holder, 'a directory holding the image, --no-mount')
    // With a mount too the command restores by itself (issue 16): the same words as --no-mount.
    refused(t, [holder, '--mount', mnt], `${holder}: ${task}/creds/euid`, '0', holder, 'a directory holding the image, --mount')
  })

  t.test('a tar the user made of an edited tree', async (t) => {
    edited('tarred', 'echo 0 > euid && echo 0 > uid')
    const tar = path.join(dir, 'evil.tar')
    shAs(user, `tar -C '${dir}' -cf '${tar}' tarred`)
    t.equal(fs.statSync(tar).uid, user.uid, 'the tar is the user\'s')
    for (const how of [['--no-mount'], ['--mount', mnt]]) {
      refused(t, [tar, ...how], `${tar}:tarred/${task}/creds/uid`, '0', tar, `ckptfs restore TAR ${how[0]}`)
    }
  })
})

t.test("what root alone stored restores with root's credentials; a file others may write is refused", async (t) => {
  const mnt = mountFor(t)
  const dir = workdir(t)
  const target = await launch(t, [small, dir], { dir })
  const pid = target.pid
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, pid, saved, { image: true })
  t.same(listTree(saved).filter((p) => fs.lstatSync(path.join(saved, p)).uid !== 0), [], 'the copy is root\'s')

  t.equal(ckptfsOk('restore', saved, '--no-mount'), String(pid), 'the root-owned tree restores')
  t.same(uidsOf(pid), [0, 0, 0, 0], 'as root, as it was saved')
  await killAndWait(pid)
  t.equal(ckptfsOk('restore', `${saved}.image`, '--mount', mnt), String(pid), 'the root-owned image restores through the mount')
  await killAndWait(pid)

  // Root's own copy, in a directory of the user's: the user could swap it for another
  // between the check and the read, so it comes back only as the user.
  const users = path.join(dir, 'users')
  fs.mkdirSync(users, { mode: 0o755 })
  fs.chownSync(users, user.uid, user.gid)
  execFileSync('cp', ['-a', saved, path.join(users, 'saved')])
  for (const how of [['--no-mount'], ['--mount', mnt]]) {
    const r = ckptfs('restore', path.join(users, 'saved'), ...how)
    t.equal(r.status, 1, `root's tree in the user's directory, ${how[0]}: refused`)
    t.equal(r.stderr.trim(), `ckptfs restore: ${users}/saved/task-${pid}/creds/uid: 0, but ${users} is owned by uid ${user.uid} (${user.name}): ${RULE}`, `${how[0]}: names the directory that decided`)
    t.notOk(exists(pid), `${how[0]}: no process ${pid}`)
  }

  const comm = path.join(saved, `task-${pid}`, 'comm')
  for (const mode of [0o464, 0o446]) {
    fs.chmodSync(comm, mode)
    for (const how of [['--no-mount'], ['--mount', mnt]]) {
      const r = ckptfs('restore', saved, ...how)
      const what = `comm mode 0${mode.toString(8)}, ${how[0]}`
      t.equal(r.status, 1, `${what}: refused`)
      t.equal(r.stderr.trim(), `ckptfs restore: ${comm}: writable by others (mode 0${mode.toString(8)}): anyone could have changed it; a restore does not trust it`, `${what}: names the file`)
      t.notOk(exists(pid), `${what}: no process ${pid}`)
      t.same(fs.readdirSync(path.join(mnt, 'restore')), [], `${what}: nothing left in restore/`)
    }
  }
  fs.chmodSync(comm, 0o444)
  fs.chmodSync(`${saved}.image`, 0o602)
  const r = ckptfs('restore', `${saved}.image`, '--no-mount')
  t.equal(r.status, 1, 'an other-writable image is refused')
  t.match(r.stderr, `${saved}.image: writable by others (mode 0602)`)
  t.notOk(exists(pid), 'and no process is left')
})

t.test('owners decide: root, one user, or refused (two users; a group-writable directory)', async (t) => {
  const dir = workdir(t)
  fs.chmodSync(dir, 0o755)
  const tree = path.join(dir, 'tree')
  fs.mkdirSync(path.join(tree, 'sub'), { recursive: true, mode: 0o755 })
  fs.writeFileSync(path.join(tree, 'sub', 'a'), 'a', { mode: 0o644 })
  fs.writeFileSync(path.join(tree, 'b'), 'b', { mode: 0o644 })
  // The lstat walk (images, tar files) and the one-walk read of a tree (snapshot.ts) give one verdict.
  const verdicts = async (): Promise<unknown[]> => {
    const of = async (check: () => unknown | Promise<unknown>) => {
      try {
        return await check()
      } catch (err) {
        return { refused: (err as Error).message }
      }
    }
    return [await of(() => storedByOwners(tree)), await of(async () => storedBySnapshot(tree, await readSnapshot(tree)))]
  }
  const same = async (want: unknown, what: string) => t.same(await verdicts(), [want, want], what)
  await same({ kind: 'root', reason: 'owned by root' }, 'all root\'s')
  // The walk's count lets the owner check skip the records of a tree root alone wrote: it must count every entry that matters, at any depth.
  const counted = async () => (await readSnapshot(tree)).userOrWritable
  t.equal(await counted(), 0, 'all root\'s: no entry for the owner check to look at')
  fs.symlinkSync('/etc/passwd', path.join(tree, 'link'))
  await same({ kind: 'root', reason: 'owned by root' }, 'a root symlink (mode 0777) is not "writable by others"')
  fs.lchownSync(path.join(tree, 'link'), user.uid, user.gid)
  await same({ kind: 'user', uid: user.uid, file: path.join(tree, 'link') }, 'a symlink counts by its own owner')
  fs.rmSync(path.join(tree, 'link'))
  fs.chownSync(path.join(tree, 'sub', 'a'), user.uid, user.gid)
  await same({ kind: 'user', uid: user.uid, file: path.join(tree, 'sub', 'a') }, 'one file of the user\'s decides')
  t.equal(await counted(), 1, 'the user\'s file below sub/ is counted')
  const other = Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim())
  fs.chownSync(path.join(tree, 'b'), other, other)
  const [twoUsers, twoUsersSnapshot] = await verdicts()
  t.match(twoUsers, { refused: /owned by uid \d+ \(.*\), but .* by uid \d+ .*: a saved checkpoint is stored by root or by one user$/ }, 'two users: refused')
  t.same(twoUsersSnapshot, twoUsers, 'two users: refused alike, naming the same files')
  fs.chownSync(path.join(tree, 'b'), 0, 0)
  fs.chmodSync(path.join(tree, 'sub'), 0o775)
  await same({ refused: `${path.join(tree, 'sub')}: writable by others (mode 0775): anyone could have changed it; a restore does not trust it` }, 'a group-writable directory: refused')
  t.equal(await counted(), 2, 'the group-writable directory is counted too')
  fs.chmodSync(path.join(tree, 'sub'), 0o755)
  // What the walk read is what the loaders get, and what it must not open it records only:
  // a symbolic link to a directory is not followed, a fifo is not opened (it would block).
  fs.symlinkSync(path.join(tree, 'sub'), path.join(tree, 'dirlink'))
  execFileSync('mkfifo', [path.join(tree, 'fifo')])
  const { root } = await readSnapshot(tree)
  t.same([...root.list()].map(([n, e]) => [n, e.kind, e.symlink]).sort(), [['b', 'file', false], ['dirlink', 'other', true], ['fifo', 'other', false], ['sub', 'dir', false]], 'kinds as lstat says them')
  const crc = { crc32c: 0 }
  t.equal(root.dir('sub').text('a', 100, crc), 'a', 'a file\'s bytes')
  t.equal(crc.crc32c, smallCrc32c(Buffer.from('a')), 'and their CRC32C')
})
