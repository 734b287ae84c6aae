// The check of a tree's value files (one value and a newline, with no NAME_crc32c of their
// own): each directory holding any has one manifest, `values_crc32c`, one line per value file,
// "NAME CRC32C" (eight lowercase hexadecimal digits), sorted by name. The mount writes it
// (lib/tree/node.ts), a restore checks every value it reads against it (lib/files/saved.ts),
// and `ckptfs seal` rewrites it after a deliberate edit (lib/seal.ts). One rule decides which
// files it covers, so the three always agree.

import { CRC_SUFFIX } from './checksum'

export const MANIFEST = 'values_crc32c'

/** Control files: their bytes are the mount's answers (or nothing), never a saved value. */
const CONTROL_FILES = new Set(['done', 'status'])

/**
 * Whether the regular file `name` is a value file of a directory where `has` says which other
 * names exist: not a control file, not the manifest, not a raw file with its own NAME_crc32c,
 * and not that checksum file (checked against its raw file's bytes, not here).
 */
export function isValueFile(name: string, has: (name: string) => boolean): boolean {
  if (name === MANIFEST || CONTROL_FILES.has(name)) return false
  if (has(name + CRC_SUFFIX)) return false
  if (name.endsWith(CRC_SUFFIX) && has(name.slice(0, -CRC_SUFFIX.length))) return false
  return true
}

/** Bytes per line besides the name: a space, eight digits and a newline. */
const LINE_EXTRA = 10

/** The manifest's size for these names: known without reading any value. */
export function manifestSize(names: readonly string[]): number {
  let size = 0
  for (const name of names) size += Buffer.byteLength(name) + LINE_EXTRA
  return size
}

const hex8 = (crc: number): string => crc.toString(16).padStart(8, '0')

/**
 * The manifest's order: by code unit, which for the tree's names (ASCII) is the byte order
 * `LC_ALL=C sort` gives. A restore compares each line with the one before it (20,000
 * directories in a 10,000-fd tree), so no Buffer is made per name.
 */
export const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0)

/** The manifest's text for these files (sorted here). */
export function manifestText(crcs: ReadonlyMap<string, number>): Buffer {
  return Buffer.from([...crcs.keys()].sort(byName).map((name) => `${name} ${hex8(crcs.get(name)!)}\n`).join(''))
}

/** Parses a manifest: name -> CRC32C, or what is wrong (the caller names the file). */
export function parseManifest(text: string): Map<string, number> | string {
  const crcs = new Map<string, number>()
  if (text === '') return crcs
  if (!text.endsWith('\n')) return 'no newline at the end of the last line'
  let previous: string | undefined
  let line = 0
  // Read in place, without a regular expression or a string per field: a restore of a
  // 10,000-fd tree parses 20,000 manifests.
  for (let at = 0; at < text.length; line++) {
    const end = text.indexOf('\n', at)
    // The checksum is after the last space: a name may hold spaces, never a slash or a NUL.
    const space = text.lastIndexOf(' ', end)
    const crc = space === end - 9 ? hexDigits(text, space + 1, end) : -1
    const name = space > at ? text.slice(at, space) : ''
    if (name === '' || crc < 0 || name.includes('/') || name.includes('\0')) {
      return `line ${line + 1}: not "NAME CRC32C" (eight lowercase hexadecimal digits): ${JSON.stringify(text.slice(at, Math.min(end, at + 60)))}`
    }
    if (previous !== undefined && byName(previous, name) >= 0) return `line ${line + 1}: ${name} is not after ${previous} (names are sorted, each once)`
    crcs.set(name, crc)
    previous = name
    at = end + 1
  }
  return crcs
}

/** The value of text[start, end) as lowercase hexadecimal digits; -1 when another character is there. */
function hexDigits(text: string, start: number, end: number): number {
  let value = 0
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i)
    const digit = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : -1
    if (digit < 0) return -1
    value = value * 16 + digit
  }
  return value
}

export { hex8 as crcHex }
