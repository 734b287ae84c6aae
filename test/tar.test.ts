// lib/restore/tar.ts on tars written by GNU tar in each of its formats: long names, contents
// byte for byte, and modes of its own (never the tar's: a setuid file comes out 0600).

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import t from 'tap'
import { extractTar } from '../lib/restore/tar'
import { workdir } from './lib/restore'

/** Every file under `dir`, relative, with its contents. */
function contents(dir: string, rel = ''): Array<[string, string]> {
  const out: Array<[string, string]> = []
  for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
    const p = path.join(rel, name)
    if (fs.statSync(path.join(dir, p)).isDirectory()) out.push([p + '/', ''], ...contents(dir, p))
    else out.push([p, fs.readFileSync(path.join(dir, p)).toString('base64')])
  }
  return out
}

t.test('GNU, pax and ustar tars come out whole, long names included, with private modes', async (t) => {
  const dir = workdir(t, 'ckptfs-tar-')
  const src = path.join(dir, 'src')
  const longDir = path.join('checkpoint-1', 'd'.repeat(120))
  fs.mkdirSync(path.join(src, longDir), { recursive: true })
  fs.writeFileSync(path.join(src, longDir, 'e'.repeat(130)), Buffer.alloc(200_000, 0x5a))
  fs.writeFileSync(path.join(src, 'checkpoint-1', 'setuid'), 'x')
  fs.chmodSync(path.join(src, 'checkpoint-1', 'setuid'), 0o4755)
  fs.writeFileSync(path.join(src, 'checkpoint-1', 'empty'), '')
  for (const format of ['gnu', 'posix']) {
    const tar = path.join(dir, `${format}.tar`)
    execFileSync('tar', ['-C', src, `--format=${format}`, '-cf', tar, 'checkpoint-1'])
    const out = path.join(dir, `out-${format}`)
    fs.mkdirSync(out)
    await extractTar(fs.createReadStream(tar), out, tar)
    t.strictSame(contents(out), contents(src), `${format}: the same names and bytes`)
    t.equal(fs.statSync(path.join(out, 'checkpoint-1', 'setuid')).mode & 0o7777, 0o600, `${format}: a setuid file comes out 0600`)
    t.equal(fs.statSync(path.join(out, longDir)).mode & 0o7777, 0o700, `${format}: directories 0700`)
  }
  // ustar keeps names up to 255 bytes by splitting them into prefix and name.
  const ustarSrc = path.join(dir, 'ustar-src')
  const split = path.join('p'.repeat(120), 'n'.repeat(60))
  fs.mkdirSync(path.join(ustarSrc, path.dirname(split)), { recursive: true })
  fs.writeFileSync(path.join(ustarSrc, split), 'split name\n')
  const tar = path.join(dir, 'ustar.tar')
  execFileSync('tar', ['-C', ustarSrc, '--format=ustar', '-cf', tar, split])
  const out = path.join(dir, 'out-ustar')
  fs.mkdirSync(out)
  await extractTar(fs.createReadStream(tar), out, tar)
  t.equal(fs.readFileSync(path.join(out, split), 'utf8'), 'split name\n', 'ustar: a name split into prefix and name')
})

t.test('a name twice, an empty tar: refused', async (t) => {
  const dir = workdir(t, 'ckptfs-tar-')
  fs.writeFileSync(path.join(dir, 'f'), 'one')
  const twice = path.join(dir, 'twice.tar')
  execFileSync('tar', ['-C', dir, '-cf', twice, 'f'])
  execFileSync('tar', ['-C', dir, '-rf', twice, 'f']) // appended: a second copy, not a hard link
  fs.mkdirSync(path.join(dir, 'out1'))
  await t.rejects(extractTar(fs.createReadStream(twice), path.join(dir, 'out1'), 'twice.tar'), /twice\.tar: "f" \(header at byte 1024\): appears twice in the tar/)
  const empty = path.join(dir, 'empty.tar')
  fs.writeFileSync(empty, Buffer.alloc(10240))
  fs.mkdirSync(path.join(dir, 'out2'))
  await t.rejects(extractTar(fs.createReadStream(empty), path.join(dir, 'out2'), 'empty.tar'), /empty\.tar: an empty tar/)
})
