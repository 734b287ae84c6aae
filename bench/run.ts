// The benchmark suite (`npm run bench`): node dist/bench/run.js [fds|memory ...] [options]
//
//   fds       1. the file table tree (issue 3)
//   memory    2. memory: copy-mode stop time, lazy stop-to-ready, read throughput (issue 4)
//   restore   3. restore (issue 6)
//   leak      4. the server's RSS after --leak-early and --leak-cycles checkpoint/done cycles (issue 13)
//   compare   5. ckptfs and CRIU side by side (issue 16; needs CKPTFS_BENCH_CRIU=PATH of a criu binary)
//   tree      6. a lazy checkpoint of a process tree, its listing and status (issue 17)
//   (none)    all of them
//
// Options:
//   --fds N          fds of the target whose first listing is timed (default 10000)
//   --walk-fds N     fds of the target whose whole tree is walked (default 400; see the note
//                    the fds benchmark prints)
//   --walk-rounds N  walks of each server, alternating, the best shown (default 2)
//   --mem-mib N      MiB of the large memory target (default 1024)
//   --small-mib N    MiB of the small memory target (default 64)
//   --repeats N      repetitions of the copy and lazy checkpoints (default 3; the median shows)
//   --leak-cycles N  checkpoint/done cycles of the leak benchmark (default 5000)
//   --leak-early N   the cycle whose RSS is the baseline (default 500)
//   --leak-trim      also the RSS left at each mark once the server's allocator has given its
//                    free memory back (malloc_trim(0), called in the server with gdb)
//   --compare-mib N,N  MiB of the targets of the compare part (default 64,1024,4096; none: no
//                    memory targets, only the fds and tree parts)
//   --restore-mem-only  the restore part skips the 10,000-fd task
//   --tree-procs N   processes of the tree benchmark's target (default 100)
//   --profile        run the ckptfs server under node --cpu-prof and print where its time went
//
// Prints a table (date, machine, each figure, each ratio vs its target: meets or misses) and
// writes the same as markdown to bench/out/results.md. Every target process is started here
// and killed by PID; every mount is unmounted (which thaws what was frozen), even on failure.

import * as fs from 'fs'
import * as path from 'path'
import { cleanupAll, log, nowNs, outDir, repo, profileServersInto, seconds, type Options } from './common'
import { benchFds } from './fds'
import { benchMemory } from './memory'
import { benchRestore } from './restore'
import { benchLeak } from './leak'
import { benchCompare } from './compare'
import { benchTree } from './tree'
import { summariseProfiles } from './profile'
import { machineLines, markdownTable, Report, textTable, writeMarkdown } from './report'

const BENCHMARKS: Record<string, { title: string; run: (opts: Options, rep: Report) => Promise<void> }> = {
  fds: { title: '1. File table tree (issue 3)', run: benchFds },
  memory: { title: '2. Memory (issue 4)', run: benchMemory },
  restore: { title: '3. Restore (issue 6)', run: benchRestore },
  leak: { title: '4. Server memory over many checkpoints (issue 13)', run: benchLeak },
  compare: { title: '5. Side by side with CRIU (issue 16)', run: benchCompare },
  tree: { title: '6. Process trees (issue 17)', run: benchTree },
}

const USAGE = 'usage: node dist/bench/run.js [fds|memory|restore|leak|compare|tree ...] [--fds N] [--walk-fds N] [--walk-rounds N] [--mem-mib N] [--small-mib N] [--repeats N] [--leak-cycles N] [--leak-early N] [--leak-trim] [--compare-mib N,N] [--restore-mem-only] [--tree-procs N] [--profile]'

function parseArgs(argv: string[]): { names: string[]; opts: Options } {
  const opts: Options = { fds: 10_000, walkFds: 400, walkRounds: 2, memMib: 1024, smallMemMib: 64, repeats: 3, leakCycles: 5000, leakEarly: 500, leakTrim: false, profile: false, restoreFds: true, compareMibs: [64, 1024, 4096], treeProcs: 100 }
  const numeric: Record<string, keyof Options> = { '--fds': 'fds', '--walk-fds': 'walkFds', '--walk-rounds': 'walkRounds', '--mem-mib': 'memMib', '--small-mib': 'smallMemMib', '--repeats': 'repeats', '--leak-cycles': 'leakCycles', '--leak-early': 'leakEarly', '--tree-procs': 'treeProcs' }
  const names: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--profile') opts.profile = true
    else if (a === '--leak-trim') opts.leakTrim = true
    else if (a === '--restore-mem-only') opts.restoreFds = false
    else if (a === '--compare-mib') {
      const sizes = argv[++i] ?? ''
      opts.compareMibs = sizes === 'none' ? [] : sizes.split(',').map(Number)
      if (!opts.compareMibs.every((n) => Number.isInteger(n) && n > 0)) throw new Error('--compare-mib needs positive integers, comma-separated')
    }
    else if (a in numeric) {
      const n = Number(argv[++i])
      if (!Number.isInteger(n) || n <= 0) throw new Error(`${a} needs a positive integer`)
      ;(opts[numeric[a]] as number) = n
    } else if (a in BENCHMARKS) names.push(a)
    else throw new Error(`unknown argument ${a}`)
  }
  return { names: names.length ? names : Object.keys(BENCHMARKS), opts }
}

async function main(): Promise<void> {
  let parsed
  try {
    parsed = parseArgs(process.argv.slice(2))
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`)
    process.exitCode = 2
    return
  }
  const { names, opts } = parsed
  fs.mkdirSync(outDir, { recursive: true })
  const header = machineLines(repo)
  const t0 = nowNs()
  const rows: Report['rows'] = []
  const notes: string[] = []
  const profiles: string[] = []
  for (const name of names) {
    const profDir = path.join(outDir, 'prof', name)
    if (opts.profile) {
      fs.rmSync(profDir, { recursive: true, force: true })
      fs.mkdirSync(profDir, { recursive: true })
      profileServersInto(profDir)
    }
    log(`${name}: start`)
    const started = nowNs()
    const rep = new Report(BENCHMARKS[name].title)
    try {
      await BENCHMARKS[name].run(opts, rep)
    } catch (err) {
      log(`${name} failed: ${(err as Error).stack ?? String(err)}`)
      rep.rows.push({ section: rep.section, measure: `${name} benchmark`, result: 'failed', verdict: 'misses (failed)', note: (err as Error).message.replace(/\s*\n\s*/g, ' | ').slice(0, 400) })
    } finally {
      cleanupAll()
    }
    rows.push(...rep.rows)
    notes.push(...rep.notes)
    log(`${name}: done in ${seconds(started).toFixed(1)} s`)
    if (opts.profile) profiles.push(`${name}: ${summariseProfiles(profDir, repo)}`)
  }
  const elapsed = seconds(t0)
  const text = textTable(header, rows, notes, elapsed)
  process.stdout.write('\n' + text)
  let markdown = markdownTable(header, rows, notes, elapsed)
  if (profiles.length) {
    process.stdout.write('\n' + profiles.join('\n'))
    fs.writeFileSync(path.join(outDir, 'profile.txt'), profiles.join('\n'))
    markdown += '\n```\n' + profiles.join('\n') + '```\n'
  }
  writeMarkdown(path.join(outDir, 'results.md'), markdown)
  log(`wrote ${path.relative(process.cwd(), path.join(outDir, 'results.md'))}`)
  if (rows.some((r) => r.result === 'failed')) process.exitCode = 1
}

void main()
