// The file table of a task (reference/004): capture from a frozen task, and load back from a
// saved copy of the tree. Every open file description gets one ObjRef, numbered 1..N in the
// order of its lowest fd; fds that share a description (dup, fork, SCM_RIGHTS) share it.
// Per-type work is done by the handlers in lib/files/.

import * as fs from 'fs'
import * as path from 'path'
import { CkptError, messageOf } from './errors'
import { asObjRef, asPid, lazy, type FdEntry, type FdType, type FileDescription, type FileLock, type FileTable, type Lazy, type ObjRef, type Pid } from './model'
import { native } from './native'
import { fuseMounts, listFds, O_CLOEXEC, readFds, readMountInfo, readSocketKinds, inodeStat, type InodeStat } from './procfs'
import { loadBase, modeFromFlags, parseObjRef } from './files/common'
import type { CaptureContext, DescriptionBase, FdProbe, FileHandler } from './files/handler'
import { handlerFor, handlerForType } from './files/index'
import { INT_MAX, SavedDir, type StoredDir } from './files/saved'
import { linkFinder } from './files/search'
import { captureTreeFiles } from './treefiles'
import { parseLocks } from './files/locks'

/** Descriptions captured at once (their handlers read /proc and stat paths). */
const captureConcurrency = 64
/** How long a saved tree is read without giving the event loop a turn (ms). */
const loadSlice = 20

/** Runs `fn` over `items` with at most `limit` calls pending; results in item order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length)
  let next = 0
  let failed = false
  const worker = async (): Promise<void> => {
    while (next < items.length && !failed) {
      const i = next++
      try {
        results[i] = await fn(items[i])
      } catch (err) {
        failed = true
        throw err
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
  return results
}

// ---------------------------------------------------------------------------------------
// Capture

interface Sharing {
  /** The fds of one description, ascending. */
  probes: FdProbe[]
  handler: FileHandler
  /** What every fd of the description shows alike: only descriptions with one key can be one. */
  key: string
}

/**
 * Who numbers the descriptions: the task alone (1..N by lowest fd), or a process tree whose
 * tasks share descriptions (lib/treefiles.ts). `claim` answers the ObjRef of the description
 * whose lowest fd in task `pid` is `fd`, and whether it is new to the checkpoint (captured
 * here) or was captured with another task of the tree already.
 */
export interface DescriptionClaims {
  claim(pid: Pid, fd: number, key: string): { objref: ObjRef; fresh: boolean }
  /** Pipe and fifo peeks by pipe identity, so the bytes of a pipe are read once per checkpoint. */
  readonly peeks: Map<string, Lazy<Buffer>>
  /** Whether POSIX locks name the process holding them (a checkpoint of several processes). */
  readonly lockOwners: boolean
  /**
   * The POSIX locks a task holds through a description captured with another task: each
   * process's show only in its own fdinfo, so they are added to the description here.
   */
  addLocks(objref: ObjRef, locks: FileLock[], refused: string | undefined): void
  /**
   * Every description of the checkpoint numbered so far, with the task that captures it and
   * its lowest fd there: after the first await of any task's capture, the whole tree's (a UNIX
   * socket's peer may be held by another process of the tree).
   */
  readonly numbered: Array<{ pid: Pid; objref: ObjRef; probe: FdProbe }>
  /**
   * Fds of this process that hold descriptions in flight (passed with SCM_RIGHTS, peeked out
   * of a socket's queue): kept open until the whole checkpoint's file table is captured, as
   * kcmp compares later claims with them (a closed one's number could be reused by another).
   */
  readonly heldFds: number[]
}

/**
 * Splits fds into open file descriptions. Candidates are grouped by what every fd of one
 * description shows alike (mount, inode, flags without O_CLOEXEC, offset, target, handler identity);
 * only inside a group does kcmp decide, sorting the group in one native call (its 1/2
 * answers are a consistent order), so a table of n fds costs O(n log n) kcmp calls at worst
 * and usually none.
 */
