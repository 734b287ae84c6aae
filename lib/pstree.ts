// A process tree: PID and every descendant, frozen together so that no task of the tree runs
// while another is captured, and released (resumed or killed) together.
//
// Why the freeze cannot miss a fork: a process is scanned for children only once all its
// threads are ptrace-stopped, and a stopped thread cannot fork; a fork it had started is
// complete by the time it stops (the stop is taken on the way back to user space), so its
// child shows in /proc/PID/task/TID/children. A child found this way may fork before it is
// frozen in turn; its own scan, after its freeze, catches that. One case escapes the
// per-process scan: a child cloning with CLONE_PARENT gives its (frozen, already scanned)
// parent a new child; so once every known process is frozen, all are scanned again, until a
// whole pass finds nothing new.
//
// Zombies (exited, not reaped) cannot be frozen and need not be: only their parent, frozen
// too, could reap them. They are recorded with what a restore needs to make them again.

import * as fs from 'fs'
import { CkptError, errnoOf, messageOf } from './errors'
import { asPid, asTid, type Pid, type Tid, type ZombieTask } from './model'
import { native } from './native'
import { StatFields, STAT } from './task/procfs'
import { STOP_SIGNALS } from './task/process'

/** proc(5): the exit status a zombie's parent would get from waitpid. */
const STAT_EXIT_CODE = 52

/** One live process of a frozen tree. */
export interface FrozenTask {
  pid: Pid
  /** Its parent in the tree (undefined for the root). */
  parent?: Pid
  tids: Tid[]
  /** The stop signal if the process was in a group stop when it was frozen (0: it ran). */
  stopSignal: number
}

export interface FrozenTree {
  root: Pid
  /** Live processes, parents before their children (root first, then depth first, by PID). */
  live: FrozenTask[]
  /** Zombies of the tree, in the same order. */
  zombies: ZombieTask[]
  /** Descendants left out, with their own descendants: this ckptfs process, the one asking. */
  left: Array<{ pid: Pid; why: string }>
}

