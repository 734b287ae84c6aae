// Benchmark 6, process trees (issue 17). A tree of --tree-procs processes (default 100;
// bench/treetarget.c: a root, children and grandchildren sharing a file and a pipe, each
// with a /dev/null of its own) is checkpointed lazily, --repeats times:
//   - the request alone, as a script makes it (`echo "PID inspect" > MNT/checkpoint`), and
//     the same without `inspect`, which also works out the problems (every file table and
//     memory map of the tree) before it answers; target: ready in under 100 ms (issue 17);
//   - the whole `ckptfs checkpoint PID --mount MNT --inspect` command, against its floor in
//     the same run: node's start-up (`ckptfs --help`);
//   - `ls checkpoint-N` and `cat status` of the checkpoint;
// then once `ls -laR checkpoint-N`, and `ls`, `ls -laR` and `cat status` of the same tree
// shape on the trivial fuse-native server (the floor of a FUSE walk here); last, the tree is
// checkpointed, copied out with `cp -a`, killed, and the whole `ckptfs restore SAVED --mount
// MNT` of the copy timed --repeats times (the restored tree killed after each), against the
// same floor; target: under 1 s (issue 17).

import * as fs from 'fs'
import * as path from 'path'
import { buildC, ckptfsOk, log, median, mountCkptfs, outDir, q, sameShape, scratchDir, shapeFromLs, startTarget, startTrivialServer, timeSh, timeShOk, treeTotals, type Options } from './common'
import { fmtN, fmtS, fmtX, Report } from './report'
import { descendantsOf, lifeState, waitUntil } from '../lib/lifecycle'

/** The issue's target for a lazy checkpoint of a 100-process tree, request to ready. */
const READY_TARGET_S = 0.1
/** The issue's target for restoring a 100-process tree of small processes. */
const RESTORE_TARGET_S = 1

export async function benchTree(opts: Options, rep: Report): Promise<void> {
  const bin = buildC('treetarget')
  const work = scratchDir('ckptfs-bench-')
  const { mnt, unmount } = await mountCkptfs(work)
  const n = opts.treeProcs
  const target = await startTarget(bin, [String(n), work])
  try {
    const pid = target.pid
    const startup = ckptfsOk('--help').seconds
    rep.ref('floor: node start-up (`ckptfs --help`)', fmtS(startup))
    const inspect: number[] = []
    const plain: number[] = []
    const command: number[] = []
    const listing: number[] = []
    const status: number[] = []
    for (let round = 1; round <= opts.repeats; round++) {
      log(`tree: round ${round} of ${opts.repeats}: checkpoints of a ${n}-process tree`)
      const req = timeShOk(`echo ${q(`${pid} inspect`)} > ${q(path.join(mnt, 'checkpoint'))}`)
      inspect.push(req.seconds)
      const top = path.join(mnt, fs.readFileSync(path.join(mnt, 'by-pid', String(pid)), 'utf8').trim())
      try {
        const tasks = fs.readdirSync(top).filter((name) => name.startsWith('task-')).length
        if (tasks !== n) rep.note(`round ${round}: the checkpoint shows ${tasks} task directories, not ${n}`)
        listing.push(timeShOk(`ls ${q(top)} > /dev/null`).seconds)
        status.push(timeShOk(`cat ${q(path.join(top, 'status'))} > /dev/null`).seconds)
      } finally {
        release(top)
      }
      // Without inspect: a tree cannot be restored yet, so the request fails once it has
      // worked out why (ENOTRECOVERABLE), leaving the checkpoint open; its cost is the
      // request's once trees restore.
      const before = newest(mnt)
      plain.push(timeSh(`echo ${q(String(pid))} > ${q(path.join(mnt, 'checkpoint'))}`).seconds)
      const opened = newest(mnt)
      if (opened !== before && opened !== undefined) release(path.join(mnt, opened))
      const cmd = ckptfsOk('checkpoint', String(pid), '--mount', mnt, '--inspect')
      command.push(cmd.seconds)
      release(cmd.stdout.trim())
    }
    const all = (xs: number[]) => xs.map(fmtS).join(', ')
    const req = median(inspect)
    rep.check(`lazy checkpoint of a ${n}-process tree, request to ready (\`echo "PID inspect" > MNT/checkpoint\`), median`, fmtS(req), `< ${fmtS(READY_TARGET_S)}`, req < READY_TARGET_S, `${fmtX(req / READY_TARGET_S)} the target`, all(inspect))
    const full = median(plain)
    rep.check('the same request without inspect (problems worked out first), median', fmtS(full), `< ${fmtS(READY_TARGET_S)}`, full < READY_TARGET_S, `${fmtX(full / READY_TARGET_S)} the target`, all(plain))
    const cmd = median(command)
    rep.ref('the whole `ckptfs checkpoint PID --mount MNT --inspect`, median', `${fmtS(cmd)}: ${fmtS(cmd - startup)} over node's start-up`, all(command))
    rep.ref('`ls checkpoint-N`, median', fmtS(median(listing)), all(listing))
    rep.ref('`cat status` (works out the problems of every process), median', fmtS(median(status)), all(status))
    await walkAgainstTrivial(rep, pid, mnt, n, median(listing), median(status))
    await restoreRounds(opts, rep, pid, mnt, n, startup)
  } finally {
    // Its children and grandchildren by PID first: killing the root alone would orphan them.
    for (const pid of descendantsOf(target.pid).reverse()) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // gone
      }
    }
    target.kill()
    unmount()
  }
}

