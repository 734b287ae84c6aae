// task-PID/ of a checkpoint: one table over the TaskImage. Each part (process, threads,
// memory) is captured on first need, so listing the directory captures nothing.

import type { TaskImage } from '../model'
import { PUBLIC, sub, tableDir, type DirNode, type Scope, type TableEntry } from '../tree/node'
import { memoryEntries } from './memory'
import { processEntries } from './process'
import { threadsEntry } from './threads'

const TASK_ENTRIES: TableEntry<TaskImage>[] = [
  ...processEntries(),
  threadsEntry(),
  sub('memory', (t: TaskImage) => t, memoryEntries()),
]

/**
 * task-PID/, with `fds` (the file-table developer's fds/ node) included as it is. Listable by
 * everyone, as /proc/PID is; memory/ and fds/ inside it are private (lib/tree/node.ts, Access).
 */
export function taskDir(task: TaskImage, scope: Scope, fds: DirNode): DirNode {
  return tableDir(task, [...TASK_ENTRIES, { name: 'fds', make: () => fds }], scope, PUBLIC)
}
