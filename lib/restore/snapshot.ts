// A saved tree on disk read in one walk (addon/src/treeread.c, on a pool thread): every
// entry's kind, owner and mode, and the bytes of every small file, from which both the owner
// check (owner.ts) and the loaders (lib/files/saved.ts, through StoredDir) work. Reading the
// 240,000 small files of a 10,000-fd tree one by one from JavaScript (open, read, close by
// path, and an lstat of each for the owner check) was most of a restore's time; and as the
// owner check and the loaders now see the same bytes, a file swapped between the two is not
// possible any more. A file too large to hold (pages, contents) is read from disk when asked
// for, as DiskDir reads it.

import { CkptError, errnoOf } from '../errors'
import { DiskDir, type CrcOut, type EntryKind, type StoredDir } from '../files/saved'
import { bufferSource, type ByteSource } from '../model'
import { native } from '../native'

/** Files up to this size are read in the walk (values, lists, manifests, checksum files). */
export const INLINE_MAX = 64 << 10
/** At most this many file bytes are held, the whole tree together; larger trees read the rest from disk. */
export const INLINE_BUDGET = 256 << 20

const ENTRY_HEAD = 24
const KINDS: readonly EntryKind[] = ['file', 'dir', 'other']
const FLAG_SYMLINK = 1
const FLAG_INLINED = 2

/** One entry as the walk found it (fstat of the fd it read, or lstat for what it did not open). */
export interface SnapshotEntry {
  readonly kind: EntryKind
  readonly symlink: boolean
  readonly mode: number
  readonly uid: number
  /** Bytes: what was read, for a file held here. */
  readonly size: number
  /** Where its bytes start in the walk's Buffer; -1 when they were not read. */
  readonly start: number
  /** CRC32C of the bytes read. */
  readonly crc32c: number
  readonly dir: SnapshotDir | undefined
}

export class SnapshotDir implements StoredDir {
  readonly entries = new Map<string, SnapshotEntry>()
  private disk: DiskDir | undefined

  constructor(readonly path: string, private readonly data: Buffer) {}

  list(): ReadonlyMap<string, SnapshotEntry> {
    return this.entries
  }

  entryKind(name: string): EntryKind | undefined {
    return this.entries.get(name)?.kind
  }

  dir(name: string): SnapshotDir {
    const entry = this.entries.get(name)
    if (!entry?.dir) throw new CkptError(`${name}: not a directory`, 'ENOTDIR')
    return entry.dir
  }

  private file(name: string): SnapshotEntry {
    const entry = this.entries.get(name)
    if (entry?.kind !== 'file') throw new CkptError(entry ? `${name}: not a regular file` : `${name}: no such file`, entry ? 'EISDIR' : 'ENOENT')
    return entry
  }

  /** The directory on disk, for a file the walk did not hold. */
  private onDisk(): DiskDir {
    return (this.disk ??= new DiskDir(this.path))
  }

  text(name: string, limit: number, crc: CrcOut): string | number {
    const entry = this.file(name)
    if (entry.start < 0) return this.onDisk().text(name, limit, crc)
    if (entry.size > limit) return entry.size
    crc.crc32c = entry.crc32c
    return this.data.toString('utf8', entry.start, entry.start + entry.size)
  }

  source(name: string): ByteSource {
    const entry = this.file(name)
    if (entry.start < 0) return this.onDisk().source(name)
    return bufferSource(this.data.subarray(entry.start, entry.start + entry.size))
  }

  diskPath(name: string): string {
    return this.onDisk().diskPath(name)
  }
}

/** The walk of a saved tree: its top directory (followed if a symbolic link, as named) and everything below. */
export interface Snapshot {
  root: SnapshotDir
  /** The top directory's own mode and owner. */
  mode: number
  uid: number
}

/** Reads the tree at `top` (an absolute path) in one walk off the JavaScript thread. */
export async function readSnapshot(top: string): Promise<Snapshot> {
  let data: Buffer
  try {
    data = await native.readTree(top, INLINE_MAX, INLINE_BUDGET)
  } catch (err) {
    throw new CkptError((err as Error).message, errnoOf(err))
  }
  const root = new SnapshotDir(top, data)
  const end = parseBlock(data, 8, root)
  if (end !== data.length) throw new CkptError(`${top}: the tree walk returned ${data.length} bytes, ${end} parsed`)
  return { root, mode: data.readUInt32LE(0), uid: data.readUInt32LE(4) }
}

/** Fills `dir` from the block at `at` (and its subdirectories from theirs); returns where the block ends. */
function parseBlock(data: Buffer, at: number, dir: SnapshotDir): number {
  const count = data.readUInt32LE(at)
  at += 4
  const prefix = dir.path.endsWith('/') ? dir.path : `${dir.path}/`
  for (let i = 0; i < count; i++) {
    const kind = KINDS[data[at]]
    const flags = data[at + 1]
    const nameLength = data.readUInt16LE(at + 2)
    const nameAt = at + ENTRY_HEAD
    const name = data.toString('utf8', nameAt, nameAt + nameLength)
    const dataLength = data.readUInt32LE(nameAt + nameLength)
    const start = nameAt + nameLength + 4
    const inlined = (flags & FLAG_INLINED) !== 0
    const sub = kind === 'dir' ? new SnapshotDir(prefix + name, data) : undefined
    dir.entries.set(name, {
      kind,
      symlink: (flags & FLAG_SYMLINK) !== 0,
      mode: data.readUInt32LE(at + 4),
      uid: data.readUInt32LE(at + 8),
      crc32c: data.readUInt32LE(at + 12),
      size: data.readDoubleLE(at + 16),
      start: inlined ? start : -1,
      dir: sub,
    })
    at = start + dataLength
    if (sub) at = parseBlock(data, at, sub)
  }
  return at
}
