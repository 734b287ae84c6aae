// Character and block devices, reopened by path and checked by device number at restore.
// Only devices whose open file holds no state of its own can come back that way
// (reference/001: "see it's 1:3 => supported"); the others say why not.

import type { PathDescription } from '../model'
import { majorMinor } from '../procfs'
import { withCommon } from './common'
import type { FileHandler } from './handler'
import { capturePath, loadOtherLinks, loadPath, otherLinksEntry, pathEntries, pathRecord, pathTypeOf, rdevEntry, settleLinks, type PathType } from './path'
import { U64_MAX } from './saved'

const table = withCommon<PathDescription>([...pathEntries, rdevEntry, otherLinksEntry])

const PTMX = '5:2'

/** Why an open of this character device cannot be recreated by opening its path again. */
function charDeviceReason(path: string, rdev: bigint): string | undefined {
  const { major, minor } = majorMinor(rdev)
  // 1: null, zero, full, random, urandom, ...; 4: virtual consoles and serial ports;
  // 5:0 /dev/tty, 5:1 /dev/console; 136-143: pseudo-terminal slaves (/dev/pts/N).
  const stateless = major === 1 || major === 4 || (major === 5 && minor <= 1) || (major >= 136 && major <= 143)
  if (stateless) return undefined
  if (`${major}:${minor}` === PTMX) return `chr: ${path} is a pseudo-terminal master; opening it again makes a different terminal`
  return `chr: ${path} (device ${major}:${minor}) may hold state in the kernel that cannot be saved`
}

export const chardev: FileHandler<PathDescription> = {
  types: ['chr', 'blk'],

  async capture(probe, base, ctx) {
    const type: PathType = probe.stat && pathTypeOf(probe.stat.mode) === 'blk' ? 'blk' : 'chr'
    const desc = await capturePath(type, probe, base, ctx)
    return type === 'chr' ? { ...desc, notCheckpointable: desc.notCheckpointable ?? charDeviceReason(desc.path, desc.rdev) } : desc
  },

  settle: settleLinks,

  entries: () => table,

  load(dir, base, type) {
    const desc = loadPath(dir, base, type)
    desc.rdev = dir.decimal('rdev', 0n, U64_MAX)
    desc.otherLinks = loadOtherLinks(dir)
    return desc
  },

  planRestore: (d) => pathRecord(d),
}