/** `ls -laR` of one checkpoint, and `ls`, `ls -laR` and `cat status` of its shape on the trivial server. */
async function walkAgainstTrivial(rep: Report, pid: number, mnt: string, n: number, ls: number, status: number): Promise<void> {
  log(`tree: ls -laR of a ${n}-process checkpoint`)
  const shm = scratchDir('ckptfs-bench-', '/dev/shm')
  const top = ckptfsOk('checkpoint', String(pid), '--mount', mnt, '--inspect').stdout.trim()
  let walk
  try {
    walk = timeSh(`ls -laR ${q(top)} > ${q(path.join(shm, 'ls.txt'))}`)
  } finally {
    release(top)
  }
  const shape = shapeFromLs(fs.readFileSync(path.join(shm, 'ls.txt'), 'utf8'), top)
  fs.rmSync(shm, { recursive: true, force: true })
  if (walk.status !== 0) rep.note(`ls -laR exited ${walk.status}: ${walk.stderr.trim().split('\n')[0]}`)
  const shapeFile = path.join(outDir, 'tree-shape.json')
  fs.writeFileSync(shapeFile, JSON.stringify(shape))
  const tmnt = path.join(scratchDir('ckptfs-bench-'), 'mnt')
  const { stop } = await startTrivialServer(tmnt, ['tree', shapeFile])
  try {
    const ttop = path.join(tmnt, path.basename(top))
    const tls = timeShOk(`ls ${q(ttop)} > /dev/null`).seconds
    const tshm = scratchDir('ckptfs-bench-', '/dev/shm')
    const twalk = timeShOk(`ls -laR ${q(ttop)} > ${q(path.join(tshm, 'ls.txt'))}`)
    const differs = sameShape(shape, shapeFromLs(fs.readFileSync(path.join(tshm, 'ls.txt'), 'utf8'), ttop))
    fs.rmSync(tshm, { recursive: true, force: true })
    if (differs) rep.note(`the trivial server's tree is not the checkpoint's: ${differs}`)
    const tstatus = timeShOk(`cat ${q(path.join(ttop, 'status'))} > /dev/null`).seconds
    rep.ref(`\`ls checkpoint-N\` / trivial server`, `${fmtS(ls)} / ${fmtS(tls)}: ${fmtX(ls / tls)}`)
    rep.ref(`\`ls -laR checkpoint-N\` (${fmtN(shape.entries.length)} entries) / trivial server`, `${fmtS(walk.seconds)} / ${fmtS(twalk.seconds)}: ${fmtX(walk.seconds / twalk.seconds)}`,
      `every attribute file's size is worked out (each process's registers, signals, credentials ... captured)`)
    rep.ref('`cat status` / trivial server', `${fmtS(status)} / ${fmtS(tstatus)}: ${fmtX(status / tstatus)}`)
  } finally {
    stop()
  }
}

