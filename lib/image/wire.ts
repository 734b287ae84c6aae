// Protocol buffer wire primitives (varints, tags, lengths) over Buffers. protobufjs only
// parses the schema: its readers turn 64-bit values into lossy numbers unless long.js is
// present, and the image needs exact bigints and refusals that name the byte.

export enum WireType {
  Varint = 0,
  Fixed64 = 1,
  Len = 2,
  StartGroup = 3,
  EndGroup = 4,
  Fixed32 = 5,
}

/** The longest varint: ten bytes carry 64 bits. */
const MAX_VARINT_BYTES = 10
/** Seven bytes carry 49 bits: always an exact JavaScript number. */
const SMALL_VARINT_BYTES = 7

/** A growing output buffer for one encoded message. */
export class ByteWriter {
  private buf = Buffer.allocUnsafe(256)
  private len = 0

  private ensure(extra: number): void {
    if (this.len + extra <= this.buf.length) return
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + extra))
    this.buf.copy(bigger, 0, 0, this.len)
    this.buf = bigger
  }

  /** An unsigned varint of at most 64 bits. */
  varint(value: number | bigint): this {
    if (value < 0) throw new RangeError(`varint of a negative value ${value}`)
    this.ensure(MAX_VARINT_BYTES)
    if (typeof value === 'number' && value < 0x80000000) {
      let v = value
      while (v >= 0x80) {
        this.buf[this.len++] = (v & 0x7f) | 0x80
        v >>>= 7
      }
      this.buf[this.len++] = v
      return this
    }
    let v = BigInt(value)
    while (v >= 0x80n) {
      this.buf[this.len++] = Number(v & 0x7fn) | 0x80
      v >>= 7n
    }
    this.buf[this.len++] = Number(v)
    return this
  }

  tag(field: number, wire: WireType): this {
    return this.varint(field * 8 + wire)
  }

  raw(data: Buffer): this {
    this.ensure(data.length)
    data.copy(this.buf, this.len)
    this.len += data.length
    return this
  }

  /** A length-delimited field: tag, length, bytes. */
  lengthDelimited(field: number, data: Buffer): this {
    return this.tag(field, WireType.Len).varint(data.length).raw(data)
  }

  get length(): number {
    return this.len
  }

  finish(): Buffer {
    return this.buf.subarray(0, this.len)
  }
}

/** Refusal of malformed wire data; `at` is the offset in the buffer being read, `field` names the field ("Thread.rseq.size"). */
export class WireError extends Error {
  constructor(readonly problem: string, readonly at: number, readonly field?: string) {
    super(field ? `${field}: ${problem}` : problem)
  }

  /** The same refusal, naming the field it happened in unless a nested one is named already. */
  inField(field: string): WireError {
    return this.field ? this : new WireError(this.problem, this.at, field)
  }
}

/** Reads wire primitives from [pos, end) of a buffer, refusing anything that runs past end. */
export class BufferReader {
  constructor(readonly buf: Buffer, public pos = 0, readonly end = buf.length) {}

  get done(): boolean {
    return this.pos >= this.end
  }

  /** An unsigned varint of at most 64 bits, as a bigint. */
  varint(): bigint {
    const v = this.uint()
    return typeof v === 'number' ? BigInt(v) : v
  }

  /**
   * An unsigned varint of at most 64 bits: a number when it fits in seven bytes (49 bits),
   * else a bigint. Most values are small, and building a bigint byte by byte costs several
   * heap allocations: this keeps a 10,000-fd image's decode from being mostly garbage.
   */
  uint(): number | bigint {
    const start = this.pos
    let value = 0
    let scale = 1
    for (let i = 0; i < SMALL_VARINT_BYTES; i++) {
      if (this.pos >= this.end) throw new WireError('varint runs past the end', start)
      const b = this.buf[this.pos++]
      value += (b & 0x7f) * scale
      if (b < 0x80) return value
      scale *= 0x80
    }
    this.pos = start
    return this.bigVarint()
  }

  private bigVarint(): bigint {
    const start = this.pos
    let result = 0n
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      if (this.pos >= this.end) throw new WireError('varint runs past the end', start)
      const b = this.buf[this.pos++]
      if (i === MAX_VARINT_BYTES - 1 && b > 1) throw new WireError('varint exceeds 64 bits', start)
      result |= BigInt(b & 0x7f) << BigInt(7 * i)
      if (b < 0x80) return result
    }
    throw new WireError('varint longer than 10 bytes', start)
  }

  /** A varint that must fit in `limit` (lengths, tags): a plain number. */
  smallVarint(what: string, limit: number): number {
    const start = this.pos
    const value = this.uint()
    if (value > limit) throw new WireError(`${what} ${value} is out of range (at most ${limit})`, start)
    return Number(value)
  }

  /** `length` bytes, as a view into the buffer. */
  bytes(length: number): Buffer {
    this.need(length)
    const out = this.buf.subarray(this.pos, this.pos + length)
    this.pos += length
    return out
  }

  /** Skips one field's value of the given wire type (unknown fields of newer minor versions). */
  skip(wire: number): void {
    switch (wire) {
      case WireType.Varint: this.varint(); return
      case WireType.Fixed64: this.bytes(8); return
      case WireType.Len: this.bytes(this.smallVarint('length', this.end - this.pos)); return
      case WireType.Fixed32: this.bytes(4); return
      default: throw new WireError(`wire type ${wire} is not used by this format`, this.pos)
    }
  }

  private need(length: number): void {
    if (length > this.end - this.pos) throw new WireError(`${length} bytes needed, ${this.end - this.pos} left`, this.pos)
  }
}

/** Splits a tag into field number and wire type, refusing field number 0. */
export function splitTag(tag: number, at: number): { field: number; wire: number } {
  const field = Math.floor(tag / 8)
  if (field === 0) throw new WireError('field number 0', at)
  return { field, wire: tag % 8 }
}
