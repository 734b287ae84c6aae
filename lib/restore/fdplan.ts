// The restorer stub's plan (docs/RESTORE.md): which file objects to open and where every fd
// goes. Each fd type's handler describes its object with a PlanWriter; this module only
// frames the records and decides the fd numbers of the stub's working area.

import type { FileTable, ObjRef, ProcessState } from '../model'

export const enum ObjectKind {
  Path = 1,
  Unlinked = 2,
  Memfd = 3,
  Pipe = 4,
  Fifo = 5,
  Eventfd = 6,
  Signalfd = 7,
  Timerfd = 8,
  Inotify = 9,
  /** Its items are added in the stub's last pass, once every fd is in place (reference/003). */
  Epoll = 10,
}

/**
 * Builds one object record's payload, field by field, in the stub's byte order, into one
 * growing buffer (a 10,000-fd plan has tens of thousands of fields: no buffer per field).
 */
export class RecordBuilder {
  private buf = Buffer.allocUnsafe(64)
  private len = 0

  private room(extra: number): void {
    if (this.len + extra <= this.buf.length) return
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + extra))
    this.buf.copy(bigger, 0, 0, this.len)
    this.buf = bigger
  }

  u32(v: number): this {
    this.room(4)
    this.len = this.buf.writeUInt32LE(v >>> 0, this.len)
    return this
  }

  i32(v: number): this {
    this.room(4)
    this.len = this.buf.writeInt32LE(v | 0, this.len)
    return this
  }

  u64(v: bigint): this {
    this.room(8)
    this.len = this.buf.writeBigUInt64LE(BigInt.asUintN(64, v), this.len)
    return this
  }

  bytes(data: Buffer): this {
    this.u32(data.length)
    this.room(data.length)
    this.len += data.copy(this.buf, this.len)
    return this
  }

  string(s: string): this {
    const length = Buffer.byteLength(s, 'utf8')
    this.u32(length)
    this.room(length)
    this.len += this.buf.write(s, this.len, 'utf8')
    return this
  }

  /** The bytes built; the builder is not used after this. */
  build(): Buffer {
    return this.buf.subarray(0, this.len)
  }
}

export interface PlannedRecord {
  kind: ObjectKind
  /** The objref the record opens (for a pipe: either end; the payload names both). */
  objref: ObjRef
  payload: Buffer
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
export function framePlan(table: FileTable, proc: ProcessState, records: PlannedRecord[]): FdPlan {
  let maxFd = -1
  let maxRef = 0
  const lowestFd = new Map<ObjRef, number>()
  for (const f of table.fds) {
    if (f.fd > maxFd) maxFd = f.fd
    const lowest = lowestFd.get(f.objref)
    if (lowest === undefined || f.fd < lowest) lowestFd.set(f.objref, f.fd)
  }
  for (const f of table.files) if (f.objref > maxRef) maxRef = f.objref
  const workFdBase = Math.max(3, maxFd + 1)
  const homeOf = (r: PlannedRecord) => lowestFd.get(r.objref) ?? Number.MAX_SAFE_INTEGER
  const ordered = records.map((r, i) => ({ r, home: homeOf(r), i })).sort((a, b) => a.home - b.home || a.i - b.i)
  const out = new RecordBuilder()
    .u32(0x53524b43) // "CKRS"
    .u32(1) // version
    .i32(workFdBase)
    .u32(maxRef)
    .u32(records.length)
    .u32(table.fds.length)
    .i32(proc.sid === proc.pid ? 1 : 0)
    .i32(proc.pgid === proc.pid ? 1 : 0)
  for (const { r } of ordered) out.u32(r.kind).u32(r.objref).bytes(r.payload)
  for (const f of table.fds) out.i32(f.fd).u32(f.objref).u32(f.closeOnExec ? 1 : 0)
  return { bytes: out.build(), workFdBase }
}
