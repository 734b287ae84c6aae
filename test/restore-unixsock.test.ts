// UNIX sockets (lib/files/unixsock.ts, stub kind unix_socket): a program holding every kind
// ckptfs restores, each with data in flight (test/fixtures/restore_unixsock.c), is
// checkpointed through the real mount, saved with `cp -a` (and its image), ended with `echo kill
// > done`, restored from the tree and from the image, and checks itself: no byte lost or
// repeated, message boundaries kept, names, options and shutdown state as they were, the
// listening socket accepting a new client. Fds in flight (SCM_RIGHTS) come back with their
// messages, and a name relative to the working directory is bound there again. Sockets whose
// peer is outside the checkpoint, and an fd in flight ckptfs cannot checkpoint, are refused
// by name; a socket path an unprivileged user swapped for something else is refused.

import { execFileSync, spawn, type ChildProcess } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfs, ckptfsOk, mountFor } from './lib/mount'
import { checkpointSaveKill, exists, launch, listTree, reseal, restoreOk, runChecks, waitUntil, workdir, type Target } from './lib/restore'
import { buildTarget } from './lib/targets'
import { attacker, launchAs, shAs, spawnAs } from './lib/unprivileged'

const bin = buildTarget('restore_unixsock')
const mnt = mountFor(t)

const CHECKS = [
  'stream pair: 70005 queued bytes, none lost or repeated', 'stream pair: the other direction', 'stream pair: still connected', 'stream pair: SO_RCVBUF and SO_SNDBUF',
  'dgram pair: SO_PEEK_OFF', 'dgram pair: three messages, boundaries kept', "dgram pair: SCM_CREDENTIALS of the queued message are the task's own", 'dgram pair: the other direction', 'dgram pair: still connected', 'dgram pair: SO_PASSCRED', 'dgram pair: SO_RCVTIMEO and SO_SNDTIMEO',
  'seqpacket pair: records kept', 'seqpacket pair: the other direction', 'seqpacket pair: O_NONBLOCK',
  'shutdown: the rest, then end of file', 'shutdown: the other direction still works', 'shutdown: the shut side cannot send',
  'listening: its name', 'listening: listens', "listening: its socket file, mode 0640, owned by the task's user", 'listening: accepts a new client', 'listening: the new connection carries data',
  'accepted: what the client sent', 'client: what the server sent', 'client and accepted socket: still connected', "accepted socket and client: the listener's name, its own and its peer's",
  "dgram server: a request's sender is the client's name", 'dgram server: the requests', 'dgram client: the answer', 'dgram client: still connected to the server',
  'abstract: its name', 'abstract: the message',
  'unlinked: the message', 'unlinked: no file on disk', 'unlinked: its client is still connected',
  'peer closed: the rest, then end of file',
  'pending: two waiting connections, accepted in their order', 'pending: no third one', "pending: the client's flags are its own",
]

/** Restored processes are not our children: killed by PID, and waited for until the PID is free. */
async function killRestored(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    return
  }
  await waitUntil(`restored PID ${pid} to be gone`, () => !exists(pid) || fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z '))
}

async function expectChecks(t: Test, target: Target, since: number): Promise<void> {
  const checks = await runChecks(target, since)
  t.ok(checks.done, 'the restored fixture finished its checks')
  t.same(checks.failed, [], 'no check failed')
  for (const name of CHECKS) t.ok(checks.ok.includes(name), `ok ${name}`)
}

