// Sockets: one fd_type, `socket`, whose description is its family's. This module is only a
// dispatcher: each family with a handler of its own (lib/files/unixsock.ts for AF_UNIX,
// lib/files/inetsock.ts for TCP and UDP over IPv4 and IPv6, lib/files/netlinksock.ts and
// lib/files/packetsock.ts for netlink and packet sockets) adds its description to
// SocketFamilyTypes and one line to `families`; capture picks the family from the socket
// tables of the task's network namespace (a socket they do not list, such as an unbound one,
// is asked itself), everything else from the description's `family`. A socket of a family
// without a handler is shown and refused with its family, type and protocol, so `ckptfs
// check` can say precisely what is in the way.

import type { DescriptionCommon } from '../model'
import { CkptError } from '../errors'
import { attr } from '../tree/node'
import type { Fields } from '../image/records'
import { described, requireNotCheckpointable, withCommon } from './common'
import type { DescriptionBase, FileHandler, ImageMapping, RecordedDescription } from './handler'
import { unixSocket } from './unixsock'
import { native } from '../native'
import type { FdProbe } from './handler'
import { AF_NETLINK, captureNetlink, loadNetlink, NETLINK_KINDS, netlinkEntries, netlinkFromImage, netlinkImage, netlinkSummary, planNetlink, validateNetlink, type NetlinkSocketDescription } from './netlinksock'
import { AF_PACKET, capturePacket, loadPacket, PACKET_KINDS, packetEntries, packetFromImage, packetImage, packetSummary, planPacket, validatePacket, type PacketSocketDescription } from './packetsock'
import { captureInet, inetEntries, inetFromImage, inetImage, inetSummary, INET_KINDS, isInetDomain, loadInet, planInet, unreadableSocket, validateInet, type InetSocketDescription } from './inetsock'

/** A socket of a family that cannot be checkpointed (netlink, packet, ...). */
export interface OtherSocketDescription extends DescriptionCommon {
  type: 'socket'
  family: 'other'
}

/** Every family's description, by its `family` (a family module adds its own). */
export interface SocketFamilyTypes {
  other: OtherSocketDescription
}
export type SocketFamily = keyof SocketFamilyTypes
export type SocketDescription = SocketFamilyTypes[SocketFamily]

declare module '../model' {
  interface FileDescriptionTypes {
    socket: SocketDescription
  }
}

/**
 * A family's handler: a file handler for its own descriptions, which says which sockets it
 * captures (by the kind the socket tables give them, "UNIX stream ...") and keeps its image
 * fields in its member of the Socket message's `family` oneof (lib/image/ckptfs.proto).
 */
export interface SocketFamilyHandler<D extends SocketDescription> extends Omit<FileHandler<D>, 'types' | 'image'> {
  readonly family: D['family']
  /** Whether a socket of this kind (readSocketKinds' description) is this family's. */
  claims(kind: string): boolean
  readonly image: Omit<ImageMapping<D>, 'read'> & {
    read(details: Fields, base: DescriptionBase): RecordedDescription<D>
  }
}

const otherTable = withCommon<OtherSocketDescription>([attr('family', (d) => d.family)])

const other: SocketFamilyHandler<OtherSocketDescription> = {
  family: 'other',
  claims: () => false,
  capture: (probe, base, ctx) => captureBySocket(probe, base, ctx.pid, ctx.socketKinds) as Promise<OtherSocketDescription>,
  entries: () => otherTable,
  load(dir, base) {
    requireNotCheckpointable(dir, base, 'socket')
    return described<OtherSocketDescription>(base, { type: 'socket', family: 'other' })
  },
  image: {
    field: 'other',
    write: () => ({}),
    read: (_details, base) => ({ description: described<OtherSocketDescription>(base, { type: 'socket', family: 'other' }), contentsSize: undefined }),
  },
}

