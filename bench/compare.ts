// Benchmark 5, ckptfs side by side with CRIU (issue 16). When a CRIU binary is named by
// CKPTFS_BENCH_CRIU (e.g. /work/criu-build/criu/criu; CRIU 4.x), the same target program is
// run through both tools in one run, for each size of --compare-mib (64, 1024, 4096 MiB):
//   checkpoint: how long the task is stopped. CRIU: `criu dump -j` (the task is killed after
//     the dump, as by default), its own "Frozen time" (--display-stats); ckptfs: `ckptfs
//     checkpoint --copy`, the one long gap the target's clock thread sees (bench/memtarget.c).
//   restore: the whole command a user runs, from a copy saved on /dev/shm: `criu restore -j -d`
//     and `ckptfs restore TREE --mount MNT` (node start-up included), each paired with one
//     restorefloor pass run just before it (bench/restore.ts says why), --repeats rounds
//     interleaved (ckptfs, CRIU, ckptfs, CRIU, ...) so both see the same machine.
//   a process holding --fds fds (bench/fdtarget.c): the whole restore command of each tool,
//     interleaved the same way (unless --restore-mem-only).
//   a tree of --tree-procs processes (bench/treetarget.c, as the tree benchmark): the whole
//     checkpoint command of each (CRIU's "Frozen time" beside it; ckptfs `checkpoint --copy`,
//     whose tasks are stopped no longer than the command runs), then the whole restore command
//     of each from a copy on /dev/shm, interleaved, every process of the tree checked back
//     (unless --restore-mem-only).
// Without CKPTFS_BENCH_CRIU (or when it does not run) the part is skipped with a note.
// Every figure is printed with the load average at its start (the machine is shared).

import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import { descendantsOf, lifeState, waitUntil } from '../lib/lifecycle'
import { buildC, ckptfs, ckptfsOk, log, MiB, onCleanup, processState, mountCkptfs, nowNs, q, scratchDir, sleep, startTarget, timeSh, timeShOk, type Options } from './common'
import { gaps, stopIn } from './memory'
import { fmtN, fmtS, fmtX, Report } from './report'
import { commandWay, pairedWithFloor, saveAndKill, waitGone, type RestoreWay } from './restore'

const sizeText = (mib: number) => (mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`)

export async function benchCompare(opts: Options, rep: Report): Promise<void> {
  const criu = process.env.CKPTFS_BENCH_CRIU
  if (!criu) {
    rep.note('skipped: CKPTFS_BENCH_CRIU is not set (the path of a CRIU 4.x binary, e.g. a build of github:checkpoint-restore/criu)')
    return
  }
  const version = spawnSync(criu, ['--version'], { encoding: 'utf8' })
  if (version.status !== 0) {
    rep.note(`skipped: ${criu} --version exited ${version.status ?? version.error?.message}`)
    return
  }
  rep.ref('CRIU', version.stdout.trim().split('\n').join(', '), criu)
  rep.ref('ckptfs start-up', fmtS(ckptfsOk('--help').seconds), `\`ckptfs --help\` (node's own start-up and the CLI's first module), ${loadAverage()}`)
  const memtarget = buildC('memtarget')
  const floorBin = buildC('restorefloor')
  const work = scratchDir('ckptfs-bench-')
  const shm = scratchDir('ckptfs-bench-', '/dev/shm')
  const { mnt, unmount } = await mountCkptfs(work)
  try {
    const parts: Array<() => Promise<void>> = opts.compareMibs.map((mib) => () => compareSize(rep, opts, mib, criu, memtarget, floorBin, mnt, shm))
    if (opts.restoreFds) parts.push(() => compareFds(rep, opts, criu, work, mnt, shm))
    if (opts.restoreFds && opts.treeProcs > 1) parts.push(() => compareTree(rep, opts, criu, work, mnt, shm))
    for (const part of parts) {
      try {
        await part()
      } finally {
        fs.rmSync(shm, { recursive: true, force: true }) // a 4 GiB copy of each must not stay
        fs.mkdirSync(shm, { mode: 0o700 })
      }
    }
  } finally {
    unmount()
  }
  rep.note('not compared yet: CRIU\'s lazy restore (criu lazy-pages) is not run')
}

