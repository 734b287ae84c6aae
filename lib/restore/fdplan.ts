// The restorer stub's plan (docs/RESTORE.md): which file objects to open and where every fd
// goes. Each fd type's handler describes its object with a RecordBuilder; this module only
// frames the records and decides the fd numbers of the stub's working area.

import type { ContentsFill } from './contents'
import type { FileTable, ObjRef, ProcessState } from '../model'

/**
 * One object record's payload, field by field, in the stub's byte order. The fields are
 * kept as a list (a number per 32-bit word, a string or Buffer per counted field) and written
 * once, into the plan: a Buffer per record cost more than the rest of the plan for 10,000
 * /dev/null fds while the server's JavaScript is cold (profiled: most of 50 ms).
 */
export class RecordBuilder {
  /** A number is a 32-bit word; a string (ASCII) or Buffer is written after its length. */
  private readonly fields: Array<number | string | Buffer> = []
  private size = 0

  /** The payload's length in bytes. */
  get length(): number {
    return this.size
  }

  u32(v: number): this {
    this.fields.push(v >>> 0)
    this.size += 4
    return this
  }

  /** The same bits as u32: two's complement. */
  i32(v: number): this {
    return this.u32(v | 0)
  }

  u64(v: bigint): this {
    // Most values (offsets, counts) fit 32 bits: no bigint arithmetic for those.
    if (v >= 0n && v <= 0xffffffffn) return this.u32(Number(v)).u32(0)
    const u = BigInt.asUintN(64, v)
    this.u32(Number(u & 0xffffffffn))
    return this.u32(Number(u >> 32n))
  }

  bytes(data: Buffer): this {
    this.fields.push(data)
    this.size += 4 + data.length
    return this
  }

  string(s: string): this {
    // ASCII (nearly every path) is stored as it is; anything else is encoded now.
    for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) >= 0x80) return this.bytes(Buffer.from(s, 'utf8'))
    this.fields.push(s)
    this.size += 4 + s.length
    return this
  }

  /** Writes the fields at the writer's end. */
  writeTo(out: ByteWriter): void {
    for (const field of this.fields) {
      if (typeof field === 'number') out.u32(field)
      else if (typeof field === 'string') out.u32(field.length).ascii(field)
      else out.u32(field.length).copy(field)
    }
  }

  /** The payload's bytes on their own (tests). */
  toBuffer(): Buffer {
    const out = new ByteWriter(this.size)
    this.writeTo(out)
    return out.done()
  }
}

/**
 * Bytes stored into a buffer of the size announced. Stored by hand: Buffer's write methods
 * check their arguments and cross into C++, which cost more than the stores at this count.
 */
export class ByteWriter {
  private readonly buf: Buffer
  private len = 0

  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size)
  }

  u32(v: number): this {
    const b = this.buf
    const at = this.len
    b[at] = v
    b[at + 1] = v >>> 8
    b[at + 2] = v >>> 16
    b[at + 3] = v >>> 24
    this.len = at + 4
    return this
  }

  i32(v: number): this {
    return this.u32(v | 0)
  }

  ascii(s: string): this {
    const b = this.buf
    for (let i = 0, at = this.len; i < s.length; i++) b[at + i] = s.charCodeAt(i)
    this.len += s.length
    return this
  }

  copy(data: Buffer): this {
    this.buf.set(data, this.len)
    this.len += data.length
    return this
  }

  /** The bytes written; an error if that is not the size announced (a miscounted plan). */
  done(): Buffer {
    if (this.len !== this.buf.length) throw new Error(`plan: ${this.len} bytes written, ${this.buf.length} announced`)
    return this.buf
  }
}

export interface PlannedRecord {
  /** The stub's object kind: one of its handler's `stubKinds`. */
  kind: number
  /** The objref the record opens (for a pipe: either end; the payload names both). */
  objref: ObjRef
  /** Its fields, which framePlan writes into the plan. */
  payload: RecordBuilder
  /** Planned after every other record: its payload names fds of other objects (/proc/self/fd/N). */
  last?: boolean
  /** Contents too large for the plan, written into the file once the stub has made it (contents.ts). */
  fill?: ContentsFill
}

/**
 * How the stub opens files that the saved task named by path: with the task's filesystem
 * credentials (fsuid, fsgid, groups, and no capability its effective set lacked), and
 * reopened only when they are the saved file.
 */
export interface FileAccess {
  /** The checkpoint was made on this boot: a reopened file's dev and inode must be the saved ones too. */
  sameBoot: boolean
  /** The user said saved files may have been replaced on purpose: the identity check is skipped (never the credential check). */
  allowReplaced: boolean
  /**
   * Root alone stored the checkpoint (lib/restore/owner.ts): a file the task mapped but could
   * not open itself (it dropped its ids since) is opened by the restorer, if it is the saved file.
   */
  storedByRoot?: boolean
}

const PLAN_SAME_BOOT = 1, PLAN_ALLOW_REPLACED = 2, PLAN_TREE_COMMANDS = 4, PLAN_STORED_BY_ROOT = 8

