// Restore of whole process trees (issue 17): every process comes back with its PID, its
// parent, its session and group; a zombie as a zombie its parent reaps with the saved status;
// a pipe between processes with its bytes once; MAP_SHARED memory shared again. From a `cp -a`
// copy, from the image, through restore/NAME + done, and lazily (--lazy). All or nothing: a
// saved PID taken leaves nothing of the tree behind, nor does a damaged page a lazy fill finds
// once the tree runs. test/fixtures/tree.c checks itself on SIGUSR1.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfs, ckptfsOk, cliShellWords, mountFor, restoreLazy } from './lib/mount'
import { asUser, attacker, shAs } from './lib/unprivileged'
import { exists, flipByte, launch, reseal, waitUntil, workdir, type Target } from './lib/restore'
import { childrenOf } from '../lib/pstree'
import { buildTarget } from './lib/targets'
import { readImage } from '../lib/image/decode'
import { validateCheckpoint } from '../lib/restore/validate'

const mnt = mountFor(t)
const tree = buildTarget('tree')
// The original tree runs below a subreaper: this machine's PID 1 never reaps, and the
// original zombie must be gone (reaped) before its PID can be restored.
const sleeper = buildTarget('sleeper')
const pidholder = buildTarget('pidholder')

/** The numbers of a log of one number per line. */
const numbersIn = (text: string) => text.split('\n').filter(Boolean).map(Number)

interface TreePids {
  p: number
  a: number
  b: number
  g: number
  z: number
}

const exeOf = (pid: number): string | undefined => {
  try {
    return fs.readlinkSync(`/proc/${pid}/exe`)
  } catch {
    return undefined
  }
}

/** /proc's state, ppid, pgid and sid of `pid`. */
function statOf(pid: number): { state: string; ppid: number; pgid: number; sid: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return { state: f[0], ppid: Number(f[1]), pgid: Number(f[2]), sid: Number(f[3]) }
}

/** Kills, by PID and only while they still run the fixture, the tree's processes at teardown (children first). */
function killTreeAtTeardown(t: Test, pids: TreePids): void {
  t.teardown(() => {
    for (const pid of [pids.g, pids.a, pids.b, pids.p]) {
      if (exeOf(pid) === tree) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          // gone meanwhile
        }
      }
    }
  })
}

/** The page frame number of each page of `pid` from `addr` on (/proc/PID/pagemap; 0n: not present). Needs CAP_SYS_ADMIN. */
function framesOf(pid: number, addr: bigint, pages: number): bigint[] {
  const fd = fs.openSync(`/proc/${pid}/pagemap`, 'r')
  try {
    const entries = Buffer.alloc(pages * 8)
    fs.readSync(fd, entries, 0, entries.length, Number(addr / 4096n) * 8)
    return Array.from({ length: pages }, (_, i) => {
      const e = entries.readBigUInt64LE(i * 8)
      return e >> 63n ? e & ((1n << 55n) - 1n) : 0n
    })
  } finally {
    fs.closeSync(fd)
  }
}

/** The first byte of each page of `pid` from `addr` on, checking the page is all that byte. */
function pageBytes(pid: number, addr: bigint, pages: number): Array<number | string> {
  const fd = fs.openSync(`/proc/${pid}/mem`, 'r')
  try {
    const data = Buffer.alloc(pages * 4096)
    fs.readSync(fd, data, 0, data.length, Number(addr))
    return Array.from({ length: pages }, (_, i) => {
      const page = data.subarray(i * 4096, (i + 1) * 4096)
      return page.every((b) => b === page[0]) ? page[0] : `mixed ${page[0]}`
    })
  } finally {
    fs.closeSync(fd)
  }
}

const COW_PAGES = 32
const cowAddress = (target: Target) => BigInt('0x' + /^cow ([0-9a-f]+)$/m.exec(target.text())![1])

/**
 * test/fixtures/tree.c's copy-on-write pages (as zdtm cow00 checks them): A and B have P's
 * page frames where none of them changed a page since the fork, and each its own content
 * where it did: A's pages 5 and 6, A's dropped page 9 (zero), P's page 12 (the children keep
 * the old bytes).
 */