t.test('every kind of UNIX socket comes back with its queues, from the tree and from the image', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved, { image: true })
  const objrefOf = (fd: number) => fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', String(fd), 'fd'), 'utf8').trim()
  const entry = (fd: number, name: string) => fs.readFileSync(path.join(saved, 'files', objrefOf(fd), name), 'utf8')
  t.same([entry(4, 'family'), entry(4, 'sock_type'), entry(4, 'state'), entry(4, 'peer')], ['unix\n', 'stream\n', 'connected\n', `${objrefOf(3)}\n`], 'files/N of fd 4: a connected stream socket naming fd 3\'s OBJREF as its peer')
  t.equal(entry(4, 'queue').length, 70005, 'its queue holds the 70005 bytes in flight')
  t.same([entry(11, 'state'), entry(11, 'local_address'), entry(11, 'backlog'), entry(11, 'local_mode')], ['listening\n', `${dir}/listen.sock\n`, '7\n', '0640\n'], 'the listening socket: its name, backlog and mode')
  t.same([entry(16, 'local_address'), entry(17, 'local_unlinked'), entry(9, 'shutdown'), entry(19, 'state')], [`@ckptfs-unixsock-${target.pid}\n`, '1\n', 'write\n', 'peer-closed\n'], 'abstract and unlinked names, shutdown, a closed peer')
  t.same([entry(21, 'state'), entry(21, 'peer'), entry(21, 'accept_position'), entry(22, 'accept_position')], ['pending\n', `${objrefOf(20)}\n`, '1\n', '2\n'], 'connections waiting to be accepted, in order')
  const sender = Buffer.alloc(4)
  sender.writeUInt32LE(Number(objrefOf(15)))
  const framed = (text: string) => Buffer.concat([Buffer.from([text.length, 0, 0, 0]), sender, Buffer.from(text)])
  t.same(fs.readFileSync(path.join(saved, 'files', objrefOf(14), 'queue')), Buffer.concat([framed('req1'), framed('req2')]), 'a datagram queue: per message its length, its sender (fd 15\'s OBJREF) and its bytes')
  const shown = ckptfs('show', saved).stdout
  t.match(shown, new RegExp(`socket:\\[\\d+\\] \\(unix stream, connected, peer files/${objrefOf(3)}\\)`), 'ckptfs show: a connected pair')
  t.match(shown, new RegExp(`\\(unix stream, listening, ${dir}/listen.sock, backlog 7\\)`), 'ckptfs show: the listening socket')
  t.match(shown, new RegExp(`\\(unix stream, pending, waits at 2 to be accepted by files/${objrefOf(20)}\\)`), 'ckptfs show: a connection waiting to be accepted')

  const since = target.text().length
  restoreOk(mnt, saved, target.pid)
  const fdList = (dir: string) => fs.readdirSync(dir).map(Number).sort((a, b) => a - b)
  t.same(fdList(`/proc/${target.pid}/fd`), fdList(path.join(saved, `task-${target.pid}`, 'fds')), 'exactly the fds it had: nothing of the restorer\'s left open')
  await expectChecks(t, target, since)
  await killRestored(target.pid)
  fs.rmSync(path.join(dir, 'go'))

  const since2 = target.text().length
  const fromImage = ckptfs('restore', `${saved}.image`, '--mount', mnt)
  t.equal(fromImage.status, 0, `restored from the image alone (${fromImage.stderr.trim()})`)
  if (fromImage.status === 0) await expectChecks(t, target, since2)
  await killRestored(target.pid)
})

/** A python3 program of ours serving on a UNIX socket at `where`; says "serving" once the fixture may connect. */
function outsideServer(t: Test, kind: Outside, where: string): ChildProcess {
  const script = kind === 'stream'
    ? 'import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen()\nprint("serving", flush=True)\nc, _ = s.accept()\nprint("accepted", flush=True)\ntime.sleep(600)'
    : kind === 'unaccepted stream'
      ? 'import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen()\nprint("serving", flush=True)\ntime.sleep(600)'
      : 'import socket, sys, time\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\nprint("serving", flush=True)\ntime.sleep(600)'
  const server = spawn('python3', ['-c', script, where], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => {
    server.kill('SIGKILL')
  })
  return server
}

const said = (child: ChildProcess, word: string): Promise<void> => new Promise((resolve) => {
  let out = ''
  child.stdout!.on('data', (chunk: Buffer) => {
    out += chunk.toString()
    if (out.includes(word)) resolve()
  })
})

type Outside = 'stream' | 'unaccepted stream' | 'dgram'

