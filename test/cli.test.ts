// The command line (SPEC "Command line"): help and usage, which mount a command uses when
// --mount is left out, the answer of each checkpoint request reaching its own caller, one
// restore per restore/NAME, restores from a tar and from stdin, and errors that read well.
// The machine is shared: other ckptfs mounts may exist (of root too) while this runs, so the
// commands that leave out --mount run in a private mount namespace that shows only the
// mounts the test made.

import { execFileSync, spawn, spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { serversOf } from '../mount/cli'
import { cliCommand, ckptfs, ckptfsAsync, ckptfsOk, ckptfsWith, distDir, mountFor, userEnv, userNode, type CliResult } from './lib/mount'
import { checkpointSaveKill, exists, launch, waitUntil, workdir, type Target } from './lib/restore'
import { buildTarget } from './lib/targets'
import { attacker } from './lib/unprivileged'

const counter = buildTarget('counter')
// One server for the tests that need only a working mount of their own choosing (--mount):
// each uses its own target and leaves restore/ as it found it. Those about which mounts a
// command sees, or a dead server, make their own.
const shared = mountFor(t)

/** A counter writing to DIR/count.log: restorable (its stdio are /dev/null and a file). */
async function counterTarget(t: Test, dir = workdir(t)): Promise<Target> {
  const log = path.join(dir, 'count.log')
  return launch(t, [counter, log, '20'], { dir, ready: () => fs.existsSync(log) && fs.readFileSync(log, 'utf8').length > 0 })
}

/**
 * ckptfs in a private mount namespace in which every ckptfs mount other than `keep` is
 * unmounted: what the command sees when the caller's ckptfs mounts are exactly `keep` (plus
 * other users' mounts, which are kept too when listed). Unmounting there changes nothing
 * outside.
 */
function ckptfsSeeing(keep: string[], ...args: string[]): CliResult {
  const script = `grep ' - fuse.ckptfs ' /proc/self/mountinfo | cut -d' ' -f5 | while read -r m; do
    m=$(printf '%b' "$m")
    case " $KEEP " in *" $m "*) ;; *) umount -l "$m" ;; esac
  done
  exec "$@"`
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', ...cliCommand(...args).flat()], {
    encoding: 'utf8', timeout: 120_000, env: { ...userEnv, KEEP: keep.join(' ') },
  })
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr }
}

/**
 * A ckptfs mount owned by another user (uid in fuse's user_id), made by root with mount(8)
 * on a /dev/fuse it closes at once: a mount with no server, as another user's mount looks to
 * the caller (unusable). Removed at teardown.
 */
function foreignMount(t: Test, uid: number): string {
  const mnt = path.join(workdir(t), 'foreign')
  fs.mkdirSync(mnt)
  execFileSync('sh', ['-c', `mount -i -t fuse.ckptfs -o fd=3,rootmode=40000,user_id=${uid},group_id=${uid} ckptfs "$0" 3<>/dev/fuse`, mnt])
  t.teardown(() => {
    spawnSync('umount', ['-l', mnt])
  })
  return mnt
}

/** The modules (under dist/ or node_modules/) that `ckptfs ARGS` had loaded when it ended. */
function modulesLoadedBy(t: Test, ...args: string[]): string[] {
  const list = path.join(workdir(t), 'loaded.json')
  const script = `const cli = require(${JSON.stringify(path.join(distDir, 'mount', 'cli.js'))})
cli.main(${JSON.stringify(args)}).then(() => require('fs').writeFileSync(${JSON.stringify(list)}, JSON.stringify(Object.keys(require.cache))))`
  const r = spawnSync(...userNode('-e', script), { encoding: 'utf8', env: userEnv, timeout: 120_000 })
  t.equal(r.status, 0, `ckptfs ${args.join(' ')} ran (${r.stderr.trim()})`)
  return (JSON.parse(fs.readFileSync(list, 'utf8')) as string[]).map((m) => path.relative(path.dirname(distDir), m))
}

