// The `ckptfs` command line (SPEC "Command line"). Each command is a thin use of the mount's
// file interface or of lib; exit status 0 success, 1 failure (one line on stderr), 2 bad usage.

import { execFileSync, spawn } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import { checkProcess } from '../lib/check'
import { CkptError, messageOf } from '../lib/errors'
import { ancestryOf } from '../lib/lifecycle'
import { treeToImage } from '../lib/image/convert'
import { restorePath } from '../lib/restore/index'
import { showCheckpoint } from '../lib/show'
import { runDemo } from './demo'
import { forceUnmount, restoreBackingOf, Server } from './server'

const USAGE = `usage:
  ckptfs mount MNT [--foreground] [--cache-size BYTES]
  ckptfs umount MNT
  ckptfs checkpoint PID [--mount MNT] [--copy] [--inspect]
  ckptfs restore PATH [--mount MNT]
  ckptfs check PID
  ckptfs show PATH
  ckptfs demo`

const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024

class UsageError extends Error {}

interface Parsed {
  args: string[]
  flags: Map<string, string | true>
}

/** Splits argv into positional arguments and the flags the command allows. */
function parse(argv: string[], valued: string[], plain: string[]): Parsed {
  const args: string[] = []
  const flags = new Map<string, string | true>()
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) {
      args.push(a)
      continue
    }
    const [name, inline] = a.slice(2).split(/=(.*)/s, 2)
    if (valued.includes(name)) {
      const value = inline ?? argv[++i]
      if (value === undefined) throw new UsageError(`--${name} needs a value`)
      flags.set(name, value)
    } else if (plain.includes(name) && inline === undefined) {
      flags.set(name, true)
    } else {
      throw new UsageError(`unknown option ${a}`)
    }
  }
  return { args, flags }
}

function exactly(parsed: Parsed, n: number, what: string): string[] {
  if (parsed.args.length !== n) throw new UsageError(`expected ${what}`)
  return parsed.args
}

function parseBytes(text: string): number {
  const m = /^([0-9]+)([kmg]?)(i?b)?$/i.exec(text.trim())
  if (!m) throw new UsageError(`--cache-size: not a size in bytes: ${text}`)
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g']
  const bytes = Number(m[1]) * unit
  if (bytes < 1024 * 1024) throw new UsageError('--cache-size: at least 1 MiB')
  return bytes
}

function parsePid(text: string): number {
  if (!/^[1-9][0-9]*$/.test(text)) throw new UsageError(`not a process ID: ${text}`)
  return Number(text)
}

// ---- mounts ----

function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)))
}

/** Mount points of every active ckptfs mount. */
export function ckptfsMounts(): string[] {
  return fs.readFileSync('/proc/mounts', 'utf8').split('\n')
    .map((line) => line.split(' '))
    .filter((f) => f[2] === 'fuse.ckptfs')
    .map((f) => unescapeMountField(f[1]))
}

function chooseMount(given: string | true | undefined): string {
  const mounts = ckptfsMounts()
  if (typeof given === 'string') {
    const mnt = path.resolve(given)
    if (!mounts.includes(mnt)) throw new CkptError(`${mnt} is not a ckptfs mount`)
    return mnt
  }
  if (mounts.length === 1) return mounts[0]
  if (mounts.length === 0) throw new CkptError('no ckptfs mount is active: run `ckptfs mount MNT` first')
  throw new CkptError(`${mounts.length} ckptfs mounts are active (${mounts.join(', ')}): choose one with --mount`)
}

/** PIDs of the servers serving `mnt` (found by their command line). */
export function serversOf(mnt: string): number[] {
  const found: number[] = []
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(entry)) continue
    let argv: string[]
    try {
      argv = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0')
    } catch {
      continue
    }
    const i = argv.indexOf('mount')
    if (i > 0 && argv[i - 1].endsWith(path.join('mount', 'cli.js')) && argv[i + 1] === mnt && argv.includes('--foreground')) found.push(Number(entry))
  }
  return found
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

