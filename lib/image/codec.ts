// Encodes plain objects to protobuf messages and decodes them back, driven by the schema's
// field tables. 64-bit fields are bigints, 32-bit ones numbers, enums the model's strings.
// Encoding checks every value against its field's type (a model that drifted from the
// schema fails loudly); decoding refuses anything outside the field's range.

import { CkptError } from '../errors'
import { BufferReader, ByteWriter, WireError, WireType } from './wire'
import type { FieldSchema, MessageSchema } from './schema'
import { U64_MAX } from '../abi'

export type Scalar = number | bigint | boolean | string | Buffer
export type FieldValue = Scalar | Message | Scalar[] | Message[] | undefined
/** A decoded message: every field of the schema is a key (absent optional ones undefined). */
export interface Message {
  [field: string]: FieldValue
}

const U32_MAX = 0xffffffff
const I32_MIN = -0x80000000
const I32_MAX = 0x7fffffff
const I64_MIN = -(1n << 63n)
const I64_MAX = (1n << 63n) - 1n

// ---------------------------------------------------------------------------------------
// Encoding

export function encodeMessage(schema: MessageSchema, value: object): Buffer {
  const out = new ByteWriter()
  writeMessage(out, schema, value, schema.name)
  return out.finish()
}

function writeMessage(out: ByteWriter, schema: MessageSchema, value: object, where: string): void {
  const fields = value as Record<string, unknown>
  let oneofSet: string | undefined
  for (const field of schema.fields) {
    const v = fields[field.name]
    const at = `${where}.${field.name}`
    if (field.repeated) {
      if (!Array.isArray(v)) throw encodeError(at, 'expected a list', v)
      writeRepeated(out, field, v, at)
      continue
    }
    if (v === undefined) {
      if (field.tracksPresence) continue
      throw encodeError(at, 'missing', v)
    }
    if (field.oneof) {
      if (oneofSet) throw encodeError(at, `only one of ${field.oneof} may be set (${oneofSet} is)`, v)
      oneofSet = field.name
    }
    if (!field.tracksPresence && isDefault(field.kind, v)) continue
    writeSingle(out, field, v, at)
  }
}

function writeRepeated(out: ByteWriter, field: FieldSchema, values: unknown[], at: string): void {
  if (values.length === 0) return
  if (field.kind === 'string' || field.kind === 'bytes' || field.kind === 'message') {
    values.forEach((v, i) => writeSingle(out, field, v, `${at}[${i}]`))
    return
  }
  // Numeric lists are packed (the proto3 default): one length-delimited run of varints.
  const packed = new ByteWriter()
  values.forEach((v, i) => packed.varint(varintValue(field, v, `${at}[${i}]`)))
  out.lengthDelimited(field.id, packed.finish())
}

function writeSingle(out: ByteWriter, field: FieldSchema, v: unknown, at: string): void {
  switch (field.kind) {
    case 'string':
      if (typeof v !== 'string') throw encodeError(at, 'expected a string', v)
      out.lengthDelimited(field.id, Buffer.from(v, 'utf8'))
      return
    case 'bytes':
      if (!Buffer.isBuffer(v)) throw encodeError(at, 'expected a Buffer', v)
      out.lengthDelimited(field.id, v)
      return
    case 'message': {
      if (typeof v !== 'object' || v === null) throw encodeError(at, 'expected an object', v)
      const nested = new ByteWriter()
      writeMessage(nested, field.message!, v, at)
      out.lengthDelimited(field.id, nested.finish())
      return
    }
    case 'fixed32': {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > U32_MAX) throw encodeError(at, 'expected a uint32', v)
      const word = Buffer.allocUnsafe(4)
      word.writeUInt32LE(v)
      out.tag(field.id, WireType.Fixed32).raw(word)
      return
    }
    default:
      out.tag(field.id, WireType.Varint).varint(varintValue(field, v, at))
  }
}

