// Restore, end to end: real programs checkpointed through the real mount, saved with `cp -a`
// (or tar), killed, restored with `ckptfs restore` (or through restore/NAME/done), and then
// checking themselves (the fixtures in test/fixtures/restore_*.c write "ok NAME" or
// "FAIL: NAME: WHAT" per check to their log file). Single-threaded processes.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfs, ckptfsOk, mounted, mountFor } from './lib/mount'
import {
  checkpointSaveKill, collectChecks, exists, launch, launchSaveRestore, listTree, ppidOf, procState, reseal, restoreCli, restoreOk, runChecks, sleep, syscallOf, waitUntil,
  workdir, type Checks,
} from './lib/restore'
import { buildTarget } from './lib/targets'

// One mount for every test but the one that unmounts its own.
const mnt = mountFor(t)

const bin = {
  mem: buildTarget('restore_mem'),
  cpu: buildTarget('restore_cpu'),
  proc: buildTarget('restore_proc'),
  files: buildTarget('restore_files'),
  small: buildTarget('restore_small', ['-static']),
  counter: buildTarget('counter'),
  manymaps: buildTarget('restore_manymaps'),
  relink: buildTarget('restore_relink'),
}

/** Every expected check passed, none failed, and the fixture finished. */
function expectChecks(t: Test, checks: Checks, expected: string[]): void {
  t.ok(checks.done, 'the fixture finished its checks')
  t.same(checks.failed, [], 'no check failed')
  for (const name of expected) t.ok(checks.ok.includes(name), `ok ${name}`)
}

function serverPid(mnt: string): number {
  const found = execFileSync('pgrep', ['-f', `mount ${mnt} --foreground`], { encoding: 'utf8' }).trim().split('\n').map(Number)
  if (found.length !== 1) throw new Error(`${found.length} servers for ${mnt}`)
  return found[0]
}

/** The children of every thread of `pid`. */
function childrenOf(pid: number): number[] {
  return fs.readdirSync(`/proc/${pid}/task`).flatMap((tid) => fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number))
}

/** A saved tree's maps file in a form two checkpoints of the same layout share. */
function layoutOf(mapsFile: string): string[] {
  return fs.readFileSync(mapsFile, 'utf8').split('\n').filter((l) => l && !l.startsWith('#')).map((line) => {
    // start-end perms offset dev inode kind stored_bytes vm_flags path
    const f = line.split(' ')
    if (f[5] === 'shared-anonymous') f[4] = '(new shmem inode)'
    f[6] = '-'
    return f.join(' ')
  })
}

t.test('memory: every mapping, its contents, brk, the mm fields and the vdso', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin.mem, dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const task = path.join(saved, `task-${target.pid}`)
  restoreOk(mnt, saved, target.pid)

  t.equal(fs.readlinkSync(`/proc/${target.pid}/exe`), bin.mem, '/proc/PID/exe names the program')
  t.ok(fs.readFileSync(`/proc/${target.pid}/cmdline`).equals(fs.readFileSync(path.join(task, 'cmdline'))), '/proc/PID/cmdline reads the same')
  t.ok(fs.readFileSync(`/proc/${target.pid}/environ`).equals(fs.readFileSync(path.join(task, 'environ'))), '/proc/PID/environ reads the same')
  // A second checkpoint of the restored process shows the same layout: addresses, protections, offsets, files, VmFlags.
  const again = ckptfsOk('checkpoint', String(target.pid), '--copy', '--mount', mnt)
  const layout = layoutOf(path.join(again, `task-${target.pid}`, 'memory', 'maps'))
  fs.writeFileSync(path.join(again, 'done'), '1')
  t.same(layout, layoutOf(path.join(task, 'memory', 'maps')), 'every mapping is back with its address, protection, offset, file and flags')

  expectChecks(t, await runChecks(target), [
    'maps', 'anonymous', 'untouched page reads zero', 'read-only contents', 'PROT_NONE contents', '4 MiB region', 'MADV_HUGEPAGE region', 'MAP_NORESERVE region',
    'MAP_NORESERVE flag', 'DONTFORK/DONTDUMP flags', 'DONTFORK contents', 'shared anonymous contents', 'shared anonymous is shared',
    'private file mapping: dirty page', 'private file mapping: clean pages', 'private file mapping: a clean page shows the file',
    'private file mapping: the dirty page stays private', 'shared file mapping contents', 'shared file mapping writes reach the file', 'heap blocks', 'brk',
    'cmdline', 'environ', 'auxv', 'exe', 'vdso at AT_SYSINFO_EHDR', 'clock_gettime', 'gettimeofday and time', 'stack grows', 'malloc after restore grows brk',
  ])
})

