// Benchmark 1, the file table tree (issue 3). A target holding many fds (bench/fdtarget.c) is
// checkpointed lazily; we time (a) the first listing of task-PID/fds, (b) `ls -laR` of the
// checkpoint plus reading every attribute file, (c) `cp -a` of the checkpoint, and the same
// walks (b) and (c) over a trivial fuse-native server (bench/trivial-server.ts) serving the
// same tree shape with the same mount options. /proc/PID/fd and fdinfo are timed for reference.

import * as fs from 'fs'
import * as path from 'path'
import {
  buildC, ckptfsOk, log, mountCkptfs, outDir, q, sameShape, scratchDir, shapeFromLs, startTarget, startTrivialServer,
  timeSh, timeShOk, treeTotals, type Options, type Timed, type TreeShape,
} from './common'
import { fmtN, fmtS, fmtX, over, Report } from './report'

/** Attribute files only: the big streamed files are left out of the walk (b). */
const BIG_FILES = ['pages', 'image', 'contents']

/** Adds its rows to `rep` as it goes, so a failure keeps what was measured. */
export async function benchFds(opts: Options, rep: Report): Promise<void> {
  const fdtarget = buildC('fdtarget')
  const work = scratchDir('ckptfs-bench-')
  const { mnt, unmount } = await mountCkptfs(work)
  try {
    await firstListing(rep, opts.fds, fdtarget, work, mnt)
    await walks(rep, opts, fdtarget, work, mnt)
  } finally {
    unmount()
  }
}

/** Ends a checkpoint: writing to `done` resumes the task. */
function release(checkpoint: string): void {
  try {
    fs.writeFileSync(path.join(checkpoint, 'done'), '1\n')
  } catch (err) {
    log(`${checkpoint}/done: ${(err as Error).message} (the unmount will thaw it)`)
  }
}

// ---- (a) the first listing of a big fds/ directory ----

async function firstListing(rep: Report, n: number, fdtarget: string, work: string, mnt: string): Promise<void> {
  const files = path.join(work, `files-${n}`)
  fs.mkdirSync(files, { recursive: true })
  const target = await startTarget(fdtarget, [String(n), files])
  try {
    const pid = target.pid
    const held = fs.readdirSync(`/proc/${pid}/fd`).length
    rep.ref('fds the target holds', fmtN(held), `bench/fdtarget.c: /dev/null mostly, regular files, dups, pipes`)
    const procFd = timeShOk(`ls -l /proc/${pid}/fd > /dev/null`)
    rep.ref('reference: ls -l /proc/PID/fd', fmtS(procFd.seconds))
    const procInfo = timeShOk(`cat /proc/${pid}/fdinfo/* > /dev/null`)
    rep.ref('reference: cat /proc/PID/fdinfo/*', fmtS(procInfo.seconds))

    log(`fds: lazy checkpoint of a ${fmtN(held)}-fd target`)
    const cp = ckptfsOk('checkpoint', String(pid), '--mount', mnt)
    const checkpoint = cp.stdout.trim()
    try {
      rep.ref('lazy checkpoint (`ckptfs checkpoint`, CLI wall time)', fmtS(cp.seconds), 'node start-up included')
      const fdsDir = path.join(checkpoint, `task-${pid}`, 'fds')
      const first = timeShOk(`ls ${q(fdsDir)}`, { stdout: true })
      const names = first.stdout.split('\n').filter(Boolean).length
      rep.check(`(a) first \`ls task-PID/fds\` (${fmtN(names)} names)`, fmtS(first.seconds), '< 1 s', first.seconds < 1,
        `${fmtX(first.seconds)} the target, ${fmtS(first.seconds - 1)} over`)
      if (names !== held) rep.note(`ls task-PID/fds showed ${names} names, /proc/PID/fd ${held}`)
      const again = timeShOk(`ls ${q(fdsDir)}`, { stdout: true })
      rep.ref('(a) second `ls task-PID/fds`', fmtS(again.seconds))
    } finally {
      release(checkpoint)
    }
  } finally {
    target.kill()
  }
}

// ---- (b) and (c): walking the whole tree, on ckptfs and on the trivial server ----

interface Walk {
  top: string
  ls: Timed
  cat: Timed
  cp: Timed
  lsOutput: string
  copied: { entries: number; files: number; bytes: number }
  /** The same `cp -a` and `ls -laR` of the copy, tmpfs to tmpfs: no FUSE at all. */
  tmpfs?: { cp: Timed; ls: Timed }
}