function checkCow(t: Test, pids: TreePids, addr: bigint, when = 'restored'): void {
  const [p, a, b] = [pids.p, pids.a, pids.b].map((pid) => framesOf(pid, addr, COW_PAGES))
  const changed = new Set([5, 6, 9, 12])
  const same = Array.from({ length: COW_PAGES }, (_, i) => i).filter((i) => !changed.has(i))
  t.ok(same.every((i) => p[i] !== 0n), `${when}: P's unchanged pages are present`)
  t.same(same.filter((i) => a[i] !== p[i]), [], `${when}: A's unchanged pages are P's very page frames (shared copy-on-write)`)
  t.same(same.filter((i) => b[i] !== p[i]), [], `${when}: so are B's`)
  t.ok(a[5] !== p[5] && a[6] !== p[6] && a[12] !== p[12] && b[12] !== p[12], `${when}: the pages changed since the fork are copies of their own`)
  const want = (who: 'p' | 'a' | 'b') => Array.from({ length: COW_PAGES }, (_, i) => (who === 'a' && i === 5 ? 0xa5 : who === 'a' && i === 6 ? 0xa6 : who === 'a' && i === 9 ? 0 : who === 'p' && i === 12 ? 0xcc : i + 1))
  t.same(pageBytes(pids.p, addr, COW_PAGES), want('p'), `${when}: P's pages hold its bytes`)
  t.same(pageBytes(pids.a, addr, COW_PAGES), want('a'), `${when}: A's hold its own (its changes, its dropped page zero)`)
  t.same(pageBytes(pids.b, addr, COW_PAGES), want('b'), `${when}: B's hold the bytes of the fork`)
}

/** Runs of a mapping ("0xOFFSET 0xLENGTH" lines, or the model's) relative to its start. */
interface Runs {
  start: bigint
  stored: Array<{ offset: bigint; length: bigint }>
  inherited?: Array<{ offset: bigint; length: bigint }>
}

/** For each copy-on-write page: 's' stored by the process, 'i' inherited (kept once, by an ancestor), '-' neither. */
function cowKinds(v: Runs, addr: bigint): string {
  const at = (runs: Runs['stored'], page: bigint) => runs.some((r) => v.start + r.offset <= page && page < v.start + r.offset + r.length)
  return Array.from({ length: COW_PAGES }, (_, i) => addr + BigInt(i) * 4096n).map((page) => (at(v.stored, page) ? 's' : at(v.inherited ?? [], page) ? 'i' : '-')).join('')
}

/** The runs of the saved mapping holding `addr` in task-PID/ of a copied tree. */
function savedRuns(saved: string, pid: number, addr: bigint): Runs & { pagesBytes: number } {
  const vmas = path.join(saved, `task-${pid}`, 'memory', 'vmas')
  const name = fs.readdirSync(vmas).find((n) => {
    const [start, end] = n.split('-').map((x) => BigInt('0x' + x))
    return start <= addr && addr < end
  })!
  const lines = (file: string) => (fs.existsSync(path.join(vmas, name, file)) ? fs.readFileSync(path.join(vmas, name, file), 'utf8').split('\n').filter(Boolean) : [])
  const parse = (line: string) => ({ offset: BigInt(line.split(' ')[0]), length: BigInt(line.split(' ')[1]) })
  return { start: BigInt('0x' + name.split('-')[0]), stored: lines('stored_runs').map(parse), inherited: lines('inherited_runs').map(parse), pagesBytes: fs.statSync(path.join(vmas, name, 'pages')).size }
}