/** The 1, 5 and 15 minute load averages, for the figures measured from now on. */
function loadAverage(): string {
  return `load ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`
}

async function compareSize(rep: Report, opts: Options, mib: number, criu: string, memtarget: string, floorBin: string, mnt: string, shm: string): Promise<void> {
  const size = sizeText(mib)
  const len = mib * MiB

  // CRIU: dump (kills the task), then restore detached.
  log(`compare: CRIU, ${size}`)
  const c = await startTarget(memtarget, [String(mib)], 300_000)
  const criuVerify = verifier(floorBin, c.lines)
  const images = path.join(shm, `criu-${mib}`)
  fs.mkdirSync(images)
  const dump = timeSh(`${q(criu)} dump -t ${c.pid} -D ${q(images)} -j --display-stats -o dump.log`, { stdout: true })
  if (dump.status !== 0) throw new Error(`criu dump exited ${dump.status}: see ${images}/dump.log`)
  const frozen = /Frozen time: ([0-9]+) us/.exec(dump.stdout)
  await waitGone(c.pid, 60_000)
  c.kill()
  const criuWay: RestoreWay = {
    label: '`criu restore -j -d`',
    run: async () => {
      const r = timeSh(`${q(criu)} restore -D ${q(images)} -j -d -o restore.log`)
      if (r.status !== 0) throw new Error(`criu restore exited ${r.status}: see ${images}/restore.log`)
      return { pid: c.pid, seconds: r.seconds }
    },
    cleanUp: () => undefined,
  }

  // ckptfs: a --copy checkpoint (the stop is seen by the target), saved, killed, restored.
  log(`compare: ckptfs, ${size}`)
  const t = await startTarget(memtarget, [String(mib)], 300_000)
  const verify = verifier(floorBin, t.lines)
  let tree: string
  if (mib > COPY_MAX_MIB) {
    // A --copy checkpoint's buffer is one node Buffer: 4 GiB + 2% is over node 20's limit
    // (4 GiB), and allocTouched then aborts the server (a double free, seen on 2026-12-07).
    // Above 1 GiB the tree is saved from a lazy checkpoint and no stop time is compared.
    tree = (await saveAndKill(t, mnt, shm, `ckptfs-${mib}`)).tree
    rep.note(`checkpoint of ${size}: stop time not compared (\`checkpoint --copy\` of ${size} needs one buffer over node's 4 GiB Buffer limit, and the server aborts; saved from a lazy checkpoint instead)`)
  } else tree = await copyCheckpoint(rep, t, mnt, shm, mib, size, frozen)
  await restoreRounds(rep, opts, mib, size, len, tree, t.pid, verify, c.pid, criuVerify, criuWay, floorBin, mnt)
}

/** Biggest target checkpointed with --copy (see compareSize). */
const COPY_MAX_MIB = 1024

