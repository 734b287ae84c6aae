// Reads an `image` file back into the model in one streaming pass, validating all of it
// before returning: framing, magic and version, every field's range, the references between
// records, the chunk coverage of every mapping, and the trailer's totals and checksum.
// Page and file contents are not read: they become ByteSources that read the file at the
// recorded offsets, so memory stays small whatever the image's size.

import * as fs from 'fs'
import * as zlib from 'zlib'
import { CkptError, messageOf } from '../errors'
import { clipped, intoSource, type ByteSource, type FileExtent, type FdEntry, type FileDescription, type FileTable, type Pid, type ProcessState, type TaskImage, type ThreadState, type Tid, type Vma, type ZombieTask } from '../model'
import { handlerOf } from '../files/index'
import { decodeMessage } from './codec'
import {
  descriptionFrom, fdEntryFrom, Fields, headerFrom, processFrom, RecordPlace, taskFrom, threadFrom, vmaFrom, zombieFrom,
  type ImageHeader, type RecordedVma,
} from './records'
import { CHUNK_SIZE, imageSchema, type ChunkFields, type RecordKind } from './schema'
import { BufferReader, splitTag, WireError, WireType } from './wire'

export type { ImageHeader } from './records'

/** A checkpoint read from an image: every part resolved and validated. */
export interface LoadedImage {
  header: ImageHeader
  pid: Pid
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
  fileTable: FileTable
  /** The boot that made the checkpoint (lib/boot.ts), when the image says. */
  bootId: string | undefined
  /** The same parts as the TaskImage every consumer takes. */
  task: TaskImage
  /** The rest of a process tree (1.3): its other processes, parents first, and its zombies. */
  others: LoadedTask[]
  zombies: ZombieTask[]
}

/** A process of the tree other than the root; its fds refer to the root's files. */
export interface LoadedTask {
  pid: Pid
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
  fds: FdEntry[]
  task: TaskImage
}

/** Metadata records larger than this are refused (the largest real ones are a few MiB). */
const MAX_RECORD = 16 << 20
/** A record's tag and length fit in 15 bytes (5 + 10). */
const RECORD_HEAD_MAX = 15
const WINDOW = 16 << 10
/** A chunk's fields before its data (key, offset, data's tag and length) fit in this. */
const CHUNK_FIELDS_READ = 64
/** Reading yields to the event loop this often (a 10,000-fd image takes 60-250 ms). */
const YIELD_AFTER_MS = 20

export async function readImage(file: string): Promise<LoadedImage> {
  // O_NONBLOCK: a FIFO given as the image must be refused below, not wait for a writer in open().
  const handle = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK).catch((err: unknown) => {
    throw new CkptError(`image: cannot open ${file}: ${messageOf(err)}`, 'ENOENT')
  })
  try {
    const stat = await handle.stat({ bigint: true })
    if (!stat.isFile()) throw new CkptError(`image: ${file} is not a regular file`, 'EINVAL')
    if (stat.size > BigInt(Number.MAX_SAFE_INTEGER)) throw new CkptError(`image: ${file} is too large`, 'EINVAL')
    const reader = new ImageReader(new WindowedFile(handle, Number(stat.size)))
    await reader.readAll()
    return reader.assemble(new ImageFile(file, stat))
  } finally {
    await handle.close()
  }
}

// ---------------------------------------------------------------------------------------
// File access

/**
 * Reads a file through a window, so runs of small records cost one read, and records that
 * lie inside the window are read with no promise at all (a 10,000-fd image has 20,000).
 * Reads are synchronous, as the tree loader's are (lib/files/saved.ts): the server reads
 * only images in its restore area, a local directory, and a read of one window costs a few
 * microseconds where a thread-pool round trip cost tens (a 1 GiB image has 1,024 chunks,
 * one read each).
 */
class WindowedFile {
  /** The window's memory, reused by every fill. */
  private readonly store = Buffer.allocUnsafe(WINDOW)
  private window: Buffer = this.store.subarray(0, 0)
  private windowAt = 0

  constructor(private readonly handle: fs.promises.FileHandle, readonly size: number) {}

