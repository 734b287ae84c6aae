// TCP and UDP sockets over IPv4 and IPv6 (issue 14): listening and bound sockets with their
// options, connected UDP sockets, and established TCP connections through TCP_REPAIR (as
// CRIU's --tcp-established). Capture reads a copy of the task's socket (pidfd_getfd): an
// established connection is put in repair mode at once and held so by the server until
// `done` (lib/netgap.ts), with its peer's packets dropped from then until its restore.
// Half-closed connections (CLOSE_WAIT, FIN_WAIT2) are captured so too, their FIN left out of the
// sequence numbers; datagrams queued on a UDP socket are peeked with their senders. The stub
// puts back what the socket API cannot by packets sent in the peer's (sender's) name.
// The stub makes each socket again with the task's credentials (restorer.c, open_inet_object).

import * as fs from 'fs'
import { isIPv4, isIPv6 } from 'net'
import type { InetSocketInfo } from '../../addon/index'
import { CkptError } from '../errors'
import type { DescriptionCommon, FileTable, Lazy } from '../model'
import type { OtherSocketDescription } from './socket'
import { native } from '../native'
import { closeGap, fourTuple, holdConnection, openGap, type FourTuple } from '../netgap'
import { RecordBuilder } from '../restore/fdplan'
import type { Fields } from '../image/records'
import { checkedBytes } from '../tree/checked'
import { attr, bytes, sub, type TableEntry } from '../tree/node'
import { described, invalid, O_NONBLOCK, withCommon } from './common'
import type { DescriptionBase, FdProbe, RecordedDescription } from './handler'
import { INT_MAX, U32_MAX, U64_MAX, type SavedDir } from './saved'

/** The stub's kind (restorer.c, open_inet_object). */
export const INET_KINDS = { inet: 16 } as const

export interface InetEndpoint {
  addr: string
  /** 0: not bound. */
  port: number
}

export interface InetSocketOptions {
  reuseaddr: boolean
  reuseport: boolean
  keepalive: boolean
  keepidle: number
  keepintvl: number
  keepcnt: number
  nodelay: boolean
  /** As getsockopt shows them: twice what setsockopt was given. */
  rcvbuf: number
  sndbuf: number
  rcvtimeoUs: bigint
  sndtimeoUs: bigint
  v6only: boolean
  broadcast: boolean
  /** TCP_CORK (TCP only). */
  cork: boolean
}

/** An established TCP connection as TCP_REPAIR read it (sequence numbers are mod 2^32). */
export interface TcpRepair {
  sendSeq: number
  recvSeq: number
  sendQueue: Lazy<Buffer>
  /** The last `unsent` bytes of the send queue were never sent. */
  unsent: number
  recvQueue: Lazy<Buffer>
  /** The MSS clamp: what the peer announced (TCP_MAXSEG in repair mode). */
  mss: number
  /**
   * The segment size it sent with (tcpi_snd_mss): the clamp bounded by the path's MTU and by
   * half the peer's window when the connection was made. 0: not known (a tree of before 1.6).
   */
  sndMss: number
  /** tcpi_options: TCPI_OPT_TIMESTAMPS 1, TCPI_OPT_SACK 2, TCPI_OPT_WSCALE 4. */
  tcpOptions: number
  sndWscale: number
  rcvWscale: number
  timestamp: number
  sndWl1: number
  sndWnd: number
  maxWindow: number
  rcvWnd: number
  rcvWup: number
}

/** A datagram queued on a UDP socket and the address it came from. */
export interface InetDatagram {
  data: Buffer
  sender: InetEndpoint
}

export type InetFamily = 'inet' | 'inet6'
export type InetProtocol = 'tcp' | 'udp'
/**
 * close_wait: the peer shut its side (its FIN came after the receive queue); fin_wait2: this
 * end shut its side and the peer acknowledged the FIN. Both half-closed states are connections
 * restored as established ones are, then closed on their side again (restorer.c).
 */
export type InetState = 'established' | 'listen' | 'close' | 'close_wait' | 'fin_wait2'

export interface InetSocket {
  family: InetFamily
  protocol: InetProtocol
  /** TCP: its state; UDP: established when connected, else close. */
  state: InetState
  /** Port 0: not bound. */
  local: InetEndpoint
  /** Set when connected. */
  peer: InetEndpoint | undefined
  backlog: number
  options: InetSocketOptions
  /** Set for an established TCP connection. */
  tcp: TcpRepair | undefined
  /** UDP: the datagrams queued to be read, in order (restorer.c sends each again in its sender's name). */
  queue: Lazy<InetDatagram[]>
  /**
   * sk_shutdown: 1 read (RCV_SHUTDOWN), 2 write (SEND_SHUTDOWN), 3 both. A half-closed TCP
   * connection's own (close_wait: read; fin_wait2: write) come with its state.
   */
  shutdown: number
}

export interface InetSocketDescription extends DescriptionCommon {
  type: 'socket'
  /** The same as inet.family: the socket dispatcher's (socket.ts) choice of module. */
  family: InetFamily
  inet: InetSocket
}

