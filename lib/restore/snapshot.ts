// A saved tree on disk read in one walk (addon/src/treeread.c, on a pool thread): every
// entry's kind, owner and mode, and the bytes of every small file, from which both the owner
// check (owner.ts) and the loaders (lib/files/saved.ts, through StoredDir) work. Reading the
// 240,000 small files of a 10,000-fd tree one by one from JavaScript (open, read, close by
// path, and an lstat of each for the owner check) was most of a restore's time; and as the
// owner check and the loaders now see the same bytes, a file swapped between the two is not
// possible any more for the values. Raw files (pages, contents, queues) are read from disk
// when asked for, as DiskDir reads them.

import { CkptError, errnoOf } from '../errors'
import { DiskDir, type CrcOut, type EntryKind, type StoredDir } from '../files/saved'
import type { ByteSource } from '../model'
import { native } from '../native'
import { savedFileSource } from '../files/source'

/** Files up to this size are read in the walk (values, lists, manifests, checksum files). */
export const INLINE_MAX = 64 << 10
/** At most this many file bytes are held, the whole tree together; larger trees read the rest from disk. */
export const INLINE_BUDGET = 256 << 20

const ENTRY_HEAD = 24
const KINDS: readonly EntryKind[] = ['file', 'dir', 'other']
const KIND_DIR = 1
const FLAG_SYMLINK = 1
const FLAG_INLINED = 2
/** Where the top directory's block starts: after its mode, its owner and the count of entries the owner check looks at. */
const TOP_BLOCK = 12

/** An entry of a directory's listing; the rest of what the walk found is read from its record when asked. */
export class SnapshotEntry {
  constructor(readonly kind: EntryKind, private readonly data: Buffer, readonly at: number) {}

  get symlink(): boolean {
    return (this.data[this.at + 1] & FLAG_SYMLINK) !== 0
  }

  get mode(): number {
    return this.data.readUInt32LE(this.at + 4)
  }

  get uid(): number {
    return this.data.readUInt32LE(this.at + 8)
  }
}

/**
 * One directory of the walk. Its listing is made from its block when first asked for, and a
 * subdirectory is made when opened, not kept: the loaders take the 20,000 directories of a
 * 10,000-fd tree one at a time, and 240,000 entries held at once cost more in garbage
 * collection than reading them.
 */
export class SnapshotDir implements StoredDir {
  private listing: Map<string, SnapshotEntry> | undefined
  private disk: DiskDir | undefined

  constructor(readonly path: string, private readonly data: Buffer, private readonly block: number) {}

  list(): ReadonlyMap<string, SnapshotEntry> {
    if (this.listing) return this.listing
    const listing = new Map<string, SnapshotEntry>()
    const data = this.data
    let at = this.block + 4
    for (let i = data.readUInt32LE(this.block); i > 0; i--) {
      const kind = KINDS[data[at]]
      const nameAt = at + ENTRY_HEAD
      const nameEnd = nameAt + data.readUInt16LE(at + 2)
      listing.set(data.toString('utf8', nameAt, nameEnd), new SnapshotEntry(kind, data, at))
      at = recordEnd(data, at, nameEnd)
    }
    this.listing = listing
    return listing
  }

  entryKind(name: string): EntryKind | undefined {
    return this.list().get(name)?.kind
  }

  dir(name: string): SnapshotDir {
    const entry = this.list().get(name)
    if (entry?.kind !== 'dir') throw new CkptError(`${name}: not a directory`, 'ENOTDIR')
    const nameEnd = entry.at + ENTRY_HEAD + this.data.readUInt16LE(entry.at + 2)
    return new SnapshotDir(`${this.path.endsWith('/') ? this.path : `${this.path}/`}${name}`, this.data, nameEnd + 4)
  }

  private file(name: string): SnapshotEntry {
    const entry = this.list().get(name)
    if (entry?.kind !== 'file') throw new CkptError(entry ? `${name}: not a regular file` : `${name}: no such file`, entry ? 'EISDIR' : 'ENOENT')
    return entry
  }

  /** Where the bytes of the file `name` are in the walk's Buffer; undefined when the walk did not hold them. */
  private held(name: string): { start: number; size: number; crc32c: number } | undefined {
    const entry = this.file(name)
    const data = this.data
    const at = entry.at
    if ((data[at + 1] & FLAG_INLINED) === 0) return undefined
    const nameEnd = at + ENTRY_HEAD + data.readUInt16LE(at + 2)
    return { start: nameEnd + 4, size: data.readUInt32LE(nameEnd), crc32c: data.readUInt32LE(at + 12) }
  }