t.test('a command loads only what it needs: --version, help and umount start without fuse-native or the restore code', async (t) => {
  const mnt = mountFor(t)
  for (const args of [['--version'], ['help', 'restore'], ['umount', mnt]]) {
    const heavy = modulesLoadedBy(t, ...args).filter((m) => /fuse-native|protobufjs|dist\/lib\/(restore|image|task|files)\/|dist\/mount\/server/.test(m))
    t.same(heavy, [], `ckptfs ${args.join(' ')}: none of the server's or the restore's modules`)
  }
  t.notOk(fs.readFileSync('/proc/mounts', 'utf8').includes(` ${mnt} `), 'and umount did unmount')
})

t.test('help goes to stdout with exit 0; usage errors to stderr with exit 2', async (t) => {
  for (const args of [['--help'], ['-h'], ['help']]) {
    const r = ckptfs(...args)
    t.equal(r.status, 0, `${args.join(' ')}: exit 0`)
    t.match(r.stdout, /^usage:\n {2}ckptfs mount MNT/, `${args.join(' ')}: usage on stdout`)
    t.equal(r.stderr, '', `${args.join(' ')}: nothing on stderr`)
  }
  for (const args of [['restore', '--help'], ['restore', '-h'], ['help', 'restore'], ['restore', 'x', '--help']]) {
    const r = ckptfs(...args)
    t.equal(r.status, 0, `${args.join(' ')}: exit 0`)
    t.match(r.stdout, /^usage: ckptfs restore PATH\|- /, `${args.join(' ')}: the command's usage on stdout`)
    t.equal(r.stderr, '')
  }
  const version = ckptfs('--version')
  t.equal(version.status, 0)
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }
  t.equal(version.stdout, `ckptfs ${pkg.version}\n`, '--version prints the version')
  for (const args of [[], ['frobnicate'], ['checkpoint'], ['checkpoint', 'abc'], ['checkpoint', '12', '-x'], ['restore', 'a', '--bogus'], ['help', 'frobnicate'], ['restore', 'a', '--mount', 'm', '--no-mount']]) {
    const r = ckptfs(...args)
    t.equal(r.status, 2, `${JSON.stringify(args)}: exit 2`)
    t.equal(r.stdout, '', `${JSON.stringify(args)}: nothing on stdout`)
    t.match(r.stderr, /usage/, `${JSON.stringify(args)}: usage on stderr`)
  }
})

t.test('--mount left out: only the caller\'s own mounts count', async (t) => {
  const mnt = mountFor(t)
  const foreign = foreignMount(t, attacker().uid)
  const target = await counterTarget(t)

  // The caller's one mount, with another user's mount present: that one is not counted.
  const r = ckptfsSeeing([mnt, foreign], 'checkpoint', String(target.pid))
  t.equal(r.status, 0, `checkpoint without --mount: ${r.stderr}`)
  t.equal(r.stdout, path.join(mnt, 'checkpoint-1') + '\n', 'it used the caller\'s mount')
  fs.writeFileSync(path.join(mnt, 'checkpoint-1', 'done'), '1')

  const refused = ckptfs('checkpoint', String(target.pid), '--mount', foreign)
  t.equal(refused.status, 1)
  t.match(refused.stderr, new RegExp(`${foreign} is the ckptfs mount of uid ${attacker().uid}: only its owner can use it`), 'another user\'s mount is named as such')

  // A second mount of the caller's own: it must choose.
  const second = mountFor(t)
  const two = ckptfsSeeing([mnt, second, foreign], 'checkpoint', String(target.pid))
  t.equal(two.status, 1)
  t.equal(two.stderr, `ckptfs checkpoint: you have 2 ckptfs mounts (${[mnt, second].join(', ')}): choose one with --mount MNT\n`)

  const none = ckptfsSeeing([foreign], 'checkpoint', String(target.pid))
  t.equal(none.status, 1)
  t.match(none.stderr, /you have no ckptfs mount: run `ckptfs mount MNT` first/)
  t.ok(exists(target.pid) && !fs.existsSync(path.join(mnt, 'checkpoint-2')), 'nothing was checkpointed by the refused commands')
})

