// The checkpoint model: plain data that capture produces, the tree shows, the image encodes
// and restore consumes. Nothing here knows about FUSE, protobuf or ptrace.
//
// Lazily captured parts are `Lazy<T>` (computed once, on first use) and bulk bytes are
// `ByteSource` (sized up front, read in pieces), so a live checkpoint and one loaded from a
// saved tree or image look the same to every consumer.

declare const brand: unique symbol
type Brand<T, B extends string> = T & { readonly [brand]: B }

export type Pid = Brand<number, 'Pid'>
export type Tid = Brand<number, 'Tid'>
/** Identity of one open file description inside a checkpoint (files/OBJREF). */
export type ObjRef = Brand<number, 'ObjRef'>

export const asPid = (n: number): Pid => n as Pid
export const asTid = (n: number): Tid => n as Tid
export const asObjRef = (n: number): ObjRef => n as ObjRef

/** A value computed at most once, when first asked for. */
export type Lazy<T> = () => Promise<T>

export function lazy<T>(compute: () => Promise<T>): Lazy<T> {
  let pending: Promise<T> | undefined
  return () => (pending ??= compute())
}

/** Bytes of known size that are read in pieces (memory pages, pipe data, file contents). */
export interface ByteSource {
  readonly size: number
  /** Bytes [offset, offset + length), clipped at `size`, in a buffer the caller may keep. */
  read(offset: number, length: number): Promise<Buffer>
  /**
   * The same bytes written into `into` at `at`; returns how many. The mount's read path: the
   * bytes go straight into the FUSE reply buffer, with no buffer allocated on the way (each
   * fresh buffer costs page faults, which dominate large reads on this kind of machine).
   * A source that has the bytes at hand answers synchronously: a promise per 128 KiB read
   * costs more than the copy.
   */
  readInto(offset: number, length: number, into: Buffer, at: number): Sized
  /**
   * Sources kept in a regular file (a saved tree's files, an image): where the bytes
   * [offset, offset + length) lie in it, so another process can read them itself (a restore
   * has the new task read its pages straight from the file, with no copy through us).
   */
  extents?(offset: number, length: number): Promise<FileExtent[]>
  /**
   * Sources loaded from a saved tree or image: the CRC32C its copy recorded for each 1 MiB
   * piece (lib/checksum.ts). Whoever uses the bytes checks them against these.
   */
  readonly crc32c?: readonly number[]
}

/** A byte count, at once or later. */
export type Sized = number | Promise<number>

/** `length` bytes at byte `at` of `file`. */
export interface FileExtent {
  file: string
  at: number
  length: number
}

/** The length a read of `length` bytes at `offset` gets from a source of `size` bytes. */
export const clipped = (size: number, offset: number, length: number): number => Math.max(0, Math.min(length, size - offset))

/** A source defined by its readInto; read allocates a buffer and fills it. */
export function intoSource(size: number, readInto: ByteSource['readInto']): ByteSource {
  return {
    size,
    readInto: (offset, length, into, at) => {
      const n = clipped(size, offset, length)
      return n === 0 ? 0 : readInto(offset, n, into, at)
    },
    read: async (offset, length) => {
      const buf = Buffer.allocUnsafe(clipped(size, offset, length))
      if (buf.length === 0) return buf
      const n = await readInto(offset, buf.length, buf, 0)
      return n === buf.length ? buf : buf.subarray(0, n)
    },
  }
}

/** Bytes held in memory as consecutive pieces. */
export function piecesSource(pieces: Buffer[]): ByteSource {
  const size = pieces.reduce((sum, p) => sum + p.length, 0)
  const parts = (offset: number, length: number): Buffer[] => {
    const found: Buffer[] = []
    let at = 0
    for (const piece of pieces) {
      const from = Math.max(offset, at)
      const to = Math.min(offset + length, at + piece.length)
      if (from < to) found.push(piece.subarray(from - at, to - at))
      at += piece.length
    }
    return found
  }
  return {
    size,
    read: async (offset, length) => {
      const found = parts(offset, length)
      return found.length === 1 ? found[0] : Buffer.concat(found)
    },
    readInto: (offset, length, into, at) => {
      let done = 0
      for (const part of parts(offset, length)) done += part.copy(into, at + done)
      return done
    },
  }
}

export function bufferSource(data: Buffer): ByteSource {
  return {
    size: data.length,
    read: async (offset, length) => data.subarray(offset, offset + clipped(data.length, offset, length)),
    readInto: (offset, length, into, at) => data.copy(into, at, offset, offset + clipped(data.length, offset, length)),
  }
}

