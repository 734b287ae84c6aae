// Single-process fidelity (issue 15): state that CRIU's zdtm tests check, each set up by
// test/fixtures/restore_fidelity.c, checkpointed through the real mount, saved with `cp -a`,
// killed, restored with `ckptfs restore`, and then checked by the process itself.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { ckptfsOk, mountFor } from './lib/mount'
import { checkpointSaveKill, collectChecks, exists, launch, launchSaveRestore, reseal, restoreCli, restoreOk, runChecks, waitUntil, workdir, type Checks } from './lib/restore'
import { buildTarget } from './lib/targets'
import { attacker } from './lib/unprivileged'

const mnt = mountFor(t)
const bin = buildTarget('restore_fidelity')

/** Every expected check passed, none failed, and the fixture finished. */
function expectChecks(t: Test, checks: Checks, expected: string[]): void {
  t.ok(checks.done, 'the fixture finished its checks')
  t.same(checks.failed, [], 'no check failed')
  for (const name of expected) t.ok(checks.ok.includes(name), `ok ${name}`)
}

for (const value of ['1', '3']) {
  t.test(`PR_SET_THP_DISABLE (PR_GET_THP_DISABLE ${value}) is kept (zdtm thp_disable)`, async (t) => {
    const { target, saved } = await launchSaveRestore(t, mnt, bin, ['thp', value])
    t.equal(fs.readFileSync(path.join(saved, `task-${target.pid}`, 'thp_disable'), 'utf8'), `${value}\n`, 'task-PID/thp_disable')
    expectChecks(t, await runChecks(target), ['thp_disable'])
  })
}

const MADVISED = ['dontfork', 'locked sequential', 'noreserve dontdump', 'random', 'hugepage', 'nohugepage', 'mergeable', 'wipeonfork', 'droppable', 'mlock', 'mlock onfault']

t.test('mmap flags, madvise advice and locks of each mapping are kept (zdtm maps02)', async (t) => {
  const { target } = await launchSaveRestore(t, mnt, bin, ['madvise'])
  expectChecks(t, await runChecks(target), MADVISED.map((m) => `VmFlags ${m}`))
})

t.test('a saved tree that locks more memory than its process could is refused', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir, 'madvise'], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const task = path.join(saved, `task-${target.pid}`)
  // As if the process had neither CAP_IPC_LOCK nor room under its RLIMIT_MEMLOCK.
  fs.writeFileSync(path.join(task, 'creds', 'cap_effective'), '0x0\n')
  fs.writeFileSync(path.join(task, 'rlimits', 'memlock', 'soft'), '4096\n')
  reseal(saved)
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 1, 'ckptfs restore fails')
  t.match(r.stderr, new RegExp(`task-${target.pid}/memory/vmas/[0-9a-f]+-[0-9a-f]+/vm_flags: locked \\(lo\\), \\d+ bytes locked in all, over the saved RLIMIT_MEMLOCK \\(4096\\)`), 'names the mapping and the limit')
  t.notOk(exists(target.pid), 'no process is left')
})

t.test("a memfd keeps its mode (zdtm memfd00)", async (t) => {
  const { target, saved } = await launchSaveRestore(t, mnt, bin, ['memfd'])
  const ref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '3', 'fd'), 'utf8').trim()
  t.equal(fs.readFileSync(path.join(saved, 'files', ref, 'inode_mode'), 'utf8'), '0100642\n', 'files/N/inode_mode')
  expectChecks(t, await runChecks(target), ['memfd mode', 'memfd contents', 'memfd offset'])
})

t.test('a saved memfd with a setuid bit is refused (the stub makes memfds as root)', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir, 'memfd'], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const ref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '3', 'fd'), 'utf8').trim()
  fs.writeFileSync(path.join(saved, 'files', ref, 'inode_mode'), '0104755\n')
  reseal(saved)
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 1, 'ckptfs restore fails')
  t.match(r.stderr, new RegExp(`files/${ref}/inode_mode: 0104755: a memfd with setuid, setgid or sticky bits is not restored`), 'names the file and the bits')
  t.notOk(exists(target.pid), 'no process is left')
})

