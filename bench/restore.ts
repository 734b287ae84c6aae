// Benchmark 3, restore (issues 6 and 16). Each target is checkpointed lazily, the checkpoint
// is saved with cp -a to tmpfs (the whole tree, and a directory holding only its `image`),
// the target is killed through `done`, and each saved copy is restored the ways users do,
// each timed whole (issue 16): `cp -a SAVED MNT/restore/NAME && echo 1 > .../done` in one sh,
// and the whole `ckptfs restore TREE --mount MNT` and `ckptfs restore SAVED.image --mount MNT`
// commands (node start-up included; its own start-up is a row of its own). Every restored
// process must run with the saved PID; it is then killed by PID and we wait until it is gone.
//  (a) a task with 1 GiB of touched memory (bench/memtarget.c), against the floor measured in
//      the same run by bench/restorefloor.c: MADV_POPULATE_WRITE of a fresh 1 GiB region in
//      another process plus process_vm_writev of 1 GiB into it; the floor pass and each
//      restore are each preceded by the same untimed warm-up (restorefloor warm);
//  (b) a task with 10,000 fds (bench/fdtarget.c): the write to done alone with the copy into
//      restore/ untimed (copying its 181,065 files through the mount takes minutes), and the
//      whole `ckptfs restore` command from the tree and from the image.

