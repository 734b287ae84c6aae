// Finding the ckptfs mounts a command may use. Every user's and every test's mounts show in
// /proc/self/mountinfo; only the caller's own can serve it (mounted without allow_other, a
// FUSE mount refuses every other uid, root included), and fuse records the mounter's uid in
// the super options as user_id=UID.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError, messageOf } from '../lib/errors'

export interface CkptfsMount {
  mnt: string
  /** The uid that mounted it (fuse's user_id). */
  owner: number
}

function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)))
}

/**
 * Every active ckptfs mount with its owner. mountinfo: "ID PARENT MAJ:MIN ROOT MNT OPTS
 * [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS".
 */
export function allCkptfsMounts(): CkptfsMount[] {
  const found: CkptfsMount[] = []
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ')
    const dash = fields.indexOf('-', 6)
    if (dash < 0 || fields[dash + 1] !== 'fuse.ckptfs') continue
    const owner = /(?:^|,)user_id=([0-9]+)(?:,|$)/.exec(fields[dash + 3] ?? '')
    found.push({ mnt: unescapeMountField(fields[4]), owner: owner ? Number(owner[1]) : -1 })
  }
  return found
}

/** Mount points of the ckptfs mounts the calling user owns (the only ones it can use). */
export function ownCkptfsMounts(uid = process.getuid?.() ?? 0): string[] {
  return allCkptfsMounts().filter((m) => m.owner === uid).map((m) => m.mnt)
}

/**
 * The mount a command talks to: the one given with --mount, or else the caller's only one.
 * A mount whose server is gone is named as such, with the command that cleans it.
 */
export function chooseMount(given: string | undefined): string {
  const uid = process.getuid?.() ?? 0
  let mnt: string
  if (given !== undefined) {
    mnt = path.resolve(given)
    const found = allCkptfsMounts().find((m) => m.mnt === mnt)
    if (!found) throw new CkptError(`${mnt} is not a ckptfs mount`)
    if (found.owner !== uid) throw new CkptError(`${mnt} is the ckptfs mount of uid ${found.owner}: only its owner can use it (you are uid ${uid})`)
  } else {
    const own = ownCkptfsMounts(uid)
    if (own.length === 0) throw new CkptError('you have no ckptfs mount: run `ckptfs mount MNT` first')
    if (own.length > 1) throw new CkptError(`you have ${own.length} ckptfs mounts (${own.join(', ')}): choose one with --mount MNT`)
    mnt = own[0]
  }
  assertServing(mnt)
  return mnt
}

/** Refuses a mount whose server has died: the kernel answers ENOTCONN for everything in it. */
export function assertServing(mnt: string): void {
  try {
    // statfs always asks the server; a stat may be answered from the kernel's attribute cache
    // (kept 1 s, mount/fuseoptions.ts) after the server died.
    fs.statfsSync(mnt)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTCONN') throw deadMount(mnt)
    throw new CkptError(`${mnt}: ${messageOf(err)}`)
  }
}

export function deadMount(mnt: string): CkptError {
  return new CkptError(`the server of the ckptfs mount ${mnt} is gone (it was killed or crashed): \`ckptfs umount ${mnt}\` cleans it up`, 'ENOTCONN')
}
