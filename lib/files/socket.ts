// Sockets cannot be checkpointed yet; capture says which kind each one is (from the socket
// tables of the task's network namespace) so `ckptfs check` can say precisely what is in the way.

import type { OtherDescription } from '../model'
import { described, requireNotCheckpointable, withCommon } from './common'
import type { FileHandler } from './handler'

const table = withCommon<OtherDescription>([])

export const socket: FileHandler<OtherDescription> = {
  types: ['socket'],

  async capture(probe, base, ctx) {
    const kind = (await ctx.socketKinds().catch(() => new Map<bigint, string>())).get(base.ino) ?? 'unknown'
    return { ...base, type: 'socket', notCheckpointable: `socket: sockets cannot be checkpointed yet (type ${kind}, inode ${base.ino})` }
  },

  entries: () => table,

  load(dir, base) {
    requireNotCheckpointable(dir, base, 'socket')
    return described<OtherDescription>(base, { type: 'socket' })
  },
}