import { spawn, spawnSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import {
  buildC, ckptfsOk, cliPath, commandEnv, log, MiB, mountCkptfs, nowNs, onCleanup, processState, q, scratchDir, seconds, sleep, startTarget,
  timeSh, timeShOk, treeTotals, type Options, type Target,
} from './common'
import { fmtN, fmtS, fmtX, over, Report } from './report'

const sizeText = (mib: number) => (mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`)

/** Adds its rows to `rep` as it goes, so a failure keeps what was measured. */
export async function benchRestore(opts: Options, rep: Report): Promise<void> {
  const memtarget = buildC('memtarget')
  const fdtarget = buildC('fdtarget')
  const floorBin = buildC('restorefloor')
  const work = scratchDir('ckptfs-bench-')
  const shm = scratchDir('ckptfs-bench-', '/dev/shm')

  // The floor first, while no target spins on a core.
  const len = opts.memMib * MiB
  log(`restore: floor (populate + process_vm_writev of ${sizeText(opts.memMib)})`)
  const r = spawnSync(floorBin, [String(len), '3'], { encoding: 'utf8', timeout: 300_000 })
  if (r.status !== 0) throw new Error(`restorefloor exited ${r.status}: ${r.stderr}`)
  const passes = [...r.stdout.matchAll(/^pass \d+ (\d+) (\d+)$/gm)].map((m) => ({ populate: Number(m[1]) / 1e9, write: Number(m[2]) / 1e9 }))
  const best = passes.reduce((a, b) => (a.populate + a.write <= b.populate + b.write ? a : b))
  const floor = best.populate + best.write
  rep.ref(`floor: restore ${sizeText(opts.memMib)} into another process (populate + write)`, fmtS(floor),
    `bench/restorefloor.c, fastest of ${passes.length} passes, each into a fresh mapping: ` +
    passes.map((p) => `${fmtS(p.populate)} + ${fmtS(p.write)}`).join('; ') + ' (MADV_POPULATE_WRITE + process_vm_writev, 64 MiB calls)')

  const startup = timeShOk(`${q(process.execPath)} ${q(cliPath)} --help`)
  startupSeconds = startup.seconds
  rep.ref('node start-up: `ckptfs --help`', fmtS(startup.seconds), 'the part of every whole `ckptfs restore` command below that is node starting and loading the CLI')

  const { mnt, unmount } = await mountCkptfs(work)
  try {
    await memoryRestores(rep, opts, memtarget, floorBin, mnt, shm, floor, passes[0].populate + passes[0].write)
    if (opts.restoreFds) await fdRestores(rep, opts, fdtarget, work, mnt, shm)
    else rep.note('the 10,000-fd restores were skipped (--restore-mem-only)')
  } finally {
    unmount()
  }
}

/** Node's own start-up with the CLI loaded, measured once per run (the lazy row takes it off). */
let startupSeconds = 0

// ---- shared steps ----

export async function waitGone(pid: number, ms: number): Promise<number> {
  const t0 = nowNs()
  const deadline = Date.now() + ms
  while (processState(pid) !== undefined) {
    if (Date.now() > deadline) throw new Error(`PID ${pid} still exists ${ms / 1000} s after it was killed (state ${processState(pid)})`)
    await sleep(20)
  }
  return seconds(t0)
}

/** Checkpoints the target lazily, saves it to `shm` (tree and image only), and kills it through done. */
export async function saveAndKill(target: Target, mnt: string, shm: string, label: string): Promise<{ tree: string; image: string; treeBytes: number; imageBytes: number }> {
  const pid = target.pid
  const dir = ckptfsOk('checkpoint', String(pid), '--mount', mnt).stdout.trim()
  const tree = path.join(shm, `${label}-tree`)
  const image = path.join(shm, `${label}-image`)
  try {
    log(`restore: saving ${label} (cp -a of the checkpoint, and its image alone)`)
    const problems = fs.readFileSync(path.join(dir, 'problems'), 'utf8').trim()
    if (problems) throw new Error(`${label}: the checkpoint lists problems: ${problems.split('\n')[0]}`)
    timeShOk(`cp -a ${q(dir)} ${q(tree)}`)
    fs.mkdirSync(image)
    timeShOk(`cp ${q(`${dir}.image`)} ${q(path.join(image, 'image'))}`)
  } finally {
    try {
      fs.writeFileSync(path.join(dir, 'done'), 'kill\n')
    } catch (err) {
      log(`${dir}/done: ${(err as Error).message}`)
    }
  }
  await waitGone(pid, 60_000)
  target.kill() // the PID is gone; this ends its sh (ours) and forgets the clean-up
  return { tree, image, treeBytes: treeTotals(tree).bytes, imageBytes: fs.statSync(path.join(image, 'image')).size }
}

interface Restored {
  seconds: number
  pid: number
  copySeconds: number
  reapSeconds: number
}

/**
 * Copies `saved` into MNT/restore/NAME (untimed), times the write to its done, checks the
 * task runs with `pid`, runs `check(pid)`, kills it by PID and waits until it is gone.
 */
async function restoreOnce(mnt: string, saved: string, name: string, pid: number, check: (pid: number) => void, beforeTimed?: () => Promise<() => void>): Promise<Restored> {
  const dir = path.join(mnt, 'restore', name)
  const copySeconds = timeShOk(`cp -a ${q(saved)} ${q(dir)}`).seconds
  const after = beforeTimed ? await beforeTimed() : () => undefined
  let restored = 0
  const forget = onCleanup(`kill restored ${pid}`, () => {
    if (restored > 0 && processState(restored) !== undefined) process.kill(restored, 'SIGKILL')
  })
  try {
    log(`restore: restoring ${name}`)
    const t0 = nowNs()
    try {
      fs.writeFileSync(path.join(dir, 'done'), '1\n')
    } catch (err) {
      let status = ''
      try {
        status = fs.readFileSync(path.join(dir, 'status'), 'utf8').trim()
      } catch { /* none */ }
      throw new Error(`restore of ${name}: ${(err as Error).message}${status ? ` (status: ${status})` : ''}`)
    }
    const s = seconds(t0)
    const status = fs.readFileSync(path.join(dir, 'status'), 'utf8').trim()
    const m = /^restored ([0-9]+)$/.exec(status)
    if (!m) throw new Error(`restore of ${name}: status "${status}"`)
    restored = Number(m[1])
    if (restored !== pid) throw new Error(`restore of ${name}: restored as PID ${restored}, saved PID ${pid}`)
    const state = processState(pid)
    if (state === undefined || !'RSD'.includes(state)) throw new Error(`restore of ${name}: PID ${pid} is in state ${state ?? 'gone'}`)
    after()
    check(pid)
    process.kill(pid, 'SIGKILL')
    const reapSeconds = await waitGone(pid, 120_000)
    return { seconds: s, pid, copySeconds, reapSeconds }
  } finally {
    after()
    forget() // kills it if it still runs (a failure above)
    if (restored > 0) await waitGone(restored, 120_000).catch((err) => log((err as Error).message))
    fs.rmSync(dir, { recursive: true, force: true }) // frees the restore area's backing files
  }
}

// ---- (a) 1 GiB of touched memory ----

/**
 * The ways a user restores a saved copy, each timed whole: the copy into the mount and the
 * write to `done`, or the whole `ckptfs restore` command (node start-up included).
 */
export interface RestoreWay {
  label: string
  /** Runs the restore; resolves to the restored PID and the seconds the user waited. */
  run(): Promise<{ pid: number; seconds: number; note?: string }>
  /** Removes what the way left behind (a copy in restore/). */
  cleanUp(): void
}

/** `cp -a SAVED MNT/restore/NAME && echo 1 > MNT/restore/NAME/done`, one sh, timed whole. */
export function copyInWay(mnt: string, saved: string, name: string, label: string): RestoreWay {
  const dir = path.join(mnt, 'restore', name)
  return {
    label,
    run: async () => {
      const r = timeSh(`cp -a ${q(saved)} ${q(dir)} && echo 1 > ${q(path.join(dir, 'done'))}`)
      let status = ''
      try {
        status = fs.readFileSync(path.join(dir, 'status'), 'utf8').trim()
      } catch { /* none */ }
      const m = /^restored ([0-9]+)$/.exec(status)
      if (r.status !== 0 || !m) throw new Error(`${label}: exited ${r.status}: ${r.stderr.trim()} (status: ${status || 'none'})`)
      return { pid: Number(m[1]), seconds: r.seconds }
    },
    cleanUp: () => fs.rmSync(dir, { recursive: true, force: true }), // frees the restore area's backing files
  }
}

/** `ckptfs restore ...ARGS`, the whole command. */
export function commandWay(label: string, args: string[]): RestoreWay {
  return {
    label,
    run: async () => {
      const r = ckptfsOk('restore', ...args)
      return { pid: Number(r.stdout.trim().split('\n')[0]), seconds: r.seconds }
    },
    cleanUp: () => undefined,
  }
}

/**
 * `ckptfs restore --lazy ...ARGS`, timed from its start to the PID on its stdout, to the first
 * answer of the restored memtarget (a byte through its fifos in `fifos`: the answer touches
 * 64 pages spread over its memory) and to its end (the last page in).
 */
export function lazyWay(label: string, args: string[], fifos: string): RestoreWay & { timings?: { pid: number; first: number; last: number } } {
  const way: RestoreWay & { timings?: { pid: number; first: number; last: number } } = {
    label,
    run: async () => {
      const t0 = nowNs()
      const child = spawn(process.execPath, [cliPath, 'restore', '--lazy', ...args], { env: commandEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
      let out = ''
      let err = ''
      child.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d })
      const ended = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
      const pid = await new Promise<number>((resolve, reject) => {
        child.stdout!.setEncoding('utf8').on('data', (d: string) => {
          out += d
          if (out.includes('\n')) resolve(Number(out.trim()))
        })
        void ended.then((code) => reject(new Error(`${label} exited ${code} before printing a PID: ${err.trim()}`)))
      })
      const pidAt = seconds(t0)
      const req = fs.openSync(path.join(fifos, 'req'), 'r+')
      const resp = fs.openSync(path.join(fifos, 'resp'), 'r+')
      try {
        fs.writeSync(req, 'x')
        if (fs.readSync(resp, Buffer.alloc(1), 0, 1, null) !== 1) throw new Error(`${label}: no answer from ${pid}`)
      } finally {
        fs.closeSync(req)
        fs.closeSync(resp)
      }
      const first = seconds(t0)
      const code = await ended
      const last = seconds(t0)
      if (code !== 0 || !/the last page is in/.test(err)) throw new Error(`${label} exited ${code}: ${err.trim()}`)
      way.timings = { pid: pidAt, first, last }
      return { pid, seconds: last, note: `PID printed after ${fmtS(pidAt)}, first answer after ${fmtS(first)}; ${err.trim().split('\n').pop()}` }
    },
    cleanUp: () => undefined,
  }
  return way
}

async function memoryRestores(rep: Report, opts: Options, memtarget: string, floorBin: string, mnt: string, shm: string, floor: number, firstPass: number): Promise<void> {
  const size = sizeText(opts.memMib)
  log(`restore: starting a ${size} target (touching its memory)`)
  const fifos = path.join(shm, 'fifos')
  fs.mkdirSync(fifos)
  for (const name of ['req', 'resp']) spawnSync('mkfifo', ['-m', '600', path.join(fifos, name)])
  const target = await startTarget(memtarget, [String(opts.memMib), fifos], 180_000)
  const ready = target.lines.find((l) => l.startsWith('ready'))!
  const addr = /addr=(0x[0-9a-f]+)/.exec(ready)![1]
  const len = Number(/len=([0-9]+)/.exec(ready)![1])
  const pid = target.pid
  const saved = await saveAndKill(target, mnt, shm, 'mem')
  const verify = (p: number) => {
    const v = spawnSync(floorBin, ['verify', String(p), addr, String(len)], { encoding: 'utf8', timeout: 120_000 })
    if (v.status !== 0) throw new Error(`the restored memory of ${p} is wrong: ${v.stdout.trim()} ${v.stderr.trim()}`)
  }
  const imageFile = path.join(saved.image, 'image')
  for (let i = 0; i < opts.repeats; i++) {
    const ways: Array<[RestoreWay, number]> = [
      [copyInWay(mnt, saved.tree, `mem-tree-${i + 1}`, '`cp -a TREE MNT/restore/x && echo 1 > done`'), saved.treeBytes],
      [copyInWay(mnt, saved.image, `mem-image-${i + 1}`, '`cp -a IMAGEDIR MNT/restore/x && echo 1 > done`'), saved.imageBytes],
      [commandWay('`ckptfs restore TREE --mount MNT`', [saved.tree, '--mount', mnt]), saved.treeBytes],
      [commandWay('`ckptfs restore SAVED.image --mount MNT`', [imageFile, '--mount', mnt]), saved.imageBytes],
    ]
    let eager = 0
    for (const [way, bytes] of ways) {
      const r = await pairedWithFloor(way, pid, verify, floorBin, len)
      if (way.label === '`ckptfs restore TREE --mount MNT`') eager = r.seconds
      const ratio = r.seconds / r.paired
      rep.check(`(a) ${way.label}, ${size}${opts.repeats > 1 ? ` #${i + 1}` : ''}`, fmtS(r.seconds), '< 1.2x floor', ratio < 1.2,
        over(ratio, 1.2),
        `the whole of it as a user runs it; ${fmtX(ratio)} the floor pass run just before it (${fmtS(r.paired)}); ${fmtX(r.seconds / floor)} the best warm pass (${fmtS(floor)}), ${fmtX(r.seconds / firstPass)} the first pass at the start (${fmtS(firstPass)}); ` +
        `saved: ${fmtN(bytes)} bytes on /dev/shm; PID ${pid} again, memory checked; gone ${fmtS(r.reapSeconds)} after SIGKILL${r.note ? `; ${r.note}` : ''}`)
    }
    // Lazy: the first answer (node's start-up, measured above, taken off) and the last page
    // (against the eager restore of the same tree just before).
    const lazy = lazyWay('`ckptfs restore --lazy TREE --mount MNT`', [saved.tree, '--mount', mnt], fifos)
    const r = await pairedWithFloor(lazy, pid, verify, floorBin, len)
    const firstAnswer = lazy.timings!.first - startupSeconds
    rep.check(`(a) lazy restore of ${size}${opts.repeats > 1 ? ` #${i + 1}` : ''}: first answer, node start-up taken off`, fmtS(firstAnswer), '< 50 ms', firstAnswer < 0.05,
      `${fmtS(firstAnswer - 0.05)} over`,
      `the answer came ${fmtS(lazy.timings!.first)} after the command started, its PID ${fmtS(lazy.timings!.pid)}; node start-up (\`ckptfs --help\`) ${fmtS(startupSeconds)} in this run; ${r.note ?? ''}`)
    const ratio = r.seconds / eager
    rep.check(`(a) lazy restore of ${size}${opts.repeats > 1 ? ` #${i + 1}` : ''}: last page in`, fmtS(r.seconds), '<= 1.2x eager', ratio <= 1.2, over(ratio, 1.2),
      `${fmtX(ratio)} the eager \`ckptfs restore TREE --mount MNT\` just before (${fmtS(eager)}); ${fmtX(r.seconds / r.paired)} its paired floor pass (${fmtS(r.paired)}); memory checked after the command ended`)
  }
}

