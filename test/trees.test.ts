// Process trees (issue 17): a checkpoint of PID holds PID and every descendant, frozen
// together, one task-PID/ each (ppid, pgid, sid; zombies with their exit status), with one
// files/ in which a description several processes share is one OBJREF. status, problems,
// check and done speak of and act on the whole tree. test/fixtures/tree.c builds the tree.

import { execFileSync, spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { cliShellWords, ckptfs, ckptfsOk, mountFor, userEnv } from './lib/mount'
import { exists, launch, reseal, waitUntil, workdir } from './lib/restore'
import { asUser, attacker, runAs } from './lib/unprivileged'
import { buildTarget, repo, sleep, startTarget, threadState, type Target } from './lib/targets'
import { childrenOf } from '../lib/pstree'
import { readImage } from '../lib/image/decode'
import { lifeState } from '../lib/lifecycle'

const poolScript = path.join(repo, 'test', 'fixtures', 'pool.py')
const mnt = mountFor(t)
const tree = buildTarget('tree')
const cpu = buildTarget('restore_cpu')
const sleeperBin = buildTarget('sleeper')

const read = (file: string) => fs.readFileSync(file, 'utf8').trim()

interface TreePids {
  p: number
  a: number
  b: number
  g: number
  z: number
}

/** Every descendant of `pid` (from /proc), depth first. */
function descendants(pid: number): number[] {
  return childrenOf(pid).flatMap((child) => [child, ...descendants(child)])
}

/** Kills the listed processes at teardown, by PID, children first, if they still run the fixture. */
function killAtTeardown(t: Test, pids: () => number[], exe: string): void {
  t.teardown(() => {
    for (const pid of pids().reverse()) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/exe`) === exe) process.kill(pid, 'SIGKILL')
      } catch {
        // gone
      }
    }
  })
}

async function startTree(t: Test): Promise<{ target: Target; pids: TreePids }> {
  const target = await startTarget(tree, ['tree'], /^ready pid=/)
  const m = /^ready pid=(\d+) a=(\d+) b=(\d+) g=(\d+) z=(\d+)$/.exec(target.lines.find((l) => l.startsWith('ready'))!)!
  const pids = { p: Number(m[1]), a: Number(m[2]), b: Number(m[3]), g: Number(m[4]), z: Number(m[5]) }
  const all = [pids.p, pids.a, pids.g, pids.b]
  killAtTeardown(t, () => all, tree)
  t.teardown(() => target.kill())
  return { target, pids }
}

/** Writes `text` to done at teardown if the checkpoint is still open (never leaves a tree frozen). */
function endAtTeardown(t: Test, dir: string): void {
  t.teardown(() => {
    try {
      if (fs.existsSync(path.join(dir, 'done'))) fs.writeFileSync(path.join(dir, 'done'), 'resume')
    } catch {
      // ended already
    }
  })
}

/** The OBJREF of each fd of task-PID/, by fd number. */
function fdRefs(dir: string, pid: number): Map<number, string> {
  const fds = path.join(dir, `task-${pid}`, 'fds')
  return new Map(fs.readdirSync(fds).map((fd) => [Number(fd), read(path.join(fds, fd, 'fd'))]))
}

/** /proc's ppid, pgid and sid of `pid`. */
function idsOf(pid: number): { ppid: number; pgid: number; sid: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return { ppid: Number(f[1]), pgid: Number(f[2]), sid: Number(f[3]) }
}

t.test('a checkpoint holds the whole tree: every process, its links, the zombie, shared files', async (t) => {
  const { target, pids } = await startTree(t)
  const r = ckptfs('checkpoint', String(pids.p), '--mount', mnt, '--inspect')
  t.equal(r.status, 0, `checkpoint --inspect succeeds (${r.stderr.trim()})`)
  const dir = r.stdout.trim()
  endAtTeardown(t, dir)
  const names = fs.readdirSync(dir).filter((n) => n.startsWith('task-')).sort()
  t.same(names, [pids.p, pids.a, pids.b, pids.g, pids.z].map((p) => `task-${p}`).sort(), 'one task-PID/ per process of the tree, the zombie included')
  t.equal(read(path.join(dir, 'pid')), String(pids.p), 'pid names the root')

  for (const pid of [pids.p, pids.a, pids.b, pids.g, pids.z]) {
    const ids = idsOf(pid)
    const task = path.join(dir, `task-${pid}`)
    t.same({ ppid: Number(read(path.join(task, 'ppid'))), pgid: Number(read(path.join(task, 'pgid'))), sid: Number(read(path.join(task, 'sid'))) }, ids, `task-${pid}: ppid, pgid and sid as /proc shows them`)
  }
  t.same([idsOf(pids.a).pgid, idsOf(pids.b).sid, idsOf(pids.g).ppid], [pids.a, pids.b, pids.a], 'the fixture built its groups, sessions and grandchild')
  const zombie = path.join(dir, `task-${pids.z}`)
  t.equal(read(path.join(zombie, 'zombie')), '1', 'the zombie says so')
  t.equal(read(path.join(zombie, 'exit_status')), String(7 << 8), 'with the status its parent will get from waitpid (exit 7)')
  t.notOk(fs.existsSync(path.join(zombie, 'fds')), 'a zombie has no fds to show')

  // Every live task is stopped: nothing of the tree runs while it is read.
  for (const pid of [pids.p, pids.a, pids.b, pids.g]) t.equal(threadState(pid), 't', `process ${pid} is frozen`)

  // Children inherited every fd they hold over fork and opened none: an fd of a child is the
  // same description as the same fd number in its parent, so it shows the same OBJREF.
  const refs = new Map([pids.p, pids.a, pids.b, pids.g].map((pid) => [pid, fdRefs(dir, pid)]))
  const parentOf = new Map([[pids.a, pids.p], [pids.b, pids.p], [pids.g, pids.a]])
  let compared = 0
  for (const [child, parent] of parentOf) {
    for (const [fd, ref] of refs.get(child)!) {
      const theirs = refs.get(parent)!.get(fd)
      if (theirs === undefined) continue
      t.equal(ref, theirs, `task-${child} fd ${fd} shares task-${parent}'s description`)
      compared++
    }
  }
  t.ok(compared >= 9, `${compared} inherited fds compared`)
  const all = new Set([...refs.values()].flatMap((m) => [...m.values()]))
  t.same(fs.readdirSync(path.join(dir, 'files')).sort(), [...all].sort(), 'files/ holds each description of the tree once, and no other')
  // The pipe from P to B: its write end (in P and A) and its read end (in B and A) are two
  // descriptions of one pipe, holding "abc" once.
  const abc = [...all].filter((ref) => {
    const buffered = path.join(dir, 'files', ref, 'buffered')
    return fs.existsSync(buffered) && fs.readFileSync(buffered, 'utf8') === 'abc'
  })
  t.equal(abc.length, 2, 'the pipe holding "abc" has two descriptions (its two ends)')
  t.equal(new Set(abc.map((ref) => read(path.join(dir, 'files', ref, 'pipe_id')))).size, 1, 'of one pipe')
  t.ok([...refs.get(pids.b)!.values()].some((ref) => abc.includes(ref)), 'B holds one end')
  t.notOk([...refs.get(pids.p)!.values()].filter((ref) => abc.includes(ref)).some((ref) => [...refs.get(pids.b)!.values()].includes(ref)), 'P and B hold different ends')

  // A tree comes back whole (test/trees-restore.test.ts): nothing keeps this one from it.
  t.equal(fs.readFileSync(path.join(dir, 'problems'), 'utf8'), '', 'problems is empty')
  t.equal(read(path.join(dir, 'status')), 'frozen', 'status says frozen')

  // resume releases every process; the tree still works (the fixture's own check).
  fs.writeFileSync(path.join(dir, 'done'), 'resume')
  for (const pid of [pids.p, pids.a, pids.b, pids.g]) t.not(threadState(pid), 't', `process ${pid} runs again`)
  process.kill(pids.p, 'SIGUSR1')
  await target.waitFor(/^checked \d+ failures$/, 30_000)
  t.same(target.lines.filter((l) => /^(FAIL|PASS)/.test(l)), ['PASS'], 'the tree checks itself: PASS')
})

