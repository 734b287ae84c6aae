// Reading a saved copy of the tree back (what `cp -a` of a checkpoint-N directory leaves on
// disk), one directory at a time. Every value is validated as it is read, and every error
// names the file relative to the tree root: "files/7/f_flags: O_TRUNC is refused".
// A SavedDir remembers which entries were read, so `finish` can refuse the ones nobody knows.

import * as fs from 'fs'
import { CkptError } from '../errors'
import type { ByteSource, Lazy } from '../model'
import { lazy } from '../model'
import { savedFileSource } from './source'
import { checkBuffer, checkCount, crc32c, CRC_LINE_BYTES, CRC_SUFFIX, parseCrcText, smallCrc32c, withCrcs } from '../checksum'
import { crcHex, isValueFile, MANIFEST, parseManifest } from '../manifest'

/** Longest single-line value accepted (a path of PATH_MAX bytes and some slack). */
const maxValueBytes = 8192
/** Longest list file accepted (other_links). */
const maxListBytes = 1 << 20
/**
 * Largest queue file (pipe `buffered`, socket `queue`, TCP queues) a restore reads: far above
 * what the kernel queues hold by default (a pipe 1 MiB, a socket some MiB), far below node's
 * Buffer limit; each is held whole in memory.
 */
const maxQueueBytes = 256 << 20
/** Longest checksum file accepted: one line per MiB of a mapping of up to 64 TiB. */
const maxCrcBytes = CRC_LINE_BYTES * (64 << 20)
/** A whole value file holding one number of each form (decimalText, octal, hex say what else is wrong). */
const decimalLine = /^(0|-?[1-9][0-9]*)\n$/
const octalLine = /^0[0-7]*\n$/
const hexLine = /^0x[0-9a-fA-F]+\n$/
/** Longest manifest accepted: a directory of values holds a few dozen. */
const maxManifestBytes = 1 << 20
/** Names a SavedDir keeps in a list before it moves them to a Set. */
const usedListMax = 32

export const U32_MAX = 0xffffffffn
export const U64_MAX = 0xffffffffffffffffn
export const S64_MIN = -(1n << 63n)
export const S64_MAX = (1n << 63n) - 1n
export const INT_MAX = 0x7fffffff

/** Where StoredDir.text puts the CRC32C of the bytes it read (one object, reused: no allocation per value). */
export interface CrcOut {
  crc32c: number
}
const lastCrc: CrcOut = { crc32c: 0 }

/** What a directory listing says an entry is (symbolic links, fifos, devices: 'other'). */
export type EntryKind = 'file' | 'dir' | 'other'

/**
 * One directory of a saved tree, where its bytes are: on disk (DiskDir below), or in the
 * restore area's tree in the server's memory (AreaDir, lib/restore/areatree.ts).
 */
export interface StoredDir {
  /** Name -> what each entry is; throws when the directory cannot be listed. */
  list(): ReadonlyMap<string, { readonly kind: EntryKind }>
  /** What `name` is, links not followed; undefined when missing; throws when it cannot be checked. */
  entryKind(name: string): EntryKind | undefined
  /** The subdirectory `name` (checked by the caller to be one). */
  dir(name: string): StoredDir
  /**
   * The whole regular file as UTF-8, or its size when larger than `limit` (never read then);
   * the CRC32C of the bytes read goes into `crc` (of the bytes, not of the decoded text).
   */
  text(name: string, limit: number, crc: CrcOut): string | number
  /** The file's bytes read in pieces (contents); the size is fixed now. */
  source(name: string): ByteSource
  /**
   * The whole regular file's bytes when they are in memory already (the walk of a saved tree
   * held them: snapshot.ts), their CRC32C into `crc`; its size when larger than `limit`;
   * undefined when they are not held (then `source` reads them).
   */
  heldBytes?(name: string, limit: number, crc: CrcOut): Buffer | number | undefined
  /** A path on disk that holds the file (the image reader's random access). */
  diskPath(name: string): string
}

