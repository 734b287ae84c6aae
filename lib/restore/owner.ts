// Who stored a saved checkpoint decides which credentials it may come back with. A saved tree
// or image is code: restoring it runs what its memory holds with the credentials it names, so
// one kept in a user's files comes back only as that user (no capabilities, only their uid and
// groups), and one that anyone could have changed (group- or other-writable) not at all. What
// root alone owns comes back as saved: root trusts what root stored.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'
import type { Credentials, Pid, ProcessState } from '../model'
import type { Owned, Snapshot } from './snapshot'
import { parseLimits, RLIM_INFINITY } from '../task/procfs'

/** Who could have written a saved checkpoint, as found from its files' owners and modes. */
export type StoredBy =
  /** Root alone (or the caller chose the bytes, as with stdin): any saved credentials. */
  | { kind: 'root'; reason: string }
  /** A user owns at least one file: only that user's credentials. `file` is the one that decided. */
  | { kind: 'user'; uid: number; file: string }

const ROOT_ONLY: StoredBy = { kind: 'root', reason: 'owned by root' }
/** `ckptfs restore -`: no file, no owner; what was piped in is the caller's choice. */
export const CALLERS_CHOICE: StoredBy = { kind: 'root', reason: 'read from stdin' }
const RULE = "a checkpoint stored in a user's files comes back only as that user"

/**
 * Walks the saved checkpoint at `top` (a tree, a directory holding an image, an image or tar
 * file): every entry from `top` down, then the directories above it, by lstat, so a symbolic
 * link is never followed (the loaders do not follow them either) and counts by its own owner.
 * Refuses a group- or other-writable entry and entries owned by two different users.
 */
export function storedByOwners(top: string): StoredBy {
  const owners = new Owners()
  const st = fs.statSync(top) // the path the caller named: its target is what is read
  owners.consider(top, { symlink: false, mode: st.mode, uid: st.uid })
  const pending = st.isDirectory() ? [top] : []
  for (let dir = pending.pop(); dir !== undefined; dir = pending.pop()) {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = `${dir}/${entry.name}`
      const s = fs.lstatSync(file)
      owners.consider(file, { symlink: s.isSymbolicLink(), mode: s.mode, uid: s.uid })
      if (entry.isDirectory()) pending.push(file)
    }
  }
  return owners.withAncestors(top)
}

/**
 * The same rule over a tree read in one walk (snapshot.ts), whose entries' owners and modes
 * are those of the very files the loaders then parse: one pass over the tree, not two.
 */
export function storedBySnapshot(top: string, snapshot: Snapshot): StoredBy {
  const owners = new Owners()
  owners.consider(top, snapshot.owned)
  // Root's entries that others cannot write (nearly all) change nothing: only the rest are
  // looked at, and when the walk counted none (a tree root stored), no record is read.
  if (snapshot.userOrWritable > 0) {
    for (const [file, owned] of snapshot.entriesWhere((symlink, mode, uid) => uid !== 0 || (!symlink && (mode & 0o022) !== 0))) owners.consider(file, owned)
  }
  return owners.withAncestors(top)
}

/** Who the entries considered so far say stored the checkpoint. */
class Owners {
  private found: StoredBy = ROOT_ONLY

  consider(file: string, s: Owned): void {
    if (!s.symlink && (s.mode & 0o022) !== 0) {
      throw new CkptError(`${file}: writable by others (mode 0${(s.mode & 0o7777).toString(8)}): anyone could have changed it; a restore does not trust it`, 'EPERM')
    }
    if (s.uid === 0) return
    const found = this.found
    if (found.kind === 'root') this.found = { kind: 'user', uid: s.uid, file }
    else if (found.uid !== s.uid) {
      throw new CkptError(`${file}: owned by uid ${s.uid} (${userName(s.uid)}), but ${found.file} by uid ${found.uid} (${userName(found.uid)}): a saved checkpoint is stored by root or by one user`, 'EPERM')
    }
  }

  /**
   * Whoever may rename entries in a directory above could swap the checkpoint for another
   * between this walk and the read: each directory on the way to it (as named, and its real
   * path) counts as an owner too, and one others may write is refused unless root's and
   * sticky (/tmp), where only an entry's owner may rename it.
   */
  withAncestors(top: string): StoredBy {
    for (const dir of ancestors(top)) {
      const s = fs.lstatSync(dir)
      if (s.isDirectory() && (s.mode & 0o1000) !== 0 && s.uid === 0) continue
      this.consider(dir, { symlink: s.isSymbolicLink(), mode: s.mode, uid: s.uid })
    }
    return this.found
  }
}

