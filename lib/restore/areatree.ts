// What the restore area holds: the trees users copy in, kept by the server. Directories and
// small files live in memory; a file that grows past SMALL_FILE (memory pages, an image, an
// unlinked file's contents), or any file once MEMORY_LIMIT bytes are held, moves to its own
// backing file in a private directory on local disk, so a multi-GiB tree never sits in memory.
// That directory is the server's own (made at its start, mode 0700, checked: lib/privatedir.ts);
// backing files are made there with O_EXCL and every open refuses a symbolic link.
// Why memory: a saved task with 10,000 fds is some 180,000 files of a few bytes, and opening,
// reading and closing each on disk cost about 4 s of system calls per restore here; read from
// memory, loading the tree costs what parsing its values costs.
// The area's file operations follow rename(2), rmdir(2) and unlink(2): errors carry the errno.

import { isUtf8 } from 'buffer'
import * as fs from 'fs'
import { CkptError, messageOf } from '../errors'
import { bufferSource, type ByteSource } from '../model'
import type { CrcOut, EntryKind, StoredDir } from '../files/saved'
import { smallCrc32c, textCrc32c } from '../checksum'
import { fileSource } from '../files/source'
import { CREATE_NEW } from '../privatedir'

const { O_RDONLY, O_WRONLY, O_RDWR, O_NOFOLLOW } = fs.constants

/** Opens an existing backing file, never through a symbolic link. */
function openBacking(file: string, flags: number): number {
  return fs.openSync(file, flags | O_NOFOLLOW)
}

