// The address space of a task: every mapping with its kind and flags, and the page contents a
// restore needs (touched anonymous pages and dirty private copies, never untouched ones:
// /proc/PID/pagemap says which). Lazy mode reads contents from the frozen task when `pages`
// is read; copy mode reads them all at capture. Also the memory/ entries and their loader.

import * as fs from 'fs'
import type { PagemapRun, PagemapScan } from '../../addon/index'
import { intoSource, piecesSource, type ByteSource, type CheckpointMode, type Pid, type StoredRun, type TaskImage, type Vma, type VmaKind } from '../model'
import { CkptError, messageOf } from '../errors'
import type { SavedDir } from '../files/saved'
import { availableMemory } from '../meminfo'
import { native } from '../native'
import { fuseMounts } from '../procfs'
import { bytes, each, type TableEntry } from '../tree/node'
import { checkedStream } from '../tree/checked'
import { decimalU64, field, FormatError, hexU64, loadEach, oneOf, readBytes, readLines, readValue, text, type Codec } from './fields'
import { exclusive } from './inject'
import { liveThread, parseMaps, procPath, readProcTextSync, type MapsEntry } from './procfs'

export const PAGE_SIZE = 4096
const PAGE = BigInt(PAGE_SIZE)

// ---------------------------------------------------------------------------------------
// Kinds and what is stored for each

export const VMA_KINDS: readonly VmaKind[] = [
  'heap', 'stack', 'vdso', 'vvar', 'vsyscall', 'anonymous', 'shared-anonymous', 'file-private', 'file-shared', 'special', 'aio',
]

export const AIO_RING_PATH = '/[aio] (deleted)'

/** The kind of a mapping, from its maps line alone (so a loader can check a saved kind). */
export function vmaKind(entry: Pick<MapsEntry, 'perms' | 'path'>): VmaKind {
  const shared = entry.perms[3] === 's'
  const { path } = entry
  switch (path) {
    case '[heap]': return 'heap'
    case '[stack]': return 'stack'
    case '[vdso]': return 'vdso'
    case '[vvar]': case '[vvar_vclock]': return 'vvar'
    case '[vsyscall]': return 'vsyscall'
    case '': return shared ? 'shared-anonymous' : 'anonymous'
  }
  // Named anonymous memory (PR_SET_VMA_ANON_NAME, memfd-less shmem).
  if (path.startsWith('[anon_shmem:')) return 'shared-anonymous'
  if (path.startsWith('[anon:')) return shared ? 'shared-anonymous' : 'anonymous'
  if (path.startsWith('[')) return 'special'
  // Shared anonymous memory is a deleted shmem file: "/dev/zero" for mmap, "/SYSVkey" for SysV shm.
  // The ring of an AIO context: a file of the kernel's internal aio filesystem.
  if (shared && path === AIO_RING_PATH) return 'aio'
  if (shared && (path === '/dev/zero (deleted)' || /^\/SYSV[0-9a-f]{8} \(deleted\)$/.test(path))) return 'shared-anonymous'
  return shared ? 'file-shared' : 'file-private'
}

/**
 * Which pages of a mapping are stored: private ones keep only their anonymous copies (the
 * file or the zero page gives the rest back); shared anonymous memory keeps every present
 * page; the vdso is stored whole so a restore can compare it, and an AIO ring so a restore can
 * check that no completed event waits in it; file-shared mappings keep
 * nothing (the file holds the data; a deleted file's do keep it: isDeletedSharedFile) and
 * vvar/vsyscall cannot be read at all.
 */
type Storage = 'anonymous-copies' | 'present' | 'whole' | 'nothing'

export function storageOf(kind: VmaKind): Storage {
  switch (kind) {
    case 'heap': case 'stack': case 'anonymous': case 'file-private': return 'anonymous-copies'
    case 'shared-anonymous': return 'present'
    case 'vdso': case 'aio': return 'whole'
    case 'vvar': case 'vsyscall': case 'file-shared': case 'special': return 'nothing'
  }
}

/**
 * A private mapping of a file deleted while mapped (maps shows " (deleted)"): no path can
 * bring the file back, so every page the file covers is stored as the task sees it (the
 * file's bytes or the task's private copy) and a restore maps anonymous memory there.
 */
export function isDeletedFileCopy(v: { kind: VmaKind; path: string }): boolean {
  return v.kind === 'file-private' && v.path.endsWith(' (deleted)')
}