  /**
   * Bytes [pos, pos + length), clipped at the end of the file; valid until the next call.
   * When the window must move, it reads `readAhead` bytes (at least `length`).
   */
  bytes(pos: number, length: number, readAhead = WINDOW): Buffer {
    const end = Math.min(this.size, pos + length)
    if (this.holds(pos, end - pos)) return this.window.subarray(pos - this.windowAt, end - this.windowAt)
    if (end - pos > WINDOW) return readExactly(this.handle, pos, end - pos)
    this.fill(pos, Math.max(end - pos, readAhead))
    return this.window.subarray(0, end - pos)
  }

  /** Whether [pos, pos + length) (clipped at the end of the file) is in the window. */
  holds(pos: number, length: number): boolean {
    const end = Math.min(this.size, pos + length)
    return pos >= this.windowAt && end <= this.windowAt + this.window.length
  }

  /** Moves the window to start at `pos`, reading `size` bytes (at most WINDOW). */
  fill(pos: number, size = WINDOW): void {
    const length = Math.min(size, WINDOW, this.size - pos)
    readExactly(this.handle, pos, length, this.store, 0)
    this.window = this.store.subarray(0, length)
    this.windowAt = pos
  }

  /** The window's buffer and the file offset of its first byte, for reading in place. */
  get buffer(): Buffer {
    return this.window
  }

  get bufferAt(): number {
    return this.windowAt
  }
}

function readExactly(handle: fs.promises.FileHandle, pos: number, length: number, into: Buffer = Buffer.allocUnsafe(length), intoAt = 0): Buffer {
  for (let done = 0; done < length;) {
    const bytesRead = fs.readSync(handle.fd, into, intoAt + done, length - done, pos + done)
    if (bytesRead === 0) throw new CkptError(`image: the file ended at byte ${pos + done} while being read (did it change?)`)
    done += bytesRead
  }
  return into
}

/**
 * The image file that page and file contents are read from after validation. Each read
 * opens it anew (so nothing is left open by a consumer that never closes) and refuses a
 * file that is no longer the one validated.
 */
class ImageFile {
  constructor(private readonly file: string, private readonly validated: fs.BigIntStats) {}