t.test('kill ends every process of the tree', async (t) => {
  const { pids } = await startTree(t)
  const dir = ckptfs('checkpoint', String(pids.p), '--mount', mnt, '--inspect').stdout.trim()
  endAtTeardown(t, dir)
  const plain = ckptfs('checkpoint', String(pids.p), '--mount', mnt, '--inspect')
  t.equal(plain.status, 1, 'a second checkpoint of the frozen root is refused')
  const ofChild = ckptfs('checkpoint', String(pids.g), '--mount', mnt, '--inspect')
  t.equal(ofChild.status, 1, 'so is one of a process of the frozen tree')
  t.match(ofChild.stderr, new RegExp(`process ${pids.g} is frozen by ${path.basename(dir)} already \\(in the tree of ${pids.p}\\)`), 'naming the checkpoint that holds it')
  fs.writeFileSync(path.join(dir, 'done'), 'kill')
  for (const pid of [pids.p, pids.a, pids.b, pids.g]) t.not(lifeState(pid), 'alive', `process ${pid} is dead once done returns`)
})

t.test('a checkpoint made while the root forks catches every child and grandchild', async (t) => {
  const target = await startTarget(tree, ['spawn'], /^ready pid=/)
  const root = target.pid
  let known: number[] = []
  killAtTeardown(t, () => [root, ...known], tree)
  t.teardown(() => target.kill())
  const dir = ckptfsOk('checkpoint', String(root), '--mount', mnt, '--inspect')
  endAtTeardown(t, dir)
  known = descendants(root)
  // While frozen, /proc's tree and the checkpoint's agree, and every process is stopped.
  const tasks = fs.readdirSync(dir).filter((n) => n.startsWith('task-')).map((n) => Number(n.slice(5))).sort((a, b) => a - b)
  t.same(tasks, [root, ...known].sort((a, b) => a - b), `the checkpoint holds the ${known.length + 1} processes /proc shows below and at the root`)
  const running = [root, ...known].filter((pid) => threadState(pid) !== 't')
  t.same(running, [], 'none of them runs')
  await sleep(50)
  t.same(descendants(root).sort((a, b) => a - b), [...known].sort((a, b) => a - b), 'and no process was added while frozen')
  const check = ckptfs('check', String(root))
  t.equal(check.status, 1, 'check of a frozen tree fails (it is frozen by the checkpoint)')
  fs.writeFileSync(path.join(dir, 'done'), 'kill!')
  t.same([root, ...known].filter((pid) => lifeState(pid) === 'alive'), [], 'kill! ended every one')
})

