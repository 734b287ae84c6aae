// Fuzz run of the restore input validation (SPEC "Restore": a malformed, truncated or
// inconsistent tree or image is refused with an error naming the file, and leaves nothing
// behind). One real checkpoint of test/fixtures/fuzz_target.c is saved (its tree and its
// `image`), then mutated at random in two levels, both bounded in time:
//
// Level 1, in a worker thread (most inputs): mutated images and mutated copies of the tree are
// loaded with loadSaved (lib/restore/load.ts: the tree loaders, or readImage for a directory
// holding only `image`), then planned as a restore would (planFileRecords, framePlan) and
// every lazy part read. Each input must load or be refused with a CkptError whose message is
// one non-empty line naming the file; any other exception, or a call that takes longer than
// CKPTFS_FUZZ_CALL_MS (5 s), fails. The main thread watches the worker, so a synchronous
// endless loop is caught too.
// Level 2, through the real mount and the real restore (fewer inputs): mutated trees (one
// copy in MNT/restore/, damaged and repaired in place) and mutated images are restored by
// writing MNT/restore/NAME/done. Each is either restored (the process runs; it is killed and
// its PID waited for) or refused (the write fails, status says "error: ..."). After each:
// the server answers, no process is left with the PID (alive or zombie), the server traces and
// parents nothing, no process of this test is stopped, and no new file is in the target's
// directory (such as a .ckptfs-restore-* temporary of the unlinked file). Undamaged controls
// (first, every 8th, last) must restore and run on.
// Both levels run at once (level 1 is CPU work in the worker, level 2 mostly waits).
// One validator (lib/restore/validate.ts): every mutated tree that parses is also converted
// into an image, and the image must get the same verdict as the tree (loaded or refused; the
// same message when the image decoder itself did not refuse first); every 32nd mutated image that
// parses is written as a tree, which must get the same outcome. The corpus (CORPUS below)
// changes the loaded model of the undamaged checkpoint in ways a restore must refuse, writes
// it both as a tree and as an image, and asserts both are refused with the same message.
//
// Seeded: the seed is printed; CKPTFS_FUZZ_SEED=N replays a run (each input depends only on
// the seed, its level and its number; CKPTFS_FUZZ_ONLY=image:K or tree:K runs that input of
// level 1 alone, without level 2).
// CKPTFS_FUZZ_SECONDS (40) bounds level 1, CKPTFS_FUZZ_MOUNT_SECONDS (55) and
// CKPTFS_FUZZ_MOUNT_ATTEMPTS (60) level 2.
// Failing inputs are kept under $TMPDIR/ckptfs-fuzz-failures-*/ (their path is printed).

import { execFile, execFileSync, spawn } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import * as zlib from 'zlib'
import { isMainThread, parentPort, Worker } from 'worker_threads'
import { CkptError } from '../lib/errors'
import { imageSchema, type FieldSchema, type MessageSchema, type RecordKind } from '../lib/image/schema'
import { framePlan } from '../lib/restore/fdplan'
import { planFileRecords } from '../lib/restore/files'
import { DiskDir } from '../lib/files/saved'
import { checkpointTree } from '../lib/image/convert'
import { readImage } from '../lib/image/decode'
import { imageSource } from '../lib/image/encode'
import { asObjRef, asTid, type FileDescription, type PathDescription, type TaskImage, type TimerfdDescription } from '../lib/model'
import { loadSaved, parseSaved, type SavedCheckpoint } from '../lib/restore/load'
import { vmaName } from '../lib/task/memory'
import { writeTree } from '../lib/tree/write'
import { sealTree } from '../lib/seal'

// ---------------------------------------------------------------------------------------
// Seeded randomness

/** murmur3's finalizer over several 32-bit parts: the seed of one input. */
function mix(...parts: number[]): number {
  let h = 0x9e3779b9
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x85ebca6b)
    h ^= h >>> 13
    h = Math.imul(h, 0xc2b2ae35)
    h ^= h >>> 16
  }
  return h >>> 0
}

/** sfc32. */
class Rng {
  private a: number
  private b: number
  private c: number
  private d = 1

  constructor(seed: number) {
    this.a = seed >>> 0
    this.b = mix(seed, 1)
    this.c = mix(seed, 2)
    for (let i = 0; i < 12; i++) this.u32()
  }

  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0
    this.d = (this.d + 1) | 0
    this.a = this.b ^ (this.b >>> 9)
    this.b = (this.c + (this.c << 3)) | 0
    this.c = (this.c << 21) | (this.c >>> 11)
    this.c = (this.c + t) | 0
    return t >>> 0
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 2 ** 32) * n)
  }

  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]
  }

  /** Picks by weight: [[weight, value], ...]. */
  weighted<T>(choices: ReadonlyArray<readonly [number, T]>): T {
    let r = (this.u32() / 2 ** 32) * choices.reduce((s, [w]) => s + w, 0)
    for (const [w, v] of choices) if ((r -= w) < 0) return v
    return choices[choices.length - 1][1]
  }

  bytes(n: number): Buffer {
    const out = Buffer.alloc(n)
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff
    return out
  }

  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32())
  }
}

/** Values that sit on the edges of every field width the image and tree use. */
function interestingNumber(rng: Rng, orig?: bigint): bigint {
  const edges = [
    0n, 1n, 2n, 3n, 7n, 9n, 0x7fn, 0x80n, 0xffn, 0x100n, 0xfffn, 0x1000n, 0x7fffn, 0xffffn, 0x10000n,
    (1n << 31n) - 1n, 1n << 31n, (1n << 32n) - 1n, 1n << 32n, 1n << 47n, 1n << 48n, (1n << 53n) - 1n, 1n << 53n, (1n << 53n) + 1n,
    (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 1n, 0x7ffffffff000n, 0xffffffffff600000n,
  ]
  return rng.weighted<() => bigint>([
    [6, () => rng.pick(edges)],
    [2, () => BigInt(rng.int(100))],
    [1, () => rng.u64()],
    [1, () => ((1n << 64n) - BigInt(1 + rng.int(4096))) /* a negative int64 */],
    [3, () => (orig === undefined ? 0n : orig + BigInt(rng.pick([1, -1, 4096, -4096, 2, 8])))],
    [2, () => (orig === undefined ? 1n : orig ^ (1n << BigInt(rng.int(64))))],
  ])()
}

// ---------------------------------------------------------------------------------------
// Protobuf at the wire level (lib/image/ckptfs.proto): enough to take the image apart into its
// records, damage one field of one record, put it back together and, when asked, write a
// trailer whose totals and checksum match again (so the damage reaches the checks behind it).

interface WireField {
  id: number
  wire: number
  /** Varint value (any width). */
  value?: bigint
  /** Fixed32/64 bytes, or the contents of a length-delimited field. */
  bytes?: Buffer
  /** A nested message (the schema says so and it parses). */
  sub?: WireField[]
  /** A packed list of varints. */
  packed?: bigint[]
  schema?: FieldSchema
}

function readVarint(buf: Buffer, pos: number): [bigint, number] | undefined {
  let v = 0n
  for (let i = 0; i < 10 && pos + i < buf.length; i++) {
    v |= BigInt(buf[pos + i] & 0x7f) << BigInt(7 * i)
    if ((buf[pos + i] & 0x80) === 0) return [v & ((1n << 64n) - 1n), pos + i + 1]
  }
  return undefined
}

function varintBytes(value: bigint): Buffer {
  let v = value & ((1n << 64n) - 1n)
  const out: number[] = []
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80)
    v >>= 7n
  }
  out.push(Number(v))
  return Buffer.from(out)
}

const PACKABLE = new Set(['uint32', 'int32', 'uint64', 'int64', 'bool', 'enum'])

/** Parses a message; undefined when the bytes are not one. */
function parseMessage(buf: Buffer, schema: MessageSchema | undefined): WireField[] | undefined {
  const fields: WireField[] = []
  for (let pos = 0; pos < buf.length;) {
    const tag = readVarint(buf, pos)
    if (!tag || tag[0] > 0xffffffffn) return undefined
    const id = Number(tag[0] >> 3n)
    const wire = Number(tag[0] & 7n)
    pos = tag[1]
    const fs = schema?.byId.get(id)
    if (wire === 0) {
      const v = readVarint(buf, pos)
      if (!v) return undefined
      fields.push({ id, wire, value: v[0], schema: fs })
      pos = v[1]
    } else if (wire === 1 || wire === 5) {
      const n = wire === 1 ? 8 : 4
      if (pos + n > buf.length) return undefined
      fields.push({ id, wire, bytes: buf.subarray(pos, pos + n), schema: fs })
      pos += n
    } else if (wire === 2) {
      const len = readVarint(buf, pos)
      if (!len || len[1] + Number(len[0]) > buf.length) return undefined
      const bytes = buf.subarray(len[1], len[1] + Number(len[0]))
      pos = len[1] + bytes.length
      const field: WireField = { id, wire, bytes, schema: fs }
      if (fs?.kind === 'message') field.sub = parseMessage(bytes, fs.message)
      else if (fs?.repeated && PACKABLE.has(fs.kind)) field.packed = parsePacked(bytes)
      fields.push(field)
    } else return undefined
  }
  return fields
}

function parsePacked(buf: Buffer): bigint[] | undefined {
  const out: bigint[] = []
  for (let pos = 0; pos < buf.length;) {
    const v = readVarint(buf, pos)
    if (!v) return undefined
    out.push(v[0])
    pos = v[1]
  }
  return out
}

function encodeField(f: WireField): Buffer {
  const tag = varintBytes(BigInt(f.id) * 8n + BigInt(f.wire))
  if (f.wire === 0) return Buffer.concat([tag, varintBytes(f.value ?? 0n)])
  if (f.wire === 2) {
    const body = f.sub ? encodeFields(f.sub) : f.packed ? Buffer.concat(f.packed.map(varintBytes)) : f.bytes ?? Buffer.alloc(0)
    return Buffer.concat([tag, varintBytes(BigInt(body.length)), body])
  }
  return Buffer.concat([tag, f.bytes ?? Buffer.alloc(f.wire === 1 ? 8 : 4)])
}

function encodeFields(fields: WireField[]): Buffer {
  return Buffer.concat(fields.map(encodeField))
}

/** One top-level record of an image. */
interface ImageRecord {
  id: number
  wire: number
  body: Buffer
}

function splitImage(image: Buffer): ImageRecord[] | undefined {
  const records: ImageRecord[] = []
  for (let pos = 0; pos < image.length;) {
    const tag = readVarint(image, pos)
    if (!tag || tag[0] > 0xffffffffn || (tag[0] & 7n) !== 2n) return undefined
    const len = readVarint(image, tag[1])
    if (!len || len[1] + Number(len[0]) > image.length) return undefined
    records.push({ id: Number(tag[0] >> 3n), wire: 2, body: image.subarray(len[1], len[1] + Number(len[0])) })
    pos = len[1] + Number(len[0])
  }
  return records
}

