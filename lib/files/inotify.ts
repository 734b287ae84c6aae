// inotify: the watches (wd, inode, device, masks) from fdinfo. fdinfo names the watched inode,
// not a path, and open_by_handle_at is out of reach from here, so the path is searched for:
// first the directories the task has files open in, then its cwd, then the mount root of the
// watched device, within searchBound (search.ts). A watch whose inode was not found has no path.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError } from '../errors'
import type { InotifyDescription, InotifyWatch } from '../model'
import { userDevFromKernel } from '../procfs'
import { attr, each, hex, type TableEntry } from '../tree/node'
import { withCommon } from './common'
import type { CaptureContext, FileHandler } from './handler'
import { INT_MAX, U32_MAX, U64_MAX, type SavedDir } from './saved'
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

async function findWatchedPaths(watches: Array<Omit<InotifyWatch, 'path'>>, ctx: CaptureContext): Promise<InotifyWatch[]> {
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

async function loadWatch(dir: SavedDir, wdName: number): Promise<InotifyWatch> {
  const wd = await dir.int('wd', 1, INT_MAX)
  if (wd !== wdName) throw dir.fail('wd', `${wd} does not match the directory name ${wdName}`)
  const watch: InotifyWatch = {
    wd,
    ino: await dir.decimal('ino', 0n, U64_MAX),
    sdev: await dir.int('sdev', 0, Number(U32_MAX)),
    mask: Number(await dir.hex('mask', U32_MAX)),
    ignoredMask: Number(await dir.hex('ignored_mask', U32_MAX)),
    path: await dir.optionalPath('path'),
  }
  await dir.finish()
  return watch
}

export const inotify: FileHandler<InotifyDescription> = {
  types: ['inotify'],

  async capture(probe, base, ctx) {
    const where = `/proc/${ctx.pid}/fdinfo/${probe.fd}`
    const watches = probe.fdinfo.extra.filter((l) => l.startsWith('inotify ')).map((l) => parseWatch(l, where))
    return { ...base, type: 'inotify', watches: await findWatchedPaths(watches, ctx) }
  },

  entries: () => table,

  async load(dir, base) {
    const watchesDir = await dir.dir('watches')
    const watches: InotifyWatch[] = []
    for (const [wd, watchDir] of await watchesDir.decimalDirs(1)) watches.push(await loadWatch(watchDir, wd))
    return { ...base, type: 'inotify', watches }
  },
}
