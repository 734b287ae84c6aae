// The contract of a per-type file handler (reference/004's f_op->checkpoint, CRIU's files-*.c):
// one module per kind of open file says how to capture it from a frozen task, which entries
// its files/OBJREF directory shows, and how to read a saved copy of that directory back.
// lib/files/index.ts maps what /proc/PID/fd/N shows to the handler.

import type { Fields } from '../image/records'
import type { ByteSource, FileDescription, FileTable, Lazy, ObjRef, Pid } from '../model'
import type { InodeStat, MountInfo, RawFd } from '../procfs'
import type { PlannedRecord } from '../restore/fdplan'
import type { TableEntry } from '../tree/node'
import type { SavedDir } from './saved'

/** What capture learned about one fd from /proc before any handler looks at it. */
export type FdProbe = RawFd

/** The fields every description has (DescriptionCommon of the model). */
export type DescriptionBase = Pick<FileDescription, 'objref' | 'target' | 'flags' | 'mode' | 'pos' | 'mntId' | 'ino' | 'notCheckpointable' | 'locks'>

/** Paths of inodes, found by a bounded search of the task's filesystem (see search.ts). */
export interface LinkFinder {
  /** Registers an inode whose other names are wanted; returns them when first asked for. */
  want(inode: { dev: bigint; ino: bigint; path: string; mntId: number; count: number; exclude: string | undefined }): Lazy<string[]>
}

/** What one capture shares between the handlers of its descriptions. */
export interface CaptureContext {
  pid: Pid
  /** Where the task's root directory is seen from here ("/proc/PID/root"): paths are resolved below it. */
  root: string
  /** stat(2) of a path as the task sees it, made once per path and capture (undefined: it does not resolve). */
  statPath(taskPath: string): Promise<InodeStat | undefined>
  /** The paths the task has files open under (where to look first for an inode's name). */
  openPaths: readonly string[]
  /** The description behind one of the task's fd numbers (epoll targets), if that fd is open. */
  described(fd: number): { objref: ObjRef; probe: FdProbe } | undefined
  /** Every description of the task, each with the probe of its lowest fd, in objref order. */
  descriptions: ReadonlyArray<{ objref: ObjRef; probe: FdProbe }>
  /**
   * Every description of the checkpoint (the whole process tree's, one entry each, with the
   * task holding it): complete once a handler's capture has awaited anything, since every
   * task numbers its descriptions before its first await. The same array for every task of
   * one checkpoint, so a module may key what it reads once per checkpoint on it.
   */
  checkpointDescriptions: ReadonlyArray<{ pid: Pid; objref: ObjRef; probe: FdProbe }>
  /**
   * Whether the task's `fd` holds the file that its epoll `efd` watches as item (tfd, toff)
   * (kcmp KCMP_EPOLL_TFD; toff ranks the items added with fd number tfd in fdinfo order);
   * undefined when the kernel cannot tell.
   */
  epollTargetIs(fd: number, efd: number, tfd: number, toff: number): boolean | undefined
  /** Socket inode -> kind, from the task's network namespace. */
  socketKinds: Lazy<Map<bigint, string>>
  mounts: Lazy<MountInfo[]>
  /** The bytes buffered in one pipe or fifo (`key` names it), peeked once however many ends the task holds. */
  peekOnce(key: string, fd: number): Lazy<Buffer>
  /** The capacity (F_GETPIPE_SZ) of the pipe behind the task's `fd`. */
  pipeSize(fd: number): number
  links: LinkFinder
  /**
   * Takes `fd`, an fd of this process holding a description in flight (passed with
   * SCM_RIGHTS, peeked out of a socket's queue), and answers its OBJREF: a description of the
   * checkpoint, captured now (through `fd`) if no task holds it, with its own refusal if it
   * cannot be checkpointed; or why it cannot be captured at all. The fd is closed once the
   * checkpoint's file table is captured, whatever the answer.
   */
  inFlight(fd: number): Promise<{ objref: ObjRef; notCheckpointable?: string } | { refused: string }>
}

/** What planning one description's restore may look at besides the description itself. */
export interface RestorePlanContext {
  /** The whole saved file table (every objref a record may name is in it). */
  table: FileTable
}

