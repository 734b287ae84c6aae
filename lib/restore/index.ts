// Restore entry point: a saved checkpoint (a copied tree, or a directory holding only
// `image`) is validated whole before anything is created, then brought back.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'
import { restoreProcess } from './engine'
import { loadSaved } from './load'
import { readImage } from '../image/decode'
import { PhaseTimer } from '../trace'

/** Restores the saved checkpoint in `dir`; returns the PID of the restored process. */
export async function restoreSaved(dir: string): Promise<number> {
  if (!fs.existsSync(dir)) throw new CkptError(`${path.basename(dir)}: no such saved checkpoint`, 'ENOENT')
  const timer = new PhaseTimer('restore')
  const saved = await loadSaved(dir)
  timer.mark('load and validate')
  return restoreProcess(saved, timer)
}

/** Restores from a saved tree directory, a directory holding only `image`, or an image file. */
export async function restorePath(p: string): Promise<number> {
  const stat = await fs.promises.stat(p).catch(() => undefined)
  if (!stat) throw new CkptError(`${p}: no such file or directory`, 'ENOENT')
  if (stat.isDirectory()) return restoreSaved(p)
  const timer = new PhaseTimer('restore')
  const saved = await readImage(p)
  timer.mark('load and validate')
  return restoreProcess(saved, timer)
}