declare module './socket' {
  interface SocketFamilyTypes {
    inet: InetSocketDescription
  }
}

const AF_INET = 2, AF_INET6 = 10
const SOCK_STREAM = 1, SOCK_DGRAM = 2
const IPPROTO_TCP = 6, IPPROTO_UDP = 17
const TCP_ESTABLISHED = 1, TCP_FIN_WAIT2 = 5, TCP_CLOSE = 7, TCP_CLOSE_WAIT = 8, TCP_LISTEN = 10
/** The kernel's sk_state names (include/net/tcp_states.h). */
const TCP_STATE_NAMES = ['', 'ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT', 'LAST_ACK', 'LISTEN', 'CLOSING', 'NEW_SYN_RECV']
const STATES: readonly InetState[] = ['established', 'listen', 'close', 'close_wait', 'fin_wait2']
/** The states of a TCP connection (one with a peer and its tcp/ state). */
const CONNECTED: readonly InetState[] = ['established', 'close_wait', 'fin_wait2']
const isConnection = (s: { protocol: InetProtocol; state: InetState }): boolean => s.protocol === 'tcp' && CONNECTED.includes(s.state)
const STATE_NUMBERS: Record<InetState, number> = { established: TCP_ESTABLISHED, listen: TCP_LISTEN, close: TCP_CLOSE, close_wait: TCP_CLOSE_WAIT, fin_wait2: TCP_FIN_WAIT2 }
const FAMILIES: readonly InetFamily[] = ['inet', 'inet6']
const PROTOCOLS: readonly InetProtocol[] = ['tcp', 'udp']
/** Window scale shifts above 14 are invalid (RFC 7323). */
const MAX_WSCALE = 14
const TCPI_OPT_KNOWN = 1 | 2 | 4
const SHUTDOWN_NAMES = ['none', 'read', 'write', 'both'] as const
const RCV_SHUTDOWN = 1, SEND_SHUTDOWN = 2
/** The largest UDP payload: 65535 less the UDP header (IPv6; over IPv4 also less its 20-byte header). */
const MAX_UDP_PAYLOAD = 65527

export function isInetDomain(domain: number): boolean {
  return domain === AF_INET || domain === AF_INET6
}

const endpointText = (family: InetFamily, e: InetEndpoint): string => (family === 'inet6' ? `[${e.addr}]:${e.port}` : `${e.addr}:${e.port}`)

function socketName(s: { family: InetFamily; protocol: InetProtocol; local: InetEndpoint; peer: InetEndpoint | undefined }): string {
  const where = endpointText(s.family, s.local) + (s.peer ? ` <-> ${endpointText(s.family, s.peer)}` : '')
  return `${s.protocol.toUpperCase()}${s.family === 'inet6' ? 'v6' : ''} socket ${where}`
}

const asEndpoint = (e: { addr: string; port: number } | undefined, family: InetFamily): InetEndpoint => e ?? { addr: family === 'inet' ? '0.0.0.0' : '::', port: 0 }

/**
 * The description of a TCP or UDP socket; `fd` is this process's copy of it, which this
 * takes over (kept by lib/netgap.ts for an established connection, else closed).
 */