// What each process keeps of the copy-on-write pages (test/fixtures/tree.c): P all of them;
// A its pages 5 and 6, the page 12 P changed after the fork, page 9 dropped (or, once
// checkCow has read it, the zero page: stored, never taken for a shared page), the rest as P's;
// B page 12; G (forked by A before A wrote) has P's old pages 5, 6 and 9 of its own and
// holds A's page 12 and the rest as A's (which are P's): each shared page is stored once.
const COW_KINDS = (pids: TreePids, aPage9: 's' | '-') => new Map([
  [pids.p, 's'.repeat(COW_PAGES)],
  [pids.a, `iiiiissii${aPage9}iisiiiiiiiiiiiiiiiiiii`],
  [pids.b, 'iiiiiiiiiiiisiiiiiiiiiiiiiiiiiii'],
  [pids.g, 'iiiiissiisiiiiiiiiiiiiiiiiiiiiii'],
])

/** G (A's child, P's grandchild) shares P's frames where neither A nor P changed a page before G was forked. */
function checkGrandchildCow(t: Test, pids: TreePids, addr: bigint, when: string): void {
  const [p, g] = [pids.p, pids.g].map((pid) => framesOf(pid, addr, COW_PAGES))
  const same = Array.from({ length: COW_PAGES }, (_, i) => i).filter((i) => i !== 12)
  t.same(same.filter((i) => g[i] !== p[i] || g[i] === 0n), [], `${when}: G's pages but 12 are P's very page frames`)
  t.same(pageBytes(pids.g, addr, COW_PAGES), Array.from({ length: COW_PAGES }, (_, i) => i + 1), `${when}: G's pages hold the bytes of its fork`)
}

async function startTree(t: Test): Promise<{ target: Target; pids: TreePids }> {
  const dir = workdir(t, 'ckptfs-treerestore-')
  const target = await launch(t, [sleeper, 'subreaper', tree, 'tree'], { dir, ready: (tg) => /^ready pid=\d+ a=/m.test(tg.text()) })
  const m = /^ready pid=(\d+) a=(\d+) b=(\d+) g=(\d+) z=(\d+)$/m.exec(target.text())!
  const pids = { p: Number(m[1]), a: Number(m[2]), b: Number(m[3]), g: Number(m[4]), z: Number(m[5]) }
  killTreeAtTeardown(t, pids)
  return { target, pids }
}

const allPids = (pids: TreePids) => [pids.p, pids.a, pids.b, pids.g, pids.z]

/** Checkpoints the tree, copies it (and its image) out, kills it and waits until every PID is free. */
async function saveAndKill(target: Target, pids: TreePids, copied?: () => void): Promise<{ saved: string; image: string }> {
  const dir = ckptfsOk('checkpoint', String(pids.p), '--mount', mnt)
  const saved = path.join(target.dir, 'saved')
  execFileSync('cp', ['-a', dir, saved])
  const image = path.join(target.dir, 'saved-image')
  fs.mkdirSync(image)
  execFileSync('cp', ['-a', `${dir}.image`, path.join(image, 'checkpoint.image')])
  copied?.()
  fs.writeFileSync(path.join(dir, 'done'), 'kill\n')
  await waitUntil('every PID of the original tree to be free', () => allPids(pids).every((pid) => !exists(pid)), 15_000)
  return { saved, image }
}

/** The restored tree checks itself (SIGUSR1 to the root): its verdict lines, after what it said before. */
async function verdict(target: Target, pids: TreePids): Promise<string[]> {
  const before = target.text().length
  process.kill(pids.p, 'SIGUSR1')
  await waitUntil('the restored tree to say its verdict', () => /^checked \d+ failures$/m.test(target.text().slice(before)), 15_000)
  return target.text().slice(before).split('\n').filter(Boolean)
}

/** What /proc says of the restored tree, before it runs its own checks. */
function checkLinks(t: Test, pids: TreePids): void {
  t.equal(exeOf(pids.p), tree, 'the root is back')
  const p = statOf(pids.p), a = statOf(pids.a), b = statOf(pids.b), g = statOf(pids.g), z = statOf(pids.z)
  t.same([p.pgid, p.sid], [pids.p, pids.p], 'the root leads its session and group')
  t.same([a.ppid, a.pgid, a.sid], [pids.p, pids.a, pids.p], 'A: child of P, leads its group, in P\'s session')
  t.same([g.ppid, g.pgid, g.sid], [pids.a, pids.a, pids.p], 'G: child of A, in A\'s group')
  t.same([b.ppid, b.pgid, b.sid], [pids.p, pids.b, pids.b], 'B: child of P, leads its own session')
  t.same([z.state, z.ppid], ['Z', pids.p], 'Z is a zombie of P')
}