t.test('a pipe with more than one open file description per end comes back with all of them, and pipes with their capacity (zdtm pipe01, pipe02, pipe03)', async (t) => {
  const { target, saved } = await launchSaveRestore(t, mnt, bin, ['pipes'])
  const refs = [3, 4, 5, 6, 7].map((fd) => fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', String(fd), 'fd'), 'utf8').trim())
  t.equal(new Set(refs).size, 5, 'five open file descriptions')
  const capacity = (fd: number) => fs.readFileSync(path.join(saved, 'files', fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', String(fd), 'fd'), 'utf8').trim(), 'capacity'), 'utf8')
  t.same([3, 8, 11].map(capacity), ['65536\n', '1048576\n', '4096\n'], 'files/N/capacity: F_GETPIPE_SZ of each pipe')
  expectChecks(t, await runChecks(target), [
    'pipe access modes', 'pipe O_NONBLOCK per description', 'pipe descriptions share one pipe', 'pipe descriptions are not shared',
    'pipe data through a reopened read end', 'pipe writes through the read-write and the write end', 'pipe data through the first read end',
    'end of file once every writer is closed', 'pipe capacity set with F_SETPIPE_SZ', 'pipe capacity lowered with F_SETPIPE_SZ',
  ])
})

t.test('an inotify watch on a deleted file that the task holds open comes back on the restored file (zdtm inotify00)', async (t) => {
  const { target, saved } = await launchSaveRestore(t, mnt, bin, ['inotify'])
  const ref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '3', 'fd'), 'utf8').trim()
  t.equal(fs.readFileSync(path.join(saved, 'files', ref, 'watches', '2', 'path'), 'utf8'), '\n', 'the deleted inode has no path')
  expectChecks(t, await runChecks(target), [
    'inotify: the watch on the deleted file sees its close', 'inotify: the directory watch sees a new file', 'inotify: a new watch gets wd 3',
  ])
})

t.test('an AIO context comes back at its address and works (zdtm aio00)', async (t) => {
  const { target, saved } = await launchSaveRestore(t, mnt, bin, ['aio'])
  const kinds = fs.readdirSync(path.join(saved, `task-${target.pid}`, 'memory', 'vmas')).map((v) => fs.readFileSync(path.join(saved, `task-${target.pid}`, 'memory', 'vmas', v, 'kind'), 'utf8'))
  t.equal(kinds.filter((k) => k === 'aio\n').length, 1, 'one aio mapping')
  expectChecks(t, await runChecks(target), ['aio: the context is there, with no event', 'aio: a read submitted after the restore completes', 'aio: io_destroy'])
})

t.test('an AIO ring holding a completed event not read yet is refused', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir, 'aio', 'pending'], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 1, 'ckptfs restore fails')
  t.match(r.stderr, new RegExp(`task-${target.pid}/memory/vmas/[0-9a-f]+-[0-9a-f]+: AIO ring with 1 completed events not read yet`), 'names the ring and why')
  t.notOk(exists(target.pid), 'no process is left')
})

