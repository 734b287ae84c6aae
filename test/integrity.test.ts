// Every byte of a saved checkpoint is covered by a check (SPEC, Access): bytes flipped in a
// saved tree's pages, in an image's page data or chunk checksum, in an unlinked file's
// contents and in the small raw files (registers, environ, pipe data) make `ckptfs restore`
// refuse, naming the mapping or file and the damaged bytes, and leave no process behind (the
// PID is free afterwards). The undamaged copies still restore. The mount's checksum files
// agree with the bytes it shows, lazy and --copy. An unprivileged user who damages a tree
// they own that root then restores is refused the same way. Value files are covered by their
// directory's values_crc32c: a changed digit, an extra or a missing value file and a tree
// without manifests are refused by name; `ckptfs seal` after a deliberate edit hands the
// verdict back to the validator, as the tree's owner, following no link.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t, { type Test } from 'tap'
import { crc32c, CRC_PIECE, pieceCrcs } from '../lib/checksum'
import { readImage } from '../lib/image/decode'
import { treeToImage } from '../lib/image/convert'
import { ckptfs, ckptfsOk, cliCommand, mountFor } from './lib/mount'
import { checkpointSaveKill, exists, launch, reseal, restoreCli, restoreOk, runChecks, waitUntil, workdir } from './lib/restore'
import { buildTarget } from './lib/targets'
import { asUser, attacker, launchAs, runAs, shAs } from './lib/unprivileged'

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

// ---------------------------------------------------------------------------------------
// Value files: values_crc32c in every directory of values (lib/manifest.ts)

/** The manifest a directory of a tree on disk should hold: its value files and their CRC32C, sorted. */
function expectedManifest(dir: string): string {
  const names = fs.readdirSync(dir).filter((n) => fs.lstatSync(path.join(dir, n)).isFile())
  const has = (n: string) => names.includes(n)
  return names
    .filter((n) => !['done', 'status', 'values_crc32c'].includes(n) && !has(`${n}_crc32c`) && !(n.endsWith('_crc32c') && has(n.slice(0, -7))))
    .sort()
    .map((n) => `${n} ${crc32c(fs.readFileSync(path.join(dir, n))).toString(16).padStart(8, '0')}\n`)
    .join('')
}

/** The objref of a saved regular file description (fd_type file, not unlinked). */
function regularObjref(saved: string): string {
  const filesDir = path.join(saved, 'files')
  return fs.readdirSync(filesDir).find((o) => fs.readFileSync(path.join(filesDir, o, 'fd_type'), 'utf8') === 'file\n' && !fs.existsSync(path.join(filesDir, o, 'contents')))!
}

/** Writes `text` into the saved file `file` (made writable first, as a user editing a copy would). */
function edit(file: string, text: string): void {
  fs.chmodSync(path.dirname(file), 0o700)
  fs.rmSync(file, { force: true })
  fs.writeFileSync(file, text, { mode: 0o400 })
}

t.test('the JavaScript CRC32C of short values agrees with the addon', async (t) => {
  const { smallCrc32c, textCrc32c } = await import('../lib/checksum')
  for (const text of ['', '0\n', '1234567\n', '/tmp/ä file\n', 'x'.repeat(9000)]) {
    const bytes = Buffer.from(text)
    t.equal(smallCrc32c(bytes), crc32c(bytes), `bytes of ${JSON.stringify(text.slice(0, 12))}`)
    t.equal(textCrc32c(text), crc32c(bytes), `text ${JSON.stringify(text.slice(0, 12))}`)
  }
})