/**
 * Runs `way` with the floor in the same state of the machine: one pass of a fresh
 * restorefloor right before it, holding its memory while the restore runs. Each of the two is
 * preceded by the same warm-up (restorefloor.c says why), or the floor pass would take the
 * pages the previous restore freed and leave the restore colder ones. The restored task must
 * run with `pid`; `check` looks at it, then it is killed by PID and waited for.
 */
export async function pairedWithFloor(way: RestoreWay, pid: number, check: (pid: number) => void, floorBin: string, len: number, withFloor = true): Promise<{ seconds: number; paired: number; reapSeconds: number; note?: string }> {
  // Without the floor (too big to hold twice next to the saved copies): paired is NaN.
  if (withFloor) warmPages(floorBin, 2 * len + 256 * MiB)
  const pass = withFloor ? await floorPass(floorBin, len) : { seconds: NaN, release: () => undefined }
  let restored = 0
  const forget = onCleanup(`kill restored ${pid}`, () => {
    if (restored > 0 && processState(restored) !== undefined) process.kill(restored, 'SIGKILL')
  })
  try {
    if (withFloor) warmPages(floorBin, 2 * len + 256 * MiB)
    log(`restore: ${way.label}`)
    const r = await way.run()
    restored = r.pid
    if (restored !== pid) throw new Error(`${way.label}: restored as PID ${restored}, saved PID ${pid}`)
    const state = processState(pid)
    if (state === undefined || !'RSD'.includes(state)) throw new Error(`${way.label}: PID ${pid} is in state ${state ?? 'gone'}`)
    pass.release()
    check(pid)
    process.kill(pid, 'SIGKILL')
    const reapSeconds = await waitGone(pid, 120_000)
    return { seconds: r.seconds, paired: pass.seconds, reapSeconds, note: r.note }
  } finally {
    pass.release()
    forget() // kills it if it still runs (a failure above)
    if (restored > 0) await waitGone(restored, 120_000).catch((err) => log((err as Error).message))
    way.cleanUp()
  }
}