t.test('two open file descriptions of one unlinked file, its names all removed, come back as one file (zdtm unlink_fstat02); files made with O_TMPFILE come back (zdtm fd01)', async (t) => {
  const { target, saved } = await launchSaveRestore(t, mnt, bin, ['unlinked-links'])
  const refs = [3, 4].map((fd) => fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', String(fd), 'fd'), 'utf8').trim())
  t.not(refs[0], refs[1], 'two open file descriptions')
  for (const ref of refs) t.equal(fs.readFileSync(path.join(saved, 'files', ref, 'unlinked'), 'utf8'), '1\n', `files/${ref} is unlinked`)
  expectChecks(t, await runChecks(target), [
    'unlinked: both descriptions are one file', 'unlinked: size, no name, mode', 'unlinked: access modes', 'unlinked: a write through one is read through the other',
    'unlinked: a tmpfile(3) file keeps its flags (O_TMPFILE) and contents', 'unlinked: a file made with O_TMPFILE and linked in is reopened by its name',
  ])
  t.equal(fs.readdirSync(path.dirname(saved)).filter((name) => name.startsWith('twice')).length, 0, 'no name was made for it')
})

t.test('an unlinked sparse file keeps its holes (zdtm ghost_holes00)', async (t) => {
  const { target } = await launchSaveRestore(t, mnt, bin, ['holes'])
  expectChecks(t, await runChecks(target), ['holes: size', 'holes: data', 'holes: the hole is a hole (SEEK_HOLE, SEEK_DATA)', 'holes: offset'])
})

t.test('private mappings of a file unlinked and closed while mapped come back from the saved contents (zdtm unlink_mmap00)', async (t) => {
  const { target, saved } = await launchSaveRestore(t, mnt, bin, ['unlinked-mmap'])
  const vmas = path.join(saved, `task-${target.pid}`, 'memory', 'vmas')
  const deleted = fs.readdirSync(vmas).filter((v) => /\/mapped \(deleted\)\n$/.test(fs.readFileSync(path.join(vmas, v, 'path'), 'utf8')))
  t.equal(deleted.length, 3, 'three mappings of the deleted file')
  // Every page the file covers is stored (the tail mapping's second page lies beyond its end).
  const stored = deleted.map((v) => fs.statSync(path.join(vmas, v, 'pages')).size).sort((a, b) => a - b)
  t.same(stored, [4096, 4096, 4096], 'the pages the file covers are stored')
  expectChecks(t, await runChecks(target), [
    'unlinked mmap: the read-only mapping', 'unlinked mmap: the writable mapping and its private copy', 'unlinked mmap: the last page of the file',
    "unlinked mmap: a memfd's private mapping",
  ])
})

for (const resumedFirst of [false, true]) {
  // A task frozen and resumed before (here by a checkpoint resumed with done) resumes its
  // sleeps through restart_syscall: its registers no longer name the call.
  const how = resumedFirst ? ', also after a checkpoint it was resumed from (restart_syscall)' : ''
  t.test(`a thread blocked in a call with a timeout waits only the time it had left, where the call shows it${how} (issue 15, zdtm poll)`, async (t) => {
    const dir = workdir(t)
    const target = await launch(t, [bin, dir, 'sleeps'], { dir, ready: (tg) => /^ready pid=\d+$/m.test(tg.text()) })
    const since = BigInt((await target.waitFor(/^sleeping since=(\d+)$/m))[1])
    if (resumedFirst) {
      const first = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
      fs.writeFileSync(path.join(first, 'done'), 'resume\n')
    }
    // Let some of the 600 s pass, so a call that started over would be seen to: not an assertion on time.
    await new Promise((resolve) => setTimeout(resolve, 3000))
    const requested = process.hrtime.bigint() // CLOCK_MONOTONIC, as the fixture's
    const saved = path.join(dir, 'saved')
    await checkpointSaveKill(mnt, target.pid, saved)
    if (resumedFirst) {
      const restarting = fs.readdirSync(path.join(saved, `task-${target.pid}`, 'threads'))
        .filter((tid) => fs.readFileSync(path.join(saved, `task-${target.pid}`, 'threads', tid, 'syscall_nr'), 'utf8') === '219\n')
      t.ok(restarting.length >= 4, `threads in restart_syscall at the checkpoint (${restarting.length})`)
    }
    restoreOk(mnt, saved, target.pid)
    const go = path.join(dir, 'go')
    fs.writeFileSync(`${go}.part`, `${requested - since}\n`)
    fs.renameSync(`${go}.part`, go)
    const names = ['nanosleep', 'clock_nanosleep', 'select', 'pselect6', 'ppoll', 'poll', 'epoll_wait', 'nanosleep without rem']
    const withLeft = ['nanosleep', 'clock_nanosleep', 'select', 'pselect6', 'ppoll']
    const checks = await collectChecks(target)
    if (resumedFirst) {
      // The fixture's nanosleep goes through syscall(2), which loads the call's number from a
      // register, not with a `mov $35, %eax` before its syscall instruction: not identified, it
      // returns EINTR (with the time left in rem, as the next check shows), as documented.
      t.match(checks.failed, [/^FAIL: sleep: nanosleep still waiting after the restore: returned -1 \(Interrupted system call\) before our signal$/], 'the raw nanosleep returns EINTR')
      checks.failed = checks.failed.slice(1)
      names.splice(names.indexOf('nanosleep'), 1)
    }
    expectChecks(t, checks, [
      ...names.map((n) => `sleep: ${n} still waiting after the restore`),
      ...withLeft.map((n) => `sleep: ${n} waits only the time left`),
    ])
  })
}

t.test('a real interval timer that fired while the task was frozen keeps ticking after the restore (zdtm timers)', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir, 'itimer'], { dir })
  const ck = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  // Ten periods pass while the task is frozen: the timer fires, and the kernel re-arms a
  // real interval timer only when its SIGALRM is taken, so until then it reads 0.
  await new Promise((resolve) => setTimeout(resolve, 200))
  const saved = path.join(dir, 'saved')
  execFileSync('cp', ['-a', ck, saved])
  fs.writeFileSync(path.join(ck, 'done'), 'kill\n')
  await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid))
  const timer = path.join(saved, `task-${target.pid}`, 'timers', 'itimer_real')
  t.equal(fs.readFileSync(path.join(timer, 'value_us'), 'utf8'), '0\n', 'saved: the timer had fired, its signal not taken yet')
  t.equal(fs.readFileSync(path.join(timer, 'interval_us'), 'utf8'), '20000\n', 'saved: its interval')
  restoreOk(mnt, saved, target.pid)
  expectChecks(t, await runChecks(target), ['itimer: ITIMER_REAL ticks after the restore', 'itimer: its interval'])
})