t.test('values_crc32c: its text round-trips; damaged, unsorted or repeated lines are refused', async (t) => {
  const { manifestSize, manifestText, parseManifest } = await import('../lib/manifest')
  const crcs = new Map([['f_pos', 0xdacd4d69], ['a name', 0x00000001], ['uid', 0xffffffff]])
  const text = manifestText(crcs)
  t.equal(text.toString(), 'a name 00000001\nf_pos dacd4d69\nuid ffffffff\n', 'sorted by name, eight lowercase digits')
  t.equal(text.length, manifestSize([...crcs.keys()]), 'its size from the names alone')
  t.same(parseManifest(text.toString()), new Map([...crcs].sort()), 'parsed back')
  t.match(parseManifest('uid dacd4d69\nf_pos dacd4d69\n'), /^line 2: f_pos is not after uid/, 'unsorted')
  t.match(parseManifest('uid dacd4d69\nuid dacd4d69\n'), /^line 2: uid is not after uid/, 'a name twice')
  t.match(parseManifest('uid DACD4D69\n'), /^line 1: not "NAME CRC32C"/, 'upper-case digits')
  t.match(parseManifest('uid dacd4d6\n'), /^line 1: not "NAME CRC32C"/, 'seven digits')
  t.match(parseManifest('uid dacd4d69'), /no newline/, 'no newline at the end')
})

t.test('values_crc32c: one line per value file, sized without reading a value, as private as its values', async (t) => {
  const dir = workdir(t)
  const target = await launch(t, [small, dir], { dir })
  const cp = ckptfsOk('checkpoint', String(target.pid), '--mount', mnt)
  t.teardown(() => {
    try {
      fs.writeFileSync(path.join(cp, 'done'), '1')
    } catch {
      // ended below already
    }
  })
  const task = path.join(cp, `task-${target.pid}`)
  const reg = regularObjref(cp)
  // stat first: its size is the names' alone, and reading it then gives exactly that many bytes.
  const dirs = ['', `task-${target.pid}`, `task-${target.pid}/creds`, `task-${target.pid}/threads/${target.pid}`, `task-${target.pid}/mm`, `files/${reg}`, `task-${target.pid}/fds/0`]
  for (const rel of dirs) {
    const manifest = path.join(cp, rel, 'values_crc32c')
    const size = fs.statSync(manifest).size
    const text = fs.readFileSync(manifest, 'utf8')
    t.equal(text.length, size, `${rel || '.'}/values_crc32c: stat's size is what read returns`)
    t.equal(text, expectedManifest(path.join(cp, rel)), `${rel || '.'}/values_crc32c: every value file, sorted, with its CRC32C`)
  }
  t.equal(fs.statSync(path.join(task, 'creds', 'values_crc32c')).mode & 0o777, 0o444, 'creds/: every value is public, so is its manifest')
  t.equal(fs.statSync(path.join(cp, `files/${reg}`, 'values_crc32c')).mode & 0o777, 0o400, 'files/OBJREF: private values, a private manifest')
  t.equal(fs.statSync(path.join(cp, 'values_crc32c')).mode & 0o777, 0o400, 'the top: boot_id and problems are private, so is the manifest')
  t.notOk(fs.existsSync(path.join(cp, 'files', 'values_crc32c')), 'files/ holds only directories: no manifest')
  t.notOk(fs.readFileSync(path.join(task, 'values_crc32c'), 'utf8').includes('cmdline'), 'raw files (cmdline, with cmdline_crc32c) are not listed')
  fs.writeFileSync(path.join(cp, 'done'), '1')
})

