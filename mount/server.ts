// The FUSE server: maps paths and file operations onto the session's tree of nodes
// (lib/tree/node.ts). It knows nothing of checkpoints; everything it shows comes from lib.

import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import { CkptError, errnoOf, messageOf, type ErrnoName } from '../lib/errors'
import { makePrivateDir } from '../lib/privatedir'
import { Session } from '../lib/session'
import type { Sized } from '../lib/model'
import { ownerOf, type DirNode, type FileNode, type Node, type Owner } from '../lib/tree/node'
import { fuseOptions } from './fuseoptions'
import { EntryInvalidator, fuseFds } from './invalidate'
import { OpCounts } from './opcounts'
import { BACKING_PREFIX, readRecord, removeBacking, removeLeftovers, removeRecord, serverRuns, writeRecord, type ServerRecord } from './records'

// fuse-native has no type declarations; this is the part of its API we use.
interface FuseInstance {
  mount(cb: (err: Error | null) => void): void
  unmount(cb: (err: Error | null) => void): void
}
type FuseConstructor = new (mnt: string, ops: Record<string, unknown>, opts: Record<string, unknown>) => FuseInstance
const Fuse: FuseConstructor & { unmount(mnt: string, cb: (err: Error | null) => void): void } = require('fuse-native')

type Reply = (code: number, ...values: unknown[]) => void

const S_IFDIR = 0o040000
const S_IFREG = 0o100000

export interface ServerOptions {
  cacheBytes: number
}

export class Server {
  readonly session: Session
  private fuse: FuseInstance | undefined
  /** Resolved nodes of the read-only checkpoint trees, so each path is looked up once. */
  private readonly nodes = new Map<string, Node>()
  private readonly open = new Map<number, FileNode>()
  private nextHandle = 1
  private readonly started = new Date()
  private readonly uid = process.getuid?.() ?? 0
  private readonly gid = process.getgid?.() ?? 0
  /** CKPTFS_TRACE=fuse: how many of each FUSE operation came, and their time, printed at close. */
  private readonly opCounts = OpCounts.ifTraced()
  private invalidator: EntryInvalidator | undefined

  /** The restore area's private backing directory, made here when the server starts. */
  readonly backing: string
  private record: ServerRecord | undefined

  constructor(readonly mnt: string, opts: ServerOptions) {
    this.backing = makePrivateDir(os.tmpdir(), BACKING_PREFIX)
    this.session = new Session(opts.cacheBytes, this.backing)
    this.session.controlFilePath = path.join(realParent(mnt), path.basename(mnt), 'checkpoint')
    this.session.on('removed', (prefix) => {
      for (const key of this.nodes.keys()) if (key === prefix || key.startsWith(prefix + '/')) this.nodes.delete(key)
      this.forgetTop(prefix)
    })
    this.session.on('changed', (p) => this.forgetTop(p))
  }

