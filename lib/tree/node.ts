// The nodes of the tree the mount shows, and the table helpers that declare each directory
// (in the manner of procfs' tgid_base_stuff[]): one line per entry, its name, its kind and
// the function that produces its bytes from the model. The FUSE layer (mount/) only walks
// these nodes; it knows nothing of checkpoints.

import type { ByteSource, Sized } from '../model'
import { CkptError } from '../errors'
import { crc32c } from '../checksum'
import { isValueFile, MANIFEST, manifestSize, manifestText } from '../manifest'

export interface Owner {
  uid: number
  gid: number
}

/**
 * Who the nodes of a checkpoint belong to, as /proc decides for /proc/PID: directories that
 * everyone may list (0555) are the task's (its euid and egid), everything else is the owner of
 * its data: the same, or root when the task is not dumpable (ssh-agent makes itself so, to
 * keep even its own user out).
 */
export interface TaskOwners {
  task: Owner
  data: Owner
}

export interface FileNode {
  kind: 'file'
  /** Permission bits: see Access below; 0o644 or 0o600 for writable control files. */
  perm: number
  /** Set on a top-level entry (checkpoint-N.image); other nodes inherit (mount/server.ts). */
  owner?: TaskOwners
  /** The exact number of bytes read() will return. */
  size(): Promise<number>
  read(offset: number, length: number): Promise<Buffer>
  /** Large files (stream): the bytes go straight into `into` (the FUSE reply buffer); returns how many. */
  readInto?(offset: number, length: number, into: Buffer): Sized
  /** Control files only (done, the restore area). */
  write?(offset: number, data: Buffer): Promise<void>
  truncate?(size: number): Promise<void>
  /** Content changes over time (status): the mount must not let the kernel cache it. */
  volatile?: boolean
}

export interface DirNode {
  kind: 'dir'
  perm: number
  /** Set on a top-level entry (checkpoint-N): every node under it belongs to these owners too. */
  owner?: TaskOwners
  list(): Promise<string[]>
  lookup(name: string): Promise<Node | undefined>
  /** Writable directories only (the restore area). */
  mkdir?(name: string): Promise<void>
  create?(name: string): Promise<void>
  remove?(name: string): Promise<void>
  rename?(from: string, to: DirNode, toName: string): Promise<void>
}

export type Node = FileNode | DirNode

/** Formats one attribute value as its file contents: the value and a newline. */
export type AttrValue = string | number | bigint | boolean
export function attrText(value: AttrValue): string {
  if (typeof value === 'boolean') return value ? '1\n' : '0\n'
  return `${value}\n`
}
export const octal = (n: number): string => '0' + n.toString(8)
export const hex = (n: bigint | number): string => '0x' + n.toString(16)

/**
 * Caches filled file contents by key (the node's path), so a node is computed once however
 * often the kernel asks for its size and data. The mount owns one, bounded by --cache-size.
 */
export interface ContentCache {
  get(key: string): Buffer | undefined
  set(key: string, value: Buffer): void
}

/** The context every table entry receives: the model object it shows, and where to cache. */
export interface Scope {
  /** Unique key prefix of the directory being shown, e.g. "c3/task-77/fds/4". */
  key: string
  cache: ContentCache
}

export type EntryFactory<T> = (subject: T, scope: Scope) => Node

export interface TableEntry<T> {
  name: string
  make: EntryFactory<T>
  /**
   * Who may read the entry's file (for entries that make files before knowing their node).
   * Set by every helper that makes a file (attr, bytes, stream): it is also what marks an
   * entry as a file for the directory's values_crc32c, whose size is known from the table
   * alone. A file entry made by hand without it is not covered, and a restore refuses it.
   */
  access?: Access
}

/**
 * Who may read a node of a checkpoint, as /proc decides for the same data: 'public' is what
 * /proc shows every user (cmdline, comm, creds and rlimits in status and limits), 'private'
 * what it keeps to the owner or behind a ptrace check (environ, auxv, memory, registers, fds
 * and fdinfo, cwd/exe, addresses). `cp -a` and `tar` keep modes and owners, so a copy of the
 * tree is as private as the process was. Private is the default: a new entry is shown to
 * others only when someone decides /proc would show it to them.
 */
export type Access = 'public' | 'private'
/** Shorthand for tables: an entry /proc shows to every user. */
export const PUBLIC: Access = 'public'
export const FILE_PERM: Record<Access, number> = { public: 0o444, private: 0o400 }
export const DIR_PERM: Record<Access, number> = { public: 0o555, private: 0o500 }

