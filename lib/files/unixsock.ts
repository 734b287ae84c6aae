// UNIX sockets (AF_UNIX): stream, datagram and seqpacket; socketpairs, bound (path and
// abstract names) and listening sockets, connections whose two ends are both in the checkpoint,
// the queued messages of each, shutdown state and common options.
//
// Capture asks the kernel's unix_diag (addon unixSockets: names, peers, waiting connections,
// backlog, shutdown) and takes each socket with pidfd_getfd to read its options and peek its
// receive queue (addon peekSocket). Peers are looked up among the sockets of the whole
// checkpoint (every process of the tree), so a socketpair made before fork, or a client in one
// process connected to a server in another, is one connection of the checkpoint. A socket is
// refused, naming it and its peer, when its peer is outside the checkpoint (as CRIU does without --ext-unix-sk), or when connections wait to
// be accepted on it from outside.
//
// Fds passed with SCM_RIGHTS and still queued (in flight) come out of the peek as fds of
// ckptfs; each is the description a task of the checkpoint holds too (kcmp), or is captured
// as a description of the checkpoint of its own (CaptureContext.inFlight). A message names
// them by OBJREF (queue_fds), and the restore sends them again with it. A name relative to
// the task's working directory is kept with that directory (local_dir), where the restore
// binds it again.
//
// Restore (stub kind unix_socket, addon/stub/restorer.c): each socket is one object; the two
// ends of a connection are one socketpair(), each end naming the other by OBJREF (`peer`), so
// a pair held by two tasks of a tree is planned the same way.

import * as fs from 'fs'
import type { DescriptionCommon, FileTable, ObjRef } from '../model'
import { asObjRef } from '../model'
import { native } from '../native'
import { userDevFromKernel } from '../procfs'
import { RecordBuilder } from '../restore/fdplan'
import { checkedBytes } from '../tree/checked'
import { attr, bytes, octal } from '../tree/node'
import type { Fields } from '../image/records'
import type { PeekedSocket, UnixDiagSocket } from '../../addon/index'
import { described, invalid, parseObjRef, withCommon } from './common'
import type { CaptureContext, DescriptionBase, FdProbe } from './handler'
import { INT_MAX, S64_MAX, type SavedDir } from './saved'
import type { SocketFamilyHandler } from './socket'

export type UnixSocketType = 'stream' | 'dgram' | 'seqpacket'
/**
 * unconnected: no peer (maybe bound); listening; connected: its peer is `peer`;
 * pending: connected to the listening socket `peer`, waiting to be accepted (at
 * `acceptPosition` in its queue); peer-closed: it was connected and its peer has been closed
 * since (a stream reads what is left, then end of file).
 */
export type UnixSocketState = 'unconnected' | 'listening' | 'connected' | 'pending' | 'peer-closed'

/**
 * A queued message: its bytes, the socket of the checkpoint that sent it (datagrams), if
 * known, and the descriptions passed with it (SCM_RIGHTS), in order. A stream's queue is
 * its bytes in pieces, each but the last ending where fds came with the bytes.
 */
export interface UnixMessage {
  data: Buffer
  sender: ObjRef | undefined
  fds: ObjRef[]
}

export interface UnixSocketDescription extends DescriptionCommon {
  type: 'socket'
  family: 'unix'
  sockType: UnixSocketType
  state: UnixSocketState
  /** sun_path as the kernel keeps it: a path (no terminating NUL), an abstract name (a leading NUL), or empty (no name). */
  localAddress: Buffer
  /**
   * A name relative to a working directory: that directory (the task's at checkpoint, where
   * the socket file was found), in which the restore binds it; empty for any other name.
   */
  localDir: string
  /** A path name whose file was removed (or replaced) since bind. */
  localUnlinked: boolean
  /** Permission bits of the socket file (0: none, an abstract or unlinked name). */
  localMode: number
  /** The peer's name as the kernel keeps it (shown only). */
  peerAddress: Buffer
  peer: ObjRef | undefined
  /** A pending connection's place in its listener's queue of connections to accept (1: next); 0 otherwise. */
  acceptPosition: number
  /** listen()'s backlog (listening sockets; 0 otherwise). */
  backlog: number
  /** 1: receive side shut down, 2: send side, 3: both. */
  shutdown: number
  /** As getsockopt shows them (the kernel doubles what setsockopt was given). */
  rcvbuf: number
  sndbuf: number
  passcred: boolean
  rcvtimeoUs: bigint
  sndtimeoUs: bigint
  /** SO_PEEK_OFF, -1: off. */
  peekOff: number
  /** The receive queue: a stream's bytes as one message; each datagram or seqpacket record as one. */
  queue: UnixMessage[]
}

declare module './socket' {
  interface SocketFamilyTypes {
    unix: UnixSocketDescription
  }
}

/** The stub's kind (restorer.c, open_unix_socket_object; finish_unix_sockets). */
const KINDS = { unix_socket: 12 } as const

const SOCK_STREAM = 1, SOCK_DGRAM = 2, SOCK_SEQPACKET = 5
const typeNumbers: Record<UnixSocketType, number> = { stream: SOCK_STREAM, dgram: SOCK_DGRAM, seqpacket: SOCK_SEQPACKET }
const typeNames = new Map<number, UnixSocketType>([[SOCK_STREAM, 'stream'], [SOCK_DGRAM, 'dgram'], [SOCK_SEQPACKET, 'seqpacket']])
const sockTypes: readonly UnixSocketType[] = ['stream', 'dgram', 'seqpacket']
const states: readonly UnixSocketState[] = ['unconnected', 'listening', 'connected', 'pending', 'peer-closed']
const TCP_LISTEN = 10
/** sun_path holds 108 bytes: a path and its NUL, or a NUL and an abstract name. */
const NAME_MAX = 107
const shutdownNames = ['none', 'read', 'write', 'both']
/** The most fds one SCM_RIGHTS message passes (SCM_MAX_FD). */
const SCM_MAX_FD = 253