t.test('children that opened the same file each on their own hold descriptions of their own; the inherited one stays one', async (t) => {
  // fd 3 is the shell's, inherited by every subshell; each subshell opens /dev/null as fd 4
  // itself: all those look alike to /proc (mount, inode, flags, offset, path), so only kcmp
  // tells them apart, across 20 processes.
  const target = await startTarget('bash', ['-c', 'exec 3</dev/null; for i in $(seq 20); do (exec 4</dev/null; echo "child $BASHPID"; exec sleep 100000) & done; echo "ready pid=$$"; wait'], /^ready pid=/)
  const root = target.pid
  const children = await (async () => {
    for (let i = 0; i < 200 && target.lines.filter((l) => l.startsWith('child ')).length < 20; i++) await sleep(50)
    return target.lines.filter((l) => l.startsWith('child ')).map((l) => Number(l.slice(6)))
  })()
  // The subshells exec'd sleep; the root is still the shell.
  killAtTeardown(t, () => children, fs.realpathSync('/usr/bin/sleep'))
  killAtTeardown(t, () => [root], fs.readlinkSync(`/proc/${root}/exe`))
  t.teardown(() => target.kill())
  t.equal(children.length, 20, 'twenty subshells')
  // Each has fd 4 open by now (it printed after the open).
  const dir = ckptfsOk('checkpoint', String(root), '--mount', mnt, '--inspect')
  endAtTeardown(t, dir)
  const refs = children.map((pid) => fdRefs(dir, pid))
  const own = refs.map((m) => m.get(4))
  t.equal(new Set(own).size, 20, 'twenty fds 4, twenty descriptions')
  const inherited = new Set(refs.map((m) => m.get(3)))
  t.same([...inherited], [fdRefs(dir, root).get(3)], 'every fd 3 is the shell\'s fd 3')
  t.notOk(own.some((ref) => inherited.has(ref)), 'and none of the fds 4 is it')
  fs.writeFileSync(path.join(dir, 'done'), 'resume')
})

