// Packet sockets (issue 14): raw or datagram, with the protocol and interface they are bound
// to (the interface by index and name: a restore where the name is gone or now has another
// index is refused), their options, PACKET_FANOUT, the PACKET_ADD_MEMBERSHIP list and the
// rings' geometry (PACKET_RX_RING, PACKET_TX_RING). Capture reads a copy of the task's socket
// (pidfd_getfd: getsockname, getsockopt) and packet_diag in the task's network namespace
// (PACKET_COPY_THRESH, the membership list, the rings). The stub makes the socket again with
// the task's credentials (restorer.c, open_packet_object): a packet socket needs CAP_NET_RAW,
// so a task that did not have it gets none from a restore.
//
// Not restored, as by CRIU: packets queued to be read (a packet socket's traffic is lossy by
// nature: they are lost as in a short outage) and the frames in a ring. A ring the task has
// mapped is refused by the memory capture (a mapping of a socket cannot be made again).

import type { PacketRingInfo, PacketSocketInfo } from '../../addon/index'
import type { DescriptionCommon } from '../model'
import { RecordBuilder } from '../restore/fdplan'
import type { Fields } from '../image/records'
import { attr, bytes, sub, type TableEntry } from '../tree/node'
import { described, invalid, O_NONBLOCK, withCommon } from './common'
import type { DescriptionBase, FdProbe, RecordedDescription } from './handler'
import { RAW_SOCK_TYPES, sockTypeNumber, type RawSockType } from './netlinksock'
import { INT_MAX, U32_MAX, type SavedDir } from './saved'
import type { OtherSocketDescription } from './socket'

/** The stub's kind (restorer.c, open_packet_object). */
export const PACKET_KINDS = { packet: 18 } as const

export const AF_PACKET = 17
const SOCK_DGRAM = 2, SOCK_RAW = 3
/** TPACKET_V1..V3. */
const MAX_VERSION = 2
/** PACKET_FANOUT_CBPF and _EBPF: the group steers by a program, which is not saved. */
const FANOUT_CBPF = 6, FANOUT_EBPF = 7
const FANOUT_MAX_TYPE = 7
/** PACKET_MR_MULTICAST 0, PACKET_MR_PROMISC 1, PACKET_MR_ALLMULTI 2, PACKET_MR_UNICAST 3. */
const MR_TYPES = ['multicast', 'promisc', 'allmulti', 'unicast'] as const
type MembershipType = (typeof MR_TYPES)[number]
/** A membership's address is at most MAX_ADDR_LEN bytes (packet_diag keeps this many). */
const MAX_ADDR_LEN = 32
/** The count of one membership at most (each is one PACKET_ADD_MEMBERSHIP call at restore). */
const MAX_MEMBERSHIP_COUNT = 1024

export interface PacketSocketOptions {
  version: number
  reserve: number
  auxdata: boolean
  origdev: boolean
  vnetHdr: boolean
  timestamp: number
  copyThresh: number
  loss: boolean
  qdiscBypass: boolean
  ignoreOutgoing: boolean
  /** As getsockopt shows them (twice what setsockopt was given). */
  rcvbuf: number
  sndbuf: number
}

export interface PacketMembership {
  ifindex: number
  type: MembershipType
  addr: Buffer
  /** How many times it was added (each is dropped once). */
  count: number
}

export type PacketRing = PacketRingInfo

export interface PacketSocket {
  sockType: RawSockType
  /** ETH_P_* the socket receives (0: none until bound with one). */
  protocol: number
  /** 0: not bound to an interface (ifname is then empty). */
  ifindex: number
  ifname: string
  options: PacketSocketOptions
  /** PACKET_FANOUT as getsockopt shows it: id | type << 16 | flags << 24; undefined: in no group. */
  fanout: number | undefined
  memberships: PacketMembership[]
  rxRing: PacketRing | undefined
  txRing: PacketRing | undefined
}

export interface PacketSocketDescription extends DescriptionCommon {
  type: 'socket'
  family: 'packet'
  packet: PacketSocket
}

declare module './socket' {
  interface SocketFamilyTypes {
    packet: PacketSocketDescription
  }
}