/** The directories above `top`, from / down, as named and as its real path resolves them. */
function ancestors(top: string): string[] {
  const chain = (p: string) => {
    const out: string[] = []
    for (let dir = path.dirname(p); ; dir = path.dirname(dir)) {
      out.unshift(dir)
      if (dir === path.dirname(dir)) return out
    }
  }
  return [...new Set([...chain(path.resolve(top)), ...chain(fs.realpathSync(top))])]
}

/**
 * Refuses saved credentials that `storedBy` does not allow: for a user U, every uid must be
 * U, every gid one of U's groups, and no capability set may hold anything. `where` names the
 * saved checkpoint in messages (a tree's path, or an image file's).
 */
export function checkStoredCredentials(creds: Credentials, pid: Pid, storedBy: StoredBy, where: string): void {
  if (storedBy.kind === 'root') return
  const { uid, file } = storedBy
  const owner = `${file} is owned by uid ${uid} (${userName(uid)})`
  const refuse = (name: string, value: string) => {
    throw new CkptError(`${where}task-${pid}/creds/${name}: ${value}, but ${owner}: ${RULE}`, 'EPERM')
  }
  for (const name of ['uid', 'euid', 'suid', 'fsuid'] as const) {
    if (creds[name] !== uid) refuse(name, String(creds[name]))
  }
  const groups = groupsOf(uid)
  for (const name of ['gid', 'egid', 'sgid', 'fsgid'] as const) {
    if (!groups.has(creds[name])) refuse(name, `${creds[name]} (not a group of uid ${uid})`)
  }
  for (const gid of creds.groups) {
    if (!groups.has(gid)) refuse('groups', `${gid} (not a group of uid ${uid})`)
  }
  const caps = [['cap_permitted', creds.capPermitted], ['cap_effective', creds.capEffective], ['cap_inheritable', creds.capInheritable], ['cap_ambient', creds.capAmbient]] as const
  for (const [name, set] of caps) {
    if (set !== 0n) refuse(name, `0x${set.toString(16)} (capabilities)`)
  }
  // Set only with CAP_SETPCAP, kept across execve: a set-user-ID-root program run under it keeps
  // every capability after it drops root with setuid() (the restrictive bits are harmless).
  if (creds.securebits & SECBIT_NO_SETUID_FIXUP) refuse('securebits', `0x${creds.securebits.toString(16)} (SECBIT_NO_SETUID_FIXUP: a set-user-ID program would keep root's capabilities after it drops root)`)
}

const SECBIT_NO_SETUID_FIXUP = 1 << 2

/**
 * The same check for every process of a saved tree: each comes back with its own saved
 * credentials, so one task left unchecked would be a way to root (a child saved as uid 0
 * under a tree a user wrote).
 */
export function checkTreeCredentials(saved: { pid: Pid; process: StoredProcess; others?: Array<{ pid: number; process: StoredProcess }> }, storedBy: StoredBy, where: string): void {
  for (const { pid, process } of [saved, ...(saved.others ?? [])]) {
    checkStoredCredentials(process.creds, pid as Pid, storedBy, where)
    checkStoredSeccomp(process, pid as Pid, storedBy, where)
    checkStoredRlimits(process, pid as Pid, storedBy, where)
    checkStoredRoot(process, pid as Pid, storedBy, where)
    checkStoredTimers(process, pid as Pid, storedBy, where)
  }
}

type StoredProcess = Pick<ProcessState, 'creds' | 'noNewPrivs' | 'seccompThreads' | 'rlimits' | 'root' | 'posixTimers'>

/** CLOCK_REALTIME_ALARM and CLOCK_BOOTTIME_ALARM: timers that wake a suspended machine. */
const ALARM_CLOCKS = new Map([[8, 'CLOCK_REALTIME_ALARM'], [9, 'CLOCK_BOOTTIME_ALARM']])

/**
 * POSIX timers are made again by the task while it still holds the restorer's capabilities
 * (its credentials are set last), and a timer on an alarm clock needs CAP_WAKE_ALARM, which no
 * user has: a user's own checkpoint gets no alarm-clock timer.
 */
export function checkStoredTimers(process: Pick<ProcessState, 'posixTimers'>, pid: Pid, storedBy: StoredBy, where: string): void {
  if (storedBy.kind === 'root') return
  const alarm = process.posixTimers.find((t) => ALARM_CLOCKS.has(t.clockid))
  if (!alarm) return
  const { uid, file } = storedBy
  throw new CkptError(
    `${where}task-${pid}/timers/posix/${alarm.id}/clockid: ${alarm.clockid} (${ALARM_CLOCKS.get(alarm.clockid)}), but ${file} is owned by uid ${uid} (${userName(uid)}): ` +
      'a timer on an alarm clock needs CAP_WAKE_ALARM, and a checkpoint stored in a user\'s files is restored only with what that user could do',
    'EPERM',
  )
}

