// inotify: the watches (wd, inode, device, masks) from fdinfo. fdinfo names the watched inode,
// not a path, and open_by_handle_at is out of reach from here, so the path is searched for:
// first the directories the task has files open in, then its cwd, then the mount root of the
// watched device, within searchBound (search.ts). A watch whose inode was not found has no path.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'
import type { FileTable, InotifyDescription, InotifyWatch, PathDescription } from '../model'
import { userDevFromKernel } from '../procfs'
import { RecordBuilder } from '../restore/fdplan'
import type { Fields } from '../image/records'

/** The stub's kind (restorer.c, open_inotify_object). */
const KINDS = { inotify: 9 } as const
import { attr, each, hex, type TableEntry } from '../tree/node'
import { described, invalid, O_NONBLOCK, withCommon } from './common'
import type { CaptureContext, FileHandler } from './handler'
import { INT_MAX, pathProblem, U32_MAX, U64_MAX, type SavedDir } from './saved'
import { findInodePaths, inodeKey, mountPointsOf } from './search'

const watchEntries: TableEntry<InotifyWatch>[] = [
  attr('wd', (w) => w.wd),
  attr('ino', (w) => w.ino),
  attr('sdev', (w) => w.sdev),
  attr('mask', (w) => hex(w.mask)),
  attr('ignored_mask', (w) => hex(w.ignoredMask)),
  attr('path', (w) => w.path ?? ''),
]

const table = withCommon<InotifyDescription>([
  each('watches', async (d) => new Map(d.watches.map((w) => [String(w.wd), w])), watchEntries),
])

/** "inotify wd:1 ino:3f7e8 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 ..." (all hex). */
function parseWatch(line: string, where: string): Omit<InotifyWatch, 'path'> {
  const fields = new Map(line.slice('inotify '.length).trim().split(/\s+/).map((kv) => kv.split(':') as [string, string]))
  const field = (name: string): string => {
    const value = fields.get(name)
    if (value === undefined || !/^[0-9a-f]+$/.test(value)) throw new CkptError(`${where}: inotify watch without ${name}: ${JSON.stringify(line)}`)
    return value
  }
  return {
    wd: parseInt(field('wd'), 16),
    ino: BigInt('0x' + field('ino')),
    sdev: parseInt(field('sdev'), 16),
    mask: parseInt(field('mask'), 16),
    ignoredMask: parseInt(field('ignored_mask'), 16),
  }
}

/**
 * The path of each watched inode (named by ino and the kernel's sdev, as fdinfo shows them),
 * or undefined where it was not found. fanotify's inode marks are found the same way.
 */
export async function findWatchedPaths<W extends { ino: bigint; sdev: number }>(watches: W[], ctx: CaptureContext): Promise<Array<W & { path: string | undefined }>> {
  if (watches.length === 0) return []
  const wanted = watches.map((w) => ({ dev: userDevFromKernel(w.sdev), ino: w.ino, count: 1, exclude: undefined }))
  const cwd = await fs.promises.readlink(`/proc/${ctx.pid}/cwd`).catch(() => undefined)
  const mounts = await ctx.mounts().catch(() => [])
  const starts = new Set([
    ...ctx.openPaths.flatMap((p) => [p, path.posix.dirname(p)]),
    ...(cwd?.startsWith('/') ? [cwd] : []),
    ...wanted.flatMap((w) => mountPointsOf(mounts, w.dev)),
  ])
  const found = await findInodePaths(ctx.root, wanted, [...starts])
  return watches.map((w, i) => ({ ...w, path: found.get(inodeKey(wanted[i].dev, w.ino))?.[0] }))
}

function loadWatch(dir: SavedDir, wdName: number): InotifyWatch {
  const wd = dir.int('wd', 1, INT_MAX)
  if (wd !== wdName) throw dir.fail('wd', `${wd} does not match the directory name ${wdName}`)
  const watch: InotifyWatch = {
    wd,
    ino: dir.decimal('ino', 0n, U64_MAX),
    sdev: dir.int('sdev', 0, Number(U32_MAX)),
    mask: Number(dir.hex('mask', U32_MAX)),
    ignoredMask: Number(dir.hex('ignored_mask', U32_MAX)),
    path: dir.optionalPath('path'),
  }
  dir.finish()
  return watch
}

