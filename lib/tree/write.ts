// Writes a tree of nodes out as real directories and files: what `cp -a` of the mount leaves
// on disk (same names, same bytes, same permission bits). Large files are streamed in pieces,
// so memory stays bounded whatever their size.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'
import type { DirNode, FileNode } from './node'

const PIECE = 1 << 20

/** Writes `node`'s entries into `dest` (created if missing); never overwrites an existing entry. */
export async function writeTree(node: DirNode, dest: string): Promise<void> {
  await fs.promises.mkdir(dest, { recursive: true, mode: 0o700 })
  await writeEntries(node, dest)
  await fs.promises.chmod(dest, node.perm)
}

async function writeEntries(dir: DirNode, dest: string): Promise<void> {
  for (const name of await dir.list()) {
    const child = await dir.lookup(name)
    const target = path.join(dest, name)
    if (!child) throw new CkptError(`tree: ${target}: listed but not found`)
    if (child.kind === 'dir') {
      // Filled before its permission bits are set, as cp -a does: 0555 would forbid the filling.
      await fs.promises.mkdir(target, { mode: 0o700 })
      await writeEntries(child, target)
    } else {
      await writeFile(child, target)
    }
    await fs.promises.chmod(target, child.perm)
  }
}

async function writeFile(node: FileNode, target: string): Promise<void> {
  const size = await node.size()
  const out = await fs.promises.open(target, 'wx', 0o600)
  try {
    for (let at = 0; at < size;) {
      const piece = await node.read(at, Math.min(PIECE, size - at))
      if (piece.length === 0) throw new CkptError(`tree: ${target}: ended at byte ${at} of the ${size} its size announced`)
      for (let done = 0; done < piece.length;) {
        done += (await out.write(piece, done, piece.length - done, at + done)).bytesWritten
      }
      at += piece.length
    }
  } finally {
    await out.close()
  }
}
