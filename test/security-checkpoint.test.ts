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
import t from 'tap'
import { ckptfsAsync, mountFor } from './lib/mount'
import { exists, launch, waitUntil, workdir } from './lib/restore'
import { repo } from './lib/targets'
import { asUser, attacker } from './lib/unprivileged'

const user = attacker()

/** The task's state letter from /proc/PID/stat (R, S, t for a tracing stop, T ...). */
function stateOf(pid: number): string {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
}

t.test("a FUSE server that never answers does not hold a checkpoint of the user's process, nor the mount", async (t) => {
  const mnt = mountFor(t)
  // Its own directory, removed only after the FUSE server is gone (teardowns run in order).
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-fuse-'))
  fs.chmodSync(base, 0o755)
  const fuseMnt = path.join(base, 'fuse')
  fs.mkdirSync(fuseMnt)
  const server = spawn(process.execPath, [path.join(repo, 'test', 'fixtures', 'stuck_fuse.js'), fuseMnt], {
    env: { ...process.env, NODE_OPTIONS: '', FUSE_NATIVE: path.join(repo, 'node_modules', 'fuse-native') },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let said = ''
  server.stdout!.setEncoding('utf8').on('data', (s: string) => (said += s))
  // Killing the FUSE server ends its connection: whatever waited on it gets ENOTCONN.
  const stopServer = async () => {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGKILL')
    await new Promise((resolve) => (server.exitCode !== null || server.signalCode !== null ? resolve(undefined) : server.once('exit', resolve)))
    spawnSync('umount', ['-l', fuseMnt], { stdio: 'ignore' })
  }
  t.teardown(async () => {
    await stopServer()
    fs.rmSync(base, { recursive: true, force: true })
  })
  await waitUntil('the FUSE server to mount', () => said.includes('mounted') || said.includes('mount failed'), 30_000)
  t.match(said, /mounted/, `the FUSE server is up at ${fuseMnt}`)
  t.equal(fs.readFileSync(path.join(fuseMnt, 'file'), 'utf8'), 'hello\n', 'and answers')

  // The user's process holds the file open.
  const dir = workdir(t)
  fs.chownSync(dir, user.uid, user.gid)
  const out = path.join(dir, 'out')
  fs.writeFileSync(out, '', { mode: 0o644 })
  fs.chownSync(out, user.uid, user.gid)
  const code = `import time\nf=open(${JSON.stringify(path.join(fuseMnt, 'file'))})\nprint('holding',flush=True)\nwhile True: time.sleep(1)\n`
  const target = await launch(t, asUser(user, ['python3', '-c', code]), { dir, ready: (tg) => /holding/.test(tg.text()) })
  const held = fs.readdirSync(`/proc/${target.pid}/fd`).find((fd) => fs.readlinkSync(`/proc/${target.pid}/fd/${fd}`) === path.join(fuseMnt, 'file'))
  t.ok(held, `${user.name}'s process ${target.pid} holds ${fuseMnt}/file as fd ${held}`)

  // The FUSE server stops answering.
  server.kill('SIGUSR1')
  await waitUntil('the FUSE server to stop answering', () => said.includes('stuck'))

  const run = ckptfsAsync(['checkpoint', String(target.pid), '--mount', mnt])
  // A bound so that a hang fails the test instead of holding it (not a timing assert: 60 s
  // is hundreds of times what the refusal takes).
  const bound = new Promise<'hung'>((resolve) => {
    const timer = setTimeout(() => resolve('hung'), 60_000)
    void run.then(() => clearTimeout(timer))
  })
  const r = await Promise.race([run, bound])
  if (r === 'hung') {
    t.fail('ckptfs checkpoint still waits after 60 s: the FUSE server holds it')
    await stopServer()
    await run
    return
  }
  t.equal(r.status, 0, `the checkpoint is made (${r.stderr.trim()})`)
  const ckpt = r.stdout.trim()
  // Read through child processes with a bound: a read of the mount that hangs fails the test.
  const bounded = (script: string) => spawnSync('sh', ['-c', script], { encoding: 'utf8', timeout: 60_000 })
  // Its status names what stopped the capture (a capture that fails is reported there, and a
  // read of problems fails with its errno).
  const status = bounded(`cat '${ckpt}/status'`)
  t.equal(status.status, 0, `its status answers (${status.error?.message ?? status.stderr.trim()})`)
  t.match(status.stdout, new RegExp(`^error: not checkpointable: capture: task ${target.pid}: fd ${held}: ${fuseMnt}/file is on a FUSE file system \\(fuse at ${fuseMnt}, mount \\d+\\): its server answers when it likes`), `naming the fd and the mount: ${status.stdout.trim()}`)
  const kill = bounded(`echo kill > '${ckpt}/done'`)
  t.not(kill.status, 0, `"kill" is refused, as for any checkpoint that cannot be restored (${kill.stderr.trim()})`)
  t.ok(exists(target.pid), 'and the process is not killed')
  const resumed = bounded(`echo resume > '${ckpt}/done'`)
  t.equal(resumed.status, 0, `"resume" written to done (${resumed.error?.message ?? resumed.stderr.trim()})`)
  t.ok(exists(target.pid), 'the process lives on')
  await waitUntil('the process to run again (not frozen, not stopped)', () => ['R', 'S'].includes(stateOf(target.pid)))
  t.ok(['R', 'S'].includes(stateOf(target.pid)), `state ${stateOf(target.pid)}: released`)
  t.ok(fs.readdirSync(`/proc/${target.pid}/fd`).includes(held!), 'and still holds its file')
  const listed = bounded(`ls '${mnt}'`)
  t.equal(listed.status, 0, 'the mount answers')
})