export async function captureInet(probe: FdProbe, base: DescriptionBase, pid: number, fd: number, info: InetSocketInfo): Promise<InetSocketDescription | OtherSocketDescription> {
  let kept = false
  try {
    const family: InetFamily = info.domain === AF_INET ? 'inet' : 'inet6'
    const protocol: InetProtocol | undefined =
      info.type === SOCK_STREAM && info.protocol === IPPROTO_TCP ? 'tcp' : info.type === SOCK_DGRAM && info.protocol === IPPROTO_UDP ? 'udp' : undefined
    const refuse = (why: string): OtherSocketDescription => ({ ...base, type: 'socket', family: 'other', notCheckpointable: `socket: ${why} (fd ${probe.fd}, inode ${base.ino})` })
    if (!protocol) return refuse(`${family} socket of type ${info.type} and protocol ${info.protocol} (only TCP and UDP are checkpointed)`)
    let local = asEndpoint(info.local, family)
    const peer = info.peer && info.peer.port !== 0 ? { addr: info.peer.addr, port: info.peer.port } : undefined
    const name = socketName({ family, protocol, local, peer })
    let diag
    try {
      diag = native.inetDiag(pid, fd)
    } catch (err) {
      return refuse(`${name}: its shutdown state could not be read: ${(err as Error).message}`)
    }
    if (info.local?.scopeId || info.peer?.scopeId) return refuse(`${name} has a link-local scope, which is not restored`)
    let state: InetState
    if (protocol === 'udp') state = peer ? 'established' : 'close'
    else if (info.state === TCP_ESTABLISHED) state = 'established'
    else if (info.state === TCP_LISTEN) state = 'listen'
    else if (info.state === TCP_CLOSE) state = 'close'
    else if (info.state === TCP_CLOSE_WAIT) state = 'close_wait'
    else if (info.state === TCP_FIN_WAIT2) state = 'fin_wait2'
    else return refuse(`${name} is in state ${TCP_STATE_NAMES[info.state] ?? info.state}: only ESTABLISHED, CLOSE_WAIT, FIN_WAIT2, LISTEN and CLOSE connections are checkpointed (${closingWhy(info.state)})`)
    if (state === 'listen' && info.pending > 0) return refuse(`${name} (listening) has ${info.pending} connection(s) not yet accepted, which would be lost`)
    // A closed TCP socket still shows the address its connection had, but one the program did
    // not bind to a port itself gave the port back when the connection ended (another socket may
    // hold it now, a TIME_WAIT one of this very connection): it stays unbound, as it was.
    if (protocol === 'tcp' && state === 'close' && local.port !== 0 && diag.boundListed && !diag.listed) local = asEndpoint(undefined, family)
    const options: InetSocketOptions = {
      reuseaddr: info.reuseaddr !== 0,
      reuseport: info.reuseport !== 0,
      keepalive: info.keepalive !== 0,
      keepidle: info.keepidle,
      keepintvl: info.keepintvl,
      keepcnt: info.keepcnt,
      nodelay: info.nodelay !== 0,
      rcvbuf: info.rcvbuf,
      sndbuf: info.sndbuf,
      rcvtimeoUs: info.rcvtimeoUs,
      sndtimeoUs: info.sndtimeoUs,
      v6only: info.v6only !== 0,
      broadcast: info.broadcast !== 0,
      cork: protocol === 'tcp' && info.cork !== 0,
    }
    const datagrams: InetDatagram[] = []
    for (const [i, data] of (info.queue ?? []).entries()) {
      const from = info.senders?.[i]
      if (!from) return refuse(`${name}: queued datagram ${i + 1} has no sender address`)
      if (from.scopeId) return refuse(`${name}: queued datagram ${i + 1} came from a link-local address (scope ${from.scopeId}), which is not restored`)
      datagrams.push({ data, sender: { addr: from.addr, port: from.port } })
    }
    let tcp: TcpRepair | undefined
    if (isConnection({ protocol, state })) {
      const tuple = fourTuple(effectiveUid(pid), local, peer!)
      // The peer's packets are dropped before the socket goes quiet, so none meets a closed port.
      try {
        await openGap(tuple)
      } catch (err) {
        return refuse(`${name}: its peer's packets cannot be held off while it is gone: ${(err as Error).message}`)
      }
      try {
        const dump = native.tcpRepairDump(fd)
        // The state again, in repair mode: a FIN that came in or was acknowledged meanwhile.
        if (dump.state !== STATE_NUMBERS[state]) {
          native.tcpRepairOff(fd)
          throw new CkptError(`it went from ${state.toUpperCase()} to ${TCP_STATE_NAMES[dump.state] ?? dump.state} while being read`)
        }
        // A FIN takes a sequence number: each queue's is kept as the one after its last byte,
        // the FIN left out (the restore sends it again).
        const fin = (seq: bigint) => Number((seq - 1n) & 0xffffffffn)
        tcp = {
          sendSeq: state === 'fin_wait2' ? fin(dump.sendSeq) : Number(dump.sendSeq),
          recvSeq: state === 'close_wait' ? fin(dump.recvSeq) : Number(dump.recvSeq),
          sendQueue: async () => dump.sendQueue,
          unsent: dump.unsent,
          recvQueue: async () => dump.recvQueue,
          mss: dump.mss,
          sndMss: dump.sndMss,
          tcpOptions: dump.options & TCPI_OPT_KNOWN,
          sndWscale: dump.sndWscale,
          rcvWscale: dump.rcvWscale,
          timestamp: Number(dump.timestamp),
          sndWl1: Number(dump.sndWl1),
          sndWnd: Number(dump.sndWnd),
          maxWindow: Number(dump.maxWindow),
          rcvWnd: Number(dump.rcvWnd),
          rcvWup: Number(dump.rcvWup),
        }
        // The window's left edge may be the FIN's end: moved back with it, the right edge kept (as CRIU does).
        if (state === 'close_wait') Object.assign(tcp, { rcvWup: fin(dump.rcvWup), rcvWnd: tcp.rcvWnd + 1 })
      } catch (err) {
        await closeGap(tuple).catch(() => undefined)
        return refuse(`${name}: TCP_REPAIR failed: ${(err as Error).message}`)
      }
      holdConnection(pid, fd, tuple)
      kept = true
    }
    return { ...base, type: 'socket', family, inet: { family, protocol, state, local, peer, backlog: info.backlog, options, tcp, queue: async () => datagrams, shutdown: diag.shutdown & (RCV_SHUTDOWN | SEND_SHUTDOWN) } }
  } finally {
    if (!kept) native.close(fd)
  }
}

/** Why a closing state other than CLOSE_WAIT and FIN_WAIT2 is not restored. */
function closingWhy(state: number): string {
  switch (TCP_STATE_NAMES[state]) {
    case 'FIN_WAIT1': return 'its FIN is not acknowledged yet; checkpoint it again once the peer has'
    case 'LAST_ACK': case 'CLOSING': return 'both sides sent their FIN and one is not acknowledged yet: the connection is all but over'
    case 'TIME_WAIT': return 'the connection is over'
    default: return 'a connection not yet established would be lost'
  }
}