function recordHead(r: ImageRecord): Buffer {
  return Buffer.concat([varintBytes(BigInt(r.id) * 8n + BigInt(r.wire)), varintBytes(BigInt(r.body.length))])
}

/** Every record kind's message (a kind missing here is a type error, so no record goes unfuzzed). */
const KIND_SCHEMA = {
  header: 'Header', process: 'Process', thread: 'Thread', file: 'FileDescription', fd: 'FdEntry', vma: 'Vma',
  pageChunk: 'PageChunk', fileChunk: 'FileChunk', task: 'Task', zombie: 'Zombie', trailer: 'Trailer',
} as const satisfies Record<RecordKind, string>

function recordSchema(id: number): { kind: string; schema: MessageSchema } | undefined {
  const s = imageSchema()
  const kind = s.recordKinds.get(id)
  return kind ? { kind, schema: s[KIND_SCHEMA[kind]] } : undefined
}

/**
 * Joins records into an image. With `fix`, the first trailer gets the totals and the CRC-32
 * the decoder computes (every byte before it but the contents of chunk data fields and the
 * chunks' crc32c fields, which cover the data).
 */
function joinImage(records: ImageRecord[], fix: boolean): Buffer {
  const s = imageSchema()
  const trailerId = s.recordIds.get('trailer')!
  const parts: Buffer[] = []
  let crc = 0
  let offset = 0
  let count = 0
  let pageBytes = 0n
  let fileBytes = 0n
  let fixed = false
  for (const r of records) {
    if (fix && !fixed && r.id === trailerId) {
      const trailer: WireField[] = [
        { id: 1, wire: 0, value: BigInt(count) }, { id: 2, wire: 0, value: BigInt(offset) },
        { id: 3, wire: 0, value: pageBytes }, { id: 4, wire: 0, value: fileBytes }, { id: 5, wire: 0, value: BigInt(crc >>> 0) },
      ]
      const fixedRecord = { ...r, body: encodeFields(trailer) }
      parts.push(recordHead(fixedRecord), fixedRecord.body)
      fixed = true
      continue
    }
    const head = recordHead(r)
    parts.push(head, r.body)
    if (fixed) continue
    count++
    offset += head.length + r.body.length
    crc = zlib.crc32(head, crc)
    const kind = s.recordKinds.get(r.id)
    const chunk = kind === 'pageChunk' || kind === 'fileChunk' ? s.chunks[kind] : undefined
    const fields = chunk ? parseMessage(r.body, undefined) : undefined
    if (!chunk || !fields) {
      crc = zlib.crc32(r.body, crc)
      continue
    }
    for (const f of fields) {
      const enc = encodeField(f)
      if (f.id === chunk.data.id && f.wire === 2) {
        crc = zlib.crc32(enc.subarray(0, enc.length - f.bytes!.length), crc)
        if (kind === 'pageChunk') pageBytes += BigInt(f.bytes!.length)
        else fileBytes += BigInt(f.bytes!.length)
      } else if (!(f.id === chunk.crc32c.id && f.wire === 5)) crc = zlib.crc32(enc, crc)
    }
  }
  return Buffer.concat(parts)
}

/** Byte ranges of an image that are metadata (everything but the contents of chunk data fields and their crc32c fields). */
function metadataRanges(image: Buffer): Array<[number, number]> {
  const s = imageSchema()
  const data: Array<[number, number]> = []
  let pos = 0
  for (const r of splitImage(image) ?? []) {
    const bodyAt = pos + recordHead(r).length
    const kind = s.recordKinds.get(r.id)
    const chunk = kind === 'pageChunk' || kind === 'fileChunk' ? s.chunks[kind] : undefined
    let at = bodyAt
    for (const f of (chunk && parseMessage(r.body, undefined)) || []) {
      const length = encodeField(f).length
      if (f.id === chunk!.data.id && f.wire === 2) data.push([at + length - f.bytes!.length, at + length])
      if (f.id === chunk!.crc32c.id && f.wire === 5) data.push([at, at + length])
      at += length
    }
    pos = bodyAt + r.body.length
  }
  const ranges: Array<[number, number]> = []
  let from = 0
  for (const [a, b] of data) {
    if (a > from) ranges.push([from, a])
    from = b
  }
  if (image.length > from) ranges.push([from, image.length])
  return ranges
}

// ---------------------------------------------------------------------------------------
// Image mutations

interface Mutant {
  data: Buffer
  what: string[]
  /** Instead of a file: the image is replaced by one of these (level 1 only). */
  special?: 'fifo' | 'dir' | 'symlink-devzero' | 'symlink-good' | 'missing'
}

/** Names a field path for reports: "vma #3.start". */
function fieldName(f: WireField): string {
  return f.schema ? f.schema.name : `#${f.id}`
}

/** Every field of a parsed message, with its container and a readable path. */
function leaves(fields: WireField[], prefix: string, out: Array<{ list: WireField[]; index: number; where: string }> = []) {
  fields.forEach((f, index) => {
    const where = `${prefix}.${fieldName(f)}`
    out.push({ list: fields, index, where })
    if (f.sub) leaves(f.sub, where, out)
  })
  return out
}

/** Byte contents that are not bulk data: safe to damage where the damaged process may run. */
const RUNNABLE_BYTES = new Set(['regs', 'xstate', 'fpregs', 'data'])

function mutateField(rng: Rng, list: WireField[], index: number, safe: boolean): string {
  const f = list[index]
  const ops: Array<readonly [number, () => string]> = [
    [1, () => { list.splice(index, 1); return 'removed' }],
    [1, () => { list.splice(index + 1, 0, { ...f }); return 'duplicated' }],
    [0.5, () => { const id = 1 + rng.int(40); list[index] = { ...f, id, schema: undefined }; return `renumbered to field ${id}` }],
    [0.5, () => {
      const wire = rng.pick([0, 1, 2, 5].filter((w) => w !== f.wire))
      list[index] = { id: f.id, wire, value: 1n, bytes: wire === 1 ? Buffer.alloc(8) : wire === 5 ? Buffer.alloc(4) : Buffer.from([1]), schema: f.schema }
      return `wire type ${f.wire} -> ${wire}`
    }],
    [0.5, () => { list.splice(index + 1, 0, { id: 100 + rng.int(1000), wire: 2, bytes: rng.bytes(rng.int(16)) }); return 'unknown field added after it' }],
  ]
  if (f.wire === 0) {
    ops.push([8, () => { const v = interestingNumber(rng, f.value); f.value = v; return `= ${v}` }])
  } else if (f.wire === 2 && f.packed) {
    ops.push([6, () => {
      const items = f.packed!
      if (items.length === 0 || rng.chance(0.2)) { items.push(interestingNumber(rng)); return `item ${items[items.length - 1]} appended` }
      const i = rng.int(items.length)
      if (rng.chance(0.3)) { items.splice(i, 1); return `item ${i} removed` }
      items[i] = interestingNumber(rng, items[i])
      return `item ${i} = ${items[i]}`
    }])
  } else if (f.wire === 2 && f.sub) {
    ops.push([2, () => { f.sub!.push({ id: 100 + rng.int(1000), wire: 0, value: rng.u64() }); return 'unknown field added inside' }])
    ops.push([1, () => { f.sub = []; return 'emptied' }])
  } else if (f.wire === 2) {
    const b = f.bytes ?? Buffer.alloc(0)
    const sameSizeOk = !safe || !RUNNABLE_BYTES.has(f.schema?.name ?? '')
    ops.push([2, () => { f.bytes = b.subarray(0, rng.int(b.length + 1)); return `cut to ${f.bytes.length} bytes` }])
    ops.push([1, () => { f.bytes = Buffer.concat([b, rng.bytes(1 + rng.int(64))]); return `extended to ${f.bytes.length} bytes` }])
    ops.push([1, () => { f.bytes = Buffer.alloc(0); return 'emptied' }])
    ops.push([1, () => { f.bytes = rng.pick([Buffer.from('/'), Buffer.from('relative'), Buffer.from('/nonexistent/x'), Buffer.from('a\0b'), Buffer.alloc(5000, 'x'), Buffer.from('\n')]); return `= ${JSON.stringify(f.bytes.toString('utf8').slice(0, 20))}` }])
    if (sameSizeOk && b.length > 0) {
      ops.push([3, () => { const c = Buffer.from(b); const i = rng.int(c.length); c[i] ^= 1 << rng.int(8); f.bytes = c; return `byte ${i} flipped` }])
      ops.push([1, () => { f.bytes = rng.bytes(b.length); return 'random bytes' }])
    }
  } else {
    ops.push([3, () => { f.bytes = rng.bytes(f.wire === 1 ? 8 : 4); return 'random fixed bytes' }])
  }
  return rng.weighted(ops)()
}

/** One structured mutation (a record or one field of one record), or undefined when the image does not split. */
function mutateStructured(image: Buffer, rng: Rng, safe: boolean): { data: Buffer; what: string } | undefined {
  const records = splitImage(image)
  if (!records || records.length === 0) return undefined
  const s = imageSchema()
  const fix = rng.chance(0.85)
  const label = (i: number) => {
    const kind = s.recordKinds.get(records[i].id) ?? `record ${records[i].id}`
    return `${kind} #${records.slice(0, i + 1).filter((r) => r.id === records[i].id).length}`
  }
  const trailerId = s.recordIds.get('trailer')!
  let what: string
  const op = rng.weighted([[10, 'field'], [1, 'remove'], [1, 'duplicate'], [1, 'move'], [0.5, 'unknown'], [0.3, 'wire']] as const)
  const i = rng.int(records.length)
  if (op === 'field') {
    const rs = recordSchema(records[i].id)
    const fields = parseMessage(records[i].body, rs?.schema)
    if (!fields) return undefined
    const all = leaves(fields, label(i))
    if (all.length === 0) {
      fields.push({ id: 1 + rng.int(20), wire: 0, value: interestingNumber(rng) })
      what = `${label(i)}: a field added to the empty record`
    } else {
      const leaf = rng.pick(all)
      // Page data is not checked (any bytes are valid memory): where the result may run, leave it.
      if (safe && rs?.kind === 'pageChunk' && leaf.list[leaf.index].id === s.chunks.pageChunk.data.id) return undefined
      what = `${leaf.where}: ${mutateField(rng, leaf.list, leaf.index, safe)}`
    }
    records[i] = { ...records[i], body: encodeFields(fields) }
  } else if (op === 'remove') {
    what = `${label(i)} removed`
    records.splice(i, 1)
  } else if (op === 'duplicate') {
    what = `${label(i)} duplicated`
    records.splice(i + 1, 0, records[i])
  } else if (op === 'move') {
    const j = rng.int(records.length)
    what = `${label(i)} moved to position ${j}`
    const [r] = records.splice(i, 1)
    records.splice(j, 0, r)
  } else if (op === 'unknown') {
    const id = rng.pick([9, 10, 11, 12, 13, 14, 16, 100, 536870911])
    what = `an unknown record ${id} inserted at position ${i}`
    records.splice(i, 0, { id, wire: 2, body: rng.bytes(rng.int(40)) })
  } else {
    what = `${label(i)}: wire type 0`
    records[i] = { ...records[i], wire: 0, body: Buffer.alloc(0) }
    const data = Buffer.concat(records.map((r) => (r.wire === 2 ? Buffer.concat([recordHead(r), r.body]) : varintBytes(BigInt(r.id) * 8n))))
    return { data, what }
  }
  // A trailer that was removed or moved stays where it is: fix only a real trailer.
  if (!records.some((r) => r.id === trailerId)) return { data: joinImage(records, false), what }
  return { data: joinImage(records, fix), what: fix ? `${what} (trailer fixed)` : what }
}

