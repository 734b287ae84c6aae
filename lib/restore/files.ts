// Turns a saved file table into the stub's records (lib/restore/fdplan.ts): one record per
// open file description (one per pipe), checked as reference/004 asks: a saved access mode
// is never upgraded and only restorable types pass.

import { CkptError } from '../errors'
import { handlerOf } from '../files/index'
import type { FileDescription, FileTable, PathDescription, PipeDescription } from '../model'
import { ObjectKind, RecordBuilder, type PlannedRecord } from './fdplan'

const O_ACCMODE = 0o3
const O_PATH = 0o10000000

/** FMODE_READ | FMODE_WRITE that an access mode grants. */
function modeOfFlags(flags: number): number {
  if (flags & O_PATH) return 0
  return [1, 2, 3, 0][flags & O_ACCMODE]
}

function where(f: FileDescription): string {
  return `files/${f.objref}`
}

function checkMode(f: FileDescription): void {
  const granted = modeOfFlags(f.flags)
  if (granted & ~f.mode) {
    throw new CkptError(`${where(f)}/f_mode: 0${f.mode.toString(8)} is less than f_flags 0${f.flags.toString(8)} grant: a restore never upgrades a mode`, 'EINVAL')
  }
}

async function contentsOf(f: PathDescription): Promise<Buffer> {
  if (!f.contents) throw new CkptError(`${where(f)}: unlinked file without saved contents`, 'EINVAL')
  return f.contents.read(0, f.contents.size)
}

function pathRecord(f: PathDescription): PlannedRecord {
  return { kind: ObjectKind.Path, objref: f.objref, payload: new RecordBuilder().i32(f.flags).u64(f.pos).string(f.path).build() }
}

async function regularRecord(f: PathDescription): Promise<PlannedRecord> {
  if (!f.unlinked) return pathRecord(f)
  const data = await contentsOf(f)
  const memfd = /^\/memfd:(.*)$/.exec(f.path)
  if (memfd) return { kind: ObjectKind.Memfd, objref: f.objref, payload: new RecordBuilder().i32(f.flags).u64(f.pos).string(memfd[1]).bytes(data).build() }
  return { kind: ObjectKind.Unlinked, objref: f.objref, payload: new RecordBuilder().i32(f.flags).u32(f.inodeMode).u64(f.pos).string(f.path).bytes(data).build() }
}

async function pipeRecord(ends: PipeDescription[]): Promise<PlannedRecord> {
  const read = ends.filter((e) => e.mode & 1)
  const write = ends.filter((e) => e.mode & 2)
  if (read.length > 1 || write.length > 1 || read.length + write.length !== ends.length) {
    throw new CkptError(`${where(ends[0])}: pipe ${ends[0].pipeId} has ${ends.length} open descriptions; only one read and one write end can be restored`, 'ENOTSUP')
  }
  const buffered = await ends[0].buffered()
  const payload = new RecordBuilder()
    .u64(ends[0].pipeId)
    .bytes(buffered)
    .u32(read[0]?.objref ?? 0)
    .i32(read[0]?.flags ?? 0)
    .u32(write[0]?.objref ?? 0)
    .i32(write[0]?.flags ?? 0)
    .build()
  return { kind: ObjectKind.Pipe, objref: ends[0].objref, payload }
}

/** The stub's records for every file description of the table, in objref order. */
export async function planFileRecords(table: FileTable): Promise<PlannedRecord[]> {
  const records: PlannedRecord[] = []
  const pipes = new Map<bigint, PipeDescription[]>()
  const fifosFilled = new Set<string>()
  for (const f of table.files) {
    if (f.notCheckpointable) throw new CkptError(`${where(f)}: ${f.notCheckpointable}`, 'ENOTSUP')
    checkMode(f)
    switch (f.type) {
      case 'file':
        records.push(await regularRecord(f))
        break
      case 'dir':
      case 'chr':
      case 'blk':
        records.push(pathRecord(f))
        break
      case 'fifo': {
        // The fifo's buffered bytes belong to the fifo, not to each of its open descriptions.
        const data = fifosFilled.has(f.path) ? Buffer.alloc(0) : (await f.buffered?.()) ?? Buffer.alloc(0)
        fifosFilled.add(f.path)
        records.push({ kind: ObjectKind.Fifo, objref: f.objref, payload: new RecordBuilder().i32(f.flags).string(f.path).bytes(data).build() })
        break
      }
      case 'pipe': {
        const ends = pipes.get(f.pipeId) ?? []
        ends.push(f)
        pipes.set(f.pipeId, ends)
        break
      }
      case 'eventfd':
        // The stub takes eventfd(2) flags: EFD_NONBLOCK is O_NONBLOCK, EFD_SEMAPHORE is 1.
        records.push({ kind: ObjectKind.Eventfd, objref: f.objref, payload: new RecordBuilder().u64(f.count).i32((f.flags & 0o4000) | (f.semaphore ? 1 : 0)).build() })
        break
      default: {
        // Types whose handler plans its own restore (lib/files/*.ts, planRestore).
        const planned = await handlerOf(f).planRestore?.(f, { table })
        if (!planned) throw new CkptError(`${where(f)}: ${f.type} files cannot be restored yet`, 'ENOTSUP')
        records.push(...[planned].flat())
      }
    }
  }
  for (const ends of pipes.values()) records.push(await pipeRecord(ends))
  return records
}
