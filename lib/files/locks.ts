// File locks held through an open file description: POSIX record locks (fcntl F_SETLK),
// flock() locks and open file description locks (F_OFD_SETLK). /proc/PID/fdinfo/N lists
// those taken through that description ("lock:" lines), whatever the file's type: the
// description's flock and OFD locks, and the POSIX locks of that task's process only (a
// POSIX lock belongs to a process). Shown as files/OBJREF/locks, one lock per line: KIND
// MODE START END, with END inclusive or EOF, as /proc/locks shows ranges ("posix write 5 14",
// "flock read 0 EOF"); in a checkpoint of several processes a POSIX lock ends with the
// task-PID of the process holding it ("posix write 5 14 task-1234"), as each task's are read
// from its own fdinfo (lib/fdtable.ts).
// A restore takes them again, as the task, once every file and mapping is in place (closing
// any fd of a file drops the process's POSIX locks on it, so nothing may be closed after).

import { asPid, type FileLock, type FileLockKind, type Pid } from '../model'
import { S64_MAX } from './saved'

const kindNames: Record<string, FileLockKind> = { POSIX: 'posix', FLOCK: 'flock', OFDLCK: 'ofd' }

/** "lock:\t1: POSIX  ADVISORY  WRITE 18713 fe:00:2146698 5 14" */
const lockLine = /^lock:\s+\d+:\s+(\S+)\s+(\S+)\s+(\S+)\s+-?\d+\s+\S+\s+(\d+)\s+(\d+|EOF)$/

/**
 * The locks of one description from a task's fdinfo lines, or why they cannot be restored.
 * `owner`, when given, is the task's process, recorded on its POSIX locks (a tree's).
 */
export function parseLocks(fdinfoLines: string[], owner?: Pid): { locks: FileLock[]; refused: string | undefined } {
  const locks: FileLock[] = []
  for (const line of fdinfoLines) {
    if (!line.startsWith('lock:')) continue
    const m = lockLine.exec(line)
    if (!m) return { locks, refused: `locks: an fdinfo lock line ckptfs cannot read: ${JSON.stringify(line)}` }
    const kind = kindNames[m[1]]
    if (kind === undefined) return { locks, refused: `locks: a ${m[1].toLowerCase()} (lease or delegation) cannot be restored: another process's open would break it meanwhile` }
    if (m[2] !== 'ADVISORY') return { locks, refused: `locks: a ${m[2].toLowerCase()} ${kind} lock cannot be restored` }
    if (m[3] !== 'READ' && m[3] !== 'WRITE') return { locks, refused: `locks: a ${kind} lock in state ${m[3]} cannot be restored` }
    const lock: FileLock = { kind, write: m[3] === 'WRITE', start: BigInt(m[4]), end: m[5] === 'EOF' ? undefined : BigInt(m[5]) }
    if (kind === 'posix' && owner !== undefined) lock.owner = owner
    locks.push(lock)
  }
  return { locks, refused: undefined }
}

/** files/OBJREF/locks: one line per lock; an empty file when there are none. */
export function locksText(locks: FileLock[]): string {
  return locks.map((l) => `${l.kind} ${l.write ? 'write' : 'read'} ${l.start} ${l.end ?? 'EOF'}${l.owner === undefined ? '' : ` task-${l.owner}`}\n`).join('')
}

/** Reads files/OBJREF/locks back; `fail(why)` names the file. */
export function parseLocksText(text: string, fail: (why: string) => Error): FileLock[] {
  if (text === '') return []
  if (!text.endsWith('\n')) throw fail('list is truncated (no trailing newline)')
  return text.slice(0, -1).split('\n').map((line, i) => {
    const m = /^(posix|flock|ofd) (read|write) (0|[1-9][0-9]{0,18}) (0|[1-9][0-9]{0,18}|EOF)(?: task-([1-9][0-9]{0,9}))?$/.exec(line)
    if (!m) throw fail(`line ${i + 1}: not "KIND MODE START END [task-PID]" (posix|flock|ofd, read|write, decimal, decimal or EOF, the process holding a POSIX lock): ${JSON.stringify(line)}`)
    const lock: FileLock = { kind: m[1] as FileLockKind, write: m[2] === 'write', start: BigInt(m[3]), end: m[4] === 'EOF' ? undefined : BigInt(m[4]) }
    if (m[5] !== undefined) lock.owner = asPid(Number(m[5]))
    return lock
  })
}

/**
 * What a restore relies on, for tree and image alike: a range inside the file offsets the
 * kernel takes, a whole-file flock, and an access mode that allows the lock (a read lock
 * needs a description open for reading, a write lock one open for writing; flock needs
 * neither). Returns why not, naming the line.
 */
export function lockProblem(locks: FileLock[], mode: number): string | undefined {
  for (const [i, l] of locks.entries()) {
    const at = `line ${i + 1} (${locksText([l]).trim()})`
    if (l.start > S64_MAX || (l.end !== undefined && (l.end > S64_MAX || l.end < l.start))) return `${at}: not a range of file offsets`
    if (l.owner !== undefined && (l.kind !== 'posix' || !Number.isInteger(l.owner) || l.owner < 1 || l.owner > 0x7fffffff)) {
      return l.kind === 'posix' ? `${at}: not a process ID: ${l.owner}` : `${at}: a ${l.kind} lock belongs to its description, not to a process (task-PID)`
    }
    if (l.kind === 'flock') {
      if (l.start !== 0n || l.end !== undefined) return `${at}: a flock lock covers the whole file (0 EOF)`
      continue
    }
    const needs = l.write ? 2 : 1
    if ((mode & needs) === 0) return `${at}: a ${l.write ? 'write' : 'read'} lock needs a description open for ${l.write ? 'writing' : 'reading'} (f_mode ${mode})`
  }
  return undefined
}
