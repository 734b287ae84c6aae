// Finding names of an inode by walking the task's filesystem (reference/000: "we would need
// to walk the entire filesystem to find out that "b" is a path to the same inode"). The walk is
// bounded: it starts where names are likely (the directory the file was opened in; for inotify
// also the task's open files and cwd), then goes breadth first from the mount root, stays on the devices it looks for, never
// follows symbolic links, and stops after `maxEntries` directory entries or `maxMs`
// milliseconds, whichever comes first. Finding nothing is a valid answer.

import * as fs from 'fs'
import * as path from 'path'
import { asPid, lazy, type Lazy } from '../model'
import { fuseMounts, majorMinor, type MountInfo } from '../procfs'
import type { LinkFinder } from './handler'

export interface SearchBound {
  maxEntries: number
  maxMs: number
}

/** The bound of one search (all other_links of a checkpoint share one; each inotify file has one). */
export const searchBound: SearchBound = { maxEntries: 20000, maxMs: 2000 }

export interface WantedInode {
  dev: bigint
  ino: bigint
  /** How many names to find before this inode is done. */
  count: number
  /** A name that does not count (the path the file is open under). */
  exclude: string | undefined
}

export const inodeKey = (dev: bigint, ino: bigint): string => `${dev}:${ino}`

/** lstat calls in flight at once during a walk. */
const statConcurrency = 32

/**
 * Names (as the task sees them) of the wanted inodes, by inodeKey. `root` is where the
 * task's "/" is seen from here ("/proc/PID/root"); `starts` are task paths of directories,
 * searched in order (each is itself checked too).
 */
export async function findInodePaths(root: string, wanted: WantedInode[], starts: string[], bound: SearchBound = searchBound): Promise<Map<string, string[]>> {
  const found = new Map<string, string[]>()
  const pending = new Map(wanted.filter((w) => w.count > 0).map((w) => [inodeKey(w.dev, w.ino), w]))
  const devs = new Set(wanted.map((w) => w.dev))
  const deadline = Date.now() + bound.maxMs
  const avoid = fuseCovered(root)
  let budget = bound.maxEntries
  const seenDirs = new Set<string>()
  const queue: string[] = []

  const consider = (taskPath: string, st: fs.BigIntStats): void => {
    const key = inodeKey(st.dev, st.ino)
    const want = pending.get(key)
    if (!want || taskPath === want.exclude) return
    const names = found.get(key) ?? []
    if (names.includes(taskPath)) return
    names.push(taskPath)
    found.set(key, names)
    if (names.length >= want.count) pending.delete(key)
  }
  const enqueueDir = (taskPath: string, st: fs.BigIntStats): void => {
    const key = inodeKey(st.dev, st.ino)
    if (devs.has(st.dev) && !seenDirs.has(key)) {
      seenDirs.add(key)
      queue.push(taskPath)
    }
  }

  /** lstat's `paths` (task paths) a batch at a time, noting matches and directories to walk. */
  const lookAt = async (all: string[]): Promise<void> => {
    const paths = all.filter((p) => !avoid(path.posix.normalize(p)))
    budget -= paths.length
    for (let i = 0; i < paths.length && pending.size && Date.now() < deadline; i += statConcurrency) {
      const batch = paths.slice(i, i + statConcurrency)
      const stats = await Promise.all(batch.map((p) => lstatOrUndefined(root + p)))
      stats.forEach((st, j) => {
        if (!st) return
        consider(batch[j], st)
        if (st.isDirectory()) enqueueDir(batch[j], st)
      })
    }
  }

  await lookAt(starts.slice(0, budget))
  for (let next = 0; next < queue.length && pending.size && budget > 0 && Date.now() < deadline; next++) {
    const dir = queue[next]
    let names: string[]
    try {
      names = await fs.promises.readdir(root + dir)
    } catch {
      continue // unreadable or gone: skip it
    }
    await lookAt(names.slice(0, budget).map((name) => path.posix.join(dir, name)))
  }
  return found
}

/**
 * Whether a task path is at or below a FUSE mount point (of the task whose root `root` is, and
 * ours): an lstat there, or of the mount point itself, waits for the FUSE server, which may be
 * a user's that never answers (procfs.ts, fuseMounts). The walk never looks there.
 */
function fuseCovered(root: string): (taskPath: string) => boolean {
  const task = /^\/proc\/(\d+)\/root$/.exec(root)
  const points = [...(task ? fuseMounts(asPid(Number(task[1]))).values() : []), ...fuseMounts(asPid(process.pid)).values()].map((m) => m.mountPoint)
  return (p) => points.some((m) => p === m || p.startsWith(m === '/' ? '/' : `${m}/`))
}

async function lstatOrUndefined(file: string): Promise<fs.BigIntStats | undefined> {
  try {
    return await fs.promises.lstat(file, { bigint: true })
  } catch {
    return undefined
  }
}

/** Where the filesystem holding `dev` (user-space encoding) is mounted, as the task sees it. */
export function mountPointsOf(mounts: MountInfo[], dev: bigint): string[] {
  const { major, minor } = majorMinor(dev)
  return mounts.filter((m) => m.device === `${major}:${minor}`).map((m) => m.mountPoint)
}

/**
 * The other_links finder of one capture: every inode that wants its other names is
 * registered while the descriptions are captured; the first question runs one search for
 * all of them (starting from each file's directory, then from each one's mount root).
 */
export function linkFinder(root: string, mounts: Lazy<MountInfo[]>): LinkFinder {
  const wanted: WantedInode[] = []
  const dirs = new Set<string>()
  const mountsOf: Array<{ mntId: number; dev: bigint }> = []
  const search = lazy(async () => {
    const all = await mounts().catch((): MountInfo[] => [])
    const byId = new Map(all.map((m) => [m.mntId, m.mountPoint]))
    const mountRoots = mountsOf.flatMap(({ mntId, dev }) => {
      const point = byId.get(mntId)
      return point !== undefined ? [point] : mountPointsOf(all, dev)
    })
    return findInodePaths(root, wanted, [...new Set([...dirs, ...mountRoots])])
  })
  return {
    want(inode) {
      wanted.push({ dev: inode.dev, ino: inode.ino, count: inode.count, exclude: inode.exclude })
      dirs.add(path.posix.dirname(inode.path))
      mountsOf.push({ mntId: inode.mntId, dev: inode.dev })
      return lazy(async () => (await search()).get(inodeKey(inode.dev, inode.ino)) ?? [])
    },
  }
}
