// Anonymous pipes: both ends show the same pipe_id (the pipe's inode), and the bytes buffered
// in the pipe are peeked through the native helper (tee into a private pipe), never consumed.

import { CkptError } from '../errors'
import type { PipeDescription } from '../model'
import { attr, bytes } from '../tree/node'
import { withCommon } from './common'
import type { FileHandler } from './handler'
import { U64_MAX } from './saved'

const table = withCommon<PipeDescription>([
  attr('pipe_id', (d) => d.pipeId),
  bytes('buffered', (d) => d.buffered()),
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

  async load(dir, base) {
    return { ...base, type: 'pipe', pipeId: await dir.decimal('pipe_id', 0n, U64_MAX), buffered: await dir.lazyBytes('buffered') }
  },
}
