// Brings a validated checkpoint back as a running process (docs/RESTORE.md). This module is
// the order of operations; the addon performs each system call, the stub opens the files.

import * as fs from 'fs'
import * as path from 'path'
import type { InjectedCall } from '../../addon/index'
import { CkptError, messageOf } from '../errors'
import { lifeState, waitUntil } from '../lifecycle'
import type { ProcessState, ThreadState, Vma } from '../model'
import { native } from '../native'
import { closeConnectionGaps } from '../files/inetsock'
import { currentBootId } from '../boot'
import { asTask, capsetCall, checkMappedFile, STAT_SIZE } from './access'
import { framePlan, type FileAccess } from './fdplan'
import { planFileRecords } from './files'
import type { SavedCheckpoint } from './load'
import { SYS } from './syscalls'
import { PageCheck } from './verify'
import { hugePageCalls } from './hugepages'
import { isLazy, startLazyFill, type FillKin, type LazyOutcome } from './lazy'
import { fillContents } from './contents'
import { holdSavedFile } from '../files/source'
import { AIO_RING_PATH, isDeletedFileCopy, isDeletedSharedFile } from '../task/memory'
import { resumeRegisters } from './restart'
import { lockCalls } from './locks'
import { PhaseTimer } from '../trace'
import { TASK_SIZE } from '../abi'
import { majorMinor } from '../procfs'
import { unstoredRanges, writeDifferingPages, writeInheritedPieces, type InheritedPiece, type PremapMode } from './cow'
import { seccompCalls } from './seccomp'

const PAGE = 4096n
const SPECIAL = new Set(['[vvar]', '[vvar_vclock]', '[vdso]'])

const PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4
const MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20, MAP_GROWSDOWN = 0x100
const MAP_DROPPABLE = 0x08, MAP_NORESERVE = 0x4000, MAP_FIXED_NOREPLACE = 0x100000
const MLOCK_ONFAULT = 1
const MREMAP_MAYMOVE = 1, MREMAP_FIXED = 2
const O_RDONLY = 0, O_RDWR = 2, O_NONBLOCK = 0o4000, O_DIRECTORY = 0o200000, O_NOFOLLOW = 0o400000, O_CLOEXEC = 0o2000000, O_PATH = 0o10000000
const AT_FDCWD = -100n
const MADV_POPULATE_WRITE = 23, MADV_DONTNEED = 4
const PR_TIMER_CREATE_RESTORE_IDS = 77
/** sigev_notify values (the kernel's; SIGEV_THREAD is glibc's and reaches the kernel as SIGEV_THREAD_ID). */
const SIGEV = { signal: 0, none: 1, thread: 2 } as const
const SIGEV_THREAD_ID = 4
const PR_SET_THP_DISABLE = 41, PR_THP_DISABLE_EXCEPT_ADVISED = 2
const PR_SET_NAME = 15, PR_SET_MM = 35, PR_SET_MM_MAP = 14, PR_SET_DUMPABLE = 4, PR_SET_NO_NEW_PRIVS = 38, PR_SET_PDEATHSIG = 1, PR_SET_CHILD_SUBREAPER = 36
const MADVISE_BY_FLAG: Record<string, number> = {
  rr: 1 /* RANDOM */, sr: 2 /* SEQUENTIAL */, dc: 10 /* DONTFORK */, mg: 12 /* MERGEABLE */, dd: 16 /* DONTDUMP */,
  hg: 14 /* HUGEPAGE */, nh: 15 /* NOHUGEPAGE */, wf: 18 /* WIPEONFORK */,
}
/** Advice given before the pages are faulted in (it decides their size), not at the end. */
const HUGEPAGE_FLAGS = new Set(['hg', 'nh'])

/** Index of each register in struct user_regs_struct (x86-64), in 8-byte words. */
export const REG = { rax: 10, orig_rax: 15, rip: 16, rsp: 19, fs_base: 21, gs_base: 22 } as const

/** The stub built with the addon (addon/build/Release/restorer). */
export function stubPath(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'addon', 'build', 'Release', 'restorer')
    if (fs.existsSync(candidate)) return candidate
  }
  throw new CkptError('restorer stub not built: run `npm run setup` (addon/build/Release/restorer is missing)')
}

/** Where a restore says what it is waiting for: the user's stderr unless the caller says otherwise. */
export type RestoreNote = (line: string) => void
const toStderr: RestoreNote = (line) => process.stderr.write(`ckptfs restore: ${line}\n`)

export interface RestoreOptions {
  /**
   * The user says files named by the saved task may have been replaced on purpose (log
   * rotation, an editor's rename): a reopened file need not be the saved one. Files are
   * still opened with the task's own credentials.
   */
  allowReplaced?: boolean
  /** Where to say what the restore waits for (a zombie holding its PID); stderr by default. */
  note?: RestoreNote
  /**
   * Lazy restore (lib/restore/lazy.ts): the process runs before its private anonymous pages
   * are in; they are filled on first touch and in the background. Called, before the
   * process runs, with the fill, which settles when the last page is in.
   */
  lazy?: (fill: Promise<LazyOutcome>) => void
  /** The pieces to fill first in a lazy restore, by PID (the record of the last one's first touches). */
  prefetch?: Map<number, Array<{ start: bigint; at: number }>>
  /** A lazy restore of a tree: its processes, all killed by any one's fill that fails (lazy.ts). */
  lazyKin?: FillKin
  /** A process of a tree: its MAP_SHARED anonymous mappings that map what a process rebuilt before maps (pstree.ts). */
  sharedFrom?: Map<Vma, SharedSource>
  /**
   * A process of a tree: for each shared anonymous object (by `dev inode`), the size every
   * process's mappings of it need (the furthest end of one), so the first process makes it
   * that large.
   */
  sharedExtent?: Map<string, bigint>
  /**
   * A process of a tree other than its root: its parent is restored with it, so its
   * parent-death signal is set again. The root's parent is the restore's keeper, whose exit
   * would send it: the root's is not.
   */
  parentRestored?: boolean
  /** Root alone stored the checkpoint (lib/restore/owner.ts, set by restorePath): see FileAccess.storedByRoot. */
  storedByRoot?: boolean
  /** A process of a tree: its mappings its stub mapped and filled before forking its children (cow.ts). */
  premapped?: Set<Vma>
  /**
   * A process of a tree: its mappings that hold an ancestor's premapped pages, by fork
   * (cow.ts), each with the PID of the process that premapped it.
   */
  inherited?: Map<Vma, number>
  /** A process of a tree: its mappings' inherited runs, resolved to who stores them (cow.ts, resolveInherited). */
  inheritedPieces?: Map<Vma, InheritedPiece[]>
}

/** The mapping of a process already rebuilt whose shmem object another process maps too. */
export interface SharedSource {
  pid: number
  vma: Vma
  /** Whether the mappings of that process cover all of this one's: else this one's stored pages are written too. */
  covered: boolean
}

/** Restores `saved` (already validated by loading it); returns its PID. */
export async function restoreProcess(saved: SavedCheckpoint, timer = new PhaseTimer('restore'), options: RestoreOptions = {}): Promise<number> {
  try {
    return await restoreTask(saved, timer, options)
  } finally {
    // Restored or not, the task's TCP connections end their gaps: their peers' packets pass again.
    await closeConnectionGaps(saved.fileTable, saved.process.creds.euid)
  }
}

async function restoreTask(saved: SavedCheckpoint, timer: PhaseTimer, options: RestoreOptions): Promise<number> {
  const { process: proc } = saved
  const pid = proc.pid
  await checkRestorable(saved, options)
  const access = fileAccess(saved, options)
  const records = await planFileRecords(saved.fileTable)
  const plan = framePlan(saved.fileTable, proc, records, access)
  timer.mark('plan')
  await native.spawnRestorer(pid, stubPath(), plan.bytes, plan.workFdBase).catch((err: unknown) => {
    if ((err as { code?: string }).code === 'EEXIST') throw new CkptError(`task-${pid}: PID ${pid} is taken (by a process that started meanwhile)`, 'EEXIST')
    throw new CkptError(`restore of ${pid}: ${messageOf(err)}`)
  })
  timer.mark('stub and file table')
  let fill: Promise<LazyOutcome> | undefined
  // A lazy fill's background work waits until the task runs (or the restore failed).
  const lazyHold = { release: () => undefined as void }
  try {
    await fillContents(records.flatMap((r) => (r.fill ? [r.fill] : [])), [{ pid, fds: saved.fileTable.fds }])
    await rebuildSpawned(saved, timer, access, { ...options, lazy: options.lazy && ((f) => { fill = f; options.lazy!(f) }) }, lazyHold)
    await native.thaw(pid, false)
    lazyHold.release()
    timer.mark('thaw')
    timer.report(`of ${pid}`)
    return pid
  } catch (err) {
    await native.thaw(pid, true).catch(() => undefined)
    lazyHold.release() // the fill then finds the task gone and ends
    // A lazy fill that found a damaged page kills the process itself: its reason is the one.
    const filled = fill && await fill.then(() => undefined, (e: unknown) => e)
    if (filled) throw filled
    throw err instanceof CkptError ? err : new CkptError(`restore of ${pid}: ${messageOf(err)}`)
  }
}

/** What is refused before anything is made, and the wait for the saved IDs to be free. */
export async function checkRestorable(saved: SavedCheckpoint, options: RestoreOptions): Promise<void> {
  refuseUnsupported(saved)
  await refusePendingAioEvents(saved)
  await awaitIdsFree(saved, options.note ?? toStderr)
}

export function fileAccess(saved: SavedCheckpoint, options: RestoreOptions): FileAccess {
  return { sameBoot: saved.bootId !== undefined && saved.bootId === currentBootId(), allowReplaced: options.allowReplaced === true, storedByRoot: options.storedByRoot === true }
}

/**
 * A stub that has opened the task's files (spawnRestorer, or spawnTree for a tree) becomes the
 * saved task: threads, memory, process state, locks, thread state and registers. It is left
 * stopped: the caller releases it (thaw), or kills it on failure.
 */
export async function rebuildSpawned(saved: SavedCheckpoint, timer: PhaseTimer, access: FileAccess, options: RestoreOptions, lazyHold = { release: (): void => undefined }): Promise<void> {
  const { process: proc, threads, vmas } = saved
  const pid = proc.pid
  // The stub's heap lands anywhere in the GiB above its binary: the holes avoid it too.
  const layout = new Layout(vmas, mappedRanges(pid))
  await mapCodePage(pid, layout)
  // Every thread takes its ID now, before the slow parts: until then a process starting
  // elsewhere (the PID counter wraps at pid_max, 32768 here) could take one.
  for (const thread of threads.slice(1)) await createThread(pid, thread.tid, layout)
  timer.mark('threads created')
  await restoreThpDisable(pid, proc, layout)
  await restoreMemory(pid, vmas, proc, layout, timer, access, options, lazyHold)
  await restoreMmAndProcessState(pid, proc, vmas.filter((v) => v.kind !== 'aio'), layout, access)
  await restoreLocks(pid, saved, layout)
  timer.mark('process state')
  await restoreThreads(pid, proc, threads, layout, options.parentRestored === true)
  timer.mark('threads')
  // Queued last, while every thread is still held: the stop happens when the task is let go,
  // as a real one (its parent's waitpid(WUNTRACED) sees it; a SIGCONT resumes it).
  if (proc.stopSignal !== 0) process.kill(pid, proc.stopSignal)
}