// ---------------------------------------------------------------------------------------
// The file table (reference/004: one object per open file description, fds refer to it)

/**
 * Every fd_type and the description variant it has. A type of its own declares its variant
 * in its handler's module (lib/files/X.ts) by adding to this interface
 * (`declare module '../model' { interface FileDescriptionTypes { X: XDescription } }`),
 * so a new type touches no shared file.
 */
export interface FileDescriptionTypes {
  file: PathDescription
  dir: PathDescription
  chr: PathDescription
  blk: PathDescription
  fifo: PathDescription
  pipe: PipeDescription
  epoll: EpollDescription
  eventfd: EventfdDescription
  signalfd: SignalfdDescription
  timerfd: TimerfdDescription
  inotify: InotifyDescription
  unknown: OtherDescription
}

export type FdType = keyof FileDescriptionTypes

export interface FdEntry {
  fd: number
  closeOnExec: boolean
  objref: ObjRef
}

/** Why something cannot be checkpointed; undefined when it can. */
export type NotCheckpointable = string | undefined

export interface DescriptionCommon {
  objref: ObjRef
  /** What /proc/PID/fd/N shows. */
  target: string
  /** f_flags as /proc/PID/fdinfo shows them (octal there). */
  flags: number
  /** FMODE_READ (1) | FMODE_WRITE (2), derived from the access mode. */
  mode: number
  pos: bigint
  mntId: number
  ino: bigint
  /** Set when this description cannot be checkpointed (a netlink socket, ...): says why. */
  notCheckpointable: NotCheckpointable
  /** Locks the task holds through this description (lib/files/locks.ts). */
  locks: FileLock[]
}

export type FileLockKind = 'posix' | 'flock' | 'ofd'

/** A lock held through an open file description, as /proc/PID/fdinfo shows it. */
export interface FileLock {
  kind: FileLockKind
  write: boolean
  start: bigint
  /** The last byte covered (inclusive); undefined: to the end of the file, however long. */
  end: bigint | undefined
  /**
   * The process holding a POSIX lock, in a checkpoint of several processes: POSIX locks
   * belong to a process, and each one's show only in its own fdinfo, so a description shared
   * by a tree holds each task's under that task. Undefined for flock and OFD locks (they
   * belong to the description) and for the POSIX locks of a lone process (its own).
   */
  owner?: Pid
}

export interface PathDescription extends DescriptionCommon {
  type: 'file' | 'dir' | 'chr' | 'blk' | 'fifo'
  /** The path as the task opened it (without " (deleted)"). */
  path: string
  dev: bigint
  /** st_rdev for device files. */
  rdev: bigint
  /** st_mode of the inode. */
  inodeMode: number
  /** Owner of the inode: a restore reopens only a file with this owner (and mode, and type). */
  uid: number
  gid: number
  size: bigint
  nlink: number
  /**
   * Birth time in ns since the epoch, 0n where the filesystem keeps none: with dev and inode
   * it tells the saved file from a new one that was given the freed inode number.
   */
  btime: bigint
  /** The path is gone or now names another inode (reference/000). */
  unlinked: boolean
  /** Other names of the same inode, found when unlinked (reference/000). */
  otherLinks: Lazy<string[]>
  /** Contents of an unlinked regular file (restore recreates it from these). */
  contents?: ByteSource
  /** Bytes buffered in a fifo, peeked, never consumed. */
  buffered?: Lazy<Buffer>
}

export interface PipeDescription extends DescriptionCommon {
  type: 'pipe'
  /** Pipe identity (inode number): both ends of one pipe share it. */
  pipeId: bigint
  /** Bytes buffered in the pipe, peeked, never consumed. */
  buffered: Lazy<Buffer>
  /** Its capacity (F_GETPIPE_SZ, F_SETPIPE_SZ) in bytes; 0: not recorded (a tree saved before it was kept). */
  capacity: number
}

export interface EventfdDescription extends DescriptionCommon {
  type: 'eventfd'
  count: bigint
  semaphore: boolean
}

export interface EpollItem {
  /** The fd number the item was added with. */
  tfd: number
  events: number
  data: bigint
  /** The description of the file the item watches, when an fd of the task holds it (at tfd or another number). */
  targetObjref: ObjRef | undefined
}

export interface EpollDescription extends DescriptionCommon {
  type: 'epoll'
  items: EpollItem[]
}

