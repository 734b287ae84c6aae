// Turns a saved file table into the stub's records (lib/restore/fdplan.ts), checked as
// reference/004 asks: a saved access mode is never upgraded and only restorable types pass.

import { CkptError } from '../errors'
import type { StubKinds } from '../files/handler'
import { handlerOf } from '../files/index'
import type { FileDescription, FileTable } from '../model'
import type { PlannedRecord } from './fdplan'

const O_ACCMODE = 0o3
const O_PATH = 0o10000000

/** FMODE_READ | FMODE_WRITE that an access mode grants. */
function modeOfFlags(flags: number): number {
  if (flags & O_PATH) return 0
  return [1, 2, 3, 0][flags & O_ACCMODE]
}

function where(f: FileDescription): string {
  return `files/${f.objref}`
}

function checkMode(f: FileDescription): void {
  const granted = modeOfFlags(f.flags)
  if (granted & ~f.mode) {
    throw new CkptError(`${where(f)}/f_mode: 0${f.mode.toString(8)} is less than f_flags 0${f.flags.toString(8)} grant: a restore never upgrades a mode`, 'EINVAL')
  }
}

/**
 * The stub's records for every file description of the table, in objref order: each type's
 * handler plans its own (lib/files/*.ts, planRestore); a type without a plan is refused.
 */
export async function planFileRecords(table: FileTable): Promise<PlannedRecord[]> {
  const records: PlannedRecord[] = []
  for (const f of table.files) {
    if (f.notCheckpointable) throw new CkptError(`${where(f)}: ${f.notCheckpointable}`, 'ENOTSUP')
    checkMode(f)
    const handler = handlerOf(f)
    if (!handler.planRestore) throw new CkptError(`${where(f)}: ${f.type} files cannot be restored yet`, 'ENOTSUP')
    // Most handlers plan synchronously: no promise for each of 10,000 /dev/null fds.
    const result = handler.planRestore(f, { table })
    const planned = result instanceof Promise ? await result : result
    for (const record of Array.isArray(planned) ? planned : [planned]) {
      // A kind the handler does not declare would reach a stub function of another type.
      if (!declares(handler.stubKinds, record.kind)) throw new CkptError(`${where(f)}: ${f.type} planned stub kind ${record.kind}, which its handler does not declare`)
      records.push(record)
    }
  }
  return records
}

function declares(kinds: StubKinds | undefined, kind: number): boolean {
  for (const name in kinds) if (kinds[name] === kind) return true
  return false
}
