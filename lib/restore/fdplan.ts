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
 * Bytes are stored by hand: Buffer's write methods check their arguments and cross into C++
 * for copies, which cost more than the stores themselves at this count (profiled).
 */
export class RecordBuilder {
  private buf = Buffer.allocUnsafe(64)
  private len = 0

  private room(extra: number): void {
    if (this.len + extra <= this.buf.length) return
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + extra))
    bigger.set(this.buf.subarray(0, this.len))
    this.buf = bigger
  }

  u32(v: number): this {
    this.room(4)
    const b = this.buf
    const at = this.len
    b[at] = v
    b[at + 1] = v >>> 8
    b[at + 2] = v >>> 16
    b[at + 3] = v >>> 24
    this.len = at + 4
    return this
  }

  /** The same bits as u32: two's complement. */
  i32(v: number): this {
    return this.u32(v | 0)
  }

  u64(v: bigint): this {
    const u = BigInt.asUintN(64, v)
    this.u32(Number(u & 0xffffffffn))
    return this.u32(Number(u >> 32n))
  }

  bytes(data: Buffer): this {
    this.u32(data.length)
    this.room(data.length)
    this.buf.set(data, this.len)
    this.len += data.length
    return this
  }

  string(s: string): this {
    // ASCII (nearly every path) is stored as it is read; anything else is encoded.
    let ascii = true
    for (let i = 0; i < s.length && ascii; i++) ascii = s.charCodeAt(i) < 0x80
    if (!ascii) return this.bytes(Buffer.from(s, 'utf8'))
    this.u32(s.length)
    this.room(s.length)
    const b = this.buf
    for (let i = 0, at = this.len; i < s.length; i++) b[at + i] = s.charCodeAt(i)
    this.len += s.length
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
