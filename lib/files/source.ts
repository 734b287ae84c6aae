// Byte sources over files read in pieces: a saved tree's contents files, and the contents of
// a task's open file read through a separate open of /proc/PID/fd/N (its own offset, so the
// task's file position never moves).

import * as fs from 'fs'
import { CkptError, messageOf } from '../errors'
import { availableMemory } from '../meminfo'
import { clipped, intoSource, piecesSource, type ByteSource } from '../model'

/** node's fs read takes at most 2^31 - 1 bytes per call (more aborts the process). */
const MAX_READ = 1 << 30

const openAsync = (file: string): Promise<number> => new Promise((resolve, reject) => fs.open(file, fs.constants.O_RDONLY, (err, fd) => (err ? reject(err) : resolve(fd))))

/**
 * A file's bytes, read through a fresh open per piece (nothing stays open between reads).
 * The size is fixed when the source is made; should the file shrink later, the missing tail
 * reads as zeros so that every reader still sees `size` bytes (the tree promises that).
 */
export function fileSource(file: string, size: number, open: (file: string) => Promise<number> = openAsync): ByteSource {
  const source = intoSource(size, async (offset, length, into, at) => {
    const fd = await open(file)
    try {
      let done = 0
      while (done < length) {
        const bytesRead = await new Promise<number>((resolve, reject) => fs.read(fd, into, at + done, Math.min(length - done, MAX_READ), offset + done, (err, n) => (err ? reject(err) : resolve(n))))
        if (bytesRead === 0) break
        done += bytesRead
      }
      into.fill(0, at + done, at + length)
      return length
    } finally {
      fs.closeSync(fd)
    }
  })
  // A reader of extents gets a short read where the file shrank, and must refuse that.
  return { ...source, extents: async (offset, length) => [{ file, at: offset, length: clipped(size, offset, length) }] }
}

const O_PATH = 0o10000000
const { O_RDONLY, O_NOFOLLOW, O_NONBLOCK, O_NOCTTY } = fs.constants
// libuv opens every fd close-on-exec already.

/**
 * A file of a saved tree or image that root reads (pages, contents, queues, the image), held
 * by an O_PATH fd once it is known to be a regular file reached without following a link at
 * its last step. The tree may be a user's, who can swap the file for a link to a fifo, a
 * device or a file of root's after the walk read it: looked up with O_PATH, nothing is opened
 * (a fifo would block and lose its bytes to us; opening a device can act, as a watchdog's
 * does), and only a regular file is then opened, through /proc/self/fd (or, by a restored
 * task, /proc/SERVER/fd). The caller closes the fd.
 */
export function holdSavedFile(file: string): number {
  let fd: number
  try {
    fd = fs.openSync(file, O_PATH | O_NOFOLLOW)
  } catch (err) {
    throw new CkptError(`${file}: ${messageOf(err)}`, (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'ENOENT' : 'EIO')
  }
  const st = fs.fstatSync(fd)
  if (!st.isFile()) {
    fs.closeSync(fd)
    const now = st.isSymbolicLink() ? 'a symbolic link' : st.isFIFO() ? 'a fifo' : st.isCharacterDevice() || st.isBlockDevice() ? 'a device' : st.isDirectory() ? 'a directory' : 'not a regular file'
    throw new CkptError(`${file}: is ${now} now, not the regular file the walk of the saved checkpoint read: refused (it changed since)`, 'EINVAL')
  }
  return fd
}

/** `file` of a saved tree opened for reading, only if it is a regular file (holdSavedFile). */
export function openSavedFile(file: string): number {
  const held = holdSavedFile(file)
  try {
    return fs.openSync(`/proc/self/fd/${held}`, O_RDONLY | O_NONBLOCK | O_NOCTTY)
  } finally {
    fs.closeSync(held)
  }
}

/** fileSource over a file of a saved tree or image: each open refuses anything but a regular file (holdSavedFile). */
export function savedFileSource(file: string, size: number): ByteSource {
  return fileSource(file, size, async (f) => openSavedFile(f))
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