function refuseUnsupported(saved: SavedCheckpoint): void {
  const { process: proc, vmas } = saved
  const xstate = native.xstateSize()
  for (const t of saved.threads) {
    if (t.xstate.length !== xstate) {
      throw new CkptError(`task-${proc.pid}/threads/${t.tid}/xstate: ${t.xstate.length} bytes, this CPU's xsave area is ${xstate}: restore on the same kind of CPU`, 'EINVAL')
    }
  }
  refuseLockedOverLimit(saved)
  for (const v of vmas) {
    if (v.path.endsWith(' (deleted)') && v.kind !== 'shared-anonymous' && v.kind !== 'aio' && !isDeletedFileCopy(v) && !isDeletedSharedFile(v)) {
      throw new CkptError(`task-${proc.pid}/memory/vmas/${vmaName(v)}: maps ${v.path}, a deleted file: cannot be restored yet`, 'ENOTSUP')
    }
  }
  refuseDeletedFileAlsoOpen(saved)
}

/**
 * A deleted file mapped shared is recreated from the mapping's pages, an unlinked file held
 * open from its description's contents: were it both, the two would come back as two files,
 * and a write through the fd would no longer show in the mapping. Refused until they are one.
 */
function refuseDeletedFileAlsoOpen(saved: SavedCheckpoint): void {
  for (const v of saved.vmas.filter(isDeletedSharedFile)) {
    const [major, minor] = v.dev.split(':').map((h) => parseInt(h, 16))
    const open = saved.fileTable.files.find((d) => {
      if (d.type !== 'file' || d.ino !== v.inode) return false
      const dev = majorMinor(d.dev)
      return dev.major === major && dev.minor === minor
    })
    if (open) {
      throw new CkptError(`task-${saved.pid}/memory/vmas/${vmaName(v)}: maps ${v.path}, a deleted file that files/${open.objref} holds open too: the mapping and the fd would come back as two files: cannot be restored yet`, 'ENOTSUP')
    }
  }
}

const CAP_IPC_LOCK = 14n
const isLocked = (v: Vma) => /(^| )lo( |$)/.test(v.vmFlags)

/**
 * The restore locks memory with the server's CAP_IPC_LOCK: it locks no more than the saved
 * process could have locked itself (its RLIMIT_MEMLOCK, unless it holds CAP_IPC_LOCK), as the
 * kernel's mlock would have checked.
 */
function refuseLockedOverLimit(saved: SavedCheckpoint): void {
  const { process: proc, vmas } = saved
  if (proc.creds.capEffective & (1n << CAP_IPC_LOCK)) return
  const limit = proc.rlimits.find((r) => r.name === 'memlock')?.soft ?? 0n
  let locked = 0n
  for (const v of vmas.filter(isLocked)) {
    locked += v.end - v.start
    if (locked > limit) {
      throw new CkptError(`task-${proc.pid}/memory/vmas/${vmaName(v)}/vm_flags: locked (lo), ${locked} bytes locked in all, over the saved RLIMIT_MEMLOCK (${limit}) of a process without CAP_IPC_LOCK`, 'EPERM')
    }
  }
}

/** struct aio_ring: id, nr, head, tail, magic, compat and incompat features, header length. */
const AIO_RING_HEADER = 32, AIO_RING_MAGIC = 0xa10a10a1

/**
 * An AIO context comes back empty (io_setup): a completed event still waiting in the saved
 * ring (head != tail) would be lost, so such a ring is refused.
 */
async function refusePendingAioEvents(saved: SavedCheckpoint): Promise<void> {
  for (const v of saved.vmas.filter((m) => m.kind === 'aio')) {
    const where = `task-${saved.pid}/memory/vmas/${vmaName(v)}`
    const header = await v.pages.read(0, AIO_RING_HEADER)
    if (header.length !== AIO_RING_HEADER || header.readUInt32LE(16) !== AIO_RING_MAGIC) throw new CkptError(`${where}/pages: not an AIO ring (no aio_ring header)`, 'EINVAL')
    const head = header.readUInt32LE(8), tail = header.readUInt32LE(12)
    if (head !== tail) throw new CkptError(`${where}: AIO ring with ${(tail - head) >>> 0} completed events not read yet (head ${head}, tail ${tail}): they cannot be restored`, 'ENOTSUP')
  }
}

/** How long a restore waits for a zombie holding one of its IDs to be reaped by its parent. */
export const ZOMBIE_WAIT_MS = 10_000

/**
 * Checks that every saved PID/TID is free. One held by a zombie (the original, killed just
 * before, that its parent or init has not reaped yet: 1-1.5 s here) is waited for, up to
 * ZOMBIE_WAIT_MS, with a note past one second; one held by a live process is refused at once.
 */
async function awaitIdsFree(saved: SavedCheckpoint, note: RestoreNote): Promise<void> {
  for (const t of saved.threads) {
    if (lifeState(t.tid) === 'zombie') {
      const tell = () => note(`waiting up to ${ZOMBIE_WAIT_MS / 1000} s for ${describeProcess(t.tid)}`)
      await waitUntil(() => lifeState(t.tid) !== 'zombie', { limitMs: ZOMBIE_WAIT_MS, note: tell, noteAfterMs: 1000 })
    }
    if (lifeState(t.tid) !== 'gone') throw new CkptError(`task-${saved.pid}: PID ${t.tid} is taken: ${describeProcess(t.tid)}`, 'EEXIST')
  }
}

function describeProcess(pid: number): string {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))
    const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    if (state === 'Z' || state === 'X') return `${comm} (pid ${pid}) has exited but its parent (pid ${ppid}) has not reaped it yet`
    return `${comm} (pid ${pid}) is running; end it first`
  } catch {
    return `pid ${pid} exists`
  }
}

export function vmaName(v: Vma): string {
  return `${v.start.toString(16)}-${v.end.toString(16)}`
}

function protOf(perms: string): number {
  return (perms[0] === 'r' ? PROT_READ : 0) | (perms[1] === 'w' ? PROT_WRITE : 0) | (perms[2] === 'x' ? PROT_EXEC : 0)
}

// ---------------------------------------------------------------------------------------

/**
 * Addresses the restore itself needs while it works: a page holding a `syscall` instruction
 * and a scratch area for arguments, both in holes of the saved layout, and a parking area
 * through which the vdso moves (so its old and new places may overlap).
 */
class Layout {
  readonly codeAddr: bigint
  readonly scratchAddr: bigint
  readonly parkAddr: bigint
  static readonly SCRATCH = 1n << 20n
  static readonly PARK = 1n << 20n

  /** `avoid`: the restorer's own mappings, still there when the code page and scratch area are mapped. */
  constructor(readonly vmas: Vma[], avoid: Array<readonly [bigint, bigint]> = []) {
    const taken = [...vmas.map((v) => [v.start, v.end] as const), ...avoid]
    this.codeAddr = this.hole(taken, PAGE)
    taken.push([this.codeAddr, this.codeAddr + PAGE])
    this.scratchAddr = this.hole(taken, Layout.SCRATCH)
    taken.push([this.scratchAddr, this.scratchAddr + Layout.SCRATCH])
    this.parkAddr = this.hole(taken, Layout.PARK)
  }

  /** A free range of `size` for a while during the restore: clear of the saved mappings, the restore's own and `also`. */
  freeRange(size: bigint, also: Array<readonly [bigint, bigint]> = []): bigint {
    const own: Array<readonly [bigint, bigint]> = [[this.codeAddr, this.codeAddr + PAGE], [this.scratchAddr, this.scratchAddr + Layout.SCRATCH], [this.parkAddr, this.parkAddr + Layout.PARK]]
    return this.hole([...this.vmas.map((v) => [v.start, v.end] as const), ...own, ...also], size)
  }

  /** The lowest free range of `size` above 16 MiB (clear of mmap_min_addr and low mappings). */
  private hole(taken: Array<readonly [bigint, bigint]>, size: bigint): bigint {
    const sorted = [...taken].sort((a, b) => (a[0] < b[0] ? -1 : 1))
    let candidate = 0x1000000n
    for (const [start, end] of sorted) {
      if (start >= candidate + size) break
      if (end > candidate) candidate = end
    }
    if (candidate + size > TASK_SIZE) throw new CkptError('restore: no free address range for the restorer')
    return candidate
  }
}

export interface Call extends InjectedCall {
  /** What the call does, for the error message. */
  what: string
  /** A failure is not an error (an optimisation the kernel may refuse): its result is returned as is. */
  mayFail?: boolean
}

/** Runs calls in the task through the restorer's own syscall page and scratch area; any failure names its call. */
async function inject(tid: number, layout: Layout, calls: Call[], scratch: Buffer | null = null): Promise<bigint[]> {
  return (await injectReading(tid, layout, calls, scratch)).results
}

/** inject, also returning the scratch area as the calls left it (what they wrote there). */
async function injectReading(tid: number, layout: Layout, calls: Call[], scratch: Buffer | null = null): Promise<{ results: bigint[]; scratch: Buffer }> {
  if (calls.length === 0) return { results: [], scratch: Buffer.alloc(0) }
  // The code page also holds the runner (addon/src/inject.c): runs of calls without a stop
  // each; the scratch area stays mapped from batch to batch until restoreThreads unmaps it.
  const placement = { scratchAddr: layout.scratchAddr, syscallAddr: layout.codeAddr, runnerPage: layout.codeAddr, keepScratch: Layout.SCRATCH }
  const size = scratch ? roundUp(BigInt(scratch.length), PAGE) : 0n
  if (size > Layout.SCRATCH) throw new CkptError(`restore: ${size} bytes of system call arguments is more than the scratch area`)
  const done = await native.injectBatch(tid, Number(size), scratch, calls, placement)
  done.results.forEach((r, i) => {
    if (r < 0n && r > -4096n && !calls[i].mayFail) throw new CkptError(`restore: ${calls[i].what}: ${errnoText(Number(-r))}`)
  })
  return done
}

/** inject, with the saved task's file credentials around `calls` (lib/restore/access.ts); the results of `calls`. */
async function injectAsTask(pid: number, proc: ProcessState, layout: Layout, scratch: Scratch, calls: Call[]): Promise<bigint[]> {
  const wrapped = asTask(pid, proc.creds, scratch, calls)
  const results = await inject(pid, layout, wrapped.calls, scratch.buffer())
  wrapped.verify(results)
  return results.slice(wrapped.first, wrapped.first + calls.length)
}

function errnoText(errno: number): string {
  const name = Object.entries(require('os').constants.errno as Record<string, number>).find(([, n]) => n === errno)?.[0]
  return name ? `${name} (${errno})` : `errno ${errno}`
}

const roundUp = (n: bigint, to: bigint) => ((n + to - 1n) / to) * to

/** Packs strings and structs into a scratch buffer; each put returns its offset. */
export class Scratch {
  private readonly parts: Buffer[] = []
  private size = 0

  put(data: Buffer): bigint {
    const offset = this.size
    const padded = (data.length + 7) & ~7
    const b = Buffer.alloc(padded)
    data.copy(b)
    this.parts.push(b)
    this.size += padded
    return BigInt(offset)
  }

  cstring(s: string): bigint {
    return this.put(Buffer.from(s + '\0', 'utf8'))
  }

  buffer(): Buffer {
    return Buffer.concat(this.parts)
  }
}

// ---------------------------------------------------------------------------------------
// Memory

interface StubMaps {
  /** [vvar], [vvar_vclock], [vdso] as they are in the stub now, in address order. */
  special: Array<{ name: string; start: bigint; end: bigint }>
}

/** Every mapping of a process, as [start, end) ranges. */
function mappedRanges(pid: number): Array<[bigint, bigint]> {
  return fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter(Boolean).map((line) => {
    const [start, end] = line.slice(0, line.indexOf(' ')).split('-').map((h) => BigInt('0x' + h))
    return [start, end]
  })
}

function readStubMaps(pid: number): StubMaps {
  const special = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter(Boolean).map((line) => {
    const [range, , , , , ...rest] = line.split(/\s+/)
    const [start, end] = range.split('-').map((h) => BigInt('0x' + h))
    return { name: rest.join(' '), start, end }
  }).filter((m) => SPECIAL.has(m.name))
  return { special }
}