/** The owner of `node` among a checkpoint's owners (see TaskOwners). */
export function ownerOf(node: Node, owners: TaskOwners): Owner {
  return node.kind === 'dir' && node.perm === DIR_PERM.public ? owners.task : owners.data
}

/** A file holding one value and a newline, computed when first asked for, then cached. */
export function attr<T>(name: string, value: (subject: T) => AttrValue | Promise<AttrValue>, access: Access = 'private'): TableEntry<T> {
  return { name, access, make: (subject, scope) => cachedFile(`${scope.key}/${name}`, scope.cache, async () => Buffer.from(attrText(await value(subject))), FILE_PERM[access]) }
}

/** A file of raw bytes (registers, auxv) computed when first asked for, then cached. */
export function bytes<T>(name: string, value: (subject: T) => Buffer | Promise<Buffer>, access: Access = 'private'): TableEntry<T> {
  return { name, access, make: (subject, scope) => cachedFile(`${scope.key}/${name}`, scope.cache, async () => value(subject), FILE_PERM[access]) }
}

/** A large file read in pieces from its source (memory pages, file contents); never cached whole. */
export function stream<T>(name: string, source: (subject: T) => ByteSource | Promise<ByteSource>, access: Access = 'private'): TableEntry<T> {
  return {
    name,
    access,
    make: (subject) => {
      let src: Promise<ByteSource> | undefined
      let ready: ByteSource | undefined
      const get = () => (src ??= Promise.resolve(source(subject)).then((s) => (ready = s)))
      return {
        kind: 'file',
        perm: FILE_PERM[access],
        size: async () => (await get()).size,
        read: async (offset, length) => (await get()).read(offset, length),
        readInto: (offset, length, into) => (ready ? ready.readInto(offset, length, into, 0) : get().then((s) => s.readInto(offset, length, into, 0))),
      }
    },
  }
}

/** A subdirectory shown by another table over a part of the subject. */
export function sub<T, U>(name: string, part: (subject: T) => U | Promise<U>, entries: TableEntry<U>[], access: Access = 'private'): TableEntry<T> {
  return { name, make: (subject, scope) => lazyDir(async () => part(subject), entries, { key: `${scope.key}/${name}`, cache: scope.cache }, access) }
}

/** A subdirectory with one child per item of a list (fds/FD, files/OBJREF, threads/TID); it and its children have one access. */
/** `entries` may depend on the item (a mapping's directory lists inherited_runs only where it has some). */
export function each<T, U>(name: string, items: (subject: T) => Promise<Map<string, U>>, entries: TableEntry<U>[] | ((item: U) => TableEntry<U>[]), access: Access = 'private'): TableEntry<T> {
  return {
    name,
    make: (subject, scope) => {
      const key = `${scope.key}/${name}`
      let map: Promise<Map<string, U>> | undefined
      const get = () => (map ??= items(subject))
      return {
        kind: 'dir',
        perm: DIR_PERM[access],
        list: async () => [...(await get()).keys()],
        lookup: async (child) => {
          const item = (await get()).get(child)
          return item === undefined ? undefined : tableDir(item, typeof entries === 'function' ? entries(item) : entries, { key: `${key}/${child}`, cache: scope.cache }, access)
        },
      }
    },
  }
}

/** A directory whose entries are given by a table over one subject. */
export function tableDir<T>(subject: T, declared: TableEntry<T>[], scope: Scope, access: Access = 'private'): DirNode {
  const entries = withManifest(declared)
  const byName = indexTable(entries)
  return {
    kind: 'dir',
    perm: DIR_PERM[access],
    list: async () => entries.map((e) => e.name),
    lookup: async (name) => byName.get(name)?.make(subject, scope),
  }
}

function lazyDir<T>(subject: () => Promise<T>, declared: TableEntry<T>[], scope: Scope, access: Access): DirNode {
  const entries = withManifest(declared)
  const byName = indexTable(entries)
  return {
    kind: 'dir',
    perm: DIR_PERM[access],
    list: async () => entries.map((e) => e.name),
    lookup: async (name) => {
      const entry = byName.get(name)
      return entry && entry.make(await subject(), scope)
    },
  }
}

const manifested = new WeakMap<object, TableEntry<never>[]>()
/** The table and, when it has value files, their manifest (lib/manifest.ts); once per table. */
function withManifest<T>(entries: TableEntry<T>[]): TableEntry<T>[] {
  let table = manifested.get(entries) as TableEntry<T>[] | undefined
  if (!table) {
    const manifest = manifestEntry(entries)
    table = manifest ? [...entries, manifest] : entries
    manifested.set(entries, table as TableEntry<never>[])
  }
  return table
}

