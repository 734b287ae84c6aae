// task-PID/ of a zombie: a process of the tree that has exited and waits for its parent (also
// of the tree) to reap it. Only what makes it again is kept: its place in the tree and the
// status its parent's wait will get. Public, as /proc/PID/stat shows all of it to every user.

import { INT_MAX, SavedDir, type StoredDir } from '../files/saved'
import { asPid, type ZombieTask } from '../model'
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

/** Reads a saved zombie's task-PID/ back; its values are checked with the tree (lib/restore/validate.ts). */
export function loadZombie(root: StoredDir, taskDirName: string): ZombieTask {
  const pid = Number(taskDirName.slice('task-'.length))
  const dir = new SavedDir(root, '').dir(taskDirName)
  if (dir.text('zombie') !== '1') throw dir.fail('zombie', 'expected 1 (a task-PID/ with a zombie file is a zombie)')
  const zombie: ZombieTask = {
    pid: asPid(pid),
    comm: dir.text('comm'),
    ppid: dir.int('ppid', 0, INT_MAX),
    pgid: dir.int('pgid', 0, INT_MAX),
    sid: dir.int('sid', 0, INT_MAX),
    exitStatus: dir.int('exit_status', 0, 0xffff),
  }
  dir.finish()
  return zombie
}
