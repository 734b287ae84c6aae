// TCP and UDP sockets (issue 14, lib/files/inetsock.ts): a fixture holding listening, bound and
// connected sockets and an established connection to a peer outside the tree, with data in
// flight both ways, is checkpointed through the real mount, killed, and restored from a
// `cp -a` copy and from the image; the connection carries on with no byte lost or repeated,
// also though the peer sent during the gap, sending segments of the size it did; UDP datagrams
// queued at the checkpoint are read again from their senders. Half-closed connections
// (CLOSE_WAIT, FIN_WAIT2) come back and end as they would have; FIN_WAIT1 is refused. The nftables table that drops the peer's packets
// meanwhile is gone after a restore, a failed one, and a resume. `python3 -m http.server`
// answers on its port after a restore. A user's queued datagram, saved socket on port 80 and connection
// (repair mode needs the CAP_NET_ADMIN the user lacks) are refused. Netlink and packet sockets
// (lib/files/netlinksock.ts, packetsock.ts: test/fixtures/restore_rawsock.c) come back from a
// copied tree and from the image and work; a user's saved netlink socket edited into a packet
// socket (CAP_NET_RAW) or into a privileged group is refused.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as http from 'http'
import * as net from 'net'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfs, ckptfsOk, mountFor, userNode } from './lib/mount'
import { checkpointSaveKill, exists, launch, listTree, reseal, restoreCli, runChecks, sleep, waitUntil, workdir, type Target } from './lib/restore'
import { buildTarget, startTarget } from './lib/targets'
import { asUser, attacker } from './lib/unprivileged'
import { closeGap, fourTuple, gapTableName, openGap } from '../lib/netgap'

const fixture = buildTarget('restore_inetsock')
const stateFixture = buildTarget('restore_inetstate')
const peerBin = buildTarget('inet_peer')

/**
 * Our nftables tables: lib/netgap.ts names them ckptfs_gap_FAMILY_uEUID_LADDR_LPORT_RADDR_RPORT,
 * and a test's connections all have one of its own ports at one end (the peer's or its server's).
 * Filtered by those ports, so another test run's tables (another mount, the same test in CI
 * beside this one) are not counted.
 */
function ourTables(...ports: number[]): string[] {
  const out = execFileSync('/usr/sbin/nft', ['list', 'ruleset'], { encoding: 'utf8' })
  return out.split('\n')
    .filter((l) => l.startsWith('table ') && l.includes('ckptfs'))
    .filter((l) => ports.some((p) => new RegExp(`_${p}(_| |$)`).test(l)))
}

/** Whether nftables holds anything of ours (a table of one of these ports; its chains and rules go with it). */
const anythingOurs = (...ports: number[]) => ourTables(...ports).length > 0

const read = (file: string) => fs.readFileSync(file, 'utf8').trim()

/** The objrefs under SAVED/files of TCP and UDP sockets, with their protocol and state. */
function sockets(saved: string): Array<{ objref: string; protocol: string; state: string; family: string; dir: string }> {
  const files = path.join(saved, 'files')
  return fs.readdirSync(files)
    .filter((n) => read(path.join(files, n, 'fd_type')) === 'socket' && fs.existsSync(path.join(files, n, 'family')) && /^inet6?$/.test(read(path.join(files, n, 'family'))))
    .map((n) => ({ objref: n, dir: path.join(files, n), protocol: read(path.join(files, n, 'protocol')), state: read(path.join(files, n, 'state')), family: read(path.join(files, n, 'family')) }))
}

interface Started {
  target: Target
  peer: Awaited<ReturnType<typeof startTarget>>
  dir: string
  /** The peer's listening port: the far end of the fixture's connection. */
  port: number
}

/** full: the fixture's send buffer filled to the brim with 17-byte writes (restore_inetsock.c). */
async function startPair(t: Test, ip: 4 | 6 = 4, full = false): Promise<Started> {
  const dir = workdir(t, 'ckptfs-inet-')
  const six = ip === 6 ? ['6'] : []
  const peer = await startTarget(peerBin, [dir, ...six], /^listening port=\d+ pid=\d+$/)
  t.teardown(() => peer.kill())
  const port = Number(/port=(\d+)/.exec(peer.lines.find((l) => l.startsWith('listening'))!)![1])
  const target = await launch(t, [fixture, dir, String(port), ...six, ...(full ? ['full'] : [])], { dir })
  await peer.waitFor(/^peer sent \d+$/)
  return { target, peer, dir, port }
}

/** After the kill: the peer sends during the gap; it must not be reset. */
async function gap(s: Started): Promise<void> {
  fs.writeFileSync(path.join(s.dir, 'gap'), '')
  await s.peer.waitFor(/^gap sent$/)
  // Some of the peer's (re)transmissions meet the dead socket's port meanwhile.
  await sleep(300)
}

