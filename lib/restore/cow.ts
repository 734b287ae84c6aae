// Copy-on-write pages a child of a restored tree shares with its parent again (issue 17;
// README "Restore of a tree", "Copy-on-write memory"). A private anonymous mapping the child
// has at the same place as its parent (same range, same kind) is mapped and filled in the
// parent's stub before the parent forks the child (addon/stub/tree.c, 'M'); the child is
// forked without exec and keeps it. The child then keeps each page whose saved content is what
// it holds (the parent's), writes only the pages that differ, and drops the pages it has no
// saved content for (zero again, as saved). Its own checksums are checked over the whole
// mapping afterwards: the child never ends up with anything but its own saved content.

import * as fs from 'fs'
import { CkptError } from '../errors'
import type { Vma } from '../model'
import { native } from '../native'
import type { SavedCheckpoint } from './load'

const PAGE = 4096
/** The kinds shared this way: private anonymous memory (brk heap, main stack, mmap). */
const SHAREABLE_KINDS = new Set(['anonymous', 'heap', 'stack'])
/**
 * VmFlags that rule a mapping out: dontfork (dc: a fork does not pass it on), wipeonfork
 * (wf), droppable (dp), locked (lo, lf: mlock faults every page writable, which copies it).
 */
const EXCLUDING_FLAGS = new Set(['dc', 'wf', 'dp', 'lo', 'lf'])
/** Bytes compared and written per step. */
const COMPARE_PIECE = 8 << 20
/** Most areas in one 'M' command (addon/stub/tree.c, PREMAP_MAX). */
const AREAS_PER_CHUNK = 400

function shareable(v: Vma): boolean {
  return SHAREABLE_KINDS.has(v.kind) && v.perms[3] === 'p' && !v.vmFlags.split(' ').some((f) => EXCLUDING_FLAGS.has(f))
}

/**
 * For each child of the tree: its mappings that match one of its parent's (same start, end
 * and kind, both private anonymous and shareable), with the parent's. Only mappings whose
 * parent side has stored pages (else there is nothing to share) kept in a file that the stub
 * can read (a saved tree's pages, an image), in a parent that does not refuse huge pages by
 * prctl (that is set after the premapped pages are in).
 */
export function inheritedMappings(tasks: SavedCheckpoint[]): Map<number, Array<{ child: Vma; parent: Vma }>> {
  const byPid = new Map<number, SavedCheckpoint>(tasks.map((t) => [t.pid, t]))
  const result = new Map<number, Array<{ child: Vma; parent: Vma }>>()
  for (const t of tasks.slice(1)) {
    const parent = byPid.get(t.process.ppid)
    if (!parent || parent.process.thpDisable !== 0) continue
    const parentAt = new Map(parent.vmas.map((v) => [v.start, v]))
    const pairs: Array<{ child: Vma; parent: Vma }> = []
    for (const c of t.vmas) {
      const p = parentAt.get(c.start)
      if (!p || p.end !== c.end || p.kind !== c.kind || !shareable(c) || !shareable(p)) continue
      if (p.stored.length === 0 || !p.pages.extents) continue
      pairs.push({ child: c, parent: p })
    }
    if (pairs.length > 0) result.set(t.pid, pairs)
  }
  return result
}

/** How the stub maps a premapped area: protection and mmap flags, as the rebuild would. */
export interface PremapMode {
  prot: number
  flags: number
  advice: number
}

/**
 * The 'M' command bodies (addon/stub/tree.c) that premap `areas` in their task: each area's
 * stored pages are read from the one file holding them. An area whose pages are not all in one
 * file is left out (returned in `skipped`; its children map it themselves).
 */