  /**
   * Records this server for `mnt` (after cleaning up what a dead server of `mnt` left: its
   * mount, backing directory and record), then mounts.
   */
  async mount(): Promise<void> {
    const before = readRecord(this.mnt)
    if (before && serverRuns(before)) throw new CkptError(`${this.mnt} is served already (server pid ${before.pid})`, 'EBUSY')
    await cleanUpDeadMount(this.mnt)
    if (before) removeLeftovers(before)
    this.record = writeRecord(this.mnt, this.backing)
    const fuse = new Fuse(this.mnt, this.opCounts ? this.opCounts.wrap(this.operations()) : this.operations(), fuseOptions('ckptfs'))
    const fuseFdsBefore = fuseFds()
    await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())))
    this.fuse = fuse
    this.invalidator = new EntryInvalidator(fuseFdsBefore, (message) => console.error(`ckptfs: ${message}`))
  }

  /** Thaws every frozen task, unmounts, then removes the restore area's backing files and the record. */
  async close(): Promise<void> {
    await this.session.close()
    const fuse = this.fuse
    this.fuse = undefined
    await this.invalidator?.close()
    this.invalidator = undefined
    if (fuse) await new Promise<void>((resolve) => fuse.unmount(() => resolve()))
    this.opCounts?.report(this.mnt)
    this.session.disposeRestoreArea()
    this.removeLeftovers()
  }

  /** Removes the backing directory and this server's record; for any exit (synchronous). */
  removeLeftovers(): void {
    removeBacking(this.backing)
    if (this.record) removeRecord(this.record)
    this.record = undefined
  }

  /** Makes the kernel forget the top-level entry that `p` is in (a checkpoint that ended, by-pid). */
  private forgetTop(p: string): void {
    const name = p.split('/')[1]
    if (name) this.invalidator?.forget(name)
  }

  // ---- path resolution ----

  private async resolve(p: string): Promise<Node | undefined> {
    if (p === '/') return this.session.root()
    const cached = this.nodes.get(p)
    if (cached) return cached
    const slash = p.lastIndexOf('/')
    const parent = await this.resolve(slash === 0 ? '/' : p.slice(0, slash))
    if (!parent || parent.kind !== 'dir') return undefined
    const node = await parent.lookup(p.slice(slash + 1))
    // Checkpoint trees never change while they exist; everything else is looked up afresh.
    if (node && p.startsWith('/checkpoint-')) this.nodes.set(p, node)
    return node
  }

  private async resolveDir(p: string): Promise<DirNode> {
    const node = await this.resolve(p)
    if (!node) throw new CkptError(`${p}: no such directory`, 'ENOENT')
    if (node.kind !== 'dir') throw new CkptError(`${p}: not a directory`, 'ENOTDIR')
    return node
  }

  private async resolveFile(p: string): Promise<FileNode> {
    const node = await this.resolve(p)
    if (!node) throw new CkptError(`${p}: no such file`, 'ENOENT')
    if (node.kind !== 'file') throw new CkptError(`${p}: is a directory`, 'EISDIR')
    return node
  }

  /**
   * Who owns `node` at `p`: a top-level entry that names owners (checkpoint-N, the checkpointed
   * task's) gives them to everything under it, so `cp -a` copies keep them; the rest belongs
   * to the mount's owner.
   */
  private async ownerOf(p: string, node: Node): Promise<Owner> {
    const second = p.indexOf('/', 1)
    const top = p === '/' ? undefined : await this.resolve(second < 0 ? p : p.slice(0, second))
    return top?.owner ? ownerOf(node, top.owner) : { uid: this.uid, gid: this.gid }
  }

  private async stat(node: Node, owner: Owner): Promise<Record<string, unknown>> {
    const common = { mtime: this.started, atime: this.started, ctime: this.started, uid: owner.uid, gid: owner.gid }
    if (node.kind === 'dir') return { ...common, mode: S_IFDIR | node.perm, size: 4096, nlink: 2 }
    const size = await node.size()
    // A true block count keeps cp and tar from treating the file as sparse.
    return { ...common, mode: S_IFREG | node.perm, size, blocks: Math.ceil(size / 512), blksize: 131072, nlink: 1 }
  }

  // ---- FUSE operations ----

  private operations(): Record<string, unknown> {
    const parentOf = (p: string) => {
      const slash = p.lastIndexOf('/')
      return { dir: slash === 0 ? '/' : p.slice(0, slash), name: p.slice(slash + 1) }
    }
    const writable = (p: string) => p === '/restore' || p.startsWith('/restore/')
    return {
      getattr: (p: string, cb: Reply) => this.answer(cb, async () => {
        const node = await this.resolve(p)
        if (!node) throw new CkptError(`${p}: no such file`, 'ENOENT')
        return [await this.stat(node, await this.ownerOf(p, node))]
      }),
      readdir: (p: string, cb: Reply) => this.answer(cb, async () => [await (await this.resolveDir(p)).list()]),
      open: (p: string, flags: number, cb: Reply) => this.answer(cb, async () => {
        const node = await this.resolveFile(p)
        const wantsWrite = (flags & 3) !== fs.constants.O_RDONLY
        if (wantsWrite && !node.write) throw new CkptError(`${p}: read-only`, 'EACCES')
        return [this.remember(node)]
      }),
      release: (_p: string, handle: number, cb: Reply) => {
        this.open.delete(handle)
        cb(0)
      },
      read: (p: string, handle: number, buf: Buffer, len: number, pos: number, cb: Reply) => {
        // The hot path (cat, cp of pages and the image): the bytes go straight into FUSE's
        // buffer, and no promise is made when the source has them at hand.
        const open = this.open.get(handle)
        if (open?.readInto) {
          let n: Sized
          try {
            n = open.readInto(pos, len, buf.subarray(0, len))
          } catch (err) {
            return this.fail(cb, err)
          }
          return typeof n === 'number' ? cb(n) : this.answer(cb, () => n as Promise<number>)
        }
        this.answer(cb, async () => {
          const node = open ?? (await this.resolveFile(p))
          const data = await node.read(pos, len)
          return data.copy(buf, 0, 0, Math.min(len, data.length))
        })
      },
      write: (p: string, handle: number, buf: Buffer, len: number, pos: number, cb: Reply) => this.answer(cb, async () => {
        const node = this.open.get(handle) ?? (await this.resolveFile(p))
        if (!node.write) throw new CkptError(`${p}: read-only`, 'EACCES')
        await node.write(pos, Buffer.from(buf.subarray(0, len)))
        // A write to done ends a checkpoint: the kernel forgets it before the writer goes on.
        await this.invalidator?.settled()
        return len
      }),
      truncate: (p: string, size: number, cb: Reply) => this.answer(cb, async () => {
        const node = await this.resolveFile(p)
        if (!node.truncate) throw new CkptError(`${p}: read-only`, 'EACCES')
        await node.truncate(size)
        return []
      }),
      ftruncate: (p: string, _handle: number, size: number, cb: Reply) => this.answer(cb, async () => {
        const node = await this.resolveFile(p)
        if (!node.truncate) throw new CkptError(`${p}: read-only`, 'EACCES')
        await node.truncate(size)
        return []
      }),
      create: (p: string, _mode: number, cb: Reply) => this.answer(cb, async () => {
        const { dir, name } = parentOf(p)
        const parent = await this.resolveDir(dir)
        if (!parent.create) throw new CkptError(`${p}: read-only`, 'EACCES')
        await parent.create(name)
        return [this.remember(await this.resolveFile(p))]
      }),
      mkdir: (p: string, _mode: number, cb: Reply) => this.answer(cb, async () => {
        const { dir, name } = parentOf(p)
        const parent = await this.resolveDir(dir)
        if (!parent.mkdir) throw new CkptError(`${p}: read-only`, 'EACCES')
        await parent.mkdir(name)
        return []
      }),
      unlink: (p: string, cb: Reply) => this.answer(cb, () => this.remove(p)),
      rmdir: (p: string, cb: Reply) => this.answer(cb, () => this.remove(p)),
      rename: (src: string, dest: string, cb: Reply) => this.answer(cb, async () => {
        const from = parentOf(src)
        const to = parentOf(dest)
        const parent = await this.resolveDir(from.dir)
        if (!parent.rename) throw new CkptError(`${src}: read-only`, 'EACCES')
        await parent.rename(from.name, await this.resolveDir(to.dir), to.name)
        return []
      }),
      // Metadata changes are accepted in the restore area (cp -a, tar restore times and modes;
      // the restore does not depend on them) and refused everywhere else.
      chmod: (p: string, _mode: number, cb: Reply) => cb(writable(p) ? 0 : errno('EROFS')),
      chown: (p: string, _uid: number, _gid: number, cb: Reply) => cb(writable(p) ? 0 : errno('EROFS')),
      utimens: (p: string, _atime: unknown, _mtime: unknown, cb: Reply) => cb(writable(p) ? 0 : errno('EROFS')),
      statfs: (_p: string, cb: Reply) => cb(0, { bsize: 4096, frsize: 4096, blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: 255 }),
    }
  }

  private async remove(p: string): Promise<[]> {
    const { dir, name } = { dir: p.slice(0, p.lastIndexOf('/')) || '/', name: p.slice(p.lastIndexOf('/') + 1) }
    const parent = await this.resolveDir(dir)
    if (!parent.remove) throw new CkptError(`${p}: read-only`, 'EACCES')
    await parent.remove(name)
    return []
  }

  private remember(node: FileNode): number {
    const handle = this.nextHandle++
    this.open.set(handle, node)
    return handle
  }

  /** Runs an operation and answers FUSE once: values on success, a negative errno on failure. */
  private answer(cb: Reply, op: () => Promise<unknown[] | number>): void {
    op().then(
      (result) => (typeof result === 'number' ? cb(result) : cb(0, ...result)),
      (err: unknown) => this.fail(cb, err),
    )
  }

  private fail(cb: Reply, err: unknown): void {
    const name = errnoOf(err)
    if (name === 'EIO') console.error(`ckptfs: ${messageOf(err)}`)
    cb(errno(name))
  }
}

