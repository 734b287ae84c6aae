// The last step of writing a restored task's memory: every stored page is read back from the
// task (process_vm_readv on the addon's pool) and its CRC32C compared with the one the saved
// tree or image recorded, before the task runs; piece by piece while the task still reads
// the next pieces in (PageCheck), so the check costs little more than the reads. What is
// checked is what landed in memory, however it got there (the task's own pread64 from a file
// that could change meanwhile, or our process_vm_writev), so no window is left between the
// check and the use.

import { checkSourceBytes, CRC_PIECE, damaged } from '../checksum'
import { CkptError } from '../errors'
import type { Vma } from '../model'
import { native } from '../native'
import { rangesOf, vmaName } from '../task/memory'

/** The mappings the kernel makes: their stored pages are never written, only checked as saved. */
const SPECIAL = new Set(['[vvar]', '[vvar_vclock]', '[vdso]'])
/** Bytes per request to the pool (whole checksum pieces), so big mappings use both cores. */
const GROUP = 64 * CRC_PIECE
/** Requests on the pool at once: this machine has two cores. */
const PARALLEL = 2

interface Group {
  v: Vma
  where: string
  /** Index of the group's first piece in the mapping's checksums. */
  first: number
  /** Offset in the mapping's stored pages just past the group. */
  end: number
  ranges: Array<{ start: bigint; length: bigint }>
}

/**
 * Checks the restored pages while they are still being written: each group of pieces is
 * read back as soon as the task has read all of its bytes in (written()), on the pool, while
 * the task reads the next ones; finish() checks what is left and settles when every stored
 * page was compared (the task must not run before). Each byte is still read back after it
 * landed, so nothing is checked before it is final.
 */
export class PageCheck {
  private readonly groups = new Map<Vma, Group[]>()
  private readonly ready: Group[] = []
  private running = 0
  private failure: unknown
  private idle: (() => void) | undefined

  /** `shared`: mappings whose pages may be shared copy-on-write with another process, read so that they stay shared (crc32cOfMemory). */
  constructor(private readonly pid: number, vmas: Vma[], private readonly shared: ReadonlySet<Vma> = new Set()) {
    for (const v of vmas) {
      if (v.pages.size === 0 || SPECIAL.has(v.path)) continue
      const where = `task-${pid}/memory/vmas/${vmaName(v)}/pages`
      if (!v.pages.crc32c) throw new CkptError(`${where}: no checksums were loaded with it`, 'EINVAL')
      const runs = v.stored.map((r) => ({ start: v.start + r.offset, length: r.length }))
      const list: Group[] = []
      for (let at = 0; at < v.pages.size; at += GROUP) {
        const length = Math.min(GROUP, v.pages.size - at)
        list.push({ v, where, first: at / CRC_PIECE, end: at + length, ranges: rangesOf(runs, at, length) })
      }
      this.groups.set(v, list)
    }
  }

  /** The first `upTo` bytes of `v`'s stored pages are in the task's memory for good. */
  written(v: Vma, upTo: number): void {
    const list = this.groups.get(v)
    if (!list) return
    while (list.length > 0 && list[0].end <= upTo) this.ready.push(list.shift()!)
    this.pump()
  }

  /** Every page is written: checks the rest; refuses (naming the mapping and the bytes) when any restored page differs from its saved checksum. */
  async finish(vmas: Vma[]): Promise<void> {
    for (const v of vmas) {
      // Not restored (the kernel's own vdso is moved in place), but still a saved byte.
      if (SPECIAL.has(v.path) && v.pages.size > 0) checkSourceBytes(v.pages, await v.pages.read(0, v.pages.size), `task-${this.pid}/memory/vmas/${vmaName(v)}/pages`)
    }
    for (const v of this.groups.keys()) this.written(v, Infinity)
    if (this.running > 0 || (this.ready.length > 0 && this.failure === undefined)) await new Promise<void>((resolve) => { this.idle = resolve })
    if (this.failure !== undefined) throw this.failure
  }

  private pump(): void {
    while (this.running < PARALLEL && this.ready.length > 0 && this.failure === undefined) {
      const group = this.ready.shift()!
      this.running++
      this.checkGroup(group).catch((err: unknown) => {
        this.failure ??= err
      }).finally(() => {
        this.running--
        this.pump()
        if (this.running === 0 && (this.ready.length === 0 || this.failure !== undefined)) this.idle?.()
      })
    }
  }

  private async checkGroup({ v, where, first, ranges }: Group): Promise<void> {
    const found = await native.crc32cOfMemory(this.pid, ranges, CRC_PIECE, this.shared.has(v))
    const recorded = v.pages.crc32c!
    const bad = found.findIndex((crc, i) => crc !== recorded[first + i])
    if (bad >= 0) throw damaged(where, first + bad, v.pages.size, recorded[first + bad], found[bad])
  }
}

/** Refuses the restore (naming the mapping and the bytes) when any restored page differs from its saved checksum. */
export async function verifyPages(pid: number, vmas: Vma[]): Promise<void> {
  await new PageCheck(pid, vmas).finish(vmas)
}