const CPU_CHECKS = ['mxcsr', 'x87 control word', 'tls (fs base)', 'signal mask', 'sigaltstack', 'rseq registered', 'sched_getcpu follows migrations', 'robust futex list restored', 'clock_gettime (vdso)']

t.test('a task mapping 300 files with only three fds open comes back (one fd per mapped file while memory is rebuilt)', async (t) => {
  const { target } = await launchSaveRestore(t, mnt, bin.manymaps, ['300'])
  expectChecks(t, await runChecks(target), ['every mapped file', 'no fd left open by the restore'])
})

t.test('registers and xsave state in a running AVX loop, fs base, signal mask, altstack, rseq', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin.cpu, dir, 'avx'], { dir })
  await sleep(200)
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const thread = path.join(saved, `task-${target.pid}`, 'threads', String(target.pid))
  t.equal(fs.readFileSync(path.join(thread, 'syscall_nr'), 'utf8'), '-1\n', 'it was checkpointed in user mode, inside the loop')
  restoreOk(mnt, saved, target.pid)
  await sleep(300)
  t.equal(procState(target.pid), 'R', 'the loop runs on')
  process.kill(target.pid, 'SIGUSR1')
  expectChecks(t, await collectChecks(target), ['ymm registers across the checkpoint', 'SIGUSR1 handler on the alternate stack', ...CPU_CHECKS])
})

// A task checkpointed inside a blocking system call: after the restore the call is issued
// again (restart codes) or fails with EINTR where the kernel would; never a raw -ERESTART*.
const BLOCKED = [
  // Resumed through restart_syscall with the time it had left, as the kernel resumes a sleep (lib/restore/restart.ts).
  { mode: 'nanosleep', nr: 230, code: '-516', signal: false, blocks: true, check: 'nanosleep', resumesAs: 219 },
  { mode: 'pause', nr: 34, code: '-514', signal: true, blocks: true, check: 'pause' },
  { mode: 'read', nr: 0, code: '-512', signal: true, blocks: true, check: 'read restarted' },
  { mode: 'read-eintr', nr: 0, code: '-512', signal: true, blocks: true, check: 'read interrupted' },
  // wait4 for a child: the child is part of the checkpoint now (test/trees.test.ts).
]

