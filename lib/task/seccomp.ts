// Seccomp filters of a task (SECCOMP_MODE_FILTER): capture (each thread's chain through
// ptrace, stored once per filter), the task-PID/seccomp/ entries that show them, the loader of
// a saved copy, and the checks a filter from a saved checkpoint is held to before a restore
// installs it (a tree is written by whoever stores it: a filter must be one a task could have).
//
//   task-PID/seccomp/filters/N/insns     the program, struct sock_filter[] (8 bytes each)
//                               flags     SECCOMP_FILTER_FLAG_* it was installed with (LOG only)
//                               prev      the filter before it in its chain (0: the first)
//   task-PID/seccomp/threads/TID/filter  the newest filter of that thread's chain

import { CkptError, errnoOf, messageOf } from '../errors'
import type { SavedDir } from '../files/saved'
import type { ProcessState, SeccompFilter, SeccompThread, TaskImage } from '../model'
import { native } from '../native'
import { checkedBytes } from '../tree/checked'
import { each, sub, type TableEntry } from '../tree/node'
import { decimal, field, hexNumber, readCheckedBytes, readValue } from './fields'

/** struct sock_filter: u16 code, u8 jt, u8 jf, u32 k. */
export const SOCK_FILTER_SIZE = 8
/** The most instructions one filter may have (BPF_MAXINSNS). */
export const BPF_MAXINSNS = 4096
/** The kernel's MAX_INSNS_PER_PATH: a chain's instructions, plus 4 per filter, at most this. */
export const MAX_INSNS_PER_PATH = 32768
const PATH_COST_PER_FILTER = 4
/** The one flag the kernel keeps about a filter and PTRACE_SECCOMP_GET_METADATA reports. */
export const SECCOMP_FILTER_FLAG_LOG = 2

// ---------------------------------------------------------------------------------------
// Capture

/**
 * The filter chains of the frozen threads `tids` of task `pid`, each filter stored once: the
 * chains of threads that share filters (installed with TSYNC, or inherited across clone) name
 * the same numbers; a thread with a chain of its own gets its own filters.
 */
export async function captureSeccomp(pid: number, tids: readonly number[]): Promise<Pick<ProcessState, 'seccompFilters' | 'seccompThreads'>> {
  const chains = await Promise.all(tids.map(async (tid) => {
    let chain: Array<{ flags: number; insns: Buffer }>
    try {
      chain = await native.getSeccompFilters(tid)
    } catch (err) {
      if ((err as { code?: string }).code === 'ESRCH') return { tid, chain: [] } // an exited thread (a zombie leader)
      throw new CkptError(`task-${pid}/threads/${tid}: cannot read its seccomp filters: ${messageOf(err)}`, errnoOf(err))
    }
    // No filter can also mean strict mode, which belongs to a thread (threads/TID/seccomp_strict).
    return { tid, chain }
  }))
  return seccompTable(chains)
}

/** Numbers the filters of `chains` (each oldest first), one number per distinct filter after the same predecessor. */
export function seccompTable(chains: ReadonlyArray<{ tid: number; chain: ReadonlyArray<{ flags: number; insns: Buffer }> }>): Pick<ProcessState, 'seccompFilters' | 'seccompThreads'> {
  const filters: SeccompFilter[] = []
  const threads: SeccompThread[] = []
  const numbers = new Map<string, number>()
  for (const { tid, chain } of chains) {
    let prev = 0
    for (const { flags, insns } of chain) {
      const key = `${prev} ${flags} ${insns.toString('base64')}`
      let n = numbers.get(key)
      if (n === undefined) {
        filters.push({ prev, flags, insns })
        n = filters.length
        numbers.set(key, n)
      }
      prev = n
    }
    if (prev !== 0) threads.push({ tid, filter: prev })
  }
  return { seccompFilters: filters, seccompThreads: threads.sort((a, b) => a.tid - b.tid) }
}

/** A thread's chain, oldest first (the order it is installed in). */
export function chainOf(filters: readonly SeccompFilter[], newest: number): SeccompFilter[] {
  const chain: SeccompFilter[] = []
  for (let n = newest; n !== 0; n = filters[n - 1].prev) chain.unshift(filters[n - 1])
  return chain
}

// ---------------------------------------------------------------------------------------
// Tree: task-PID/seccomp/

// Private: /proc shows everyone only the mode and the number of filters (status), not the programs.
const filterEntries: TableEntry<SeccompFilter>[] = [
  ...checkedBytes('insns', (f: SeccompFilter) => f.insns),
  field('flags', hexNumber(0xffffffff), (f) => f.flags),
  field('prev', decimal(0, 2 ** 31 - 1), (f) => f.prev),
]

const seccompEntries: TableEntry<ProcessState>[] = [
  each('filters', async (p) => new Map(p.seccompFilters.map((f, i) => [String(i + 1), f])), filterEntries),
  each('threads', async (p) => new Map(p.seccompThreads.map((t) => [String(t.tid), t])), [field('filter', decimal(1, 2 ** 31 - 1), (t: SeccompThread) => t.filter)]),
]

/** task-PID/seccomp/; nothing is captured until it is read. */
export function seccompEntry(): TableEntry<TaskImage> {
  return sub('seccomp', (t: TaskImage) => t.process(), seccompEntries)
}

// ---------------------------------------------------------------------------------------
// Loading a saved copy

