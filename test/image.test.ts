// The condensed image (lib/image): its size is exact before reading, reads at any offset
// agree, decoding gives back what was encoded, every damaged image is refused with a
// CkptError (never a crash or a hang), and encoding a large process keeps memory bounded.

import * as crypto from 'crypto'
import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import * as zlib from 'zlib'
import { pieceCrcs } from '../lib/checksum'
import { CkptError } from '../lib/errors'
import { captureFileTable } from '../lib/fdtable'
import { encodeMessage } from '../lib/image/codec'
import { checkpointTree, imageToTree, treeToImage } from '../lib/image/convert'
import { readImage } from '../lib/image/decode'
import { imageSource } from '../lib/image/encode'
import { imageSchema } from '../lib/image/schema'
import { BufferReader, ByteWriter, WireType } from '../lib/image/wire'
import {
  asObjRef, asPid, asTid, intoSource, lazy,
  type ByteSource, type FileDescription, type FileLock, type FileTable, type ProcessState, type TaskImage, type ThreadState, type Vma,
} from '../lib/model'
import { native } from '../lib/native'
import { showCheckpoint } from '../lib/show'
import { captureVmas } from '../lib/task/memory'
import { captureProcess } from '../lib/task/process'
import { validateSeccomp } from '../lib/task/seccomp'
import { captureThreads } from '../lib/task/threads'
import { writeTree } from '../lib/tree/write'
import { buildTarget, identityOf, killIfSame, startTarget } from './lib/targets'

// ---------------------------------------------------------------------------------------
// Synthetic checkpoints

/** Deterministic bytes of any size without holding them: a repeating random pattern, shifted by seed. */
function patternSource(size: number, seed: number): ByteSource {
  const period = 65521
  const pattern = crypto.createHash('sha256').update(String(seed)).digest()
  const base = Buffer.alloc(period)
  for (let i = 0; i < period; i++) base[i] = pattern[i % 32] ^ (i * 131 + seed)
  return intoSource(size, async (offset, length, into, at) => {
    for (let done = 0; done < length;) {
      const from = (offset + done) % period
      done += base.copy(into, at + done, from, Math.min(period, from + length - done))
    }
    return length
  })
}

const PAGE = 4096n
const MiB = 1 << 20

function vma(start: bigint, pages: bigint, runs: Array<[bigint, bigint]>, extra: Partial<Vma> = {}): Vma {
  const stored = runs.map(([offset, length]) => ({ offset: offset * PAGE, length: length * PAGE }))
  const storedBytes = Number(stored.reduce((sum, r) => sum + r.length, 0n))
  return {
    start,
    end: start + pages * PAGE,
    perms: 'rw-p',
    offset: 0n,
    dev: '00:00',
    inode: 0n,
    path: '',
    kind: 'anonymous',
    vmFlags: 'rd wr mr mw me ac',
    stored,
    pages: patternSource(storedBytes, Number(start % 100000n)),
    ...extra,
  }
}

function thread(tid: number, nr: number): ThreadState {
  const regs = Buffer.alloc(216)
  crypto.createHash('sha512').update(`regs${tid}`).digest().copy(regs)
  const fsBase = 0x7f0000001000n + BigInt(tid)
  const result = nr < 0 ? 0n : -516n
  regs.writeBigInt64LE(result, 10 * 8)
  regs.writeBigInt64LE(BigInt(nr), 15 * 8)
  regs.writeBigUInt64LE(0x33n, 17 * 8)
  regs.writeBigUInt64LE(fsBase, 21 * 8)
  regs.writeBigUInt64LE(0n, 22 * 8)
  const xstate = Buffer.alloc(832, tid & 0xff)
  xstate.writeBigUInt64LE(0x7n, 464)
  xstate.writeBigUInt64LE(0x3n, 512)
  return {
    tid: asTid(tid),
    comm: `worker-${tid}`,
    regs,
    xstate,
    fsBase,
    gsBase: 0n,
    sigmask: 1n << 63n,
    pendingMask: tid % 2 ? 1n << 9n : 0n,
    pendingSiginfo: tid % 2 ? Buffer.alloc(128, 7) : Buffer.alloc(0),
    rseq: { pointer: 0x7f00000020e0n, size: 32, signature: 0x53053053, flags: 0 },
    syscall: { nr, result },
    altstack: { sp: 0n, flags: -2147483646, size: 0n },
    clearChildTid: fsBase + 0x2d0n,
    robustList: nr % 2 === 0 ? { head: fsBase + 0x2e0n, length: 24n } : { head: 0n, length: 0n },
  }
}

