// Encodes a TaskImage as the condensed `image` file (lib/image/ckptfs.proto), as a ByteSource:
// its exact size is known once the metadata is captured, without reading any page, and
// reading a range produces just those bytes. Metadata records are encoded once and kept
// (they are small); page and file contents are read from the model's ByteSources for the
// range asked, so memory stays bounded whatever the size of the process.

import * as zlib from 'zlib'
import { crc32c, knownPieceCrc, notePieceCrc } from '../checksum'
import { CkptError } from '../errors'
import { intoSource, type ByteSource, type CheckpointMode, type Sized, type TaskImage, type ThreadState, type Vma, type ZombieTask } from '../model'
import { handlerOf } from '../files/index'
import { encodeMessage } from './codec'
import { CHUNK_SIZE, FORMAT_MAJOR, FORMAT_MINOR, imageSchema, MAGIC, type MessageSchema, type RecordKind } from './schema'
import { ByteWriter, WireType } from './wire'

export interface ImageOptions {
  /** Recorded in the header; left out, the header says 'unknown'. */
  mode?: CheckpointMode
  /** The boot that made the checkpoint (lib/boot.ts); left out, the header has none. */
  bootId?: string
  /** The other processes of the tree, parents first (their fds refer to the root's files). */
  others?: readonly TaskImage[]
  zombies?: readonly ZombieTask[]
}

/** One piece of the image: `head` bytes, then optionally `dataLength` bytes of `data`. */
interface Segment {
  /** Offset of the segment in the image. */
  at: number
  head: Buffer
  data: ByteSource | undefined
  dataOffset: number
  dataLength: number
  /** A chunk's crc32c field, after its data. */
  tail: ChunkTail | undefined
}

/** A chunk's crc32c field: its tag and 4 bytes (fixed32). */
const TAIL_LENGTH = 5

/**
 * The crc32c field that ends a chunk record. Its value is the one the source recorded (a
 * loaded tree or image), else computed from the data as it is served: a reader that reads
 * the image in order (cat, cp) has its CRC fed from the bytes it was given, so the task's
 * memory is read once; any other order reads the chunk again to compute it.
 */
class ChunkTail {
  private fed = 0
  private running = 0
  private value: number | undefined

  private readonly piece: number

  constructor(private readonly tag: number, private readonly source: ByteSource, private readonly dataOffset: number, private readonly dataLength: number, recorded: number | undefined) {
    this.value = recorded
    this.piece = dataOffset / CHUNK_SIZE
  }

  /** Bytes [from, from + data.length) of the chunk's data were just served from `data`. */
  feed(from: number, data: Buffer): void {
    if (this.value !== undefined || from !== this.fed) return
    this.running = crc32c(data, this.running)
    this.fed += data.length
    if (this.fed === this.dataLength) {
      this.value = this.running
      notePieceCrc(this.source, this.piece, this.value)
    }
  }

  bytes(): Buffer | Promise<Buffer> {
    this.value ??= knownPieceCrc(this.source, this.piece)
    if (this.value !== undefined) return this.encode(this.value)
    return this.compute().then((crc) => this.encode(crc))
  }

  private async compute(): Promise<number> {
    const data = Buffer.allocUnsafe(this.dataLength)
    const got = await this.source.readInto(this.dataOffset, this.dataLength, data, 0)
    if (got !== this.dataLength) throw new CkptError(`image: source of ${this.dataLength} bytes at ${this.dataOffset} returned ${got}`)
    this.value ??= crc32c(data)
    notePieceCrc(this.source, this.piece, this.value)
    return this.value
  }

  private encode(crc: number): Buffer {
    const out = Buffer.allocUnsafe(TAIL_LENGTH)
    out[0] = this.tag
    out.writeUInt32LE(crc, 1)
    return out
  }
}

