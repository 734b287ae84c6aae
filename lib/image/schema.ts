// Loads lib/image/ckptfs.proto with protobufjs and compiles each message into the field
// tables the codec walks. The .proto is the single source of the format: field numbers,
// types and names come from it, and its camelCased field names are the model's.

import * as fs from 'fs'
import * as path from 'path'
import * as protobuf from 'protobufjs'
import { CkptError } from '../errors'

export const FORMAT_MAJOR = 1
export const FORMAT_MINOR = 7
export const MAGIC = 'ckptfs-image'
/** Page and file contents are cut into records of this size; chunk k starts at k * CHUNK_SIZE. */
export const CHUNK_SIZE = 1 << 20
export const PAGE_SIZE = 4096n

/** The fields of `Image`: the kinds of top-level record. */
export const recordKinds = ['header', 'process', 'thread', 'file', 'fd', 'vma', 'pageChunk', 'fileChunk', 'task', 'zombie', 'trailer'] as const
export type RecordKind = (typeof recordKinds)[number]

export type ScalarKind = 'uint32' | 'int32' | 'uint64' | 'int64' | 'bool' | 'string' | 'bytes' | 'fixed32'
const scalarKinds: ReadonlySet<string> = new Set<ScalarKind>(['uint32', 'int32', 'uint64', 'int64', 'bool', 'string', 'bytes', 'fixed32'])

export interface EnumSchema {
  name: string
  /** Value number -> the model's spelling ("file-private" for VMA_KIND_FILE_PRIVATE); 0 left out. */
  byNumber: ReadonlyMap<number, string>
  byName: ReadonlyMap<string, number>
}

export interface FieldSchema {
  /** camelCase, as in lib/model.ts. */
  name: string
  id: number
  kind: ScalarKind | 'enum' | 'message'
  repeated: boolean
  /** Presence is tracked (proto3 `optional`, oneof members, messages): absent is undefined. */
  tracksPresence: boolean
  /** The real oneof this field belongs to (not the synthetic one of proto3 `optional`). */
  oneof: string | undefined
  message: MessageSchema | undefined
  enumSchema: EnumSchema | undefined
}

export interface MessageSchema {
  name: string
  fields: FieldSchema[]
  byId: ReadonlyMap<number, FieldSchema>
}

/** The .proto next to this file (sources) or in the repository's lib/image (compiled dist/). */
function schemaPath(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    for (const candidate of [path.join(dir, 'ckptfs.proto'), path.join(dir, 'lib', 'image', 'ckptfs.proto')]) {
      if (fs.existsSync(candidate)) return candidate
    }
  }
  throw new CkptError('image: schema lib/image/ckptfs.proto not found')
}

/** The fields of a chunk record: whose contents (vma_start or objref), where, and the bytes. */
export interface ChunkFields {
  key: FieldSchema
  offset: FieldSchema
  data: FieldSchema
  /** CRC32C of data (fixed32, after data: see ckptfs.proto). */
  crc32c: FieldSchema
}

export interface ImageSchema {
  chunks: { pageChunk: ChunkFields; fileChunk: ChunkFields }
  /** Field number of each record kind in `Image`. */
  recordIds: ReadonlyMap<RecordKind, number>
  recordKinds: ReadonlyMap<number, RecordKind>
  Image: MessageSchema
  Header: MessageSchema
  Trailer: MessageSchema
  Process: MessageSchema
  Thread: MessageSchema
  FileDescription: MessageSchema
  FdEntry: MessageSchema
  Vma: MessageSchema
  PageChunk: MessageSchema
  FileChunk: MessageSchema
  Task: MessageSchema
  Zombie: MessageSchema
}

let loaded: ImageSchema | undefined

