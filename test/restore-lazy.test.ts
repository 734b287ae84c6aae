// Lazy restore (issue 16): `ckptfs restore --lazy PATH` and `lazy` written to
// restore/NAME/done. The fixture (test/fixtures/restore_lazy.c) starts checking its memory the
// moment it runs again, while pages are still coming in: threads reading the same pages,
// read() into a page not yet filled, a fork, madvise(DONTNEED), mprotect, mremap; the test
// reads it with process_vm_readv meanwhile. A damaged saved page kills it, and says so.

import { spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfs, mountFor, restoreLazy } from './lib/mount'
import { checkpointSaveKill, collectChecks, exists, flipByte, launch, waitUntil, workdir, type Checks, type Target } from './lib/restore'
import { buildTarget } from './lib/targets'
import { crcText, pieceCrcs } from '../lib/checksum'

const mnt = mountFor(t)
const lazyBin = buildTarget('restore_lazy')
const MIB = 128
const CHECKS = ['threads', 'read', 'fork', 'dontneed', 'mprotect', 'mremap', 'pattern']

function expectChecks(t: Test, checks: Checks): void {
  t.ok(checks.done, 'the fixture finished its checks')
  t.same(checks.failed, [], 'no check failed')
  for (const name of CHECKS) t.ok(checks.ok.includes(name), `ok ${name}`)
}

/** Launches the fixture with its files, checkpoints it, saves it to DIR/saved (and saved.image), kills it. */
async function savedFixture(t: Test): Promise<{ target: Target; dir: string; saved: string; addr: bigint; len: number }> {
  const dir = workdir(t)
  fs.writeFileSync(path.join(dir, 'readsrc'), 'R'.repeat(100))
  const target = await launch(t, [lazyBin, dir, String(MIB)], { dir, ready: (tg) => /^ready pid=\d+ addr=/m.test(tg.text()) })
  const m = /^ready pid=\d+ addr=(0x[0-9a-f]+) len=(\d+)$/m.exec(target.text())!
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved, { image: true })
  // The fixture starts its checks as soon as it runs again: pages are still missing then.
  fs.writeFileSync(path.join(dir, 'go'), '')
  return { target, dir, saved, addr: BigInt(m[1]), len: Number(m[2]) }
}



/** The fixture's own process_vm_readv check of `len` bytes at `addr` of `pid` (a debugger's view). */
function peek(pid: number, addr: bigint, len: number, page: number): { status: number | null; out: string } {
  const r = spawnSync(lazyBin, ['peek', String(pid), `0x${addr.toString(16)}`, String(len), String(page)], { encoding: 'utf8', timeout: 60_000 })
  return { status: r.status, out: r.stdout.trim() }
}

t.test('ckptfs restore --lazy TREE: the process runs at once; every access sees the saved bytes', async (t) => {
  const { target, saved, addr, len } = await savedFixture(t)
  const run = await restoreLazy(t, [saved, '--mount', mnt])
  t.equal(run.pid, target.pid, 'it prints the saved PID as soon as the process runs')
  // The last quarter of the region, read from outside (the fixture itself reads the others).
  const p = peek(target.pid, addr + BigInt(len / 4) * 3n, len / 4, (len / 4) * 3 / 4096)
  t.equal(p.status, 0, `process_vm_readv by another process reads the saved bytes (${p.out})`)
  const end = await run.ended
  t.equal(end.status, 0, `the command succeeds (${end.stderr.trim()})`)
  t.match(end.stderr, new RegExp(`^ckptfs restore: ${target.pid}: the last page is in, [0-9.]+ s after it started \\([0-9]+ pages copied in`, 'm'), 'and says when the last page is in')
  expectChecks(t, await collectChecks(target))
  t.ok(exists(target.pid), 'the process runs on')
  // The record of first touches, kept with the tree for the next lazy restore.
  const record = path.join(saved, `task-${target.pid}`, 'memory', 'first_touched')
  t.ok(fs.existsSync(record), 'task-PID/memory/first_touched was written')
  t.ok(fs.existsSync(`${record}_crc32c`), 'with its first_touched_crc32c')
  const lines = fs.readFileSync(record, 'utf8').split('\n').filter(Boolean)
  t.ok(lines.every((l) => /^[0-9a-f]+ [0-9]+$/.test(l)), `one piece per line, ADDRESS OFFSET (${lines.length} lines)`)
  t.equal(fs.statSync(record).uid, fs.statSync(saved).uid, 'owned by the owner of the tree')
})

