// Restored memory in huge pages (issue 16, lib/restore/hugepages.ts): a private anonymous
// mapping saved in 4 KiB pages comes back in 2 MiB pages where a whole aligned 2 MiB block of
// it was stored, with its VmFlags as saved (no hg added); a mapping that refused huge pages
// (nh) and a block with a page missing stay in 4 KiB pages (no memory is added), and every
// byte reads as saved. From a tree and from an image.

import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import { mountFor } from './lib/mount'
import { checkpointSaveKill, launch, restoreOk, runChecks, workdir } from './lib/restore'
import { buildTarget } from './lib/targets'

const mnt = mountFor(t)
const bin = buildTarget('restore_hugepages')
const REGION = 16 << 20

const thpMode = /\[(\w+)\]/.exec(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1]

interface Mapping {
  vmFlags: string
  anonHugeKiB: number
  rssKiB: number
}

/** The smaps entry of the mapping starting at `start`. */
function mappingAt(pid: number, start: bigint): Mapping {
  const entries = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/)
  const entry = entries.find((e) => BigInt('0x' + e.slice(0, e.indexOf('-'))) === start)
  if (!entry) throw new Error(`no mapping of ${pid} starts at ${start.toString(16)}`)
  const kib = (name: string) => Number(new RegExp(`^${name}: +([0-9]+) kB$`, 'm').exec(entry)![1])
  return { vmFlags: /^VmFlags: (.*)$/m.exec(entry)![1].trim(), anonHugeKiB: kib('AnonHugePages'), rssKiB: kib('Rss') }
}

for (const kind of ['tree', 'image'] as const) {
  t.test(`${kind === 'tree' ? 'a tree' : 'an image'} restore gives whole stored 2 MiB blocks huge pages, and nothing else`, { skip: thpMode === 'madvise' ? false : `THP mode is ${thpMode}, not madvise` }, async (t) => {
    const dir = workdir(t)
    const target = await launch(t, [bin, dir], { dir, ready: (tg) => /^ready pid=\d+ dense=/m.test(tg.text()) })
    const ready = /dense=0x([0-9a-f]+) refused=0x([0-9a-f]+) sparse=0x([0-9a-f]+)/.exec(target.text())!
    const [dense, refused, sparse] = ready.slice(1, 4).map((h) => BigInt('0x' + h))
    const before = [dense, refused, sparse].map((a) => mappingAt(target.pid, a))
    t.same(before.map((m) => m.anonHugeKiB), [0, 0, 0], 'saved in 4 KiB pages')
    const saved = path.join(dir, 'saved')
    await checkpointSaveKill(mnt, target.pid, saved, { image: true })
    restoreOk(mnt, kind === 'tree' ? saved : `${saved}.image`, target.pid)
    const [d, r, s] = [dense, refused, sparse].map((a) => mappingAt(target.pid, a))
    t.equal(d.anonHugeKiB, REGION >> 10, 'the fully stored region is in huge pages')
    t.equal(d.vmFlags, before[0].vmFlags, 'its VmFlags are as saved (no hg)')
    t.equal(r.anonHugeKiB, 0, 'the region that refused huge pages (nh) is not')
    t.equal(r.vmFlags, before[1].vmFlags, 'and keeps its nh')
    t.equal(s.anonHugeKiB, 0, 'a region with a page missing in every block is not')
    t.equal(s.rssKiB, before[2].rssKiB, 'and holds no more memory than saved')
    const checks = await runChecks(target)
    t.ok(checks.done, 'the fixture finished its checks')
    t.same(checks.failed, [], 'every byte reads as saved')
    t.same(checks.ok, ['dense', 'refused', 'sparse'])
  })
}