export function imageSchema(): ImageSchema {
  if (loaded) return loaded
  const root = protobuf.loadSync(schemaPath())
  root.resolveAll()
  const compiled = new Map<protobuf.Type, MessageSchema>()
  const get = (name: string) => compileMessage(root.lookupType(`ckptfs.image.${name}`), compiled)
  const image = get('Image')
  const recordIds = new Map<RecordKind, number>()
  for (const kind of recordKinds) {
    const field = image.fields.find((f) => f.name === kind)
    if (!field) throw new CkptError(`image schema: Image has no field ${kind}`)
    recordIds.set(kind, field.id)
  }
  loaded = {
    chunks: {
      pageChunk: chunkFields(get('PageChunk'), 'vmaStart'),
      fileChunk: chunkFields(get('FileChunk'), 'objref'),
    },
    recordIds,
    recordKinds: new Map([...recordIds].map(([kind, id]) => [id, kind])),
    Image: image,
    Header: get('Header'),
    Trailer: get('Trailer'),
    Process: get('Process'),
    Thread: get('Thread'),
    FileDescription: get('FileDescription'),
    FdEntry: get('FdEntry'),
    Vma: get('Vma'),
    PageChunk: get('PageChunk'),
    FileChunk: get('FileChunk'),
    Task: get('Task'),
    Zombie: get('Zombie'),
  }
  return loaded
}

function compileMessage(type: protobuf.Type, compiled: Map<protobuf.Type, MessageSchema>): MessageSchema {
  const done = compiled.get(type)
  if (done) return done
  const schema: MessageSchema = { name: type.name, fields: [], byId: new Map() }
  compiled.set(type, schema)
  const fields = [...type.fieldsArray].sort((a, b) => a.id - b.id)
  for (const field of fields) {
    if (field.map) throw new CkptError(`image schema: ${type.name}.${field.name}: map fields are not supported`)
    const resolved = field.resolvedType
    const proto3Optional = field.options?.proto3_optional === true
    const oneof = field.partOf && !proto3Optional ? field.partOf.name : undefined
    let kind: FieldSchema['kind']
    if (resolved instanceof protobuf.Type) kind = 'message'
    else if (resolved instanceof protobuf.Enum) kind = 'enum'
    else if (scalarKinds.has(field.type)) kind = field.type as ScalarKind
    else throw new CkptError(`image schema: ${type.name}.${field.name}: type ${field.type} is not supported`)
    schema.fields.push({
      name: field.name,
      id: field.id,
      kind,
      repeated: field.repeated,
      tracksPresence: !field.repeated && (proto3Optional || oneof !== undefined || kind === 'message'),
      oneof,
      message: resolved instanceof protobuf.Type ? compileMessage(resolved, compiled) : undefined,
      enumSchema: resolved instanceof protobuf.Enum ? compileEnum(resolved) : undefined,
    })
  }
  schema.byId = new Map(schema.fields.map((f) => [f.id, f]))
  return schema
}

function chunkFields(schema: MessageSchema, keyName: string): ChunkFields {
  const field = (name: string, kinds: FieldSchema['kind'][]): FieldSchema => {
    const found = schema.fields.find((f) => f.name === name)
    if (!found || found.repeated || !kinds.includes(found.kind)) throw new CkptError(`image schema: ${schema.name}.${name} must be a single ${kinds.join(' or ')}`)
    return found
  }
  return { key: field(keyName, ['uint64', 'uint32']), offset: field('offset', ['uint64']), data: field('data', ['bytes']), crc32c: field('crc32c', ['fixed32']) }
}

/** Maps VMA_KIND_FILE_PRIVATE to "file-private": the prefix is that of the enum's 0 value. */
function compileEnum(type: protobuf.Enum): EnumSchema {
  const zero = Object.entries(type.values).find(([, n]) => n === 0)
  if (!zero || !zero[0].endsWith('_UNSPECIFIED')) throw new CkptError(`image schema: enum ${type.name} needs a *_UNSPECIFIED = 0 value`)
  const prefix = zero[0].slice(0, -'UNSPECIFIED'.length)
  const byNumber = new Map<number, string>()
  for (const [name, number] of Object.entries(type.values)) {
    if (number === 0) continue
    if (!name.startsWith(prefix)) throw new CkptError(`image schema: enum ${type.name}: ${name} lacks the prefix ${prefix}`)
    byNumber.set(number, name.slice(prefix.length).toLowerCase().replace(/_/g, '-'))
  }
  return { name: type.name, byNumber, byName: new Map([...byNumber].map(([n, s]) => [s, n])) }
}