/** A raw byte-level mutation; `metadata` confines it to those ranges (level 2). */
function mutateRaw(image: Buffer, rng: Rng, metadata: Array<[number, number]> | undefined): { data: Buffer; what: string } {
  const at = (): number => {
    if (!metadata || metadata.length === 0) return rng.int(Math.max(1, image.length))
    const [a, b] = rng.pick(metadata)
    return a + rng.int(Math.max(1, b - a))
  }
  const op = rng.weighted([[4, 'flip'], [3, 'overwrite'], [2, 'truncate'], [1, 'remove'], [1, 'duplicate'], [1, 'insert']] as const)
  const p = Math.min(at(), Math.max(0, image.length - 1))
  switch (op) {
    case 'flip': {
      const d = Buffer.from(image)
      const n = 1 + rng.int(4)
      const where: number[] = []
      for (let k = 0; k < n; k++) {
        const q = k === 0 ? p : Math.min(at(), d.length - 1)
        d[q] ^= 1 << rng.int(8)
        where.push(q)
      }
      return { data: d, what: `bits flipped at bytes ${where.join(', ')}` }
    }
    case 'overwrite': {
      const d = Buffer.from(image)
      const fill = rng.weighted([[2, () => rng.bytes(1 + rng.int(16))], [1, () => Buffer.alloc(1 + rng.int(8), 0xff)], [1, () => Buffer.alloc(1 + rng.int(8), 0)], [1, () => Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01])]])()
      fill.copy(d, p)
      return { data: d, what: `${Math.min(fill.length, d.length - p)} bytes overwritten at ${p}` }
    }
    case 'truncate':
      return { data: image.subarray(0, p), what: `truncated to ${p} bytes` }
    case 'remove': {
      const n = 1 + rng.int(rng.chance(0.5) ? 8 : 4096)
      return { data: Buffer.concat([image.subarray(0, p), image.subarray(p + n)]), what: `${n} bytes removed at ${p}` }
    }
    case 'duplicate': {
      const n = 1 + rng.int(rng.chance(0.5) ? 16 : 4096)
      const to = at()
      return { data: Buffer.concat([image.subarray(0, to), image.subarray(p, p + n), image.subarray(to)]), what: `bytes ${p}..${p + n} copied to ${to}` }
    }
    case 'insert': {
      const b = rng.bytes(1 + rng.int(32))
      return { data: Buffer.concat([image.subarray(0, p), b, image.subarray(p)]), what: `${b.length} random bytes inserted at ${p}` }
    }
  }
}

/** 1 to 3 mutations of `image`. `safe`: the result may be restored and run (level 2). */
function mutateImage(image: Buffer, rng: Rng, safe: boolean): Mutant {
  if (!safe && rng.chance(0.02)) {
    return { data: image, what: ['image replaced'], special: rng.pick(['fifo', 'dir', 'symlink-devzero', 'symlink-good', 'missing'] as const) }
  }
  const metadata = safe ? metadataRanges(image) : undefined
  const n = rng.weighted([[6, 1], [3, 2], [1, 3]] as const)
  let data = image
  const what: string[] = []
  for (let k = 0; k < n; k++) {
    const structured = rng.chance(safe ? 0.8 : 0.6) ? mutateStructured(data, rng, safe) : undefined
    const m = structured ?? mutateRaw(data, rng, safe ? (splitImage(data) ? metadataRanges(data) : metadata) : undefined)
    data = m.data
    what.push(m.what)
  }
  return { data, what }
}

// ---------------------------------------------------------------------------------------
// Tree mutations: applied in place to a copy of the tree, and undone by copying the touched
// paths back from the pristine tree.

interface TreeInfo {
  /** Relative paths of the files, directories of the pristine tree. */
  files: string[]
  dirs: string[]
  /** Files grouped by base name, so every kind of value is picked as often (not 62 signal actions for one comm). */
  byName: string[][]
}

/** The top-level files no loader reads (or that start a restore when written in restore/). */
const TOP_SKIPPED = new Set(['image', 'done', 'status', 'mode', 'pid', 'problems'])
/** Binary files whose same-size changes are valid input (memory, registers): not in level 2. */
const RUNNABLE_FILES = new Set(['pages', 'regs', 'xstate', 'auxv'])

function treeInfo(root: string): TreeInfo {
  const files: string[] = []
  const dirs: string[] = []
  const walk = (rel: string) => {
    for (const name of fs.readdirSync(path.join(root, rel)).sort()) {
      const p = rel ? `${rel}/${name}` : name
      if (fs.lstatSync(path.join(root, p)).isDirectory()) {
        dirs.push(p)
        walk(p)
      } else if (rel !== '' || !TOP_SKIPPED.has(name)) files.push(p)
    }
  }
  walk('')
  const groups = new Map<string, string[]>()
  for (const f of files) groups.set(path.basename(f), [...(groups.get(path.basename(f)) ?? []), f])
  return { files, dirs, byName: [...groups.values()] }
}

function isBinary(data: Buffer): boolean {
  return data.some((b) => (b < 0x20 && b !== 0x0a && b !== 0x09) || b >= 0x7f)
}

function randomValue(rng: Rng, orig: Buffer): { data: Buffer; what: string } {
  const text = orig.toString('latin1')
  const value = text.endsWith('\n') ? text.slice(0, -1) : text
  const origNum = /^-?\d+$/.test(value) ? BigInt(value) : /^0x[0-9a-f]+$/i.test(value) ? BigInt(value) : undefined
  const choices: Array<readonly [number, () => string | Buffer]> = [
    [1, () => ''],
    [1, () => '\n'],
    [2, () => value],
    [1, () => `${value}\n${value}\n`],
    [2, () => rng.bytes(1 + rng.int(40))],
    [5, () => `${interestingNumber(rng, origNum)}\n`],
    [2, () => `-${interestingNumber(rng, origNum)}\n`],
    [1, () => `${rng.pick(['0x', '0', '00', '+', ' ', '-0', '1e3', '0b', '\t'])}${interestingNumber(rng, origNum).toString(rng.pick([10, 16, 8]))}\n`],
    [1, () => `${'9'.repeat(rng.pick([20, 40, 400]))}\n`],
    [1, () => `${'a'.repeat(rng.pick([16, 4095, 4097, 9000]))}\n`],
    [1, () => `${value.slice(0, rng.int(value.length + 1))}\0${value.slice(1)}\n`],
    [2, () => {
      if (value.length === 0) return 'x\n'
      const c = [...value]
      const i = rng.int(c.length)
      c[i] = rng.pick([...'0123456789abcdefx-/ .rwxps'])
      return `${c.join('')}\n`
    }],
    [1, () => `${value}${rng.pick([' ', '  1', '\r', 'x', ' 0x1'])}\n`],
    [1, () => `${rng.pick(['/', '/nonexistent', 'relative/path', '/dev/null', '/tmp/../tmp', 'unlimited', 'yes', 'none', '0 0', 'file', 'pipe', 'epoll'])}\n`],
  ]
  const made = rng.weighted(choices)()
  const data = typeof made === 'string' ? Buffer.from(made, 'latin1') : made
  return { data, what: `= ${JSON.stringify(data.toString('latin1').slice(0, 40))}${data.length > 40 ? ` (${data.length} bytes)` : ''}` }
}

interface TreeMutation {
  what: string
  /** Paths (relative) to copy back from the pristine tree to undo it. */
  touched: string[]
}

/**
 * One mutation of the tree at `root`. `level2`: through the mount (no FIFOs or symlinks; no
 * same-size changes of memory or registers, which are valid input that would then run).
 */
function mutateTree(root: string, info: TreeInfo, rng: Rng, level2: boolean): TreeMutation | undefined {
  const full = (p: string) => path.join(root, p)
  // Never follows a link, never opens a FIFO an earlier mutation left.
  const kind = (p: string) => {
    try {
      const st = fs.lstatSync(full(p))
      return st.isFile() ? 'file' : st.isDirectory() ? 'dir' : 'other'
    } catch {
      return undefined
    }
  }
  const file = rng.pick(rng.pick(info.byName))
  if (kind(file) !== 'file') return undefined
  const dir = rng.chance(0.5) ? path.dirname(file) : rng.pick(info.dirs)
  const baseDir = dir === '.' ? '' : dir
  const op = rng.weighted([
    [10, 'value'], [2, 'delete'], [0.5, 'delete-dir'], [1.5, 'extra'], [1, 'rename'], [1, 'as-dir'],
    [level2 ? 0 : 0.5, 'symlink'], [level2 ? 0 : 0.3, 'fifo'], [1, 'extra-dir'],
  ] as const)
  switch (op) {
    case 'value': {
      const orig = fs.readFileSync(full(file))
      const binary = isBinary(orig) || RUNNABLE_FILES.has(path.basename(file))
      if (binary) {
        const sizeOnly = level2 && RUNNABLE_FILES.has(path.basename(file))
        const bop = rng.weighted([[3, 'truncate'], [2, 'extend'], [sizeOnly ? 0 : 3, 'flip'], [sizeOnly ? 0 : 1, 'zero'], [1, 'empty']] as const)
        let data: Buffer
        if (bop === 'truncate') data = orig.subarray(0, rng.int(orig.length))
        else if (bop === 'extend') data = Buffer.concat([orig, rng.chance(0.5) ? Buffer.alloc(4096) : rng.bytes(1 + rng.int(100))])
        else if (bop === 'flip') {
          data = Buffer.from(orig)
          if (data.length > 0) data[rng.int(data.length)] ^= 1 << rng.int(8)
        } else if (bop === 'zero') data = Buffer.alloc(orig.length)
        else data = Buffer.alloc(0)
        fs.writeFileSync(full(file), data)
        return { what: `${file}: ${bop} (${orig.length} -> ${data.length} bytes)`, touched: [file] }
      }
      const { data, what } = randomValue(rng, orig)
      fs.writeFileSync(full(file), data)
      return { what: `${file} ${what}`, touched: [file] }
    }
    case 'delete':
      fs.rmSync(full(file))
      return { what: `${file} deleted`, touched: [file] }
    case 'delete-dir': {
      const d = rng.pick(info.dirs)
      if (kind(d) !== 'dir') return undefined
      fs.rmSync(full(d), { recursive: true })
      return { what: `${d}/ deleted`, touched: [d] }
    }
    case 'extra':
    case 'extra-dir': {
      const name = rng.pick(['extra', '.hidden', '0', '999', '-1', 'task-1', `${path.basename(file)}.orig`, 'files', 'image', ' ', '01'])
      const p = baseDir ? `${baseDir}/${name}` : name
      if (kind(p) !== undefined || kind(baseDir) === undefined || TOP_SKIPPED.has(p)) return undefined
      if (op === 'extra') fs.writeFileSync(full(p), rng.chance(0.5) ? '1\n' : rng.bytes(rng.int(30)))
      else fs.mkdirSync(full(p))
      return { what: `${p}${op === 'extra-dir' ? '/' : ''} added`, touched: [p] }
    }
    case 'rename': {
      const from = rng.chance(0.7) ? file : rng.pick(info.dirs)
      if (kind(from) === undefined) return undefined
      const siblings = fs.readdirSync(path.dirname(full(from)))
      const name = rng.chance(0.4) ? rng.pick(siblings) : rng.pick(['x', `${path.basename(from)}~`, '7', '00', 'task-0', `task-${2 ** 31}`, 'task-99999'])
      const to = path.dirname(from) === '.' ? name : `${path.dirname(from)}/${name}`
      if (to === from || TOP_SKIPPED.has(to)) return undefined
      // Renaming onto a directory needs it empty: take it away first.
      if (kind(to) !== undefined) fs.rmSync(full(to), { recursive: true })
      fs.renameSync(full(from), full(to))
      return { what: `${from} renamed to ${to}`, touched: [from, to] }
    }
    case 'as-dir':
      fs.rmSync(full(file))
      fs.mkdirSync(full(file))
      return { what: `${file} replaced by a directory`, touched: [file] }
    case 'symlink': {
      const target = rng.pick(['/dev/zero', '/dev/null', path.relative(path.dirname(full(file)), full(rng.pick(info.files))), '/nonexistent', '/proc/self/mem'])
      fs.rmSync(full(file))
      fs.symlinkSync(target, full(file))
      return { what: `${file} replaced by a symbolic link to ${target}`, touched: [file] }
    }
    case 'fifo':
      fs.rmSync(full(file))
      execFileSync('mkfifo', [full(file)])
      return { what: `${file} replaced by a FIFO`, touched: [file] }
  }
}