/**
 * A MAP_SHARED mapping of a deleted file (a /dev/shm semaphore unlinked after sem_open, a
 * memfd, any file unlinked while mapped): its path names nothing, so the pages the file
 * covers are stored as the mapping shows them, and a restore recreates the file from them
 * once and maps it again everywhere it was mapped (lib/restore/engine.ts, pstree.ts).
 */
export function isDeletedSharedFile(v: { kind: VmaKind; path: string }): boolean {
  return v.kind === 'file-shared' && v.path.endsWith(' (deleted)')
}

/** Whether a mapping stores the file's bytes it covers (rather than what storageOf says of its kind). */
export const storesFileCovered = (v: { kind: VmaKind; path: string }): boolean => isDeletedFileCopy(v) || isDeletedSharedFile(v)

/** Whether a mapping may have stored runs at all (the loaders refuse runs where none belong). */
export const storesPages = (v: { kind: VmaKind; path: string }): boolean => storageOf(v.kind) !== 'nothing' || storesFileCovered(v)

/**
 * VmFlags that keep a mapping's pages from being held copy-on-write with a forked child:
 * dontfork (dc: a fork does not pass it on), wipeonfork (wf), droppable (dp), locked (lo,
 * lf: mlock faults every page writable, which copies it).
 */
const UNINHERITABLE_FLAGS = new Set(['dc', 'wf', 'dp', 'lo', 'lf'])

/**
 * Whether a child's mapping may hold pages as its parent's (copy-on-write since a fork) and
 * a restore can give them back that way: private anonymous memory (brk heap, main stack,
 * mmap) without the flags above. The parent's mapping must be one too, at the same range and
 * of the same kind (sameInheritableArea).
 */
export function inheritable(v: { kind: VmaKind; perms: string; vmFlags: string }): boolean {
  return (v.kind === 'anonymous' || v.kind === 'heap' || v.kind === 'stack') && v.perms[3] === 'p' && !v.vmFlags.split(' ').some((f) => UNINHERITABLE_FLAGS.has(f))
}

/** Whether a child's mapping `c` and its parent's `p` are the same area, as inheriting pages needs. */
export function sameInheritableArea(c: { start: bigint; end: bigint; kind: VmaKind; perms: string; vmFlags: string }, p: typeof c): boolean {
  return c.start === p.start && c.end === p.end && c.kind === p.kind && inheritable(c) && inheritable(p)
}

// ---------------------------------------------------------------------------------------
// Capture

/** A mapping and the absolute runs of its pages to store, before any contents are read. */
interface Layout {
  /** The thread whose /proc files and memory calls show the address space (see liveThread). */
  reader: number
  entry: MapsEntry
  kind: VmaKind
  runs: PagemapRun[]
  /** Runs held at the parent's frames (sameInheritableArea), stored by the parent, not here. */
  inherited: PagemapRun[]
  /** An inheritable mapping of a task with children in the tree: each page's frame (scanPagemaps). */
  frames?: Buffer
  bytes: number
}

/** The scan of one frozen task's memory, shared by its capture and its children's. */
export interface TaskScan {
  layout: Layout[]
}

/**
 * Scans the mappings of `pid`. `frames`: keep the frames of its inheritable mappings for its
 * children's scans. `parent`: the parent's scan (both frozen): a page at the same frame as
 * the parent's page at the same address of the same area is recorded as inherited, not stored.
 */
export async function scanTask(pid: number, opts: { frames?: boolean; parent?: Promise<TaskScan>; parentPid?: number } = {}): Promise<TaskScan> {
  const parentLayout = opts.parent ? (await opts.parent).layout : []
  return { layout: await scanLayout(pid, opts.frames ?? false, new Map(parentLayout.filter((l) => l.frames).map((l) => [l.entry.start, l])), opts.parentPid) }
}