function walk(label: string, top: string, shm: string, withTmpfs = false): Walk {
  const lsFile = path.join(shm, 'ls.txt')
  log(`fds: (b) ls -laR on ${label}`)
  // To a tmpfs file instead of /dev/null: the listing gives the tree's shape.
  const ls = timeSh(`ls -laR ${q(top)} > ${q(lsFile)}`)
  log(`fds: (b) reading every attribute file on ${label} (${fmtS(ls.seconds)} so far)`)
  const skip = BIG_FILES.map((n) => `! -name ${q(n)}`).join(' ')
  const cat = timeSh(`find ${q(top)} -type f ${skip} -print0 | xargs -0 cat > /dev/null`)
  log(`fds: (c) cp -a on ${label}`)
  const dest = path.join(shm, 'copy')
  const cp = timeSh(`cp -a ${q(top)} ${q(dest)}`)
  const copied = fs.existsSync(dest) ? treeTotals(dest) : { entries: 0, files: 0, bytes: 0 }
  let tmpfs: Walk['tmpfs']
  if (withTmpfs && fs.existsSync(dest)) {
    log(`fds: (b, c) floor: ls -laR and cp -a of the copy on tmpfs`)
    const again = path.join(shm, 'copy2')
    tmpfs = { cp: timeSh(`cp -a ${q(dest)} ${q(again)}`), ls: timeSh(`ls -laR ${q(again)} > ${q(path.join(shm, 'ls2.txt'))}`) }
    fs.rmSync(again, { recursive: true, force: true })
    fs.rmSync(path.join(shm, 'ls2.txt'), { force: true })
  }
  fs.rmSync(dest, { recursive: true, force: true })
  const lsOutput = fs.readFileSync(lsFile, 'utf8')
  fs.rmSync(lsFile, { force: true })
  return { top, ls, cat, cp, lsOutput, copied, tmpfs }
}

function failures(label: string, w: Walk): string[] {
  const out: string[] = []
  for (const [step, t] of [['ls -laR', w.ls], ['cat of the attribute files', w.cat], ['cp -a', w.cp]] as const) {
    if (t.status !== 0) out.push(`${label}: ${step} exited ${t.status}: ${t.stderr.trim().split('\n').slice(0, 2).join(' | ')}`)
  }
  return out
}