  /** Reads `ranges` of the file back to back into `into` at `intoAt`. */
  async readInto(ranges: Array<{ at: number; length: number }>, into: Buffer, intoAt: number): Promise<void> {
    const handle = await fs.promises.open(this.file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
    try {
      this.unchanged(await handle.stat({ bigint: true }))
      let filled = intoAt
      for (const range of ranges) {
        // Contents may be large (an unlinked file's whole data): read off the main thread.
        for (let done = 0; done < range.length;) {
          const { bytesRead } = await handle.read(into, filled + done, Math.min(range.length - done, 1 << 30), range.at + done)
          if (bytesRead === 0) throw new CkptError(`image: the file ended at byte ${range.at + done} while being read (did it change?)`)
          done += bytesRead
        }
        filled += range.length
      }
    } finally {
      await handle.close()
    }
  }

  /** `ranges` as extents of the file, once it is checked to be the file validated. */
  async extents(ranges: Array<{ at: number; length: number }>): Promise<FileExtent[]> {
    this.unchanged(await fs.promises.stat(this.file, { bigint: true }))
    return ranges.map((r) => ({ file: this.file, ...r }))
  }

  private unchanged(now: fs.BigIntStats): void {
    const v = this.validated
    if (now.dev !== v.dev || now.ino !== v.ino || now.size !== v.size || now.mtimeNs !== v.mtimeNs) {
      throw new CkptError(`image: ${this.file} changed after it was validated`)
    }
  }
}

/** Contents cut into CHUNK_SIZE chunks whose data start at the recorded file offsets, with their recorded CRC32C. */
function chunkedSource(file: ImageFile, { size, dataAt, crcs }: Contents): ByteSource {
  const rangesOf = (offset: number, length: number): Array<{ at: number; length: number }> => {
    const end = offset + length
    const ranges: Array<{ at: number; length: number }> = []
    for (let pos = offset; pos < end;) {
      const index = Math.floor(pos / CHUNK_SIZE)
      const chunkEnd = Math.min(end, (index + 1) * CHUNK_SIZE)
      ranges.push({ at: dataAt[index] + (pos - index * CHUNK_SIZE), length: chunkEnd - pos })
      pos = chunkEnd
    }
    return ranges
  }
  const source = intoSource(size, async (offset, length, into, at) => {
    await file.readInto(rangesOf(offset, length), into, at)
    return length
  })
  return { ...source, extents: (offset, length) => file.extents(rangesOf(offset, clipped(size, offset, length))), crc32c: crcs }
}

// ---------------------------------------------------------------------------------------
// The streaming pass

/** Contents whose chunks are being collected: the file offset of each chunk's data (-1: not seen). */
interface Contents {
  size: number
  dataAt: number[]
  /** The crc32c of each chunk's data, as recorded (checked where the data is used). */
  crcs: number[]
}

interface VmaEntry {
  vma: RecordedVma
  where: RecordPlace
  contents: Contents
}

interface FileEntry {
  description: FileDescription
  where: RecordPlace
  contents: Contents | undefined
}

type MetadataKind = Exclude<RecordKind, 'pageChunk' | 'fileChunk' | 'trailer'>

/** One process's records: the root's (after the header), or those after a task record. */
interface TaskSection {
  pid: Pid
  tids: Tid[]
  /** The task record; undefined for the root, which the header names. */
  where: RecordPlace | undefined
  process: ProcessState | undefined
  threads: Array<{ thread: ThreadState; where: RecordPlace }>
  fds: Array<{ fd: FdEntry; where: RecordPlace }>
  vmas: Map<bigint, VmaEntry>
}

const newSection = (pid: Pid, tids: Tid[], where: RecordPlace | undefined): TaskSection => ({ pid, tids, where, process: undefined, threads: [], fds: [], vmas: new Map() })

/** A record's kind, place and extent, from its tag and length. */
interface RecordHead {
  kind: RecordKind | undefined
  where: RecordPlace
  at: number
  headLength: number
  bodyAt: number
  length: number
  end: number
}

class ImageReader {
  private readonly schema = imageSchema()
  private readonly counts = new Map<RecordKind, number>()
  private records = 0
  private crc = 0
  private pageBytes = 0
  private fileBytes = 0
  /** Bytes of contents announced so far: never more than the image holds. */
  private announced = 0
  private header: ImageHeader | undefined
  /** The root's records, then one section per task record (a process tree). */
  private readonly sections: TaskSection[] = []
  private readonly files = new Map<number, FileEntry>()
  private readonly zombies: Array<{ zombie: ZombieTask; where: RecordPlace }> = []
  private trailerSeen = false
  /** File bytes [unsummedFrom, unsummedTo), in the window, read but not yet fed to the checksum. */
  private unsummedFrom = 0
  private unsummedTo = 0
  /** Bytes read with a record's head: little after a chunk (what follows is likely another chunk and its data). */
  private readAhead = WINDOW

  constructor(private readonly file: WindowedFile) {}

  async readAll(): Promise<void> {
    if (this.file.size === 0) throw new CkptError('image: the file is empty', 'EINVAL')
    let ranSince = performance.now()
    for (let pos = 0; pos < this.file.size;) {
      if (this.trailerSeen) throw new CkptError(`image: ${this.file.size - pos} bytes after the trailer, at byte ${pos}`, 'EINVAL')
      if (!this.file.holds(pos, RECORD_HEAD_MAX)) {
        this.flushChecksum()
        this.file.fill(pos, this.readAhead)
        // Let the mount answer other requests now and then while a big image is read.
        if (performance.now() - ranSince > YIELD_AFTER_MS) {
          await new Promise((resolve) => setImmediate(resolve))
          ranSince = performance.now()
        }
      }
      const head = this.readHead(pos)
      this.readBody(head)
      pos = head.end
    }
    if (!this.trailerSeen) {
      throw new CkptError(`image: truncated at byte ${this.file.size}: the trailer is missing after ${this.records} records`, 'EINVAL')
    }
  }

