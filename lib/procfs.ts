// Small parsers of the /proc files that describe a task's open files: fd/, fdinfo/, the
// socket tables of its network namespace and its mountinfo. Everything here only reads;
// nothing changes the task's state. Process and memory parsing lives in lib/task/.

import * as fs from 'fs'
import { Worker } from 'worker_threads'
import { CkptError } from './errors'
import type { Pid } from './model'

export const O_CLOEXEC = 0o2000000

/** The fd numbers of a task, ascending. */
export async function listFds(pid: Pid): Promise<number[]> {
  let names: string[]
  try {
    names = await fs.promises.readdir(`/proc/${pid}/fd`)
  } catch (err) {
    throw new CkptError(`task ${pid}: cannot list its fds: ${(err as Error).message}`, 'ESRCH')
  }
  return names.map(Number).sort((a, b) => a - b)
}

/** /proc/PID/fdinfo/FD: the lines every file has, and the type-specific rest as it came. */
export interface Fdinfo {
  pos: bigint
  /** As printed (octal), including O_CLOEXEC when the fd is close-on-exec. */
  flags: number
  mntId: number
  ino: bigint
  /** Every line after the four common ones (eventfd-count, tfd, inotify, lock, ...). */
  extra: string[]
}

const commonLine = /^(pos|flags|mnt_id|ino):\s+(\S+)$/

function parseFdinfo(text: string, where: string): Fdinfo {
  const common = new Map<string, string>()
  const extra: string[] = []
  for (const line of text.split('\n')) {
    if (line === '') continue
    const m = commonLine.exec(line)
    if (m && !common.has(m[1])) common.set(m[1], m[2])
    else extra.push(line)
  }
  const field = (name: string): string => {
    const value = common.get(name)
    if (value === undefined) throw new CkptError(`${where}: no ${name} line`)
    return value
  }
  return {
    pos: BigInt(field('pos')),
    flags: parseInt(field('flags'), 8),
    mntId: Number(field('mnt_id')),
    ino: BigInt(field('ino')),
    extra,
  }
}

/** What stat(2) of an open file says about its inode (only the fields the file table uses). */
export interface InodeStat {
  dev: bigint
  ino: bigint
  mode: number
  uid: number
  gid: number
  nlink: number
  size: bigint
  rdev: bigint
  /** Birth time in ns since the epoch (statx); 0n where the filesystem keeps none. */
  btime: bigint
}

/** One fd of a task as /proc shows it. */
export interface RawFd {
  fd: number
  /** readlink of /proc/PID/fd/N. */
  target: string
  fdinfo: Fdinfo
  /** stat of /proc/PID/fd/N (which follows the magic link to the open file); path targets only. */
  stat: InodeStat | undefined
}

/** An fd as the readers below return it, before fdinfo is parsed (workers can only pass plain data). */
type UnparsedFd = Omit<RawFd, 'fdinfo'> & { fdinfo: string }
type ReadResult = UnparsedFd | { fd: number; target?: string; code: string; message: string }

const isPathTarget = (target: string): boolean => target.startsWith('/')
/** /proc reads in flight at once on the asynchronous path. */
const readConcurrency = 64
/**
 * From this many fds on, one worker thread reads them with synchronous calls: on a loaded
 * two-core machine 10,000 fds take about 0.3 s that way against 0.7 to 0.9 s through the
 * asynchronous API (three thread-pool round trips per fd), and a worker costs 0.1 s to start.
 */
const workerThreshold = 1000
/**
 * Up to this many fds are read with synchronous calls on this thread: about 10 us per fd,
 * against three thread-pool round trips per fd asynchronously, which is what a tree of 100
 * small processes (a few fds each) spent most of its file-table capture on (README,
 * Benchmarks, "Process trees"). 64 fds block the event loop for about a millisecond.
 */
const syncThreshold = 64
// A seq_file read returns as much as fits, so a read shorter than the buffer is the end.
// Most fdinfo files are a hundred bytes; epoll and inotify ones grow with their items.
const fdinfoChunk = 4096
/** The synchronous path's fdinfo buffer, reused: nothing awaits between its uses. */
const syncFdinfoBuffer = Buffer.allocUnsafe(fdinfoChunk)

/**
 * readlink, fdinfo and (for paths) stat of each of the task's `fds`, in order. An fd that
 * vanished meanwhile is an error: the caller froze the task, so its table must not change.
 */
