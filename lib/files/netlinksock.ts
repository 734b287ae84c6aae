// Netlink sockets (issue 14): any protocol, raw or datagram, with the portid it is bound to
// (explicitly or by autobind), every multicast group it joined, the portid and group it is
// connected to, and its options. Capture reads a copy of the task's socket (pidfd_getfd:
// getsockname, getpeername, NETLINK_LIST_MEMBERSHIPS, getsockopt) and netlink_diag in the
// task's network namespace (a dump in progress). The stub makes the socket again with the
// task's credentials (restorer.c, open_netlink_object): a protocol or a group the task could
// not use is refused by the kernel as it would have been to the task.
//
// What is queued to be read is not restored: it is a kernel's answer to a request (a dump's
// next part, an ack) or a notification, and the kernel cannot be asked to send it again. As
// CRIU, a socket with bytes queued or a dump in progress is refused at checkpoint, by name.

import type { NetlinkSocketInfo } from '../../addon/index'
import type { DescriptionCommon } from '../model'
import { RecordBuilder } from '../restore/fdplan'
import type { Fields } from '../image/records'
import { attr, sub, type TableEntry } from '../tree/node'
import { described, invalid, O_NONBLOCK, withCommon } from './common'
import type { DescriptionBase, FdProbe, RecordedDescription } from './handler'
import { INT_MAX, U32_MAX, type SavedDir } from './saved'
import type { OtherSocketDescription } from './socket'

/** The stub's kind (restorer.c, open_netlink_object). */
export const NETLINK_KINDS = { netlink: 17 } as const

export const AF_NETLINK = 16
const SOCK_DGRAM = 2, SOCK_RAW = 3
/** netlink_diag's NDIAG_FLAG_CB_RUNNING: a dump is under way. */
const NDIAG_FLAG_CB_RUNNING = 1
/** The kernel's limit of a protocol number (MAX_LINKS) and of a group number (a u32 bitmap's bits). */
const MAX_LINKS = 32
const MAX_GROUP = 1 << 16

export type RawSockType = 'raw' | 'dgram'
export const RAW_SOCK_TYPES: readonly RawSockType[] = ['raw', 'dgram']
export const sockTypeNumber = (t: RawSockType): number => (t === 'raw' ? SOCK_RAW : SOCK_DGRAM)

export interface NetlinkSocketOptions {
  pktinfo: boolean
  broadcastError: boolean
  noEnobufs: boolean
  listenAllNsid: boolean
  capAck: boolean
  extAck: boolean
  strictChk: boolean
  /** As getsockopt shows them (twice what setsockopt was given). */
  rcvbuf: number
  sndbuf: number
}

export interface NetlinkSocket {
  sockType: RawSockType
  /** NETLINK_ROUTE 0, NETLINK_KOBJECT_UEVENT 15, ... */
  protocol: number
  /** 0: not bound. */
  portid: number
  /** The portid and group connect() set (0: none). */
  dstPortid: number
  dstGroup: number
  /** Every multicast group joined (1-based), ascending. */
  groups: number[]
  options: NetlinkSocketOptions
}

export interface NetlinkSocketDescription extends DescriptionCommon {
  type: 'socket'
  family: 'netlink'
  netlink: NetlinkSocket
}

declare module './socket' {
  interface SocketFamilyTypes {
    netlink: NetlinkSocketDescription
  }
}

const name = (s: { protocol: number; portid: number }) => `netlink socket (protocol ${s.protocol}, portid ${s.portid})`