/** Only an entry listed as a regular file is opened, and never through a symbolic link, never waiting. */
const openFlags = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK
/** Values are read into this one buffer (reads are synchronous, and each is decoded at once). */
const valueBuffer = Buffer.allocUnsafe(maxValueBytes + 1)

const FILE = { kind: 'file' } as const
const DIR = { kind: 'dir' } as const
const OTHER = { kind: 'other' } as const

// A saved tree on local disk or tmpfs: a task with 10,000 fds has some 180,000 small files to
// read, and asynchronously each would cost thread-pool round trips, so every read here is
// synchronous (a few microseconds).
export class DiskDir implements StoredDir {
  /** What a name is appended to for its path. */
  private readonly prefix: string

  constructor(readonly path: string) {
    this.prefix = path.endsWith('/') ? path : `${path}/`
  }

  list(): Map<string, { kind: EntryKind }> {
    const listing = new Map<string, { kind: EntryKind }>()
    for (const entry of fs.readdirSync(this.path, { withFileTypes: true })) {
      listing.set(entry.name, entry.isFile() ? FILE : entry.isDirectory() ? DIR : OTHER)
    }
    return listing
  }

  entryKind(name: string): EntryKind | undefined {
    let st: fs.Stats
    try {
      st = fs.lstatSync(this.prefix + name)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
    return st.isFile() ? 'file' : st.isDirectory() ? 'dir' : 'other'
  }

  dir(name: string): DiskDir {
    return new DiskDir(this.prefix + name)
  }

  text(name: string, limit: number, crc: CrcOut): string | number {
    const fd = fs.openSync(this.prefix + name, openFlags)
    try {
      // One read of a regular file gives every byte up to the buffer's size; only a file
      // that fills the buffer needs fstat, for its size (too large, or a list to read on).
      const first = fs.readSync(fd, valueBuffer, 0, valueBuffer.length, null)
      if (first < valueBuffer.length) {
        crc.crc32c = smallCrc32c(valueBuffer, 0, first)
        return valueBuffer.toString('utf8', 0, first)
      }
      const st = fs.fstatSync(fd)
      if (!st.isFile()) throw new Error('not a regular file')
      if (st.size > limit) return st.size
      const data = Buffer.allocUnsafe(Math.max(st.size, first))
      valueBuffer.copy(data, 0, 0, first)
      let done = first
      while (done < data.length) {
        const n = fs.readSync(fd, data, done, data.length - done, null)
        if (n === 0) break
        done += n
      }
      crc.crc32c = smallCrc32c(data, 0, done)
      return data.toString('utf8', 0, done)
    } finally {
      fs.closeSync(fd)
    }
  }

  source(name: string): ByteSource {
    const file = this.prefix + name
    return savedFileSource(file, fs.lstatSync(file).size)
  }

  diskPath(name: string): string {
    return this.prefix + name
  }
}

/**
 * One directory of a saved tree. Each directory is listed once with the kind of every entry
 * (what lstat would say), which answers "missing", "not a regular file" and "not a directory"
 * without a stat per entry, and `names` and `finish` reuse the listing.
 */
export class SavedDir {
  /**
   * Names read so far: a list while short (a directory of values has about twenty, and a
   * Set for each of the 20,000 directories of a 10,000-fd tree costs more than the reads),
   * a Set past `usedListMax`.
   */
  private used: string[] | Set<string> = []
  /** Every entry was taken by `decimalDirs`: nothing is left for `finish` to refuse. */
  private allUsed = false
  /** Name -> kind of every entry; undefined until first needed, null when it cannot be listed. */
  private listing: ReadonlyMap<string, { readonly kind: EntryKind }> | null | undefined
  /** The directory's values_crc32c, name -> CRC32C; read (and held to the listing) at the first value read. */
  private manifest: Map<string, number> | undefined