// ---- names as text ----

/**
 * A name as one line of text: "" (none), the path, or "@" and the abstract name; bytes outside
 * printable ASCII and the backslash are written \xNN, so the text reads back exactly.
 */
export function addressText(name: Buffer): string {
  if (name.length === 0) return ''
  const abstract = name[0] === 0
  let out = abstract ? '@' : ''
  for (const c of abstract ? name.subarray(1) : name) out += c >= 0x20 && c < 0x7f && c !== 0x5c ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, '0')}`
  return out
}

function addressFromText(text: string, fail: (why: string) => never): Buffer {
  if (text === '') return Buffer.alloc(0)
  const abstract = text.startsWith('@')
  const bytes: number[] = abstract ? [0] : []
  const body = abstract ? text.slice(1) : text
  for (let i = 0; i < body.length; i++) {
    const c = body.charCodeAt(i)
    if (c === 0x5c) {
      const m = /^\\x([0-9a-f]{2})/.exec(body.slice(i))
      if (!m) fail(`a backslash must start \\xNN`)
      bytes.push(parseInt(m[1], 16))
      i += 3
    } else if (c >= 0x20 && c < 0x7f) {
      bytes.push(c)
    } else {
      fail(`byte 0x${c.toString(16)} must be written \\xNN`)
    }
  }
  return Buffer.from(bytes)
}

/** A name from the kernel: a path's terminating NUL (kept in the kernel's copy) removed. */
function kernelName(name: Buffer | undefined): Buffer {
  if (!name || name.length === 0) return Buffer.alloc(0)
  if (name[0] === 0) return name
  const nul = name.indexOf(0)
  return nul >= 0 ? name.subarray(0, nul) : name
}

const isPathName = (name: Buffer): boolean => name.length > 0 && name[0] !== 0

// ---- the queue file ----
// A stream's queue is its bytes. A datagram or seqpacket queue keeps each message's boundary:
// per message a u32 (little-endian) length, a u32 sender OBJREF (0: not a socket of the
// checkpoint), then the bytes.

function queueBytes(d: UnixSocketDescription, queue: UnixMessage[]): Buffer {
  if (d.sockType === 'stream') return queue.length === 1 ? queue[0].data : Buffer.concat(queue.map((m) => m.data))
  const parts: Buffer[] = []
  for (const m of queue) {
    const head = Buffer.alloc(8)
    head.writeUInt32LE(m.data.length, 0)
    head.writeUInt32LE(m.sender ?? 0, 4)
    parts.push(head, m.data)
  }
  return Buffer.concat(parts)
}

function queueFromBytes(sockType: UnixSocketType, bytes: Buffer, fail: (why: string) => never): UnixMessage[] {
  if (sockType === 'stream') return bytes.length ? [{ data: bytes, sender: undefined, fds: [] }] : []
  const out: UnixMessage[] = []
  for (let at = 0; at < bytes.length;) {
    if (bytes.length - at < 8) fail(`message ${out.length}: truncated header at byte ${at}`)
    const len = bytes.readUInt32LE(at)
    const sender = bytes.readUInt32LE(at + 4)
    if (len > bytes.length - at - 8) fail(`message ${out.length}: ${len} bytes announced at byte ${at}, ${bytes.length - at - 8} left`)
    if (sender > INT_MAX) fail(`message ${out.length}: sender ${sender} is not an OBJREF`)
    out.push({ data: bytes.subarray(at + 8, at + 8 + len), sender: sender ? asObjRef(sender) : undefined, fds: [] })
    at += 8 + len
  }
  return out
}

// ---- the fds in flight (queue_fds) ----
// One line per message that carries fds: its place, then the OBJREF of each fd in the order
// they were passed. A datagram's or record's place is its index in the queue (from 0); a
// stream piece's is the byte offset where it ends (the bytes from the previous line's offset
// come with the fds).

function queueFdsText(d: UnixSocketDescription, queue: UnixMessage[]): string {
  let out = ''
  let end = 0
  queue.forEach((m, i) => {
    end += m.data.length
    if (m.fds.length) out += `${d.sockType === 'stream' ? end : i} ${m.fds.join(' ')}\n`
  })
  return out
}

interface QueueFdsLine {
  place: number
  fds: ObjRef[]
}

function parseQueueFds(text: string, fail: (why: string) => never): QueueFdsLine[] {
  if (text === '') return []
  if (!text.endsWith('\n')) fail('list is truncated (no trailing newline)')
  return text.slice(0, -1).split('\n').map((line, i) => {
    const words = line.split(' ')
    if (words.length < 2 || !words.every((w) => /^(0|[1-9][0-9]{0,9})$/.test(w))) fail(`line ${i + 1}: ${JSON.stringify(line)} is not a place and OBJREFs`)
    const [place, ...refs] = words.map(Number)
    if (refs.some((r) => r < 1 || r > INT_MAX)) fail(`line ${i + 1}: an OBJREF is out of range`)
    if (refs.length > SCM_MAX_FD) fail(`line ${i + 1}: ${refs.length} fds is more than one message passes (${SCM_MAX_FD})`)
    return { place, fds: refs.map(asObjRef) }
  })
}

/** The queue with the fds of queue_fds attached (a stream's bytes cut where fds came). */
function withQueueFds(sockType: UnixSocketType, queue: UnixMessage[], lines: QueueFdsLine[], fail: (why: string) => never): UnixMessage[] {
  if (lines.length === 0) return queue
  lines.forEach((l, i) => {
    if (i > 0 && l.place <= lines[i - 1].place) fail(`line ${i + 1}: places must increase`)
  })
  if (sockType !== 'stream') {
    for (const l of lines) {
      if (l.place >= queue.length) fail(`message ${l.place} is not in the queue (${queue.length} messages)`)
      queue[l.place] = { ...queue[l.place], fds: l.fds }
    }
    return queue
  }
  const bytes = queue.length ? queue[0].data : Buffer.alloc(0)
  const out: UnixMessage[] = []
  let from = 0
  for (const l of lines) {
    if (l.place === 0 || l.place > bytes.length) fail(`offset ${l.place} is not inside the queue's ${bytes.length} bytes`)
    out.push({ data: bytes.subarray(from, l.place), sender: undefined, fds: l.fds })
    from = l.place
  }
  if (from < bytes.length) out.push({ data: bytes.subarray(from), sender: undefined, fds: [] })
  return out
}

