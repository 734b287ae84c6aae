// `ckptfs check PID`: freezes the task and its descendants for a moment, says for every fd and
// other resource whether it can be checkpointed and, if not, why (reference/001: decided at
// checkpoint time, at no cost while the task runs), and lets them run on.

import { Checkpoint } from './checkpoint'
import { asPid } from './model'

export async function checkProcess(pid: number): Promise<string[]> {
  const c = await Checkpoint.open(0, asPid(pid), 'lazy')
  try {
    const problems = await c.problems()
    // A lone process is reported as it always was; in a tree each line names its task.
    const inTree = c.tree.tasks.length + c.tree.zombies.length > 1
    const lines: string[] = []
    for (const task of c.tree.tasks) {
      const prefix = inTree ? `task ${task.pid}: ` : ''
      const [table, threads, vmas] = await Promise.all([task.fileTable(), task.threads(), task.vmas()])
      const byRef = new Map(table.files.map((f) => [f.objref, f]))
      for (const fd of table.fds) {
        const file = byRef.get(fd.objref)!
        const verdict = file.notCheckpointable ? `not checkpointable: ${file.notCheckpointable}` : 'ok'
        lines.push(`${prefix}fd ${fd.fd}: ${file.type} ${file.target}: ${verdict}`)
      }
      lines.push(`${prefix}threads: ${threads.length}: ok`)
      const stored = vmas.reduce((sum, v) => sum + v.pages.size, 0)
      lines.push(`${prefix}memory: ${vmas.length} mappings, ${stored} bytes to store: ok`)
    }
    for (const z of c.tree.zombies) lines.push(`task ${z.pid}: zombie (child of ${z.ppid}, exit status ${z.exitStatus})`)
    const processProblems = problems.filter((p) => !p.where.startsWith('files/'))
    for (const p of processProblems) lines.push(`${p.where}: not checkpointable: ${p.why}`)
    if (processProblems.length === 0) lines.push(inTree ? 'processes: ok' : 'process: ok')
    return lines
  } finally {
    await c.end('resume')
  }
}