/** The effective uid of a task, from /proc/PID/status (the gap's owner). */
function effectiveUid(pid: number): number {
  const uids = /^Uid:\s+\d+\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!uids) throw new CkptError(`/proc/${pid}/status: no Uid line`)
  return Number(uids[1])
}

/** The gap of `d` when it is an established TCP connection of a task whose effective uid was `uid`. */
export function connectionTuple(d: InetSocketDescription, uid: number): FourTuple | undefined {
  const s = d.inet
  return isConnection(s) && s.peer ? fourTuple(uid, s.local, s.peer) : undefined
}

/**
 * Ends the gap of every established TCP connection of `table` (after its restore, or a failed
 * one), for a task whose saved effective uid is `uid`: only the gaps that task's checkpoint made.
 */
export async function closeConnectionGaps(table: FileTable, uid: number): Promise<void> {
  const tuples = table.files.flatMap((f) => (f.type === 'socket' && 'inet' in f ? connectionTuple(f, uid) ?? [] : []))
  await Promise.all(tuples.map((t) => closeGap(t)))
}

// ---- the tree ----

const optionEntries: TableEntry<InetSocketOptions>[] = [
  attr('reuseaddr', (o) => o.reuseaddr),
  attr('reuseport', (o) => o.reuseport),
  attr('keepalive', (o) => o.keepalive),
  attr('keepidle', (o) => o.keepidle),
  attr('keepintvl', (o) => o.keepintvl),
  attr('keepcnt', (o) => o.keepcnt),
  attr('nodelay', (o) => o.nodelay),
  attr('rcvbuf', (o) => o.rcvbuf),
  attr('sndbuf', (o) => o.sndbuf),
  attr('rcvtimeo_us', (o) => o.rcvtimeoUs),
  attr('sndtimeo_us', (o) => o.sndtimeoUs),
  attr('v6only', (o) => o.v6only),
  attr('broadcast', (o) => o.broadcast),
  attr('cork', (o) => o.cork),
]

const tcpEntries: TableEntry<TcpRepair>[] = [
  attr('send_seq', (t) => t.sendSeq),
  attr('recv_seq', (t) => t.recvSeq),
  ...checkedBytes('send_queue', (t: TcpRepair) => t.sendQueue()),
  attr('unsent', (t) => t.unsent),
  ...checkedBytes('recv_queue', (t: TcpRepair) => t.recvQueue()),
  attr('mss', (t) => t.mss),
  attr('snd_mss', (t) => t.sndMss),
  attr('tcp_options', (t) => t.tcpOptions),
  attr('snd_wscale', (t) => t.sndWscale),
  attr('rcv_wscale', (t) => t.rcvWscale),
  attr('timestamp', (t) => t.timestamp),
  attr('snd_wl1', (t) => t.sndWl1),
  attr('snd_wnd', (t) => t.sndWnd),
  attr('max_window', (t) => t.maxWindow),
  attr('rcv_wnd', (t) => t.rcvWnd),
  attr('rcv_wup', (t) => t.rcvWup),
]

const socketEntries: TableEntry<InetSocketDescription>[] = [
  attr('family', (d) => d.inet.family),
  attr('protocol', (d) => d.inet.protocol),
  attr('state', (d) => d.inet.state),
  attr('local_addr', (d) => d.inet.local.addr),
  attr('local_port', (d) => d.inet.local.port),
  attr('backlog', (d) => d.inet.backlog),
  attr('shutdown', (d) => SHUTDOWN_NAMES[d.inet.shutdown]),
  sub('options', (d: InetSocketDescription) => d.inet.options, optionEntries),
]
const peerEntries: TableEntry<InetSocketDescription>[] = [
  attr('peer_addr', (d) => d.inet.peer!.addr),
  attr('peer_port', (d) => d.inet.peer!.port),
]
// ---- the queue file of a UDP socket ----
// Per datagram a u32 (little-endian) length, then its bytes; queue_senders: per datagram one
// line, the address and port it came from.

function datagramBytes(queue: InetDatagram[]): Buffer {
  const parts: Buffer[] = []
  for (const m of queue) {
    const head = Buffer.alloc(4)
    head.writeUInt32LE(m.data.length, 0)
    parts.push(head, m.data)
  }
  return Buffer.concat(parts)
}

function datagramsFromBytes(bytes: Buffer, fail: (why: string) => never): Buffer[] {
  const out: Buffer[] = []
  for (let at = 0; at < bytes.length;) {
    if (bytes.length - at < 4) fail(`datagram ${out.length}: truncated length at byte ${at}`)
    const len = bytes.readUInt32LE(at)
    if (len > MAX_UDP_PAYLOAD) fail(`datagram ${out.length}: ${len} bytes is more than a UDP datagram holds (${MAX_UDP_PAYLOAD})`)
    if (len > bytes.length - at - 4) fail(`datagram ${out.length}: ${len} bytes announced at byte ${at}, ${bytes.length - at - 4} left`)
    out.push(bytes.subarray(at + 4, at + 4 + len))
    at += 4 + len
  }
  return out
}

