// Raw files of the tree with their checksum file next to them (NAME and NAME_crc32c, see
// lib/checksum.ts): validation can check a value, not raw bytes, so these carry a CRC32C.
// The checksum file is computed when it is read, from the same bytes NAME shows.

import { crcText, CRC_SUFFIX, pieceCrcs, sourceCrcs } from '../checksum'
import type { ByteSource } from '../model'
import { bytes, stream, type Access, type TableEntry } from './node'

/** `bytes(name, value)` and its checksum file. */
export function checkedBytes<T>(name: string, value: (subject: T) => Buffer | Promise<Buffer>, access: Access = 'private'): TableEntry<T>[] {
  return [
    bytes(name, value, access),
    bytes(name + CRC_SUFFIX, async (subject: T) => crcText(pieceCrcs(await value(subject))), access),
  ]
}

/** `stream(name, source)` and its checksum file (a mapping's: read from the frozen task when asked for). */
export function checkedStream<T>(name: string, source: (subject: T) => ByteSource | Promise<ByteSource>, access: Access = 'private'): TableEntry<T>[] {
  return [
    stream(name, source, access),
    bytes(name + CRC_SUFFIX, async (subject: T) => crcText(await sourceCrcs(await source(subject))), access),
  ]
}
