// fanotify: the group's flags (fanotify_init's flags and event_f_flags) and its marks, from
// fdinfo. An inode mark names its inode (ino, sdev and the file handle): its path is searched
// for as an inotify watch's is; a mount mark names its mount (mnt_id), found in the task's
// mountinfo; a filesystem mark names its device (sdev), marked again through one of its mount
// points. Restore calls fanotify_init and adds every mark back by path, with the task's
// credentials (a mount or filesystem mark needs CAP_SYS_ADMIN, as it did for the task).
// Events queued at the checkpoint cannot be read without consuming them: they are not kept.

import { CkptError } from '../errors'
import type { Fields } from '../image/records'
import type { DescriptionCommon } from '../model'
import { userDevFromKernel, type MountInfo } from '../procfs'
import { RecordBuilder } from '../restore/fdplan'
import { attr, each, hex, octal, type TableEntry } from '../tree/node'
import { described, invalid, O_NONBLOCK, withCommon } from './common'
import type { CaptureContext, FileHandler } from './handler'
import { fdHoldingInode, findWatchedPaths } from './inotify'
import { INT_MAX, pathProblem, U32_MAX, U64_MAX, type SavedDir } from './saved'
import { mountPointsOf } from './search'

export type FanotifyMarkKind = 'inode' | 'mount' | 'filesystem'

export interface FanotifyMark {
  kind: FanotifyMarkKind
  /** The mark's flags as fdinfo shows them: FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE, FAN_MARK_IGNORE. */
  mflags: number
  mask: number
  ignoredMask: number
  /** Inode marks: the inode (0 for the others). */
  ino: bigint
  /** Inode and filesystem marks: the device, in the kernel's encoding (fdinfo's sdev; 0 for mount marks). */
  sdev: number
  /** Mount marks: the mount's ID (0 for the others). */
  mntId: number
  /** Inode marks: the file handle's type and bytes, when the filesystem gives one (else -1 and none). */
  handleType: number
  handle: Buffer
  /** The marked inode, the mount point of the marked mount, or a mount point of the marked filesystem, when found. */
  path: string | undefined
}

export interface FanotifyDescription extends DescriptionCommon {
  type: 'fanotify'
  /** fanotify_init's flags (FAN_CLASS_*, FAN_REPORT_*, FAN_NONBLOCK ...), as fdinfo shows them. */
  initFlags: number
  /** fanotify_init's event_f_flags: the open flags of the files events carry. */
  eventFlags: number
  marks: FanotifyMark[]
}

declare module '../model' {
  interface FileDescriptionTypes {
    fanotify: FanotifyDescription
  }
}

/** The stub's kind (restorer.c, open_fanotify_object). */
const KINDS = { fanotify: 11 } as const

const FAN_MARK_DONT_FOLLOW = 0x4
const FAN_MARK_MOUNT = 0x10
const FAN_MARK_IGNORED_MASK = 0x20
const FAN_MARK_IGNORED_SURV_MODIFY = 0x40
const FAN_MARK_FILESYSTEM = 0x100
const FAN_MARK_EVICTABLE = 0x200
const FAN_MARK_IGNORE = 0x400
/** The flags fdinfo shows for a mark (fanotify_mark_user_flags in the kernel). */
const MARK_USER_FLAGS = FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE | FAN_MARK_IGNORE
/** fanotify_init flags up to FAN_REPORT_MNT (Linux 6.14). */
const INIT_FLAGS = 0x7fff
/** The event_f_flags fanotify_init takes (FANOTIFY_INIT_ALL_EVENT_F_BITS). */
const EVENT_F_FLAGS = 0o3 | 0o2000 | 0o4000 | 0o4010000 | 0o10000 | 0o2000000 | 0o100000 | 0o1000000

const MARK_KINDS: readonly FanotifyMarkKind[] = ['inode', 'mount', 'filesystem']

const markEntries: TableEntry<FanotifyMark>[] = [
  attr('kind', (m) => m.kind),
  attr('mflags', (m) => hex(m.mflags)),
  attr('mask', (m) => hex(m.mask)),
  attr('ignored_mask', (m) => hex(m.ignoredMask)),
  attr('ino', (m) => m.ino),
  attr('sdev', (m) => m.sdev),
  attr('mnt_id', (m) => m.mntId),
  attr('fhandle_type', (m) => m.handleType),
  attr('fhandle', (m) => m.handle.toString('hex')),
  attr('path', (m) => m.path ?? ''),
]

/** Marks are numbered 0.. in the order fdinfo lists them. */
const table = withCommon<FanotifyDescription>([
  attr('init_flags', (d) => hex(d.initFlags)),
  attr('event_f_flags', (d) => octal(d.eventFlags)),
  each('marks', async (d) => new Map(d.marks.map((m, n) => [String(n), m])), markEntries),
])

