// Test helpers for the real mount: run the built CLI, mount in a temporary directory, and
// always unmount (which thaws every frozen task) when the test ends, even when it fails.

import { spawn, spawnSync } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { repo } from './targets'

const cliPath = path.join(repo, 'dist', 'mount', 'cli.js')
/** The compiled JavaScript (dist/), for tests that load a module of it in a child process. */
export const distDir = path.join(repo, 'dist')

export interface CliResult {
  status: number
  stdout: string
  stderr: string
}

/** The environment a user's shell would give ckptfs: without tap's loaders in NODE_OPTIONS. */
export const userEnv = (() => {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  return env
})()

/**
 * `node ARGS` as a user's shell runs it, as [file, args] for spawn. tap wraps child_process
 * and puts its process-info loader back into every child's NODE_OPTIONS, whatever env is
 * passed; `env -u` drops it (with the loader, one CLI run in several hundred hung for good at
 * exit in Node 20's loader thread). Every child node of the tests starts through this.
 */
export function userNode(...args: string[]): [string, string[]] {
  return ['env', ['-u', 'NODE_OPTIONS', process.execPath, ...args]]
}

/** The built CLI with `args`, as userNode runs it. */
export const cliCommand = (...args: string[]): [string, string[]] => userNode(cliPath, ...args)

const shellQuote = (word: string) => `'${word.replace(/'/g, `'\\''`)}'`

/** The same command as words for a shell script (a wrapper's `exec`, a `sh -c`): append "$@". */
export const cliShellWords = ['env', '-u', 'NODE_OPTIONS', process.execPath, cliPath].map(shellQuote).join(' ')

export interface CliOptions {
  env?: NodeJS.ProcessEnv
  input?: string | Buffer
  timeout?: number
}

/** Runs ckptfs and waits for it; never throws. */
export function ckptfsWith(opts: CliOptions, ...args: string[]): CliResult {
  const [file, argv] = cliCommand(...args)
  const r = spawnSync(file, argv, { encoding: 'utf8', timeout: opts.timeout ?? 120_000, env: opts.env ?? userEnv, input: opts.input })
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr }
}

export function ckptfs(...args: string[]): CliResult {
  return ckptfsWith({}, ...args)
}

/** ckptfs run in the background, so that several run at once (or the test watches its output meanwhile). */
export function ckptfsAsync(args: string[], opts: { env?: NodeJS.ProcessEnv; input?: Buffer; onStderr?: (all: string) => void } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const [file, argv] = cliCommand(...args)
    const child = spawn(file, argv, { env: opts.env ?? userEnv, stdio: [opts.input ? 'pipe' : 'ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout!.setEncoding('utf8').on('data', (c: string) => (stdout += c))
    child.stderr!.setEncoding('utf8').on('data', (c: string) => {
      stderr += c
      opts.onStderr?.(stderr)
    })
    if (opts.input) child.stdin!.end(opts.input)
    child.on('close', (code) => resolve({ status: code ?? -1, stdout, stderr }))
  })
}

/** ckptfs that must succeed: returns its trimmed stdout. */
/** A `ckptfs restore --lazy` under way: the PID it printed first, and its end. */
export interface LazyRun {
  pid: number
  /** Resolves with the command's exit status and stderr once it ends. */
  ended: Promise<{ status: number | null; stderr: string }>
}

/** Starts `ckptfs restore --lazy ARGS` and waits until it prints the PID (the command then fills pages until its end). */
export async function restoreLazy(t: Teardownable, args: string[]): Promise<LazyRun> {
  const child = spawn(...cliCommand('restore', '--lazy', ...args), { env: userEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  let stdout = ''
  let stderr = ''
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  const ended = new Promise<{ status: number | null; stderr: string }>((resolve) => child.on('close', (status) => resolve({ status, stderr })))
  const pid = await new Promise<number>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      stdout += s
      if (stdout.includes('\n')) resolve(Number(stdout.trim()))
    })
    void ended.then((r) => reject(new Error(`ckptfs restore --lazy ended (${r.status}) before printing a PID: ${r.stderr.trim()}`)))
  })
  return { pid, ended }
}

export function ckptfsOk(...args: string[]): string {
  const r = ckptfs(...args)
  if (r.status !== 0) throw new Error(`ckptfs ${args.join(' ')} exited ${r.status}: ${r.stderr.trim()}`)
  return r.stdout.trim()
}

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void
}

/** Mounts ckptfs in a fresh temporary directory; unmounts and removes it at teardown. */
export function mountFor(t: Teardownable, ...extra: string[]): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-test-'))
  const mnt = path.join(dir, 'mnt')
  ckptfsOk('mount', mnt, ...extra)
  t.teardown(() => {
    ckptfs('umount', mnt)
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return mnt
}

export function mounted(mnt: string): boolean {
  return fs.readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === mnt)
}
