// The file table in the tree: checkpoint-N/files/OBJREF/ (one directory per open file
// description, its entries chosen by the description's handler) and task-PID/fds/FD/.
// Listing either directory needs only the table itself, never per-file details.

import type { FdEntry, FileDescription, FileTable, Lazy } from '../model'
import { attr, DIR_PERM, tableDir, type DirNode, type Scope, type TableEntry } from '../tree/node'
import { handlerOf } from './index'

/** The files/OBJREF directory of one description; `scope` is that directory's own. */
export function descriptionDir(desc: FileDescription, scope: Scope): DirNode {
  return tableDir(desc, handlerOf(desc).entries(desc), scope)
}

const fdEntries: TableEntry<FdEntry>[] = [
  attr('fd_nr', (e) => e.fd),
  attr('coe', (e) => e.closeOnExec),
  attr('fd', (e) => e.objref),
]

/** The fds/FD directory of one fd; `scope` is that directory's own. */
export function fdDir(entry: FdEntry, scope: Scope): DirNode {
  return tableDir(entry, fdEntries, scope)
}

/** A directory with one subdirectory per keyed item, keys listed in the given order. */
function keyedDir<T>(items: () => Promise<Map<string, T>>, child: (item: T, scope: Scope) => DirNode, scope: Scope): DirNode {
  return {
    kind: 'dir',
    perm: DIR_PERM.private, // as /proc/PID/fd: the open files are the owner's business
    list: async () => [...(await items()).keys()],
    lookup: async (name) => {
      const item = (await items()).get(name)
      return item === undefined ? undefined : child(item, { key: `${scope.key}/${name}`, cache: scope.cache })
    },
  }
}

// One index per table, whoever asks (a FileTable is immutable once captured or loaded).
const byObjref = new WeakMap<FileTable, Map<string, FileDescription>>()
const byFd = new WeakMap<FileTable, Map<string, FdEntry>>()

function indexed<T>(cache: WeakMap<FileTable, Map<string, T>>, table: FileTable, build: (t: FileTable) => Array<[string, T]>): Map<string, T> {
  let index = cache.get(table)
  if (!index) cache.set(table, (index = new Map(build(table))))
  return index
}

/** checkpoint-N/files: one directory per description, by OBJREF; `scope` is the files directory's own. */
export function filesDir(table: Lazy<FileTable>, scope: Scope): DirNode {
  return keyedDir(async () => indexed(byObjref, await table(), (t) => t.files.map((d) => [String(d.objref), d])), descriptionDir, scope)
}

/**
 * task-PID/fds: one directory per fd number; `scope` is the fds directory's own. `names`, when
 * given (a frozen task), lists the fd numbers without capturing the table: sharing between
 * 10,000 fds takes a while to work out, and a listing does not need it.
 */
export function fdsDir(table: Lazy<FileTable>, scope: Scope, names?: () => Promise<number[]>): DirNode {
  const dir = keyedDir(async () => indexed(byFd, await table(), (t) => t.fds.map((e) => [String(e.fd), e])), fdDir, scope)
  return names ? { ...dir, list: async () => (await names()).map(String) } : dir
}