const processState = (pid: number): ProcessState => ({
  pid: asPid(pid),
  comm: 'synthetic',
  exe: '/usr/bin/synthetic',
  cmdline: Buffer.from('synthetic\0--flag\0value\0'),
  environ: Buffer.from('HOME=/root\0LANG=C.UTF-8\0'),
  cwd: '/tmp/wörk dir',
  root: '/',
  umask: 0o022,
  personality: 0,
  ppid: 1,
  pgid: pid,
  sid: 1,
  ttyNr: 34816,
  noNewPrivs: true,
  dumpable: 1,
  thpDisable: 3,
  pdeathSignal: 10,
  stopSignal: 20,
  seccompMode: 2,
  // Two filters (SECCOMP_RET_ALLOW; SECCOMP_RET_ERRNO | 1), the second logged, in one chain.
  seccompFilters: [
    { prev: 0, flags: 0, insns: Buffer.from('060000000000ff7f', 'hex') },
    { prev: 1, flags: 2, insns: Buffer.from('0600000001000500', 'hex') },
  ],
  seccompThreads: [{ tid: pid, filter: 2 }],
  creds: {
    uid: 1000, euid: 1000, suid: 1000, fsuid: 1000, gid: 100, egid: 100, sgid: 100, fsgid: 100,
    groups: [100, 27, 0xfffffffe],
    capInheritable: 0n, capPermitted: 0n, capEffective: 0n, capBounding: (1n << 41n) - 1n, capAmbient: 0n,
    securebits: 0,
  },
  rlimits: [
    { resource: 3, name: 'Max stack size', soft: 8n * BigInt(MiB), hard: (1n << 64n) - 1n },
    { resource: 7, name: 'Max open files', soft: 1024n, hard: 524288n },
  ],
  sigactions: [
    { signal: 2, handler: 0x401234n, flags: 0x14000000n, restorer: 0x7f0000003000n, mask: 0n },
    { signal: 64, handler: 1n, flags: 0n, restorer: 0n, mask: (1n << 64n) - 1n },
  ],
  sharedPendingMask: 1n << 14n,
  sharedPendingSiginfo: Buffer.alloc(128, 3),
  itimers: [{ which: 'real', intervalUs: 0n, valueUs: 1500000n }, { which: 'prof', intervalUs: 10n, valueUs: 10n }],
  posixTimers: [{ id: 0, signal: 14, sigevValue: 0xdeadbeefn, notify: 'signal/4242', clockid: 1, valueNs: 5n, intervalNs: 0n, overrun: 0 }],
  mm: {
    startCode: 0x400000n, endCode: 0x401000n, startData: 0x402000n, endData: 0x403000n,
    startBrk: 0x404000n, brk: 0x425000n, startStack: 0x7ffc00000000n,
    argStart: 0x7ffc00001000n, argEnd: 0x7ffc00001020n, envStart: 0x7ffc00001020n, envEnd: 0x7ffc00001040n,
    auxv: Buffer.alloc(368, 9),
    exe: '/usr/bin/synthetic',
  },
})

function common(objref: number, target: string, flags = 0o2, pos = 0n) {
  const access = flags & 3
  return {
    objref: asObjRef(objref), target, flags, mode: access === 0 ? 1 : access === 1 ? 2 : 3, pos,
    mntId: 25, ino: 1000n + BigInt(objref), notCheckpointable: undefined, locks: [] as FileLock[],
  }
}

function fileTable(contentsSize: number): FileTable {
  const pathCommon = { dev: 0x803n, rdev: 0n, inodeMode: 0o100644, uid: 1000, gid: 100, size: 10n, nlink: 1, btime: 1796608822105099142n, unlinked: false, otherLinks: lazy(async () => []) }
  const files: FileDescription[] = [
    { ...common(1, '/dev/pts/0'), type: 'chr', path: '/dev/pts/0', ...pathCommon, rdev: 0x8800n, inodeMode: 0o20620 },
    {
      ...common(2, '/tmp/log.txt', 0o102001, 123456789n), type: 'file', path: '/tmp/log.txt', ...pathCommon,
      locks: [{ kind: 'posix', write: true, start: 0n, end: undefined }, { kind: 'ofd', write: true, start: 10n, end: 19n }, { kind: 'flock', write: false, start: 0n, end: undefined }],
    },
    {
      ...common(3, '/tmp/gone (deleted)', 0o2, 5n), type: 'file', path: '/tmp/gone', ...pathCommon, unlinked: true, nlink: 0,
      size: BigInt(contentsSize), otherLinks: lazy(async () => ['/tmp/other-name']), contents: patternSource(contentsSize, 3),
    },
    { ...common(4, '/etc', 0o2200000), type: 'dir', path: '/etc', ...pathCommon, inodeMode: 0o40755 },
    { ...common(5, '/dev/sda', 0o0), type: 'blk', path: '/dev/sda', ...pathCommon, inodeMode: 0o60660, rdev: 0x800n },
    { ...common(6, '/tmp/fifo', 0o4000), type: 'fifo', path: '/tmp/fifo', ...pathCommon, inodeMode: 0o10644, buffered: lazy(async () => Buffer.from('in the fifo')) },
    { ...common(7, 'pipe:[777]', 0o0), type: 'pipe', pipeId: 777n, buffered: lazy(async () => Buffer.from('pipe data')) },
    { ...common(8, 'pipe:[777]', 0o1), type: 'pipe', pipeId: 777n, buffered: lazy(async () => Buffer.from('pipe data')) },
    { ...common(9, 'socket:[888]'), type: 'socket', family: 'other', notCheckpointable: 'netlink socket: sockets of this kind are not checkpointable' },
    {
      ...common(10, 'anon_inode:[eventpoll]'), type: 'epoll',
      items: [{ tfd: 7, events: 0x19, data: 0xffffffffffffffffn, targetObjref: asObjRef(7) }, { tfd: 99, events: 1, data: 0n, targetObjref: undefined }],
    },
    { ...common(11, 'anon_inode:[eventfd]'), type: 'eventfd', count: 42n, semaphore: true },
    { ...common(12, 'anon_inode:[signalfd]'), type: 'signalfd', sigmask: (1n << 1n) | (1n << 63n) },
    { ...common(13, 'anon_inode:[timerfd]'), type: 'timerfd', clockid: 1, ticks: 3n, settimeFlags: 1, valueNs: 999n, intervalNs: 1000000000n },
    {
      ...common(14, 'anon_inode:inotify'), type: 'inotify',
      watches: [{ wd: 1, ino: 12n, sdev: 0x803, mask: 0xfff, ignoredMask: 0, path: '/etc' }, { wd: 2, ino: 13n, sdev: 0x803, mask: 2, ignoredMask: 0, path: undefined }],
    },
    { ...common(15, 'anon_inode:[io_uring]'), type: 'unknown', notCheckpointable: 'io_uring is not supported' },
    {
      ...common(16, 'socket:[1016]', 0o4002), type: 'socket', family: 'unix', sockType: 'dgram', state: 'unconnected',
      localAddress: Buffer.from('/run/synthetic.sock'), localUnlinked: false, localMode: 0o755, peerAddress: Buffer.alloc(0), peer: undefined, acceptPosition: 0,
      backlog: 0, shutdown: 0, rcvbuf: 212992, sndbuf: 212992, passcred: true, rcvtimeoUs: 2500000n, sndtimeoUs: 0n, peekOff: -1,
      localDir: '', queue: [{ data: Buffer.from('first'), sender: asObjRef(17), fds: [asObjRef(14), asObjRef(2)] }, { data: Buffer.alloc(0), sender: undefined, fds: [] }],
    },
    {
      ...common(17, 'socket:[1017]'), type: 'socket', family: 'unix', sockType: 'dgram', state: 'connected',
      localAddress: Buffer.from('\0abstract\x01'), localUnlinked: false, localMode: 0, peerAddress: Buffer.from('/run/synthetic.sock'), peer: asObjRef(16), acceptPosition: 0,
      backlog: 0, shutdown: 2, rcvbuf: 4608, sndbuf: 4608, passcred: false, rcvtimeoUs: 0n, sndtimeoUs: 1000n, peekOff: 0, queue: [], localDir: '',
    },
  ]
  const fds = files.map((f, i) => ({ fd: i, closeOnExec: i % 3 === 0, objref: f.objref }))
  fds.push({ fd: 100, closeOnExec: true, objref: asObjRef(2) }, { fd: 1023, closeOnExec: false, objref: asObjRef(7) })
  return { fds, files }
}