for (const b of BLOCKED) {
  t.test(`a task blocked in ${b.mode} resumes as the kernel would`, async (t) => {
      const dir = workdir(t)
    const target = await launch(t, [bin.cpu, dir, b.mode], { dir })
    const child = /^child (\d+)$/m.exec(target.text())
    if (child) target.alsoKill(Number(child[1]))
    await waitUntil(`${b.mode}: system call ${b.nr}`, () => syscallOf(target.pid) === b.nr && procState(target.pid) === 'S')
    const saved = path.join(dir, 'saved')
    await checkpointSaveKill(mnt, target.pid, saved)
    const thread = path.join(saved, `task-${target.pid}`, 'threads', String(target.pid))
    t.equal(fs.readFileSync(path.join(thread, 'syscall_nr'), 'utf8').trim(), String(b.nr), 'checkpointed inside the call')
    t.equal(fs.readFileSync(path.join(thread, 'syscall_result'), 'utf8').trim(), b.code, `with the restart code ${b.code}`)
    restoreOk(mnt, saved, target.pid)
    await sleep(300)
    if (b.blocks) {
      t.notOk(/^(ok|FAIL)/m.test(target.text()), 'still blocked after the restore')
      // Checkpointed again in the same call, it shows the very same CPU state. A sleep with a
      // restart block (-516) is in restart_syscall (219) by then, as after a SIGSTOP and
      // SIGCONT: only orig_rax, the call's number, differs.
      const again = ckptfsOk('checkpoint', String(target.pid), '--copy', '--mount', mnt)
      const now = path.join(again, `task-${target.pid}`, 'threads', String(target.pid))
      for (const file of ['regs', 'xstate', 'sigmask', 'fs_base', 'altstack_sp', 'altstack_size', 'altstack_flags', 'rseq_pointer', 'rseq_size', 'rseq_signature']) {
        if (file === 'regs' && b.resumesAs !== undefined) {
          const regs = fs.readFileSync(path.join(now, file))
          const ORIG_RAX = 15 * 8
          t.equal(regs.readBigInt64LE(ORIG_RAX), BigInt(b.resumesAs), `in system call ${b.resumesAs} (restart_syscall)`)
          regs.writeBigInt64LE(BigInt(b.nr), ORIG_RAX)
          t.ok(regs.equals(fs.readFileSync(path.join(thread, file))), 'regs is what was saved, but for orig_rax')
          continue
        }
        t.ok(fs.readFileSync(path.join(now, file)).equals(fs.readFileSync(path.join(thread, file))), `${file} is what was saved`)
      }
      fs.writeFileSync(path.join(again, 'done'), '1')
    }
    if (b.signal) process.kill(target.pid, 'SIGUSR1')
    expectChecks(t, await collectChecks(target), [b.check, ...CPU_CHECKS])
  })
}

const PROC_CHECKS = [
  'every signal action', 'handlers run after restore', 'pending signals', 'queued signals keep their order and values', 'thread-directed queued signal', 'pending SIGTRAP',
  'SIGUSR1 from kill()', 'ITIMER_REAL', 'ITIMER_VIRTUAL', 'ITIMER_PROF unset', 'credentials (/proc/self/status)', 'uids, gids, groups', 'securebits', 'cwd', 'umask', 'rlimits',
  'comm', 'personality', 'session and process group', 'no_new_privs', 'dumpable', 'POSIX timers', 'POSIX timers (/proc/self/timers)',
]

t.test('signal actions, pending signals, itimers, credentials, cwd, umask, rlimits, comm, personality, session (restore/NAME/done)', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin.proc, dir, 'proc'], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  // The shell way: cp -a into restore/, echo 1 > done, cat status.
  execFileSync('bash', ['-c', `cp -a "${saved}" "${mnt}/restore/proc" && echo 1 > "${mnt}/restore/proc/done"`])
  t.equal(fs.readFileSync(path.join(mnt, 'restore', 'proc', 'status'), 'utf8'), `restored ${target.pid}\n`, 'status says restored PID')
  t.equal(fs.readFileSync(`/proc/${target.pid}/comm`, 'utf8'), 'zoo-renamed\n', '/proc/PID/comm')
  process.kill(target.pid, 'SIGUSR2')
  process.kill(target.pid, 35)
  await sleep(100)
  expectChecks(t, await runChecks(target), PROC_CHECKS)
})

t.test('a root process that gave up capabilities gets none of them back', async (t) => {
  const { target, saved } = await launchSaveRestore(t, mnt, bin.proc, ['caps'])
  const status = fs.readFileSync(`/proc/${target.pid}/status`, 'utf8')
  for (const [line, file] of [['CapInh', 'cap_inheritable'], ['CapPrm', 'cap_permitted'], ['CapEff', 'cap_effective'], ['CapBnd', 'cap_bounding'], ['CapAmb', 'cap_ambient']]) {
    const savedMask = BigInt(fs.readFileSync(path.join(saved, `task-${target.pid}`, 'creds', file), 'utf8').trim())
    const now = BigInt('0x' + new RegExp(`^${line}:\\s*([0-9a-f]+)$`, 'm').exec(status)![1])
    t.equal(now, savedMask, `${line} is the saved ${file} (0x${savedMask.toString(16)})`)
  }
  process.kill(target.pid, 'SIGUSR2')
  process.kill(target.pid, 35)
  await sleep(100)
  expectChecks(t, await runChecks(target), PROC_CHECKS)
})

