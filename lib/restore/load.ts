// Reads a saved checkpoint back into the model: a tree copied out of the mount (task-PID/ and
// files/), or a directory holding only the condensed `image`. Either loader only parses; one
// validator (validate.ts) then checks what the values mean, so both get the same verdict.

import { CkptError } from '../errors'
import { loadFileTable } from '../fdtable'
import type { StoredDir } from '../files/saved'
import { readImage } from '../image/decode'
import type { FileTable, Pid, ProcessState, ThreadState, Vma } from '../model'
import { loadTask } from '../task/load'
import { validateCheckpoint } from './validate'

export interface SavedCheckpoint {
  pid: Pid
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
  fileTable: FileTable
}

/** Loads and validates the saved checkpoint whose top directory is `root`; `name` is how messages call it. */
export async function loadSaved(root: StoredDir, name: string): Promise<SavedCheckpoint> {
  const saved = await parseSaved(root, name)
  await validateCheckpoint(saved)
  return saved
}

/** Parses the saved checkpoint whose top directory is `root` into the model, not validated yet. */
export async function parseSaved(root: StoredDir, name: string): Promise<SavedCheckpoint> {
  const listing = root.list()
  const taskDirs = [...listing.keys()].filter((n) => /^task-[0-9]+$/.test(n))
  if (taskDirs.length > 1) throw new CkptError(`${name}: ${taskDirs.length} task directories; a checkpoint holds one process`, 'EINVAL')
  if (taskDirs.length === 1) {
    const task = await loadTask(root, taskDirs[0])
    const fileTable = await loadFileTable(root)
    return { pid: task.process.pid, ...task, fileTable }
  }
  if (listing.has('image')) return readImage(root.diskPath('image'))
  throw new CkptError(`${name}: neither a task-PID directory nor an image file: not a saved checkpoint`, 'EINVAL')
}
