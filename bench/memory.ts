// Benchmark 2, memory (issue 4), on targets with touched private anonymous memory
// (bench/memtarget.c, which also measures its own stop time):
//  (a) how long a --copy checkpoint keeps the task stopped, against the raw cost of copying
//      the same bytes with process_vm_readv (bench/rawcopy.c);
//  (b) lazy checkpoint stop-to-ready, on a small and a large target;
//  (c) reading the lazy checkpoint (cat image, cp -a) against a trivial fuse-native server
//      serving one file of the same size, and cat of a tmpfs file.

import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import {
  buildC, ckptfsOk, GiB, log, median, MiB, mountCkptfs, nowNs, processState, q, scratchDir, seconds, sleep, startTarget,
  startTrivialServer, timeShOk, treeTotals, type Options, type Target,
} from './common'
import { fmtMs, fmtN, fmtRate, fmtS, fmtX, over, Report, under } from './report'

const sizeText = (mib: number) => (mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`)

/** Adds its rows to `rep` as it goes, so a failure keeps what was measured. */
export async function benchMemory(opts: Options, rep: Report): Promise<void> {
  const memtarget = buildC('memtarget')
  const rawcopy = buildC('rawcopy')
  const work = scratchDir('ckptfs-bench-')
  const shm = scratchDir('ckptfs-bench-', '/dev/shm')
  log(`memory: starting a ${sizeText(opts.memMib)} target (touching its memory)`)
  const big = await startTarget(memtarget, [String(opts.memMib)], 180_000)
  try {
    const ready = big.lines.find((l) => l.startsWith('ready'))!
    const addr = /addr=(0x[0-9a-f]+)/.exec(ready)![1]
    const len = Number(/len=([0-9]+)/.exec(ready)![1])

    const raw = rawCopy(rawcopy, big, addr, len)
    rep.ref(`raw copy of ${sizeText(opts.memMib)}: process_vm_readv loop into a touched buffer`, fmtS(raw.first),
      `bench/rawcopy.c, 4 MiB calls, destination memset first; later passes into the same buffer: ${raw.passes.slice(1).map(fmtS).join(', ')}`)
    const { mnt, unmount } = await mountCkptfs(work)
    try {
      await copyStop(rep, opts, big, mnt, raw, len)
      await stopToReady(rep, opts, memtarget, big, mnt)
      await readThroughput(rep, big, mnt, shm)
    } finally {
      unmount()
    }
  } finally {
    big.kill()
  }
}

// ---- the raw copy: process_vm_readv in one C loop ----

interface Raw {
  first: number
  warm: number
  passes: number[]
}

/** Times rawcopy while the target is stopped (SIGSTOP), so its spinning thread competes with nothing. */
function rawCopy(rawcopy: string, target: Target, addr: string, len: number): Raw {
  log('memory: raw process_vm_readv copy')
  process.kill(target.pid, 'SIGSTOP')
  try {
    const deadline = Date.now() + 5000
    while (processState(target.pid) !== 'T' && Date.now() < deadline) spawnSync('sleep', ['0.01'])
    const r = spawnSync(rawcopy, [String(target.pid), addr, String(len), String(4 * MiB), '3'], { encoding: 'utf8', timeout: 120_000 })
    if (r.status !== 0) throw new Error(`rawcopy exited ${r.status}: ${r.stderr}`)
    const passes = [...r.stdout.matchAll(/^pass \d+ (\d+)$/gm)].map((m) => Number(m[1]) / 1e9)
    return { first: passes[0], warm: Math.min(...passes.slice(1)), passes }
  } finally {
    process.kill(target.pid, 'SIGCONT')
  }
}

// ---- the target's own stop measurement ----

interface Gap {
  start: bigint
  len: bigint
}

/** Asks the target for the gaps its spinning thread saw since the last report (and forgets them). */
async function gaps(target: Target): Promise<Gap[]> {
  const from = target.lines.length
  process.kill(target.pid, 'SIGUSR1')
  const m = await target.waitFor(/^gaps (\d+)(.*)$/, 10_000, from)
  return m[2].trim().split(' ').filter(Boolean).map((g) => {
    const [start, len] = g.split(':')
    return { start: BigInt(start), len: BigInt(len) }
  })
}

/** The gap that overlaps [t0, t1] most: the stop of a checkpoint requested at t0 that returned at t1. */
function stopIn(all: Gap[], t0: bigint, t1: bigint): Gap | undefined {
  let best: Gap | undefined
  let bestOverlap = 0n
  for (const g of all) {
    const from = g.start > t0 ? g.start : t0
    const end = g.start + g.len
    const to = end < t1 ? end : t1
    if (to - from > bestOverlap) {
      bestOverlap = to - from
      best = g
    }
  }
  return best
}

function release(checkpoint: string): void {
  try {
    fs.writeFileSync(path.join(checkpoint, 'done'), '1\n')
  } catch (err) {
    log(`${checkpoint}/done: ${(err as Error).message} (the unmount will thaw it)`)
  }
}

// ---- (a) copy mode: how long the task is stopped ----

async function copyStop(rep: Report, opts: Options, target: Target, mnt: string, raw: Raw, len: number): Promise<void> {
  const stops: number[] = []
  const clis: number[] = []
  for (let i = 0; i < opts.repeats; i++) {
    log(`memory: (a) copy checkpoint ${i + 1}/${opts.repeats}`)
    await gaps(target) // forget older gaps
    const t0 = nowNs()
    const cp = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt, '--copy')
    const t1 = nowNs()
    release(cp.stdout.trim())
    await sleep(100)
    const stop = stopIn(await gaps(target), t0, t1)
    clis.push(seconds(t0, t1))
    if (!stop) {
      rep.note(`(a) copy checkpoint ${i + 1}: the target saw no stop between the request and the CLI's return`)
      continue
    }
    stops.push(Number(stop.len) / 1e9)
  }
  const size = sizeText(opts.memMib)
  if (!stops.length) {
    rep.failed(`(a) --copy checkpoint of ${size}: time stopped`, 'no stop measured', '<= 1.0x raw copy')
    return
  }
  const stop = median(stops)
  rep.ref(`(a) --copy checkpoint of ${size}: time stopped (in-target clock gap)`, fmtS(stop),
    `median of ${stops.map(fmtS).join(', ')}; ${fmtN(Math.round(len / stop / 1e6))} MB/s; CLI wall time ${clis.map(fmtS).join(', ')}`)
  const ratio = stop / raw.first
  rep.check('(a) time stopped / raw copy', fmtX(ratio), '<= 1.0x', ratio <= 1.0, over(ratio, 1.0))
  rep.ref('(a) time stopped / raw copy, warm passes (reference)', fmtX(stop / raw.warm),
    `raw ${fmtS(raw.warm)}: the destination written once by the kernel before (this VM makes the first kernel write to a page slow)`)
}

