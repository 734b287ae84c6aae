// Directories only this process's user can write: the restore area's backing directory and the
// servers' state directory. Their files are opened by path, which is as safe as opening them
// relative to a directory fd when nobody else can change any directory on that path: each one
// must belong to root or to us and be writable by nobody else, or be sticky (like /tmp, where
// nobody else can remove or rename our entry). These functions make sure that holds, and
// refuse (naming the directory and the problem) when it does not.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError, messageOf } from './errors'

const S_ISVTX = 0o1000
const euid = () => process.geteuid?.() ?? 0

/** Why nobody else can change entries of `dir` (an existing directory), or a CkptError. */
function checkAncestor(dir: string): void {
  const st = fs.lstatSync(dir)
  if (st.isSymbolicLink()) throw new CkptError(`${dir}: a symbolic link; refusing to keep private files below it`, 'EPERM')
  if (!st.isDirectory()) throw new CkptError(`${dir}: not a directory`, 'ENOTDIR')
  if (st.uid !== 0 && st.uid !== euid()) throw new CkptError(`${dir}: owned by uid ${st.uid}; refusing to keep private files below it`, 'EPERM')
  if ((st.mode & 0o022) !== 0 && (st.mode & S_ISVTX) === 0) {
    throw new CkptError(`${dir}: writable by others (mode ${(st.mode & 0o7777).toString(8)}) and not sticky; refusing to keep private files below it`, 'EPERM')
  }
}

/** Checks that `dir` is our own directory, mode 0700, not a link, below directories nobody else can change. */
export function checkPrivateDir(dir: string): void {
  let st: fs.Stats
  try {
    st = fs.lstatSync(dir)
  } catch (err) {
    throw new CkptError(`${dir}: ${messageOf(err)}`, 'ENOENT')
  }
  if (st.isSymbolicLink()) throw new CkptError(`${dir}: a symbolic link, not a private directory`, 'EPERM')
  if (!st.isDirectory()) throw new CkptError(`${dir}: not a directory`, 'ENOTDIR')
  if (st.uid !== euid()) throw new CkptError(`${dir}: owned by uid ${st.uid}, not by this process (uid ${euid()})`, 'EPERM')
  if ((st.mode & 0o7777) !== 0o700) throw new CkptError(`${dir}: mode ${(st.mode & 0o7777).toString(8)}, not 700`, 'EPERM')
  for (let up = path.dirname(dir); ; up = path.dirname(up)) {
    checkAncestor(up)
    if (up === path.dirname(up)) break
  }
}

/**
 * Makes a new private directory `parent/PREFIXxxxxxx` (mkdtemp: a fresh name that nobody
 * could have made first) and checks it. `parent` is resolved first, so its own links do not
 * matter; what is below it is checked.
 */
export function makePrivateDir(parent: string, prefix: string): string {
  let real: string
  try {
    real = fs.realpathSync(parent)
  } catch (err) {
    throw new CkptError(`${parent}: ${messageOf(err)}`, 'ENOENT')
  }
  const dir = fs.mkdtempSync(path.join(real, prefix))
  try {
    fs.chmodSync(dir, 0o700) // mkdtemp makes it 0700 already; this is against an odd umask
    checkPrivateDir(dir)
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true })
    throw err
  }
  return dir
}

/**
 * Makes `dir` if it is missing (one fixed name, such as /run/ckptfs) and checks it. A name
 * that exists already is accepted only if it passes the checks: it is never repaired, since
 * whoever made it might still hold it open.
 */
export function ensurePrivateDir(dir: string): string {
  try {
    fs.mkdirSync(dir, { mode: 0o700 })
    fs.chmodSync(dir, 0o700) // made here: against an odd umask
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new CkptError(`${dir}: cannot make it: ${messageOf(err)}`)
  }
  checkPrivateDir(dir)
  return dir
}

/** Flags that create a new file and never follow a link or reuse a name. */
export const CREATE_NEW = fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW
