// Lazy restore (issue 16): the restored process runs once its non-memory state is back; its
// private anonymous pages come in on first touch and in the background (addon/src/uffd.c),
// read from the saved files and checked piece by piece (CRC32C per 1 MiB, as saved) before
// the process sees a byte. This file decides which mappings are filled that way and
// describes their pieces to the addon; the engine makes the userfaultfd inside the task.

import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import type { LazyFillResult } from '../../addon/index'
import { checkBuffer, CRC_PIECE, CRC_SUFFIX, crcText, parseCrcText, pieceCrcs } from '../checksum'
import { CkptError } from '../errors'
import { openSavedFile } from '../files/source'
import type { Vma } from '../model'
import { native } from '../native'
import { rangesOf, vmaName } from '../task/memory'

/**
 * Mappings filled lazily: private anonymous memory (heap included) whose stored pages lie in
 * a file. Locked memory (mlock faults it all in at once), droppable memory and the stack
 * (small; the kernel grows it below its start) are written before the process runs, as in an
 * eager restore; so are file mappings and shared memory, which userfaultfd's missing mode
 * does not cover (file mappings) or which other processes see (shared).
 */
export function isLazy(v: Vma): boolean {
  const flags = v.vmFlags.split(' ')
  return (v.kind === 'anonymous' || v.kind === 'heap') && v.stored.length > 0 && v.pages.extents !== undefined && v.pages.crc32c !== undefined &&
    !flags.includes('lo') && !flags.includes('lf') && !flags.includes('dp')
}

/** One checked unit of bytes: where it lies and where it goes. */
interface Piece {
  v: Vma
  /** Offset in the mapping's stored pages. */
  at: number
  length: number
  crc: number
  segments: Array<{ start: bigint; length: bigint }>
  sources: Array<{ file: string; at: number; length: number }>
}

export interface LazyOutcome {
  pid: number
  pages: number
  zeroPages: number
  faults: number
  seconds: number
  /** The process ended (or was killed) before its last page was in. */
  ended: boolean
  /** The pieces the process asked for first, in order: `pages` offsets per mapping start. */
  firstTouched: Array<{ start: bigint; at: number }>
  /** How many pieces were filled first because the record of a previous restore named them. */
  prefetched: number
  /** A tree's fill (TreeFill): each process's own, `pid` being the root's and the counts their sums. */
  processes?: LazyOutcome[]
}

/** The processes of a restored tree a lazy fill kills with its own on a failure, with their pidfds. */
export interface FillKin {
  root: number
  pids: number[]
  pidfds: number[]
}

/** The pieces of `vmas`, their extents asked for all at once (an image's are checked with a stat each). */
async function piecesOf(vmas: Vma[]): Promise<Piece[]> {
  const pending: Array<Promise<Piece>> = []
  for (const v of vmas) {
    const runs = v.stored.map((r) => ({ start: v.start + r.offset, length: r.length }))
    for (let at = 0, i = 0; at < v.pages.size; at += CRC_PIECE, i++) {
      const length = Math.min(CRC_PIECE, v.pages.size - at)
      const crc = v.pages.crc32c![i]
      const segments = rangesOf(runs, at, length)
      pending.push(v.pages.extents!(at, length).then((extents) => ({ v, at, length, crc, segments, sources: extents.map((e) => ({ file: e.file, at: e.at, length: e.length })) })))
    }
  }
  return Promise.all(pending)
}

/**
 * The pieces as lazyFill reads them (addon/src/uffd.c, parse_pieces): per piece u32 crc, u32
 * segments, u32 sources, u32 0, then per segment u64 address and length, per source i64 fd,
 * u64 offset and length. Written as pairs of u32 (every value is below 2^53): no BigInt per
 * field, the encoding of a 1 GiB mapping's 1,024 pieces stays well under a millisecond.
 */
function encodePieces(pieces: Piece[], fds: Map<string, number>): Buffer {
  let size = 0
  for (const p of pieces) size += 16 + 16 * p.segments.length + 24 * p.sources.length
  const words = new Uint32Array(size / 4)
  let w = 0
  const u64 = (n: number) => {
    words[w++] = n >>> 0
    words[w++] = Math.floor(n / 0x1_0000_0000)
  }
  for (const p of pieces) {
    words[w++] = p.crc >>> 0
    words[w++] = p.segments.length
    words[w++] = p.sources.length
    words[w++] = 0
    for (const s of p.segments) {
      u64(Number(s.start))
      u64(Number(s.length))
    }
    for (const s of p.sources) {
      u64(fds.get(s.file)!)
      u64(s.at)
      u64(s.length)
    }
  }
  return Buffer.from(words.buffer, words.byteOffset, words.byteLength)
}

