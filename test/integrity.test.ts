// Every byte of a saved checkpoint is covered by a check (SPEC, Access): bytes flipped in a
// saved tree's pages, in an image's page data or chunk checksum, in an unlinked file's
// contents and in the small raw files (registers, environ, pipe data) make `ckptfs restore`
// refuse, naming the mapping or file and the damaged bytes, and leave no process behind (the
// PID is free afterwards). The undamaged copies still restore. The mount's checksum files
// agree with the bytes it shows, lazy and --copy. An unprivileged user who damages a tree
// they own that root then restores is refused the same way.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { crc32c, CRC_PIECE, pieceCrcs } from '../lib/checksum'
import { readImage } from '../lib/image/decode'
import { treeToImage } from '../lib/image/convert'
import { ckptfsOk, mountFor } from './lib/mount'
import { checkpointSaveKill, exists, launch, restoreCli, restoreOk, runChecks, waitUntil, workdir } from './lib/restore'
import { buildTarget } from './lib/targets'
import { attacker, launchAs, shAs } from './lib/unprivileged'

const mem = buildTarget('restore_mem')
const small = buildTarget('restore_small', ['-static'])
const mnt = mountFor(t)
// About twenty restores and refusals, each a few seconds on this shared machine.
t.setTimeout(900_000)

/** Inverts the byte at `at` of `file`. */
function flip(file: string, at: number): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const b = Buffer.alloc(1)
    fs.readSync(fd, b, 0, 1, at)
    b[0] ^= 0xff
    fs.writeSync(fd, b, 0, 1, at)
  } finally {
    fs.closeSync(fd)
  }
}

/** A fresh `cp -a` of the pristine saved tree. */
function copyOf(saved: string, into: string, name: string): string {
  const copy = path.join(into, name)
  execFileSync('cp', ['-a', saved, copy])
  return copy
}

/** The mapping directories of a saved task with stored pages, largest first. */
function mappingsWithPages(task: string): Array<{ name: string; size: number }> {
  const vmas = path.join(task, 'memory', 'vmas')
  return fs.readdirSync(vmas)
    .map((name) => ({ name, size: fs.statSync(path.join(vmas, name, 'pages')).size }))
    .filter((m) => m.size > 0)
    .sort((a, b) => b.size - a.size)
}