  /** The tag and length of the record at `at`, which the window holds. */
  private readHead(at: number): RecordHead {
    const window = this.file.buffer
    const headEnd = Math.min(window.length, at - this.file.bufferAt + RECORD_HEAD_MAX)
    const r = new BufferReader(window, at - this.file.bufferAt, headEnd)
    let id: number
    let wire: number
    let length: number
    try {
      ;({ field: id, wire } = splitTag(r.smallVarint('tag', 0xffffffff), at - this.file.bufferAt))
      length = r.smallVarint('length', Number.MAX_SAFE_INTEGER)
    } catch (err) {
      if (err instanceof WireError && this.file.size - at < RECORD_HEAD_MAX && /past the end/.test(err.message)) {
        throw new CkptError(`image: truncated at byte ${this.file.size} (in the record starting at byte ${at})`, 'EINVAL')
      }
      throw this.refusal(err, `record at byte ${at}`, this.file.bufferAt)
    }
    const kind = this.schema.recordKinds.get(id)
    const where = kind ? this.place(kind, at) : new RecordPlace(`unknown record ${id}`, 0, at)
    if (at === 0 && kind !== 'header') throw new CkptError(`image: not a ckptfs image (it does not start with a header record)`, 'EINVAL')
    if (wire !== WireType.Len) throw new CkptError(`image: ${where}: wire type ${wire}, expected ${WireType.Len}`, 'EINVAL')
    const headLength = r.pos - (at - this.file.bufferAt)
    const bodyAt = at + headLength
    const end = bodyAt + length
    if (end > this.file.size) throw new CkptError(`image: truncated at byte ${this.file.size} (${where} needs ${end - this.file.size} more bytes)`, 'EINVAL')
    return { kind, where, at, headLength, bodyAt, length, end }
  }

  /**
   * Feeds the run of metadata records read in place to the checksum: one call per window
   * rather than two per record (records are contiguous; a 10,000-fd image has 20,000).
   * Called before anything else is fed, and before the window moves.
   */
  private flushChecksum(): void {
    if (this.unsummedTo > this.unsummedFrom) {
      const at = this.file.bufferAt
      this.crc = zlib.crc32(this.file.buffer.subarray(this.unsummedFrom - at, this.unsummedTo - at), this.crc)
    }
    this.unsummedFrom = this.unsummedTo = 0
  }

  /** Feeds a record's tag and length to the checksum; the window still holds them. */
  private checksumHead(head: RecordHead): Buffer {
    const start = head.at - this.file.bufferAt
    const bytes = this.file.buffer.subarray(start, start + head.headLength)
    this.crc = zlib.crc32(bytes, this.crc)
    return bytes
  }

  /** Reads a record's body. */
  private readBody(head: RecordHead): void {
    const { kind, where, bodyAt, length, end } = head
    if (kind === 'trailer') {
      this.flushChecksum()
      return this.readTrailer(head.headLength, bodyAt, length, where)
    }
    this.records++
    if (kind !== 'pageChunk' && kind !== 'fileChunk' && kind !== undefined && this.file.holds(head.at, end - head.at)) {
      // The common case: a metadata record inside the window, read in place; its bytes join
      // the run the checksum is fed at once.
      if (length > MAX_RECORD) throw new CkptError(`image: ${where}: ${length} bytes, more than the ${MAX_RECORD} a record may have`, 'EINVAL')
      if (this.unsummedTo !== head.at) {
        this.flushChecksum()
        this.unsummedFrom = head.at
      }
      this.unsummedTo = end
      const start = head.at - this.file.bufferAt
      this.takeBody(kind, this.file.buffer, start + head.headLength, start + head.headLength + length, bodyAt, where)
      return
    }
    this.flushChecksum()
    this.checksumHead(head)
    this.readAhead = kind === 'pageChunk' || kind === 'fileChunk' ? CHUNK_FIELDS_READ : WINDOW
    if (kind === 'pageChunk' || kind === 'fileChunk') return this.readChunk(kind, bodyAt, end, where)
    if (kind === undefined) return this.checksum(bodyAt, length)
    if (length > MAX_RECORD) throw new CkptError(`image: ${where}: ${length} bytes, more than the ${MAX_RECORD} a record may have`, 'EINVAL')
    const body = this.file.bytes(bodyAt, length)
    this.crc = zlib.crc32(body, this.crc)
    this.takeBody(kind, body, 0, body.length, bodyAt, where)
  }