/** A page of our own with a `syscall` instruction: for the vdso's moves, and for new threads to wait on. */
async function mapCodePage(pid: number, layout: Layout): Promise<void> {
  const [code] = (await native.injectBatch(pid, 0, null, [{ nr: SYS.mmap, args: [layout.codeAddr, PAGE, BigInt(PROT_READ | PROT_WRITE | PROT_EXEC), BigInt(MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE), -1n, 0n] }])).results
  if (code !== layout.codeAddr) throw new CkptError(`restore: map the restorer's code page at ${layout.codeAddr.toString(16)}: ${code < 0n ? errnoText(Number(-code)) : `got ${code.toString(16)}`}`)
  // `syscall`, then `jmp .`: a thread made by an injected clone3 returns there and spins
  // in place until it is seized (createThread).
  await native.writeMemory(pid, layout.codeAddr, Buffer.from([0x0f, 0x05, 0xeb, 0xfe]))
}

async function restoreMemory(pid: number, allVmas: Vma[], proc: ProcessState, layout: Layout, timer: PhaseTimer, access: FileAccess, options: RestoreOptions, lazyHold: { release: () => void }): Promise<void> {
  // AIO rings are made by io_setup, not mapped: the last step.
  const vmas = allVmas.filter((v) => v.kind !== 'aio')
  // Memory another process of the tree holds already: mapped from there, its pages are in.
  const sharedFrom = options.sharedFrom ?? new Map<Vma, SharedSource>()
  // A deleted file shared with a process rebuilt before is written again from this one's
  // stored pages: they are the same bytes, and this mapping may cover parts of the file the
  // other's does not.
  // Mappings a tree's stub made already (cow.ts): the premapped ones hold their own pages, the
  // inherited ones their parent's; they stay, and nothing writes a page of them that need not be.
  const premapped = options.premapped ?? new Set<Vma>()
  const inherited = options.inherited ?? new Map<Vma, number>()
  const kept = vmas.filter((v) => premapped.has(v) || inherited.has(v))
  // A lazy restore leaves these to the fill (lib/restore/lazy.ts); the others are written now.
  // Kept mappings are not among them: their pages are in (premapped), or are the parent's
  // by fork, which the fill's UFFDIO_COPY could not replace where they differ.
  const lazily = options.lazy ? vmas.filter((v) => isLazy(v) && !kept.includes(v)) : []
  const eager = vmas.filter((v) => !lazily.includes(v) && !kept.includes(v) && (!sharedFrom.has(v) || isDeletedSharedFile(v) || !sharedFrom.get(v)!.covered))
  // 1. The restorer's code page: mapped by mapCodePage, before the threads were created.
  // 2. Unmap all of the stub but the vdso trio, our code page and the scratch area.
  const stub = readStubMaps(pid)
  const keep: Array<[bigint, bigint]> = [[layout.codeAddr, layout.codeAddr + PAGE], [layout.scratchAddr, layout.scratchAddr + Layout.SCRATCH]]
  for (const m of stub.special) keep.push([m.start, m.end])
  for (const v of kept) keep.push([v.start, v.end])
  keep.sort((a, b) => (a[0] < b[0] ? -1 : 1))
  const unmap: Call[] = []
  let from = 0n
  for (const [start, end] of keep) {
    if (start > from) unmap.push({ nr: SYS.munmap, args: [from, start - from], what: `munmap the restorer's ${from.toString(16)}-${start.toString(16)}` })
    from = end > from ? end : from
  }
  if (TASK_SIZE > from) unmap.push({ nr: SYS.munmap, args: [from, TASK_SIZE - from], what: `munmap the restorer's ${from.toString(16)}-` })
  // 3. The vdso trio goes where the saved program expects it (ld.so cached its addresses):
  //    in the same batch, as every batch is a stop of the task (the cost of a tree's restore).
  await inject(pid, layout, [...unmap, ...vdsoMoves(vmas, stub, layout)])

  // 4. Every saved mapping, writable first so its pages can be written. Files are opened
  //    once each (one batch), mapped and closed (a second batch).
  const mapped = vmas.filter((v) => !SPECIAL.has(v.path) && v.kind !== 'vsyscall')
  const fileFds = await openMappedFiles(pid, proc, layout, mapped, access)
  const sharedFds = await openSharedSources(pid, layout, sharedFrom)
  const objectFds = await makeSharedObjects(pid, layout, mapped.filter((v) => v.kind === 'shared-anonymous' && !sharedFrom.has(v)), options.sharedExtent)
  const deletedFds = await recreateDeletedFiles(pid, proc, layout, mapped.filter((v) => isDeletedSharedFile(v) && !sharedFrom.has(v)))
  const calls: Call[] = []
  for (const v of mapped) {
    if (kept.includes(v)) continue
    const len = v.end - v.start
    const vmFlags = v.vmFlags.split(' ')
    let flags = MAP_FIXED_NOREPLACE | (vmFlags.includes('nr') ? MAP_NORESERVE : 0)
    if (vmFlags.includes('gd')) flags |= MAP_GROWSDOWN
    const what = `map ${vmaName(v)} (${v.path || v.kind})`
    const prot = BigInt(initialProt(v))
    const source = sharedFrom.get(v)
    if (source) {
      // The object is as it was: the recreated deleted file, or shared anonymous memory made
      // from offset 0 (makeSharedObjects); mapped at the saved offset.
      calls.push({ nr: SYS.mmap, args: [v.start, len, prot, BigInt(flags | MAP_SHARED), sharedFds.get(v)!, v.offset], what: `${what}, shared with task-${source.pid}` })
    } else if (objectFds.has(v)) {
      calls.push({ nr: SYS.mmap, args: [v.start, len, prot, BigInt(flags | MAP_SHARED), objectFds.get(v)!, v.offset], what: `${what}, part of a shared object made whole first` })
    } else if (isDeletedSharedFile(v)) {
      calls.push({ nr: SYS.mmap, args: [v.start, len, prot, BigInt(flags | MAP_SHARED), deletedFds.get(fileIdentity(v))!, v.offset], what: `${what}, recreated` })
    } else if (isMappedFromFile(v)) {
      const shared = v.kind === 'file-shared'
      calls.push({ nr: SYS.mmap, args: [v.start, len, prot, BigInt(flags | (shared ? MAP_SHARED : MAP_PRIVATE)), fileFds.get(fileKey(v))!, v.offset], what })
    } else {
      // A droppable mapping (VmFlags dp, MAP_DROPPABLE) is a mapping type of its own, like private or shared.
      const type = v.kind === 'shared-anonymous' ? MAP_SHARED : vmFlags.includes('dp') ? MAP_DROPPABLE : MAP_PRIVATE
      calls.push({ nr: SYS.mmap, args: [v.start, len, prot, BigInt(flags | MAP_ANONYMOUS | type), -1n, 0n], what })
    }
  }
  for (const fd of [...fileFds.values(), ...sharedFds.values(), ...deletedFds.values(), ...new Set(objectFds.values())]) calls.push({ nr: SYS.close, args: [fd], what: 'close a mapped file' })
  // Mappings that hold the parent's pages by fork (cow.ts): the pages this task has no saved
  // content for are dropped (zero again) in the same batch; only the stored pages that differ
  // are written, after the others (writeDifferingPages, below).
  const keptFromParent = kept.filter((v) => inherited.has(v))
  for (const v of keptFromParent) for (const [start, length] of unstoredRanges(v)) calls.push({ nr: SYS.madvise, args: [start, length, BigInt(MADV_DONTNEED)], what: `drop the unstored pages of ${vmaName(v)}` })
  await inject(pid, layout, calls)

  // 5. Pages: faulted in first (first-touch faults dominate the cost), then written in big pieces.
  //    A mapping that had huge pages allowed or refused (VmFlags hg, nh) gets that advice
  //    before it is faulted in, so its pages come back the same size: 2 MiB pages also fault
  //    and fill about ten times faster here (../shared/notes/restore-pitfalls.md, section 8).
  const populate: Call[] = []
  for (const v of vmas) {
    if (SPECIAL.has(v.path) || v.kind === 'vsyscall') continue
    for (const flag of v.vmFlags.split(' ')) {
      if (HUGEPAGE_FLAGS.has(flag)) populate.push({ nr: SYS.madvise, args: [v.start, v.end - v.start, BigInt(MADVISE_BY_FLAG[flag])], what: `madvise ${vmaName(v)} ${flag}` })
    }
  }
  for (const v of eager) {
    for (const run of v.stored) {
      if (run.length < 1n << 20n) continue
      for (let done = 0n; done < run.length; done += BigInt(READ_PIECE)) {
        const n = run.length - done < BigInt(READ_PIECE) ? run.length - done : BigInt(READ_PIECE)
        populate.push({ nr: SYS.madvise, args: [v.start + run.offset + done, n, BigInt(MADV_POPULATE_WRITE)], what: `populate ${vmaName(v)}` })
      }
    }
  }
  timer.mark('mappings')
  // Whole stored 2 MiB blocks of anonymous memory become huge pages first (hugepages.ts).
  const huge = hugePageCalls(eager, proc)
  await inject(pid, layout, huge.touch)
  timer.mark('huge page blocks touched')
  await inject(pid, layout, huge.collapse)
  timer.mark('huge pages')
  await inject(pid, layout, populate)
  timer.mark('populate')
  // Each piece is checked as soon as the task has read it in, while it reads the next.
  const check = new PageCheck(pid, [...eager, ...kept], new Set(kept))
  // The page files are closed with the final protections (one stop less).
  const closePageFiles = await writePages(pid, eager, layout, check)
  timer.mark('pages')
  for (const v of keptFromParent) await writeDifferingPages(pid, v)
  timer.mark('pages shared with the parent')
  // Inherited pages the fork did not bring: written from the process storing them. Those the
  // process that premapped the area stores came with the fork and are shared as they are.
  for (const [v, pieces] of options.inheritedPieces ?? []) {
    if (!vmas.includes(v)) continue
    const premapper = inherited.get(v)
    await writeInheritedPieces(pid, pieces.filter((piece) => piece.owner !== premapper))
  }
  timer.mark('inherited pages written')
  await check.finish([...eager, ...kept])
  timer.mark('pages checked')
  if (lazily.length > 0) {
    const { done: fill, release } = await startLazy(pid, layout, lazily, options.prefetch?.get(pid), options.lazyKin)
    lazyHold.release = release
    fill.catch(() => undefined) // a restore that fails later kills the process: the fill then ends
    options.lazy!(fill)
    timer.mark('lazy fill started')
  }

  // 6. Final protections and madvise flags.
  const finish: Call[] = [...closePageFiles]
  for (const v of vmas) {
    if (SPECIAL.has(v.path) || v.kind === 'vsyscall') continue
    const prot = protOf(v.perms)
    // A kept mapping was made with its parent's initial protection (premapMode), maybe not this one's.
    if (prot !== initialProt(v) || kept.includes(v)) finish.push({ nr: SYS.mprotect, args: [v.start, v.end - v.start, BigInt(prot)], what: `mprotect ${vmaName(v)} ${v.perms}` })
    for (const flag of v.vmFlags.split(' ')) {
      const advice = MADVISE_BY_FLAG[flag]
      if (advice !== undefined && !HUGEPAGE_FLAGS.has(flag)) finish.push({ nr: SYS.madvise, args: [v.start, v.end - v.start, BigInt(advice)], what: `madvise ${vmaName(v)} ${flag}` })
    }
    // Locked memory (VmFlags lo, and lf for MLOCK_ONFAULT): locked last, once its pages are in.
    // The restore still runs with the server's CAP_IPC_LOCK; the saved RLIMIT_MEMLOCK comes later.
    if (isLocked(v)) {
      const onFault = /(^| )lf( |$)/.test(v.vmFlags)
      finish.push({ nr: SYS.mlock2, args: [v.start, v.end - v.start, BigInt(onFault ? MLOCK_ONFAULT : 0)], what: `mlock ${vmaName(v)}${onFault ? ' (on fault)' : ''}` })
    }
  }
  await inject(pid, layout, finish)
  await restoreAioRings(pid, allVmas.filter((v) => v.kind === 'aio'), layout)

  timer.mark('protections')
}