function shareDescriptions(pid: Pid, probes: FdProbe[], kcmpGroups: (pid: number, fds: number[]) => number[]): Sharing[] {
  const groups = new Map<string, Sharing>()
  for (const probe of probes) {
    const handler = handlerFor(probe)
    const { mntId, ino, flags, pos } = probe.fdinfo
    const key = `${mntId}\0${ino}\0${flags & ~O_CLOEXEC}\0${pos}\0${probe.target}\0${handler.identity?.(probe) ?? ''}`
    const group = groups.get(key)
    if (group) group.probes.push(probe)
    else groups.set(key, { probes: [probe], handler, key })
  }
  const shared: Sharing[] = []
  for (const group of groups.values()) {
    if (group.probes.length === 1) {
      shared.push(group)
      continue
    }
    let lowest: number[]
    try {
      lowest = kcmpGroups(pid, group.probes.map((p) => p.fd))
    } catch (err) {
      throw new CkptError(`task ${pid}: cannot tell which of fds ${group.probes[0].fd}.. share a file: ${messageOf(err)}`)
    }
    const byLowest = new Map<number, FdProbe[]>()
    group.probes.forEach((probe, i) => {
      const run = byLowest.get(lowest[i])
      if (run) run.push(probe)
      else byLowest.set(lowest[i], [probe])
    })
    for (const run of byLowest.values()) shared.push({ probes: run, handler: group.handler, key: group.key })
  }
  for (const s of shared) s.probes.sort((a, b) => a.fd - b.fd)
  return shared.sort((a, b) => a.probes[0].fd - b.probes[0].fd)
}

/**
 * Captures the file table of task `pid`, which must be frozen (every thread ptrace-stopped).
 * Nothing of the task changes: pipes are peeked, files are read through separate opens.
 * Lazy parts (pipe data, unlinked contents, other links) are read when first asked for, or
 * all before this returns with `copy`, after which the task may run on.
 */
export async function captureFileTable(pid: Pid, opts: { copy: boolean }): Promise<FileTable> {
  // A tree of one: its claims also tell a description in flight that the task holds too.
  const tree = await captureTreeFiles([pid], opts)
  return { fds: tree.fds.get(pid) ?? [], files: tree.files }
}

/** A task's fds as /proc shows them, grouped into descriptions, before any is numbered. */
export interface ProbedTable {
  pid: Pid
  probes: FdProbe[]
  shared: Sharing[]
  socketKinds: Lazy<Map<bigint, string>>
  /** What a path an fd shows is resolved below (see probeFileTable). */
  statRoot: string
}

/** Reads task `pid`'s fds from /proc and splits them into descriptions (the task is frozen). */
export async function probeFileTable(pid: Pid, only?: number[]): Promise<ProbedTable> {
  const fds = only ?? await listFds(pid)
  const probes = await readFds(pid, fds)
  // The socket tables take long to generate when there are many sockets: start now, while kcmp sorts.
  const socketKinds = lazy(() => readSocketKinds(pid))
  if (probes.some((p) => p.target.startsWith('socket:'))) socketKinds().catch(() => undefined)
  const shared = shareDescriptions(pid, probes, native.kcmpGroups.bind(native))
  // /proc/PID/fd links show paths as seen from OUR root. For a task whose root is ours (or the
  // root of another mount namespace, which shows as "/") they resolve below /proc/PID/root; for a
  // chrooted task they are our paths already (prefixing the chroot would miss every file).
  const root = `/proc/${pid}/root`
  const statRoot = (await fs.promises.readlink(root).catch(() => '/')) === '/' ? root : ''
  return { pid, probes, shared, socketKinds, statRoot }
}

/**
 * Numbers a probed task's descriptions through `claims`, then captures those new to the
 * checkpoint. The numbering is done before the first await, so tasks captured side by side,
 * started in tree order, are numbered as if captured one after the other.
 */
/**
 * The task whose socket queues descriptions in flight: an epoll in flight names the files it
 * watches by that task's fd numbers (it was passed by the task that added them).
 */
interface Sender {
  pid: Pid
  described: CaptureContext['described']
  descriptions: CaptureContext['descriptions']
}

