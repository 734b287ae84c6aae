// Bad input: one real saved checkpoint (of test/fixtures/restore_small.c), damaged in many
// ways. Every damaged tree is refused by `ckptfs restore` with exit status 1 and one stderr
// line that names the file and the problem; nothing is left behind (no process with that PID,
// no zombie, no new file in the program's directory, no child of the server) and the server
// keeps answering. A PID that is taken and a real socket are refused too. At the end the
// undamaged tree still restores and the program checks itself.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import { pieceCrcs } from '../lib/checksum'
import { ckptfsOk, mountFor } from './lib/mount'
import { checkpointSaveKill, exists, launch, listTree, reseal, restoreCli, restoreOk, runChecks, waitUntil, workdir } from './lib/restore'
import { buildTarget } from './lib/targets'

const small = buildTarget('restore_small', ['-static'])
const mnt = mountFor(t)

/** Deterministic "random" bytes (a linear congruential generator). */
function noise(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length)
  let x = seed >>> 0
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    out[i] = x >>> 24
  }
  return out
}

function childrenOf(pid: number): number[] {
  return fs.readdirSync(`/proc/${pid}/task`).flatMap((tid) => fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number))
}

function serverPid(mnt: string): number {
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const argv = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0')
      if (argv.includes('mount') && argv.includes(mnt) && argv.includes('--foreground')) return Number(entry)
    } catch {
      // gone
    }
  }
  throw new Error(`no server for ${mnt}`)
}

interface Damage {
  name: string
  /** Damages the tree at `tree` (a copy of the pristine tree)... */
  apply: (tree: string) => void
  /** ...and puts it back as it was. */
  undo: (tree: string) => void
  /** What the one stderr line must say (after "ckptfs restore: "). */
  says: RegExp
}