/**
 * Registers the lazy mappings on `uffd` (ours, taken from the task; the fill owns it from
 * now on) and starts filling them. Returns once they are registered; `done` settles when
 * the last page is in, or rejects (the process already killed) naming the mapping and
 * the file when a piece could not be read or did not match its checksum. Faults are served
 * at once; the background fill waits for `release()` (the caller's: once the task runs, or
 * once the restore failed), so it does not slow down the steps before the task runs.
 */
export async function startLazyFill(pid: number, uffd: number, vmas: Vma[], firstTouched: Array<{ start: bigint; at: number }> = [], kin?: FillKin): Promise<{ done: Promise<LazyOutcome>; release: () => void }> {
  let pieces: Piece[]
  const fds = new Map<string, number>()
  try {
    pieces = await piecesOf(vmas)
    for (const p of pieces) {
      for (const s of p.sources) {
        if (!fds.has(s.file)) fds.set(s.file, openSavedFile(s.file)) // a regular file only, whatever a user swapped in since
      }
    }
  } catch (err) {
    native.close(uffd)
    for (const fd of fds.values()) fs.closeSync(fd)
    throw err
  }
  let hold: number
  try {
    hold = native.eventFd()
  } catch (err) {
    native.close(uffd)
    for (const fd of fds.values()) fs.closeSync(fd)
    throw err
  }
  let held = true
  const release = () => {
    if (!held) return
    held = false
    const one = Buffer.alloc(8)
    one.writeBigUInt64LE(1n)
    fs.writeSync(hold, one)
  }
  const closeFiles = () => {
    for (const fd of fds.values()) fs.closeSync(fd)
    native.close(hold) // the fill has ended: nobody polls it any more
  }
  const ranges = Buffer.alloc(16 * vmas.length)
  vmas.forEach((v, i) => {
    ranges.writeBigUInt64LE(v.start, 16 * i)
    ranges.writeBigUInt64LE(v.end - v.start, 16 * i + 8)
  })
  const blob = encodePieces(pieces, fds)
  const order = Buffer.alloc(4 * pieces.length)
  const byKey = new Map(pieces.map((p, i) => [`${p.v.start}:${p.at}`, i]))
  let n = 0
  const placed = new Set<number>()
  // The pieces touched first last time come first (the record kept with the checkpoint).
  for (const want of firstTouched) {
    const i = byKey.get(`${want.start}:${want.at}`)
    if (i !== undefined && !placed.has(i)) {
      placed.add(i)
      n = order.writeUInt32LE(i, n)
    }
  }
  for (let i = 0; i < pieces.length; i++) if (!placed.has(i)) n = order.writeUInt32LE(i, n)
  let fill: Promise<LazyFillResult>
  try {
    const pairs = (kin?.pids ?? []).flatMap((p, i) => (p === pid || kin!.pidfds[i] === undefined ? [] : [p, kin!.pidfds[i]]))
    fill = native.lazyFill(uffd, pid, ranges, blob, order, hold, Buffer.from(Int32Array.from(pairs).buffer))
    // Registration happens in the call: a refusal has rejected the promise before the next
    // turn of the event loop. Nothing may run on before the ranges are registered.
    await Promise.race([fill, new Promise((resolve) => setImmediate(resolve))])
  } catch (err) {
    closeFiles()
    throw new CkptError(`restore of ${pid}: lazy fill: ${(err as Error).message}`)
  }
  const done = fill.then((r) => {
    closeFiles()
    if (r.failure !== undefined) {
      const p = r.failedPiece !== undefined && r.failedPiece >= 0 ? pieces[r.failedPiece] : undefined
      const where = p ? `task-${pid}/memory/vmas/${vmaName(p.v)}/pages (${p.sources.map((s) => s.file).join(', ')}, bytes ${p.at}-${p.at + p.length - 1})` : `task-${pid}`
      const killed = kin && kin.pids.length > 1 ? `every process of the tree of ${kin.root} was killed (${kin.pids.length} processes)` : 'the process was killed'
      throw new CkptError(`restore of ${pid}: lazy fill: ${where}: ${r.failure}; ${killed}`, 'EIO')
    }
    return {
      pid,
      pages: Number(r.copiedPages),
      zeroPages: Number(r.zeroPages),
      faults: Number(r.faults),
      seconds: r.seconds,
      ended: r.ended,
      prefetched: placed.size,
      firstTouched: r.firstTouched.map((i) => ({ start: pieces[i].v.start, at: pieces[i].at })),
    }
  }, (err: unknown) => {
    closeFiles()
    throw new CkptError(`restore of ${pid}: lazy fill: ${(err as Error).message}`)
  })
  return { done, release }
}

