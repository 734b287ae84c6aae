// Converts a saved checkpoint between its two forms: the expanded tree (a `cp -a` copy of
// checkpoint-N) and the condensed image. Both go through the model, read by the same loaders
// a restore uses. A conversion is faithful (a checkpoint that cannot be restored converts too);
// one made for a restore (`ckptfs restore TREE --mount`) asks for the validator a restore runs
// (lib/restore/validate.ts) first, so it never carries anything the restore would refuse.

import * as fs from 'fs'
import { loadBootId } from '../boot'
import { NodeCache } from '../cache'
import { CkptError } from '../errors'
import { loadFileTable } from '../fdtable'
import { DiskDir, SavedDir } from '../files/saved'
import { fdsDir, filesDir } from '../files/tree'
import { asTid, type CheckpointMode, type TaskImage } from '../model'
import { loadTask } from '../task/load'
import { checkStoredCredentials, checkStoredSeccomp, type StoredBy } from '../restore/owner'
import { validateCheckpoint } from '../restore/validate'
import { taskDir } from '../task/tree'
import { attr, tableDir, type DirNode, type TableEntry } from '../tree/node'
import { writeTree } from '../tree/write'
import { readImage } from './decode'
import { imageSource } from './encode'

const PIECE = 1 << 20
/** Attribute files are cached while written once each; a few MiB is plenty. */
const TREE_CACHE_BYTES = 16 << 20

/** A saved tree as a task, parsed (not validated: `ckptfs show` shows what a restore would refuse too); `mode` from the tree's `mode` file when it has one. */
export async function loadTree(treeRoot: string): Promise<{ task: TaskImage; mode: CheckpointMode | undefined; bootId: string | undefined }> {
  const names = await fs.promises.readdir(treeRoot).catch((err: NodeJS.ErrnoException) => {
    throw new CkptError(`${treeRoot}: cannot list: ${err.message}`, err.code === 'ENOENT' ? 'ENOENT' : 'EIO')
  })
  const taskDirs = names.filter((n) => /^task-[1-9][0-9]*$/.test(n))
  if (taskDirs.length === 0) throw new CkptError(`${treeRoot}: no task-PID directory; a saved checkpoint has one per process`, 'EINVAL')
  if (taskDirs.length > 1) throw new CkptError(`${treeRoot}: ${taskDirs.length} task-PID directories: a checkpoint of a process tree, which this conversion does not write yet (the mount writes a tree's image as checkpoint-N.image; README, Limitations)`, 'EINVAL')
  const root = new DiskDir(treeRoot)
  const { process, threads, vmas } = await loadTask(root, taskDirs[0])
  const fileTable = await loadFileTable(root, taskDirs[0])
  const task: TaskImage = {
    pid: process.pid,
    tids: threads.map((t) => asTid(t.tid)),
    process: async () => process,
    threads: async () => threads,
    vmas: async () => vmas,
    fileTable: async () => fileTable,
  }
  return { task, mode: names.includes('mode') ? readMode(new SavedDir(root, '')) : undefined, bootId: loadBootId(root) }
}

/** The tree's `mode`, read as every value is (checked against the top's values_crc32c). */
function readMode(top: SavedDir): CheckpointMode {
  const text = top.text('mode')
  if (text !== 'lazy' && text !== 'copy') throw top.fail('mode', `${JSON.stringify(text.slice(0, 20))} is neither lazy nor copy`)
  return text
}

/**
 * Writes the image of the saved tree at `treeRoot` to `outFile` (which must not exist). With
 * `validate`, the tree is first checked by the validator a restore runs, so nothing is written
 * for a tree the restore would refuse; with `storedBy`, its credentials are held to what its
 * files' owners allow (lib/restore/owner.ts), as a restore would. `onProgress` hears of each
 * MiB written, for a command's progress line.
 */
export async function treeToImage(treeRoot: string, outFile: string, opts: { validate?: boolean; storedBy?: StoredBy; onProgress?: (written: number, total: number) => void } = {}): Promise<void> {
  const { task, mode, bootId } = await loadTree(treeRoot)
  if (opts.validate) {
    const [process, threads, vmas, fileTable] = await Promise.all([task.process(), task.threads(), task.vmas(), task.fileTable()])
    await validateCheckpoint({ pid: task.pid, process, threads, vmas, fileTable })
  }
  if (opts.storedBy) {
    const process = await task.process()
    checkStoredCredentials(process.creds, task.pid, opts.storedBy, `${treeRoot}/`)
    checkStoredSeccomp(process, task.pid, opts.storedBy, `${treeRoot}/`)
  }
  const source = await imageSource(task, { mode, bootId })
  const out = await fs.promises.open(outFile, 'wx', 0o644)
  try {
    for (let at = 0; at < source.size; at += PIECE) {
      const piece = await source.read(at, PIECE)
      for (let done = 0; done < piece.length;) done += (await out.write(piece, done, piece.length - done, at + done)).bytesWritten
      opts.onProgress?.(at + piece.length, source.size)
    }
  } finally {
    await out.close()
  }
}

/** The parts of checkpoint-N that hold the checkpoint itself: files/, task-PID/, mode and boot_id. */
export function checkpointTree(task: TaskImage, mode: CheckpointMode | undefined, bootId?: string): DirNode {
  const cache = new NodeCache(TREE_CACHE_BYTES)
  const taskName = `task-${task.pid}`
  const entries: TableEntry<TaskImage>[] = [
    { name: 'files', make: (t, s) => filesDir(t.fileTable, { key: `${s.key}/files`, cache: s.cache }) },
    {
      name: taskName,
      make: (t, s) => {
        const key = `${s.key}/${taskName}`
        return taskDir(t, { key, cache: s.cache }, fdsDir(t.fileTable, { key: `${key}/fds`, cache: s.cache }))
      },
    },
    ...(mode ? [attr('mode', () => mode)] : []),
    ...(bootId ? [attr('boot_id', () => bootId)] : []),
  ]
  return tableDir(task, entries, { key: 'convert', cache })
}

/** Writes the image `imageFile` out as a saved tree in `outDir` (created; existing entries are never overwritten). */
export async function imageToTree(imageFile: string, outDir: string): Promise<void> {
  const loaded = await readImage(imageFile)
  const mode = loaded.header.mode === 'unknown' ? undefined : loaded.header.mode
  await writeTree(checkpointTree(loaded.task, mode, loaded.header.bootId), outDir)
}
