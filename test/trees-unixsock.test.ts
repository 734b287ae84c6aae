// UNIX sockets between the processes of one tree (issues 14 and 17): a socketpair made before
// fork (stream and datagram) with data queued both ways, a server process and a client process
// connected through a named socket (an accepted connection, one waiting to be accepted, and a
// datagram socket connected by name), checkpointed as one tree, saved with `cp -a` and its
// image, killed, restored from each, and checking themselves (test/fixtures/unix_tree.c): no
// byte lost or repeated. A socket whose peer is in a process outside the checkpoint is still
// refused, naming that process.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfs, ckptfsOk, mountFor } from './lib/mount'
import { collectChecks, exists, launch, waitUntil, workdir, type Target } from './lib/restore'
import { buildTarget } from './lib/targets'

const mnt = mountFor(t)
const bin = buildTarget('unix_tree')
// The tree runs below a subreaper: this machine's PID 1 never reaps, and every PID of the
// original tree must be free before the restore.
const sleeper = buildTarget('sleeper')

const CHECKS = [
  "P: the stream pair's bytes from A", "P: the datagram pair's message from A", 'P: the datagram socket connected to itself',
  "A: the stream pair's 30000 bytes from P, none lost or repeated", "A: the datagram pair's messages from P, boundaries kept",
  "S: the accepted connection's bytes from K", "S: a request's sender is K's name", "S: K's requests on the named datagram socket",
  'S: the connection waiting to be accepted is accepted', "S: the late connection's bytes from K", 'S: no other connection waits',
  "K: the connection's bytes from S", "K: S's answer on the datagram socket connected by name",
  'A', 'S',
]
/**
 * Known not restored (README, Limitations): a connection is remade as a socketpair, so the
 * client's getpeername no longer shows the listener's name (nor does K's exit status then).
 */
const KNOWN_MISSING = ["K: its connection's peer is srv.sock", 'K']

interface TreePids {
  p: number
  a: number
  s: number
  k: number
}
const allPids = (pids: TreePids) => [pids.p, pids.a, pids.s, pids.k]

const exeOf = (pid: number): string | undefined => {
  try {
    return fs.readlinkSync(`/proc/${pid}/exe`)
  } catch {
    return undefined
  }
}

async function startTree(t: Test): Promise<{ target: Target; pids: TreePids }> {
  const dir = workdir(t, 'ckptfs-unixtree-')
  const target = await launch(t, [sleeper, 'subreaper', bin, dir], { dir, ready: (tg) => /^ready pid=\d+ a=/m.test(tg.text()) })
  const m = /^ready pid=(\d+) a=(\d+) s=(\d+) k=(\d+)$/m.exec(target.text())!
  const pids = { p: Number(m[1]), a: Number(m[2]), s: Number(m[3]), k: Number(m[4]) }
  // Killed by PID, children first, and only while they still run the fixture (original or restored).
  t.teardown(() => {
    for (const pid of [pids.a, pids.s, pids.k, pids.p]) {
      if (exeOf(pid) !== bin) continue
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // gone meanwhile
      }
    }
  })
  return { target, pids }
}

interface SavedSocket {
  fd: number
  objref: string
  sockType: string
  state: string
  peer: string
}

/** The UNIX sockets task `pid` holds in a saved tree, as its files/ entries say. */
function socketsOf(saved: string, pid: number): SavedSocket[] {
  const fdsDir = path.join(saved, `task-${pid}`, 'fds')
  const read = (objref: string, name: string) => fs.readFileSync(path.join(saved, 'files', objref, name), 'utf8').trim()
  return fs.readdirSync(fdsDir).map(Number).sort((a, b) => a - b).flatMap((fd) => {
    const objref = fs.readFileSync(path.join(fdsDir, String(fd), 'fd'), 'utf8').trim()
    if (!fs.existsSync(path.join(saved, 'files', objref, 'family')) || read(objref, 'family') !== 'unix') return []
    return [{ fd, objref, sockType: read(objref, 'sock_type'), state: read(objref, 'state'), peer: read(objref, 'peer') }]
  })
}

/** Checkpoints the tree, copies it and its image out, kills it and waits until every PID is free. */
async function saveAndKill(target: Target, pids: TreePids): Promise<{ saved: string; image: string }> {
  const dir = ckptfsOk('checkpoint', String(pids.p), '--mount', mnt)
  const saved = path.join(target.dir, 'saved')
  execFileSync('cp', ['-a', dir, saved])
  const image = path.join(target.dir, 'saved-image')
  fs.mkdirSync(image)
  execFileSync('cp', ['-a', `${dir}.image`, path.join(image, 'checkpoint.image')])
  fs.writeFileSync(path.join(dir, 'done'), 'kill\n')
  await waitUntil('every PID of the original tree to be free', () => allPids(pids).every((pid) => !exists(pid)), 15_000)
  return { saved, image }
}