/** The description of a netlink socket from what the addon read of this process's copy of it. */
export function captureNetlink(probe: FdProbe, base: DescriptionBase, info: NetlinkSocketInfo): NetlinkSocketDescription | OtherSocketDescription {
  const refuse = (why: string): OtherSocketDescription => ({ ...base, type: 'socket', family: 'other', notCheckpointable: `socket: ${why} (fd ${probe.fd}, inode ${base.ino})` })
  const sockType: RawSockType | undefined = info.type === SOCK_RAW ? 'raw' : info.type === SOCK_DGRAM ? 'dgram' : undefined
  if (!sockType) return refuse(`a netlink socket of type ${info.type} (only raw and datagram ones exist)`)
  const what = name(info)
  if (info.queued > 0n) return refuse(`${what} has ${info.queued} bytes queued to be read: a kernel's answer or notification cannot be sent again, so it would be lost`)
  if (info.diagFlags !== undefined && info.diagFlags & NDIAG_FLAG_CB_RUNNING) return refuse(`${what} is in the middle of a dump: the rest of the kernel's answer cannot be asked for again`)
  if (info.filter > 0) return refuse(`${what} has a BPF filter attached (SO_ATTACH_FILTER, ${info.filter} instructions), which is not restored`)
  const options: NetlinkSocketOptions = {
    pktinfo: info.pktinfo !== 0,
    broadcastError: info.broadcastError !== 0,
    noEnobufs: info.noEnobufs !== 0,
    listenAllNsid: info.listenAllNsid !== 0,
    capAck: info.capAck !== 0,
    extAck: info.extAck !== 0,
    strictChk: info.strictChk !== 0,
    rcvbuf: info.rcvbuf,
    sndbuf: info.sndbuf,
  }
  return { ...base, type: 'socket', family: 'netlink', netlink: { sockType, protocol: info.protocol, portid: info.portid, dstPortid: info.dstPortid, dstGroup: info.dstGroup, groups: info.groups, options } }
}

// ---- the tree ----

const optionEntries: TableEntry<NetlinkSocketOptions>[] = [
  attr('pktinfo', (o) => o.pktinfo),
  attr('broadcast_error', (o) => o.broadcastError),
  attr('no_enobufs', (o) => o.noEnobufs),
  attr('listen_all_nsid', (o) => o.listenAllNsid),
  attr('cap_ack', (o) => o.capAck),
  attr('ext_ack', (o) => o.extAck),
  attr('get_strict_chk', (o) => o.strictChk),
  attr('rcvbuf', (o) => o.rcvbuf),
  attr('sndbuf', (o) => o.sndbuf),
]

const netlinkTable = withCommon<NetlinkSocketDescription>([
  attr('family', () => 'netlink'),
  attr('sock_type', (d) => d.netlink.sockType),
  attr('protocol', (d) => d.netlink.protocol),
  attr('portid', (d) => d.netlink.portid),
  attr('dst_portid', (d) => d.netlink.dstPortid),
  attr('dst_group', (d) => d.netlink.dstGroup),
  attr('groups', (d) => d.netlink.groups.join(' ')),
  sub('options', (d: NetlinkSocketDescription) => d.netlink.options, optionEntries),
])

export const netlinkEntries = (): TableEntry<NetlinkSocketDescription>[] => netlinkTable

/** Group numbers as `groups` shows them: ascending, separated by one space (empty: none). */
function parseGroups(text: string, fail: (why: string) => Error): number[] {
  if (text === '') return []
  const groups = text.split(' ').map((w) => {
    if (!/^[1-9][0-9]*$/.test(w) || Number(w) > MAX_GROUP) throw fail(`${JSON.stringify(w)} is not a group number in [1, ${MAX_GROUP}]`)
    return Number(w)
  })
  groups.forEach((g, i) => {
    if (i > 0 && g <= groups[i - 1]) throw fail('group numbers are not ascending')
  })
  return groups
}

export function loadNetlink(dir: SavedDir, base: DescriptionBase): NetlinkSocketDescription {
  const t = dir.text('sock_type')
  const sockType = RAW_SOCK_TYPES.find((x) => x === t)
  if (!sockType) throw dir.fail('sock_type', `${JSON.stringify(t)} is not one of ${RAW_SOCK_TYPES.join(', ')}`)
  const o = dir.dir('options')
  const u32 = (d: SavedDir, n: string) => Number(d.decimal(n, 0n, U32_MAX))
  const netlink: NetlinkSocket = {
    sockType,
    protocol: dir.int('protocol', 0, MAX_LINKS - 1),
    portid: u32(dir, 'portid'),
    dstPortid: u32(dir, 'dst_portid'),
    dstGroup: dir.int('dst_group', 0, 32),
    groups: parseGroups(dir.text('groups'), (why) => dir.fail('groups', why)),
    options: {
      pktinfo: o.flag('pktinfo'),
      broadcastError: o.flag('broadcast_error'),
      noEnobufs: o.flag('no_enobufs'),
      listenAllNsid: o.flag('listen_all_nsid'),
      capAck: o.flag('cap_ack'),
      extAck: o.flag('ext_ack'),
      strictChk: o.flag('get_strict_chk'),
      rcvbuf: o.int('rcvbuf', 0, INT_MAX),
      sndbuf: o.int('sndbuf', 0, INT_MAX),
    },
  }
  return described<NetlinkSocketDescription>(base, { type: 'socket', family: 'netlink', netlink })
}

