// A trivial fuse-native server, the baseline the benchmarks compare ckptfs with: the same
// library and the same mount options as mount/server.ts (mount/fuseoptions.ts: direct_io,
// the attribute and entry timeouts, the same per-operation timers), but every answer comes at
// once from memory.
//
//   node dist/bench/trivial-server.js MNT tree SHAPE.json
//       serves the tree SHAPE.json describes (bench/common.ts TreeShape: the same names,
//       kinds, modes and sizes), every file's bytes a constant 'x'
//   node dist/bench/trivial-server.js MNT file NAME SIZE
//       serves one file NAME of SIZE bytes, copied from a 16 MiB buffer in memory
//
// Prints "ready" once the mount answers; unmounts and exits on SIGTERM or SIGINT. Only the
// type shown in /proc/mounts differs from ckptfs (fuse.ckptfsbench), so that `ckptfs` never
// mistakes it for one of its own mounts.

import * as fs from 'fs'
import * as os from 'os'
import type { TreeShape } from './common'
import { fuseOptions } from '../mount/fuseoptions'

interface FuseInstance {
  mount(cb: (err: Error | null) => void): void
  unmount(cb: (err: Error | null) => void): void
}
type FuseConstructor = new (mnt: string, ops: Record<string, unknown>, opts: Record<string, unknown>) => FuseInstance
// eslint-disable-next-line @typescript-eslint/no-require-imports
const Fuse: FuseConstructor = require('fuse-native')

type Reply = (code: number, ...values: unknown[]) => void

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const ENOENT = -os.constants.errno.ENOENT
const EISDIR = -os.constants.errno.EISDIR

interface Entry {
  dir: boolean
  mode: number
  size: number
  children: string[]
}

function fromShape(shape: TreeShape): Map<string, Entry> {
  const map = new Map<string, Entry>()
  map.set('/', { dir: true, mode: 0o755, size: 4096, children: [] })
  for (const [rel, kind, size, mode] of shape.entries) {
    const p = '/' + rel
    map.set(p, { dir: kind === 'd', mode, size: kind === 'd' ? 4096 : size, children: [] })
  }
  for (const p of map.keys()) {
    if (p === '/') continue
    const slash = p.lastIndexOf('/')
    const parent = map.get(slash === 0 ? '/' : p.slice(0, slash))
    if (!parent) throw new Error(`trivial-server: ${p} has no parent in the shape`)
    parent.children.push(p.slice(slash + 1))
  }
  return map
}

function main(): void {
  const [mnt, what, ...rest] = process.argv.slice(2)
  let entries: Map<string, Entry>
  let fill: (buf: Buffer, n: number, pos: number) => void
  if (what === 'tree' && rest.length === 1) {
    entries = fromShape(JSON.parse(fs.readFileSync(rest[0], 'utf8')) as TreeShape)
    fill = (buf, n) => void buf.fill(0x78, 0, n)
  } else if (what === 'file' && rest.length === 2) {
    const size = Number(rest[1])
    entries = new Map([
      ['/', { dir: true, mode: 0o755, size: 4096, children: [rest[0]] }],
      ['/' + rest[0], { dir: false, mode: 0o444, size, children: [] }],
    ])
    const source = Buffer.allocUnsafeSlow(16 * 1024 * 1024)
    for (let i = 0; i < source.length; i += 8) source.writeDoubleLE(i, i)
    fill = (buf, n, pos) => {
      for (let done = 0; done < n;) {
        const at = (pos + done) % source.length
        done += source.copy(buf, done, at, Math.min(source.length, at + n - done))
      }
    }
  } else {
    process.stderr.write('usage: trivial-server MNT tree SHAPE.json | trivial-server MNT file NAME SIZE\n')
    process.exit(2)
  }

  const started = new Date()
  const uid = process.getuid?.() ?? 0
  const gid = process.getgid?.() ?? 0
  const ops = {
    getattr: (p: string, cb: Reply) => {
      const e = entries.get(p)
      if (!e) return cb(ENOENT)
      const common = { mtime: started, atime: started, ctime: started, uid, gid }
      if (e.dir) return cb(0, { ...common, mode: S_IFDIR | e.mode, size: 4096, nlink: 2 })
      cb(0, { ...common, mode: S_IFREG | e.mode, size: e.size, blocks: Math.ceil(e.size / 512), blksize: 131072, nlink: 1 })
    },
    readdir: (p: string, cb: Reply) => {
      const e = entries.get(p)
      if (!e) return cb(ENOENT)
      cb(0, e.children)
    },
    open: (p: string, _flags: number, cb: Reply) => {
      const e = entries.get(p)
      if (!e) return cb(ENOENT)
      if (e.dir) return cb(EISDIR)
      cb(0, 1)
    },
    release: (_p: string, _handle: number, cb: Reply) => cb(0),
    read: (p: string, _handle: number, buf: Buffer, len: number, pos: number, cb: Reply) => {
      const e = entries.get(p)
      if (!e) return cb(ENOENT)
      const n = Math.max(0, Math.min(len, e.size - pos))
      fill(buf, n, pos)
      cb(n)
    },
    statfs: (_p: string, cb: Reply) => cb(0, { bsize: 4096, frsize: 4096, blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: 255 }),
  }
  // The same options as ckptfs's mounts (attribute and entry timeouts, direct_io, timers).
  const fuse = new Fuse(mnt, ops, fuseOptions('ckptfsbench'))
  let closing = false
  const close = () => {
    if (closing) return
    closing = true
    fuse.unmount(() => process.exit(0))
  }
  process.on('SIGTERM', close)
  process.on('SIGINT', close)
  fuse.mount((err) => {
    if (err) {
      process.stderr.write(`trivial-server: cannot mount ${mnt}: ${err.message}\n`)
      process.exit(1)
    }
    process.stdout.write('ready\n')
  })
}

main()