/** What validating one description may look at besides the description itself. */
export interface ValidationContext {
  /** The whole saved file table. */
  table: FileTable
  /** The OBJREF of every description in it. */
  objrefs: ReadonlySet<number>
}

/** The stub's record(s) for one description (docs/RESTORE.md, "The stub's plan"). */
export type RestoreRecords = PlannedRecord | PlannedRecord[]

/**
 * The stub's object kinds a handler plans, by name and number. The number is the record's
 * kind in the plan and the index of the kind's function in the stub's table
 * (addon/stub/restorer.c, object_kinds); test/fdkinds.test.ts checks that the two agree.
 */
export type StubKinds = Readonly<Record<string, number>>

/** A description read back from its image record; `contentsSize` bytes of it follow in file_chunk records. */
export interface RecordedDescription<D extends FileDescription = FileDescription> {
  description: D
  contentsSize: bigint | undefined
}

/**
 * How a type's descriptions are kept in the image (lib/image/ckptfs.proto): its own message,
 * a member of FileDescription's `details` oneof. Types with nothing of their own have none.
 */
export interface ImageMapping<D extends FileDescription> {
  /** The oneof member (camelCase, as the codec names it: "pathFile", "eventfd"). */
  readonly field: string
  /** That member's value for `desc`; the codec takes the fields the schema names and ignores the rest. */
  write(desc: D): object | Promise<object>
  /** The description from that member, each value checked for what the record alone can tell. */
  read(details: Fields, base: DescriptionBase, type: D['type'], fileSize: number): RecordedDescription<D>
  /** Bytes written as file_chunk records after the description (an unlinked file's contents). */
  contents?(desc: D): ByteSource | undefined
  /** The description with its file_chunk bytes attached (types without `contents` are refused such bytes). */
  withContents?(desc: D, contents: ByteSource): D
  /** Other descriptions this one names, which the image must describe too (`what` says which value names it). */
  references?(desc: D): Array<{ objref: ObjRef; what: string }>
}

export interface FileHandler<D extends FileDescription = FileDescription> {
  /** The fd_type values this handler captures and loads. */
  readonly types: readonly D['type'][]
  /**
   * A cheap fdinfo-derived key that every fd of one description shares (eventfd-id), to
   * keep the groups that kcmp must sort small. Must not change between two reads.
   */
  identity?(probe: FdProbe): string
  /** The description behind `probe` (its lowest fd); `base` holds the common fields. */
  capture(probe: FdProbe, base: DescriptionBase, ctx: CaptureContext): Promise<D>
  /** Copy mode: reads every lazy part of the description now, after every description is captured. */
  settle?(desc: D): Promise<D>
  /** The whole files/OBJREF table for this description: common entries, then its own. */
  entries(desc: D): TableEntry<D>[]
  /** Reads the per-type entries of a saved files/OBJREF back, validating each. */
  load(dir: SavedDir, base: DescriptionBase, type: D['type']): D
  /**
   * The checks of meaning a restore relies on (ranges, allowed values, references), made on
   * the model once it is loaded from a tree or an image (lib/restore/validate.ts): throws a
   * CkptError naming the tree path (files/OBJREF/NAME) of the offending value.
   */
  validate?(desc: D, ctx: ValidationContext): void | Promise<void>
  /**
   * The restorer stub's record(s) that bring the description back, or a CkptError naming
   * files/OBJREF/... when it cannot be restored. Types without it are not restorable yet.
   */
  planRestore?(desc: D, ctx: RestorePlanContext): RestoreRecords | Promise<RestoreRecords>
  /** The kinds planRestore's records use. */
  readonly stubKinds?: StubKinds
  /** How the image keeps the type's own fields; absent when it has none (sockets, unknown files). */
  readonly image?: ImageMapping<D>
  /**
   * A last look once every description of the checkpoint is captured (those in flight too),
   * for what needs all of them (a socket's peer found in flight).
   */
  concluded?(desc: D): void
  /**
   * The descriptions this one holds in flight (the fds a socket's queue passes with
   * SCM_RIGHTS): no fd needs to name those, as this one is reachable.
   */
  passes?(desc: D): ObjRef[] | Promise<ObjRef[]>
  /** `ckptfs show`'s text for the file: the target and what a reader wants at a glance (default: the target). */
  summary?(desc: D): string
}