t.test('a chrooted process keeps its root and cwd (restored from a tar round trip)', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin.proc, dir, 'chroot'], { dir })
  const checkpoint = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  const archive = path.join(dir, 'tree.tar')
  execFileSync('tar', ['-cf', archive, '-C', mnt, path.basename(checkpoint)])
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill')
  await waitUntil('the original to be gone', () => !exists(target.pid))
  execFileSync('tar', ['-xf', archive, '-C', path.join(mnt, 'restore')])
  fs.writeFileSync(path.join(mnt, 'restore', path.basename(checkpoint), 'done'), '1\n')
  t.equal(fs.readFileSync(path.join(mnt, 'restore', path.basename(checkpoint), 'status'), 'utf8'), `restored ${target.pid}\n`, 'status says restored PID')
  t.equal(fs.readlinkSync(`/proc/${target.pid}/root`), dir, 'root')
  t.equal(fs.readlinkSync(`/proc/${target.pid}/cwd`), path.join(dir, 'sub'), 'cwd')
  process.kill(target.pid, 'SIGUSR2')
  process.kill(target.pid, 35)
  await sleep(100)
  // /proc is not inside the chroot: the fixture skips its /proc/self/timers check there.
  expectChecks(t, await runChecks(target), [...PROC_CHECKS.filter((c) => c !== 'POSIX timers (/proc/self/timers)'), 'root (chroot)'])
})

t.test('the file table: numbers, flags, close-on-exec, sharing, offsets, unlinked files, devices, pipes, fifos, eventfds', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin.files, dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const before = listTree(dir)
  restoreOk(mnt, saved, target.pid)
  t.same(listTree(dir), before, 'nothing new in its directory (the unlinked file is unlinked again)')
  // Someone else appends to the log meanwhile: the restored O_APPEND stdout goes on after it.
  fs.appendFileSync(target.out, 'marker from the test\n')
  const checks = await runChecks(target)
  expectChecks(t, checks, [
    ...[0, 1, 2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 900].map((fd) => `fd ${fd}`),
    'dup shares the offset', 'separate open keeps its offset', 'O_APPEND', 'read-only stays read-only (ro.txt)', 'read-only stays read-only (data.txt)',
    'O_TRUNC not applied again', 'directory fd lists its entries', 'unlinked file', 'unlinked file offset', '/dev/null', '/dev/zero', 'fd 900',
    'pipe keeps its bytes', 'pipe read end is non-blocking', 'pipe ends are connected', 'pipe with swapped ends and a dup', 'fifo keeps its bytes', 'fifo ends are connected', 'eventfd counter',
    'eventfd semaphore', 'memfd', 'stdout and stderr append',
  ])
  const text = target.text()
  const marker = text.indexOf('marker from the test\n')
  t.ok(marker >= 0 && marker < text.indexOf('ok fd 0\n'), 'the log was appended to after the marker, not overwritten')
  t.match(text, /\nstderr line\n/, 'stderr appends to the log too')
  t.same(listTree(dir).filter((p) => p !== 'go'), before, 'still nothing new in its directory')
})

t.test('an unlinked file with another hard link is opened through that link again (reference/000)', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin.relink, dir], { dir })
  const saved = path.join(dir, 'saved')
  const checkpoint = await checkpointSaveKill(mnt, target.pid, saved)
  const fd3 = path.join(saved, `task-${target.pid}`, 'fds', '3', 'fd')
  const files = path.join(saved, 'files', fs.readFileSync(fd3, 'utf8').trim())
  t.equal(fs.readFileSync(path.join(files, 'unlinked'), 'utf8'), '1\n', `${checkpoint}: the file is shown as unlinked`)
  t.equal(fs.readFileSync(path.join(files, 'other_links'), 'utf8'), `${path.join(dir, 'b')}\n`, 'its other link is recorded')
  const before = listTree(dir)
  restoreOk(mnt, saved, target.pid)
  t.same(listTree(dir), before, 'nothing new in its directory')
  expectChecks(t, await runChecks(target), ['fd 3 shares its inode with b', 'offset', 'a write through fd 3 reaches b', 'the new a is untouched', 'b is the only link'])
})

