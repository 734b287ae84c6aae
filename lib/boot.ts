// Which boot of which machine this is: /proc/sys/kernel/random/boot_id, a random UUID the
// kernel draws at every boot. Device and inode numbers only name the same file within one
// boot, so a restore compares them only when the checkpoint was made on this boot.

import * as fs from 'fs'
import { CkptError } from './errors'
import { SavedDir, type StoredDir } from './files/saved'

export const BOOT_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

let current: string | undefined

/** This boot's id (read once). */
export function currentBootId(): string {
  if (current === undefined) {
    const text = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
    if (!BOOT_ID.test(text)) throw new CkptError(`/proc/sys/kernel/random/boot_id: ${JSON.stringify(text.slice(0, 40))} is not a boot id`)
    current = text
  }
  return current
}

/** The tree's boot_id: which boot made it (undefined in a tree saved before it was recorded). */
export function loadBootId(root: StoredDir): string | undefined {
  const top = new SavedDir(root, '')
  if (!top.has('boot_id')) return undefined
  const id = top.text('boot_id')
  if (!BOOT_ID.test(id)) throw top.fail('boot_id', `${JSON.stringify(id.slice(0, 40))} is not a boot id`)
  return id
}
