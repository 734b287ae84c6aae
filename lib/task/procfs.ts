// Readers and parsers for the /proc files a task capture needs. Parsers take the text so they
// can be tested on samples; readers add the path to any error.

import * as fs from 'fs'
import { CkptError } from '../errors'

export function procPath(pid: number, file: string, tid?: number): string {
  return tid === undefined ? `/proc/${pid}/${file}` : `/proc/${pid}/task/${tid}/${file}`
}

export async function readProcText(pid: number, file: string, tid?: number): Promise<string> {
  return (await readProcBytes(pid, file, tid)).toString('utf8')
}

export async function readProcBytes(pid: number, file: string, tid?: number): Promise<Buffer> {
  const where = procPath(pid, file, tid)
  try {
    return await readWhole(where)
  } catch (err) {
    throw procError(where, err)
  }
}

/**
 * Below half of Node's pool slab, so small reads share slabs. /proc files say size 0, so
 * readFile reads each into a fresh 64 KiB buffer, one per file read, which left holes in the
 * server's heap and its RSS creeping over thousands of checkpoints (README, Benchmarks,
 * "Server memory").
 */
const PROC_PIECE = 4000

/** The whole of a file whose size stat does not know, read a piece at a time until EOF. */
async function readWhole(where: string): Promise<Buffer> {
  const handle = await fs.promises.open(where, 'r')
  try {
    const pieces: Buffer[] = []
    let total = 0
    for (;;) {
      const piece = Buffer.allocUnsafe(PROC_PIECE)
      const { bytesRead } = await handle.read(piece, 0, PROC_PIECE, null)
      if (bytesRead === 0) break
      pieces.push(piece.subarray(0, bytesRead))
      total += bytesRead
    }
    return Buffer.concat(pieces, total)
  } finally {
    await handle.close()
  }
}

/**
 * The whole of a small /proc file with synchronous calls, for the files read once per task of
 * a tree (stat, status, smaps): each asynchronous piece is a thread-pool round trip, which for
 * a tree of 100 processes cost more than the kernel's work. The pieces go through one reused
 * buffer into a string, so nothing is left for the heap to hold (see PROC_PIECE).
 */
export function readProcTextSync(pid: number, file: string, tid?: number): string {
  const where = procPath(pid, file, tid)
  let text = ''
  try {
    const fd = fs.openSync(where, 'r')
    try {
      for (let n = syncPiece.length; n > 0;) {
        n = fs.readSync(fd, syncPiece, 0, syncPiece.length, null)
        text += syncPiece.toString('utf8', 0, n)
      }
    } finally {
      fs.closeSync(fd)
    }
  } catch (err) {
    throw procError(where, err)
  }
  return text
}

/** readProcTextSync's buffer: a whole smaps of a small process in one read. */
const syncPiece = Buffer.allocUnsafe(64 * 1024)

export async function readProcLink(pid: number, file: string, tid?: number): Promise<string> {
  const where = procPath(pid, file, tid)
  try {
    return await fs.promises.readlink(where)
  } catch (err) {
    throw procError(where, err)
  }
}

function procError(where: string, err: unknown): CkptError {
  const code = (err as { code?: unknown }).code
  const errno = code === 'ENOENT' ? 'ESRCH' : code === 'EACCES' || code === 'EPERM' ? 'EPERM' : 'EIO'
  return new CkptError(`${where}: ${err instanceof Error ? err.message : String(err)}`, errno)
}

// ---------------------------------------------------------------------------------------
// /proc/PID/stat

/** The fields of /proc/PID/stat by their number in proc(5) (1 = pid, 2 = comm, 3 = state ...). */
export class StatFields {
  private readonly rest: string[]
  readonly comm: string

  constructor(text: string) {
    // comm may hold spaces and parentheses: it ends at the last ')'.
    const open = text.indexOf('(')
    const close = text.lastIndexOf(')')
    if (open < 0 || close < open) throw new CkptError(`stat: malformed line: ${text.slice(0, 60)}`)
    this.comm = text.slice(open + 1, close)
    this.rest = text.slice(close + 2).trim().split(' ')
  }

