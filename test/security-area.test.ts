// Issue 12, hole 1, replayed as an unprivileged user: the restore area's backing directory used
// to be $TMPDIR/ckptfs-restore-HASH (HASH of the mount point: anybody can compute it), made at
// the first large file and used whoever owned it. The attacker makes that directory first
// (once the server runs, before its first large file), with a symbolic link to a root file and
// 0666 files named 1, 2, 3 ..., and then tries to read and change what root copies into restore/. Now the server makes a fresh private directory
// when it starts: the planted one is never touched, root's file is unchanged, the attacker
// can neither read nor write the real one, and a restored process gets the memory it had.

import { createHash, randomBytes } from 'crypto'
import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import t, { type Test } from 'tap'
import { SMALL_FILE } from '../lib/restore/areatree'
import { readRecord, recordPath, STATE_DIR } from '../mount/records'
import { ckptfs, ckptfsOk } from './lib/mount'
import { checkpointSaveKill, launch, runChecks, workdir } from './lib/restore'
import { buildTarget } from './lib/targets'
import { attacker, runAs, shAs } from './lib/unprivileged'

const user = attacker()
const memTarget = buildTarget('restore_mem')

/** The name the old code gave the backing directory of `mnt`: what the attacker computes. */
function predictableBacking(mnt: string): string {
  return path.join(os.tmpdir(), `ckptfs-restore-${createHash('sha256').update(mnt).digest('hex').slice(0, 16)}`)
}

/** A mount point in a fresh directory (not mounted yet); at teardown: unmounted, removed, and the planted directory too. */
function mountPoint(t: Test): { dir: string; mnt: string; planted: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-secarea-'))
  fs.chmodSync(dir, 0o755)
  const mnt = path.join(dir, 'mnt')
  const planted = predictableBacking(mnt)
  t.teardown(() => {
    ckptfs('umount', mnt)
    fs.rmSync(dir, { recursive: true, force: true })
    fs.rmSync(planted, { recursive: true, force: true })
  })
  return { dir, mnt, planted }
}

/** As the attacker: the predictable directory, world-writable, with `1` a link to `victim` and 0666 files 2..count. */
function plant(planted: string, victim: string, count: number): void {
  shAs(user, `mkdir -m 777 '${planted}' && ln -s '${victim}' '${planted}/1' && i=2; while [ $i -le ${count} ]; do : > '${planted}'/$i; chmod 666 '${planted}'/$i; i=$((i+1)); done`)
}

/** Every entry of `dir` with its owner, mode (or link target) and bytes. */
function snapshot(dir: string): string[] {
  return fs.readdirSync(dir).sort().map((name) => {
    const p = path.join(dir, name)
    const st = fs.lstatSync(p)
    const what = st.isSymbolicLink() ? `-> ${fs.readlinkSync(p)}` : fs.readFileSync(p).toString('base64')
    return `${name} ${st.uid} ${(st.mode & 0o7777).toString(8)} ${what}`
  })
}

t.test('a backing directory planted under the old predictable name is never used; root files stay whole', async (t) => {
  const { dir, mnt, planted } = mountPoint(t)
  const victim = path.join(dir, 'victim')
  fs.writeFileSync(victim, "root's own file\n", { mode: 0o644 })
  // Planted once the server runs (the old server removed that name when it started, and
  // made it at its first large file).
  ckptfsOk('mount', mnt)
  plant(planted, victim, 8)
  const before = snapshot(planted)
  const tree = path.join(dir, 'tree')
  fs.mkdirSync(tree)
  const large = [1, 2, 3].map((i) => randomBytes(SMALL_FILE * i + 17))
  large.forEach((data, i) => fs.writeFileSync(path.join(tree, `pages-${i}`), data))
  execFileSync('cp', ['-a', tree, path.join(mnt, 'restore', 'copied')])
  large.forEach((data, i) => t.ok(fs.readFileSync(path.join(mnt, 'restore', 'copied', `pages-${i}`)).equals(data), `pages-${i} reads back byte for byte`))

  t.equal(fs.readFileSync(victim, 'utf8'), "root's own file\n", 'the root file the planted link points at is unchanged')
  t.strictSame(snapshot(planted), before, 'the planted directory is untouched: no page data in its 0666 files, nothing new')

  const record = readRecord(mnt)!
  t.not(record.backing, planted, 'the server uses a directory of its own')
  t.equal(fs.readdirSync(record.backing).length, 3, 'where the three large files are')
  const st = fs.lstatSync(record.backing)
  t.ok(st.isDirectory() && st.uid === 0 && (st.mode & 0o7777) === 0o700, 'a real directory, root-owned, mode 0700')
  for (const f of fs.readdirSync(record.backing)) {
    const fst = fs.lstatSync(path.join(record.backing, f))
    t.ok(fst.isFile() && fst.uid === 0 && (fst.mode & 0o077) === 0, `backing file ${f}: a root-owned file nobody else may open`)
  }
})

t.test('another user can neither read nor change restore-area data; a restored process gets the memory it had', async (t) => {
  const { dir, mnt, planted } = mountPoint(t)
  const victim = path.join(dir, 'victim')
  fs.writeFileSync(victim, "root's own file\n", { mode: 0o644 })
  ckptfsOk('mount', mnt)
  plant(planted, victim, 64)

  const work = workdir(t)
  const target = await launch(t, [memTarget, work], { dir: work })
  const saved = path.join(work, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const copy = path.join(mnt, 'restore', 'mem')
  execFileSync('cp', ['-a', saved, copy])

  // Between the copy and `done`: what the attack did to the pages (the planted files the old
  // server wrote them into, then the server's real ones).
  shAs(user, `for f in '${planted}'/*; do [ -L "$f" ] || head -c 8192 /dev/urandom > "$f"; done`)
  const record = readRecord(mnt)
  t.ok(record, 'the server recorded itself and its backing directory')
  const backing = record?.backing ?? planted
  const files = fs.readdirSync(backing)
  t.ok(files.length > 0, `the saved pages went to the backing directory (${files.length} files)`)
  for (const f of files) {
    const file = path.join(backing, f)
    t.not(runAs(user, ['cat', file]).status, 0, `the attacker cannot read backing file ${f}`)
    t.not(runAs(user, ['sh', '-c', `printf XXXXXXXX | dd of='${file}' conv=notrunc 2>/dev/null`]).status, 0, `nor write it`)
  }
  t.not(runAs(user, ['ls', backing]).status, 0, 'nor list the backing directory')
  t.not(runAs(user, ['touch', path.join(backing, 'planted')]).status, 0, 'nor add a file to it')
  t.not(runAs(user, ['ls', STATE_DIR]).status, 0, `nor list ${STATE_DIR}`)
  t.not(runAs(user, ['cat', recordPath(mnt)]).status, 0, 'nor read the record that names the backing directory')

  fs.writeFileSync(path.join(copy, 'done'), '1\n')
  t.equal(fs.readFileSync(path.join(copy, 'status'), 'utf8'), `restored ${target.pid}\n`, 'restored')
  const checks = await runChecks(target)
  t.ok(checks.done, 'the restored process checked itself')
  t.strictSame(checks.failed, [], 'its memory is what was saved')
  t.ok(checks.ok.includes('4 MiB region') && checks.ok.includes('anonymous'), 'its large regions included')
  t.equal(fs.readFileSync(victim, 'utf8'), "root's own file\n", 'the root file the planted link points at is unchanged')
})