/**
 * Makes a userfaultfd inside the task (its mm is the one the uffd serves; kernel-mode faults
 * are handled too, the restorer is privileged), takes it over with pidfd_getfd and closes the
 * task's copy, then starts the fill on it.
 */
async function startLazy(pid: number, layout: Layout, vmas: Vma[], prefetch: Array<{ start: bigint; at: number }> | undefined, kin: FillKin | undefined): Promise<{ done: Promise<LazyOutcome>; release: () => void }> {
  const [fd] = await inject(pid, layout, [{ nr: SYS.userfaultfd, args: [BigInt(O_CLOEXEC | O_NONBLOCK)], what: 'userfaultfd for the lazy fill' }])
  let ours: number
  try {
    ours = native.getFd(pid, Number(fd))
  } finally {
    await inject(pid, layout, [{ nr: SYS.close, args: [fd], what: 'close the task\'s userfaultfd (the fill holds it)' }])
  }
  return startLazyFill(pid, ours, vmas, prefetch, kin)
}

/**
 * The protection a mapping is created with: the saved one, plus read and write where its
 * pages are written or where the original was accounted as writable (VmFlags "ac": a private
 * mapping that was writable once, e.g. RELRO). Private mappings made writable get VM_ACCOUNT,
 * which the kernel also compares when it merges neighbours: adding write access elsewhere
 * would merge a read-only text mapping with the RELRO mapping next to it.
 */
/** How a tree's stub premaps `v` (cow.ts, addon/stub/tree.c): as step 4 of restoreMemory would map it. */
export function premapMode(v: Vma): PremapMode {
  const vmFlags = v.vmFlags.split(' ')
  const flags = (vmFlags.includes('nr') ? MAP_NORESERVE : 0) | (vmFlags.includes('gd') ? MAP_GROWSDOWN : 0)
  const advice = vmFlags.includes('hg') ? MADVISE_BY_FLAG.hg : vmFlags.includes('nh') ? MADVISE_BY_FLAG.nh : 0
  return { prot: initialProt(v), flags, advice }
}

function initialProt(v: Vma): number {
  const saved = protOf(v.perms)
  if (v.kind === 'file-shared' && !isDeletedSharedFile(v)) return saved
  const writes = v.stored.length > 0 || (v.inherited ?? []).length > 0 || v.vmFlags.split(' ').includes('ac') || v.kind === 'shared-anonymous'
  return writes ? saved | PROT_READ | PROT_WRITE : saved
}

/**
 * The shmem objects of MAP_SHARED anonymous mappings that a process of the tree rebuilt before
 * this one maps (/proc/PID/map_files/START-END, opened with the restorer's privileges, which
 * that needs): each is mapped here from that fd, so both map one object again. Returns the fds
 * in the task. The saved offsets are the original object's: the source's own maps it from 0.
 */
async function openSharedSources(pid: number, layout: Layout, sharedFrom: Map<Vma, SharedSource>): Promise<Map<Vma, bigint>> {
  const scratch = new Scratch()
  const entries = [...sharedFrom.entries()]
  const calls: Call[] = entries.map(([v, source]) => {
    const file = `/proc/${source.pid}/map_files/${vmaName(source.vma)}`
    return { nr: SYS.openat, args: [AT_FDCWD, scratch.cstring(file), BigInt(O_RDWR | O_CLOEXEC), 0n], scratchArgs: 0b10, what: `open ${file} (memory shared with task-${source.pid})` }
  })
  if (calls.length === 0) return new Map()
  const fds = await inject(pid, layout, calls, scratch.buffer())
  // A recreated file is as long as the first process's mappings needed: grown (never cut) to cover this one's too.
  const grow: Call[] = entries.flatMap(([v, source], i) => (isDeletedSharedFile(v) && coveredEnd(v) > 0n
    ? [{ nr: SYS.fallocate, args: [fds[i], 0n, 0n, coveredEnd(v)], what: `grow the recreated ${deletedPath(v)} (shared with task-${source.pid}) to ${coveredEnd(v)} bytes` }]
    : []))
  await inject(pid, layout, grow)
  return new Map(entries.map(([v], i) => [v, fds[i]]))
}

/**
 * MAP_SHARED anonymous memory this process makes for the tree (no process rebuilt before maps
 * it). One mapping from offset 0 as large as the object needs is made as it was, by an
 * anonymous mmap (the common case: nothing here). Otherwise (several mappings of one object:
 * a part mremapped elsewhere, a part mapped again through /proc/self/map_files, or a part
 * only another process maps) the object is made whole first, as large as the furthest end
 * any process maps, in a free range; each mapping then maps it at its saved offset from an fd
 * of it, and the first mapping is undone. Returns that fd for each such mapping.
 */
async function makeSharedObjects(pid: number, layout: Layout, vmas: Vma[], treeExtent: Map<string, bigint> | undefined): Promise<Map<Vma, bigint>> {
  const objects = new Map<string, Vma[]>()
  for (const v of vmas) {
    const key = fileIdentity(v)
    objects.set(key, [...(objects.get(key) ?? []), v])
  }
  const made: Array<{ addr: bigint; size: bigint; vmas: Vma[] }> = []
  const taken: Array<readonly [bigint, bigint]> = []
  for (const [key, list] of objects) {
    let size = treeExtent?.get(key) ?? 0n
    for (const v of list) if (v.offset + (v.end - v.start) > size) size = v.offset + (v.end - v.start)
    if (list.length === 1 && list[0].offset === 0n && list[0].end - list[0].start === size) continue
    const addr = layout.freeRange(size, taken)
    taken.push([addr, addr + size])
    made.push({ addr, size, vmas: list })
  }
  if (made.length === 0) return new Map()
  await inject(pid, layout, made.map((m) => ({ nr: SYS.mmap, args: [m.addr, m.size, BigInt(PROT_READ | PROT_WRITE), BigInt(MAP_FIXED_NOREPLACE | MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE), -1n, 0n], what: `make the shared object of ${m.vmas.map(vmaName).join(', ')} (${m.size} bytes)` })))
  const scratch = new Scratch()
  const fds = await inject(pid, layout, made.map((m) => {
    const file = `/proc/self/map_files/${m.addr.toString(16)}-${(m.addr + m.size).toString(16)}`
    return { nr: SYS.openat, args: [AT_FDCWD, scratch.cstring(file), BigInt(O_RDWR | O_CLOEXEC), 0n], scratchArgs: 0b10, what: `open ${file} (the shared object of ${vmaName(m.vmas[0])})` }
  }), scratch.buffer())
  await inject(pid, layout, made.map((m) => ({ nr: SYS.munmap, args: [m.addr, m.size], what: `unmap the first mapping of the shared object of ${vmaName(m.vmas[0])}` })))
  return new Map(made.flatMap((m, i) => m.vmas.map((v) => [v, fds[i]] as const)))
}

/** The file a mapping maps, by device and inode: two mappings of one deleted file share it. */
const fileIdentity = (v: Vma): string => `${v.dev} ${v.inode}`

const deletedPath = (v: Vma): string => v.path.slice(0, -' (deleted)'.length)

/** The end, in the file, of the pages a deleted file's mapping stored (the file covered them). */
const coveredEnd = (v: Vma): bigint => (v.stored.length === 0 ? 0n : v.offset + v.stored[v.stored.length - 1].offset + v.stored[v.stored.length - 1].length)

const O_TMPFILE = 0o20000000 | O_DIRECTORY, O_EXCL = 0o200, MFD_CLOEXEC = 1n
const ENOENT = 2, ENOTDIR = 20, EISDIR = 21, EOPNOTSUPP = 95
/** memfd_create takes at most 249 bytes of name. */
const MEMFD_NAME_MAX = 249

/**
 * Deleted files this process maps shared and no process rebuilt before recreated: each is
 * made once, with the task's credentials, as an unnamed O_TMPFILE (mode 0600, which the
 * mapping does not record) in the directory it was deleted from, so only where the task
 * could create it and where no one can open it by name. A memfd comes back as a memfd of
 * its name; a file whose directory is gone (or whose file system has no O_TMPFILE) as a
 * memfd named after it. It is made as long as the stored pages reach (whole pages); the
 * pages themselves are written through the mappings. Returns the fds by fileIdentity.
 */
async function recreateDeletedFiles(pid: number, proc: ProcessState, layout: Layout, vmas: Vma[]): Promise<Map<string, bigint>> {
  const byFile = new Map<string, Vma[]>()
  for (const v of vmas) byFile.get(fileIdentity(v))?.push(v) ?? byFile.set(fileIdentity(v), [v])
  const made = new Map<string, bigint>()
  for (const [identity, maps] of byFile) {
    const file = deletedPath(maps[0])
    const where = `task-${pid}/memory/vmas/${vmaName(maps[0])}`
    let fd: bigint
    if (file.startsWith('/memfd:')) {
      fd = await memfdAsTask(pid, proc, layout, file.slice('/memfd:'.length), where, file)
    } else {
      const scratch = new Scratch()
      const dir = path.posix.dirname(file)
      ;[fd] = await injectAsTask(pid, proc, layout, scratch, [{
        nr: SYS.openat, args: [AT_FDCWD, scratch.cstring(dir), BigInt(O_TMPFILE | O_EXCL | O_RDWR | O_CLOEXEC), 0o600n], scratchArgs: 0b10, what: `recreate ${file} as an unnamed file in ${dir}`, mayFail: true,
      }])
      if (fd < 0n && [ENOENT, ENOTDIR, EISDIR, EOPNOTSUPP].includes(Number(-fd))) {
        fd = await memfdAsTask(pid, proc, layout, path.posix.basename(file), where, file)
      } else if (fd < 0n) {
        throw new CkptError(`${where}: maps the deleted ${file}: recreate it as an unnamed file in ${dir}: ${errnoText(Number(-fd))}`)
      }
    }
    const size = maps.reduce((most, v) => (coveredEnd(v) > most ? coveredEnd(v) : most), 0n)
    await inject(pid, layout, [{ nr: SYS.ftruncate, args: [fd, size], what: `${where}: size the recreated ${file} to ${size} bytes` }])
    made.set(identity, fd)
  }
  return made
}

async function memfdAsTask(pid: number, proc: ProcessState, layout: Layout, name: string, where: string, file: string): Promise<bigint> {
  const scratch = new Scratch()
  const [fd] = await injectAsTask(pid, proc, layout, scratch, [{
    nr: SYS.memfd_create, args: [scratch.cstring(Buffer.from(name).subarray(0, MEMFD_NAME_MAX).toString()), MFD_CLOEXEC], scratchArgs: 0b1, what: `${where}: recreate ${file} as a memfd`,
  }])
  return fd
}
/** A file mapping re-made from its path; a deleted file's private mapping is anonymous memory holding its stored pages. */
const isMappedFromFile = (v: Vma): boolean => (v.kind === 'file-private' && !isDeletedFileCopy(v)) || (v.kind === 'file-shared' && !isDeletedSharedFile(v))

/**
 * How a mapping's file is opened: 'rw' for a shared mapping that is writable, 'mw' for one
 * that is not but may be made so (VM_MAYWRITE, `mw` in VmFlags: its file was open for writing
 * when it was mapped, so mprotect may add PROT_WRITE later, zdtm maps_file_prot), 'r' else.
 */
