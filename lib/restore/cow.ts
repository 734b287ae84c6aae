// Copy-on-write pages a child of a restored tree shares with its parent again (issue 17;
// README "Restore of a tree", "Copy-on-write memory"). A private anonymous mapping the child
// has at the same place as its parent (same range, same kind) is mapped and filled in the
// parent's stub before the parent forks the child (addon/stub/tree.c, 'M'); the child is
// forked without exec and keeps it, and passes it on to its own children the same way. The
// checkpoint records a child's pages that were its parent's physical pages as inherited runs
// (lib/task/memory.ts): those are kept from the fork where the process that premapped the
// area stores them, never compared or written; the others are written from whoever stores
// them, checked against that one's checksums. The child then writes its stored pages that
// differ from what it holds and drops the pages it has no content for (zero again, as saved).
// Its own checksums are checked over its stored pages afterwards: the child never ends up with
// anything but its own saved content, and inherited content only where the tree's validator
// found the same content in its parent (validate.ts).

import * as fs from 'fs'
import { CRC_PIECE, crc32c, damaged } from '../checksum'
import { CkptError } from '../errors'
import type { StoredRun, Vma } from '../model'
import { native } from '../native'
import { sameInheritableArea, vmaName } from '../task/memory'
import type { SavedCheckpoint } from './load'

const PAGE = 4096
/** Bytes compared and written per step. */
const COMPARE_PIECE = 8 << 20
/** Most areas in one 'M' command (addon/stub/tree.c, PREMAP_MAX). */
const AREAS_PER_CHUNK = 400

/** Whether a mapping has any content to pass on: stored or itself inherited. */
const hasContent = (v: Vma): boolean => v.stored.length > 0 || (v.inherited ?? []).length > 0

/**
 * For each child of the tree: its mappings that match one of its parent's (same start, end
 * and kind, both private anonymous and inheritable), with the parent's, where the parent has
 * content there (stored, or inherited from its own parent) and does not refuse huge pages by
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
      if (!p || !sameInheritableArea(c, p) || !hasContent(p)) continue
      pairs.push({ child: c, parent: p })
    }
    if (pairs.length > 0) result.set(t.pid, pairs)
  }
  return result
}

/** A run of a mapping's inherited pages resolved to the process that stores them. */
export interface InheritedPiece {
  /** Address in the task. */
  start: bigint
  length: bigint
  /** The process storing the content, and its mapping: bytes at `at` of its pages. */
  owner: number
  ownerVma: Vma
  at: number
}

/**
 * Every inherited run of every process, resolved along its ancestors to the process that
 * stores the pages (a grandchild's page its parent inherited too is its grandparent's).
 * Keyed by the process's own mapping. The tree was validated: each inherited run lies in
 * the parent's same area where the parent has content (validate.ts, validateInherited).
 */
export function resolveInherited(tasks: SavedCheckpoint[]): Map<Vma, InheritedPiece[]> {
  const byPid = new Map<number, SavedCheckpoint>(tasks.map((t) => [t.pid, t]))
  const result = new Map<Vma, InheritedPiece[]>()
  const vmaAt = new Map<number, Map<bigint, Vma>>(tasks.map((t) => [t.pid, new Map(t.vmas.map((v) => [v.start, v]))]))
  const resolve = (pid: number, v: Vma, start: bigint, length: bigint, into: InheritedPiece[]): void => {
    const parent = byPid.get(byPid.get(pid)!.process.ppid)
    const p = parent && vmaAt.get(parent.pid)!.get(v.start)
    if (!parent || !p) throw new CkptError(`task-${pid}/memory/vmas/${vmaName(v)}/inherited_runs: its parent has no such mapping`, 'EINVAL')
    for (const part of ownedParts(p, start - p.start, length)) {
      if (part.stored) into.push({ start: p.start + part.offset, length: part.length, owner: parent.pid, ownerVma: p, at: part.at })
      else resolve(parent.pid, p, p.start + part.offset, part.length, into)
    }
  }
  for (const t of tasks) {
    for (const v of t.vmas) {
      if (!v.inherited || v.inherited.length === 0) continue
      const pieces: InheritedPiece[] = []
      for (const run of v.inherited) resolve(t.pid, v, v.start + run.offset, run.length, pieces)
      result.set(v, pieces)
    }
  }
  return result
}