/** Lets both ends carry on and checks both streams whole. */
async function carriesOn(t: Test, s: Started, since: number, extra: string[] = []): Promise<void> {
  const checks = await runChecks(s.target, since, 40_000)
  t.ok(checks.done, 'the fixture finished its checks')
  t.same(checks.failed, [], 'no check failed')
  for (const name of ['same ports', 'listen: accepts a connection', 'listen6: accepts a connection', 'listen6: IPV6_V6ONLY', 'listen6: SO_REUSEPORT', 'udp: SO_RCVBUF',
    'udp: SO_RCVTIMEO', 'udp: the queued datagrams, in order, from their senders', 'udp6: the connected socket\'s queued datagram, from its peer', 'udp: receives a datagram', 'udp6: the connected socket reaches its peer', 'tcp: O_NONBLOCK', 'tcp: TCP_NODELAY', 'tcp: keepalive 100/10/5',
    'tcp: SO_SNDTIMEO', 'tcp: TCP_MAXSEG as before', 'tcp: timestamps, SACK and window scales as before', 'tcp: every byte the peer sent, in order, once', 'tcp: the rest of its own stream went out', ...extra]) {
    t.ok(checks.ok.includes(name), `ok ${name}`)
  }
  const total = /^sent total (\d+)$/m.exec(s.target.text().slice(since))
  // Polled, not waitFor: the peer exits right after its last line, and its exit may be seen before that line.
  const received = () => s.peer.lines.find((l) => /^peer received \d+ bytes/.test(l))
  await waitUntil('the peer to say what it received', () => received() !== undefined, 20_000).catch(() => undefined)
  t.equal(received(), `peer received ${total?.[1]} bytes, all in order`, 'the peer got every byte the fixture sent, in order, once')
}

/** Waits out the gap, restores `from` with the CLI and checks the connection carries on (with `extra` lines after its usual ones). */
async function restoreCarriesOn(t: Test, s: Started, mnt: string, from: string, extra: string[] = []): Promise<void> {
  await gap(s)
  const since = s.target.text().length
  const r = restoreCli(mnt, from)
  t.equal(r.status, 0, `ckptfs restore: ${r.stderr.trim()}`)
  t.same(ourTables(s.port), [], 'the restore removed the table')
  if (r.status !== 0) return
  await carriesOn(t, s, since, extra)
}

t.test('listening, UDP and an established connection with data in flight come back from a copied tree', async (t) => {
  const mnt = mountFor(t)
  const s = await startPair(t)
  const saved = path.join(s.dir, 'saved')
  const queued = /^queued out (\d+) in (\d+)$/m.exec(s.target.text())!
  await checkpointSaveKill(mnt, s.target.pid, saved)
  t.equal(ourTables(s.port).length, 1, 'after the kill, one table drops the peer\'s packets')

  const found = sockets(saved)
  const kinds = found.map((k) => `${k.family} ${k.protocol} ${k.state}`).sort()
  t.same(kinds, ['inet tcp established', 'inet tcp listen', 'inet udp close', 'inet6 tcp listen', 'inet6 udp close', 'inet6 udp established'], 'six sockets, by family, protocol and state')
  const conn = found.find((k) => k.state === 'established' && k.protocol === 'tcp')!
  t.equal(fs.statSync(path.join(conn.dir, 'tcp', 'recv_queue')).size, Number(queued[2]), 'recv_queue: the bytes the peer sent that were not read')
  const sendQueue = fs.statSync(path.join(conn.dir, 'tcp', 'send_queue')).size
  t.ok(sendQueue > 0 && sendQueue <= Number(queued[1]), `send_queue: bytes in flight out (${sendQueue}; ${queued[1]} when it was ready)`)
  t.ok(Number(read(path.join(conn.dir, 'tcp', 'unsent'))) <= sendQueue, 'unsent: part of send_queue')
  t.equal(read(path.join(conn.dir, 'options', 'nodelay')), '1', 'options/nodelay')
  t.equal(read(path.join(found.find((k) => k.family === 'inet' && k.state === 'listen')!.dir, 'backlog')), '7', 'backlog')
  const udp = found.find((k) => k.family === 'inet' && k.protocol === 'udp')!
  const [, from1, from2] = /^udp queued from (\d+) (\d+)$/m.exec(s.target.text())!
  t.equal(fs.readFileSync(path.join(udp.dir, 'queue_senders'), 'utf8'), `127.0.0.1 ${from1}\n127.0.0.1 ${from1}\n127.0.0.1 ${from2}\n`, 'queue_senders: each queued datagram\'s sender')
  t.same(fs.readFileSync(path.join(udp.dir, 'queue')), Buffer.from('05000000666972737400000000050000007468697264', 'hex'), 'queue: each datagram\'s length and bytes')

  await restoreCarriesOn(t, s, mnt, saved)
  t.same(ourTables(s.port), [], 'no nftables table of ours is left')
})

t.test('the same from the image', async (t) => {
  const mnt = mountFor(t)
  const s = await startPair(t)
  const saved = path.join(s.dir, 'saved')
  await checkpointSaveKill(mnt, s.target.pid, saved, { image: true })
  const show = ckptfs('show', `${saved}.image`)
  t.match(show.stdout, /TCP socket 127\.0\.0\.1:\d+ <-> 127\.0\.0\.1:\d+, established/, 'ckptfs show names the connection')
  await restoreCarriesOn(t, s, mnt, `${saved}.image`)
  t.same(ourTables(s.port), [], 'no nftables table of ours is left')
})

