// timerfd: its clock, the expirations not yet read (ticks), the settime flags and the time to
// the next expiry and the interval, as fdinfo shows them (relative, whatever the flags).

import { CkptError } from '../errors'
import type { TimerfdDescription } from '../model'
import { fdinfoField, fdinfoFields } from '../procfs'
import { attr } from '../tree/node'
import { withCommon } from './common'
import type { FileHandler } from './handler'
import { U64_MAX } from './saved'

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

  async load(dir, base) {
    const clockid = await dir.int('clockid', 0, 15)
    if (!timerfdClocks.has(clockid)) throw dir.fail('clockid', `${clockid} is not a clock a timerfd can use`)
    const ticks = await dir.decimal('ticks', 0n, U64_MAX)
    const settimeFlags = await dir.int('settime_flags', 0, settimeFlagBits)
    const valueNs = await dir.decimal('value_ns', 0n, U64_MAX)
    const intervalNs = await dir.decimal('interval_ns', 0n, U64_MAX)
    return { ...base, type: 'timerfd', clockid, ticks, settimeFlags, valueNs, intervalNs }
  },
}
