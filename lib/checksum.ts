// The check every saved byte of a checkpoint carries: a CRC32C per 1 MiB piece of each raw
// file of a tree (`NAME_crc32c` next to NAME, one per line) and of each chunk of an image
// (the chunk's crc32c field; image chunks are the same 1 MiB pieces). The mount computes them
// when they are read, loaders parse them, and whoever consumes the bytes checks them: a
// loader the small files it reads whole, a restore what it reads or what landed in the task.

import { CkptError } from './errors'
import type { ByteSource } from './model'
import { native } from './native'

/** Bytes per checksum: the image's chunk size, so one value serves both. */
export const CRC_PIECE = 1 << 20
/** The checksum file of a tree's raw file NAME is NAME + this. */
export const CRC_SUFFIX = '_crc32c'

export const crc32c = (data: Buffer, seed = 0): number => native.crc32c(data, seed)

/** CRC32C (Castagnoli, reflected) by table, one byte at a time. */
const SMALL_TABLE = (() => {
  const table = new Int32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    table[n] = c
  }
  return table
})()

/**
 * The CRC32C of `data[start, end)` computed here: for value files of a few bytes, of which a
 * restore checks 180,000, a call into the addon (and a Buffer view per value) costs more.
 */
export function smallCrc32c(data: Uint8Array, start = 0, end = data.length): number {
  let c = -1
  for (let i = start; i < end; i++) c = SMALL_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8)
  return ~c >>> 0
}

/** The CRC32C of `text`'s UTF-8 bytes (an ASCII string needs no Buffer). */
export function textCrc32c(text: string): number {
  let c = -1
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (code >= 0x80) return smallCrc32c(Buffer.from(text))
    c = SMALL_TABLE[(c ^ code) & 0xff] ^ (c >>> 8)
  }
  return ~c >>> 0
}

/** How many checksums `size` bytes have (none for an empty file). */
export const pieceCount = (size: number): number => Math.ceil(size / CRC_PIECE)

/** The checksum of each 1 MiB piece of `data`. */
export function pieceCrcs(data: Buffer): number[] {
  const crcs: number[] = []
  for (let at = 0; at < data.length; at += CRC_PIECE) crcs.push(crc32c(data.subarray(at, at + CRC_PIECE)))
  return crcs
}

const hex8 = (crc: number): string => crc.toString(16).padStart(8, '0')

/** A checksum file: eight hexadecimal digits per piece, one per line. */
export function crcText(crcs: readonly number[]): Buffer {
  return Buffer.from(crcs.map((crc) => hex8(crc) + '\n').join(''))
}

/** Parses a checksum file; returns what is wrong as a string (the caller names the file). */
export function parseCrcText(text: string): number[] | string {
  if (text === '') return []
  if (!text.endsWith('\n')) return 'no newline at the end of the last line'
  const lines = text.slice(0, -1).split('\n')
  const crcs: number[] = []
  for (const [i, line] of lines.entries()) {
    if (!/^[0-9a-f]{8}$/.test(line)) return `line ${i + 1}: not eight lowercase hexadecimal digits: ${JSON.stringify(line.slice(0, 20))}`
    crcs.push(parseInt(line, 16))
  }
  return crcs
}

/** A checksum file holds this many bytes per piece. */
export const CRC_LINE_BYTES = 9

/** The source with the checksums its saved copy recorded (a loader attaches them). */
export function withCrcs(source: ByteSource, crcs: readonly number[]): ByteSource {
  return Object.assign(source, { crc32c: crcs })
}

/** The error for bytes that do not match their checksum: names the place and the byte range. */
export function damaged(where: string, piece: number, size: number, recorded: number, found: number): CkptError {
  const from = piece * CRC_PIECE
  const to = Math.min(size, from + CRC_PIECE)
  return new CkptError(`${where}: bytes ${from}-${to - 1} do not match their CRC32C (saved ${hex8(recorded)}, read ${hex8(found)}): the saved checkpoint is damaged`, 'EIO')
}

/** Refuses a number of checksums that does not fit `size` bytes. */
export function checkCount(where: string, crcs: readonly number[], size: number): void {
  if (crcs.length !== pieceCount(size)) {
    throw new CkptError(`${where}${CRC_SUFFIX}: ${crcs.length} checksums for ${size} bytes, expected ${pieceCount(size)} (one per MiB)`, 'EINVAL')
  }
}

/** Checks bytes read whole against their recorded checksums. */
export function checkBuffer(data: Buffer, crcs: readonly number[], where: string): void {
  checkCount(where, crcs, data.length)
  for (let k = 0; k < crcs.length; k++) {
    const found = crc32c(data.subarray(k * CRC_PIECE, (k + 1) * CRC_PIECE))
    if (found !== crcs[k]) throw damaged(where, k, data.length, crcs[k], found)
  }
}

/** Checks a whole read of `source` against the checksums its loader attached; refuses a source without. */
export function checkSourceBytes(source: ByteSource, data: Buffer, where: string): void {
  if (!source.crc32c) throw new CkptError(`${where}: no checksums were loaded with it`, 'EINVAL')
  checkBuffer(data, source.crc32c, where)
}

/** The mount's checksums are computed once per source. */
const computed = new WeakMap<ByteSource, Promise<number[]>>()
/**
 * Pieces whose checksum is known already, per source: the image's chunk checksums and the
 * tree's NAME_crc32c are the same values, so whichever is read first (cp -a reads `image`
 * before task-PID/) spares the other a second read of the task's memory.
 */
const knownPieces = new WeakMap<ByteSource, Array<number | undefined>>()

export function knownPieceCrc(source: ByteSource, piece: number): number | undefined {
  return knownPieces.get(source)?.[piece]
}

export function notePieceCrc(source: ByteSource, piece: number, crc: number): void {
  let known = knownPieces.get(source)
  if (!known) knownPieces.set(source, (known = []))
  known[piece] = crc
}
/** Work on the JavaScript thread yields to the event loop this often. */
const YIELD_AFTER_MS = 20

/**
 * The checksum of each piece of `source`, for the tree's NAME_crc32c: the recorded ones when
 * the source was loaded with them, else read and computed (once), 1 MiB at a time.
 */
export function sourceCrcs(source: ByteSource): Promise<number[]> {
  if (source.crc32c) return Promise.resolve([...source.crc32c])
  let crcs = computed.get(source)
  if (!crcs) {
    crcs = computeCrcs(source)
    computed.set(source, crcs)
    crcs.catch(() => computed.delete(source))
  }
  return crcs
}

async function computeCrcs(source: ByteSource): Promise<number[]> {
  const buffer = Buffer.allocUnsafe(Math.min(CRC_PIECE, source.size))
  const crcs: number[] = []
  let ranSince = performance.now()
  for (let at = 0; at < source.size; at += CRC_PIECE) {
    const known = knownPieceCrc(source, crcs.length)
    if (known !== undefined) {
      crcs.push(known)
      continue
    }
    const n = Math.min(CRC_PIECE, source.size - at)
    const got = source.readInto(at, n, buffer, 0)
    if ((typeof got === 'number' ? got : await got) !== n) throw new CkptError(`checksum: the source ended before byte ${at + n}`)
    notePieceCrc(source, crcs.length, crc32c(buffer.subarray(0, n)))
    crcs.push(knownPieceCrc(source, crcs.length)!)
    if (performance.now() - ranSince > YIELD_AFTER_MS) {
      await new Promise((resolve) => setImmediate(resolve))
      ranSince = performance.now()
    }
  }
  return crcs
}