/**
 * A task of a process tree (lib/restore/pstree.ts): every task's working area starts at one
 * number above every fd of the tree (objects pass from parent to child there), and its stub
 * serves the server's commands (fork a child, make a zombie) before closing that area.
 */
export interface TreePlan {
  workFdBase: number
}

export interface FdPlan {
  bytes: Buffer
  /** First fd number of the stub's working area: above every fd of the task. */
  workFdBase: number
}

/**
 * Frames the plan: header, the records the handlers planned, and the fd table. Records go in
 * the order of the lowest fd that names their object: the stub opens each object straight
 * at that number, and open() hands out the lowest free number, so in this order most opens
 * land where they belong with no further call.
 */
export function framePlan(table: FileTable, proc: ProcessState, records: PlannedRecord[], access: FileAccess, tree?: TreePlan): FdPlan {
  let maxFd = -1
  let maxRef = 0
  for (const f of table.files) if (f.objref > maxRef) maxRef = f.objref
  const lowestFd = new LowestFd(maxRef, table.files.length)
  for (const f of table.fds) {
    if (f.fd > maxFd) maxFd = f.fd
    lowestFd.offer(f.objref, f.fd)
  }
  const workFdBase = Math.max(3, maxFd + 1, tree?.workFdBase ?? 0)
  const creds = proc.creds
  let size = 56 + creds.groups.length * 4 + table.fds.length * 12
  for (const r of records) size += 12 + r.payload.length
  const out = new ByteWriter(size)
    .u32(0x53524b43) // "CKRS"
    .u32(2) // version
    .i32(workFdBase)
    .u32(maxRef)
    .u32(records.length)
    .u32(table.fds.length)
    .i32(proc.sid === proc.pid ? 1 : 0)
    .i32(proc.pgid === proc.pid ? 1 : 0)
    .u32((access.sameBoot ? PLAN_SAME_BOOT : 0) | (access.allowReplaced ? PLAN_ALLOW_REPLACED : 0) | (tree ? PLAN_TREE_COMMANDS : 0) | (access.storedByRoot ? PLAN_STORED_BY_ROOT : 0))
    .u32(creds.fsuid)
    .u32(creds.fsgid)
    .u32(Number(creds.capEffective & 0xffffffffn))
    .u32(Number(creds.capEffective >> 32n))
    .u32(creds.groups.length)
  for (const g of creds.groups) out.u32(g)
  for (const i of homeOrder(records, lowestFd)) {
    const r = records[i]
    out.u32(r.kind).u32(r.objref).u32(r.payload.length)
    r.payload.writeTo(out)
  }
  for (const f of table.fds) out.i32(f.fd).u32(f.objref).u32(f.closeOnExec ? 1 : 0)
  return { bytes: out.done(), workFdBase }
}

/** The home of a record whose object no fd names (above every fd number). */
const NO_FD = 2 ** 31
/** Where a `last` record sorts: after those too (still exact in a double once shifted by 2^21). */
const AFTER_ALL = NO_FD + 1

/**
 * Indexes of `records` by the lowest fd naming each record's object (records no fd names
 * last), in their given order where equal. Sorted as numbers, home * 2^21 + index, with
 * no comparator: a 10,000-fd plan's sort was most of the time of framing it.
 */
function homeOrder(records: PlannedRecord[], lowestFd: LowestFd): Iterable<number> {
  const keys = new Float64Array(records.length)
  let sorted = true
  for (let i = 0; i < records.length; i++) {
    // An fd is below 2^31, an index below 2^21 (the kernel's fd limit is 2^20): exact in a double.
    keys[i] = (records[i].last ? AFTER_ALL : lowestFd.of(records[i].objref)) * 2 ** 21 + i
    if (i > 0 && keys[i] < keys[i - 1]) sorted = false
  }
  if (sorted) return records.keys()
  keys.sort()
  return Array.from(keys, (key) => key % 2 ** 21)
}

/**
 * The lowest fd naming each objref (NO_FD for none). Objrefs are numbered 1..N by a
 * checkpoint: a table indexed by objref costs a tenth of a Map here. A hand-made tree may
 * number them sparsely, up to 2^31 - 1: then a Map.
 */
class LowestFd {
  private readonly dense: Float64Array | undefined
  private readonly sparse = new Map<ObjRef, number>()

  constructor(maxRef: number, count: number) {
    if (maxRef <= 4 * count + 64) this.dense = new Float64Array(maxRef + 1).fill(NO_FD)
  }

  offer(objref: ObjRef, fd: number): void {
    if (fd >= this.of(objref)) return
    if (this.dense && objref < this.dense.length) this.dense[objref] = fd
    else this.sparse.set(objref, fd)
  }

  of(objref: ObjRef): number {
    if (this.dense && objref < this.dense.length) return this.dense[objref]
    return this.sparse.get(objref) ?? NO_FD
  }
}