const sendersText = (queue: InetDatagram[]): string => queue.map((m) => `${m.sender.addr} ${m.sender.port}\n`).join('')

function sendersFromText(text: string, fail: (why: string) => never): InetEndpoint[] {
  return text.split('\n').filter((l, i, all) => l !== '' || i < all.length - 1).map((line, i) => {
    const m = /^(\S+) (\d+)$/.exec(line)
    if (!m || Number(m[2]) > 65535) fail(`line ${i + 1}: ${JSON.stringify(line)} is not "ADDRESS PORT"`)
    return { addr: m[1], port: Number(m[2]) }
  })
}

const udpEntries: TableEntry<InetSocketDescription>[] = [
  ...checkedBytes('queue', async (d: InetSocketDescription) => datagramBytes(await d.inet.queue())),
  bytes('queue_senders', async (d: InetSocketDescription) => Buffer.from(sendersText(await d.inet.queue()))),
]

const unconnectedTable = withCommon<InetSocketDescription>(socketEntries)
const connectedTable = withCommon<InetSocketDescription>([...socketEntries, ...peerEntries])
const udpUnconnectedTable = withCommon<InetSocketDescription>([...socketEntries, ...udpEntries])
const udpConnectedTable = withCommon<InetSocketDescription>([...socketEntries, ...peerEntries, ...udpEntries])
const establishedTable = withCommon<InetSocketDescription>([...socketEntries, ...peerEntries, sub('tcp', (d: InetSocketDescription) => d.inet.tcp!, tcpEntries)])

export function inetEntries(d: InetSocketDescription): TableEntry<InetSocketDescription>[] {
  if (d.inet.protocol === 'udp') return d.inet.peer ? udpConnectedTable : udpUnconnectedTable
  return d.inet.tcp ? establishedTable : d.inet.peer ? connectedTable : unconnectedTable
}

const oneOf = <T extends string>(dir: SavedDir, name: string, allowed: readonly T[]): T => {
  const v = dir.text(name)
  const found = allowed.find((a) => a === v)
  if (found === undefined) throw dir.fail(name, `${JSON.stringify(v)} is not one of ${allowed.join(', ')}`)
  return found
}

/** Reads a saved files/OBJREF of a TCP or UDP socket (one with a `family` entry). */
export function loadInet(dir: SavedDir, base: DescriptionBase): InetSocketDescription {
  const family = oneOf(dir, 'family', FAMILIES)
  const protocol = oneOf(dir, 'protocol', PROTOCOLS)
  const state = oneOf(dir, 'state', STATES)
  const local = { addr: dir.text('local_addr'), port: dir.int('local_port', 0, 65535) }
  const peer = dir.has('peer_addr') ? { addr: dir.text('peer_addr'), port: dir.int('peer_port', 0, 65535) } : undefined
  const backlog = dir.int('backlog', 0, INT_MAX)
  const o = dir.dir('options')
  const options: InetSocketOptions = {
    reuseaddr: o.flag('reuseaddr'),
    reuseport: o.flag('reuseport'),
    keepalive: o.flag('keepalive'),
    keepidle: o.int('keepidle', 0, INT_MAX),
    keepintvl: o.int('keepintvl', 0, INT_MAX),
    keepcnt: o.int('keepcnt', 0, INT_MAX),
    nodelay: o.flag('nodelay'),
    rcvbuf: o.int('rcvbuf', 0, INT_MAX),
    sndbuf: o.int('sndbuf', 0, INT_MAX),
    rcvtimeoUs: o.decimal('rcvtimeo_us', 0n, U64_MAX),
    sndtimeoUs: o.decimal('sndtimeo_us', 0n, U64_MAX),
    v6only: o.flag('v6only'),
    broadcast: o.flag('broadcast'),
    // Both since 1.7: an older tree has neither (no cork, no shutdown).
    cork: o.has('cork') ? o.flag('cork') : false,
  }
  const shutdown = dir.has('shutdown') ? SHUTDOWN_NAMES.indexOf(oneOf(dir, 'shutdown', SHUTDOWN_NAMES)) : 0
  let tcp: TcpRepair | undefined
  if (dir.has('tcp')) {
    const t = dir.dir('tcp')
    const u32 = (name: string) => Number(t.decimal(name, 0n, U32_MAX))
    tcp = {
      sendSeq: u32('send_seq'),
      recvSeq: u32('recv_seq'),
      sendQueue: t.checkedLazyBytes('send_queue'),
      unsent: u32('unsent'),
      recvQueue: t.checkedLazyBytes('recv_queue'),
      mss: u32('mss'),
      sndMss: t.has('snd_mss') ? u32('snd_mss') : 0,
      tcpOptions: u32('tcp_options'),
      sndWscale: u32('snd_wscale'),
      rcvWscale: u32('rcv_wscale'),
      timestamp: u32('timestamp'),
      sndWl1: u32('snd_wl1'),
      sndWnd: u32('snd_wnd'),
      maxWindow: u32('max_window'),
      rcvWnd: u32('rcv_wnd'),
      rcvWup: u32('rcv_wup'),
    }
  }
  let queue: Lazy<InetDatagram[]> = async () => []
  if (protocol === 'udp' && dir.has('queue')) {
    const data = dir.checkedLazyBytes('queue')
    const senders = sendersFromText(dir.has('queue_senders') ? dir.listText('queue_senders') : '', (why) => { throw dir.fail('queue_senders', why) })
    queue = async () => {
      const datagrams = datagramsFromBytes(await data(), (why) => { throw dir.fail('queue', why) })
      if (datagrams.length !== senders.length) throw dir.fail('queue_senders', `${senders.length} senders for ${datagrams.length} datagrams in queue`)
      return datagrams.map((d, i) => ({ data: d, sender: senders[i] }))
    }
  }
  return described<InetSocketDescription>(base, { type: 'socket', family, inet: { family, protocol, state, local, peer, backlog, options, tcp, queue, shutdown } })
}

