// Turns decoded records into the model, checking every value a restore would trust: ranges,
// required parts, and consistency inside the record. Checks across records (fds naming
// existing objrefs, chunks covering their mapping) are in decode.ts.

import { CkptError } from '../errors'
import { described, modeFromFlags, refusedFlagNames } from '../files/common'
import {
  asObjRef, asPid, asTid,
  type CheckpointMode, type Credentials, type FdEntry, type FileDescription,
  type ITimer, type MmFields, type Pid, type PosixTimer, type ProcessState,
  type Rlimit, type SigAction, type StoredRun, type ThreadState, type Tid, type VmaKind,
  type Vma, type ZombieTask,
  type FileLock,
} from '../model'
import type { RecordedDescription } from '../files/handler'
import { fdTypes, handlerForType, imageFields } from '../files/index'
import { isMessage, type FieldValue, type Message } from './codec'
import { FORMAT_MAJOR, MAGIC, PAGE_SIZE } from './schema'
import { BOOT_ID } from '../boot'
import { NGROUPS_MAX, NSIG, XSAVE_FEATURES_AT, XSTATE_MAX, XSTATE_MIN } from '../abi'
import { STOP_SIGNALS } from '../task/process'

/** x86-64 struct user_regs_struct, and the words of it that ThreadState repeats. */
const USER_REGS_SIZE = 216
const REG = { rax: 10, origRax: 15, cs: 17, fsBase: 21, gsBase: 22 } as const
const XSAVE_HEADER_AT = 512
const RLIM_NLIMITS = 16

export interface ImageHeader {
  formatVersion: { major: number; minor: number }
  pid: Pid
  tids: Tid[]
  mode: CheckpointMode | 'unknown'
  /** The boot that made the checkpoint (lib/boot.ts); absent when not recorded. */
  bootId?: string
}

export type { RecordedDescription }

/** A mapping's metadata as recorded, before its pages are attached. */
export type RecordedVma = Omit<Vma, 'pages'>

/**
 * Where a record is, as refusals name it ("fd #3 at byte 1234"). Kept as parts and spelled
 * out only when a message needs it: a 10,000-fd image has 20,000 records, and their names
 * would be 20,000 strings kept for nothing.
 */
export class RecordPlace {
  constructor(readonly name: string, readonly n: number, readonly at: number) {}

  toString(): string {
    return this.n > 0 ? `${this.name} #${this.n} at byte ${this.at}` : `${this.name} at byte ${this.at}`
  }
}

/** Typed, checked access to one decoded message; failures name the record and the field. */
export class Fields {
  constructor(private readonly message: Message, readonly where: RecordPlace, private readonly path = '') {}

  fail(name: string, problem: string): never {
    throw new CkptError(`image: ${this.where}: ${this.path}${name}: ${problem}`, 'EINVAL')
  }

  num(name: string, range: { min?: number; max?: number } = {}): number {
    const v = this.value(name)
    if (typeof v !== 'number') return this.mismatch(name)
    this.inRange(name, v, range.min, range.max)
    return v
  }

  big(name: string, range: { min?: bigint; max?: bigint } = {}): bigint {
    const v = this.value(name)
    if (typeof v !== 'bigint') return this.mismatch(name)
    this.inRange(name, v, range.min, range.max)
    return v
  }

  bool(name: string): boolean {
    const v = this.value(name)
    return typeof v === 'boolean' ? v : this.mismatch(name)
  }

  str(name: string, nonEmpty = false): string {
    const v = this.value(name)
    if (typeof v !== 'string') return this.mismatch(name)
    if (nonEmpty && v === '') this.fail(name, 'is empty')
    return v
  }

  bytes(name: string): Buffer {
    const v = this.value(name)
    return Buffer.isBuffer(v) ? v : this.mismatch(name)
  }

  /** An enum, decoded to the model's spelling; `allowed` is the model's union. */
  oneOf<T extends string>(name: string, allowed: readonly T[]): T {
    const v = this.str(name)
    const found = allowed.find((a) => a === v)
    return found ?? this.fail(name, `${v} is not one of ${allowed.join(', ')}`)
  }

  has(name: string): boolean {
    return this.value(name) !== undefined
  }

  /** A required nested message. */
  msg(name: string): Fields {
    const v = this.value(name)
    if (v === undefined) this.fail(name, 'missing')
    return isMessage(v) ? new Fields(v, this.where, `${this.path}${name}.`) : this.mismatch(name)
  }