/** "fanotify ino:3f7e8 sdev:fe00000 mflags:0 mask:3b ignored_mask:0 fhandle-bytes:8 ..." -> its fields (hex, but f_handle). */
function markFields(line: string): Map<string, string> {
  return new Map(line.slice('fanotify '.length).trim().split(/\s+/).map((kv) => {
    const at = kv.indexOf(':')
    return [kv.slice(0, at), kv.slice(at + 1)] as [string, string]
  }))
}

type RawMark = Omit<FanotifyMark, 'path'>

function parseMark(line: string, where: string): RawMark | string {
  const fields = markFields(line)
  const field = (name: string): number => {
    const value = fields.get(name)
    if (value === undefined || !/^[0-9a-f]+$/.test(value)) throw new CkptError(`${where}: fanotify mark without ${name}: ${JSON.stringify(line)}`)
    return parseInt(value, 16)
  }
  const common = { mflags: field('mflags'), mask: field('mask'), ignoredMask: field('ignored_mask'), ino: 0n, sdev: 0, mntId: 0, handleType: -1, handle: Buffer.alloc(0) }
  if (fields.has('ino')) {
    const handle = fields.get('f_handle')
    return {
      ...common,
      kind: 'inode',
      ino: BigInt('0x' + (fields.get('ino') ?? '')),
      sdev: field('sdev'),
      handleType: handle === undefined ? -1 : field('fhandle-type'),
      handle: handle === undefined ? Buffer.alloc(0) : Buffer.from(handle, 'hex'),
    }
  }
  if (fields.has('mnt_id')) return { ...common, kind: 'mount', mntId: field('mnt_id') }
  if (fields.has('sdev')) return { ...common, kind: 'filesystem', sdev: field('sdev') }
  // A mount namespace mark (Linux 6.14's FAN_MARK_MNTNS) or a kind newer still.
  return `fanotify: a mark ckptfs cannot restore: ${line.trim()}`
}

/** Where each mount and filesystem mark can be marked again: a mount point as the task sees it. */
function markPath(m: RawMark, mounts: MountInfo[]): string | undefined {
  if (m.kind === 'mount') return mounts.find((mount) => mount.mntId === m.mntId)?.mountPoint
  return mountPointsOf(mounts, userDevFromKernel(m.sdev))[0]
}

async function findMarkPaths(raw: RawMark[], ctx: CaptureContext): Promise<FanotifyMark[]> {
  const inodes = await findWatchedPaths(raw.filter((m) => m.kind === 'inode'), ctx)
  const mounts = raw.some((m) => m.kind !== 'inode') ? await ctx.mounts() : []
  let nextInode = 0
  return raw.map((m) => (m.kind === 'inode' ? inodes[nextInode++] : { ...m, path: markPath(m, mounts) }))
}

function loadMark(dir: SavedDir): FanotifyMark {
  const kind = dir.text('kind')
  const found = MARK_KINDS.find((k) => k === kind)
  if (!found) throw dir.fail('kind', `${JSON.stringify(kind)} is not one of ${MARK_KINDS.join(', ')}`)
  const handle = dir.text('fhandle')
  if (!/^([0-9a-f]{2})*$/.test(handle)) throw dir.fail('fhandle', 'not lowercase hexadecimal bytes')
  const mark: FanotifyMark = {
    kind: found,
    mflags: Number(dir.hex('mflags', U32_MAX)),
    mask: Number(dir.hex('mask', U32_MAX)),
    ignoredMask: Number(dir.hex('ignored_mask', U32_MAX)),
    ino: dir.decimal('ino', 0n, U64_MAX),
    sdev: dir.int('sdev', 0, Number(U32_MAX)),
    mntId: dir.int('mnt_id', 0, INT_MAX),
    handleType: dir.int('fhandle_type', -1, INT_MAX),
    handle: Buffer.from(handle, 'hex'),
    path: dir.optionalPath('path'),
  }
  dir.finish()
  return mark
}

function markFrom(f: Fields): FanotifyMark {
  return {
    kind: f.oneOf('kind', MARK_KINDS),
    mflags: f.num('mflags'),
    mask: f.num('mask'),
    ignoredMask: f.num('ignoredMask'),
    ino: f.big('ino'),
    sdev: f.num('sdev'),
    mntId: f.num('mntId'),
    handleType: f.num('handleType', { min: -1 }),
    handle: f.bytes('handle'),
    path: f.has('path') ? f.str('path') : undefined,
  }
}

