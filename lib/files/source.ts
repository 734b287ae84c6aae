// Byte sources over files read in pieces: a saved tree's contents files, and the contents of
// a task's open file read through a separate open of /proc/PID/fd/N (its own offset, so the
// task's file position never moves).

import * as fs from 'fs'
import { CkptError } from '../errors'
import { availableMemory } from '../meminfo'
import { clipped, intoSource, piecesSource, type ByteSource } from '../model'

/** node's fs read takes at most 2^31 - 1 bytes per call (more aborts the process). */
const MAX_READ = 1 << 30

/**
 * A file's bytes, read through a fresh open per piece (nothing stays open between reads).
 * The size is fixed when the source is made; should the file shrink later, the missing tail
 * reads as zeros so that every reader still sees `size` bytes (the tree promises that).
 */
export function fileSource(file: string, size: number): ByteSource {
  const source = intoSource(size, async (offset, length, into, at) => {
    const handle = await fs.promises.open(file, 'r')
    try {
      let done = 0
      while (done < length) {
        const { bytesRead } = await handle.read(into, at + done, Math.min(length - done, MAX_READ), offset + done)
        if (bytesRead === 0) break
        done += bytesRead
      }
      into.fill(0, at + done, at + length)
      return length
    } finally {
      await handle.close()
    }
  })
  // A reader of extents gets a short read where the file shrank, and must refuse that.
  return { ...source, extents: async (offset, length) => [{ file, at: offset, length: clipped(size, offset, length) }] }
}

/** Every byte of a source, in one buffer (copy mode). */
export async function readWhole(source: ByteSource): Promise<Buffer> {
  return source.read(0, source.size)
}

/**
 * Every byte of a source copied into memory (copy mode), in pieces of at most MAX_READ: one
 * Buffer could not hold more than 4 GiB. A copy larger than the memory available is refused,
 * naming `where` (a task's sparse file of many GiB needs no memory in the task).
 */
export async function copyWhole(source: ByteSource, where: string): Promise<ByteSource> {
  const available = availableMemory()
  if (source.size > available) throw new CkptError(`${where}: ${source.size} bytes, more than the ${available} available for its copy (MemAvailable in /proc/meminfo)`)
  const pieces: Buffer[] = []
  for (let at = 0; at < source.size; at += MAX_READ) pieces.push(await source.read(at, Math.min(MAX_READ, source.size - at)))
  return piecesSource(pieces)
}
