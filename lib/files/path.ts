// What the handlers of files opened by path (regular files, directories, devices, fifos) share:
// where the file is (and whether that path still names it, reference/000), its inode
// attributes, and their entries in files/OBJREF.

import { byteSize } from '../bytesize'
import { described, invalid } from './common'
import { CkptError } from '../errors'
import { lazy, type Lazy, type PathDescription } from '../model'
import type { InodeStat } from '../procfs'
import { attr, bytes, octal, type TableEntry } from '../tree/node'
import type { CaptureContext, DescriptionBase, FdProbe, ImageMapping } from './handler'
import { RecordBuilder, type PlannedRecord } from '../restore/fdplan'
import type { Fields } from '../image/records'
import { pathProblem, S64_MAX, U32_MAX, U64_MAX, type SavedDir } from './saved'

export type PathType = PathDescription['type']

const S_IFMT = 0o170000
const fileTypeBits: Record<PathType, number> = { file: 0o100000, dir: 0o040000, chr: 0o020000, blk: 0o060000, fifo: 0o010000 }

/** The path type of an inode mode, or undefined (sockets and symbolic links opened with O_PATH). */
export function pathTypeOf(mode: number): PathType | undefined {
  const bits = mode & S_IFMT
  return (Object.keys(fileTypeBits) as PathType[]).find((t) => fileTypeBits[t] === bits)
}

const deletedSuffix = ' (deleted)'

/**
 * The path the file was opened under and whether it is unlinked: the path is gone or now
 * names another inode.
 */
async function whereIs(target: string, st: InodeStat, ctx: CaptureContext): Promise<{ path: string; unlinked: boolean }> {
  // A name that really ends in " (deleted)" still resolves to the file itself.
  if (sameInode(await ctx.statPath(target), st)) return { path: target, unlinked: false }
  const path = target.endsWith(deletedSuffix) ? target.slice(0, -deletedSuffix.length) : target
  return { path, unlinked: true }
}

const sameInode = (a: InodeStat | undefined, b: InodeStat): boolean => a !== undefined && a.dev === b.dev && a.ino === b.ino

/** Shared by every description without other links (nearly all). */
export const noLinks: Lazy<string[]> = async () => []

/** The PathDescription of a file opened by path; handlers add contents and buffered data. */
export async function capturePath(type: PathType, probe: FdProbe, base: DescriptionBase, ctx: CaptureContext): Promise<PathDescription> {
  const st = probe.stat
  if (!st) throw new CkptError(`fd ${probe.fd}: ${probe.target} could not be stat'ed`)
  const { path, unlinked } = await whereIs(probe.target, st, ctx)
  const nlink = st.nlink
  // Directories have no other hard links: their nlink counts subdirectories.
  const others = type === 'dir' ? 0 : nlink - (unlinked ? 0 : 1)
  const otherLinks = others > 0
    ? ctx.links.want({ dev: st.dev, ino: st.ino, path, mntId: base.mntId, count: others, exclude: path })
    : noLinks
  const notCheckpointable = base.notCheckpointable
    ?? (path.includes('\n') ? `${type}: the path holds a newline, which the tree cannot show` : undefined)
    ?? (unlinked && type !== 'file' ? `${type}: ${path} was removed; only regular files are recreated from saved contents` : undefined)
  return {
    ...base, type, notCheckpointable,
    path, dev: st.dev, rdev: st.rdev, inodeMode: st.mode, uid: st.uid, gid: st.gid, size: st.size, nlink, btime: st.btime, unlinked, otherLinks,
  }
}

/** Copy mode: finds the other links now. */
export async function settleLinks(desc: PathDescription): Promise<PathDescription> {
  const links = await desc.otherLinks()
  return { ...desc, otherLinks: async () => links }
}

/** The entries every path type shows, in order. */
export const pathEntries: TableEntry<PathDescription>[] = [
  attr('path', (d) => d.path),
  attr('unlinked', (d) => d.unlinked),
  attr('dev', (d) => d.dev),
  attr('inode_mode', (d) => octal(d.inodeMode)),
  attr('uid', (d) => d.uid),
  attr('gid', (d) => d.gid),
  attr('size', (d) => d.size),
  attr('nlink', (d) => d.nlink),
  attr('btime', (d) => d.btime),
]

export const rdevEntry: TableEntry<PathDescription> = attr('rdev', (d) => d.rdev)

/** Other names of the inode, one per line; an empty file when there are none. */
export const otherLinksEntry: TableEntry<PathDescription> = bytes('other_links', async (d) => Buffer.from((await d.otherLinks()).map((p) => `${p}\n`).join('')))

/** Reads the entries of `pathEntries` back (rdev, other links and data are the handler's). */
export function loadPath(dir: SavedDir, base: DescriptionBase, type: PathType): PathDescription {
  const path = dir.path('path')
  const unlinked = dir.flag('unlinked')
  const dev = dir.decimal('dev', 0n, U64_MAX)
  const inodeMode = dir.octal('inode_mode', 0o177777n)
  if ((inodeMode & S_IFMT) !== fileTypeBits[type]) throw dir.fail('inode_mode', `${octal(inodeMode)} is not the mode of a ${type}`)
  // A tree saved before owners were recorded has no uid/gid: refused, as nothing would say
  // whether the file reopened is the one that was saved.
  for (const name of ['uid', 'gid']) {
    if (!dir.has(name)) throw dir.fail(name, 'missing: this tree was saved before ckptfs recorded file owners, and a file is reopened only when its owner, mode and type are the saved ones')
  }
  const uid = dir.int('uid', 0, Number(U32_MAX) - 1)
  const gid = dir.int('gid', 0, Number(U32_MAX) - 1)
  const size = dir.decimal('size', 0n, S64_MAX)
  const nlink = dir.int('nlink', 0, Number(U32_MAX))
  // Trees saved before birth times were recorded have none: 0, as for a filesystem without them.
  const btime = dir.has('btime') ? dir.decimal('btime', 0n, U64_MAX) : 0n
  return described<PathDescription>(base, { type, path, unlinked, dev, rdev: 0n, inodeMode, uid, gid, size, nlink, btime, otherLinks: noLinks })
}