t.test('check speaks of every process of the tree', async (t) => {
  const { pids } = await startTree(t)
  const r = ckptfs('check', String(pids.p))
  t.equal(r.status, 0, `check runs (${r.stderr.trim()})`)
  for (const pid of [pids.p, pids.a, pids.b, pids.g]) t.match(r.stdout, new RegExp(`^task ${pid}: fd 1: pipe pipe:\\[\\d+\\]: ok$`, 'm'), `task ${pid}'s fds are listed`)
  t.match(r.stdout, new RegExp(`^task ${pids.z}: zombie \\(child of ${pids.p}, exit status 1792\\)$`, 'm'), 'the zombie is listed')
  t.notMatch(r.stdout, /not checkpointable/, 'and nothing keeps the tree from coming back')
  for (const pid of [pids.p, pids.a, pids.b, pids.g]) t.not(threadState(pid), 't', `process ${pid} runs on after check`)
})

// Moved here from test/restore.test.ts: a process blocked in wait4 for its child used to be
// checkpointed alone and came back without the child (its wait failed with ECHILD).
t.test('a process waiting for its child: the child is in the checkpoint, and a restore brings both back, the child still its child', async (t) => {
  const dir = workdir(t)
  // Below a subreaper: this machine's PID 1 never reaps, and the killed child's PID must be free.
  const launched = await launch(t, [sleeperBin, 'subreaper', cpu, dir, 'wait'], { dir, ready: (tg) => /^child \d+$/m.test(tg.text()) })
  const target = { pid: Number(/^ready pid=(\d+)$/m.exec(launched.text())![1]) }
  const child = Number(/^child (\d+)$/m.exec(launched.text())![1])
  killAtTeardown(t, () => [target.pid, child], cpu)
  const ckpt = ckptfs('checkpoint', String(target.pid), '--mount', mnt)
  t.equal(ckpt.status, 0, `the checkpoint succeeds (${ckpt.stderr.trim()})`)
  const ck = ckpt.stdout.trim()
  endAtTeardown(t, ck)
  t.ok(fs.existsSync(path.join(ck, `task-${child}`, 'threads')), 'the child is in it')
  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', ck, saved])
  fs.writeFileSync(path.join(ck, 'done'), 'kill')
  t.not(lifeState(target.pid), 'alive', 'the parent is dead')
  t.not(lifeState(child), 'alive', 'the child is dead')
  await waitUntil(`PIDs ${target.pid} and ${child} to be gone`, () => !exists(target.pid) && !exists(child))
  const restored = ckptfs('restore', saved, '--mount', mnt)
  t.equal(restored.status, 0, `the restore succeeds (${restored.stderr.trim()})`)
  t.equal(restored.stdout.trim(), String(target.pid), 'and prints the parent\'s PID')
  t.equal(idsOf(child).ppid, target.pid, 'the child is the parent\'s child again')
})

t.test('--copy of the asking shell: the tree leaves out the ckptfs command that asks, and says so', async (t) => {
  const script = `sleep 30 & echo "sleep=$!"; echo "shell=$$"; ${cliShellWords} checkpoint $$ --mount "$MNT" --copy --inspect; kill $!`
  const r = spawnSync('bash', ['-c', script], { encoding: 'utf8', timeout: 60_000, env: { ...userEnv, MNT: mnt } })
  t.equal(r.status, 0, `the shell did not hang (${r.stderr.trim()})`)
  const shell = Number(/^shell=(\d+)$/m.exec(r.stdout)![1])
  const sleeper = Number(/^sleep=(\d+)$/m.exec(r.stdout)![1])
  const dir = /^(\/.*checkpoint-\d+)$/m.exec(r.stdout)![1]
  endAtTeardown(t, dir)
  const tasks = fs.readdirSync(dir).filter((n) => n.startsWith('task-'))
  t.same(tasks.sort(), [`task-${shell}`, `task-${sleeper}`].sort(), 'the shell and its sleep are in it; the command is not')
  t.match(fs.readFileSync(path.join(dir, 'problems'), 'utf8'), new RegExp(`^process \\d+: a descendant of ${shell} left out of the checkpoint, with its own descendants: the process asking for the checkpoint$`, 'm'), 'problems say who was left out')
})