/**
 * Reseals a mutated tree (lib/seal.ts, what `ckptfs seal` runs; in process, as the fuzz makes
 * thousands), so the loaders and the validator judge the mutation rather than values_crc32c.
 * A tree seal refuses (a link, a FIFO, no task directory) is judged as it is. Returns the files
 * it rewrote, for the undo (also those written before a failure).
 */
function resealMutated(root: string): string[] {
  const rewrote: string[] = []
  try {
    sealTree(root, rewrote)
  } catch (err) {
    if (!(err instanceof CkptError)) throw err
  }
  return rewrote
}

/** 1 to 3 mutations; their undo. */
function mutateTreeSome(root: string, info: TreeInfo, rng: Rng, level2: boolean): TreeMutation {
  const n = rng.weighted([[6, 1], [3, 2], [1, 3]] as const)
  const what: string[] = []
  const touched: string[] = []
  for (let k = 0, tries = 0; k < n && tries < 20; tries++) {
    const m = mutateTree(root, info, rng, level2)
    if (!m) continue
    what.push(m.what)
    touched.push(...m.touched)
    k++
  }
  return { what: what.join('; '), touched }
}

/**
 * Copies `touched` back from `pristine` to `root` (removing what the pristine tree lacks). A
 * path below another touched one is restored with it: one mutation may have replaced its
 * parent (a file renamed onto the directory holding a file another mutation wrote).
 */
function undoTree(root: string, pristine: string, touched: string[]): void {
  const set = new Set(touched)
  const covered = (p: string) => p.split('/').slice(0, -1).some((_, i, parts) => set.has(parts.slice(0, i + 1).join('/')))
  for (const p of set) {
    if (covered(p)) continue
    fs.rmSync(path.join(root, p), { recursive: true, force: true })
    const from = path.join(pristine, p)
    if (fs.existsSync(from)) fs.cpSync(from, path.join(root, p), { recursive: true })
  }
}

/** Opens every FIFO below `dir` for writing, to release a reader blocked in open(). */
function releaseFifos(dir: string): void {
  const walk = (d: string) => {
    for (const name of fs.readdirSync(d)) {
      const p = path.join(d, name)
      const st = fs.lstatSync(p)
      if (st.isDirectory()) walk(p)
      else if (st.isFIFO()) {
        try {
          fs.closeSync(fs.openSync(p, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK))
        } catch {
          // no reader
        }
      }
    }
  }
  walk(dir)
}

// ---------------------------------------------------------------------------------------
// The verdict on one call

type Verdict =
  | { ok: true; outcome: 'loaded' | 'refused'; message?: string; errno?: string; ms: number }
  | { ok: false; why: string; ms: number; hung?: boolean }

/** A clear refusal: one non-empty line, naming the file ("files/7/f_pos: ..."), no "undefined" or "NaN" of its own. */
function badMessage(message: string, names: RegExp): string | undefined {
  if (message.trim() === '') return 'an empty message'
  if (/[\n\r]/.test(message)) return 'a message of more than one line'
  const own = message.replace(/"(?:[^"\\]|\\.)*"/g, '""')
  // Not "null": it is part of real values (/dev/null) that messages echo unquoted.
  if (/\bundefined\b|\bNaN\b|\[object /.test(own)) return 'a message that shows a JavaScript value'
  if (/does not match its reader|reader out of date|schema has no field/.test(own)) return 'an internal error of the reader, not a refusal of the input'
  if (!names.test(message)) return `a message that does not name the file (expected ${names})`
  return undefined
}

async function judge(call: () => Promise<unknown>, ms: number, names: RegExp): Promise<Verdict> {
  const started = Date.now()
  let timer: NodeJS.Timeout | undefined
  const hang = new Promise<'hang'>((resolve) => {
    timer = setTimeout(() => resolve('hang'), ms)
  })
  try {
    const r = await Promise.race([call().then(() => 'loaded' as const), hang])
    if (r === 'hang') return { ok: false, why: `no answer within ${ms} ms`, ms: Date.now() - started, hung: true }
    return { ok: true, outcome: 'loaded', ms: Date.now() - started }
  } catch (err) {
    const took = Date.now() - started
    if (!(err instanceof CkptError)) {
      const e = err as Error
      return { ok: false, why: `threw ${e?.constructor?.name ?? typeof err}: ${e?.stack ?? String(err)}`, ms: took }
    }
    const bad = badMessage(err.message, names)
    if (bad) return { ok: false, why: `${bad}: ${JSON.stringify(err.message.slice(0, 300))}`, ms: took }
    return { ok: true, outcome: 'refused', message: err.message, errno: err.errno, ms: took }
  } finally {
    clearTimeout(timer)
  }
}

/** What a restore does before it creates anything: load, plan, and read every lazy part. */
async function loadAndPlan(dir: string): Promise<void> {
  const saved = await loadSaved(new DiskDir(dir), path.basename(dir))
  const records = await planFileRecords(saved.fileTable)
  framePlan(saved.fileTable, saved.process, records, { sameBoot: false, allowReplaced: false })
  for (const v of saved.vmas) await v.pages.read(0, v.pages.size)
  for (const f of saved.fileTable.files) {
    const any = f as { contents?: { size: number; read(o: number, l: number): Promise<Buffer> }; buffered?: () => Promise<Buffer>; otherLinks?: () => Promise<string[]> }
    if (any.contents) await any.contents.read(0, any.contents.size)
    if (any.buffered) await any.buffered()
    if (any.otherLinks) await any.otherLinks()
  }
}

/** Messages with their numbers and quoted values blanked: how many different checks answered. */
function shape(message: string): string {
  return message.replace(/"(?:[^"\\]|\\.)*"/g, '""').replace(/task-\d+/g, 'task-P').replace(/0x[0-9a-f]+/gi, 'H').replace(/\d+/g, 'N').slice(0, 90)
}

// ---------------------------------------------------------------------------------------
// One validator: a tree and the image made from it get the same verdict

/** A loaded checkpoint as the task the encoder and the tree tables take. */
function taskOf(saved: SavedCheckpoint): TaskImage {
  return {
    pid: saved.pid,
    tids: saved.threads.map((t) => asTid(t.tid)),
    process: async () => saved.process,
    threads: async () => saved.threads,
    vmas: async () => saved.vmas,
    fileTable: async () => saved.fileTable,
  }
}

/** Writes `saved` as the image file `file`. */
async function writeImageOf(saved: SavedCheckpoint, file: string): Promise<void> {
  const source = await imageSource(taskOf(saved))
  fs.writeFileSync(file, await source.read(0, source.size))
}

/**
 * The verdict on the image made from the tree at `treeDir` (written into `imageDir`), or
 * undefined when the tree does not parse (its loader refused it: there is no model to encode).
 */
async function imageVerdictOf(treeDir: string, imageDir: string, ms: number, names: RegExp): Promise<Verdict | undefined> {
  let parsed: SavedCheckpoint
  try {
    parsed = await parseSaved(new DiskDir(treeDir), path.basename(treeDir))
  } catch {
    return undefined
  }
  const file = path.join(imageDir, 'image')
  fs.rmSync(file, { force: true })
  try {
    await writeImageOf(parsed, file)
  } catch (err) {
    // A tree that parses but cannot be encoded: `ckptfs restore TREE --mount` could not send it.
    return { ok: true, outcome: 'refused', message: `image: cannot be made from the tree: ${(err as Error).message}`, ms: 0 }
  }
  return judge(() => loadAndPlan(imageDir), ms, names)
}

/**
 * The verdict on the tree made from the image `imageFile` (written into `treeDir`), or
 * undefined when the image does not parse (its decoder refused it: there is no model to show).
 */
async function treeVerdictOf(imageFile: string, treeDir: string, ms: number, names: RegExp): Promise<Verdict | undefined> {
  let task: TaskImage
  try {
    task = (await readImage(imageFile)).task
  } catch {
    return undefined
  }
  fs.rmSync(treeDir, { recursive: true, force: true })
  try {
    await writeTree(checkpointTree(task, undefined), treeDir)
  } catch (err) {
    return { ok: true, outcome: 'refused', message: `${path.basename(treeDir)}: cannot be made from the image: ${(err as Error).message}`, ms: 0 }
  }
  return judge(() => loadAndPlan(treeDir), ms, names)
}

/** Why the verdicts on a tree and on the image made from it disagree; undefined when they agree. */
function disagreement(tree: Verdict, image: Verdict): string | undefined {
  if (!image.ok) return `the image made from it: ${image.why}`
  if (!tree.ok) return undefined
  const said = (v: typeof image) => (v.message ? ` (${v.message})` : '')
  if (tree.outcome !== image.outcome) return `the tree was ${tree.outcome}${said(tree)}, the image made from it ${image.outcome}${said(image)}`
  // The image decoder checks its own framing and records first; past it, the one validator answers both alike.
  if (tree.outcome === 'refused' && !image.message!.startsWith('image: ') && image.message !== tree.message) {
    return `refused with different messages: tree ${JSON.stringify(tree.message)}, image ${JSON.stringify(image.message)}`
  }
  return undefined
}