for (const kind of ['stream', 'unaccepted stream', 'dgram'] as const) {
  t.test(`a ${kind} socket connected to a process outside the checkpoint is refused, naming it and its peer`, async (t) => {
    const dir = workdir(t)
    const where = path.join(dir, 'outside.sock')
    const server = outsideServer(t, kind, where)
    const serving = said(server, 'serving')
    const accepted = said(server, kind === 'stream' ? 'accepted' : 'serving')
    await serving
    const type = kind === 'dgram' ? 'dgram' : 'stream'
    const target = await launch(t, [bin, dir, type, where], { dir })
    await accepted
    const how = kind === 'unaccepted stream' ? 'waits to be accepted by' : 'is connected to'
    const reason = new RegExp(`socket: UNIX ${type} socket fd 3 \\(inode \\d+\\) ${how} UNIX ${type} socket \\(inode \\d+, ${where}\\), outside the checkpoint, held by python3 \\(PID ${server.pid}, fd \\d+\\); its peer cannot be restored with it`)

    const check = ckptfs('check', String(target.pid))
    t.match(check.stdout, reason, '`ckptfs check` says why')

    const checkpoint = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt, '--inspect')
    const saved = path.join(dir, 'saved')
    execFileSync('cp', ['-a', checkpoint, saved])
    const ref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '3', 'fd'), 'utf8').trim()
    const files = path.join(saved, 'files', ref)
    t.match(fs.readFileSync(path.join(files, 'checkpointable'), 'utf8'), reason, 'files/N/checkpointable says why')
    t.equal(fs.readFileSync(path.join(files, 'peer_address'), 'utf8'), `${where}\n`, 'the tree shows the peer\'s name')
    t.equal(fs.readFileSync(path.join(files, 'peer'), 'utf8'), '\n', 'and no peer OBJREF: it is not in the checkpoint')
    fs.writeFileSync(path.join(checkpoint, 'done'), 'kill!\n')
    await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid))

    const before = listTree(dir)
    const r = ckptfs('restore', saved, '--mount', mnt)
    t.equal(r.status, 1, 'the restore is refused')
    t.match(r.stderr, new RegExp(`^ckptfs restore: files/${ref}: ${reason.source}\\n$`), 'naming the socket and its peer')
    t.notOk(exists(target.pid), 'no process is left')
    t.same(listTree(dir), before, 'nothing new in its directory')
  })
}

t.test('a listening socket with a connection from outside waiting to be accepted is refused, naming the client', async (t) => {
  const dir = workdir(t)
  const where = path.join(dir, 'listen.sock')
  const target = await launch(t, [bin, dir, 'listen', where], { dir })
  const client = spawn('python3', ['-c', 'import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nprint("connected", flush=True)\ntime.sleep(600)', where], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => {
    client.kill('SIGKILL')
  })
  await said(client, 'connected')
  const checkpoint = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt, '--inspect')
  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', checkpoint, saved])
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill!\n')
  await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid))
  const ref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '3', 'fd'), 'utf8').trim()
  const reason = `socket: UNIX stream socket fd 3 \\(inode \\d+, ${where}\\) has a connection waiting to be accepted from UNIX stream socket \\(inode \\d+\\), outside the checkpoint, held by python3 \\(PID ${client.pid}, fd \\d+\\); it cannot be restored with it`
  t.match(fs.readFileSync(path.join(saved, 'files', ref, 'checkpointable'), 'utf8'), new RegExp(`^no: ${reason}\n$`), 'files/N/checkpointable says why')
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 1, 'the restore is refused')
  t.match(r.stderr, new RegExp(`^ckptfs restore: files/${ref}: ${reason}\n$`), 'naming the socket and the client')
  t.notOk(exists(target.pid), 'no process is left')
})

const RIGHTS_CHECKS = [
  'rights: stream: the bytes and the regular file passed with them, once', 'rights: stream: the bytes after them, without fds',
  'rights: dgram: the message before, without fds', 'rights: dgram: a pipe\'s read end with its data and the regular file, in their order',
  'rights: one file passed twice is one open file', 'rights: dgram: the message after, without fds', 'rights: a socket passed in its own queue is that socket',
  'rights: a connected socket in flight, with its queue, still connected to the process\'s end',
  'rights: an epoll in flight, still watching the process\'s fd 12',
  'relative name: bound again in its directory, as a relative name, and listening',
]

