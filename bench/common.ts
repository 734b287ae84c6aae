// What every benchmark needs: building the C helpers, starting target processes (and only
// ever killing those, by PID), running the ckptfs CLI and shell commands with a clock around
// them, mounting and always unmounting, and the trivial fuse-native server.

import { execFileSync, spawn, spawnSync, type ChildProcess } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { serversOf } from '../mount/cli'

export const repo = path.resolve(__dirname, '..', '..')
export const benchDir = path.join(repo, 'bench')
export const outDir = path.join(benchDir, 'out')
export const cliPath = path.join(repo, 'dist', 'mount', 'cli.js')
const trivialServerPath = path.join(repo, 'dist', 'bench', 'trivial-server.js')

export const MiB = 1024 * 1024
export const GiB = 1024 * MiB

/** A tree served by the trivial server: [path relative to the mount, kind, size, permission bits]. */
export interface TreeShape {
  entries: Array<[string, 'd' | 'f', number, number]>
}

// ---- options ----

export interface Options {
  /** fds of the file-table target whose first listing is timed (issue 3: 10,000). */
  fds: number
  /** fds of the target whose whole tree is walked on ckptfs and the trivial server. */
  walkFds: number
  /** Walks of each server, alternating ckptfs and trivial; the best of each is shown. */
  walkRounds: number
  /** MiB of the large memory target (issue 4: 1 GiB). */
  memMib: number
  /** MiB of the small memory target (stop-to-ready must not depend on size). */
  smallMemMib: number
  /** Times the copy-mode and lazy checkpoints are repeated (the median is shown). */
  repeats: number
  /** checkpoint/done cycles of the leak benchmark (issue 13: 5,000). */
  leakCycles: number
  /** The cycle whose server RSS is the leak benchmark's baseline (issue 13: 500). */
  leakEarly: number
  /** At each mark, also give the server's free heap memory back (malloc_trim via gdb) and read the RSS left. */
  leakTrim: boolean
  /** Run the ckptfs server under node --cpu-prof and summarise where its time went. */
  profile: boolean
  /** Whether the restore benchmark restores the 10,000-fd task too (--restore-mem-only: not). */
  restoreFds: boolean
  /** MiB of the targets the compare benchmark runs through ckptfs and CRIU (issue 16: 64, 1024, 4096). */
  compareMibs: number[]
  /** Processes of the process-tree benchmark's target (issue 17: 100). */
  treeProcs: number
}

// ---- clean-up: everything started is stopped and unmounted, even on failure or ^C ----

const cleanups: Array<{ what: string; fn: () => void }> = []

/** Registers a clean-up; returns the function that runs it now (once) and forgets it. */
export function onCleanup(what: string, fn: () => void): () => void {
  const entry = { what, fn }
  cleanups.push(entry)
  return () => {
    const i = cleanups.indexOf(entry)
    if (i < 0) return
    cleanups.splice(i, 1)
    try {
      fn()
    } catch (err) {
      log(`clean-up (${what}) failed: ${(err as Error).message}`)
    }
  }
}

export function cleanupAll(): void {
  while (cleanups.length) {
    const { what, fn } = cleanups.pop()!
    try {
      fn()
    } catch (err) {
      log(`clean-up (${what}) failed: ${(err as Error).message}`)
    }
  }
}

process.on('exit', cleanupAll)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    log(`${sig}: cleaning up`)
    cleanupAll()
    process.exit(130)
  })
}

// ---- small helpers ----

