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

/** Builds one object record's payload, field by field, in the stub's byte order. */
export class RecordBuilder {
  private readonly parts: Buffer[] = []

  u32(v: number): this {
    const b = Buffer.alloc(4)
    b.writeUInt32LE(v >>> 0)
    this.parts.push(b)
    return this
  }

  i32(v: number): this {
    const b = Buffer.alloc(4)
    b.writeInt32LE(v | 0)
    this.parts.push(b)
    return this
  }

  u64(v: bigint): this {
    const b = Buffer.alloc(8)
    b.writeBigUInt64LE(BigInt.asUintN(64, v))
    this.parts.push(b)
    return this
  }

  bytes(data: Buffer): this {
    this.u32(data.length)
    this.parts.push(data)
    return this
  }

  string(s: string): this {
    return this.bytes(Buffer.from(s, 'utf8'))
  }

  build(): Buffer {
    return Buffer.concat(this.parts)
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

/** Frames the plan: header, the records the handlers planned, and the fd table. */
export function framePlan(table: FileTable, proc: ProcessState, records: PlannedRecord[]): FdPlan {
  const maxFd = table.fds.reduce((m, f) => Math.max(m, f.fd), -1)
  const maxRef = table.files.reduce((m, f) => Math.max(m, f.objref), 0)
  const workFdBase = Math.max(3, maxFd + 1)
  const header = new RecordBuilder()
    .u32(1) // version
    .i32(workFdBase)
    .u32(maxRef)
    .u32(records.length)
    .u32(table.fds.length)
    .i32(proc.sid === proc.pid ? 1 : 0)
    .i32(proc.pgid === proc.pid ? 1 : 0)
    .build()
  const framed = records.map((r) => Buffer.concat([new RecordBuilder().u32(r.kind).u32(r.objref).u32(r.payload.length).build(), r.payload]))
  const fds = table.fds.map((f) => new RecordBuilder().i32(f.fd).u32(f.objref).u32(f.closeOnExec ? 1 : 0).build())
  return { bytes: Buffer.concat([Buffer.from('CKRS'), header, ...framed, ...fds]), workFdBase }
}
