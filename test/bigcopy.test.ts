// Big inputs never crash the server: a copy-mode checkpoint of a process over node's 4 GiB
// Buffer limit (held in several buffers), and the addon's refusal of one buffer over its
// limit (which aborted node with a double free before).

import { execFileSync, spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfs, ckptfsOk, mountFor, userNode } from './lib/mount'
import { checkpointSaveKill, exists, launch, restoreCli, workdir } from './lib/restore'
import { buildTarget, startTarget, threadState } from './lib/targets'

const addonPath = path.join(__dirname, '..', 'addon', 'build', 'Release', 'ckptfs.node')
const GiB = 1024 * 1024 * 1024
const PAGE = 4096

/** Runs `script` in a node of its own (an abort there must not take the test runner with it). */
function inChild(script: string): { status: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string } {
  const [command, args] = userNode('-e', `const addon = require(${JSON.stringify(addonPath)});\n${script}`)
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 60_000 })
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr }
}

t.test('allocTouched over its limit is refused with ERANGE, node lives on', async (t) => {
  const r = inChild(`addon.allocTouched(${Math.ceil(4.08 * GiB)}).then(() => console.log('made'), (e) => console.log('refused', e.code, e.message))`)
  t.equal(r.signal, null, `no abort (stderr: ${r.stderr.slice(0, 300)})`)
  t.equal(r.status, 0)
  t.match(r.stdout, /^refused ERANGE allocTouched\(4380866642\): a buffer holds 1 to 1073741824 bytes/)
})

t.test('readMemory over its limit is refused, not allocated', async (t) => {
  const r = inChild(`addon.readMemory(process.pid, 0n, ${5 * GiB}).then(() => console.log('read'), (e) => console.log('refused', e.code, e.message))`)
  t.equal(r.signal, null)
  t.match(r.stdout, /^refused ERANGE readMemory\(pid \d+, 0x0, 5368709120\): at most 1073741824 bytes at once/)
})

/**
 * A --copy checkpoint of a bigmem of `mib` MiB: the pages file holds every page, and the
 * pages listed (indexes) each hold their own index; the server answers after it.
 */
async function copyCheckpointKeepsEveryPage(t: Test, mib: number, pagesToCheck: number[]): Promise<void> {
  const mnt = mountFor(t)
  const target = await startTarget(buildTarget('bigmem'), [String(mib)], /start=0x[0-9a-f]+/)
  t.teardown(() => target.kill())
  const start = BigInt((await target.waitFor(/start=(0x[0-9a-f]+)/))[1])
  await target.waitFor(/^filled$/, 300_000)
  const end = start + BigInt(mib) * 1024n * 1024n
  const dir = ckptfsOk('checkpoint', String(target.pid), '--copy', '--mount', mnt)
  t.equal(fs.readFileSync(path.join(dir, 'status'), 'utf8'), 'running\n')
  const pages = path.join(dir, `task-${target.pid}`, 'memory', 'vmas', `${start.toString(16)}-${end.toString(16)}`, 'pages')
  t.equal(fs.statSync(pages).size, mib * 1024 * 1024, 'every page stored')
  const fd = fs.openSync(pages, 'r')
  try {
    for (const page of pagesToCheck) {
      const word = Buffer.alloc(8)
      t.equal(fs.readSync(fd, word, 0, 8, page * PAGE), 8)
      t.equal(word.readBigUInt64LE(0), BigInt(page), `page ${page}`)
    }
  } finally {
    fs.closeSync(fd)
  }
  fs.writeFileSync(path.join(dir, 'done'), 'kill')
  t.ok(fs.readdirSync(mnt).includes('checkpoint'), 'the server still answers')
}

const PIECE_PAGES = GiB / PAGE

t.test('checkpoint --copy of more than one 1 GiB buffer: pages on both sides of the edge', async (t) => {
  const mib = 1100
  await copyCheckpointKeepsEveryPage(t, mib, [0, PIECE_PAGES - 1, PIECE_PAGES, (mib * 1024 * 1024) / PAGE - 1])
})

// Over 4 GiB (node's Buffer limit, where the server aborted before): 8.5 GiB of memory, and
// 38 s at load 5 but 139 s at load 13 on this shared machine, so only when asked for
// (CKPTFS_BIG_TESTS=1).
t.test('checkpoint --copy of a process over 4 GiB: every page is copied, the server lives on', { skip: process.env.CKPTFS_BIG_TESTS !== '1' && 'set CKPTFS_BIG_TESTS=1 (8.5 GiB, 38-139 s)' }, async (t) => {
  const mib = 4200 // over node's 4 GiB Buffer limit with the 2% margin, and over 4 pieces of 1 GiB
  await copyCheckpointKeepsEveryPage(t, mib, [0, PIECE_PAGES - 1, PIECE_PAGES, 3 * PIECE_PAGES + 7, 4 * PIECE_PAGES, (mib * 1024 * 1024) / PAGE - 1])
})