export async function readFds(pid: Pid, fds: number[]): Promise<RawFd[]> {
  const fuse = fuseMounts(pid)
  const fuseIds = [...fuse.keys()]
  const parse = (r: ReadResult): RawFd => {
    if ('code' in r) {
      if (r.code === FUSE_REFUSED) {
        const m = fuse.get(Number(r.message))
        throw new CkptError(
          `task ${pid}: fd ${r.fd}: ${r.target} is on a FUSE file system (${m?.fsType ?? 'fuse'} at ${m?.mountPoint ?? '?'}, mount ${r.message}): ` +
            'its server answers when it likes, and one that never answers would hold the checkpoint, the frozen tasks and the mount; ckptfs does not touch files of a FUSE mount',
          'EPERM',
        )
      }
      if (r.code === 'ENOENT') throw new CkptError(`task ${pid}: fd ${r.fd} vanished while the file table was read (is the table shared with a task that is not frozen?)`, 'ESRCH')
      throw new CkptError(`task ${pid}: fd ${r.fd}: ${r.message}`)
    }
    return { ...r, fdinfo: parseFdinfo(r.fdinfo, `/proc/${pid}/fdinfo/${r.fd}`) }
  }
  if (fds.length >= workerThreshold) return readFdsInWorker(pid, fds, fuseIds, parse)
  if (fds.length <= syncThreshold) return fds.map((fd) => parse(readFdSync(fs, pid, fd, syncFdinfoBuffer, fuseIds)))
  return (await readFdsAsync(pid, fds, fuseIds)).map(parse)
}

/** ReadResult.code of an fd on a FUSE mount, not stat'ed; its message is the mount ID. */
const FUSE_REFUSED = 'CKPTFS_FUSE'

/**
 * The FUSE mounts the task sees (fuse, fuse.NAME, fuseblk), by mount ID. A FUSE file system
 * is answered by a process that may be a local user's: a stat of a file on it (or a read, a
 * lookup) waits for that process, and once the request is read, even SIGKILL does not end
 * the wait. A server that never answers would hold this server's event loop (the fd reads
 * below are synchronous), the frozen tasks and every later request of the mount. The files of
 * such a mount are therefore never stat'ed or read: the fd is refused by its mount ID (from
 * fdinfo, which the kernel writes without asking the file system).
 */
export function fuseMounts(pid: Pid): Map<number, MountInfo> {
  let text: string
  try {
    text = fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8')
  } catch {
    return new Map() // the task is gone: the fd reads say so
  }
  const isFuse = (t: string) => t === 'fuse' || t === 'fuseblk' || t.startsWith('fuse.')
  return new Map(parseMountInfo(text).filter((m) => isFuse(m.fsType)).map((m) => [m.mntId, m]))
}

export function inodeStat(st: fs.BigIntStats): InodeStat {
  return { dev: st.dev, ino: st.ino, mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), nlink: Number(st.nlink), size: st.size, rdev: st.rdev, btime: st.birthtimeNs }
}

async function readFdsAsync(pid: Pid, fds: number[], fuse: number[]): Promise<ReadResult[]> {
  const results = new Array<ReadResult>(fds.length)
  let next = 0
  const readOne = async (fd: number): Promise<ReadResult> => {
    const link = `/proc/${pid}/fd/${fd}`
    try {
      const [target, fdinfo] = await Promise.all([fs.promises.readlink(link), readFdinfoText(`/proc/${pid}/fdinfo/${fd}`)])
      const mnt = /^mnt_id:\s+(\d+)$/m.exec(fdinfo)
      if (mnt && fuse.includes(Number(mnt[1]))) return { fd, target, code: FUSE_REFUSED, message: mnt[1] }
      const stat = isPathTarget(target) ? inodeStat(await fs.promises.stat(link, { bigint: true })) : undefined
      return { fd, target, fdinfo, stat }
    } catch (err) {
      return { fd, code: String((err as NodeJS.ErrnoException).code), message: (err as Error).message }
    }
  }
  const worker = async (): Promise<void> => {
    while (next < fds.length) {
      const i = next++
      results[i] = await readOne(fds[i])
    }
  }
  await Promise.all(Array.from({ length: Math.min(readConcurrency, fds.length) }, worker))
  return results
}

