// Installing a restored task's seccomp filters (the plan: lib/task/seccomp.ts keeps them and
// checks them first). The filters every thread's chain starts with are installed once, from
// the first thread restored, with SECCOMP_FILTER_FLAG_TSYNC, so the threads share them again
// as in the kernel before the checkpoint: a later TSYNC install by the task itself needs every
// other thread's filter to be an ancestor of its own (zdtm seccomp_filter_tsync). The rest of
// each chain is installed in its own thread. Threads that shared filters beyond that common
// start get equal copies (TSYNC reaches every thread, not some).

import { CkptError } from '../errors'
import type { ProcessState, SeccompFilter } from '../model'
import { chainOf, SOCK_FILTER_SIZE } from '../task/seccomp'
import type { Call, Scratch } from './engine'
import { SYS } from './syscalls'

const SECCOMP_SET_MODE_FILTER = 1n
const SECCOMP_FILTER_FLAG_TSYNC = 1

/** Each thread's chain, oldest first (empty: no filters). */
function chains(proc: ProcessState, tids: readonly number[]): SeccompFilter[][] {
  return tids.map((tid) => chainOf(proc.seccompFilters, proc.seccompThreads.find((t) => t.tid === tid)?.filter ?? 0))
}

/** How many filters every thread's chain starts with (the same filters: they are stored once). */
function sharedStart(all: SeccompFilter[][]): number {
  let n = 0
  while (all.length > 0 && n < all[0].length && all.every((c) => c[n] === all[0][n])) n++
  return n
}

export interface SeccompInstall {
  calls: Call[]
  /** Where, in the scratch area, the absolute address of a program goes (inside its struct sock_fprog). */
  fixups: Array<{ at: bigint; offset: bigint }>
  /** Throws unless every install succeeded: a TSYNC install that cannot sync answers a TID, not an error. */
  check: (results: bigint[]) => void
}

/**
 * seccomp(SECCOMP_SET_MODE_FILTER) calls for thread `tid`: in the first thread restored
 * (`first`), the shared start with TSYNC, then its own rest; in any other, its rest only.
 * Flags are the saved ones (LOG at most: validateSeccomp).
 */
export function seccompCalls(proc: ProcessState, tids: readonly number[], tid: number, first: boolean, scratch: Scratch): SeccompInstall {
  const all = chains(proc, tids)
  const shared = sharedStart(all)
  const chain = all[tids.indexOf(tid)]
  const calls: Call[] = []
  const fixups: SeccompInstall['fixups'] = []
  chain.forEach((filter, i) => {
    if (i < shared && !first) return // already there, by the first thread's TSYNC
    const sync = i < shared && tids.length > 1
    const insns = scratch.put(filter.insns)
    const fprog = Buffer.alloc(16) // struct sock_fprog {unsigned short len; struct sock_filter *filter}
    fprog.writeUInt16LE(filter.insns.length / SOCK_FILTER_SIZE, 0)
    const at = scratch.put(fprog)
    fixups.push({ at: at + 8n, offset: insns })
    const flags = filter.flags | (sync ? SECCOMP_FILTER_FLAG_TSYNC : 0)
    const what = `install seccomp filter ${i + 1} of ${chain.length} (task-${proc.pid}/seccomp/filters/${proc.seccompFilters.indexOf(filter) + 1})${sync ? ' in every thread (TSYNC)' : ''}`
    calls.push({ nr: SYS.seccomp, args: [SECCOMP_SET_MODE_FILTER, BigInt(flags), at], scratchArgs: 0b100, what })
  })
  return {
    calls,
    fixups,
    check: (results) => {
      results.forEach((r, i) => {
        if (r > 0n) throw new CkptError(`restore: ${calls[i].what} in thread ${tid}: thread ${r} could not take it`)
      })
    },
  }
}