/** The state letter of /proc/PID/stat (T: stopped). */
const stateOf = (pid: number): string => {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
}

t.test('a process stopped by SIGSTOP comes back stopped, and SIGCONT resumes it (zdtm stopped)', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir, 'stopped'], { dir, ready: (tg) => /^stopping pid=\d+$/m.test(tg.text()) })
  await waitUntil('the fixture to stop itself', () => stateOf(target.pid) === 'T')
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  t.equal(fs.readFileSync(path.join(saved, `task-${target.pid}`, 'stop_signal'), 'utf8'), '19\n', 'task-PID/stop_signal: SIGSTOP')
  restoreOk(mnt, saved, target.pid)
  // Let go with SIGSTOP queued: it stops as soon as it runs (a process left running never does).
  await waitUntil('the restored process to stop', () => stateOf(target.pid) === 'T')
  t.equal(stateOf(target.pid), 'T', 'it is stopped (T)')
  process.kill(target.pid, 'SIGCONT')
  expectChecks(t, await runChecks(target), ['stopped: resumed by SIGCONT'])
})

t.test('a file, a mapping and a cwd the process can no longer open (it dropped its ids) come back when root stored the checkpoint, not when a user did (zdtm pid00)', async (t) => {
  const user = attacker()
  const dir = workdir(t)
  const target = await launch(t, [bin, dir, 'dropped-ids', String(user.uid), String(user.gid)], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  // Stored by the user it runs as, the restorer must not open for it what it cannot open itself.
  execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, saved])
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 1, 'a copy the user owns: refused')
  // Its stdout, the test's log (root's, 0644), is the first file it can no longer open.
  t.match(r.stderr, new RegExp(`fd 1 \\(files/\\d+\\): open ${dir}/out: Permission denied`), 'names the file')
  t.notOk(exists(target.pid), 'no process is left')
  execFileSync('chown', ['-R', '0:0', saved])
  restoreOk(mnt, saved, target.pid)
  expectChecks(t, await runChecks(target), [
    'dropped ids: the mapping of a file it can no longer open', 'dropped ids: the cwd it can no longer enter', 'dropped ids: its ids', 'dropped ids: it still cannot open the file',
  ])
})