const fileMode = (v: Vma): 'rw' | 'mw' | 'r' => {
  if (v.kind !== 'file-shared') return 'r'
  if (v.perms[1] === 'w') return 'rw'
  return v.vmFlags.split(' ').includes('mw') ? 'mw' : 'r'
}
const fileKey = (v: Vma) => `${fileMode(v)}:${v.path}`

/**
 * Opens every file the saved mappings map, once per path and access, with the task's own
 * credentials; on the boot that saved them, each must be the file (dev, inode) that was
 * mapped. Returns the fds in the task.
 */
async function openMappedFiles(pid: number, proc: ProcessState, layout: Layout, vmas: Vma[], access: FileAccess): Promise<Map<string, bigint>> {
  const scratch = new Scratch()
  const files = vmas.filter(isMappedFromFile)
  const keys = [...new Set(files.map(fileKey))]
  const open = (file: string, flags: number, s: Scratch): Call => ({ nr: SYS.openat, args: [AT_FDCWD, s.cstring(file), BigInt(flags | O_CLOEXEC), 0n], scratchArgs: 0b10, what: `open ${file} to map it`, mayFail: true })
  const calls: Call[] = keys.map((key) => open(key.slice(key.indexOf(':') + 1), key.startsWith('r:') ? O_RDONLY : O_RDWR, scratch))
  const fds = await injectAsTask(pid, proc, layout, scratch, calls)
  // A mapping that may only become writable keeps working read-only when the task can no
  // longer open its file for writing (mprotect to PROT_WRITE then fails, as it would in a
  // task that opened the file read-only): the task's own access decides, never more.
  const readOnly = keys.flatMap((key, i) => (key.startsWith('mw:') && fds[i] < 0n ? [i] : []))
  if (readOnly.length > 0) {
    const again = new Scratch()
    const opened = await injectAsTask(pid, proc, layout, again, readOnly.map((i) => open(keys[i].slice(3), O_RDONLY, again)))
    readOnly.forEach((i, n) => { fds[i] = opened[n] })
  }
  for (const [i, key] of keys.entries()) {
    if (fds[i] >= 0n) continue
    const file = key.slice(key.indexOf(':') + 1)
    fds[i] = await openRefused(pid, proc, layout, access, { file, flags: key.startsWith('rw:') ? O_RDWR : O_RDONLY, what: `open ${file} to map it`, errno: Number(-fds[i]), mapped: files.filter((v) => fileKey(v) === key) })
  }
  const fileFds = new Map(keys.map((k, i) => [k, fds[i]]))
  if (access.sameBoot && !access.allowReplaced && keys.length > 0) {
    const stats = new Scratch()
    const at = keys.map(() => stats.put(Buffer.alloc(STAT_SIZE)))
    const fstat: Call[] = keys.map((key, i) => ({ nr: SYS.fstat, args: [fileFds.get(key)!, at[i]], scratchArgs: 0b10, what: `fstat ${key.slice(key.indexOf(':') + 1)}` }))
    const { scratch: read } = await injectReading(pid, layout, fstat, stats.buffer())
    for (const v of files) {
      const i = keys.indexOf(fileKey(v))
      checkMappedFile(proc.pid, v, read.subarray(Number(at[i]), Number(at[i]) + STAT_SIZE), vmaName(v))
    }
  }
  return fileFds
}

/** The calls that move the vdso trio from where the stub has it to its saved place (none if it is there). */
function vdsoMoves(vmas: Vma[], stub: StubMaps, layout: Layout): Call[] {
  const saved = vmas.filter((v) => SPECIAL.has(v.path))
  const names = stub.special.map((m) => m.name).join(' ')
  if (saved.map((v) => v.path).join(' ') !== names) {
    throw new CkptError(`restore: the saved vdso mappings (${saved.map((v) => v.path).join(' ') || 'none'}) differ from this kernel's (${names}): restore on the kernel that made the checkpoint`, 'ENOTSUP')
  }
  for (let i = 0; i < saved.length; i++) {
    if (saved[i].end - saved[i].start !== stub.special[i].end - stub.special[i].start) {
      throw new CkptError(`restore: ${saved[i].path} has another size on this kernel: restore on the kernel that made the checkpoint`, 'ENOTSUP')
    }
  }
  if (saved.length === 0 || saved[0].start === stub.special[0].start) return []
  const base = stub.special[0].start
  const park: Call[] = stub.special.map((m) => ({
    nr: SYS.mremap, args: [m.start, m.end - m.start, m.end - m.start, BigInt(MREMAP_MAYMOVE | MREMAP_FIXED), layout.parkAddr + (m.start - base)], what: `park ${m.name}`,
  }))
  const place: Call[] = stub.special.map((m, i) => ({
    nr: SYS.mremap, args: [layout.parkAddr + (m.start - base), m.end - m.start, m.end - m.start, BigInt(MREMAP_MAYMOVE | MREMAP_FIXED), saved[i].start], what: `move ${m.name} to ${saved[i].start.toString(16)}`,
  }))
  return [...park, ...place]
}

/** One pread64 the task makes: `length` bytes at `at` of a file, to `addr`. */
interface PageRead {
  addr: bigint
  at: number
  length: number
  what: string
  /** Its mapping, and the offset in the mapping's stored pages where the read ends. */
  v: Vma
  dataEnd: number
}

/**
 * Bytes per injected pread64 and per MADV_POPULATE_WRITE: each injected call must return
 * within the tracer's per-call limit (10 s), and on a loaded machine one call over 1 GiB of
 * fresh memory took longer (issue 16's benchmark); a call per 64 MiB costs nothing measurable.
 */
const READ_PIECE = 64 << 20
/** Page files opened at once by the task, and calls per batch of reads (each a few machine words). */
const FILES_AT_ONCE = 256
/** Pages with no file behind them are copied through a buffer of this size. */
const COPY_PIECE = 32 << 20

/**
 * Writes every stored page. Pages kept in a file (a saved tree's pages files, an image) are
 * read by the task itself with pread64 straight into their place: one copy, from the page
 * cache, in a handful of injected calls. Others go through us with process_vm_writev.
 * Returns the calls that close the last group of page files, for the caller's next batch.
 */
async function writePages(pid: number, vmas: Vma[], layout: Layout, check: PageCheck): Promise<Call[]> {
  const reads = new Map<string, PageRead[]>()
  const copies: Array<{ v: Vma; addr: bigint; offset: number; length: number }> = []
  for (const v of vmas) {
    if (v.pages.size === 0 || SPECIAL.has(v.path)) continue
    let sourceOffset = 0
    for (const run of v.stored) {
      const length = Number(run.length)
      let addr = v.start + run.offset
      if (!v.pages.extents) copies.push({ v, addr, offset: sourceOffset, length })
      else {
        let dataAt = sourceOffset
        for (const extent of await v.pages.extents(sourceOffset, length)) {
          const list = reads.get(extent.file) ?? reads.set(extent.file, []).get(extent.file)!
          for (let done = 0; done < extent.length; done += READ_PIECE) {
            const n = Math.min(READ_PIECE, extent.length - done)
            list.push({ addr: addr + BigInt(done), at: extent.at + done, length: n, what: `read the pages of ${vmaName(v)} from ${extent.file}`, v, dataEnd: dataAt + done + n })
          }
          addr += BigInt(extent.length)
          dataAt += extent.length
        }
        if (addr !== v.start + run.offset + run.length) throw new CkptError(`restore: ${vmaName(v)}: the page data is shorter than its stored runs`)
      }
      sourceOffset += length
    }
  }

  // The files are opened a group at a time, in one injected batch, their reads batched across
  // files, and closed in one batch: a saved tree keeps each mapping's pages in a file of its
  // own, and a batch per file and step was most of a small process's injected batches.
  const files = [...reads.keys()]
  let closeLast: Call[] = []
  for (let first = 0; first < files.length;) {
    let last = first, pathBytes = 0
    while (last < files.length && (last === first || (last - first < FILES_AT_ONCE && pathBytes + Buffer.byteLength(files[last]) < Number(Layout.SCRATCH) / 2))) pathBytes += Buffer.byteLength(files[last++]) + 8
    const group = files.slice(first, last)
    const scratch = new Scratch()
    // The task opens what the server checked is a regular file (a user's tree may have a link
    // to a device or fifo there by now: holdSavedFile), through the server's own fd of it.
    const held: number[] = []
    let fds: bigint[]
    try {
      for (const file of group) held.push(holdSavedFile(file))
      fds = await inject(pid, layout, group.map((file, i) => ({
        nr: SYS.openat, args: [AT_FDCWD, scratch.cstring(`/proc/${process.pid}/fd/${held[i]}`), BigInt(O_RDONLY | O_CLOEXEC | O_NONBLOCK), 0n], scratchArgs: 0b10, what: `open ${file} to read pages from it`,
      })), scratch.buffer())
    } finally {
      for (const fd of held) fs.closeSync(fd)
    }
    const list = group.flatMap((file, i) => reads.get(file)!.map((r) => ({ ...r, fd: fds[i] })))
    // One injected batch per READ_PIECE bytes: the batches already in are checked meanwhile (PageCheck).
    for (let at = 0; at < list.length;) {
      let end = at, bytes = 0
      while (end < list.length && (end === at || (bytes + list[end].length <= READ_PIECE && end - at < FILES_AT_ONCE))) bytes += list[end++].length
      const batch = list.slice(at, end)
      const results = await inject(pid, layout, batch.map((r) => ({ nr: SYS.pread64, args: [r.fd, r.addr, BigInt(r.length), BigInt(r.at)], what: r.what })))
      batch.forEach((r, i) => {
        if (results[i] !== BigInt(r.length)) throw new CkptError(`restore: ${r.what}: ${results[i]} of ${r.length} bytes at byte ${r.at} (did the file change?)`)
        check.written(r.v, r.dataEnd)
      })
      at = end
    }
    const close = group.map((file, i): Call => ({ nr: SYS.close, args: [fds[i]], what: `close ${file}` }))
    first = last
    // The last group's files are closed by the caller's next batch (a stop less); an earlier
    // group's now, so no more than FILES_AT_ONCE are open at a time.
    if (first === files.length) closeLast = close
    else await inject(pid, layout, close)
  }

  const buffer = copies.length ? Buffer.allocUnsafe(Math.min(COPY_PIECE, Math.max(...copies.map((c) => c.length)))) : Buffer.alloc(0)
  for (const { v, addr, offset, length } of copies) {
    for (let done = 0; done < length; done += buffer.length) {
      const n = Math.min(buffer.length, length - done)
      if (await v.pages.readInto(offset + done, n, buffer, 0) !== n) throw new CkptError(`restore: ${vmaName(v)}: page data ended early`)
      await native.writeMemory(pid, addr + BigInt(done), buffer.subarray(0, n))
      check.written(v, offset + done + n)
    }
  }
  return closeLast
}

const EACCES = 13, EPERM = 1, S_IFMT = 0o170000, S_IFREG = 0o100000

/** A file the task itself could not open for a mapping: `errno` is why. */
interface RefusedOpen {
  file: string
  flags: number
  what: string
  errno: number
  /** The saved mappings of it: what it must be. */
  mapped: Vma[]
}

/**
 * A task may map a file it can no longer open itself: it mapped it before it changed its ids
 * (zdtm pid00: its executable, in a directory only root may enter). Opened as the task, that
 * fails with EACCES. The restorer opens it with its own credentials only when that gives the
 * task nothing it did not have: root alone stored the checkpoint (a user's could name any
 * file), it was made on this boot and files may not have been replaced, so the file is known
 * to be the one mapped. It is looked up with O_PATH (opening nothing: no device or FIFO side
 * effect), must be a regular file with the saved device and inode, and only then opened,
 * through /proc/self/fd. Anything else fails as the task's open did.
 */
