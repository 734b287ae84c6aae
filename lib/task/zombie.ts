// task-PID/ of a zombie: a process of the tree that has exited and waits for its parent (also
// of the tree) to reap it. Only what makes it again is kept: its place in the tree and the
// status its parent's wait will get. Public, as /proc/PID/stat shows all of it to every user.

import type { ZombieTask } from '../model'
import { attr, PUBLIC, tableDir, type DirNode, type Scope, type TableEntry } from '../tree/node'

const ZOMBIE_ENTRIES: TableEntry<ZombieTask>[] = [
  attr('comm', (z) => z.comm, PUBLIC),
  attr('ppid', (z) => z.ppid, PUBLIC),
  attr('pgid', (z) => z.pgid, PUBLIC),
  attr('sid', (z) => z.sid, PUBLIC),
  attr('zombie', () => 1, PUBLIC),
  attr('exit_status', (z) => z.exitStatus, PUBLIC),
]

export function zombieDir(zombie: ZombieTask, scope: Scope): DirNode {
  return tableDir(zombie, ZOMBIE_ENTRIES, scope, PUBLIC)
}
