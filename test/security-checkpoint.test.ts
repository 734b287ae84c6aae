// Checkpointing a user's process must not wait on what the user controls. A file on a FUSE
// mount is answered by the FUSE server's process, which a local user may run: one that stops
// answering leaves a stat or read of the file waiting forever (once the request is read, even
// SIGKILL does not end the wait). Before the fix, the server's synchronous stat of the fd
// (lib/procfs.ts readFds) blocked its event loop: the checkpoint, the frozen task and every
// later request of the mount waited. Replayed with a tiny FUSE server that stops answering
// (test/fixtures/stuck_fuse.js, fuse-native) and the user's process holding a file of it.
// On this test machine /dev/fuse is root's alone (mode 0600), so the FUSE server runs as root
// with allow_other; a never-answering server acts the same whoever runs it.

import { spawn, spawnSync } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfsAsync, mountFor, userNode } from './lib/mount'
import { exists, launch, waitUntil, workdir } from './lib/restore'
import { repo } from './lib/targets'
import { asUser, attacker } from './lib/unprivileged'

const user = attacker()

/** The task's state letter from /proc/PID/stat (R, S, t for a tracing stop, T ...). */
function stateOf(pid: number): string {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
}

interface StuckFuse {
  /** Where it is mounted. */
  mnt: string
  /** Makes it stop answering (it says so first). */
  stop(): Promise<void>
}

/**
 * The FUSE server of test/fixtures/stuck_fuse.js at a mount of its own (or over `over`, a
 * directory that exists); killed and unmounted at teardown.
 */