t.test('the restored process is on its own: reparented, and the server can be unmounted', async (t) => {
  const mnt = mountFor(t)
  const dir = workdir(t)
  const log = path.join(dir, 'count.log')
  const target = await launch(t, [bin.counter, log, '50'], { dir })
  await waitUntil('a few counts', () => fs.existsSync(log) && fs.readFileSync(log, 'utf8').split('\n').length > 4)
  await checkpointSaveKill(mnt, target.pid, path.join(dir, 'saved'))
  const server = serverPid(mnt)
  restoreOk(mnt, path.join(dir, 'saved'), target.pid)
  t.not(ppidOf(target.pid), server, 'its parent is not the server')
  t.notOk(childrenOf(server).includes(target.pid), 'the server has no such child')
  t.same(childrenOf(server), [], 'the server has no children left at all (no keeper, no stub)')
  const counted = () => fs.readFileSync(log, 'utf8').trim().split('\n').length
  const n = counted()
  await waitUntil('counting after the restore', () => counted() > n + 3)
  ckptfsOk('umount', mnt)
  t.notOk(mounted(mnt), 'unmounted')
  const m = counted()
  await waitUntil('counting after the unmount', () => counted() > m + 3)
  t.equal(procState(target.pid), 'S', 'alive and well')
  const counts = fs.readFileSync(log, 'utf8').trim().split('\n').map(Number)
  t.ok(counts.every((c, i) => c === i + 1), `the count has no gap and no repeat (${counts.length} lines)`)
})

t.test('python3: a counter printing to a file continues with no gap and no repeat', async (t) => {
  const dir = workdir(t)
  const log = path.join(dir, 'count.log')
  const script = 'import sys, time\nf = open(sys.argv[1], "a", buffering=1)\nn = 0\nwhile True:\n    n += 1\n    f.write(f"{n}\\n")\n    time.sleep(0.03)\n'
  const lines = () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').trim().split('\n').filter(Boolean) : [])
  const target = await launch(t, ['python3', '-c', script, log], { dir, ready: () => lines().length >= 5 })
  t.match(target.exe, /python3/, 'a real python3 process')
  await checkpointSaveKill(mnt, target.pid, path.join(dir, 'saved'))
  const atCheckpoint = lines().length
  restoreOk(mnt, path.join(dir, 'saved'), target.pid)
  await waitUntil('python to count on', () => lines().length > atCheckpoint + 10)
  const counts = lines().map(Number)
  t.ok(counts.every((c, i) => c === i + 1), `no gap and no repeat: ${counts.slice(Math.max(0, atCheckpoint - 3), atCheckpoint + 3).join(' ')} ...`)
  t.equal(fs.readlinkSync(`/proc/${target.pid}/exe`), target.exe, 'the same executable')
})

t.test('sleep 1000 comes back sleeping', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, ['sleep', '1000'], {
    dir,
    ready: (tg) => {
      try {
        return fs.readlinkSync(`/proc/${tg.pid}/exe`).endsWith('/sleep') && syscallOf(tg.pid) === 230
      } catch {
        return false
      }
    },
  })
  const cmdline = fs.readFileSync(`/proc/${target.pid}/cmdline`)
  await checkpointSaveKill(mnt, target.pid, path.join(dir, 'saved'))
  restoreOk(mnt, path.join(dir, 'saved'), target.pid)
  await sleep(1000)
  t.equal(procState(target.pid), 'S', 'sleeping')
  // Its clock_nanosleep resumed through restart_syscall with the time it had left, as the kernel resumes a sleep.
  t.equal(syscallOf(target.pid), 219, 'in restart_syscall, resuming its clock_nanosleep')
  t.ok(fs.readFileSync(`/proc/${target.pid}/cmdline`).equals(cmdline), 'same command line')
  t.equal(fs.readlinkSync(`/proc/${target.pid}/exe`), target.exe, 'the same executable')
  process.kill(target.pid, 'SIGTERM')
  await waitUntil('SIGTERM to end it', () => procState(target.pid) !== 'S')
  t.pass('it dies of SIGTERM like a sleep does')
})