// ---- validation and restore ----

const addressFits = (family: InetFamily, addr: string): boolean => (family === 'inet' ? isIPv4(addr) : isIPv6(addr))

/** The checks of meaning a restore relies on, named by the tree path of the value. */
export function validateInet(d: InetSocketDescription): void {
  const s = d.inet
  if (!addressFits(s.family, s.local.addr)) throw invalid(d, 'local_addr', `${JSON.stringify(s.local.addr)} is not an ${s.family === 'inet' ? 'IPv4' : 'IPv6'} address`)
  if (s.peer && !addressFits(s.family, s.peer.addr)) throw invalid(d, 'peer_addr', `${JSON.stringify(s.peer.addr)} is not an ${s.family === 'inet' ? 'IPv4' : 'IPv6'} address`)
  if (s.peer && s.peer.port === 0) throw invalid(d, 'peer_port', 'port 0 is no peer')
  if (s.protocol === 'udp' && s.state === 'listen') throw invalid(d, 'state', 'a UDP socket does not listen')
  if (s.state === 'listen' && s.local.port === 0) throw invalid(d, 'local_port', 'a listening socket is bound to a port')
  if (s.protocol === 'udp' && s.state !== 'established' && s.state !== 'close') throw invalid(d, 'state', `a UDP socket is established (connected) or close, not ${s.state}`)
  const connected = CONNECTED.includes(s.state)
  if (connected && !s.peer) throw invalid(d, 'state', `${s.state}, but there is no peer_addr`)
  if (!connected && s.peer) throw invalid(d, 'peer_addr', `a socket in state ${s.state} has no peer`)
  if (isConnection(s) && !s.tcp) throw invalid(d, 'tcp', `a TCP connection (${s.state}) needs its tcp/ state`)
  if (s.tcp && !isConnection(s)) throw invalid(d, 'tcp', `only a TCP connection has one (this is ${s.protocol}, ${s.state})`)
  if (s.state === 'fin_wait2' && s.tcp && s.tcp.unsent > 0) throw invalid(d, 'tcp/unsent', 'a connection in fin_wait2 shut its sending side: nothing is left to send')
  if (connected && s.local.port === 0) throw invalid(d, 'local_port', 'a connected socket is bound to a port')
  if (!Number.isInteger(s.shutdown) || s.shutdown < 0 || s.shutdown > 3) throw invalid(d, 'shutdown', `${s.shutdown} is not one of 0 (none), 1 (read), 2 (write), 3 (both)`)
  // Shutting a listening socket's read side stops it listening; its write side is not kept.
  if (s.state === 'listen' && s.shutdown) throw invalid(d, 'shutdown', `a listening socket is not shut down (${SHUTDOWN_NAMES[s.shutdown]})`)
  // Shutting the write side of a connection sends its FIN: it is in fin_wait2 (or gone) then.
  if (s.protocol === 'tcp' && (s.state === 'established' || s.state === 'close_wait') && s.shutdown & SEND_SHUTDOWN) throw invalid(d, 'shutdown', `a connection in ${s.state} has not shut its write side (that is fin_wait2)`)
  if (s.options.cork && s.protocol !== 'tcp') throw invalid(d, 'options/cork', 'TCP_CORK is an option of TCP sockets')
  const t = s.tcp
  if (t) {
    if (t.mss < 1 || t.mss > 65535) throw invalid(d, 'tcp/mss', `${t.mss} is out of range [1, 65535]`)
    if (t.sndMss > t.mss) throw invalid(d, 'tcp/snd_mss', `${t.sndMss} is above the clamp tcp/mss (${t.mss})`)
    if (t.tcpOptions & ~TCPI_OPT_KNOWN) throw invalid(d, 'tcp/tcp_options', `${t.tcpOptions} has bits other than TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK and TCPI_OPT_WSCALE`)
    if (t.sndWscale > MAX_WSCALE) throw invalid(d, 'tcp/snd_wscale', `${t.sndWscale} is above ${MAX_WSCALE}`)
    if (t.rcvWscale > MAX_WSCALE) throw invalid(d, 'tcp/rcv_wscale', `${t.rcvWscale} is above ${MAX_WSCALE}`)
  }
}