/** The mask bits a watch keeps (IN_ALL_EVENTS, IN_EXCL_UNLINK, IN_ONESHOT); the others are add-time flags. */
const keptMaskBits = 0xfff | 0x04000000 | 0x80000000
/** The found path names the watched inode itself (the search never follows symbolic links). */
const IN_DONT_FOLLOW = 0x02000000

export const inotify: FileHandler<InotifyDescription> = {
  types: ['inotify'],

  async capture(probe, base, ctx) {
    const where = `/proc/${ctx.pid}/fdinfo/${probe.fd}`
    const watches = probe.fdinfo.extra.filter((l) => l.startsWith('inotify ')).map((l) => parseWatch(l, where))
    return { ...base, type: 'inotify', watches: await findWatchedPaths(watches, ctx) }
  },

  entries: () => table,

  load(dir, base) {
    const watchesDir = dir.dir('watches')
    const watches: InotifyWatch[] = []
    for (const [wd, watchDir] of watchesDir.decimalDirs(1)) watches.push(loadWatch(watchDir, wd))
    return described<InotifyDescription>(base, { type: 'inotify', watches })
  },

  validate(d) {
    for (const w of d.watches) {
      const why = w.path === undefined ? undefined : pathProblem(w.path)
      if (why !== undefined) throw invalid(d, `watches/${w.wd}/path`, why)
    }
  },

  // INOTIFY: i32 flags (IN_NONBLOCK), u32 count, per watch i32 wd, u32 mask, string path, in wd
  // order: the stub adds them so that each gets its saved wd back. A watch whose inode has no
  // path (deleted, or not found by the search) but is held open by an fd of the task is added
  // through /proc/self/fd of that fd, so the record goes after every other one (`last`).
  planRestore(d, { table }) {
    const watches = [...d.watches].sort((a, b) => a.wd - b.wd)
    const payload = new RecordBuilder().i32(d.flags & O_NONBLOCK).u32(watches.length)
    let throughFd = false
    for (const w of watches) {
      if (w.path !== undefined) {
        payload.i32(w.wd).u32(((w.mask & keptMaskBits) | IN_DONT_FOLLOW) >>> 0).string(w.path)
        continue
      }
      const fd = fdHoldingInode(table, w)
      if (fd === undefined) {
        throw new CkptError(`files/${d.objref}/watches/${w.wd}/path: the watched inode (ino ${w.ino}) was not found at checkpoint and no fd of the task holds it: the watch cannot be restored`, 'ENOTSUP')
      }
      // The magic link must be followed to reach the inode: no IN_DONT_FOLLOW here.
      payload.i32(w.wd).u32((w.mask & keptMaskBits) >>> 0).string(`/proc/self/fd/${fd}`)
      throughFd = true
    }
    return { kind: KINDS.inotify, objref: d.objref, payload, last: throughFd }
  },
  stubKinds: KINDS,

  image: {
    field: 'inotify',
    write: (d) => d,
    read(details, base, type) {
      const watches = details.list('watches').map(inotifyWatchFrom)
      const seen = new Set<number>()
      for (const w of watches) {
        if (seen.has(w.wd)) details.fail('watches', `watch ${w.wd} is listed twice`)
        seen.add(w.wd)
      }
      return { description: described<InotifyDescription>(base, { type, watches }), contentsSize: undefined }
    },
  },

  summary: (d) => `${d.target} (${d.watches.length} watches)`,
}

function inotifyWatchFrom(f: Fields): InotifyWatch {
  return {
    wd: f.num('wd', { min: 1 }),
    ino: f.big('ino'),
    sdev: f.num('sdev'),
    mask: f.num('mask'),
    ignoredMask: f.num('ignoredMask'),
    path: f.has('path') ? f.str('path') : undefined,
  }
}

/** The lowest fd of the task whose file (a path-type description) is the watched inode. */
export function fdHoldingInode(table: FileTable, w: { ino: bigint; sdev: number }): number | undefined {
  const dev = userDevFromKernel(w.sdev)
  const holders = new Set<number>()
  for (const f of table.files) {
    if (PATH_TYPES.has(f.type) && f.ino === w.ino && (f as PathDescription).dev === dev) holders.add(f.objref)
  }
  let lowest: number | undefined
  for (const entry of table.fds) if (holders.has(entry.objref) && (lowest === undefined || entry.fd < lowest)) lowest = entry.fd
  return lowest
}

const PATH_TYPES: ReadonlySet<string> = new Set(['file', 'dir', 'chr', 'blk', 'fifo'])
