// The gap of an established TCP connection: from its checkpoint until its restore, the peer's
// packets must not reach this host's TCP, which would answer them with a reset once the
// socket is gone (a socket in repair mode closes silently). Each connection gets an nftables
// table of its own, named after its four-tuple, whose one rule drops exactly the peer's
// packets to it: any process (the server that checkpointed it, the `ckptfs restore` command
// that restores it) can remove it by name, and no two connections share a rule.
// Also the copies of the task's sockets the server holds in repair mode meanwhile.

import { execFile } from 'child_process'
import { CkptError } from './errors'
import { native } from './native'

const NFT = '/usr/sbin/nft'
/**
 * The packet mark (SO_MARK) of the segments a restore sends its connection in the peer's name
 * (restorer.c, CKPTFS_PEER_MARK: the FIN of a connection in CLOSE_WAIT, the ACK of ours in
 * FIN_WAIT2, queued UDP datagrams): they pass the gap. Setting a mark takes CAP_NET_ADMIN.
 */
export const PEER_MARK = 0x636b7074
/** Every table of ours starts so: `nft list tables` shows what is ours. */
export const GAP_TABLE_PREFIX = 'ckptfs_gap_'

export interface FourTuple {
  /**
   * The effective uid of the task that held the connection: part of the table's name, so a
   * restore removes only tables of its own task's uid (a user's saved tree cannot name another
   * user's pending connection and let its peer reset it).
   */
  uid: number
  /** 4 or 6: the IP version of the packets (an IPv4-mapped IPv6 address is IPv4 on the wire). */
  ip: 4 | 6
  localAddr: string
  localPort: number
  peerAddr: string
  peerPort: number
}

/** The tuple of a connection, from its socket's addresses (IPv4-mapped ones as IPv4). */
export function fourTuple(uid: number, local: { addr: string; port: number }, peer: { addr: string; port: number }): FourTuple {
  const mapped = (a: string) => /^::ffff:\d+\.\d+\.\d+\.\d+$/i.test(a)
  const ip = !local.addr.includes(':') || (mapped(local.addr) && mapped(peer.addr)) ? 4 : 6
  const plain = (a: string) => (ip === 4 ? a.replace(/^::ffff:/i, '') : a)
  return { uid, ip, localAddr: plain(local.addr), localPort: local.port, peerAddr: plain(peer.addr), peerPort: peer.port }
}

export function tupleText(t: FourTuple): string {
  const at = (a: string, p: number) => (t.ip === 6 ? `[${a}]:${p}` : `${a}:${p}`)
  return `${at(t.localAddr, t.localPort)} <-> ${at(t.peerAddr, t.peerPort)}`
}

/** The table's name: letters, digits and underscores only (a saved tree's address cannot inject nft syntax). */
export function gapTableName(t: FourTuple): string {
  const part = (s: string) => s.toLowerCase().replace(/[^0-9a-f]/g, '_')
  return `${GAP_TABLE_PREFIX}${t.ip}_u${t.uid >>> 0}_${part(t.localAddr)}_${t.localPort}_${part(t.peerAddr)}_${t.peerPort}`
}

function nft(args: string[], input?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile(NFT, args, { timeout: 10_000 }, (err, _stdout, stderr) => {
      if (err) reject(new CkptError(`nft ${args.join(' ')}: ${(stderr || err.message).trim().split('\n')[0]}`))
      else resolve()
    })
    if (input !== undefined) child.stdin?.end(input)
  })
}

/** The address checked once more before it goes into nft's input (validation already parsed it). */
function checkedAddr(addr: string, ip: 4 | 6): string {
  if (ip === 4 ? !/^\d+\.\d+\.\d+\.\d+$/.test(addr) : !/^[0-9a-fA-F:.]+$/.test(addr)) throw new CkptError(`nft: ${addr} is not an IPv${ip} address`)
  return addr
}

/** Tables this process made and has not removed: removed when the server ends (dropAllGaps). */
const mine = new Set<string>()

/** Drops the peer's packets to the connection until closeGap. */
export async function openGap(t: FourTuple): Promise<void> {
  const name = gapTableName(t)
  const family = t.ip === 4 ? 'ip' : 'ip6'
  const rule = `meta mark != 0x${PEER_MARK.toString(16)} ${family} saddr ${checkedAddr(t.peerAddr, t.ip)} ${family} daddr ${checkedAddr(t.localAddr, t.ip)} tcp sport ${t.peerPort} tcp dport ${t.localPort} drop`
  // Priority -300 (raw): before connection tracking and every filter of the host's own.
  await nft(['-f', '-'], `table ${family} ${name} {\n  chain peer_in {\n    type filter hook input priority -300; policy accept;\n    ${rule}\n  }\n}\n`)
  mine.add(`${family} ${name}`)
}

/** Lets the peer's packets through again; a table already gone is no error. */
export async function closeGap(t: FourTuple): Promise<void> {
  const family = t.ip === 4 ? 'ip' : 'ip6'
  const name = gapTableName(t)
  mine.delete(`${family} ${name}`)
  await nft(['delete', 'table', family, name]).catch((err: unknown) => {
    if (!/No such file or directory/.test((err as Error).message)) throw err
  })
}

/** Removes every table this process made and still keeps (the server ends). */
export async function dropAllGaps(): Promise<void> {
  const all = [...mine]
  mine.clear()
  await Promise.allSettled(all.map((t) => nft(['delete', 'table', ...t.split(' ')])))
}

/** A connection held in repair mode by the server: its copy of the task's socket. */
interface Held {
  fd: number
  tuple: FourTuple
}

const heldByPid = new Map<number, Held[]>()

/** Keeps `fd` (a copy of task `pid`'s socket, in repair mode) until releaseConnections. */
export function holdConnection(pid: number, fd: number, tuple: FourTuple): void {
  const list = heldByPid.get(pid) ?? []
  list.push({ fd, tuple })
  heldByPid.set(pid, list)
}

/**
 * Ends the hold of the connections of `pids`. 'resume': each leaves repair mode and works on,
 * and its peer's packets pass again. 'kill' (call it once the tasks are dead): the copies are
 * closed, which closes the sockets silently; the peer's packets stay dropped until the restore
 * of the connection (or this server's end), so the peer does not reset it meanwhile.
 */
export async function releaseConnections(pids: readonly number[], action: 'resume' | 'kill'): Promise<void> {
  const failures: string[] = []
  for (const pid of pids) {
    const held = heldByPid.get(pid)
    if (!held) continue
    heldByPid.delete(pid)
    for (const h of held) {
      try {
        if (action === 'resume') native.tcpRepairOff(h.fd)
      } catch (err) {
        failures.push(`${tupleText(h.tuple)}: ${(err as Error).message}`)
      }
      native.close(h.fd)
      if (action === 'resume') await closeGap(h.tuple).catch((err: unknown) => failures.push((err as Error).message))
    }
  }
  if (failures.length) throw new CkptError(`connections of process ${pids.join(', ')}: ${failures.join('; ')}`)
}