export async function imageSource(task: TaskImage, options: ImageOptions = {}): Promise<ByteSource> {
  const [process, threads, vmas, fileTable] = await Promise.all([task.process(), task.threads(), task.vmas(), task.fileTable()])
  const schema = imageSchema()
  const image = new ImageBuilder()

  image.record('header', schema.Header, {
    magic: MAGIC,
    formatVersion: { major: FORMAT_MAJOR, minor: FORMAT_MINOR },
    pid: task.pid,
    tids: task.tids,
    mode: options.mode ?? 'unknown',
    bootId: options.bootId,
  })
  image.record('process', schema.Process, process)
  recordThreads(image, threads)
  for (const file of fileTable.files) {
    const mapping = handlerOf(file).image
    image.record('file', schema.FileDescription, mapping ? { ...file, [mapping.field]: await mapping.write(file) } : file)
    const contents = mapping?.contents?.(file)
    if (contents) image.chunks('fileChunk', file.objref, contents)
  }
  for (const fd of fileTable.fds) image.record('fd', schema.FdEntry, fd)
  recordMemory(image, vmas)
  // The rest of the tree: each process's own records after its task record.
  for (const other of options.others ?? []) {
    const [otherProcess, otherThreads, otherVmas, otherTable] = await Promise.all([other.process(), other.threads(), other.vmas(), other.fileTable()])
    image.record('task', schema.Task, { pid: other.pid, tids: other.tids })
    image.record('process', schema.Process, otherProcess)
    recordThreads(image, otherThreads)
    for (const fd of otherTable.fds) image.record('fd', schema.FdEntry, fd)
    recordMemory(image, otherVmas)
  }
  for (const zombie of options.zombies ?? []) image.record('zombie', schema.Zombie, zombie)
  return image.finish()
}

function recordThreads(image: ImageBuilder, threads: ThreadState[]): void {
  const schema = imageSchema()
  for (const thread of threads) image.record('thread', schema.Thread, { ...thread, robustListHead: thread.robustList.head, robustListLen: thread.robustList.length })
}

function recordMemory(image: ImageBuilder, vmas: Vma[]): void {
  const schema = imageSchema()
  for (const vma of vmas) {
    const stored = vma.stored.reduce((sum, run) => sum + run.length, 0n)
    if (BigInt(vma.pages.size) !== stored) {
      throw new CkptError(`image: mapping ${vma.start.toString(16)}: ${vma.pages.size} bytes of pages for ${stored} stored bytes`)
    }
    // Inherited runs are listed among the stored ones too (ckptfs.proto, Vma.inherited): a
    // reader that does not know them finds the chunks short and refuses.
    const inherited = vma.inherited ?? []
    const all = [...vma.stored, ...inherited].sort((a, b) => (a.offset < b.offset ? -1 : 1))
    image.record('vma', schema.Vma, { ...vma, stored: all, inherited })
  }
  for (const vma of vmas) image.chunks('pageChunk', vma.start, vma.pages)
}

/** Lays the image out as segments, keeping the running CRC the trailer records. */
class ImageBuilder {
  private readonly schema = imageSchema()
  private readonly segments: Segment[] = []
  private size = 0
  private records = 0
  private crc = 0
  private pageBytes = 0n
  private fileBytes = 0n

  record(kind: RecordKind, schema: MessageSchema, value: object): void {
    const body = encodeMessage(schema, value)
    const out = new ByteWriter().tag(this.recordId(kind), WireType.Len).varint(body.length).raw(body)
    this.add(out.finish(), undefined, 0, 0, undefined)
  }

  /** One chunk record per CHUNK_SIZE bytes of `source`; `key` is the vma_start or objref. */
  chunks(kind: 'pageChunk' | 'fileChunk', key: bigint | number, source: ByteSource): void {
    const { key: keyField, offset: offsetField, data: dataField, crc32c: crcField } = this.schema.chunks[kind]
    const crcTag = new ByteWriter().tag(crcField.id, WireType.Fixed32).finish()
    if (crcTag.length !== 1) throw new CkptError(`image schema: ${kind}.crc32c needs a one-byte tag`)
    for (let offset = 0; offset < source.size; offset += CHUNK_SIZE) {
      const length = Math.min(CHUNK_SIZE, source.size - offset)
      // The chunk's fields are written whatever their value (zero included) so the layout
      // is the same for every chunk; data comes next, then its crc32c, which ends the record.
      const fields = new ByteWriter()
        .tag(keyField.id, WireType.Varint).varint(key)
        .tag(offsetField.id, WireType.Varint).varint(offset)
        .tag(dataField.id, WireType.Len).varint(length)
      const head = new ByteWriter().tag(this.recordId(kind), WireType.Len).varint(fields.length + length + TAIL_LENGTH).raw(fields.finish())
      const tail = new ChunkTail(crcTag[0], source, offset, length, source.crc32c?.[offset / CHUNK_SIZE])
      this.add(head.finish(), source, offset, length, tail)
      if (kind === 'pageChunk') this.pageBytes += BigInt(length)
      else this.fileBytes += BigInt(length)
    }
  }

