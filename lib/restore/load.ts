// Reads a saved checkpoint back into the model: a tree copied out of the mount (task-PID/ and
// files/), or a directory holding only the condensed image (a copy of checkpoint-N.image, or
// `image` as older trees held it). Either loader only parses; one validator (validate.ts) then
// checks what the values mean, so both get the same verdict.

import { CkptError } from '../errors'
import { loadFileTable } from '../fdtable'
import { loadBootId } from '../boot'
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
  /** The boot that made the checkpoint (lib/boot.ts); undefined when the save does not say. */
  bootId: string | undefined
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
  if (taskDirs.length > 1) throw new CkptError(`${name}: ${taskDirs.length} task-PID directories: a checkpoint of a process tree, which cannot be restored yet (README, Limitations)`, 'EINVAL')
  if (taskDirs.length === 1) {
    const task = await loadTask(root, taskDirs[0])
    const fileTable = await loadFileTable(root)
    return { pid: task.process.pid, ...task, fileTable, bootId: loadBootId(root) }
  }
  const image = imageFileIn([...listing.keys()], name)
  if (image !== undefined) return readImage(root.diskPath(image))
  throw new CkptError(`${name}: neither a task-PID directory nor an image file: not a saved checkpoint`, 'EINVAL')
}

/**
 * The saved image among a directory's names: `image`, or the one NAME.image (a copy of
 * MNT/checkpoint-N.image); undefined when there is none. `dir` names the directory in errors.
 */
export function imageFileIn(names: readonly string[], dir: string): string | undefined {
  const images = names.filter((n) => n === 'image' || (n.endsWith('.image') && n.length > '.image'.length))
  if (images.length > 1) throw new CkptError(`${dir}: ${images.length} image files (${images.slice(0, 3).join(', ')}${images.length > 3 ? ', ...' : ''}); a saved checkpoint has one`, 'EINVAL')
  return images[0]
}