t.test('a tree restored from a cp -a copy: PIDs, parents, sessions, groups, the zombie, the pipe, the shared page and a parent-death signal', async (t) => {
  const { target, pids } = await startTree(t)
  checkCow(t, pids, cowAddress(target), 'before the checkpoint')
  // Reading every page (cp -a of the tree and of the image) leaves the frozen originals' pages shared.
  checkGrandchildCow(t, pids, cowAddress(target), 'before the checkpoint')
  const { saved } = await saveAndKill(target, pids, () => checkCow(t, pids, cowAddress(target), 'frozen, once the tree and its image are copied'))
  const addr = cowAddress(target)
  for (const [pid, kinds] of COW_KINDS(pids, 's')) {
    const runs = savedRuns(saved, pid, addr)
    t.equal(cowKinds(runs, addr), kinds, `the copy: task-${pid} stores ${kinds.split('s').length - 1} of the ${COW_PAGES} copy-on-write pages, inherits ${kinds.split('i').length - 1}`)
    t.equal(BigInt(runs.pagesBytes), runs.stored.reduce((sum, r) => sum + r.length, 0n), `the copy: task-${pid}'s pages file holds its stored runs only`)
  }
  // A copy whose A no longer holds a run G inherits from it (the last line of A's
  // inherited_runs removed, the tree resealed) is refused before any process is made.
  const edited = path.join(target.dir, 'edited')
  execFileSync('cp', ['-a', saved, edited])
  const aRuns = path.join(edited, `task-${pids.a}`, 'memory', 'vmas', fs.readdirSync(path.join(edited, `task-${pids.a}`, 'memory', 'vmas')).find((n) => BigInt('0x' + n.split('-')[0]) === savedRuns(saved, pids.a, addr).start)!, 'inherited_runs')
  fs.chmodSync(path.dirname(aRuns), 0o700)
  fs.chmodSync(aRuns, 0o600)
  fs.writeFileSync(aRuns, fs.readFileSync(aRuns, 'utf8').split('\n').filter(Boolean).slice(0, -1).map((l) => l + '\n').join(''))
  reseal(edited)
  const refused = ckptfs('restore', edited, '--mount', mnt)
  t.equal(refused.status, 1, 'a tree whose child inherits what its parent does not hold is refused')
  t.match(refused.stderr, new RegExp(`task-${pids.g}/memory/vmas/[0-9a-f]+-[0-9a-f]+/inherited_runs: run \\d+ .*: task-${pids.a} has no content at offset`), `naming G's inherited_runs: ${refused.stderr.trim()}`)
  for (const pid of allPids(pids)) t.notOk(exists(pid), `nothing holds PID ${pid}`)
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 0, `restore exits 0 (${r.stderr.trim()})`)
  t.equal(r.stdout.trim(), String(pids.p), 'it prints the root\'s PID')
  checkLinks(t, pids)
  checkCow(t, pids, cowAddress(target))
  checkGrandchildCow(t, pids, cowAddress(target), 'restored')
  t.equal(fs.readFileSync(path.join(saved, `task-${pids.g}`, 'pdeath_signal'), 'utf8'), '28\n', "G's parent-death signal (SIGWINCH) is saved")
  const said = await verdict(target, pids)
  t.same(said.filter((l) => l.startsWith('FAIL')), [], 'the tree finds nothing wrong with itself (G checks its parent-death signal, zdtm pdeath_sig)')
  t.ok(said.includes('PASS'), 'and says PASS')
})