t.test('the image holds the whole tree', async (t) => {
  const { pids } = await startTree(t)
  const dir = ckptfsOk('checkpoint', String(pids.p), '--mount', mnt, '--inspect')
  endAtTeardown(t, dir)
  const work = workdir(t)
  const image = path.join(work, 'tree.image')
  execFileSync('cp', [`${dir}.image`, image])
  execFileSync('cp', ['-a', dir, path.join(work, 'saved')])
  const loaded = await readImage(image)
  t.same(loaded.header.formatVersion, { major: 1, minor: 7 }, 'format 1.7')
  t.equal(loaded.pid, pids.p, 'the root is the header\'s process')
  t.same(loaded.others.map((o) => o.pid), [pids.a, pids.g, pids.b], 'the other processes, parents first')
  t.same(loaded.others.map((o) => o.process.ppid), [pids.p, pids.a, pids.p], 'with their parents')
  t.same(loaded.zombies.map((z) => [z.pid, z.ppid, z.exitStatus]), [[pids.z, pids.p, 7 << 8]], 'and the zombie with its status')
  const saved = fdRefs(path.join(work, 'saved'), pids.b)
  t.same(new Map(loaded.others.find((o) => o.pid === pids.b)!.fds.map((fd) => [fd.fd, String(fd.objref)])), saved, "B's fds name the same OBJREFs in the image as in the tree")
  t.equal(loaded.fileTable.files.length, fs.readdirSync(path.join(dir, 'files')).length, "the image's files are the tree's files/")
  fs.writeFileSync(path.join(dir, 'done'), 'kill!')

  for (const input of [image, path.join(work, 'saved')]) {
    const shown = ckptfsOk('show', input)
    t.match(shown, /^process tree: 5 processes \(the root above, 3 more, 1 zombies\)$/m, `show ${path.basename(input)} tells of the tree`)
    t.match(shown, new RegExp(`^\\s*${pids.g}\\s+${pids.a}\\s+${pids.a}\\s+${pids.p}\\s+1\\s`, 'm'), 'with each process\'s ppid, pgid, sid and threads')
    t.match(shown, new RegExp(`^\\s*${pids.z}\\s+${pids.p}\\s.*zombie.*\\(exit status 1792\\)$`, 'm'), 'and the zombie')
  }
  // Restores of the image and of the saved tree: test/trees-restore.test.ts.
})

t.test('the validator checks the links of a saved tree, naming the file', async (t) => {
  const { pids } = await startTree(t)
  const dir = ckptfsOk('checkpoint', String(pids.p), '--mount', mnt, '--inspect')
  endAtTeardown(t, dir)
  const work = workdir(t)
  const original = path.join(work, 'original')
  execFileSync('cp', ['-a', dir, original])
  fs.writeFileSync(path.join(dir, 'done'), 'resume')
  const unrelated = 1
  const cases = [
    { file: `task-${pids.g}/ppid`, value: String(unrelated), says: new RegExp(`task-${pids.g}/ppid: ${unrelated} is not a process of the tree listed before it`) },
    // A zombie whose parent is another process of the tree passes the validator; this one is
    // in P's session, which its new parent B (a session leader) cannot give it.
    { file: `task-${pids.z}/ppid`, value: String(pids.b), says: new RegExp(`task-${pids.z}/sid: session ${pids.p} is not its parent's \\(${pids.b}\\) and it does not lead it`) },
    { file: `task-${pids.p}/ppid`, value: String(pids.a), says: new RegExp(`task-${pids.p}/ppid: ${pids.a}: the root's parent is a process of its own tree`) },
    { file: `task-${pids.b}/sid`, value: '4000000', says: new RegExp(`task-${pids.b}/sid: session 4000000 is neither the root's session \\(${pids.p}\\) nor led by a process of the tree`) },
    { file: `task-${pids.g}/pgid`, value: String(pids.b), says: new RegExp(`task-${pids.g}/pgid: process group ${pids.b} is in session ${pids.b}, not in this process's session ${pids.p}`) },
    { file: `task-${pids.a}/fds/1/fd`, value: '999', says: new RegExp(`task-${pids.a}/fds/1/fd: names files/999, which does not exist`) },
  ]
  for (const c of cases) {
    const copy = path.join(work, `case-${cases.indexOf(c)}`)
    execFileSync('cp', ['-a', original, copy])
    fs.chmodSync(path.join(copy, path.dirname(c.file)), 0o700)
    fs.chmodSync(path.join(copy, c.file), 0o600)
    fs.writeFileSync(path.join(copy, c.file), `${c.value}\n`)
    // Sealed (ckptfs seal), so that the validator judges the edit, not the checksum.
    reseal(copy)
    const r = ckptfs('restore', copy, '--no-mount')
    t.equal(r.status, 1, `${c.file} = ${c.value}: refused`)
    t.match(r.stderr, c.says, 'naming the file and the problem')
  }
})