  list(name: string): Fields[] {
    const v = this.value(name)
    if (!Array.isArray(v)) return this.mismatch(name)
    return v.map((item, i) => (isMessage(item) ? new Fields(item, this.where, `${this.path}${name}[${i}].`) : this.mismatch(name)))
  }

  nums(name: string): number[] {
    const v = this.value(name)
    return Array.isArray(v) && v.every((x): x is number => typeof x === 'number') ? v : this.mismatch(name)
  }

  strs(name: string): string[] {
    const v = this.value(name)
    return Array.isArray(v) && v.every((x): x is string => typeof x === 'string') ? v : this.mismatch(name)
  }

  private value(name: string): FieldValue {
    if (!(name in this.message)) throw new CkptError(`image: schema has no field ${this.path}${name} (reader out of date with lib/image/ckptfs.proto)`)
    return this.message[name]
  }

  private inRange<N extends number | bigint>(name: string, v: N, min: N | undefined, max: N | undefined): void {
    if ((min !== undefined && v < min) || (max !== undefined && v > max)) {
      this.fail(name, `${v} is out of range (${min ?? ''} .. ${max ?? ''})`)
    }
  }

  private mismatch(name: string): never {
    // A field without a default that the record leaves out (an enum: 0 is never written) decodes as absent.
    if (this.message[name] === undefined) this.fail(name, 'missing')
    throw new CkptError(`image: schema type of ${this.path}${name} does not match its reader`)
  }
}

/** Refuses a list whose items repeat a key (two fds 3, two handlers for SIGINT). */
function unique<T, K>(items: T[], key: (item: T) => K, fail: (dup: K) => never): T[] {
  const seen = new Set<K>()
  for (const item of items) {
    const k = key(item)
    if (seen.has(k)) fail(k)
    seen.add(k)
  }
  return items
}

const isPageAligned = (n: bigint) => n % PAGE_SIZE === 0n

// ---------------------------------------------------------------------------------------

export function headerFrom(f: Fields): ImageHeader {
  const magic = f.str('magic')
  if (magic !== MAGIC) f.fail('magic', `${JSON.stringify(magic.slice(0, 40))}, expected ${JSON.stringify(MAGIC)}: not a ckptfs image`)
  const version = f.msg('formatVersion')
  const formatVersion = { major: version.num('major'), minor: version.num('minor') }
  if (formatVersion.major !== FORMAT_MAJOR) {
    f.fail('formatVersion', `${formatVersion.major}.${formatVersion.minor} is not readable by this ckptfs (it reads ${FORMAT_MAJOR}.x)`)
  }
  const pid = asPid(f.num('pid', { min: 1, max: 0x7fffffff }))
  const tids = f.nums('tids').map(asTid)
  unique(tids, (t) => t, (t) => f.fail('tids', `thread ${t} is listed twice`))
  for (const tid of tids) if (tid < 1 || tid > 0x7fffffff) f.fail('tids', `${tid} is not a thread ID`)
  if (!tids.includes(asTid(pid))) f.fail('tids', `the main thread ${pid} is missing`)
  const header: ImageHeader = { formatVersion, pid, tids, mode: f.oneOf('mode', ['lazy', 'copy', 'unknown']) }
  if (f.has('bootId')) {
    const bootId = f.str('bootId')
    if (!BOOT_ID.test(bootId)) f.fail('bootId', `${JSON.stringify(bootId.slice(0, 40))} is not a boot id`)
    header.bootId = bootId
  }
  return header
}

