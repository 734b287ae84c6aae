// Helpers of the restore tests (test/restore*.test.ts): start a target program so that it is
// not our child, its stdout and stderr going to a log file (O_APPEND) in its own work
// directory; checkpoint it, save the tree, kill it; restore; let it check itself.

import { execFileSync, spawn, type ChildProcess } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { ckptfs, ckptfsOk, type CliResult } from './mount'

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void
}

/** A fresh directory under /tmp (mode 0755: targets that drop root must still reach it), removed at teardown. */
export function workdir(t: Teardownable, prefix = 'ckptfs-rt-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  fs.chmodSync(dir, 0o755)
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

export async function waitUntil(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  for (const deadline = Date.now() + ms; !cond();) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(20)
  }
}

export const exists = (pid: number) => fs.existsSync(`/proc/${pid}`)

/** The state letter of a process (R, S, Z ...), or undefined once it is gone. */
export function procState(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
  } catch {
    return undefined
  }
}

export function ppidOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
}

/** The system call a blocked task is in (first field of /proc/PID/syscall), or undefined. */
export function syscallOf(pid: number): number | undefined {
  try {
    const first = fs.readFileSync(`/proc/${pid}/syscall`, 'utf8').split(' ')[0]
    return /^\d+$/.test(first) ? Number(first) : undefined
  } catch {
    return undefined
  }
}

/** A process's start time (clock ticks after boot, /proc/PID/stat field 22): the same across exec, another for a reused PID. */
function startOf(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  } catch {
    return undefined
  }
}

function exeOf(pid: number): string | undefined {
  try {
    return fs.readlinkSync(`/proc/${pid}/exe`)
  } catch {
    return undefined
  }
}

export interface Target {
  pid: number
  /** The target's work directory (its first argument for the fixtures). */
  dir: string
  /** Its stdout and stderr (opened O_APPEND by the shell). */
  out: string
  exe: string
  text(): string
  lines(): string[]
  /** Waits for a line of its output matching `re`. */
  waitFor(re: RegExp, ms?: number): Promise<RegExpMatchArray>
  /** More processes to kill at teardown (children the target made). */
  alsoKill(pid: number): void
}

/**
 * Starts `argv` behind `sh -c 'CMD </dev/null >>OUT 2>&1 & echo $!; wait'`: the target is the
 * shell's child, not ours (the shell reaps it when it is killed, so its PID is free again for
 * the restore), and its stdio are /dev/null and a log file. Waits until `ready(target)`. At
 * teardown it kills the PID (the original or the restored process) if it still runs `exe`.
 */
export async function launch(t: Teardownable, argv: string[], opts: { dir: string; cwd?: string; ready?: (target: Target) => boolean }): Promise<Target> {
  const out = path.join(opts.dir, 'out')
  const sh: ChildProcess = spawn('sh', ['-c', '"$0" "$@" </dev/null >>"$CKPT_OUT" 2>&1 & echo $!; wait', ...argv], {
    stdio: ['ignore', 'pipe', 'ignore'],
    cwd: opts.cwd ?? opts.dir,
    env: { ...process.env, CKPT_OUT: out },
  })
  const pid = await new Promise<number>((resolve, reject) => {
    let said = ''
    sh.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      said += chunk
      if (said.includes('\n')) resolve(Number(said.trim()))
    })
    sh.on('exit', () => reject(new Error(`${argv[0]}: the launching shell exited`)))
  })
  // Each further PID with its own executable and start time, read when it is named (a child may
  // run another program than the target, or not have exec'd it yet).
  const others: Array<{ pid: number; exe: string | undefined; start?: string }> = []
  let exe = ''
  const target: Target = {
    pid,
    dir: opts.dir,
    out,
    get exe() {
      return exe
    },
    text: () => (fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : ''),
    lines: () => target.text().split('\n').filter(Boolean),
    waitFor: async (re, ms = 10_000) => {
      let hit: RegExpMatchArray | null = null
      await waitUntil(`${path.basename(argv[0])}: a line matching ${re} (output so far: ${JSON.stringify(target.lines().slice(-5))})`, () => {
        hit = target.text().match(re)
        return hit !== null
      }, ms)
      return hit!
    },
    alsoKill: (p) => {
      const start = startOf(p)
      if (start !== undefined) others.push({ pid: p, exe: exeOf(p), start }) // gone already: nothing to kill
    },
  }
  t.teardown(() => {
    for (const o of [{ pid, exe, start: undefined }, ...others]) {
      // Only what is still ours: the PID may belong to someone else once ours is gone (the same
      // process, exec'd or not, or a restored one running the same program).
      const same = (o.start !== undefined && startOf(o.pid) === o.start) || (o.exe !== undefined && o.exe !== '' && exeOf(o.pid) === o.exe)
      if (!same) continue
      try {
        process.kill(o.pid, 'SIGKILL')
      } catch {
        // gone meanwhile
      }
    }
    sh.kill('SIGKILL')
  })
  const ready = opts.ready ?? ((tg: Target) => /^ready pid=\d+$/m.test(tg.text()))
  await waitUntil(`${argv[0]} to be ready (output: ${JSON.stringify(target.text().slice(-300))})`, () => ready(target))
  exe = exeOf(pid) ?? ''
  return target
}