t.test('a mount whose server is gone is named as such', async (t) => {
  const mnt = mountFor(t)
  const target = await counterTarget(t)
  const servers = serversOf(mnt)
  t.equal(servers.length, 1, 'the server of our mount')
  process.kill(servers[0], 'SIGKILL')
  await waitUntil('the server to be gone', () => !exists(servers[0]))
  for (const args of [['checkpoint', String(target.pid)], ['restore', path.join(target.dir, 'nothing')]]) {
    const r = ckptfs(...args, '--mount', mnt)
    t.equal(r.status, 1)
    t.equal(r.stderr, `ckptfs ${args[0]}: the server of the ckptfs mount ${mnt} is gone (it was killed or crashed): \`ckptfs umount ${mnt}\` cleans it up\n`)
  }
  ckptfsOk('umount', mnt)
})

t.test('two checkpoint requests at once: each caller gets its own answer', async (t) => {
  const mnt = shared
  const target = await counterTarget(t)
  const byPid = path.join(mnt, 'by-pid', String(target.pid))
  for (let round = 1; round <= 8; round++) {
    const results = await Promise.all([0, 1].map(() => ckptfsAsync(['checkpoint', String(target.pid), '--mount', mnt])))
    const winners = results.filter((r) => r.status === 0)
    const losers = results.filter((r) => r.status !== 0)
    t.equal(winners.length, 1, `round ${round}: one request wins`)
    t.equal(losers.length, 1, `round ${round}: one is refused`)
    if (winners.length !== 1 || losers.length !== 1) {
      t.comment(JSON.stringify(results))
      break
    }
    const dir = winners[0].stdout.trim()
    const name = path.basename(dir)
    t.match(dir, new RegExp(`^${mnt}/checkpoint-[0-9]+$`), `round ${round}: the winner prints its checkpoint`)
    t.equal(winners[0].stderr, '')
    t.equal(losers[0].status, 1)
    t.equal(losers[0].stdout, '')
    t.equal(losers[0].stderr, `ckptfs checkpoint: process ${target.pid} is frozen by ${name} already\n`, `round ${round}: the loser says why`)
    t.equal(fs.readFileSync(byPid, 'utf8'), `${name}\n`, `round ${round}: by-pid names the open checkpoint`)
    fs.writeFileSync(path.join(dir, 'done'), '1')
    t.equal(fs.readFileSync(byPid, 'utf8'), `ended: ${name}\n`, `round ${round}: and says it ended after done`)
  }

  // The shell way: a refused request fails the write with EBUSY and leaves by-pid alone.
  const open = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  const again = spawnSync('bash', ['-c', `echo ${target.pid} > ${mnt}/checkpoint`], { encoding: 'utf8' })
  t.not(again.status, 0)
  t.match(again.stderr, /Device or resource busy/, 'EBUSY, not an I/O error')
  t.equal(fs.readFileSync(byPid, 'utf8'), `${path.basename(open)}\n`, 'by-pid still names the open checkpoint')
  fs.writeFileSync(path.join(open, 'done'), '1')
  t.equal(fs.readFileSync(byPid, 'utf8'), `ended: ${path.basename(open)}\n`, 'and goes back to ended once it ends')
})

t.test('errors that read well: PID 1, no such process, empty problems', async (t) => {
  const mnt = shared
  const init = ckptfs('checkpoint', '1', '--mount', mnt)
  t.equal(init.status, 1)
  t.equal(init.stderr, 'ckptfs checkpoint: process 1 is init: it cannot be checkpointed\n')
  const gone = spawnSync('bash', ['-c', `echo 4194305 > ${mnt}/checkpoint`], { encoding: 'utf8' })
  t.match(gone.stderr, /No such process/, 'a PID that does not exist: ESRCH')

  const target = await counterTarget(t)
  const dir = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  t.equal(fs.statSync(path.join(dir, 'problems')).size, 0, 'no problem: problems is empty in stat')
  t.equal(fs.readFileSync(path.join(dir, 'problems'), 'utf8'), '', 'and in read (no lone newline)')
  fs.writeFileSync(path.join(dir, 'done'), '1')
})