interface SyntheticOptions {
  /** Bytes of the unlinked file's contents. */
  contentsSize?: number
  vmas?: Vma[]
}

function syntheticTask(options: SyntheticOptions = {}): TaskImage {
  const pid = 4242
  const tids = [pid, 4243, 4250]
  const vmas = options.vmas ?? [
    vma(0x400000n, 4n, [[0n, 1n], [2n, 2n]], { perms: 'r-xp', kind: 'file-private', path: '/usr/bin/synthetic', dev: '08:03', inode: 1234n, offset: 0n }),
    vma(0x1000000n, 1024n, [[0n, 300n], [400n, 1n], [700n, 324n]], { kind: 'heap', path: '[heap]' }),
    vma(0x7f0000000000n, 16n, [], { perms: '---p' }),
    vma(0x7ffc00000000n, 33n, [[1n, 32n]], { kind: 'stack', path: '[stack]' }),
    vma(0xffffffffff600000n, 1n, [], { perms: '--xp', kind: 'vsyscall', path: '[vsyscall]' }),
  ]
  const table = fileTable(options.contentsSize ?? 2 * MiB + 12345)
  return {
    pid: asPid(pid),
    tids: tids.map(asTid),
    process: lazy(async () => processState(pid)),
    threads: lazy(async () => tids.map((tid, i) => thread(tid, i === 0 ? 230 : -1))),
    vmas: lazy(async () => vmas),
    fileTable: lazy(async () => table),
  }
}

// ---------------------------------------------------------------------------------------
// Helpers

async function readWhole(source: ByteSource, piece = 128 << 10): Promise<Buffer> {
  const pieces: Buffer[] = []
  for (let at = 0; at < source.size; at += piece) pieces.push(await source.read(at, piece))
  return Buffer.concat(pieces)
}

async function digest(source: ByteSource): Promise<string> {
  const hash = crypto.createHash('sha256')
  for (let at = 0; at < source.size; at += MiB) hash.update(await source.read(at, MiB))
  return `${source.size} bytes ${hash.digest('hex').slice(0, 16)}`
}

const isByteSource = (v: object): v is ByteSource => 'size' in v && 'read' in v && typeof (v as ByteSource).read === 'function'

/** JSON with sorted keys and bigints spelled out: equal for equal data, whatever the key order. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_, v: unknown) => {
    if (typeof v === 'bigint') return `${v}n`
    if (v && typeof v === 'object' && !Array.isArray(v)) return Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1)))
    return v
  })
}

/** Plain data for comparison: lazies resolved, ByteSources digested, undefined keys dropped. */
async function plain(value: unknown, withContents = true): Promise<unknown> {
  if (typeof value === 'function') return plain(await (value as () => Promise<unknown>)(), withContents)
  if (Buffer.isBuffer(value) || typeof value !== 'object' || value === null) return value
  if (Array.isArray(value)) return Promise.all(value.map((v) => plain(v, withContents)))
  if (isByteSource(value)) return withContents ? digest(value) : `${value.size} bytes`
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(value)) if (v !== undefined) out[k] = await plain(v, withContents)
  return out
}