async function openRefused(pid: number, proc: ProcessState, layout: Layout, access: FileAccess, open: RefusedOpen): Promise<bigint> {
  if (open.errno !== EACCES && open.errno !== EPERM) throw new CkptError(`restore: ${open.what}: ${errnoText(open.errno)}`)
  const asTaskFailed = `restore: ${open.what} as the task (fsuid ${proc.creds.fsuid}, fsgid ${proc.creds.fsgid}): ${errnoText(open.errno)}`
  if (!access.storedByRoot || !access.sameBoot || access.allowReplaced || open.mapped.length === 0) {
    const why = !access.storedByRoot ? 'the checkpoint is not stored by root alone'
      : !access.sameBoot ? 'the checkpoint was made on another boot, so the file cannot be known to be the one mapped'
        : access.allowReplaced ? 'files may have been replaced (--allow-replaced), so the file cannot be known to be the one mapped'
          : 'no saved mapping says which file it must be'
    throw new CkptError(`${asTaskFailed}; the restorer does not open it in the task's place: ${why}`, 'EACCES')
  }
  const scratch = new Scratch()
  const [found] = await inject(pid, layout, [{ nr: SYS.openat, args: [AT_FDCWD, scratch.cstring(open.file), BigInt(O_PATH | O_CLOEXEC), 0n], scratchArgs: 0b10, what: `look up ${open.file} (O_PATH)` }], scratch.buffer())
  try {
    const stats = new Scratch()
    const at = stats.put(Buffer.alloc(STAT_SIZE))
    const { scratch: read } = await injectReading(pid, layout, [{ nr: SYS.fstat, args: [found, at], scratchArgs: 0b10, what: `fstat ${open.file}` }], stats.buffer())
    const stat = read.subarray(Number(at), Number(at) + STAT_SIZE)
    const mode = stat.readUInt32LE(24) // st_mode (x86-64 struct stat)
    if ((mode & S_IFMT) !== S_IFREG) throw new CkptError(`${asTaskFailed}; ${open.file} is no longer a regular file (mode 0${mode.toString(8)})`, 'EACCES')
    for (const v of open.mapped) checkMappedFile(proc.pid, v, stat, vmaName(v))
    const reopen = new Scratch()
    const [fd] = await inject(pid, layout, [{ nr: SYS.openat, args: [AT_FDCWD, reopen.cstring(`/proc/self/fd/${found}`), BigInt(open.flags | O_CLOEXEC), 0n], scratchArgs: 0b10, what: `${open.what} (the saved file, by the restorer)` }], reopen.buffer())
    return fd
  } finally {
    await inject(pid, layout, [{ nr: SYS.close, args: [found], what: `close the O_PATH fd of ${open.file}` }])
  }
}

const X_OK = 1, AT_EACCESS = 0x200, AT_EMPTY_PATH = 0x1000

/**
 * The exe link (PR_SET_MM_MAP's exe_fd) is set by the task while it still holds the
 * restorer's credentials, and the kernel checks that file as the caller: a regular file that
 * root may execute (any x bit) on a mount without noexec. A checkpoint stored in a user's files
 * names its executable as it likes, so /proc/PID/exe of the user's restored process could name
 * any file the user can open but not run (a program only root may run: 0744 root's). Such a
 * checkpoint gets the link only to a file its user may execute: the kernel's own check
 * (faccessat2 X_OK on the opened file, the noexec mount included) with the task's filesystem
 * ids, groups and no capabilities, the task's effective set.
 */
async function checkExecutableAsTask(pid: number, proc: ProcessState, layout: Layout, exeFd: bigint): Promise<void> {
  const scratch = new Scratch()
  const empty = scratch.cstring('')
  const [allowed] = await injectAsTask(pid, proc, layout, scratch, [
    { nr: SYS.faccessat2, args: [exeFd, empty, BigInt(X_OK), BigInt(AT_EACCESS | AT_EMPTY_PATH)], scratchArgs: 0b10, what: `check that the task may execute ${proc.mm.exe}`, mayFail: true },
  ])
  if (allowed < 0n) {
    throw new CkptError(
      `task-${proc.pid}/exe: ${proc.mm.exe}: the task (fsuid ${proc.creds.fsuid}, fsgid ${proc.creds.fsgid}) may not execute it: ${errnoText(Number(-allowed))}; ` +
        "a checkpoint stored in a user's files gets as its executable only a file that user may run (a regular file, execute permission, a mount without noexec)",
      'EACCES',
    )
  }
}

/**
 * The last of the memory, the mm fields (brk, arg/env areas, auxv) and the exe link, all at
 * once; then the process state (signal actions, timers, umask, personality, rlimits, cwd and
 * root, pending signals). Few batches, as each is a stop of the task: the cwd is entered in
 * the batch that opens the executable as the task, and the process state is set in the batch
 * of PR_SET_MM_MAP, after it (a lower RLIMIT_DATA would refuse the saved brk).
 */
async function restoreMmAndProcessState(pid: number, proc: ProcessState, vmas: Vma[], layout: Layout, access: FileAccess): Promise<void> {
  const mm = proc.mm
  const scratch = new Scratch()
  const exePath = scratch.cstring(mm.exe)
  const auxv = scratch.put(mm.auxv)
  const map = Buffer.alloc(104)
  const fields = [mm.startCode, mm.endCode, mm.startData, mm.endData, mm.startBrk, mm.brk, mm.startStack, mm.argStart, mm.argEnd, mm.envStart, mm.envEnd]
  fields.forEach((f, i) => map.writeBigUInt64LE(f, i * 8))
  const mapOffset = scratch.put(map)
  const openExe: Call = { nr: SYS.openat, args: [AT_FDCWD, exePath, BigInt(O_RDONLY | O_CLOEXEC), 0n], scratchArgs: 0b10, what: `open the executable ${mm.exe}`, mayFail: true }
  // A root other than / takes its own batches (restoreCwdAndRoot).
  const chdir: Call[] = proc.root === '/' ? [{ nr: SYS.chdir, args: [scratch.cstring(proc.cwd)], scratchArgs: 0b1, what: `chdir ${proc.cwd}`, mayFail: true }] : []
  let [exeFd, entered] = await injectAsTask(pid, proc, layout, scratch, [openExe, ...chdir])
  if (chdir.length > 0 && entered < 0n) await enterRefusedCwd(pid, proc, layout, access, Number(-entered))
  // On the boot that saved it, the executable must be the file its text mapping had.
  const text = vmas.find((v) => v.kind === 'file-private' && v.path === mm.exe)
  if (exeFd < 0n) exeFd = await openRefused(pid, proc, layout, access, { file: mm.exe, flags: O_RDONLY, what: `open the executable ${mm.exe}`, errno: Number(-exeFd), mapped: text ? [text] : [] })
  if (!access.storedByRoot) await checkExecutableAsTask(pid, proc, layout, exeFd)
  if (text && access.sameBoot && !access.allowReplaced) {
    const stats = new Scratch()
    const at = stats.put(Buffer.alloc(STAT_SIZE))
    const { scratch: read } = await injectReading(pid, layout, [{ nr: SYS.fstat, args: [exeFd, at], scratchArgs: 0b10, what: `fstat the executable ${mm.exe}` }], stats.buffer())
    checkMappedFile(proc.pid, text, read.subarray(Number(at), Number(at) + STAT_SIZE), vmaName(text))
  }
  const state = processStateCalls(proc, scratch)
  const buffer = scratch.buffer()
  // struct prctl_mm_map: auxv is a pointer into the scratch area, known only once it is mapped.
  buffer.writeBigUInt64LE(layout.scratchAddr + auxv, Number(mapOffset) + 88)
  buffer.writeUInt32LE(mm.auxv.length, Number(mapOffset) + 96)
  buffer.writeInt32LE(Number(exeFd), Number(mapOffset) + 100)
  await inject(pid, layout, [
    { nr: SYS.prctl, args: [BigInt(PR_SET_MM), BigInt(PR_SET_MM_MAP), mapOffset, 104n, 0n], scratchArgs: 0b100, what: 'prctl(PR_SET_MM_MAP)' },
    { nr: SYS.close, args: [exeFd], what: 'close the executable' },
    ...state,
  ], buffer)
  if (proc.root !== '/') await restoreCwdAndRoot(pid, proc, layout, access)
  await requeue(pid, pid, proc.sharedPendingSiginfo, layout)
}

/**
 * Each AIO context is made anew, empty (refusePendingAioEvents), by an injected io_setup, and
 * its ring moved to the saved address with mremap (the kernel then takes that address as the
 * context's ID, which the program holds). io_setup sizes the ring from the number of events
 * asked for: the largest number whose ring has the saved size. Requests in flight at the
 * checkpoint are not known from user space and are not restored.
 */
async function restoreAioRings(pid: number, rings: Vma[], layout: Layout): Promise<void> {
  const placed = new Set<bigint>()
  for (const v of rings) {
    const length = v.end - v.start
    // ioctx_alloc: events = 2 * max(asked, 4 * CPUs) + 2, ring = 32 + 32 * events bytes in whole pages.
    const asked = (length - 96n) / 64n
    const scratch = new Scratch()
    const ctx = scratch.put(Buffer.alloc(8))
    await inject(pid, layout, [{ nr: SYS.io_setup, args: [asked, ctx], scratchArgs: 0b10, what: `io_setup(${asked}) for the AIO ring ${vmaName(v)}` }], scratch.buffer())
    const made = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((line) => line.endsWith(` ${AIO_RING_PATH}`)).map((line) => {
      const [start, end] = line.slice(0, line.indexOf(' ')).split('-').map((h) => BigInt('0x' + h))
      return { start, end }
    }).filter((m) => !placed.has(m.start))
    if (made.length !== 1) throw new CkptError(`restore: io_setup for the AIO ring ${vmaName(v)}: ${made.length} new rings in /proc/${pid}/maps, expected one`)
    const [ring] = made
    if (ring.end - ring.start !== length) {
      throw new CkptError(`task-${pid}/memory/vmas/${vmaName(v)}: io_setup made a ring of ${ring.end - ring.start} bytes, the saved one has ${length} (another number of CPUs?)`, 'ENOTSUP')
    }
    if (ring.start !== v.start) {
      await inject(pid, layout, [{ nr: SYS.mremap, args: [ring.start, length, length, BigInt(MREMAP_MAYMOVE | MREMAP_FIXED), v.start], what: `move the AIO ring to ${vmaName(v)}` }])
    }
    placed.add(v.start)
  }
}

// ---------------------------------------------------------------------------------------
// Process state and registers

/**
 * PR_SET_THP_DISABLE is a flag of the whole mm: set before the memory is rebuilt, so the
 * pages are faulted in at the size the process had (no huge pages where it refused them).
 */
/** File locks, last of the files (lib/restore/locks.ts): nothing is closed after them. */
async function restoreLocks(pid: number, saved: SavedCheckpoint, layout: Layout): Promise<void> {
  const scratch = new Scratch()
  const calls = lockCalls(saved.fileTable, scratch)
  if (calls.length) await inject(pid, layout, calls, scratch.buffer())
}

async function restoreThpDisable(pid: number, proc: ProcessState, layout: Layout): Promise<void> {
  if (proc.thpDisable === 0) return
  const exceptAdvised = proc.thpDisable & PR_THP_DISABLE_EXCEPT_ADVISED
  await inject(pid, layout, [{ nr: SYS.prctl, args: [BigInt(PR_SET_THP_DISABLE), 1n, BigInt(exceptAdvised), 0n, 0n], what: `prctl(PR_SET_THP_DISABLE, 1, ${exceptAdvised})` }])
}