/** The numbers of a log of one number per line. */
/** Kilobytes of `pid`'s memory it holds alone (smaps_rollup Private_Clean + Private_Dirty). */
function privateKb(pid: number): number {
  const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
  return ['Private_Clean', 'Private_Dirty'].reduce((sum, key) => sum + Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(rollup)![1]), 0)
}

t.test('reading a checkpoint leaves the pages a child shares copy-on-write with its parent shared', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [buildTarget('forked_pages')], { dir, ready: (tg) => /^ready pid=\d+ child=\d+$/m.test(tg.text()) })
  const child = Number(/child=(\d+)/.exec(target.text())![1])
  target.alsoKill(child)
  const before = privateKb(target.pid) + privateKb(child)
  const ck = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt, '--inspect')
  endAtTeardown(t, ck)
  // The parent stores the 16 MiB; the child holds them as its parent's (inherited_runs, issue
  // 17), so its pages file is empty: the pages are read once, through the parent.
  const read16: string[] = []
  const inherited16: string[] = []
  const childRuns: string[] = []
  for (const pid of [child, target.pid]) {
    const vmas = path.join(ck, `task-${pid}`, 'memory', 'vmas')
    for (const v of fs.readdirSync(vmas)) {
      const pages = fs.readFileSync(path.join(vmas, v, 'pages'))
      if (pages.length === 16 << 20) read16.push(`task-${pid}/${v}`)
      const runs = path.join(vmas, v, 'inherited_runs')
      const text = fs.existsSync(runs) ? fs.readFileSync(runs, 'utf8') : ''
      if (pid === child && text) childRuns.push(`${v}: inherited ${text.trim().split('\n').join(', ')}; stores ${pages.length} bytes`)
      if (text === '0x0 0x1000000\n' && pages.length === 0) inherited16.push(`task-${pid}/${v}`)
    }
  }
  t.same(read16.map((v) => v.split('/')[0]), [`task-${target.pid}`], 'the parent\'s 16 MiB mapping was read whole through the mount')
  t.same(inherited16, [read16[0]?.replace(`task-${target.pid}`, `task-${child}`)], `the child holds the same mapping as its parent's, nothing stored (the child's inherited runs: ${childRuns.join('; ') || 'none'})`)
  const after = privateKb(target.pid) + privateKb(child)
  t.ok(after - before < 4096, `the two hold ${after - before} kB more of their own after the reads (32768 kB if each had been given its own copy)`)
})

const numbersIn = (text: string) => text.split('\n').filter(Boolean).map(Number)

/** Frozen means frozen: the log does not grow while the tree is checkpointed. */
async function expectStill(t: Test, out: () => string, what: string): Promise<void> {
  const before = out().length
  await sleep(300)
  t.equal(out().length, before, `${what}: nothing is written while the tree is frozen`)
}

