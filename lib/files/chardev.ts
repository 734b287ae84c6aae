// Character and block devices, reopened by path. Only the devices of the allow-list in
// devices.ts can come back that way; the others say why not, at capture and at validation.

import type { PathDescription } from '../model'
import { invalid, withCommon } from './common'
import { deviceRefusal } from './devices'
import type { FileHandler } from './handler'
import { capturePath, loadOtherLinks, loadPath, otherLinksEntry, PATH_KINDS, pathEntries, pathImage, pathRecord, pathSummary, pathTypeOf, rdevEntry, settleLinks, validatePath, type PathType } from './path'
import { U64_MAX } from './saved'

const table = withCommon<PathDescription>([...pathEntries, rdevEntry, otherLinksEntry])

export const chardev: FileHandler<PathDescription> = {
  types: ['chr', 'blk'],

  async capture(probe, base, ctx) {
    const type: PathType = probe.stat && pathTypeOf(probe.stat.mode) === 'blk' ? 'blk' : 'chr'
    const desc = await capturePath(type, probe, base, ctx)
    return { ...desc, notCheckpointable: desc.notCheckpointable ?? deviceRefusal(type, desc.path, desc.rdev) }
  },

  settle: settleLinks,

  entries: () => table,

  load(dir, base, type) {
    const desc = loadPath(dir, base, type)
    desc.rdev = dir.decimal('rdev', 0n, U64_MAX)
    desc.otherLinks = loadOtherLinks(dir)
    return desc
  },

  // The allow-list holds whatever the saved `checkpointable` says: a tree is edited easily.
  validate(d) {
    const refused = deviceRefusal(d.type === 'blk' ? 'blk' : 'chr', d.path, d.rdev)
    if (refused !== undefined) throw invalid(d, 'rdev', refused, 'ENOTSUP')
    return validatePath(d)
  },

  planRestore: (d) => pathRecord(d),
  stubKinds: PATH_KINDS,
  image: pathImage,
  summary: pathSummary,
}