  /** Field number n (3 and up) as text. */
  text(n: number): string {
    const value = this.rest[n - 3]
    if (value === undefined) throw new CkptError(`stat: field ${n} is missing`)
    return value
  }

  number(n: number): number {
    return Number(this.text(n))
  }

  bigint(n: number): bigint {
    return BigInt(this.text(n))
  }
}

/** proc(5) numbers of the stat fields a capture uses. */
export const STAT = {
  state: 3, ppid: 4, pgrp: 5, session: 6, ttyNr: 7,
  startCode: 26, endCode: 27, startStack: 28,
  startData: 45, endData: 46, startBrk: 47, argStart: 48, argEnd: 49, envStart: 50, envEnd: 51,
} as const

/**
 * A thread of `pid` (of `tids` when given) that has not exited, the main one when it can: once the main thread has
 * exited (a zombie until the others do), its /proc files no longer show the address space,
 * the executable or the working directory, but every other thread's do.
 */
export async function liveThread(pid: number, tids?: number[]): Promise<number> {
  const candidates = tids ?? (await fs.promises.readdir(procPath(pid, 'task')).catch(() => [])).map(Number)
  for (const tid of [pid, ...candidates.filter((t) => t !== pid)]) {
    let stat: string | undefined
    try {
      stat = readProcTextSync(pid, 'stat', tid)
    } catch {
      stat = undefined
    }
    const state = stat === undefined ? 'X' : new StatFields(stat).text(STAT.state)
    if (state !== 'Z' && state !== 'X') return tid
  }
  throw new CkptError(`task-${pid}: no live thread`, 'ESRCH')
}

// ---------------------------------------------------------------------------------------
// /proc/PID/status

export class StatusFields {
  private readonly map = new Map<string, string>()

  constructor(text: string) {
    for (const line of text.split('\n')) {
      const colon = line.indexOf(':')
      if (colon > 0) this.map.set(line.slice(0, colon), line.slice(colon + 1).trim())
    }
  }

  text(key: string): string {
    const value = this.map.get(key)
    if (value === undefined) throw new CkptError(`status: no ${key} line`)
    return value
  }

  /** A hexadecimal mask (SigPnd, CapEff, ...). */
  mask(key: string): bigint {
    return BigInt('0x' + this.text(key))
  }

  number(key: string): number {
    return Number(this.text(key))
  }

  /** The numbers of a tab separated line (Uid, Gid, Groups). */
  numbers(key: string): number[] {
    const value = this.text(key)
    return value === '' ? [] : value.split(/\s+/).map(Number)
  }
}

// ---------------------------------------------------------------------------------------
// /proc/PID/smaps (its header lines are /proc/PID/maps lines)

export interface MapsEntry {
  start: bigint
  end: bigint
  perms: string
  offset: bigint
  dev: string
  inode: bigint
  path: string
  /** VmFlags of smaps ('' when read from maps). */
  vmFlags: string
  /** Resident, anonymous and swapped kB from smaps (0 when read from maps). */
  rssKb: number
  anonymousKb: number
  swapKb: number
}

const SMAPS_SIZES: Record<string, 'rssKb' | 'anonymousKb' | 'swapKb'> = { Rss: 'rssKb', Anonymous: 'anonymousKb', Swap: 'swapKb' }

const MAPS_LINE = /^([0-9a-f]+)-([0-9a-f]+) ([r-][w-][x-][ps]) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+)(?: +(.*))?$/