  /** Decodes a metadata record's body, buf[start, end), found at byte `bodyAt` of the file. */
  private takeBody(kind: MetadataKind, buf: Buffer, start: number, end: number, bodyAt: number, where: RecordPlace): void {
    let message
    try {
      message = decodeMessage(this.schema[schemaName[kind]], buf, start, end)
    } catch (err) {
      throw this.refusal(err, where, bodyAt - start)
    }
    this.take(kind, new Fields(message, where))
  }

  private take(kind: MetadataKind, f: Fields): void {
    if (kind === 'header') {
      if (this.header) f.fail('header', 'a second header')
      this.header = headerFrom(f)
      this.sections.push(newSection(this.header.pid, this.header.tids, undefined))
      return
    }
    if (!this.header) throw new CkptError(`image: ${f.where}: before the header`, 'EINVAL')
    const section = this.sections[this.sections.length - 1]
    switch (kind) {
      case 'process': {
        if (section.process) f.fail('process', section.where ? `a second process record after ${section.where}` : 'a second process record')
        const process = processFrom(f)
        if (process.pid !== section.pid) f.fail('pid', `${process.pid}, but ${section.where ?? 'the header'} says ${section.pid}`)
        section.process = process
        return
      }
      case 'thread':
        section.threads.push({ thread: threadFrom(f), where: f.where })
        return
      case 'task': {
        const task = taskFrom(f)
        const twice = this.sections.find((other) => other.pid === task.pid)
        if (twice) f.fail('pid', `process ${task.pid} is recorded twice (${twice.where ?? 'the header'} names it too)`)
        this.sections.push(newSection(task.pid, task.tids, f.where))
        return
      }
      case 'zombie':
        this.zombies.push({ zombie: zombieFrom(f), where: f.where })
        return
      case 'file': {
        if (section.where) f.fail('objref', `a file record after ${section.where}: a tree's files are described with the root, before the first task record`)
        const { description, contentsSize } = descriptionFrom(f, this.file.size)
        if (this.files.has(description.objref)) f.fail('objref', `${description.objref} is described twice`)
        this.files.set(description.objref, { description, where: f.where, contents: contentsSize === undefined ? undefined : this.announce(Number(contentsSize), f, 'pathFile.contentsSize') })
        return
      }
      case 'fd':
        section.fds.push({ fd: fdEntryFrom(f), where: f.where })
        return
      case 'vma': {
        const vma = vmaFrom(f)
        if (section.vmas.has(vma.start)) f.fail('start', `a second mapping at 0x${vma.start.toString(16)}`)
        const stored = vma.stored.reduce((sum, run) => sum + run.length, 0n)
        if (stored > BigInt(this.file.size)) f.fail('stored', `${stored} bytes, more than the whole image`)
        section.vmas.set(vma.start, { vma, where: f.where, contents: this.announce(Number(stored), f, 'stored') })
        return
      }
    }
  }

  /** Starts collecting `size` bytes of contents, refusing more than the image can hold. */
  private announce(size: number, f: Fields, field: string): Contents {
    this.announced += size
    if (this.announced > this.file.size) f.fail(field, `the contents announced so far (${this.announced} bytes) exceed the image's ${this.file.size} bytes`)
    const chunks = Math.ceil(size / CHUNK_SIZE)
    return { size, dataAt: new Array<number>(chunks).fill(-1), crcs: new Array<number>(chunks).fill(0) }
  }