t.test('damaged trees are refused, one line each, and leave nothing behind', async (t) => {
  const dir = workdir(t)
  const copies = workdir(t, 'ckptfs-damaged-')
  const target = await launch(t, [small, dir], { dir })
  const pid = target.pid
  const saved = path.join(copies, 'pristine')

  // A taken PID: the tree is saved while the original still runs.
  const checkpoint = ckptfsOk('checkpoint', String(pid), '--mount', mnt)
  fs.cpSync(checkpoint, saved, { recursive: true })
  fs.writeFileSync(path.join(checkpoint, 'done'), '1')
  const taken = restoreCli(mnt, saved)
  t.equal(taken.status, 1, 'taken PID: exit status 1')
  t.match(taken.stderr, new RegExp(`^ckptfs restore: task-${pid}: PID ${pid} is taken: restore_small \\(pid ${pid}\\) is running; end it first\\n$`), 'taken PID: says so')
  t.equal(fs.readlinkSync(`/proc/${pid}/exe`), small, 'taken PID: the original runs on untouched')
  await checkpointSaveKill(mnt, pid, path.join(copies, 'unused'))

  const task = `task-${pid}`
  const thread = `${task}/threads/${pid}`
  const objrefOf = (tree: string, fd: number) => fs.readFileSync(path.join(tree, task, 'fds', String(fd), 'fd'), 'utf8').trim()
  const data = objrefOf(saved, 3) // data.txt, O_RDWR
  const gone = objrefOf(saved, 4) // the unlinked file
  const devnull = objrefOf(saved, 0) // /dev/null, O_RDONLY
  const eventfd = objrefOf(saved, 7)
  const maps = fs.readFileSync(path.join(saved, task, 'memory', 'maps'), 'utf8').split('\n')
  const heap = maps.find((l) => l.includes(' heap '))!.split(' ')[0]
  // Each damage is applied to one copy of the tree inside restore/ and undone after its
  // refusal (so a case costs no copy through the mount); the last good restore uses that copy.
  const back = (file: string) => (tree: string) => {
    fs.rmSync(path.join(tree, file), { recursive: true, force: true })
    fs.cpSync(path.join(saved, file), path.join(tree, file), { recursive: true })
  }
  // A value file written on purpose is resealed (ckptfs seal), so the validator judges it and
  // not values_crc32c; raw files keep their checksum file (what catches their damage).
  const isValue = (file: string) => !fs.existsSync(path.join(saved, `${file}_crc32c`))
  const w = (file: string, text: string | Buffer) => ({
    apply: (tree: string) => {
      fs.writeFileSync(path.join(tree, file), text)
      if (isValue(file)) reseal(tree)
    },
    undo: (tree: string) => {
      back(file)(tree)
      if (isValue(file)) reseal(tree)
    },
  })
  // Raw bytes written with a checksum file that matches them, so the checks behind the checksum are reached.
  const wc = (file: string, data: Buffer) => ({
    apply: (tree: string) => {
      fs.writeFileSync(path.join(tree, file), data)
      fs.writeFileSync(path.join(tree, `${file}_crc32c`), pieceCrcs(data).map((c) => c.toString(16).padStart(8, '0') + '\n').join(''))
    },
    undo: (tree: string) => {
      back(file)(tree)
      back(`${file}_crc32c`)(tree)
    },
  })
  const away = (file: string, to = `${file}.away`) => ({
    apply: (tree: string) => fs.renameSync(path.join(tree, file), path.join(tree, to)),
    undo: (tree: string) => fs.renameSync(path.join(tree, to), path.join(tree, file)),
  })
  const flags = (ref: string) => parseInt(fs.readFileSync(path.join(saved, 'files', ref, 'f_flags'), 'utf8'), 8)
  const addFlag = (ref: string, bit: number) => w(`files/${ref}/f_flags`, `0${(flags(ref) | bit).toString(8)}\n`)

  const corpus: Damage[] = [
    { name: 'comm too long', ...w(`${task}/comm`, 'a-much-too-long-name\n'), says: new RegExp(`^${task}/comm: longer than 15 bytes`) },
    { name: 'umask not octal', ...w(`${task}/umask`, '0999\n'), says: new RegExp(`^${task}/umask: not an octal number`) },
    { name: 'uid not a number', ...w(`${task}/creds/uid`, 'root\n'), says: new RegExp(`^${task}/creds/uid: not a decimal number`) },
    { name: 'handler not hexadecimal', ...w(`${task}/signals/actions/13/handler`, '0xZZ\n'), says: new RegExp(`^${task}/signals/actions/13/handler: not a hexadecimal`) },
    { name: 'flag neither 0 nor 1', ...w(`${task}/no_new_privs`, '2\n'), says: new RegExp(`^${task}/no_new_privs: not 0 or 1`) },
    { name: 'thp_disable not a PR_GET_THP_DISABLE value', ...w(`${task}/thp_disable`, '2\n'), says: new RegExp(`^${task}/thp_disable: 2 is not a PR_GET_THP_DISABLE value`) },
    { name: 'cwd not an absolute path', ...w(`${task}/cwd`, 'relative/dir\n'), says: new RegExp(`^${task}/cwd: not an absolute path`) },
    { name: 'a list with a word in it', ...w(`${task}/creds/groups`, '4 wheel\n'), says: new RegExp(`^${task}/creds/groups: not a decimal number: "wheel"`) },
    { name: 'a signal name of another signal', ...w(`${task}/signals/actions/13/name`, 'SIGUSR2\n'), says: new RegExp(`^${task}/signals/actions/13/name: "SIGUSR2" is not signal 13 \\(SIGPIPE\\)`) },
    { name: 'a mapping kind that does not fit', ...w(`${task}/memory/vmas/${heap}/kind`, 'stack\n'), says: new RegExp(`^${task}/memory/vmas/${heap}/kind: stack does not fit perms rw-p`) },
    { name: 'altstack flags with unknown bits', ...w(`${thread}/altstack_flags`, '0x10\n'), says: new RegExp(`^${thread}/altstack_flags: 0x10 has unknown bits`) },
    { name: 'an rseq size without its pointer', ...w(`${thread}/rseq_pointer`, '0x0\n'), says: new RegExp(`^${thread}/rseq_size: 32 with rseq_pointer 0x0: both or neither must be 0`) },
    { name: 'coe neither 0 nor 1', ...w(`${task}/fds/3/coe`, 'yes\n'), says: new RegExp(`^${task}/fds/3/coe: not 0 or 1`) },
    { name: 'a file missing', ...away(`${task}/creds/gid`), says: new RegExp(`^${task}/creds/gid: missing`) },
    { name: 'an action for no signal', ...away(`${task}/signals/actions/13`, `${task}/signals/actions/65`), says: new RegExp(`^${task}/signals/actions/65: not the number of a signal with an action`) },
    { name: 'an action for SIGKILL', ...away(`${task}/signals/actions/13`, `${task}/signals/actions/9`), says: new RegExp(`^${task}/signals/actions/9: SIGKILL's action cannot be set`) },
    { name: 'a directory missing', ...away('files', 'files.away'), says: /^files: missing/ },
    { name: 'a value without its newline', ...w(`files/${data}/f_pos`, '4'), says: new RegExp(`^files/${data}/f_pos: value is truncated \\(no trailing newline\\)`) },
    { name: 'random bytes in regs, its checksum kept', ...w(`${thread}/regs`, noise(216, 2)), says: new RegExp(`^${thread}/regs: bytes 0-215 do not match their CRC32C \\(saved [0-9a-f]{8}, read [0-9a-f]{8}\\): the saved checkpoint is damaged`) },
    { name: 'a checksum file missing', ...away(`${thread}/xstate_crc32c`), says: new RegExp(`^${thread}/xstate_crc32c: missing`) },
    { name: 'regs truncated', ...wc(`${thread}/regs`, noise(100, 1)), says: new RegExp(`^${thread}/regs: 100 bytes, struct user_regs_struct has 216`) },
    { name: 'random bytes in regs', ...wc(`${thread}/regs`, noise(216, 2)), says: new RegExp(`^${thread}/(regs: cs 0x[0-9a-f]+ is not a user-mode segment|ip: )`) },
    { name: 'random bytes in xstate', ...wc(`${thread}/xstate`, noise(832, 3)), says: new RegExp(`^${thread}/xstate: xstate_bv 0x[0-9a-f]+ has components outside`) },
    { name: 'ip disagrees with regs', ...w(`${thread}/ip`, '0x1\n'), says: new RegExp(`^${thread}/ip: 1 does not match regs`) },
    { name: 'rlimit soft above hard', ...w(`${task}/rlimits/nofile/soft`, 'unlimited\n'), says: new RegExp(`^${task}/rlimits/nofile/soft: .* is above the hard limit`) },
    { name: 'O_TRUNC in f_flags', ...addFlag(data, 0o1000), says: new RegExp(`^files/${data}/f_flags: O_TRUNC is refused`) },
    { name: 'O_CREAT in f_flags', ...addFlag(data, 0o100), says: new RegExp(`^files/${data}/f_flags: O_CREAT is refused`) },
    { name: 'O_EXCL and O_NOCTTY in f_flags', ...addFlag(data, 0o600), says: new RegExp(`^files/${data}/f_flags: O_EXCL, O_NOCTTY are refused`) },
    {
      name: 'a mode upgrade (f_mode 01 with O_RDWR flags)', ...w(`files/${data}/f_mode`, '01\n'),
      says: new RegExp(`^files/${data}/f_mode: 01 is less than f_flags 0\\d+ grant: a restore never upgrades a mode`),
    },
    { name: 'f_mode beyond the access mode', ...w(`files/${devnull}/f_mode`, '03\n'), says: new RegExp(`^files/${devnull}/f_mode: 03 grants more than the access mode`) },
    { name: 'a dangling fd reference', ...w(`${task}/fds/3/fd`, '999\n'), says: new RegExp(`^${task}/fds/3/fd: names files/999, which does not exist`) },
    {
      name: 'a description no fd refers to',
      apply: (tree) => fs.cpSync(path.join(tree, 'files', data), path.join(tree, 'files', '99'), { recursive: true }),
      undo: (tree) => fs.rmSync(path.join(tree, 'files', '99'), { recursive: true }),
      says: /^files\/99: no fd in .* refers to it/,
    },
    { name: 'an unknown fd_type', ...w(`files/${data}/fd_type`, 'bogus\n'), says: new RegExp(`^files/${data}/fd_type: unknown fd_type "bogus"`) },
    { name: 'fd_type of another kind', ...w(`files/${data}/fd_type`, 'pipe\n'), says: new RegExp(`^files/${data}/pipe_id: missing`) },
    { name: 'unlinked contents shorter than size', ...w(`files/${gone}/contents`, 'unl'), says: new RegExp(`^files/${gone}/contents: 3 bytes, but size says 8`) },
    { name: 'eventfd count out of range', ...w(`files/${eventfd}/count`, '18446744073709551615\n'), says: new RegExp(`^files/${eventfd}/count: 18446744073709551615 is out of range`) },
    {
      name: 'pages shorter than the stored runs', ...w(`${task}/memory/vmas/${heap}/pages`, Buffer.alloc(4096)),
      says: new RegExp(`^${task}/memory/vmas/${heap}/pages: 4096 bytes, stored runs need \\d+`),
    },
    {
      name: 'a stored run beyond its mapping', ...w(`${task}/memory/vmas/${heap}/stored_runs`, '0x0 0x10000000\n'),
      says: new RegExp(`^${task}/memory/vmas/${heap}/stored_runs: run 1 \\(0x0 0x10000000\\) ends beyond the mapping`),
    },
    { name: 'perms not rwxp', ...w(`${task}/memory/vmas/${heap}/perms`, 'rwzp\n'), says: new RegExp(`^${task}/memory/vmas/${heap}/perms: `) },
    {
      name: 'maps disagrees with vmas/', ...w(`${task}/memory/maps`, maps.map((l) => (l.includes(' heap ') ? l.replace(' rw-p ', ' r--p ') : l)).join('\n')),
      says: new RegExp(`^${task}/memory/maps: line \\d+ does not match vmas/`),
    },
    {
      name: 'an unknown entry',
      apply: (tree) => {
        fs.writeFileSync(path.join(tree, task, 'extra'), 'x\n')
        reseal(tree)
      },
      undo: (tree) => {
        fs.rmSync(path.join(tree, task, 'extra'))
        reseal(tree)
      },
      says: new RegExp(`^${task}/extra: unknown entry`),
    },
    { name: 'a thread directory that is not a TID', ...away(thread, `${task}/threads/main`), says: new RegExp(`^${task}/threads/main: not a thread ID`) },
    { name: 'task directory of another PID', ...away(task, `task-${pid + 1}`), says: new RegExp(`^task-${pid + 1}/threads/${pid + 1}: the main thread has exited`) },
  ]
  // Two more that are not a damaged copy of the tree: a directory with neither a task nor an
  // image, and an image file of random bytes alone.
  const strays: Array<{ name: string; files: Record<string, Buffer>; says: RegExp }> = [
    { name: 'no task directory and no image', files: { README: Buffer.from('hello\n') }, says: /neither a task-PID directory nor an image file: not a saved checkpoint/ },
    { name: 'an image of random bytes', files: { image: noise(4096, 4) }, says: /^image: not a ckptfs image/ },
  ]

  const before = listTree(dir)
  const server = serverPid(mnt)
  const refused = (name: string, tree: string, says: RegExp) => {
    const r = restoreCli(mnt, tree)
    const lines = r.stderr.split('\n')
    t.equal(r.status, 1, `${name}: exit status 1`)
    t.ok(lines.length === 2 && lines[1] === '', `${name}: one line on stderr`)
    t.match(lines[0].replace(/^ckptfs restore: /, ''), says, `${name}: ${lines[0]}`)
    t.notOk(exists(pid), `${name}: no process ${pid}, not even a zombie`)
    t.same(childrenOf(server), [], `${name}: nothing left under the server`)
    t.same(listTree(dir), before, `${name}: no new file in the program's directory`)
    t.ok(fs.readdirSync(mnt).includes('restore'), `${name}: the server answers`)
  }
  t.ok(corpus.length + strays.length >= 20, `${corpus.length + strays.length} damaged trees`)
  // The first one is damaged outside the mount (`ckptfs restore` copies it in), the others
  // inside restore/ (`ckptfs restore` uses them where they are).
  const outside = path.join(copies, 'damaged')
  fs.cpSync(saved, outside, { recursive: true })
  corpus[0].apply(outside)
  refused(`${corpus[0].name} (copied in)`, outside, corpus[0].says)
  const inArea = path.join(mnt, 'restore', 'base')
  execFileSync('cp', ['-a', saved, inArea])
  for (const c of corpus) {
    c.apply(inArea)
    refused(c.name, inArea, c.says)
    c.undo(inArea)
  }
  for (const [i, s] of strays.entries()) {
    const tree = path.join(copies, `stray-${i}`)
    fs.mkdirSync(tree)
    for (const [name, bytes] of Object.entries(s.files)) fs.writeFileSync(path.join(tree, name), bytes)
    refused(s.name, tree, s.says)
  }

  // The tree in restore/, every damage undone, restores, and the program is whole.
  restoreOk(mnt, inArea, pid)
  const checks = await runChecks(target)
  t.same(checks.failed, [], 'the restored program finds nothing wrong')
  t.same(checks.ok, ['data.txt at its offset', 'unlinked file', 'pipe bytes', 'eventfd'])
  t.same(listTree(dir).filter((p) => p !== 'go'), before, 'the good restore left nothing new either')
})

t.test('a socket is not checkpointable: its tree is refused', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [small, dir, 'socket'], { dir })
  const saved = path.join(dir, 'saved')
  // Expected not to be restorable: --inspect, and `kill!` (a plain kill is refused).
  const checkpoint = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt, '--inspect')
  execFileSync('cp', ['-a', checkpoint, saved])
  fs.writeFileSync(path.join(checkpoint, 'done'), 'kill!\n')
  await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid))
  const ref = fs.readFileSync(path.join(saved, `task-${target.pid}`, 'fds', '8', 'fd'), 'utf8').trim()
  t.match(fs.readFileSync(path.join(saved, 'files', ref, 'checkpointable'), 'utf8'), /^no: socket: /)
  const before = listTree(dir)
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 1)
  t.match(r.stderr, new RegExp(`^ckptfs restore: files/${ref}: socket: a packet socket of type 10 \\(SOCK_PACKET, the obsolete interface\\) is not checkpointed \\(fd 8, inode \\d+\\)\\n$`))
  t.notOk(exists(target.pid), 'no process')
  t.same(listTree(dir), before, 'nothing new')
  await waitUntil('the server to answer', () => fs.readdirSync(mnt).includes('restore'))
})