export function processFrom(f: Fields): ProcessState {
  const creds = f.msg('creds')
  const mm = f.msg('mm')
  return {
    pid: asPid(f.num('pid', { min: 1, max: 0x7fffffff })),
    comm: f.str('comm'),
    exe: f.str('exe'),
    cmdline: f.bytes('cmdline'),
    environ: f.bytes('environ'),
    cwd: f.str('cwd', true),
    root: f.str('root', true),
    umask: f.num('umask', { max: 0o777 }),
    personality: f.num('personality'),
    ppid: f.num('ppid', { min: 0 }),
    pgid: f.num('pgid', { min: 0 }),
    sid: f.num('sid', { min: 0 }),
    ttyNr: f.num('ttyNr'),
    noNewPrivs: f.bool('noNewPrivs'),
    dumpable: f.num('dumpable', { max: 2 }),
    thpDisable: thpDisableFrom(f),
    pdeathSignal: f.num('pdeathSignal', { max: 64 }),
    childSubreaper: f.bool('childSubreaper'),
    stopSignal: stopSignalFrom(f),
    seccompMode: f.num('seccompMode', { max: 2 }),
    seccompFilters: f.list('seccompFilters').map((g) => ({ prev: g.num('prev'), flags: g.num('flags'), insns: g.bytes('insns') })),
    seccompThreads: f.list('seccompThreads').map((g) => ({ tid: g.num('tid', { min: 1, max: 0x7fffffff }), filter: g.num('filter', { min: 1 }) })),
    creds: credentialsFrom(creds),
    rlimits: unique(f.list('rlimits').map(rlimitFrom), (r) => r.resource, (r) => f.fail('rlimits', `resource ${r} is listed twice`)),
    sigactions: unique(f.list('sigactions').map(sigactionFrom), (s) => s.signal, (s) => f.fail('sigactions', `signal ${s} is listed twice`)),
    sharedPendingMask: f.big('sharedPendingMask'),
    sharedPendingSiginfo: f.bytes('sharedPendingSiginfo'),
    itimers: unique(f.list('itimers').map(itimerFrom), (t) => t.which, (w) => f.fail('itimers', `${w} is listed twice`)),
    posixTimers: unique(f.list('posixTimers').map(posixTimerFrom), (t) => t.id, (id) => f.fail('posixTimers', `timer ${id} is listed twice`)),
    mm: mmFrom(mm),
  }
}

function stopSignalFrom(f: Fields): number {
  const value = f.num('stopSignal', { max: 64 })
  if (value !== 0 && !STOP_SIGNALS.includes(value)) f.fail('stopSignal', `${value} is not a stop signal (19, 20, 21, 22) or 0`)
  return value
}

function thpDisableFrom(f: Fields): number {
  const value = f.num('thpDisable', { max: 3 })
  if (value === 2) f.fail('thpDisable', '2 is not a PR_GET_THP_DISABLE value (0, 1 or 3)')
  return value
}

function credentialsFrom(f: Fields): Credentials {
  const groups = f.nums('groups')
  if (groups.length > NGROUPS_MAX) f.fail('groups', `${groups.length} groups, at most ${NGROUPS_MAX}`)
  return {
    uid: f.num('uid'), euid: f.num('euid'), suid: f.num('suid'), fsuid: f.num('fsuid'),
    gid: f.num('gid'), egid: f.num('egid'), sgid: f.num('sgid'), fsgid: f.num('fsgid'),
    groups,
    capInheritable: f.big('capInheritable'),
    capPermitted: f.big('capPermitted'),
    capEffective: f.big('capEffective'),
    capBounding: f.big('capBounding'),
    capAmbient: f.big('capAmbient'),
    securebits: f.num('securebits'),
  }
}

function rlimitFrom(f: Fields): Rlimit {
  const soft = f.big('soft')
  const hard = f.big('hard')
  return { resource: f.num('resource', { max: RLIM_NLIMITS - 1 }), name: f.str('name'), soft, hard }
}

function sigactionFrom(f: Fields): SigAction {
  return {
    signal: f.num('signal', { min: 1, max: NSIG }),
    handler: f.big('handler'),
    flags: f.big('flags'),
    restorer: f.big('restorer'),
    mask: f.big('mask'),
  }
}

function itimerFrom(f: Fields): ITimer {
  return { which: f.oneOf('which', ['real', 'virtual', 'prof']), intervalUs: f.big('intervalUs'), valueUs: f.big('valueUs') }
}

function posixTimerFrom(f: Fields): PosixTimer {
  return {
    id: f.num('id', { min: 0 }),
    signal: f.num('signal', { min: 0, max: NSIG }),
    sigevValue: f.big('sigevValue'),
    notify: f.str('notify'),
    clockid: f.num('clockid'),
    valueNs: f.big('valueNs'),
    intervalNs: f.big('intervalNs'),
    overrun: f.num('overrun'),
  }
}

function mmFrom(f: Fields): MmFields {
  return {
    startCode: f.big('startCode'), endCode: f.big('endCode'),
    startData: f.big('startData'), endData: f.big('endData'),
    startBrk: f.big('startBrk'), brk: f.big('brk'),
    startStack: f.big('startStack'),
    argStart: f.big('argStart'), argEnd: f.big('argEnd'),
    envStart: f.big('envStart'), envEnd: f.big('envEnd'),
    auxv: f.bytes('auxv'),
    exe: f.str('exe'),
  }
}