  /**
   * `rel` is this directory's path below the tree root ("files/7"), for messages; a
   * subdirectory is named by its parent and its name, and its path is only built for a message.
   */
  constructor(readonly stored: StoredDir, private readonly relOrName: string, private readonly parent?: SavedDir) {}

  get rel(): string {
    return this.parent ? this.parent.where(this.relOrName) : this.relOrName
  }

  where(name: string): string {
    const rel = this.rel
    return rel ? `${rel}/${name}` : name
  }

  fail(name: string, why: string): CkptError {
    return new CkptError(`${this.where(name)}: ${why}`, 'EINVAL')
  }

  /** The entries and their kinds, read once (null: the directory cannot be listed). */
  private list(): ReadonlyMap<string, { readonly kind: EntryKind }> | null {
    if (this.listing === undefined) {
      try {
        this.listing = this.stored.list()
      } catch {
        this.listing = null
      }
    }
    return this.listing
  }

  /** The entries of this directory, sorted (a missing directory is reported by whoever opened it). */
  names(): string[] {
    return this.unorderedNames().sort()
  }

  /**
   * The entries in the listing's order (sorting the 10,000 names of a big files/ costs more
   * than reading them). Whoever reports one of them as bad reports the first in sorted order
   * (`firstBad`), so a message never depends on the order a copy wrote the tree in.
   */
  unorderedNames(): string[] {
    const listing = this.list()
    // An unlistable directory: list it again for the error.
    return [...(listing ?? this.stored.list()).keys()]
  }

  /** Checks that `name` exists with the given kind (symbolic links are never followed). */
  private entry(name: string, kind: 'file' | 'dir'): void {
    this.markUsed(name)
    this.check(name, kind)
  }

  private markUsed(name: string): void {
    const used = this.used
    if (!Array.isArray(used)) used.add(name)
    else if (used.length < usedListMax) used.push(name)
    else this.used = new Set([...used, name])
  }

  private isUsed(name: string): boolean {
    return this.allUsed || (Array.isArray(this.used) ? this.used.includes(name) : this.used.has(name))
  }

  /** Checks that `name` is listed with the given kind, without counting it as read. */
  private check(name: string, kind: 'file' | 'dir'): void {
    const listing = this.list()
    if (!listing) {
      this.lstat(name, kind)
      return
    }
    const found = listing.get(name)?.kind
    if (found === undefined) throw this.fail(name, 'missing')
    if (kind === 'file' && found !== 'file') throw this.fail(name, 'not a regular file')
    if (kind === 'dir' && found !== 'dir') throw this.fail(name, 'not a directory')
  }

  /** `entry` by a stat of its own (when the directory cannot be listed, or the listing was wrong). */
  private lstat(name: string, kind: 'file' | 'dir'): void {
    let found: EntryKind | undefined
    try {
      found = this.stored.entryKind(name)
    } catch (err) {
      throw this.fail(name, `cannot be read: ${(err as Error).message}`)
    }
    if (found === undefined) throw this.fail(name, 'missing')
    if (kind === 'file' && found !== 'file') throw this.fail(name, 'not a regular file')
    if (kind === 'dir' && found !== 'dir') throw this.fail(name, 'not a directory')
  }

  has(name: string): boolean {
    const listing = this.list()
    if (listing) return listing.has(name)
    try {
      return this.stored.entryKind(name) !== undefined
    } catch {
      return false
    }
  }

  dir(name: string): SavedDir {
    this.entry(name, 'dir')
    return new SavedDir(this.stored.dir(name), name, this)
  }

  /** Subdirectories named by decimal numbers >= `min`, ascending by number. */
  decimalDirs(min: number): Array<[number, SavedDir]> {
    return this.decimalNames(min).map((n) => [n, this.numbered(n)])
  }