// ---- (b) lazy mode: from the request until the checkpoint is ready ----

async function stopToReady(rep: Report, opts: Options, memtarget: string, big: Target, mnt: string): Promise<void> {
  log(`memory: (b) lazy stop-to-ready, ${sizeText(opts.smallMemMib)} target`)
  const small = await startTarget(memtarget, [String(opts.smallMemMib)], 60_000)
  const medians: number[] = []
  try {
    for (const [target, mib] of [[small, opts.smallMemMib], [big, opts.memMib]] as const) {
      const times: number[] = []
      for (let i = 0; i < opts.repeats; i++) {
        const t0 = nowNs()
        fs.writeFileSync(path.join(mnt, 'checkpoint'), `${target.pid}\n`)
        times.push(seconds(t0))
        const name = fs.readFileSync(path.join(mnt, 'by-pid', String(target.pid)), 'utf8').trim()
        release(path.join(mnt, name))
      }
      const cli = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
      release(cli.stdout.trim())
      const m = median(times)
      medians.push(m)
      rep.check(`(b) lazy checkpoint of ${sizeText(mib)}: request to ready`, fmtMs(m * 1000), '< 50 ms', m < 0.05, `${fmtX(m / 0.05)} the target`,
        `write "PID" to MNT/checkpoint; median of ${times.map((t) => fmtS(t)).join(', ')}; \`ckptfs checkpoint\` CLI wall time ${fmtS(cli.seconds)} (node start-up included)`)
    }
  } finally {
    small.kill()
  }
  const times = opts.memMib / opts.smallMemMib
  rep.ref(`(b) stop-to-ready, ${sizeText(opts.memMib)} / ${sizeText(opts.smallMemMib)}`, fmtX(medians[1] / medians[0]),
    `${fmtN(times)}x the memory; ${medians[1] / medians[0] < 2 ? 'no growth with memory size' : 'GROWS with memory size'} (times of a few ms are noisy)`)
}

// ---- (c) reading a lazy checkpoint ----

/** Seconds per read, in order: the first read of each, then the second. */
interface Reads {
  cat: number[]
  cp: number[]
  cpBytes: number
}

/** cp -a of `top` into tmpfs; returns the time and the bytes copied. */
function copyTree(top: string, shm: string): { seconds: number; bytes: number } {
  const dest = path.join(shm, 'copy')
  const seconds = timeShOk(`cp -a ${q(top)} ${q(dest)}`).seconds
  const bytes = treeTotals(dest).bytes
  fs.rmSync(dest, { recursive: true, force: true })
  return { seconds, bytes }
}

