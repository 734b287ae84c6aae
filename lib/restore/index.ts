// Restore entry point: a saved checkpoint (a copied tree, or a directory holding only
// `image`) is validated whole before anything is created, then brought back: one process,
// or the whole process tree it holds (pstree.ts).

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'
import type { StoredDir } from '../files/saved'
import { PhaseTimer } from '../trace'
import type { RestoreOptions } from './engine'
import { loadSaved } from './load'
import { checkTreeCredentials, storedByOwners, storedBySnapshot, type StoredBy } from './owner'
import { restoreCheckpoint } from './pstree'
import { readSnapshot } from './snapshot'
import { validateCheckpoint } from './validate'

/** Restores the saved checkpoint whose top directory is `root`; returns the PID of the restored process. */
export async function restoreSaved(root: StoredDir, name: string, options: RestoreOptions = {}): Promise<number> {
  const timer = new PhaseTimer('restore')
  const saved = await loadSaved(root, name)
  timer.mark('load and validate')
  return restoreCheckpoint(saved, timer, options)
}

/**
 * Restores from a saved tree directory, a directory holding only `image`, or an image file.
 * Its files' owners decide which credentials it may come back with (owner.ts); `storedBy`
 * says it instead when the files read here are not the ones the user gave (an unpacked tar,
 * stdin). `tree`: the directory `p` as already read with its owner check (input.ts), so it
 * is not walked twice.
 */
export async function restorePath(p: string, options: RestoreOptions = {}, storedBy?: StoredBy, tree?: StoredDir): Promise<number> {
  const stat = await fs.promises.stat(p).catch(() => undefined)
  if (!stat) throw new CkptError(`${p}: no such file or directory`, 'ENOENT')
  const timer = new PhaseTimer('restore')
  if (stat.isDirectory()) {
    let root = tree
    let trust = storedBy
    if (root === undefined) {
      const snapshot = await readSnapshot(p)
      root = snapshot.root
      trust ??= storedBySnapshot(p, snapshot)
      timer.mark('read the tree and check its owners')
    }
    trust ??= storedByOwners(p)
    const isTree = [...root.list().keys()].some((n) => /^task-[0-9]+$/.test(n))
    const saved = await loadSaved(root, path.basename(p))
    checkTreeCredentials(saved, trust, isTree ? `${p}/` : `${p}: `)
    timer.mark('load and validate')
    return restoreCheckpoint(saved, timer, { ...options, storedByRoot: trust.kind === 'root' })
  }
  const trust = storedBy ?? storedByOwners(p)
  const { readImage } = await import('../image/decode')
  const saved = await readImage(p)
  await validateCheckpoint(saved)
  checkTreeCredentials(saved, trust, `${p}: `)
  timer.mark('load and validate')
  return restoreCheckpoint(saved, timer, { ...options, storedByRoot: trust.kind === 'root' })
}
