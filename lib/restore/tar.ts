// Extracts a tar of a saved checkpoint (ustar, pax or GNU, as GNU tar writes them) into a
// directory, for `ckptfs restore saved.tar` and `... | ckptfs restore -`. A tar is hostile
// input and the restore runs as root, so only what a saved tree holds is taken: regular files
// and directories, under relative names without `..`, created by this process with private
// modes (the modes, owners and times in the tar are ignored; the restore does not use them).
// Links, devices, fifos and sparse files are refused, so nothing can point out of `dest`.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'

const BLOCK = 512

/** Whether `block` (the first 512 bytes of a file) is a tar header: its checksum matches. */
export function isTarHeader(block: Buffer): boolean {
  if (block.length < BLOCK || block.every((b) => b === 0)) return false
  const stored = parseOctal(block.subarray(148, 156))
  return stored !== undefined && stored === checksum(block)
}

/** Reads exactly the bytes asked for from a stream of chunks. */
class ExactReader {
  private pending: Buffer[] = []
  private buffered = 0
  private ended = false
  private readonly chunks: AsyncIterator<Buffer>
  /** Bytes handed out so far: where the next read starts in the tar. */
  offset = 0

  constructor(source: AsyncIterable<Buffer>) {
    this.chunks = source[Symbol.asyncIterator]()
  }

  /** Exactly `n` bytes, or fewer only where the stream ends. */
  async read(n: number): Promise<Buffer> {
    while (this.buffered < n && !this.ended) {
      const next = await this.chunks.next()
      if (next.done) this.ended = true
      else if (next.value.length > 0) {
        this.pending.push(next.value)
        this.buffered += next.value.length
      }
    }
    const all = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending)
    const out = all.subarray(0, Math.min(n, all.length))
    const rest = all.subarray(out.length)
    this.pending = rest.length > 0 ? [rest] : []
    this.buffered = rest.length
    this.offset += out.length
    return out
  }
}

interface Header {
  name: string
  size: number
  type: string
  /** Where its header starts in the tar, for error messages. */
  at: number
}

/** Names and sizes that the next entry takes from a pax or GNU long-name header before it. */
interface Override {
  name?: string
  size?: number
}

export async function extractTar(source: AsyncIterable<Buffer>, dest: string, label: string): Promise<void> {
  const reader = new ExactReader(source)
  const made = new Set<string>()
  let override: Override = {}
  let global: Override = {}
  let entries = 0
  for (;;) {
    const at = reader.offset
    const block = await reader.read(BLOCK)
    if (block.length === 0 && entries > 0) return // some writers omit the two zero blocks
    if (block.length < BLOCK) throw new CkptError(`${label}: truncated tar: the header at byte ${at} is cut short`, 'EINVAL')
    if (block.every((b) => b === 0)) {
      if (entries === 0) throw new CkptError(`${label}: an empty tar: no saved checkpoint in it`, 'EINVAL')
      return // end of archive; what may follow (a second zero block, padding) is not read
    }
    const header = parseHeader(block, at, label)
    const where = `${label}: ${JSON.stringify(override.name ?? header.name)} (header at byte ${at})`
    // The data of an extended header (pax records, a GNU long name), which is never large.
    const data = async (): Promise<Buffer> => {
      const size = header.size
      if (size > 1024 * 1024) throw new CkptError(`${where}: a ${size}-byte extended header`, 'EINVAL')
      const bytes = await reader.read(size)
      if (bytes.length < size) throw new CkptError(`${where}: truncated tar: ${size - bytes.length} bytes missing`, 'EINVAL')
      await skip(reader, padding(size), where)
      return bytes
    }
    switch (header.type) {
      case 'x':
        override = { ...override, ...parsePax(await data(), where) }
        continue
      case 'g':
        global = { ...global, ...parsePax(await data(), where) }
        delete global.size // a size for every entry means nothing
        continue
      case 'L':
        override = { ...override, name: cString(await data()) }
        continue
      case 'K':
        throw new CkptError(`${where}: a link: a saved checkpoint holds only files and directories`, 'EINVAL')
    }
    entries++
    const size = override.size ?? header.size
    const rel = safeName(override.name ?? global.name ?? header.name, where)
    override = {}
    const target = path.join(dest, rel)
    if (header.type === '5') {
      if (rel !== '.') mkdirs(dest, rel, made, where)
      if (size > 0) await skip(reader, size + padding(size), where)
      continue
    }
    if (header.type !== '0' && header.type !== '\0' && header.type !== '7') {
      throw new CkptError(`${where}: ${describeType(header.type)}: a saved checkpoint holds only files and directories`, 'EINVAL')
    }
    if (rel === '.') throw new CkptError(`${where}: a file without a name`, 'EINVAL')
    mkdirs(dest, path.dirname(rel), made, where)
    let fd: number
    try {
      // wx: a name that appears twice is refused rather than one copy silently winning.
      fd = fs.openSync(target, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      throw new CkptError(`${where}: ${code === 'EEXIST' ? 'appears twice in the tar' : (err as Error).message}`, 'EINVAL')
    }
    try {
      let left = size
      while (left > 0) {
        const piece = await reader.read(Math.min(left, 1024 * 1024))
        if (piece.length === 0) throw new CkptError(`${where}: truncated tar: ${left} of its ${size} bytes missing`, 'EINVAL')
        fs.writeSync(fd, piece)
        left -= piece.length
      }
    } finally {
      fs.closeSync(fd)
    }
    await skip(reader, padding(size), where)
  }
}

function parseHeader(block: Buffer, at: number, label: string): Header {
  if (!isTarHeader(block)) throw new CkptError(`${label}: not a tar, or a damaged one: the header at byte ${at} has a wrong checksum`, 'EINVAL')
  const magic = block.subarray(257, 263).toString('latin1')
  let name = cString(block.subarray(0, 100))
  // POSIX ustar splits long names into prefix/name; GNU's format keeps other fields there.
  if (magic === 'ustar\0') {
    const prefix = cString(block.subarray(345, 500))
    if (prefix) name = `${prefix}/${name}`
  }
  const size = parseNumber(block.subarray(124, 136))
  if (size === undefined) throw new CkptError(`${label}: the header at byte ${at} (${JSON.stringify(name)}) has no valid size`, 'EINVAL')
  return { name, size, type: String.fromCharCode(block[156]), at }
}

/** A relative name inside the extraction directory, or a refusal. */
function safeName(name: string, where: string): string {
  if (name === '') throw new CkptError(`${where}: an entry without a name`, 'EINVAL')
  if (name.startsWith('/')) throw new CkptError(`${where}: an absolute name`, 'EINVAL')
  const parts = name.split('/').filter((p) => p !== '' && p !== '.')
  if (parts.includes('..')) throw new CkptError(`${where}: a name with a .. component`, 'EINVAL')
  if (parts.some((p) => p.includes('\0'))) throw new CkptError(`${where}: a name with a NUL byte`, 'EINVAL')
  return parts.length === 0 ? '.' : parts.join('/')
}

/** Creates `rel` and its parents under `dest`, private to this process. */
function mkdirs(dest: string, rel: string, made: Set<string>, where: string): void {
  if (rel === '.' || made.has(rel)) return
  mkdirs(dest, path.dirname(rel), made, where)
  try {
    fs.mkdirSync(path.join(dest, rel), { mode: 0o700 })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !fs.lstatSync(path.join(dest, rel)).isDirectory()) {
      throw new CkptError(`${where}: cannot make directory ${rel}: ${(err as Error).message}`, 'EINVAL')
    }
  }
  made.add(rel)
}

