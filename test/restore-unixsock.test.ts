// UNIX sockets (lib/files/unixsock.ts, stub kind unix_socket): a program holding every kind
// ckptfs restores, each with data in flight (test/fixtures/restore_unixsock.c), is
// checkpointed through the real mount, saved with `cp -a` (and its image), ended with `echo kill
// > done`, restored from the tree and from the image, and checks itself: no byte lost or
// repeated, message boundaries kept, names, options and shutdown state as they were, the
// listening socket accepting a new client. Sockets whose peer is outside the checkpoint are
// refused by name; a socket path an unprivileged user swapped for something else is refused.

import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import { ckptfs, mountFor } from './lib/mount'
import { checkpointSaveKill, exists, launch, restoreOk, runChecks, waitUntil, workdir, type Target } from './lib/restore'
import { buildTarget } from './lib/targets'

const bin = buildTarget('restore_unixsock')
const mnt = mountFor(t)

const CHECKS = [
  'stream pair: 70005 queued bytes, none lost or repeated', 'stream pair: the other direction', 'stream pair: still connected', 'stream pair: SO_RCVBUF and SO_SNDBUF',
  'dgram pair: SO_PEEK_OFF', 'dgram pair: three messages, boundaries kept', 'dgram pair: the other direction', 'dgram pair: still connected', 'dgram pair: SO_PASSCRED', 'dgram pair: SO_RCVTIMEO and SO_SNDTIMEO',
  'seqpacket pair: records kept', 'seqpacket pair: the other direction', 'seqpacket pair: O_NONBLOCK',
  'shutdown: the rest, then end of file', 'shutdown: the other direction still works', 'shutdown: the shut side cannot send',
  'listening: its name', 'listening: listens', "listening: its socket file, mode 0640, owned by the task's user", 'listening: accepts a new client', 'listening: the new connection carries data',
  'accepted: what the client sent', 'client: what the server sent', 'client and accepted socket: still connected',
  "dgram server: a request's sender is the client's name", 'dgram server: the requests', 'dgram client: the answer', 'dgram client: still connected to the server',
  'abstract: its name', 'abstract: the message',
  'unlinked: the message', 'unlinked: no file on disk', 'unlinked: its client is still connected',
  'peer closed: the rest, then end of file',
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

async function expectChecks(t: Tap.Test, target: Target, since: number): Promise<void> {
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
  const since = target.text().length
  restoreOk(mnt, saved, target.pid)
  await expectChecks(t, target, since)
  await killRestored(target.pid)
  fs.rmSync(path.join(dir, 'go'))

  const since2 = target.text().length
  const fromImage = ckptfs('restore', `${saved}.image`, '--mount', mnt)
  t.equal(fromImage.status, 0, `restored from the image alone (${fromImage.stderr.trim()})`)
  if (fromImage.status === 0) await expectChecks(t, target, since2)
  await killRestored(target.pid)
})
