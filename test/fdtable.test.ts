// The file table on a real process: test/fixtures/fdzoo opens one of every kind of file. Its
// table is captured while it is frozen and checked against /proc and against what the fixture
// says; then shown as a tree, written out the way `cp -a` of the mount would, loaded back,
// and refused when damaged. A table of 10,000 fds is timed.

import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'
import t, { type Test } from 'tap'
import { captureFileTable, loadFileTable } from '../lib/fdtable'
import { fdsDir, filesDir } from '../lib/files/tree'
import { asPid, type FileDescription, type FileTable, type Lazy } from '../lib/model'
import { DiskDir } from '../lib/files/saved'
import { native } from '../lib/native'
import { validateFileTable } from '../lib/restore/validate'
import type { ContentCache, DirNode, Node } from '../lib/tree/node'
import { buildTarget, startTarget, type Target } from './lib/targets'
import { reseal } from './lib/restore'

const fdzoo = buildTarget('fdzoo')
const O_CLOEXEC = 0o2000000

interface Zoo {
  pid: number
  target: Target
  dir: string
  /** The fd the fixture said it opened as `name`. */
  fd(name: string): number
  /** Writes commands to the fixture (its DIR/ctl fifo). */
  tell(commands: string): Promise<void>
  freeze(): Promise<void>
  thaw(): Promise<void>
}