/** A sockaddr_in or sockaddr_in6 as the kernel takes it. */
export function sockaddr(family: InetFamily, e: InetEndpoint): Buffer {
  if (family === 'inet') {
    const b = Buffer.alloc(16)
    b.writeUInt16LE(AF_INET, 0)
    b.writeUInt16BE(e.port, 2)
    e.addr.split('.').forEach((part, i) => b.writeUInt8(Number(part), 4 + i))
    return b
  }
  const b = Buffer.alloc(28)
  b.writeUInt16LE(AF_INET6, 0)
  b.writeUInt16BE(e.port, 2)
  ipv6Bytes(e.addr).copy(b, 8)
  return b
}

/** The 16 bytes of an IPv6 address (already checked by isIPv6), "::" and a dotted IPv4 tail included. */
function ipv6Bytes(addr: string): Buffer {
  let text = addr
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(addr)
  if (v4) {
    const [a, b, c, e] = v4.slice(1).map(Number)
    text = addr.slice(0, v4.index) + ((a << 8) | b).toString(16) + ':' + ((c << 8) | e).toString(16)
  }
  const [head, rest] = text.split('::')
  const groups = (s: string | undefined) => (s ? s.split(':').map((g) => parseInt(g, 16)) : [])
  const before = groups(head)
  const after = groups(rest)
  const all = [...before, ...new Array<number>(rest === undefined ? 0 : 8 - before.length - after.length).fill(0), ...after]
  const out = Buffer.alloc(16)
  all.slice(0, 8).forEach((g, i) => out.writeUInt16BE(g, i * 2))
  return out
}

const bit = (b: boolean) => (b ? 1 : 0)

/**
 * Whether another TCP (UDP) socket of `table` has the same local port as `d`: the stub then
 * binds each with SO_REUSEADDR and SO_REUSEPORT and sets the saved ones once all are bound, so
 * the order they are made in does not matter (two listening sockets sharing a port with
 * SO_REUSEPORT, one of which turned it off since; a listening socket and its connections).
 */
function sharesItsPort(d: InetSocketDescription, table: FileTable | undefined): boolean {
  const s = d.inet
  if (s.local.port === 0 || !table) return false
  return table.files.some((f) => f !== d && f.type === 'socket' && 'inet' in f && f.inet.protocol === s.protocol && f.inet.local.port === s.local.port)
}

/** The stub's INET record (docs/RESTORE.md, kind 16). */
export async function planInet(d: InetSocketDescription, table?: FileTable): Promise<{ kind: number; objref: typeof d.objref; payload: RecordBuilder }> {
  const s = d.inet
  const o = s.options
  const p = new RecordBuilder()
    .u32(s.family === 'inet' ? AF_INET : AF_INET6)
    .u32(s.protocol === 'tcp' ? SOCK_STREAM : SOCK_DGRAM)
    .u32(s.protocol === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP)
    .i32(d.flags & O_NONBLOCK)
    .u32(STATE_NUMBERS[s.state])
    .bytes(s.local.port !== 0 ? sockaddr(s.family, s.local) : Buffer.alloc(0))
    .bytes(s.peer ? sockaddr(s.family, s.peer) : Buffer.alloc(0))
    .u32(s.backlog)
    .i32(bit(o.reuseaddr)).i32(bit(o.reuseport)).i32(bit(o.keepalive)).i32(bit(o.broadcast))
    .i32(o.rcvbuf).i32(o.sndbuf).i32(bit(o.v6only)).i32(bit(o.nodelay))
    .i32(o.keepidle).i32(o.keepintvl).i32(o.keepcnt)
    .u64(o.rcvtimeoUs).u64(o.sndtimeoUs)
    .i32(bit(o.cork)).u32(s.shutdown).u32(sharesItsPort(d, table) ? 1 : 0)
    .u32(s.tcp ? 1 : 0)
  const t = s.tcp
  const queue = await s.queue()
  if (queue.length && s.protocol !== 'udp') throw invalid(d, 'queue', 'only a UDP socket has queued datagrams')
  queue.forEach((m, i) => {
    if (!addressFits(s.family, m.sender.addr)) throw invalid(d, 'queue_senders', `line ${i + 1}: ${JSON.stringify(m.sender.addr)} is not an ${s.family === 'inet' ? 'IPv4' : 'IPv6'} address`)
    if (m.sender.port === 0) throw invalid(d, 'queue_senders', `line ${i + 1}: port 0 sends nothing`)
    if (s.local.port === 0) throw invalid(d, 'queue', 'datagrams are queued on a socket bound to no port')
  })
  if (t) {
    const [sendQueue, recvQueue] = await Promise.all([t.sendQueue(), t.recvQueue()])
    if (t.unsent > sendQueue.length) throw invalid(d, 'tcp/unsent', `${t.unsent} is more than the ${sendQueue.length} bytes of send_queue`)
    p.u32(t.sendSeq).u32(t.recvSeq).bytes(sendQueue).u32(t.unsent).bytes(recvQueue)
      .u32(t.mss).u32(t.tcpOptions).u32(t.sndWscale).u32(t.rcvWscale).u32(t.timestamp)
      .u32(t.sndWl1).u32(t.sndWnd).u32(t.maxWindow).u32(t.rcvWnd).u32(t.rcvWup).u32(t.sndMss)
  }
  p.u32(queue.length)
  for (const m of queue) p.bytes(sockaddr(s.family, m.sender)).bytes(m.data)
  return { kind: INET_KINDS.inet, objref: d.objref, payload: p }
}

