// What a restore does with a process tree today: a saved tree or image of several processes
// is parsed and validated whole (validate.ts), and then refused before anything is made, as
// the restore engine brings back one process (README, Limitations).

import { CkptError } from '../errors'
import type { CheckpointParts } from './validate'

export function refuseTree(saved: CheckpointParts, name: string): void {
  const members = [...(saved.others ?? []).map((o) => `task-${o.pid}`), ...(saved.zombies ?? []).map((z) => `task-${z.pid} (a zombie)`)]
  if (members.length === 0) return
  const listed = members.length > 3 ? `${members.slice(0, 3).join(', ')} ...` : members.join(', ')
  throw new CkptError(`${name}: a checkpoint of a process tree (task-${saved.pid} and ${members.length} more: ${listed}), which cannot be restored yet (README, Limitations)`, 'ENOTSUP')
}