export async function captureProbed(probed: ProbedTable, opts: { copy: boolean }, claims: DescriptionClaims, sender?: Sender): Promise<FileTable> {
  const { pid, probes, shared, socketKinds, statRoot } = probed
  const described = new Map<number, { objref: ObjRef; probe: FdProbe }>()
  const claimed = shared.map((s) => claims.claim(pid, s.probes[0].fd, s.key))
  shared.forEach((s, i) => {
    if (claimed[i].fresh) claims.numbered.push({ pid, objref: claimed[i].objref, probe: s.probes[0] })
  })
  const lockOwner = claims.lockOwners ? pid : undefined
  shared.forEach((s, i) => {
    for (const probe of s.probes) described.set(probe.fd, { objref: claimed[i].objref, probe })
    // A description in flight holds no lock of its own (its fd here is ckptfs's).
    if (claimed[i].fresh || pid === self) return
    // Captured with another task: only this process's own POSIX locks are new (flock and OFD
    // locks belong to the description and showed there already).
    const { locks, refused } = parseLocks(s.probes[0].fdinfo.extra, lockOwner)
    claims.addLocks(claimed[i].objref, locks.filter((l) => l.kind === 'posix'), refused)
  })
  const peeks = claims.peeks
  const pathStats = new Map<string, Promise<InodeStat | undefined>>()
  const root = `/proc/${pid}/root`
  const mounts = lazy(() => readMountInfo(pid))
  // A path at or below a FUSE mount point (the task's, or ours for a chrooted task's paths) is
  // never stat'ed: its FUSE server, which may be a user's mounted over a directory of theirs
  // after the file was opened there, may never answer (procfs.ts, fuseMounts). It counts as a
  // name that does not resolve to the file, as a name covered by any other mount does.
  const fusePoints = [...fuseMounts(pid).values(), ...fuseMounts(self).values()].map((m) => m.mountPoint)
  const underFuse = (p: string) => fusePoints.some((m) => p === m || p.startsWith(m === '/' ? '/' : `${m}/`))
  const ctx: CaptureContext = {
    pid,
    root,
    statPath: (taskPath) => {
      if (underFuse(path.posix.normalize(taskPath))) return Promise.resolve(undefined)
      let st = pathStats.get(taskPath)
      if (!st) pathStats.set(taskPath, (st = fs.promises.stat(statRoot + taskPath, { bigint: true }).then(inodeStat, () => undefined)))
      return st
    },
    openPaths: [...new Set(probes.filter((p) => p.stat).map((p) => p.target.replace(/ \(deleted\)$/, '')))],
    described: sender?.described ?? ((fd) => described.get(fd)),
    descriptions: sender?.descriptions ?? shared.map((s, i) => ({ objref: claimed[i].objref, probe: s.probes[0] })),
    checkpointDescriptions: claims.numbered,
    epollTargetIs: (fd, efd, tfd, toff) => {
      try {
        return (sender ? native.kcmpEpollTarget(sender.pid, fd, efd, tfd, toff, pid) : native.kcmpEpollTarget(pid, fd, efd, tfd, toff)) === 0
      } catch {
        return undefined
      }
    },
    socketKinds,
    mounts,
    peekOnce: (key, fd) => {
      let peek = peeks.get(key)
      if (!peek) peeks.set(key, (peek = lazy(() => native.peekPipe(pid, fd))))
      return peek
    },
    pipeSize: (fd) => native.pipeSize(pid, fd),
    links: linkFinder(root, mounts),
    inFlight: (fd) => {
      claims.heldFds.push(fd)
      return captureInFlight(fd, claims, sender ?? { pid, described: ctx.described, descriptions: ctx.descriptions }).then(({ objref, files }) => {
        passed.push(...files)
        return { objref, notCheckpointable: files.find((f) => f.objref === objref)?.notCheckpointable }
      }, (err: unknown) => ({ refused: messageOf(err) }))
    },
  }
  /** Descriptions in flight that this table's sockets queue (and those they queue in turn). */
  const passed: FileDescription[] = []

  // A description another task of the tree holds too was captured with that task.
  const fresh = shared.filter((_, i) => claimed[i].fresh)
  const captured = await mapLimit(fresh, captureConcurrency, async (s): Promise<[FileHandler, FileDescription]> => {
    const first = s.probes[0]
    // fdinfo adds O_CLOEXEC for a close-on-exec fd; the description's own flags are what all its fds show.
    const flags = s.probes.reduce((all, p) => all & p.fdinfo.flags, -1) >>> 0
    const { locks, refused: locksRefused } = parseLocks(first.fdinfo.extra, lockOwner)
    const base: DescriptionBase = {
      objref: described.get(first.fd)!.objref,
      target: first.target,
      flags,
      mode: modeFromFlags(flags),
      pos: first.fdinfo.pos,
      mntId: first.fdinfo.mntId,
      ino: first.fdinfo.ino,
      notCheckpointable: locksRefused,
      locks,
    }
    let desc: FileDescription
    try {
      desc = await s.handler.capture(first, base, ctx)
    } catch (err) {
      throw new CkptError(`task ${pid}: fd ${first.fd} (${first.target}): ${messageOf(err)}`)
    }
    return [s.handler, desc]
  })

  const files = opts.copy
    ? await mapLimit(captured, captureConcurrency, async ([handler, desc]) => (handler.settle ? handler.settle(desc) : desc))
    : captured.map(([, desc]) => desc)
  files.push(...passed)
  const fdEntries: FdEntry[] = probes.map((p) => ({
    fd: p.fd,
    closeOnExec: (p.fdinfo.flags & O_CLOEXEC) !== 0,
    objref: described.get(p.fd)!.objref,
  }))
  return { fds: fdEntries, files }
}

/** This process: descriptions in flight are captured through fds of its own. */
const self = asPid(process.pid)