export function log(line: string): void {
  process.stderr.write(`bench: ${line}\n`)
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** CLOCK_MONOTONIC in nanoseconds (what the C helpers print too). */
export const nowNs = (): bigint => process.hrtime.bigint()

export function seconds(fromNs: bigint, toNs: bigint = nowNs()): number {
  return Number(toNs - fromNs) / 1e9
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

/** A scratch directory, removed at clean-up. */
export function scratchDir(prefix: string, under = os.tmpdir()): string {
  const dir = fs.mkdtempSync(path.join(under, prefix))
  onCleanup(`remove ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Compiles bench/NAME.c into bench/out/NAME when missing or stale. */
export function buildC(name: string): string {
  const src = path.join(benchDir, `${name}.c`)
  const out = path.join(outDir, name)
  fs.mkdirSync(outDir, { recursive: true })
  if (!fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(src).mtimeMs) {
    execFileSync('gcc', ['-O2', '-Wall', '-pthread', '-o', out, src], { stdio: 'inherit' })
  }
  return out
}

// ---- shell commands with a clock ----

/** The environment of the commands run: C locale, no loaders in NODE_OPTIONS. */
export function commandEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C', ...extra }
  if (!('NODE_OPTIONS' in extra)) delete env.NODE_OPTIONS
  return env
}

export interface Timed {
  seconds: number
  status: number
  stdout: string
  stderr: string
}

/** Runs `sh -c cmd` and times it (the fork of sh included: about a millisecond). */
export function timeSh(cmd: string, opts: { timeoutMs?: number; stdout?: boolean } = {}): Timed {
  const t0 = nowNs()
  const r = spawnSync('sh', ['-c', cmd], {
    encoding: 'utf8',
    env: commandEnv(),
    stdio: ['ignore', opts.stdout ? 'pipe' : 'ignore', 'pipe'],
    maxBuffer: 256 * MiB,
    timeout: opts.timeoutMs ?? 600_000,
  })
  const s = seconds(t0)
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`)
  return { seconds: s, status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

/** timeSh that must succeed. */
export function timeShOk(cmd: string, opts: { timeoutMs?: number; stdout?: boolean } = {}): Timed {
  const r = timeSh(cmd, opts)
  if (r.status !== 0) throw new Error(`\`${cmd}\` exited ${r.status}: ${r.stderr.trim().split('\n').slice(0, 3).join(' | ')}`)
  return r
}

/** Quotes a word for sh. */
export const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`

// ---- the ckptfs CLI ----

let profileDir: string | undefined

/** Servers mounted from now on run under node --cpu-prof, writing their profile into `dir` when they exit. */
export function profileServersInto(dir: string | undefined): void {
  profileDir = dir
}

export function ckptfs(...args: string[]): Timed {
  const t0 = nowNs()
  const r = spawnSync(process.execPath, [cliPath, ...args], { encoding: 'utf8', timeout: 180_000, env: commandEnv() })
  const s = seconds(t0)
  return { seconds: s, status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' }
}

export function ckptfsOk(...args: string[]): Timed {
  const r = ckptfs(...args)
  if (r.status !== 0) throw new Error(`ckptfs ${args.join(' ')} exited ${r.status}: ${r.stderr.trim()}`)
  return r
}

function mountedAt(mnt: string): boolean {
  return fs.readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === mnt)
}

function lazyUnmount(mnt: string): void {
  if (mountedAt(mnt)) spawnSync('fusermount', ['-uz', mnt], { stdio: 'ignore' })
}

/** `ckptfs mount` in a fresh directory; clean-up runs `ckptfs umount` (which thaws every frozen task). */
export async function mountCkptfs(dir: string): Promise<{ mnt: string; unmount: () => void }> {
  const mnt = path.join(dir, 'mnt')
  if (profileDir) {
    // What `ckptfs mount` does, with the profiler: the foreground server as a detached process.
    const server = spawn(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, cliPath, 'mount', mnt, '--foreground'], { detached: true, stdio: 'ignore', env: commandEnv() })
    server.unref()
    const deadline = Date.now() + 30_000
    while (!mountedAt(mnt)) {
      if (Date.now() > deadline || server.exitCode !== null) throw new Error(`the profiled ckptfs server did not mount ${mnt}`)
      await sleep(50)
    }
  } else {
    ckptfsOk('mount', mnt)
  }
  const servers = serversOf(mnt)
  const unmount = onCleanup(`ckptfs umount ${mnt}`, () => {
    const r = ckptfs('umount', mnt)
    if (r.status !== 0) {
      // Its server is ours: end it by PID (SIGTERM thaws what it froze; a killed tracer's
      // tasks are detached by the kernel and run on), then drop the mount.
      log(`ckptfs umount ${mnt}: ${r.stderr.trim().split('\n')[0]}; stopping its server (pid ${servers.join(', ')}) and unmounting lazily`)
      for (const pid of servers) stopProcess(pid)
      lazyUnmount(mnt)
    }
  })
  return { mnt, unmount }
}

/** SIGTERM, up to 5 s to exit, then SIGKILL: for processes this benchmark started. */
function stopProcess(pid: number): void {
  try {
    process.kill(pid, 'SIGTERM')
  } catch {
    return // gone
  }
  const deadline = Date.now() + 5000
  while (processState(pid) !== undefined && processState(pid) !== 'Z' && Date.now() < deadline) spawnSync('sleep', ['0.05'])
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    // gone
  }
}

// ---- target processes ----

export interface Target {
  pid: number
  /** Every stdout line so far. */
  lines: string[]
  /** The first line matching `re` after line number `from` (waits up to `ms`). */
  waitFor(re: RegExp, ms?: number, from?: number): Promise<RegExpMatchArray>
  kill(): void
}

/**
 * Starts a target behind `sh -c 'PROGRAM ARGS | cat'` (as the tests do): its stdout is a
 * real pipe, which ckptfs can checkpoint, and it is not a child of this process. Waits for
 * its "ready pid=N" line. Clean-up kills the target and its sh, by PID.
 */
export async function startTarget(file: string, args: string[], readyMs = 60_000): Promise<Target> {
  const errFile = path.join(outDir, `${path.basename(file)}.stderr`)
  const child: ChildProcess = spawn('sh', ['-c', `"$0" "$@" 2>>${q(errFile)} | cat`, file, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
  const lines: string[] = []
  const waiters: Array<() => void> = []
  let buf = ''
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buf += chunk
    for (let nl; (nl = buf.indexOf('\n')) >= 0; buf = buf.slice(nl + 1)) lines.push(buf.slice(0, nl))
    waiters.splice(0).forEach((w) => w())
  })
  child.on('exit', () => waiters.splice(0).forEach((w) => w()))
  const target: Target = {
    pid: 0,
    lines,
    waitFor: (re, ms = 10_000, from = 0) => new Promise((resolve, reject) => {
      const deadline = setTimeout(() => reject(new Error(`${path.basename(file)}: no line matching ${re} within ${ms} ms (see ${errFile})`)), ms)
      const check = () => {
        const hit = lines.slice(from).map((l) => l.match(re)).find((m) => m)
        if (hit) {
          clearTimeout(deadline)
          resolve(hit)
        } else if (child.exitCode !== null || child.signalCode !== null) {
          clearTimeout(deadline)
          reject(new Error(`${path.basename(file)} exited before printing ${re} (see ${errFile})`))
        } else waiters.push(check)
      }
      check()
    }),
    kill: () => undefined,
  }
  target.kill = onCleanup(`kill ${path.basename(file)}`, () => {
    for (const pid of [target.pid, child.pid ?? 0]) {
      try {
        if (pid > 0) process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  })
  const line = await target.waitFor(/ready pid=([0-9]+)/, readyMs)
  target.pid = Number(line[1])
  return target
}

/** The state letter of a process (R, S, t, T, Z ...), or undefined once it is gone. */
export function processState(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]
  } catch {
    return undefined
  }
}

// ---- the trivial fuse-native server ----

/** Starts bench/trivial-server.ts as its own process; clean-up stops it and unmounts. */
export async function startTrivialServer(mnt: string, args: string[]): Promise<{ stop: () => void }> {
  const child = spawn(process.execPath, [trivialServerPath, mnt, ...args], { stdio: ['ignore', 'pipe', 'inherit'], env: commandEnv() })
  const stop = onCleanup(`stop the trivial server on ${mnt}`, () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) stopProcess(child.pid)
    lazyUnmount(mnt)
  })
  await new Promise<void>((resolve, reject) => {
    let said = ''
    const timer = setTimeout(() => reject(new Error('the trivial server did not mount within 60 s')), 60_000)
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      said += chunk
      if (said.includes('ready')) {
        clearTimeout(timer)
        resolve()
      }
    })
    child.on('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`the trivial server exited (${code}) before it mounted`))
    })
  })
  return { stop }
}

// ---- ls -laR output: the tree's shape ----

const LS_LINE = /^([-dlcbps])([-rwxsStT]{9})\S*\s+\d+\s+\S+\s+\S+\s+(\d+)\s+\S+\s+\S+\s+\S+\s(.*)$/

function permBits(perms: string): number {
  let bits = 0
  for (let i = 0; i < 9; i++) if (perms[i] !== '-' && perms[i] !== 'S' && perms[i] !== 'T') bits |= 1 << (8 - i)
  return bits
}

/**
 * The shape of a tree from `ls -laR TOP` output (C locale): every entry under TOP with its
 * kind, size and permission bits, paths relative to dirname(TOP) (so they start with
 * TOP's own name).
 */
export function shapeFromLs(output: string, top: string): TreeShape {
  const base = path.dirname(top)
  // The top directory itself (servers that list no "." give no line for it).
  const entries: TreeShape['entries'] = [[path.basename(top), 'd', 4096, 0o555]]
  let dir: string | undefined
  for (const line of output.split('\n')) {
    if (line.endsWith(':') && line.startsWith('/')) {
      dir = path.relative(base, line.slice(0, -1))
      continue
    }
    const m = LS_LINE.exec(line)
    if (!m || dir === undefined) continue
    const name = m[4]
    if (name === '.') {
      if (dir === path.basename(top)) entries[0][3] = permBits(m[2])
      continue
    }
    if (name === '..') continue
    entries.push([`${dir}/${name}`, m[1] === 'd' ? 'd' : 'f', Number(m[3]), permBits(m[2])])
  }
  return { entries }
}

/** Whether two shapes hold the same paths, kinds and sizes (modes aside). */
export function sameShape(a: TreeShape, b: TreeShape): string | undefined {
  // The top directory's own name aside (checkpoint-N counts up).
  const key = (e: TreeShape['entries'][number]) => `${e[0].replace(/^[^/]*/, '')} ${e[1] === 'd' ? 'dir' : `${e[2]} bytes`}`
  const left = new Set(a.entries.map(key))
  const right = new Set(b.entries.map(key))
  const missing = [...left].filter((k) => !right.has(k))
  const extra = [...right].filter((k) => !left.has(k))
  if (!missing.length && !extra.length) return undefined
  return `${missing.length + extra.length} entries differ (first: ${missing[0] ? `${missing[0]} only in the first` : ''}${missing[0] && extra[0] ? ', ' : ''}${extra[0] ? `${extra[0]} only in the second` : ''})`
}

/** Files and bytes in a local directory tree (a copy). */
export function treeTotals(dir: string): { entries: number; files: number; bytes: number } {
  let entries = 0
  let files = 0
  let bytes = 0
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      entries++
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.isFile()) {
        files++
        bytes += fs.statSync(p).size
      }
    }
  }
  walk(dir)
  return { entries, files, bytes }
}