async function stuckFuse(t: Test, over?: string): Promise<StuckFuse> {
  // Its own directory, reachable by the user, removed only after the FUSE server is gone.
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-fuse-'))
  fs.chmodSync(base, 0o755)
  const mnt = over ?? path.join(base, 'fuse')
  if (!over) fs.mkdirSync(mnt)
  const [node, args] = userNode(path.join(repo, 'test', 'fixtures', 'stuck_fuse.js'), mnt)
  const server = spawn(node, args, {
    env: { ...process.env, FUSE_NATIVE: path.join(repo, 'node_modules', 'fuse-native') },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let said = ''
  server.stdout!.setEncoding('utf8').on('data', (s: string) => (said += s))
  // Killing the FUSE server ends its connection: whatever waited on it gets ENOTCONN.
  t.teardown(async () => {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGKILL')
    await new Promise((resolve) => (server.exitCode !== null || server.signalCode !== null ? resolve(undefined) : server.once('exit', resolve)))
    spawnSync('umount', ['-l', mnt], { stdio: 'ignore' })
    fs.rmSync(base, { recursive: true, force: true })
  })
  await waitUntil('the FUSE server to mount', () => said.includes('mounted') || said.includes('mount failed'), 30_000)
  t.match(said, /mounted/, `the FUSE server is up at ${mnt}`)
  t.equal(fs.readFileSync(path.join(mnt, 'file'), 'utf8'), 'hello\n', 'and answers')
  return {
    mnt,
    stop: async () => {
      server.kill('SIGUSR1')
      await waitUntil('the FUSE server to stop answering', () => said.includes('stuck'))
    },
  }
}

/** `python3 -c code` as the user, in a work directory of theirs, ready when it prints `ready`. */
async function userProcess(t: Test, code: string) {
  const dir = workdir(t)
  fs.chownSync(dir, user.uid, user.gid)
  const out = path.join(dir, 'out')
  fs.writeFileSync(out, '', { mode: 0o644 })
  fs.chownSync(out, user.uid, user.gid)
  return launch(t, asUser(user, ['python3', '-c', code]), { dir, ready: (tg) => /ready/.test(tg.text()) })
}

// Read through child processes with a bound: a read of the mount that hangs fails the test.
const bounded = (script: string) => spawnSync('sh', ['-c', script], { encoding: 'utf8', timeout: 60_000 })

/**
 * `ckptfs checkpoint PID` while the FUSE server does not answer: it must come back (a hang
 * fails the test after 60 s, hundreds of times what the checkpoint takes: not a timing
 * assert), its status must match `expected`, and the process must run on after `resume`.
 */
async function checkpointAnswered(t: Test, mnt: string, pid: number, expected: RegExp, frozen?: (ckpt: string) => void): Promise<void> {
  const run = ckptfsAsync(['checkpoint', String(pid), '--mount', mnt])
  const bound = new Promise<'hung'>((resolve) => {
    const timer = setTimeout(() => resolve('hung'), 60_000)
    void run.then(() => clearTimeout(timer))
  })
  const r = await Promise.race([run, bound])
  if (r === 'hung') {
    t.fail('ckptfs checkpoint still waits after 60 s: the FUSE server holds it')
    return
  }
  t.equal(r.status, 0, `the checkpoint is made (${r.stderr.trim()})`)
  const ckpt = r.stdout.trim()
  // Its status names what stopped the capture (a capture that fails is reported there, and a
  // read of problems fails with its errno).
  const status = bounded(`cat '${ckpt}/status'`)
  t.equal(status.status, 0, `its status answers (${status.error?.message ?? status.stderr.trim()})`)
  t.match(status.stdout, expected, `naming what and where: ${status.stdout.trim()}`)
  frozen?.(ckpt)
  if (status.stdout.startsWith('error: not checkpointable')) {
    const kill = bounded(`echo kill > '${ckpt}/done'`)
    t.not(kill.status, 0, `"kill" is refused, as for any checkpoint that cannot be restored (${kill.stderr.trim()})`)
    t.ok(exists(pid), 'and the process is not killed')
  }
  const resumed = bounded(`echo resume > '${ckpt}/done'`)
  t.equal(resumed.status, 0, `"resume" written to done (${resumed.error?.message ?? resumed.stderr.trim()})`)
  t.ok(exists(pid), 'the process lives on')
  await waitUntil('the process to run again (not frozen, not stopped)', () => ['R', 'S'].includes(stateOf(pid)))
  t.ok(['R', 'S'].includes(stateOf(pid)), `state ${stateOf(pid)}: released`)
  const listed = bounded(`ls '${mnt}'`)
  t.equal(listed.status, 0, 'the mount answers')
}

const FUSE_RULE = 'its server answers when it likes, and one that never answers would hold the checkpoint, the frozen tasks and the mount; ckptfs does not touch files of a FUSE mount'
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

t.test("a FUSE server that never answers does not hold a checkpoint of the user's process holding a file of it, nor the mount", async (t) => {
  const mnt = mountFor(t)
  const fuse = await stuckFuse(t)
  const file = path.join(fuse.mnt, 'file')
  const target = await userProcess(t, `import time\nf=open(${JSON.stringify(file)})\nprint('ready',flush=True)\nwhile True: time.sleep(1)\n`)
  const held = fs.readdirSync(`/proc/${target.pid}/fd`).find((fd) => fs.readlinkSync(`/proc/${target.pid}/fd/${fd}`) === file)
  t.ok(held, `${user.name}'s process ${target.pid} holds ${file} as fd ${held}`)
  await fuse.stop()
  await checkpointAnswered(t, mnt, target.pid, new RegExp(`^error: not checkpointable: capture: task ${target.pid}: fd ${held}: ${escape(file)} is on a FUSE file system \\(fuse at ${escape(fuse.mnt)}, mount \\d+\\): ${escape(FUSE_RULE)}`))
  t.ok(fs.readdirSync(`/proc/${target.pid}/fd`).includes(held!), 'and still holds its file')
})

t.test("nor a checkpoint of the user's process mapping a deleted file of it (its pages are read whole)", async (t) => {
  const mnt = mountFor(t)
  const fuse = await stuckFuse(t)
  const file = path.join(fuse.mnt, 'file')
  // Mapped shared, the fd closed, then the file removed: the mapping shows "(deleted)", and a
  // checkpoint stores every page the file covers.
  // (libc's mmap: Python's mmap object keeps an fd of its own.)
  const code = [
    'import ctypes,os,time',
    'libc=ctypes.CDLL(None)',
    'libc.mmap.restype=ctypes.c_void_p',
    'libc.mmap.argtypes=[ctypes.c_void_p,ctypes.c_size_t,ctypes.c_int,ctypes.c_int,ctypes.c_int,ctypes.c_long]',
    `fd=os.open(${JSON.stringify(file)},os.O_RDONLY)`,
    'p=libc.mmap(None,4096,1,1,fd,0)', // PROT_READ, MAP_SHARED
    'assert p not in (None,ctypes.c_void_p(-1).value)',
    'os.close(fd)',
    `os.unlink(${JSON.stringify(file)})`,
    "print('ready',flush=True)",
    'while True: time.sleep(1)',
  ].join('\n')
  const target = await userProcess(t, code)
  const maps = fs.readFileSync(`/proc/${target.pid}/maps`, 'utf8').split('\n').filter((l) => l.includes(fuse.mnt))
  t.equal(maps.length, 1, `${user.name}'s process ${target.pid} maps one file of the FUSE mount: ${maps[0]}`)
  t.match(maps[0] ?? '', / \(deleted\)$/, 'deleted')
  t.same(fs.readdirSync(`/proc/${target.pid}/fd`).filter((fd) => fs.readlinkSync(`/proc/${target.pid}/fd/${fd}`).startsWith(fuse.mnt)), [], 'and holds no fd of it')
  await fuse.stop()
  await checkpointAnswered(t, mnt, target.pid, new RegExp(`^error: not checkpointable: capture: task-${target.pid}: memory .*: the deleted file it maps is on a FUSE file system \\(fuse at ${escape(fuse.mnt)}\\): ${escape(FUSE_RULE)}`))
})

t.test("nor a checkpoint of the user's process whose file's directory the user mounted a FUSE file system over", async (t) => {
  const mnt = mountFor(t)
  // The user's directory with a file in it, opened by name; then a FUSE mount over the
  // directory (a user may mount over a directory of theirs): the name now leads into the FUSE
  // mount, and the capture's stat of the name (is the file still there?) asked its server.
  const home = workdir(t)
  fs.chownSync(home, user.uid, user.gid)
  const sub = path.join(home, 'sub')
  fs.mkdirSync(sub, { mode: 0o755 })
  fs.chownSync(sub, user.uid, user.gid)
  const file = path.join(sub, 'kept')
  fs.writeFileSync(file, 'kept\n')
  fs.chownSync(file, user.uid, user.gid)
  // A second name outside: a checkpoint looks for a file's other names by walking its file
  // system, and must not step onto the FUSE mount point on the way.
  const other = path.join(home, 'other-name')
  fs.linkSync(file, other)
  const target = await userProcess(t, `import time\nf=open(${JSON.stringify(file)})\nprint('ready',flush=True)\nwhile True: time.sleep(1)\n`)
  const fuse = await stuckFuse(t, sub)
  t.notOk(fs.existsSync(file), `${file} is hidden by the FUSE mount over ${sub}`)
  await fuse.stop()
  // Not refused: the name no longer leads to the file (as under any mount over it), so the file
  // is kept as one whose name is gone, its contents read through the task's fd.
  await checkpointAnswered(t, mnt, target.pid, /^(?!error)\S/, (ckpt) => {
    const fd = fs.readdirSync(`/proc/${target.pid}/fd`).find((n) => fs.readlinkSync(`/proc/${target.pid}/fd/${n}`).startsWith(file))
    const links = bounded(`cat "$(cat '${ckpt}/task-${target.pid}/fds/${fd}/fd' | sed 's|^|${ckpt}/files/|')/other_links"`)
    t.equal(links.status, 0, `its other names are searched for and answered (${links.error?.message ?? links.stderr.trim()}): ${JSON.stringify(links.stdout)}`)
  })
})
