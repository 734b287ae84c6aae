// timerfd: its clock, the expirations not yet read (ticks), the settime flags and the time to
// the next expiry and the interval, as fdinfo shows them (relative, whatever the flags).

import { CkptError } from '../errors'
import type { TimerfdDescription } from '../model'
import { fdinfoField, fdinfoFields } from '../procfs'
import { RecordBuilder } from '../restore/fdplan'

/** The stub's kind (restorer.c, open_timerfd_object). */
const KINDS = { timerfd: 8 } as const
import { attr } from '../tree/node'
import { described, invalid, O_NONBLOCK, withCommon } from './common'
import type { FileHandler } from './handler'
import { INT_MAX, U64_MAX } from './saved'

/** CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME, CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM. */
const timerfdClocks = new Set([0, 1, 7, 8, 9])
/** TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET. */
const settimeFlagBits = 0b11

const table = withCommon<TimerfdDescription>([
  attr('clockid', (d) => d.clockid),
  attr('ticks', (d) => d.ticks),
  attr('settime_flags', (d) => d.settimeFlags),
  attr('value_ns', (d) => d.valueNs),
  attr('interval_ns', (d) => d.intervalNs),
])

/** "(sec, nsec)" -> nanoseconds. */
function timespecNs(text: string, where: string): bigint {
  const m = /^\((\d+), (\d+)\)$/.exec(text)
  if (!m) throw new CkptError(`${where}: unexpected time ${JSON.stringify(text)}`)
  return BigInt(m[1]) * 1_000_000_000n + BigInt(m[2])
}

/**
 * When the restored timer first expires, counted from the restore: the time that was left at
 * the checkpoint (the pause does not count). A periodic timer whose period ran out unread shows
 * 0 left (the kernel re-arms it only when it is read): that expiry is pending in `ticks`, which
 * the restore sets again, so the next one comes an interval later; with no tick pending yet it
 * was due that very moment and fires at once (1 ns). 0 leaves the timer disarmed.
 */
function firstExpiryNs(d: TimerfdDescription): bigint {
  if (d.valueNs > 0n || d.intervalNs === 0n) return d.valueNs
  return d.ticks > 0n ? d.intervalNs : 1n
}

export const timerfd: FileHandler<TimerfdDescription> = {
  types: ['timerfd'],

  async capture(probe, base, ctx) {
    const fields = fdinfoFields(probe.fdinfo.extra)
    const where = `/proc/${ctx.pid}/fdinfo/${probe.fd}`
    const field = (name: string) => fdinfoField(fields, name, where)
    return {
      ...base,
      type: 'timerfd',
      clockid: Number(field('clockid')),
      ticks: BigInt(field('ticks')),
      settimeFlags: parseInt(field('settime flags'), 8),
      valueNs: timespecNs(field('it_value'), where),
      intervalNs: timespecNs(field('it_interval'), where),
    }
  },

  entries: () => table,

  load(dir, base) {
    const clockid = dir.int('clockid', 0, INT_MAX)
    const ticks = dir.decimal('ticks', 0n, U64_MAX)
    const settimeFlags = dir.int('settime_flags', 0, INT_MAX)
    const valueNs = dir.decimal('value_ns', 0n, U64_MAX)
    const intervalNs = dir.decimal('interval_ns', 0n, U64_MAX)
    return described<TimerfdDescription>(base, { type: 'timerfd', clockid, ticks, settimeFlags, valueNs, intervalNs })
  },

  validate(d) {
    if (!timerfdClocks.has(d.clockid)) throw invalid(d, 'clockid', `${d.clockid} is not a clock a timerfd can use`)
    if (d.settimeFlags & ~settimeFlagBits) throw invalid(d, 'settime_flags', `${d.settimeFlags} has bits other than TFD_TIMER_ABSTIME and TFD_TIMER_CANCEL_ON_SET`)
  },

  // TIMERFD: i32 clockid, i32 flags (TFD_NONBLOCK), i32 settime_flags, u64 value_ns, u64 interval_ns, u64 ticks.
  planRestore: (d) => ({
    kind: KINDS.timerfd,
    objref: d.objref,
    payload: new RecordBuilder().i32(d.clockid).i32(d.flags & O_NONBLOCK).i32(d.settimeFlags).u64(firstExpiryNs(d)).u64(d.intervalNs).u64(d.ticks),
  }),
  stubKinds: KINDS,

  image: {
    field: 'timerfd',
    write: (d) => d,
    read(details, base, type) {
      const description = described<TimerfdDescription>(base, {
        type,
        clockid: details.num('clockid', { min: 0 }),
        ticks: details.big('ticks'),
        settimeFlags: details.num('settimeFlags'),
        valueNs: details.big('valueNs'),
        intervalNs: details.big('intervalNs'),
      })
      return { description, contentsSize: undefined }
    },
  },

  summary: (d) => `${d.target} (clock ${d.clockid}, next ${d.valueNs} ns, every ${d.intervalNs} ns)`,
}
