// Reads a saved checkpoint back into the model, validating every value: a tree copied out of
// the mount (task-PID/ and files/), or a directory holding only the condensed `image`.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'
import { loadFileTable } from '../fdtable'
import { readImage } from '../image/decode'
import type { FileTable, Pid, ProcessState, ThreadState, Vma } from '../model'
import { loadTask } from '../task/load'

export interface SavedCheckpoint {
  pid: Pid
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
  fileTable: FileTable
}

export async function loadSaved(dir: string): Promise<SavedCheckpoint> {
  const names = await fs.promises.readdir(dir)
  const taskDirs = names.filter((n) => /^task-[0-9]+$/.test(n))
  if (taskDirs.length > 1) throw new CkptError(`${path.basename(dir)}: ${taskDirs.length} task directories; a checkpoint holds one process`, 'EINVAL')
  if (taskDirs.length === 1) {
    const task = await loadTask(dir, taskDirs[0])
    const fileTable = await loadFileTable(dir)
    return { pid: task.process.pid, ...task, fileTable }
  }
  if (names.includes('image')) return readImage(path.join(dir, 'image'))
  throw new CkptError(`${path.basename(dir)}: neither a task-PID directory nor an image file: not a saved checkpoint`, 'EINVAL')
}