// ---- capture ----

/**
 * The unix_diag dump and the checkpoint's sockets, indexed once per checkpoint (a tree may
 * hold thousands of sockets, and the namespace hold more). The checkpoint's are every task's
 * of the tree, so a connection between two of its processes names its peer by OBJREF.
 */
interface UnixSockets {
  /** Every UNIX socket of the namespace by inode. */
  byIno: Map<number, UnixDiagSocket>
  /** The listening socket a connection waiting to be accepted waits on, by the client's inode. */
  listenerOf: Map<number, UnixDiagSocket>
  /** The checkpoint's descriptions of UNIX sockets by inode, whichever task of the tree holds them. */
  objrefs: Map<number, ObjRef>
  /** The checkpoint's named sockets by type and name ("2 /run/x.sock"), for a datagram's sender. */
  named: Map<string, ObjRef>
}
const dumps = new WeakMap<object, UnixSockets>()
function diagOf(ctx: CaptureContext): UnixSockets {
  // Read after the capture's first await: every task of the tree has numbered its descriptions.
  const checkpoint = ctx.checkpointDescriptions
  let dump = dumps.get(checkpoint)
  if (!dump) {
    const byIno = new Map(native.unixSockets().map((s) => [s.ino, s]))
    const listenerOf = new Map<number, UnixDiagSocket>()
    for (const s of byIno.values()) if (s.state === TCP_LISTEN) for (const client of s.icons) listenerOf.set(client, s)
    const objrefs = new Map<number, ObjRef>()
    const named = new Map<string, ObjRef>()
    for (const h of checkpoint) {
      const ino = socketInode(h.probe)
      const s = ino === undefined ? undefined : byIno.get(ino)
      if (!s) continue
      objrefs.set(s.ino, h.objref)
      const name = kernelName(s.name)
      if (name.length) named.set(`${s.type} ${name.toString('latin1')}`, h.objref)
    }
    dump = { byIno, listenerOf, objrefs, named }
    dumps.set(checkpoint, dump)
  }
  return dump
}

const socketInode = (probe: FdProbe): number | undefined => {
  const m = /^socket:\[(\d+)\]$/.exec(probe.target)
  return m ? Number(m[1]) : undefined
}

/** A socket as a refusal names it: "UNIX stream socket fd 5 (inode 123, /run/x.sock)". */
function describeSocket(type: UnixSocketType | undefined, fd: number | undefined, ino: number, name: Buffer): string {
  const named = name.length ? `, ${addressText(name)}` : ''
  return `UNIX ${type === undefined ? '' : `${type} `}socket${fd === undefined ? '' : ` fd ${fd}`} (inode ${ino}${named})`
}

/** Which processes hold socket inode `ino` (for a refusal: who the peer outside is). */
async function holdersOf(ino: number): Promise<string[]> {
  const link = `socket:[${ino}]`
  const found: string[] = []
  for (const pid of await fs.promises.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(pid)) continue
    const fds = await fs.promises.readdir(`/proc/${pid}/fd`).catch(() => [] as string[])
    for (const fd of fds) {
      if ((await fs.promises.readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')) === link) {
        const comm = (await fs.promises.readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '?\n')).trim()
        found.push(`${comm} (PID ${pid}, fd ${fd})`)
        break
      }
    }
    if (found.length >= 3) break
  }
  return found
}

/** A socket that cannot be checkpointed: its kind and why, nothing else. */
function refusedUnix(base: DescriptionBase, why: string): UnixSocketDescription {
  return {
    ...base, type: 'socket', family: 'unix', sockType: 'stream', state: 'unconnected', localAddress: Buffer.alloc(0), localUnlinked: false,
    localMode: 0, peerAddress: Buffer.alloc(0), peer: undefined, acceptPosition: 0, backlog: 0, shutdown: 0, rcvbuf: 0, sndbuf: 0, passcred: false,
    rcvtimeoUs: 0n, sndtimeoUs: 0n, peekOff: -1, queue: [], localDir: '', notCheckpointable: `socket: ${why}`,
  }
}