t.test('the same over IPv6, from the image', async (t) => {
  const mnt = mountFor(t)
  const s = await startPair(t, 6)
  const saved = path.join(s.dir, 'saved')
  await checkpointSaveKill(mnt, s.target.pid, saved, { image: true })
  const tables = ourTables(s.port)
  t.equal(tables.length, 1, 'one table')
  t.match(tables[0], /^table ip6 ckptfs_gap_6_u0___1_\d+___1_\d+ \{$/, 'an ip6 table for [::1] <-> [::1]')
  t.match(ckptfs('show', `${saved}.image`).stdout, /TCPv6 socket \[::1\]:\d+ <-> \[::1\]:\d+, established/, 'ckptfs show names the connection')
  await restoreCarriesOn(t, s, mnt, `${saved}.image`)
  t.notOk(anythingOurs(s.port), 'nft list ruleset shows nothing of ours')
})

// CRIU's socket-tcpbuf: the queue of a send buffer filled by many small writes, nearly all of it
// unsent, takes more room in a new socket of the same size than it took in the old one. The
// stub grows the buffer while it fills it and sets it back after; before, it waited 10 s for
// room the peer could not make (its acknowledgements are dropped until the restore is over)
// and the restore failed with the process killed.
t.test('a send buffer filled to the brim, nearly all unsent, comes back whole, with its size', async (t) => {
  const mnt = mountFor(t)
  const s = await startPair(t, 4, true)
  const saved = path.join(s.dir, 'saved')
  await checkpointSaveKill(mnt, s.target.pid, saved)
  const conn = sockets(saved).find((k) => k.state === 'established' && k.protocol === 'tcp')!
  const sendQueue = fs.statSync(path.join(conn.dir, 'tcp', 'send_queue')).size
  const unsent = Number(read(path.join(conn.dir, 'tcp', 'unsent')))
  const sndbuf = Number(read(path.join(conn.dir, 'options', 'sndbuf')))
  t.ok(sendQueue > sndbuf / 4, `send_queue holds ${sendQueue} bytes, more than a quarter of its sndbuf (${sndbuf})`)
  t.ok(unsent > sendQueue / 2, `most of it unsent (${unsent})`)
  await restoreCarriesOn(t, s, mnt, saved, ['tcp: SO_SNDBUF as before'])
  t.same(ourTables(s.port), [], 'no nftables table of ours is left')
})

// CRIU's socket_udp_shutdown, sock_tcp_opts00, socket-tcp-reuseport and socket-tcp-close2
// (test/fixtures/restore_inetstate.c): shutdowns, TCP_CORK, two listening sockets of one port
// (one turned SO_REUSEPORT off after it listened: made with its saved options alone, the
// second bind fails) and a connection that ended (its ports went back, the client's is held
// by its TIME_WAIT: bound again, the restore failed).
for (const image of [false, true]) {
  t.test(`shutdowns, TCP_CORK, two listening sockets sharing a port and a connection that ended come back${image ? ', from the image' : ''}`, async (t) => {
    const mnt = mountFor(t)
    const dir = workdir(t, 'ckptfs-inetstate-')
    const target = await launch(t, [stateFixture, dir], { dir })
    const saved = path.join(dir, 'saved')
    await checkpointSaveKill(mnt, target.pid, saved, { image })
    const found = sockets(saved)
    const at = (k: { dir: string }, name: string) => read(path.join(k.dir, name))
    t.same(found.filter((k) => k.protocol === 'udp').map((k) => at(k, 'shutdown')).sort(), ['read', 'write'], 'udp: shutdown read and write')
    const closed = found.filter((k) => k.protocol === 'tcp' && k.state === 'close')
    t.same(closed.map((k) => at(k, 'options/cork')).sort(), ['0', '0', '1'], 'options/cork: set on the one socket that corked')
    const ended = closed.filter((k) => at(k, 'options/cork') === '0')
    t.same(ended.map((k) => `${at(k, 'local_port')} ${at(k, 'shutdown')}`), ['0 read', '0 read'], 'the ended connection\'s ends: no port (it went back), read side shut')
    const listening = found.filter((k) => k.state === 'listen')
    t.equal(new Set(listening.map((k) => at(k, 'local_port'))).size, 1, 'both listening sockets on one port')
    t.same(listening.map((k) => at(k, 'options/reuseport')).sort(), ['0', '1'], 'options/reuseport: off on one, on on the other')
    const r = restoreCli(mnt, image ? `${saved}.image` : saved)
    t.equal(r.status, 0, `ckptfs restore: ${r.stderr.trim()}`)
    if (r.status !== 0) return
    const checks = await runChecks(target, 0)
    t.ok(checks.done, 'the fixture finished its checks')
    t.same(checks.failed, [], 'no check failed')
    for (const name of ['udp: the socket shut for writing cannot send', 'udp: the socket shut for reading sends to its peer', 'udp: the read side shut where it was',
      'tcp: TCP_CORK and TCP_NODELAY', 'reuseport: both listen on the one port', 'reuseport: SO_REUSEPORT off and on as they were', 'reuseport: connections to the port are accepted',
      'closed: each end is closed, reads end of file and cannot write']) {
      t.ok(checks.ok.includes(name), `ok ${name}`)
    }
  })
}

t.test('a failed restore removes the table too and leaves nothing behind; a resumed checkpoint keeps its connection', async (t) => {
  const mnt = mountFor(t)
  const s = await startPair(t)
  const saved = path.join(s.dir, 'saved')
  await checkpointSaveKill(mnt, s.target.pid, saved)
  // Someone takes the listening port meanwhile: the restore fails at its bind.
  const lst = sockets(saved).find((k) => k.family === 'inet' && k.state === 'listen')!
  const port = Number(read(path.join(lst.dir, 'local_port')))
  const squatter = net.createServer().listen(port, '127.0.0.1')
  await new Promise((resolve) => squatter.once('listening', resolve))
  const before = listTree(s.dir)
  const r = restoreCli(mnt, saved)
  squatter.close()
  t.equal(r.status, 1, 'the restore fails')
  t.match(r.stderr, new RegExp(`^ckptfs restore: .*fd \\d+ \\(files/${lst.objref}\\): bind: Address already in use\\n$`), 'naming the socket')
  t.notOk(exists(s.target.pid), 'no process is left')
  t.same(listTree(s.dir), before, 'nothing new in its directory')
  t.same(ourTables(s.port), [], 'the failed restore removed the table')

  // A second fixture, checkpointed and resumed: its connection works on.
  const s2 = await startPair(t)
  const said = ckptfs('checkpoint', String(s2.target.pid), '--mount', mnt)
  t.equal(said.status, 0, 'checkpointed')
  const cp = said.stdout.trim()
  t.match(said.stderr, /^ckptfs checkpoint: note: checkpoint-\d+ holds 1 established TCP connection \(files\/\d+ 127\.0\.0\.1:\d+ <-> 127\.0\.0\.1:\d+\) in repair mode: "echo 1 > .*\/done" lets them carry on/, 'the checkpoint says which connection it holds and what done does to it')
  t.equal(ourTables(s2.port).length, 1, 'while frozen, the table is there')
  const since = s2.target.text().length
  fs.writeFileSync(path.join(cp, 'done'), '1\n')
  await waitUntil('the checkpoint to end', () => !fs.existsSync(cp))
  t.same(ourTables(s2.port), [], 'resumed: the table is gone')
  fs.writeFileSync(path.join(s2.dir, 'gap'), '')
  await carriesOn(t, s2, since)
  t.same(ourTables(s2.port), [], 'no nftables table of ours is left')
})

t.test('states and families that cannot be restored are refused by name', async (t) => {
  const mnt = mountFor(t)
  const s = await startPair(t)
  const saved = path.join(s.dir, 'saved')
  const cp = ckptfsOk('checkpoint', String(s.target.pid), '--mount', mnt)
  execFileSync('cp', ['-a', cp, saved])
  fs.writeFileSync(path.join(cp, 'done'), '1\n')
  await waitUntil('the checkpoint to end', () => !fs.existsSync(cp))
  t.same(ourTables(s.port), [], 'resumed: no table')
  fs.writeFileSync(path.join(s.dir, 'gap'), '')
  const udp = sockets(saved).find((k) => k.family === 'inet' && k.protocol === 'udp')!
  const edit = (file: string, value: string, expected: RegExp) => {
    const kept = fs.readFileSync(file)
    fs.writeFileSync(file, value)
    reseal(saved)
    const r = restoreCli(mnt, saved)
    fs.writeFileSync(file, kept)
    reseal(saved)
    t.equal(r.status, 1, `${value.trim()}: refused`)
    t.match(r.stderr, expected, `${value.trim()}: says which and why`)
  }
  edit(path.join(udp.dir, 'state'), 'syn_sent\n', new RegExp(`files/${udp.objref}/state: "syn_sent" is not one of established, listen, close`))
  edit(path.join(udp.dir, 'state'), 'listen\n', new RegExp(`files/${udp.objref}/state: a UDP socket does not listen`))
  edit(path.join(udp.dir, 'local_addr'), '127.0.0.300\n', new RegExp(`files/${udp.objref}/local_addr: "127.0.0.300" is not an IPv4 address`))
  edit(path.join(udp.dir, 'local_port'), '65536\n', new RegExp(`files/${udp.objref}/local_port: 65536 is out of range`))
})

/** A free TCP port on 127.0.0.1, by asking the kernel for one. */
async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1')
  await new Promise((resolve) => server.once('listening', resolve))
  const port = (server.address() as net.AddressInfo).port
  await new Promise((resolve) => server.close(resolve))
  return port
}

