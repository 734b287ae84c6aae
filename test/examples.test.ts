// The example scripts (examples/*.sh), end to end with real processes: each does what its
// header says, and none ever loses a process or deletes the only copy of a checkpoint.
// Every run gets its own TMPDIR (where the scripts make their work directories and mounts)
// and either CKPTFS_MOUNT (a mount of this test) or a mount of its own: never another one.

import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { cliShellWords, ckptfs, mountFor, userEnv } from './lib/mount'
import { exists, launch, procState, waitUntil, workdir } from './lib/restore'
import { buildTarget, repo } from './lib/targets'

const mnt = mountFor(t)
const counter = buildTarget('counter')
const socketHolder = buildTarget('socket_holder')
const examples = path.join(repo, 'examples')

interface Run {
  status: number | null
  stdout: string
  stderr: string
}

/**
 * A `ckptfs` for the scripts (CKPTFS): this build's CLI. With `failRestore`, its `restore`
 * fails as a lost connection or a full disk would, to see what the script keeps then.
 */
function ckptfsCommand(dir: string, failRestore = false): string {
  const file = path.join(dir, failRestore ? 'ckptfs-failing-restore' : 'ckptfs')
  const refuse = failRestore ? 'if [ "$1" = restore ]; then echo "ckptfs restore: simulated failure" >&2; exit 1; fi\n' : ''
  fs.writeFileSync(file, `#!/bin/sh\n${refuse}exec ${cliShellWords} "$@"\n`, { mode: 0o755 })
  return file
}

/** Runs examples/SCRIPT with its own TMPDIR (returned, to check what is left in it). */
function runExample(t: Test, script: string, args: string[], env: Record<string, string>): Run & { tmp: string } {
  const tmp = workdir(t, 'ckptfs-example-tmp-')
  const r = spawnSync('bash', [path.join(examples, script), ...args], { encoding: 'utf8', timeout: 180_000, env: { ...userEnv, TMPDIR: tmp, ...env } })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, tmp }
}

const numbers = (log: string) => fs.readFileSync(log, 'utf8').split('\n').filter(Boolean).map(Number)

/** A counter counting every 50 ms into DIR/log; its parent shell reaps it when it dies. */
async function startCounter(t: Test): Promise<{ pid: number; log: string; dir: string }> {
  const dir = workdir(t)
  const log = path.join(dir, 'log')
  const target = await launch(t, [counter, log, '50'], { dir, ready: () => fs.existsSync(log) && numbers(log).length >= 3 })
  return { pid: target.pid, log, dir }
}

async function countsOnWithoutGap(t: Test, log: string, since: number): Promise<void> {
  await waitUntil('the restored counter to count on', () => numbers(log).length > since + 2)
  const all = numbers(log)
  t.same(all, all.map((_, i) => i + 1), 'the count goes on with no gap and no repeat')
}

t.test('backup.sh --kill, then restore.sh of its tar (on CKPTFS_MOUNT)', async (t) => {
  const c = await startCounter(t)
  const tar = path.join(c.dir, 'backup.tar')
  const env = { CKPTFS: ckptfsCommand(c.dir), CKPTFS_MOUNT: mnt }
  const backup = runExample(t, 'backup.sh', [String(c.pid), tar, '--kill'], env)
  t.equal(backup.status, 0, `backup.sh exits 0 (stderr: ${backup.stderr.trim()})`)
  t.match(backup.stdout, new RegExp(`^saved ${c.pid} to ${tar} .*told to kill`))
  t.ok(fs.statSync(tar).size > 0, 'the tar is there')
  t.notOk(fs.existsSync(`${tar}.part`), 'and no partial file')
  await waitUntil('the killed counter to be gone', () => !exists(c.pid))
  const before = numbers(c.log).length

  const restore = runExample(t, 'restore.sh', [tar], env)
  t.equal(restore.status, 0, `restore.sh exits 0 (stderr: ${restore.stderr.trim()})`)
  t.equal(restore.stdout.trim(), String(c.pid), 'it prints the PID')
  t.ok(fs.existsSync(tar), 'the tar it restored from is kept')
  t.same(fs.readdirSync(restore.tmp), [], 'its unpacked copy is removed')
  await countsOnWithoutGap(t, c.log, before)
})