async function scanLayout(pid: number, frames = false, parentAt = new Map<bigint, Layout>(), parentPid?: number): Promise<Layout[]> {
  const reader = await liveThread(pid)
  return exclusive(pid, async () => {
    const entries = parseMaps(readProcTextSync(pid, 'smaps', reader))
    const kinds = entries.map(vmaKind)
    // Every pagemap scan of the task in one native call (a small process has two dozen mappings).
    const scans: PagemapScan[] = []
    const scanOf = entries.map((entry, i) => {
      if (storesFileCovered({ kind: kinds[i], path: entry.path })) return -1
      const storage = storageOf(kinds[i])
      if (storage !== 'present' && storage !== 'anonymous-copies') return -1
      // smaps already says when nothing is there: huge untouched reservations cost no scan.
      const used = storage === 'present' ? entry.rssKb : entry.anonymousKb
      if (used === 0 && entry.swapKb === 0) return -1
      const scan: PagemapScan = { start: entry.start, end: entry.end, privateOnly: storage === 'anonymous-copies' }
      const mine = { ...entry, kind: kinds[i] }
      if (inheritable(mine)) {
        if (frames) scan.frames = true
        const parent = parentAt.get(entry.start)
        if (parent && sameInheritableArea(mine, { ...parent.entry, kind: parent.kind })) scan.parentFrames = parent.frames
      }
      return scans.push(scan) - 1
    })
    let scanned: Awaited<ReturnType<typeof native.scanPagemaps>> = []
    if (scans.length > 0) {
      try {
        scanned = await native.scanPagemaps(reader, scans, parentPid)
      } catch (err) {
        throw new CkptError(`task-${pid}: memory: cannot scan pagemap: ${messageOf(err)}`)
      }
    }
    return Promise.all(entries.map(async (entry, i): Promise<Layout> => {
      const kind = kinds[i]
      const found = scanOf[i] >= 0 ? scanned[scanOf[i]] : undefined
      const runs = storesFileCovered({ kind, path: entry.path }) ? await fileCoveredRuns(pid, entry) : found ? [...found] : unscannedRuns(entry, storageOf(kind))
      return { reader, entry, kind, runs, inherited: found?.inherited ?? [], frames: found?.frames, bytes: runs.reduce((sum, r) => sum + Number(r.length), 0) }
    }))
  })
}

/** The runs of a mapping whose pagemap needs no scan: all of it, or none. */
function unscannedRuns(entry: MapsEntry, storage: Storage): PagemapRun[] {
  return storage === 'whole' ? [{ start: entry.start, length: entry.end - entry.start }] : []
}

/** The pages of a deleted file's mapping that the file covers (beyond its end, a read faults). */
async function fileCoveredRuns(pid: number, entry: MapsEntry): Promise<PagemapRun[]> {
  // map_files/ names a mapping by its range without leading zeros; it opens the mapped file itself.
  const mapFile = `/proc/${pid}/map_files/${entry.start.toString(16)}-${entry.end.toString(16)}`
  // Its stat, and the read of every page it covers, would wait on a FUSE server, which may be
  // a user's that never answers (lib/procfs.ts, fuseMounts): such a mapping is refused first,
  // by the device /proc/PID/maps shows (hex major:minor, mountinfo's in decimal).
  const [major, minor] = entry.dev.split(':').map((h) => parseInt(h, 16))
  const fuse = [...fuseMounts(pid as Pid).values()].find((m) => m.device === `${major}:${minor}`)
  if (fuse) {
    throw new CkptError(
      `task-${pid}: memory ${vmaName(entry)}: the deleted file it maps is on a FUSE file system (${fuse.fsType} at ${fuse.mountPoint}): ` +
        'its server answers when it likes, and one that never answers would hold the checkpoint, the frozen tasks and the mount; ckptfs does not touch files of a FUSE mount',
      'EPERM',
    )
  }
  let size: bigint
  try {
    size = (await fs.promises.stat(mapFile, { bigint: true })).size
  } catch (err) {
    throw new CkptError(`task-${pid}: memory ${vmaName(entry)}: cannot stat the deleted file it maps (${mapFile}): ${messageOf(err)}`)
  }
  if (size <= entry.offset) return []
  const covered = (size - entry.offset + PAGE - 1n) / PAGE * PAGE
  const length = covered < entry.end - entry.start ? covered : entry.end - entry.start
  return [{ start: entry.start, length }]
}

/**
 * The bytes a copy-mode capture of `pid` would store if it were frozen now. Safe while the
 * task runs, so a caller can allocate and touch a buffer of about this size before freezing
 * and pass it to captureVmas (which rescans after the freeze and allocates any shortfall).
 */
export async function planCopy(pid: number): Promise<{ bytes: number }> {
  const layout = await scanLayout(pid)
  return { bytes: layout.reduce((sum, l) => sum + l.bytes, 0) }
}