// ---- commands ----

async function mount(parsed: Parsed): Promise<void> {
  const [given] = exactly(parsed, 1, 'MNT')
  const mnt = path.resolve(given)
  const cacheSize = parsed.flags.get('cache-size')
  const cacheBytes = typeof cacheSize === 'string' ? parseBytes(cacheSize) : DEFAULT_CACHE_BYTES
  if (ckptfsMounts().includes(mnt) && serversOf(mnt).length > 0) throw new CkptError(`${mnt} is a ckptfs mount already`)
  if (parsed.flags.has('foreground')) return serve(mnt, cacheBytes)

  // Background: run the server as a detached child and return once it says the mount answers.
  const child = spawn(process.execPath, [__filename, 'mount', mnt, '--foreground', '--cache-size', String(cacheBytes)], {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, CKPTFS_READY_FD: '3' },
  })
  const channel = child.stdio[3] as NodeJS.ReadableStream
  let said = ''
  channel.setEncoding('utf8')
  channel.on('data', (chunk: string) => (said += chunk))
  await new Promise<void>((resolve) => {
    channel.on('end', resolve)
    child.on('exit', () => resolve())
  })
  if (said.trim() !== 'ok') throw new CkptError(said.trim().replace(/^error: /, '') || 'the server exited before the mount answered')
  child.unref()
}

async function serve(mnt: string, cacheBytes: number): Promise<void> {
  const readyFd = process.env.CKPTFS_READY_FD ? Number(process.env.CKPTFS_READY_FD) : undefined
  const tell = (line: string) => {
    if (readyFd === undefined) return
    try {
      fs.writeSync(readyFd, line + '\n')
      fs.closeSync(readyFd)
    } catch {
      // The parent is gone: nothing to tell.
    }
  }
  const server = new Server(mnt, { cacheBytes })
  let closing: Promise<void> | undefined
  const shutdown = (code: number) => {
    closing ??= server.close().catch((err) => console.error(`ckptfs: unmount: ${messageOf(err)}`)).finally(() => process.exit(code))
  }
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => shutdown(0))
  process.on('uncaughtException', (err) => {
    console.error(`ckptfs: server: ${messageOf(err)}`)
    shutdown(1)
  })
  try {
    await server.mount()
  } catch (err) {
    tell(`error: cannot mount ${mnt}: ${messageOf(err)}`)
    await server.close().catch(() => undefined)
    throw new CkptError(`cannot mount ${mnt}: ${messageOf(err)}`)
  }
  tell('ok')
}

async function umount(parsed: Parsed): Promise<void> {
  const [given] = exactly(parsed, 1, 'MNT')
  const mnt = path.resolve(given)
  const servers = serversOf(mnt)
  if (servers.length === 0) {
    if (!ckptfsMounts().includes(mnt)) throw new CkptError(`${mnt} is not a ckptfs mount`)
    await forceUnmount(mnt) // its server died: only the kernel's mount is left
    fs.rmSync(restoreBackingOf(mnt), { recursive: true, force: true })
    return
  }
  for (const pid of servers) process.kill(pid, 'SIGTERM')
  const running = () => servers.some((pid) => fs.existsSync(`/proc/${pid}`))
  for (let waited = 0; running() && ckptfsMounts().includes(mnt); waited += 50) {
    if (waited > 30_000) throw new CkptError(`the server of ${mnt} (pid ${servers.join(', ')}) did not unmount within 30 s`)
    await sleep(50)
  }
  if (ckptfsMounts().includes(mnt)) await forceUnmount(mnt)
  // Unmounted: the server still removes the files copied into restore/ (slow for big trees).
  for (let waited = 0; running(); waited += 50) {
    if (waited === 2_000) process.stderr.write(`ckptfs umount: ${mnt} is unmounted; waiting for its server to remove the files copied into restore/\n`)
    if (waited > 600_000) throw new CkptError(`${mnt} is unmounted, but its server (pid ${servers.join(', ')}) is still removing ${restoreBackingOf(mnt)} after 10 minutes`)
    await sleep(50)
  }
}