t.test('nothing is left behind after a failed restore, and the server keeps answering', async (t) => {
  const dir = workdir(t)
  // Its own copy of the program (a file mapping that can be taken away) and a cwd that can go.
  const program = path.join(dir, 'restore_small')
  fs.copyFileSync(bin.small, program)
  fs.chmodSync(program, 0o755)
  fs.mkdirSync(path.join(dir, 'sub'))
  const sub = path.join(dir, 'sub')
  const target = await launch(t, [program, dir], { dir, cwd: sub })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const server = serverPid(mnt)
  const before = listTree(dir)
  const area = path.join(mnt, 'restore')
  const areaBefore = fs.readdirSync(area)

  // Values edited on purpose are resealed (ckptfs seal): the restore judges them, not values_crc32c.
  const failing = async (what: string, expected: RegExp, damage: () => void, undo: () => void) => {
    damage()
    reseal(saved)
    const r = restoreCli(mnt, saved)
    undo()
    reseal(saved)
    t.equal(r.status, 1, `${what}: exit status 1`)
    t.match(r.stderr, expected, `${what}: says why`)
    t.equal(r.stderr.split('\n').length, 2, `${what}: one line`)
    t.notOk(exists(target.pid), `${what}: no process (nor zombie) ${target.pid}`)
    t.same(childrenOf(server), [], `${what}: the server has no children left`)
    t.same(listTree(dir), before, `${what}: no stray file (${listTree(dir).filter((p) => !before.includes(p)).join(', ') || 'none'})`)
    t.ok(fs.readdirSync(mnt).includes('restore'), `${what}: the server still answers`)
    t.same(fs.readdirSync(area), areaBefore, `${what}: the copy ckptfs restore made in restore/ is gone`)
  }

  // 1. The stub fails after creating the unlinked file's unnamed copy (reopening it fails).
  const unlinked = fs.readdirSync(path.join(saved, 'files')).find((n) => fs.readFileSync(path.join(saved, 'files', n, 'unlinked'), 'utf8') === '1\n')!
  const flagsFile = path.join(saved, 'files', unlinked, 'f_flags')
  const flags = fs.readFileSync(flagsFile, 'utf8')
  await failing('the stub fails', new RegExp(`^ckptfs restore: .*fd [0-9]+ \\(files/${unlinked}\\): open /proc/self/fd/[0-9]+: Not a directory\\n$`), () => {
    fs.writeFileSync(flagsFile, `0${(parseInt(flags, 8) | 0o200000).toString(8)}\n`) // O_DIRECTORY
  }, () => fs.writeFileSync(flagsFile, flags))

  // 2. The memory stage fails: the program's file is gone.
  await failing('a mapped file is missing', new RegExp(`^ckptfs restore: restore: open ${program} to map it: ENOENT`), () => {
    fs.renameSync(program, program + '.away')
  }, () => fs.renameSync(program + '.away', program))

  // 3. The process state fails late (after the memory is in place): the cwd is gone.
  await failing('the cwd is gone', new RegExp(`^ckptfs restore: restore: chdir ${sub}: ENOENT`), () => fs.rmdirSync(sub), () => fs.mkdirSync(sub))

  // 4. The tree itself is refused while ckptfs restore turns it into an image, before anything goes into restore/.
  const posFile = path.join(saved, 'files', unlinked, 'f_pos')
  const pos = fs.readFileSync(posFile, 'utf8')
  await failing('a value is malformed', new RegExp(`^ckptfs restore: files/${unlinked}/f_pos: not a decimal integer: "x"\n$`), () => fs.writeFileSync(posFile, 'x\n'), () => fs.writeFileSync(posFile, pos))

  // After all that, the saved tree restores and the program is whole.
  restoreOk(mnt, saved, target.pid)
  expectChecks(t, await runChecks(target), ['data.txt at its offset', 'unlinked file', 'pipe bytes', 'eventfd'])
  t.same(listTree(dir).filter((p) => p !== 'go'), before, 'no stray file after the good restore either')
  t.same(fs.readdirSync(area), areaBefore, 'nor its copy in restore/')
  t.equal(ckptfs('restore', path.join(dir, 'no-such-tree'), '--mount', mnt).status, 1, 'a path that is not there is refused too')
})