async function skip(reader: ExactReader, n: number, where: string): Promise<void> {
  for (let left = n; left > 0;) {
    const piece = await reader.read(Math.min(left, 1024 * 1024))
    if (piece.length === 0) throw new CkptError(`${where}: truncated tar`, 'EINVAL')
    left -= piece.length
  }
}

const padding = (size: number) => (BLOCK - (size % BLOCK)) % BLOCK

/** pax records: "LENGTH KEY=VALUE\n"; path and size are used, sparse files refused. */
function parsePax(data: Buffer, where: string): Override {
  const out: Override = {}
  let pos = 0
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos)
    const length = space > pos ? Number(data.subarray(pos, space).toString('latin1')) : NaN
    if (!Number.isInteger(length) || length <= space - pos || pos + length > data.length || data[pos + length - 1] !== 0x0a) {
      throw new CkptError(`${where}: a damaged pax header at its byte ${pos}`, 'EINVAL')
    }
    const record = data.subarray(space + 1, pos + length - 1).toString('utf8')
    const eq = record.indexOf('=')
    const key = record.slice(0, eq)
    const value = record.slice(eq + 1)
    if (key === 'path') out.name = value
    else if (key === 'size') {
      if (!/^[0-9]+$/.test(value)) throw new CkptError(`${where}: pax size ${JSON.stringify(value)} is not a number`, 'EINVAL')
      out.size = Number(value)
    } else if (key.startsWith('GNU.sparse.')) throw new CkptError(`${where}: a sparse file: not part of a saved checkpoint`, 'EINVAL')
    pos += length
  }
  return out
}

/** A numeric field: octal digits (space or NUL padded), or GNU's base-256 for large values. */
function parseNumber(field: Buffer): number | undefined {
  if (field[0] & 0x80) {
    if (field[0] !== 0x80) return undefined // negative, or beyond what a file can hold
    let value = 0
    for (const b of field.subarray(1)) value = value * 256 + b
    return Number.isSafeInteger(value) ? value : undefined
  }
  return parseOctal(field)
}

function parseOctal(field: Buffer): number | undefined {
  const text = field.toString('latin1').replace(/[\0 ]+$/, '').replace(/^ +/, '')
  if (!/^[0-7]+$/.test(text)) return undefined
  return parseInt(text, 8)
}

/** The header checksum: the sum of its bytes, counting the checksum field as spaces. */
function checksum(block: Buffer): number {
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]
  return sum
}

function cString(field: Buffer): string {
  const nul = field.indexOf(0)
  return field.subarray(0, nul < 0 ? field.length : nul).toString('utf8')
}

function describeType(type: string): string {
  const names: Record<string, string> = {
    '1': 'a hard link', '2': 'a symbolic link', '3': 'a character device', '4': 'a block device',
    '6': 'a fifo', S: 'a sparse file', D: 'a GNU dump directory', M: 'a multi-volume continuation', V: 'a volume label',
  }
  return names[type] ?? `an entry of unknown type ${JSON.stringify(type)}`
}
