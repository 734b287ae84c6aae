// Transparent huge pages for restored memory (issue 16). On this machine the first write into
// a fresh 4 KiB page is what a restore pays for (about 0.5 GB/s), and into a 2 MiB page about
// ten times less (../shared/notes/restore-pitfalls.md, section 8). A private anonymous
// mapping that did not refuse huge pages (no VmFlags nh, the process not PR_SET_THP_DISABLE'd,
// THP not "never") gets them where a whole aligned 2 MiB of it is stored: one 4 KiB page of
// each such block is faulted in, then MADV_COLLAPSE turns the block into one huge page before
// the task reads its pages into it. MADV_COLLAPSE leaves the mapping's flags as saved (no
// VmFlags hg appears, unlike MADV_HUGEPAGE) and uses no more memory than the stored pages,
// since only fully stored blocks are collapsed. A block the kernel cannot collapse (no free
// huge page) stays in 4 KiB pages: the restore is then only slower, never different.

import * as fs from 'fs'
import type { ProcessState, Vma } from '../model'
import type { Call } from './engine'
import { SYS } from './syscalls'

const MADV_POPULATE_WRITE = 23, MADV_COLLAPSE = 25
const PAGE = 4096n
/** Bytes per MADV_COLLAPSE call: each injected call must end well within the tracer's limit. */
const COLLAPSE_PIECE = 64n << 20n

/** The PMD huge page size when transparent huge pages may be used at all here, else undefined. */
function hugePageSize(): bigint | undefined {
  try {
    const mode = fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8')
    if (mode.includes('[never]')) return undefined
    return BigInt(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/hpage_pmd_size', 'utf8').trim())
  } catch {
    return undefined // a kernel without THP
  }
}

/** Private anonymous memory whose saved flags did not refuse huge pages and do not already ask for them (hg: populate makes them). */
function mayCollapse(v: Vma): boolean {
  const flags = v.vmFlags.split(' ')
  return (v.kind === 'anonymous' || v.kind === 'heap') && !flags.includes('nh') && !flags.includes('hg') && !flags.includes('dp')
}

/** The aligned ranges of `vmas` made only of whole stored huge-page blocks of `size` bytes. */
export function hugePageRanges(vmas: Vma[], proc: ProcessState, size: bigint | undefined): Array<{ start: bigint; end: bigint }> {
  if (size === undefined || proc.thpDisable !== 0) return []
  const ranges: Array<{ start: bigint; end: bigint }> = []
  for (const v of vmas.filter(mayCollapse)) {
    for (const run of v.stored) {
      const start = ((v.start + run.offset + size - 1n) / size) * size
      const end = ((v.start + run.offset + run.length) / size) * size
      if (end > start) ranges.push({ start, end })
    }
  }
  return ranges
}

/**
 * The calls that give the stored blocks of `vmas` huge pages: a 4 KiB page of each block
 * faulted in (a block with no page at all cannot be collapsed), then MADV_COLLAPSE in pieces.
 * Collapse may fail (no huge page free): those calls are marked mayFail.
 */
export function hugePageCalls(vmas: Vma[], proc: ProcessState, size = hugePageSize()): { touch: Call[]; collapse: Call[] } {
  const ranges = hugePageRanges(vmas, proc, size)
  const touch: Call[] = []
  const collapse: Call[] = []
  for (const { start, end } of ranges) {
    for (let block = start; block < end; block += size!) {
      touch.push({ nr: SYS.madvise, args: [block, PAGE, BigInt(MADV_POPULATE_WRITE)], what: `fault in ${block.toString(16)} for its huge page` })
    }
    for (let at = start; at < end; at += COLLAPSE_PIECE) {
      const n = end - at < COLLAPSE_PIECE ? end - at : COLLAPSE_PIECE
      collapse.push({ nr: SYS.madvise, args: [at, n, BigInt(MADV_COLLAPSE)], what: `collapse ${at.toString(16)}-${(at + n).toString(16)} into huge pages`, mayFail: true })
    }
  }
  return { touch, collapse }
}
