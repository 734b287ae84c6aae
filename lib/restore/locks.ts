// Restore of file locks (lib/files/locks.ts): the system calls that take each saved lock
// again through the restored task's own fd of its description. They run once every file
// and mapping is in place: closing any fd of a file drops the process's POSIX locks on it.

import type { FileLock, FileTable } from '../model'
import type { Call, Scratch } from './engine'
import { SYS } from './syscalls'

const F_SETLK = 6, F_OFD_SETLK = 37
const F_RDLCK = 0, F_WRLCK = 1
const SEEK_SET = 0
const LOCK_SH = 1, LOCK_EX = 2, LOCK_NB = 4

/** struct flock (x86-64): short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid. */
function flockStruct(l: FileLock): Buffer {
  const b = Buffer.alloc(32)
  b.writeInt16LE(l.write ? F_WRLCK : F_RDLCK, 0)
  b.writeInt16LE(SEEK_SET, 2)
  b.writeBigInt64LE(l.start, 8)
  // l_len 0: to the end of the file, however far it grows.
  b.writeBigInt64LE(l.end === undefined ? 0n : l.end - l.start + 1n, 16)
  return b
}

const describe = (l: FileLock): string => `${l.kind} ${l.write ? 'write' : 'read'} lock on bytes ${l.start}-${l.end ?? 'EOF'}`

/**
 * One call per lock, through the lowest fd of its description (non-blocking: a lock another
 * process took meanwhile fails the restore with EAGAIN, named, instead of waiting for it).
 */
export function lockCalls(table: FileTable, scratch: Scratch): Call[] {
  const lowestFd = new Map<number, number>()
  for (const e of table.fds) {
    const seen = lowestFd.get(e.objref)
    if (seen === undefined || e.fd < seen) lowestFd.set(e.objref, e.fd)
  }
  const calls: Call[] = []
  for (const d of table.files) {
    const fd = lowestFd.get(d.objref)
    if (fd === undefined) continue
    for (const l of d.locks) {
      const what = `files/${d.objref}: take its ${describe(l)} of ${d.target} again (fd ${fd})`
      if (l.kind === 'flock') {
        calls.push({ nr: SYS.flock, args: [BigInt(fd), BigInt((l.write ? LOCK_EX : LOCK_SH) | LOCK_NB)], what })
      } else {
        const cmd = l.kind === 'posix' ? F_SETLK : F_OFD_SETLK
        calls.push({ nr: SYS.fcntl, args: [BigInt(fd), BigInt(cmd), scratch.put(flockStruct(l))], scratchArgs: 0b100, what })
      }
    }
  }
  return calls
}