/** A --copy checkpoint of `t`, its stop time compared with CRIU's "Frozen time", saved on `shm` and ended with kill; returns the saved tree. */
async function copyCheckpoint(rep: Report, t: Awaited<ReturnType<typeof startTarget>>, mnt: string, shm: string, mib: number, size: string, frozen: RegExpExecArray | null): Promise<string> {
  await gaps(t) // forget older gaps
  const stopLoad = loadAverage()
  const t0 = nowNs()
  const dir = ckptfsOk('checkpoint', String(t.pid), '--mount', mnt, '--copy').stdout.trim()
  const t1 = nowNs()
  const tree = path.join(shm, `ckptfs-${mib}`)
  try {
    await sleep(100)
    const stop = stopIn(await gaps(t), t0, t1)
    const problems = fs.readFileSync(path.join(dir, 'problems'), 'utf8').trim()
    if (problems) throw new Error(`the checkpoint lists problems: ${problems.split('\n')[0]}`)
    timeShOk(`cp -a ${q(dir)} ${q(tree)}`)
    if (stop && frozen) {
      const ours = Number(stop.len) / 1e9
      const theirs = Number(frozen[1]) / 1e6
      rep.check(`checkpoint of ${size}: time the task is stopped`, `ckptfs ${fmtS(ours)}, CRIU ${fmtS(theirs)}`, '<= 1.0x CRIU', ours <= theirs, `${fmtX(ours / theirs)}`,
        `${fmtX(ours / theirs)}; ${stopLoad}; ckptfs: \`checkpoint --copy\` (the data then stays in the server until done; the target's own clock); CRIU: \`criu dump\` "Frozen time" (pages written to /dev/shm)`)
    } else rep.failed(`checkpoint of ${size}: time the task is stopped`, stop ? 'criu dump printed no Frozen time' : 'the target saw no stop')
  } finally {
    try {
      fs.writeFileSync(path.join(dir, 'done'), 'kill\n')
    } catch (err) {
      log(`${dir}/done: ${(err as Error).message}`)
    }
  }
  await waitGone(t.pid, 60_000)
  t.kill()
  return tree
}

/** --repeats rounds of the two restores, interleaved: ckptfs, CRIU, ckptfs, CRIU, ... */
async function restoreRounds(rep: Report, opts: Options, mib: number, size: string, len: number, tree: string, pid: number, verify: (pid: number) => void,
  criuPid: number, criuVerify: (pid: number) => void, criuWay: RestoreWay, floorBin: string, mnt: string): Promise<void> {
  const ckptfsWay = commandWay('`ckptfs restore TREE --mount MNT`', [tree, '--mount', mnt])
  const rounds = Math.max(1, opts.repeats)
  // Above 1 GiB the floor pass and its warm-up would hold 3-4 times the size next to both
  // saved copies (24 GiB here, shared): those rounds run without it.
  const withFloor = mib <= 1024
  for (let i = 0; i < rounds; i++) {
    const load = loadAverage()
    const ours = await pairedWithFloor(ckptfsWay, pid, verify, floorBin, len, withFloor)
    const theirs = await pairedWithFloor(criuWay, criuPid, criuVerify, floorBin, len, withFloor)
    const ratio = ours.seconds / theirs.seconds
    const floors = withFloor
      ? `floor passes run just before each: ckptfs ${fmtS(ours.paired)} (${fmtX(ours.seconds / ours.paired)}), CRIU ${fmtS(theirs.paired)} (${fmtX(theirs.seconds / theirs.paired)})`
      : 'no floor pass (too big to hold next to the saved copies)'
    rep.check(`restore of ${size}, the whole command${rounds > 1 ? ` #${i + 1}` : ''}`, `ckptfs ${fmtS(ours.seconds)}, CRIU ${fmtS(theirs.seconds)}`, '<= 1.0x CRIU', ratio <= 1, fmtX(ratio),
      `${fmtX(ratio)}; ${load}; ${floors}; both restored the saved PID, memory checked`)
  }
}

/**
 * A process holding --fds fds (bench/fdtarget.c) through both tools: each dumps its own
 * target (CRIU kills it, ckptfs saves a copy and kills it through done), then the whole
 * restore commands run interleaved, each checked by its count of fds.
 */