  /**
   * The numbers naming the entries, ascending, when every entry is a subdirectory named by a
   * decimal number >= `min` (else `why` is the message). A big table's loader takes each
   * directory by `numbered` as it goes: 10,000 directory objects held at once cost more in
   * garbage collection than they are worth.
   */
  decimalNames(min: number, why = 'unknown entry'): number[] {
    try {
      return this.decimalNamesOf(this.unorderedNames(), min, why)
    } catch (err) {
      // Report the first bad entry in sorted order: walk them again in that order.
      if (err instanceof CkptError) this.decimalNamesOf(this.names(), min, why)
      throw err
    }
  }

  private decimalNamesOf(names: string[], min: number, why: string): number[] {
    const numbers = new Array<number>(names.length)
    for (let i = 0; i < names.length; i++) {
      const name = names[i]
      const n = Number(name)
      if (!/^(0|[1-9][0-9]*)$/.test(name) || n < min || n > INT_MAX) throw this.fail(name, why)
      this.check(name, 'dir')
      numbers[i] = n
    }
    this.allUsed = true
    return numbers.sort((a, b) => a - b)
  }

  /** The subdirectory named by `n`, one of the numbers `decimalNames` returned. */
  numbered(n: number): SavedDir {
    const name = String(n)
    return new SavedDir(this.stored.dir(name), name, this)
  }

  /** Subdirectories named 0..n-1, in order (a gap means a lost entry). */
  numberedDirs(): SavedDir[] {
    const dirs = this.decimalDirs(0)
    dirs.forEach(([n], i) => {
      if (n !== i) throw this.fail(String(i), `missing (entries are numbered 0 to ${dirs.length - 1})`)
    })
    return dirs.map(([, dir]) => dir)
  }

  /**
   * The whole value file as text, refused when larger than `limit` (at least maxValueBytes)
   * or when its bytes do not match the directory's values_crc32c: every value a loader reads
   * comes through here, or through valueBytes.
   */
  private raw(name: string, limit: number): string {
    const data = this.unchecked(name, limit)
    this.checkValue(name, lastCrc.crc32c)
    return data
  }

  /** The whole file as text, its CRC32C in lastCrc; not checked against anything. */
  private unchecked(name: string, limit: number): string {
    // fromFile's steps, without a closure per value.
    this.entry(name, 'file')
    let data: string | number
    try {
      data = this.stored.text(name, limit, lastCrc)
    } catch (err) {
      throw this.readFailure(name, err)
    }
    if (typeof data === 'number') throw this.fail(name, `too large (${data} bytes, at most ${limit} expected)`)
    return data
  }

  /** Refuses a value whose bytes' CRC32C is not the one values_crc32c records for it. */
  private checkValue(name: string, crc: number): void {
    const recorded = this.values().get(name)
    if (recorded === undefined) throw this.fail(name, `not in ${MANIFEST}: not a value this checkpoint saved (or the manifest is damaged)`)
    if (recorded !== crc) throw this.fail(name, `damaged: its CRC32C is ${crcHex(crc)}, ${MANIFEST} says ${crcHex(recorded)}`)
  }

  /**
   * The directory's manifest, read once. A directory without one is refused: a tree edited on
   * purpose is accepted again once `ckptfs seal` has rewritten its checks.
   */
  private values(): Map<string, number> {
    if (this.manifest) return this.manifest
    if (!this.has(MANIFEST)) throw this.fail(MANIFEST, `missing: every directory of values carries one; if this tree was edited on purpose, run "ckptfs seal TREE" (as the tree's owner) to accept it`)
    const parsed = parseManifest(this.unchecked(MANIFEST, maxManifestBytes))
    if (typeof parsed === 'string') throw this.fail(MANIFEST, parsed)
    this.manifest = parsed
    return parsed
  }