async function captureUnix(probe: FdProbe, base: DescriptionBase, ctx: CaptureContext): Promise<UnixSocketDescription> {
  const ino = Number(base.ino)
  let sockets: UnixSockets
  try {
    sockets = diagOf(ctx)
  } catch (err) {
    return refusedUnix(base, `UNIX socket fd ${probe.fd} (inode ${ino}): sock_diag cannot list UNIX sockets here: ${(err as Error).message}`)
  }
  const diag = sockets.byIno
  const me = diag.get(ino)
  const refused = (why: string): UnixSocketDescription => refusedUnix(base, why)
  if (!me) return refused(`UNIX socket fd ${probe.fd} (inode ${ino}) is not in ckptfs's network namespace (sock_diag does not show it)`)
  const sockType = typeNames.get(me.type)
  const localAddress = kernelName(me.name)
  const what = describeSocket(sockType, probe.fd, ino, localAddress)
  if (!sockType) return refused(`${what}: socket type ${me.type} is not stream, dgram or seqpacket`)

  let peeked: PeekedSocket
  try {
    peeked = native.peekSocket(ctx.pid, probe.fd)
  } catch (err) {
    return refused(`${what}: its options and queue cannot be read: ${(err as Error).message}`)
  }
  // A socket in flight is known by its OBJREF from now on too (the checkpoint's were listed before).
  if (!sockets.objrefs.has(ino)) sockets.objrefs.set(ino, base.objref)
  // The fds in flight: each is the capture's at once (it closes them), then found or captured.
  const passed = await Promise.all(peeked.rights.map((fds) => Promise.all((fds ?? []).map((fd) => ctx.inFlight(fd)))))
  // The OBJREF of a socket inode held by a task of the checkpoint (this one or another of its tree).
  const objrefOf = (sockIno: number): ObjRef | undefined => sockets.objrefs.get(sockIno)

  let state: UnixSocketState = 'unconnected'
  let peer: ObjRef | undefined
  let peerAddress: Buffer = Buffer.alloc(0)
  let acceptPosition = 0
  let why: string | undefined
  // A peer no task holds: it may be in flight, captured later (see concludeUnix).
  let peerOutside: { ino: number; why: string } | undefined
  if (me.state === TCP_LISTEN) {
    state = 'listening'
    // Connections waiting to be accepted (unix_diag lists their clients) come back when their
    // clients are in the checkpoint: each client is captured as `pending`.
    for (const clientIno of me.icons) {
      if (objrefOf(clientIno) !== undefined) continue
      const client = diag.get(clientIno)
      const holders = await holdersOf(clientIno)
      why ??= `${what} has a connection waiting to be accepted from ${describeSocket(sockType, undefined, clientIno, kernelName(client?.name))}, outside the checkpoint${holders.length ? `, held by ${holders.join(', ')}` : ''}; it cannot be restored with it`
    }
  } else if (me.peer !== undefined) {
    // A connection not accepted yet: its peer is the listener's socket-to-be, which no fd
    // holds (unix_diag shows its inode as 0); the listener lists this socket as waiting.
    const listener = sockets.listenerOf.get(ino)
    if (listener) {
      state = 'pending'
      peer = objrefOf(listener.ino)
      peerAddress = kernelName(listener.name)
      acceptPosition = listener.icons.indexOf(ino) + 1
      const listenerWhat = describeSocket(sockType, undefined, listener.ino, peerAddress)
      if (peer === undefined) {
        const holders = await holdersOf(listener.ino)
        why = `${what} waits to be accepted by ${listenerWhat}, outside the checkpoint${holders.length ? `, held by ${holders.join(', ')}` : ''}; its peer cannot be restored with it`
      } else if ((me.wqueue ?? 0) > 0) {
        // What it sent is queued on the socket-to-be, which nothing can peek before the accept.
        why = `${what} already sent data on its connection to ${listenerWhat}, which waits to be accepted; ckptfs cannot read it before the accept`
      }
    } else if (me.peer === 0) {
      state = 'peer-closed'
    } else {
      state = 'connected'
      const other = diag.get(me.peer)
      peerAddress = kernelName(other?.name)
      peer = objrefOf(me.peer)
      if (peer === undefined) {
        const holders = await holdersOf(me.peer)
        const peerWhat = describeSocket(sockType, undefined, me.peer, peerAddress)
        peerOutside = { ino: me.peer, why: `${what} is connected to ${peerWhat}, outside the checkpoint${holders.length ? `, held by ${holders.join(', ')}` : ''}; its peer cannot be restored with it` }
      }
    }
  }
  const fdsOf = (i: number): ObjRef[] => {
    const refs: ObjRef[] = []
    passed[i].forEach((p, j) => {
      if ('refused' in p) why ??= `${what}: fd ${j + 1} passed with SCM_RIGHTS in queued message ${i + 1} cannot be checkpointed: ${p.refused}`
      else if (p.notCheckpointable !== undefined) why ??= `${what}: fd ${j + 1} passed with SCM_RIGHTS in queued message ${i + 1} (files/${p.objref}) cannot be checkpointed: ${p.notCheckpointable}`
      refs.push('refused' in p ? asObjRef(0) : p.objref)
    })
    return refs
  }

  // A path name: still the socket's own file on disk, or unlinked (or replaced) since. A
  // relative name was bound in the working directory of its day: the task's now, when the
  // socket file is found there (else the directory is unknown, and a name that is bound again
  // on restore is refused).
  let localUnlinked = false
  let localMode = 0
  let localDir = ''
  if (isPathName(localAddress)) {
    const path = localAddress.toString('latin1')
    const relative = !path.startsWith('/')
    let st
    if (!relative) {
      st = await ctx.statPath(path)
    } else if (bindsOwnName(sockType, state)) {
      const cwd = await fs.promises.readlink(`/proc/${ctx.pid}/cwd`).catch(() => undefined)
      if (cwd?.startsWith('/')) {
        st = await ctx.statPath(cwd === '/' ? `/${path}` : `${cwd}/${path}`)
        localDir = cwd
      }
    }
    const same = st !== undefined && me.vfsIno !== undefined && me.vfsDev !== undefined && st.ino === BigInt(me.vfsIno) && st.dev === userDevFromKernel(me.vfsDev)
    if (relative && bindsOwnName(sockType, state) && !same) {
      why ??= `${what}: its relative name is not the socket file in the working directory${localDir ? ` ${localDir}` : ''}: the directory it was bound in is unknown`
      localDir = ''
    }
    localUnlinked = !same && !relative
    localMode = same ? st!.mode & 0o7777 : 0
  }

  let queue: UnixMessage[] = []
  if (sockType === 'stream') {
    // A piece of the peek ends where fds came with the bytes: the bytes since the last such
    // piece are one message with them; the bytes after the last, one without.
    let pieces: Buffer[] = []
    peeked.queue.forEach((data, i) => {
      pieces.push(data)
      const fds = fdsOf(i)
      if (fds.length === 0) return
      queue.push({ data: Buffer.concat(pieces), sender: undefined, fds })
      pieces = []
    })
    const rest = Buffer.concat(pieces)
    if (rest.length) queue.push({ data: rest, sender: undefined, fds: [] })
  } else {
    // A datagram's sender, when it is a named socket of the checkpoint.
    // (A seqpacket record always comes from its connection's other end: no sender is kept.)
    const senderOf = (address: Buffer | undefined): ObjRef | undefined => {
      const name = kernelName(address)
      return name.length && sockType === 'dgram' ? sockets.named.get(`${me.type} ${name.toString('latin1')}`) : undefined
    }
    queue = peeked.queue.map((data, i) => ({ data, sender: senderOf(peeked.senders[i]), fds: fdsOf(i) }))
  }

  const d: UnixSocketDescription = {
    ...base,
    type: 'socket',
    family: 'unix',
    sockType,
    state,
    localAddress,
    localDir,
    localUnlinked,
    localMode,
    peerAddress,
    peer,
    acceptPosition,
    backlog: state === 'listening' ? me.wqueue ?? 0 : 0,
    shutdown: me.shutdown ?? 0,
    rcvbuf: peeked.rcvbuf,
    sndbuf: peeked.sndbuf,
    passcred: peeked.passcred !== 0,
    rcvtimeoUs: peeked.rcvtimeoUs,
    sndtimeoUs: peeked.sndtimeoUs,
    peekOff: peeked.peekOff,
    queue,
    notCheckpointable: (peerOutside?.why ?? why) === undefined ? base.notCheckpointable : `socket: ${peerOutside?.why ?? why}`,
  }
  if (peerOutside) peersToFind.set(d, { ino: peerOutside.ino, sockets, otherwise: why === undefined ? base.notCheckpointable : `socket: ${why}` })
  return d
}