const hex4 = (n: number) => '0x' + n.toString(16).padStart(4, '0')
const name = (s: { protocol: number; ifindex: number; ifname?: string }) =>
  `packet socket (protocol ${hex4(s.protocol)}, ${s.ifindex ? `bound to ${s.ifname ?? '?'} (index ${s.ifindex})` : 'not bound'})`

/** The description of a packet socket from what the addon read of this process's copy of it. */
export function capturePacket(probe: FdProbe, base: DescriptionBase, info: PacketSocketInfo): PacketSocketDescription | OtherSocketDescription {
  const refuse = (why: string): OtherSocketDescription => ({ ...base, type: 'socket', family: 'other', notCheckpointable: `socket: ${why} (fd ${probe.fd}, inode ${base.ino})` })
  const sockType: RawSockType | undefined = info.type === SOCK_RAW ? 'raw' : info.type === SOCK_DGRAM ? 'dgram' : undefined
  if (!sockType) return refuse(`a packet socket of type ${info.type} (SOCK_PACKET, the obsolete interface) is not checkpointed`)
  const what = name(info)
  if (!info.diagFound || !info.mclist || info.copyThresh === undefined) return refuse(`${what}: packet_diag does not list it in the task's network namespace`)
  if (info.ifindex && !info.ifname) return refuse(`${what}: its interface has no name any more`)
  if (info.filter > 0) return refuse(`${what} has a BPF filter attached (SO_ATTACH_FILTER, ${info.filter} instructions), which is not restored`)
  const fanout = info.inFanout ? info.fanout : undefined
  const fanoutType = (info.fanout >>> 16) & 0xff
  if (fanout !== undefined && (fanoutType === FANOUT_CBPF || fanoutType === FANOUT_EBPF)) return refuse(`${what} is in a fanout group steered by a BPF program (PACKET_FANOUT type ${fanoutType}), which is not restored`)
  const memberships: PacketMembership[] = []
  for (const m of info.mclist) {
    const type = MR_TYPES[m.type]
    if (!type) return refuse(`${what} has a membership of unknown type ${m.type}`)
    memberships.push({ ifindex: m.ifindex, type, addr: m.addr, count: m.count })
  }
  const options: PacketSocketOptions = {
    version: info.version,
    reserve: info.reserve,
    auxdata: info.auxdata !== 0,
    origdev: info.origdev !== 0,
    vnetHdr: info.vnetHdr !== 0,
    timestamp: info.timestamp,
    copyThresh: info.copyThresh,
    loss: info.loss !== 0,
    qdiscBypass: info.qdiscBypass !== 0,
    ignoreOutgoing: info.ignoreOutgoing !== 0,
    rcvbuf: info.rcvbuf,
    sndbuf: info.sndbuf,
  }
  const packet: PacketSocket = { sockType, protocol: info.protocol, ifindex: info.ifindex, ifname: info.ifname ?? '', options, fanout, memberships, rxRing: info.rxRing, txRing: info.txRing }
  return { ...base, type: 'socket', family: 'packet', packet }
}

// ---- the tree ----

const optionEntries: TableEntry<PacketSocketOptions>[] = [
  attr('version', (o) => o.version),
  attr('reserve', (o) => o.reserve),
  attr('auxdata', (o) => o.auxdata),
  attr('origdev', (o) => o.origdev),
  attr('vnet_hdr', (o) => o.vnetHdr),
  attr('timestamp', (o) => o.timestamp),
  attr('copy_thresh', (o) => o.copyThresh),
  attr('loss', (o) => o.loss),
  attr('qdisc_bypass', (o) => o.qdiscBypass),
  attr('ignore_outgoing', (o) => o.ignoreOutgoing),
  attr('rcvbuf', (o) => o.rcvbuf),
  attr('sndbuf', (o) => o.sndbuf),
]

const RING_FIELDS = [['block_size', 'blockSize'], ['block_nr', 'blockNr'], ['frame_size', 'frameSize'], ['frame_nr', 'frameNr'], ['retire_tmo', 'retireTmo'], ['sizeof_priv', 'sizeofPriv'], ['features', 'features']] as const
const ringEntries: TableEntry<PacketRing>[] = RING_FIELDS.map(([file, field]) => attr(file, (r: PacketRing) => r[field]))

