// Restore entry point: a saved checkpoint (a copied tree, or a directory holding only
// `image`) is validated whole before anything is created, then brought back.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'
import { DiskDir, type StoredDir } from '../files/saved'
import { readImage } from '../image/decode'
import { PhaseTimer } from '../trace'
import { restoreProcess, type RestoreNote } from './engine'
import { loadSaved } from './load'

/** Restores the saved checkpoint whose top directory is `root`; returns the PID of the restored process. */
export async function restoreSaved(root: StoredDir, name: string, note?: RestoreNote): Promise<number> {
  const timer = new PhaseTimer('restore')
  const saved = await loadSaved(root, name)
  timer.mark('load and validate')
  return restoreProcess(saved, timer, note)
}

/** Restores from a saved tree directory, a directory holding only `image`, or an image file. */
export async function restorePath(p: string): Promise<number> {
  const stat = await fs.promises.stat(p).catch(() => undefined)
  if (!stat) throw new CkptError(`${p}: no such file or directory`, 'ENOENT')
  if (stat.isDirectory()) return restoreSaved(new DiskDir(p), path.basename(p))
  const timer = new PhaseTimer('restore')
  const saved = await readImage(p)
  timer.mark('load and validate')
  return restoreProcess(saved, timer)
}