/**
 * `mnt`'s parent with symlinks resolved, as /proc/PID/fd shows paths under the mount (the
 * mount point itself is never resolved here: that would ask this very server, and wait).
 */
function realParent(mnt: string): string {
  try {
    return fs.realpathSync(path.dirname(path.resolve(mnt)))
  } catch {
    return path.dirname(path.resolve(mnt))
  }
}

/** Linux errnos that Node's os.constants leaves out. */
const MISSING_ERRNOS: Partial<Record<ErrnoName, number>> = { ENOTRECOVERABLE: 131 }

function errno(name: ErrnoName): number {
  return -((os.constants.errno as Record<string, number>)[name] ?? MISSING_ERRNOS[name] ?? os.constants.errno.EIO)
}

/** Unmounts a mount whose server is gone (the kernel answers ENOTCONN there). */
export function forceUnmount(mnt: string): Promise<void> {
  return new Promise((resolve, reject) => Fuse.unmount(mnt, (err) => (err ? reject(err) : resolve())))
}

function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)))
}

/** Mount points of every active ckptfs mount. */
export function ckptfsMounts(): string[] {
  return fs.readFileSync('/proc/mounts', 'utf8').split('\n')
    .map((line) => line.split(' '))
    .filter((f) => f[2] === 'fuse.ckptfs')
    .map((f) => unescapeMountField(f[1]))
}

/**
 * Unmounts a ckptfs mount at `mnt` whose server is gone: the kernel answers ENOTCONN there.
 * A mount that still answers has a live server that this one must not take over (one that
 * wrote no record), and is refused.
 */
export async function cleanUpDeadMount(mnt: string): Promise<boolean> {
  if (!ckptfsMounts().includes(mnt)) return false
  try {
    // statfs, not stat: the kernel may answer a stat from its attribute cache for a while
    // after the server died.
    fs.statfsSync(mnt)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOTCONN') throw new CkptError(`${mnt}: ${messageOf(err)}`)
    await forceUnmount(mnt)
    return true
  }
  throw new CkptError(`${mnt} is a ckptfs mount whose server left no record in /run/ckptfs (started by another version?): stop that server, or unmount it with umount -l`, 'EBUSY')
}