/**
 * Opens a checkpoint and prints its path. One that cannot be restored is still opened (and
 * printed, for inspection) but fails with its reasons, unless --inspect says that is expected.
 */
async function checkpoint(parsed: Parsed): Promise<void> {
  const [pidText] = exactly(parsed, 1, 'PID')
  const pid = parsePid(pidText)
  const copy = parsed.flags.has('copy')
  if (!copy && ancestryOf(process.pid).includes(pid)) {
    throw new CkptError(`process ${pid} is an ancestor of this command (its shell?): freezing it would freeze this terminal for good; use --copy to inspect it`)
  }
  const mnt = chooseMount(parsed.flags.get('mount'))
  // Always asked as an inspection: the problems are read and judged here, so the user sees them.
  const request = `${pid}${copy ? ' copy' : ''} inspect\n`
  try {
    fs.writeFileSync(path.join(mnt, 'checkpoint'), request)
  } catch (err) {
    const why = readOrUndefined(path.join(mnt, 'by-pid', String(pid)))
    throw new CkptError(why?.startsWith('error: ') ? why.slice(7) : `checkpoint of ${pid}: ${messageOf(err)}`)
  }
  const dir = path.join(mnt, fs.readFileSync(path.join(mnt, 'by-pid', String(pid)), 'utf8').trim())
  process.stdout.write(dir + '\n')
  if (parsed.flags.has('inspect')) return
  const problems = (readOrUndefined(path.join(dir, 'problems')) ?? '').split('\n').filter(Boolean)
  if (problems.length === 0) return
  const more = problems.length > 1 ? ` (and ${problems.length - 1} more in ${dir}/problems)` : ''
  const release = copy ? `end it with "echo resume > ${dir}/done"` : `it stays frozen for inspection: release it with "echo resume > ${dir}/done"`
  throw new CkptError(`process ${pid} cannot be restored from this checkpoint: ${problems[0]}${more}; ${release} (--inspect: such a checkpoint is expected)`)
}