export async function premapChunks(areas: Vma[], modeOf: (v: Vma) => PremapMode): Promise<{ chunks: Buffer[]; planned: Vma[] }> {
  const planned: Vma[] = []
  const bodies: Buffer[] = []
  for (const v of areas) {
    let file: string | undefined
    const extents: Buffer[] = []
    let sourceOffset = 0
    let oneFile = true
    for (const run of v.stored) {
      let addr = v.start + run.offset
      for (const e of await v.pages.extents!(sourceOffset, Number(run.length))) {
        if (file !== undefined && e.file !== file) oneFile = false
        file = e.file
        const x = Buffer.alloc(24)
        x.writeBigUInt64LE(addr, 0)
        x.writeBigUInt64LE(BigInt(e.at), 8)
        x.writeBigUInt64LE(BigInt(e.length), 16)
        extents.push(x)
        addr += BigInt(e.length)
      }
      if (addr !== v.start + run.offset + run.length) throw new CkptError(`restore: ${v.start.toString(16)}-${v.end.toString(16)}: the page data is shorter than its stored runs`)
      sourceOffset += Number(run.length)
    }
    if (!oneFile || file === undefined) continue
    const path = Buffer.from(file)
    const mode = modeOf(v)
    const head = Buffer.alloc(36)
    head.writeBigUInt64LE(v.start, 0)
    head.writeBigUInt64LE(v.end - v.start, 8)
    ;[mode.prot, mode.flags, mode.advice, path.length, extents.length].forEach((w, i) => head.writeUInt32LE(w, 16 + i * 4))
    bodies.push(Buffer.concat([head, path, ...extents]))
    planned.push(v)
  }
  const chunks: Buffer[] = []
  for (let at = 0; at < bodies.length; at += AREAS_PER_CHUNK) {
    const part = bodies.slice(at, at + AREAS_PER_CHUNK)
    const count = Buffer.alloc(4)
    count.writeUInt32LE(part.length)
    chunks.push(Buffer.concat([count, ...part]))
  }
  return { chunks, planned }
}

/** The parts of `v` with no saved content: [start, length) in the task, to be dropped (zero again). */
export function unstoredRanges(v: Vma): Array<[bigint, bigint]> {
  const gaps: Array<[bigint, bigint]> = []
  let at = 0n
  for (const run of v.stored) {
    if (run.offset > at) gaps.push([v.start + at, run.offset - at])
    at = run.offset + run.length
  }
  if (v.start + at < v.end) gaps.push([v.start + at, v.end - v.start - at])
  return gaps
}

/**
 * Writes the stored pages of `v` (a mapping holding its parent's pages, by fork) that differ
 * from what the task holds; the others stay the parent's. Returns the pages written and kept.
 */
export async function writeDifferingPages(pid: number, v: Vma): Promise<{ written: number; kept: number }> {
  const mem = fs.openSync(`/proc/${pid}/mem`, 'r')
  try {
    return await writeDiffering(pid, mem, v)
  } finally {
    fs.closeSync(mem)
  }
}

function readThroughProcMem(mem: number, addr: bigint, length: number): Buffer {
  const data = Buffer.alloc(length)
  for (let done = 0; done < length;) {
    const n = fs.readSync(mem, data, done, length - done, Number(addr) + done)
    if (n <= 0) throw new CkptError(`restore: read 0x${(addr + BigInt(done)).toString(16)} of the task through /proc/PID/mem: end of its memory`)
    done += n
  }
  return data
}

async function writeDiffering(pid: number, mem: number, v: Vma): Promise<{ written: number; kept: number }> {
  let written = 0, kept = 0, sourceOffset = 0
  for (const run of v.stored) {
    const length = Number(run.length)
    for (let done = 0; done < length; done += COMPARE_PIECE) {
      const n = Math.min(COMPARE_PIECE, length - done)
      const addr = v.start + run.offset + BigInt(done)
      const saved = await v.pages.read(sourceOffset + done, n)
      if (saved.length !== n) throw new CkptError(`restore: ${v.start.toString(16)}-${v.end.toString(16)}: page data ended early`)
      // Through /proc/PID/mem: process_vm_readv pins what it reads, which unshares it (verify.ts).
      const held = readThroughProcMem(mem, addr, n)
      let differFrom = -1
      const flush = async (end: number): Promise<void> => {
        if (differFrom < 0) return
        await native.writeMemory(pid, addr + BigInt(differFrom), saved.subarray(differFrom, end))
        written += (end - differFrom) / PAGE
        differFrom = -1
      }
      for (let p = 0; p < n; p += PAGE) {
        if (saved.compare(held, p, p + PAGE, p, p + PAGE) === 0) {
          kept++
          await flush(p)
        } else if (differFrom < 0) differFrom = p
      }
      await flush(n)
    }
    sourceOffset += length
  }
  return { written, kept }
}