t.test('a changed value file is refused naming it, by ckptfs restore and through restore/; ckptfs seal makes the validator the judge again', async (t) => {
  const dir = workdir(t)
  const copies = workdir(t, 'ckptfs-integrity-')
  const target = await launch(t, [small, dir], { dir })
  const saved = path.join(dir, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  const task = `task-${target.pid}`
  const reg = regularObjref(saved)
  const damage = /damaged: its CRC32C is [0-9a-f]{8}, values_crc32c says [0-9a-f]{8}/

  // A flipped digit: still a valid value, so only the manifest can tell.
  const fpos = `files/${reg}/f_pos`
  const flipped = copyOf(saved, copies, 'flipped')
  const pos = fs.readFileSync(path.join(saved, fpos), 'utf8')
  edit(path.join(flipped, fpos), pos.replace(/\d(?=\n)/, (d) => String((Number(d) + 1) % 10)))
  await expectRefused(t, 'a digit of f_pos', flipped, target.pid, new RegExp(`^ckptfs restore: ${fpos}: ${damage.source}`))
  const uid = `${task}/creds/uid`
  const otherUid = copyOf(saved, copies, 'uid')
  edit(path.join(otherUid, uid), '1\n')
  await expectRefused(t, 'creds/uid', otherUid, target.pid, new RegExp(`${uid}: ${damage.source}`))

  // The same, copied into restore/ by hand and started with done.
  const area = path.join(mnt, 'restore', 'flipped')
  t.teardown(() => fs.rmSync(area, { recursive: true, force: true }))
  execFileSync('cp', ['-a', flipped, area])
  t.throws(() => fs.writeFileSync(path.join(area, 'done'), '1'), 'restore/: the write to done fails')
  t.match(fs.readFileSync(path.join(area, 'status'), 'utf8'), new RegExp(`^error: ${fpos}: ${damage.source}`), 'restore/: status names the file')
  t.notOk(exists(target.pid), 'restore/: no process is left')
  fs.rmSync(area, { recursive: true, force: true })

  // A value file the checkpoint did not write, one it wrote taken away, no manifest at all.
  const extra = copyOf(saved, copies, 'extra')
  edit(path.join(extra, `${task}/creds/extra`), '1\n')
  await expectRefused(t, 'an extra value file', extra, target.pid, new RegExp(`${task}/creds/extra: not in values_crc32c`))
  const lost = copyOf(saved, copies, 'lost')
  fs.chmodSync(lost, 0o700)
  fs.rmSync(path.join(lost, 'problems'))
  await expectRefused(t, 'a listed value file removed', lost, target.pid, /^ckptfs restore: problems: listed in values_crc32c but missing/)
  const bare = copyOf(saved, copies, 'bare')
  execFileSync('sh', ['-c', 'find "$1" -type d -exec chmod u+w {} + && find "$1" -name values_crc32c -delete', 'sh', bare])
  await expectRefused(t, 'a tree without manifests', bare, target.pid, /values_crc32c: missing: .*ckptfs seal TREE/)

  // Sealed after a deliberate edit: the validator judges the value again.
  const negative = copyOf(saved, copies, 'negative')
  edit(path.join(negative, fpos), 'x\n')
  await expectRefused(t, 'f_pos x, not sealed', negative, target.pid, new RegExp(`${fpos}: ${damage.source}`))
  t.same(reseal(negative), [`files/${reg}/values_crc32c`], 'seal rewrote only the manifest of the edited directory')
  t.same(reseal(negative), [], 'sealing again rewrites nothing')
  const refused = restoreCli(mnt, negative)
  t.equal(refused.status, 1, 'sealed: still refused')
  t.match(refused.stderr, new RegExp(`${fpos}: not a decimal integer`), 'sealed: the refusal names f_pos and what is wrong with it')
  t.notMatch(refused.stderr, /damaged|values_crc32c/, `sealed: by the validator, not the manifest (${refused.stderr.trim()})`)
  for (const tree of [bare, extra]) reseal(tree)
  const sealedExtra = restoreCli(mnt, extra)
  t.match(sealedExtra.stderr, new RegExp(`${task}/creds/extra: unknown entry`), 'sealed: the extra file is an unknown entry to the loader')

  // A sealed edit the validator accepts restores: the tree without manifests, sealed.
  restoreOk(mnt, bare, target.pid)
  const checks = await runChecks(target)
  t.ok(checks.done, 'the sealed tree restores and the program finished its checks')
  t.same(checks.failed, [], 'no check failed')
})

t.test('ckptfs seal follows no symbolic link, refuses what is not a tree, and acts as the tree\'s owner', async (t) => {
  const user = attacker()
  const dir = workdir(t)
  fs.chownSync(dir, user.uid, user.gid)
  fs.writeFileSync(path.join(dir, 'out'), '', { mode: 0o644 })
  fs.chownSync(path.join(dir, 'out'), user.uid, user.gid)
  const target = await launch(t, asUser(user, [small, dir]), { dir })
  const home = fs.mkdtempSync(path.join(user.home, 'seal-'))
  t.teardown(() => fs.rmSync(home, { recursive: true, force: true }))
  const saved = path.join(home, 'saved')
  await checkpointSaveKill(mnt, target.pid, saved)
  execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, home])
  const task = `task-${target.pid}`
  const reg = regularObjref(saved)

  // A link out of the tree: the whole seal is refused, nothing rewritten.
  const before = fs.readFileSync(path.join(saved, `files/${reg}/values_crc32c`))
  shAs(user, `chmod u+w '${saved}/files/${reg}' && rm '${saved}/files/${reg}/f_pos' && ln -s /etc/shadow '${saved}/files/${reg}/f_pos'`)
  const linked = ckptfs('seal', saved)
  t.equal(linked.status, 1, 'a symbolic link: seal fails')
  t.match(linked.stderr, new RegExp(`files/${reg}/f_pos: a symbolic link`), 'and names it')
  t.same(fs.readFileSync(path.join(saved, `files/${reg}/values_crc32c`)), before, 'nothing was rewritten')
  shAs(user, `rm '${saved}/files/${reg}/f_pos' && printf '0\\n' > '${saved}/files/${reg}/f_pos'`)

  const notTree = ckptfs('seal', home)
  t.equal(notTree.status, 1, 'a directory without task-PID: refused')
  t.match(notTree.stderr, /not a saved checkpoint tree/, 'says it is not a tree')

  // The user edits their own tree and seals it themselves; root seals as the owner too.
  const credsMode = fs.statSync(path.join(saved, task, 'creds')).mode & 0o777
  shAs(user, `chmod u+w '${saved}/${task}/creds' && rm -f '${saved}/${task}/creds/uid' && printf '0\\n' > '${saved}/${task}/creds/uid'`)
  const [sealCmd, sealArgs] = cliCommand('seal', saved)
  const asOwner = runAs(user, [sealCmd, ...sealArgs])
  t.equal(asOwner.status, 0, `the owner seals their tree (${asOwner.stderr.trim()})`)
  t.match(asOwner.stdout, new RegExp(`rewrote ${task}/creds/values_crc32c`), 'and is told what was rewritten')
  const manifest = fs.statSync(path.join(saved, task, 'creds', 'values_crc32c'))
  t.equal(manifest.uid, user.uid, 'the rewritten manifest is the owner\'s')
  t.equal(fs.statSync(path.join(saved, task, 'creds')).mode & 0o777, credsMode | 0o200, 'the directory keeps the mode the owner gave it')
  shAs(user, `chmod u+w '${saved}/files/${reg}' && printf '1\\n' > '${saved}/files/${reg}/f_pos' && chmod 0500 '${saved}/files/${reg}'`)
  t.match(ckptfsOk('seal', saved), new RegExp(`rewrote files/${reg}/values_crc32c`), 'root seals a user\'s tree')
  t.equal(fs.statSync(path.join(saved, `files/${reg}`)).mode & 0o777, 0o500, 'a directory the owner could not write is given its mode 0500 back')
  t.equal(fs.statSync(path.join(saved, `files/${reg}/values_crc32c`)).uid, user.uid, 'as the owner: the file is the owner\'s, not root\'s')
  // uid 0 in a tree the user owns: the validator (not the manifest) judges it, and refuses root credentials from a user's files.
  const r = restoreCli(mnt, saved)
  t.equal(r.status, 1, 'the sealed root uid is refused')
  t.notMatch(r.stderr, /damaged|values_crc32c/, `by the credentials check, not the manifest (${r.stderr.trim()})`)
  t.notOk(exists(target.pid), 'no process is left')

  // A top of root's over the user's directories: still the user's tree (as a restore judges
  // it), sealed as the user, so no directory the user swaps for a link can have root write.
  fs.chownSync(saved, 0, 0)
  shAs(user, `chmod u+w '${saved}/files/${reg}' && printf '2\\n' > '${saved}/files/${reg}/f_pos' && chmod 0500 '${saved}/files/${reg}'`)
  t.match(ckptfsOk('seal', saved), new RegExp(`rewrote files/${reg}/values_crc32c`), 'root seals a tree of root\'s top and the user\'s entries')
  t.equal(fs.statSync(path.join(saved, `files/${reg}/values_crc32c`)).uid, user.uid, 'as the user whose entries it holds, not as root')
})