/**
 * Captures every mapping of frozen task `pid` (from `scan`, when its tree shares one). Lazy: `pages` reads the frozen task when read.
 * Copy: all stored pages are read now, first into `into` (when given), then into new buffers.
 */
export async function captureVmas(pid: number, mode: CheckpointMode, into?: Buffer[], scan?: Promise<TaskScan>): Promise<Vma[]> {
  const { layout } = await (scan ?? scanTask(pid))
  if (mode === 'lazy') {
    return layout.map((l) => toVma(l, taskPages(pid, l)))
  }
  const arena = new Arena(into, layout.reduce((sum, l) => sum + l.bytes, 0))
  const vmas: Vma[] = []
  for (const l of layout) {
    const pieces = arena.take(l.bytes)
    await copyPages(pid, l, pieces)
    vmas.push(toVma(l, piecesSource(pieces)))
  }
  return vmas
}

function toVma({ entry, kind, runs, inherited }: Layout, pages: ByteSource): Vma {
  const { start, end, perms, offset, dev, inode, path, vmFlags } = entry
  const relative = (list: PagemapRun[]): StoredRun[] => list.map((r) => ({ offset: r.start - start, length: r.length }))
  const vma: Vma = { start, end, perms, offset, dev, inode, path, kind, vmFlags, stored: relative(runs), pages }
  if (inherited.length > 0) vma.inherited = relative(inherited)
  return vma
}

/** A mapping's directory name in memory/vmas/: its range as /proc/PID/maps shows it. */
export const vmaName = (v: { start: bigint; end: bigint }): string => `${hexDigits(v.start)}-${hexDigits(v.end)}`
const hexDigits = (n: bigint): string => n.toString(16).padStart(8, '0')

// ---------------------------------------------------------------------------------------
// Reading stored pages from the task

/** The memory ranges behind bytes [offset, offset+length) of the stored runs laid back to back. */
export function rangesOf(runs: PagemapRun[], offset: number, length: number): PagemapRun[] {
  const ranges: PagemapRun[] = []
  let at = 0
  for (const run of runs) {
    const runLength = Number(run.length)
    const from = Math.max(offset, at)
    const to = Math.min(offset + length, at + runLength)
    if (from < to) ranges.push({ start: run.start + BigInt(from - at), length: BigInt(to - from) })
    at += runLength
    if (at >= offset + length) break
  }
  return ranges
}

/** Reads up to this size of readable memory are made synchronously (see taskPages). */
const READ_NOW_MAX = 1 << 20

/**
 * Lazy mode: each read goes to the frozen task for just the range asked. The mount's reads
 * (128 KiB) of readable memory are one synchronous process_vm_readv straight into the FUSE
 * reply buffer: for the frozen task's resident pages that costs what copying them costs,
 * less than a trip through the addon's pool, and it is the only copy we make. Larger reads,
 * and PROT_NONE memory (read through /proc/PID/mem), go through the pool.
 */
function taskPages(pid: number, layout: Layout): ByteSource {
  return intoSource(layout.bytes, (offset, length, into, at) => {
    const ranges = rangesOf(layout.runs, offset, length)
    if (length > READ_NOW_MAX || layout.entry.perms[0] !== 'r') return readRanges(pid, layout, ranges, into.subarray(at, at + length)).then(() => length)
    try {
      native.readMemoryIntoNow(layout.reader, ranges, into, at)
    } catch (err) {
      return Promise.reject(new CkptError(`task-${pid}/memory/vmas/${vmaName(layout.entry)}/pages: ${messageOf(err)}`, 'EIO'))
    }
    return length
  })
}

/** process_vm_readv honours protections; /proc/PID/mem reads what the task could not (PROT_NONE). */
async function readRanges(pid: number, layout: Layout, ranges: PagemapRun[], into: Buffer): Promise<void> {
  try {
    if (layout.entry.perms[0] === 'r') {
      await native.readMemoryInto(layout.reader, ranges, into, 0)
      return
    }
    const mem = await fs.promises.open(procPath(pid, 'mem', layout.reader), 'r')
    try {
      let at = 0
      for (const range of ranges) {
        const length = Number(range.length)
        const bytesRead = await preadAt(mem.fd, into, at, length, range.start)
        if (bytesRead !== length) throw new Error(`short read: ${bytesRead} of ${length} bytes at 0x${range.start.toString(16)}`)
        at += length
      }
    } finally {
      await mem.close()
    }
  } catch (err) {
    throw new CkptError(`task-${pid}/memory/vmas/${vmaName(layout.entry)}/pages: ${messageOf(err)}`, 'EIO')
  }
}

