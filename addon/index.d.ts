// Typed surface of the native helper (addon/build/Release/ckptfs.node).
// The addon only makes system calls and returns plain values; every policy lives in lib/.
// Errors are thrown (or promises rejected) as Error objects with `code` set to the errno
// name ("ESRCH", "EPERM", ...) and `errno` to its (positive) number, and a message that names
// the call, e.g. "process_vm_readv(pid 123, 0x1000, 4096): Bad address". Functions that return
// a Promise never throw: argument errors (TypeError, EINVAL, ERANGE) reject the promise too.
//
// Threads: every ptrace request runs on the addon's own tracer thread (ptrace requests are
// only valid from the thread that attached). Memory and file calls that may be slow run on
// libuv's pool. Nothing here blocks the JavaScript thread for long.

export interface NativeError extends Error {
  code: string
  errno: number
}

/** What a stopped thread showed when it was frozen. */
export interface FrozenThread {
  tid: number
  /** The raw wait status of the ptrace stop (a group stop's shows its stop signal). */
  status: number
}

/** One system call to run inside a stopped thread, for injectBatch. */
export interface InjectedCall {
  nr: number
  /** Up to six arguments. */
  args: bigint[]
  /** Bit i set: args[i] is an offset into the scratch area; the tracee sees scratch base + offset. */
  scratchArgs?: number
  /**
   * Interrupt the thread (PTRACE_INTERRUPT) at the call's syscall-entry stop: the call runs
   * with a signal pending, so a sleeping call returns at once as a signal would have made it
   * (restore primes a thread's restart block this way).
   */
  interruptAtEntry?: boolean
}

/** Where injectBatch puts its scratch area and which `syscall` instruction it runs (restore). */
export interface InjectPlacement {
  /** Map the scratch area exactly here (MAP_FIXED_NOREPLACE) instead of where the kernel likes. */
  scratchAddr?: bigint
  /** Address of a `syscall` instruction (0f 05) to use instead of the one found in the vdso. */
  syscallAddr?: bigint
  /**
   * A page of the tracee's own (mapped read, write and execute by the restore, its first 64
   * bytes left alone) where runs of plain calls are made in one go by a small loop rather
   * than one ptrace stop each (addon/src/inject.c, "Runner").
   */
  runnerPage?: bigint
  /**
   * Size of a scratch area kept mapped at scratchAddr from this batch to the next ones that
   * also say so (mapped whole by the first, never unmapped by injectBatch: the caller does);
   * a batch without it forgets the area.
   */
  keepScratch?: bigint
}

export interface InjectResult {
  /** Raw return value of each call (negative errno on failure), in order. */
  results: bigint[]
  /** The scratch area as it was after the last call. */
  scratch: Buffer
}

export interface RseqConfig {
  pointer: bigint
  size: number
  signature: number
  flags: number
}

/** One thread's CPU state, read with ptrace while it is stopped. */
export interface ThreadRegisters {
  /** struct user_regs_struct, raw (216 bytes on x86-64). */
  regs: Buffer
  /** NT_X86_XSTATE regset, raw, at the length the kernel returned. */
  xstate: Buffer
  /** PTRACE_GETSIGMASK. */
  sigmask: bigint
  rseq: RseqConfig
}

/** One range of a scanPagemaps call. */
export interface PagemapScan {
  start: bigint
  end: bigint
  privateOnly: boolean
  /** Also answer each page's frame (`frames`): a child's scan compares its own with them. */
  frames?: boolean
  /**
   * The parent's `frames` for the same range: a kept page present at the same frame as the
   * parent's (not the zero page) is answered in `inherited`, not among the stored runs, if
   * the parent (`parentPid`, frozen) still maps that frame just before and after the read;
   * without `parentPid` nothing is inherited.
   */
  parentFrames?: Buffer
}

/** The stored runs of one range, with what its request asked for besides. */
export type PagemapScanned = PagemapRun[] & {
  /** One little-endian u64 per page: the frame of a kept page, 0 for the others. */
  frames?: Buffer
  /** Runs of pages held at the parent's frames (copy-on-write since a fork). */
  inherited?: PagemapRun[]
}

export interface PagemapRun {
  /** Start address of a run of pages to store. */
  start: bigint
  /** Length in bytes (a multiple of the page size). */
  length: bigint
}