type ModelChange = (s: SavedCheckpoint) => SavedCheckpoint

/** `s` with one more description (and an fd naming it, unless `named` is false). */
function withDescription(s: SavedCheckpoint, make: (objref: ReturnType<typeof asObjRef>) => FileDescription, named = true): SavedCheckpoint {
  const objref = asObjRef(Math.max(...s.fileTable.files.map((f) => f.objref)) + 1)
  const fd = Math.max(...s.fileTable.fds.map((e) => e.fd)) + 1
  const fds = named ? [...s.fileTable.fds, { fd, closeOnExec: false, objref }] : s.fileTable.fds
  return { ...s, fileTable: { fds, files: [...s.fileTable.files, make(objref)] } }
}

/** A device opened O_RDWR whose saved `checkpointable` says yes (a tree is edited easily). */
function device(type: 'chr' | 'blk', devicePath: string, major: number, minor: number): (objref: ReturnType<typeof asObjRef>) => PathDescription {
  return (objref) => ({
    objref, type, target: devicePath, flags: 0o2, mode: 3, pos: 0n, mntId: 1, ino: 1n, notCheckpointable: undefined, locks: [],
    path: devicePath, dev: 5n, rdev: BigInt((major << 8) | minor), inodeMode: (type === 'chr' ? 0o20000 : 0o60000) | 0o660,
    size: 0n, nlink: 1, btime: 0n, uid: 0, gid: 0, unlinked: false, otherLinks: async () => [],
  })
}

const withThread0 = (s: SavedCheckpoint, change: (t: SavedCheckpoint['threads'][number]) => SavedCheckpoint['threads'][number]): SavedCheckpoint => ({
  ...s, threads: s.threads.map((t, i) => (i === 0 ? change(t) : t)),
})
const firstFile = (s: SavedCheckpoint, type: FileDescription['type']): FileDescription => {
  const found = s.fileTable.files.find((f) => f.type === type && !(f.type === 'file' && (f as PathDescription).unlinked))
  if (!found) throw new Error(`the fuzz target has no ${type} description`)
  return found
}
const replaced = (s: SavedCheckpoint, d: FileDescription): SavedCheckpoint => ({
  ...s, fileTable: { ...s.fileTable, files: s.fileTable.files.map((f) => (f.objref === d.objref ? d : f)) },
})

/**
 * The corpus: what a restore must refuse from a tree and from an image alike (issue 12, hole
 * 6), each as a change of the undamaged model and the tree path its refusal must name.
 */
const CORPUS: Array<{ name: string; where: (s: SavedCheckpoint) => string; change: ModelChange }> = [
  { name: 'a 20-byte comm', where: (s) => `task-${s.pid}/comm`, change: (s) => ({ ...s, process: { ...s.process, comm: 'twenty-bytes-of-name' } }) },
  { name: "a thread's 20-byte comm", where: (s) => `task-${s.pid}/threads/${s.threads[0].tid}/comm`, change: (s) => withThread0(s, (t) => ({ ...t, comm: 'twenty-bytes-of-name' })) },
  {
    name: 'a relative path that would reach the stub\'s open',
    where: (s) => `files/${firstFile(s, 'file').objref}/path`,
    change: (s) => replaced(s, { ...(firstFile(s, 'file') as PathDescription), path: 'data.txt' }),
  },
  {
    name: 'a timerfd clock no timerfd can use (CLOCK_REALTIME_COARSE)',
    where: (s) => `files/${Math.max(...s.fileTable.files.map((f) => f.objref)) + 1}/clockid`,
    change: (s) => withDescription(s, (objref): TimerfdDescription => ({
      objref, type: 'timerfd', target: 'anon_inode:[timerfd]', flags: 0o2, mode: 3, pos: 0n, mntId: 15, ino: 1n, notCheckpointable: undefined, locks: [],
      clockid: 5, ticks: 0n, settimeFlags: 0, valueNs: 0n, intervalNs: 0n,
    })),
  },
  {
    name: 'a description no fd names',
    where: (s) => `files/${Math.max(...s.fileTable.files.map((f) => f.objref)) + 1}`,
    change: (s) => withDescription(s, (objref) => ({ ...firstFile(s, 'eventfd'), objref }), false),
  },
  {
    // A missing action is SIG_DFL in a tree (only other actions are shown): one for SIGKILL is refused.
    name: 'an action for SIGKILL',
    where: (s) => `task-${s.pid}/signals/actions/9`,
    change: (s) => ({ ...s, process: { ...s.process, sigactions: [...s.process.sigactions, { signal: 9, handler: 1n, flags: 0n, restorer: 0n, mask: 0n }] } }),
  },
  {
    name: 'a hugetlbfs mapping',
    where: (s) => `task-${s.pid}/memory/vmas/${vmaName(s.vmas.find((v) => v.kind === 'stack')!)}`,
    change: (s) => ({ ...s, vmas: s.vmas.map((v) => (v.kind === 'stack' ? { ...v, vmFlags: `${v.vmFlags} ht` } : v)) }),
  },
  { name: '/dev/kmsg', where: (s) => `files/${Math.max(...s.fileTable.files.map((f) => f.objref)) + 1}/rdev`, change: (s) => withDescription(s, device('chr', '/dev/kmsg', 1, 11)) },
  { name: '/dev/fuse', where: (s) => `files/${Math.max(...s.fileTable.files.map((f) => f.objref)) + 1}/rdev`, change: (s) => withDescription(s, device('chr', '/dev/fuse', 10, 229)) },
  { name: 'a block device', where: (s) => `files/${Math.max(...s.fileTable.files.map((f) => f.objref)) + 1}/rdev`, change: (s) => withDescription(s, device('blk', '/dev/sda', 8, 0)) },
  {
    name: 'rseq_size 1203533128',
    where: (s) => `task-${s.pid}/threads/${s.threads[0].tid}/rseq_size`,
    change: (s) => withThread0(s, (t) => ({ ...t, rseq: { ...t.rseq, pointer: t.rseq.pointer || 0x10000n, size: 1203533128 } })),
  },
  {
    name: 'rseq flags the registration cannot take',
    where: (s) => `task-${s.pid}/threads/${s.threads[0].tid}/rseq_flags`,
    change: (s) => withThread0(s, (t) => ({ ...t, rseq: { pointer: t.rseq.pointer || 0x10000n, size: t.rseq.size || 32, signature: t.rseq.signature, flags: 1 } })),
  },
  {
    name: 'an rlimit soft above hard',
    where: (s) => `task-${s.pid}/rlimits/nofile/soft`,
    change: (s) => ({ ...s, process: { ...s.process, rlimits: s.process.rlimits.map((r) => (r.name === 'nofile' ? { ...r, soft: r.hard + 1n } : r)) } }),
  },
  {
    name: 'siginfo of a signal not pending',
    where: (s) => `task-${s.pid}/signals/pending_siginfo`,
    change: (s) => {
      const record = Buffer.alloc(128)
      record.writeInt32LE(10, 0)
      return { ...s, process: { ...s.process, sharedPendingMask: 0n, sharedPendingSiginfo: record } }
    },
  },
  {
    name: 'unknown altstack flags',
    where: (s) => `task-${s.pid}/threads/${s.threads[0].tid}/altstack_flags`,
    change: (s) => withThread0(s, (t) => ({ ...t, altstack: { ...t.altstack, flags: 0x10 } })),
  },
  {
    name: 'a POSIX timer signalling a thread the task does not have',
    where: (s) => `task-${s.pid}/timers/posix/0/notify`,
    change: (s) => ({
      ...s,
      process: {
        ...s.process,
        posixTimers: [{ id: 0, signal: 14, sigevValue: 0n, notify: 'thread/tid.2147483646', clockid: 1, valueNs: 0n, intervalNs: 0n, overrun: 0 }],
      },
    }),
  },
  {
    name: 'a file mapping with a relative path',
    where: (s) => `task-${s.pid}/memory/vmas/${vmaName(s.vmas.find((v) => v.kind === 'file-private')!)}/path`,
    change: (s) => ({ ...s, vmas: s.vmas.map((v) => (v === s.vmas.find((w) => w.kind === 'file-private') ? { ...v, path: 'fuzz_target' } : v)) }),
  },
  {
    // Found by the fuzz (seed 910966809, image 64): the image took any string.
    name: 'VmFlags that are not two-letter flags',
    where: (s) => `task-${s.pid}/memory/vmas/${vmaName(s.vmas.find((v) => v.kind === 'stack')!)}/vm_flags`,
    change: (s) => ({ ...s, vmas: s.vmas.map((v) => (v.kind === 'stack' ? { ...v, vmFlags: 'xxxxxxxxxxxxxxxxxxxx' } : v)) }),
  },
  {
    name: 'brk below start_brk',
    where: (s) => `task-${s.pid}/mm/brk`,
    change: (s) => ({ ...s, process: { ...s.process, mm: { ...s.process.mm, brk: s.process.mm.startBrk - 0x1000n } } }),
  },
]

/**
 * Runs the corpus: each change of the undamaged model is written as a tree (`scratch`/tree-K)
 * and as an image (`scratch`/image-K/image); both must be refused, with one message that names
 * the case's tree path. Returns what went wrong, one line per case.
 */
async function runCorpus(savedDir: string, scratch: string, ms: number, treeNames: RegExp, imageNames: RegExp, post: (m: FromWorker) => void): Promise<{ ran: number; failures: string[] }> {
  const pristine = await parseSaved(new DiskDir(savedDir), path.basename(savedDir))
  const failures: string[] = []
  let k = 0
  for (const c of CORPUS) {
    k++
    // Word for the watchdog of the main thread: each case takes a few hundred ms.
    post({ type: 'progress', i: k, kind: 'corpus', what: c.name })
    const treeDir = path.join(scratch, `corpus-tree-${k}`)
    const imageDir = path.join(scratch, `corpus-image-${k}`)
    let where: string
    try {
      const changed = c.change(pristine)
      where = c.where(pristine)
      await writeTree(checkpointTree(taskOf(changed), undefined), treeDir)
      fs.mkdirSync(imageDir)
      await writeImageOf(changed, path.join(imageDir, 'image'))
    } catch (err) {
      failures.push(`${c.name}: cannot be written: ${(err as Error).stack ?? String(err)}`)
      continue
    }
    const tree = await judge(() => loadAndPlan(treeDir), ms, treeNames)
    const image = await judge(() => loadAndPlan(imageDir), ms, imageNames)
    const problems: string[] = []
    for (const [kind, v] of [['tree', tree], ['image', image]] as const) {
      if (!v.ok) problems.push(`${kind}: ${v.why}`)
      else if (v.outcome !== 'refused') problems.push(`${kind}: accepted`)
      else if (!v.message!.startsWith(`${where}: `)) problems.push(`${kind}: refused naming another place: ${v.message}`)
    }
    if (tree.ok && image.ok && tree.message !== image.message) problems.push(`different messages: tree ${JSON.stringify(tree.message)}, image ${JSON.stringify(image.message)}`)
    if (problems.length > 0) failures.push(`${c.name}: ${problems.join('; ')}`)
    fs.rmSync(treeDir, { recursive: true, force: true })
    fs.rmSync(imageDir, { recursive: true, force: true })
  }
  return { ran: k, failures }
}