/**
 * Checkpoints `pid` (lazy mode), copies the tree to `saved` with `cp -a` (and, with `image`,
 * checkpoint-N.image to `saved.image`), ends the checkpoint
 * with `kill` and waits until the PID is free. Returns the checkpoint directory's name.
 */
export async function checkpointSaveKill(mnt: string, pid: number, saved: string, opts: { image?: boolean } = {}): Promise<string> {
  const dir = ckptfsOk('checkpoint', String(pid), '--mount', mnt)
  execFileSync('cp', ['-a', dir, saved])
  if (opts.image) execFileSync('cp', ['-a', `${dir}.image`, `${saved}.image`])
  fs.writeFileSync(path.join(dir, 'done'), 'kill\n')
  await waitUntil(`PID ${pid} to be gone`, () => !exists(pid))
  return path.basename(dir)
}

/**
 * The whole cycle for a fixture taking its work directory: launch `[program, dir, ...args]`,
 * checkpoint, save to DIR/saved, kill, restore with `ckptfs restore`.
 */
export async function launchSaveRestore(t: Teardownable, mnt: string, program: string, args: string[] = []): Promise<{ target: Target; dir: string; saved: string }> {
  const dir = workdir(t)
  const target = await launch(t, [program, dir, ...args], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  restoreOk(mnt, saved, target.pid)
  return { target, dir, saved }
}

/** Damages one byte of `file` at `at` (flips its bits), in place: a saved copy gone bad. */
export function flipByte(file: string, at: number): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const byte = Buffer.alloc(1)
    fs.readSync(fd, byte, 0, 1, at)
    fs.writeSync(fd, Buffer.from([byte[0] ^ 0xff]), 0, 1, at)
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * `ckptfs seal TREE`: after a test edits a saved tree on purpose, its checks (values_crc32c,
 * NAME_crc32c) are rewritten so the validator judges the edit, not the damage check. Returns
 * the files it rewrote.
 */
export function reseal(tree: string): string[] {
  const said = ckptfsOk('seal', tree)
  return said.startsWith('nothing rewritten') ? [] : said.split('\n').map((line) => line.replace(/^rewrote /, ''))
}

/** `ckptfs restore SAVED --mount MNT`. */
export function restoreCli(mnt: string, saved: string): CliResult {
  return ckptfs('restore', saved, '--mount', mnt)
}

/** Restores with `ckptfs restore` and checks that it answered the PID. */
export function restoreOk(mnt: string, saved: string, pid: number): void {
  const r = restoreCli(mnt, saved)
  if (r.status !== 0 || r.stdout.trim() !== String(pid)) {
    throw new Error(`ckptfs restore ${saved} exited ${r.status}, stdout ${JSON.stringify(r.stdout)}: ${r.stderr.trim()}`)
  }
}

export interface Checks {
  ok: string[]
  failed: string[]
  done: boolean
}

/** Creates DIR/go and waits for the fixture's "done" line; returns its ok and FAIL lines (after `since` bytes of output). */
export async function runChecks(target: Target, since = 0, ms = 15_000): Promise<Checks> {
  fs.writeFileSync(path.join(target.dir, 'go'), '')
  return collectChecks(target, since, ms)
}

export async function collectChecks(target: Target, since = 0, ms = 15_000): Promise<Checks> {
  const part = () => target.text().slice(since)
  let done = true
  await waitUntil('the fixture to say done', () => /^done \d+ failures$/m.test(part()), ms).catch(() => {
    done = false
  })
  const lines = part().split('\n')
  return {
    ok: lines.filter((l) => l.startsWith('ok ')).map((l) => l.slice(3)),
    failed: lines.filter((l) => l.startsWith('FAIL')),
    done,
  }
}

/** Every entry below `dir` (relative paths), for "nothing new was left here". */
export function listTree(dir: string): string[] {
  const out: string[] = []
  const walk = (rel: string) => {
    for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
      const p = path.join(rel, name)
      out.push(p)
      if (fs.lstatSync(path.join(dir, p)).isDirectory()) walk(p)
    }
  }
  walk('')
  return out
}