t.test('two done writes to one restore/NAME: the restored PID stays in status', async (t) => {
  const mnt = shared
  const target = await counterTarget(t)
  const saved = path.join(target.dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const area = path.join(mnt, 'restore', 'twice')
  execFileSync('cp', ['-a', saved, area])
  // The shared mount's restore/ is left as found (the process restored from it is killed by launch's teardown).
  t.teardown(() => fs.rmSync(area, { recursive: true, force: true }))
  const writes = await Promise.all([0, 1].map(() => new Promise<{ status: number | null; stderr: string }>((resolve) => {
    const sh = spawn('bash', ['-c', `echo 1 > ${area}/done`], { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    sh.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c))
    sh.on('close', (status) => resolve({ status, stderr }))
  })))
  t.equal(writes.filter((w) => w.status === 0).length, 1, 'one write restores')
  t.match(writes.find((w) => w.status !== 0)?.stderr ?? '', /Device or resource busy/, 'the other is refused with EBUSY')
  t.equal(fs.readFileSync(path.join(area, 'status'), 'utf8'), `restored ${target.pid}\n`, 'status keeps the restored PID')
  const late = spawnSync('bash', ['-c', `echo 1 > ${area}/done`], { encoding: 'utf8' })
  t.not(late.status, 0, 'a later done is refused too')
  t.equal(fs.readFileSync(path.join(area, 'status'), 'utf8'), `restored ${target.pid}\n`, 'and changes nothing')
  t.ok(exists(target.pid), 'the restored process runs')
  // Once the restored process has ended, the same saved tree may be restored again.
  process.kill(target.pid, 'SIGKILL')
  for (let i = 0; i < 200 && exists(target.pid); i++) await new Promise((r) => setTimeout(r, 50))
  const again = spawnSync('bash', ['-c', `echo 1 > ${area}/done`], { encoding: 'utf8' })
  t.equal(again.status, 0, `after that process ended, a new done restores again (${again.stderr.trim()})`)
  t.equal(fs.readFileSync(path.join(area, 'status'), 'utf8'), `restored ${target.pid}\n`, 'status names the new restore')
})

t.test('restore from a tar, from stdin (tar, gzipped tar, image), with and without a mount', async (t) => {
  const mnt = shared
  const target = await counterTarget(t)
  const dir = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  const tarFile = path.join(target.dir, 'saved.tar')
  const paxFile = path.join(target.dir, 'saved-pax.tar.gz')
  const image = path.join(target.dir, 'saved.image')
  execFileSync('tar', ['-C', mnt, '-cf', tarFile, path.basename(dir)])
  execFileSync('tar', ['-C', mnt, '--format=posix', '-czf', paxFile, path.basename(dir)])
  fs.copyFileSync(`${dir}.image`, image)
  fs.writeFileSync(path.join(dir, 'done'), 'kill')
  await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid))

  // The CLI's scratch files go to its own TMPDIR here, so that "nothing left behind" is ours to check.
  const scratch = workdir(t, 'ckptfs-cli-tmp-')
  const env = { ...userEnv, TMPDIR: scratch }
  const cases: Array<{ what: string; args: string[]; input?: Buffer }> = [
    { what: 'a tar file (GNU format), through the mount', args: ['restore', tarFile, '--mount', mnt] },
    { what: 'a gzipped pax tar on stdin, through the mount', args: ['restore', '-', '--mount', mnt], input: fs.readFileSync(paxFile) },
    { what: 'an image on stdin, through the mount', args: ['restore', '-', '--mount', mnt], input: fs.readFileSync(image) },
    { what: 'a tar on stdin, without a mount', args: ['restore', '-', '--no-mount'], input: fs.readFileSync(tarFile) },
  ]
  for (const c of cases) {
    const r = ckptfsWith({ env, input: c.input ?? '' }, ...c.args)
    t.equal(r.status, 0, `${c.what}: ${r.stderr}`)
    t.equal(r.stdout, `${target.pid}\n`, `${c.what}: restored with its PID`)
    const log = path.join(target.dir, 'count.log')
    const before = fs.readFileSync(log, 'utf8').length
    await waitUntil(`${c.what}: the restored counter to count on`, () => fs.readFileSync(log, 'utf8').length > before)
    process.kill(target.pid, 'SIGKILL')
    await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid))
    t.same(fs.readdirSync(scratch), [], `${c.what}: no scratch file left behind`)
  }
  t.same(fs.readdirSync(path.join(mnt, 'restore')), [], 'nothing left in restore/')
})

