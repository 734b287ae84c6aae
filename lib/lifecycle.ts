// Where a process is in its life, read from /proc: running, exited but not reaped (a zombie),
// or gone; waiting for those changes with a bound; and a process's ancestry. These decide
// when a killed task is really dead and when its PID is free for a restore.

import * as fs from 'fs'

export type LifeState = 'alive' | 'zombie' | 'gone'

/** The state of `pid` as /proc/PID/stat shows it (Z or X: exited, waiting to be reaped). */
export function lifeState(pid: number): LifeState {
  let stat: string
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return 'gone'
  }
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
  return state === 'Z' || state === 'X' ? 'zombie' : 'alive'
}

/** The parent of `pid`, or undefined once it is gone. */
export function parentOf(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
  } catch {
    return undefined
  }
}

/** `pid` and every process above it, up to (not including) PID 0. */
export function ancestryOf(pid: number): number[] {
  const chain: number[] = []
  for (let p: number | undefined = pid; p !== undefined && p > 0 && !chain.includes(p); p = parentOf(p)) chain.push(p)
  return chain
}

/** Every descendant of `pid` (children of all its threads, recursively). */
export function descendantsOf(pid: number): number[] {
  const found: number[] = []
  const queue = [pid]
  while (queue.length > 0) {
    const p = queue.shift()!
    let tids: string[]
    try {
      tids = fs.readdirSync(`/proc/${p}/task`)
    } catch {
      continue
    }
    for (const tid of tids) {
      let children: string
      try {
        children = fs.readFileSync(`/proc/${p}/task/${tid}/children`, 'utf8')
      } catch {
        continue
      }
      for (const child of children.split(' ').filter(Boolean).map(Number)) {
        if (!found.includes(child)) {
          found.push(child)
          queue.push(child)
        }
      }
    }
  }
  return found
}

/** Whether process `pid` has `file` open (its path as /proc/PID/fd shows it). */
export function holds(pid: number, file: string): boolean {
  let fds: string[]
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`)
  } catch {
    return false
  }
  return fds.some((fd) => {
    try {
      return fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === file
    } catch {
      return false
    }
  })
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

export interface WaitOptions {
  /** Give up after this long. */
  limitMs: number
  /** Called once if the wait lasts longer than `noteAfterMs`. */
  note?: () => void
  noteAfterMs?: number
}

/**
 * Polls until `done()` holds or the limit passes; returns whether it held. Short steps first
 * (a killed task is usually dead within a millisecond), then at most every 20 ms.
 */
export async function waitUntil(done: () => boolean, opts: WaitOptions): Promise<boolean> {
  const start = Date.now()
  let step = 1
  let noted = false
  while (!done()) {
    const waited = Date.now() - start
    if (waited >= opts.limitMs) return false
    if (!noted && opts.note && waited >= (opts.noteAfterMs ?? 1000)) {
      noted = true
      opts.note()
    }
    await sleep(step)
    step = Math.min(step * 2, 20)
  }
  return true
}