/** pread with a 64-bit position (FileHandle.read takes only numbers, exact below 2^53). */
function preadAt(fd: number, into: Buffer, at: number, length: number, position: bigint): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, into, at, length, position, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead)))
  })
}

/** Copy mode reads in batches of this size, so no single call holds a huge iovec list. */
const COPY_BATCH = 64 * 1024 * 1024

async function copyPages(pid: number, layout: Layout, pieces: Buffer[]): Promise<void> {
  let offset = 0
  for (const piece of pieces) {
    for (let at = 0; at < piece.length; at += COPY_BATCH) {
      const part = piece.subarray(at, Math.min(piece.length, at + COPY_BATCH))
      await readRanges(pid, layout, rangesOf(layout.runs, offset, part.length), part)
      offset += part.length
    }
  }
}

/**
 * Largest single buffer a copy allocates: node 20 makes no Buffer over 4 GiB, and the addon
 * makes none over 1 GiB (its BUFFER_MAX), so a bigger copy is held in several.
 */
const MAX_PIECE = 1024 * 1024 * 1024

/**
 * The pre-touched storage for a copy of `bytes` (allocTouched), in pieces of at most MAX_PIECE.
 * The pieces are touched one after the other, so a failure leaves at most one half-made.
 */
export async function allocCopyArena(bytes: number): Promise<Buffer[]> {
  // More than the kernel can give without reclaiming everything would call the OOM killer,
  // which may pick the server: refused before anything is made.
  const available = availableMemory()
  if (bytes > available) throw new CkptError(`${bytes} bytes needed, ${available} available (MemAvailable in /proc/meminfo)`)
  const pieces: Buffer[] = []
  for (let missing = bytes; missing > 0; missing -= MAX_PIECE) pieces.push(await native.allocTouched(Math.min(missing, MAX_PIECE)))
  return pieces
}

/** Hands out the copy-mode storage: the caller's pre-touched buffer first, then new buffers. */
class Arena {
  private readonly free: Buffer[] = []

  constructor(into: Buffer[] | undefined, total: number) {
    let missing = total
    for (const piece of into ?? []) {
      if (missing <= 0) break
      this.free.push(piece.subarray(0, Math.min(piece.length, missing)))
      missing -= piece.length
    }
    for (; missing > 0; missing -= MAX_PIECE) this.free.push(Buffer.allocUnsafeSlow(Math.min(missing, MAX_PIECE)))
  }

  take(size: number): Buffer[] {
    const pieces: Buffer[] = []
    while (size > 0) {
      const head = this.free[0]
      const n = Math.min(size, head.length)
      pieces.push(head.subarray(0, n))
      if (n === head.length) this.free.shift()
      else this.free[0] = head.subarray(n)
      size -= n
    }
    return pieces
  }
}

// ---------------------------------------------------------------------------------------
// Tree: memory/

const storedRun: Codec<StoredRun> = {
  show: (r) => `${hexU64.show(r.offset)} ${hexU64.show(r.length)}`,
  parse: (line) => {
    const [offset, length, extra] = line.split(' ')
    if (offset === undefined || length === undefined || extra !== undefined) throw new FormatError(`not "OFFSET LENGTH": ${JSON.stringify(line)}`)
    return { offset: hexU64.parse(offset), length: hexU64.parse(length) }
  },
}

const permsText = text((v) => (/^[r-][w-][x-][ps]$/.test(v) ? undefined : `not like rw-p: ${JSON.stringify(v)}`))
/** What is wrong with a mapping's device (MAJOR:MINOR in hexadecimal, as /proc/PID/maps shows it), if anything. */
export function vmaDevProblem(v: string): string | undefined {
  return /^[0-9a-f]{2,8}:[0-9a-f]{2,8}$/.test(v) ? undefined : `not MAJOR:MINOR in hexadecimal: ${JSON.stringify(v)}`
}
const devText = text(vmaDevProblem)
/** What is wrong with a VmFlags line, if anything (the tree loader and the validator both ask). */
export function vmFlagsProblem(v: string): string | undefined {
  return /^([a-z0-9]{2}( [a-z0-9]{2})*)?$/.test(v) ? undefined : `not two-letter flags separated by spaces: ${JSON.stringify(v)}`
}
const vmFlagsText = text(vmFlagsProblem)
const kindText = oneOf(VMA_KINDS)
const pathText = text()