function readWhole(file: string): Buffer {
  const fd = openBacking(file, O_RDONLY)
  try {
    return fs.readFileSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/** Files up to this size are kept in memory. */
export const SMALL_FILE = 64 << 10
/** At most this many bytes of file contents are kept in memory, all trees together. */
export const MEMORY_LIMIT = 256 << 20

export type AreaEntry = AreaDir | AreaFile

/** A directory; the loaders (lib/files/saved.ts) read a saved tree straight from these. */
export class AreaDir implements StoredDir {
  readonly kind = 'dir'
  readonly entries = new Map<string, AreaEntry>()

  list(): ReadonlyMap<string, AreaEntry> {
    return this.entries
  }

  entryKind(name: string): EntryKind | undefined {
    return this.entries.get(name)?.kind
  }

  dir(name: string): AreaDir {
    const entry = this.entries.get(name)
    if (entry?.kind !== 'dir') throw new CkptError(`${name}: not a directory (any more)`, 'ENOTDIR')
    return entry
  }

  private file(name: string): AreaFile {
    const entry = this.entries.get(name)
    if (entry?.kind !== 'file') throw new CkptError(entry ? `${name}: not a regular file` : `${name}: no such file`, entry ? 'EISDIR' : 'ENOENT')
    return entry
  }

  text(name: string, limit: number, crc: CrcOut): string | number {
    const file = this.file(name)
    if (file.size > limit) return file.size
    crc.crc32c = file.crc32c()
    return file.text()
  }

  source(name: string): ByteSource {
    const file = this.file(name)
    return file.onDisk ? fileSource(file.diskPath(), file.size) : bufferSource(file.snapshot())
  }

  diskPath(name: string): string {
    return this.file(name).diskPath()
  }
}

/**
 * A file's contents are held in one of three ways. Most files of a tree are values of a few
 * bytes written in one piece: those are kept as their text (the loaders parse text; a string
 * of a few characters is also a fraction of a Buffer's size). A file written in pieces, or
 * not UTF-8, is kept as bytes; a large one moves to disk.
 */
export class AreaFile {
  readonly kind = 'file'
  /** The contents as text, when they are exactly this string's UTF-8 bytes. */
  private string: string | undefined
  /** The contents as bytes (its length is the capacity; `size` bytes are used). */
  private data: Buffer | undefined
  /** The backing file once the contents moved to disk. */
  private backing: string | undefined
  /** Bytes of memory reserved from the tree's budget. */
  private reserved = 0
  private discarded = false
  size = 0

  constructor(private readonly tree: AreaTree) {}

  get onDisk(): boolean {
    return this.backing !== undefined
  }

  read(offset: number, length: number): Buffer {
    const n = Math.max(0, Math.min(length, this.size - offset))
    if (n === 0) return Buffer.alloc(0)
    if (this.backing === undefined) return Buffer.from(this.bytes().subarray(offset, offset + n))
    const fd = openBacking(this.backing, O_RDONLY)
    try {
      const buf = Buffer.allocUnsafe(n)
      const got = fs.readSync(fd, buf, 0, n, offset)
      return buf.subarray(0, got)
    } finally {
      fs.closeSync(fd)
    }
  }

  write(offset: number, data: Buffer): void {
    if (this.discarded || data.length === 0) return
    const end = offset + data.length
    if (offset === 0 && this.size === 0 && this.backing === undefined && end <= SMALL_FILE && isUtf8(data) && this.reserve(end)) {
      this.string = data.toString('utf8')
      this.size = end
      return
    }
    if (this.backing === undefined && !this.makeRoom(end)) this.toDisk()
    if (this.backing === undefined) {
      if (offset > this.size) this.data!.fill(0, this.size, offset)
      data.copy(this.data!, offset)
      this.size = Math.max(this.size, end)
      return
    }
    const fd = openBacking(this.backing, O_RDWR)
    try {
      for (let done = 0; done < data.length;) done += fs.writeSync(fd, data, done, data.length - done, offset + done)
    } finally {
      fs.closeSync(fd)
    }
    this.size = Math.max(this.size, end)
  }

  truncate(size: number): void {
    if (this.discarded || size === this.size) return
    if (size === 0 && this.backing === undefined) {
      this.free()
      this.size = 0
      return
    }
    if (this.backing === undefined && !this.makeRoom(size)) this.toDisk()
    if (this.backing === undefined) {
      if (size > this.size) this.data!.fill(0, this.size, size)
    } else {
      const fd = openBacking(this.backing, O_WRONLY)
      try {
        fs.ftruncateSync(fd, size)
      } finally {
        fs.closeSync(fd)
      }
    }
    this.size = size
  }

  /** The contents as they are now (a restore reads these whatever is written later). */
  snapshot(): Buffer {
    return this.backing === undefined ? Buffer.from(this.bytes().subarray(0, this.size)) : readWhole(this.backing)
  }

  /** The contents decoded as UTF-8. */
  text(): string {
    if (this.string !== undefined) return this.string
    return this.backing === undefined ? (this.data?.toString('utf8', 0, this.size) ?? '') : readWhole(this.backing).toString('utf8')
  }

  /** The CRC32C of the contents (a value file's, checked against its manifest). */
  crc32c(): number {
    if (this.string !== undefined) return textCrc32c(this.string)
    return this.backing === undefined ? smallCrc32c(this.data ?? Buffer.alloc(0), 0, this.size) : smallCrc32c(readWhole(this.backing))
  }

  /** A path on disk holding the contents (moved there first if they are in memory). */
  diskPath(): string {
    if (this.backing === undefined) this.toDisk()
    return this.backing!
  }

  /** Removed from the tree: frees its memory or backing file; later writes are dropped. */
  discard(): void {
    if (this.discarded) return
    this.discarded = true
    this.free()
    if (this.backing !== undefined) fs.rmSync(this.backing, { force: true })
    this.backing = undefined
    this.size = 0
  }

  /** The in-memory contents as bytes (a Buffer of at least `size` bytes). */
  private bytes(): Buffer {
    return this.string !== undefined ? Buffer.from(this.string) : (this.data ?? Buffer.alloc(0))
  }

  private reserve(bytes: number): boolean {
    if (!this.tree.reserve(bytes)) return false
    this.reserved += bytes
    return true
  }

  private free(): void {
    this.tree.release(this.reserved)
    this.reserved = 0
    this.string = undefined
    this.data = undefined
  }

  /** Makes the in-memory bytes hold `end` bytes; false when the file must move to disk. */
  private makeRoom(end: number): boolean {
    if (this.string !== undefined) {
      // Written again in pieces: from now on kept as bytes.
      const bytes = Buffer.from(this.string)
      this.string = undefined
      this.data = bytes
    }
    const capacity = this.data?.length ?? 0
    if (end <= capacity) return true
    if (end > SMALL_FILE) return false
    // Grow by doubling (a file written in pieces), up to SMALL_FILE.
    const next = Math.min(SMALL_FILE, Math.max(end, capacity * 2))
    if (!this.reserve(next - this.reserved)) return false
    const data = Buffer.allocUnsafe(next)
    this.data?.copy(data, 0, 0, this.size)
    this.data = data
    return true
  }

  /** Moves the contents to a new backing file; a move that fails leaves no file behind. */
  private toDisk(): void {
    const file = this.tree.newBackingFile()
    let fd: number | undefined
    try {
      fd = fs.openSync(file, CREATE_NEW | O_WRONLY, 0o600)
      const bytes = this.bytes().subarray(0, this.size)
      for (let done = 0; done < bytes.length;) done += fs.writeSync(fd, bytes, done, bytes.length - done, done)
    } catch (err) {
      if (fd !== undefined) fs.rmSync(file, { force: true })
      throw new CkptError(`restore area: cannot move a file of ${this.size} bytes to ${file}: ${messageOf(err)}`, (err as NodeJS.ErrnoException).code === 'ENOSPC' ? 'ENOSPC' : 'EIO')
    } finally {
      if (fd !== undefined) fs.closeSync(fd)
    }
    this.free()
    this.backing = file
  }
}

export class AreaTree {
  readonly root = new AreaDir()
  private held = 0
  private nextBacking = 1

  /**
   * `backing`: an existing private directory (lib/privatedir.ts) that this tree owns and
   * removes on dispose(). `memoryLimit`: bytes of contents held in memory at most (tests make
   * it small).
   */
  constructor(readonly backing: string, private readonly memoryLimit = MEMORY_LIMIT) {}

  /** Bytes of file contents held in memory now. */
  get heldBytes(): number {
    return this.held
  }

  reserve(bytes: number): boolean {
    if (this.held + bytes > this.memoryLimit) return false
    this.held += bytes
    return true
  }

  release(bytes: number): void {
    this.held -= bytes
  }

  /** The path of a new backing file (not made yet: the caller creates it with O_EXCL). */
  newBackingFile(): string {
    return `${this.backing}/${this.nextBacking++}`
  }

  /** Frees an entry that left the tree, and everything below it. */
  discard(entry: AreaEntry): void {
    if (entry.kind === 'file') return entry.discard()
    for (const child of entry.entries.values()) this.discard(child)
    entry.entries.clear()
  }

  /** Frees everything, backing files included. */
  dispose(): void {
    this.discard(this.root)
    fs.rmSync(this.backing, { recursive: true, force: true })
  }

  // ---- the operations of a writable directory, as the system calls behave ----

  mkdir(dir: AreaDir, name: string): AreaDir {
    if (dir.entries.has(name)) throw new CkptError(`${name}: exists`, 'EEXIST')
    const made = new AreaDir()
    dir.entries.set(keyOf(name), made)
    return made
  }

  /** Creates `name` empty, or empties the file that is there (open with O_CREAT|O_TRUNC). */
  create(dir: AreaDir, name: string): AreaFile {
    const there = dir.entries.get(name)
    if (there?.kind === 'dir') throw new CkptError(`${name}: is a directory`, 'EISDIR')
    if (there) {
      there.truncate(0)
      return there
    }
    const made = new AreaFile(this)
    dir.entries.set(keyOf(name), made)
    return made
  }

  remove(dir: AreaDir, name: string): void {
    const entry = dir.entries.get(name)
    if (!entry) throw new CkptError(`${name}: no such file or directory`, 'ENOENT')
    if (entry.kind === 'dir' && entry.entries.size > 0) throw new CkptError(`${name}: directory not empty`, 'ENOTEMPTY')
    dir.entries.delete(name)
    this.discard(entry)
  }

  rename(from: AreaDir, fromName: string, to: AreaDir, toName: string): void {
    const entry = from.entries.get(fromName)
    if (!entry) throw new CkptError(`${fromName}: no such file or directory`, 'ENOENT')
    const there = to.entries.get(toName)
    if (there === entry) return
    if (there) {
      if (entry.kind === 'dir' && there.kind === 'file') throw new CkptError(`${toName}: not a directory`, 'ENOTDIR')
      if (entry.kind === 'file' && there.kind === 'dir') throw new CkptError(`${toName}: is a directory`, 'EISDIR')
      if (there.kind === 'dir' && there.entries.size > 0) throw new CkptError(`${toName}: directory not empty`, 'ENOTEMPTY')
      this.discard(there)
    }
    from.entries.delete(fromName)
    to.entries.set(keyOf(toName), entry)
  }
}

/**
 * The name as a key of the area's maps: V8's own copy of it (internalized). A name the FUSE
 * layer passes is a slice of the whole request path, which it would keep alive; and a tree
 * repeats the same few dozen names tens of thousands of times: this keeps one copy of each,
 * which the loaders' literal names match by identity.
 */
function keyOf(name: string): string {
  return Object.keys({ [name]: 0 })[0]
}
