// `ckptfs restore PATH --mount MNT` never pushes page data through FUSE (issue 16): the
// command restores by itself and the process reads its pages from the saved files. Measured
// by what the mount's server reads and writes meanwhile (/proc/SERVER/io: FUSE writes into
// restore/ are reads of /dev/fuse and writes to its backing disk), a byte count, not a time.

import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import { serversOf } from '../mount/cli'
import { ckptfs, mountFor } from './lib/mount'
import { checkpointSaveKill, collectChecks, exists, launch, workdir } from './lib/restore'
import { buildTarget } from './lib/targets'

const mnt = mountFor(t)
const lazyBin = buildTarget('restore_lazy')
const MIB = 64

/** Bytes the process has read and written through system calls (rchar + wchar). */
function ioBytes(pid: number): number {
  const io = fs.readFileSync(`/proc/${pid}/io`, 'utf8')
  const field = (name: string) => Number(new RegExp(`^${name}: ([0-9]+)$`, 'm').exec(io)![1])
  return field('rchar') + field('wchar')
}

for (const kind of ['tree', 'image'] as const) {
  t.test(`ckptfs restore ${kind.toUpperCase()} --mount: the pages do not go through the mount's server`, async (t) => {
    const dir = workdir(t)
    fs.writeFileSync(path.join(dir, 'readsrc'), 'R'.repeat(100))
    const target = await launch(t, [lazyBin, dir, String(MIB)], { dir, ready: (tg) => /^ready pid=\d+ addr=/m.test(tg.text()) })
    const saved = path.join(dir, 'saved')
    await checkpointSaveKill(mnt, target.pid, saved, { image: true })
    fs.writeFileSync(path.join(dir, 'go'), '')
    const [server] = serversOf(mnt)
    t.ok(server > 0, 'the mount has a server')
    const before = ioBytes(server)
    const r = ckptfs('restore', kind === 'tree' ? saved : `${saved}.image`, '--mount', mnt)
    const moved = ioBytes(server) - before
    t.equal(r.status, 0, `restored (${r.stderr.trim()})`)
    t.equal(r.stdout.trim(), String(target.pid), 'the saved PID')
    t.ok(moved < (MIB << 20) / 8, `the server read and wrote ${moved} bytes meanwhile, far less than the ${MIB} MiB of pages`)
    t.same(fs.readdirSync(path.join(mnt, 'restore')), [], 'nothing was copied into restore/')
    const checks = await collectChecks(target)
    t.ok(checks.done, 'the fixture finished its checks')
    t.same(checks.failed, [], 'no check failed')
    t.ok(exists(target.pid), 'it runs on')
  })
}