/**
 * The tree checkpointed, copied with `cp -a`, killed; then restored from the copy --repeats
 * times, each restored tree checked (every process back) and killed before the next.
 */
async function restoreRounds(opts: Options, rep: Report, root: number, mnt: string, n: number, startup: number): Promise<void> {
  const pids = [root, ...descendantsOf(root)]
  const saved = path.join(scratchDir('ckptfs-bench-'), 'saved')
  const top = ckptfsOk('checkpoint', String(root), '--mount', mnt).stdout.trim()
  let copy
  try {
    copy = timeShOk(`cp -a ${q(top)} ${q(saved)}`).seconds
  } finally {
    fs.writeFileSync(path.join(top, 'done'), 'kill\n')
  }
  // Its floor: the same copy made again from where it now lies, without FUSE.
  const again = `${saved}-again`
  const floor = timeShOk(`cp -a ${q(saved)} ${q(again)}`).seconds
  const entries = treeTotals(again).entries
  fs.rmSync(again, { recursive: true, force: true })
  rep.ref(`\`cp -a checkpoint-N\` of the ${n}-process tree (${fmtN(entries)} entries) / the same cp -a of the copy`, `${fmtS(copy)} / ${fmtS(floor)}: ${fmtX(copy / floor)}`,
    `per entry ${Math.round((copy / entries) * 1e6)} us / ${Math.round((floor / entries) * 1e6)} us; the copy lies on ${path.dirname(saved)}`)
  const times: number[] = []
  for (let round = 1; round <= opts.repeats; round++) {
    await allGone(pids)
    log(`tree: round ${round} of ${opts.repeats}: restore of a ${n}-process tree from a cp -a copy`)
    const r = ckptfsOk('restore', saved, '--mount', mnt)
    times.push(r.seconds)
    const back = pids.filter((p) => lifeState(p) !== 'gone').length
    if (r.stdout.trim() !== String(root) || back !== n) rep.note(`restore round ${round}: printed ${r.stdout.trim()}, ${back} of ${n} processes back`)
    for (const p of [...descendantsOf(root).reverse(), root]) {
      try {
        process.kill(p, 'SIGKILL')
      } catch {
        // gone
      }
    }
  }
  const all = times.map(fmtS).join(', ')
  const m = median(times)
  rep.check(`whole \`ckptfs restore SAVED --mount MNT\` of the ${n}-process tree from a cp -a copy, median`, fmtS(m), `< ${fmtS(RESTORE_TARGET_S)}`, m < RESTORE_TARGET_S, `${fmtX(m / RESTORE_TARGET_S)} the target`, all)
  rep.ref('the same restore over the floor (node start-up, `ckptfs --help`), median', `${fmtS(m - startup)} over ${fmtS(startup)}`)
}

/** Waits until no process of `pids` is left, not even a zombie (a restore needs them free). */
async function allGone(pids: number[]): Promise<void> {
  const gone = () => pids.every((p) => lifeState(p) === 'gone')
  if (!(await waitUntil(gone, { limitMs: 15_000 }))) throw new Error(`tree: the killed tree's PIDs are still taken after 15 s: ${pids.filter((p) => lifeState(p) !== 'gone').slice(0, 5).join(' ')} ...`)
}

/** Ends a checkpoint: writing to `done` resumes the tree. */
function release(checkpoint: string): void {
  try {
    fs.writeFileSync(path.join(checkpoint, 'done'), '1\n')
  } catch (err) {
    log(`${checkpoint}/done: ${(err as Error).message} (the unmount will thaw it)`)
  }
}

/** The newest checkpoint-N directory of the mount, if any. */
function newest(mnt: string): string | undefined {
  const ids = fs.readdirSync(mnt).map((name) => /^checkpoint-([0-9]+)$/.exec(name)).filter((m) => m !== null).map((m) => Number(m![1]))
  return ids.length ? `checkpoint-${Math.max(...ids)}` : undefined
}