// ---- validation and restore ----

export function validateNetlink(d: NetlinkSocketDescription): void {
  const s = d.netlink
  if (s.protocol < 0 || s.protocol >= MAX_LINKS) throw invalid(d, 'protocol', `${s.protocol} is out of range [0, ${MAX_LINKS - 1}]`)
  if (s.dstGroup > 32) throw invalid(d, 'dst_group', `${s.dstGroup}: connect() names at most group 32`)
  if (s.groups.some((g, i) => g < 1 || g > MAX_GROUP || (i > 0 && g <= s.groups[i - 1]))) throw invalid(d, 'groups', `not ascending group numbers in [1, ${MAX_GROUP}]`)
}

const bit = (b: boolean) => (b ? 1 : 0)

/**
 * The stub's NETLINK record (docs/RESTORE.md, kind 17): u32 type, u32 protocol, i32 flags,
 * u32 portid, u32 dst_portid, u32 dst_group, u32 group count, u32 groups..., i32 pktinfo,
 * broadcast_error, no_enobufs, listen_all_nsid, cap_ack, ext_ack, get_strict_chk, rcvbuf, sndbuf.
 */
export function planNetlink(d: NetlinkSocketDescription): { kind: number; objref: typeof d.objref; payload: RecordBuilder } {
  const s = d.netlink
  const o = s.options
  const p = new RecordBuilder()
    .u32(sockTypeNumber(s.sockType)).u32(s.protocol).i32(d.flags & O_NONBLOCK)
    .u32(s.portid).u32(s.dstPortid).u32(s.dstGroup)
    .u32(s.groups.length)
  for (const g of s.groups) p.u32(g)
  p.i32(bit(o.pktinfo)).i32(bit(o.broadcastError)).i32(bit(o.noEnobufs)).i32(bit(o.listenAllNsid))
    .i32(bit(o.capAck)).i32(bit(o.extAck)).i32(bit(o.strictChk)).i32(o.rcvbuf).i32(o.sndbuf)
  return { kind: NETLINK_KINDS.netlink, objref: d.objref, payload: p }
}

// ---- the image ----

export const netlinkImage = (d: NetlinkSocketDescription): object => d.netlink

export function netlinkFromImage(f: Fields, base: DescriptionBase): RecordedDescription<NetlinkSocketDescription> {
  const o = f.msg('options')
  const netlink: NetlinkSocket = {
    sockType: f.oneOf('sockType', RAW_SOCK_TYPES),
    protocol: f.num('protocol', { max: MAX_LINKS - 1 }),
    portid: f.num('portid'),
    dstPortid: f.num('dstPortid'),
    dstGroup: f.num('dstGroup', { max: 32 }),
    groups: f.nums('groups'),
    options: {
      pktinfo: o.bool('pktinfo'),
      broadcastError: o.bool('broadcastError'),
      noEnobufs: o.bool('noEnobufs'),
      listenAllNsid: o.bool('listenAllNsid'),
      capAck: o.bool('capAck'),
      extAck: o.bool('extAck'),
      strictChk: o.bool('strictChk'),
      rcvbuf: o.num('rcvbuf', { max: INT_MAX }),
      sndbuf: o.num('sndbuf', { max: INT_MAX }),
    },
  }
  return { description: described<NetlinkSocketDescription>(base, { type: 'socket', family: 'netlink', netlink }), contentsSize: undefined }
}

export function netlinkSummary(d: NetlinkSocketDescription): string {
  const s = d.netlink
  const parts = [s.portid ? `portid ${s.portid}` : 'not bound']
  if (s.groups.length) parts.push(`groups ${s.groups.join(',')}`)
  if (s.dstPortid || s.dstGroup) parts.push(`connected to portid ${s.dstPortid}${s.dstGroup ? ` group ${s.dstGroup}` : ''}`)
  return `${d.target} (netlink ${s.sockType} socket, protocol ${s.protocol}, ${parts.join(', ')})`
}