export interface SignalfdDescription extends DescriptionCommon {
  type: 'signalfd'
  sigmask: bigint
}

export interface TimerfdDescription extends DescriptionCommon {
  type: 'timerfd'
  clockid: number
  ticks: bigint
  settimeFlags: number
  /** Time to the next expiry and the interval, in nanoseconds (0: disarmed / one-shot). */
  valueNs: bigint
  intervalNs: bigint
}

export interface InotifyWatch {
  wd: number
  ino: bigint
  sdev: number
  mask: number
  ignoredMask: number
  /** Path of the watched inode when it could be found. */
  path: string | undefined
}

export interface InotifyDescription extends DescriptionCommon {
  type: 'inotify'
  watches: InotifyWatch[]
}

export interface OtherDescription extends DescriptionCommon {
  type: 'unknown'
}

export type FileDescription = FileDescriptionTypes[FdType]

export interface FileTable {
  fds: FdEntry[]
  files: FileDescription[]
}

// ---------------------------------------------------------------------------------------
// Memory

export type VmaKind =
  | 'heap' | 'stack' | 'vdso' | 'vvar' | 'vsyscall' | 'anonymous' | 'shared-anonymous'
  | 'file-private' | 'file-shared' | 'special' | 'aio'

export interface Vma {
  start: bigint
  end: bigint
  /** "rwxp" as in /proc/PID/maps. */
  perms: string
  offset: bigint
  dev: string
  inode: bigint
  /** Backing path, or the bracketed name ([heap], [stack], ...), or '' for anonymous. */
  path: string
  kind: VmaKind
  /** VmFlags from smaps (e.g. "rd wr mr mw me ac nr"). */
  vmFlags: string
  /** Runs of pages whose contents are stored, relative to `start`. */
  stored: StoredRun[]
  /** The stored pages, back to back, in run order; size = sum of run lengths. */
  pages: ByteSource
  /**
   * A process of a tree: runs of pages (relative to `start`, apart from the stored ones) that
   * hold what its parent holds at the same addresses (the same physical pages at the
   * checkpoint, copy-on-write since a fork): not stored here; the parent's content gives them.
   */
  inherited?: StoredRun[]
}

export interface StoredRun {
  /** Offset from the VMA start, in bytes. */
  offset: bigint
  length: bigint
}

export interface MmFields {
  startCode: bigint; endCode: bigint
  startData: bigint; endData: bigint
  startBrk: bigint; brk: bigint
  startStack: bigint
  argStart: bigint; argEnd: bigint
  envStart: bigint; envEnd: bigint
  /** /proc/PID/auxv, raw. */
  auxv: Buffer
  exe: string
}

// ---------------------------------------------------------------------------------------
// Threads and the process

export interface SigAltStack {
  sp: bigint
  flags: number
  size: bigint
}

export interface SyscallState {
  /** orig_rax at the stop: the system call the thread was in, or -1. */
  nr: number
  /** rax at the stop: the kernel's result or restart code (-512 .. -516). */
  result: bigint
}

export interface ThreadState {
  tid: Tid
  comm: string
  /** struct user_regs_struct, raw. */
  regs: Buffer
  /** NT_X86_XSTATE, raw. */
  xstate: Buffer
  fsBase: bigint
  gsBase: bigint
  sigmask: bigint
  /** Signals pending for this thread only (bit n-1 for signal n) and their siginfo records. */
  pendingMask: bigint
  pendingSiginfo: Buffer
  rseq: { pointer: bigint; size: number; signature: number; flags: number }
  syscall: SyscallState
  altstack: SigAltStack
  /** set_tid_address: the word the kernel clears (and futex-wakes) when the thread exits; pthread_join waits on it. */
  clearChildTid: bigint
  /** set_robust_list: the futexes the kernel releases (owner died) when the thread exits. */
  robustList: { head: bigint; length: bigint }
  /**
   * The thread is in seccomp strict mode (SECCOMP_MODE_STRICT: read, write, exit and
   * sigreturn only), which belongs to a thread; it then has no filters.
   */
  seccompStrict: boolean
}

export interface SigAction {
  signal: number
  handler: bigint
  flags: bigint
  restorer: bigint
  mask: bigint
}

export interface Rlimit {
  resource: number
  name: string
  soft: bigint
  hard: bigint
}

export interface ITimer {
  which: 'real' | 'virtual' | 'prof'
  intervalUs: bigint
  valueUs: bigint
}