t.test('the record of first touches: the pieces it names are filled first next time', async (t) => {
  const { target, saved, addr } = await savedFixture(t)
  const record = path.join(saved, `task-${target.pid}`, 'memory', 'first_touched')
  const start = fs.readdirSync(path.join(saved, `task-${target.pid}`, 'memory', 'vmas')).find((n) => BigInt(`0x${n.split('-')[0]}`) <= addr && BigInt(`0x${n.split('-')[1]}`) > addr)!.split('-')[0]
  // Three pieces of the fixture's region, a line naming nothing and one that is no record.
  const text = Buffer.from(`${start} ${3 << 20}\n${start} 0\n${start} ${1 << 20}\nabc 12\n1000 0\n`)
  fs.writeFileSync(record, text)
  // Without its check the record is refused (every byte of a tree is checked); with it, used.
  const refused = await restoreLazy(t, [saved, '--mount', mnt]).then(() => 'restored', (err: Error) => err.message)
  t.match(refused, /first_touched_crc32c: first_touched_crc32c is missing/, 'a record without its first_touched_crc32c is refused')
  fs.writeFileSync(`${record}_crc32c`, crcText(pieceCrcs(text)))
  const run = await restoreLazy(t, [saved, '--mount', mnt])
  const end = await run.ended
  t.equal(end.status, 0, `restored (${end.stderr.trim()})`)
  t.match(end.stderr, /, 3 MiB pieces filled first as recorded last time\)/, 'the three recorded pieces came first')
  expectChecks(t, await collectChecks(target))
})

t.test('ckptfs restore --lazy IMAGE, and the saved copy removed while pages are still missing', async (t) => {
  const { target, saved } = await savedFixture(t)
  const image = `${saved}.image`
  const run = await restoreLazy(t, [image, '--mount', mnt])
  t.equal(run.pid, target.pid, 'the saved PID')
  // The fill holds the file open: the process no longer depends on its name.
  fs.rmSync(image)
  fs.rmSync(saved, { recursive: true })
  const end = await run.ended
  t.equal(end.status, 0, `the command succeeds (${end.stderr.trim()})`)
  t.match(end.stderr, /the last page is in/, 'every page came in')
  expectChecks(t, await collectChecks(target))
})

t.test('a damaged saved page: the lazy restore kills the process and names the file', async (t) => {
  const { target, saved } = await savedFixture(t)
  const vmas = path.join(saved, `task-${target.pid}`, 'memory', 'vmas')
  const biggest = fs.readdirSync(vmas).map((name) => path.join(vmas, name, 'pages')).filter((f) => fs.existsSync(f))
    .sort((a, b) => fs.statSync(b).size - fs.statSync(a).size)[0]
  const at = Math.floor(fs.statSync(biggest).size / 2)
  flipByte(biggest, at)
  // The fill may find the damage before the process runs (the restore then fails) or after
  // (it is killed): the command says the same either way.
  const end = ckptfs('restore', '--lazy', saved, '--mount', mnt)
  t.equal(end.status, 1, 'the command fails')
  const where = path.relative(saved, biggest)
  const piece = Math.floor(at / (1 << 20)) * (1 << 20)
  t.match(end.stderr, `ckptfs restore: restore of ${target.pid}: lazy fill: ${where} (${biggest}, bytes ${piece}-${piece + (1 << 20) - 1}): `, `it names the mapping, the file and the bytes (${end.stderr.trim()})`)
  t.match(end.stderr, /: CRC32C [0-9a-f]{8} where [0-9a-f]{8} was saved: the saved copy is damaged \(or changed since the restore began\); the process was killed\n$/, 'and the checksum')
  await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid) || fs.readFileSync(`/proc/${target.pid}/stat`, 'utf8').split(') ')[1][0] === 'Z')
  t.notOk(/^done /m.test(target.text()), 'it never finished its checks on damaged memory')
})

t.test('an eager restore of the same damage is refused before the process runs', async (t) => {
  const { target, saved } = await savedFixture(t)
  const vmas = path.join(saved, `task-${target.pid}`, 'memory', 'vmas')
  const biggest = fs.readdirSync(vmas).map((name) => path.join(vmas, name, 'pages')).filter((f) => fs.existsSync(f))
    .sort((a, b) => fs.statSync(b).size - fs.statSync(a).size)[0]
  const fd = fs.openSync(biggest, 'r+')
  fs.writeSync(fd, Buffer.from([0xee]), 0, 1, 4096 * 7 + 5)
  fs.closeSync(fd)
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 1, `refused (${r.stderr.trim()})`)
  t.notOk(exists(target.pid), 'nothing runs')
})

t.test('`lazy` written to restore/NAME/done: status says when the last page is in', async (t) => {
  const { target, saved } = await savedFixture(t)
  const area = path.join(mnt, 'restore', `lazy-${target.pid}`)
  t.teardown(() => fs.rmSync(area, { recursive: true, force: true }))
  t.equal(spawnSync('cp', ['-a', saved, area]).status, 0, 'copied in')
  fs.writeFileSync(path.join(area, 'done'), 'lazy\n')
  const first = fs.readFileSync(path.join(area, 'status'), 'utf8')
  t.match(first, new RegExp(`^restored ${target.pid}(, filling its pages|, every page in after [0-9.]+ s)\\n$`), `status right after the write: ${first.trim()}`)
  await waitUntil('the last page', () => /every page in after/.test(fs.readFileSync(path.join(area, 'status'), 'utf8')), 60_000)
  t.match(fs.readFileSync(path.join(area, 'status'), 'utf8'), new RegExp(`^restored ${target.pid}, every page in after [0-9.]+ s\\n$`), 'then the last page is in')
  expectChecks(t, await collectChecks(target))
})