/** Connected sockets whose peer no task holds, with what they are refused for besides. */
const peersToFind = new WeakMap<UnixSocketDescription, { ino: number; sockets: UnixSockets; otherwise: string | undefined }>()

/**
 * Once the whole checkpoint is captured: a socket whose peer no task holds is connected to
 * that peer after all when the peer was found in flight (passed with SCM_RIGHTS, captured
 * after the socket was).
 */
function concludeUnix(d: UnixSocketDescription): void {
  const pending = peersToFind.get(d)
  if (!pending) return
  peersToFind.delete(d)
  const peer = pending.sockets.objrefs.get(pending.ino)
  if (peer === undefined) return
  d.peer = peer
  d.notCheckpointable = pending.otherwise
}

// ---- the tree ----

const table = withCommon<UnixSocketDescription>([
  attr('family', (d) => d.family),
  attr('sock_type', (d) => d.sockType),
  attr('state', (d) => d.state),
  attr('local_address', (d) => addressText(d.localAddress)),
  attr('local_dir', (d) => d.localDir),
  attr('local_unlinked', (d) => d.localUnlinked),
  attr('local_mode', (d) => octal(d.localMode)),
  attr('peer', (d) => d.peer ?? ''),
  attr('peer_address', (d) => addressText(d.peerAddress)),
  attr('accept_position', (d) => d.acceptPosition),
  attr('backlog', (d) => d.backlog),
  attr('shutdown', (d) => shutdownNames[d.shutdown]),
  attr('rcvbuf', (d) => d.rcvbuf),
  attr('sndbuf', (d) => d.sndbuf),
  attr('passcred', (d) => d.passcred),
  attr('rcvtimeo_us', (d) => d.rcvtimeoUs),
  attr('sndtimeo_us', (d) => d.sndtimeoUs),
  attr('peek_off', (d) => d.peekOff),
  ...checkedBytes('queue', async (d: UnixSocketDescription) => queueBytes(d, await queueOf(d))),
  bytes('queue_fds', async (d: UnixSocketDescription) => Buffer.from(queueFdsText(d, await queueOf(d)))),
])