export interface Addon {
  // ---- freezing (tracer thread) ----
  /**
   * PTRACE_SEIZE (no options that would kill or disturb the task; no EXITKILL) and
   * PTRACE_INTERRUPT every thread of `pid`, repeating until /proc/PID/task shows no thread
   * that is not stopped (threads created meanwhile are caught too). Waits for each stop.
   * On failure every thread already seized is detached again before the promise rejects.
   * A signal that a thread dequeues before its interrupt stop is delivered (PTRACE_CONT with
   * it: handler frame set up, or default action), then the thread stops before running any
   * user instruction. Rejects EBUSY if `pid` is already frozen, ETIMEDOUT if a thread does
   * not stop within 5 s (uninterruptible sleep); a zombie main thread is skipped.
   */
  freeze(pid: number): Promise<FrozenThread[]>
  /**
   * Lets every frozen thread of `pid` run on: PTRACE_DETACH each, untouched, so the kernel
   * restarts interrupted system calls as it would after any stop. With kill = true, sends
   * SIGKILL first (nothing of the task runs in between) and collects only the ptrace exit
   * notifications of its threads (waitpid __WALL, up to 2 s, later in the background), so the
   * real parent can reap it; the process itself is not our child and is not reaped here.
   * Threads that vanished meanwhile are ignored. Rejects ESRCH if `pid` is not frozen.
   * Before detaching, a thread whose epoll_wait/epoll_pwait/epoll_pwait2/rt_sigtimedwait was
   * turned into -EINTR by our interrupt (and that has no deliverable signal pending) is rewound
   * so the call is issued again (its timeout restarts from the full value).
   */
  thaw(pid: number, kill: boolean): Promise<void>
  /**
   * Freezes several processes side by side (their threads are all interrupted before any
   * stop is awaited): the children of a process tree found in one pass. Each succeeds or
   * fails on its own: its threads, or the error freeze would have thrown for it.
   */
  freezeMany(pids: number[]): Promise<Array<{ pid: number; threads?: FrozenThread[]; error?: Error & { code?: string } }>>
  /** Registers, xsave area, signal mask and rseq registration of one frozen thread. */
  getThreadRegisters(tid: number): Promise<ThreadRegisters>
  /**
   * The seccomp filter chain of one frozen thread, oldest first (empty: none): each filter's
   * struct sock_filter[] (8 bytes per instruction) and the flags the kernel kept (SECCOMP_FILTER_FLAG_LOG).
   */
  getSeccompFilters(tid: number): Promise<Array<{ flags: number; insns: Buffer }>>
  /** PTRACE_SETREGS on a frozen thread (used to fix up restart state before thaw). */
  setThreadRegisters(tid: number, regs: Buffer): Promise<void>
  /**
   * Runs system calls inside a frozen thread: maps a scratch area of `scratchSize` bytes
   * (mmap injected), copies `scratchInit` into it, runs each call with orig_rax = -1 through a
   * `syscall` instruction found in the vdso, reads the scratch area back, unmaps it and
   * restores the thread's registers exactly. A signal arriving meanwhile stays pending.
   * During the batch the thread's signal mask blocks every signal (that is how they stay
   * pending); rt_sigprocmask calls in the batch are emulated on the thread's real mask, which is
   * installed at the end. Threads or processes created by an injected clone inherit the
   * all-blocked mask: set theirs explicitly. An injected call that does not return within 10 s
   * is interrupted and the batch rejects ETIMEDOUT.
   */
  injectBatch(tid: number, scratchSize: number, scratchInit: Buffer | null, calls: InjectedCall[], placement?: InjectPlacement): Promise<InjectResult>
  /** PTRACE_PEEKSIGINFO: queued siginfo_t records (128 bytes each), per-thread or shared queue. */
  peekSiginfo(tid: number, shared: boolean): Promise<Buffer>

