// Reading a saved copy of the tree back (what `cp -a` of a checkpoint-N directory leaves on
// disk), one directory at a time. Every value is validated as it is read, and every error
// names the file relative to the tree root: "files/7/f_flags: O_TRUNC is refused".
// A SavedDir remembers which entries were read, so `finish` can refuse the ones nobody knows.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'
import type { ByteSource, Lazy } from '../model'
import { lazy } from '../model'
import { fileSource } from './source'

/** Longest single-line value accepted (a path of PATH_MAX bytes and some slack). */
const maxValueBytes = 8192
/** Longest list file accepted (other_links). */
const maxListBytes = 1 << 20

export const U32_MAX = 0xffffffffn
export const U64_MAX = 0xffffffffffffffffn
export const S64_MIN = -(1n << 63n)
export const S64_MAX = (1n << 63n) - 1n
export const INT_MAX = 0x7fffffff

/** What a directory listing says an entry is (symbolic links, fifos, devices: 'other'). */
type Kind = 'file' | 'dir' | 'other'

/** Only an entry listed as a regular file is opened, and never through a symbolic link, never waiting. */
const openFlags = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK
/** Values are read into this one buffer (reads are synchronous, and each is decoded at once). */
const valueBuffer = Buffer.allocUnsafe(maxValueBytes + 1)

// A saved tree lives on local disk or tmpfs, and a task with 10,000 fds has some 180,000
// small files to read: asynchronously each would cost thread-pool round trips, so every read
// here is synchronous (a few microseconds). Each directory is listed once with the kind of
// every entry (what lstat would say), which answers "missing", "not a regular file" and "not
// a directory" without a stat per entry, and `names` and `finish` reuse the listing.
export class SavedDir {
  private readonly used = new Set<string>()
  /** What a name is appended to for its path on disk (as path.join(root, rel, name) makes it). */
  private readonly prefix: string
  /** Name -> kind of every entry; undefined until first needed, null when it cannot be listed. */
  private listing: Map<string, Kind> | null | undefined

  /** `rel` is this directory's path below the tree root ("files/7"), used in messages. */
  constructor(readonly root: string, readonly rel: string) {
    this.prefix = path.join(root, rel, '_').slice(0, -1)
  }

  where(name: string): string {
    return this.rel ? `${this.rel}/${name}` : name
  }

  fail(name: string, why: string): CkptError {
    return new CkptError(`${this.where(name)}: ${why}`, 'EINVAL')
  }

  private full(name: string): string {
    return this.prefix + name
  }

  private dirPath(): string {
    return path.join(this.root, this.rel)
  }

  /** The entries and their kinds, read once (null: the directory cannot be listed). */
  private list(): Map<string, Kind> | null {
    if (this.listing === undefined) {
      try {
        const listing = new Map<string, Kind>()
        for (const entry of fs.readdirSync(this.dirPath(), { withFileTypes: true })) {
          listing.set(entry.name, entry.isFile() ? 'file' : entry.isDirectory() ? 'dir' : 'other')
        }
        this.listing = listing
      } catch {
        this.listing = null
      }
    }
    return this.listing
  }

  /** The entries of this directory, sorted (a missing directory is reported by whoever opened it). */
  async names(): Promise<string[]> {
    const listing = this.list()
    // An unlistable directory: list it again for the error.
    return (listing ? [...listing.keys()] : fs.readdirSync(this.dirPath())).sort()
  }

  /** Checks that `name` exists with the given kind (symbolic links are never followed). */
  private entry(name: string, kind: 'file' | 'dir'): void {
    this.used.add(name)
    const listing = this.list()
    if (!listing) {
      this.lstat(name, kind)
      return
    }
    const found = listing.get(name)
    if (found === undefined) throw this.fail(name, 'missing')
    if (kind === 'file' && found !== 'file') throw this.fail(name, 'not a regular file')
    if (kind === 'dir' && found !== 'dir') throw this.fail(name, 'not a directory')
  }

  /** `entry` by a stat of its own (when the directory cannot be listed, or the listing was wrong). */
  private lstat(name: string, kind: 'file' | 'dir'): fs.Stats {
    let st: fs.Stats
    try {
      st = fs.lstatSync(this.full(name))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw this.fail(name, 'missing')
      throw this.fail(name, `cannot be read: ${(err as Error).message}`)
    }
    if (kind === 'file' && !st.isFile()) throw this.fail(name, 'not a regular file')
    if (kind === 'dir' && !st.isDirectory()) throw this.fail(name, 'not a directory')
    return st
  }

  async has(name: string): Promise<boolean> {
    const listing = this.list()
    if (listing) return listing.has(name)
    try {
      fs.lstatSync(this.full(name))
      return true
    } catch {
      return false
    }
  }

  async dir(name: string): Promise<SavedDir> {
    this.entry(name, 'dir')
    return new SavedDir(this.root, this.where(name))
  }

  /** Subdirectories named by decimal numbers >= `min`, ascending by number. */
  async decimalDirs(min: number): Promise<Array<[number, SavedDir]>> {
    const dirs: Array<[number, SavedDir]> = []
    for (const name of await this.names()) {
      if (!/^(0|[1-9][0-9]*)$/.test(name) || Number(name) < min || Number(name) > INT_MAX) throw this.fail(name, 'unknown entry')
      this.entry(name, 'dir')
      dirs.push([Number(name), new SavedDir(this.root, this.where(name))])
    }
    return dirs.sort((a, b) => a[0] - b[0])
  }

  /** Subdirectories named 0..n-1, in order (a gap means a lost entry). */
  async numberedDirs(): Promise<SavedDir[]> {
    const dirs = await this.decimalDirs(0)
    dirs.forEach(([n], i) => {
      if (n !== i) throw this.fail(String(i), `missing (entries are numbered 0 to ${dirs.length - 1})`)
    })
    return dirs.map(([, dir]) => dir)
  }

