// What `ckptfs restore PATH` may be given (SPEC "Command line"): a saved checkpoint tree, a
// directory holding only an image, an image file, a tar of a tree (optionally gzipped), or
// `-`: an image or a tar on stdin. Each is turned into a directory or an image file on local
// disk, which the restore then reads as it reads any saved checkpoint. Whatever had to be
// written for that (a stream, an extracted tar) lives in a private scratch directory that
// dispose() removes.

import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { Readable, Transform } from 'stream'
import { pipeline } from 'stream/promises'
import { createGunzip } from 'zlib'
import { CkptError, messageOf } from '../errors'
import type { StoredDir } from '../files/saved'
import { CALLERS_CHOICE, storedByOwners, storedBySnapshot, type StoredBy } from './owner'
import { readSnapshot } from './snapshot'
import { extractTar, isTarHeader } from './tar'

export interface RestoreInput {
  /** A saved tree or a directory holding an image (isDirectory), or an image file. */
  path: string
  isDirectory: boolean
  /**
   * Who could have written what the user gave (owner.ts): the owners and modes of the tree or
   * image file, or of the tar file (its entries' owners are whatever its maker wrote); stdin
   * is the caller's choice.
   */
  storedBy: StoredBy
  /**
   * The tree at `path` as read in one walk with the owner check (snapshot.ts), for the
   * loaders: a saved tree given as a directory. Undefined for the other inputs.
   */
  tree?: StoredDir
  /** What the user gave (`stdin` for `-`), for messages. */
  label: string
  /** Says `message` in the user's terms: scratch paths become the name the user gave. */
  explain(message: string): string
  /** Removes what was written for this input. */
  dispose(): void
}

const IMAGE_MAGIC = 'ckptfs-image'
/** The image's magic sits at bytes 4-16 (lib/image/encode.ts: a length, then the header's first field). */
const isImage = (head: Buffer) => head.subarray(4, 4 + IMAGE_MAGIC.length).toString('latin1') === IMAGE_MAGIC
const isGzip = (head: Buffer) => head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b
/** How deep a tar may nest its checkpoint (e.g. home/user/saved/checkpoint-1/). */
const MAX_WRAPPING = 8

/** `onRead` hears how many bytes of a tar or of stdin were read so far (and of how many, for a file). */
export async function openRestoreInput(given: string, onRead?: (done: number, total: number | undefined) => void): Promise<RestoreInput> {
  if (given === '-') return fromStream(counted(process.stdin, undefined, onRead), 'stdin', CALLERS_CHOICE)
  const source = path.resolve(given)
  const stat = fs.statSync(source, { throwIfNoEntry: false })
  if (!stat) throw new CkptError(`${source}: no such file or directory`, 'ENOENT')
  if (stat.isDirectory()) {
    // One walk serves the owner check and the loaders: what was checked is what is parsed.
    const snapshot = await readSnapshot(source)
    return { ...local(source, true, source, storedBySnapshot(source, snapshot)), tree: snapshot.root }
  }
  if (!stat.isFile()) throw new CkptError(`${source}: neither a saved tree (a directory), an image file nor a tar`, 'EINVAL')
  const head = readHead(source)
  // Read through its real path: the image is later opened with O_NOFOLLOW (holdSavedFile).
  if (isImage(head)) return local(fs.realpathSync(source), false, source, storedByOwners(source))
  if (isTarHeader(head) || isGzip(head)) return fromStream(counted(fs.createReadStream(source), stat.size, onRead), source, storedByOwners(source))
  throw new CkptError(`${source}: neither a ckptfs image nor a tar of a saved checkpoint`, 'EINVAL')
}

/**
 * A tree or image on local disk, used where it is. Errors about a directory name its files
 * relative to it (task-PID/..., image), as the user sees them there; only an image file
 * given by another name has "image" replaced by that name.
 */
function local(p: string, isDirectory: boolean, label: string, storedBy: StoredBy): RestoreInput {
  const explain = isDirectory ? (m: string) => m : (m: string) => inUserTerms(m, label, undefined)
  return { path: p, isDirectory, storedBy, label, explain, dispose: () => undefined }
}

function readHead(file: string): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const head = Buffer.alloc(512)
    return head.subarray(0, fs.readSync(fd, head, 0, head.length, 0))
  } finally {
    fs.closeSync(fd)
  }
}

/** `stream`, telling `onRead` how much of it went through. */
function counted(stream: Readable, total: number | undefined, onRead?: (done: number, total: number | undefined) => void): Readable {
  if (!onRead) return stream
  let done = 0
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, next) {
      done += chunk.length
      onRead(done, total)
      next(null, chunk)
    },
  })
  // Errors of the source reach whoever reads the counter; destroying the counter ends the source.
  stream.on('error', (err) => counter.destroy(err))
  counter.on('close', () => stream.destroy())
  return stream.pipe(counter)
}