function loadUnix(dir: SavedDir, base: DescriptionBase): UnixSocketDescription {
  const oneOf = <T extends string>(name: string, allowed: readonly T[]): T => {
    const v = dir.text(name)
    const found = allowed.find((a) => a === v)
    if (found === undefined) throw dir.fail(name, `${JSON.stringify(v)} is not one of ${allowed.join(', ')}`)
    return found
  }
  const sockType = oneOf('sock_type', sockTypes)
  const address = (name: string): Buffer => addressFromText(dir.text(name), (why) => { throw dir.fail(name, why) })
  const peerText = dir.text('peer')
  const peer = peerText === '' ? undefined : parseObjRef(peerText)
  if (peerText !== '' && peer === undefined) throw dir.fail('peer', `${JSON.stringify(peerText)} is not an OBJREF`)
  const queueData = dir.checkedLazyBytes('queue')
  // Trees saved before fds in flight and relative names were kept show neither.
  const queueFds = parseQueueFds(dir.has('queue_fds') ? dir.listText('queue_fds') : '', (why) => { throw dir.fail('queue_fds', why) })
  const localDir = dir.has('local_dir') ? dir.text('local_dir') : ''
  const d = described<UnixSocketDescription>(base, {
    type: 'socket',
    family: 'unix',
    sockType,
    state: oneOf('state', states),
    localAddress: address('local_address'),
    localDir,
    localUnlinked: dir.flag('local_unlinked'),
    localMode: dir.octal('local_mode', 0o7777n),
    peerAddress: address('peer_address'),
    peer,
    acceptPosition: dir.int('accept_position', 0, INT_MAX),
    backlog: dir.int('backlog', 0, INT_MAX),
    shutdown: shutdownNames.indexOf(oneOf('shutdown', shutdownNames)),
    rcvbuf: dir.int('rcvbuf', 0, INT_MAX),
    sndbuf: dir.int('sndbuf', 0, INT_MAX),
    passcred: dir.flag('passcred'),
    rcvtimeoUs: dir.decimal('rcvtimeo_us', 0n, S64_MAX),
    sndtimeoUs: dir.decimal('sndtimeo_us', 0n, S64_MAX),
    peekOff: dir.int('peek_off', -1, INT_MAX),
    queue: [],
  })
  // The queue is read (and its checksum checked) when the restore plans it.
  lazyQueues.set(d, async () => withQueueFds(sockType, queueFromBytes(sockType, await queueData(), (why) => { throw dir.fail('queue', why) }), queueFds, (why) => { throw dir.fail('queue_fds', why) }))
  return d
}

/** Queues of loaded descriptions, read when first needed (validation or the plan). */
const lazyQueues = new WeakMap<UnixSocketDescription, () => Promise<UnixMessage[]>>()
async function queueOf(d: UnixSocketDescription): Promise<UnixMessage[]> {
  const load = lazyQueues.get(d)
  if (load) {
    lazyQueues.delete(d)
    d.queue = await load()
  }
  return d.queue
}

// ---- validation and restore ----

const unixSocketsOf = new WeakMap<FileTable, Map<number, UnixSocketDescription>>()
function socketsOf(table: FileTable): Map<number, UnixSocketDescription> {
  let map = unixSocketsOf.get(table)
  if (!map) {
    map = new Map()
    for (const f of table.files) if (f.type === 'socket' && f.family === 'unix') map.set(f.objref, f)
    unixSocketsOf.set(table, map)
  }
  return map
}

/** Datagram sockets connected to each other, or any connected stream or seqpacket pair: one socketpair(). */
/**
 * Whether the socket's name is bound again: a connected stream or seqpacket socket is one end
 * of a socketpair, and its name (an accepted socket's is its listener's) is not.
 */
function bindsOwnName(sockType: UnixSocketType, state: UnixSocketState): boolean {
  return sockType === 'dgram' || state === 'listening' || state === 'unconnected' || state === 'pending'
}

function isPair(d: UnixSocketDescription, peer: UnixSocketDescription): boolean {
  // A datagram socket connected to its own name is connected by name again, not paired with itself.
  return d.sockType !== 'dgram' || (peer !== d && peer.state === 'connected' && peer.peer === d.objref)
}