t.test('a hostile or broken tar is refused, naming the file and the entry', async (t) => {
  const mnt = shared
  const dir = workdir(t)
  const scratch = workdir(t, 'ckptfs-cli-tmp-')
  const env = { ...userEnv, TMPDIR: scratch }
  fs.mkdirSync(path.join(dir, 'in'))
  fs.writeFileSync(path.join(dir, 'in', 'f'), 'x')
  fs.symlinkSync('/etc/shadow', path.join(dir, 'in', 'link'))
  const tar = (name: string, ...args: string[]) => {
    execFileSync('tar', ['-cf', path.join(dir, name), ...args], { cwd: path.join(dir, 'in') })
    return path.join(dir, name)
  }
  const cases: Array<[string, RegExp]> = [
    [tar('link.tar', 'f', 'link'), /link\.tar: "link" \(header at byte 1024\): a symbolic link: a saved checkpoint holds only files and directories/],
    [tar('abs.tar', '-P', path.join(dir, 'in', 'f')), /abs\.tar: ".*\/in\/f" \(header at byte 0\): an absolute name/],
    [tar('dotdot.tar', '-P', '../in/f'), /dotdot\.tar: "\.\.\/in\/f" \(header at byte 0\): a name with a \.\. component/],
    [tar('plain.tar', 'f'), /plain\.tar: the tar holds no saved checkpoint/],
  ]
  const whole = fs.readFileSync(tar('big.tar', 'f'))
  fs.writeFileSync(path.join(dir, 'truncated.tar'), whole.subarray(0, 600))
  cases.push([path.join(dir, 'truncated.tar'), /truncated\.tar: "f" \(header at byte 0\): truncated tar/])
  const damaged = Buffer.from(whole)
  damaged[10] ^= 1
  fs.writeFileSync(path.join(dir, 'damaged.tar'), damaged)
  cases.push([path.join(dir, 'damaged.tar'), /damaged\.tar: neither a ckptfs image nor a tar of a saved checkpoint/])
  fs.writeFileSync(path.join(dir, 'fake.image'), Buffer.concat([Buffer.from([0, 0, 0, 0]), Buffer.from('ckptfs-image'), Buffer.alloc(64)]))
  cases.push([path.join(dir, 'fake.image'), /^ckptfs restore: \/.*\/fake\.image: /])
  for (const [file, expected] of cases) {
    for (const args of [['--mount', mnt], ['--no-mount']]) {
      const r = ckptfsWith({ env, timeout: 60_000 }, 'restore', file, ...args)
      t.equal(r.status, 1, `${path.basename(file)} ${args[0]}: refused`)
      t.match(r.stderr, expected, `${path.basename(file)} ${args[0]}: ${r.stderr.trim()}`)
      t.notMatch(r.stderr, /(^| )image: /m, 'never a bare "image:" for a file the user named otherwise')
    }
  }
  t.same(fs.readdirSync(scratch), [], 'no scratch file left behind')
  t.same(fs.readdirSync(path.join(mnt, 'restore')), [], 'nothing left in restore/')
})
