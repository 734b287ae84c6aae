// `ckptfs check PID`: freezes the task for a moment, says for every fd and other resource
// whether it can be checkpointed and, if not, why (reference/001: decided at checkpoint
// time, at no cost while the task runs), and lets it run on.

import { Checkpoint } from './checkpoint'
import { asPid } from './model'

export async function checkProcess(pid: number): Promise<string[]> {
  const c = await Checkpoint.open(0, asPid(pid), 'lazy')
  try {
    const [table, threads, vmas, problems] = await Promise.all([c.task.fileTable(), c.task.threads(), c.task.vmas(), c.problems()])
    const byRef = new Map(table.files.map((f) => [f.objref, f]))
    const lines = table.fds.map((fd) => {
      const file = byRef.get(fd.objref)!
      const verdict = file.notCheckpointable ? `not checkpointable: ${file.notCheckpointable}` : 'ok'
      return `fd ${fd.fd}: ${file.type} ${file.target}: ${verdict}`
    })
    lines.push(`threads: ${threads.length}: ok`)
    const stored = vmas.reduce((sum, v) => sum + v.pages.size, 0)
    lines.push(`memory: ${vmas.length} mappings, ${stored} bytes to store: ok`)
    const processProblems = problems.filter((p) => !p.where.startsWith('files/'))
    for (const p of processProblems) lines.push(`${p.where}: not checkpointable: ${p.why}`)
    if (processProblems.length === 0) lines.push('process: ok')
    return lines
  } finally {
    await c.end('resume')
  }
}