/**
 * The restorer chroots a task whose saved root is not / (CAP_SYS_CHROOT, which no user has):
 * a user's process chrooted into a directory of theirs, its cwd outside, runs a set-user-ID
 * program of the host whose loader (/lib64/ld-linux-x86-64.so.2), libraries and /etc are the
 * user's files: root. A user's own checkpoint comes back with / as its root.
 */
export function checkStoredRoot(process: Pick<ProcessState, 'root'>, pid: Pid, storedBy: StoredBy, where: string): void {
  if (storedBy.kind === 'root' || process.root === '/') return
  const { uid, file } = storedBy
  throw new CkptError(
    `${where}task-${pid}/root: ${process.root}, but ${file} is owned by uid ${uid} (${userName(uid)}): a checkpoint stored in a user's files comes back with / as its root (a user cannot chroot)`,
    'EPERM',
  )
}

/**
 * The restorer sets the saved limits with CAP_SYS_RESOURCE, which raises a hard limit no user
 * can raise (RLIMIT_RTPRIO 99 is a real-time scheduler to starve the machine with; MEMLOCK,
 * NPROC, NICE the like): a user's own checkpoint gets no hard limit above the restorer's own
 * (what its process inherits, as a user's login does).
 */
export function checkStoredRlimits(process: Pick<ProcessState, 'rlimits'>, pid: Pid, storedBy: StoredBy, where: string): void {
  if (storedBy.kind === 'root') return
  const own = parseLimits(fs.readFileSync('/proc/self/limits', 'utf8'))
  for (const r of process.rlimits) {
    const mine = own.find((o) => o.resource === r.resource)
    const hard = BigInt.asUintN(64, r.hard)
    if (!mine || hard <= mine.hard) continue
    const { uid, file } = storedBy
    throw new CkptError(
      `${where}task-${pid}/rlimits/${r.name}/hard: ${hard === RLIM_INFINITY ? 'unlimited' : hard}, above the restorer's own ${mine.hard === RLIM_INFINITY ? 'unlimited' : mine.hard}, but ${file} is owned by uid ${uid} (${userName(uid)}): ` +
        "a checkpoint stored in a user's files gets no limit its user could not have raised",
      'EPERM',
    )
  }
}

/**
 * Seccomp filters are installed while the restorer still holds CAP_SYS_ADMIN, as a task that
 * was root when it installed them and changed ids since needs (zdtm seccomp_filter). Without
 * no_new_privs a filter can fool a set-user-ID program (a setuid() made to return 0 without
 * acting), which is why the kernel lets only a task with no_new_privs or CAP_SYS_ADMIN
 * install one: a user's own checkpoint (no capabilities, checkStoredCredentials) gets its
 * filters back only with no_new_privs, which it must have had to install them itself.
 */
export function checkStoredSeccomp(process: Pick<ProcessState, 'noNewPrivs' | 'seccompThreads'>, pid: Pid, storedBy: StoredBy, where: string): void {
  if (storedBy.kind === 'root' || process.seccompThreads.length === 0 || process.noNewPrivs) return
  const { uid, file } = storedBy
  throw new CkptError(
    `${where}task-${pid}/seccomp: seccomp filters without no_new_privs, but ${file} is owned by uid ${uid} (${userName(uid)}): ` +
      'a task without CAP_SYS_ADMIN can install a filter only with no_new_privs set, and a checkpoint stored in a user\'s files is restored only with what that user could do',
    'EPERM',
  )
}

/** A user's name from /etc/passwd, or `no account` when it has none. */
function userName(uid: number): string {
  return passwdEntry(uid)?.[0] ?? 'no account'
}

function passwdEntry(uid: number): string[] | undefined {
  return readLines('/etc/passwd').map((l) => l.split(':')).find((f) => f.length >= 4 && Number(f[2]) === uid && f[2] !== '')
}

/** The gids a user belongs to: its primary group (/etc/passwd) and those listing it in /etc/group. */
function groupsOf(uid: number): Set<number> {
  const entry = passwdEntry(uid)
  const groups = new Set<number>()
  if (!entry) return groups
  groups.add(Number(entry[3]))
  for (const f of readLines('/etc/group').map((l) => l.split(':'))) {
    if (f.length >= 4 && f[3].split(',').includes(entry[0])) groups.add(Number(f[2]))
  }
  return groups
}

function readLines(file: string): string[] {
  return fs.readFileSync(file, 'utf8').split('\n').filter((l) => l !== '' && !l.startsWith('#'))
}