/** Address families and socket types by number (linux/socket.h, linux/net.h), for refusals. */
const FAMILY_NAMES: Record<number, string> = { 1: 'unix', 16: 'netlink', 17: 'packet', 38: 'alg', 40: 'vsock', 44: 'xdp', 30: 'tipc', 29: 'can', 31: 'bluetooth' }
const TYPE_NAMES: Record<number, string> = { 1: 'stream', 2: 'datagram', 3: 'raw', 4: 'rdm', 5: 'seqpacket', 10: 'packet' }

/**
 * A socket the tables do not place in a family with a handler: its family, type and protocol
 * are asked of the socket itself (a copy taken with pidfd_getfd), so an unbound TCP or UDP
 * socket is still the inet module's, and anything else is refused by its own name.
 */
async function captureBySocket(probe: FdProbe, base: DescriptionBase, pid: number, socketKinds: () => Promise<Map<bigint, string>>): Promise<SocketDescription> {
  let fd: number
  let info
  try {
    fd = native.getFd(pid, probe.fd)
  } catch (err) {
    return unreadableSocket(base, probe, err)
  }
  try {
    info = native.inetSocket(fd)
  } catch (err) {
    native.close(fd)
    return unreadableSocket(base, probe, err)
  }
  if (isInetDomain(info.domain)) return captureInet(probe, base, pid, fd, info)
  if (info.domain === AF_NETLINK || info.domain === AF_PACKET) {
    try {
      return info.domain === AF_NETLINK ? captureNetlink(probe, base, native.netlinkSocket(pid, fd)) : capturePacket(probe, base, native.packetSocket(pid, fd))
    } catch (err) {
      return unreadableSocket(base, probe, err)
    } finally {
      native.close(fd)
    }
  }
  native.close(fd)
  const kind = (await socketKinds().catch(() => new Map<bigint, string>())).get(base.ino)
  const family = FAMILY_NAMES[info.domain] ?? `family ${info.domain}`
  const type = TYPE_NAMES[info.type] ?? `type ${info.type}`
  return { ...base, type: 'socket', family: 'other', notCheckpointable: `socket: a ${family} ${type} socket (protocol ${info.protocol}${kind ? `, ${kind}` : ''}) cannot be checkpointed yet (fd ${probe.fd}, inode ${base.ino})` }
}

/** TCP and UDP over IPv4 and IPv6 (lib/files/inetsock.ts); `family` is inet or inet6. */
const inet: SocketFamilyHandler<InetSocketDescription> = {
  family: 'inet',
  claims: (kind) => /^(TCP|UDP)/.test(kind),
  capture: (probe, base, ctx) => captureBySocket(probe, base, ctx.pid, ctx.socketKinds) as Promise<InetSocketDescription>,
  entries: (d) => inetEntries(d),
  load: (dir, base) => loadInet(dir, base),
  validate: (d) => validateInet(d),
  planRestore: (d, { table }) => planInet(d, table),
  stubKinds: INET_KINDS,
  image: {
    field: 'inet',
    write: (d) => inetImage(d),
    read: (details, base) => inetFromImage(details, base),
  },
  summary: (d) => inetSummary(d),
}

/** Netlink sockets (lib/files/netlinksock.ts): the socket itself says it is one. */
const netlink: SocketFamilyHandler<NetlinkSocketDescription> = {
  family: 'netlink',
  claims: () => false,
  capture: (probe, base, ctx) => captureBySocket(probe, base, ctx.pid, ctx.socketKinds) as Promise<NetlinkSocketDescription>,
  entries: () => netlinkEntries(),
  load: (dir, base) => loadNetlink(dir, base),
  validate: (d) => validateNetlink(d),
  planRestore: (d) => planNetlink(d),
  stubKinds: NETLINK_KINDS,
  image: {
    field: 'netlink',
    write: (d) => netlinkImage(d),
    read: (details, base) => netlinkFromImage(details, base),
  },
  summary: (d) => netlinkSummary(d),
}