async function readThroughput(rep: Report, target: Target, mnt: string, shm: string): Promise<void> {
  fs.writeFileSync(path.join(mnt, 'checkpoint'), `${target.pid}\n`)
  const checkpoint = path.join(mnt, fs.readFileSync(path.join(mnt, 'by-pid', String(target.pid)), 'utf8').trim())
  const ours: Reads = { cat: [], cp: [], cpBytes: 0 }
  const trivial: Reads = { cat: [], cp: [], cpBytes: 0 }
  const tmpfs: Reads = { cat: [], cp: [], cpBytes: 0 }
  let size = 0
  let stopTrivial: (() => void) | undefined
  const tmpfsDir = fs.mkdtempSync(path.join(shm, 'tmpfs-'))
  try {
    size = fs.statSync(path.join(checkpoint, 'image')).size
    // The same-size tmpfs file, and the trivial server serving one file of that size.
    const tmpfsFile = path.join(tmpfsDir, 'image')
    const chunk = Buffer.alloc(16 * MiB, 0x5a)
    const fd = fs.openSync(tmpfsFile, 'w')
    for (let at = 0; at < size; at += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - at))
    fs.closeSync(fd)
    const tmnt = path.join(scratchDir('ckptfs-bench-'), 'mnt')
    stopTrivial = (await startTrivialServer(tmnt, ['file', 'image', String(size)])).stop

    // Interleaved (ckptfs, trivial, tmpfs; twice), so that the machine's load shifts hit all alike.
    for (let i = 0; i < 2; i++) {
      log(`memory: (c) cat image ${i + 1}/2: ckptfs, trivial server, tmpfs`)
      ours.cat.push(timeShOk(`cat ${q(path.join(checkpoint, 'image'))} > /dev/null`).seconds)
      trivial.cat.push(timeShOk(`cat ${q(path.join(tmnt, 'image'))} > /dev/null`).seconds)
      tmpfs.cat.push(timeShOk(`cat ${q(tmpfsFile)} > /dev/null`).seconds)
    }
    for (let i = 0; i < 2; i++) {
      log(`memory: (c) cp -a ${i + 1}/2: ckptfs, trivial server, tmpfs`)
      for (const [reads, top] of [[ours, checkpoint], [trivial, tmnt], [tmpfs, tmpfsDir]] as const) {
        const c = copyTree(top, shm)
        reads.cp.push(c.seconds)
        reads.cpBytes = c.bytes
      }
    }
  } finally {
    stopTrivial?.()
    release(checkpoint)
    fs.rmSync(tmpfsDir, { recursive: true, force: true })
  }

  const gib = (size / GiB).toFixed(2)
  for (const [i, which] of [[0, 'first'], [1, 'second']] as const) {
    const a = size / ours.cat[i]
    const b = size / trivial.cat[i]
    rep.check(`(c) cat image (${gib} GiB), ${which} read: ckptfs / trivial`, `${fmtRate(size, ours.cat[i])} / ${fmtRate(size, trivial.cat[i])}: ${fmtX(a / b)}`,
      '>= 0.8x', a / b >= 0.8, under(a / b, 0.8), `ckptfs ${fmtS(ours.cat[i])}, trivial ${fmtS(trivial.cat[i])}; tmpfs file ${fmtRate(size, tmpfs.cat[i])}`)
  }
  for (const [i, which] of [[0, 'first'], [1, 'second']] as const) {
    const a = ours.cpBytes / ours.cp[i]
    const b = trivial.cpBytes / trivial.cp[i]
    rep.check(`(c) cp -a to tmpfs, ${which}: ckptfs tree / trivial file`, `${fmtRate(ours.cpBytes, ours.cp[i])} / ${fmtRate(trivial.cpBytes, trivial.cp[i])}: ${fmtX(a / b)}`,
      '>= 0.8x', a / b >= 0.8, under(a / b, 0.8),
      `ckptfs ${fmtN(ours.cpBytes)} bytes (image + pages + attributes) in ${fmtS(ours.cp[i])}, trivial ${fmtN(trivial.cpBytes)} in ${fmtS(trivial.cp[i])}; tmpfs file ${fmtRate(tmpfs.cpBytes, tmpfs.cp[i])}`)
  }
  rep.ref('(c) reference: cat of a same-size tmpfs file', `${fmtRate(size, tmpfs.cat[0])}, then ${fmtRate(size, tmpfs.cat[1])}`,
    `cp -a of it to tmpfs: ${fmtRate(tmpfs.cpBytes, tmpfs.cp[0])}, then ${fmtRate(tmpfs.cpBytes, tmpfs.cp[1])}`)
}
