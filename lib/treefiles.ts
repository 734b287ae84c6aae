// The file table of a process tree: one files/ for every task, in which an open file
// description that several tasks hold (inherited over fork, passed over SCM_RIGHTS) is one
// OBJREF, as dup'ed fds of one task are. Tasks are numbered one after the other in tree order
// (their /proc reads and captures run side by side), so the numbering is stable: the root's descriptions are 1..N as for a lone process, and a
// later task's description is new only if no earlier task holds it (kcmp KCMP_FILE). A
// description's POSIX locks are gathered from every task holding it, each under its holder.

import { CkptError, messageOf } from './errors'
import { captureProbed, probeFileTable, type DescriptionClaims } from './fdtable'
import { asObjRef, lazy, type FdEntry, type FileDescription, type FileLock, type FileTable, type Lazy, type ObjRef, type Pid } from './model'
import { native } from './native'
import { handlerOf } from './files/index'

export interface TreeFileTable {
  /** Every description of the tree, by OBJREF. */
  files: FileDescription[]
  /** Each task's fds. */
  fds: Map<Pid, FdEntry[]>
}

/**
 * Numbers descriptions across the tree. Candidates are those whose fds show the same mount,
 * inode, flags, offset and target (the key probeFileTable groups by); only between those
 * does kcmp decide, so unrelated files cost nothing.
 */
class TreeClaims implements DescriptionClaims {
  readonly peeks = new Map<string, Lazy<Buffer>>()
  /** POSIX locks of later tasks, by the description they were taken through. */
  readonly laterLocks = new Map<ObjRef, { locks: FileLock[]; refused: string | undefined }>()
  readonly numbered: DescriptionClaims['numbered'] = []
  readonly heldFds: number[] = []
  private readonly byKey = new Map<string, Array<{ pid: Pid; fd: number; objref: ObjRef }>>()
  private next = 0

  constructor(readonly lockOwners: boolean) {}

  addLocks(objref: ObjRef, locks: FileLock[], refused: string | undefined): void {
    const seen = this.laterLocks.get(objref)
    if (seen) {
      seen.locks.push(...locks)
      seen.refused ??= refused
    } else {
      this.laterLocks.set(objref, { locks: [...locks], refused })
    }
  }

  /**
   * The descriptions of one key are kept in the kernel's order (kcmp's 1/2 answers order the
   * struct file pointers consistently across processes), so a new fd is placed by binary
   * search: log n kcmp calls where a scan took n (100 children that each opened /dev/null
   * themselves made 4,950 calls).
   */
  claim(pid: Pid, fd: number, key: string): { objref: ObjRef; fresh: boolean } {
    let seen = this.byKey.get(key)
    if (!seen) this.byKey.set(key, (seen = []))
    let lo = 0
    let hi = seen.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      const other = seen[mid]
      let order: number
      try {
        order = native.kcmpFileAcross(other.pid, other.fd, pid, fd)
      } catch (err) {
        throw new CkptError(`task ${pid}: fd ${fd}: cannot tell whether it shares a file with task ${other.pid} fd ${other.fd}: ${messageOf(err)}`)
      }
      if (order === 0) return { objref: other.objref, fresh: false }
      if (order === 1) lo = mid + 1 // the one seen comes first
      else if (order === 2) hi = mid
      else throw new CkptError(`task ${pid}: fd ${fd}: kcmp cannot order it against task ${other.pid} fd ${other.fd} (answer ${order})`)
    }
    const objref = asObjRef(++this.next)
    seen.splice(lo, 0, { pid, fd, objref })
    return { objref, fresh: true }
  }
}

/** Captures the file tables of `pids` (all frozen; tree order) as one table. */
export async function captureTreeFiles(pids: readonly Pid[], opts: { copy: boolean }): Promise<TreeFileTable> {
  // A lone process's POSIX locks are its own: they name no owner, as before trees.
  const claims = new TreeClaims(pids.length > 1)
  const files: FileDescription[] = []
  const fds = new Map<Pid, FdEntry[]>()
  // Every task's /proc reads at once; then each numbers its descriptions in tree order as it
  // starts (captureProbed numbers before its first await), and all are captured side by side.
  const probed = await Promise.all(pids.map((pid) => probeFileTable(pid)))
  // Every capture is waited for, failed or not, before the fds of descriptions in flight are
  // closed: those were captured whole through them, and no claim compares with them after.
  const outcomes = await Promise.allSettled(probed.map((task) => captureProbed(task, opts, claims)))
  for (const fd of claims.heldFds.splice(0)) native.close(fd)
  const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected')
  if (failed) throw failed.reason
  const tables = outcomes.map((o) => (o as PromiseFulfilledResult<FileTable>).value)
  tables.forEach((table, i) => {
    files.push(...table.files)
    fds.set(pids[i], table.fds)
  })
  // What needed every description (in flight too) to be captured.
  for (const file of files) handlerOf(file).concluded?.(file)
  for (const file of files) {
    const later = claims.laterLocks.get(file.objref)
    if (!later) continue
    file.locks = [...file.locks, ...later.locks]
    file.notCheckpointable ??= later.refused
  }
  files.sort((a, b) => a.objref - b.objref)
  return { files, fds }
}

/** Each task's view of a tree's table: its own fds over the whole tree's descriptions. */
export function taskFileTables(tree: Lazy<TreeFileTable>): (pid: Pid) => Lazy<FileTable> {
  return (pid) => lazy(async () => {
    const table = await tree()
    return { fds: table.fds.get(pid) ?? [], files: table.files }
  })
}
