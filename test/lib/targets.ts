// Test helpers: build the C target programs in test/fixtures and examples/, start them, and
// make sure every process a test started is killed (and never left stopped) when it ends.

import { execFileSync, spawn, type ChildProcess } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'

export const repo = path.resolve(__dirname, '..', '..')
const binDir = path.join(repo, 'test', 'fixtures', 'bin')

/** Compiles test/fixtures/NAME.c (or examples/NAME.c) into test/fixtures/bin/NAME when it or a fixture header changed. */
export function buildTarget(name: string, extraFlags: string[] = []): string {
  const src = [path.join(repo, 'test', 'fixtures', `${name}.c`), path.join(repo, 'examples', `${name}.c`)].find((p) => fs.existsSync(p))
  if (!src) throw new Error(`no fixture source for ${name}`)
  fs.mkdirSync(binDir, { recursive: true })
  const out = path.join(binDir, name)
  // The fixtures' shared headers count too: a change to one rebuilds every fixture.
  const fixtures = path.join(repo, 'test', 'fixtures')
  const inputs = [src, ...fs.readdirSync(fixtures).filter((f) => f.endsWith('.h')).map((f) => path.join(fixtures, f))]
  if (!fs.existsSync(out) || inputs.some((input) => fs.statSync(out).mtimeMs < fs.statSync(input).mtimeMs)) {
    execFileSync('gcc', ['-O1', '-g', '-Wall', '-pthread', '-o', out, src, ...extraFlags], { stdio: 'inherit' })
  }
  return out
}

export interface Target {
  pid: number
  child: ChildProcess
  /** Every stdout line so far. */
  lines: string[]
  /** Resolves with the first stdout line matching `re` (waits up to `ms`). */
  waitFor(re: RegExp, ms?: number): Promise<RegExpMatchArray>
  kill(): void
}

const targets = new Set<Target>()
process.on('exit', () => {
  for (const target of targets) target.kill()
})

/**
 * Starts a program and waits for its first line matching `ready` (default: "ready"). It runs
 * behind `sh -c 'PROGRAM | cat'` so that its stdout is a real pipe (Node's own stdio pipes are
 * sockets, which cannot be checkpointed) and it is not a child of this process (libuv would
 * reap a child's ptrace stops). Its PID is read from "pid=N" in the ready line.
 */
export async function startTarget(file: string, args: string[] = [], ready: RegExp = /ready/, opts: { cwd?: string; stdin?: 'pipe' } = {}): Promise<Target> {
  const child = spawn('sh', ['-c', '"$0" "$@" | cat', file, ...args], { stdio: [opts.stdin ?? 'ignore', 'pipe', 'inherit'], cwd: opts.cwd })
  const lines: string[] = []
  const waiters: Array<() => void> = []
  let buf = ''
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buf += chunk
    let nl
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, nl))
      buf = buf.slice(nl + 1)
    }
    waiters.splice(0).forEach((w) => w())
  })
  child.on('exit', () => waiters.splice(0).forEach((w) => w()))
  const target: Target = {
    pid: 0,
    child,
    lines,
    waitFor: (re, ms = 10000) => new Promise((resolve, reject) => {
      const deadline = setTimeout(() => reject(new Error(`${path.basename(file)}: no line matching ${re} within ${ms} ms; got ${JSON.stringify(lines.slice(-5))}`)), ms)
      const check = () => {
        const hit = lines.map((l) => l.match(re)).find((m) => m)
        if (hit) { clearTimeout(deadline); resolve(hit) } else if (child.exitCode !== null || child.signalCode !== null) {
          clearTimeout(deadline); reject(new Error(`${path.basename(file)} exited (${child.exitCode ?? child.signalCode}) before printing ${re}`))
        } else waiters.push(check)
      }
      check()
    }),
    // Until it is ready only the shell is known (the program's PID comes with its ready line).
    kill: () => {
      child.kill('SIGKILL')
    },
  }
  const line = await target.waitFor(ready)
  // Without "pid=N" in the ready line (a test that wraps its own shell), the PID is the shell's.
  const pid = /pid=([0-9]+)/.exec(line.input ?? '')
  target.pid = pid ? Number(pid[1]) : child.pid!
  const identity = identityOf(target.pid)
  target.kill = () => {
    killIfSame(target.pid, identity)
    child.kill('SIGKILL')
  }
  targets.add(target)
  return target
}

/** What tells a process from a later one with its PID: its start time and its executable. */
export interface ProcessIdentity {
  start: string
  exe: string | undefined
}

/** `pid`'s identity now (undefined once it is gone). */
export function identityOf(pid: number): ProcessIdentity | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const start = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
    let exe: string | undefined
    try {
      exe = fs.readlinkSync(`/proc/${pid}/exe`)
    } catch {
      exe = undefined // a zombie, or exiting
    }
    return { start, exe }
  } catch {
    return undefined
  }
}

/**
 * SIGKILLs `pid` only while it is the process `was` named (the same start time) or a restored
 * one running its program (the same executable): never a process that took the PID later.
 */
export function killIfSame(pid: number, was: ProcessIdentity | undefined): void {
  const now = identityOf(pid)
  if (!was || !now || (now.start !== was.start && (was.exe === undefined || now.exe !== was.exe))) return
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    // gone meanwhile
  }
}

/** The state letter of a thread in /proc (R, S, t, T, Z ...), or undefined once it is gone. */
export function threadState(pid: number, tid: number = pid): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
  } catch {
    return undefined
  }
}

export function threadIds(pid: number): number[] {
  return fs.readdirSync(`/proc/${pid}/task`).map(Number).sort((a, b) => a - b)
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