  /** A chunk record, read field by field so its data is skipped, not read. */
  private readChunk(kind: 'pageChunk' | 'fileChunk', bodyAt: number, end: number, where: RecordPlace): void {
    const fields: ChunkFields = this.schema.chunks[kind]
    let key: bigint | undefined
    let offset: bigint | undefined
    let data: { at: number; length: number } | undefined
    let crc: number | undefined
    for (let pos = bodyAt; pos < end;) {
      const head = this.file.bytes(pos, Math.min(end - pos, RECORD_HEAD_MAX), CHUNK_FIELDS_READ)
      const r = new BufferReader(head)
      try {
        const { field: id, wire } = splitTag(r.smallVarint('tag', 0xffffffff), 0)
        const field = [fields.key, fields.offset, fields.data, fields.crc32c].find((f) => f.id === id)
        if (field === fields.crc32c) {
          // Covers the data, not the metadata: left out of the trailer's CRC (ckptfs.proto).
          if (wire !== WireType.Fixed32) throw new WireError(`crc32c: wire type ${wire}, expected ${WireType.Fixed32}`, 0)
          if (crc !== undefined) throw new WireError('crc32c: a second crc32c field', 0)
          crc = r.bytes(4).readUInt32LE(0)
          pos += r.pos
          continue
        }
        if (field === fields.data) {
          if (wire !== WireType.Len) throw new WireError(`data: wire type ${wire}, expected ${WireType.Len}`, 0)
          if (data) throw new WireError('data: a second data field', 0)
          const length = r.smallVarint('data length', end - pos - r.pos)
          data = { at: pos + r.pos, length }
          this.crc = zlib.crc32(head.subarray(0, r.pos), this.crc)
          pos = data.at + length
          continue
        }
        if (field) {
          if (wire !== WireType.Varint) throw new WireError(`${field.name}: wire type ${wire}, expected ${WireType.Varint}`, 0)
          const value = r.varint()
          if (field.kind === 'uint32' && value > 0xffffffffn) throw new WireError(`${field.name}: ${value} is out of range`, 0)
          if (field === fields.key) key = value
          else offset = value
          this.crc = zlib.crc32(head.subarray(0, r.pos), this.crc)
          pos += r.pos
          continue
        }
        if (wire === WireType.Len) {
          const length = r.smallVarint('length', end - pos - r.pos)
          this.crc = zlib.crc32(head.subarray(0, r.pos), this.crc)
          this.checksum(pos + r.pos, length)
          pos += r.pos + length
          continue
        }
        r.skip(wire)
        this.crc = zlib.crc32(head.subarray(0, r.pos), this.crc)
        pos += r.pos
      } catch (err) {
        throw this.refusal(err, where, pos)
      }
    }
    if (key === undefined || offset === undefined || data === undefined || crc === undefined) {
      const missing = [key === undefined && fields.key.name, offset === undefined && 'offset', data === undefined && 'data', crc === undefined && 'crc32c'].filter(Boolean).join(', ')
      throw new CkptError(`image: ${where}: ${missing} missing`, 'EINVAL')
    }
    // A page chunk belongs to a mapping of the process whose records it is among.
    const contents = kind === 'pageChunk' ? this.sections[this.sections.length - 1]?.vmas.get(key)?.contents : this.files.get(Number(key))?.contents
    if (!contents) {
      const owner = kind === 'pageChunk' ? `mapping 0x${key.toString(16)}` : `objref ${key} with contents`
      throw new CkptError(`image: ${where}: no ${owner} described before it`, 'EINVAL')
    }
    const index = Number(offset / BigInt(CHUNK_SIZE))
    if (offset % BigInt(CHUNK_SIZE) !== 0n || index >= contents.dataAt.length) {
      throw new CkptError(`image: ${where}: offset ${offset} is not a chunk of the ${contents.size} stored bytes`, 'EINVAL')
    }
    const expected = Math.min(CHUNK_SIZE, contents.size - index * CHUNK_SIZE)
    if (data.length !== expected) throw new CkptError(`image: ${where}: ${data.length} bytes of data at offset ${offset}, expected ${expected}`, 'EINVAL')
    if (contents.dataAt[index] !== -1) throw new CkptError(`image: ${where}: offset ${offset} was already stored`, 'EINVAL')
    contents.dataAt[index] = data.at
    contents.crcs[index] = crc
    if (kind === 'pageChunk') this.pageBytes += data.length
    else this.fileBytes += data.length
  }