// A saved tree whose pipe data is a 3 GiB sparse file (cheap on disk): node's readFile refused
// it with a message naming no file before, and a smaller one was read whole into memory. Now
// it is refused by name, before anything is read, by the CLI and by the server alike.
t.test('a huge queue file in a saved tree is refused by name, nothing read', async (t) => {
  const mnt = mountFor(t)
  const dir = workdir(t)
  const target = await launch(t, [buildTarget('restore_small', ['-static']), dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const filesDir = path.join(saved, 'files')
  const pipe = fs.readdirSync(filesDir).find((o) => fs.readFileSync(path.join(filesDir, o, 'fd_type'), 'utf8') === 'pipe\n')!
  t.ok(pipe, 'the saved tree has a pipe')
  fs.truncateSync(path.join(filesDir, pipe, 'buffered'), 3 * GiB)
  const says = new RegExp(`files/${pipe}/buffered: ${3 * GiB} bytes, more than the 268435456 a queue may hold`)
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 1)
  t.match(r.stderr, says)
  t.notOk(exists(target.pid), 'nothing restored')
  // The server's own restore from restore/: the tree copied in (sparse), then done written.
  const area = path.join(mnt, 'restore', 'big')
  execFileSync('cp', ['-a', '--sparse=always', saved, area], { timeout: 120_000 })
  t.teardown(() => fs.rmSync(area, { recursive: true, force: true }))
  t.throws(() => fs.writeFileSync(path.join(area, 'done'), '1'), 'the write to done fails')
  t.match(fs.readFileSync(path.join(area, 'status'), 'utf8'), says)
  t.notOk(exists(target.pid), 'nothing restored')
  t.ok(fs.readdirSync(mnt).includes('checkpoint'), 'the server still answers')
})

// A copy needing more memory than the machine has: before, allocTouched touched it all and
// the OOM killer came (it may pick the server). Now refused before anything is frozen. The
// target stores 64 GiB (a private mapping of a sparse memfd stores every page the file
// covers) and uses none.
t.test('checkpoint --copy needing more than MemAvailable is refused before the freeze', async (t) => {
  const gib = 64
  const total = Number(/^MemTotal:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024
  t.ok(gib * GiB > total, `the copy would need more than the machine's ${total} bytes`)
  const mnt = mountFor(t)
  const target = await startTarget(buildTarget('hugememfd'), [String(gib), 'map'])
  t.teardown(() => target.kill())
  const r = ckptfs('checkpoint', String(target.pid), '--copy', '--mount', mnt)
  t.equal(r.status, 1)
  t.match(r.stderr, new RegExp(`checkpoint of process ${target.pid} failed: no memory for its copy: \\d+ bytes needed, \\d+ available \\(MemAvailable in /proc/meminfo\\)`))
  t.equal(threadState(target.pid), 'S', 'the target runs on (sleeping, not stopped)')
  t.ok(fs.readdirSync(mnt).includes('checkpoint'), 'the server still answers')
})

// An unlinked file's contents are copied whole in copy mode: a sparse 64 GiB memfd held open
// made one Buffer of 64 GiB before (refused by node with a message naming no file; a smaller
// one over 4 GiB the same, one under it held whole). Now copied in pieces of at most 1 GiB,
// and one larger than the memory available is refused by name.
t.test('checkpoint --copy of an unlinked file larger than MemAvailable is refused by name', async (t) => {
  const mnt = mountFor(t)
  const target = await startTarget(buildTarget('hugememfd'), ['64', 'fd'])
  t.teardown(() => target.kill())
  const r = ckptfs('checkpoint', String(target.pid), '--copy', '--mount', mnt)
  t.equal(r.status, 1)
  t.match(r.stderr, new RegExp(`checkpoint of process ${target.pid} failed: files/\\d+/contents: ${64 * GiB} bytes, more than the \\d+ available for its copy`))
  t.equal(threadState(target.pid), 'S', 'the target runs on (sleeping, not stopped)')
  t.ok(fs.readdirSync(mnt).includes('checkpoint'), 'the server still answers')
})
