// Summarises a V8 .cpuprofile (node --cpu-prof): self time by function and by source file,
// so a missed target can say where the server's JavaScript thread spent its time.

import * as fs from 'fs'
import * as path from 'path'

interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
  children?: number[]
}

interface CpuProfile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
  startTime: number
  endTime: number
}

function shortUrl(url: string, repo: string): string {
  if (!url) return ''
  const p = url.replace(/^file:\/\//, '')
  return p.startsWith(repo) ? path.relative(repo, p) : p.replace(/^.*node_modules\//, 'node_modules/')
}

/** The biggest profile in `dir` (the server's: it runs longest), summarised in a few lines. */
export function summariseProfiles(dir: string, repo: string, top = 15): string {
  if (!fs.existsSync(dir)) return `no profiles in ${dir}\n`
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).map((f) => path.join(dir, f))
  if (!files.length) return `no profiles in ${dir}\n`
  const file = files.sort((a, b) => fs.statSync(b).size - fs.statSync(a).size)[0]
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile
  const byId = new Map(prof.nodes.map((n) => [n.id, n]))
  const self = new Map<number, number>()
  prof.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0)))
  const total = [...self.values()].reduce((a, b) => a + b, 0)
  const byFn = new Map<string, number>()
  const byFile = new Map<string, number>()
  for (const [id, us] of self) {
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame
    const where = shortUrl(url, repo)
    const fn = `${functionName || '(anonymous)'}${where ? ` ${where}:${lineNumber + 1}` : ''}`
    byFn.set(fn, (byFn.get(fn) ?? 0) + us)
    const key = where || functionName
    byFile.set(key, (byFile.get(key) ?? 0) + us)
  }
  const lines = [`profile ${path.relative(repo, file)}: ${(total / 1e6).toFixed(1)} s sampled`]
  const list = (title: string, m: Map<string, number>) => {
    lines.push(`  ${title}:`)
    for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      lines.push(`    ${(us / 1e3).toFixed(0).padStart(7)} ms ${((100 * us) / total).toFixed(1).padStart(5)}%  ${k}`)
    }
  }
  list('self time by function', byFn)
  list('self time by file', byFile)
  return lines.join('\n') + '\n'
}