  private readTrailer(headLength: number, bodyAt: number, length: number, where: RecordPlace): void {
    const trailerAt = bodyAt - headLength
    if (length > 4096) throw new CkptError(`image: ${where}: ${length} bytes, too large for a trailer`, 'EINVAL')
    let f: Fields
    try {
      f = new Fields(decodeMessage(this.schema.Trailer, this.file.bytes(bodyAt, length)), where)
    } catch (err) {
      throw this.refusal(err, where, bodyAt)
    }
    const expect = (name: string, actual: bigint | number, what: string) => {
      const recorded = name === 'crc32' ? f.num(name) : f.big(name)
      if (BigInt(recorded) !== BigInt(actual)) f.fail(name, `${recorded}, but the image has ${actual} ${what}: it is damaged or incomplete`)
    }
    expect('offset', trailerAt, 'bytes before the trailer')
    expect('records', this.records, 'records')
    expect('pageBytes', this.pageBytes, 'bytes of pages')
    expect('fileBytes', this.fileBytes, 'bytes of file contents')
    expect('crc32', this.crc, 'as CRC-32 of its metadata')
    this.trailerSeen = true
  }

  /** Feeds bytes that are not kept (unknown records and fields) to the checksum. */
  private checksum(at: number, length: number): void {
    for (let pos = at; pos < at + length;) {
      const piece = this.file.bytes(pos, Math.min(CHUNK_SIZE, at + length - pos))
      this.crc = zlib.crc32(piece, this.crc)
      pos += piece.length
    }
  }

  /** "vma #3 at byte 1234": the n-th record of its kind. */
  private place(kind: RecordKind, at: number): RecordPlace {
    const n = (this.counts.get(kind) ?? 0) + 1
    this.counts.set(kind, n)
    return new RecordPlace(recordNames[kind], n, at)
  }

  private refusal(err: unknown, where: RecordPlace | string, base: number): Error {
    if (err instanceof WireError) return new CkptError(`image: ${where}: ${err.message} (byte ${base + err.at})`, 'EINVAL')
    return err instanceof Error ? err : new CkptError(messageOf(err))
  }

  // -------------------------------------------------------------------------------------
  // Checks across records, then the model

  assemble(file: ImageFile): LoadedImage {
    const header = this.header!
    const files: FileDescription[] = []
    for (const { description, where, contents } of this.files.values()) {
      const mapping = handlerOf(description).image
      for (const { objref, what } of mapping?.references?.(description) ?? []) {
        if (!this.files.has(objref)) throw new CkptError(`image: ${where}: ${what}, which is not described`, 'EINVAL')
      }
      if (contents) {
        this.complete(contents, `${where}: contents`)
        if (!mapping?.withContents) throw new CkptError(`image: ${where}: contents on a ${description.type}`, 'EINVAL')
        files.push(withContents(mapping.withContents, description, chunkedSource(file, contents), where))
      } else files.push(description)
    }

    const [root, ...others] = this.sections.map((section) => this.assembleTask(section, file, files))
    // A thread ID names one thread of the whole tree; a zombie is none of its live processes.
    const tidOwner = new Map<number, Pid>()
    for (const task of [root, ...others]) {
      for (const tid of task.task.tids) {
        const owner = tidOwner.get(tid)
        if (owner !== undefined) throw new CkptError(`image: thread ${tid} is recorded for process ${owner} and for process ${task.pid}`, 'EINVAL')
        tidOwner.set(tid, task.pid)
      }
    }
    const zombies: ZombieTask[] = []
    for (const { zombie, where } of this.zombies) {
      if (tidOwner.has(zombie.pid)) throw new CkptError(`image: ${where}: process ${zombie.pid} is recorded as a zombie and as a live task`, 'EINVAL')
      if (zombies.some((z) => z.pid === zombie.pid)) throw new CkptError(`image: ${where}: zombie ${zombie.pid} is recorded twice`, 'EINVAL')
      zombies.push(zombie)
    }
    const fileTable: FileTable = { fds: root.fds, files }
    return { header, pid: header.pid, bootId: header.bootId, process: root.process, threads: root.threads, vmas: root.vmas, fileTable, task: root.task, others, zombies }
  }

