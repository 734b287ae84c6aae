// Benchmark 2, memory (issue 4), on targets with touched private anonymous memory
// (bench/memtarget.c, which also measures its own stop time):
//  (a) how long a --copy checkpoint keeps the task stopped, against the raw cost of copying
//      the same bytes with process_vm_readv (bench/rawcopy.c);
//  (b) lazy checkpoint stop-to-ready, on a small and a large target;
//  (c) reading the lazy checkpoint against a trivial fuse-native server: cat image against
//      one file of the same size, cp -a of the tree against a tree of the same shape; cat
//      and cp of a tmpfs file for reference.

import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import {
  buildC, ckptfsOk, GiB, log, median, MiB, mountCkptfs, nowNs, outDir, processState, q, scratchDir, seconds, shapeFromLs, sleep, startTarget,
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

export interface Gap {
  start: bigint
  len: bigint
}

/** Asks the target for the gaps its spinning thread saw since the last report (and forgets them). */
export async function gaps(target: Target): Promise<Gap[]> {
  const from = target.lines.length
  process.kill(target.pid, 'SIGUSR1')
  const m = await target.waitFor(/^gaps (\d+)(.*)$/, 10_000, from)
  return m[2].trim().split(' ').filter(Boolean).map((g) => {
    const [start, len] = g.split(':')
    return { start: BigInt(start), len: BigInt(len) }
  })
}

/** The gap that overlaps [t0, t1] most: the stop of a checkpoint requested at t0 that returned at t1. */
export function stopIn(all: Gap[], t0: bigint, t1: bigint): Gap | undefined {
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

/**
 * cat of the image against the trivial server's same-size file; cp -a of the checkpoint
 * against the trivial server serving a tree of the same shape (the same names and sizes,
 * pages included; the image is beside the tree, not in it), so both copies write the same
 * bytes into tmpfs. That matters
 * here: tmpfs pages the VM never touched cost several times more to fill than reused ones.
 */
async function readThroughput(rep: Report, target: Target, mnt: string, shm: string): Promise<void> {
  fs.writeFileSync(path.join(mnt, 'checkpoint'), `${target.pid}\n`)
  const checkpoint = path.join(mnt, fs.readFileSync(path.join(mnt, 'by-pid', String(target.pid)), 'utf8').trim())
  const ours: Reads = { cat: [], cp: [], cpBytes: 0 }
  const trivial: Reads = { cat: [], cp: [], cpBytes: 0 }
  const trivialTree: Reads = { cat: [], cp: [], cpBytes: 0 }
  const tmpfs: Reads = { cat: [], cp: [], cpBytes: 0 }
  let size = 0
  const stops: Array<() => void> = []
  const tmpfsDir = fs.mkdtempSync(path.join(shm, 'tmpfs-'))
  try {
    size = fs.statSync(`${checkpoint}.image`).size
    // The same-size tmpfs file, and the trivial server serving one file of that size.
    const tmpfsFile = path.join(tmpfsDir, 'image')
    const chunk = Buffer.alloc(16 * MiB, 0x5a)
    const fd = fs.openSync(tmpfsFile, 'w')
    for (let at = 0; at < size; at += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - at))
    fs.closeSync(fd)
    const tmnt = path.join(scratchDir('ckptfs-bench-'), 'mnt')
    stops.push((await startTrivialServer(tmnt, ['file', 'image', String(size)])).stop)
    // The trivial server serving the checkpoint's shape (listing it fills no page).
    const lsFile = path.join(shm, 'ls.txt')
    timeShOk(`ls -laR ${q(checkpoint)} > ${q(lsFile)}`)
    const shapeFile = path.join(outDir, 'memory-shape.json')
    fs.writeFileSync(shapeFile, JSON.stringify(shapeFromLs(fs.readFileSync(lsFile, 'utf8'), checkpoint)))
    fs.rmSync(lsFile)
    const tmntTree = path.join(scratchDir('ckptfs-bench-'), 'mnt')
    stops.push((await startTrivialServer(tmntTree, ['tree', shapeFile])).stop)
    const trivialTop = path.join(tmntTree, path.basename(checkpoint))

    // Interleaved, the order turned round in the second pass, so that load shifts and the
    // state of the VM's memory hit all alike.
    for (let i = 0; i < 2; i++) {
      log(`memory: (c) cat image ${i + 1}/2: ckptfs, trivial server, tmpfs`)
      const cats: Array<[Reads, string]> = [[ours, `${checkpoint}.image`], [trivial, path.join(tmnt, 'image')], [tmpfs, tmpfsFile]]
      for (const [reads, file] of i === 0 ? cats : cats.reverse()) reads.cat[i] = timeShOk(`cat ${q(file)} > /dev/null`).seconds
    }
    for (let i = 0; i < 2; i++) {
      log(`memory: (c) cp -a ${i + 1}/2: ckptfs, trivial server (same tree; one file), tmpfs`)
      const copies: Array<[Reads, string]> = [[ours, checkpoint], [trivialTree, trivialTop], [trivial, tmnt], [tmpfs, tmpfsDir]]
      for (const [reads, top] of i === 0 ? copies : copies.reverse()) {
        const c = copyTree(top, shm)
        reads.cp[i] = c.seconds
        reads.cpBytes = c.bytes
      }
    }
  } finally {
    for (const stop of stops) stop()
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
  // Whichever copy runs first after the last one was removed fills tmpfs pages the VM has
  // not backed yet, and pays several times more; the order turns round in the second pass, so
  // the check takes both passes together.
  const rate = (r: Reads) => (2 * r.cpBytes) / (r.cp[0] + r.cp[1])
  const cpRatio = rate(ours) / rate(trivialTree)
  const passes = (r: Reads) => `${fmtRate(r.cpBytes, r.cp[0])} then ${fmtRate(r.cpBytes, r.cp[1])}`
  rep.check('(c) cp -a to tmpfs, both passes: ckptfs tree / trivial, same tree', `${fmtN(Math.round(rate(ours) / 1e6))} MB/s / ${fmtN(Math.round(rate(trivialTree) / 1e6))} MB/s: ${fmtX(cpRatio)}`,
    '>= 0.8x', cpRatio >= 0.8, under(cpRatio, 0.8),
    `${fmtN(ours.cpBytes)} bytes (pages + attributes) each; ckptfs ${passes(ours)} (first in pass 1), trivial ${passes(trivialTree)} (first in pass 2); ` +
    `trivial one ${gib} GiB file ${passes(trivial)}; tmpfs file ${passes(tmpfs)}`)
  rep.ref('(c) reference: cat of a same-size tmpfs file', `${fmtRate(size, tmpfs.cat[0])}, then ${fmtRate(size, tmpfs.cat[1])}`,
    `cp -a of it to tmpfs: ${fmtRate(tmpfs.cpBytes, tmpfs.cp[0])}, then ${fmtRate(tmpfs.cpBytes, tmpfs.cp[1])}`)
}
