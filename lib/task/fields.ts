// How task-PID values are written as files and read back from a saved copy: one codec per
// value format, shared by the tree tables and the loaders so both agree byte for byte.

import { CkptError } from '../errors'
import type { SavedDir } from '../files/saved'
import { attr, FILE_PERM, type Access, type AttrValue, type FileNode, type TableEntry } from '../tree/node'
import { U64_MAX } from '../abi'

/** A value format: how it is shown in an attribute file and parsed back (without the newline). */
export interface Codec<V> {
  show(value: V): AttrValue
  /** Throws FormatError with what is wrong (the caller adds the file name). */
  parse(text: string): V
}

/** A malformed value; readValue turns it into a CkptError naming the file. */
export class FormatError extends Error {}

/** Decimal as written by the tree: no leading zeros, no plus sign. */
const DECIMAL = /^(0|-?[1-9]\d{0,19})$/

export const hexU64: Codec<bigint> = {
  show: (v) => '0x' + v.toString(16),
  parse: (text) => {
    if (!/^0x[0-9a-fA-F]{1,16}$/.test(text)) throw new FormatError(`not a hexadecimal 64-bit value (0x...): ${quote(text)}`)
    return BigInt(text)
  },
}

/** A hexadecimal value that fits in a JavaScript number (flags, personality). */
export function hexNumber(max: number): Codec<number> {
  return {
    show: (v) => '0x' + v.toString(16),
    parse: (text) => {
      const value = Number(hexU64.parse(text))
      if (value > max) throw new FormatError(`${text} is above 0x${max.toString(16)}`)
      return value
    },
  }
}

export function decimal(min: number, max: number): Codec<number> {
  return {
    show: (v) => v,
    parse: (text) => {
      if (!DECIMAL.test(text)) throw new FormatError(`not a decimal number: ${quote(text)}`)
      const value = Number(text)
      if (value < min || value > max) throw new FormatError(`${text} is outside ${min}..${max}`)
      return value
    },
  }
}

export const int32 = decimal(-(2 ** 31), 2 ** 31 - 1)
export const uint32 = decimal(0, 2 ** 32 - 1)

export const decimalU64: Codec<bigint> = {
  show: (v) => v,
  parse: (text) => {
    if (!DECIMAL.test(text) || text.startsWith('-')) throw new FormatError(`not a decimal number: ${quote(text)}`)
    const value = BigInt(text)
    if (value > U64_MAX) throw new FormatError(`${text} does not fit in 64 bits`)
    return value
  },
}

export const decimalS64: Codec<bigint> = {
  show: (v) => v,
  parse: (text) => {
    if (!DECIMAL.test(text)) throw new FormatError(`not a decimal number: ${quote(text)}`)
    const value = BigInt(text)
    if (BigInt.asIntN(64, value) !== value) throw new FormatError(`${text} does not fit in a signed 64-bit value`)
    return value
  },
}

export function octalNumber(max: number): Codec<number> {
  return {
    show: (v) => '0' + v.toString(8),
    parse: (text) => {
      if (!/^0[0-7]{1,11}$/.test(text)) throw new FormatError(`not an octal number with a leading 0: ${quote(text)}`)
      const value = parseInt(text, 8)
      if (value > max) throw new FormatError(`${text} is above 0${max.toString(8)}`)
      return value
    },
  }
}

export const flag: Codec<boolean> = {
  show: (v) => v,
  parse: (text) => {
    if (text !== '0' && text !== '1') throw new FormatError(`not 0 or 1: ${quote(text)}`)
    return text === '1'
  },
}

/** Free text (the file minus its final newline); `check` refuses what cannot be right. */
export function text(check: (value: string) => string | undefined = () => undefined): Codec<string> {
  return {
    show: (v) => v,
    parse: (value) => {
      const why = check(value)
      if (why) throw new FormatError(why)
      return value
    },
  }
}

export const absolutePath = text((v) => (v.startsWith('/') ? undefined : `not an absolute path: ${quote(v)}`))

