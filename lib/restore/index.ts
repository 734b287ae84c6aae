// Restore entry point: a saved checkpoint (a copied tree, or a directory holding only
// `image`) is validated whole before anything is created, then brought back.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'
import { restoreProcess } from './engine'
import { loadSaved } from './load'

/** Restores the saved checkpoint in `dir`; returns the PID of the restored process. */
export async function restoreSaved(dir: string): Promise<number> {
  if (!fs.existsSync(dir)) throw new CkptError(`${path.basename(dir)}: no such saved checkpoint`, 'ENOENT')
  return restoreProcess(await loadSaved(dir))
}