// ---- the image ----

export async function inetImage(d: InetSocketDescription): Promise<object> {
  const s = d.inet
  const t = s.tcp
  return {
    family: s.family,
    protocol: s.protocol,
    state: s.state,
    local: s.local,
    peer: s.peer,
    backlog: s.backlog,
    options: s.options,
    tcp: t && { ...t, sendQueue: await t.sendQueue(), recvQueue: await t.recvQueue() },
    queue: await s.queue(),
    shutdown: s.shutdown,
  }
}

export function inetFromImage(f: Fields, base: DescriptionBase): RecordedDescription<InetSocketDescription> {
  const family = f.oneOf('family', FAMILIES)
  const endpoint = (m: Fields): InetEndpoint => ({ addr: m.str('addr', true), port: m.num('port', { max: 65535 }) })
  const o = f.msg('options')
  const options: InetSocketOptions = {
    reuseaddr: o.bool('reuseaddr'),
    reuseport: o.bool('reuseport'),
    keepalive: o.bool('keepalive'),
    keepidle: o.num('keepidle', { max: INT_MAX }),
    keepintvl: o.num('keepintvl', { max: INT_MAX }),
    keepcnt: o.num('keepcnt', { max: INT_MAX }),
    nodelay: o.bool('nodelay'),
    rcvbuf: o.num('rcvbuf', { max: INT_MAX }),
    sndbuf: o.num('sndbuf', { max: INT_MAX }),
    rcvtimeoUs: o.big('rcvtimeoUs'),
    sndtimeoUs: o.big('sndtimeoUs'),
    v6only: o.bool('v6only'),
    broadcast: o.bool('broadcast'),
    cork: o.bool('cork'),
  }
  let tcp: TcpRepair | undefined
  if (f.has('tcp')) {
    const t = f.msg('tcp')
    const sendQueue = t.bytes('sendQueue')
    const recvQueue = t.bytes('recvQueue')
    tcp = {
      sendSeq: t.num('sendSeq'),
      recvSeq: t.num('recvSeq'),
      sendQueue: async () => sendQueue,
      unsent: t.num('unsent', { max: sendQueue.length }),
      recvQueue: async () => recvQueue,
      mss: t.num('mss'),
      sndMss: t.num('sndMss'),
      tcpOptions: t.num('tcpOptions'),
      sndWscale: t.num('sndWscale'),
      rcvWscale: t.num('rcvWscale'),
      timestamp: t.num('timestamp'),
      sndWl1: t.num('sndWl1'),
      sndWnd: t.num('sndWnd'),
      maxWindow: t.num('maxWindow'),
      rcvWnd: t.num('rcvWnd'),
      rcvWup: t.num('rcvWup'),
    }
  }
  const queue: InetDatagram[] = f.list('queue').map((m) => ({ data: m.bytes('data'), sender: endpoint(m.msg('sender')) }))
  const inet: InetSocket = {
    family,
    protocol: f.oneOf('protocol', PROTOCOLS),
    state: f.oneOf('state', STATES),
    local: f.has('local') ? endpoint(f.msg('local')) : asEndpoint(undefined, family),
    peer: f.has('peer') ? endpoint(f.msg('peer')) : undefined,
    backlog: f.num('backlog', { max: INT_MAX }),
    options,
    tcp,
    queue: async () => queue,
    shutdown: f.num('shutdown', { max: 3 }),
  }
  return { description: described<InetSocketDescription>(base, { type: 'socket', family, inet }), contentsSize: undefined }
}

export function inetSummary(d: InetSocketDescription): string {
  const s = d.inet
  const what = s.state === 'listen' ? `listening, backlog ${s.backlog}` : s.tcp ? `${s.state === 'established' ? 'established' : s.state.toUpperCase()}, ${d.inet.tcp!.unsent} bytes unsent` : s.peer ? 'connected' : s.local.port ? 'bound' : 'not bound'
  return `${d.target} (${socketName(s)}, ${what}${s.shutdown ? `, shut down ${SHUTDOWN_NAMES[s.shutdown]}` : ''})`
}

/** Why `capture` could not look at a socket at all (pidfd_getfd refused), as a refusal. */
export function unreadableSocket(base: DescriptionBase, probe: FdProbe, err: unknown): OtherSocketDescription {
  return { ...base, type: 'socket', family: 'other', notCheckpointable: `socket: fd ${probe.fd} (inode ${base.ino}) could not be read: ${err instanceof CkptError || err instanceof Error ? err.message : String(err)}` }
}