/** Restores from `from`, then lets the tree check itself. */
async function restoreAndCheck(t: Test, target: Target, pids: TreePids, from: string): Promise<void> {
  const since = target.text().length
  const r = ckptfs('restore', from, '--mount', mnt)
  t.equal(r.status, 0, `restore exits 0 (${r.stderr.trim()})`)
  t.equal(r.stdout.trim(), String(pids.p), "it prints the root's PID")
  if (r.status !== 0) return
  for (const pid of allPids(pids)) t.equal(exeOf(pid), bin, `PID ${pid} is back`)
  fs.writeFileSync(path.join(target.dir, 'go'), '')
  const checks = await collectChecks(target, since, 30_000)
  t.ok(checks.done, 'the restored tree finished its checks')
  const known = (line: string) => KNOWN_MISSING.some((name) => line.startsWith(`FAIL: ${name}:`))
  t.same(checks.failed.filter((line) => !known(line)), [], 'no check failed but the known ones')
  for (const name of CHECKS) t.ok(checks.ok.includes(name), `ok ${name}`)
  for (const name of KNOWN_MISSING) t.ok(checks.ok.includes(name), `ok ${name}`, { todo: "a restored connection's client does not see its listener's name as its peer's" })
}

t.test('sockets between processes: captured as connections of the tree, each peer named by OBJREF', async (t) => {
  const { target, pids } = await startTree(t)
  const { saved } = await saveAndKill(target, pids)
  const p = socketsOf(saved, pids.p), a = socketsOf(saved, pids.a), s = socketsOf(saved, pids.s), k = socketsOf(saved, pids.k)
  const byType = (list: SavedSocket[], type: string) => list.filter((x) => x.sockType === type)
  const [pStream, aStream] = [byType(p, 'stream')[0], byType(a, 'stream')[0]]
  t.same([pStream?.state, pStream?.peer, aStream?.peer], ['connected', aStream?.objref, pStream?.objref], "the stream pair: P's end and A's end name each other")
  t.not(pStream?.objref, aStream?.objref, 'two descriptions, one per end')
  const aDgram = byType(a, 'dgram')[0]
  const pDgram = byType(p, 'dgram').find((x) => x.peer === aDgram?.objref)
  t.equal(aDgram?.peer, pDgram?.objref, "the datagram pair: the same (P's end names A's and back)")
  const self = byType(p, 'dgram').find((x) => x !== pDgram)
  t.same([self?.state, self?.peer], ['connected', self?.objref], 'a datagram socket connected to itself names its own OBJREF')
  t.equal(fs.statSync(path.join(saved, 'files', aStream.objref, 'queue')).size, 30000, "A's end holds P's 30000 queued bytes")
  const listener = s.find((x) => x.state === 'listening')!
  const accepted = s.find((x) => x.sockType === 'stream' && x.state === 'connected')!
  const client = k.find((x) => x.sockType === 'stream' && x.state === 'connected')!
  const pending = k.find((x) => x.state === 'pending')!
  t.ok(listener && accepted && client && pending, "S holds a listener and an accepted connection; K a client and a connection waiting")
  t.same([accepted.peer, client.peer], [client.objref, accepted.objref], "S's accepted socket and K's client name each other")
  t.equal(pending.peer, listener.objref, "K's waiting connection names S's listener")
  const dgs = byType(s, 'dgram')[0], dgc = byType(k, 'dgram')[0]
  t.same([dgc.state, dgc.peer, dgs.state], ['connected', dgs.objref, 'unconnected'], "K's datagram socket is connected to S's by name")
  const check = ckptfs('check', saved)
  t.notMatch(check.stdout + check.stderr, /outside the checkpoint/, 'nothing is refused as outside the checkpoint')
})

t.test('a tree connected by UNIX sockets restored from a cp -a copy', async (t) => {
  const { target, pids } = await startTree(t)
  const { saved } = await saveAndKill(target, pids)
  await restoreAndCheck(t, target, pids, saved)
})

t.test('a tree connected by UNIX sockets restored from its image', async (t) => {
  const { target, pids } = await startTree(t)
  const { image } = await saveAndKill(target, pids)
  await restoreAndCheck(t, target, pids, image)
})

t.test('a socket whose peer is a process outside the checkpoint is still refused, naming that process', async (t) => {
  const { target, pids } = await startTree(t)
  // S alone: its accepted connection's other end and the connection waiting on its listener are K's.
  const check = ckptfs('check', String(pids.s))
  const reason = new RegExp(`UNIX stream socket fd \\d+ \\(inode \\d+, ${target.dir}/srv.sock\\) is connected to UNIX stream socket \\(inode \\d+\\), outside the checkpoint, held by unix_tree \\(PID ${pids.k}, fd \\d+\\)`)
  t.match(check.stdout, reason, "`ckptfs check` of S names K's socket as the peer outside")
  t.match(check.stdout, new RegExp(`has a connection waiting to be accepted from UNIX stream socket \\(inode \\d+\\), outside the checkpoint, held by unix_tree \\(PID ${pids.k}`), "and K's connection waiting on S's listener")
  t.equal(exeOf(pids.s), bin, 'S still runs')
  t.ok(target.text().includes('ready'), 'the tree was set up')
})