/** The children of every thread of `pid` (empty once it is gone). */
export function childrenOf(pid: number): number[] {
  let tids: string[]
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`)
  } catch {
    return []
  }
  const children: number[] = []
  for (const tid of tids) {
    try {
      for (const child of fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ')) if (child.trim()) children.push(Number(child))
    } catch {
      // The thread exited meanwhile: its children moved to another thread or were reparented.
    }
  }
  return children
}

/** What /proc says of a zombie; undefined when `pid` is not (or no longer) one. */
export function readZombie(pid: number): ZombieTask | undefined {
  let stat: StatFields
  try {
    stat = new StatFields(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return undefined
  }
  if (stat.text(STAT.state) !== 'Z') return undefined
  // A leader whose other threads live on shows Z as well: that process is alive.
  try {
    if (fs.readdirSync(`/proc/${pid}/task`).length > 1) return undefined
  } catch {
    return undefined
  }
  return {
    pid: asPid(pid),
    ppid: stat.number(STAT.ppid),
    pgid: stat.number(STAT.pgrp),
    sid: stat.number(STAT.session),
    comm: stat.comm,
    exitStatus: stat.number(STAT_EXIT_CODE),
  }
}

/** Orders the members parents first, each one's children by PID. */
function treeOrder(root: Pid, parentOf: Map<number, number>): number[] {
  const kids = new Map<number, number[]>()
  for (const [child, parent] of parentOf) {
    const list = kids.get(parent)
    if (list) list.push(child)
    else kids.set(parent, [child])
  }
  const order: number[] = []
  const stack = [root as number]
  while (stack.length > 0) {
    const pid = stack.pop()!
    order.push(pid)
    stack.push(...(kids.get(pid) ?? []).sort((a, b) => b - a))
  }
  return order
}

/**
 * Freezes `root` and all its descendants, except `leaveOut` (pid: why) and this process, with
 * their descendants: the ckptfs process asking for the checkpoint waits for our answer inside
 * the mount (it could not stop), and we cannot freeze ourselves. The root's own failures are
 * reported as they are (the caller explains them); a descendant that cannot be frozen fails
 * the whole freeze, named. Nothing is left frozen when this throws.
 */
export async function freezeTree(root: Pid, leaveOut: ReadonlyMap<number, string> = new Map()): Promise<FrozenTree> {
  const frozen = new Map<number, Tid[]>()
  const stopped = new Map<number, number>()
  const zombies = new Map<number, ZombieTask>()
  const parentOf = new Map<number, number>()
  const left = new Map<number, string>()
  const skip = new Map(leaveOut)
  skip.set(process.pid, 'this ckptfs process')
  /** Children that could not be frozen: zombies are recorded, the gone forgotten, the rest fail. */
  const notFrozen = (pid: number, err: unknown): void => {
    const zombie = readZombie(pid)
    if (zombie) zombies.set(pid, zombie)
    else if (fs.existsSync(`/proc/${pid}`)) throw new CkptError(`cannot freeze process ${pid} (a descendant of ${root}): ${messageOf(err)}`, errnoOf(err) === 'ESRCH' ? 'ESRCH' : 'EPERM')
    // Otherwise it exited and was reaped meanwhile: no longer part of the tree.
  }
  // Each pass's children are frozen side by side (all interrupted, then all awaited).
  const freezeChildren = async (pids: number[]): Promise<void> => {
    const results = await native.freezeMany(pids)
    let failure: unknown
    for (const r of results) {
      if (r.threads) {
        frozen.set(r.pid, r.threads.map((t) => asTid(t.tid)))
        stopped.set(r.pid, stopSignalOf(r.pid, r.threads))
      }
      else {
        try {
          notFrozen(r.pid, r.error)
        } catch (err) {
          failure ??= err
        }
      }
    }
    // Thrown once every frozen one is recorded, so the caller thaws them all.
    if (failure !== undefined) throw failure
  }
  try {
    try {
      const threads = await native.freeze(root)
      frozen.set(root, threads.map((t) => asTid(t.tid)))
      stopped.set(root, stopSignalOf(root, threads))
    } catch (err) {
      if (readZombie(root)) throw new CkptError(`process ${root} has exited (a zombie): there is nothing to checkpoint`, 'ESRCH')
      throw err
    }
    let scan = [root as number]
    for (;;) {
      const found: number[] = []
      for (const pid of scan) {
        for (const child of childrenOf(pid)) {
          if (frozen.has(child) || zombies.has(child) || left.has(child) || found.includes(child)) continue
          const why = skip.get(child)
          if (why !== undefined) {
            left.set(child, why)
            continue
          }
          found.push(child)
          parentOf.set(child, pid)
        }
      }
      if (found.length > 0) {
        await freezeChildren(found)
        // Children of the newly frozen processes, then (next round) of everyone again.
        scan = found.filter((pid) => frozen.has(pid))
        continue
      }
      // Nothing new below the last ones: one pass over all (CLONE_PARENT), unless this was it.
      if (scan.length === frozen.size) break
      scan = [...frozen.keys()]
    }
  } catch (err) {
    await thawTasks([...frozen.keys()], false)
    throw err
  }
  const order = treeOrder(root, parentOf)
  return {
    root,
    live: order.filter((pid) => frozen.has(pid)).map((pid) => ({ pid: asPid(pid), parent: pid === root ? undefined : asPid(parentOf.get(pid)!), tids: frozen.get(pid)!, stopSignal: stopped.get(pid) ?? 0 })),
    zombies: order.filter((pid) => zombies.has(pid)).map((pid) => zombies.get(pid)!),
    left: [...left].map(([pid, why]) => ({ pid: asPid(pid), why })),
  }
}

const PTRACE_EVENT_STOP = 128
const SIGTRAP = 5

/**
 * The stop signal of a process frozen in a group stop: the ptrace stop freeze collected from
 * its main thread (or its first) is that group stop (PTRACE_EVENT_STOP with the stop signal)
 * rather than the interrupt's (with SIGTRAP). 0: it was running.
 */
function stopSignalOf(pid: number, threads: Array<{ tid: number; status: number }>): number {
  const main = threads.find((t) => t.tid === pid) ?? threads[0]
  if (!main || (main.status & 0xff) !== 0x7f || main.status >>> 16 !== PTRACE_EVENT_STOP) return 0
  const signal = (main.status >> 8) & 0xff
  return signal !== SIGTRAP && STOP_SIGNALS.includes(signal) ? signal : 0
}

/**
 * Resumes (or kills) every listed frozen process. A kill takes every process while all are
 * still stopped, so nothing of the tree runs before its end. Failures are collected: every
 * task gets its thaw, then the first failure is thrown.
 */
export async function thawTasks(pids: number[], kill: boolean): Promise<void> {
  // A kill goes children first: each dies while its parent is still stopped.
  const ordered = kill ? [...pids].reverse() : pids
  const results = await Promise.allSettled(ordered.map((pid) => native.thaw(pid, kill)))
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
  if (failed) throw failed.reason
}