const taskParts = (task: TaskImage) => ({ pid: task.pid, tids: task.tids, process: task.process, threads: task.threads, vmas: task.vmas, fileTable: task.fileTable })

const dir = t.testdir()
let fileCounter = 0
async function writeImage(data: Buffer): Promise<string> {
  const file = path.join(dir, `image-${fileCounter++}`)
  await fs.promises.writeFile(file, data)
  return file
}

/** Resolves to the CkptError readImage refuses `data` with; fails on success, other errors or after 5 s. */
async function refusal(data: Buffer, file?: string): Promise<CkptError | string> {
  const target = file ?? (await writeImage(data))
  if (file) await fs.promises.writeFile(file, data)
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<string>((resolve) => { timer = setTimeout(() => resolve('hang: no answer within 5 s'), 5000) })
  try {
    return await Promise.race([
      readImage(target).then(() => 'accepted', (err: unknown) => (err instanceof CkptError ? err : `crashed: ${String(err)}`)),
      timeout,
    ])
  } finally {
    clearTimeout(timer)
  }
}

/** The top-level records of an image: field number and byte range (data included). */
function recordsOf(image: Buffer): Array<{ id: number; at: number; end: number }> {
  const out: Array<{ id: number; at: number; end: number }> = []
  const r = new BufferReader(image)
  while (!r.done) {
    const at = r.pos
    const tag = Number(r.varint())
    const length = Number(r.varint())
    r.pos += length
    out.push({ id: tag >> 3, at, end: r.pos })
  }
  return out
}

/**
 * Rebuilds an image from records (as recordsOf gives them, maybe edited), with a trailer
 * that matches them, so a test reaches the checks behind the checksum.
 */
function reframe(image: Buffer, records: Array<{ id: number; at: number; end: number }>, extra: Buffer[] = []): Buffer {
  const schema = imageSchema()
  const chunkIds = new Set([schema.recordIds.get('pageChunk'), schema.recordIds.get('fileChunk')])
  const parts = [...records.map((r) => image.subarray(r.at, r.end)), ...extra]
  let crc = 0
  let pageBytes = 0n
  let fileBytes = 0n
  for (const part of parts) {
    const r = new BufferReader(part)
    const id = Number(r.varint()) >> 3
    if (!chunkIds.has(id)) {
      crc = zlib.crc32(part, crc)
      continue
    }
    // The encoder writes a chunk's data last: everything before its bytes is metadata.
    r.varint()
    while (true) {
      const tag = Number(r.varint())
      if (tag % 8 === WireType.Len) break
      r.varint()
    }
    const length = Number(r.varint())
    crc = zlib.crc32(part.subarray(0, r.pos), crc)
    if (id === schema.recordIds.get('pageChunk')) pageBytes += BigInt(length)
    else fileBytes += BigInt(length)
  }
  const size = parts.reduce((sum, p) => sum + p.length, 0)
  const trailer = encodeMessage(schema.Trailer, { records: BigInt(parts.length), offset: BigInt(size), pageBytes, fileBytes, crc32: crc })
  return Buffer.concat([...parts, record(schema.recordIds.get('trailer')!, trailer)])
}

const record = (id: number, body: Buffer) => new ByteWriter().tag(id, WireType.Len).varint(body.length).raw(body).finish()

// ---------------------------------------------------------------------------------------

t.test('the size is exact and reads at any offset agree with a sequential read', async (t) => {
  const source = await imageSource(syntheticTask())
  const whole = await readWhole(source)
  t.equal(whole.length, source.size, 'stat size == bytes produced')
  t.equal((await source.read(source.size, 100)).length, 0, 'nothing past the end')
  t.equal(whole.subarray(4, 16).toString(), 'ckptfs-image', 'the magic is at byte 4')
  let seed = 1
  const random = (n: number) => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
  for (let i = 0; i < 300; i++) {
    const offset = random(source.size)
    const length = 1 + random(i % 10 === 0 ? 3 * MiB : 5000)
    const piece = await source.read(offset, length)
    if (!piece.equals(whole.subarray(offset, offset + length))) {
      t.fail(`read(${offset}, ${length}) differs from the sequential read`)
      return
    }
  }
  t.pass('300 random reads agree')
})

t.test('decode(encode(x)) equals x', async (t) => {
  const task = syntheticTask()
  const source = await imageSource(task, { mode: 'copy' })
  const file = await writeImage(await readWhole(source))
  const loaded = await readImage(file)
  t.strictSame(await plain(taskParts(loaded.task)), await plain(taskParts(task)))
  t.strictSame(loaded.header, { formatVersion: { major: 1, minor: 7 }, pid: 4242, tids: [4242, 4243, 4250], mode: 'copy' })
  t.equal((await loaded.vmas[1].pages.read(4096 * 299, 8192)).length, 8192, 'page reads cross run and chunk bounds')
  const again = await readWhole(await imageSource(loaded.task, { mode: 'copy' }))
  t.ok(again.equals(await fs.promises.readFile(file)), 're-encoding the decoded image gives the same bytes')
})