/** Faults in and frees `bytes` of memory (untimed), so the next step gets recently used pages. */
export function warmPages(floorBin: string, bytes: number): void {
  const r = spawnSync(floorBin, ['warm', String(bytes)], { encoding: 'utf8', timeout: 300_000 })
  if (r.status !== 0) throw new Error(`restorefloor warm exited ${r.status}: ${r.stderr}`)
}

/** One floor pass by a fresh restorefloor, which holds its memory until `release` is called. */
export async function floorPass(floorBin: string, len: number): Promise<{ seconds: number; release: () => void }> {
  const child = spawn(floorBin, [String(len), '1', 'hold'], { stdio: ['pipe', 'pipe', 'inherit'] })
  let out = ''
  await new Promise<void>((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk
      if (out.includes('holding\n')) resolve()
    })
    child.on('exit', (code) => reject(new Error(`restorefloor exited ${code} before its pass: ${out}`)))
  })
  const m = /^pass 1 (\d+) (\d+)$/m.exec(out)
  if (!m) throw new Error(`restorefloor: no pass line in ${JSON.stringify(out)}`)
  let released = false
  return {
    seconds: (Number(m[1]) + Number(m[2])) / 1e9,
    release: () => {
      if (released) return
      released = true
      child.stdin!.end()
    },
  }
}

