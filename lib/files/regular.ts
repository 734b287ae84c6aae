// Regular files, including unlinked ones (reference/000): an unlinked file's contents are
// read through a separate open of /proc/PID/fd/N (which works for deleted files and memfds and
// has its own offset), so restore can recreate the file; its other hard links are searched for.

import * as fs from 'fs'
import { CkptError } from '../errors'
import { type ByteSource, type FileTable, type ObjRef, type PathDescription } from '../model'
import { type TableEntry } from '../tree/node'
import { checkedStream } from '../tree/checked'
import { checkSourceBytes } from '../checksum'
import { invalid, withCommon } from './common'
import type { FileHandler } from './handler'
import { capturePath, loadOtherLinks, loadPath, otherLinksEntry, PATH_KINDS, pathEntries, pathImage, pathRecord, pathSummary, settleLinks, validatePath } from './path'
import { RecordBuilder } from '../restore/fdplan'
import { PLAN_CONTENTS_LIMIT } from '../restore/contents'

/** The stub's kinds: reopen by path, recreate an unlinked file, make a memfd anew (restorer.c). */
const KINDS = { ...PATH_KINDS, unlinked: 2, memfd: 3 } as const
import { copyWhole, fileSource, readWhole } from './source'

const linked = withCommon<PathDescription>([...pathEntries, otherLinksEntry])
const unlinked = withCommon<PathDescription>([
  ...pathEntries,
  otherLinksEntry,
  ...checkedStream('contents', (d: PathDescription) => {
    if (!d.contents) throw new CkptError(`files/${d.objref}/contents: not captured`)
    return d.contents
  }),
])

export const regular: FileHandler<PathDescription> = {
  types: ['file'],

  async capture(probe, base, ctx) {
    const desc = await capturePath('file', probe, base, ctx)
    if (!desc.unlinked) return desc
    return { ...desc, contents: fileSource(`/proc/${ctx.pid}/fd/${probe.fd}`, Number(desc.size)) }
  },

  async settle(desc) {
    const settled = await settleLinks(desc)
    return desc.contents ? { ...settled, contents: await copyWhole(desc.contents, `files/${desc.objref}/contents`) } : settled
  },

  entries: (desc): TableEntry<PathDescription>[] => (desc.unlinked ? unlinked : linked),

  load(dir, base) {
    const desc = loadPath(dir, base, 'file')
    desc.otherLinks = loadOtherLinks(dir)
    if (!desc.unlinked) return desc
    const contents = dir.checkedSource('contents')
    if (BigInt(contents.size) !== desc.size) throw dir.fail('contents', `${contents.size} bytes, but size says ${desc.size}`)
    desc.contents = contents
    return desc
  },

  // An unlinked file comes back from its contents, which must be all of it.
  validate(d) {
    if (d.unlinked) {
      if (!d.contents) throw invalid(d, 'contents', 'missing')
      if (BigInt(d.contents.size) !== d.size) throw invalid(d, 'contents', `${d.contents.size} bytes, but size says ${d.size}`)
    }
    return validatePath(d)
  },

  // A linked file is reopened by path. An unlinked one that has another hard link is opened
  // through that link, so the task shares the inode with it again (reference/000: a write
  // must reach "b"); otherwise it is recreated from its contents and unlinked again. A memfd
  // is made anew.
  async planRestore(d, { table }) {
    if (!d.unlinked) return pathRecord(d)
    if (!d.contents) throw new CkptError(`files/${d.objref}: unlinked file without saved contents`, 'EINVAL')
    const where = `files/${d.objref}/contents`
    // Small contents travel in the plan, checked in the buffer the plan is made from (what is
    // checked is what is used); larger ones are written into the made file piece by piece,
    // each piece checked as it is written (lib/restore/contents.ts).
    const inPlan = d.contents.size <= PLAN_CONTENTS_LIMIT
    const data = inPlan ? await readWhole(d.contents) : Buffer.alloc(0)
    if (inPlan) checkSourceBytes(d.contents, data, where)
    const link = await sameFileAs(d, inPlan ? data : d.contents)
    if (link) return pathRecord({ ...d, path: link })
    const fill = inPlan ? undefined : { objref: d.objref, contents: d.contents, where }
    const memfd = /^\/memfd:(.*)$/.exec(d.path)
    if (memfd) {
      // The stub makes the memfd as root: a setuid, setgid or sticky bit would be root's.
      if (d.inodeMode & 0o7000) throw new CkptError(`files/${d.objref}/inode_mode: 0${d.inodeMode.toString(8)}: a memfd with setuid, setgid or sticky bits is not restored`, 'EPERM')
      return { kind: KINDS.memfd, objref: d.objref, payload: new RecordBuilder().i32(d.flags).u64(d.pos).string(memfd[1]).bytes(data).u32(d.inodeMode & 0o777), fill }
    }
    // The first description of the inode (by its lowest fd: the stub opens in that order)
    // recreates the file; the others are opened through it and carry no second copy.
    const first = firstOfInode(table).get(inodeKey(d)) ?? d.objref
    return {
      kind: KINDS.unlinked, objref: d.objref,
      payload: new RecordBuilder().i32(d.flags).u32(d.inodeMode).u32(d.uid).u32(d.gid).u64(d.pos).string(d.path).bytes(first === d.objref ? data : Buffer.alloc(0)).u32(first === d.objref ? 0 : first),
      fill: first === d.objref ? fill : undefined,
    }
  },

  stubKinds: KINDS,
  image: pathImage,
  summary: pathSummary,
}

