// `ckptfs seal TREE`: after a deliberate edit of a saved tree, rewrites the checks a restore
// holds it to (every directory's values_crc32c, lib/manifest.ts, and every raw file's
// NAME_crc32c, lib/checksum.ts), so the validator judges the edited values again instead of
// the checks refusing them as damage. It runs with the rights of the tree's owner (a root
// caller drops to them first) and follows no symbolic link: it can only write what the owner
// could have written by hand. CRC32C detects damage, not tampering: whoever can write a tree
// can reseal it, so a restore never trusts a tree beyond its saved credentials (README, Trust).

import * as fs from 'fs'
import * as path from 'path'
import { crc32c, crcText, CRC_PIECE, CRC_SUFFIX } from './checksum'
import { CkptError, messageOf } from './errors'
import { isValueFile, MANIFEST, manifestText } from './manifest'
import { storedByOwners } from './restore/owner'

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK } = fs.constants

/**
 * Reseals the saved tree at `tree`; returns the files it rewrote, relative to the tree. They
 * are also added to `rewrote` as they are written, so a caller knows them after a failure.
 */
export function sealTree(tree: string, rewrote: string[] = []): string[] {
  const root = path.resolve(tree)
  const st = lstatOrFail(root, tree)
  if (st.isSymbolicLink()) throw new CkptError(`${tree}: a symbolic link: name the tree's directory itself (seal follows no link)`, 'EINVAL')
  if (!st.isDirectory()) throw new CkptError(`${tree}: not a directory: seal rewrites the checks of a saved tree`, 'ENOTDIR')
  if (!fs.readdirSync(root).some((n) => /^task-[0-9]+$/.test(n))) throw new CkptError(`${tree}: no task-PID directory: not a saved checkpoint tree`, 'EINVAL')
  actAsOwner(st, tree, root)
  // Every directory is looked at before anything is written: a link or a device anywhere
  // refuses the whole seal.
  const dirs = treeDirs(root, '')
  for (const { dir, rel, files } of dirs) sealDir(dir, rel, files, rewrote)
  return rewrote
}

interface TreeDir {
  dir: string
  /** Relative to the tree's top ('' for the top). */
  rel: string
  /** The regular files, by name. */
  files: Set<string>
}

const relName = (rel: string, name: string): string => (rel ? `${rel}/${name}` : name)

/** Every directory of the tree, children before their parent; refuses links and anything but files and directories. */
function treeDirs(dir: string, rel: string): TreeDir[] {
  const found: TreeDir[] = []
  const files = new Set<string>()
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const name = relName(rel, entry.name)
    if (entry.isSymbolicLink()) throw new CkptError(`${name}: a symbolic link: seal follows none (a saved tree holds none); nothing was rewritten`, 'EINVAL')
    if (entry.isDirectory()) found.push(...treeDirs(path.join(dir, entry.name), name))
    else if (entry.isFile()) files.add(entry.name)
    else throw new CkptError(`${name}: neither a regular file nor a directory: not part of a saved tree; nothing was rewritten`, 'EINVAL')
  }
  found.push({ dir, rel, files })
  return found
}

/**
 * A root caller takes the ids of the user the tree belongs to (every capability goes with
 * euid 0); anyone else must own its top. Whose it is, is the restore's rule
 * (lib/restore/owner.ts): a user's entry anywhere in it, or a user's directory above it, makes
 * it that user's even under a top of root's. Root alone acts as root, only on a tree no user
 * could change: a user's directory in it, swapped for a link to /etc/cron.d between the walk
 * and a rename, would have had root write a file there whose lines the user's names make.
 */
function actAsOwner(st: fs.Stats, tree: string, top: string): void {
  const euid = process.geteuid!()
  if (euid !== 0) {
    if (euid === st.uid) return
    throw new CkptError(`${tree}: belongs to uid ${st.uid}: only its owner (or root, acting as the owner) may seal it`, 'EPERM')
  }
  const storedBy = storedByOwners(top)
  if (storedBy.kind === 'root') return
  const gid = storedBy.file === top ? st.gid : fs.lstatSync(storedBy.file).gid
  process.setgroups!([gid])
  process.setegid!(gid)
  process.seteuid!(storedBy.uid)
}

