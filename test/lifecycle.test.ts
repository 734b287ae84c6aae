// A process must never be lost (issue 13): a restore waits for a zombie holding its PID, `kill`
// returns once the task is dead, a checkpoint that cannot be restored is loud and refuses a
// plain `kill`, an ancestor of the caller is never frozen, and a named fifo's bytes arrive
// exactly once after a restore, whoever holds the fifo.

import { spawn, spawnSync, type ChildProcess } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { cliCommand, cliShellWords, ckptfs, ckptfsOk, distDir, mountFor, userEnv, userNode } from './lib/mount'
import { runWithTerminalStderr } from './lib/pty'
import { checkpointSaveKill, exists, launch, procState, restoreOk, waitUntil, workdir } from './lib/restore'
import { buildTarget, sleep, startTarget, threadState } from './lib/targets'

const mnt = mountFor(t)
const counter = buildTarget('counter')
const socketHolder = buildTarget('socket_holder')
const fifoReader = buildTarget('fifo_reader')

const read = (file: string) => fs.readFileSync(file, 'utf8').trim()
const numbers = (log: string) => fs.readFileSync(log, 'utf8').split('\n').filter(Boolean).map(Number)

/** Kills `pid` at teardown if it still runs `exe` (the PID may be someone else's by then). */
function killAtTeardown(t: Test, pid: number, exe: string): void {
  t.teardown(() => {
    try {
      if (fs.readlinkSync(`/proc/${pid}/exe`) === exe) process.kill(pid, 'SIGKILL')
    } catch {
      // gone
    }
  })
}

/**
 * Starts `argv` as the child of a parent that, once the child has died, leaves it a zombie
 * until the file `release` exists (at most 9 s), as a busy init or subreaper does; then reaps
 * it. Returns the child's PID.
 */
async function startWithSlowReaper(t: Test, argv: string[], release: string): Promise<number> {
  const parent: ChildProcess = spawn('python3', ['-c', `
import os, sys, time
child = os.fork()
if child == 0:
    null = os.open('/dev/null', os.O_RDWR)
    for fd in (0, 1, 2): os.dup2(null, fd)
    os.execv(sys.argv[2], sys.argv[2:])
print(child, flush=True)
def state():
    with open(f'/proc/{child}/stat') as f:
        s = f.read()
    return s[s.rindex(')') + 2]
while state() not in 'ZX':
    time.sleep(0.01)
deadline = time.time() + 9
while not os.path.exists(sys.argv[1]) and time.time() < deadline:
    time.sleep(0.01)
os.waitpid(child, 0)
`, release, ...argv], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => {
    parent.kill('SIGKILL')
  })
  return new Promise<number>((resolve, reject) => {
    let said = ''
    parent.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      said += chunk
      if (said.includes('\n')) resolve(Number(said.trim()))
    })
    parent.on('exit', () => reject(new Error('the reaping parent exited early')))
  })
}

/**
 * Runs a restore command; once its stderr says it waits for the zombie, creates `release` so
 * the zombie is reaped. Resolves with its exit status and output.
 */
function restoreReleasingZombie([file, args]: [string, string[]], release: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { env: userEnv, stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c))
    child.stderr.setEncoding('utf8').on('data', (c: string) => {
      stderr += c
      if (/waiting/.test(stderr)) fs.writeFileSync(release, '')
    })
    child.on('close', (status) => resolve({ status, stdout, stderr }))
  })
}

/** A counter whose parent reaps it only once `release` exists, checkpointed while it counts. */
async function countingUnderSlowReaper(t: Test) {
  const dir = workdir(t)
  const log = path.join(dir, 'log')
  const release = path.join(dir, 'release')
  const pid = await startWithSlowReaper(t, [counter, log, '50'], release)
  killAtTeardown(t, pid, counter)
  await waitUntil('the counter to count', () => fs.existsSync(log) && numbers(log).length >= 3)
  const checkpoint = ckptfsOk('checkpoint', String(pid), '--mount', mnt)
  return { dir, log, release, pid, checkpoint }
}

t.test('a restore right after `kill` waits for the zombie of the original to be reaped, and says so', async (t) => {
  const { dir, log, release, pid, checkpoint } = await countingUnderSlowReaper(t)
  const saved = path.join(dir, 'saved')
  spawnSync('cp', ['-a', checkpoint, saved])
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill\n')
  // `kill` has returned: the task is dead, and its parent holds it as a zombie.
  t.equal(procState(pid), 'Z', 'the killed task is a zombie once `kill` returns')
  const before = numbers(log)
  const r = await restoreReleasingZombie(cliCommand('restore', saved, '--mount', mnt), release)
  t.equal(r.status, 0, `restore succeeds (stderr: ${r.stderr.trim()})`)
  t.equal(r.stdout.trim(), String(pid), 'it prints the PID')
  t.match(r.stderr, /^ckptfs restore: waiting up to 10 s for .*\(pid \d+\) has exited but its parent .* has not reaped it yet\n$/, 'stderr says what it waits for, once')
  await waitUntil('the restored counter to count on', () => numbers(log).length > before.length + 2)
  const all = numbers(log)
  t.same(all, all.map((_, i) => i + 1), 'the count goes on with no gap and no repeat')
})

t.test('on a terminal the wait is a progress line saying what it waits for, erased at the end', async (t) => {
  // The same restore with stderr piped prints the wait as one line and nothing else (above).
  const { dir, log, release, pid, checkpoint } = await countingUnderSlowReaper(t)
  const saved = path.join(dir, 'saved')
  spawnSync('cp', ['-a', checkpoint, saved])
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill\n')
  const before = numbers(log)
  const waitLine = /\r\x1b\[Kckptfs restore: waiting up to 10 s for .*\(pid \d+\) has exited but its parent .* has not reaped it yet, \d+\.\d s/
  const r = await runWithTerminalStderr(cliCommand('restore', saved, '--mount', mnt), {
    env: userEnv,
    watch: (terminal) => {
      if (waitLine.test(terminal)) fs.writeFileSync(release, '')
    },
  })
  t.equal(r.status, 0, `restore succeeds (terminal: ${JSON.stringify(r.terminal)})`)
  t.equal(r.stdout, `${pid}\n`, 'stdout holds the PID alone')
  t.match(r.terminal, waitLine, 'the terminal showed what the restore waited for, with the seconds so far')
  t.notMatch(r.terminal, /\n/, 'as a line redrawn in place, never scrolled')
  t.ok(r.terminal.endsWith('\r\x1b[K'), 'and erased once the restore was done')
  await waitUntil('the restored counter to count on', () => numbers(log).length > before.length + 2)
})

t.test('a restore without a mount waits for the zombie too, with the note on its own stderr', async (t) => {
  const { dir, log, release, pid, checkpoint } = await countingUnderSlowReaper(t)
  const image = path.join(dir, 'saved.image')
  fs.copyFileSync(`${checkpoint}.image`, image)
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill\n')
  const before = numbers(log).length
  // In-process restore (lib/restore/index.ts), the path `ckptfs restore` takes with no mount.
  const restoreModule = path.join(distDir, 'lib', 'restore', 'index.js')
  const r = await restoreReleasingZombie(userNode('-e', `require(${JSON.stringify(restoreModule)}).restorePath(${JSON.stringify(image)}).then((p) => console.log(p), (e) => { console.error(e.message); process.exit(1) })`), release)
  t.equal(r.status, 0, `restore succeeds (stderr: ${r.stderr.trim()})`)
  t.equal(r.stdout.trim(), String(pid))
  t.match(r.stderr, /^ckptfs restore: waiting up to 10 s for/, 'the note reaches stderr')
  await waitUntil('the restored counter to count on', () => numbers(log).length > before + 2)
})

t.test('`kill` of a copy-mode checkpoint returns once the task is dead', async (t) => {
  const dir = workdir(t)
  const log = path.join(dir, 'log')
  const pid = await startWithSlowReaper(t, [counter, log, '50'], path.join(dir, 'release'))
  killAtTeardown(t, pid, counter)
  await waitUntil('the counter to count', () => fs.existsSync(log) && numbers(log).length >= 2)
  const checkpoint = ckptfsOk('checkpoint', String(pid), '--mount', mnt, '--copy')
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill\n')
  t.equal(procState(pid), 'Z', 'dead (a zombie its parent has not reaped yet) when the write returns')
})

t.test('a checkpoint that cannot be restored is loud, stays open, and refuses a plain kill', async (t) => {
  const target = await startTarget(socketHolder)
  t.teardown(() => target.kill())
  const r = ckptfs('checkpoint', String(target.pid), '--mount', mnt)
  t.equal(r.status, 1, 'exit status 1')
  const dir = r.stdout.trim()
  t.match(dir, new RegExp(`^${mnt}/checkpoint-\\d+$`), 'the checkpoint is printed, for inspection')
  t.match(r.stderr, new RegExp(`^ckptfs checkpoint: process ${target.pid} cannot be restored from this checkpoint: files/\\d+: .*socket`), 'the reason is on stderr')
  t.match(r.stderr, /stays frozen for inspection: release it with "echo resume > .*\/done"/, 'and how to release it')
  t.equal(r.stderr.trim().split('\n').length, 1, 'in one line')
  t.equal(threadState(target.pid), 't', 'the task stays frozen, as any lazy checkpoint')
  t.match(read(path.join(dir, 'problems')), /socket/)

  const refused = (() => {
    try {
      fs.writeFileSync(path.join(dir, 'done'), 'kill\n')
      return undefined
    } catch (err) {
      return err as NodeJS.ErrnoException
    }
  })()
  t.equal(refused?.code, 'EPERM', 'a plain kill is refused (EPERM)')
  t.ok(fs.existsSync(dir), 'the checkpoint is still open')
  t.equal(threadState(target.pid), 't', 'and the task is alive, still frozen')
  fs.writeFileSync(path.join(dir, 'done'), 'kill!\n')
  t.notOk(fs.readdirSync(mnt).includes(path.basename(dir)), '`kill!` ends it')
  t.not(procState(target.pid) ?? 'gone', 'S', '`kill!` kills the task')
  t.ok(['Z', undefined].includes(procState(target.pid)), 'dead when the write returns')
})

t.test('--inspect expects such a checkpoint; `resume` lets the task run on', async (t) => {
  const target = await startTarget(socketHolder)
  t.teardown(() => target.kill())
  const r = ckptfs('checkpoint', String(target.pid), '--mount', mnt, '--inspect')
  t.equal(r.status, 0, `exit status 0 (stderr: ${r.stderr.trim()})`)
  t.equal(r.stderr, '', 'nothing on stderr')
  const dir = r.stdout.trim()
  fs.writeFileSync(path.join(dir, 'done'), 'resume\n')
  await waitUntil('the task to run again', () => threadState(target.pid) === 'S')
})

t.test('`echo PID > MNT/checkpoint` fails for such a process unless it says inspect', async (t) => {
  const target = await startTarget(socketHolder)
  t.teardown(() => target.kill())
  const control = path.join(mnt, 'checkpoint')
  // As a script would (Node has no name for ENOTRECOVERABLE).
  const echo = spawnSync('bash', ['-c', 'echo "$PID" > "$CONTROL"'], { encoding: 'utf8', env: { ...userEnv, PID: String(target.pid), CONTROL: control } })
  t.equal(echo.status, 1, 'the write fails')
  t.match(echo.stderr, /State not recoverable/, 'with ENOTRECOVERABLE')
  const name = read(path.join(mnt, 'by-pid', String(target.pid)))
  t.match(name, /^checkpoint-\d+$/, 'by-pid names the checkpoint, open for inspection')
  t.match(read(path.join(mnt, name, 'problems')), /socket/)
  fs.writeFileSync(path.join(mnt, name, 'done'), 'resume\n')
  await waitUntil('the task to run again', () => threadState(target.pid) === 'S')

  fs.writeFileSync(control, `${target.pid} inspect\n`)
  const inspected = read(path.join(mnt, 'by-pid', String(target.pid)))
  t.not(inspected, name, 'with "inspect" the write succeeds and opens a new checkpoint')
  fs.writeFileSync(path.join(mnt, inspected, 'done'), 'resume\n')
})

t.test('the caller\'s own shell, or any ancestor of the command, is never frozen', async (t) => {
  // bash, not dash: dash reports every failed write as "I/O error", whatever its errno.
  const sh = (script: string) => spawnSync('bash', ['-c', script], { encoding: 'utf8', timeout: 60_000, env: { ...userEnv, MNT: mnt } })

  const own = sh(`${cliShellWords} checkpoint $$ --mount "$MNT"; echo "rc=$?"`)
  t.equal(own.status, 0, 'the shell did not hang')
  t.match(own.stdout, /rc=1/, 'ckptfs checkpoint $$ exits 1')
  t.match(own.stderr, /is an ancestor of this command .*freeze this terminal for good; use --copy/, 'with a clear message')

  const written = sh('echo $$ > "$MNT/checkpoint"; echo "rc=$?"')
  t.equal(written.status, 0, 'the shell did not hang')
  t.match(written.stdout, /rc=[1-9]/, 'echo $$ > MNT/checkpoint fails')
  t.match(written.stderr, /Resource deadlock avoided/)

  const grandparent = sh('bash -c \'echo $PPID > "$MNT/checkpoint"\'; echo "rc=$?"')
  t.equal(grandparent.status, 0, 'the shell did not hang')
  t.match(grandparent.stdout, /rc=[1-9]/, 'a write from a child shell naming its parent fails')
  t.match(grandparent.stderr, /Resource deadlock avoided/)

  const copy = sh(`${cliShellWords} checkpoint $$ --mount "$MNT" --copy --inspect && echo ok`)
  t.match(copy.stdout, /^\/.*checkpoint-\d+\nok$/m, `--copy of the own shell is allowed (stderr: ${copy.stderr.trim()})`)
  const dir = copy.stdout.split('\n')[0]
  if (dir && fs.existsSync(dir)) fs.writeFileSync(path.join(dir, 'done'), 'resume\n')
})

/** A fifo_reader in its own work directory, with DIR/fifo made first. */
async function fifoTarget(t: Test): Promise<{ dir: string; fifo: string; got: string; pid: number }> {
  const dir = workdir(t)
  const fifo = path.join(dir, 'fifo')
  spawnSync('mkfifo', [fifo])
  const target = await launch(t, [fifoReader, dir], { dir })
  return { dir, fifo, got: path.join(dir, 'got'), pid: target.pid }
}

async function restoreAndRead(t: Test, f: { dir: string; got: string; pid: number }, expect: string): Promise<void> {
  restoreOk(mnt, path.join(f.dir, 'saved'), f.pid)
  fs.writeFileSync(path.join(f.dir, 'go'), '')
  await waitUntil('the restored reader to read', () => fs.existsSync(f.got) && fs.readFileSync(f.got, 'utf8').length >= expect.length)
  // Whatever else was going to arrive has had time to.
  await sleep(300)
  t.equal(fs.readFileSync(f.got, 'utf8'), expect)
}

t.test('fifo: bytes waiting in a fifo that an outside writer holds open arrive once', async (t) => {
  const f = await fifoTarget(t)
  const writer = fs.openSync(f.fifo, 'w') // this test process is the outside writer
  t.teardown(() => fs.closeSync(writer))
  fs.writeSync(writer, 'line1\n')
  await checkpointSaveKill(mnt, f.pid, path.join(f.dir, 'saved'))
  await restoreAndRead(t, f, 'line1\n')
  fs.writeSync(writer, 'line2\n')
  await waitUntil('line2', () => fs.readFileSync(f.got, 'utf8').includes('line2'))
  t.equal(fs.readFileSync(f.got, 'utf8'), 'line1\nline2\n', 'the restored reader reads the same fifo on')
})

t.test('fifo: bytes waiting in a fifo nobody else holds are put back (none lost)', async (t) => {
  const f = await fifoTarget(t)
  const writer = fs.openSync(f.fifo, 'w')
  fs.writeSync(writer, 'line1\n')
  fs.closeSync(writer)
  await checkpointSaveKill(mnt, f.pid, path.join(f.dir, 'saved'))
  t.ok(!exists(f.pid))
  await restoreAndRead(t, f, 'line1\n')
})