/** A list of decimal numbers on one line, space separated (empty: none). */
export const decimalList: Codec<number[]> = {
  show: (v) => v.join(' '),
  parse: (value) => (value === '' ? [] : value.split(' ').map((item) => uint32.parse(item))),
}

export function oneOf<V extends string>(values: readonly V[]): Codec<V> {
  return {
    show: (v) => v,
    parse: (value) => {
      const hit = values.find((v) => v === value)
      if (hit === undefined) throw new FormatError(`not one of ${values.join(', ')}: ${quote(value)}`)
      return hit
    },
  }
}

function quote(value: string): string {
  return JSON.stringify(value.length > 40 ? value.slice(0, 40) + '...' : value)
}

// ---------------------------------------------------------------------------------------
// Tree entries over a part of the subject that is captured on first need

/** An attribute file showing `get(subject)` with `codec`; private unless /proc shows it to everyone. */
export function field<S, V>(name: string, codec: Codec<V>, get: (subject: S) => V, access: Access = 'private'): TableEntry<S> {
  return attr(name, (subject) => codec.show(get(subject)), access)
}

/**
 * The same entries over a part that is computed on first read (TaskImage -> ProcessState), so
 * a directory lists its names without capturing anything. Files only.
 */
export function deferred<S, P>(part: (subject: S) => Promise<P>, entries: TableEntry<P>[]): TableEntry<S>[] {
  return entries.map((entry) => ({
    name: entry.name,
    access: entry.access,
    make: (subject, scope) => {
      let node: Promise<FileNode> | undefined
      const file = () => (node ??= part(subject).then((p) => {
        const made = entry.make(p, scope)
        if (made.kind !== 'file') throw new CkptError(`tree: ${entry.name} is not a file`)
        return made
      }))
      const proxy: FileNode = {
        kind: 'file',
        perm: FILE_PERM[entry.access ?? 'private'],
        size: async () => (await file()).size(),
        read: async (offset, length) => (await file()).read(offset, length),
        readInto: async (offset, length, into) => {
          const f = await file()
          if (f.readInto) return f.readInto(offset, length, into)
          return (await f.read(offset, length)).copy(into)
        },
      }
      return proxy
    },
  }))
}

// ---------------------------------------------------------------------------------------
// Reading a saved copy (through the shared SavedDir of lib/files/saved.ts)

/** One value, parsed with the codec that wrote it; errors name the file. */
export function readValue<V>(dir: SavedDir, name: string, codec: Codec<V>): V {
  return parseAt(dir, name, dir.text(name), codec)
}

/** A whole value file of bytes (maps, a list) of at most `maxBytes`, checked against values_crc32c. */
export async function readBytes(dir: SavedDir, name: string, maxBytes: number): Promise<Buffer> {
  return dir.valueBytes(name, maxBytes)
}

/** A whole raw file of at most `maxBytes`, checked against its NAME_crc32c. */
export async function readCheckedBytes(dir: SavedDir, name: string, maxBytes: number): Promise<Buffer> {
  return dir.checkedBytes(name, maxBytes)
}

/** Values one per line (an empty file: none). */
export async function readLines<V>(dir: SavedDir, name: string, codec: Codec<V>, maxBytes: number): Promise<V[]> {
  const data = (await readBytes(dir, name, maxBytes)).toString('utf8')
  if (data === '') return []
  if (!data.endsWith('\n')) throw dir.fail(name, 'no newline at the end of the last line')
  return data.slice(0, -1).split('\n').map((line, i) => parseAt(dir, name, line, codec, ` (line ${i + 1})`))
}

/** Loads items concurrently (their file reads overlap) and reports the first failure in item order. */
export async function loadEach<T, R>(items: readonly T[], load: (item: T) => Promise<R>): Promise<R[]> {
  const values: R[] = []
  for (const result of await Promise.allSettled(items.map(load))) {
    if (result.status === 'rejected') throw result.reason
    values.push(result.value)
  }
  return values
}

function parseAt<V>(dir: SavedDir, name: string, value: string, codec: Codec<V>, line = ''): V {
  try {
    return codec.parse(value)
  } catch (err) {
    if (err instanceof FormatError) throw dir.fail(name, err.message + line)
    throw err
  }
}