t.test('damaged images are refused with a CkptError, never a crash or a hang', async (t) => {
  const image = await readWhole(await imageSource(syntheticTask({ contentsSize: 5000, vmas: [vma(0x10000n, 8n, [[1n, 2n], [5n, 1n]])] })))
  const scratch = path.join(dir, 'fuzz')
  const problems: string[] = []
  const expectRefused = async (data: Buffer, what: string) => {
    const result = await refusal(data, scratch)
    if (!(result instanceof CkptError)) problems.push(`${what}: ${result}`)
    return result
  }

  // Cut anywhere: every offset of the metadata, and spread through the data.
  const cuts = new Set<number>()
  for (let i = 0; i < Math.min(image.length, 1500); i++) cuts.add(i)
  for (let i = 0; i < 300; i++) cuts.add(Math.floor((image.length * i) / 300))
  for (const cut of cuts) await expectRefused(image.subarray(0, cut), `cut at ${cut}`)
  const truncated = await expectRefused(image.subarray(0, image.length - 10), 'cut')
  t.match(String(truncated), /image: truncated at byte \d+/)

  // Flip one bit anywhere: refused, or (page and file data are checked where they are used,
  // against their chunk's crc32c) accepted with exactly the same metadata and a chunk whose
  // data no longer matches its recorded CRC32C.
  const original = await plain(taskParts(syntheticTask({ contentsSize: 5000, vmas: [vma(0x10000n, 8n, [[1n, 2n], [5n, 1n]])] })), false)
  let accepted = 0
  for (let i = 0; i < 400; i++) {
    const flipped = Buffer.from(image)
    const at = (i * 7919) % image.length
    flipped[at] ^= 1 << (i % 8)
    const result = await refusal(flipped, scratch)
    if (result instanceof CkptError) continue
    if (result !== 'accepted') { problems.push(`flip at ${at}: ${result}`); continue }
    accepted++
    const loaded = await readImage(scratch)
    if (canonical(await plain(taskParts(loaded.task), false)) !== canonical(original)) {
      problems.push(`flip at ${at}: accepted with different metadata`)
    }
    const sources = [...loaded.vmas.map((v) => v.pages), ...loaded.fileTable.files.flatMap((f) => ('contents' in f && f.contents ? [f.contents] : []))]
    const mismatches = await Promise.all(sources.map(async (s) => pieceCrcs(await s.read(0, s.size)).some((crc, k) => crc !== s.crc32c![k])))
    if (mismatches.filter(Boolean).length !== 1) problems.push(`flip at ${at}: accepted, and ${mismatches.filter(Boolean).length} sources fail their CRC32C (expected 1)`)
  }
  t.ok(accepted > 0 && accepted < 400, `${accepted} of 400 flips fell in page or file data (or their crc32c) and were accepted with intact metadata and one failing CRC32C`)

  // Random bytes, and random bytes behind a valid header.
  const headerEnd = recordsOf(image)[0].end
  for (let i = 0; i < 200; i++) {
    const noise = crypto.randomBytes(i % 50 === 0 ? 0 : 1 + ((i * 37) % 4000))
    await expectRefused(noise, `random ${noise.toString('hex').slice(0, 32)}`)
    await expectRefused(Buffer.concat([image.subarray(0, headerEnd), noise]), `header + random ${noise.toString('hex').slice(0, 32)}`)
  }
  t.strictSame(problems, [], 'every damaged image was refused with a CkptError')
})