async function compareFds(rep: Report, opts: Options, criu: string, work: string, mnt: string, shm: string): Promise<void> {
  const fdtarget = buildC('fdtarget')
  const files = path.join(work, `files-${opts.fds}`)
  fs.mkdirSync(files, { recursive: true })
  log(`compare: CRIU, ${opts.fds} fds`)
  const c = await startTarget(fdtarget, [String(opts.fds), files])
  const held = fs.readdirSync(`/proc/${c.pid}/fd`).length
  const images = path.join(shm, 'criu-fds')
  fs.mkdirSync(images)
  const dump = timeSh(`${q(criu)} dump -t ${c.pid} -D ${q(images)} -j -o dump.log`)
  if (dump.status !== 0) throw new Error(`criu dump exited ${dump.status}: see ${images}/dump.log`)
  await waitGone(c.pid, 60_000)
  c.kill()
  log(`compare: ckptfs, ${opts.fds} fds`)
  const t = await startTarget(fdtarget, [String(opts.fds), files])
  const saved = await saveAndKill(t, mnt, shm, 'fds')
  const checked = async (label: string, pid: number, run: () => { status: number; seconds: number; stdout: string }): Promise<number> => {
    let restored = false
    const forget = onCleanup(`kill restored ${pid}`, () => {
      if (restored && processState(pid) !== undefined) process.kill(pid, 'SIGKILL')
    })
    try {
      log(`compare: ${label}`)
      const r = run()
      restored = processState(pid) !== undefined
      if (r.status !== 0) throw new Error(`${label} exited ${r.status}`)
      const n = fs.readdirSync(`/proc/${pid}/fd`).length
      if (n !== held) throw new Error(`${label}: the restored ${pid} holds ${n} fds, the saved ${held}`)
      process.kill(pid, 'SIGKILL')
      await waitGone(pid, 120_000)
      return r.seconds
    } finally {
      forget()
      await waitGone(pid, 120_000).catch((err) => log((err as Error).message))
    }
  }
  for (let i = 0; i < Math.max(1, opts.repeats); i++) {
    const load = loadAverage()
    const ours = await checked('`ckptfs restore TREE --mount MNT`', t.pid, () => ckptfs('restore', saved.tree, '--mount', mnt))
    const theirs = await checked('`criu restore -j -d`', c.pid, () => timeSh(`${q(criu)} restore -D ${q(images)} -j -d -o restore.log`))
    const ratio = ours / theirs
    rep.check(`restore of a process with ${fmtN(held)} fds, the whole command${opts.repeats > 1 ? ` #${i + 1}` : ''}`, `ckptfs ${fmtS(ours)}, CRIU ${fmtS(theirs)}`, '<= 1.0x CRIU', ratio <= 1, fmtX(ratio),
      `${fmtX(ratio)}; ${load}; saved copies on /dev/shm; each restored the saved PID with ${fmtN(held)} fds`)
  }
}

/** Checks the restored target's memory against the pattern memtarget wrote (its ready line). */
function verifier(floorBin: string, lines: string[]): (pid: number) => void {
  const ready = lines.find((l) => l.startsWith('ready'))!
  const addr = /addr=(0x[0-9a-f]+)/.exec(ready)![1]
  const len = /len=([0-9]+)/.exec(ready)![1]
  return (pid) => {
    const v = spawnSync(floorBin, ['verify', String(pid), addr, len], { encoding: 'utf8', timeout: 300_000 })
    if (v.status !== 0) throw new Error(`the restored memory of ${pid} is wrong: ${v.stdout.trim()} ${v.stderr.trim()}`)
  }
}

/**
 * A tree of --tree-procs processes through both tools: each checkpoints its own tree (CRIU
 * dumps and kills it; ckptfs makes a --copy checkpoint, copies it out and ends it with kill),
 * then the whole restore commands run interleaved, each checked by every PID of the tree
 * being back, and the restored tree killed before the next.
 */
