// 4. Server memory over many checkpoints (issue 13): the server's RSS after `--leak-early`
// (default 500) and after `--leak-cycles` (default 5,000) checkpoint/done cycles of one small
// target, read from /proc/SERVER/status. Target: within 5 MB. One cycle is what a script does:
// write "PID" to MNT/checkpoint, read by-pid/PID for the name, write "1" to checkpoint-N/done.
// A lazy checkpoint captures the whole task (its problems are checked before the write
// returns), so every cycle freezes, reads /proc and the file table, and thaws.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import { serversOf } from '../mount/cli'
import { log, mountCkptfs, nowNs, outDir, repo, scratchDir, seconds, startTarget, type Options } from './common'
import { fmtN, fmtS, type Report } from './report'

const TARGET_MB = 5

/** VmRSS of `pid` in KiB. */
function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+([0-9]+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!m) throw new Error(`/proc/${pid}/status: no VmRSS line`)
  return Number(m[1])
}

/** examples/counter.c, built into bench/out (the target every example uses). */
function buildCounter(): string {
  const src = path.join(repo, 'examples', 'counter.c')
  const out = path.join(outDir, 'counter')
  fs.mkdirSync(outDir, { recursive: true })
  if (!fs.existsSync(out) || fs.statSync(out).mtimeMs < fs.statSync(src).mtimeMs) execFileSync('gcc', ['-O2', '-Wall', '-o', out, src], { stdio: 'inherit' })
  return out
}

export async function benchLeak(opts: Options, rep: Report): Promise<void> {
  const early = opts.leakEarly
  const total = opts.leakCycles
  if (early >= total) throw new Error(`--leak-early (${early}) must be below --leak-cycles (${total})`)
  const dir = scratchDir('ckptfs-bench-leak-')
  const { mnt, unmount } = await mountCkptfs(dir)
  const servers = serversOf(mnt)
  if (servers.length !== 1) throw new Error(`${mnt}: expected one server process, found ${servers.length}`)
  const server = servers[0]
  const target = await startTarget(buildCounter(), [path.join(dir, 'count.log'), '50'])
  try {
    const start = rssKiB(server)
    let atEarly = 0
    const t0 = nowNs()
    for (let i = 1; i <= total; i++) {
      fs.writeFileSync(path.join(mnt, 'checkpoint'), `${target.pid}\n`)
      const name = fs.readFileSync(path.join(mnt, 'by-pid', String(target.pid)), 'utf8').trim()
      if (!/^checkpoint-[0-9]+$/.test(name)) throw new Error(`cycle ${i}: by-pid/${target.pid} says ${JSON.stringify(name)}`)
      fs.writeFileSync(path.join(mnt, name, 'done'), '1\n')
      if (i === early) atEarly = rssKiB(server)
      if (i % 1000 === 0) log(`leak: ${fmtN(i)} cycles, server RSS ${fmtN(rssKiB(server))} KiB`)
    }
    const atEnd = rssKiB(server)
    const elapsed = seconds(t0)
    const growthMb = (atEnd - atEarly) / 1024
    rep.ref('server RSS at start', `${fmtN(start)} KiB`)
    rep.ref(`server RSS after ${fmtN(early)} cycles`, `${fmtN(atEarly)} KiB`)
    rep.ref(`server RSS after ${fmtN(total)} cycles`, `${fmtN(atEnd)} KiB`)
    rep.check(`RSS growth, ${fmtN(early)} -> ${fmtN(total)} cycles`, `${growthMb.toFixed(1)} MB (${Math.round(((atEnd - atEarly) * 1024) / (total - early))} B/cycle)`,
      `<= ${TARGET_MB} MB`, growthMb <= TARGET_MB, `${(growthMb - TARGET_MB).toFixed(1)} MB over`, `${fmtN(total)} cycles in ${fmtS(elapsed)}`)
  } finally {
    target.kill()
    unmount()
  }
}