/**
 * The description that `fd` (of this process, peeked out of a socket's queue) holds: the
 * OBJREF a task of the checkpoint knows it by, or a new one, captured here like a task's
 * (with every lazy part read now: the fd is closed once the checkpoint's table is captured).
 * A socket in flight that carries itself, or a loop of them, ends at the claim: the
 * description is known by then.
 */
async function captureInFlight(fd: number, claims: DescriptionClaims, sender: Sender): Promise<{ objref: ObjRef; files: FileDescription[] }> {
  const table = await captureProbed(await probeFileTable(self, [fd]), { copy: true }, claims, sender)
  return { objref: table.fds[0].objref, files: table.files }
}

// ---------------------------------------------------------------------------------------
// Load back from a saved tree

/**
 * Runs `fn` over `items` one at a time, in order, so the first failure reported is the first
 * in item order. SavedDir reads synchronously (thousands of small files on local disk or tmpfs
 * read several times faster than through the thread pool), so the event loop gets a turn
 * every `loadSlice` ms.
 */
async function mapInOrder<T, R>(items: readonly T[], fn: (item: T) => R): Promise<R[]> {
  const results = new Array<R>(items.length)
  let slice = performance.now()
  for (let i = 0; i < items.length; i++) {
    results[i] = fn(items[i])
    if (performance.now() - slice > loadSlice) {
      await new Promise<void>((resolve) => setImmediate(resolve))
      slice = performance.now()
    }
  }
  return results
}

function loadDescription(dir: SavedDir, objref: ObjRef): FileDescription {
  const type = dir.text('fd_type')
  const handler = handlerForType(type)
  if (!handler) throw dir.fail('fd_type', `unknown fd_type ${JSON.stringify(type)}`)
  // The registry knows `type`, so it is one of the FdType names.
  const desc = handler.load(dir, loadBase(dir, objref), type as FdType)
  dir.finish()
  return desc
}

function loadFd(dir: SavedDir, fd: number): FdEntry {
  const nr = dir.int('fd_nr', 0, INT_MAX)
  if (nr !== fd) throw dir.fail('fd_nr', `${nr} does not match the directory name ${fd}`)
  const closeOnExec = dir.flag('coe')
  const ref = dir.text('fd')
  const objref = parseObjRef(ref)
  if (objref === undefined) throw dir.fail('fd', `not an object reference: ${JSON.stringify(ref)}`)
  dir.finish()
  return { fd, closeOnExec, objref }
}

/** The one task-PID directory of a saved tree, or the one named. */
async function taskDirName(top: SavedDir, taskDir: string | undefined): Promise<string> {
  if (taskDir !== undefined) return taskDir
  const tasks = top.names().filter((n) => /^task-[1-9][0-9]*$/.test(n))
  if (tasks.length === 1) return tasks[0]
  if (tasks.length === 0) throw new CkptError('task-PID: missing (the tree has no task directory)', 'EINVAL')
  throw new CkptError(`task-PID: the tree has ${tasks.length} task directories (${tasks.join(', ')}); name the one to load`, 'EINVAL')
}

/**
 * Reads the file table of a saved tree (a copied checkpoint-N directory): files/OBJREF/
 * and TASK/fds/FD/ (TASK: the only task-PID directory, unless named), validating every
 * value's syntax on the way; what the values mean (references between fds, descriptions and
 * epoll items, ranges) is checked by lib/restore/validate.ts, for trees and images alike.
 * Errors are CkptErrors naming the file relative to the tree root. Lazy parts read the saved files.
 */
/** Reads TASK/fds/FD/ of a saved tree alone: a tree's other tasks, whose fds name the files loadFileTable read. */
export async function loadTaskFds(root: StoredDir, taskDir: string): Promise<FdEntry[]> {
  const fdsDir = new SavedDir(root, '').dir(taskDir).dir('fds')
  return mapInOrder(fdsDir.decimalNames(0), (fd) => loadFd(fdsDir.numbered(fd), fd))
}

export async function loadFileTable(root: StoredDir, taskDir?: string): Promise<FileTable> {
  const top = new SavedDir(root, '')
  const filesDir = top.dir('files')
  const refs = filesDir.decimalNames(1, 'not an object reference (a positive decimal number)')
  const files = await mapInOrder(refs, (objref) => loadDescription(filesDir.numbered(objref), asObjRef(objref)))
  const fdsDir = top.dir(await taskDirName(top, taskDir)).dir('fds')
  const fds = await mapInOrder(fdsDir.decimalNames(0), (fd) => loadFd(fdsDir.numbered(fd), fd))
  return { fds, files }
}