/** One line per membership: IFINDEX TYPE ADDRESS(hex, "-" for none) COUNT. */
const membershipsText = (ms: PacketMembership[]): string => ms.map((m) => `${m.ifindex} ${m.type} ${m.addr.length ? m.addr.toString('hex') : '-'} ${m.count}\n`).join('')

function parseMemberships(text: string, fail: (why: string) => Error): PacketMembership[] {
  if (text === '') return []
  if (!text.endsWith('\n')) throw fail('list is truncated (no trailing newline)')
  return text.slice(0, -1).split('\n').map((line, i) => {
    const m = /^([1-9][0-9]*) ([a-z]+) (-|(?:[0-9a-f]{2})+) ([1-9][0-9]*)$/.exec(line)
    if (!m) throw fail(`line ${i + 1}: not "IFINDEX TYPE ADDRESS COUNT": ${JSON.stringify(line)}`)
    const type = MR_TYPES.find((x) => x === m[2])
    if (!type) throw fail(`line ${i + 1}: ${JSON.stringify(m[2])} is not one of ${MR_TYPES.join(', ')}`)
    const addr = m[3] === '-' ? Buffer.alloc(0) : Buffer.from(m[3], 'hex')
    if (Number(m[1]) > INT_MAX) throw fail(`line ${i + 1}: interface index ${m[1]} is out of range`)
    if (addr.length > MAX_ADDR_LEN) throw fail(`line ${i + 1}: an address of ${addr.length} bytes is longer than ${MAX_ADDR_LEN}`)
    if (Number(m[4]) > MAX_MEMBERSHIP_COUNT) throw fail(`line ${i + 1}: count ${m[4]} is more than ${MAX_MEMBERSHIP_COUNT}`)
    return { ifindex: Number(m[1]), type, addr, count: Number(m[4]) }
  })
}

const baseEntries: TableEntry<PacketSocketDescription>[] = [
  attr('family', () => 'packet'),
  attr('sock_type', (d) => d.packet.sockType),
  attr('protocol', (d) => d.packet.protocol),
  attr('ifindex', (d) => d.packet.ifindex),
  attr('ifname', (d) => d.packet.ifname),
  attr('fanout', (d) => d.packet.fanout ?? ''),
  bytes('memberships', (d) => Buffer.from(membershipsText(d.packet.memberships))),
  sub('options', (d: PacketSocketDescription) => d.packet.options, optionEntries),
]
const tables = new Map<string, TableEntry<PacketSocketDescription>[]>()
for (const rx of [false, true]) {
  for (const tx of [false, true]) {
    tables.set(`${rx} ${tx}`, withCommon<PacketSocketDescription>([
      ...baseEntries,
      ...(rx ? [sub('rx_ring', (d: PacketSocketDescription) => d.packet.rxRing!, ringEntries)] : []),
      ...(tx ? [sub('tx_ring', (d: PacketSocketDescription) => d.packet.txRing!, ringEntries)] : []),
    ]))
  }
}

export const packetEntries = (d: PacketSocketDescription): TableEntry<PacketSocketDescription>[] => tables.get(`${d.packet.rxRing !== undefined} ${d.packet.txRing !== undefined}`)!

function loadRing(dir: SavedDir): PacketRing {
  const v = (n: string) => Number(dir.decimal(n, 0n, U32_MAX))
  return { blockSize: v('block_size'), blockNr: v('block_nr'), frameSize: v('frame_size'), frameNr: v('frame_nr'), retireTmo: v('retire_tmo'), sizeofPriv: v('sizeof_priv'), features: v('features') }
}