const inodeKey = (d: PathDescription): string => `${d.dev}:${d.ino}`
const firstOfInodeCache = new WeakMap<FileTable, Map<string, ObjRef>>()

/**
 * For each unlinked regular file of the table (memfds aside), the description named by the
 * lowest fd among those of its inode: two opens of a file whose names are all gone must come
 * back as one file, not as two copies (zdtm unlink_fstat02).
 */
function firstOfInode(table: FileTable): Map<string, ObjRef> {
  const cached = firstOfInodeCache.get(table)
  if (cached) return cached
  const lowestFd = new Map<ObjRef, number>()
  for (const f of table.fds) if (!(lowestFd.get(f.objref)! <= f.fd)) lowestFd.set(f.objref, f.fd)
  const first = new Map<string, ObjRef>()
  const firstFd = new Map<string, number>()
  for (const f of table.files) {
    if (f.type !== 'file' || !f.unlinked || f.path.startsWith('/memfd:')) continue
    const key = inodeKey(f)
    const fd = lowestFd.get(f.objref) ?? Infinity
    if (!(firstFd.get(key)! <= fd)) {
      first.set(key, f.objref)
      firstFd.set(key, fd)
    }
  }
  firstOfInodeCache.set(table, first)
  return first
}

/**
 * The first of the saved other links that is still the saved file: the same inode (a restore
 * on the machine that made the checkpoint), or else a regular file with exactly the saved
 * contents (a migration that copied the file along). Anything else is another file now.
 */
async function sameFileAs(d: PathDescription, data: Buffer | ByteSource): Promise<string | undefined> {
  const links = await d.otherLinks()
  const stats = await Promise.all(links.map((link) => fs.promises.lstat(link, { bigint: true }).catch(() => undefined)))
  const files = links.map((link, i) => ({ link, st: stats[i] })).filter((f): f is { link: string; st: fs.BigIntStats } => f.st?.isFile() === true)
  const same = files.find(({ st }) => st.dev === d.dev && st.ino === d.ino)
  if (same) return same.link
  const size = Buffer.isBuffer(data) ? data.length : data.size
  for (const { link, st } of files) {
    if (st.size !== BigInt(size)) continue
    if (Buffer.isBuffer(data) ? (await fs.promises.readFile(link).catch(() => undefined))?.equals(data) : await sameBytes(link, data)) return link
  }
  return undefined
}

/** Whether the file at `link` holds exactly the bytes of `source`, compared a piece at a time. */
async function sameBytes(link: string, source: ByteSource): Promise<boolean> {
  const file = await fs.promises.open(link, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW).catch(() => undefined)
  if (!file) return false
  try {
    for (let at = 0; at < source.size; at += PLAN_CONTENTS_LIMIT) {
      const want = await source.read(at, Math.min(PLAN_CONTENTS_LIMIT, source.size - at))
      const got = Buffer.alloc(want.length)
      const { bytesRead } = await file.read(got, 0, got.length, at)
      if (bytesRead !== got.length || !got.equals(want)) return false
    }
    return true
  } finally {
    await file.close()
  }
}

