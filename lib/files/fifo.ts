// Named fifos: reopened by path; the bytes buffered in them are peeked (never consumed) so
// restore can put them back.

import type { FileDescription, FileTable, PathDescription } from '../model'
import { checkedBytes } from '../tree/checked'
import { withCommon } from './common'
import type { FileHandler } from './handler'
import { capturePath, loadOtherLinks, loadPath, otherLinksEntry, pathEntries, pathImage, pathSummary, settleLinks, validatePath, withIdentity } from './path'
import { RecordBuilder } from '../restore/fdplan'

/** The stub's kind that reopens a fifo and refills it (restorer.c, open_fifo_object). */
const KINDS = { fifo: 5 } as const

const noData = async (): Promise<Buffer> => Buffer.alloc(0)

const table = withCommon<PathDescription>([
  ...pathEntries,
  otherLinksEntry,
  ...checkedBytes('buffered', (d: PathDescription) => (d.buffered ?? noData)()),
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
    desc.buffered = dir.checkedLazyBytes('buffered')
    return desc
  },

  validate: validatePath,

  // The buffered bytes belong to the fifo, not to each open description of it: the one with
  // the lowest OBJREF puts them back.
  async planRestore(d, { table }) {
    const first = firstOpens(table).get(d.path)
    // Every description's saved bytes are read, so each is checked (its checksum, on read); the first's are used.
    const saved = await (d.buffered ?? noData)()
    const data = first === d ? saved : Buffer.alloc(0)
    return { kind: KINDS.fifo, objref: d.objref, payload: withIdentity(new RecordBuilder().i32(d.flags).string(d.path), d).bytes(data) }
  },

  stubKinds: KINDS,
  image: pathImage,
  summary: pathSummary,
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