  // ---- memory (libuv pool) ----
  /**
   * process_vm_readv of [addr, addr+length) into a new Buffer; short reads are an error
   * (EFAULT naming the first address that could not be read). For this and the other memory
   * calls `pid` may be any live thread id of the process (needed once the main thread exited).
   */
  readMemory(pid: number, addr: bigint, length: number): Promise<Buffer>
  /** process_vm_readv of several ranges into `into` back to back, in one call where possible. */
  readMemoryInto(pid: number, ranges: PagemapRun[], into: Buffer, intoOffset: number): Promise<void>
  /**
   * The same, synchronously, for at most 1 MiB: the mount's reads of a frozen task's resident
   * memory, where a trip through the pool costs more than the copy itself.
   */
  readMemoryIntoNow(pid: number, ranges: PagemapRun[], into: Buffer, intoOffset: number): void
  /** CRC32C (Castagnoli) of `buffer`, continuing from `seed` (the CRC of what came before; 0 to start). */
  crc32c(buffer: Buffer, seed: number): number
  /**
   * CRC32C of `ranges` of pid's memory laid back to back, one per `pieceSize` bytes (the
   * last piece holds the rest): read with process_vm_readv into one reused buffer, on the pool.
   */
  /** viaProcMem: read through /proc/PID/mem, which keeps pages shared copy-on-write shared (process_vm_readv pins them: the kernel then gives the process a copy of its own). */
  crc32cOfMemory(pid: number, ranges: PagemapRun[], pieceSize: number, viaProcMem?: boolean): Promise<number[]>
  /**
   * One walk of the directory tree at `path` on the pool (addon/src/treeread.c): every entry's
   * kind, owner and mode, and the bytes and CRC32C of each regular file of at most `inlineMax`
   * bytes while `budget` bytes in all allow, in one Buffer (lib/restore/snapshot.ts reads it).
   * Entries below `path` are opened relative to their directory with O_NOFOLLOW; symbolic
   * links are recorded, never followed. The steps go through io_uring, a directory's entries a
   * chunk at a time, unless `useRing` is false or io_uring cannot be set up; the Buffer's
   * `ringed` says how many of the walk's threads used it (tests).
   */
  readTree(path: string, inlineMax: number, budget: number, useRing?: boolean): Promise<Buffer & { ringed: number }>
  /**
   * Lazy restore (addon/src/uffd.c): registers `ranges` (u64 start, u64 length pairs) of pid's
   * memory on `uffd` (a userfaultfd the task made, taken with getFd; owned by the fill from
   * now on, closed when it ends) and fills them on first touch and in the background, from
   * `pieces` (per piece: u32 crc32c, u32 segment count, u32 source count, u32 0, then segments
   * u64 address, u64 length, then sources i64 fd, u64 offset, u64 length), in `order` (u32
   * piece indices) for the background. Settles when every stored page is in, or with
   * `failure` once a piece could not be read or checked (the task and its descendants are
   * killed first). `hold` (-1: none; else an fd the caller keeps open until the fill settles,
   * e.g. eventFd()): faults are served at once, but the background fill waits until `hold`
   * is readable, so it does not compete with the rest of the restore before the task runs.
   * `kin` (int32 pairs: PID, pidfd from pidFd, kept open by the caller until the fill
   * settles): the other processes of a restored tree, killed too (with their descendants)
   * on a failure; empty for a lone process.
   */
  lazyFill(uffd: number, pid: number, ranges: Buffer, pieces: Buffer, order: Buffer, hold: number, kin: Buffer): Promise<LazyFillResult>
  /**
   * Scans /proc/PID/pagemap over [start, end) and returns the runs of pages whose contents
   * a restore needs: present or swapped, and (when `privateOnly`) not file-backed (i.e. the
   * anonymous copies of a private mapping). Adjacent pages are merged into one run.
   */
  scanPagemap(pid: number, start: bigint, end: bigint, privateOnly: boolean): Promise<PagemapRun[]>
  /**
   * scanPagemap of each range, in one pool call with one open of pagemap (a small process's
   * mappings cost one round trip, not one each): the runs of ranges[i] are answer[i].
   */
  scanPagemaps(pid: number, ranges: PagemapScan[], parentPid?: number): Promise<PagemapScanned[]>

  /**
   * A zero-filled buffer whose pages are already faulted in (MADV_POPULATE_WRITE): copy-mode
   * captures copy into it while the task is stopped. Pool thread.
   */
  allocTouched(length: number): Promise<Buffer>  // 1 byte to 1 GiB (ERANGE above: take several)

