// The devices a restore may reopen by path: one list, used by capture (a checkpoint says why
// a device cannot come back) and by validation (a saved tree or image naming any other device
// is refused, whatever its `checkpointable` says). Only devices whose open file holds no
// state of its own and gives no access beyond itself come back that way (reference/001:
// "see it's 1:3 => supported"): the memory devices null, zero, full, random and urandom, and
// terminals.

import { majorMinor } from '../procfs'

/** Major 1 minors that are allowed: null, zero, full, random, urandom (mem, kmem, port, kmsg are not). */
const memoryDevices = new Set([3, 5, 7, 8, 9])
const PTMX = '5:2'

/** Why the device `rdev` of type `type`, opened as `path`, cannot be reopened by path; undefined when it can. */
export function deviceRefusal(type: 'chr' | 'blk', path: string, rdev: bigint): string | undefined {
  const { major, minor } = majorMinor(rdev)
  if (type === 'blk') return `blk: ${path} (device ${major}:${minor}) is a block device; only memory devices and terminals are reopened`
  // 4: virtual consoles and serial ports; 5:0 /dev/tty, 5:1 /dev/console; 136-143: pseudo-terminal slaves.
  const terminal = major === 4 || (major === 5 && minor <= 1) || (major >= 136 && major <= 143)
  if ((major === 1 && memoryDevices.has(minor)) || terminal) return undefined
  if (`${major}:${minor}` === PTMX) return `chr: ${path} is a pseudo-terminal master; opening it again makes a different terminal`
  return `chr: ${path} (device ${major}:${minor}) is not a memory device or a terminal: it may hold state in the kernel or give access that cannot be restored`
}
