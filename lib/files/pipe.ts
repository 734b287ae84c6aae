// Anonymous pipes: both ends show the same pipe_id (the pipe's inode), and the bytes buffered
// in the pipe are peeked through the native helper (tee into a private pipe), never consumed.

import { CkptError } from '../errors'
import type { FileTable, PipeDescription } from '../model'
import { attr } from '../tree/node'
import { checkedBytes } from '../tree/checked'
import { described, invalid, withCommon } from './common'
import type { FileHandler } from './handler'
import { ObjectKind, RecordBuilder } from '../restore/fdplan'
import { U64_MAX } from './saved'

const table = withCommon<PipeDescription>([
  attr('pipe_id', (d) => d.pipeId),
  ...checkedBytes('buffered', (d: PipeDescription) => d.buffered()),
])

export const pipe: FileHandler<PipeDescription> = {
  types: ['pipe'],

  async capture(probe, base, ctx) {
    const m = /^pipe:\[(\d+)\]$/.exec(probe.target)
    if (!m) throw new CkptError(`fd ${probe.fd}: unexpected pipe target ${probe.target}`)
    const pipeId = BigInt(m[1])
    return { ...base, type: 'pipe', pipeId, buffered: ctx.peekOnce(`pipe:${pipeId}`, probe.fd) }
  },

  async settle(desc) {
    const data = await desc.buffered()
    return { ...desc, buffered: async () => data }
  },

  entries: () => table,

  load(dir, base) {
    return described<PipeDescription>(base, { type: 'pipe', pipeId: dir.decimal('pipe_id', 0n, U64_MAX), buffered: dir.checkedLazyBytes('buffered') })
  },

  // The stub makes one pipe2() per pipe: at most one read and one write end each.
  validate(d, { table }) {
    const ends = pipeEnds(table).get(d.pipeId)!
    if (ends[0] !== d) return
    const read = ends.filter((e) => e.mode & 1)
    const write = ends.filter((e) => e.mode & 2)
    if (read.length > 1 || write.length > 1 || read.length + write.length !== ends.length) {
      throw invalid(d, '', `pipe ${d.pipeId} has ${ends.length} open descriptions; only one read and one write end can be restored`, 'ENOTSUP')
    }
  },

  // One record per pipe, planned by its end with the lowest OBJREF and naming both ends; an
  // end the task did not hold is closed by the stub.
  async planRestore(d, { table }) {
    const ends = pipeEnds(table).get(d.pipeId)!
    if (ends[0] !== d) {
      // Only the first end's bytes are used, but every saved byte is checked (its checksum, on read).
      await d.buffered()
      return []
    }
    // validate() made sure of one end of each kind at most.
    const read = ends.filter((e) => e.mode & 1)
    const write = ends.filter((e) => e.mode & 2)
    const payload = new RecordBuilder()
      .u64(d.pipeId)
      .bytes(await d.buffered())
      .u32(read[0]?.objref ?? 0)
      .i32(read[0]?.flags ?? 0)
      .u32(write[0]?.objref ?? 0)
      .i32(write[0]?.flags ?? 0)
    return { kind: ObjectKind.Pipe, objref: d.objref, payload }
  },
}

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
