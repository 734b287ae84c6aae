// Open directories: reopened by path; f_pos is the readdir position.

import type { PathDescription } from '../model'
import { withCommon } from './common'
import type { FileHandler } from './handler'
import { capturePath, loadPath, PATH_KINDS, pathEntries, pathImage, pathRecord, pathSummary, validatePath } from './path'

const table = withCommon<PathDescription>(pathEntries)

export const directory: FileHandler<PathDescription> = {
  types: ['dir'],
  capture: (probe, base, ctx) => capturePath('dir', probe, base, ctx),
  entries: () => table,
  load: (dir, base) => loadPath(dir, base, 'dir'),
  validate: validatePath,
  planRestore: (d) => pathRecord(d),
  stubKinds: PATH_KINDS,
  image: pathImage,
  summary: pathSummary,
}