/** A mapping's stored and inherited runs in address order, each stored one with its place in the pages; made once per mapping. */
type ContentRun = StoredRun & { stored: boolean; at: number }
const contentRuns = new WeakMap<Vma, ContentRun[]>()

function contentOf(v: Vma): ContentRun[] {
  let runs = contentRuns.get(v)
  if (!runs) {
    runs = []
    let at = 0
    for (const r of v.stored) {
      runs.push({ ...r, stored: true, at })
      at += Number(r.length)
    }
    for (const r of v.inherited ?? []) runs.push({ ...r, stored: false, at: 0 })
    runs.sort((a, b) => (a.offset < b.offset ? -1 : 1))
    contentRuns.set(v, runs)
  }
  return runs
}

/**
 * Splits [offset, offset + length) of `v` into its stored parts (with their place in its
 * pages) and its inherited parts; refuses a part that is neither (validate.ts refuses first).
 */
function ownedParts(v: Vma, offset: bigint, length: bigint): Array<{ offset: bigint; length: bigint; stored: boolean; at: number }> {
  const runs = contentOf(v)
  // The first run ending after `offset` (runs are apart and ascending).
  let lo = 0, hi = runs.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (runs[mid].offset + runs[mid].length <= offset) lo = mid + 1
    else hi = mid
  }
  const parts: Array<{ offset: bigint; length: bigint; stored: boolean; at: number }> = []
  let pos = offset
  const end = offset + length
  for (let i = lo; i < runs.length && pos < end; i++) {
    const r = runs[i]
    if (r.offset > pos) break
    const to = r.offset + r.length < end ? r.offset + r.length : end
    parts.push({ offset: pos, length: to - pos, stored: r.stored, at: r.at + Number(pos - r.offset) })
    pos = to
  }
  if (pos < end) throw new CkptError(`restore: ${vmaName(v)}: no content at offset 0x${pos.toString(16)} for a child that inherits it`, 'EINVAL')
  return parts
}

/**
 * Writes inherited pieces into task `pid` from the pages of the processes storing them, each
 * 1 MiB piece of those pages checked against its recorded CRC32C before any byte of it is used.
 */
export async function writeInheritedPieces(pid: number, pieces: InheritedPiece[]): Promise<number> {
  let written = 0
  let cached: { source: Vma; piece: number; data: Buffer } | undefined
  const pieceOf = async (owner: number, v: Vma, piece: number): Promise<Buffer> => {
    if (cached && cached.source === v && cached.piece === piece) return cached.data
    const where = `task-${owner}/memory/vmas/${vmaName(v)}/pages (inherited by task-${pid})`
    const recorded = v.pages.crc32c
    if (!recorded) throw new CkptError(`${where}: no checksums were loaded with it`, 'EINVAL')
    const from = piece * CRC_PIECE
    const data = await v.pages.read(from, Math.min(CRC_PIECE, v.pages.size - from))
    const found = crc32c(data)
    if (found !== recorded[piece]) throw damaged(where, piece, v.pages.size, recorded[piece], found)
    cached = { source: v, piece, data }
    return data
  }
  for (const p of pieces) {
    const length = Number(p.length)
    for (let done = 0; done < length;) {
      const at = p.at + done
      const piece = Math.floor(at / CRC_PIECE)
      const data = await pieceOf(p.owner, p.ownerVma, piece)
      const from = at - piece * CRC_PIECE
      const n = Math.min(length - done, data.length - from)
      if (n <= 0) throw new CkptError(`task-${pid}: the inherited pages at 0x${p.start.toString(16)}: their owner's pages end early`, 'EINVAL')
      await native.writeMemory(pid, p.start + BigInt(done), data.subarray(from, from + n))
      done += n
    }
    written += length / PAGE
  }
  return written
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
    // Stored pages the stub can read from one file (a saved tree's pages, an image's).
    if (v.stored.length === 0 || !v.pages.extents) continue
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

/** The parts of `v` with no content (neither stored nor inherited): [start, length) in the task, to be dropped (zero again). */
export function unstoredRanges(v: Vma): Array<[bigint, bigint]> {
  const gaps: Array<[bigint, bigint]> = []
  let at = 0n
  const runs = [...v.stored, ...(v.inherited ?? [])].sort((a, b) => (a.offset < b.offset ? -1 : 1))
  for (const run of runs) {
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