t.test('a bash pipeline: the shell, its loop and cat are one tree sharing one pipe; resumed, the count goes on with no gap and no repeat', async (t) => {
  const dir = workdir(t)
  const script = 'i=0; while :; do echo $i; i=$((i+1)); sleep 0.01; done | cat'
  const target = await launch(t, ['bash', '-c', script], { dir, ready: (tg) => tg.lines().length >= 5 })
  const members = () => [target.pid, ...descendants(target.pid)]
  // Killed at teardown only while each PID is still that process (its start time) or runs its program.
  let seen: number[] = []
  const remember = (pids: number[]) => {
    for (const pid of pids) target.alsoKill(pid)
    return pids
  }
  seen = remember(members())
  const ck = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt, '--inspect')
  endAtTeardown(t, ck)
  seen = remember(members())
  const tasks = fs.readdirSync(ck).filter((n) => n.startsWith('task-')).map((n) => Number(n.slice(5)))
  t.same([...tasks].sort((a, b) => a - b), [...seen].sort((a, b) => a - b), `the checkpoint holds the ${seen.length} processes of the pipeline`)
  const comms = new Map(tasks.map((pid) => [pid, read(path.join(ck, `task-${pid}`, 'comm'))]))
  const cat = tasks.find((pid) => comms.get(pid) === 'cat')!
  const loop = tasks.find((pid) => pid !== target.pid && comms.get(pid) === 'bash')!
  t.ok(cat && loop, 'cat and the loop\'s subshell are in it')
  const pipeOf = (pid: number, fd: number) => {
    const ref = read(path.join(ck, `task-${pid}`, 'fds', String(fd), 'fd'))
    return { ref, type: read(path.join(ck, 'files', ref, 'fd_type')), id: read(path.join(ck, 'files', ref, 'pipe_id')) }
  }
  const writeEnd = pipeOf(loop, 1)
  const readEnd = pipeOf(cat, 0)
  t.same([writeEnd.type, readEnd.type], ['pipe', 'pipe'], 'the loop writes into a pipe that cat reads')
  t.equal(writeEnd.id, readEnd.id, 'one pipe, its two ends in two processes')
  t.not(writeEnd.ref, readEnd.ref, 'as two descriptions')
  await expectStill(t, () => target.text(), 'bash pipeline')
  fs.writeFileSync(path.join(ck, 'done'), 'resume')
  const count = numbersIn(target.text()).length
  await target.waitFor(new RegExp(`^${count + 20}$`, 'm'))
  const numbers = numbersIn(target.text())
  t.same(numbers.slice(0, count + 20), Array.from({ length: count + 20 }, (_, i) => i), 'the count went on from where it was: no gap, no repeat')
})

t.test('python3 multiprocessing.Pool: the parent and its workers are one tree; resumed, the pool carries on', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, ['python3', poolScript], { dir, ready: (tg) => tg.lines().length >= 3 })
  // Killed at teardown only while each PID is still that process (its start time) or runs its program.
  for (const pid of descendants(target.pid)) target.alsoKill(pid)
  const ck = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt, '--inspect')
  endAtTeardown(t, ck)
  const workers = fs.readdirSync(ck).filter((n) => n.startsWith('task-')).map((n) => Number(n.slice(5))).filter((pid) => pid !== target.pid)
  t.ok(workers.length >= 3, `the pool's ${workers.length} worker processes are in the checkpoint`)
  for (const w of workers) t.equal(read(path.join(ck, `task-${w}`, 'ppid')), String(target.pid), `worker ${w} is the parent's child`)
  // Its semaphores are MAP_SHARED mappings of deleted /dev/shm files: saved with their pages, no longer problems.
  t.equal(fs.readFileSync(path.join(ck, 'problems'), 'utf8'), '', 'problems is empty: the deleted /dev/shm semaphores can be restored')
  const semaphores = fs.readFileSync(path.join(ck, `task-${target.pid}`, 'memory', 'maps'), 'utf8').split('\n').filter((l) => / \/dev\/shm\/sem\.\S+ \(deleted\)$/.test(l))
  t.ok(semaphores.length > 0 && semaphores.every((l) => l.split(' ')[6] !== '0'), `the parent's semaphore pages are stored (${semaphores.length} mappings)`)
  // The pool's queues are pipes the workers inherited: every worker's fds name descriptions the parent holds too.
  const parentRefs = new Set(fdRefs(ck, target.pid).values())
  const shared = workers.map((w) => [...fdRefs(ck, w).values()].filter((ref) => parentRefs.has(ref) && read(path.join(ck, 'files', ref, 'fd_type')) === 'pipe').length)
  t.ok(shared.every((n) => n >= 2), `each worker shares the pool's pipes with the parent (${shared.join(', ')} shared pipe descriptions)`)
  await expectStill(t, () => target.text(), 'pool')
  fs.writeFileSync(path.join(ck, 'done'), 'resume')
  const lines = target.lines().length
  await target.waitFor(new RegExp(`(?:.*\\n){${lines + 5}}`))
  const sums = numbersIn(target.text())
  t.same(sums, sums.map((_, i) => 10 * i + 45), 'every map of the pool returned the right sum, in order, after the resume')
})