function httpGet(port: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', timeout: 5000, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (c: string) => (body += c)).on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.on('timeout', () => req.destroy(new Error('timed out')))
  })
}

t.test('python3 -m http.server answers on its port after a restore', async (t) => {
  const mnt = mountFor(t)
  const dir = workdir(t, 'ckptfs-http-')
  fs.writeFileSync(path.join(dir, 'hello.txt'), 'hello from before the checkpoint\n')
  const port = await freePort()
  const target = await launch(t, ['python3', '-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', dir], { dir, ready: (tg) => /Serving HTTP/.test(tg.text()) })
  const before = await httpGet(port)
  t.equal(before.status, 200, 'it answers before')
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  await t.rejects(httpGet(port), 'nothing answers while it is gone')
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 0, `ckptfs restore: ${r.stderr.trim()}`)
  if (r.status !== 0) return
  const after = await httpGet(port)
  t.equal(after.status, 200, 'it answers after the restore')
  t.match(after.body, /hello\.txt/, 'with its directory listing')
})

t.test('a user\'s sockets come back only as the user could make them: a queued datagram (CAP_NET_RAW), port 80, repair mode, a packet socket and a privileged netlink group are refused', async (t) => {
  const user = attacker()
  const mnt = mountFor(t)
  // A peer outside the tree for the user's connection.
  const accepted: net.Socket[] = []
  const peer = net.createServer((c) => accepted.push(c.on('error', () => undefined))).listen(0, '127.0.0.1')
  await new Promise((resolve) => peer.once('listening', resolve))
  t.teardown(() => {
    accepted.forEach((c) => c.destroy())
    peer.close()
  })
  const peerPort = (peer.address() as net.AddressInfo).port
  // The user's own program: python listening on a free port above 1024, as the user may, and
  // connected to the peer.
  const dir = workdir(t, 'ckptfs-inet-user-')
  fs.chownSync(dir, user.uid, user.gid)
  const out = path.join(dir, 'out')
  fs.writeFileSync(out, '', { mode: 0o644 })
  fs.chownSync(out, user.uid, user.gid)
  const port = await freePort()
  // Its netlink socket first: it is restored before the TCP sockets, so an edit of it is what a restore meets first.
  // Then a UDP socket with a datagram queued (sent to itself).
  const code = `import socket,time\nn=socket.socket(socket.AF_NETLINK,socket.SOCK_RAW,0)\nn.bind((0,0))\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nu.bind(('127.0.0.1',0))\nu.sendto(b'queued',u.getsockname())\ns=socket.socket()\ns.bind(('127.0.0.1',${port}))\ns.listen(3)\nc=socket.create_connection(('127.0.0.1',${peerPort}))\nprint('listening',flush=True)\nwhile True: time.sleep(1)\n`
  const target = await launch(t, asUser(user, ['python3', '-c', code]), { dir, ready: (tg) => /listening/.test(tg.text()) })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, saved])
  let before = listTree(dir)
  const refused = (what: string, expected: RegExp, tablesLeft: string[] = []) => {
    const r = ckptfs('restore', saved, '--mount', mnt)
    t.equal(r.status, 1, `${what}: refused`)
    t.match(r.stderr, expected, `${what}: says which and why`)
    t.notOk(exists(target.pid), `${what}: no process is left`)
    t.same(listTree(dir), before, `${what}: nothing new in its directory`)
    t.same(ourTables(peerPort).map((l) => l.replace(/^table ip6? (\S+) \{$/, '$1')), tablesLeft, `${what}: no nftables table of ours is left${tablesLeft.length ? ' but root\'s' : ''}`)
  }
  // The queued datagram would be sent again in its sender's name: CAP_NET_RAW, which the user lacks.
  const udp = sockets(saved).find((k) => k.protocol === 'udp')!
  refused('a queued datagram', new RegExp(`files/${udp.objref}\\): queued datagram 1 of 1: socket\\(SOCK_RAW\\): Operation not permitted \\(sending it in its sender's name takes the CAP_NET_RAW the task had\\)`))
  for (const n of ['queue', 'queue_senders']) fs.writeFileSync(path.join(udp.dir, n), '')
  reseal(saved)
  execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, saved])
  before = listTree(dir)
  const conn = sockets(saved).find((k) => k.state === 'established')!
  // A gap of root's on the same four-tuple (a root process's connection, checkpointed and
  // killed): the user's restore must not remove it.
  const value = (name: string) => read(path.join(conn.dir, name))
  const rootsGap = fourTuple(0, { addr: value('local_addr'), port: Number(value('local_port')) }, { addr: value('peer_addr'), port: Number(value('peer_port')) })
  await openGap(rootsGap)
  t.teardown(() => closeGap(rootsGap))
  refused('the connection', new RegExp(`files/${conn.objref}\\): TCP_REPAIR: Operation not permitted \\(restoring an established connection takes the CAP_NET_ADMIN the task had\\)`), [gapTableName(rootsGap)])
  await closeGap(rootsGap)
  // The user's copy says port 80 (edited and resealed, as its owner may).
  const lst = sockets(saved).find((k) => k.state === 'listen')!
  fs.writeFileSync(path.join(lst.dir, 'local_port'), '80\n')
  reseal(saved)
  execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, saved])
  refused('port 80', new RegExp(`files/${lst.objref}\\): bind: Permission denied`))
  fs.writeFileSync(path.join(lst.dir, 'local_port'), `${port}\n`)

  // Its netlink socket asks for what the user could not have: a packet socket (CAP_NET_RAW),
  // then NETLINK_ROUTE's group 30 (RTNLGRP_IPV4_MROUTE_R, CAP_NET_ADMIN).
  const nl = ofFamily(saved, 'netlink')[0]
  const keep = new Map(['family', 'sock_type', 'protocol', 'portid', 'dst_portid', 'dst_group', 'groups'].map((n) => [n, fs.readFileSync(path.join(nl, n))]))
  const keptOptions = workdir(t, 'ckptfs-nl-options-')
  execFileSync('cp', ['-a', path.join(nl, 'options'), keptOptions])
  const edit = (files: Record<string, string>) => {
    for (const [n, v] of Object.entries(files)) fs.writeFileSync(path.join(nl, n), v)
    // ckptfs seal writes as the tree's owner: what root wrote here becomes the user's first.
    execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, saved])
    reseal(saved)
    execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, saved])
    // The edit changes which files the saved copy holds: that is not what a restore left.
    before = listTree(dir)
  }
  for (const n of ['portid', 'dst_portid', 'dst_group', 'groups']) fs.rmSync(path.join(nl, n))
  fs.rmSync(path.join(nl, 'options'), { recursive: true })
  fs.mkdirSync(path.join(nl, 'options'))
  const options = { version: '0', reserve: '0', auxdata: '0', origdev: '0', vnet_hdr: '0', timestamp: '0', copy_thresh: '0', loss: '0', qdisc_bypass: '0', ignore_outgoing: '0', rcvbuf: '212992', sndbuf: '212992' }
  edit({ family: 'packet\n', sock_type: 'dgram\n', protocol: '35061\n', ifindex: '1\n', ifname: 'lo\n', fanout: '\n', memberships: '', ...Object.fromEntries(Object.entries(options).map(([n, v]) => [`options/${n}`, `${v}\n`])) })
  refused('a packet socket', new RegExp(`files/${path.basename(nl)}\\): socket\\(AF_PACKET, SOCK_DGRAM, 0x88f5\\): Operation not permitted \\(a packet socket takes the CAP_NET_RAW the task had\\)`))
  for (const n of ['ifindex', 'ifname', 'fanout', 'memberships']) fs.rmSync(path.join(nl, n))
  fs.rmSync(path.join(nl, 'options'), { recursive: true })
  execFileSync('cp', ['-a', path.join(keptOptions, 'options'), nl])
  edit({ ...Object.fromEntries([...keep].map(([n, v]) => [n, v.toString()])), groups: '30\n' })
  refused('group 30 of NETLINK_ROUTE', new RegExp(`files/${path.basename(nl)}\\): NETLINK_ADD_MEMBERSHIP \\(protocol 0, group 30\\): Operation not permitted`))
})