const vmaEntries: TableEntry<Vma>[] = [
  field('start', hexU64, (v) => v.start),
  field('end', hexU64, (v) => v.end),
  field('perms', permsText, (v) => v.perms),
  field('offset', hexU64, (v) => v.offset),
  field('dev', devText, (v) => v.dev),
  field('inode', decimalU64, (v) => v.inode),
  field('path', pathText, (v) => v.path),
  field('kind', kindText, (v) => v.kind),
  field('vm_flags', vmFlagsText, (v) => v.vmFlags),
  bytes('stored_runs', (v) => Buffer.from(v.stored.map((r) => storedRun.show(r) + '\n').join(''))),
  ...checkedStream('pages', (v: Vma) => v.pages),
]

/** A mapping holding pages as its parent's also lists them (only then: other trees look as before). */
const inheritedVmaEntries: TableEntry<Vma>[] = [
  ...vmaEntries,
  bytes('inherited_runs', (v) => Buffer.from((v.inherited ?? []).map((r) => storedRun.show(r) + '\n').join(''))),
]
const vmaEntriesOf = (v: Vma): TableEntry<Vma>[] => ((v.inherited ?? []).length > 0 ? inheritedVmaEntries : vmaEntries)

const MAPS_HEADER = '# start-end perms offset dev inode kind stored_bytes vm_flags path\n'

/** Like /proc/PID/maps, with each mapping's kind, stored bytes and VmFlags (comma separated). */
export function mapsText(vmas: Vma[]): string {
  return MAPS_HEADER + vmas.map((v) => [
    vmaName(v), v.perms, hexDigits(v.offset), v.dev, v.inode, v.kind, v.pages.size, v.vmFlags.replace(/ /g, ',') || '-', v.path,
  ].join(' ').trimEnd() + '\n').join('')
}

/** memory/ in task-PID/: listing vmas/ captures the layout (no contents); pages are read on demand. */
export function memoryEntries(): TableEntry<TaskImage>[] {
  return [
    bytes('maps', async (t: TaskImage) => Buffer.from(mapsText(await t.vmas()))),
    each('vmas', async (t: TaskImage) => new Map((await t.vmas()).map((v) => [vmaName(v), v])), vmaEntriesOf),
  ]
}

// ---------------------------------------------------------------------------------------
// Loading a saved copy

const MAX_MAPS_BYTES = 64 * 1024 * 1024
const MAX_RUNS_BYTES = 64 * 1024 * 1024
const VMA_DIR = /^([0-9a-f]{8,16})-([0-9a-f]{8,16})$/

/** Reads memory/ of a saved task-PID/ back; `pages` stay in their files, read in pieces. */
export async function loadVmas(dir: SavedDir): Promise<Vma[]> {
  const vmasDir = dir.dir('vmas')
  const named = vmasDir.names().map((name) => {
    const m = VMA_DIR.exec(name)
    if (!m) throw vmasDir.fail(name, 'not a START-END range in hexadecimal')
    return { name, start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]) }
  }).sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))

  for (const [i, { name, start }] of named.entries()) {
    if (i > 0 && start < named[i - 1].end) throw vmasDir.fail(name, `overlaps ${named[i - 1].name}`)
  }
  const vmas = await loadEach(named, async ({ name, start, end }) => loadVma(vmasDir.dir(name), start, end))
  vmasDir.finish()

  const maps = (await readBytes(dir, 'maps', MAX_MAPS_BYTES)).toString('utf8')
  const expected = mapsText(vmas)
  if (maps !== expected) {
    const line = firstDifferentLine(maps, expected)
    throw dir.fail('maps', `line ${line} does not match vmas/ (expected ${JSON.stringify(expected.split('\n')[line - 1] ?? '')})`)
  }
  // The record a lazy restore keeps of its first touches (lib/restore/lazy.ts, which reads
  // and checks it): it only orders a later fill, so it is not read here.
  if (dir.has('first_touched')) dir.checkedSource('first_touched')
  dir.finish()
  return vmas
}

