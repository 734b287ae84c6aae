// Test helpers for the real mount: run the built CLI, mount in a temporary directory, and
// always unmount (which thaws every frozen task) when the test ends, even when it fails.

import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { repo } from './targets'

export const cliPath = path.join(repo, 'dist', 'mount', 'cli.js')

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

export function ckptfs(...args: string[]): CliResult {
  // tap wraps child_process and puts its process-info loader back into every child's
  // NODE_OPTIONS; `env -u` drops it, so the CLI runs as a user's would (with the loader, one
  // run in several hundred hung for good at exit in Node 20's loader thread).
  const r = spawnSync('env', ['-u', 'NODE_OPTIONS', process.execPath, cliPath, ...args], { encoding: 'utf8', timeout: 120_000, env: userEnv })
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr }
}

/** ckptfs that must succeed: returns its trimmed stdout. */
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