export function threadFrom(f: Fields): ThreadState {
  const regs = f.bytes('regs')
  if (regs.length !== USER_REGS_SIZE) f.fail('regs', `${regs.length} bytes, expected ${USER_REGS_SIZE} (x86-64 user_regs_struct)`)
  const reg = (index: number) => regs.readBigUInt64LE(index * 8)
  if ((reg(REG.cs) & 3n) !== 3n) f.fail('regs', `cs 0x${reg(REG.cs).toString(16)} is not a user-mode segment`)
  const xstate = f.bytes('xstate')
  if (xstate.length < XSTATE_MIN || xstate.length > XSTATE_MAX) f.fail('xstate', `${xstate.length} bytes, an xsave area has ${XSTATE_MIN} .. ${XSTATE_MAX}`)
  const features = xstate.readBigUInt64LE(XSAVE_FEATURES_AT)
  const present = xstate.readBigUInt64LE(XSAVE_HEADER_AT)
  if ((present & ~features) !== 0n) f.fail('xstate', `xstate_bv 0x${present.toString(16)} has components outside the saved XCR0 0x${features.toString(16)}`)
  const rseq = f.msg('rseq')
  const syscall = f.msg('syscall')
  const altstack = f.msg('altstack')
  const thread: ThreadState = {
    tid: asTid(f.num('tid', { min: 1, max: 0x7fffffff })),
    comm: f.str('comm'),
    regs,
    xstate,
    fsBase: f.big('fsBase'),
    gsBase: f.big('gsBase'),
    sigmask: f.big('sigmask'),
    pendingMask: f.big('pendingMask'),
    pendingSiginfo: f.bytes('pendingSiginfo'),
    rseq: { pointer: rseq.big('pointer'), size: rseq.num('size'), signature: rseq.num('signature'), flags: rseq.num('flags') },
    syscall: { nr: syscall.num('nr'), result: syscall.big('result') },
    altstack: { sp: altstack.big('sp'), flags: altstack.num('flags'), size: altstack.big('size') },
    clearChildTid: f.big('clearChildTid'),
    robustList: { head: f.big('robustListHead'), length: f.big('robustListLen') },
    seccompStrict: f.bool('seccompStrict'),
  }
  // ThreadState repeats some registers next to the raw ones: they must agree.
  const agree = (name: string, value: bigint, fromRegs: bigint) => {
    if (value !== fromRegs) f.fail(name, `${value} does not match regs (${fromRegs})`)
  }
  agree('fsBase', thread.fsBase, reg(REG.fsBase))
  agree('gsBase', thread.gsBase, reg(REG.gsBase))
  agree('syscall.nr', BigInt(thread.syscall.nr), BigInt.asIntN(64, reg(REG.origRax)))
  agree('syscall.result', thread.syscall.result, BigInt.asIntN(64, reg(REG.rax)))
  return thread
}

function fileLockFrom(f: Fields): FileLock {
  return {
    kind: f.oneOf('kind', ['posix', 'flock', 'ofd'] as const),
    write: f.bool('write'),
    start: f.big('start'),
    end: f.has('end') ? f.big('end') : undefined,
    ...(f.has('owner') ? { owner: asPid(f.num('owner', { min: 1, max: 0x7fffffff })) } : {}),
  }
}

/**
 * A file description record: the common fields here, the type's own (its `details` oneof
 * member) read by the type's handler (lib/files/*.ts, `image`).
 */
export function descriptionFrom(f: Fields, fileSize: number): RecordedDescription {
  const type = f.oneOf('type', fdTypes())
  const flags = f.num('flags')
  const [refused] = refusedFlagNames(flags)
  if (refused) f.fail('flags', `${refused} is refused`)
  const mode = f.num('mode', { max: 3 })
  if (mode & ~modeFromFlags(flags)) f.fail('mode', `0${mode.toString(8)} grants more than the flags 0${flags.toString(8)} allow`)
  const notCheckpointable = f.has('notCheckpointable') ? f.str('notCheckpointable', true) : undefined
  const base = {
    objref: asObjRef(f.num('objref', { min: 1, max: 0x7fffffff })),
    target: f.str('target'),
    flags,
    mode,
    pos: f.big('pos'),
    mntId: f.num('mntId'),
    ino: f.big('ino'),
    notCheckpointable,
    locks: f.list('locks').map(fileLockFrom),
  }
  const image = handlerForType(type)?.image
  for (const name of imageFields()) {
    if (name !== image?.field && f.has(name)) f.fail(name, `present in a ${type} description`)
  }
  if (!image) return { description: described<FileDescription>(base, { type } as Omit<FileDescription, keyof typeof base>), contentsSize: undefined }
  return image.read(f.msg(image.field), base, type, fileSize)
}