t.test('an unlinked sparse file of 2 GiB and a 3 MiB memfd come back whole, holes kept, without passing through memory whole (zdtm unlink_largefile)', async (t) => {
  const { target, saved } = await launchSaveRestore(t, mnt, bin, ['big-unlinked'])
  const files = path.join(saved, `task-${target.pid}`, 'fds')
  t.ok(fs.existsSync(files), 'saved')
  expectChecks(t, await runChecks(target), [
    'big-unlinked: size', 'big-unlinked: holes take no room', 'big-unlinked: SEEK_DATA and SEEK_HOLE', 'big-unlinked: data', 'big-unlinked: offset',
    "big-unlinked: the memfd's 3 MiB and offset",
  ])
})

t.test('a shared file mapping from a file open for writing can be made writable after the restore, one from a read-only fd cannot (zdtm maps_file_prot)', async (t) => {
  const { target } = await launchSaveRestore(t, mnt, bin, ['may-write'])
  expectChecks(t, await runChecks(target), [
    'may-write: mprotect(PROT_WRITE) of the read-only part', 'may-write: both writes reach the file', 'may-write: a file mapped from a read-only fd stays unwritable',
  ])
})

t.test('the child subreaper attribute comes back: an orphaned grandchild is reparented to the restored process (zdtm child_subreaper)', async (t) => {
  const { target, saved } = await launchSaveRestore(t, mnt, bin, ['subreaper'])
  t.equal(fs.readFileSync(path.join(saved, `task-${target.pid}`, 'child_subreaper'), 'utf8'), '1\n', 'task-PID/child_subreaper: 1')
  expectChecks(t, await runChecks(target), ['subreaper: PR_GET_CHILD_SUBREAPER', 'subreaper: an orphaned grandchild is reparented to it', 'subreaper: it reaps the grandchild'])
})

t.test('seccomp strict mode comes back in a thread that is not the main thread and in the main thread of a child, blocked in read() (zdtm seccomp_strict)', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [bin, dir, 'strict'], { dir })
  const [, child, tid] = (await target.waitFor(/^strict child=(\d+) thread=(\d+)$/m)).map(Number)
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const read = (rel: string) => fs.readFileSync(path.join(saved, rel), 'utf8')
  t.equal(read(`task-${target.pid}/threads/${tid}/seccomp_strict`), '1\n', 'threads/TID/seccomp_strict: the thread is in strict mode')
  t.equal(read(`task-${target.pid}/threads/${target.pid}/seccomp_strict`), '0\n', 'its main thread is not')
  t.equal(read(`task-${target.pid}/seccomp_mode`), '0\n', 'seccomp_mode is the main thread\'s: 0')
  t.equal(read(`task-${child}/threads/${child}/seccomp_strict`), '1\n', 'the child\'s main thread is in strict mode')
  t.equal(read(`task-${child}/seccomp_mode`), '1\n', 'the child\'s seccomp_mode: 1')
  restoreOk(mnt, saved, target.pid)
  t.match(ckptfsOk('show', saved), /seccomp\s+strict mode on 1 thread\n/, 'ckptfs show: the seccomp line')
  expectChecks(t, await runChecks(target), [
    'strict: the thread is in strict mode', 'strict: the main thread is not', 'strict: the thread reads and writes', 'strict: the thread exits',
    'strict: the child process is in strict mode', 'strict: the child reads and writes', 'strict: the child exits by itself',
  ])
})