async function validateUnix(d: UnixSocketDescription, table: FileTable, objrefs: ReadonlySet<number>): Promise<void> {
  if (d.notCheckpointable !== undefined) return
  const fail = (name: string, why: string): never => { throw invalid(d, name, why) }
  const name = d.localAddress
  if (name.length > NAME_MAX + (name[0] === 0 ? 1 : 0)) fail('local_address', `${name.length} bytes is longer than a socket name may be`)
  if (isPathName(name) && name.includes(0)) fail('local_address', 'a path name holds a NUL byte')
  const bindsName = bindsOwnName(d.sockType, d.state)
  const relative = isPathName(name) && name[0] !== 0x2f
  if (bindsName && relative && !d.localDir.startsWith('/')) fail('local_dir', `${addressText(d.localAddress)} is relative: the directory to bind it in must be an absolute path`)
  if (d.localDir !== '' && !(bindsName && relative)) fail('local_dir', 'only a relative name that is bound again has a directory')
  if (d.localDir.includes('\0')) fail('local_dir', 'holds a NUL byte')
  if (d.state === 'listening' && d.sockType === 'dgram') fail('state', 'a datagram socket does not listen')
  if (d.state !== 'listening' && d.backlog !== 0) fail('backlog', `${d.backlog}: only a listening socket has a backlog`)
  const hasPeer = d.state === 'connected' || d.state === 'pending'
  if (hasPeer !== (d.peer !== undefined)) fail('peer', d.peer === undefined ? `a ${d.state} socket names its peer` : `only a connected or pending socket has a peer (state ${d.state})`)
  if ((d.state === 'pending') !== (d.acceptPosition > 0)) fail('accept_position', `${d.acceptPosition}: only a pending connection has a place in its listener's queue, from 1`)
  if (d.state === 'pending') {
    const listener = socketsOf(table).get(d.peer!)
    if (!listener || listener.state !== 'listening' || listener.sockType !== d.sockType) fail('peer', `files/${d.peer} is not a listening ${d.sockType} UNIX socket of the checkpoint`)
    const rival = [...socketsOf(table).values()].find((o) => o !== d && o.state === 'pending' && o.peer === d.peer && o.acceptPosition === d.acceptPosition)
    if (rival) fail('accept_position', `${d.acceptPosition} is files/${rival.objref}'s place too`)
    const waiting = [...socketsOf(table).values()].filter((o) => o.state === 'pending' && o.peer === d.peer).length
    if (d.acceptPosition > waiting) fail('accept_position', `${d.acceptPosition}: files/${d.peer} has ${waiting} connection(s) waiting`)
    if (listener!.localAddress.length === 0) fail('peer', `files/${d.peer} has no name to connect to`)
  } else if (d.peer !== undefined) {
    const peer = socketsOf(table).get(d.peer)
    if (!peer) return fail('peer', `files/${d.peer} is not a UNIX socket of the checkpoint`)
    if (peer.notCheckpointable !== undefined) fail('peer', `files/${d.peer} cannot be checkpointed`)
    if (peer.sockType !== d.sockType) fail('peer', `files/${d.peer} is a ${peer.sockType} socket, this one ${d.sockType}`)
    if (peer === d && d.sockType !== 'dgram') fail('peer', `a ${d.sockType} socket is not connected to itself (only a datagram socket may be)`)
    if (d.sockType !== 'dgram' && (peer.state !== 'connected' || peer.peer !== d.objref)) fail('peer', `files/${d.peer} is not connected back to this socket`)
    if (!isPair(d, peer)) {
      if (peer.localAddress.length === 0) fail('peer', `files/${d.peer} has no name to connect to`)
      if (peer.state !== 'unconnected' && peer !== d) fail('peer', `files/${d.peer} is ${peer.state}: a datagram socket connects to an unconnected one (or to itself)`)
    }
  }
  const queue = await queueOf(d)
  if ((d.state === 'listening' || d.state === 'pending') && queue.length) fail('queue', `a ${d.state} socket has no queue`)
  if (d.state === 'unconnected' && queue.length && name.length === 0) fail('queue', 'messages are queued on a socket that has neither a name nor a peer')
  queue.forEach((m, i) => {
    if (m.fds.length > SCM_MAX_FD) fail('queue_fds', `message ${i}: ${m.fds.length} fds is more than one message passes (${SCM_MAX_FD})`)
    for (const ref of m.fds) if (!objrefs.has(ref)) fail('queue_fds', `message ${i}: files/${ref} is not a description of the checkpoint`)
    if (d.sockType === 'stream' && m.fds.length === 0 && i < queue.length - 1) fail('queue', `piece ${i} of the stream carries no fds, and is not the last`)
    if (m.sender === undefined) return
    const sender = socketsOf(table).get(m.sender)
    if (!sender || sender.sockType !== d.sockType) fail('queue', `message ${i}: sender files/${m.sender} is not a ${d.sockType} UNIX socket of the checkpoint`)
  })
}

/**
 * The listening socket of the checkpoint that accepted a connected stream or seqpacket socket:
 * the one listening by the socket's own name (an accepted socket's name is its listener's),
 * which its peer names as its peer's name too. The restore makes the
 * connection through it again, so both ends' names are as they were.
 */
function acceptedBy(d: UnixSocketDescription, peer: UnixSocketDescription | undefined, table: FileTable): UnixSocketDescription | undefined {
  if (d.sockType === 'dgram' || d.state !== 'connected' || !peer || peer === d || d.localAddress.length === 0 || !d.localAddress.equals(peer.peerAddress)) return undefined
  // A relative name shows no directory: two listeners by one relative name are not told apart.
  const listeners = [...socketsOf(table).values()].filter((l) => l.state === 'listening' && l.sockType === d.sockType && l.notCheckpointable === undefined && l.localAddress.equals(d.localAddress))
  return listeners.length === 1 ? listeners[0] : undefined
}

async function planUnix(d: UnixSocketDescription, table: FileTable): Promise<RecordBuilder> {
  const peer = d.peer === undefined ? undefined : socketsOf(table).get(d.peer)
  const name = bindsOwnName(d.sockType, d.state) ? d.localAddress : Buffer.alloc(0)
  const bindKind = name.length === 0 ? 0 : name[0] === 0 ? 2 : 1
  const link = d.state === 'peer-closed' ? 3 : d.state === 'pending' ? 4 : peer === undefined ? 0 : isPair(d, peer) ? 1 : 2
  const payload = new RecordBuilder()
    .i32(typeNumbers[d.sockType])
    .i32(d.flags)
    .u32(bindKind)
    .bytes(bindKind === 2 ? name.subarray(1) : name)
    .bytes(bindKind === 1 ? Buffer.from(d.localDir, 'utf8') : Buffer.alloc(0))
    .u32(d.localUnlinked ? 1 : 0)
    .u32(d.localMode)
    .i32(d.state === 'listening' ? d.backlog : -1)
    .u32(link)
    .u32(link === 1 || link === 2 || link === 4 ? d.peer! : 0)
    .u32(d.acceptPosition)
    .u32(d.shutdown)
    .i32(d.rcvbuf)
    .i32(d.sndbuf)
    .i32(d.passcred ? 1 : 0)
    .u64(d.rcvtimeoUs)
    .u64(d.sndtimeoUs)
    .i32(d.peekOff)
    .u32(link === 1 ? acceptedBy(d, peer, table)?.objref ?? 0 : 0)
  const queue = await queueOf(d)
  payload.u32(queue.length)
  for (const m of queue) {
    payload.u32(m.sender ?? 0).bytes(m.data).u32(m.fds.length)
    for (const ref of m.fds) payload.u32(ref)
  }
  return payload
}

