// Reads a saved checkpoint back into the model, validating every value: a tree copied out of
// the mount (task-PID/ and files/), or a directory holding only the condensed `image`.

import { CkptError } from '../errors'
import { loadFileTable } from '../fdtable'
import { loadBootId } from '../boot'
import type { StoredDir } from '../files/saved'
import { readImage } from '../image/decode'
import type { FileTable, Pid, ProcessState, ThreadState, Vma } from '../model'
import { loadTask } from '../task/load'

export interface SavedCheckpoint {
  pid: Pid
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
  fileTable: FileTable
  /** The boot that made the checkpoint (lib/boot.ts); undefined when the save does not say. */
  bootId: string | undefined
}

/** Loads the saved checkpoint whose top directory is `root`; `name` is how messages call it. */
export async function loadSaved(root: StoredDir, name: string): Promise<SavedCheckpoint> {
  const listing = root.list()
  const taskDirs = [...listing.keys()].filter((n) => /^task-[0-9]+$/.test(n))
  if (taskDirs.length > 1) throw new CkptError(`${name}: ${taskDirs.length} task directories; a checkpoint holds one process`, 'EINVAL')
  if (taskDirs.length === 1) {
    const task = await loadTask(root, taskDirs[0])
    const fileTable = await loadFileTable(root)
    return { pid: task.process.pid, ...task, fileTable, bootId: loadBootId(root) }
  }
  if (listing.has('image')) return readImage(root.diskPath('image'))
  throw new CkptError(`${name}: neither a task-PID directory nor an image file: not a saved checkpoint`, 'EINVAL')
}