/** Signal actions, interval timers, umask, personality and rlimits: calls the task makes. */
function processStateCalls(proc: ProcessState, scratch: Scratch): Call[] {
  const calls: Call[] = []
  for (const a of proc.sigactions) {
    if (a.handler === 0n && a.flags === 0n && a.mask === 0n) continue
    const act = Buffer.alloc(32)
    act.writeBigUInt64LE(a.handler, 0)
    act.writeBigUInt64LE(a.flags, 8)
    act.writeBigUInt64LE(a.restorer, 16)
    act.writeBigUInt64LE(a.mask, 24)
    calls.push({ nr: SYS.rt_sigaction, args: [BigInt(a.signal), scratch.put(act), 0n, 8n], scratchArgs: 0b10, what: `sigaction(${a.signal})` })
  }
  const which = { real: 0, virtual: 1, prof: 2 }
  for (const t of proc.itimers) {
    if (t.valueUs === 0n && t.intervalUs === 0n) continue
    // A real interval timer that fired while the task was frozen reads 0 until its SIGALRM
    // (saved pending, queued again) is taken, when the kernel re-arms it; setitimer with 0
    // would disarm it for good. It runs on from one interval now instead.
    const valueUs = t.valueUs === 0n ? t.intervalUs : t.valueUs
    const val = Buffer.alloc(32)
    val.writeBigInt64LE(t.intervalUs / 1000000n, 0)
    val.writeBigInt64LE(t.intervalUs % 1000000n, 8)
    val.writeBigInt64LE(valueUs / 1000000n, 16)
    val.writeBigInt64LE(valueUs % 1000000n, 24)
    calls.push({ nr: SYS.setitimer, args: [BigInt(which[t.which]), scratch.put(val), 0n], scratchArgs: 0b10, what: `setitimer(${t.which})` })
  }
  calls.push({ nr: SYS.umask, args: [BigInt(proc.umask)], what: 'umask' })
  if (proc.childSubreaper) calls.push({ nr: SYS.prctl, args: [BigInt(PR_SET_CHILD_SUBREAPER), 1n, 0n, 0n, 0n], what: 'child subreaper' })
  if (proc.personality !== 0) calls.push({ nr: SYS.personality, args: [BigInt(proc.personality)], what: 'personality' })
  for (const r of proc.rlimits) {
    const lim = Buffer.alloc(16)
    lim.writeBigUInt64LE(BigInt.asUintN(64, r.soft), 0)
    lim.writeBigUInt64LE(BigInt.asUintN(64, r.hard), 8)
    calls.push({ nr: SYS.prlimit64, args: [0n, BigInt(r.resource), scratch.put(lim), 0n], scratchArgs: 0b100, what: `setrlimit(${r.name})` })
  }
  return calls
}

/**
 * cwd and root other than /, each entered as the task (the kernel checks its search
 * permission; with root /, the cwd is entered as the task by restoreMmAndProcessState). The
 * root is opened as the task first and entered through that fd, so the directory chroot
 * (which needs the restorer's CAP_SYS_CHROOT) takes is the one the task could reach.
 */
async function restoreCwdAndRoot(pid: number, proc: ProcessState, layout: Layout, access: FileAccess): Promise<void> {
  const scratch = new Scratch()
  const dirFlags = BigInt(O_PATH | O_DIRECTORY | O_CLOEXEC)
  const [rootFd, cwdFd] = await injectAsTask(pid, proc, layout, scratch, [
    { nr: SYS.openat, args: [AT_FDCWD, scratch.cstring(proc.root), dirFlags, 0n], scratchArgs: 0b10, what: `open the root ${proc.root}` },
    { nr: SYS.openat, args: [AT_FDCWD, scratch.cstring(proc.cwd), dirFlags, 0n], scratchArgs: 0b10, what: `open the cwd ${proc.cwd}` },
  ])
  const enter = new Scratch()
  const intoRoot = asTask(pid, proc.creds, enter, [{ nr: SYS.fchdir, args: [rootFd], what: `enter the root ${proc.root}` }])
  const intoCwd = asTask(pid, proc.creds, enter, [{ nr: SYS.fchdir, args: [cwdFd], what: `chdir ${proc.cwd}` }])
  const calls: Call[] = [
    ...intoRoot.calls,
    { nr: SYS.chroot, args: [enter.cstring('.')], scratchArgs: 0b1, what: `chroot ${proc.root}` },
    ...intoCwd.calls,
    { nr: SYS.close, args: [rootFd], what: 'close the root' },
    { nr: SYS.close, args: [cwdFd], what: 'close the cwd' },
  ]
  const results = await inject(pid, layout, calls, enter.buffer())
  intoRoot.verify(results)
  intoCwd.verify(results.slice(intoRoot.calls.length + 1))
}

/**
 * A task may have a cwd it could not enter itself now: it entered it before it changed its ids
 * (zdtm pid00: a directory only root may enter). The restorer enters it in the task's place
 * only when that gives the task nothing it did not have: root alone stored the checkpoint (a
 * user's could name any directory), and no one but root can have put another directory at
 * that path: every directory above it is root's and writable by root alone (or sticky, as
 * /tmp, where only an entry's owner may rename it, and the entries on the way are root's), and
 * none is a symbolic link. Anything else fails as the task's chdir did.
 */
async function enterRefusedCwd(pid: number, proc: ProcessState, layout: Layout, access: FileAccess, errno: number): Promise<void> {
  if (errno !== EACCES && errno !== EPERM) throw new CkptError(`restore: chdir ${proc.cwd}: ${errnoText(errno)}`)
  const failed = `restore: chdir ${proc.cwd} as the task (fsuid ${proc.creds.fsuid}, fsgid ${proc.creds.fsgid}): ${errnoText(errno)}`
  if (!access.storedByRoot) throw new CkptError(`${failed}; the restorer does not enter it in the task's place: the checkpoint is not stored by root alone`, 'EACCES')
  const unsafe = pathOnlyRootControls(proc.cwd)
  if (unsafe) throw new CkptError(`${failed}; the restorer does not enter it in the task's place: ${unsafe}`, 'EACCES')
  const scratch = new Scratch()
  const [fd] = await inject(pid, layout, [{ nr: SYS.openat, args: [AT_FDCWD, scratch.cstring(proc.cwd), BigInt(O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), 0n], scratchArgs: 0b10, what: `open the cwd ${proc.cwd} (O_PATH, by the restorer)` }], scratch.buffer())
  await inject(pid, layout, [
    { nr: SYS.fchdir, args: [fd], what: `chdir ${proc.cwd} (by the restorer)` },
    { nr: SYS.close, args: [fd], what: 'close the cwd' },
  ])
}

/** Why someone other than root could have changed what absolute path `dir` names (undefined: no one could). */
function pathOnlyRootControls(dir: string): string | undefined {
  if (!path.isAbsolute(dir) || path.normalize(dir) !== dir) return `${dir} is not a plain absolute path`
  const parts = dir.split('/').filter(Boolean)
  let inSticky = false // the entry is in a sticky directory others may write: its owner may rename it
  for (let i = 0; i <= parts.length; i++) {
    const at = '/' + parts.slice(0, i).join('/')
    let s: fs.Stats
    try {
      s = fs.lstatSync(at)
    } catch (err) {
      return `${at}: ${messageOf(err)}`
    }
    if (!s.isDirectory()) return `${at} is not a directory (a symbolic link?)`
    if (inSticky && s.uid !== 0) return `${at} is owned by uid ${s.uid}, not root, in a directory others may write: its owner could have put another directory there`
    if (i === parts.length) break // the cwd itself: its own entries do not change where it is
    if (s.uid !== 0) return `${at} is owned by uid ${s.uid}, not root: its owner could have put another directory at ${dir}`
    const othersWrite = (s.mode & 0o022) !== 0
    if (othersWrite && (s.mode & 0o1000) === 0) return `${at} is writable by others (mode 0${(s.mode & 0o7777).toString(8)}): anyone could have put another directory at ${dir}`
    inSticky = othersWrite
  }
  return undefined
}

/**
 * POSIX timers with their IDs (the kernel takes the ID asked for while
 * PR_TIMER_CREATE_RESTORE_IDS is on, since Linux 6.17; it needs CAP_CHECKPOINT_RESTORE, so
 * this comes before the credentials), their clock, their notification (signal, value, the
 * thread it targets) and the time that was left. Overruns counted before the checkpoint are
 * not carried over.
 */
async function restorePosixTimers(pid: number, proc: ProcessState, layout: Layout): Promise<void> {
  if (proc.posixTimers.length === 0) return
  const scratch = new Scratch()
  const calls: Call[] = [{ nr: SYS.prctl, args: [BigInt(PR_TIMER_CREATE_RESTORE_IDS), 1n, 0n, 0n, 0n], what: 'prctl(PR_TIMER_CREATE_RESTORE_IDS, on): this kernel cannot restore POSIX timer IDs (Linux 6.17 or later can)' }]
  for (const t of [...proc.posixTimers].sort((a, b) => a.id - b.id)) {
    const [, kind, target, id] = /^(signal|none|thread)\/(pid|tid)\.(\d+)$/.exec(t.notify)!
    const sigevent = Buffer.alloc(64)
    sigevent.writeBigUInt64LE(t.sigevValue, 0)
    sigevent.writeInt32LE(t.signal, 8)
    sigevent.writeInt32LE(SIGEV[kind as keyof typeof SIGEV] | (target === 'tid' ? SIGEV_THREAD_ID : 0), 12)
    if (target === 'tid') sigevent.writeInt32LE(Number(id), 16)
    const timerId = Buffer.alloc(8)
    timerId.writeInt32LE(t.id, 0)
    calls.push({ nr: SYS.timer_create, args: [BigInt(t.clockid), scratch.put(sigevent), scratch.put(timerId)], scratchArgs: 0b110, what: `timer_create(POSIX timer ${t.id})` })
    if (t.valueNs === 0n) continue
    const spec = Buffer.alloc(32)
    spec.writeBigInt64LE(t.intervalNs / 1_000_000_000n, 0)
    spec.writeBigInt64LE(t.intervalNs % 1_000_000_000n, 8)
    spec.writeBigInt64LE(t.valueNs / 1_000_000_000n, 16)
    spec.writeBigInt64LE(t.valueNs % 1_000_000_000n, 24)
    calls.push({ nr: SYS.timer_settime, args: [BigInt(t.id), 0n, scratch.put(spec), 0n], scratchArgs: 0b100, what: `timer_settime(POSIX timer ${t.id})` })
  }
  calls.push({ nr: SYS.prctl, args: [BigInt(PR_TIMER_CREATE_RESTORE_IDS), 0n, 0n, 0n, 0n], what: 'prctl(PR_TIMER_CREATE_RESTORE_IDS, off)' })
  await inject(pid, layout, calls, scratch.buffer())
}

/**
 * Credentials, the capability sets and no_new_privs belong to each thread: they are set in
 * every thread once all exist (creating a thread with a chosen TID takes privileges the saved
 * credentials may not hold), with the process's saved values. Changing ids makes the task
 * non-dumpable and clears the parent-death signal: the saved dumpable flag and that signal
 * go last.
 */