export const unixSocket: SocketFamilyHandler<UnixSocketDescription> = {
  family: 'unix',
  claims: (kind) => kind.startsWith('UNIX'),

  capture: captureUnix,

  entries: () => table,

  load: (dir, base) => loadUnix(dir, base),

  validate: (d, { table, objrefs }) => validateUnix(d, table, objrefs),

  async planRestore(d, { table }) {
    if (d.notCheckpointable !== undefined) throw invalid(d, 'checkpointable', d.notCheckpointable, 'ENOTSUP')
    return { kind: KINDS.unix_socket, objref: d.objref, payload: await planUnix(d, table) }
  },

  stubKinds: KINDS,

  image: {
    field: 'unix',
    write: async (d) => ({
      sockType: d.sockType,
      state: d.state,
      localAddress: d.localAddress,
      localDir: d.localDir,
      localUnlinked: d.localUnlinked,
      localMode: d.localMode,
      peerAddress: d.peerAddress,
      peer: d.peer,
      acceptPosition: d.acceptPosition,
      backlog: d.backlog,
      shutdown: d.shutdown,
      rcvbuf: d.rcvbuf,
      sndbuf: d.sndbuf,
      passcred: d.passcred,
      rcvtimeoUs: d.rcvtimeoUs,
      sndtimeoUs: d.sndtimeoUs,
      peekOff: d.peekOff,
      queue: (await queueOf(d)).map((m) => ({ data: m.data, sender: m.sender ?? 0, fds: m.fds })),
    }),
    read(f: Fields, base: DescriptionBase) {
      const sockType = f.oneOf('sockType', sockTypes)
      const queue = f.list('queue').map((m) => {
        const sender = m.num('sender', { max: INT_MAX })
        const fds = (m.has('fds') ? m.nums('fds') : []).map((r, j) => (r >= 1 && r <= INT_MAX ? asObjRef(r) : m.fail(`fds[${j}]`, `${r} is not an OBJREF`)))
        if (fds.length > SCM_MAX_FD) m.fail('fds', `${fds.length} fds is more than one message passes (${SCM_MAX_FD})`)
        return { data: m.bytes('data'), sender: sender ? asObjRef(sender) : undefined, fds }
      })
      // A stream's queue is one message, or pieces each ending where fds came.
      if (sockType === 'stream' && queue.some((m, i) => i < queue.length - 1 && m.fds.length === 0)) f.fail('queue', 'a stream socket keeps its queue as pieces that end where fds came')
      const peer = f.has('peer') ? f.num('peer', { min: 1, max: INT_MAX }) : undefined
      return {
        description: described<UnixSocketDescription>(base, {
          type: 'socket',
          family: 'unix',
          sockType,
          state: f.oneOf('state', states),
          localAddress: f.bytes('localAddress'),
          localDir: f.has('localDir') ? f.str('localDir') : '',
          localUnlinked: f.bool('localUnlinked'),
          localMode: f.num('localMode', { max: 0o7777 }),
          peerAddress: f.bytes('peerAddress'),
          peer: peer === undefined ? undefined : asObjRef(peer),
          acceptPosition: f.num('acceptPosition', { max: INT_MAX }),
          backlog: f.num('backlog', { max: INT_MAX }),
          shutdown: f.num('shutdown', { max: 3 }),
          rcvbuf: f.num('rcvbuf', { min: 0, max: INT_MAX }),
          sndbuf: f.num('sndbuf', { min: 0, max: INT_MAX }),
          passcred: f.bool('passcred'),
          rcvtimeoUs: f.big('rcvtimeoUs', { min: 0n, max: S64_MAX }),
          sndtimeoUs: f.big('sndtimeoUs', { min: 0n, max: S64_MAX }),
          peekOff: f.num('peekOff', { min: -1, max: INT_MAX }),
          queue,
        }),
        contentsSize: undefined,
      }
    },
    references: (d) => [
      ...(d.peer === undefined ? [] : [{ objref: d.peer, what: 'peer' }]),
      ...d.queue.flatMap((m, i) => (m.sender === undefined ? [] : [{ objref: m.sender, what: `queue[${i}].sender` }])),
      ...d.queue.flatMap((m, i) => m.fds.map((objref, j) => ({ objref, what: `queue[${i}].fds[${j}]` }))),
    ],
  },

  passes: async (d) => (await queueOf(d)).flatMap((m) => m.fds),

  concluded: concludeUnix,

  // The queue is not summed up here: a saved tree's is read only when a restore needs it.
  summary(d) {
    const parts: string[] = [d.sockType, d.state]
    if (d.localAddress.length) parts.push(addressText(d.localAddress) + (d.localUnlinked ? ' (unlinked)' : ''))
    if (d.state === 'pending') parts.push(`waits at ${d.acceptPosition} to be accepted by files/${d.peer}`)
    else if (d.peer !== undefined) parts.push(`peer files/${d.peer}`)
    else if (d.peerAddress.length) parts.push(`peer ${addressText(d.peerAddress)}`)
    if (d.state === 'listening') parts.push(`backlog ${d.backlog}`)
    if (d.shutdown) parts.push(`shut down ${shutdownNames[d.shutdown]}`)
    return `${d.target} (unix ${parts.join(', ')})`
  },
}