async function restore(parsed: Parsed): Promise<void> {
  const [given] = exactly(parsed, 1, 'PATH')
  const source = path.resolve(given)
  if (!parsed.flags.has('mount') && ckptfsMounts().length === 0) {
    // No server to ask: this process restores it, and the task is not its child either.
    process.stdout.write(`${await restorePath(source)}\n`)
    return
  }
  const mnt = chooseMount(parsed.flags.get('mount'))
  const area = path.join(mnt, 'restore')
  let dir: string
  if (path.dirname(source) === area) {
    dir = source
  } else {
    const kind = fs.statSync(source, { throwIfNoEntry: false })
    if (!kind) throw new CkptError(`${source}: no such file or directory`)
    if (!kind.isDirectory() && !kind.isFile()) throw new CkptError(`${source}: neither a saved tree (a directory) nor an image file`)
    dir = claimRestoreDir(area, path.basename(source).replace(/\.[^.]*$/, '') || 'saved')
    try {
      if (kind.isFile()) fs.copyFileSync(source, path.join(dir, 'image'))
      else if (holdsTaskDir(source)) {
        // A saved tree goes in as the image made from it (read and validated here, as a
        // restore would): one file through the mount instead of one per value, seconds
        // instead of minutes for a 10,000-fd tree's 181,065 files.
        await treeToImage(source, path.join(dir, 'image'))
      } else execFileSync('cp', ['-a', `${source}/.`, dir]) // a directory holding an image
    } catch (err) {
      fs.rmSync(dir, { recursive: true, force: true })
      throw err
    }
  }
  try {
    try {
      await startRestore(dir)
    } catch (err) {
      const status = readOrUndefined(path.join(dir, 'status'))
      throw new CkptError(status?.startsWith('error: ') ? status.slice(7) : `restore of ${source}: ${messageOf(err)}`)
    }
    const status = fs.readFileSync(path.join(dir, 'status'), 'utf8').trim()
    const m = /^restored ([0-9]+)$/.exec(status)
    if (!m) throw new CkptError(`restore of ${source}: ${status}`)
    process.stdout.write(m[1] + '\n')
  } finally {
    // A copy made here has given its answer (printed above); kept, it would hold the
    // server's memory or disk until the unmount.
    if (dir !== source) fs.rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * Writes `1` to restore/NAME/done; while the server works on it, passes on what the restore
 * waits for (`status` reads "restoring: WHAT") to stderr, once, so the user knows why.
 */
async function startRestore(dir: string): Promise<void> {
  let told = false
  const watch = setInterval(() => {
    fs.promises.readFile(path.join(dir, 'status'), 'utf8').then((status) => {
      const wait = /^restoring: (.+)$/.exec(status.trim())
      if (wait && !told) {
        told = true
        process.stderr.write(`ckptfs restore: ${wait[1]}\n`)
      }
    }, () => undefined)
  }, 250)
  try {
    await fs.promises.writeFile(path.join(dir, 'done'), '1\n')
  } finally {
    clearInterval(watch)
  }
}

/** Whether `dir` holds a task-PID directory (a saved tree rather than a directory holding an image). */
function holdsTaskDir(dir: string): boolean {
  return fs.readdirSync(dir).some((name) => /^task-[0-9]+$/.test(name))
}

/**
 * Makes a new directory in the restore area named after `base` (base, base-2, ...). mkdir is
 * the claim: two restores started at once never pick the same name.
 */
function claimRestoreDir(area: string, base: string): string {
  for (let n = 1; ; n++) {
    const dir = path.join(area, n === 1 ? base : `${base}-${n}`)
    try {
      fs.mkdirSync(dir)
      return dir
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new CkptError(`${dir}: ${messageOf(err)}`)
    }
  }
}

async function check(parsed: Parsed): Promise<void> {
  const [pidText] = exactly(parsed, 1, 'PID')
  process.stdout.write((await checkProcess(parsePid(pidText))).join('\n') + '\n')
}

async function show(parsed: Parsed): Promise<void> {
  const [given] = exactly(parsed, 1, 'PATH')
  process.stdout.write(await showCheckpoint(path.resolve(given)))
}

function readOrUndefined(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch {
    return undefined
  }
}

const COMMANDS: Record<string, { run: (p: Parsed) => Promise<void>; valued: string[]; plain: string[] }> = {
  mount: { run: mount, valued: ['cache-size'], plain: ['foreground'] },
  umount: { run: umount, valued: [], plain: [] },
  checkpoint: { run: checkpoint, valued: ['mount'], plain: ['copy', 'inspect'] },
  restore: { run: restore, valued: ['mount'], plain: [] },
  check: { run: check, valued: [], plain: [] },
  show: { run: show, valued: [], plain: [] },
  demo: { run: async (p) => { exactly(p, 0, 'no arguments'); await runDemo() }, valued: [], plain: [] },
}

export async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv
  const command = name === undefined ? undefined : COMMANDS[name]
  if (!command) {
    process.stderr.write(`${name === undefined || name === '--help' ? '' : `ckptfs: unknown command ${name}\n`}${USAGE}\n`)
    process.exitCode = name === '--help' ? 0 : 2
    return
  }
  try {
    await command.run(parse(rest, command.valued, command.plain))
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`ckptfs ${name}: ${err.message}\n${USAGE}\n`)
      process.exitCode = 2
    } else {
      process.stderr.write(`ckptfs ${name}: ${messageOf(err)}\n`)
      process.exitCode = 1
    }
  }
}

if (require.main === module) void main(process.argv.slice(2))