t.test('inconsistent images are refused with a message naming the record and field', async (t) => {
  const schema = imageSchema()
  const image = await readWhole(await imageSource(syntheticTask({ contentsSize: 3 * MiB })))
  const records = recordsOf(image).slice(0, -1)
  const ids = (kind: Parameters<typeof schema.recordIds.get>[0]) => schema.recordIds.get(kind)!
  const expect = async (data: Buffer, pattern: RegExp, what: string) => t.match(String(await refusal(data)), pattern, what)

  // Padding (a record this reader skips) keeps the image as large as the contents it announces.
  const padding = [record(14, Buffer.alloc(2 * MiB))]
  await expect(reframe(image, records.filter((r, i) => !(r.id === ids('pageChunk') && i === records.findIndex((x) => x.id === ids('pageChunk')))), padding),
    /image: vma #1 at byte \d+: pages: the chunk at offset 0 of 12288 bytes is missing/, 'a missing page chunk')
  const fileChunks = records.filter((r) => r.id === ids('fileChunk'))
  await expect(reframe(image, records.filter((r) => r !== fileChunks[1]), padding), /image: file #3 at byte \d+: contents: the chunk at offset 1048576 of 3145728 bytes is missing/, 'a missing file chunk')
  await expect(reframe(image, [...records, fileChunks[0]]), /file chunk #4 at byte \d+: offset 0 was already stored/, 'a chunk stored twice')
  await expect(reframe(image, records.filter((r) => r.id !== ids('process'))), /image: no process record/, 'no process')
  await expect(reframe(image, records.filter((r) => r.id !== ids('vma'))), /page chunk #1 at byte \d+: no mapping 0x400000 described before it/, 'chunks without their mapping')
  await expect(reframe(image, records.filter((r, i) => !(r.id === ids('file') && i === records.findIndex((x) => x.id === ids('file') )))),
    /fd #1 at byte \d+: fd 0 refers to objref 1, which is not described/, 'an fd naming a missing description')
  await expect(reframe(image, records.filter((r) => r.id !== ids('thread') || r !== records.find((x) => x.id === ids('thread')))),
    /no thread record for thread 4242/, 'a missing thread')
  await expect(reframe(image, [records[1], records[0], ...records.slice(2)]), /not a ckptfs image \(it does not start with a header record\)/, 'header not first')
  await expect(reframe(image, [...records, records[0]]), /header #2 at byte \d+: header: a second header/, 'two headers')
  await expect(Buffer.concat([image, Buffer.from([0])]), /1 bytes after the trailer/, 'bytes after the trailer')

  const header = (fields: object) => record(ids('header'), encodeMessage(schema.Header, { magic: 'ckptfs-image', formatVersion: { major: 1, minor: 0 }, pid: 4242, tids: [4242, 4243, 4250], mode: 'lazy', ...fields }))
  const withHeader = (h: Buffer) => reframe(Buffer.concat([h, image]), [{ id: ids('header'), at: 0, end: h.length }, ...records.slice(1).map((r) => ({ ...r, at: r.at + h.length, end: r.end + h.length }))])
  await expect(withHeader(header({ formatVersion: { major: 2, minor: 0 } })), /header #1 at byte 0: formatVersion: 2\.0 is not readable by this ckptfs \(it reads 1\.x\)/, 'a newer major version')
  await expect(withHeader(header({ magic: 'ELF' })), /magic: "ELF", expected "ckptfs-image": not a ckptfs image/, 'a wrong magic')
  t.equal(typeof (await readImage(await writeImage(withHeader(header({ formatVersion: { major: 1, minor: 7 } }))))).pid, 'number', 'a newer minor version is read')

  // Records and fields this reader does not know (a newer minor version) are skipped.
  const unknownRecord = record(14, Buffer.from([0x08, 0x01, 0x12, 0x02, 0x68, 0x69]))
  t.equal((await readImage(await writeImage(reframe(image, records, [unknownRecord])))).pid, 4242, 'an unknown record is skipped')
  const manyTids = new ByteWriter().tag(4, WireType.Len).varint(3 << 20).raw(Buffer.alloc(3 << 20, 1)).finish()
  await expect(reframe(image, [records[0], ...records.slice(1)], [record(ids('header'), manyTids)]), /header #2 at byte \d+: Header.tids: more than 2097152 list items in one record/, 'a list too long')
  await expect(reframe(image, records, [record(ids('vma'), Buffer.from([0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]))]),
    /vma #6 at byte \d+: Vma.start: varint exceeds 64 bits \(byte \d+\)/, 'a varint over 64 bits')
})

t.test('values out of range are refused', async (t) => {
  const cases: Array<[string, (task: TaskImage) => TaskImage, RegExp]> = [
    ['vma start not page aligned', (task) => ({ ...task, vmas: lazy(async () => [vma(0x400010n, 1n, [])]) }), /vma #1 at byte \d+: start: 0x400010 is not page aligned/],
    ['stored run past the end', (task) => ({ ...task, vmas: lazy(async () => [vma(0x400000n, 2n, [[1n, 2n]])]) }), /vma #1 at byte \d+: stored\[0\]: ends at 12288, past the mapping's 8192 bytes/],
    ['overlapping mappings', (task) => ({ ...task, vmas: lazy(async () => [vma(0x400000n, 2n, []), vma(0x401000n, 2n, [])]) }), /overlaps the one at 0x400000/],
    ['bad perms', (task) => ({ ...task, vmas: lazy(async () => [vma(0x400000n, 2n, [], { perms: 'rwz' })]) }), /perms: "rwz" is not like "rw-p"/],
    ['short registers', (task) => ({ ...task, threads: lazy(async () => (task.threads().then((ts) => ts.map((th) => ({ ...th, regs: Buffer.alloc(8) }))))) }), /thread #1 at byte \d+: regs: 8 bytes, expected 216/],
    ['signal 65', (task) => ({ ...task, process: lazy(async () => ({ ...(await task.process()), sigactions: [{ signal: 65, handler: 0n, flags: 0n, restorer: 0n, mask: 0n }] })) }), /process #1 at byte \d+: sigactions\[0\]\.signal: 65 is out of range \(1 \.\. 64\)/],
    ['O_TRUNC', (task) => ({ ...task, fileTable: lazy(async () => { const ft = await task.fileTable(); return { ...ft, files: ft.files.map((f) => (f.objref === 2 ? { ...f, flags: f.flags | 0o1000 } : f)) } }) }), /file #2 at byte \d+: flags: O_TRUNC is refused/],
    ['mode above the flags', (task) => ({ ...task, fileTable: lazy(async () => { const ft = await task.fileTable(); return { ...ft, files: ft.files.map((f) => (f.objref === 5 ? { ...f, mode: 3 } : f)) } }) }), /file #5 at byte \d+: mode: 03 grants more than the flags 00 allow/],
    ['a duplicate fd', (task) => ({ ...task, fileTable: lazy(async () => { const ft = await task.fileTable(); return { ...ft, fds: [...ft.fds, ft.fds[0]] } }) }), /fd 0 is recorded twice/],
    ['an epoll item watching nothing', (task) => ({ ...task, fileTable: lazy(async () => { const ft = await task.fileTable(); return { ...ft, files: ft.files.map((f) => (f.type === 'epoll' ? { ...f, items: [{ tfd: 3, events: 1, data: 0n, targetObjref: asObjRef(77) }] } : f)) } }) }), /epoll item for fd 3 watches objref 77, which is not described/],
    ['fs_base not matching the registers', (task) => ({ ...task, threads: lazy(async () => (await task.threads()).map((th) => ({ ...th, fsBase: 1n }))) }), /thread #1 at byte \d+: fsBase: 1 does not match regs/],
    ['a thread not in the header', (task) => ({ ...task, tids: [asTid(task.pid)] }), /thread #2 at byte \d+: thread 4243 is not in the header's thread list/],
  ]
  for (const [what, change, pattern] of cases) {
    const image = await readWhole(await imageSource(change(syntheticTask({ contentsSize: 10 }))))
    t.match(String(await refusal(image)), pattern, what)
  }
  await t.rejects(imageSource({ ...syntheticTask(), threads: lazy(async () => [{ ...thread(1, 0), tid: asTid(-1) }]) }), /image: cannot encode Thread\.tid: expected a uint32, got -1/, 'the encoder refuses values its fields cannot hold')
})

t.test('encoding a 1 GiB process keeps memory bounded', async (t) => {
  const GiB = 1n << 30n
  // 1 GiB stored out of 4 GiB mapped, in 64 runs of 16 MiB.
  const runs: Array<[bigint, bigint]> = Array.from({ length: 64 }, (_, i) => [BigInt(i) * 16384n, 4096n])
  const task = syntheticTask({ vmas: [vma(0x10000000n, (4n * GiB) / PAGE, runs)] })
  global.gc?.()
  const before = process.memoryUsage().rss
  const source = await imageSource(task)
  const start = process.hrtime.bigint()
  let peak = before
  const hash = crypto.createHash('sha256')
  for (let at = 0; at < source.size; at += 128 << 10) {
    hash.update(await source.read(at, 128 << 10))
    if (at % (64 * MiB) === 0) peak = Math.max(peak, process.memoryUsage().rss)
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  t.ok(source.size > Number(GiB), `image of ${source.size} bytes`)
  t.ok(peak - before < 100 * MiB, `rss grew by ${((peak - before) / MiB).toFixed(1)} MiB`)
  t.comment(`sequential 128 KiB reads: ${(source.size / MiB / seconds).toFixed(0)} MiB/s`)
})

// ---------------------------------------------------------------------------------------
// Real checkpoints: a live capture, its image and its tree carry the same information.

/** Every file and directory below `root`: permission bits and, for files, a digest of the bytes. */
function treeListing(root: string, rel = ''): string[] {
  return fs.readdirSync(path.join(root, rel)).sort().flatMap((name) => {
    const file = path.join(rel, name)
    const st = fs.lstatSync(path.join(root, file))
    const mode = (st.mode & 0o7777).toString(8)
    if (st.isDirectory()) return [`${file}/ ${mode}`, ...treeListing(root, file)]
    return [`${file} ${mode} ${crypto.createHash('sha256').update(fs.readFileSync(path.join(root, file))).digest('hex').slice(0, 16)}`]
  })
}

async function writeSource(source: ByteSource, file: string): Promise<void> {
  const out = fs.openSync(file, 'wx')
  try {
    for (let at = 0; at < source.size; at += 128 << 10) fs.writeSync(out, await source.read(at, 128 << 10), 0, undefined, at)
  } finally {
    fs.closeSync(out)
  }
}

for (const fixture of ['fdzoo', 'taskzoo']) {
  t.test(`${fixture}: live capture, image and tree are equal`, async (t) => {
    const work = fs.mkdtempSync(path.join(dir, `${fixture}-`))
    const scratch = path.join(work, 'scratch')
    fs.mkdirSync(scratch)
    const binary = buildTarget(fixture)
    const target = await startTarget('/bin/sh', ['-c', 'exec 3<&0; "$@" <&3 & wait', 'sh', binary, scratch], /^ready/, { cwd: scratch, stdin: 'pipe' })
    // fdzoo says "ready pid=N", taskzoo a "pid=N" line of its own.
    const pid = Number(target.lines.map((l) => /(?:^|\s)pid=(\d+)/.exec(l)).find((m) => m)![1])
    const identity = identityOf(pid)
    let frozen = false
    t.teardown(async () => {
      if (frozen) await native.thaw(pid, true).catch(() => undefined)
      killIfSame(pid, identity)
      target.kill()
    })

    const tids = (await native.freeze(pid)).map((f) => asTid(f.tid)).sort((a, b) => a - b)
    frozen = true
    const live: TaskImage = {
      pid: asPid(pid),
      tids,
      process: lazy(() => captureProcess(pid, tids)),
      threads: lazy(() => captureThreads(pid, tids)),
      vmas: lazy(() => captureVmas(pid, 'lazy')),
      fileTable: lazy(() => captureFileTable(asPid(pid), { copy: false })),
    }
    const liveImage = path.join(work, 'live.image')
    const liveTree = path.join(work, 'live-tree')
    await writeSource(await imageSource(live, { mode: 'lazy' }), liveImage)
    await writeTree(checkpointTree(live, 'lazy'), liveTree)
    const expected = await plain(taskParts(live))
    await native.thaw(pid, true)
    frozen = false

    const fromImage = await readImage(liveImage)
    t.strictSame(await plain(taskParts(fromImage.task)), expected, 'the image holds the live capture')
    t.equal(fromImage.header.mode, 'lazy', 'the header keeps the mode')

    const treeImage = path.join(work, 'tree.image')
    await treeToImage(liveTree, treeImage)
    t.strictSame(await plain(taskParts((await readImage(treeImage)).task)), expected, 'the image made from the tree holds the live capture')
    t.ok(fs.readFileSync(treeImage).equals(fs.readFileSync(liveImage)), 'and is the same file, byte for byte')

    const imageTree = path.join(work, 'image-tree')
    await imageToTree(liveImage, imageTree)
    t.strictSame(treeListing(imageTree), treeListing(liveTree), 'the tree made from the image is the tree of the live capture')

    const onlyImage = path.join(work, 'only-image')
    fs.mkdirSync(onlyImage)
    fs.copyFileSync(liveImage, path.join(onlyImage, 'image'))
    const shown = await showCheckpoint(liveTree)
    const withoutSource = (text: string) => text.replace(/^ {2}source .*\n/m, '')
    t.equal(withoutSource(await showCheckpoint(liveImage)), withoutSource(shown), 'show says the same of the image and the tree')
    t.equal(withoutSource(await showCheckpoint(onlyImage)), withoutSource(shown), 'and of a directory holding only the image')
    t.match(shown, new RegExp(`^checkpoint of process ${pid} \\(`))
    t.match(shown, /\n {2}mode +lazy\n/)
    t.match(shown, new RegExp(`\nthreads: ${tids.length}\n {2}TID +COMM +IP +SP +SYSCALL\n {2}${pid} `))
    t.match(shown, /\nmappings: \d+, [\d.]+ \w+ mapped, [\d.]+ \w+ stored\n {2}START +END +PERMS +KIND +SIZE +STORED +PATH\n/)
    t.match(shown, /\nfds: \d+, open file descriptions: \d+\n {2}FD +COE +OBJREF +TYPE +FLAGS +POS +TARGET\n {2}0 /)
    if (fixture === 'fdzoo') {
      t.match(shown, /\nnot checkpointable:\n {2}files\/\d+ \(fd [\d, ]+\): socket: /, 'sockets are noted')
      for (const type of ['file', 'dir', 'chr', 'pipe', 'fifo', 'socket', 'epoll', 'eventfd', 'signalfd', 'timerfd', 'inotify']) {
        t.match(shown, new RegExp(`\n {2}\\d+ +[01] +\\d+ +${type} `), `an fd of type ${type} is listed`)
      }
    }
    t.comment(shown)
  })
}

t.test('seccomp filters a restore could not install as saved are refused by the validator, naming the entry', async (t) => {
  const base = processState(4242)
  const insns = (n: number) => Buffer.alloc(n * 8, 6) // n instructions (their meaning is the kernel's to check)
  const cases: Array<[string, Partial<ProcessState>, RegExp]> = [
    ['a listener flag', { seccompFilters: [base.seccompFilters[0], { ...base.seccompFilters[1], flags: 8 }] }, /^task-4242\/seccomp\/filters\/2\/flags: 0x8: only SECCOMP_FILTER_FLAG_LOG/],
    ['TSYNC', { seccompFilters: [{ ...base.seccompFilters[0], flags: 1 }, base.seccompFilters[1]] }, /^task-4242\/seccomp\/filters\/1\/flags: 0x1:/],
    ['a part of an instruction', { seccompFilters: [{ ...base.seccompFilters[0], insns: Buffer.alloc(12) }, base.seccompFilters[1]] }, /filters\/1\/insns: 12 bytes: a filter is 1 to 4096 instructions of 8 bytes/],
    ['a filter after a later one', { seccompFilters: [{ ...base.seccompFilters[0], prev: 2 }, base.seccompFilters[1]] }, /filters\/1\/prev: 2: a filter follows one installed before it/],
    ['a filter in no chain', { seccompFilters: [...base.seccompFilters, { prev: 0, flags: 0, insns: insns(1) }] }, /seccomp\/filters\/3: in no thread's chain/],
    ['a thread not of the task', { seccompThreads: [...base.seccompThreads, { tid: 99, filter: 2 }] }, /seccomp\/threads\/99: not a thread of the task/],
    ['a chain over MAX_INSNS_PER_PATH', {
      seccompFilters: Array.from({ length: 9 }, (_, i) => ({ prev: i, flags: 0, insns: insns(4096) })),
      seccompThreads: [{ tid: 4242, filter: 9 }],
    }, /seccomp\/threads\/4242\/filter: its chain costs 36900 instructions, the kernel allows 32768/],
    ['mode 2 with no chain for the main thread', { seccompThreads: [] , seccompFilters: [] }, /seccomp\/threads\/4242: missing, but seccomp_mode is 2/],
  ]
  t.doesNotThrow(() => validateSeccomp(base, [4242, 4243]), 'the synthetic filters pass')
  for (const [what, change, pattern] of cases) t.throws(() => validateSeccomp({ ...base, ...change }, [4242, 4243]), pattern, what)
})