/** A task record (1.3): a process of the tree other than the root, and its threads. */
export function taskFrom(f: Fields): { pid: Pid; tids: Tid[] } {
  const pid = asPid(f.num('pid', { min: 1, max: 0x7fffffff }))
  const tids = f.nums('tids').map(asTid)
  unique(tids, (t) => t, (t) => f.fail('tids', `thread ${t} is listed twice`))
  for (const tid of tids) if (tid < 1 || tid > 0x7fffffff) f.fail('tids', `${tid} is not a thread ID`)
  if (!tids.includes(asTid(pid))) f.fail('tids', `the main thread ${pid} is missing`)
  return { pid, tids }
}

/** A zombie record (1.3). */
export function zombieFrom(f: Fields): ZombieTask {
  return {
    pid: asPid(f.num('pid', { min: 1, max: 0x7fffffff })),
    ppid: f.num('ppid', { max: 0x7fffffff }),
    pgid: f.num('pgid', { max: 0x7fffffff }),
    sid: f.num('sid', { max: 0x7fffffff }),
    comm: f.str('comm'),
    exitStatus: f.num('exitStatus', { max: 0xffff }),
  }
}

export function fdEntryFrom(f: Fields): FdEntry {
  return { fd: f.num('fd', { min: 0 }), closeOnExec: f.bool('closeOnExec'), objref: asObjRef(f.num('objref')) }
}

const vmaKinds: readonly VmaKind[] = ['heap', 'stack', 'vdso', 'vvar', 'vsyscall', 'anonymous', 'shared-anonymous', 'file-private', 'file-shared', 'special', 'aio']

export function vmaFrom(f: Fields): RecordedVma {
  const start = f.big('start')
  const end = f.big('end')
  if (!isPageAligned(start)) f.fail('start', `0x${start.toString(16)} is not page aligned`)
  if (!isPageAligned(end) || end <= start) f.fail('end', `0x${end.toString(16)} is not a page-aligned address above start 0x${start.toString(16)}`)
  const perms = f.str('perms')
  if (!/^[r-][w-][x-][ps]$/.test(perms)) f.fail('perms', `${JSON.stringify(perms)} is not like "rw-p"`)
  const listed = f.list('stored').map((run): StoredRun => ({ offset: run.big('offset'), length: run.big('length') }))
  let previousEnd = 0n
  listed.forEach((run, i) => {
    if (!isPageAligned(run.offset) || !isPageAligned(run.length) || run.length === 0n) {
      f.fail(`stored[${i}]`, `offset ${run.offset} length ${run.length}: not whole pages`)
    }
    if (run.offset < previousEnd) f.fail(`stored[${i}]`, `offset ${run.offset} overlaps or precedes the run before`)
    previousEnd = run.offset + run.length
    if (previousEnd > end - start) f.fail(`stored[${i}]`, `ends at ${previousEnd}, past the mapping's ${end - start} bytes`)
  })
  // (1.6) The inherited runs are some of the listed ones; the others are this mapping's own.
  const inherited = f.list('inherited').map((run): StoredRun => ({ offset: run.big('offset'), length: run.big('length') }))
  const stored: StoredRun[] = []
  let next = 0
  for (const run of listed) {
    const i = inherited[next]
    if (i !== undefined && i.offset === run.offset && i.length === run.length) next++
    else stored.push(run)
  }
  if (next < inherited.length) f.fail(`inherited[${next}]`, `offset ${inherited[next].offset} length ${inherited[next].length}: not one of the stored runs, in their order`)
  const inheritedRuns = inherited.length > 0 ? { inherited } : {}
  return {
    ...inheritedRuns,
    start,
    end,
    perms,
    offset: f.big('offset'),
    dev: f.str('dev'),
    inode: f.big('inode'),
    path: f.str('path'),
    kind: f.oneOf('kind', vmaKinds),
    vmFlags: f.str('vmFlags'),
    stored,
  }
}