t.test('a user\'s tree holding a setuid-root child: its private files belong to root, so a copy shows the user nothing of the child', async (t) => {
  const user = attacker()
  const dir = workdir(t)
  fs.chmodSync(dir, 0o755)
  const suid = path.join(dir, 'suid-sleep')
  fs.copyFileSync('/bin/sleep', suid)
  fs.chmodSync(suid, 0o4755)
  const target = await launch(t, asUser(user, ['sh', '-c', `"${suid}" 1000 & echo "child=$!"; wait`]), { dir, ready: (tg) => /^child=\d+$/m.test(tg.text()) })
  const child = Number(/^child=(\d+)$/m.exec(target.text())![1])
  target.alsoKill(child)
  await waitUntil('the setuid child to run its program', () => fs.statSync(`/proc/${child}/environ`).uid === 0)
  t.equal(fs.statSync(`/proc/${target.pid}/environ`).uid, user.uid, 'the shell\'s private files are the user\'s in /proc')
  const ck = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt, '--inspect')
  endAtTeardown(t, ck)
  t.ok(fs.existsSync(path.join(ck, `task-${child}`)), 'the setuid child is in the tree')
  for (const pid of [target.pid, child]) t.equal(fs.statSync(path.join(ck, `task-${pid}`, 'environ')).uid, 0, `task-${pid}/environ belongs to root`)
  t.equal(fs.statSync(`${ck}.image`).uid, 0, 'and so does the image')
  const copy = path.join(dir, 'copy')
  execFileSync('cp', ['-a', ck, copy])
  fs.chmodSync(copy, 0o755)
  const read = runAs(user, ['cat', path.join(copy, `task-${child}`, 'environ')])
  t.not(read.status, 0, 'the user cannot read the child\'s environ in a copy')
  t.match(read.stderr, /Permission denied/, 'Permission denied')

  // Given to the user (every file theirs), the tree may come back only as the user: the
  // setuid child's saved euid 0 is refused by name, not only the root task's credentials.
  const given = path.join(dir, 'given')
  execFileSync('cp', ['-a', ck, given])
  execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, given])
  const r = ckptfs('restore', given, '--no-mount')
  t.equal(r.status, 1, 'root\'s restore of the user\'s tree is refused')
  t.match(r.stderr, new RegExp(`task-${child}/creds/euid: 0, but .* is owned by uid ${user.uid} `), `the child's credentials are named: ${r.stderr.trim()}`)
})

t.test('a problem of a process of the tree names its task once (task-PID/seccomp_mode)', async (t) => {
  const dir = workdir(t)
  // python3 enters seccomp strict mode, then blocks reading a pipe of its own nobody writes: read is allowed.
  const script = 'import ctypes, os; r, w = os.pipe(); print(f"child={os.getpid()}", flush=True); ctypes.CDLL(None).prctl(22, 1, 0, 0, 0); os.read(r, 1)'
  const target = await launch(t, ['bash', '-c', `python3 -c '${script}'; :`], { dir, ready: (tg) => /^child=\d+$/m.test(tg.text()) })
  const child = Number(/^child=(\d+)$/m.exec(target.text())![1])
  target.alsoKill(child)
  await waitUntil('the child to be in strict mode', () => /^Seccomp:\s+1$/m.test(fs.readFileSync(`/proc/${child}/status`, 'utf8')))
  const ck = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt, '--inspect')
  endAtTeardown(t, ck)
  const problems = fs.readFileSync(path.join(ck, 'problems'), 'utf8')
  t.match(problems, new RegExp(`^task-${child}/seccomp_mode: seccomp strict mode: not checkpointable$`, 'm'), 'named once, under its task')
  t.notMatch(problems, /task-\d+\/task-\d+\//, 'no task is named twice')
  fs.writeFileSync(path.join(ck, 'done'), 'resume')
})