async function walks(rep: Report, opts: Options, fdtarget: string, work: string, mnt: string): Promise<void> {
  const n = opts.walkFds
  const files = path.join(work, `files-walk-${n}`)
  fs.mkdirSync(files, { recursive: true })
  const shm = scratchDir('ckptfs-bench-', '/dev/shm')
  const shapeFile = path.join(outDir, 'fds-shape.json')
  // The trivial server's mount: the same path length as ckptfs's.
  const tmnt = path.join(scratchDir('ckptfs-bench-'), 'mnt')
  const ours: Walk[] = []
  const trivial: Walk[] = []
  let shape: TreeShape | undefined
  let ttop = ''
  let stopTrivial: (() => void) | undefined
  const target = await startTarget(fdtarget, [String(n), files])
  try {
    // Rounds alternate ckptfs and trivial; each ckptfs round walks a fresh checkpoint (cold caches).
    for (let round = 1; round <= opts.walkRounds; round++) {
      const top = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt).stdout.trim()
      try {
        ours.push(walk(`ckptfs, round ${round}`, top, shm, true))
      } finally {
        release(top)
      }
      if (!shape) {
        shape = shapeFromLs(ours[0].lsOutput, top)
        fs.writeFileSync(shapeFile, JSON.stringify(shape))
        stopTrivial = (await startTrivialServer(tmnt, ['tree', shapeFile])).stop
        ttop = path.join(tmnt, path.basename(top))
      }
      trivial.push(walk(`trivial, round ${round}`, ttop, shm))
    }
  } finally {
    stopTrivial?.()
    target.kill()
  }
  if (!shape) return

  const dirs = shape.entries.filter((e) => e[1] === 'd').length
  const fileEntries = shape.entries.filter((e) => e[1] === 'f')
  const attrFiles = fileEntries.filter((e) => !BIG_FILES.includes(path.basename(e[0])))
  const bytes = fileEntries.reduce((sum, e) => sum + e[2], 0)
  rep.ref(`tree walked (b, c): checkpoint of a ${fmtN(n)}-fd target`, `${fmtN(shape.entries.length)} entries`,
    `${fmtN(dirs)} directories, ${fmtN(fileEntries.length)} files (${fmtN(attrFiles.length)} attribute files), ${fmtN(bytes)} bytes; ${opts.walkRounds} rounds alternating ckptfs and trivial, the best of each shown`)
  ours.forEach((w, i) => {
    const differs = sameShape(shape!, shapeFromLs(w.lsOutput, w.top))
    if (differs) rep.note(`ckptfs round ${i + 1}: its ls -laR does not match round 1's: ${differs}`)
    for (const f of failures(`ckptfs round ${i + 1}`, w)) rep.note(f)
  })
  trivial.forEach((w, i) => {
    const differs = sameShape(shape!, shapeFromLs(w.lsOutput, ttop))
    if (differs) rep.note(`trivial round ${i + 1}: its ls -laR does not match ckptfs's: ${differs}`)
    for (const f of failures(`trivial round ${i + 1}`, w)) rep.note(f)
  })
  for (const [a, b] of [[ours, 'ckptfs'], [trivial, 'trivial']] as const) {
    const first = a[0].copied
    if (a.some((w) => w.copied.entries !== first.entries || w.copied.bytes !== first.bytes) || first.entries !== shape.entries.length - 1) {
      rep.note(`${b}: cp -a copied ${a.map((w) => `${fmtN(w.copied.entries)} entries / ${fmtN(w.copied.bytes)} bytes`).join(', ')}; the tree has ${fmtN(shape.entries.length - 1)} entries below the top`)
    }
  }

  const best = (ws: Walk[], f: (w: Walk) => number) => Math.min(...ws.map(f))
  const all = (ws: Walk[], f: (w: Walk) => number) => ws.map((w) => fmtS(f(w))).join(', ')
  const pair = (a: number, b: number) => `ckptfs ${fmtS(a)}, trivial ${fmtS(b)}: ${fmtX(a / b)}`
  const steps: Array<[string, (w: Walk) => number]> = [['ls', (w) => w.ls.seconds], ['cat', (w) => w.cat.seconds], ['b', (w) => w.ls.seconds + w.cat.seconds], ['cp', (w) => w.cp.seconds]]
  const r = Object.fromEntries(steps.map(([k, f]) => [k, { ours: best(ours, f), trivial: best(trivial, f), all: `ckptfs ${all(ours, f)}; trivial ${all(trivial, f)}` }]))
  const perEntry = (sec: number, count: number) => `${Math.round((sec / count) * 1e6)} us`
  rep.ref('(b1) ls -laR checkpoint-N', pair(r.ls.ours, r.ls.trivial), `${r.ls.all}; ckptfs ${perEntry(r.ls.ours, shape.entries.length)}/entry`)
  rep.ref(`(b2) cat every attribute file (${fmtN(attrFiles.length)})`, pair(r.cat.ours, r.cat.trivial),
    `find -type f ! -name pages/image/contents -print0 | xargs -0 cat; ${r.cat.all}; ckptfs ${perEntry(r.cat.ours, attrFiles.length)}/file`)
  rep.check('(b) ls -laR + cat attribute files, ckptfs / trivial', pair(r.b.ours, r.b.trivial), '<= 1.5x', r.b.ours / r.b.trivial <= 1.5, over(r.b.ours / r.b.trivial, 1.5), r.b.all)
  rep.check('(c) cp -a checkpoint-N, ckptfs / trivial', pair(r.cp.ours, r.cp.trivial), '<= 1.5x', r.cp.ours / r.cp.trivial <= 1.5, over(r.cp.ours / r.cp.trivial, 1.5),
    `to tmpfs, ${fmtN(ours[0].copied.entries)} entries, ${fmtN(ours[0].copied.bytes)} bytes; ${r.cp.all}`)
  const floors = ours.map((w) => w.tmpfs).filter((f) => f !== undefined && f.cp.status === 0 && f.ls.status === 0) as Array<NonNullable<Walk['tmpfs']>>
  if (floors.length > 0) {
    // What FUSE itself costs: every entry is a few requests, each through fuse-native's
    // threads (notes/fuse-native.md); the trivial server pays the same.
    const tcp = Math.min(...floors.map((f) => f.cp.seconds))
    const tls = Math.min(...floors.map((f) => f.ls.seconds))
    const entries = ours[0].copied.entries
    rep.ref('(b1) ls -laR checkpoint-N / the same tree on tmpfs', `${fmtS(r.ls.ours)} / ${fmtS(tls)}: ${fmtX(r.ls.ours / tls)}`, `trivial server ${fmtS(r.ls.trivial)}: ${fmtX(r.ls.trivial / tls)} tmpfs`)
    rep.ref('(c) cp -a checkpoint-N / the same cp -a from tmpfs', `${fmtS(r.cp.ours)} / ${fmtS(tcp)}: ${fmtX(r.cp.ours / tcp)}`,
      `per entry: ckptfs ${perEntry(r.cp.ours, entries)}, trivial server ${perEntry(r.cp.trivial, entries)}, tmpfs ${perEntry(tcp, entries)}`)
  } else {
    rep.note('the tmpfs floor of (b1) and (c) was not measured: the copy failed')
  }

  if (n < opts.fds) {
    const scale = opts.fds / n
    const estimate = (r.b.ours + r.cp.ours + r.b.trivial + r.cp.trivial) * scale
    rep.note(`the walks (b) and (c) use a ${fmtN(n)}-fd target, not the ${fmtN(opts.fds)}-fd one of (a): a full walk of that tree (~${fmtN(Math.round((shape.entries.length * scale) / 1000) * 1000)} entries) on both servers would take ~${fmtS(estimate)} at the rates measured here (every FUSE file costs about 1 ms to open and read on this machine, even on the trivial server), beyond the 5-minute budget of the suite. Run \`node dist/bench/run.js fds --walk-fds ${opts.fds} --walk-rounds 1\` for it.`)
  }
}