  /**
   * Holds the manifest to the listing: every value file listed is in it, everything in it is
   * listed as a regular file. Run once the loaders are done with the directory (`finish`), so
   * a file they read and found missing or of the wrong kind is reported in their words first.
   */
  private checkCoverage(): void {
    const listing = this.list()
    if (!listing) return
    const recorded = this.values()
    const has = (n: string): boolean => listing.has(n)
    const extra = firstBad([...listing.keys()], (n) => listing.get(n)!.kind === 'file' && isValueFile(n, has) && !recorded.has(n))
    if (extra !== undefined) throw this.fail(extra, `not in ${MANIFEST}: not a value this checkpoint saved (or the manifest is damaged)`)
    const lost = firstBad([...recorded.keys()], (n) => listing.get(n)?.kind !== 'file')
    if (lost !== undefined) throw this.fail(lost, `listed in ${MANIFEST} but ${listing.has(lost) ? 'not a regular file' : 'missing'}`)
  }

  /**
   * Checks every value of the directory against its manifest, read or not, and the manifest
   * against the listing: for the top of a tree, whose values are read by several loaders,
   * some by none, and which no loader finishes.
   */
  checkAllValues(): void {
    if (!this.has(MANIFEST) && !this.unorderedNames().some((n) => this.list()?.get(n)?.kind === 'file' && isValueFile(n, (m) => this.has(m)))) return
    this.checkCoverage()
    for (const name of this.values().keys()) this.raw(name, maxListBytes)
  }

  /** One value and a newline (SPEC): the value, without the newline. */
  text(name: string): string {
    const data = this.raw(name, maxValueBytes)
    if (!data.endsWith('\n')) throw this.fail(name, 'value is truncated (no trailing newline)')
    const value = data.slice(0, -1)
    if (value.includes('\n')) throw this.fail(name, 'holds more than one line')
    if (value.includes('\0')) throw this.fail(name, 'holds a NUL byte')
    return value
  }

  // The number readers first try the whole file against one pattern (the value and its
  // newline) and convert it as it is: BigInt and Number skip the trailing newline. Anything
  // else takes the step-by-step path, which names what is wrong. A 10,000-fd tree holds some
  // 150,000 numbers, and a string cut off each was most of the garbage of a restore.

  /** A decimal integer in [min, max], written without leading zeros. */
  decimal(name: string, min: bigint, max: bigint): bigint {
    const raw = this.raw(name, maxValueBytes)
    const value = decimalLine.test(raw) ? BigInt(raw) : BigInt(this.decimalText(name))
    return this.inRange(name, value, min, max)
  }

  private decimalText(name: string): string {
    const text = this.text(name)
    if (!/^(0|-?[1-9][0-9]*)$/.test(text)) throw this.fail(name, `not a decimal integer: ${JSON.stringify(text)}`)
    return text
  }

  /** A decimal integer in [min, max] that fits a JavaScript number. */
  int(name: string, min: number, max: number): number {
    const raw = this.raw(name, maxValueBytes)
    if (raw.length <= 16 && decimalLine.test(raw)) {
      const value = Number(raw)
      if (value < min || value > max) throw this.fail(name, `${value} is out of range [${min}, ${max}]`)
      return value
    }
    const text = this.decimalText(name)
    // Up to 15 digits a number is exact: no bigint needed (most values of a tree are ints).
    if (text.length > 15) return Number(this.inRange(name, BigInt(text), BigInt(min), BigInt(max)))
    const value = Number(text)
    if (value < min || value > max) throw this.fail(name, `${value} is out of range [${min}, ${max}]`)
    return value
  }

  /** An octal integer with a leading 0 ("0100002"), at most `max`. */
  octal(name: string, max: bigint): number {
    const raw = this.raw(name, maxValueBytes)
    // Up to 12 characters (11 digits) parseInt is exact.
    if (raw.length <= 12 && octalLine.test(raw)) return Number(this.inRange(name, BigInt(parseInt(raw, 8)), 0n, max))
    const text = this.text(name)
    if (!/^0[0-7]*$/.test(text)) throw this.fail(name, `not octal with a leading 0: ${JSON.stringify(text)}`)
    return Number(this.inRange(name, BigInt('0o' + (text.slice(1) || '0')), 0n, max))
  }