/** The unsigned varint that carries a numeric, boolean or enum value. */
function varintValue(field: FieldSchema, v: unknown, at: string): number | bigint {
  switch (field.kind) {
    case 'uint32':
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > U32_MAX) throw encodeError(at, 'expected a uint32', v)
      return v
    case 'int32':
      if (typeof v !== 'number' || !Number.isInteger(v) || v < I32_MIN || v > I32_MAX) throw encodeError(at, 'expected an int32', v)
      // Negative int32 values are sign-extended to 64 bits, as protobuf specifies.
      return v >= 0 ? v : BigInt.asUintN(64, BigInt(v))
    case 'uint64':
      if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) throw encodeError(at, 'expected a uint64 bigint', v)
      return v
    case 'int64':
      if (typeof v !== 'bigint' || v < I64_MIN || v > I64_MAX) throw encodeError(at, 'expected an int64 bigint', v)
      return BigInt.asUintN(64, v)
    case 'bool':
      if (typeof v !== 'boolean') throw encodeError(at, 'expected a boolean', v)
      return v ? 1 : 0
    case 'enum': {
      const number = typeof v === 'string' ? field.enumSchema!.byName.get(v) : undefined
      if (number === undefined) throw encodeError(at, `expected one of ${[...field.enumSchema!.byName.keys()].join(', ')}`, v)
      return number
    }
    default:
      throw encodeError(at, `${field.kind} is not a varint type`, v)
  }
}

function isDefault(kind: FieldSchema['kind'], v: unknown): boolean {
  return v === 0 || v === 0n || v === false || v === '' || (kind === 'bytes' && Buffer.isBuffer(v) && v.length === 0)
}

function encodeError(at: string, problem: string, v: unknown): CkptError {
  const shown = typeof v === 'bigint' ? `${v}n` : Buffer.isBuffer(v) ? `<${v.length} bytes>` : typeof v === 'object' && v !== null ? 'an object' : String(v)
  return new CkptError(`image: cannot encode ${at}: ${problem}, got ${shown}`)
}

// ---------------------------------------------------------------------------------------
// Decoding

/**
 * Decodes buf[start, end) as one message. Refusals are WireErrors whose `at` is the offset
 * in buf and whose message names the field ("Thread.rseq.size: ...").
 */
export function decodeMessage(schema: MessageSchema, buf: Buffer, start = 0, end = buf.length): Message {
  const message = emptyMessage(schema)
  readInto(message, schema, new BufferReader(buf, start, end), schema.name, { items: MAX_LIST_ITEMS })
  return message
}

/**
 * List items one message may hold, all lists together: a damaged or hostile record of a few
 * MiB could otherwise become tens of millions of objects. Real records stay far below
 * (a 4 GiB mapping with every other page stored has 512 Ki runs).
 */
const MAX_LIST_ITEMS = 1 << 21

interface Budget {
  items: number
}

/**
 * A message holding every field's default, made by one constructor per schema so that all
 * messages of a kind share one shape (a decoder makes tens of thousands of them). The
 * constructor is generated from the schema's field names (our own .proto, never the input):
 * assignments by constant name give V8 a fixed in-object layout, where a loop of keyed
 * stores made the objects grow field by field (a third of a 10,000-fd decode went to it).
 */
function emptyMessage(schema: MessageSchema): Message {
  let make = makers.get(schema)
  if (!make) {
    const body = schema.fields.map((f, i) => {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(f.name)) throw new CkptError(`image schema: field name ${JSON.stringify(f.name)} is not an identifier`)
      return `this.${f.name} = ${f.repeated ? '[]' : `defaults[${i}]`};`
    }).join('\n')
    const defaults = schema.fields.map((f): FieldValue => (f.repeated || f.tracksPresence ? undefined : defaultOf(f.kind)))
    const Construct = new Function('defaults', `return function ${schema.name.replace(/\W/g, '_')}() {\n${body}\n}`)(defaults) as new () => Message
    make = () => new Construct()
    makers.set(schema, make)
  }
  return make()
}
const makers = new WeakMap<MessageSchema, () => Message>()