async function startZoo(t: Test, args: (dir: string) => string[]): Promise<Zoo> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fdzoo-'))
  const target = await startTarget(fdzoo, args(dir), /^ready pid=/, { cwd: dir })
  const pid = target.pid
  const named = new Map(target.lines.filter((l) => l.startsWith('fd ')).map((l): [string, number] => {
    const [, name, fd] = l.split(' ')
    return [name, Number(fd)]
  }))
  let frozen = false
  let ctl: fs.promises.FileHandle | undefined
  t.teardown(async () => {
    if (frozen) await native.thaw(pid, true).catch(() => undefined)
    target.kill()
    await ctl?.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return {
    pid,
    target,
    dir,
    fd: (name) => {
      const fd = named.get(name)
      if (fd === undefined) throw new Error(`fdzoo did not open ${name}`)
      return fd
    },
    tell: async (commands) => {
      // Opening the writing end waits (in the thread pool) until the fixture opens the reading end.
      ctl ??= await fs.promises.open(path.join(dir, 'ctl'), 'w')
      await ctl.write(commands)
    },
    freeze: async () => {
      await native.freeze(pid)
      frozen = true
    },
    thaw: async () => {
      await native.thaw(pid, false)
      frozen = false
    },
  }
}

/** fdinfo as the kernel prints it, read here independently of lib/procfs. */
function fdinfo(pid: number, fd: number): { text: string; field(name: string): string } {
  const text = fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8')
  return {
    text,
    field: (name) => {
      const m = new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(text)
      if (!m) throw new Error(`fdinfo ${fd} has no ${name}`)
      return m[1]
    },
  }
}

function descriptionOf(table: FileTable, fd: number): FileDescription {
  const entry = table.fds.find((e) => e.fd === fd)
  const desc = entry && table.files.find((d) => d.objref === entry.objref)
  if (!desc) throw new Error(`no description for fd ${fd}`)
  return desc
}

/** Narrows a description to one variant, failing the test otherwise. */
function ofType<T extends FileDescription['type']>(desc: FileDescription, type: T): FileDescription & { type: T } {
  if (desc.type !== type) throw new Error(`files/${desc.objref} is ${desc.type}, not ${type}`)
  return desc as FileDescription & { type: T }
}

/** The table with every lazy part read: plain data that deep-equality can compare. */
async function plain(table: FileTable): Promise<unknown> {
  const files = await Promise.all(table.files.map(async (d) => {
    const out: Record<string, unknown> = { ...d }
    if ('otherLinks' in d) out.otherLinks = await d.otherLinks()
    if ('buffered' in d && d.buffered) out.buffered = await d.buffered()
    if ('contents' in d && d.contents) out.contents = await d.contents.read(0, d.contents.size)
    if ('inet' in d) out.inet = { ...d.inet, queue: await d.inet.queue() }
    return out
  }))
  return { fds: table.fds, files }
}

function testCache(): ContentCache {
  const store = new Map<string, Buffer>()
  return { get: (key) => store.get(key), set: (key, value) => void store.set(key, value) }
}

async function lookupPath(root: DirNode, rel: string): Promise<Node> {
  let node: Node = root
  for (const name of rel.split('/')) {
    if (node.kind !== 'dir') throw new Error(`${rel}: ${name} is under a file`)
    const next: Node | undefined = await node.lookup(name)
    if (!next) throw new Error(`${rel}: no ${name}`)
    node = next
  }
  return node
}

async function readNode(root: DirNode, rel: string): Promise<Buffer> {
  const node = await lookupPath(root, rel)
  if (node.kind !== 'file') throw new Error(`${rel} is a directory`)
  return node.read(0, await node.size())
}

/** Writes a node out the way `cp -a` of the mount would: sizes from stat, data read in pieces. */
async function writeNode(node: Node, dest: string): Promise<void> {
  if (node.kind === 'dir') {
    fs.mkdirSync(dest)
    for (const name of await node.list()) {
      const child = await node.lookup(name)
      if (!child) throw new Error(`${dest}: listed ${name} but cannot look it up`)
      await writeNode(child, path.join(dest, name))
    }
    return
  }
  const size = await node.size()
  const pieces: Buffer[] = []
  for (let at = 0; at < size;) {
    const piece = await node.read(at, Math.min(128 * 1024, size - at))
    if (piece.length === 0) throw new Error(`${dest}: size says ${size}, read ended at ${at}`)
    pieces.push(piece)
    at += piece.length
  }
  fs.writeFileSync(dest, Buffer.concat(pieces))
}

t.test('fdzoo: capture, tree, load-back', async (t) => {
  const zoo = await startZoo(t, (dir) => [dir])
  const { pid, dir } = zoo
  await zoo.freeze()
  const table = await captureFileTable(asPid(pid), { copy: false })
  const lazyTable: Lazy<FileTable> = async () => table
  const of = (name: string) => descriptionOf(table, zoo.fd(name))

  // The saved copy and every lazy part are read now, while the task is frozen; the subtests
  // run after this body, in order, and one of them lets the task run on.
  const saved = fs.mkdtempSync(path.join(os.tmpdir(), 'fdtable-saved-'))
  t.teardown(() => fs.rmSync(saved, { recursive: true, force: true }))
  const root = path.join(saved, 'checkpoint-1')
  const taskDir = `task-${pid}`
  fs.mkdirSync(path.join(root, taskDir), { recursive: true })
  const cache = testCache()
  await writeNode(filesDir(lazyTable, { key: 'c1/files', cache }), path.join(root, 'files'))
  await writeNode(fdsDir(lazyTable, { key: 'c1/task/fds', cache }), path.join(root, taskDir, 'fds'))
  const captured = await plain(table)

  t.test('every fd agrees with /proc', async (t) => {
    const listed = fs.readdirSync(`/proc/${pid}/fd`).map(Number).sort((a, b) => a - b)
    t.same(table.fds.map((e) => e.fd), listed, 'one entry per fd, ascending')
    for (const entry of table.fds) {
      const info = fdinfo(pid, entry.fd)
      const flags = parseInt(info.field('flags'), 8)
      const desc = descriptionOf(table, entry.fd)
      t.equal(entry.closeOnExec, (flags & O_CLOEXEC) !== 0, `fd ${entry.fd} coe`)
      t.equal(desc.target, fs.readlinkSync(`/proc/${pid}/fd/${entry.fd}`), `fd ${entry.fd} target`)
      t.equal(desc.flags & ~O_CLOEXEC, flags & ~O_CLOEXEC, `fd ${entry.fd} flags`)
      // fds 0-2 are shared with the test runner, which keeps writing to them.
      if (entry.fd > 2) t.equal(desc.pos, BigInt(info.field('pos')), `fd ${entry.fd} pos`)
      t.equal(desc.mntId, Number(info.field('mnt_id')), `fd ${entry.fd} mnt_id`)
      t.equal(desc.ino, BigInt(info.field('ino')), `fd ${entry.fd} ino`)
      const mode = flags & 0o10000000 ? 0 : [1, 2, 3, 0][flags & 3]
      t.equal(desc.mode, mode, `fd ${entry.fd} f_mode`)
    }
    t.same(table.files.map((d) => d.objref), table.files.map((_, i) => i + 1), 'objrefs 1..N')
    const lowest = table.files.map((d) => Math.min(...table.fds.filter((e) => e.objref === d.objref).map((e) => e.fd)))
    t.same(lowest, [...lowest].sort((a, b) => a - b), 'numbered in the order of their lowest fd')
  })

  t.test('sharing', async (t) => {
    t.equal(of('reg_a').objref, of('reg_a_dup').objref, 'a dup shares the description')
    t.not(of('reg_a').objref, of('reg_b').objref, 'a separate open of the same path does not')
    t.equal(of('null').objref, of('null_dup_coe').objref, 'a dup with its own close-on-exec still shares')
    t.not(of('zero').objref, of('zero_cleared').objref)
    const coe = (name: string) => table.fds.find((e) => e.fd === zoo.fd(name))?.closeOnExec
    t.same([coe('null'), coe('null_dup_coe'), coe('zero'), coe('zero_cleared'), coe('reg_b')], [false, true, true, false, true])
    t.equal(of('null').flags & O_CLOEXEC, 0, 'a shared description has the flags its fds agree on')
  })

  t.test('regular files, directory, devices', async (t) => {
    const regA = ofType(of('reg_a'), 'file')
    t.match(regA, { path: path.join(dir, 'regular'), unlinked: false, pos: 7n, size: 16n, nlink: 1, mode: 3 })
    t.equal(regA.contents, undefined, 'no contents for a file that is still linked')
    t.same(await regA.otherLinks(), [])
    t.match(ofType(of('reg_b'), 'file'), { pos: 5n, mode: 1 })
    const log = ofType(of('log'), 'file')
    t.ok(log.flags & 0o2000, 'O_APPEND kept')
    t.match(log, { pos: 9n, mode: 2 })
    t.match(ofType(of('dir'), 'dir'), { path: dir, unlinked: false })
    t.match(ofType(of('null'), 'chr'), { path: '/dev/null', rdev: 259n, notCheckpointable: undefined })
    t.match(ofType(of('zero'), 'chr'), { path: '/dev/zero', rdev: 261n })
  })

  t.test('unlinked files', async (t) => {
    const gone = ofType(of('unlinked'), 'file')
    t.match(gone, { path: path.join(dir, 'gone'), unlinked: true, nlink: 0, size: 13n, target: `${path.join(dir, 'gone')} (deleted)` })
    t.equal((await gone.contents?.read(0, 100))?.toString(), 'unlinked data')
    t.same(await gone.otherLinks(), [])
    const relinked = ofType(of('relinked'), 'file')
    t.match(relinked, { path: path.join(dir, 'first'), unlinked: true, nlink: 1 })
    t.same(await relinked.otherLinks(), [path.join(dir, 'second')], 'the other hard link is found')
    t.equal((await relinked.contents?.read(0, 100))?.toString(), 'linked data')
    const memfd = ofType(of('memfd'), 'file')
    t.match(memfd, { path: '/memfd:zoo', unlinked: true })
    t.equal((await memfd.contents?.read(3, 100))?.toString(), 'fd data', 'read from an offset')
  })

  t.test('pipes and fifos', async (t) => {
    const r = ofType(of('pipe_r'), 'pipe')
    const w = ofType(of('pipe_w'), 'pipe')
    t.not(r.objref, w.objref)
    t.equal(r.pipeId, w.pipeId, 'both ends show one pipe_id')
    t.equal(r.pipeId, BigInt(/\d+/.exec(r.target)?.[0] ?? ''))
    t.equal((await r.buffered()).toString(), 'hello pipe')
    t.equal((await w.buffered()).toString(), 'hello pipe')
    const fr = ofType(of('fifo_r'), 'fifo')
    t.match(fr, { path: path.join(dir, 'fifo'), mode: 1 })
    t.equal((await fr.buffered?.())?.toString(), 'fifo data')
    t.equal((await ofType(of('fifo_w'), 'fifo').buffered?.())?.toString(), 'fifo data')
  })

  t.test('eventfd, epoll, signalfd, timerfd, inotify', async (t) => {
    t.match(ofType(of('eventfd'), 'eventfd'), { count: 42n, semaphore: false })
    t.match(ofType(of('eventfd_sem'), 'eventfd'), { count: 7n, semaphore: true })

    const ep = ofType(of('epoll'), 'epoll')
    const lines = fdinfo(pid, zoo.fd('epoll')).text.split('\n').filter((l) => l.startsWith('tfd:'))
    const expected = lines.map((l) => {
      const [, tfd, events, data] = /tfd:\s*(\d+) events:\s*([0-9a-f]+) data:\s*([0-9a-f]+)/.exec(l) ?? []
      return { tfd: Number(tfd), events: parseInt(events, 16), data: BigInt('0x' + data), targetObjref: descriptionOf(table, Number(tfd)).objref }
    })
    t.same(ep.items, expected, 'items as fdinfo lists them, with their targets')
    t.same(ep.items.map((i) => [i.tfd, i.data]).sort(), [[zoo.fd('eventfd'), 0xdeadbeefcafen], [zoo.fd('pipe_r'), 0x1111n]].sort())
    t.ok(ep.items.find((i) => i.tfd === zoo.fd('pipe_r'))!.events & 0x80000000, 'EPOLLET kept')

    t.equal(ofType(of('signalfd'), 'signalfd').sigmask, (1n << 9n) | (1n << 11n), 'SIGUSR1 | SIGUSR2')
    const timer = ofType(of('timerfd'), 'timerfd')
    t.match(timer, { clockid: 1, ticks: 0n, settimeFlags: 0, intervalNs: 10_000_000_000n })
    t.ok(timer.valueNs > 50_000_000_000n && timer.valueNs <= 100_000_000_000n, `armed: ${timer.valueNs} ns to go`)

    const watches = ofType(of('inotify'), 'inotify').watches
    const st = fs.statSync(dir, { bigint: true })
    t.match(watches, [{ wd: 1, ino: st.ino, mask: 0x300, ignoredMask: 0, path: dir }])
  })

  t.test('a listening TCP socket and a UNIX socketpair are checkpointable, each end of the pair naming the other', async (t) => {
    const tcp = ofType(of('tcp'), 'socket')
    t.equal(tcp.notCheckpointable, undefined, 'the TCP socket is checkpointable')
    t.match('inet' in tcp ? tcp.inet : {}, { family: 'inet', protocol: 'tcp', state: 'listen', local: { addr: '127.0.0.1' }, peer: undefined, backlog: 1, tcp: undefined }, 'as a listening socket on 127.0.0.1 with backlog 1')
    const [a, b] = ['unix_a', 'unix_b'].map((name) => ofType(of(name), 'socket'))
    t.match(a, { family: 'unix', sockType: 'stream', state: 'connected', peer: of('unix_b').objref, notCheckpointable: undefined })
    t.match(b, { family: 'unix', sockType: 'stream', state: 'connected', peer: of('unix_a').objref, notCheckpointable: undefined })
    const others = table.files.filter((d) => d.notCheckpointable !== undefined)
    t.same(others.map((d) => d.target), [], 'everything else is checkpointable')
  })

  t.test('the tree', async (t) => {
    const cache = testCache()
    const files = filesDir(lazyTable, { key: 'c1/files', cache })
    const fds = fdsDir(lazyTable, { key: 'c1/task/fds', cache })
    t.same(await files.list(), table.files.map((d) => String(d.objref)))
    t.same(await fds.list(), table.fds.map((e) => String(e.fd)))
    const text = async (root: DirNode, rel: string) => (await readNode(root, rel)).toString()

    const regA = of('reg_a').objref
    t.equal(await text(files, `${regA}/f_flags`), `${fdinfo(pid, zoo.fd('reg_a')).field('flags')}\n`, 'f_flags exactly as fdinfo prints it')
    t.equal(await text(files, `${of('zero').objref}/f_flags`), `${fdinfo(pid, zoo.fd('zero')).field('flags')}\n`)
    t.equal(await text(files, `${regA}/f_mode`), '03\n')
    t.equal(await text(files, `${regA}/f_pos`), '7\n')
    t.equal(await text(files, `${regA}/fd_type`), 'file\n')
    t.equal(await text(files, `${regA}/checkpointable`), 'yes\n')
    t.equal(await text(files, `${regA}/other_links`), '')
    t.equal(await text(files, `${of('relinked').objref}/other_links`), `${path.join(dir, 'second')}\n`)
    t.equal(await text(files, `${of('unlinked').objref}/contents`), 'unlinked data')
    t.notOk((await (await lookupPath(files, String(regA)) as DirNode).list()).includes('contents'), 'contents only for unlinked files')
    t.equal(await text(files, `${of('pipe_w').objref}/buffered`), 'hello pipe')
    t.equal(await text(files, `${of('eventfd').objref}/count`), '42\n')
    t.equal(await text(files, `${of('signalfd').objref}/sigmask`), '0xa00\n')
    const ep = of('epoll').objref
    t.same(await (await lookupPath(files, `${ep}/items`) as DirNode).list(), ['0', '1'])
    const item = ofType(of('epoll'), 'epoll').items[0]
    t.equal(await text(files, `${ep}/items/0/events`), `0x${item.events.toString(16)}\n`)
    t.equal(await text(files, `${ep}/items/0/target`), `${item.targetObjref}\n`)
    t.equal(await text(files, `${of('inotify').objref}/watches/1/path`), `${dir}\n`)
    t.equal(await text(files, `${of('inotify').objref}/watches/1/mask`), '0x300\n')
    t.equal(await text(files, `${of('tcp').objref}/checkpointable`), 'yes\n')
    t.equal(await text(files, `${of('tcp').objref}/state`), 'listen\n')
    t.equal(await text(files, `${of('unix_a').objref}/checkpointable`), 'yes\n')
    t.equal(await text(files, `${of('unix_a').objref}/family`), 'unix\n')
    const dupFd = zoo.fd('null_dup_coe')
    t.equal(await text(fds, `${dupFd}/fd_nr`), `${dupFd}\n`)
    t.equal(await text(fds, `${dupFd}/coe`), '1\n')
    t.equal(await text(fds, `${dupFd}/fd`), `${of('null').objref}\n`)
    t.equal(await fds.lookup('999'), undefined)
    t.equal(await files.lookup('0'), undefined)
  })


  t.test('the task is untouched and runs on', async (t) => {
    await zoo.thaw()
    await zoo.tell('readpipe\nreadfifo\npos reg_a\npos reg_b\npos unlinked\npos memfd\n')
    t.same((await zoo.target.waitFor(/^pipe: .*/))[0], 'pipe: hello pipe', 'the pipe still holds its data')
    t.same((await zoo.target.waitFor(/^fifo: .*/))[0], 'fifo: fifo data', 'so does the fifo')
    for (const [name, pos] of [['reg_a', 7], ['reg_b', 5], ['unlinked', 13], ['memfd', 10]] as const) {
      t.same((await zoo.target.waitFor(new RegExp(`^pos ${name} .*`)))[0], `pos ${name} ${pos}`, `${name} offset unchanged`)
    }
  })

  t.test('a saved tree loads back into the same table', async (t) => {
    const loaded = await loadFileTable(new DiskDir(root))
    t.strictSame(await plain(loaded), captured)
    t.strictSame(await plain(await loadFileTable(new DiskDir(root), taskDir)), captured, 'with the task directory named')
  })

  t.test('a damaged tree is refused, naming the file', async (t) => {
    const reg = of('reg_a').objref
    const regB = of('reg_b').objref
    const ep = of('epoll').objref
    const gone = of('unlinked').objref
    const sock = of('unix_a').objref
    const fd = zoo.fd('reg_b')
    const single = zoo.fd('log')
    // A value written on purpose is resealed (ckptfs seal): the loaders judge it, not values_crc32c.
    const write = (rel: string, data: string) => (copy: string) => {
      fs.writeFileSync(path.join(copy, rel), data)
      reseal(copy)
    }
    const cases: Array<[string, (copy: string) => void, string | RegExp]> = [
      ['a missing file', (c) => fs.rmSync(path.join(c, `files/${reg}/f_pos`)), `files/${reg}/f_pos: missing`],
      ['a missing files/ directory', (c) => fs.rmSync(path.join(c, 'files'), { recursive: true }), 'files: missing'],
      ['bad octal', write(`files/${reg}/f_flags`, '0100892\n'), `files/${reg}/f_flags: not octal with a leading 0: "0100892"`],
      ['octal without its leading 0', write(`files/${reg}/f_flags`, '100002\n'), /^files\/\d+\/f_flags: not octal/],
      ['O_TRUNC', write(`files/${reg}/f_flags`, '0101002\n'), `files/${reg}/f_flags: O_TRUNC is refused`],
      ['O_CREAT and O_EXCL', write(`files/${reg}/f_flags`, '0100302\n'), `files/${reg}/f_flags: O_CREAT, O_EXCL are refused`],
      ['O_NOCTTY', write(`files/${reg}/f_flags`, '0100402\n'), `files/${reg}/f_flags: O_NOCTTY is refused`],
      ['an upgraded f_mode', write(`files/${regB}/f_mode`, '03\n'), `files/${regB}/f_mode: 03 grants more than the access mode of f_flags allows (01)`],
      ['a truncated value', write(`files/${reg}/f_pos`, '7'), `files/${reg}/f_pos: value is truncated (no trailing newline)`],
      ['two lines', write(`files/${reg}/f_pos`, '7\n8\n'), `files/${reg}/f_pos: holds more than one line`],
      ['a number out of range', write(`files/${reg}/f_pos`, '9223372036854775808\n'), /^files\/\d+\/f_pos: 9223372036854775808 is out of range/],
      ['a decimal with a sign', write(`files/${reg}/mnt_id`, '-3\n'), /^files\/\d+\/mnt_id: -3 is out of range/],
      ['an unknown fd_type', write(`files/${reg}/fd_type`, 'bogus\n'), `files/${reg}/fd_type: unknown fd_type "bogus"`],
      ['an unknown entry', write(`files/${reg}/colour`, 'blue\n'), `files/${reg}/colour: unknown entry`],
      ['a bad objref name', (c) => fs.mkdirSync(path.join(c, 'files/x7')), 'files/x7: not an object reference (a positive decimal number)'],
      ['a dangling fd reference', write(`${taskDir}/fds/${fd}/fd`, '999\n'), `${taskDir}/fds/${fd}/fd: names files/999, which does not exist`],
      ['fd_nr that is not the directory name', write(`${taskDir}/fds/${fd}/fd_nr`, '99\n'), `${taskDir}/fds/${fd}/fd_nr: 99 does not match the directory name ${fd}`],
      ['coe that is not 0 or 1', write(`${taskDir}/fds/${fd}/coe`, '2\n'), `${taskDir}/fds/${fd}/coe: not 0 or 1: "2"`],
      ['a description no fd refers to', (c) => fs.rmSync(path.join(c, `${taskDir}/fds/${single}`), { recursive: true }), `files/${of('log').objref}: no fd in ${taskDir}/fds refers to it`],
      ['a dangling epoll target', write(`files/${ep}/items/0/target`, '999\n'), `files/${ep}/items/0/target: names files/999, which does not exist`],
      ['a lost epoll item', (c) => fs.rmSync(path.join(c, `files/${ep}/items/0`), { recursive: true }), `files/${ep}/items/0: missing (entries are numbered 0 to 0)`],
      ['hex without 0x', write(`files/${ep}/items/1/data`, '1111\n'), /^files\/\d+\/items\/1\/data: not hexadecimal with a leading 0x/],
      ['contents that do not match the size', (c) => fs.appendFileSync(path.join(c, `files/${gone}/contents`), 'x'), `files/${gone}/contents: 14 bytes, but size says 13`],
      ['a relative path', write(`files/${reg}/path`, 'regular\n'), `files/${reg}/path: not an absolute path: "regular"`],
      ['a socket family ckptfs does not know', write(`files/${sock}/family`, 'bluetooth\n'), `files/${sock}/family: "bluetooth" is not one of unix, inet, netlink, packet, other, inet6`],
      ['a symbolic link for a value', (c) => {
        fs.rmSync(path.join(c, `files/${reg}/f_pos`))
        fs.symlinkSync('/etc/passwd', path.join(c, `files/${reg}/f_pos`))
      }, `files/${reg}/f_pos: not a regular file`],
      ['a second task directory', (c) => fs.mkdirSync(path.join(c, 'task-1')), /^task-PID: the tree has 2 task directories/],
    ]
    let n = 0
    for (const [what, damage, message] of cases) {
      const copy = path.join(saved, `damaged-${n++}`)
      fs.cpSync(root, copy, { recursive: true, verbatimSymlinks: true })
      damage(copy)
      // Loading parses; the validator checks meaning (references, flags): both, as a restore does.
      await t.rejects(loadFileTable(new DiskDir(copy)).then((table) => validateFileTable(table, taskDir)), { name: 'CkptError', message }, what)
    }
  })
})

t.test('copy mode reads everything before the task runs on', async (t) => {
  const zoo = await startZoo(t, (dir) => [dir])
  await zoo.freeze()
  const table = await captureFileTable(asPid(zoo.pid), { copy: true })
  await zoo.thaw()
  await zoo.tell('readpipe\n')
  await zoo.target.waitFor(/^pipe: hello pipe$/)
  zoo.target.kill()
  const of = (name: string) => descriptionOf(table, zoo.fd(name))
  t.equal((await ofType(of('pipe_r'), 'pipe').buffered()).toString(), 'hello pipe', 'pipe data as it was at the checkpoint')
  t.equal((await ofType(of('fifo_r'), 'fifo').buffered?.())?.toString(), 'fifo data')
  const gone = ofType(of('unlinked'), 'file')
  t.equal((await gone.contents?.read(0, 100))?.toString(), 'unlinked data', 'contents kept after the task is gone')
  t.same(await ofType(of('relinked'), 'file').otherLinks(), [path.join(zoo.dir, 'second')])
})

t.test('10,000 fds', async (t) => {
  const count = 10000
  const zoo = await startZoo(t, (dir) => ['--many', String(count), dir])
  await zoo.freeze()
  // Its speed is measured by the benchmark (bench/fds.ts), never here: the machine is shared.
  const table = await captureFileTable(asPid(zoo.pid), { copy: false })
  t.comment(`captured ${table.fds.length} fds (${table.files.length} descriptions)`)
  const listed = fs.readdirSync(`/proc/${zoo.pid}/fd`).map(Number).sort((a, b) => a - b)
  t.same(table.fds.map((e) => e.fd), listed)
  t.ok(table.fds.length >= count)
  let mismatched = 0
  // fds 0-2 are left out: the test runner keeps writing to them.
  for (const fd of listed.filter((fd, i) => fd > 2 && i % 37 === 0)) {
    const info = fdinfo(zoo.pid, fd)
    const desc = descriptionOf(table, fd)
    const agrees = desc.target === fs.readlinkSync(`/proc/${zoo.pid}/fd/${fd}`) && desc.pos === BigInt(info.field('pos')) &&
      desc.ino === BigInt(info.field('ino')) && (desc.flags & ~O_CLOEXEC) === (parseInt(info.field('flags'), 8) & ~O_CLOEXEC)
    if (!agrees) mismatched++
  }
  t.equal(mismatched, 0, 'a sample of fds agrees with /proc')
  // Sharing agrees with kcmp for every pair of neighbouring fds (the fixture's dups are neighbours).
  const byFd = new Map(table.fds.map((e) => [e.fd, e.objref]))
  let shared = 0
  let wrong = 0
  for (let i = 1; i < listed.length; i++) {
    const same = native.kcmpFile(zoo.pid, listed[i - 1], listed[i]) === 0
    if (same) shared++
    if (same !== (byFd.get(listed[i - 1]) === byFd.get(listed[i]))) wrong++
  }
  t.equal(wrong, 0, 'sharing matches kcmp')
  t.ok(shared > count / 10, `${shared} dups found`)
  t.equal(new Set(table.fds.map((e) => e.objref)).size, table.files.length, 'every description has an fd')
})