  /** The directory on disk, for a file the walk did not hold. */
  private onDisk(): DiskDir {
    return (this.disk ??= new DiskDir(this.path))
  }

  text(name: string, limit: number, crc: CrcOut): string | number {
    const held = this.held(name)
    if (!held) return this.onDisk().text(name, limit, crc)
    if (held.size > limit) return held.size
    crc.crc32c = held.crc32c
    return this.data.toString('utf8', held.start, held.start + held.size)
  }

  /** A copy of the bytes the walk held (a list, registers), or undefined when it did not hold them (too large). */
  heldBytes(name: string, limit: number, crc: CrcOut): Buffer | number | undefined {
    const held = this.held(name)
    if (!held) return undefined
    if (held.size > limit) return held.size
    crc.crc32c = held.crc32c
    return Buffer.from(this.data.subarray(held.start, held.start + held.size))
  }

  /**
   * Raw bytes (pages, contents, queues) are read from disk even when the walk held them: a
   * file's source then tells where its bytes lie (extents), so the task reads its pages
   * itself and a lazy restore serves them from the file, whatever their size.
   */
  source(name: string): ByteSource {
    // A file the walk held has its size in the record: no lstat per file (the pages of each
    // mapping of each process of a tree). Its bytes are still read from disk, and checked.
    const held = this.held(name)
    if (held) return savedFileSource(this.onDisk().diskPath(name), held.size)
    return this.onDisk().source(name)
  }

  diskPath(name: string): string {
    return this.onDisk().diskPath(name)
  }
}

/** Where the record at `at` (its name ending at `nameEnd`) ends, its data and a directory's block included. */
function recordEnd(data: Buffer, at: number, nameEnd: number): number {
  const end = nameEnd + 4 + data.readUInt32LE(nameEnd)
  return data[at] === KIND_DIR ? end + data.readUInt32LE(at + 12) : end
}

/** Owner and mode of an entry, as the walk found them. */
export interface Owned {
  symlink: boolean
  mode: number
  uid: number
}

/** The walk of a saved tree: its top directory (followed if a symbolic link, as named) and everything below. */
export class Snapshot {
  readonly root: SnapshotDir

  constructor(readonly top: string, private readonly data: Buffer) {
    this.root = new SnapshotDir(top, data, TOP_BLOCK)
  }

  /**
   * How many entries below the top the walk found owned by a user other than root, or
   * writable by group or others (symbolic links aside): 0 for a tree root alone wrote, whose
   * records the owner check then need not read.
   */
  get userOrWritable(): number {
    return this.data.readUInt32LE(8)
  }

  /** The top directory's own mode and owner. */
  get owned(): Owned {
    return { symlink: false, mode: this.data.readUInt32LE(0), uid: this.data.readUInt32LE(4) }
  }

  /**
   * The entries below the top for which `notable(symlink, mode, uid)` holds, with their paths
   * (top/...), in the order of the lstat walk (owner.ts): each directory's entries, then the
   * directory found last first. Read from the records, without making a listing: only what
   * is notable (for the owner check, nearly nothing) makes an object.
   */
  *entriesWhere(notable: (symlink: boolean, mode: number, uid: number) => boolean): Generator<[string, Owned]> {
    const data = this.data
    const pending: Array<[string, number]> = [[this.top, TOP_BLOCK]]
    for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
      const [dir, block] = next
      let at = block + 4
      for (let i = data.readUInt32LE(block); i > 0; i--) {
        const nameAt = at + ENTRY_HEAD
        const nameEnd = nameAt + data.readUInt16LE(at + 2)
        const symlink = (data[at + 1] & FLAG_SYMLINK) !== 0
        const mode = data.readUInt32LE(at + 4)
        const uid = data.readUInt32LE(at + 8)
        if (notable(symlink, mode, uid)) yield [`${dir}/${data.toString('utf8', nameAt, nameEnd)}`, { symlink, mode, uid }]
        if (data[at] === KIND_DIR) pending.push([`${dir}/${data.toString('utf8', nameAt, nameEnd)}`, nameEnd + 4])
        at = recordEnd(data, at, nameEnd)
      }
    }
  }
}

/** Reads the tree at `top` (an absolute path) in one walk off the JavaScript thread. */
export async function readSnapshot(top: string): Promise<Snapshot> {
  let data: Buffer
  try {
    data = await native.readTree(top, INLINE_MAX, INLINE_BUDGET)
  } catch (err) {
    throw new CkptError((err as Error).message, errnoOf(err))
  }
  return new Snapshot(top, data)
}