/** An image or a (gzipped) tar read from a stream, kept in a private scratch directory. */
async function fromStream(stream: Readable, label: string, storedBy: StoredBy): Promise<RestoreInput> {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-input-')) // mode 0700
  const dispose = () => fs.rmSync(scratch, { recursive: true, force: true })
  try {
    const found = await unpack(stream, scratch, label)
    return { ...found, storedBy, label, explain: (m) => inUserTerms(m, label, scratch), dispose }
  } catch (err) {
    dispose()
    throw err
  } finally {
    stream.destroy()
  }
}

async function unpack(stream: Readable, scratch: string, label: string): Promise<{ path: string; isDirectory: boolean }> {
  try {
    return await unpackOrThrow(stream, scratch, label)
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (typeof code === 'string' && code.startsWith('Z_')) throw new CkptError(`${label}: a damaged gzip stream: ${messageOf(err)}`, 'EINVAL')
    throw err
  }
}

async function unpackOrThrow(stream: Readable, scratch: string, label: string): Promise<{ path: string; isDirectory: boolean }> {
  let { head, rest } = await peek(stream, 512)
  if (isGzip(head)) {
    const gunzip = createGunzip()
    // Its errors surface where gunzip is read, below; this promise only must not go unhandled.
    pipeline(Readable.from(rest), gunzip).catch(() => undefined)
    ;({ head, rest } = await peek(gunzip, 512))
  }
  if (head.length === 0) throw new CkptError(`${label}: empty: expected a ckptfs image or a tar of a saved checkpoint`, 'EINVAL')
  if (isImage(head)) {
    const image = path.join(scratch, 'image')
    await pipeline(Readable.from(rest), fs.createWriteStream(image, { mode: 0o600 }))
    return { path: image, isDirectory: false }
  }
  if (!isTarHeader(head)) throw new CkptError(`${label}: neither a ckptfs image nor a tar of a saved checkpoint`, 'EINVAL')
  const tree = path.join(scratch, 'tar')
  fs.mkdirSync(tree, { mode: 0o700 })
  await extractTar(rest, tree, label)
  return findSaved(tree, label)
}

/**
 * The first `n` bytes of a stream (fewer if it is shorter), and an iterable that yields the
 * whole stream again, those bytes included.
 */
async function peek(source: AsyncIterable<Buffer>, n: number): Promise<{ head: Buffer; rest: AsyncIterable<Buffer> }> {
  const iterator = source[Symbol.asyncIterator]()
  const seen: Buffer[] = []
  let length = 0
  let done = false
  while (length < n) {
    const next = await iterator.next()
    if (next.done) {
      done = true
      break
    }
    const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value)
    seen.push(chunk)
    length += chunk.length
  }
  const head = Buffer.concat(seen).subarray(0, n)
  async function* rest(): AsyncGenerator<Buffer> {
    yield* seen
    if (done) return
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) yield next.value
  }
  return { head, rest: rest() }
}

/** Where in an extracted tar the saved checkpoint is: a tree, a directory with an image, or an image file. */
function findSaved(dir: string, label: string): { path: string; isDirectory: boolean } {
  for (let depth = 0; depth <= MAX_WRAPPING; depth++) {
    const entries = fs.readdirSync(dir, { withFileTypes: true })
    if (entries.some((e) => e.isDirectory() && /^task-[0-9]+$/.test(e.name))) return { path: dir, isDirectory: true }
    const dirs = entries.filter((e) => e.isDirectory())
    const images = entries.filter((e) => e.isFile() && (e.name === 'image' || e.name.endsWith('.image')))
    // A tar of checkpoint-N/ (and perhaps its image beside it): the tree is inside.
    if (dirs.length === 1) {
      dir = path.join(dir, dirs[0].name)
      continue
    }
    if (dirs.length === 0 && images.length === 1) return { path: path.join(dir, images[0].name), isDirectory: false }
    break
  }
  throw new CkptError(`${label}: the tar holds no saved checkpoint (a checkpoint-N tree with a task-PID directory, or one image file)`, 'EINVAL')
}

/** Replaces scratch paths with the name the user gave, and a bare `image:` with it too. */
function inUserTerms(message: string, label: string, scratch: string | undefined): string {
  let out = message
  if (scratch) out = out.split(`${scratch}/tar/`).join(`${label}:`).split(`${scratch}/image`).join(label).split(scratch).join(label)
  return out.replace(/^image: /, `${label}: `)
}