/** Reads other_links back. */
export function loadOtherLinks(dir: SavedDir): Lazy<string[]> {
  const links = dir.pathList('other_links')
  return links.length === 0 ? noLinks : lazy(async () => links)
}

/**
 * What the stub compares a reopened file with (addon/stub/restorer.c, check_identity): type
 * and permission bits, owner, and device, inode and birth time (those only on the boot that
 * saved them).
 */
export function withIdentity(b: RecordBuilder, d: PathDescription): RecordBuilder {
  return b.u32(d.inodeMode).u32(d.uid).u32(d.gid).u64(d.dev).u64(d.ino).u64(d.btime)
}

/** The stub's kind that reopens a file by path (restorer.c, open_path_object). */
export const PATH_KINDS = { path: 1 } as const

/** Restore: reopen by path with the saved flags, check it is the saved file, then seek to the saved offset. */
export function pathRecord(d: PathDescription): PlannedRecord {
  return { kind: PATH_KINDS.path, objref: d.objref, payload: withIdentity(new RecordBuilder().i32(d.flags).u64(d.pos).string(d.path), d) }
}

/**
 * The checks every description opened by path gets: an absolute path (the stub opens it as it
 * is), an inode mode of its type, other links that are paths too; only a regular file comes
 * back from saved contents when its path is gone.
 */
export function validatePath(d: PathDescription): void | Promise<void> {
  const why = pathProblem(d.path)
  if (why !== undefined) throw invalid(d, 'path', why)
  if ((d.inodeMode & S_IFMT) !== fileTypeBits[d.type]) throw invalid(d, 'inode_mode', `${octal(d.inodeMode)} is not the mode of a ${d.type}`)
  if (d.unlinked && d.type !== 'file' && d.notCheckpointable === undefined) {
    throw invalid(d, 'unlinked', `${d.type}: ${d.path} was removed; only regular files are recreated from saved contents`, 'ENOTSUP')
  }
  // Most files have no other links: no promise for each of 10,000 /dev/null fds.
  if (d.otherLinks === noLinks) return
  return d.otherLinks().then((links) => links.forEach((link, i) => {
    const bad = pathProblem(link)
    if (bad !== undefined) throw invalid(d, 'other_links', `line ${i + 1}: ${bad}`)
  }))
}

/** A file's owner id; an image made before owners were recorded is refused. */
function ownerId(d: Fields, name: 'uid' | 'gid'): number {
  if (!d.has(name)) d.fail(name, 'missing: this image was made before ckptfs recorded file owners, and a file is reopened only when its owner, mode and type are the saved ones')
  return d.num(name, { max: 0xfffffffe })
}

/** Every path type is one PathFile message in the image. */
export const pathImage: ImageMapping<PathDescription> = {
  field: 'pathFile',

  async write(d) {
    return {
      ...d,
      otherLinks: await d.otherLinks(),
      contentsSize: d.contents ? BigInt(d.contents.size) : undefined,
      buffered: d.buffered ? await d.buffered() : undefined,
    }
  },

  read(d, base, type, fileSize) {
    const contentsSize = d.has('contentsSize') ? d.big('contentsSize', { max: BigInt(fileSize) }) : undefined
    if (contentsSize !== undefined && (type !== 'file' || !d.bool('unlinked'))) d.fail('contentsSize', 'only an unlinked regular file carries contents')
    if (d.has('buffered') && type !== 'fifo') d.fail('buffered', 'only a fifo has buffered bytes')
    const otherLinks = d.strs('otherLinks')
    const buffered = d.has('buffered') ? d.bytes('buffered') : undefined
    const description = described<PathDescription>(base, {
      type,
      path: d.str('path', true),
      dev: d.big('dev'),
      rdev: d.big('rdev'),
      inodeMode: d.num('inodeMode'),
      uid: ownerId(d, 'uid'),
      gid: ownerId(d, 'gid'),
      size: d.big('size'),
      nlink: d.num('nlink'),
      // Images of format 1.2 have no birth time: 0, as for a filesystem without one.
      btime: d.big('btime'),
      unlinked: d.bool('unlinked'),
      otherLinks: otherLinks.length === 0 ? noLinks : async () => otherLinks,
    })
    if (buffered) description.buffered = async () => buffered
    return { description, contentsSize }
  },

  contents: (d) => d.contents,

  withContents(d, contents) {
    if (d.type !== 'file') throw new CkptError(`contents on a ${d.type}`, 'EINVAL')
    return { ...d, contents }
  },
}

/** `ckptfs show`'s line: the path, and whether it was unlinked (and its contents kept). */
export function pathSummary(d: PathDescription): string {
  const unlinked = d.unlinked ? ` (unlinked${d.contents ? `, ${byteSize(d.contents.size)} kept` : ''})` : ''
  return `${d.path}${unlinked}`
}