/** The one-line refusal `ckptfs restore` must give, and the PID must be free afterwards. */
async function expectRefused(t: Test, what: string, saved: string, pid: number, says: RegExp): Promise<void> {
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 1, `${what}: exit status 1`)
  t.match(r.stderr, says, `${what}: says ${says}`)
  t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`)
  t.equal(r.stdout, '', `${what}: no PID printed`)
  await waitUntil(`PID ${pid} to be free after the refusal`, () => !exists(pid), 5000).catch(() => undefined)
  t.notOk(exists(pid), `${what}: no process ${pid} is left`)
  t.same(fs.readdirSync(path.join(mnt, 'restore')), [], `${what}: nothing is left in restore/`)
}

const range = (at: number, size: number): string => {
  const k = Math.floor(at / CRC_PIECE)
  return `bytes ${k * CRC_PIECE}-${Math.min(size, (k + 1) * CRC_PIECE) - 1}`
}

t.test('CRC32C: the RFC 3720 test vectors, and a CRC continued from a seed', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283, '"123456789"')
  t.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa, '32 zero bytes')
  t.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43, '32 bytes of 0xff')
  t.equal(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i))), 0x46dd794e, '32 ascending bytes')
  // The addon runs three lanes of 8 KiB at once: sizes around their multiples, against a plain table.
  const table = Array.from({ length: 256 }, (_, i) => {
    let c = i
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    return c >>> 0
  })
  const reference = (b: Buffer) => {
    let c = 0xffffffff
    for (const byte of b) c = table[(c ^ byte) & 0xff] ^ (c >>> 8)
    return ~c >>> 0
  }
  for (const n of [1, 7, 8, 24575, 24576, 24577, 49160, 100003]) {
    const b = Buffer.from(Array.from({ length: n + 1 }, (_, i) => (i * 2654435761) >>> 24)).subarray(1)
    t.equal(crc32c(b), reference(b), `${n} bytes (not 8-aligned) agree with a plain table`)
  }
  const data = Buffer.from(Array.from({ length: 3 * CRC_PIECE + 5 }, (_, i) => (i * 7919) & 0xff))
  t.equal(crc32c(data.subarray(1000), crc32c(data.subarray(0, 1000))), crc32c(data), 'continued from a seed = in one go')
  t.same(pieceCrcs(data), [0, 1, 2, 3].map((k) => crc32c(data.subarray(k * CRC_PIECE, (k + 1) * CRC_PIECE))), 'one per MiB, the last one shorter')
})

t.test('the checksum files hold the CRC32C of every MiB of what the mount shows, lazy and --copy', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [mem, dir], { dir })
  for (const mode of [[], ['--copy']]) {
    const cp = ckptfsOk('checkpoint', String(target.pid), ...mode, '--mount', mnt)
    t.teardown(() => {
      try {
        fs.writeFileSync(path.join(cp, 'done'), '1')
      } catch {
        // ended below already
      }
    })
    const task = path.join(cp, `task-${target.pid}`)
    const [big] = mappingsWithPages(task)
    t.ok(big.size > 2 * CRC_PIECE, `${mode.join('') || 'lazy'}: a mapping stores ${big.size} bytes (several pieces)`)
    const vma = path.join(task, 'memory', 'vmas', big.name)
    const lines = fs.readFileSync(path.join(vma, 'pages_crc32c'), 'utf8')
    t.equal(lines, pieceCrcs(fs.readFileSync(path.join(vma, 'pages'))).map((c) => c.toString(16).padStart(8, '0') + '\n').join(''), `${mode.join('') || 'lazy'}: pages_crc32c: one CRC32C per MiB of pages`)
    for (const file of ['cmdline', 'environ', 'mm/auxv', `threads/${target.pid}/regs`, `threads/${target.pid}/xstate`]) {
      const crcs = fs.readFileSync(path.join(task, file + '_crc32c'), 'utf8')
      t.equal(crcs, pieceCrcs(fs.readFileSync(path.join(task, file))).map((c) => c.toString(16).padStart(8, '0') + '\n').join(''), `${mode.join('') || 'lazy'}: ${file}_crc32c`)
    }
    fs.writeFileSync(path.join(cp, 'done'), '1')
  }
})

t.test('damaged page data, in a tree and in an image, is refused naming the mapping and the bytes', async (t) => {
  const dir = workdir(t)
  const copies = workdir(t, 'ckptfs-integrity-')
  const target = await launch(t, [mem, dir], { dir })
  const saved = path.join(dir, 'saved')
  // The mount's own image, whose chunk checksums it computes as the image is read.
  const cp = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  const mountImage = [path.join(cp, 'image'), `${cp}.image`].find((p) => fs.existsSync(p))!
  fs.mkdirSync(path.join(copies, 'mount-image'))
  execFileSync('cp', [mountImage, path.join(copies, 'mount-image', 'image')])
  execFileSync('cp', ['-a', cp, saved])
  fs.writeFileSync(path.join(cp, 'done'), 'kill\n')
  await waitUntil(`PID ${target.pid} to be gone`, () => !exists(target.pid))

  const task = `task-${target.pid}`
  const maps = mappingsWithPages(path.join(saved, task))
  const big = maps[0]
  const smallest = maps[maps.length - 1]
  t.ok(big.size > 2 * CRC_PIECE, `the largest mapping stores ${big.size} bytes`)

  // Tree: the first byte, a byte in the middle of the second MiB, the mapping's last byte, and
  // the last byte of the smallest mapping.
  const places = [
    { vma: big, at: 0 },
    { vma: big, at: CRC_PIECE + CRC_PIECE / 2 + 123 },
    { vma: big, at: big.size - 1 },
    { vma: smallest, at: smallest.size - 1 },
  ]
  for (const [i, { vma, at }] of places.entries()) {
    const copy = copyOf(saved, copies, `tree-${i}`)
    flip(path.join(copy, task, 'memory', 'vmas', vma.name, 'pages'), at)
    await expectRefused(t, `tree: byte ${at} of ${vma.name}/pages`, copy, target.pid,
      new RegExp(`${task}/memory/vmas/${vma.name}/pages: ${range(at, vma.size)} do not match their CRC32C .*damaged`))
  }
  // A checksum file that does not fit, or is missing.
  const short = copyOf(saved, copies, 'tree-short')
  const crcFile = path.join(short, task, 'memory', 'vmas', big.name, 'pages_crc32c')
  fs.writeFileSync(crcFile, fs.readFileSync(crcFile, 'utf8').split('\n').slice(1).join('\n'))
  await expectRefused(t, 'tree: a line of pages_crc32c missing', short, target.pid, new RegExp(`${big.name}/pages_crc32c: \\d+ checksums for ${big.size} bytes`))
  const gone = copyOf(saved, copies, 'tree-gone')
  fs.rmSync(path.join(gone, task, 'memory', 'vmas', smallest.name, 'pages_crc32c'))
  await expectRefused(t, 'tree: pages_crc32c removed', gone, target.pid, new RegExp(`${smallest.name}/pages_crc32c`))

  // Image (made from the tree as `ckptfs restore TREE` does): a byte in the data of a chunk,
  // the last byte of a mapping's data, and a chunk's recorded crc32c.
  const imageFile = path.join(copies, 'pristine.image')
  await treeToImage(saved, imageFile)
  const loaded = await readImage(imageFile)
  const bigVma = loaded.vmas.find((v) => v.pages.size === big.size && big.name.startsWith(v.start.toString(16).padStart(8, '0')))!
  t.ok(bigVma, 'the image holds the largest mapping')
  const fileAt = async (offset: number) => (await bigVma.pages.extents!(offset, 1))[0].at
  const imagePlaces = [
    { what: 'a byte in the middle of chunk 2', at: await fileAt(2 * CRC_PIECE + 4096 * 7 + 5), piece: 2 * CRC_PIECE + 1 },
    { what: "the mapping's last byte", at: await fileAt(big.size - 1), piece: big.size - 1 },
    // The chunk's crc32c field follows its data: tag byte, then 4 bytes.
    { what: "chunk 0's crc32c", at: (await fileAt(CRC_PIECE - 1)) + 1 + 2, piece: 0 },
  ]
  for (const [i, { what, at, piece }] of imagePlaces.entries()) {
    const copy = path.join(copies, `image-${i}`)
    fs.copyFileSync(imageFile, copy)
    flip(copy, at)
    await expectRefused(t, `image: ${what}`, copy, target.pid,
      new RegExp(`${task}/memory/vmas/${big.name}/pages: ${range(piece, big.size)} do not match their CRC32C`))
  }

  // The undamaged mount's image restores (its chunk checksums were computed as it was read);
  // one restore only: the program changes its files when it runs its checks. The tree
  // restores in the next test.
  restoreOk(mnt, path.join(copies, 'mount-image'), target.pid)
  const checks = await runChecks(target)
  t.ok(checks.done, "the mount's image restores and the program finished its checks")
  t.same(checks.failed, [], 'no check failed')
})

t.test('damaged contents, registers, environ and pipe data are refused naming the file', async (t) => {
  const dir = workdir(t)
  const copies = workdir(t, 'ckptfs-integrity-')
  const target = await launch(t, [small, dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const task = `task-${target.pid}`
  const filesDir = path.join(saved, 'files')
  const objrefOf = (test: (d: string) => boolean) => fs.readdirSync(filesDir).find((o) => test(path.join(filesDir, o)))!
  const unlinked = objrefOf((d) => fs.existsSync(path.join(d, 'contents')))
  const pipe = objrefOf((d) => fs.readFileSync(path.join(d, 'fd_type'), 'utf8') === 'pipe\n' && fs.statSync(path.join(d, 'buffered')).size > 0)
  const contentsSize = fs.statSync(path.join(filesDir, unlinked, 'contents')).size

  const cases = [
    { file: `files/${unlinked}/contents`, at: contentsSize - 1, says: new RegExp(`files/${unlinked}/contents: ${range(contentsSize - 1, contentsSize)} do not match their CRC32C`) },
    { file: `files/${pipe}/buffered`, at: 1, says: new RegExp(`files/${pipe}/buffered: bytes 0-\\d+ do not match their CRC32C`) },
    // rbx (word 5 of struct user_regs_struct): no other check reads it.
    { file: `${task}/threads/${target.pid}/regs`, at: 5 * 8, says: new RegExp(`${task}/threads/${target.pid}/regs: bytes 0-215 do not match their CRC32C`) },
    { file: `${task}/environ`, at: 0, says: new RegExp(`${task}/environ: bytes 0-\\d+ do not match their CRC32C`) },
  ]
  for (const [i, c] of cases.entries()) {
    const copy = copyOf(saved, copies, `tree-${i}`)
    flip(path.join(copy, c.file), c.at)
    await expectRefused(t, `tree: ${c.file}`, copy, target.pid, c.says)
  }
  const noCrc = copyOf(saved, copies, 'tree-nocrc')
  fs.rmSync(path.join(noCrc, task, 'cmdline_crc32c'))
  await expectRefused(t, 'tree: cmdline_crc32c removed', noCrc, target.pid, new RegExp(`${task}/cmdline_crc32c`))

  // The unlinked file's contents in an image: a byte of its file chunk.
  const imageFile = path.join(copies, 'pristine.image')
  await treeToImage(saved, imageFile)
  const loaded = await readImage(imageFile)
  const file = loaded.fileTable.files.find((f) => String(f.objref) === unlinked)!
  const contents = (file as { contents?: { extents?: (o: number, l: number) => Promise<Array<{ at: number }>> } }).contents!
  const copy = path.join(copies, 'image-contents')
  fs.copyFileSync(imageFile, copy)
  flip(copy, (await contents.extents!(3, 1))[0].at)
  await expectRefused(t, 'image: a byte of the unlinked file', copy, target.pid, new RegExp(`files/${unlinked}/contents: bytes 0-${contentsSize - 1} do not match their CRC32C`))

  restoreOk(mnt, saved, target.pid)
  const checks = await runChecks(target)
  t.ok(checks.done, 'the undamaged tree restores and the program finished its checks')
  t.same(checks.failed, [], 'no check failed')
})

t.test('an unprivileged user who damages a tree they own is refused when root restores it', async (t) => {
  const user = attacker()
  // The user's own process (a root one saved in the user's files is refused for its
  // credentials before its pages are read: test/security-owner.test.ts).
  const { target } = await launchAs(t, user, small)
  const home = fs.mkdtempSync(path.join(user.home, 'integrity-'))
  t.teardown(() => fs.rmSync(home, { recursive: true, force: true }))
  const saved = path.join(home, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, home])
  const task = `task-${target.pid}`
  const [vma] = mappingsWithPages(path.join(saved, task))
  const pages = path.join(saved, task, 'memory', 'vmas', vma.name, 'pages')
  // The attacker rewrites one byte in place, as they may in a tree of their own.
  const changed = fs.readFileSync(pages)[vma.size - 2] ^ 0xff
  shAs(user, `chmod u+w '${pages}' && printf '\\${changed.toString(8).padStart(3, '0')}' | dd of='${pages}' bs=1 seek=${vma.size - 2} conv=notrunc status=none`)
  t.equal(fs.readFileSync(pages)[vma.size - 2], changed, 'the attacker changed the byte')
  await expectRefused(t, 'a byte rewritten by the attacker', saved, target.pid,
    new RegExp(`${task}/memory/vmas/${vma.name}/pages: ${range(vma.size - 2, vma.size)} do not match their CRC32C`))
})
