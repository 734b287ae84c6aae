// How a mount's server is found: each server records itself in the root-only state directory
// /run/ckptfs (mode 0700, checked: lib/privatedir.ts), one file per mount point, holding its
// PID, its start time (so a PID reused by another process is not taken for it), the mount
// point and its restore area's backing directory. `ckptfs umount` and `ckptfs mount` read it:
// never a command line, never the caller's environment. The server writes the record before
// it mounts and removes it last when it exits; a record whose server is gone (killed, or a
// zombie not reaped yet) tells what that server left behind.

import { createHash } from 'crypto'
import * as fs from 'fs'
import * as path from 'path'
import { CkptError, errnoOf, messageOf } from '../lib/errors'
import { checkPrivateDir, CREATE_NEW, ensurePrivateDir } from '../lib/privatedir'

export const STATE_DIR = '/run/ckptfs'
/** The backing directories servers make (mkdtemp): the only ones a record may name. */
export const BACKING_PREFIX = 'ckptfs-area-'

export interface ServerRecord {
  pid: number
  /** Field 22 of /proc/PID/stat (clock ticks after boot): with the PID, one process. */
  started: string
  mnt: string
  backing: string
}

/** The record file of the server of `mnt`. */
export function recordPath(mnt: string): string {
  return path.join(STATE_DIR, `mount-${createHash('sha256').update(mnt).digest('hex').slice(0, 32)}`)
}

/** The start time of process `pid` and whether it still runs (not a zombie), or undefined once it is gone. */
export function processStart(pid: number): { started: string; running: boolean } | undefined {
  let stat: string
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // Fields from the state (3rd field of the line) on: starttime is the 22nd field.
  return { started: fields[19], running: fields[0] !== 'Z' && fields[0] !== 'X' }
}

/** Whether the server of `record` still runs. A zombie server has exited: it is done. */
export function serverRuns(record: ServerRecord): boolean {
  const now = processStart(record.pid)
  return now !== undefined && now.started === record.started && now.running
}

/** Records this process as the server of `mnt` (replacing the record of a dead server). */
export function writeRecord(mnt: string, backing: string): ServerRecord {
  ensurePrivateDir(STATE_DIR)
  const self = processStart(process.pid)
  if (!self) throw new CkptError(`/proc/${process.pid}/stat: cannot read this process's start time`)
  const record: ServerRecord = { pid: process.pid, started: self.started, mnt, backing }
  const file = recordPath(mnt)
  const fresh = `${file}.${process.pid}.new`
  fs.rmSync(fresh, { force: true })
  const fd = fs.openSync(fresh, CREATE_NEW | fs.constants.O_WRONLY, 0o600)
  try {
    fs.writeSync(fd, JSON.stringify(record) + '\n')
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(fresh, file) // readers see the old record or the new one, never half of one
  return record
}

/** The record of the server of `mnt`, or undefined when there is none. */
export function readRecord(mnt: string): ServerRecord | undefined {
  const file = recordPath(mnt)
  let text: string
  try {
    checkPrivateDir(STATE_DIR)
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW)
    try {
      text = fs.readFileSync(fd, 'utf8')
    } finally {
      fs.closeSync(fd)
    }
  } catch (err) {
    // No state directory yet, or no record in it: no server of `mnt` ever recorded itself.
    if (errnoOf(err) === 'ENOENT') return undefined
    throw new CkptError(`${file}: ${messageOf(err)}`)
  }
  let record: ServerRecord
  try {
    record = JSON.parse(text) as ServerRecord
  } catch (err) {
    throw new CkptError(`${file}: not a server record: ${messageOf(err)}`)
  }
  const valid = Number.isInteger(record.pid) && record.pid > 0 && /^[0-9]+$/.test(String(record.started)) &&
    record.mnt === mnt && typeof record.backing === 'string' && path.isAbsolute(record.backing) && path.basename(record.backing).startsWith(BACKING_PREFIX)
  if (!valid) throw new CkptError(`${file}: not a server record of ${mnt}: ${text.trim().slice(0, 200)}`)
  return record
}

/**
 * Removes what the dead server of `record` left: its backing directory (only if it is what a
 * server makes: a private directory of ours named BACKING_PREFIX...) and its record.
 */
export function removeLeftovers(record: ServerRecord): void {
  removeBacking(record.backing)
  removeRecord(record)
}

/** Removes a backing directory a server made; refuses anything else. A missing one is fine. */
export function removeBacking(backing: string): void {
  if (!fs.existsSync(backing) && !isLink(backing)) return
  if (!path.basename(backing).startsWith(BACKING_PREFIX)) throw new CkptError(`${backing}: not a restore area's backing directory; left alone`, 'EPERM')
  checkPrivateDir(backing)
  fs.rmSync(backing, { recursive: true, force: true })
}

/** Removes the record of `record`'s server, if it is still that server's. */
export function removeRecord(record: ServerRecord): void {
  let now: ServerRecord | undefined
  try {
    now = readRecord(record.mnt)
  } catch {
    now = undefined // unreadable: ours to replace
  }
  if (now && (now.pid !== record.pid || now.started !== record.started)) return
  fs.rmSync(recordPath(record.mnt), { force: true })
}

function isLink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink()
  } catch {
    return false
  }
}