t.test('a lazy restore of the tree: every process runs at once and checks its own, copy-on-write and shared memory; each keeps its record', async (t) => {
  const { target, pids } = await startTree(t)
  const { saved } = await saveAndKill(target, pids)
  const run = await restoreLazy(t, [saved, '--mount', mnt])
  t.equal(run.pid, pids.p, 'it prints the root\'s PID as soon as the tree runs')
  checkLinks(t, pids)
  // At once, while the fills may still be at work (4 x 3 MiB: often done by then, 1 fault in 3 runs here).
  const said = await verdict(target, pids)
  const end = await run.ended
  t.equal(end.status, 0, `the command succeeds (${end.stderr.trim()})`)
  t.match(end.stderr, new RegExp(`^ckptfs restore: ${pids.p}: the last page of the tree's 4 processes with pages to fill is in, [0-9.]+ s after the first started \\([0-9]+ pages copied in`, 'm'), 'and says when the last page of the last process is in')
  t.same(said.filter((l) => l.startsWith('FAIL')), [], 'the tree finds nothing wrong with itself (its own memory in each process, the shared page)')
  t.ok(said.includes('PASS'), 'and says PASS')
  checkCow(t, pids, cowAddress(target))
  for (const pid of [pids.p, pids.a, pids.b, pids.g]) {
    const record = path.join(saved, `task-${pid}`, 'memory', 'first_touched')
    t.ok(fs.existsSync(record) && fs.existsSync(`${record}_crc32c`), `task-${pid}/memory/first_touched is written, with its check`)
  }
})

t.test('a tree written into restore/NAME and started with done', async (t) => {
  const { target, pids } = await startTree(t)
  const { saved } = await saveAndKill(target, pids)
  const into = path.join(mnt, 'restore', `tree-${pids.p}`)
  execFileSync('cp', ['-a', saved, into])
  t.teardown(() => fs.rmSync(into, { recursive: true, force: true }))
  fs.writeFileSync(path.join(into, 'done'), '1\n')
  await waitUntil('the restore to end', () => !/^(restoring|$)/.test(fs.readFileSync(path.join(into, 'status'), 'utf8').trim()), 20_000)
  t.equal(fs.readFileSync(path.join(into, 'status'), 'utf8').trim(), `restored ${pids.p}`, 'status names the root')
  checkLinks(t, pids)
  const said = await verdict(target, pids)
  t.same(said.filter((l) => l.startsWith('FAIL')), [], 'the tree finds nothing wrong with itself')
  t.ok(said.includes('PASS'), 'and says PASS')
})

t.test('all or nothing: a saved PID taken by another process refuses the tree before any of it is made; once free, the image restores it', async (t) => {
  const { target, pids } = await startTree(t)
  const { saved, image } = await saveAndKill(target, pids)
  const holder = await launch(t, [pidholder, String(pids.g)], { dir: workdir(t, 'ckptfs-treerestore-holder-'), ready: (tg) => /^holding \d+$/m.test(tg.text()) })
  t.teardown(() => {
    if (exeOf(pids.g) === pidholder) process.kill(pids.g, 'SIGKILL')
  })
  t.match(holder.text(), new RegExp(`^holding ${pids.g}$`, 'm'), `a process of ours holds G's PID ${pids.g}`)
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 1, 'the restore fails')
  t.match(r.stderr, new RegExp(`task-${pids.g}: PID ${pids.g} is taken: pidholder \\(pid ${pids.g}\\) is running`), 'naming the task and who holds its PID')
  for (const pid of [pids.p, pids.a, pids.b, pids.z]) t.notOk(exists(pid), `nothing holds PID ${pid}: no process, no zombie`)
  t.equal(exeOf(pids.g), pidholder, 'the holder keeps its PID')
  // The holder gone, the tree's image restores whole.
  await checkImageInheritance(t, image, pids, target)
  process.kill(pids.g, 'SIGKILL')
  await waitUntil(`PID ${pids.g} to be free`, () => !exists(pids.g), 15_000)
  const restored = ckptfs('restore', image, '--mount', mnt)
  t.equal(restored.status, 0, `restored from its image (${restored.stderr.trim()})`)
  t.equal(restored.stdout.trim(), String(pids.p), 'it prints the root\'s PID')
  checkLinks(t, pids)
  checkCow(t, pids, cowAddress(target))
  checkGrandchildCow(t, pids, cowAddress(target), 'restored from the image')
  const said = await verdict(target, pids)
  t.same(said.filter((l) => l.startsWith('FAIL')), [], 'the tree finds nothing wrong with itself')
  t.ok(said.includes('PASS'), 'and says PASS')
})