  /** A hexadecimal integer with a leading 0x, at most `max`. */
  hex(name: string, max: bigint): bigint {
    const raw = this.raw(name, maxValueBytes)
    if (hexLine.test(raw)) return this.inRange(name, BigInt(raw), 0n, max)
    const text = this.text(name)
    if (!/^0x[0-9a-fA-F]+$/.test(text)) throw this.fail(name, `not hexadecimal with a leading 0x: ${JSON.stringify(text)}`)
    return this.inRange(name, BigInt(text), 0n, max)
  }

  flag(name: string): boolean {
    const raw = this.raw(name, maxValueBytes)
    if (raw === '0\n' || raw === '1\n') return raw === '1\n'
    const text = this.text(name)
    if (text !== '0' && text !== '1') throw this.fail(name, `not 0 or 1: ${JSON.stringify(text)}`)
    return text === '1'
  }

  /** An absolute path. */
  path(name: string): string {
    const text = this.text(name)
    checkPath(text, (why) => this.fail(name, why))
    return text
  }

  /** An absolute path, or nothing (an empty value). */
  optionalPath(name: string): string | undefined {
    const text = this.text(name)
    if (text === '') return undefined
    checkPath(text, (why) => this.fail(name, why))
    return text
  }

  /** A list file's whole text (one item per line; the caller parses the lines). */
  listText(name: string): string {
    return this.raw(name, maxListBytes)
  }

  /** Absolute paths, one per line; an empty file for none. */
  pathList(name: string): string[] {
    const data = this.raw(name, maxListBytes)
    if (data === '') return []
    if (!data.endsWith('\n')) throw this.fail(name, 'list is truncated (no trailing newline)')
    const paths = data.slice(0, -1).split('\n')
    paths.forEach((p, i) => checkPath(p, (why) => this.fail(name, `line ${i + 1}: ${why}`)))
    return paths
  }

  /**
   * The CRC32C of each 1 MiB piece of the raw file `name`, from NAME_crc32c next to it
   * (lib/checksum.ts); required, and read now. The caller checks them against the bytes.
   */
  checksums(name: string): number[] {
    const crcName = name + CRC_SUFFIX
    const parsed = parseCrcText(this.unchecked(crcName, maxCrcBytes))
    if (typeof parsed === 'string') throw this.fail(crcName, parsed)
    return parsed
  }

  /**
   * Queued bytes (pipe data, socket queues) read whole when first asked for, checked against
   * NAME_crc32c. Their size is fixed and bounded now: a huge file in a crafted tree is refused
   * by name before anything is read, never read into one buffer (node aborted or ran out).
   */
  checkedLazyBytes(name: string): Lazy<Buffer> {
    const crcs = this.checksums(name)
    const source = this.source(name)
    if (source.size > maxQueueBytes) throw this.fail(name, `${source.size} bytes, more than the ${maxQueueBytes} a queue may hold`)
    const where = this.where(name)
    return lazy(async () => {
      const bytes = await source.read(0, source.size)
      checkBuffer(bytes, crcs, where)
      return bytes
    })
  }

  /** source, with the checksums of NAME_crc32c attached for whoever reads it (ByteSource.crc32c). */
  checkedSource(name: string): ByteSource {
    const crcs = this.checksums(name)
    const source = this.source(name)
    checkCount(this.where(name), crcs, source.size)
    return withCrcs(source, crcs)
  }