t.test('fds in flight (SCM_RIGHTS) and a relative name come back, from the tree and from the image; looking took nothing from the process', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir, 'rights'], { dir })
  // Who holds the passed file open: nobody while it is in flight (the fixture closed its fd).
  const passed = path.join(dir, 'passed')
  const holders = () => fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).flatMap((p) => {
    try {
      return fs.readdirSync(`/proc/${p}/fd`).filter((fd) => fs.readlinkSync(`/proc/${p}/fd/${fd}`) === passed).map((fd) => `${p}/${fd}`)
    } catch {
      return []
    }
  })
  t.same(holders(), [], 'nobody holds the passed file open')
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved, { image: true })
  t.same(holders(), [], 'looking at the queues left the passed file open nowhere')
  const objrefOf = (fd: number) => fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', String(fd), 'fd'), 'utf8').trim()
  const entry = (ref: string, name: string) => fs.readFileSync(path.join(saved, 'files', ref, name), 'utf8')
  const [streamFds, dgramFds, selfFds] = [entry(objrefOf(4), 'queue_fds'), entry(objrefOf(6), 'queue_fds'), entry(objrefOf(8), 'queue_fds')]
  const file = /^8 (\d+)\n$/.exec(streamFds)?.[1] ?? ''
  t.equal(file !== '' && entry(file, 'path'), `${passed}\n`, 'the stream\'s queue_fds: the fd passed with the bytes up to offset 8 is files/N of the passed file')
  const pipe = new RegExp(`^1 (\\d+) ${file}\\n$`).exec(dgramFds)?.[1] ?? ''
  t.equal(pipe !== '' && entry(pipe, 'buffered'), 'piped', 'the datagram queue_fds: message 1 passes files/N of a pipe (its bytes buffered), then the same file')
  t.equal(selfFds, `0 ${objrefOf(8)}\n`, 'a socket passed in its own queue is its own OBJREF')
  const [, sockInFlight, epollInFlight] = /^4 (\d+)\n6 (\d+)\n$/.exec(entry(objrefOf(11), 'queue_fds')) ?? ['', 'none', 'none']
  t.same([entry(objrefOf(12), 'peer'), entry(sockInFlight, 'peer')], [`${sockInFlight}\n`, `${objrefOf(12)}\n`], 'a connected socket in flight and the end the process holds name each other as peers')
  t.equal(entry(epollInFlight, 'items/0/target'), `${objrefOf(12)}\n`, 'an epoll in flight: its item watches the file fd 12 holds')
  t.same([entry(objrefOf(9), 'local_address'), entry(objrefOf(9), 'local_dir')], ['rel.sock\n', `${dir}\n`], 'a relative name, with the directory it is bound in')

  for (const from of [saved, `${saved}.image`]) {
    fs.rmSync(path.join(dir, 'go'), { force: true })
    fs.rmSync(path.join(dir, 'rel.sock'), { force: true })
    const since = target.text().length
    restoreOk(mnt, from, target.pid)
    const checks = await runChecks(target, since)
    t.ok(checks.done, `restored from ${path.basename(from)}: the fixture finished its checks`)
    t.same(checks.failed, [], 'no check failed')
    t.same(checks.ok, RIGHTS_CHECKS, 'every check passed')
    await killRestored(target.pid)
  }
})

t.test('an fd in flight of a kind ckptfs cannot checkpoint is refused, naming it', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir, 'rights-refused'], { dir })
  const check = ckptfs('check', String(target.pid))
  t.match(check.stdout, /socket: UNIX stream socket fd 4 \(inode \d+\): fd 1 passed with SCM_RIGHTS in queued message 1 \(files\/\d+\) cannot be checkpointed: socket: a packet socket of type 10 \(SOCK_PACKET/, '`ckptfs check` names the socket, the message and the fd in flight')
})

t.test('an edited peer or queue is refused by the validator, naming the file', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const objrefOf = (fd: number) => fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', String(fd), 'fd'), 'utf8').trim()
  const s3 = objrefOf(3), s4 = objrefOf(4), d6 = objrefOf(6), l11 = objrefOf(11)
  const write = (ref: string, name: string, data: string | Buffer) => (tree: string) => fs.writeFileSync(path.join(tree, 'files', ref, name), data)
  const tries: Array<[string, (tree: string) => void, RegExp]> = [
    // fd 3's description comes first (the lowest OBJREF): the validator names it, not its old peer.
    ['a peer that is not connected back', write(s3, 'peer', `${objrefOf(12)}\n`), new RegExp(`files/${s3}/peer: files/${objrefOf(12)} is not connected back to this socket`)],
    ['a peer that is not a socket', write(s3, 'peer', `${objrefOf(0)}\n`), new RegExp(`files/${s3}/peer: files/${objrefOf(0)} is not a UNIX socket of the checkpoint`)],
    ['a datagram queue cut short', write(d6, 'queue', Buffer.from([9, 0, 0, 0, 0, 0, 0, 0, 0x41])), new RegExp(`files/${d6}/queue: message 0: 9 bytes announced at byte 0, 1 left`)],
    ['a listening socket with a queue', write(l11, 'queue', 'data'), new RegExp(`files/${l11}/queue: a listening socket has no queue`)],
    ['a relative name to bind', write(l11, 'local_address', 'listen.sock\n'), new RegExp(`files/${l11}/local_dir: listen.sock is relative: the directory to bind it in must be an absolute path`)],
  ]
  for (const [what, edit, expected] of tries) {
    const edited = path.join(dir, 'edited')
    execFileSync('cp', ['-a', saved, edited])
    edit(edited)
    reseal(edited)
    const r = ckptfs('restore', edited, '--mount', mnt)
    t.equal(r.status, 1, `${what}: refused`)
    t.match(r.stderr, expected, `${what}: names the file and the problem`)
    t.notOk(exists(target.pid), `${what}: no process left`)
    fs.rmSync(edited, { recursive: true })
  }
  // A damaged queue (not resealed) is refused by its checksum.
  const damaged = path.join(dir, 'damaged')
  execFileSync('cp', ['-a', saved, damaged])
  const queue = path.join(damaged, 'files', s4, 'queue')
  const bytes = fs.readFileSync(queue)
  bytes[100] ^= 1
  fs.writeFileSync(queue, bytes)
  const r = ckptfs('restore', damaged, '--mount', mnt)
  t.equal(r.status, 1, 'a flipped bit in a queue: refused')
  t.match(r.stderr, new RegExp(`files/${s4}/queue`), 'naming the queue')
  t.notOk(exists(target.pid), 'no process left')
})