export interface PosixTimer {
  id: number
  signal: number
  /** sigev_value delivered with each expiry (glibc SIGEV_THREAD timers need it back). */
  sigevValue: bigint
  notify: string
  clockid: number
  valueNs: bigint
  intervalNs: bigint
  overrun: number
}

/**
 * One seccomp filter: the classic BPF program the kernel runs (struct sock_filter[], 8 bytes
 * per instruction), the flags it remembers (SECCOMP_FILTER_FLAG_LOG), and the filter installed
 * before it in the same chain (its number, 0: the first of its chain). Threads that share a
 * chain share its filters, as in the kernel.
 */
export interface SeccompFilter {
  prev: number
  flags: number
  insns: Buffer
}

export interface SeccompThread {
  tid: number
  /** The newest filter of the thread's chain (a number of ProcessState.seccompFilters, from 1). */
  filter: number
}

export interface Credentials {
  uid: number; euid: number; suid: number; fsuid: number
  gid: number; egid: number; sgid: number; fsgid: number
  groups: number[]
  capInheritable: bigint
  capPermitted: bigint
  capEffective: bigint
  capBounding: bigint
  capAmbient: bigint
  securebits: number
}

export interface ProcessState {
  pid: Pid
  comm: string
  exe: string
  cmdline: Buffer
  environ: Buffer
  cwd: string
  root: string
  umask: number
  personality: number
  ppid: number
  pgid: number
  sid: number
  /** Controlling tty device number (0: none). */
  ttyNr: number
  noNewPrivs: boolean
  dumpable: number
  /**
   * prctl(PR_GET_THP_DISABLE), per process: 0 transparent huge pages allowed, 1 disabled,
   * 3 disabled except in mappings advised MADV_HUGEPAGE (PR_THP_DISABLE_EXCEPT_ADVISED).
   */
  thpDisable: number
  /**
   * prctl(PR_GET_PDEATHSIG) of the main thread: the signal it gets when its parent dies (0:
   * none). Set again where the parent is restored with it (a process of the tree, not its root).
   */
  pdeathSignal: number
  /** prctl(PR_GET_CHILD_SUBREAPER): orphaned descendants are reparented to this process, not to init. */
  childSubreaper: boolean
  /**
   * The stop signal of a process that was in a group stop at the checkpoint (SIGSTOP, SIGTSTP,
   * SIGTTIN or SIGTTOU), sent again so it comes back stopped; 0 if it was not stopped.
   */
  stopSignal: number
  /** The main thread's: 0 disabled, 1 strict, 2 filter (each thread's strict mode: ThreadState.seccompStrict). */
  seccompMode: number
  /**
   * The seccomp filters of all threads, stored once each: filter N is seccompFilters[N - 1],
   * and a thread's chain is its newest filter followed back through `prev` (empty: none).
   */
  seccompFilters: SeccompFilter[]
  /** The threads under seccomp filters and the newest filter of each one's chain. */
  seccompThreads: SeccompThread[]
  creds: Credentials
  rlimits: Rlimit[]
  sigactions: SigAction[]
  /** Shared (process-wide) pending signals and their siginfo records. */
  sharedPendingMask: bigint
  sharedPendingSiginfo: Buffer
  itimers: ITimer[]
  posixTimers: PosixTimer[]
  mm: MmFields
}

/** Everything about one task that a restore needs, captured lazily part by part. */
export interface TaskImage {
  pid: Pid
  tids: Tid[]
  process: Lazy<ProcessState>
  threads: Lazy<ThreadState[]>
  vmas: Lazy<Vma[]>
  fileTable: Lazy<FileTable>
}

export type CheckpointMode = 'lazy' | 'copy'

/** Things that prevent a restore, one line each ("files/7: socket: not checkpointable ..."). */
export type Problem = { where: string; why: string }

// ---------------------------------------------------------------------------------------
// Process trees: a checkpoint holds a process and all its descendants

/** A process of the tree that has exited and waits for its parent (also of the tree) to reap it. */
export interface ZombieTask {
  pid: Pid
  ppid: number
  pgid: number
  sid: number
  comm: string
  /** What the parent's waitpid gets (exit code << 8, or the signal number | 0x80 with a core dump). */
  exitStatus: number
}

/** A checkpoint's processes: the root first, parents before their children. */
export interface TreeImage {
  root: Pid
  tasks: TaskImage[]
  zombies: ZombieTask[]
  /** Descendants not in the checkpoint (the ckptfs process asking for it), and why. */
  left: Array<{ pid: Pid; why: string }>
}