/**
 * values_crc32c over the table's value files: its size comes from their names alone, so a
 * listing or stat reads no value; its bytes read every value when it is read. Readable by
 * others only when every value it covers is: a CRC of a short value tells what the value is.
 */
function manifestEntry<T>(entries: TableEntry<T>[]): TableEntry<T> | undefined {
  const names = new Set(entries.map((e) => e.name))
  const covered = entries.filter((e) => e.access !== undefined && isValueFile(e.name, (n) => names.has(n)))
  if (covered.length === 0) return undefined
  const access: Access = covered.every((e) => e.access === 'public') ? 'public' : 'private'
  const size = manifestSize(covered.map((e) => e.name))
  return {
    name: MANIFEST,
    access,
    make: (subject, scope) => {
      const file = cachedFile(`${scope.key}/${MANIFEST}`, scope.cache, async () => {
        const crcs = await Promise.all(covered.map(async (e) => crc32c(await wholeFile(e.make(subject, scope), `${scope.key}/${e.name}`))))
        const text = manifestText(new Map(covered.map((e, i) => [e.name, crcs[i]])))
        if (text.length !== size) throw new CkptError(`tree: ${scope.key}/${MANIFEST}: ${text.length} bytes, ${size} announced`)
        return text
      }, FILE_PERM[access])
      return { ...file, size: async () => size }
    },
  }
}

/** All the bytes of a file node (a value of a few bytes, or a list). */
async function wholeFile(node: Node, where: string): Promise<Buffer> {
  if (node.kind !== 'file') throw new CkptError(`tree: ${where}: declared as a file, made as a directory`)
  const size = await node.size()
  const pieces: Buffer[] = []
  for (let at = 0; at < size;) {
    const piece = await node.read(at, size - at)
    if (piece.length === 0) throw new CkptError(`tree: ${where}: ended at byte ${at} of the ${size} its size announced`)
    pieces.push(piece)
    at += piece.length
  }
  return pieces.length === 1 ? pieces[0] : Buffer.concat(pieces)
}

const tableIndexes = new WeakMap<object, Map<string, TableEntry<never>>>()
function indexTable<T>(entries: TableEntry<T>[]): Map<string, TableEntry<T>> {
  let index = tableIndexes.get(entries) as Map<string, TableEntry<T>> | undefined
  if (!index) {
    index = new Map(entries.map((e) => [e.name, e]))
    for (const e of entries) if (index.get(e.name) !== e) throw new CkptError(`tree: duplicate entry ${e.name}`)
    tableIndexes.set(entries, index as Map<string, TableEntry<never>>)
  }
  return index
}

/** A read-only file whose whole contents are computed once and kept in the cache. */
export function cachedFile(key: string, cache: ContentCache, fill: () => Promise<Buffer>, perm: number): FileNode {
  let pending: Promise<Buffer> | undefined
  const contents = async (): Promise<Buffer> => {
    const hit = cache.get(key)
    if (hit) return hit
    pending ??= fill().then((data) => {
      cache.set(key, data)
      pending = undefined
      return data
    }, (err) => {
      pending = undefined
      throw err
    })
    return pending
  }
  return {
    kind: 'file',
    perm,
    size: async () => (await contents()).length,
    read: async (offset, length) => (await contents()).subarray(offset, offset + length),
  }
}

/**
 * A write-only control file (done, checkpoint): reads as empty; each non-empty write is one
 * command, trimmed; an empty write (what cp makes of an empty file) changes nothing.
 */
export function commandFile(onCommand: (text: string) => Promise<void>): FileNode {
  return {
    kind: 'file',
    perm: 0o644,
    volatile: true,
    size: async () => 0,
    read: async () => Buffer.alloc(0),
    truncate: async () => undefined,
    write: async (_offset, data) => {
      const text = data.toString('utf8').trim()
      if (text !== '') await onCommand(text)
    },
  }
}

/** A one-line file computed afresh at every read (status, by-pid/PID). */
export function lineFile(line: () => Promise<string>): FileNode {
  const text = async () => Buffer.from(`${await line()}\n`)
  return {
    kind: 'file',
    perm: 0o444,
    volatile: true,
    size: async () => (await text()).length,
    read: async (offset, length) => (await text()).subarray(offset, offset + length),
  }
}