// ---------------------------------------------------------------------------------------
// Level 1, in a worker thread

interface Level1Request {
  saved: string
  scratch: string
  seed: number
  seconds: number
  callMs: number
  /** Replays one input. */
  only?: { kind: 'image' | 'tree'; i: number }
}

interface Level1Failure {
  i: number
  kind: 'image' | 'tree'
  what: string
  why: string
  kept?: string
}

interface Level1Result {
  inputs: { image: number; tree: number }
  outcomes: Record<string, number>
  /** Refusals by errno. */
  errnos: Record<string, number>
  shapes: number
  slowest: { ms: number; what: string }
  failures: Level1Failure[]
  controls: string[]
  samples: string[]
  /** Mutants that loaded (what validation let through). */
  accepted: string[]
  /** The corpus: cases run, and what went wrong with each that failed. */
  corpus: { ran: number; failures: string[] }
  /** Trees that parsed and were compared with the image made from them; how many refusals said the same. */
  compared: { trees: number; refusedAlike: number; refusedByDecoder: number; images: number }
}

type FromWorker =
  | { type: 'ready' }
  | { type: 'progress'; i: number; kind: string; what: string }
  | { type: 'selftest'; verdicts: Array<{ name: string; ok: boolean; why?: string }> }
  | { type: 'done'; result: Level1Result }

async function level1(req: Level1Request, post: (m: FromWorker) => void): Promise<Level1Result> {
  const pristineImage = fs.readFileSync(`${req.saved}.image`)
  const info = treeInfo(req.saved)
  const work = path.join(req.scratch, 'tree')
  const imgDir = path.join(req.scratch, 'image-only')
  const failuresDir = path.join(os.tmpdir(), `ckptfs-fuzz-failures-${req.seed}`)
  fs.cpSync(req.saved, work, { recursive: true })
  fs.mkdirSync(imgDir)
  const taskName = fs.readdirSync(req.saved).find((n) => n.startsWith('task-'))!
  // boot_id: the one top-level file a restore reads (which boot made the checkpoint).
  // values_crc32c (lib/files/saved.ts) names a top-level file it lists or does not know, whatever its name.
  const treeNames = new RegExp(`^(files|${taskName}|task-[^\\s:/]*|image|boot_id|values_crc32c|${path.basename(work)})(/[^:]*)?: \\S|^[^:/]+: (not in|listed in) values_crc32c`)
  // Checks after loading (planning a restore) name the part as the tree would: files/7/f_mode.
  const imageNames = new RegExp(`^(image|${path.basename(imgDir)}|files/\\d+[^:]*|task-\\d+[^:]*): \\S`)
  const result: Level1Result = {
    inputs: { image: 0, tree: 0 }, outcomes: {}, errnos: {}, shapes: 0, slowest: { ms: 0, what: '' }, failures: [], controls: [], samples: [], accepted: [],
    corpus: { ran: 0, failures: [] }, compared: { trees: 0, refusedAlike: 0, refusedByDecoder: 0, images: 0 },
  }
  const compareDir = path.join(req.scratch, 'from-tree')
  fs.mkdirSync(compareDir)
  const shapes = new Map<string, number>()
  const spent = { image: 0, tree: 0 }

  const keep = (i: number, kind: string, from: string): string => {
    const to = path.join(failuresDir, `${kind}-${i}`)
    fs.mkdirSync(failuresDir, { recursive: true })
    try {
      fs.cpSync(from, to, { recursive: true })
    } catch {
      // a FIFO or a dangling link: the description is enough
    }
    return to
  }
  const placeImage = (m: Mutant) => {
    const file = path.join(imgDir, 'image')
    fs.rmSync(file, { recursive: true, force: true })
    switch (m.special) {
      case undefined: fs.writeFileSync(file, m.data); break
      case 'fifo': execFileSync('mkfifo', [file]); break
      case 'dir': fs.mkdirSync(file); break
      case 'symlink-devzero': fs.symlinkSync('/dev/zero', file); break
      case 'symlink-good': fs.symlinkSync(`${req.saved}.image`, file); break
      case 'missing': break
    }
  }

  // Controls: the undamaged image and tree load, and the mutator's trailer fix rebuilds the
  // undamaged image byte for byte (so a "trailer fixed" mutant differs only where damaged).
  const rebuilt = joinImage(splitImage(pristineImage) ?? [], true)
  result.controls.push(rebuilt.equals(pristineImage) ? 'reframed image: loads' : `reframed image: differs from the original (${rebuilt.length} vs ${pristineImage.length} bytes)`)
  for (const [kind, dir] of [['image', imgDir], ['tree', work]] as const) {
    if (kind === 'image') placeImage({ data: pristineImage, what: [] })
    const v = await judge(() => loadAndPlan(dir), req.callMs, kind === 'image' ? imageNames : treeNames)
    result.controls.push(v.ok && v.outcome === 'loaded' ? `${kind}: loads` : `${kind}: ${v.ok ? v.message : v.why}`)
  }
  post({ type: 'progress', i: 0, kind: 'tree', what: 'the image made from the undamaged tree (control)' })
  const control = await imageVerdictOf(work, compareDir, req.callMs, imageNames)
  result.controls.push(control?.ok && control.outcome === 'loaded' ? 'image made from the tree: loads' : `image made from the tree: ${control === undefined ? 'the tree does not parse' : control.ok ? control.message : control.why}`)
  if (req.only === undefined) result.corpus = await runCorpus(req.saved, req.scratch, req.callMs, treeNames, imageNames, post)
  // The random inputs get their whole time, after the controls and the corpus.
  const deadline = Date.now() + req.seconds * 1000

  for (let i = req.only?.i ?? 1; req.only !== undefined ? i === req.only.i : Date.now() < deadline; i++) {
    // Each kind gets about half the time (a tree costs ten times an image).
    const kind: 'image' | 'tree' = req.only?.kind ?? (spent.image <= spent.tree ? 'image' : 'tree')
    const rng = new Rng(mix(req.seed, 1, i, kind === 'image' ? 1 : 2))
    const started = Date.now()
    let what: string
    let verdict: Verdict
    let kept: string | undefined
    if (kind === 'image') {
      const m = mutateImage(pristineImage, rng, false)
      what = m.special ? `image replaced by ${m.special}` : m.what.join('; ')
      placeImage(m)
      post({ type: 'progress', i, kind, what })
      verdict = await judge(() => loadAndPlan(imgDir), req.callMs, imageNames)
      // One validator, the other way round: the tree made from an image that parses gets the same verdict
      // (its loader may refuse first, in words of its own: the outcome is compared). Writing a
      // tree costs many times what checking an image does, so every 32nd image is.
      const compareTree = verdict.ok && m.special === undefined && i % 32 === 0
      if (compareTree) post({ type: 'progress', i, kind, what: `${what}: the tree made from it` })
      const toTree = compareTree ? await treeVerdictOf(path.join(imgDir, 'image'), path.join(req.scratch, 'from-image'), req.callMs, treeNames) : undefined
      if (toTree !== undefined && verdict.ok) {
        result.compared.images++
        if (!toTree.ok) verdict = { ok: false, why: `the tree made from it: ${toTree.why}`, ms: verdict.ms }
        else if (toTree.outcome !== verdict.outcome) {
          verdict = { ok: false, why: `image and tree disagree: the image was ${verdict.outcome}${verdict.message ? ` (${verdict.message})` : ''}, the tree made from it ${toTree.outcome}${toTree.message ? ` (${toTree.message})` : ''}`, ms: verdict.ms }
        }
      }
      if (!verdict.ok) kept = keep(i, kind, imgDir)
      if (verdict.ok === false && verdict.hung) releaseFifos(imgDir)
    } else {
      const m = mutateTreeSome(work, info, rng, false)
      m.touched.push(...resealMutated(work))
      what = m.what
      post({ type: 'progress', i, kind, what })
      verdict = await judge(() => loadAndPlan(work), req.callMs, treeNames)
      // One validator: the image made from a tree that parses gets the same verdict.
      if (verdict.ok) post({ type: 'progress', i, kind, what: `${what}: the image made from it` })
      const fromTree = verdict.ok ? await imageVerdictOf(work, compareDir, req.callMs, imageNames) : undefined
      if (fromTree !== undefined) {
        result.compared.trees++
        const differs = disagreement(verdict, fromTree)
        if (differs !== undefined) verdict = { ok: false, why: `tree and image disagree: ${differs}`, ms: verdict.ms }
        else if (fromTree.ok && fromTree.outcome === 'refused') {
          if (fromTree.message!.startsWith('image: ')) result.compared.refusedByDecoder++
          else result.compared.refusedAlike++
        }
      }
      if (!verdict.ok) kept = keep(i, kind, work)
      if (verdict.ok === false && verdict.hung) releaseFifos(work)
      undoTree(work, req.saved, m.touched)
    }
    spent[kind] += Date.now() - started
    result.inputs[kind]++
    const outcome = verdict.ok ? `${kind} ${verdict.outcome}` : `${kind} FAILED`
    result.outcomes[outcome] = (result.outcomes[outcome] ?? 0) + 1
    if (verdict.ms > result.slowest.ms) result.slowest = { ms: verdict.ms, what: `${kind} #${i}: ${what}` }
    if (verdict.ok && verdict.outcome === 'loaded' && result.accepted.length < 200) result.accepted.push(`${kind} #${i}: ${what.slice(0, 160)}`)
    if (verdict.ok && verdict.errno) result.errnos[`${kind} ${verdict.errno}`] = (result.errnos[`${kind} ${verdict.errno}`] ?? 0) + 1
    if (verdict.ok && verdict.message) {
      const s = `${kind}: ${shape(verdict.message)}`
      shapes.set(s, (shapes.get(s) ?? 0) + 1)
      if (shapes.get(s) === 1 && result.samples.length < 400) result.samples.push(`${kind} #${i} [${what.slice(0, 120)}] -> ${verdict.message.slice(0, 160)}`)
    }
    if (!verdict.ok) {
      result.failures.push({ i, kind, what, why: verdict.why, kept })
      if (verdict.hung || result.failures.length >= 20) break
    }
    // Every 100 trees: the repaired copy still loads (the undo is right).
    if (kind === 'tree' && result.inputs.tree % 100 === 0) {
      const v = await judge(() => loadAndPlan(work), req.callMs, treeNames)
      if (!(v.ok && v.outcome === 'loaded')) result.failures.push({ i, kind, what: 'the repaired tree', why: v.ok ? `refused: ${v.message}` : v.why })
    }
  }
  const v = await judge(() => loadAndPlan(work), req.callMs, treeNames)
  if (!(v.ok && v.outcome === 'loaded')) result.failures.push({ i: 0, kind: 'tree', what: 'the repaired tree at the end', why: v.ok ? `refused: ${v.message}` : v.why })
  result.shapes = shapes.size
  return result
}