  /**
   * A whole raw file of at most `maxBytes` (registers, cmdline, auxv), checked against its
   * NAME_crc32c: from the bytes the walk of the tree held when it did (no read per file of
   * each of a tree's processes), else read from disk.
   */
  async checkedBytes(name: string, maxBytes: number): Promise<Buffer> {
    const crcs = this.checksums(name)
    const held = this.held(name, maxBytes)
    const source = held === undefined ? this.source(name) : undefined
    const size = held === undefined ? source!.size : typeof held === 'number' ? held : held.length
    checkCount(this.where(name), crcs, size)
    if (size > maxBytes) throw this.fail(name, `${size} bytes, at most ${maxBytes} expected`)
    const data = held === undefined ? await source!.read(0, size) : (held as Buffer)
    checkBuffer(data, crcs, this.where(name))
    return data
  }

  /** The bytes of `name` as the stored directory holds them in memory (StoredDir.heldBytes), their CRC32C in lastCrc. */
  private held(name: string, limit: number): Buffer | number | undefined {
    const stored = this.stored
    if (stored.heldBytes === undefined) return undefined
    return this.fromFile(name, () => stored.heldBytes!(name, limit, lastCrc))
  }

  /** A whole value file of bytes (a list, maps) of at most `maxBytes`, checked against values_crc32c. */
  async valueBytes(name: string, maxBytes: number): Promise<Buffer> {
    const held = this.held(name, maxBytes)
    if (typeof held === 'number') throw this.fail(name, `${held} bytes, at most ${maxBytes} expected`)
    if (held !== undefined) {
      this.checkValue(name, lastCrc.crc32c)
      return held
    }
    const source = this.source(name)
    if (source.size > maxBytes) throw this.fail(name, `${source.size} bytes, at most ${maxBytes} expected`)
    const data = await source.read(0, source.size)
    this.checkValue(name, crc32c(data))
    return data
  }

  /** Raw bytes read in pieces (file contents); the size is fixed now. Unchecked: see checkedSource. */
  private source(name: string): ByteSource {
    return this.fromFile(name, () => this.stored.source(name))
  }

  /** `read` of the regular file `name`; a failure names the file and what it is now. */
  private fromFile<T>(name: string, read: () => T): T {
    this.entry(name, 'file')
    try {
      return read()
    } catch (err) {
      throw this.readFailure(name, err)
    }
  }

  /** A listed file could not be read: it changed since it was listed; say what it is now, as lstat does. */
  private readFailure(name: string, err: unknown): CkptError {
    this.lstat(name, 'file')
    return this.fail(name, `cannot be read: ${(err as Error).message}`)
  }

  /** Refuses every entry of this directory that no reader asked for. */
  finish(): void {
    if (this.allUsed) return
    // The manifest first: a file it does not know is damage (or an edit not sealed) before
    // it is an entry the loaders do not know.
    if (this.has(MANIFEST)) {
      this.markUsed(MANIFEST)
      this.checkCoverage()
    }
    const unknown = firstBad(this.unorderedNames(), (name) => !this.isUsed(name))
    if (unknown !== undefined) throw this.fail(unknown, 'unknown entry')
  }

  private inRange(name: string, value: bigint, min: bigint, max: bigint): bigint {
    if (value < min || value > max) throw this.fail(name, `${value} is out of range [${min}, ${max}]`)
    return value
  }
}

function checkPath(text: string, fail: (why: string) => CkptError): void {
  const why = pathProblem(text)
  if (why !== undefined) throw fail(why)
}

/** What is wrong with a saved path a restore would open (it must be absolute, without NUL); undefined when nothing. */
export function pathProblem(text: string): string | undefined {
  if (!text.startsWith('/')) return `not an absolute path: ${JSON.stringify(text)}`
  if (text.includes('\0')) return 'path holds a NUL byte'
  return undefined
}

/** Of the names for which `bad` holds, the first in sorted order. */
export function firstBad(names: readonly string[], bad: (name: string) => boolean): string | undefined {
  let first: string | undefined
  for (const name of names) if (bad(name) && (first === undefined || name < first)) first = name
  return first
}