/** Shared by every message: Buffers are never written in place once decoded. */
const EMPTY_BYTES = Buffer.alloc(0)

function defaultOf(kind: FieldSchema['kind']): FieldValue {
  switch (kind) {
    case 'uint32': case 'int32': case 'fixed32': return 0
    case 'uint64': case 'int64': return 0n
    case 'bool': return false
    case 'string': return ''
    case 'bytes': return EMPTY_BYTES
    default: return undefined
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

function readInto(message: Message, schema: MessageSchema, r: BufferReader, where: string, budget: Budget): void {
  while (!r.done) {
    const tagAt = r.pos
    let name: string | undefined
    try {
      // splitTag (wire.ts) by hand: this runs for every field of every record.
      const tag = r.smallVarint('tag', U32_MAX)
      const id = Math.floor(tag / 8)
      if (id === 0) throw new WireError('field number 0', tagAt)
      const wire = tag & 7
      const field = schema.byId.get(id)
      name = field ? field.name : `<field ${id}>`
      // Fields of a newer minor version are skipped.
      if (field) readField(message, schema, field, wire, r, where, tagAt, budget)
      else r.skip(wire)
    } catch (err) {
      throw err instanceof WireError ? err.inField(name === undefined ? where : `${where}.${name}`) : err
    }
  }
}

/** `where` names the message; nested messages are named `${where}.${field}` (built only for them). */
function readField(message: Message, schema: MessageSchema, field: FieldSchema, wire: number, r: BufferReader, where: string, tagAt: number, budget: Budget): void {
  const list = message[field.name]
  if (field.kind === 'message' || Array.isArray(list)) return readNested(message, schema, field, wire, r, `${where}.${field.name}`, tagAt, budget)
  if (field.oneof) clearOneof(message, schema, field)
  message[field.name] = readScalar(field, wire, r, tagAt)
}

/** Setting a oneof member clears its siblings. */
function clearOneof(message: Message, schema: MessageSchema, field: FieldSchema): void {
  for (const other of schema.fields) if (other.oneof === field.oneof) message[other.name] = undefined
}

function readNested(message: Message, schema: MessageSchema, field: FieldSchema, wire: number, r: BufferReader, at: string, tagAt: number, budget: Budget): void {
  const list = message[field.name]
  if (Array.isArray(list)) {
    readRepeated(list, field, wire, r, at, tagAt, budget)
    return
  }
  if (field.oneof) clearOneof(message, schema, field)
  expectWire(wire, WireType.Len, tagAt)
  const length = r.smallVarint('length', r.end - r.pos)
  const previous = message[field.name]
  // A message field seen twice is merged, as protobuf specifies.
  const nested = isMessage(previous) ? previous : emptyMessage(field.message!)
  readInto(nested, field.message!, new BufferReader(r.buf, r.pos, r.pos + length), at, budget)
  r.pos += length
  message[field.name] = nested
}

function readRepeated(list: Scalar[] | Message[], field: FieldSchema, wire: number, r: BufferReader, at: string, tagAt: number, budget: Budget): void {
  const spend = () => {
    if (--budget.items < 0) throw new WireError(`more than ${MAX_LIST_ITEMS} list items in one record`, r.pos)
  }
  if (field.kind === 'message') {
    expectWire(wire, WireType.Len, tagAt)
    const length = r.smallVarint('length', r.end - r.pos)
    spend()
    const nested = emptyMessage(field.message!)
    readInto(nested, field.message!, new BufferReader(r.buf, r.pos, r.pos + length), `${at}[${list.length}]`, budget)
    r.pos += length
    ;(list as Message[]).push(nested)
    return
  }
  const scalars = list as Scalar[]
  if (wire === WireType.Len && field.kind !== 'string' && field.kind !== 'bytes') {
    // Packed: a run of varints.
    const length = r.smallVarint('length', r.end - r.pos)
    const packed = new BufferReader(r.buf, r.pos, r.pos + length)
    while (!packed.done) {
      spend()
      scalars.push(readScalar(field, WireType.Varint, packed, packed.pos))
    }
    r.pos += length
    return
  }
  spend()
  scalars.push(readScalar(field, wire, r, tagAt))
}

function readScalar(field: FieldSchema, wire: number, r: BufferReader, tagAt: number): Scalar {
  if (field.kind === 'string' || field.kind === 'bytes') {
    expectWire(wire, WireType.Len, tagAt)
    const length = r.smallVarint('length', r.end - r.pos)
    const bytesAt = r.pos
    // Copied, so a decoded message never pins the read buffer it came from.
    if (field.kind === 'bytes') return Buffer.from(r.bytes(length))
    r.bytes(length)
    return utf8String(r.buf, bytesAt, bytesAt + length)
  }
  if (field.kind === 'fixed32') {
    expectWire(wire, WireType.Fixed32, tagAt)
    return r.bytes(4).readUInt32LE(0)
  }
  expectWire(wire, WireType.Varint, tagAt)
  const valueAt = r.pos
  // A number below 2^49, or a bigint (longer varints: negative int32/int64, large uint64).
  const raw = r.uint()
  switch (field.kind) {
    case 'uint32':
      if (typeof raw !== 'number' || raw > U32_MAX) throw outOfRange(field, raw, valueAt)
      return raw
    case 'int32': {
      if (typeof raw === 'number') {
        if (raw > I32_MAX) throw outOfRange(field, raw, valueAt)
        return raw
      }
      // Negative int32 values are sign-extended to ten bytes.
      const signed = BigInt.asIntN(64, raw)
      if (signed < BigInt(I32_MIN) || signed > BigInt(I32_MAX)) throw outOfRange(field, signed, valueAt)
      return Number(signed)
    }
    case 'uint64':
      return typeof raw === 'number' ? bigintOf(raw) : raw
    case 'int64':
      return typeof raw === 'number' ? bigintOf(raw) : BigInt.asIntN(64, raw)
    case 'bool':
      if (raw !== 0 && raw !== 1) throw outOfRange(field, raw, valueAt)
      return raw === 1
    case 'enum': {
      const name = typeof raw === 'number' && raw <= U32_MAX ? field.enumSchema!.byNumber.get(raw) : undefined
      if (name === undefined) throw new WireError(`${raw} is not a known ${field.enumSchema!.name}`, valueAt)
      return name
    }
    default:
      throw new WireError(`unexpected ${field.kind}`, valueAt)
  }
}

function outOfRange(field: FieldSchema, value: number | bigint, at: number): WireError {
  return new WireError(`${field.kind} value ${value} is out of range`, at)
}

/**
 * Small values as shared bigints (bigints are immutable): offsets, counts and flags are mostly
 * small, and every bigint is a heap object that a 10,000-fd image would otherwise keep by
 * the tens of thousands.
 */
const SMALL_BIGINTS = Array.from({ length: 4096 }, (_, i) => BigInt(i))
function bigintOf(n: number): bigint {
  return n < SMALL_BIGINTS.length ? SMALL_BIGINTS[n] : BigInt(n)
}

/**
 * buf[start, end) as UTF-8, refused when it is not valid. ASCII (nearly every path and name)
 * is read in place; anything else goes through the strict decoder.
 */
function utf8String(buf: Buffer, start: number, end: number): string {
  let ascii = true
  for (let i = start; i < end; i++) {
    if (buf[i] >= 0x80) {
      ascii = false
      break
    }
  }
  if (ascii) return buf.toString('latin1', start, end)
  try {
    return utf8.decode(buf.subarray(start, end))
  } catch {
    throw new WireError('not valid UTF-8', start)
  }
}

function expectWire(wire: number, expected: WireType, tagAt: number): void {
  if (wire !== expected) throw new WireError(`wire type ${wire}, expected ${expected}`, tagAt)
}

export function isMessage(v: FieldValue): v is Message {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v)
}

