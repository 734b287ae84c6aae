// Anonymous pipes: both ends show the same pipe_id (the pipe's inode), and the bytes buffered
// in the pipe are peeked through the native helper (tee into a private pipe), never consumed.

import * as fs from 'fs'
import { CkptError } from '../errors'
import type { FileTable, PipeDescription } from '../model'
import { attr } from '../tree/node'
import { checkedBytes } from '../tree/checked'
import { described, invalid, withCommon } from './common'
import type { FileHandler } from './handler'
import { RecordBuilder } from '../restore/fdplan'

/** The stub's kind that makes a pipe and every description of it (restorer.c, open_pipe_object). */
const KINDS = { pipe: 4 } as const
import { U64_MAX } from './saved'

const table = withCommon<PipeDescription>([
  attr('pipe_id', (d) => d.pipeId),
  attr('capacity', (d) => d.capacity),
  ...checkedBytes('buffered', (d: PipeDescription) => d.buffered()),
])

export const pipe: FileHandler<PipeDescription> = {
  types: ['pipe'],

  async capture(probe, base, ctx) {
    const m = /^pipe:\[(\d+)\]$/.exec(probe.target)
    if (!m) throw new CkptError(`fd ${probe.fd}: unexpected pipe target ${probe.target}`)
    const pipeId = BigInt(m[1])
    return { ...base, type: 'pipe', pipeId, buffered: ctx.peekOnce(`pipe:${pipeId}`, probe.fd), capacity: ctx.pipeSize(probe.fd) }
  },

  async settle(desc) {
    const data = await desc.buffered()
    return { ...desc, buffered: async () => data }
  },

  entries: () => table,

  load(dir, base) {
    // A tree saved before the capacity was kept has none (0: the stub leaves the default).
    const capacity = dir.has('capacity') ? Number(dir.decimal('capacity', 0n, BigInt(MAX_CAPACITY))) : 0
    return described<PipeDescription>(base, { type: 'pipe', pipeId: dir.decimal('pipe_id', 0n, U64_MAX), buffered: dir.checkedLazyBytes('buffered'), capacity })
  },

  // Any number of descriptions per pipe is restored (planRestore); each is read, write or both.
  validate(d) {
    if (d.mode !== FMODE_READ_ONLY && d.mode !== FMODE_WRITE_ONLY && d.mode !== FMODE_READ_WRITE) {
      throw invalid(d, 'f_mode', `0${d.mode.toString(8)}: a pipe description is read, write or both`, 'EINVAL')
    }
    // What F_GETPIPE_SZ can answer: a power of two number of pages (0: not recorded).
    if (d.capacity !== 0 && (d.capacity < PAGE || d.capacity > MAX_CAPACITY || (d.capacity & (d.capacity - 1)) !== 0)) {
      throw invalid(d, 'capacity', `${d.capacity}: a pipe's capacity is a power of two from ${PAGE} to ${MAX_CAPACITY} bytes`, 'EINVAL')
    }
  },

  // One record per pipe, planned by its description with the lowest OBJREF and naming them
  // all: the first read-only and the first write-only description are the two ends pipe2()
  // makes (an end the task did not hold is closed by the stub); every other description (a
  // reopen of /proc/self/fd/N, read-write ones included) is reopened by the stub the same way.
  async planRestore(d, { table }) {
    const ends = pipeEnds(table).get(d.pipeId)!
    if (ends[0] !== d) {
      // Only the first end's bytes are used, but every saved byte is checked (its checksum, on read).
      await d.buffered()
      return []
    }
    const read = ends.find((e) => e.mode === FMODE_READ_ONLY)
    const write = ends.find((e) => e.mode === FMODE_WRITE_ONLY)
    const extras = ends.filter((e) => e !== read && e !== write)
    const buffered = await d.buffered()
    if (d.capacity !== 0 && buffered.length > d.capacity) throw invalid(d, 'buffered', `${buffered.length} bytes, more than the pipe's capacity (${d.capacity})`, 'EINVAL')
    // Above pipe-max-size only a task with CAP_SYS_RESOURCE could have had it: not asked of the restorer for a saved tree.
    if (d.capacity > pipeMaxSize()) throw invalid(d, 'capacity', `${d.capacity} bytes, above /proc/sys/fs/pipe-max-size (${pipeMaxSize()})`, 'EINVAL')
    const payload = new RecordBuilder()
      .u64(d.pipeId)
      .bytes(buffered)
      .u32(d.capacity)
      .u32(read?.objref ?? 0)
      .i32(read?.flags ?? 0)
      .u32(write?.objref ?? 0)
      .i32(write?.flags ?? 0)
      .u32(extras.length)
    // The access mode comes from f_mode (what the kernel checks), the other flags from f_flags.
    for (const e of extras) payload.u32(e.objref).i32((e.flags & ~O_ACCMODE) | ACCESS_BY_MODE[e.mode])
    return { kind: KINDS.pipe, objref: d.objref, payload }
  },

  stubKinds: KINDS,

  image: {
    field: 'pipe',
    write: async (d) => ({ pipeId: d.pipeId, buffered: await d.buffered(), capacity: d.capacity }),
    read(details, base, type) {
      const buffered = details.bytes('buffered')
      return { description: described<PipeDescription>(base, { type, pipeId: details.big('pipeId'), buffered: async () => buffered, capacity: details.num('capacity', { max: MAX_CAPACITY }) }), contentsSize: undefined }
    },
  },

  summary: (d) => `${d.target} (pipe ${d.pipeId})`,
}

const PAGE = 4096
/** The largest capacity F_SETPIPE_SZ can set (its argument is an int, rounded up to a power of two). */
const MAX_CAPACITY = 2 ** 30

function pipeMaxSize(): number {
  return Number(fs.readFileSync('/proc/sys/fs/pipe-max-size', 'utf8').trim())
}

/** f_mode of a description: FMODE_READ 1, FMODE_WRITE 2; and the open(2) access mode of each. */
const FMODE_READ_ONLY = 1, FMODE_WRITE_ONLY = 2, FMODE_READ_WRITE = 3
const O_ACCMODE = 3
const ACCESS_BY_MODE: Record<number, number> = { [FMODE_READ_ONLY]: 0 /* O_RDONLY */, [FMODE_WRITE_ONLY]: 1 /* O_WRONLY */, [FMODE_READ_WRITE]: 2 /* O_RDWR */ }

/** The descriptions of each pipe, by pipe identity, in OBJREF order; computed once per table. */
const endsByTable = new WeakMap<FileTable, Map<bigint, PipeDescription[]>>()
function pipeEnds(table: FileTable): Map<bigint, PipeDescription[]> {
  let ends = endsByTable.get(table)
  if (!ends) {
    ends = new Map()
    for (const f of table.files) {
      if (f.type !== 'pipe') continue
      const list = ends.get(f.pipeId)
      if (list) list.push(f)
      else ends.set(f.pipeId, [f])
    }
    endsByTable.set(table, ends)
  }
  return ends
}
