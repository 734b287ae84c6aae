// Reads a saved task-PID/ (a `cp -a` of the mount) back into the model, validating every value;
// errors name the file relative to the tree root ("task-77/threads/78/regs: ...").

import { CkptError } from '../errors'
import { SavedDir, type StoredDir } from '../files/saved'
import type { ProcessState, ThreadState, Vma } from '../model'
import { loadVmas } from './memory'
import { loadProcess, processProblems } from './process'
import { loadThreads } from './threads'

export interface LoadedTask {
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
}

/**
 * Loads taskDirName (task-PID) of a saved tree. fds/ is left to the file-table loader. A tree that
 * describes something restore cannot bring back (seccomp filters, ...) is refused here too.
 */
export async function loadTask(root: StoredDir, taskDirName: string): Promise<LoadedTask> {
  const m = /^task-([1-9]\d{0,9})$/.exec(taskDirName)
  if (!m || Number(m[1]) > 2 ** 31 - 1) throw new CkptError(`${taskDirName}: not a task-PID directory`, 'EINVAL')
  const pid = Number(m[1])
  const dir = await new SavedDir(root, '').dir(taskDirName)

  const process = await loadProcess(dir, pid)
  const threads = await loadThreads(dir.dir('threads'))
  const vmas = await loadVmas(dir.dir('memory'))
  dir.dir('fds')
  dir.finish()

  const [problem] = processProblems(process, threads.map((t) => t.tid), vmas)
  if (problem) throw new CkptError(`${problem.where}: ${problem.why}`, 'EINVAL')
  return { process, threads, vmas }
}
