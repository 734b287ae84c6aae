// eventfd: the counter (fdinfo prints it in hex) and whether it counts as a semaphore.

import type { EventfdDescription } from '../model'
import { fdinfoField, fdinfoFields } from '../procfs'
import { attr } from '../tree/node'
import { described, withCommon } from './common'
import type { FileHandler } from './handler'
import { RecordBuilder } from '../restore/fdplan'

/** The stub's kind (restorer.c, open_eventfd_object). */
const KINDS = { eventfd: 6 } as const

/** The largest value an eventfd counter holds (write(2) refuses more). */
const EVENTFD_MAX = 0xfffffffffffffffen

const table = withCommon<EventfdDescription>([
  attr('count', (d) => d.count),
  attr('semaphore', (d) => d.semaphore),
])

export const eventfd: FileHandler<EventfdDescription> = {
  types: ['eventfd'],

  // Each eventfd context has its own id, so fds of different eventfds never need kcmp.
  identity: (probe) => fdinfoFields(probe.fdinfo.extra).get('eventfd-id') ?? '',

  async capture(probe, base, ctx) {
    const fields = fdinfoFields(probe.fdinfo.extra)
    const where = `/proc/${ctx.pid}/fdinfo/${probe.fd}`
    return {
      ...base,
      type: 'eventfd',
      count: BigInt('0x' + fdinfoField(fields, 'eventfd-count', where)),
      // Kernels before 6.7 do not show the flag; such eventfds are taken as counters.
      semaphore: fields.get('eventfd-semaphore') === '1',
    }
  },

  entries: () => table,

  load(dir, base) {
    return described<EventfdDescription>(base, { type: 'eventfd', count: dir.decimal('count', 0n, EVENTFD_MAX), semaphore: dir.flag('semaphore') })
  },

  // The stub takes eventfd(2) flags: EFD_NONBLOCK is O_NONBLOCK, EFD_SEMAPHORE is 1.
  planRestore: (d) => ({ kind: KINDS.eventfd, objref: d.objref, payload: new RecordBuilder().u64(d.count).i32((d.flags & 0o4000) | (d.semaphore ? 1 : 0)) }),
  stubKinds: KINDS,

  image: {
    field: 'eventfd',
    write: (d) => d,
    read: (details, base, type) => ({ description: described<EventfdDescription>(base, { type, count: details.big('count', { max: EVENTFD_MAX }), semaphore: details.bool('semaphore') }), contentsSize: undefined }),
  },

  summary: (d) => `${d.target} (count ${d.count}${d.semaphore ? ', semaphore' : ''})`,
}
