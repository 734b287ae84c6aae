// Sockets, dispatched by family: capture looks at a copy of the task's socket (pidfd_getfd)
// and hands it to its family's module (inetsock.ts: TCP and UDP); every other family is
// refused, naming the kind the socket tables of the task's network namespace give, so
// `ckptfs check` can say precisely what is in the way.

import type { FileDescriptionTypes, OtherDescription } from '../model'
import { native } from '../native'
import { described, invalid, requireNotCheckpointable, withCommon } from './common'
import type { FileHandler } from './handler'
import { captureInet, inetEntries, inetFromImage, inetImage, inetSummary, INET_KINDS, isInetDomain, loadInet, planInet, unreadableSocket, validateInet, type InetSocketDescription } from './inetsock'

type SocketDescription = FileDescriptionTypes['socket']

const table = withCommon<OtherDescription>([])

/** Address families and socket types by number (linux/socket.h, linux/net.h), for refusals. */
const FAMILY_NAMES: Record<number, string> = { 1: 'unix', 16: 'netlink', 17: 'packet', 38: 'alg', 40: 'vsock', 44: 'xdp', 30: 'tipc', 29: 'can', 31: 'bluetooth' }
const TYPE_NAMES: Record<number, string> = { 1: 'stream', 2: 'datagram', 3: 'raw', 4: 'rdm', 5: 'seqpacket', 10: 'packet' }

const isInet = (d: SocketDescription): d is InetSocketDescription => 'inet' in d

export const socket: FileHandler<SocketDescription> = {
  types: ['socket'],

  async capture(probe, base, ctx) {
    let fd: number
    try {
      fd = native.getFd(ctx.pid, probe.fd)
    } catch (err) {
      return unreadableSocket(base, probe, err)
    }
    let info
    try {
      info = native.inetSocket(fd)
    } catch (err) {
      native.close(fd)
      return unreadableSocket(base, probe, err)
    }
    if (isInetDomain(info.domain)) return captureInet(probe, base, ctx.pid, fd, info)
    native.close(fd)
    const kind = (await ctx.socketKinds().catch(() => new Map<bigint, string>())).get(base.ino)
    const family = FAMILY_NAMES[info.domain] ?? `family ${info.domain}`
    const type = TYPE_NAMES[info.type] ?? `type ${info.type}`
    return { ...base, type: 'socket', notCheckpointable: `socket: a ${family} ${type} socket (protocol ${info.protocol}${kind ? `, ${kind}` : ''}) cannot be checkpointed yet (fd ${probe.fd}, inode ${base.ino})` }
  },

  entries: (d) => (isInet(d) ? inetEntries(d) : table) as never,

  load(dir, base) {
    if (dir.has('family')) return loadInet(dir, base)
    requireNotCheckpointable(dir, base, 'socket')
    return described<OtherDescription>(base, { type: 'socket' })
  },

  validate(d) {
    if (isInet(d)) validateInet(d)
  },

  planRestore(d) {
    if (isInet(d)) return planInet(d)
    throw invalid(d, '', d.notCheckpointable ?? 'socket: not checkpointable', 'ENOTSUP')
  },
  stubKinds: INET_KINDS,

  image: {
    field: 'socket',
    write: async (d) => (isInet(d) ? { inet: await inetImage(d) } : {}),
    read(details, base, type) {
      if (details.has('inet')) return inetFromImage(details.msg('inet'), base)
      if (base.notCheckpointable === undefined) details.fail('inet', 'missing in a checkpointable socket')
      return { description: described<OtherDescription>(base, { type }), contentsSize: undefined }
    },
  },

  summary: (d) => (isInet(d) ? inetSummary(d) : d.target),
}