t.test('a node HTTP server answers on its port after a restore', async (t) => {
  const mnt = mountFor(t)
  const dir = workdir(t, 'ckptfs-nodehttp-')
  const port = await freePort()
  const code = `let n=0;require('http').createServer((q,r)=>r.end('request '+(++n)+'\\n')).listen(${port},'127.0.0.1',()=>console.log('ready'))`
  // libuv's io_uring (an fd no handler restores) is left out, as a server run for checkpoints would.
  const [env, nodeArgs] = userNode('-e', code)
  const target = await launch(t, [env, ...nodeArgs.slice(0, 2), 'UV_USE_IO_URING=0', ...nodeArgs.slice(2)], { dir, ready: (tg) => /ready/.test(tg.text()) })
  // A connection each (no keep-alive): one kept open would be checkpointed too, and the
  // agent's keepalive probes (every second, 10 tries) give up during a gap this long.
  t.same(await httpGet(port), { status: 200, body: 'request 1\n' }, 'it answers before')
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 0, `ckptfs restore: ${r.stderr.trim()}`)
  if (r.status !== 0) return
  t.same(await httpGet(port), { status: 200, body: 'request 2\n' }, 'it answers after the restore, counting on from where it was')
  t.same(ourTables(port), [], 'no nftables table of ours')
})

