// signalfd: the set of signals it accepts (fdinfo "sigmask:", hex).

import type { SignalfdDescription } from '../model'
import { fdinfoField, fdinfoFields } from '../procfs'
import { RecordBuilder } from '../restore/fdplan'
import { attr, hex } from '../tree/node'

/** The stub's kind (restorer.c, open_signalfd_object). */
const KINDS = { signalfd: 7 } as const
import { described, O_NONBLOCK, withCommon } from './common'
import type { FileHandler } from './handler'
import { U64_MAX } from './saved'

const table = withCommon<SignalfdDescription>([attr('sigmask', (d) => hex(d.sigmask))])

export const signalfd: FileHandler<SignalfdDescription> = {
  types: ['signalfd'],

  async capture(probe, base, ctx) {
    const mask = fdinfoField(fdinfoFields(probe.fdinfo.extra), 'sigmask', `/proc/${ctx.pid}/fdinfo/${probe.fd}`)
    return { ...base, type: 'signalfd', sigmask: BigInt('0x' + mask) }
  },

  entries: () => table,

  load(dir, base) {
    return described<SignalfdDescription>(base, { type: 'signalfd', sigmask: dir.hex('sigmask', U64_MAX) })
  },

  // SIGNALFD: u64 mask, i32 flags (SFD_NONBLOCK, which is O_NONBLOCK).
  planRestore: (d) => ({ kind: KINDS.signalfd, objref: d.objref, payload: new RecordBuilder().u64(d.sigmask).i32(d.flags & O_NONBLOCK) }),
  stubKinds: KINDS,

  image: {
    field: 'signalfd',
    write: (d) => d,
    read: (details, base, type) => ({ description: described<SignalfdDescription>(base, { type, sigmask: details.big('sigmask') }), contentsSize: undefined }),
  },

  summary: (d) => `${d.target} (mask ${hex(d.sigmask)})`,
}