  /** One process's records, checked against each other; `files` are the tree's. */
  private assembleTask(section: TaskSection, file: ImageFile, files: FileDescription[]): LoadedTask {
    const process = section.process
    const named = section.where ? ` after ${section.where}` : ''
    if (!process) throw new CkptError(`image: no process record${named}`, 'EINVAL')
    const listed = new Set(section.tids)
    const threads = section.threads.map(({ thread, where }) => {
      if (!listed.has(thread.tid)) throw new CkptError(`image: ${where}: thread ${thread.tid} is not in ${section.where ? `the thread list of ${section.where}` : "the header's thread list"}`, 'EINVAL')
      return thread
    })
    const threadIds = new Set(threads.map((t) => t.tid))
    if (threadIds.size !== threads.length) throw new CkptError(`image: a thread is recorded twice${named}`, 'EINVAL')
    const missing = section.tids.filter((tid) => !threadIds.has(tid))
    if (missing.length > 0) throw new CkptError(`image: no thread record for thread ${missing.join(', ')}${named}`, 'EINVAL')

    const fdNumbers = new Set<number>()
    const fds = section.fds.map(({ fd, where }) => {
      if (fdNumbers.has(fd.fd)) throw new CkptError(`image: ${where}: fd ${fd.fd} is recorded twice`, 'EINVAL')
      fdNumbers.add(fd.fd)
      if (!this.files.has(fd.objref)) throw new CkptError(`image: ${where}: fd ${fd.fd} refers to objref ${fd.objref}, which is not described`, 'EINVAL')
      return fd
    })

    const vmas: Vma[] = []
    let previous: VmaEntry | undefined
    for (const entry of [...section.vmas.values()].sort((a, b) => (a.vma.start < b.vma.start ? -1 : 1))) {
      if (previous && entry.vma.start < previous.vma.end) {
        throw new CkptError(`image: ${entry.where}: mapping 0x${entry.vma.start.toString(16)} overlaps the one at 0x${previous.vma.start.toString(16)}`, 'EINVAL')
      }
      this.complete(entry.contents, `${entry.where}: pages`)
      vmas.push({ ...entry.vma, pages: chunkedSource(file, entry.contents) })
      previous = entry
    }

    const fileTable: FileTable = { fds, files }
    const task: TaskImage = {
      pid: section.pid,
      tids: section.tids,
      process: async () => process,
      threads: async () => threads,
      vmas: async () => vmas,
      fileTable: async () => fileTable,
    }
    return { pid: section.pid, process, threads, vmas, fds, task }
  }

  private complete(contents: Contents, where: string): void {
    const gap = contents.dataAt.indexOf(-1)
    if (gap >= 0) throw new CkptError(`image: ${where}: the chunk at offset ${gap * CHUNK_SIZE} of ${contents.size} bytes is missing`, 'EINVAL')
  }
}

const schemaName = {
  header: 'Header', process: 'Process', thread: 'Thread', file: 'FileDescription', fd: 'FdEntry', vma: 'Vma', task: 'Task', zombie: 'Zombie',
} as const

const recordNames: Record<RecordKind, string> = {
  header: 'header', process: 'process', thread: 'thread', file: 'file', fd: 'fd', vma: 'vma',
  pageChunk: 'page chunk', fileChunk: 'file chunk', task: 'task', zombie: 'zombie', trailer: 'trailer',
}

/** A description with its file_chunk bytes; the handler's refusal named by the record. */
function withContents(attach: (desc: FileDescription, contents: ByteSource) => FileDescription, desc: FileDescription, contents: ByteSource, where: unknown): FileDescription {
  try {
    return attach(desc, contents)
  } catch (e) {
    if (e instanceof CkptError) throw new CkptError(`image: ${where}: ${e.message}`, 'EINVAL')
    throw e
  }
}