t.test('all or nothing: a task that fails once every process exists (its cwd is gone) takes the whole tree with it, as does a damaged page a lazy fill finds', async (t) => {
  const { target, pids } = await startTree(t)
  const { saved } = await saveAndKill(target, pids)
  // G is made last and rebuilt last: every other process of the tree exists by then.
  const cwd = path.join(saved, `task-${pids.g}`, 'cwd')
  const savedCwd = fs.readFileSync(cwd)
  fs.chmodSync(path.dirname(cwd), 0o700)
  fs.chmodSync(cwd, 0o600)
  fs.writeFileSync(cwd, `${target.dir}/gone\n`)
  reseal(saved)
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 1, 'the restore fails')
  t.match(r.stderr, new RegExp(`task-${pids.g}: .*chdir ${target.dir}/gone: ENOENT`), 'naming the task and what failed')
  for (const pid of allPids(pids)) t.notOk(exists(pid), `nothing holds PID ${pid}: no process, no zombie`)
  // Its cwd back, but a byte of G's own memory damaged: a lazy restore runs the tree, G's fill
  // finds the damage and every process of the tree is killed.
  fs.writeFileSync(cwd, savedCwd)
  reseal(saved)
  const vmas = path.join(saved, `task-${pids.g}`, 'memory', 'vmas')
  const own = fs.readdirSync(vmas).map((n) => path.join(vmas, n, 'pages')).find((f) => fs.existsSync(f) && fs.statSync(f).size === (3 << 20) + 4 * 4096)!
  t.ok(own, `G's own memory is saved (${own})`)
  const at = (2 << 20) + 100
  flipByte(own, at)
  const lazy = ckptfs('restore', '--lazy', saved, '--mount', mnt)
  t.equal(lazy.status, 1, 'the lazy restore fails')
  t.match(lazy.stderr, `ckptfs restore: restore of ${pids.g}: lazy fill: ${path.relative(saved, own)} (${own}, bytes ${2 << 20}-${(3 << 20) - 1}): CRC32C `, `naming G's mapping, the file and the bytes (${lazy.stderr.trim()})`)
  t.match(lazy.stderr, new RegExp(`was saved: the saved copy is damaged \\(or changed since the restore began\\); every process of the tree of ${pids.p} was killed \\(4 processes\\)\n$`), 'and that the whole tree was killed')
  const dead = (pid: number) => {
    try {
      return statOf(pid).state === 'Z'
    } catch {
      return true // gone
    }
  }
  await waitUntil('every process of the tree to be dead', () => [pids.p, pids.a, pids.b, pids.g].every(dead), 15_000)
  t.notOk(/^checked \d+ failures$/m.test(target.text()), 'none of it ran its checks on damaged memory')
})