  finish(): ByteSource {
    const trailer = encodeMessage(this.schema.Trailer, {
      records: BigInt(this.records),
      offset: BigInt(this.size),
      pageBytes: this.pageBytes,
      fileBytes: this.fileBytes,
      crc32: this.crc,
    })
    this.add(new ByteWriter().tag(this.recordId('trailer'), WireType.Len).varint(trailer.length).raw(trailer).finish(), undefined, 0, 0, undefined)
    return segmentSource(this.segments, this.size)
  }

  /** Adds a segment; the running CRC (metadata only) takes its head, never data or tail. */
  private add(head: Buffer, data: ByteSource | undefined, dataOffset: number, dataLength: number, tail: ChunkTail | undefined): void {
    this.segments.push({ at: this.size, head, data, dataOffset, dataLength, tail })
    this.size += head.length + dataLength + (tail ? TAIL_LENGTH : 0)
    this.records++
    this.crc = zlib.crc32(head, this.crc)
  }

  private recordId(kind: RecordKind): number {
    return this.schema.recordIds.get(kind)!
  }
}

/** Reads ranges of the laid-out image: heads from memory, data from their sources. */
function segmentSource(segments: Segment[], size: number): ByteSource {
  const segmentAt = (offset: number): number => {
    let lo = 0
    let hi = segments.length - 1
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1
      if (segments[mid].at <= offset) lo = mid
      else hi = mid - 1
    }
    return lo
  }
  // Synchronous while every source answers at once (heads always do); continues in a promise
  // from the first source that does not.
  const fill = (i: number, pos: number, offset: number, end: number, into: Buffer, at: number): Sized => {
    for (; pos < end; i++) {
      const reached = fillSegment(segments[i], pos, offset, end, into, at)
      if (typeof reached !== 'number') return reached.then((p) => fill(i + 1, p, offset, end, into, at))
      pos = reached
    }
    return end - offset
  }
  /** Copies what [pos, end) holds of one segment into `into`; returns where it stopped. */
  const fillSegment = (segment: Segment, pos: number, offset: number, end: number, into: Buffer, at: number): number | Promise<number> => {
    const headEnd = segment.at + segment.head.length
    if (pos < headEnd) pos += segment.head.copy(into, at + pos - offset, pos - segment.at, Math.min(end, headEnd) - segment.at)
    if (pos < end && segment.data && pos < headEnd + segment.dataLength) {
      const from = segment.dataOffset + (pos - headEnd)
      const want = Math.min(end, headEnd + segment.dataLength) - pos
      const intoAt = at + pos - offset
      const got = segment.data.readInto(from, want, into, intoAt)
      const dataPos = pos - headEnd
      const next = pos + want
      const served = (n: number) => {
        if (n !== want) throw new CkptError(`image: source of ${want} bytes at ${from} returned ${n}`)
        segment.tail?.feed(dataPos, into.subarray(intoAt, intoAt + want))
        return fillTail(segment, next, offset, end, into, at)
      }
      return typeof got === 'number' ? served(got) : got.then(served)
    }
    return fillTail(segment, pos, offset, end, into, at)
  }
  const fillTail = (segment: Segment, pos: number, offset: number, end: number, into: Buffer, at: number): number | Promise<number> => {
    const tailAt = segment.at + segment.head.length + segment.dataLength
    if (!segment.tail || pos >= end || pos < tailAt) return pos
    const stop = Math.min(end, tailAt + TAIL_LENGTH)
    const put = (tail: Buffer) => pos + tail.copy(into, at + pos - offset, pos - tailAt, stop - tailAt)
    const tail = segment.tail.bytes()
    return tail instanceof Promise ? tail.then(put) : put(tail)
  }
  return intoSource(size, (offset, length, into, at) => fill(segmentAt(offset), offset, offset, offset + length, into, at))
}
