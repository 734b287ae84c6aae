// Reads a saved task-PID/ (a `cp -a` of the mount) back into the model, validating every value;
// errors name the file relative to the tree root ("task-77/threads/78/regs: ...").

import { CkptError } from '../errors'
import { SavedDir, type StoredDir } from '../files/saved'
import type { ProcessState, ThreadState, Vma } from '../model'
import { loadVmas } from './memory'
import { loadProcess } from './process'
import { loadThreads } from './threads'

export interface LoadedTask {
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
}

/**
 * Loads taskDirName (task-PID) of a saved tree. fds/ is left to the file-table loader; what the
 * values mean (ranges, what a restore cannot bring back) is checked by lib/restore/validate.ts.
 */
export async function loadTask(root: StoredDir, taskDirName: string): Promise<LoadedTask> {
  const m = /^task-([1-9]\d{0,9})$/.exec(taskDirName)
  if (!m || Number(m[1]) > 2 ** 31 - 1) throw new CkptError(`${taskDirName}: not a task-PID directory`, 'EINVAL')
  const pid = Number(m[1])
  const top = new SavedDir(root, '')
  // The top's values (boot_id, mode, pid, problems) are read by other loaders or by none:
  // every one is checked here, once, whoever reads it.
  top.checkAllValues()
  const dir = top.dir(taskDirName)

  const process = await loadProcess(dir, pid)
  const threads = await loadThreads(dir.dir('threads'))
  const vmas = await loadVmas(dir.dir('memory'))
  dir.dir('fds')
  dir.finish()
  return { process, threads, vmas }
}