t.test('a bash pipeline counting into a file: restored, the count goes on with no gap and no repeat', async (t) => {
  const dir = workdir(t, 'ckptfs-treerestore-pipeline-')
  const script = 'i=0; while :; do echo $i; i=$((i+1)); sleep 0.01; done | cat'
  const launched = await launch(t, [sleeper, 'subreaper', 'bash', '-c', script], { dir, ready: (tg) => tg.text().split('\n').length > 5 })
  const shell = childrenOf(launched.pid).find((pid) => fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'bash')!
  t.ok(shell, `the pipeline's shell is ${shell}`)
  let members: number[] = []
  const below = (pid: number): number[] => childrenOf(pid).flatMap((c) => [c, ...below(c)])
  t.teardown(() => {
    for (const pid of [...below(shell), shell].reverse()) {
      if (['bash', 'cat', 'sleep'].includes(path.basename(exeOf(pid) ?? ''))) process.kill(pid, 'SIGKILL')
    }
  })
  const dirOf = ckptfsOk('checkpoint', String(shell), '--mount', mnt)
  members = fs.readdirSync(dirOf).filter((n) => n.startsWith('task-')).map((n) => Number(n.slice(5)))
  t.ok(members.length >= 3, `the shell, its loop and cat are in the checkpoint (${members.length} processes)`)
  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', dirOf, saved])
  fs.writeFileSync(path.join(dirOf, 'done'), 'kill\n')
  await waitUntil('every PID of the pipeline to be free', () => members.every((pid) => !exists(pid)), 15_000)
  const count = numbersIn(launched.text()).length
  const r = ckptfs('restore', saved, '--mount', mnt)
  t.equal(r.status, 0, `restore exits 0 (${r.stderr.trim()})`)
  t.equal(r.stdout.trim(), String(shell), 'it prints the shell\'s PID')
  await launched.waitFor(new RegExp(`^${count + 20}$`, 'm'), 20_000)
  const numbers = numbersIn(launched.text())
  t.same(numbers.slice(0, count + 20), Array.from({ length: count + 20 }, (_, i) => i), 'the count went on from where it was: no gap, no repeat')
})

// Every description of a tree is opened by the root's stub as the root task (its fsuid,
// fsgid, groups and capabilities), which the owner checks hold to the tree's owner: a user who
// points a description only a child holds at a file they may not read gets a refusal.
t.test('a user\'s tree: a child\'s file edited to /etc/shadow by the user is refused, as the user may not open it', async (t) => {
  const user = attacker()
  const dir = workdir(t, 'ckptfs-treerestore-user-')
  fs.chmodSync(dir, 0o755)
  const mine = path.join(dir, 'mine')
  fs.writeFileSync(mine, 'the user\'s own file\n')
  fs.chownSync(mine, user.uid, user.gid)
  // The log the tree inherits is the user's too, so it is one the user may open again.
  fs.writeFileSync(path.join(dir, 'out'), '')
  fs.chownSync(path.join(dir, 'out'), user.uid, user.gid)
  const launched = await launch(t, [sleeper, 'subreaper', ...asUser(user, ['sh', '-c', `sleep 1000 3<"${mine}" & echo "child=$!"; wait`])], { dir, ready: (tg) => /^child=\d+$/m.test(tg.text()) })
  const shell = childrenOf(launched.pid)[0]
  const child = Number(/^child=(\d+)$/m.exec(launched.text())![1])
  t.teardown(() => {
    for (const pid of [child, shell]) if (['sleep', 'dash', 'bash'].includes(path.basename(exeOf(pid) ?? ''))) process.kill(pid, 'SIGKILL')
  })
  const ck = ckptfsOk('checkpoint', String(shell), '--mount', mnt)
  const given = path.join(dir, 'given')
  execFileSync('cp', ['-a', ck, given])
  execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, given])
  fs.writeFileSync(path.join(ck, 'done'), 'kill\n')
  await waitUntil('the original tree to be gone', () => !exists(shell) && !exists(child), 15_000)
  const objref = fs.readFileSync(path.join(given, `task-${child}`, 'fds', '3', 'fd'), 'utf8').trim()
  const shellRefs = fs.readdirSync(path.join(given, `task-${shell}`, 'fds')).map((fd) => fs.readFileSync(path.join(given, `task-${shell}`, 'fds', fd, 'fd'), 'utf8').trim())
  t.notOk(shellRefs.includes(objref), `files/${objref} (the child's fd 3) is held by the child alone`)
  shAs(user, `chmod -R u+w '${given}' && echo /etc/shadow > '${given}/files/${objref}/path' && ${cliShellWords} seal '${given}' >/dev/null`)
  const r = ckptfs('restore', given, '--no-mount')
  t.equal(r.status, 1, 'the restore is refused')
  t.match(r.stderr, new RegExp(`files/${objref}: open /etc/shadow: Permission denied`), `naming the description and the refusal: ${r.stderr.trim()}`)
  for (const pid of [shell, child]) t.notOk(exists(pid), `nothing holds PID ${pid}`)
})