/** Parses /proc/PID/smaps or /proc/PID/maps. */
export function parseMaps(text: string): MapsEntry[] {
  const entries: MapsEntry[] = []
  for (const line of text.split('\n')) {
    const m = MAPS_LINE.exec(line)
    if (m) {
      entries.push({
        start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]), perms: m[3],
        offset: BigInt('0x' + m[4]), dev: m[5], inode: BigInt(m[6]), path: m[7] ?? '', vmFlags: '',
        rssKb: 0, anonymousKb: 0, swapKb: 0,
      })
      continue
    }
    const last = entries[entries.length - 1]
    const colon = line.indexOf(':')
    if (!last || colon < 0) continue
    const key = line.slice(0, colon)
    if (key === 'VmFlags') last.vmFlags = line.slice(colon + 1).trim()
    else if (key in SMAPS_SIZES) last[SMAPS_SIZES[key]] = parseInt(line.slice(colon + 1), 10)
  }
  return entries
}

// ---------------------------------------------------------------------------------------
// /proc/PID/limits

/** Resource limits in RLIMIT_* order, with the label /proc/PID/limits gives each. */
export const RLIMITS = [
  { name: 'cpu', label: 'Max cpu time' },
  { name: 'fsize', label: 'Max file size' },
  { name: 'data', label: 'Max data size' },
  { name: 'stack', label: 'Max stack size' },
  { name: 'core', label: 'Max core file size' },
  { name: 'rss', label: 'Max resident set' },
  { name: 'nproc', label: 'Max processes' },
  { name: 'nofile', label: 'Max open files' },
  { name: 'memlock', label: 'Max locked memory' },
  { name: 'as', label: 'Max address space' },
  { name: 'locks', label: 'Max file locks' },
  { name: 'sigpending', label: 'Max pending signals' },
  { name: 'msgqueue', label: 'Max msgqueue size' },
  { name: 'nice', label: 'Max nice priority' },
  { name: 'rtprio', label: 'Max realtime priority' },
  { name: 'rttime', label: 'Max realtime timeout' },
] as const

export const RLIM_INFINITY = (1n << 64n) - 1n

export interface ParsedLimit {
  resource: number
  name: string
  soft: bigint
  hard: bigint
}

export function parseLimits(text: string): ParsedLimit[] {
  const limits: ParsedLimit[] = []
  for (const line of text.split('\n')) {
    const resource = RLIMITS.findIndex((r) => line.startsWith(r.label + ' '))
    if (resource < 0) continue
    const [soft, hard] = line.slice(RLIMITS[resource].label.length).trim().split(/\s+/)
    limits.push({ resource, name: RLIMITS[resource].name, soft: limitValue(soft), hard: limitValue(hard) })
  }
  if (limits.length !== RLIMITS.length) throw new CkptError(`limits: ${limits.length} of ${RLIMITS.length} limits found`)
  return limits
}

function limitValue(text: string | undefined): bigint {
  if (text === 'unlimited') return RLIM_INFINITY
  if (text === undefined || !/^\d+$/.test(text)) throw new CkptError(`limits: bad value ${text}`)
  return BigInt(text)
}

// ---------------------------------------------------------------------------------------
// /proc/PID/timers

export interface TimerListing {
  id: number
  signal: number
  /** sigev_value as the kernel shows it (a pointer-sized value). */
  sigevValue: bigint
  /** "signal/pid.N", "thread/tid.N", "none/pid.N". */
  notify: string
  clockid: number
}

export function parseTimers(text: string): TimerListing[] {
  const found: Array<Partial<TimerListing>> = []
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':')
    if (colon < 0) continue
    const key = line.slice(0, colon)
    const value = line.slice(colon + 1).trim()
    if (key === 'ID') found.push({ id: Number(value) })
    const current = found[found.length - 1]
    if (!current) continue
    if (key === 'signal') {
      const [signo, sigval] = value.split('/')
      current.signal = Number(signo)
      current.sigevValue = BigInt('0x' + sigval)
    } else if (key === 'notify') {
      current.notify = value
    } else if (key === 'ClockID') {
      current.clockid = Number(value)
    }
  }
  return found.map(({ id, signal, sigevValue, notify, clockid }) => {
    if (id === undefined || signal === undefined || sigevValue === undefined || notify === undefined || clockid === undefined) {
      throw new CkptError(`timers: incomplete entry for timer ${id}`)
    }
    return { id, signal, sigevValue, notify, clockid }
  })
}