// ---- (b) 10,000 fds ----

async function fdRestores(rep: Report, opts: Options, fdtarget: string, work: string, mnt: string, shm: string): Promise<void> {
  const files = path.join(work, `files-${opts.fds}`)
  fs.mkdirSync(files, { recursive: true })
  log(`restore: starting a ${fmtN(opts.fds)}-fd target`)
  const target = await startTarget(fdtarget, [String(opts.fds), files])
  const pid = target.pid
  const held = fs.readdirSync(`/proc/${pid}/fd`).length
  const saved = await saveAndKill(target, mnt, shm, 'fds')
  const check = (p: number) => {
    const n = fs.readdirSync(`/proc/${p}/fd`).length
    if (n !== held) throw new Error(`the restored ${p} holds ${n} fds, the saved ${held}`)
  }
  for (const [kind, from] of [['tree', saved.tree], ['image alone', saved.image]] as const) {
    for (let i = 0; i < opts.repeats; i++) {
      const r = await restoreOnce(mnt, from, `fds-${kind === 'tree' ? 'tree' : 'image'}-${i + 1}`, pid, check)
      rep.check(`(b) restore of ${fmtN(held)} fds from the ${kind}${opts.repeats > 1 ? ` #${i + 1}` : ''}: write to done alone (copy in untimed)`, fmtS(r.seconds), '< 0.3 s', r.seconds < 0.3,
        `${fmtX(r.seconds / 0.3)} the target, ${fmtS(r.seconds - 0.3)} over`,
        `copied into MNT/restore in ${fmtS(r.copySeconds)} (untimed); PID ${pid} again with ${fmtN(held)} fds; gone ${fmtS(r.reapSeconds)} after SIGKILL`)
    }
  }
  // What a user waits for with the tree or image on disk: the whole `ckptfs restore` command.
  for (const [kind, from] of [['TREE', saved.tree], ['SAVED.image', path.join(saved.image, 'image')]] as const) for (let i = 0; i < opts.repeats; i++) {
    let restored = 0
    const forget = onCleanup(`kill restored ${pid}`, () => {
      if (restored > 0 && processState(restored) !== undefined) process.kill(restored, 'SIGKILL')
    })
    try {
      log(`restore: ckptfs restore ${kind} #${i + 1}`)
      const r = ckptfsOk('restore', from, '--mount', mnt)
      restored = Number(r.stdout.trim())
      if (restored !== pid) throw new Error(`ckptfs restore answered ${r.stdout.trim()}, the saved PID is ${pid}`)
      check(pid)
      process.kill(pid, 'SIGKILL')
      await waitGone(pid, 120_000)
      rep.ref(`(b) \`ckptfs restore ${kind} --mount MNT\` of the ${fmtN(held)}-fd task saved on tmpfs${opts.repeats > 1 ? ` #${i + 1}` : ''}`, fmtS(r.seconds),
        `the whole command (node start-up, reading and validating the saved copy, the restore); PID ${pid} again with ${fmtN(held)} fds`)
    } finally {
      forget()
      if (restored > 0) await waitGone(restored, 120_000).catch((err) => log((err as Error).message))
    }
  }
}