/** Planted inputs: the verdict must catch each bad one (the harness can fail). */
async function judgeSelfTest(): Promise<Array<{ name: string; ok: boolean; why?: string }>> {
  const names = /^(files|task-\d+|image)(\/[^:]*)?: \S/
  const cases: Array<[string, () => Promise<unknown>]> = [
    ['loads', async () => undefined],
    ['a clear refusal', async () => { throw new CkptError('files/3/f_pos: not a decimal integer: "x"', 'EINVAL') }],
    ['a TypeError', async () => { const o = undefined as unknown as { a: number }; return o.a }],
    ['a RangeError', async () => { Buffer.alloc(1).writeUInt32LE(2 ** 33) }],
    ['a plain Error', async () => { throw new Error('files/3/f_pos: plain') }],
    ['a string thrown', async () => { throw 'files/3: a string' }],
    ['an empty message', async () => { throw new CkptError('') }],
    ['two lines', async () => { throw new CkptError('files/3/f_pos: one\ntwo') }],
    ['no file named', async () => { throw new CkptError('something is wrong') }],
    ['undefined shown', async () => { throw new CkptError('files/3/f_pos: undefined is out of range') }],
    ['an internal reader error', async () => { throw new CkptError('image: schema type of kind does not match its reader') }],
    ['a hang', () => new Promise(() => undefined)],
  ]
  const out: Array<{ name: string; ok: boolean; why?: string }> = []
  for (const [name, call] of cases) {
    const v = await judge(call, 300, names)
    out.push({ name, ok: v.ok, why: v.ok ? undefined : v.why.split('\n')[0] })
  }
  return out
}

if (!isMainThread) {
  const port = parentPort!
  port.on('message', (msg: { cmd: 'selftest' } | { cmd: 'run'; req: Level1Request }) => {
    void (async () => {
      if (msg.cmd === 'selftest') port.postMessage({ type: 'selftest', verdicts: await judgeSelfTest() } satisfies FromWorker)
      else port.postMessage({ type: 'done', result: await level1(msg.req, (m) => port.postMessage(m)) } satisfies FromWorker)
    })()
  })
  imageSchema()
  port.postMessage({ type: 'ready' } satisfies FromWorker)
} else {
  mainThread()
}

// ---------------------------------------------------------------------------------------
// The main thread: the checkpoint, the watchdog of level 1, and level 2 through the mount