async function compareTree(rep: Report, opts: Options, criu: string, work: string, mnt: string, shm: string): Promise<void> {
  const n = opts.treeProcs
  const bin = buildC('treetarget')
  const treeOf = (root: number) => [root, ...descendantsOf(root)]
  const gone = async (pids: number[]) => {
    if (!(await waitUntil(() => pids.every((p) => lifeState(p) === 'gone'), { limitMs: 60_000 }))) throw new Error(`compare: the ${n}-process tree is not gone 60 s after it was killed`)
  }
  const killTree = (root: number) => {
    for (const p of [...descendantsOf(root).reverse(), root]) {
      try {
        process.kill(p, 'SIGKILL')
      } catch {
        // gone
      }
    }
  }

  // Each tool's tree in a work directory of its own (the target opens WORKDIR/shared.log).
  const startTree = async (name: string) => {
    const dir = path.join(work, name)
    fs.mkdirSync(dir)
    const target = await startTarget(bin, [String(n), dir])
    return { target, pids: treeOf(target.pid) }
  }

  log(`compare: CRIU, a ${n}-process tree`)
  const { target: c, pids: cPids } = await startTree('tree-criu')
  const images = path.join(shm, 'criu-tree')
  fs.mkdirSync(images)
  const dumpLoad = loadAverage()
  const dump = timeSh(`${q(criu)} dump -t ${c.pid} -D ${q(images)} -j --display-stats -o dump.log`, { stdout: true })
  if (dump.status !== 0) {
    killTree(c.pid)
    c.kill()
    throw new Error(`criu dump of the tree exited ${dump.status}: see ${images}/dump.log`)
  }
  const frozen = /Frozen time: ([0-9]+) us/.exec(dump.stdout)
  await gone(cPids)
  c.kill()

  log(`compare: ckptfs, a ${n}-process tree`)
  const { target: t, pids: tPids } = await startTree('tree-ckptfs')
  const saved = path.join(shm, 'ckptfs-tree')
  let checkpoint
  try {
    const ckptLoad = loadAverage()
    checkpoint = ckptfsOk('checkpoint', String(t.pid), '--mount', mnt, '--copy')
    const dir = checkpoint.stdout.trim()
    try {
      const problems = fs.readFileSync(path.join(dir, 'problems'), 'utf8').trim()
      if (problems) throw new Error(`the tree's checkpoint lists problems: ${problems.split('\n')[0]}`)
      timeShOk(`cp -a ${q(dir)} ${q(saved)}`)
    } finally {
      fs.writeFileSync(path.join(dir, 'done'), 'kill\n')
    }
    const theirs = frozen ? `CRIU frozen ${fmtS(Number(frozen[1]) / 1e6)} (\`criu dump\` ${fmtS(dump.seconds)} in all)` : `\`criu dump\` ${fmtS(dump.seconds)} (no Frozen time printed)`
    rep.ref(`checkpoint of a ${n}-process tree`, `ckptfs ${fmtS(checkpoint.seconds)}, ${theirs}`,
      `ckptfs: the whole \`checkpoint --copy\` command (its tasks are stopped at most that long; they resume or end at done); ${ckptLoad}; CRIU: ${dumpLoad}, images on /dev/shm`)
  } finally {
    killTree(t.pid)
    await gone(tPids).catch((err) => log((err as Error).message))
    t.kill()
  }

  const round = async (label: string, root: number, pids: number[], run: () => { status: number; seconds: number }): Promise<number> => {
    const forget = onCleanup(`kill the restored tree of ${root}`, () => killTree(root))
    try {
      log(`compare: ${label}`)
      const r = run()
      const back = pids.filter((p) => lifeState(p) !== 'gone').length
      if (r.status !== 0) throw new Error(`${label} exited ${r.status}`)
      if (back !== pids.length) throw new Error(`${label}: ${back} of the tree's ${pids.length} processes are back`)
      return r.seconds
    } finally {
      killTree(root)
      forget()
      await gone(pids).catch((err) => log((err as Error).message))
    }
  }
  for (let i = 0; i < Math.max(1, opts.repeats); i++) {
    const load = loadAverage()
    const ours = await round('`ckptfs restore TREE --mount MNT` of the tree', t.pid, tPids, () => ckptfs('restore', saved, '--mount', mnt))
    const theirs = await round('`criu restore -j -d` of the tree', c.pid, cPids, () => timeSh(`${q(criu)} restore -D ${q(images)} -j -d -o restore.log`))
    const ratio = ours / theirs
    rep.check(`restore of a ${n}-process tree, the whole command${opts.repeats > 1 ? ` #${i + 1}` : ''}`, `ckptfs ${fmtS(ours)}, CRIU ${fmtS(theirs)}`, '<= 1.0x CRIU', ratio <= 1, fmtX(ratio),
      `${fmtX(ratio)}; ${load}; saved copies on /dev/shm; every process of the tree back with its PID`)
  }
}