  // ---- files (synchronous: each is one fast system call) ----
  /** kcmp(pid, pid, KCMP_FILE, fd1, fd2): 0 same description, 1 or 2 ordering, 3 not comparable. */
  kcmpFile(pid: number, fd1: number, fd2: number): number
  /** kcmp(pid1, pid2, KCMP_FILE, fd1, fd2): the same answer across two processes of a tree. */
  kcmpFileAcross(pid1: number, fd1: number, pid2: number, fd2: number): number
  /**
   * Sorts `fds` with kcmp(KCMP_FILE) in one call and returns, for each fd (same positions),
   * the lowest fd sharing its open file description. Throws if kcmp cannot compare two.
   */
  kcmpGroups(pid: number, fds: number[]): number[]
  /** This CPU's NT_X86_XSTATE size for the features the kernel enabled (CPUID 0xD). */
  xstateSize(): number
  /**
   * kcmp(pid, pid, KCMP_EPOLL_TFD, fd, {efd, tfd, toff}): 0 when the task's `fd` holds the file
   * its epoll `efd` watches as item (tfd, toff) (toff: the item's rank among those added with fd
   * number tfd, in fdinfo order), 1 or 2 otherwise. Throws ENOENT when there is no such item.
   */
  /** kcmp KCMP_EPOLL_TFD: whether `pid`'s fd is item (tfd, toff) of the epoll `efd` of `epollPid` (default `pid`); 0: it is. */
  kcmpEpollTarget(pid: number, fd: number, efd: number, tfd: number, toff: number, epollPid?: number): number
  /** pidfd_open + pidfd_getfd: a duplicate of the task's fd in this process (caller closes it). */
  getFd(pid: number, fd: number): number
  /**
   * The bytes buffered in the pipe or fifo behind the task's `fd` (either end), without
   * consuming them: a read end is opened through /proc/PID/fd/FD (O_RDONLY|O_NONBLOCK) and the
   * data is tee()d into a private pipe and read from there. Never blocks.
   */
  peekPipe(pid: number, fd: number): Promise<Buffer>
  /** F_GETPIPE_SZ of the pipe behind `fd` of `pid` (through a new read end of it). */
  pipeSize(pid: number, fd: number): number
  /**
   * Every UNIX socket of this process's network namespace (NETLINK_SOCK_DIAG, unix_diag): its
   * inode, type (SOCK_*), state (TCP_* numbers: 1 established, 7 close, 10 listen), name
   * (sun_path bytes; a leading 0 for an abstract name), the inode and kernel device its path
   * names (vfsIno, vfsDev), its peer's inode (0: the peer is gone), the inodes of connections
   * waiting to be accepted (icons), queue lengths (listening: waiting connections and the
   * backlog) and its shutdown bits (1 receive, 2 send). Synchronous: one netlink dump.
   */
  unixSockets(): UnixDiagSocket[]
  /**
   * The task's socket `fd` taken with pidfd_getfd: its family, type and common options, and for
   * a UNIX socket its receive queue peeked without consuming it (SO_PEEK_OFF walks the queue and
   * is put back): one Buffer per datagram or seqpacket record, a stream's bytes in pieces, with
   * each datagram's sender address. Fds passed with SCM_RIGHTS that a peek hands out are closed
   * at once and counted in rightsInFlight. Synchronous: nothing blocks.
   */
  peekSocket(pid: number, fd: number): PeekedSocket
  /** close(2) of an fd of this process. */
  close(fd: number): void
  /** pidfd_open(pid): a pidfd (close-on-exec) for lazyFill's `kin`. Caller closes it. */
  pidFd(pid: number): number
  /** eventfd(0, EFD_CLOEXEC): lazyFill's hold (an 8-byte write lets the fill go on). Caller closes it. */
  eventFd(): number
  /** What a socket of this process (a getFd copy) says about itself: family, type, addresses, TCP state, options. */
  inetSocket(fd: number): InetSocketInfo
  /** TCP_REPAIR on: the connection's sequence numbers, queues (peeked), options and window; it stays in repair mode. */
  tcpRepairDump(fd: number): TcpRepairDump
  /** TCP_REPAIR off: the connection works again. */
  tcpRepairOff(fd: number): void
  /** A netlink socket (this process's copy `fd` of a socket of task `pid`): addresses, groups, options, and netlink_diag's view in the task's network namespace. */
  netlinkSocket(pid: number, fd: number): NetlinkSocketInfo
  /** A packet socket (this process's copy `fd` of a socket of task `pid`): address, options, and packet_diag's view in the task's network namespace. */
  packetSocket(pid: number, fd: number): PacketSocketInfo
  /**
   * A TCP or UDP socket (this process's copy `fd` of a socket of task `pid`) as inet_diag lists
   * it in the task's network namespace: whether it is listed (bound, for a closed TCP socket:
   * one whose connection ended gave its port back) and its shutdown state.
   */
  inetDiag(pid: number, fd: number): InetDiagInfo