function mainThread(): void {
  /* eslint-disable @typescript-eslint/no-require-imports */
  const t = require('tap') as typeof import('tap')
  const { mountFor } = require('./lib/mount') as typeof import('./lib/mount')
  const R = require('./lib/restore') as typeof import('./lib/restore')
  const { buildTarget } = require('./lib/targets') as typeof import('./lib/targets')
  /* eslint-enable @typescript-eslint/no-require-imports */
  const { exists, launch, listTree, sleep, waitUntil, workdir } = R

  const envInt = (name: string, dflt: number) => {
    const v = process.env[name]
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : dflt
  }
  const seed = process.env.CKPTFS_FUZZ_SEED !== undefined ? Number(process.env.CKPTFS_FUZZ_SEED) >>> 0 : (Math.random() * 2 ** 32) >>> 0
  const level1Seconds = envInt('CKPTFS_FUZZ_SECONDS', 40)
  const level2Seconds = envInt('CKPTFS_FUZZ_MOUNT_SECONDS', 55)
  // Hang detectors, not timing checks: a load or plan takes milliseconds, but a loaded
  // two-core machine has stalled one for over 5 s, and a worker's first TypeScript load for 10 s.
  const callMs = envInt('CKPTFS_FUZZ_CALL_MS', 30_000)
  const onlyMatch = /^(image|tree):(\d+)$/.exec(process.env.CKPTFS_FUZZ_ONLY ?? '')
  const only = onlyMatch ? { kind: onlyMatch[1] as 'image' | 'tree', i: Number(onlyMatch[2]) } : undefined

  /** Watches a worker: rejects when it says nothing for `quietMs` (a synchronous endless loop), and terminates it. */
  function watch(worker: Worker, quietMs: number, onMessage: (m: FromWorker) => boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      let last = 'nothing yet'
      let timer: NodeJS.Timeout
      const arm = () => {
        clearTimeout(timer)
        const armedAt = Date.now()
        timer = setTimeout(() => {
          // Late by far: this thread was busy, and the worker's word may be waiting behind the timer.
          if (Date.now() - armedAt > quietMs + 1000) return arm()
          void worker.terminate()
          reject(new Error(`no word for ${quietMs} ms (hung?); last: ${last}`))
        }, quietMs)
      }
      arm()
      worker.on('message', (m: FromWorker) => {
        arm()
        if (m.type === 'progress') last = `${m.kind} #${m.i}: ${m.what}`
        if (onMessage(m)) {
          clearTimeout(timer)
          resolve()
        }
      })
      worker.on('error', (err) => {
        clearTimeout(timer)
        reject(new Error(`worker died: ${err.stack ?? err.message}; last: ${last}`))
      })
      worker.on('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`worker exited (${code}); last: ${last}`))
      })
    })
  }

  function stateOf(pid: number): { state: string; ppid: number; start: number } | undefined {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      return { state: f[0], ppid: Number(f[1]), start: Number(f[19]) }
    } catch {
      return undefined
    }
  }
  const nowTicks = () => Math.floor(Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 100)
  const exeOf = (pid: number) => {
    try {
      return fs.readlinkSync(`/proc/${pid}/exe`)
    } catch {
      return undefined
    }
  }
  const tracerOf = (pid: number) => {
    try {
      return Number(/^TracerPid:\s*(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0)
    } catch {
      return 0
    }
  }
  const allPids = () => fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number)
  function childrenOf(pid: number): number[] {
    try {
      return fs.readdirSync(`/proc/${pid}/task`).flatMap((tid) => fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number))
    } catch {
      return []
    }
  }
  function serverPid(mnt: string): number {
    for (const pid of allPids()) {
      try {
        const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
        if (argv.includes('mount') && argv.includes(mnt) && argv.includes('--foreground')) return pid
      } catch {
        // gone
      }
    }
    throw new Error(`no server for ${mnt}`)
  }
  /** Processes of this test that are stopped (t/T) or traced by the server: none may stay. */
  function stuck(server: number, targetExe: string, pids: number[]): string[] {
    const out: string[] = []
    for (const pid of allPids()) {
      const st = stateOf(pid)
      if (!st) continue
      const tracer = tracerOf(pid)
      const ours = pids.includes(pid) || exeOf(pid) === targetExe || tracer === server
      if (!ours) continue
      if (tracer === server) out.push(`${pid} (${exeOf(pid)}) is still traced by the server (state ${st.state})`)
      else if (st.state === 't' || st.state === 'T') out.push(`${pid} (${exeOf(pid)}) is stopped (state ${st.state})`)
    }
    return out
  }

  t.test('fuzz: mutated images and trees are restored or refused cleanly', async (t) => {
    const testStart = Date.now()
    t.comment(`seed ${seed} (CKPTFS_FUZZ_SEED=${seed} replays it); level 1 ${level1Seconds} s, level 2 ${level2Seconds} s`)
    const targetExe = buildTarget('fuzz_target', ['-static'])
    // The worker compiles the loaders while the checkpoint is made.
    const worker = new Worker(__filename)
    t.teardown(() => void worker.terminate())
    const ready = new Promise<void>((resolve, reject) => {
      worker.once('message', (m: FromWorker) => (m.type === 'ready' ? resolve() : reject(new Error(`worker said ${m.type}`))))
      worker.once('error', reject)
    })

    const mnt = mountFor(t)
    const dir = workdir(t)
    const scratch = workdir(t, 'ckptfs-fuzz-')
    const saved = path.join(scratch, 'saved')
    const target = await launch(t, [targetExe, dir], { dir })
    const pid = target.pid
    await R.checkpointSaveKill(mnt, pid, saved, { image: true })
    const taskName = `task-${pid}`
    t.ok(fs.existsSync(path.join(saved, taskName)) && fs.statSync(`${saved}.image`).size > 0, `saved the tree and the image of ${pid}`)
    const restored: number[] = []
    t.teardown(() => {
      for (const p of restored) {
        if (exeOf(p) === targetExe) {
          try {
            process.kill(p, 'SIGKILL')
          } catch {
            // gone
          }
        }
      }
    })

    // ----- the harness can fail: planted bad verdicts, a hung worker, planted leftovers
    await ready
    const selftest = new Promise<FromWorker & { type: 'selftest' }>((resolve) => {
      const on = (m: FromWorker) => {
        if (m.type === 'selftest') {
          worker.off('message', on)
          resolve(m)
        }
      }
      worker.on('message', on)
    })
    worker.postMessage({ cmd: 'selftest' })
    const verdicts = (await selftest).verdicts
    const shouldPass = new Set(['loads', 'a clear refusal'])
    for (const v of verdicts) t.equal(v.ok, shouldPass.has(v.name), `self-test: ${v.name} is ${shouldPass.has(v.name) ? 'accepted' : `caught (${v.why})`}`)
    const spinner = new Worker('for (;;) {}', { eval: true })
    const caught = await watch(spinner, 500, () => false).then(() => 'not caught', (err: Error) => err.message)
    t.match(caught, /no word for 500 ms/, 'self-test: a worker stuck in a loop is caught')

    // ----- level 1 in the worker, level 2 here, at once
    t.comment(`checkpoint saved and harness self-tested after ${((Date.now() - testStart) / 1000).toFixed(1)} s`)
    const req: Level1Request = { saved, scratch: fs.mkdtempSync(path.join(scratch, 'l1-')), seed, seconds: level1Seconds, callMs, only }
    let r1: Level1Result | undefined
    const level1Done = watch(worker, callMs + 30_000, (m) => {
      if (m.type === 'done') r1 = m.result
      return m.type === 'done'
    }).catch((err: Error) => t.fail(`level 1 (seed ${seed}): ${err.message}`))
    worker.postMessage({ cmd: 'run', req })

    const level2Done = only !== undefined ? Promise.resolve(undefined) : level2(t, { mnt, dir, saved, pid, targetExe, restored, target })
    const [, r2] = await Promise.all([level1Done, level2Done])

    if (r1) {
      for (const c of r1.controls) t.equal(c.replace(/^(image|tree|reframed image|image made from the tree): /, ''), 'loads', `level 1 control: ${c}`)
      if (only === undefined) {
        t.equal(r1.corpus.ran, CORPUS.length, `corpus: all ${CORPUS.length} cases ran`)
        for (const f of r1.corpus.failures) t.fail(`corpus: ${f}`)
        if (r1.corpus.failures.length === 0) t.pass('corpus: every case is refused from the tree and from its image, with the same message')
      }
      t.ok(r1.compared.trees > 0 || only !== undefined, `level 1 compared ${r1.compared.trees} parsed trees with the images made from them (refused alike: ${r1.compared.refusedAlike}; refused first by the image decoder: ${r1.compared.refusedByDecoder}), and ${r1.compared.images} parsed images with the trees made from them`)
      t.comment(`level 1: ${r1.inputs.image} images and ${r1.inputs.tree} trees in ${level1Seconds} s: ${JSON.stringify(r1.outcomes)}; ${r1.shapes} different refusals; by errno ${JSON.stringify(r1.errnos)}; slowest ${r1.slowest.ms} ms (${r1.slowest.what.slice(0, 160)})`)
      if (process.env.CKPTFS_FUZZ_VERBOSE) for (const s of [...r1.samples, ...r1.accepted.map((a) => `loaded: ${a}`)]) t.comment(`  ${s}`)
      t.ok(r1.inputs.image + r1.inputs.tree > 0 || only !== undefined, 'level 1 ran inputs')
      for (const f of r1.failures) t.fail(`level 1: ${f.kind} #${f.i} (seed ${seed}; CKPTFS_FUZZ_ONLY=${f.kind}:${f.i}${f.kept ? `; kept in ${f.kept}` : ''}): ${f.what}: ${f.why}`)
      if (r1.failures.length === 0) t.pass('level 1: every input loaded or was refused cleanly')
    }
    if (r2) t.comment(`level 2: ${r2}`)
  })

  /** What level 2 asserts with (a tap Test). */
  type Asserts = Pick<typeof t, 'comment' | 'ok' | 'same'>

  interface Level2Context {
    mnt: string
    dir: string
    saved: string
    pid: number
    targetExe: string
    restored: number[]
    target: import('./lib/restore').Target
  }

  /** Level 2: returns a summary line. */
  async function level2(t: Asserts, c: Level2Context): Promise<string> {
    const { mnt, dir, saved, pid, targetExe } = c
    const server = serverPid(mnt)
    const info = treeInfo(saved)
    const pristineImage = fs.readFileSync(`${saved}.image`)
    const area = path.join(mnt, 'restore')
    const base = path.join(area, 'base')
    const imgDir = path.join(area, 'img')
    const before = listTree(dir)
    const counts: Record<string, number> = {}
    const count = (k: string) => (counts[k] = (counts[k] ?? 0) + 1)
    let maxLinger = 0

    // The checks after every attempt, planted once first (they can fail).
    const checkLeftovers = (allowCore: boolean): string[] => {
      const problems: string[] = []
      const now = listTree(dir)
      for (const p of now.filter((x) => !before.includes(x))) {
        if (allowCore && /^core(\.\d+)?$/.test(p)) {
          t.comment(`a restored process dumped core (${p}): its damaged memory or registers crashed it`)
          fs.rmSync(path.join(dir, p), { force: true })
          continue
        }
        problems.push(`a new file ${p} in the target's directory`)
      }
      for (const p of before.filter((x) => !now.includes(x))) problems.push(`${p} vanished from the target's directory`)
      for (const s of stuck(server, targetExe, [pid])) problems.push(s)
      const kids = childrenOf(server)
      if (kids.length > 0) problems.push(`the server has children ${kids.join(', ')}`)
      return problems
    }
    fs.writeFileSync(path.join(dir, '.ckptfs-restore-planted'), '')
    t.ok(checkLeftovers(false).some((p) => p.includes('.ckptfs-restore-planted')), 'self-test: a planted leftover file is caught')
    fs.rmSync(path.join(dir, '.ckptfs-restore-planted'))
    const plantDir = fs.mkdtempSync(path.join(path.dirname(dir), 'ckptfs-plant-'))
    const planted = spawn(targetExe, [plantDir], { stdio: 'ignore' })
    try {
      await waitUntil('the planted process to start', () => exeOf(planted.pid!) === targetExe)
      process.kill(planted.pid!, 'SIGSTOP')
      await waitUntil('the planted process to stop', () => stateOf(planted.pid!)?.state === 'T')
      t.ok(stuck(server, targetExe, []).some((s) => s.startsWith(`${planted.pid} `)), 'self-test: a planted stopped process is caught')
    } finally {
      planted.kill('SIGKILL')
      await new Promise((r) => (planted.exitCode !== null || planted.signalCode !== null ? r(undefined) : planted.once('exit', r)))
      fs.rmSync(plantDir, { recursive: true, force: true })
    }
    t.same(checkLeftovers(false), [], 'nothing is left over before level 2')

    await new Promise<void>((resolve, reject) => execFile('cp', ['-a', saved, base], (err) => (err ? reject(err) : resolve())))
    fs.mkdirSync(imgDir)

    /** Writes `done` (bounded), reads status. */
    const restoreIn = async (name: string): Promise<{ wrote: boolean; error?: string; status: string; ms: number }> => {
      const started = Date.now()
      let timer: NodeJS.Timeout | undefined
      const timeout = new Promise<'hang'>((r) => (timer = setTimeout(() => r('hang'), 60_000)))
      const w = fs.promises.writeFile(path.join(area, name, 'done'), '1\n').then(() => ({ wrote: true }), (err: NodeJS.ErrnoException) => ({ wrote: false, error: err.code ?? err.message }))
      const r = await Promise.race([w, timeout])
      clearTimeout(timer)
      if (r === 'hang') throw new Error(`restore/${name}: the write to done did not return within 60 s`)
      const status = (await Promise.race([fs.promises.readFile(path.join(area, name, 'status'), 'utf8'), sleep(10_000).then(() => 'status: no answer in 10 s')])).trim()
      return { ...r, status, ms: Date.now() - started }
    }

    const started = Date.now()
    const deadline = started + level2Seconds * 1000
    const maxAttempts = envInt('CKPTFS_FUZZ_MOUNT_ATTEMPTS', 60)
    let attempts = 0
    const failures: string[] = []
    const late: string[] = []
    for (let i = 1; attempts < maxAttempts; i++) {
      const last = Date.now() > deadline || attempts === maxAttempts - 1
      // Controls: the first, every 8th and the last attempt restore the undamaged tree.
      const control = i === 1 || i % 8 === 0 || last
      const kind: 'tree' | 'image' = control ? 'tree' : i % 2 ? 'image' : 'tree'
      const rng = new Rng(mix(seed, 2, i))
      let what = 'undamaged (control)'
      let touched: string[] = []
      let name = 'base'
      if (!control && kind === 'tree') {
        const m = mutateTreeSome(base, info, rng, true)
        what = m.what
        touched = [...m.touched, ...resealMutated(base)]
      } else if (!control) {
        const m = mutateImage(pristineImage, rng, true)
        what = m.what.join('; ')
        fs.writeFileSync(path.join(imgDir, 'image'), m.data)
        name = 'img'
      }
      attempts++
      const label = `level 2 #${i} ${kind}: ${what.slice(0, 200)}`
      const startTicks = nowTicks()
      const r = await restoreIn(name)
      const problems: string[] = []
      let restoredPid: number | undefined
      if (r.wrote) {
        const m = /^restored (\d+)$/.exec(r.status)
        if (!m) problems.push(`the write to done succeeded but status says ${JSON.stringify(r.status)}`)
        else restoredPid = Number(m[1])
      } else if (!/^error: \S.*$/.test(r.status) || r.status.includes('\n')) {
        problems.push(`the write to done failed (${r.error}) but status says ${JSON.stringify(r.status)}`)
      }
      if (control && restoredPid !== pid) problems.push(`the undamaged tree was not restored as ${pid}: ${r.status}`)
      if (restoredPid !== undefined) {
        c.restored.push(restoredPid)
        const st = stateOf(restoredPid)
        if (!st || st.start + 5 < startTicks) {
          count('restored, gone at once')
        } else {
          if (restoredPid !== pid) t.comment(`${label}: restored as ${restoredPid}, not ${pid}`)
          await sleep(150)
          const s2 = stateOf(restoredPid)
          if (s2 && (s2.state === 't' || s2.state === 'T')) problems.push(`restored ${restoredPid} is stopped (${s2.state})`)
          if (control) {
            const ticks = c.target.lines().length
            await waitUntil('the restored process to tick', () => c.target.lines().length > ticks, 5000).catch(() => problems.push(`the restored control ${restoredPid} does not run on (no new tick line)`))
          }
          count(s2 && s2.state !== 'Z' && s2.state !== 'X' ? 'restored and running' : 'restored, then died')
          try {
            if (stateOf(restoredPid) && stateOf(restoredPid)!.start + 5 >= startTicks) process.kill(restoredPid, 'SIGKILL')
          } catch {
            // gone
          }
        }
      } else if (r.wrote) count('odd')
      else if (/^error: restore( of \d+)?: /.test(r.status)) {
        // Validation let it through; the restore itself failed once the process existed.
        count('refused after the process was created')
        late.push(`${label} -> ${r.status}`)
      } else count('refused')
      // Nothing with the PID may stay; a killed one may sit as a zombie until init reaps it.
      for (const p of new Set([pid, ...(restoredPid !== undefined ? [restoredPid] : [])])) {
        const lingerStart = Date.now()
        const gone = await waitUntil(`PID ${p} to be free`, () => !exists(p), 15_000).then(() => true, () => false)
        const linger = Date.now() - lingerStart
        maxLinger = Math.max(maxLinger, linger)
        if (!gone) problems.push(`PID ${p} is still there after 15 s: ${JSON.stringify(stateOf(p))} ${exeOf(p)}`)
        else if (restoredPid === undefined && linger > 1000) t.comment(`${label}: refused, but PID ${p} took ${linger} ms to disappear`)
      }
      const answers = await Promise.race([fs.promises.readdir(mnt).then((n) => n.includes('restore')), sleep(10_000).then(() => false)])
      if (!answers) problems.push('the server does not answer (ls MNT)')
      problems.push(...checkLeftovers(restoredPid !== undefined))
      if (touched.length > 0) undoTree(base, saved, touched)
      if (problems.length > 0) failures.push(`${label} -> ${r.status}: ${problems.join('; ')}`)
      t.same(problems, [], `${label} -> ${r.status.slice(0, 200)} (${r.ms} ms)`)
      if (last) break
    }
    t.ok(attempts >= 3 || level2Seconds === 0, `level 2 ran ${attempts} attempts`)
    for (const l of late) t.comment(`passed validation, failed in the restore: ${l.slice(0, 400)}`)
    return `${attempts} attempts in ${Math.round((Date.now() - started) / 1000)} s: ${JSON.stringify(counts)}; longest wait for a PID to be free ${maxLinger} ms; ${failures.length} failed`
  }
}
