// The last step of writing a restored task's memory: every stored page is read back from the
// task (process_vm_readv on the addon's pool) and its CRC32C compared with the one the saved
// tree or image recorded, before the task runs. What is checked is what landed in memory,
// however it got there (the task's own pread64 from a file that could change meanwhile, or
// our process_vm_writev), so no window is left between the check and the use.

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
  ranges: Array<{ start: bigint; length: bigint }>
}

/** Refuses the restore (naming the mapping and the bytes) when any restored page differs from its saved checksum. */
export async function verifyPages(pid: number, vmas: Vma[]): Promise<void> {
  const groups: Group[] = []
  for (const v of vmas) {
    if (v.pages.size === 0) continue
    const where = `task-${pid}/memory/vmas/${vmaName(v)}/pages`
    if (SPECIAL.has(v.path)) {
      // Not restored (the kernel's own vdso is moved in place), but still a saved byte.
      checkSourceBytes(v.pages, await v.pages.read(0, v.pages.size), where)
      continue
    }
    if (!v.pages.crc32c) throw new CkptError(`${where}: no checksums were loaded with it`, 'EINVAL')
    const runs = v.stored.map((r) => ({ start: v.start + r.offset, length: r.length }))
    for (let at = 0; at < v.pages.size; at += GROUP) {
      groups.push({ v, where, first: at / CRC_PIECE, ranges: rangesOf(runs, at, Math.min(GROUP, v.pages.size - at)) })
    }
  }
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < groups.length) {
      const { v, where, first, ranges } = groups[next++]
      const found = await native.crc32cOfMemory(pid, ranges, CRC_PIECE)
      const recorded = v.pages.crc32c!
      const bad = found.findIndex((crc, i) => crc !== recorded[first + i])
      if (bad >= 0) {
        next = groups.length // the other worker stops too
        throw damaged(where, first + bad, v.pages.size, recorded[first + bad], found[bad])
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(PARALLEL, groups.length) }, worker))
}