async function loadVma(dir: SavedDir, start: bigint, end: bigint): Promise<Vma> {
  if (start % PAGE !== 0n || end % PAGE !== 0n || start >= end) throw new CkptError(`${dir.rel}: not a page-aligned, non-empty range`, 'EINVAL')
  const same = async (name: string, value: bigint) => {
    const saved = readValue(dir, name, hexU64)
    if (saved !== value) throw dir.fail(name, `${hexU64.show(saved)} does not match the directory name`)
  }
  await same('start', start)
  await same('end', end)
  const perms = readValue(dir, 'perms', permsText)
  const offset = readValue(dir, 'offset', hexU64)
  if (offset % PAGE !== 0n) throw dir.fail('offset', `${hexU64.show(offset)} is not page-aligned`)
  const path = readValue(dir, 'path', pathText)
  const kind = readValue(dir, 'kind', kindText)
  if (kind !== vmaKind({ perms, path })) throw dir.fail('kind', `${kind} does not fit perms ${perms} and path ${JSON.stringify(path)} (${vmaKind({ perms, path })})`)

  const size = end - start
  const stored = await readLines(dir, 'stored_runs', storedRun, MAX_RUNS_BYTES)
  let storedBytes = 0n
  let after = 0n
  for (const [i, run] of stored.entries()) {
    const where = `run ${i + 1} (${storedRun.show(run)})`
    if (run.offset % PAGE !== 0n || run.length % PAGE !== 0n || run.length === 0n) throw dir.fail('stored_runs', `${where} is not whole pages`)
    if (run.offset < after) throw dir.fail('stored_runs', `${where} overlaps or precedes the run before it`)
    if (run.offset + run.length > size) throw dir.fail('stored_runs', `${where} ends beyond the mapping (0x${size.toString(16)} bytes)`)
    after = run.offset + run.length
    storedBytes += run.length
  }
  if (!storesPages({ kind, path }) && stored.length > 0) throw dir.fail('stored_runs', `a ${kind} mapping stores no pages`)
  // Whether the parent has this area and content there is the validator's to say (validate.ts).
  const inherited = dir.has('inherited_runs') ? await readLines(dir, 'inherited_runs', storedRun, MAX_RUNS_BYTES) : []
  const runsProblem = inheritedRunsProblem(inherited, stored, size)
  if (runsProblem) throw dir.fail('inherited_runs', runsProblem)
  if (dir.has('inherited_runs') && inherited.length === 0) throw dir.fail('inherited_runs', 'empty (a mapping without inherited pages has no inherited_runs)')
  const pages = dir.checkedSource('pages')
  if (BigInt(pages.size) !== storedBytes) throw dir.fail('pages', `${pages.size} bytes, stored runs need ${storedBytes}`)

  const vma: Vma = {
    start, end, perms, offset,
    dev: readValue(dir, 'dev', devText),
    inode: readValue(dir, 'inode', decimalU64),
    path, kind,
    vmFlags: readValue(dir, 'vm_flags', vmFlagsText),
    stored,
    pages,
  }
  if (inherited.length > 0) vma.inherited = inherited
  dir.finish()
  return vma
}

/**
 * What is wrong with a mapping's inherited runs, if anything: each whole pages, ascending,
 * inside the mapping of `size` bytes, and apart from every stored run (a page is stored or
 * inherited, never both). The tree loader and the image reader both ask.
 */
export function inheritedRunsProblem(inherited: StoredRun[], stored: StoredRun[], size: bigint): string | undefined {
  let after = 0n
  let s = 0 // stored runs are ascending too (checked before): one walk over both
  for (const [i, run] of inherited.entries()) {
    const where = `run ${i + 1} (${storedRun.show(run)})`
    if (run.offset % PAGE !== 0n || run.length % PAGE !== 0n || run.length === 0n) return `${where} is not whole pages`
    if (run.offset < after) return `${where} overlaps or precedes the run before it`
    if (run.offset + run.length > size) return `${where} ends beyond the mapping (0x${size.toString(16)} bytes)`
    while (s < stored.length && stored[s].offset + stored[s].length <= run.offset) s++
    if (s < stored.length && stored[s].offset < run.offset + run.length) return `${where} overlaps the stored run ${storedRun.show(stored[s])}`
    after = run.offset + run.length
  }
  return undefined
}

function firstDifferentLine(a: string, b: string): number {
  const left = a.split('\n')
  const right = b.split('\n')
  const i = left.findIndex((line, n) => line !== right[n])
  return (i < 0 ? left.length : i) + 1
}