/** Reads task-PID/seccomp/ back (a tree saved before filters were kept has none: no filters). */
export async function loadSeccomp(task: SavedDir): Promise<Pick<ProcessState, 'seccompFilters' | 'seccompThreads'>> {
  if (!task.has('seccomp')) return { seccompFilters: [], seccompThreads: [] }
  const dir = task.dir('seccomp')
  const filtersDir = dir.dir('filters')
  const numbers = filtersDir.decimalNames(1, 'not a filter number (decimal, from 1)')
  const seccompFilters: SeccompFilter[] = []
  for (const [i, n] of numbers.entries()) {
    if (n !== i + 1) throw filtersDir.fail(String(i + 1), `missing (filters are numbered 1 to ${numbers.length})`)
    const one = filtersDir.numbered(n)
    seccompFilters.push({
      insns: await readCheckedBytes(one, 'insns', BPF_MAXINSNS * SOCK_FILTER_SIZE),
      flags: readValue(one, 'flags', hexNumber(0xffffffff)),
      prev: readValue(one, 'prev', decimal(0, 2 ** 31 - 1)),
    })
    one.finish()
  }
  const threadsDir = dir.dir('threads')
  const seccompThreads: SeccompThread[] = threadsDir.decimalNames(1, 'not a thread ID (decimal)').map((tid) => {
    const one = threadsDir.numbered(tid)
    const filter = readValue(one, 'filter', decimal(1, 2 ** 31 - 1))
    one.finish()
    return { tid, filter }
  })
  dir.finish()
  return { seccompFilters, seccompThreads }
}

// ---------------------------------------------------------------------------------------
// What a restore installs

/**
 * Checks the filters of a saved process against what the kernel would take from the task
 * itself, naming the offending entry: only the LOG flag (a flag the kernel does not keep
 * cannot come from a checkpoint: NEW_LISTENER would hand the restore a listener fd nobody
 * reads, TSYNC would reach other threads, SPEC_ALLOW would lift a mitigation), a whole program
 * of 1 to BPF_MAXINSNS instructions, chains that lead back to their first filter and fit in
 * MAX_INSNS_PER_PATH, a thread for each chain, and no filter no thread uses; no chain for a
 * thread in strict mode (`strict`: their TIDs), and the main thread's mode as seccomp_mode says. The program
 * itself is the kernel's to check (it refuses a bad one with EINVAL before the task runs).
 */
export function validateSeccomp(p: Pick<ProcessState, 'pid' | 'seccompMode' | 'seccompFilters' | 'seccompThreads'>, tids: readonly number[], strict: readonly number[] = []): void {
  const where = `task-${p.pid}/seccomp`
  const fail = (name: string, why: string) => new CkptError(`${where}/${name}: ${why}`, 'EINVAL')
  const used = new Set<number>()
  p.seccompFilters.forEach((f, i) => {
    const n = i + 1
    if ((f.flags & ~SECCOMP_FILTER_FLAG_LOG) !== 0) throw fail(`filters/${n}/flags`, `0x${f.flags.toString(16)}: only SECCOMP_FILTER_FLAG_LOG (0x2) is kept by the kernel and restored`)
    if (f.insns.length === 0 || f.insns.length % SOCK_FILTER_SIZE !== 0 || f.insns.length > BPF_MAXINSNS * SOCK_FILTER_SIZE) {
      throw fail(`filters/${n}/insns`, `${f.insns.length} bytes: a filter is 1 to ${BPF_MAXINSNS} instructions of ${SOCK_FILTER_SIZE} bytes`)
    }
    if (f.prev >= n) throw fail(`filters/${n}/prev`, `${f.prev}: a filter follows one installed before it (a lower number, or 0)`)
    if (f.prev !== 0) used.add(f.prev)
  })
  const seen = new Set<number>()
  for (const t of p.seccompThreads) {
    if (seen.has(t.tid)) throw fail(`threads/${t.tid}`, 'listed twice')
    seen.add(t.tid)
    if (!tids.includes(t.tid)) throw fail(`threads/${t.tid}`, 'not a thread of the task')
    if (t.filter < 1 || t.filter > p.seccompFilters.length) throw fail(`threads/${t.tid}/filter`, `${t.filter}: there are filters 1 to ${p.seccompFilters.length}`)
    used.add(t.filter)
    let insns = 0
    for (const f of chainOf(p.seccompFilters, t.filter)) insns += f.insns.length / SOCK_FILTER_SIZE + PATH_COST_PER_FILTER
    if (insns > MAX_INSNS_PER_PATH) throw fail(`threads/${t.tid}/filter`, `its chain costs ${insns} instructions, the kernel allows ${MAX_INSNS_PER_PATH} (MAX_INSNS_PER_PATH)`)
  }
  p.seccompFilters.forEach((_, i) => {
    if (!used.has(i + 1)) throw fail(`filters/${i + 1}`, 'in no thread\'s chain')
  })
  // seccomp_mode is the main thread's (another thread may have filters when it has none).
  if (p.seccompMode === 2 && !p.seccompThreads.some((t) => t.tid === p.pid)) throw fail(`threads/${p.pid}`, 'missing, but seccomp_mode is 2 (filters)')
  // Strict mode is a thread's other mode: the kernel lets a thread into one of the two only.
  for (const tid of strict) {
    if (p.seccompThreads.some((t) => t.tid === tid)) throw fail(`threads/${tid}`, `the thread is in strict mode (task-${p.pid}/threads/${tid}/seccomp_strict), which takes no filters`)
  }
  if (tids.includes(p.pid) && (p.seccompMode === 1) !== strict.includes(p.pid)) {
    throw new CkptError(`task-${p.pid}/seccomp_mode: ${p.seccompMode}, but task-${p.pid}/threads/${p.pid}/seccomp_strict is ${strict.includes(p.pid) ? 1 : 0}: both are the main thread's`, 'EINVAL')
  }
}