function lstatOrFail(file: string, name: string): fs.Stats {
  try {
    return fs.lstatSync(file)
  } catch (err) {
    throw new CkptError(`${name}: ${messageOf(err)}`, (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'ENOENT' : 'EIO')
  }
}

/** Rewrites one directory's checks where they differ from its files. */
function sealDir(dir: string, rel: string, files: Set<string>, rewrote: string[]): void {
  const where = (name: string): string => relName(rel, name)
  const has = (name: string): boolean => files.has(name)
  const values = new Map<string, number>()
  let othersRead = true
  for (const name of [...files].sort()) {
    const file = path.join(dir, name)
    if (has(name + CRC_SUFFIX)) {
      if (rewriteIfChanged(dir, name + CRC_SUFFIX, crcText(pieceCrcsOf(file, where(name))), undefined)) rewrote.push(where(name + CRC_SUFFIX))
    } else if (isValueFile(name, has)) {
      values.set(name, crc32c(readWhole(file, where(name))))
      if ((fs.lstatSync(file).mode & 0o004) === 0) othersRead = false
    }
  }
  // As the mount: a manifest where there are values, readable by others when they all are.
  if (values.size === 0 && !has(MANIFEST)) return
  if (rewriteIfChanged(dir, MANIFEST, manifestText(values), othersRead ? 0o444 : 0o400)) rewrote.push(where(MANIFEST))
}

/** Opens a regular file of the tree for reading, never through a link, never waiting on a fifo. */
function openTreeFile(file: string, name: string): number {
  let fd: number
  try {
    fd = fs.openSync(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
  } catch (err) {
    throw new CkptError(`${name}: cannot be read: ${messageOf(err)}`, 'EIO')
  }
  if (!fs.fstatSync(fd).isFile()) {
    fs.closeSync(fd)
    throw new CkptError(`${name}: not a regular file (any more)`, 'EINVAL')
  }
  return fd
}

function readWhole(file: string, name: string): Buffer {
  const fd = openTreeFile(file, name)
  try {
    return fs.readFileSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** The CRC32C of each 1 MiB piece, read a piece at a time (a mapping's pages may be GiBs). */
function pieceCrcsOf(file: string, name: string): number[] {
  const fd = openTreeFile(file, name)
  const buffer = Buffer.allocUnsafe(CRC_PIECE)
  const crcs: number[] = []
  try {
    for (;;) {
      let n = 0
      while (n < CRC_PIECE) {
        const got = fs.readSync(fd, buffer, n, CRC_PIECE - n, null)
        if (got === 0) break
        n += got
      }
      if (n === 0) break
      crcs.push(crc32c(buffer.subarray(0, n)))
      if (n < CRC_PIECE) break
    }
  } finally {
    fs.closeSync(fd)
  }
  return crcs
}

/**
 * Replaces `dir/name` with `data` when it differs (or is missing): written to a fresh file
 * (O_EXCL, no link followed) and renamed over it, so a failure leaves the old one. The mode is
 * the old file's, or `newMode`. A directory the owner may not write (0500, as the mount makes
 * them) is made writable for the moment and given its mode back. True when it rewrote.
 */
function rewriteIfChanged(dir: string, name: string, data: Buffer, newMode: number | undefined): boolean {
  const target = path.join(dir, name)
  let mode = newMode ?? 0o400
  try {
    const old = fs.lstatSync(target)
    mode = old.mode & 0o7777
    if (old.isFile() && old.size === data.length && readWhole(target, target).equals(data)) return false
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const dirMode = fs.lstatSync(dir).mode & 0o7777
  const opened = (dirMode & 0o200) === 0 && process.geteuid!() !== 0
  if (opened) fs.chmodSync(dir, dirMode | 0o200)
  const temp = path.join(dir, `.${name}.seal-${process.pid}`)
  try {
    const fd = fs.openSync(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)
    try {
      for (let done = 0; done < data.length;) done += fs.writeSync(fd, data, done, data.length - done)
      fs.fchmodSync(fd, mode)
    } finally {
      fs.closeSync(fd)
    }
    fs.renameSync(temp, target)
  } catch (err) {
    fs.rmSync(temp, { force: true })
    throw new CkptError(`${target}: cannot be rewritten: ${messageOf(err)}`, 'EIO')
  } finally {
    if (opened) fs.chmodSync(dir, dirMode)
  }
  return true
}
