// What a user's restored process is told about itself and its messages. Replayed as the
// unprivileged user (test/lib/unprivileged.ts): root checkpoints the user's process into the
// user's directory, the user may edit the copy (and reseal it), and root restores it.
// - SCM_CREDENTIALS: queued messages are sent again by the restorer's stub, whose real ids are
//   root's; a receiver with SO_PASSCRED must not be told a message came from root (or from
//   another pid): they carry the task's own pid, uid and gid.
// - /proc/PID/exe: the exe link is set by the task while it still holds the restorer's
//   credentials; a user's checkpoint may name as its executable only a file the user may run.

import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import { ckptfs, cliShellWords, mountFor } from './lib/mount'
import { checkpointSaveKill, exists, runChecks, waitUntil, workdir } from './lib/restore'
import { buildTarget } from './lib/targets'
import { attacker, launchAs, shAs } from './lib/unprivileged'

const user = attacker()
const mnt = mountFor(t)

function uidsOf(pid: number): number[] {
  const line = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'))!
  return line.split(/\s+/).slice(1, 5).map(Number)
}

async function killAndWait(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    return
  }
  await waitUntil(`PID ${pid} to be gone`, () => !exists(pid) || fs.readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z '))
}

t.test("a user's queued datagram comes back with the task's own SCM_CREDENTIALS, not the restorer's root", async (t) => {
  const bin = buildTarget('restore_unixsock')
  const { target, dir } = await launchAs(t, user, bin)
  const pid = target.pid
  t.same(uidsOf(pid), [user.uid, user.uid, user.uid, user.uid], `the target ${pid} runs as ${user.name}`)
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, pid, saved)
  t.equal(fs.statSync(saved).uid, user.uid, "the saved tree is the user's")
  const since = target.text().length
  const r = ckptfs('restore', saved, '--no-mount')
  t.equal(r.status, 0, `root restores the user's tree (${r.stderr.trim()})`)
  t.equal(r.stdout.trim(), String(pid), 'with its PID')
  if (r.status !== 0) return
  t.teardown(() => killAndWait(pid))
  t.same(uidsOf(pid), [user.uid, user.uid, user.uid, user.uid], `it runs as ${user.name}`)
  const checks = await runChecks(target, since)
  t.ok(checks.done, 'the restored fixture finished its checks')
  t.same(checks.failed, [], 'no check failed (a message "from root" fails: pid, uid and gid must be its own)')
  t.ok(checks.ok.includes("dgram pair: SCM_CREDENTIALS of the queued message are the task's own"), "ok dgram pair: SCM_CREDENTIALS of the queued message are the task's own")
})

t.test("a user's checkpoint may name as its executable only a file the user may run", async (t) => {
  const small = buildTarget('restore_small', ['-static'])
  const { target, dir } = await launchAs(t, user, small)
  const pid = target.pid
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, pid, saved)
  const task = `task-${pid}`

  // Programs of root's: one only root may run (0744: the user may read it, not execute it,
  // as /usr/sbin tools kept to root are), and one everyone may run (0755).
  const programs = workdir(t)
  const rootOnly = path.join(programs, 'root-only-tool')
  const anyone = path.join(programs, 'anyones-tool')
  fs.copyFileSync(small, rootOnly)
  fs.chmodSync(rootOnly, 0o744)
  fs.copyFileSync(small, anyone)
  fs.chmodSync(anyone, 0o755)
  t.equal(shAs(user, `test -r '${rootOnly}' && ! test -x '${rootOnly}' && echo readable-only`).trim(), 'readable-only', `${user.name} may read ${rootOnly} but not execute it`)

  const edited = (name: string, exe: string): string => {
    const tree = path.join(dir, name)
    shAs(user, `cp -a '${saved}' '${tree}' && chmod -R u+w '${tree}' && cd '${tree}/${task}' && rm -f exe && echo '${exe}' > exe`)
    shAs(user, `${cliShellWords} seal '${tree}' >/dev/null`)
    return tree
  }

  t.test('a program only root may run: refused, nothing left', async (t) => {
    const tree = edited('exe-root-only', rootOnly)
    const r = ckptfs('restore', tree, '--no-mount')
    if (r.status === 0) {
      const shown = exists(pid) ? fs.readlinkSync(`/proc/${pid}/exe`) : 'gone'
      await killAndWait(pid)
      t.fail(`restored, and /proc/${pid}/exe of ${user.name}'s process names ${shown}`)
      return
    }
    t.equal(r.status, 1, 'refused')
    t.match(r.stderr.trim(), `task-${pid}/exe: ${rootOnly}: the task (fsuid ${user.uid}, fsgid ${user.gid}) may not execute it: EACCES (13); a checkpoint stored in a user's files gets as its executable only a file that user may run`, r.stderr.trim())
    t.notOk(exists(pid), `no process ${pid} is left`)
  })

  t.test('a program the user may run: restored, /proc/PID/exe names it', async (t) => {
    const tree = edited('exe-anyone', anyone)
    const r = ckptfs('restore', tree, '--no-mount')
    t.equal(r.status, 0, `restored (${r.stderr.trim()})`)
    if (r.status !== 0) return
    t.equal(fs.readlinkSync(`/proc/${pid}/exe`), anyone, `/proc/${pid}/exe names ${anyone}`)
    t.same(uidsOf(pid), [user.uid, user.uid, user.uid, user.uid], `it runs as ${user.name}`)
    await killAndWait(pid)
  })
})