t.test('seccomp filters come back in each thread, oldest first, though the task dropped the ids it installed them with; a bad filter is refused before the task runs (zdtm seccomp_filter)', async (t) => {
  const user = attacker()
  const dir = workdir(t)
  const target = await launch(t, [bin, dir, 'seccomp', String(user.uid), String(user.gid)], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const seccomp = path.join(saved, `task-${target.pid}`, 'seccomp')
  const read = (rel: string) => fs.readFileSync(path.join(seccomp, rel), 'utf8')
  // The filter both threads inherited is stored once: 1, then 2 (main thread, logged) and 3 (the other thread) after it.
  t.same(fs.readdirSync(path.join(seccomp, 'filters')).sort(), ['1', '2', '3'], 'seccomp/filters: three filters')
  t.same([1, 2, 3].map((n) => read(`filters/${n}/prev`)), ['0\n', '1\n', '1\n'], 'filters/N/prev: 2 and 3 follow 1')
  t.same([1, 2, 3].map((n) => read(`filters/${n}/flags`)), ['0x0\n', '0x2\n', '0x0\n'], 'filters/N/flags: 2 has SECCOMP_FILTER_FLAG_LOG')
  t.equal(fs.statSync(path.join(seccomp, 'filters', '1', 'insns')).size, 4 * 8, 'filters/1/insns: 4 instructions of 8 bytes')
  const tids = fs.readdirSync(path.join(seccomp, 'threads')).map(Number).sort((a, b) => a - b)
  t.equal(tids.length, 2, 'seccomp/threads: both threads')
  const other = tids.find((tid) => tid !== target.pid)!
  t.equal(read(`threads/${target.pid}/filter`), '2\n', 'the main thread ends with filter 2')
  t.equal(read(`threads/${other}/filter`), '3\n', 'the other thread ends with filter 3')

  // A copy whose filter 3 is one load and no return, resealed: the kernel's checker refuses it
  // (EINVAL) when it is installed. (The validator's refusals: test/image.test.ts.)
  const invalid = path.join(dir, 'invalid')
  execFileSync('cp', ['-a', saved, invalid])
  // The task's entries are its uid's (it dropped to it): root's copy, which seal may rewrite.
  execFileSync('chown', ['-R', '0:0', invalid])
  fs.writeFileSync(path.join(invalid, `task-${target.pid}`, 'seccomp', 'filters', '3', 'insns'), Buffer.from('2000000000000000', 'hex'))
  reseal(invalid)
  const refused = restoreCli(mnt, invalid)
  t.equal(refused.status, 1, 'a program the kernel does not take: refused')
  t.match(refused.stderr, new RegExp(`install seccomp filter 2 of 2 \\(task-${target.pid}/seccomp/filters/3\\) in thread ${other}: EINVAL`), 'names the filter, the thread and EINVAL')
  t.notOk(exists(target.pid), 'no process is left')
  // The copy as `cp -a` made it: the task's entries are the user's, so the user stored it.
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 1, "the same filters in a copy the user owns: refused (the task had no no_new_privs)")
  t.match(r.stderr, new RegExp(`task-${target.pid}/seccomp: seccomp filters without no_new_privs, but .* is owned by uid ${user.uid}`), 'names the rule')
  t.notOk(exists(target.pid), 'no process is left')

  execFileSync('chown', ['-R', '0:0', saved])
  restoreOk(mnt, saved, target.pid)
  t.match(ckptfsOk('show', saved), /seccomp\s+3 filters \(12 instructions, 1 logged\) on 2 threads, no_new_privs off/, 'ckptfs show: a seccomp line')
  expectChecks(t, await runChecks(target), [
    'seccomp: main thread: status', 'seccomp: main thread: getppid Operation not permitted', 'seccomp: main thread: getsid Permission denied', 'seccomp: main thread: getpgid allowed',
    'seccomp: thread: status', 'seccomp: thread: getppid Operation not permitted', 'seccomp: thread: getpgid Invalid cross-device link', 'seccomp: thread: getsid allowed',
  ])
})
