// Reads a saved checkpoint back into the model: a tree copied out of the mount (task-PID/ and
// files/), or a directory holding only the condensed image (a copy of checkpoint-N.image, or
// `image` as older trees held it). Either loader only parses; one validator (validate.ts) then
// checks what the values mean, so both get the same verdict.

import { CkptError } from '../errors'
import { loadFileTable, loadTaskFds } from '../fdtable'
import { loadBootId } from '../boot'
import type { StoredDir } from '../files/saved'
import { SavedDir } from '../files/saved'
import type { FileTable, Pid, ProcessState, ThreadState, Vma, ZombieTask } from '../model'
import { loadTask } from '../task/load'
import { loadZombie } from '../task/zombie'
import { validateCheckpoint, type TreeTaskParts } from './validate'

export interface SavedCheckpoint {
  pid: Pid
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
  fileTable: FileTable
  /** The boot that made the checkpoint (lib/boot.ts); undefined when the save does not say. */
  bootId: string | undefined
  /** The rest of a process tree: its other processes (parents first) and its zombies. */
  others?: TreeTaskParts[]
  zombies?: ZombieTask[]
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
  if (taskDirs.length === 1) {
    const task = await loadTask(root, taskDirs[0])
    const fileTable = await loadFileTable(root)
    return { pid: task.process.pid, ...task, fileTable, bootId: loadBootId(root) }
  }
  if (taskDirs.length > 1) return parseSavedTree(root, name, taskDirs)
  const image = imageFileIn([...listing.keys()], name)
  // The image decoder (protobufjs) is loaded only for an image: it is most of a tree restore's module loading.
  if (image !== undefined) return (await import('../image/decode')).readImage(root.diskPath(image))
  throw new CkptError(`${name}: neither a task-PID directory nor an image file: not a saved checkpoint`, 'EINVAL')
}

/**
 * A saved process tree: the root (named by the tree's `pid` file), the other processes in tree
 * order (parents first, as far as their ppid files tell), and the zombies (task-PID/ with a
 * `zombie` file). Whether the links hold together is validate.ts's to say.
 */
async function parseSavedTree(root: StoredDir, name: string, taskDirs: string[]): Promise<SavedCheckpoint> {
  const top = new SavedDir(root, '')
  const rootPid = top.int('pid', 1, 0x7fffffff)
  const isZombie = (dir: string) => root.dir(dir).list().has('zombie')
  const live = taskDirs.filter((dir) => !isZombie(dir))
  if (!live.includes(`task-${rootPid}`)) throw top.fail('pid', `${rootPid}, but the tree has no live task-${rootPid}/`)
  const task = await loadTask(root, `task-${rootPid}`)
  const fileTable = await loadFileTable(root, `task-${rootPid}`)
  const loaded: TreeTaskParts[] = []
  for (const dir of live.filter((d) => d !== `task-${rootPid}`)) {
    const other = await loadTask(root, dir)
    loaded.push({ pid: other.process.pid, ...other, fds: await loadTaskFds(root, dir) })
  }
  const zombies = taskDirs.filter(isZombie).map((dir) => loadZombie(root, dir))
  // Parents first: a process after the one it names as parent (PIDs break ties).
  const placed = new Set<number>([rootPid])
  const others: TreeTaskParts[] = []
  for (let rest = loaded.sort((a, b) => a.pid - b.pid); rest.length > 0;) {
    const ready = rest.filter((t) => placed.has(t.process.ppid))
    const next = ready.length > 0 ? ready : rest // a broken link: validate.ts names it
    for (const t of next) placed.add(t.pid)
    others.push(...next)
    rest = rest.filter((t) => !next.includes(t))
  }
  return { pid: task.process.pid, ...task, fileTable, bootId: loadBootId(root), others, zombies }
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