  // ---- restore (tracer thread) ----
  /**
   * Starts the process that becomes the restored task (docs/RESTORE.md): an intermediate child
   * calls clone3 with set_tid = [pid] and exits at once, so the new process is reparented to
   * init (never our child). `plan` goes into a memfd; the plan, control and reply fds are
   * placed at workFdBase, workFdBase+1, workFdBase+2 and the new process execs
   * `stub PLAN_FD CTL_FD REPLY_FD` with env GLIBC_TUNABLES=glibc.pthread.rseq=0 only. It is
   * seized with PTRACE_O_EXITKILL, told to go (one byte on CTL), and the promise resolves once
   * the stub has written "ok" and is interrupted (stopped, tracked like a frozen task, so
   * injectBatch/setThreadState/thaw work on it). Rejects with the stub's own error line
   * (and kills it), with EEXIST when the PID is taken, or with the failing call.
   * Before the exec, every other fd is closed, every signal disposition is reset to SIG_DFL and
   * the signal mask emptied (nothing of the server's, e.g. its ignored SIGPIPE, reaches the
   * task). "Interrupted" means after the stub closed its working fds (EOF on its reply pipe).
   * Rejection messages from the stub are "restorer(pid N): error: ..." (code EIO).
   */
  spawnRestorer(pid: number, stub: string, plan: Buffer, workFdBase: number): Promise<void>
  /**
   * Makes every process of a saved tree with its PID (docs/RESTORE.md, "A process tree"): the
   * root as spawnRestorer does, each other task forked by its restored parent's stub (with the
   * fds it inherits) and exec'ing the stub with its own plan, zombies forked and exited. `script`
   * is built by lib/restore/pstree.ts. Resolves once every live task is stopped and tracked like
   * a frozen one; on failure every task made is killed (and reaped) and it rejects naming the task.
   */
  /** Resolves with one byte per premapped area of the script: "1" mapped and filled, "0" not. */
  spawnTree(stub: string, workFdBase: number, script: Buffer): Promise<Buffer>
  /**
   * process_vm_writev of `data` at `addr` into a stopped task (writable mappings only: EFAULT
   * naming the address otherwise). Runs on libuv's pool (it needs no ptrace request).
   */
  writeMemory(pid: number, addr: bigint, data: Buffer): Promise<void>
  /** PTRACE_SETREGSET NT_X86_XSTATE (at the saved length) and PTRACE_SETSIGMASK. */
  setThreadState(tid: number, xstate: Buffer, sigmask: bigint): Promise<void>
  /**
   * Seizes (with the task's ptrace options), interrupts and tracks one more thread of a task
   * held by freeze or spawnRestorer: a thread a restore created with an injected clone3.
   */
  seizeThread(pid: number, tid: number): Promise<void>
}

export interface LazyFillResult {
  copiedPages: bigint
  zeroPages: bigint
  faults: bigint
  /** Seconds from the registration to the last page. */
  seconds: number
  /** Piece indices in the order their first fault asked for them. */
  firstTouched: number[]
  /** The process ended (or was killed) before its last page was in. */
  ended: boolean
  failure?: string
  /** The piece that failed, or -1 when the failure was not one piece's. */
  failedPiece?: number
}

export interface UnixDiagSocket {
  ino: number
  type: number
  state: number
  name?: Buffer
  vfsIno?: number
  vfsDev?: number
  peer?: number
  icons: number[]
  rqueue?: number
  wqueue?: number
  shutdown?: number
}

export interface PeekedSocket {
  domain: number
  type: number
  acceptconn: number
  /** As getsockopt reports them (the kernel doubles what setsockopt was given). */
  rcvbuf: number
  sndbuf: number
  passcred: number
  /** -1: off. */
  peekOff: number
  rcvtimeoUs: bigint
  sndtimeoUs: bigint
  queue: Buffer[]
  senders: Array<Buffer | undefined>
  /** The fds passed with each message (SCM_RIGHTS), open in this process: the caller closes them. */
  rights: Array<number[] | undefined>
  rightsInFlight: number
}

export interface InetAddress {
  addr: string
  port: number
  /** IPv6 only. */
  scopeId?: number
}

/** What every netlink and packet socket reports besides its family's own fields. */
export interface RawSocketCommon {
  type: number
  /** As getsockopt shows them (twice what setsockopt was given). */
  rcvbuf: number
  sndbuf: number
  /** Bytes in the receive queue (SO_MEMINFO); -1n when the kernel does not say. */
  queued: bigint
  /** Instructions of an attached classic BPF filter (0: none). */
  filter: number
}