/**
 * The lazy fill of a restored tree (pstree.ts): one startLazyFill per process, each on the
 * userfaultfd of that process's own address space, served by a thread of its own; each
 * process's background fill waits until the whole tree runs (release). The areas a parent
 * shares copy-on-write with its children are not filled lazily (engine.ts, restoreMemory:
 * the parent's stub fills them before it forks). Each fill kills every process of the tree
 * on a failure (`kin`), so no process runs on while another of the tree is gone.
 */
export class TreeFill {
  private pidfds: number[] | undefined
  private readonly fills: Array<Promise<LazyOutcome>> = []
  private readonly holds: Array<{ release: () => void }> = []
  private started = 0n
  private lastSettled = 0n

  constructor(private readonly root: number, private readonly pids: number[]) {}

  /**
   * The tree's processes and their pidfds, opened once for all the fills (not a set per
   * fill: a tree of N processes would hold N^2), on first use, once every process exists;
   * closed when the last fill has ended.
   */
  get kin(): FillKin {
    if (this.pidfds === undefined) {
      const fds: number[] = []
      try {
        for (const pid of this.pids) fds.push(native.pidFd(pid))
      } catch (err) {
        for (const fd of fds) native.close(fd)
        throw err
      }
      this.pidfds = fds
    }
    return { root: this.root, pids: this.pids, pidfds: this.pidfds }
  }

  private close(): void {
    for (const fd of this.pidfds ?? []) native.close(fd)
    this.pidfds = []
  }

  /** RestoreOptions.lazy for one process of the tree. */
  readonly take = (fill: Promise<LazyOutcome>): void => {
    if (this.fills.length === 0) this.started = process.hrtime.bigint()
    const settled = () => { this.lastSettled = process.hrtime.bigint() }
    fill.then(settled, settled)
    this.fills.push(fill)
  }

  /** A process's hold (rebuildSpawned's lazyHold): its fill's release is put there. */
  hold(): { release: () => void } {
    const h = { release: (): void => undefined }
    this.holds.push(h)
    return h
  }

  /** Whether any process of the tree has pages to fill. */
  get any(): boolean {
    return this.fills.length > 0
  }

  /** Lets every fill go on with its background work (the tree runs, or the restore failed). */
  release(): void {
    for (const h of this.holds) h.release()
    if (this.fills.length === 0) this.close()
  }

  /** The first failure of a fill (each settles once released: a failed restore killed its process). */
  async failure(): Promise<unknown> {
    const settled = await Promise.allSettled(this.fills)
    this.close()
    return settled.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason
  }

  /** Settles when the last page of the last process is in; rejects with the first failure. */
  async done(): Promise<LazyOutcome> {
    const settled = await Promise.allSettled(this.fills)
    this.close()
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed) throw failed.reason
    const processes = settled.map((r) => (r as PromiseFulfilledResult<LazyOutcome>).value)
    const sum = (f: (o: LazyOutcome) => number) => processes.reduce((n, o) => n + f(o), 0)
    return {
      pid: this.root,
      pages: sum((o) => o.pages),
      zeroPages: sum((o) => o.zeroPages),
      faults: sum((o) => o.faults),
      seconds: Number(this.lastSettled - this.started) / 1e9,
      ended: processes.every((o) => o.ended),
      firstTouched: [],
      prefetched: sum((o) => o.prefetched),
      processes,
    }
  }
}

// ---- the record of first touches (kept with a saved tree, for the next lazy restore) ----

/** The record's name, in task-PID/memory/ of a saved tree. */
export const FIRST_TOUCHED = 'first_touched'
const RECORD_LINE = /^([0-9a-f]+) ([0-9]+)$/
const RECORD_MAX = 16 << 20

/**
 * The pieces a lazy restore of the saved tree at `tree` should fill first: the record a
 * previous lazy restore left (`ADDRESS OFFSET` per line: a mapping's start in hexadecimal, as
 * its vmas/ directory is named, and the offset of a 1 MiB piece in its pages). It decides
 * only the order of the fill, never a byte (pieces are checked as always): a line that does
 * not name a piece is skipped. None when there is no record.
 */
