// Named fifos: reopened by path; the bytes buffered in them are peeked (never consumed) so
// restore can put them back.

import type { FileDescription, FileTable, PathDescription } from '../model'
import { bytes } from '../tree/node'
import { withCommon } from './common'
import type { FileHandler } from './handler'
import { capturePath, loadOtherLinks, loadPath, otherLinksEntry, pathEntries, settleLinks, validatePath, withIdentity } from './path'
import { ObjectKind, RecordBuilder } from '../restore/fdplan'

const noData = async (): Promise<Buffer> => Buffer.alloc(0)

const table = withCommon<PathDescription>([
  ...pathEntries,
  otherLinksEntry,
  bytes('buffered', (d) => (d.buffered ?? noData)()),
])

export const fifo: FileHandler<PathDescription> = {
  types: ['fifo'],

  async capture(probe, base, ctx) {
    const desc = await capturePath('fifo', probe, base, ctx)
    return { ...desc, buffered: ctx.peekOnce(`fifo:${desc.dev}:${base.ino}`, probe.fd) }
  },

  async settle(desc) {
    const settled = await settleLinks(desc)
    const data = await (desc.buffered ?? noData)()
    return { ...settled, buffered: async () => data }
  },

  entries: () => table,

  load(dir, base) {
    const desc = loadPath(dir, base, 'fifo')
    desc.otherLinks = loadOtherLinks(dir)
    desc.buffered = dir.lazyBytes('buffered')
    return desc
  },

  validate: validatePath,

  // The buffered bytes belong to the fifo, not to each open description of it: the one with
  // the lowest OBJREF puts them back.
  async planRestore(d, { table }) {
    const first = firstOpens(table).get(d.path)
    const data = first === d ? await (d.buffered ?? noData)() : Buffer.alloc(0)
    return { kind: ObjectKind.Fifo, objref: d.objref, payload: withIdentity(new RecordBuilder().i32(d.flags).string(d.path), d).bytes(data) }
  },
}

/** The description with the lowest OBJREF of each fifo path; computed once per table. */
const firstByTable = new WeakMap<FileTable, Map<string, FileDescription>>()
function firstOpens(table: FileTable): Map<string, FileDescription> {
  let first = firstByTable.get(table)
  if (!first) {
    first = new Map()
    for (const f of table.files) if (f.type === 'fifo' && !first.has(f.path)) first.set(f.path, f)
    firstByTable.set(table, first)
  }
  return first
}
