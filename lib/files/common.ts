// The entries every files/OBJREF directory has, shown and loaded back in one place:
// fd_type, target, f_flags, f_mode, f_pos, mnt_id, ino, checkpointable, locks.

import { CkptError } from '../errors'
import { asObjRef, type FileDescription, type FdType, type ObjRef } from '../model'
import { attr, bytes, octal, type TableEntry } from '../tree/node'
import { locksText, lockProblem, parseLocksText } from './locks'
import type { DescriptionBase } from './handler'
import { INT_MAX, S64_MAX, S64_MIN, U32_MAX, U64_MAX, type SavedDir } from './saved'

export const O_ACCMODE = 0o3
export const O_CREAT = 0o100
export const O_EXCL = 0o200
export const O_NOCTTY = 0o400
export const O_TRUNC = 0o1000
export const O_NONBLOCK = 0o4000
export const O_PATH = 0o10000000
export const FMODE_READ = 1
export const FMODE_WRITE = 2

/** Open flags that must never come from a saved tree (reference/004, restore_open_fname). */
const refusedFlags: Array<[number, string]> = [[O_CREAT, 'O_CREAT'], [O_EXCL, 'O_EXCL'], [O_NOCTTY, 'O_NOCTTY'], [O_TRUNC, 'O_TRUNC']]

/** A refusal of the saved value `name` of a description, named by its tree path (files/7/f_flags). */
export function invalid(desc: { objref: ObjRef }, name: string, why: string, errno: 'EINVAL' | 'ENOTSUP' = 'EINVAL'): CkptError {
  return new CkptError(`files/${desc.objref}${name ? `/${name}` : ''}: ${why}`, errno)
}

/** The refused open flags of `flags`, by name (empty: none). */
export function refusedFlagNames(flags: number): string[] {
  return refusedFlags.filter(([bit]) => flags & bit).map(([, name]) => name)
}

/** f_mode as the kernel derives it from the access mode (O_PATH and access mode 3 give neither). */
export function modeFromFlags(flags: number): number {
  if (flags & O_PATH) return 0
  switch (flags & O_ACCMODE) {
    case 0: return FMODE_READ
    case 1: return FMODE_WRITE
    case 2: return FMODE_READ | FMODE_WRITE
    default: return 0
  }
}

function checkpointableText(why: string | undefined): string {
  return why === undefined ? 'yes' : `no: ${why}`
}

const commonEntries: TableEntry<FileDescription>[] = [
  attr('fd_type', (d) => d.type),
  attr('target', (d) => d.target),
  attr('f_flags', (d) => octal(d.flags)),
  attr('f_mode', (d) => octal(d.mode)),
  attr('f_pos', (d) => d.pos),
  attr('mnt_id', (d) => d.mntId),
  attr('ino', (d) => d.ino),
  attr('checkpointable', (d) => checkpointableText(d.notCheckpointable)),
  bytes('locks', (d) => Buffer.from(locksText(d.locks))),
]

/** A handler's whole table: the common entries, then its own. Build once per table (the tree indexes tables by identity). */
export function withCommon<D extends FileDescription>(own: TableEntry<D>[]): TableEntry<D>[] {
  return [...commonEntries, ...own]
}

/** Parses a files/OBJREF directory name. */
export function parseObjRef(name: string): ObjRef | undefined {
  if (!/^[1-9][0-9]*$/.test(name) || Number(name) > INT_MAX) return undefined
  return asObjRef(Number(name))
}

/** Reads and validates the common entries of a saved files/OBJREF directory. */
export function loadBase(dir: SavedDir, objref: ObjRef): DescriptionBase {
  const target = dir.text('target')
  if (target === '') throw dir.fail('target', 'empty')
  const flags = dir.octal('f_flags', U32_MAX)
  const mode = dir.octal('f_mode', BigInt(FMODE_READ | FMODE_WRITE))
  const pos = dir.decimal('f_pos', S64_MIN, S64_MAX)
  const mntId = dir.int('mnt_id', 0, INT_MAX)
  const ino = dir.decimal('ino', 0n, U64_MAX)
  const checkpointable = dir.text('checkpointable')
  let notCheckpointable: string | undefined
  if (checkpointable.startsWith('no: ') && checkpointable.length > 4) notCheckpointable = checkpointable.slice(4)
  else if (checkpointable !== 'yes') throw dir.fail('checkpointable', `neither "yes" nor "no: WHY": ${JSON.stringify(checkpointable)}`)
  // A tree saved before locks were recorded has no locks file: it held none ckptfs knew of.
  const locks = dir.has('locks') ? parseLocksText(dir.listText('locks'), (why) => dir.fail('locks', why)) : []
  return { objref, target, flags, mode, pos, mntId, ino, notCheckpointable, locks }
}

/** The checks every description gets, whatever its type (lib/restore/validate.ts). */
export function validateCommon(desc: FileDescription): void {
  if (desc.target === '') throw invalid(desc, 'target', 'empty')
  const refused = refusedFlagNames(desc.flags)
  if (refused.length) throw invalid(desc, 'f_flags', `${refused.join(', ')} ${refused.length > 1 ? 'are' : 'is'} refused`)
  // A saved mode may be narrower than the access mode (a downgraded file), never wider.
  const allowed = modeFromFlags(desc.flags)
  if (desc.mode & ~allowed) throw invalid(desc, 'f_mode', `${octal(desc.mode)} grants more than the access mode of f_flags allows (${octal(allowed)})`)
  const lockWhy = lockProblem(desc.locks, desc.mode)
  if (lockWhy !== undefined) throw invalid(desc, 'locks', lockWhy)
}

/** For types that are never checkpointable (sockets, unknown files): a saved "yes" is inconsistent. */
export function requireNotCheckpointable(dir: SavedDir, base: DescriptionBase, type: FdType): void {
  if (base.notCheckpointable === undefined) throw dir.fail('checkpointable', `a ${type} description cannot be checkpointable`)
}

/**
 * A description from its common fields and its own. Object spread ({ ...base, ... }) costs
 * microseconds per object here (it takes V8's slow path), and a restore of 10,000 fds makes
 * one description per open file: the common fields are assigned to `own` instead.
 */
export function described<D extends FileDescription>(base: DescriptionBase, own: Omit<D, keyof DescriptionBase>): D {
  const d = own as D
  d.objref = base.objref
  d.target = base.target
  d.flags = base.flags
  d.mode = base.mode
  d.pos = base.pos
  d.mntId = base.mntId
  d.ino = base.ino
  d.notCheckpointable = base.notCheckpointable
  d.locks = base.locks
  return d
}
