// Benchmark 5, ckptfs side by side with CRIU (issue 16). When a CRIU binary is named by
// CKPTFS_BENCH_CRIU (e.g. /work/criu-build/criu/criu; CRIU 4.x), the same target program is
// run through both tools in one run, for each size of --compare-mib (64, 1024, 4096 MiB):
//   checkpoint: how long the task is stopped. CRIU: `criu dump -j` (the task is killed after
//     the dump, as by default), its own "Frozen time" (--display-stats); ckptfs: `ckptfs
//     checkpoint --copy`, the one long gap the target's clock thread sees (bench/memtarget.c).
//   restore: the whole command a user runs, from a copy saved on /dev/shm: `criu restore -j -d`
//     and `ckptfs restore TREE --mount MNT` (node start-up included), each paired with one
//     restorefloor pass run just before it (bench/restore.ts says why).
// Without CKPTFS_BENCH_CRIU (or when it does not run) the part is skipped with a note.

import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import { buildC, ckptfsOk, log, MiB, mountCkptfs, nowNs, q, scratchDir, sleep, startTarget, timeSh, timeShOk, type Options } from './common'
import { gaps, stopIn } from './memory'
import { fmtS, fmtX, Report } from './report'
import { commandWay, pairedWithFloor, waitGone, type RestoreWay } from './restore'

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
  const memtarget = buildC('memtarget')
  const floorBin = buildC('restorefloor')
  const work = scratchDir('ckptfs-bench-')
  const shm = scratchDir('ckptfs-bench-', '/dev/shm')
  const { mnt, unmount } = await mountCkptfs(work)
  try {
    for (const mib of opts.compareMibs) {
      try {
        await compareSize(rep, opts, mib, criu, memtarget, floorBin, mnt, shm)
      } finally {
        fs.rmSync(shm, { recursive: true, force: true }) // a 4 GiB copy of each must not stay
        fs.mkdirSync(shm, { mode: 0o700 })
      }
    }
  } finally {
    unmount()
  }
  rep.note('not compared yet: a 10,000-fd process and a 100-process tree (ckptfs checkpoints one process per checkpoint on this branch); CRIU\'s lazy restore (criu lazy-pages) is not run')
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
  const criuRestore = await pairedWithFloor(criuWay, c.pid, criuVerify, floorBin, len)

  // ckptfs: a --copy checkpoint (the stop is seen by the target), saved, killed, restored.
  log(`compare: ckptfs, ${size}`)
  const t = await startTarget(memtarget, [String(mib)], 300_000)
  const verify = verifier(floorBin, t.lines)
  await gaps(t) // forget older gaps
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
        `${fmtX(ours / theirs)}; ckptfs: \`checkpoint --copy\` (the data then stays in the server until done; the target's own clock); CRIU: \`criu dump\` "Frozen time" (pages written to /dev/shm)`)
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
  const ours = await pairedWithFloor(commandWay('`ckptfs restore TREE --mount MNT`', [tree, '--mount', mnt]), t.pid, verify, floorBin, len)
  const ratio = ours.seconds / criuRestore.seconds
  rep.check(`restore of ${size}, the whole command`, `ckptfs ${fmtS(ours.seconds)}, CRIU ${fmtS(criuRestore.seconds)}`, '<= 1.0x CRIU', ratio <= 1, fmtX(ratio),
    `${fmtX(ratio)}; floor passes run just before each: ckptfs ${fmtS(ours.paired)} (${fmtX(ours.seconds / ours.paired)}), CRIU ${fmtS(criuRestore.paired)} (${fmtX(criuRestore.seconds / criuRestore.paired)}); both restored the saved PID, memory checked`)
  void opts
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