/** What the tree's image holds of its copy-on-write pages, and the validator holding each inherited run to its parent's area and content. */
async function checkImageInheritance(t: Test, image: string, pids: TreePids, target: Awaited<ReturnType<typeof startTree>>['target']): Promise<void> {
  const addr = cowAddress(target)
  const loaded = await readImage(path.join(image, 'checkpoint.image'))
  for (const task of [loaded, ...loaded.others]) {
    const v = task.vmas.find((x) => x.start <= addr && addr < x.end)!
    t.equal(cowKinds(v, addr), COW_KINDS(pids, '-').get(task.pid), `the image: task-${task.pid} stores its own copy-on-write pages, its inherited ones are its parent's`)
    t.equal(BigInt(v.pages.size), v.stored.reduce((sum, r) => sum + r.length, 0n), `the image: task-${task.pid}'s page chunks hold its stored runs only`)
  }
  // The validator (the same for trees and images) holds each inherited run to its parent's
  // same area and content: a changed model is refused, naming the file.
  await validateCheckpoint(loaded)
  const cowOf = (pid: number) => [loaded, ...loaded.others].find((x) => x.pid === pid)!.vmas.find((x) => x.start <= addr && addr < x.end)!
  const file = (pid: number) => `task-${pid}/memory/vmas/${cowOf(pid).start.toString(16).padStart(8, '0')}-${cowOf(pid).end.toString(16).padStart(8, '0')}/inherited_runs`
  const refused = async (what: string, change: () => () => void, why: RegExp) => {
    const undo = change()
    try {
      await t.rejects(validateCheckpoint(loaded), { message: why }, what)
    } finally {
      undo()
    }
  }
  const quote = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  await refused('A no longer holds the pages G inherits from it', () => {
    const saved = cowOf(pids.a).inherited
    cowOf(pids.a).inherited = undefined
    return () => { cowOf(pids.a).inherited = saved }
  }, new RegExp(`^${quote(file(pids.g))}: run 1 \\(.*\\): task-${pids.a} has no content at offset 0x[0-9a-f]+ of .* \\(neither stored nor inherited\\)$`))
  await refused('P\'s area is wiped on fork (wf): nothing to inherit', () => {
    const flags = cowOf(pids.p).vmFlags
    cowOf(pids.p).vmFlags += ' wf'
    return () => { cowOf(pids.p).vmFlags = flags }
  }, new RegExp(`^${quote(file(pids.a))}: task-${pids.p} has no anonymous mapping .* that fork passes on`))
  await refused('B\'s own area is not passed on by fork (dc)', () => {
    const flags = cowOf(pids.b).vmFlags
    cowOf(pids.b).vmFlags += ' dc'
    return () => { cowOf(pids.b).vmFlags = flags }
  }, new RegExp(`^${quote(file(pids.b))}: this anonymous mapping \\(perms rw-p, VmFlags .*\\) cannot hold its parent's pages`))
  await refused('a page B stores and inherits at once', () => {
    const runs = cowOf(pids.b).inherited!
    cowOf(pids.b).inherited = [...runs, ...cowOf(pids.b).stored].sort((x, y) => (x.offset < y.offset ? -1 : 1))
    return () => { cowOf(pids.b).inherited = runs }
  }, new RegExp(`^${quote(file(pids.b))}: run \\d+ .* overlaps`))
  await refused('G inheriting beyond its mapping', () => {
    const runs = cowOf(pids.g).inherited!
    const size = cowOf(pids.g).end - cowOf(pids.g).start
    cowOf(pids.g).inherited = [...runs, { offset: size, length: 4096n }]
    return () => { cowOf(pids.g).inherited = runs }
  }, new RegExp(`^${quote(file(pids.g))}: run \\d+ .* ends beyond the mapping`))
  await validateCheckpoint(loaded)
}
