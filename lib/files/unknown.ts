// Every open file no other handler knows (io_uring, pidfd, userfaultfd, namespace files,
// sockets or symbolic links opened with O_PATH, ...): shown, and marked not checkpointable.

import type { OtherDescription } from '../model'
import { octal } from '../tree/node'
import { described, requireNotCheckpointable, withCommon } from './common'
import type { FileHandler } from './handler'

const table = withCommon<OtherDescription>([])

export const unknown: FileHandler<OtherDescription> = {
  types: ['unknown'],

  async capture(probe, base) {
    const mode = probe.stat ? ` (inode mode ${octal(probe.stat.mode)})` : ''
    return { ...base, type: 'unknown', notCheckpointable: `unknown: ${probe.target}${mode} is a kind of file ckptfs cannot checkpoint` }
  },

  entries: () => table,

  load(dir, base) {
    requireNotCheckpointable(dir, base, 'unknown')
    return described<OtherDescription>(base, { type: 'unknown' })
  },
}