export interface NetlinkSocketInfo extends RawSocketCommon {
  protocol: number
  /** 0: not bound. */
  portid: number
  dstPortid: number
  /** 0: none. */
  dstGroup: number
  /** Every multicast group joined (1-based), ascending. */
  groups: number[]
  pktinfo: number
  broadcastError: number
  noEnobufs: number
  listenAllNsid: number
  capAck: number
  extAck: number
  strictChk: number
  /** netlink_diag's state and NDIAG_FLAG_* bits; absent when the dump does not list the socket. */
  diagState?: number
  diagFlags?: number
}

export interface PacketRingInfo {
  blockSize: number
  blockNr: number
  frameSize: number
  frameNr: number
  retireTmo: number
  sizeofPriv: number
  features: number
}

export interface PacketSocketInfo extends RawSocketCommon {
  /** The bound protocol (ETH_P_*), host byte order. */
  protocol: number
  /** 0: not bound to an interface. */
  ifindex: number
  ifname?: string
  version: number
  reserve: number
  auxdata: number
  origdev: number
  vnetHdr: number
  timestamp: number
  /** PACKET_FANOUT as getsockopt gives it: id | type << 16 | flags << 24 (0: none). */
  fanout: number
  loss: number
  qdiscBypass: number
  ignoreOutgoing: number
  /** Set when packet_diag lists the socket (then the fields below are too). */
  diagFound?: number
  copyThresh?: number
  diagFlags?: number
  mclist?: Array<{ ifindex: number; count: number; type: number; addr: Buffer }>
  /** Set when the socket is in a fanout group (then `fanout` is that group's value, 0 included). */
  inFanout?: number
  rxRing?: PacketRingInfo
  txRing?: PacketRingInfo
}

export interface InetSocketInfo {
  domain: number
  type: number
  protocol: number
  /** Absent for sockets of other families (only domain, type and protocol are read). */
  local?: InetAddress
  peer?: InetAddress
  /** The kernel's sk_state (TCP_ESTABLISHED 1 ... TCP_LISTEN 10); UDP: 1 connected, 7 not. */
  state: number
  backlog: number
  /** Connections waiting in a listening socket's accept queue. */
  pending: number
  inq: number
  outq: number
  reuseaddr: number
  reuseport: number
  keepalive: number
  broadcast: number
  rcvbuf: number
  sndbuf: number
  v6only: number
  nodelay: number
  keepidle: number
  keepintvl: number
  keepcnt: number
  rcvtimeoUs: bigint
  sndtimeoUs: bigint
  /** TCP_CORK (TCP; 0 for UDP). */
  cork: number
  /** UDP: the queued datagrams (peeked, in order) and the address each came from. */
  queue?: Buffer[]
  senders?: Array<InetAddress | undefined>
}

export interface InetDiagInfo {
  /** 1: inet_diag lists the socket (a bound one; TCP in TCP_CLOSE only where boundListed). */
  listed: number
  /**
   * 1: this kernel lists bound TCP sockets in TCP_CLOSE (TCP_BOUND_INACTIVE, Linux 6.8), so a
   * closed TCP socket not listed holds no port (probed once with a socket of this process).
   */
  boundListed: number
  diagState?: number
  /**
   * sk_shutdown: RCV_SHUTDOWN 1, SEND_SHUTDOWN 2 (INET_DIAG_SHUTDOWN). For a socket not listed,
   * only RCV_SHUTDOWN, from poll's POLLRDHUP: nothing shows SEND_SHUTDOWN on it.
   */
  shutdown: number
}

export interface TcpRepairDump {
  sendSeq: bigint
  sendQueue: Buffer
  recvSeq: bigint
  recvQueue: Buffer
  unsent: number
  /** TCP_MAXSEG in repair mode: the MSS clamp (what the peer announced). */
  mss: number
  /** tcpi_snd_mss: the segment size the connection sends with. */
  sndMss: number
  /** tcpi_state (a half-closed connection's queues' sequence numbers count its FIN). */
  state: number
  /** tcpi_options: TCPI_OPT_TIMESTAMPS 1, TCPI_OPT_SACK 2, TCPI_OPT_WSCALE 4. */
  options: number
  sndWscale: number
  rcvWscale: number
  timestamp: bigint
  sndWl1: bigint
  sndWnd: bigint
  maxWindow: bigint
  rcvWnd: bigint
  rcvWup: bigint
}