async function restoreCredentials(pid: number, proc: ProcessState, threads: ThreadState[], layout: Layout, parentRestored: boolean): Promise<void> {
  const order = [...threads.slice(1), threads[0]]
  const tids = order.map((t) => t.tid)
  const last: Call[] = [{ nr: SYS.prctl, args: [BigInt(PR_SET_DUMPABLE), BigInt(proc.dumpable), 0n, 0n, 0n], what: 'dumpable' }]
  if (parentRestored && proc.pdeathSignal !== 0) {
    last.push({ nr: SYS.prctl, args: [BigInt(PR_SET_PDEATHSIG), BigInt(proc.pdeathSignal), 0n, 0n, 0n], what: `parent-death signal ${proc.pdeathSignal}` })
  }
  for (const [n, thread] of order.entries()) {
    const scratch = new Scratch()
    // The thread's own state first, in the same batch (every batch is a stop of the task).
    const calls = [...threadStateCalls(thread, scratch), ...credentialCalls(pid, proc, scratch)]
    // The thread's seccomp filters go in while the effective set is still full (the kernel
    // wants no_new_privs or CAP_SYS_ADMIN; the task had one or the other when it installed
    // them, or was root then: lib/restore/owner.ts decides who may ask for that), right before
    // the saved sets. They do not act on the calls that follow nor on any injected later: the
    // task is held with PTRACE_O_SUSPEND_SECCOMP until it is let go.
    const install = seccompCalls(proc, tids, thread.tid, n === 0, scratch)
    const at = calls.length - 1
    calls.splice(at, 0, ...install.calls)
    if (proc.noNewPrivs) calls.push({ nr: SYS.prctl, args: [BigInt(PR_SET_NO_NEW_PRIVS), 1n, 0n, 0n, 0n], what: 'no_new_privs' })
    // The main thread is the last: its batch ends with what must follow every thread's ids.
    if (n === order.length - 1) calls.push(...last)
    const buffer = scratch.buffer()
    for (const { at: where, offset } of install.fixups) buffer.writeBigUInt64LE(layout.scratchAddr + offset, Number(where))
    // setfsuid/setfsgid return the previous id, never an error code: inject's check passes them.
    const results = await inject(thread.tid, layout, calls.map((c) => ({ ...c, what: `${c.what} in thread ${thread.tid}` })), buffer)
    install.check(results.slice(at, at + install.calls.length))
  }
}

const PR_CAPBSET_DROP = 24, PR_SET_SECUREBITS = 28, PR_SET_KEEPCAPS = 8, PR_CAP_AMBIENT = 47, PR_CAP_AMBIENT_RAISE = 2

/** A capability mask of a process, from a CapXxx line of /proc/PID/status. */
function capLine(pid: number, name: string): bigint {
  const m = new RegExp(`^${name}:\\s*([0-9a-f]+)$`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!m) throw new CkptError(`restore: /proc/${pid}/status has no ${name}`)
  return BigInt('0x' + m[1])
}

/**
 * Ids and capabilities, in an order that ends exactly in the saved state (a restore must never
 * leave a task with more privilege than it had): the inheritable set and the bounding set while
 * the restorer is still fully privileged; the ids with KEEP_CAPS (so the permitted set survives
 * a change away from uid 0); the effective set back for a moment, to raise the ambient
 * capabilities and set the securebits (CAP_SETPCAP); then the saved sets, which only lowers.
 */
function credentialCalls(pid: number, proc: ProcessState, scratch: Scratch): Call[] {
  const creds = proc.creds
  const where = `task-${proc.pid}/creds`
  const full = capLine(pid, 'CapPrm')
  if (creds.capPermitted & ~full) {
    throw new CkptError(`${where}/cap_permitted: 0x${creds.capPermitted.toString(16)} holds capabilities the restorer does not have (0x${full.toString(16)})`, 'EPERM')
  }
  const capset = (effective: bigint, permitted: bigint, inheritable: bigint, what: string): Call => capsetCall(scratch, effective, permitted, inheritable, what)
  const calls: Call[] = [capset(full, full, creds.capInheritable, 'inheritable')]
  const lastCap = Number(fs.readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim())
  for (let cap = 0; cap <= lastCap; cap++) {
    if (!((creds.capBounding >> BigInt(cap)) & 1n)) calls.push({ nr: SYS.prctl, args: [BigInt(PR_CAPBSET_DROP), BigInt(cap), 0n, 0n, 0n], what: `drop capability ${cap} from the bounding set` })
  }
  calls.push({ nr: SYS.prctl, args: [BigInt(PR_SET_KEEPCAPS), 1n, 0n, 0n, 0n], what: 'keep capabilities across the id change' })
  const groups = Buffer.alloc(Math.max(4, creds.groups.length * 4))
  creds.groups.forEach((g, i) => groups.writeUInt32LE(g, i * 4))
  calls.push({ nr: SYS.setgroups, args: [BigInt(creds.groups.length), scratch.put(groups)], scratchArgs: 0b10, what: 'setgroups' })
  calls.push({ nr: SYS.setresgid, args: [BigInt(creds.gid), BigInt(creds.egid), BigInt(creds.sgid)], what: 'setresgid' })
  calls.push({ nr: SYS.setfsgid, args: [BigInt(creds.fsgid)], what: 'setfsgid' })
  calls.push({ nr: SYS.setresuid, args: [BigInt(creds.uid), BigInt(creds.euid), BigInt(creds.suid)], what: 'setresuid' })
  calls.push({ nr: SYS.setfsuid, args: [BigInt(creds.fsuid)], what: 'setfsuid' })
  calls.push(capset(full, full, creds.capInheritable, 'effective again'))
  for (let cap = 0; cap <= lastCap; cap++) {
    if ((creds.capAmbient >> BigInt(cap)) & 1n) {
      calls.push({ nr: SYS.prctl, args: [BigInt(PR_CAP_AMBIENT), BigInt(PR_CAP_AMBIENT_RAISE), BigInt(cap), 0n, 0n], what: `raise ambient capability ${cap}` })
    }
  }
  calls.push({ nr: SYS.prctl, args: [BigInt(PR_SET_SECUREBITS), BigInt(creds.securebits), 0n, 0n, 0n], what: `securebits 0x${creds.securebits.toString(16)}` })
  calls.push(capset(creds.capEffective, creds.capPermitted, creds.capInheritable, 'the saved sets'))
  return calls
}

/** Pending signals go back in through rt_tgsigqueueinfo from inside the task, with their siginfo. */
async function requeue(pid: number, tid: number, records: Buffer, layout: Layout): Promise<void> {
  const scratch = new Scratch()
  const calls: Call[] = []
  for (let off = 0; off + 128 <= records.length; off += 128) {
    const info = records.subarray(off, off + 128)
    const sig = info.readInt32LE(0)
    calls.push({ nr: SYS.rt_tgsigqueueinfo, args: [BigInt(pid), BigInt(tid), BigInt(sig), scratch.put(info)], scratchArgs: 0b1000, what: `queue signal ${sig} to thread ${tid}` })
  }
  await inject(pid, layout, calls, scratch.buffer())
}

// ---------------------------------------------------------------------------------------
// Threads: the main thread is the stub's; every other one is made by an injected clone3 with
// its saved TID. Per-thread state is set in each; registers come last, and no thread runs
// before all are ready (they are released together by thaw).

const CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000 // VM FS FILES SIGHAND THREAD SYSVSEM

/** The threads exist already (created right after the stub, stopped): their state, then the process's. */
async function restoreThreads(pid: number, proc: ProcessState, threads: ThreadState[], layout: Layout, parentRestored: boolean): Promise<void> {
  // Queued from the main thread: rt_tgsigqueueinfo of a siginfo the kernel did not make is
  // allowed only into the caller's own process, which the kernel tells by the caller's TID.
  for (const thread of threads) await requeue(pid, thread.tid, thread.pendingSiginfo, layout)
  await restorePosixTimers(pid, proc, layout)
  await restoreCredentials(pid, proc, threads, layout, parentRestored)
  // The restorer's page and scratch area go away through the vdso's own syscall, now at its saved place.
  const { results: unmapped } = await native.injectBatch(pid, 0, null, [{ nr: SYS.munmap, args: [layout.codeAddr, PAGE] }, { nr: SYS.munmap, args: [layout.scratchAddr, Layout.SCRATCH] }])
  const failed = unmapped.findIndex((r) => r < 0n)
  if (failed >= 0) throw new CkptError(`restore: munmap the restorer's ${failed === 0 ? 'code page' : 'scratch area'}: ${errnoText(Number(-unmapped[failed]))}`)
  for (const thread of threads) await restoreRegisters(thread, proc)
}

async function createThread(pid: number, tid: number, layout: Layout): Promise<void> {
  const scratch = new Scratch()
  const setTid = Buffer.alloc(8)
  setTid.writeBigUInt64LE(BigInt(tid))
  const tidOffset = scratch.put(setTid)
  const args = Buffer.alloc(88) // struct clone_args; stack 0: the new thread never uses one before its registers are set
  args.writeBigUInt64LE(BigInt(CLONE_THREAD_FLAGS), 0)
  args.writeBigUInt64LE(BigInt(tid), 64) // set_tid, made absolute below
  args.writeBigUInt64LE(1n, 72)
  const argsOffset = scratch.put(args)
  const buffer = scratch.buffer()
  buffer.writeBigUInt64LE(layout.scratchAddr + tidOffset, Number(argsOffset) + 64)
  const [created] = await inject(pid, layout, [{ nr: SYS.clone3, args: [argsOffset, 88n], scratchArgs: 0b1, what: `create thread ${tid}` }], buffer)
  if (created !== BigInt(tid)) throw new CkptError(`restore: thread ${tid} came back as ${created}`)
  await native.seizeThread(pid, tid)
}

/** A thread's name, alternate stack, clear-child-tid word and robust list: calls it makes itself. */
function threadStateCalls(thread: ThreadState, scratch: Scratch): Call[] {
  const calls: Call[] = [{ nr: SYS.prctl, args: [BigInt(PR_SET_NAME), scratch.cstring(thread.comm)], scratchArgs: 0b10, what: `name thread ${thread.tid}` }]
  const alt = thread.altstack
  if ((alt.flags & 2) === 0) {
    // SS_DISABLE (2) is the default; SS_ONSTACK (1) is a state, not a setting.
    const ss = Buffer.alloc(24)
    ss.writeBigUInt64LE(alt.sp, 0)
    ss.writeInt32LE(alt.flags & ~1, 8)
    ss.writeBigUInt64LE(alt.size, 16)
    calls.push({ nr: SYS.sigaltstack, args: [scratch.put(ss), 0n], scratchArgs: 0b1, what: `sigaltstack of thread ${thread.tid}` })
  }
  // pthread_join waits for the kernel to clear this word when the thread exits.
  calls.push({ nr: SYS.set_tid_address, args: [thread.clearChildTid], what: `set_tid_address of thread ${thread.tid}` })
  // The thread's robust futex list; in the main thread this also replaces the one the stub's
  // libc registered in memory that is gone now (a thread that had none gets none).
  const { head, length } = thread.robustList
  calls.push({ nr: SYS.set_robust_list, args: [head, head === 0n ? 24n : length], what: `set_robust_list of thread ${thread.tid}` })
  return calls
}

const SECCOMP_SET_MODE_STRICT = 0n

async function restoreRegisters(thread: ThreadState, proc: ProcessState): Promise<void> {
  const tid = thread.tid
  if (thread.rseq.pointer !== 0n) {
    const [r] = (await native.injectBatch(tid, 0, null, [{ nr: SYS.rseq, args: [thread.rseq.pointer, BigInt(thread.rseq.size), 0n, BigInt(thread.rseq.signature)] }])).results
    if (r < 0n) throw new CkptError(`restore: rseq registration of thread ${tid}: ${errnoText(Number(-r))}`)
  }
  if (thread.seccompStrict) {
    // The thread's last call of its own: from here it may only read, write, exit and return
    // from a signal handler. Calls injected after it still pass (the task is held with
    // PTRACE_O_SUSPEND_SECCOMP until it is let go), and a thread in strict mode has no
    // filters (validateSeccomp), so nothing else of the restore needs another mode.
    const [r] = (await native.injectBatch(tid, 0, null, [{ nr: SYS.seccomp, args: [SECCOMP_SET_MODE_STRICT, 0n, 0n] }])).results
    if (r < 0n) throw new CkptError(`restore: seccomp strict mode of thread ${tid} (task-${proc.pid}/threads/${tid}/seccomp_strict): ${errnoText(Number(-r))}`)
  }
  // Last of all injections into the thread: it may make the thread's restart block.
  await native.setThreadRegisters(tid, await resumeRegisters(thread, proc))
  await native.setThreadState(tid, thread.xstate, thread.sigmask)
}
