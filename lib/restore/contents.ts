// The contents of large unlinked files and memfds, written by the restorer into the file the
// stub made, piece by piece: a file of gigabytes never sits whole in memory or in the stub's
// plan (a plan holds the bytes of small ones only). Each 1 MiB piece is checked against its
// saved CRC32C in the buffer it is written from, and blocks of zeros are left as holes, as
// the stub does for small files: a sparse file comes back sparse.

import * as fs from 'fs'
import { CRC_PIECE, checkCount, crc32c, damaged } from '../checksum'
import { CkptError, messageOf } from '../errors'
import type { ByteSource, FdEntry, ObjRef } from '../model'
import { native } from '../native'

/** Contents up to this size travel in the stub's plan; larger ones are filled here. */
export const PLAN_CONTENTS_LIMIT = 1 << 20

const BLOCK = 4096

/** A file the stub made empty, to be filled once its file table is open. */
export interface ContentsFill {
  /** Its description: filled through the lowest fd naming it in the first process holding it (where the stub put it). */
  objref: ObjRef
  contents: ByteSource
  /** Where it is saved, for messages (files/N/contents). */
  where: string
}

/** A restored process, stopped in the stub, and the fds its plan placed. */
export interface FillHolder {
  pid: number
  fds: readonly FdEntry[]
}

/** Fills every file of `fills` through the first of `holders` (in the order made) that holds it. */
export async function fillContents(fills: readonly ContentsFill[], holders: readonly FillHolder[]): Promise<void> {
  for (const fill of fills) {
    const holder = holders.map(({ pid, fds }) => ({ pid, fd: lowestFd(fds, fill.objref) })).find((h) => h.fd !== undefined)
    if (!holder) throw new CkptError(`${fill.where}: ${fill.contents.size} bytes of a file no fd names (only an epoll watch): too large to travel in the plan, and nowhere to write them`, 'ENOTSUP')
    await fillOne(holder.pid, holder.fd!, fill)
  }
}

function lowestFd(fds: readonly FdEntry[], objref: ObjRef): number | undefined {
  let home: number | undefined
  for (const f of fds) if (f.objref === objref && !(home! <= f.fd)) home = f.fd
  return home
}

async function fillOne(pid: number, fd: number, { objref, contents, where }: ContentsFill): Promise<void> {
  if (!contents.crc32c) throw new CkptError(`${where}: no checksums were loaded with it`, 'EINVAL')
  checkCount(where, contents.crc32c, contents.size)
  const held = native.getFd(pid, fd)
  let file: fs.promises.FileHandle | undefined
  try {
    // A description of our own: the task's may be read-only or O_APPEND (where pwrite appends).
    file = await fs.promises.open(`/proc/self/fd/${held}`, fs.constants.O_WRONLY)
    await file.truncate(contents.size)
    for (let piece = 0; piece * CRC_PIECE < contents.size; piece++) {
      const at = piece * CRC_PIECE
      const data = await contents.read(at, Math.min(CRC_PIECE, contents.size - at))
      const found = crc32c(data)
      if (found !== contents.crc32c[piece]) throw damaged(where, piece, contents.size, contents.crc32c[piece], found)
      for (const [from, to] of dataRuns(data)) {
        for (let done = from; done < to;) done += (await file.write(data, done, to - done, at + done)).bytesWritten
      }
    }
  } catch (err) {
    throw err instanceof CkptError ? err : new CkptError(`${where}: write the contents into the restored file (files/${objref} at fd ${fd} of ${pid}): ${messageOf(err)}`)
  } finally {
    await file?.close()
    fs.closeSync(held)
  }
}

/** The [from, to) runs of `data` that are not whole blocks of zeros. */
function dataRuns(data: Buffer): Array<[number, number]> {
  const runs: Array<[number, number]> = []
  for (let at = 0; at < data.length; at += BLOCK) {
    const end = Math.min(at + BLOCK, data.length)
    if (isZero(data, at, end)) continue
    const last = runs[runs.length - 1]
    if (last && last[1] === at) last[1] = end
    else runs.push([at, end])
  }
  return runs
}

const ZEROS = Buffer.alloc(BLOCK)

function isZero(data: Buffer, from: number, to: number): boolean {
  return ZEROS.subarray(0, to - from).equals(data.subarray(from, to))
}