export function loadPacket(dir: SavedDir, base: DescriptionBase): PacketSocketDescription {
  const t = dir.text('sock_type')
  const sockType = RAW_SOCK_TYPES.find((x) => x === t)
  if (!sockType) throw dir.fail('sock_type', `${JSON.stringify(t)} is not one of ${RAW_SOCK_TYPES.join(', ')}`)
  const o = dir.dir('options')
  const packet: PacketSocket = {
    sockType,
    protocol: dir.int('protocol', 0, 0xffff),
    ifindex: dir.int('ifindex', 0, INT_MAX),
    ifname: dir.text('ifname'),
    fanout: dir.text('fanout') === '' ? undefined : Number(dir.decimal('fanout', 0n, U32_MAX)),
    memberships: parseMemberships(dir.listText('memberships'), (why) => dir.fail('memberships', why)),
    options: {
      version: o.int('version', 0, MAX_VERSION),
      reserve: o.int('reserve', 0, INT_MAX),
      auxdata: o.flag('auxdata'),
      origdev: o.flag('origdev'),
      vnetHdr: o.flag('vnet_hdr'),
      timestamp: o.int('timestamp', 0, INT_MAX),
      copyThresh: o.int('copy_thresh', 0, INT_MAX),
      loss: o.flag('loss'),
      qdiscBypass: o.flag('qdisc_bypass'),
      ignoreOutgoing: o.flag('ignore_outgoing'),
      rcvbuf: o.int('rcvbuf', 0, INT_MAX),
      sndbuf: o.int('sndbuf', 0, INT_MAX),
    },
    rxRing: dir.has('rx_ring') ? loadRing(dir.dir('rx_ring')) : undefined,
    txRing: dir.has('tx_ring') ? loadRing(dir.dir('tx_ring')) : undefined,
  }
  return described<PacketSocketDescription>(base, { type: 'socket', family: 'packet', packet })
}

// ---- validation and restore ----

export function validatePacket(d: PacketSocketDescription): void {
  const s = d.packet
  if (s.ifindex === 0 && s.ifname !== '') throw invalid(d, 'ifname', 'a socket bound to no interface has no interface name')
  if (s.ifindex !== 0 && !/^[^/\s:]{1,15}$/.test(s.ifname)) throw invalid(d, 'ifname', `${JSON.stringify(s.ifname)} is not an interface name (1 to 15 characters, no "/", ":" or space)`)
  if (s.options.version > MAX_VERSION) throw invalid(d, 'options/version', `${s.options.version} is not TPACKET_V1, V2 or V3 (0, 1, 2)`)
  const fanoutType = ((s.fanout ?? 0) >>> 16) & 0xff
  if (s.fanout !== undefined && (fanoutType > FANOUT_MAX_TYPE || fanoutType === FANOUT_CBPF || fanoutType === FANOUT_EBPF)) throw invalid(d, 'fanout', `type ${fanoutType} is not a fanout type restored without a program`)
  if (s.fanout !== undefined && s.ifindex === 0 && s.protocol === 0) throw invalid(d, 'fanout', 'a socket that receives nothing (no protocol) cannot be in a fanout group')
  for (const m of s.memberships) {
    if (m.addr.length > MAX_ADDR_LEN) throw invalid(d, 'memberships', `an address of ${m.addr.length} bytes is longer than ${MAX_ADDR_LEN}`)
    if (m.count < 1 || m.count > MAX_MEMBERSHIP_COUNT) throw invalid(d, 'memberships', `count ${m.count} is out of range [1, ${MAX_MEMBERSHIP_COUNT}]`)
  }
}

const bit = (b: boolean) => (b ? 1 : 0)

function ringRecord(p: RecordBuilder, r: PacketRing | undefined): void {
  p.u32(r ? 1 : 0)
  if (r) for (const [, field] of RING_FIELDS) p.u32(r[field])
}

/**
 * The stub's PACKET record (docs/RESTORE.md, kind 18): u32 type, u32 protocol, i32 flags,
 * u32 ifindex, string ifname, i32 version, reserve, auxdata, origdev, vnet_hdr, timestamp,
 * copy_thresh, loss, qdisc_bypass, ignore_outgoing, rcvbuf, sndbuf, u32 in a fanout group
 * (0, 1), u32 fanout, u32 membership
 * count, each: u32 ifindex, u32 type, bytes address, u32 count; then the RX and the TX ring:
 * u32 present, and when 1 its u32 block_size, block_nr, frame_size, frame_nr, retire_tmo,
 * sizeof_priv, features.
 */