t.test('backup.sh with a mount of its own lets the process run on', async (t) => {
  const c = await startCounter(t)
  const tar = path.join(c.dir, 'backup.tar')
  const backup = runExample(t, 'backup.sh', [String(c.pid), tar], { CKPTFS: ckptfsCommand(c.dir) })
  t.equal(backup.status, 0, `backup.sh exits 0 (stderr: ${backup.stderr.trim()})`)
  t.ok(fs.statSync(tar).size > 0, 'the tar is there')
  t.same(fs.readdirSync(backup.tmp), [], 'its own mount is gone, and its directory')
  const before = numbers(c.log).length
  await waitUntil('the counter to count on', () => numbers(c.log).length > before + 2)
})

t.test('backup.sh --kill of a process that cannot be restored fails and leaves it running', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [socketHolder], { dir })
  const tar = path.join(dir, 'backup.tar')
  const backup = runExample(t, 'backup.sh', [String(target.pid), tar, '--kill'], { CKPTFS: ckptfsCommand(dir), CKPTFS_MOUNT: mnt })
  t.not(backup.status, 0, 'backup.sh fails')
  t.match(backup.stderr, /cannot be restored from this checkpoint: .*socket/, 'and says why')
  t.notOk(fs.existsSync(tar), 'no backup was written')
  t.equal(procState(target.pid), 'S', 'the process is alive and runs (not frozen, not killed)')
})

t.test('migrate.sh PID local: the process comes back, and the work directory is removed', async (t) => {
  const c = await startCounter(t)
  const m = runExample(t, 'migrate.sh', [String(c.pid), 'local'], { CKPTFS: ckptfsCommand(c.dir) })
  t.equal(m.status, 0, `migrate.sh exits 0 (stderr: ${m.stderr.trim()})`)
  t.equal(m.stdout.trim(), String(c.pid), 'it prints the restored PID')
  t.same(fs.readdirSync(m.tmp), [], 'nothing is left in TMPDIR')
  await countsOnWithoutGap(t, c.log, 0)
})

t.test('migrate.sh keeps the image when the restore fails after the original ended', async (t) => {
  const c = await startCounter(t)
  const m = runExample(t, 'migrate.sh', [String(c.pid), 'local'], { CKPTFS: ckptfsCommand(c.dir, true) })
  t.not(m.status, 0, 'migrate.sh fails')
  const kept = /the image is kept in (\S+) /.exec(m.stderr)
  t.ok(kept, `it says where the image is (stderr: ${m.stderr.trim()})`)
  if (!kept) return
  t.ok(fs.existsSync(kept[1]), 'the image is there')
  t.ok(kept[1].startsWith(m.tmp + path.sep), 'in its work directory')
  await waitUntil('the killed counter to be gone', () => !exists(c.pid))
  const before = numbers(c.log).length
  const r = ckptfs('restore', kept[1], '--mount', mnt)
  t.equal(r.status, 0, `the kept image restores (stderr: ${r.stderr.trim()})`)
  t.equal(r.stdout.trim(), String(c.pid))
  await countsOnWithoutGap(t, c.log, before)
})

t.test('migrate.sh of a process that cannot be restored fails and leaves it running', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [socketHolder], { dir })
  const m = runExample(t, 'migrate.sh', [String(target.pid), 'local'], { CKPTFS: ckptfsCommand(dir) })
  t.not(m.status, 0, 'migrate.sh fails')
  t.match(m.stderr, /cannot be restored from this checkpoint: .*socket/, 'and says why')
  t.equal(procState(target.pid), 'S', 'the process is alive and runs (not frozen, not killed)')
  t.same(fs.readdirSync(m.tmp), [], 'nothing is left in TMPDIR')
})