  /** The whole file as text, refused when larger than `limit` (at least maxValueBytes). */
  private raw(name: string, limit: number): string {
    this.entry(name, 'file')
    let fd: number
    try {
      fd = fs.openSync(this.full(name), openFlags)
    } catch (err) {
      // Changed since it was listed: say what it is now, as lstat does.
      this.lstat(name, 'file')
      throw err
    }
    try {
      // One read of a regular file gives every byte up to the buffer's size; only a file
      // that fills the buffer needs fstat, for its size (too large, or a list to read on).
      const first = fs.readSync(fd, valueBuffer, 0, valueBuffer.length, null)
      if (first < valueBuffer.length) return valueBuffer.toString('utf8', 0, first)
      const st = fs.fstatSync(fd)
      if (!st.isFile()) throw this.fail(name, 'not a regular file')
      if (st.size > limit) throw this.fail(name, `too large (${st.size} bytes, at most ${limit} expected)`)
      const data = Buffer.allocUnsafe(Math.max(st.size, first))
      valueBuffer.copy(data, 0, 0, first)
      let done = first
      while (done < data.length) {
        const n = fs.readSync(fd, data, done, data.length - done, null)
        if (n === 0) break
        done += n
      }
      return data.toString('utf8', 0, done)
    } catch (err) {
      if (!(err instanceof CkptError)) this.lstat(name, 'file')
      throw err
    } finally {
      fs.closeSync(fd)
    }
  }

  /** One value and a newline (SPEC): the value, without the newline. */
  async text(name: string): Promise<string> {
    const data = this.raw(name, maxValueBytes)
    if (!data.endsWith('\n')) throw this.fail(name, 'value is truncated (no trailing newline)')
    const value = data.slice(0, -1)
    if (value.includes('\n')) throw this.fail(name, 'holds more than one line')
    if (value.includes('\0')) throw this.fail(name, 'holds a NUL byte')
    return value
  }

  /** A decimal integer in [min, max], written without leading zeros. */
  async decimal(name: string, min: bigint, max: bigint): Promise<bigint> {
    const text = await this.text(name)
    if (!/^(0|-?[1-9][0-9]*)$/.test(text)) throw this.fail(name, `not a decimal integer: ${JSON.stringify(text)}`)
    return this.inRange(name, BigInt(text), min, max)
  }

  /** A decimal integer in [min, max] that fits a JavaScript number. */
  async int(name: string, min: number, max: number): Promise<number> {
    return Number(await this.decimal(name, BigInt(min), BigInt(max)))
  }

  /** An octal integer with a leading 0 ("0100002"), at most `max`. */
  async octal(name: string, max: bigint): Promise<number> {
    const text = await this.text(name)
    if (!/^0[0-7]*$/.test(text)) throw this.fail(name, `not octal with a leading 0: ${JSON.stringify(text)}`)
    return Number(this.inRange(name, BigInt('0o' + (text.slice(1) || '0')), 0n, max))
  }

  /** A hexadecimal integer with a leading 0x, at most `max`. */
  async hex(name: string, max: bigint): Promise<bigint> {
    const text = await this.text(name)
    if (!/^0x[0-9a-fA-F]+$/.test(text)) throw this.fail(name, `not hexadecimal with a leading 0x: ${JSON.stringify(text)}`)
    return this.inRange(name, BigInt(text), 0n, max)
  }

  async flag(name: string): Promise<boolean> {
    const text = await this.text(name)
    if (text !== '0' && text !== '1') throw this.fail(name, `not 0 or 1: ${JSON.stringify(text)}`)
    return text === '1'
  }

  /** An absolute path. */
  async path(name: string): Promise<string> {
    const text = await this.text(name)
    checkPath(text, (why) => this.fail(name, why))
    return text
  }

  /** An absolute path, or nothing (an empty value). */
  async optionalPath(name: string): Promise<string | undefined> {
    const text = await this.text(name)
    if (text === '') return undefined
    checkPath(text, (why) => this.fail(name, why))
    return text
  }

  /** Absolute paths, one per line; an empty file for none. */
  async pathList(name: string): Promise<string[]> {
    const data = this.raw(name, maxListBytes)
    if (data === '') return []
    if (!data.endsWith('\n')) throw this.fail(name, 'list is truncated (no trailing newline)')
    const paths = data.slice(0, -1).split('\n')
    paths.forEach((p, i) => checkPath(p, (why) => this.fail(name, `line ${i + 1}: ${why}`)))
    return paths
  }

  /** Raw bytes read when first asked for (pipe data); the file must exist now. */
  async lazyBytes(name: string): Promise<Lazy<Buffer>> {
    this.entry(name, 'file')
    const file = this.full(name)
    return lazy(() => fs.promises.readFile(file))
  }

  /** Raw bytes read in pieces (file contents); the size is fixed now. */
  async source(name: string): Promise<ByteSource> {
    this.entry(name, 'file')
    return fileSource(this.full(name), this.lstat(name, 'file').size)
  }

  /** Refuses every entry of this directory that no reader asked for. */
  async finish(): Promise<void> {
    for (const name of await this.names()) if (!this.used.has(name)) throw this.fail(name, 'unknown entry')
  }

  private inRange(name: string, value: bigint, min: bigint, max: bigint): bigint {
    if (value < min || value > max) throw this.fail(name, `${value} is out of range [${min}, ${max}]`)
    return value
  }
}

function checkPath(text: string, fail: (why: string) => CkptError): void {
  if (!text.startsWith('/')) throw fail(`not an absolute path: ${JSON.stringify(text)}`)
  if (text.includes('\0')) throw fail('path holds a NUL byte')
}