export function planPacket(d: PacketSocketDescription): { kind: number; objref: typeof d.objref; payload: RecordBuilder } {
  const s = d.packet
  const o = s.options
  const p = new RecordBuilder()
    .u32(sockTypeNumber(s.sockType)).u32(s.protocol).i32(d.flags & O_NONBLOCK)
    .u32(s.ifindex).string(s.ifname)
    .i32(o.version).i32(o.reserve).i32(bit(o.auxdata)).i32(bit(o.origdev)).i32(bit(o.vnetHdr)).i32(o.timestamp)
    .i32(o.copyThresh).i32(bit(o.loss)).i32(bit(o.qdiscBypass)).i32(bit(o.ignoreOutgoing)).i32(o.rcvbuf).i32(o.sndbuf)
    .u32(s.fanout !== undefined ? 1 : 0).u32(s.fanout ?? 0)
    .u32(s.memberships.length)
  for (const m of s.memberships) p.u32(m.ifindex).u32(MR_TYPES.indexOf(m.type)).bytes(m.addr).u32(m.count)
  ringRecord(p, s.rxRing)
  ringRecord(p, s.txRing)
  return { kind: PACKET_KINDS.packet, objref: d.objref, payload: p }
}

// ---- the image ----

export const packetImage = (d: PacketSocketDescription): object => d.packet

function ringFromImage(f: Fields): PacketRing {
  return { blockSize: f.num('blockSize'), blockNr: f.num('blockNr'), frameSize: f.num('frameSize'), frameNr: f.num('frameNr'), retireTmo: f.num('retireTmo'), sizeofPriv: f.num('sizeofPriv'), features: f.num('features') }
}

export function packetFromImage(f: Fields, base: DescriptionBase): RecordedDescription<PacketSocketDescription> {
  const o = f.msg('options')
  const packet: PacketSocket = {
    sockType: f.oneOf('sockType', RAW_SOCK_TYPES),
    protocol: f.num('protocol', { max: 0xffff }),
    ifindex: f.num('ifindex', { max: INT_MAX }),
    ifname: f.str('ifname'),
    fanout: f.has('fanout') ? f.num('fanout') : undefined,
    memberships: f.list('memberships').map((m) => ({ ifindex: m.num('ifindex', { max: INT_MAX }), type: m.oneOf('type', MR_TYPES), addr: m.bytes('addr'), count: m.num('count', { max: MAX_MEMBERSHIP_COUNT }) })),
    options: {
      version: o.num('version', { max: MAX_VERSION }),
      reserve: o.num('reserve', { max: INT_MAX }),
      auxdata: o.bool('auxdata'),
      origdev: o.bool('origdev'),
      vnetHdr: o.bool('vnetHdr'),
      timestamp: o.num('timestamp', { max: INT_MAX }),
      copyThresh: o.num('copyThresh', { max: INT_MAX }),
      loss: o.bool('loss'),
      qdiscBypass: o.bool('qdiscBypass'),
      ignoreOutgoing: o.bool('ignoreOutgoing'),
      rcvbuf: o.num('rcvbuf', { max: INT_MAX }),
      sndbuf: o.num('sndbuf', { max: INT_MAX }),
    },
    rxRing: f.has('rxRing') ? ringFromImage(f.msg('rxRing')) : undefined,
    txRing: f.has('txRing') ? ringFromImage(f.msg('txRing')) : undefined,
  }
  return { description: described<PacketSocketDescription>(base, { type: 'socket', family: 'packet', packet }), contentsSize: undefined }
}

export function packetSummary(d: PacketSocketDescription): string {
  const s = d.packet
  const extra = [s.fanout !== undefined ? `fanout group ${s.fanout & 0xffff}` : '', s.rxRing ? 'RX ring' : '', s.txRing ? 'TX ring' : ''].filter(Boolean)
  return `${d.target} (${s.sockType} ${name(s)}${extra.length ? `, ${extra.join(', ')}` : ''})`
}