t.test("a user's socket path is created with the task's credentials; one the user swapped for something else is refused", async (t) => {
  const user = attacker()
  const { target, dir } = await launchAs(t, user, bin)
  // The saved tree is root's, outside the user's reach; only the user's own directory is theirs to change.
  const saved = path.join(workdir(t), 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const sock = path.join(dir, 'listen.sock')
  t.ok(fs.lstatSync(sock).isSocket(), 'the dead process left its socket file behind')

  const refusedWith = (what: string, expected: RegExp) => {
    const r = ckptfs('restore', saved, '--mount', mnt)
    t.equal(r.status, 1, `${what}: refused`)
    t.match(r.stderr, expected, `${what}: names the path and what it is now`)
    t.notOk(exists(target.pid), `${what}: no process left`)
  }
  const quoted = sock.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')

  // As the user: the path becomes a symbolic link to a file of root's, then a file of the user's own.
  shAs(user, `rm ${sock} && ln -s /etc/passwd ${sock}`)
  refusedWith('a symbolic link', new RegExp(`socket path ${quoted} is now a symbolic link: refused`))
  t.equal(fs.readlinkSync(sock), '/etc/passwd', 'the link is left as it was')
  t.ok(fs.statSync('/etc/passwd').isFile(), 'and /etc/passwd too')
  shAs(user, `rm ${sock} && echo mine > ${sock}`)
  refusedWith('a regular file', new RegExp(`socket path ${quoted} is now a regular file: refused`))
  t.equal(fs.readFileSync(sock, 'utf8'), 'mine\n', 'the file is left as it was')

  // A live socket of the user's at the path: never unlinked.
  shAs(user, `rm ${sock}`)
  const squatter = spawnAs(user, ['python3', '-c', 'import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen()\nprint("bound", flush=True)\ntime.sleep(600)', sock])
  t.teardown(() => {
    squatter.kill('SIGKILL')
  })
  await said(squatter, 'bound')
  refusedWith('a socket in use', new RegExp(`socket path ${quoted} is in use by another socket: refused`))
  t.ok(fs.lstatSync(sock).isSocket(), 'its file is left in place')
  squatter.kill('SIGKILL')
  await new Promise((resolve) => squatter.once('exit', resolve))
  shAs(user, `rm ${sock}`)

  const since = target.text().length
  restoreOk(mnt, saved, target.pid)
  const st = fs.statSync(sock)
  t.same({ uid: st.uid, gid: st.gid, mode: st.mode & 0o7777 }, { uid: user.uid, gid: user.gid, mode: 0o640 }, "the socket file is the task's user's, with its saved mode")
  await expectChecks(t, target, since)
  // The restorer's listen() recorded the credentials a client sees (SO_PEERCRED): the user's,
  // never root's, or the user's server would pass for root with every client that checks.
  const peer = execFileSync('python3', ['-c', 'import socket, struct, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nprint(*struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)))', sock], { encoding: 'utf8' })
  t.same(peer.trim().split(' ').map(Number), [target.pid, user.uid, user.gid], "a client of the restored listener sees the user's pid, uid and gid (SO_PEERCRED)")
  await killRestored(target.pid)
})
