// 4. Server memory over many checkpoints (issue 13): the server's RSS after `--leak-early`
// (default 500) and after `--leak-cycles` (default 5,000) checkpoint/done cycles of one small
// target, read from /proc/SERVER/status (each the median of readings over the next 100 cycles).
// Target: within 5 MB. One cycle is what a script does:
// write "PID" to MNT/checkpoint, read by-pid/PID for the name, write "1" to checkpoint-N/done.
// A lazy checkpoint captures the whole task (its problems are checked before the write
// returns), so every cycle freezes, reads /proc and the file table, and thaws.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import { serversOf } from '../mount/cli'
import { log, median, mountCkptfs, nowNs, outDir, repo, scratchDir, seconds, startTarget, type Options } from './common'
import { fmtN, fmtS, type Report } from './report'

const TARGET_MB = 5
const SAMPLES = 11
const SAMPLE_EVERY = 10

/** VmRSS of `pid` in KiB. */
function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+([0-9]+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!m) throw new Error(`/proc/${pid}/status: no VmRSS line`)
  return Number(m[1])
}

/**
 * The RSS of `pid` after glibc's malloc_trim(0) has returned every free page of its heaps to
 * the kernel, called in the process with gdb (the server cannot be asked to do it itself).
 */
function trimmedRssKiB(pid: number): number {
  execFileSync('gdb', ['-p', String(pid), '-batch', '-ex', 'call (int)malloc_trim(0)'], { stdio: 'ignore', timeout: 120_000 })
  return rssKiB(pid)
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
    const cycle = (i: number) => {
      fs.writeFileSync(path.join(mnt, 'checkpoint'), `${target.pid}\n`)
      const name = fs.readFileSync(path.join(mnt, 'by-pid', String(target.pid)), 'utf8').trim()
      if (!/^checkpoint-[0-9]+$/.test(name)) throw new Error(`cycle ${i}: by-pid/${target.pid} says ${JSON.stringify(name)}`)
      fs.writeFileSync(path.join(mnt, name, 'done'), '1\n')
    }
    // One reading moves by 1-2 MB with where V8's young generation happens to be (a garbage
    // collection frees it), so each mark is the median of SAMPLES readings, one every
    // SAMPLE_EVERY cycles from the mark on.
    const samples = new Map<number, number[]>()
    const t0 = nowNs()
    const last = total + SAMPLES * SAMPLE_EVERY
    const trimmed = new Map<number, number>()
    for (let i = 1; i <= last; i++) {
      cycle(i)
      for (const mark of [early, total]) {
        if (i >= mark && i < mark + SAMPLES * SAMPLE_EVERY && (i - mark) % SAMPLE_EVERY === 0) samples.set(mark, [...(samples.get(mark) ?? []), rssKiB(server)])
        if (opts.leakTrim && i === mark + (SAMPLES - 1) * SAMPLE_EVERY) trimmed.set(mark, trimmedRssKiB(server))
      }
      if (i % 1000 === 0) log(`leak: ${fmtN(i)} cycles, server RSS ${fmtN(rssKiB(server))} KiB`)
    }
    const atEarly = median(samples.get(early)!)
    const atEnd = median(samples.get(total)!)
    const elapsed = seconds(t0)
    const growthMb = (atEnd - atEarly) / 1024
    rep.ref('server RSS at start', `${fmtN(start)} KiB`)
    const spread = (mark: number) => `${fmtN(Math.min(...samples.get(mark)!))}-${fmtN(Math.max(...samples.get(mark)!))}`
    rep.ref(`server RSS after ${fmtN(early)} cycles (median of ${SAMPLES})`, `${fmtN(atEarly)} KiB (${spread(early)})`)
    rep.ref(`server RSS after ${fmtN(total)} cycles (median of ${SAMPLES})`, `${fmtN(atEnd)} KiB (${spread(total)})`)
    rep.check(`RSS growth, ${fmtN(early)} -> ${fmtN(total)} cycles`, `${growthMb.toFixed(1)} MB (${Math.round(((atEnd - atEarly) * 1024) / (total - early))} B/cycle)`,
      `<= ${TARGET_MB} MB`, growthMb <= TARGET_MB, `${(growthMb - TARGET_MB).toFixed(1)} MB over`, `${fmtN(total)} cycles in ${fmtS(elapsed)}`)
    if (opts.leakTrim) {
      // What the server keeps once its allocator has returned every free page: a leak stays, a
      // heap that is only fragmented or kept for reuse goes.
      const kept = (trimmed.get(total)! - trimmed.get(early)!) / 1024
      rep.ref(`server RSS after malloc_trim(0), ${fmtN(early)} / ${fmtN(total)} cycles`, `${fmtN(trimmed.get(early)!)} / ${fmtN(trimmed.get(total)!)} KiB`)
      rep.check(`RSS growth after malloc_trim(0), ${fmtN(early)} -> ${fmtN(total)} cycles`, `${kept.toFixed(1)} MB`, `<= ${TARGET_MB} MB`, kept <= TARGET_MB, `${(kept - TARGET_MB).toFixed(1)} MB over`, 'the trim at the first mark changes what follows: compare runs without --leak-trim for the RSS row')
    }
  } finally {
    target.kill()
    unmount()
  }
}