async function readFdinfoText(file: string): Promise<string> {
  const handle = await fs.promises.open(file, 'r')
  try {
    const chunks: Buffer[] = []
    for (;;) {
      const buf = Buffer.allocUnsafe(fdinfoChunk)
      const { bytesRead } = await handle.read(buf, 0, buf.length, null)
      chunks.push(buf.subarray(0, bytesRead))
      if (bytesRead < buf.length) break
    }
    return Buffer.concat(chunks).toString('utf8')
  } finally {
    await handle.close()
  }
}

/** fds the worker reads between two messages: the main thread parses one batch while the worker reads the next. */
const workerBatch = 500

function readFdsInWorker(pid: Pid, fds: number[], fuse: number[], parse: (r: ReadResult) => RawFd): Promise<RawFd[]> {
  return new Promise((resolve, reject) => {
    const parsed: RawFd[] = []
    // The program is plain JavaScript: no loader flags of this process (test runners add some) are needed.
    const worker = new Worker(`(${readFdsWorkerMain.toString()})(${readFdSync.toString()})`, {
      eval: true,
      execArgv: [],
      workerData: { pid, fds, fuse, chunk: fdinfoChunk, batch: workerBatch },
    })
    worker.on('message', (batch: ReadResult[]) => {
      try {
        for (const r of batch) parsed.push(parse(r))
      } catch (err) {
        void worker.terminate()
        reject(err)
        return
      }
      if (parsed.length === fds.length) resolve(parsed)
    })
    worker.once('error', reject)
    worker.once('exit', (code) => reject(new CkptError(`task ${pid}: the fd reader stopped (exit code ${code}) before answering`)))
  })
}

/**
 * The worker's program: the same reads as readFdsAsync, as plain synchronous calls (they
 * block only the worker), posted a batch at a time. It runs from its source text, so it must
 * be self-contained: no imports or outer names, only what it requires itself and `readOne`
 * (readFdSync, passed as source too).
 */
function readFdsWorkerMain(readOne: typeof readFdSync): void {
  const fsSync = require('fs') as typeof import('fs')
  const { parentPort, workerData } = require('worker_threads') as typeof import('worker_threads')
  const { pid, fds, fuse, chunk, batch } = workerData as { pid: number; fds: number[]; fuse: number[]; chunk: number; batch: number }
  const buf = Buffer.allocUnsafe(chunk)
  for (let i = 0; i < fds.length; i += batch) parentPort!.postMessage(fds.slice(i, i + batch).map((fd) => readOne(fsSync, pid, fd, buf, fuse)))
}

/**
 * readlink, fdinfo and (for paths) stat of one fd with synchronous calls, `buf` holding the
 * fdinfo pieces. Self-contained (no outer names), as the worker runs it from its source text.
 */
function readFdSync(fsSync: typeof import('fs'), pid: number, fd: number, buf: Buffer, fuse: number[]): ReadResult {
  const link = `/proc/${pid}/fd/${fd}`
  try {
    const target = fsSync.readlinkSync(link)
    const handle = fsSync.openSync(`/proc/${pid}/fdinfo/${fd}`, 'r')
    let fdinfo = ''
    try {
      for (let n = buf.length; n === buf.length;) {
        n = fsSync.readSync(handle, buf, 0, buf.length, null)
        fdinfo += buf.toString('utf8', 0, n)
      }
    } finally {
      fsSync.closeSync(handle)
    }
    // A file of a FUSE mount (readFds, fuseMounts) is not stat'ed: its server may never answer.
    const mnt = /^mnt_id:\s+(\d+)$/m.exec(fdinfo)
    if (mnt && fuse.includes(Number(mnt[1]))) return { fd, target, code: 'CKPTFS_FUSE', message: mnt[1] }
    const st = target.startsWith('/') ? fsSync.statSync(link, { bigint: true }) : undefined
    const stat = st && { dev: st.dev, ino: st.ino, mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), nlink: Number(st.nlink), size: st.size, rdev: st.rdev, btime: st.birthtimeNs }
    return { fd, target, fdinfo, stat }
  } catch (err) {
    return { fd, code: String((err as NodeJS.ErrnoException).code), message: (err as Error).message }
  }
}