export const fanotify: FileHandler<FanotifyDescription> = {
  types: ['fanotify'],

  async capture(probe, base, ctx) {
    const where = `/proc/${ctx.pid}/fdinfo/${probe.fd}`
    const group = probe.fdinfo.extra.find((l) => l.startsWith('fanotify flags:'))
    const m = group && /^fanotify flags:([0-9a-f]+) event-flags:([0-9a-f]+)/.exec(group)
    if (!m) throw new CkptError(`${where}: no "fanotify flags:" line`)
    const raw = probe.fdinfo.extra.filter((l) => l.startsWith('fanotify ') && l !== group).map((l) => parseMark(l, where))
    const refused = raw.find((r): r is string => typeof r === 'string')
    const marks = await findMarkPaths(raw.filter((r): r is RawMark => typeof r !== 'string'), ctx)
    return { ...base, type: 'fanotify', notCheckpointable: base.notCheckpointable ?? refused, initFlags: parseInt(m[1], 16), eventFlags: parseInt(m[2], 16), marks }
  },

  entries: () => table,

  load(dir, base) {
    const marks = dir.dir('marks').numberedDirs().map(loadMark)
    return described<FanotifyDescription>(base, {
      type: 'fanotify',
      initFlags: Number(dir.hex('init_flags', U32_MAX)),
      eventFlags: dir.octal('event_f_flags', U32_MAX),
      marks,
    })
  },

  validate(d) {
    if (d.initFlags & ~INIT_FLAGS) throw invalid(d, 'init_flags', `${hex(d.initFlags)} has bits fanotify_init does not know`)
    if (d.eventFlags & ~EVENT_F_FLAGS) throw invalid(d, 'event_f_flags', `${octal(d.eventFlags)} has flags fanotify_init does not take for event files`)
    d.marks.forEach((m, n) => {
      const name = (field: string) => `marks/${n}/${field}`
      if (!MARK_KINDS.includes(m.kind)) throw invalid(d, name('kind'), `${m.kind} is not one of ${MARK_KINDS.join(', ')}`)
      if (m.mflags & ~MARK_USER_FLAGS) throw invalid(d, name('mflags'), `${hex(m.mflags)} has flags other than FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE and FAN_MARK_IGNORE`)
      if (m.mflags & FAN_MARK_EVICTABLE && m.kind !== 'inode') throw invalid(d, name('mflags'), 'only an inode mark is evictable')
      if (m.mask === 0 && m.ignoredMask === 0) throw invalid(d, name('mask'), 'a mark with neither a mask nor an ignored mask')
      const why = m.path === undefined ? undefined : pathProblem(m.path)
      if (why !== undefined) throw invalid(d, name('path'), why)
    })
  },

  // FANOTIFY: u32 init flags, u32 event_f_flags, i32 status flags (O_NONBLOCK), u32 count, per
  // mark u32 its number (marks/N), u32 mark flags, u32 mask, u32 ignore flags, u32 ignored
  // mask, string path. The stub adds the mask, then the ignored mask, each when not empty.
  // The kernel lists a group's newest mark first: they are added last to first, so fdinfo
  // lists them as it did. An inode mark whose inode has no path but is held open by an fd
  // of the task is added through /proc/self/fd of that fd, so the record then goes after
  // every other one (`last`).
  planRestore(d, { table }) {
    const payload = new RecordBuilder().u32(d.initFlags).u32(d.eventFlags).i32(d.flags & O_NONBLOCK).u32(d.marks.length)
    let throughFd = false
    for (let n = d.marks.length - 1; n >= 0; n--) {
      const m = d.marks[n]
      let path = m.path
      let flags = m.kind === 'mount' ? FAN_MARK_MOUNT : m.kind === 'filesystem' ? FAN_MARK_FILESYSTEM : m.mflags & FAN_MARK_EVICTABLE
      if (path === undefined) {
        const fd = m.kind === 'inode' ? fdHoldingInode(table, m) : undefined
        if (fd === undefined) {
          const what = m.kind === 'inode' ? `the marked inode (ino ${m.ino}) was not found at checkpoint and no fd of the task holds it` : `no mount point of the marked ${m.kind} was found at checkpoint`
          throw new CkptError(`files/${d.objref}/marks/${n}/path: ${what}: the mark cannot be restored`, 'ENOTSUP')
        }
        path = `/proc/self/fd/${fd}`
        throughFd = true
      } else {
        // The path names the marked inode itself (the search never follows symbolic links).
        flags |= FAN_MARK_DONT_FOLLOW
      }
      const ignoreFlags = (m.mflags & FAN_MARK_IGNORE ? FAN_MARK_IGNORE : FAN_MARK_IGNORED_MASK) | (m.mflags & FAN_MARK_IGNORED_SURV_MODIFY)
      payload.u32(n).u32(flags).u32(m.mask).u32(ignoreFlags).u32(m.ignoredMask).string(path)
    }
    return { kind: KINDS.fanotify, objref: d.objref, payload, last: throughFd }
  },
  stubKinds: KINDS,

  image: {
    field: 'fanotify',
    write: (d) => d,
    read: (details, base, type) => ({
      description: described<FanotifyDescription>(base, { type, initFlags: details.num('initFlags'), eventFlags: details.num('eventFlags'), marks: details.list('marks').map(markFrom) }),
      contentsSize: undefined,
    }),
  },

  summary: (d) => `${d.target} (${d.marks.length} marks: ${d.marks.map((m) => `${m.kind} ${m.path ?? '?'}`).join(', ') || '-'})`,
}

