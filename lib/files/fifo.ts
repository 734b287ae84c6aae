// Named fifos: reopened by path; the bytes buffered in them are peeked (never consumed) so
// restore can put them back.

import type { PathDescription } from '../model'
import { bytes } from '../tree/node'
import { withCommon } from './common'
import type { FileHandler } from './handler'
import { capturePath, loadOtherLinks, loadPath, otherLinksEntry, pathEntries, settleLinks } from './path'

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

  async load(dir, base) {
    const desc = await loadPath(dir, base, 'fifo')
    return { ...desc, otherLinks: await loadOtherLinks(dir), buffered: await dir.lazyBytes('buffered') }
  },
}
