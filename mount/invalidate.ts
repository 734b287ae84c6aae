// Tells the kernel to forget a top-level entry of the mount (FUSE_NOTIFY_INVAL_ENTRY), so a
// checkpoint-N that ended vanishes at once although the kernel may keep attributes and
// entries for ATTR_TIMEOUT_S (mount/fuseoptions.ts). fuse-native exposes no notification, so the
// message is written to the server's own /dev/fuse connection: a duplicate of the fd that
// libfuse opened for this mount, so it can never hit another file that reuses the number.
// Only children of the root can be named (its node id is always 1; libfuse keeps the others),
// and forgetting an entry forgets everything the kernel knew below it.

import * as fs from 'fs'
import { native } from '../lib/native'
import { ATTR_TIMEOUT_S } from './fuseoptions'

const FUSE_NOTIFY_INVAL_ENTRY = 3
const FUSE_ROOT_ID = 1n
const FUSE_NAME_MAX = 1024

/** The fds of this process that are /dev/fuse connections. */
export function fuseFds(): Set<number> {
  const out = new Set<number>()
  for (const name of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${name}`) === '/dev/fuse') out.add(Number(name))
    } catch {
      // closed meanwhile
    }
  }
  return out
}

export class EntryInvalidator {
  private fd: number | undefined
  private pending = new Set<Promise<void>>()

  /**
   * Takes the /dev/fuse fd the mount just opened (the one not in `before`); with none or more
   * than one new (another mount started meanwhile in this process), `describe` says so and
   * nothing is invalidated: the entries then last ATTR_TIMEOUT_S at most (mount/fuseoptions.ts).
   */
  constructor(before: Set<number>, private readonly onError: (message: string) => void) {
    const fresh = [...fuseFds()].filter((fd) => !before.has(fd))
    if (fresh.length !== 1) {
      onError(`cannot tell this mount's /dev/fuse fd (${fresh.length} new): ended checkpoints may stay visible to stat for up to ${ATTR_TIMEOUT_S} s`)
      return
    }
    try {
      this.fd = native.getFd(process.pid, fresh[0])
    } catch (err) {
      onError(`cannot duplicate this mount's /dev/fuse fd: ${(err as Error).message}: ended checkpoints may stay visible to stat for up to ${ATTR_TIMEOUT_S} s`)
    }
  }

  /**
   * Forgets the root's entry `name`. The write runs on libuv's thread pool: the kernel takes
   * the root directory's lock for it, which a lookup in the root waiting for this (the main)
   * thread may hold.
   */
  forget(name: string): void {
    const fd = this.fd
    if (fd === undefined) return
    const bytes = Buffer.from(name)
    if (bytes.length === 0 || bytes.length > FUSE_NAME_MAX || name.includes('/')) return
    const msg = Buffer.alloc(16 + 16 + bytes.length + 1)
    msg.writeUInt32LE(msg.length, 0) // fuse_out_header.len
    msg.writeInt32LE(FUSE_NOTIFY_INVAL_ENTRY, 4) // .error: the notification's code
    msg.writeBigUInt64LE(0n, 8) // .unique: 0 for a notification
    msg.writeBigUInt64LE(FUSE_ROOT_ID, 16) // fuse_notify_inval_entry_out.parent
    msg.writeUInt32LE(bytes.length, 24) // .namelen
    bytes.copy(msg, 32) // the name, then its NUL (Buffer.alloc zeroed it)
    const done = new Promise<void>((resolve) => {
      fs.write(fd, msg, (err) => {
        // ENOENT: the kernel holds no such entry, so there is nothing to forget.
        if (err && err.code !== 'ENOENT') this.onError(`cannot make the kernel forget ${name}: ${err.message}`)
        resolve()
      })
    })
    this.pending.add(done)
    void done.then(() => this.pending.delete(done))
  }

  /** Resolves once every notification asked for so far has reached the kernel (or failed). */
  async settled(): Promise<void> {
    await Promise.all(this.pending)
  }

  /** Waits for the notifications under way, then closes the duplicate fd (before the unmount). */
  async close(): Promise<void> {
    const fd = this.fd
    this.fd = undefined
    await Promise.all(this.pending)
    if (fd !== undefined) native.close(fd)
  }
}