function readFirstTouched(tree: string, pid: number): Array<{ start: bigint; at: number }> {
  const file = path.join(tree, `task-${pid}`, 'memory', FIRST_TOUCHED)
  const data = readSmall(file)
  if (data === undefined) return []
  // Every byte of a saved tree is checked, this record too (its first_touched_crc32c).
  const where = `task-${pid}/memory/${FIRST_TOUCHED}`
  const crcFile = readSmall(file + CRC_SUFFIX)
  const crcs = crcFile === undefined ? `${FIRST_TOUCHED}${CRC_SUFFIX} is missing` : parseCrcText(crcFile.toString('utf8'))
  if (typeof crcs === 'string') throw new CkptError(`${where}${CRC_SUFFIX}: ${crcs}`, 'EINVAL')
  checkBuffer(data, crcs, where)
  return data.toString('utf8').split('\n').map((line) => RECORD_LINE.exec(line)).filter((m) => m !== null).map((m) => ({ start: BigInt(`0x${m![1]}`), at: Number(m![2]) }))
}

/** A file of at most RECORD_MAX bytes, not through a link; undefined when there is none. */
function readSmall(file: string): Buffer | undefined {
  let fd: number
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW)
  } catch {
    return undefined
  }
  try {
    const size = fs.fstatSync(fd).size
    if (size > RECORD_MAX) throw new CkptError(`${file}: ${size} bytes, more than a record of first touches holds`, 'EINVAL')
    const buf = Buffer.alloc(size)
    fs.readSync(fd, buf, 0, size, 0)
    return buf
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * The records of first touches of the saved tree directory `tree` (one per process), for a
 * lazy restore from it: the pieces to fill first, by PID, and how to keep this restore's
 * records for the next one (each process's whose last page came in; a tree's processes each
 * its own). Undefined when `tree` holds no task (a directory holding an image keeps no record).
 */
export function firstTouchedRecord(tree: string): { prefetch: Map<number, Array<{ start: bigint; at: number }>>; keep: (done: LazyOutcome) => void } | undefined {
  const pids = fs.readdirSync(tree).filter((n) => /^task-[0-9]+$/.test(n)).map((n) => Number(n.slice(5)))
  if (pids.length === 0) return undefined
  const prefetch = new Map(pids.map((pid) => [pid, readFirstTouched(tree, pid)]))
  const keep = (done: LazyOutcome) => {
    const problems: string[] = []
    for (const p of done.processes ?? [done]) {
      if (p.ended) continue
      try {
        writeFirstTouched(tree, p.pid, p.firstTouched)
      } catch (err) {
        problems.push((err as Error).message)
      }
    }
    if (problems.length > 0) throw new CkptError(problems.join('; '))
  }
  return { prefetch, keep }
}

/**
 * Writes the record of this restore's first touches into the saved tree at `tree`, as the
 * user who owns the tree (a child process with its uid and gid: root never writes into a
 * user's files), each file made new by mktemp (O_EXCL, mode 0600) and renamed into place.
 * The child is a shell, not a second node, whose start-up was most of the time between the
 * last page and the command's end (writing a record took 224-319 ms with node, 85-233 ms
 * with the shell, three runs each, 2026-12-07 13:28 UTC, load 12).
 */
function writeFirstTouched(tree: string, pid: number, touched: Array<{ start: bigint; at: number }>): void {
  const dir = path.join(tree, `task-${pid}`, 'memory')
  const owner = fs.lstatSync(tree)
  const text = touched.map((p) => `${p.start.toString(16)} ${p.at}\n`).join('')
  // Its check first: a record without one is refused, a check without its record ignored.
  const crcs = crcText(pieceCrcs(Buffer.from(text))).toString('utf8')
  // $1: the directory, $2: the check's text; the record comes on stdin (it may be larger than an argument may be).
  const script = `set -e; umask 077
t=$(mktemp -p "$1" .${FIRST_TOUCHED}${CRC_SUFFIX}-XXXXXX); printf '%s' "$2" > "$t"; mv -fT -- "$t" "$1/${FIRST_TOUCHED}${CRC_SUFFIX}"
t=$(mktemp -p "$1" .${FIRST_TOUCHED}-XXXXXX); cat > "$t"; mv -fT -- "$t" "$1/${FIRST_TOUCHED}"`
  const r = spawnSync('/bin/sh', ['-c', script, 'ckptfs-first-touched', dir, crcs], { uid: owner.uid, gid: owner.gid, input: text, encoding: 'utf8', env: { PATH: '/usr/bin:/bin' } })
  if (r.status !== 0) throw new CkptError(`${path.join(dir, FIRST_TOUCHED)}: could not be written: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`)
}