/** Packet sockets (lib/files/packetsock.ts): the socket itself says it is one. */
const packet: SocketFamilyHandler<PacketSocketDescription> = {
  family: 'packet',
  claims: () => false,
  capture: (probe, base, ctx) => captureBySocket(probe, base, ctx.pid, ctx.socketKinds) as Promise<PacketSocketDescription>,
  entries: (d) => packetEntries(d),
  load: (dir, base) => loadPacket(dir, base),
  validate: (d) => validatePacket(d),
  planRestore: (d) => planPacket(d),
  stubKinds: PACKET_KINDS,
  image: {
    field: 'packet',
    write: (d) => packetImage(d),
    read: (details, base) => packetFromImage(details, base),
  },
  summary: (d) => packetSummary(d),
}

/** The family handlers, one line each. */
const families: ReadonlyArray<SocketFamilyHandler<SocketDescription>> = [
  unixSocket as unknown as SocketFamilyHandler<SocketDescription>,
  inet as unknown as SocketFamilyHandler<SocketDescription>,
  netlink as unknown as SocketFamilyHandler<SocketDescription>,
  packet as unknown as SocketFamilyHandler<SocketDescription>,
]
const byFamily = new Map<string, SocketFamilyHandler<SocketDescription>>([...families, other as unknown as SocketFamilyHandler<SocketDescription>].map((h) => [h.family, h]))
// An IPv6 socket's `family` is inet6; the same module.
byFamily.set('inet6', inet as unknown as SocketFamilyHandler<SocketDescription>)

function familyOf(d: SocketDescription): SocketFamilyHandler<SocketDescription> {
  const h = byFamily.get(d.family)
  if (!h) throw new CkptError(`files/${d.objref}/family: ${d.family} is not a socket family ckptfs knows`)
  return h
}

/** The Socket message's oneof members, one per family. */
const imageMembers = [...new Set([...byFamily.values()].map((h) => h.image.field))]

export const socket: FileHandler<SocketDescription> = {
  types: ['socket'],

  async capture(probe, base, ctx) {
    const kind = (await ctx.socketKinds().catch(() => new Map<bigint, string>())).get(base.ino) ?? ''
    const h = families.find((f) => f.claims(kind))
    return h ? h.capture(probe, base, ctx) : captureBySocket(probe, base, ctx.pid, ctx.socketKinds)
  },

  async settle(d) {
    const h = familyOf(d)
    return h.settle ? h.settle(d) : d
  },

  entries: (d) => familyOf(d).entries(d),

  load(dir, base, type) {
    // Trees saved before sockets had families show none: those sockets were all refused.
    const family = dir.has('family') ? dir.text('family') : 'other'
    const h = byFamily.get(family)
    if (!h) throw dir.fail('family', `${JSON.stringify(family)} is not one of ${[...byFamily.keys()].join(', ')}`)
    return h.load(dir, base, type)
  },

  async validate(d, ctx) {
    await familyOf(d).validate?.(d, ctx)
  },

  planRestore(d, ctx) {
    const h = familyOf(d)
    if (!h.planRestore) throw new CkptError(`files/${d.objref}: ${d.family} sockets cannot be restored`, 'ENOTSUP')
    return h.planRestore(d, ctx)
  },

  get stubKinds() {
    return Object.assign({}, ...families.map((f) => f.stubKinds ?? {}))
  },

  image: {
    field: 'socket',
    async write(d) {
      const h = familyOf(d)
      return { [h.image.field]: await h.image.write(d) }
    },
    read(details, base) {
      const present = imageMembers.filter((m) => details.has(m))
      if (present.length !== 1) details.fail('family', present.length ? `${present.join(' and ')} are both set` : 'missing')
      const h = [...byFamily.values()].find((f) => f.image.field === present[0])!
      return h.image.read(details.msg(present[0]), base)
    },
    references: (d) => familyOf(d).image.references?.(d) ?? [],
  },

  passes: (d) => familyOf(d).passes?.(d) ?? [],

  concluded: (d) => familyOf(d).concluded?.(d),

  summary: (d) => familyOf(d).summary?.(d) ?? d.target,
}