/** "key: value" lines of the type-specific part of fdinfo (eventfd-count, clockid, ...). */
export function fdinfoFields(extra: string[]): Map<string, string> {
  const fields = new Map<string, string>()
  for (const line of extra) {
    const colon = line.indexOf(':')
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1).trim())
  }
  return fields
}

/** A required field of the type-specific fdinfo lines, or a CkptError naming the fd. */
export function fdinfoField(fields: Map<string, string>, name: string, where: string): string {
  const value = fields.get(name)
  if (value === undefined) throw new CkptError(`${where}: fdinfo has no ${name} line`)
  return value
}

// ---------------------------------------------------------------------------------------
// Sockets: the kind of a socket inode, from the tables of the task's network namespace.

const unixTypes: Record<string, string> = { '0001': 'stream', '0002': 'datagram', '0005': 'seqpacket' }

/** The table files and, for each, the column holding the inode and how to name a row. */
const socketTables: Array<{ file: string; inodeColumn: number; describe: (cols: string[]) => string }> = [
  { file: 'unix', inodeColumn: 6, describe: (c) => `UNIX ${unixTypes[c[4]] ?? c[4]}${c[7] ? ` ${c[7]}` : ''}` },
  { file: 'tcp', inodeColumn: 9, describe: (c) => (c[3] === '0A' ? 'TCP listening' : 'TCP') },
  { file: 'tcp6', inodeColumn: 9, describe: (c) => (c[3] === '0A' ? 'TCPv6 listening' : 'TCPv6') },
  { file: 'udp', inodeColumn: 9, describe: () => 'UDP' },
  { file: 'udp6', inodeColumn: 9, describe: () => 'UDPv6' },
  { file: 'raw', inodeColumn: 9, describe: () => 'RAW' },
  { file: 'raw6', inodeColumn: 9, describe: () => 'RAWv6' },
  { file: 'netlink', inodeColumn: 9, describe: () => 'NETLINK' },
  { file: 'packet', inodeColumn: 8, describe: () => 'PACKET' },
]

/** Socket inode -> a short description ("TCP listening", "UNIX stream /run/x.sock"). */
export async function readSocketKinds(pid: Pid): Promise<Map<bigint, string>> {
  const kinds = new Map<bigint, string>()
  await Promise.all(socketTables.map(async (table) => {
    let text: string
    try {
      text = await fs.promises.readFile(`/proc/${pid}/net/${table.file}`, 'utf8')
    } catch {
      return // the protocol is not built into this kernel
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/)
      const inode = cols[table.inodeColumn]
      if (inode && /^\d+$/.test(inode) && inode !== '0') kinds.set(BigInt(inode), table.describe(cols))
    }
  }))
  return kinds
}

// ---------------------------------------------------------------------------------------
// Mounts

export interface MountInfo {
  mntId: number
  /** Device as "major:minor". */
  device: string
  /** Where it is mounted, as the task sees it. */
  mountPoint: string
  /** The file system type after the separator (ext4, fuse.sshfs ...). */
  fsType: string
}

/** octal escapes (\040 for space, ...) as mountinfo writes them. */
const unescapeMount = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, code: string) => String.fromCharCode(parseInt(code, 8)))

export async function readMountInfo(pid: Pid): Promise<MountInfo[]> {
  return parseMountInfo(await fs.promises.readFile(`/proc/${pid}/mountinfo`, 'utf8'))
}

function parseMountInfo(text: string): MountInfo[] {
  return text.split('\n').filter((l) => l).map((line) => {
    const cols = line.split(' ')
    return { mntId: Number(cols[0]), device: cols[2], mountPoint: unescapeMount(cols[4]), fsType: cols[cols.indexOf('-') + 1] ?? '' }
  })
}

// ---------------------------------------------------------------------------------------
// Device numbers

/**
 * The kernel's internal dev_t (MAJOR << 20 | MINOR, what fdinfo prints as sdev) as the
 * user-space st_dev encoding that stat returns (glibc's makedev).
 */
export function userDevFromKernel(sdev: number): bigint {
  const major = BigInt(sdev >>> 20)
  const minor = BigInt(sdev & 0xfffff)
  return (minor & 0xffn) | ((major & 0xfffn) << 8n) | ((minor & ~0xffn) << 12n) | ((major & ~0xfffn) << 32n)
}

export function majorMinor(dev: bigint): { major: number; minor: number } {
  return {
    major: Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn)),
    minor: Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn)),
  }
}
