// Test helpers for security tests: an ordinary local user to replay attacks as, made once
// per machine with useradd, and commands run as that user with setpriv (no capabilities).

import { execFileSync, spawn, spawnSync, type SpawnSyncReturns } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import { launch, workdir, type Target } from './restore'

export const ATTACKER = 'ckptfs-attacker'

export interface LocalUser {
  name: string
  uid: number
  gid: number
  home: string
}

function lookup(name: string): LocalUser | undefined {
  const line = fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith(`${name}:`))
  if (!line) return undefined
  const f = line.split(':')
  return { name, uid: Number(f[2]), gid: Number(f[3]), home: f[5] }
}

/** The attacker's account: created (with a home directory) the first time it is asked for. */
export function attacker(): LocalUser {
  const found = lookup(ATTACKER)
  if (found && fs.existsSync(found.home)) return found
  if (!found) execFileSync('useradd', ['--create-home', '--shell', '/bin/sh', '--user-group', ATTACKER], { stdio: 'inherit' })
  const user = lookup(ATTACKER)!
  fs.mkdirSync(user.home, { recursive: true, mode: 0o755 })
  fs.chownSync(user.home, user.uid, user.gid)
  return user
}

/** The arguments that make `command` run as `user`: real, effective and saved ids, its groups, no capabilities. */
export function asUser(user: LocalUser, command: string[]): string[] {
  return ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--init-groups', '--inh-caps=-all', '--bounding-set=-all', '--reset-env', '--', ...command]
}

/** Runs `command` as `user` and waits for it; never throws. */
export function runAs(user: LocalUser, command: string[], opts: { cwd?: string; input?: string } = {}): SpawnSyncReturns<string> {
  const [file, ...args] = asUser(user, command)
  return spawnSync(file, args, { encoding: 'utf8', timeout: 60_000, cwd: opts.cwd ?? '/', input: opts.input })
}

/** A shell script run as `user`: returns its stdout; throws with its stderr when it fails. */
export function shAs(user: LocalUser, script: string): string {
  const r = runAs(user, ['sh', '-c', script])
  if (r.status !== 0) throw new Error(`as ${user.name}: sh -c ${JSON.stringify(script)} exited ${r.status ?? r.signal}: ${r.stderr.trim()}`)
  return r.stdout
}

/** Starts `command` as `user` in the background (e.g. a target to checkpoint). */
export function spawnAs(user: LocalUser, command: string[], cwd = '/') {
  const [file, ...args] = asUser(user, command)
  return spawn(file, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'] })
}

interface Teardownable {
  teardown(fn: () => void | Promise<void>): void
}

/**
 * The user's own process, the start of every attack on a checkpoint of theirs: `program DIR`
 * run as `user`, where DIR is a fresh work directory of theirs (mode 0755) and DIR/out, the
 * log its output goes to, is theirs too (so the restored process may open it again). Killed
 * at teardown.
 */
export async function launchAs(t: Teardownable, user: LocalUser, program: string): Promise<{ target: Target; dir: string }> {
  const dir = workdir(t)
  fs.chownSync(dir, user.uid, user.gid)
  const out = path.join(dir, 'out')
  fs.writeFileSync(out, '', { mode: 0o644 })
  fs.chownSync(out, user.uid, user.gid)
  const target = await launch(t, asUser(user, [program, dir]), { dir })
  return { target, dir }
}