const rawFixture = buildTarget('restore_rawsock')

/** The files/OBJREF directories of SAVED whose socket is of `family`, in objref order. */
const ofFamily = (saved: string, family: string): string[] =>
  fs.readdirSync(path.join(saved, 'files')).map(Number).sort((a, b) => a - b).map((n) => path.join(saved, 'files', String(n)))
    .filter((d) => fs.existsSync(path.join(d, 'family')) && read(path.join(d, 'family')) === family)

t.test('netlink and packet sockets come back from a copied tree and from the image: portids, groups, options, fanout, ring', async (t) => {
  const mnt = mountFor(t)
  const dir = workdir(t, 'ckptfs-rawsock-')
  const target = await launch(t, [rawFixture, dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved, { image: true })
  const netlink = ofFamily(saved, 'netlink')
  const packet = ofFamily(saved, 'packet')
  t.equal(netlink.length, 4, 'four netlink sockets')
  t.equal(packet.length, 2, 'two packet sockets')
  const [rt, , ub, uc] = netlink
  t.equal(read(path.join(rt, 'groups')), '29 33', 'groups: 29, and 33 (above 32)')
  t.equal(read(path.join(rt, 'options', 'ext_ack')), '1', 'options/ext_ack')
  t.equal(read(path.join(uc, 'dst_portid')), read(path.join(ub, 'portid')), 'dst_portid: the portid of the socket it is connected to')
  t.equal(read(path.join(uc, 'dst_group')), '32', 'dst_group')
  const [pk, pr] = packet
  t.same([read(path.join(pk, 'ifname')), read(path.join(pk, 'ifindex')), read(path.join(pk, 'protocol'))], ['lo', '1', String(0x88b5)], 'ifname, ifindex and protocol')
  t.equal(fs.readFileSync(path.join(pk, 'memberships'), 'utf8'), '1 multicast 01005e0000fb 1\n', 'memberships')
  t.equal(read(path.join(pr, 'rx_ring', 'frame_nr')), '4', 'rx_ring/')
  t.equal(read(path.join(pr, 'fanout')), '', 'fanout: empty, in no group')
  const show = ckptfs('show', `${saved}.image`).stdout
  t.match(show, /netlink raw socket, protocol 15, portid \d+, connected to portid \d+ group 32/, 'ckptfs show names the connected netlink socket')
  t.match(show, /dgram packet socket \(protocol 0x88b5, bound to lo \(index 1\)\), fanout group \d+/, 'and the packet socket')

  // A tree whose interface is gone (here: renamed in the copy) is refused, naming it.
  const ifname = path.join(pk, 'ifname')
  fs.writeFileSync(ifname, 'ckptfsnone0\n')
  reseal(saved)
  const gone = restoreCli(mnt, saved)
  t.equal(gone.status, 1, 'a gone interface: refused')
  t.match(gone.stderr, new RegExp(`files/${path.basename(pk)}\\): interface ckptfsnone0 \\(index 1\\) the packet socket was bound to is gone: No such device`), 'naming the interface')
  fs.writeFileSync(ifname, 'lo\n')
  reseal(saved)

  // Another socket takes ub's portid meanwhile: the restore is refused, naming the socket.
  const portid = read(path.join(ub, 'portid'))
  const squatter = await startTarget('python3', ['-c', `import os,socket,time\ns=socket.socket(socket.AF_NETLINK,socket.SOCK_RAW,15)\ns.bind((${portid},0))\nprint('bound pid=%d' % os.getpid(),flush=True)\ntime.sleep(60)\n`], /^bound/)
  const taken = restoreCli(mnt, saved)
  squatter.kill()
  t.equal(taken.status, 1, 'a portid taken: refused')
  t.match(taken.stderr, new RegExp(`files/${path.basename(ub)}\\): bind to netlink portid ${portid} \\(protocol 15\\): Address already in use \\(another socket holds that portid now\\)`), 'naming the socket and the portid')
  await waitUntil('the squatter to exit', () => !exists(squatter.pid))

  for (const from of [saved, `${saved}.image`]) {
    const since = target.text().length
    const r = restoreCli(mnt, from)
    t.equal(r.status, 0, `from ${path.basename(from)}: ckptfs restore: ${r.stderr.trim()}`)
    if (r.status !== 0) return
    const checks = await runChecks(target, since)
    t.ok(checks.done, `from ${path.basename(from)}: the fixture finished its checks`)
    t.same(checks.failed, [], `from ${path.basename(from)}: no check failed`)
    t.equal(checks.ok.length, 20, `from ${path.basename(from)}: all 20 checks passed`)
    fs.rmSync(path.join(dir, 'go'))
    await waitUntil('the restored fixture to exit', () => !exists(target.pid))
  }
})

t.test('a netlink socket with an answer queued, a SOCK_PACKET socket and a mapped packet ring are refused, naming each', async (t) => {
  const dir = workdir(t, 'ckptfs-netlink-')
  // An RTM_GETLINK dump request (struct nlmsghdr + struct ifinfomsg) whose answer is never read.
  // And a raw packet socket whose RX ring (PACKET_RX_RING, 263/5) is mapped.
  const code = 'import mmap,os,socket,struct,time\nn=socket.socket(socket.AF_NETLINK,socket.SOCK_RAW,0)\nn.bind((0,0))\nn.send(struct.pack("=IHHII",32,18,0x301,1,0)+bytes(16))\nos.dup2(n.fileno(),7)\np=socket.socket(socket.AF_PACKET,10,0)\nos.dup2(p.fileno(),8)\nr=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,0)\nr.setsockopt(263,5,struct.pack("IIII",4096,1,2048,2))\nm=mmap.mmap(r.fileno(),4096)\ntime.sleep(0.2)\nprint("ready",flush=True)\nwhile True: time.sleep(1)\n'
  const target = await launch(t, ['python3', '-c', code], { dir, ready: (tg) => /ready/.test(tg.text()) })
  const r = ckptfs('check', String(target.pid))
  t.match(r.stdout, /^fd 7: socket socket:\[(\d+)\]: not checkpointable: socket: netlink socket \(protocol 0, portid \d+\) has \d+ bytes queued to be read: a kernel's answer or notification cannot be sent again, so it would be lost \(fd \d+, inode \1\)$/m, 'ckptfs check names the netlink socket and what is queued')
  t.match(r.stdout, /^fd 8: socket socket:\[(\d+)\]: not checkpointable: socket: a packet socket of type 10 \(SOCK_PACKET, the obsolete interface\) is not checkpointed \(fd \d+, inode \1\)$/m, 'and the SOCK_PACKET socket')
  t.match(r.stdout, /^task-\d+\/memory\/vmas\/[0-9a-f]+-[0-9a-f]+: not checkpointable: a mapping of socket:\[\d+\] \(a packet socket's ring, PACKET_RX_RING or PACKET_TX_RING mapped\): its frames are the kernel's, which a restore cannot map again$/m, 'and the mapped ring')
})

/** A TCP server on 127.0.0.1 (closed at teardown) and its port. */
async function server(t: Test, onConnection: (c: net.Socket) => void, opts: net.ServerOpts = {}): Promise<number> {
  const accepted: net.Socket[] = []
  const srv = net.createServer(opts, (c) => {
    accepted.push(c.on('error', () => undefined))
    onConnection(c)
  }).listen(0, '127.0.0.1')
  await new Promise((resolve) => srv.once('listening', resolve))
  t.teardown(() => {
    accepted.forEach((c) => c.destroy())
    srv.close()
  })
  return (srv.address() as net.AddressInfo).port
}

t.test('half-closed connections come back: CLOSE_WAIT reads its last bytes then EOF, FIN_WAIT2 reads the peer to its end', async (t) => {
  const mnt = mountFor(t)
  // One peer says its last bytes and closes (the program's end: CLOSE_WAIT, those bytes unread);
  // the other stays open after the program shuts its side (FIN_WAIT2) and speaks after the restore.
  const closerPort = await server(t, (c) => c.end('last bytes'))
  let open: net.Socket | undefined
  const openPort = await server(t, (c) => (open = c), { allowHalfOpen: true })
  const dir = workdir(t, 'ckptfs-inet-half-')
  const code = [
    'import os,socket,sys,time',
    'def state(s): return s.getsockopt(socket.IPPROTO_TCP,socket.TCP_INFO,8)[0]',
    'def to_eof(s):',
    '  b=b""',
    '  while True:',
    '    x=s.recv(100)',
    '    if not x: return b.decode()',
    '    b+=x',
    `w=socket.create_connection(('127.0.0.1',${closerPort}))`,
    `f=socket.create_connection(('127.0.0.1',${openPort}))`,
    'f.shutdown(socket.SHUT_WR)',
    'while state(w)!=8 or state(f)!=5: time.sleep(0.01)',
    "print('ready',flush=True)",
    "while not os.path.exists(sys.argv[1]+'/go'): time.sleep(0.02)",
    "print('states',state(w),state(f),flush=True)",
    "print('close_wait read %r then EOF' % to_eof(w),flush=True)",
    "print('fin_wait2 read %r then EOF' % to_eof(f),flush=True)",
    'try:',
    "  f.send(b'x')",
    "  print('fin_wait2 send: sent',flush=True)",
    'except OSError as e:',
    "  print('fin_wait2 send: errno',e.errno,flush=True)",
    'while True: time.sleep(1)',
  ].join('\n')
  const target = await launch(t, ['python3', '-c', code, dir], { dir, ready: (tg) => /ready/.test(tg.text()) })
  await waitUntil('the open peer to accept the connection', () => open !== undefined)
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const found = sockets(saved)
  const waiting = found.find((k) => k.state === 'close_wait')
  const finished = found.find((k) => k.state === 'fin_wait2')
  t.ok(waiting && finished, `state: close_wait and fin_wait2 (${found.map((k) => k.state).join(', ')})`)
  if (!waiting || !finished) return
  t.equal(fs.readFileSync(path.join(waiting.dir, 'tcp', 'recv_queue'), 'utf8'), 'last bytes', 'close_wait: tcp/recv_queue holds the bytes before the FIN')
  t.equal(ourTables(closerPort, openPort).length, 2, 'a table for each while they are gone')
  const since = target.text().length
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 0, `ckptfs restore: ${r.stderr.trim()}`)
  t.same(ourTables(closerPort, openPort), [], 'the restore removed both tables')
  if (r.status !== 0) return
  fs.writeFileSync(path.join(dir, 'go'), '')
  await waitUntil('the program to read its CLOSE_WAIT connection', () => /close_wait read/.test(target.text().slice(since)), 20_000).catch(() => undefined)
  open!.end('after the restore')
  await waitUntil('the program to try sending', () => /fin_wait2 send/.test(target.text().slice(since)), 20_000).catch(() => undefined)
  const said = target.text().slice(since)
  t.match(said, /^states 8 5$/m, 'after the restore: CLOSE_WAIT (8) and FIN_WAIT2 (5), as before')
  t.match(said, /^close_wait read 'last bytes' then EOF$/m, 'CLOSE_WAIT: the bytes the peer sent before its FIN, then EOF')
  t.match(said, /^fin_wait2 read 'after the restore' then EOF$/m, 'FIN_WAIT2: the peer\'s bytes sent after the restore, then its EOF')
  t.match(said, /^fin_wait2 send: errno 32$/m, 'FIN_WAIT2: its own side stays shut (EPIPE)')
})

t.test('a connection whose FIN is not acknowledged, and a listening socket with connections not accepted, are refused by name', async (t) => {
  // A peer that reads nothing: the program's stream and then its FIN wait (FIN_WAIT1).
  const stuckPort = await server(t, (c) => c.pause())
  const port = await freePort()
  const dir = workdir(t, 'ckptfs-inet-states-')
  const code = `import os,socket,time\nl=socket.socket()\nl.bind(('127.0.0.1',${port}))\nl.listen(4)\nos.dup2(l.fileno(),7)\nc=socket.create_connection(('127.0.0.1',${stuckPort}))\nc.setblocking(False)\ntry:\n  while True: c.send(bytes(65536))\nexcept BlockingIOError: pass\nc.shutdown(socket.SHUT_WR)\nos.dup2(c.fileno(),8)\nprint('ready',flush=True)\nwhile True: time.sleep(1)\n`
  const target = await launch(t, ['python3', '-c', code], { dir, ready: (tg) => /ready/.test(tg.text()) })
  // A client the program never accepts.
  const waiting = net.connect(port, '127.0.0.1')
  waiting.on('error', () => undefined)
  t.teardown(() => waiting.destroy())
  await new Promise((resolve) => waiting.once('connect', resolve))
  const r = ckptfs('check', String(target.pid))
  t.match(r.stdout, new RegExp(`^fd 7: socket socket:\\[\\d+\\]: not checkpointable: socket: TCP socket 127\\.0\\.0\\.1:${port} \\(listening\\) has 1 connection\\(s\\) not yet accepted, which would be lost \\(fd \\d+, inode \\d+\\)$`, 'm'), 'the listening socket with a connection waiting')
  t.match(r.stdout, new RegExp(`^fd 8: socket socket:\\[\\d+\\]: not checkpointable: socket: TCP socket 127\\.0\\.0\\.1:\\d+ <-> 127\\.0\\.0\\.1:${stuckPort} is in state FIN_WAIT1: only ESTABLISHED, CLOSE_WAIT, FIN_WAIT2, LISTEN and CLOSE connections are checkpointed \\(its FIN is not acknowledged yet; checkpoint it again once the peer has\\) \\(fd \\d+, inode \\d+\\)$`, 'm'), 'the connection in FIN_WAIT1')
  t.notOk(anythingOurs(port, stuckPort), 'nothing of ours in nft list ruleset')
})

t.test('a connection killed at its checkpoint and never restored: umount removes its table', async (t) => {
  const mnt = mountFor(t)
  const s = await startPair(t)
  await checkpointSaveKill(mnt, s.target.pid, path.join(s.dir, 'saved'))
  t.equal(ourTables(s.port).length, 1, 'the table waits for a restore')
  ckptfsOk('umount', mnt)
  t.notOk(anythingOurs(s.port), 'after umount, nft list ruleset shows nothing of ours')
})

t.test('the same through the restore area (cp -a into restore/, echo 1 > done): the server removes the table', async (t) => {
  const mnt = mountFor(t)
  const s = await startPair(t)
  const saved = path.join(s.dir, 'saved')
  await checkpointSaveKill(mnt, s.target.pid, saved)
  await gap(s)
  const since = s.target.text().length
  execFileSync('bash', ['-c', `cp -a "${saved}" "${mnt}/restore/conn" && echo 1 > "${mnt}/restore/conn/done"`])
  t.equal(fs.readFileSync(path.join(mnt, 'restore', 'conn', 'status'), 'utf8'), `restored ${s.target.pid}\n`, 'status says restored PID')
  t.notOk(anythingOurs(s.port), 'nft list ruleset shows nothing of ours')
  await carriesOn(t, s, since)
})
