// The `ckptfs` command line (SPEC "Command line"). Each command is a thin use of the mount's
// file interface or of lib; exit status 0 success, 1 failure (one line on stderr), 2 bad usage.

import { execFileSync, spawn } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import { checkProcess } from '../lib/check'
import { CkptError, errnoOf, messageOf } from '../lib/errors'
import { ancestryOf } from '../lib/lifecycle'
import { treeToImage } from '../lib/image/convert'
import { restorePath } from '../lib/restore/index'
import { openRestoreInput, type RestoreInput } from '../lib/restore/input'
import { imageFileIn } from '../lib/restore/load'
import { checkImageCredentials } from '../lib/restore/owner'
import { sealTree } from '../lib/seal'
import { showCheckpoint } from '../lib/show'
import { runDemo } from './demo'
import { chooseMount, deadMount, ownCkptfsMounts } from './mounts'
import { readRecord, removeLeftovers, serverRuns } from './records'
import { ckptfsMounts, cleanUpDeadMount, Server } from './server'

export { ckptfsMounts }

const USAGE = `usage:
  ckptfs mount MNT [--foreground] [--cache-size BYTES]
  ckptfs umount MNT
  ckptfs checkpoint PID [--mount MNT] [--copy] [--inspect]
  ckptfs restore PATH|- [--mount MNT | --no-mount] [--allow-replaced]
  ckptfs check PID
  ckptfs show PATH
  ckptfs seal TREE
  ckptfs demo
  ckptfs help [COMMAND] | --help | -h | --version

--mount may be left out while you have exactly one ckptfs mount.
\`ckptfs COMMAND --help\` says more about one command.`

/** What `ckptfs COMMAND --help` prints, after the command's usage line. */
const HELP: Record<string, string> = {
  mount: `Mounts ckptfs at MNT (made if missing) and returns once it answers; the server runs in the
background unless --foreground. BYTES may end in k, m or g (default 256m).`,
  umount: 'Resumes every task the server of MNT still holds frozen, unmounts, and ends the server.',
  checkpoint: `Checkpoints process PID and its threads; prints the path of the new checkpoint-N directory.
The task stays frozen until \`echo 1 > MNT/checkpoint-N/done\` (or kill); --copy captures it
all now and lets it run on at once. A checkpoint that could not be restored (its problems file
is not empty) is still made, but the command fails and names the reason, unless --inspect says
such a checkpoint is expected; a lazy checkpoint of this command's own ancestor is refused.`,
  restore: `Restores from PATH: a saved checkpoint-N tree, a directory holding only its image, an image
file, or a tar (or .tar.gz) of a tree; - reads an image or a tar from stdin. Prints the PID.
Through the mount (--mount, or your only mount); with no mount of yours, or --no-mount, this
command restores by itself. --allow-replaced accepts files replaced since the checkpoint (a
rotated log, an editor's rename); files are still opened only as the restored process could.`,
  check: 'Says, for every fd and resource of PID, whether it can be checkpointed and if not why.',
  show: 'Prints a readable summary of a checkpoint tree (in the mount or a saved copy).',
  seal: `Rewrites the checks of a saved tree after a deliberate edit (every values_crc32c and
NAME_crc32c), as the tree's owner, so a restore judges the edited values instead of refusing
them as damage. Follows no symbolic link. Prints each file it rewrote.`,
  demo: 'Runs the whole cycle on a sample program in a temporary mount, as a shell transcript.',
}

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
    if (a === '--') {
      args.push(...argv.slice(i + 1))
      break
    }
    if (!a.startsWith('-') || a === '-') {
      args.push(a) // `-` is an argument: stdin for restore
      continue
    }
    if (!a.startsWith('--')) throw new UsageError(`unknown option ${a}`)
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

/** The PID of the running server of `mnt` (found by the record it wrote: mount/records.ts), as a list. */
export function serversOf(mnt: string): number[] {
  const record = readRecord(path.resolve(mnt))
  return record && serverRuns(record) ? [record.pid] : []
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

// ---- commands ----

async function mount(parsed: Parsed): Promise<void> {
  const [given] = exactly(parsed, 1, 'MNT')
  const mnt = path.resolve(given)
  const cacheSize = parsed.flags.get('cache-size')
  const cacheBytes = typeof cacheSize === 'string' ? parseBytes(cacheSize) : DEFAULT_CACHE_BYTES
  // A dead server's mount and leftovers are cleaned up by the new server (Server.mount).
  const running = serversOf(mnt)
  if (running.length > 0) throw new CkptError(`${mnt} is a ckptfs mount already (server pid ${running[0]})`)
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
  let server: Server
  try {
    server = new Server(mnt, { cacheBytes })
  } catch (err) {
    tell(`error: cannot mount ${mnt}: ${messageOf(err)}`)
    throw new CkptError(`cannot mount ${mnt}: ${messageOf(err)}`)
  }
  // However the process ends (short of SIGKILL), its private files go with it.
  process.on('exit', () => {
    try {
      server.removeLeftovers()
    } catch (err) {
      console.error(`ckptfs: server: ${messageOf(err)}`)
    }
  })
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
  // The server is the one its record names (mount/records.ts); a zombie one has exited.
  const record = readRecord(mnt)
  if (!record || !serverRuns(record)) {
    // Its server died (or never wrote a record): clean up the kernel's mount and what the
    // record says the server left.
    const unmounted = await cleanUpDeadMount(mnt)
    if (record) removeLeftovers(record)
    else if (!unmounted) throw new CkptError(`${mnt} is not a ckptfs mount`)
    return
  }
  const server = record.pid
  process.kill(server, 'SIGTERM')
  const running = () => serverRuns(record)
  for (let waited = 0; running() && ckptfsMounts().includes(mnt); waited += 50) {
    if (waited > 30_000) throw new CkptError(`the server of ${mnt} (pid ${server}) did not unmount within 30 s`)
    await sleep(50)
  }
  if (ckptfsMounts().includes(mnt)) await cleanUpDeadMount(mnt)
  // Unmounted: the server still removes the files copied into restore/ (slow for big trees).
  for (let waited = 0; running(); waited += 50) {
    if (waited === 2_000) process.stderr.write(`ckptfs umount: ${mnt} is unmounted; waiting for its server to remove the files copied into restore/\n`)
    if (waited > 600_000) throw new CkptError(`${mnt} is unmounted, but its server (pid ${server}) is still removing ${record.backing} after 10 minutes`)
    await sleep(50)
  }
  // A server that died before it removed them (killed meanwhile) leaves them to us.
  removeLeftovers(record)
}

/**
 * Opens a checkpoint and prints its path. One that cannot be restored is still opened (and
 * printed, for inspection) but fails with its reasons, unless --inspect says that is expected.
 */
async function checkpoint(parsed: Parsed): Promise<void> {
  const [pidText] = exactly(parsed, 1, 'PID')
  const pid = parsePid(pidText)
  const copy = parsed.flags.has('copy')
  // PID 1 is everyone's ancestor: the server refuses it with its own reason.
  if (!copy && pid !== 1 && ancestryOf(process.pid).includes(pid)) {
    throw new CkptError(`process ${pid} is an ancestor of this command (its shell?): freezing it would freeze this terminal for good; use --copy to inspect it`)
  }
  const mnt = chooseMount(mountFlag(parsed))
  // Always asked as an inspection: the problems are read and judged here, so the user sees them.
  const request = `${pid}${copy ? ' copy' : ''} inspect\n`
  // The answer is read back from the same open file: it is this request's own, whatever
  // other requests for PID run at the same time (by-pid/PID shows only the newest).
  const control = path.join(mnt, 'checkpoint')
  const fd = throughMount(mnt, () => fs.openSync(control, 'r+'))
  let dir: string
  try {
    let failure: unknown
    try {
      fs.writeSync(fd, request)
    } catch (err) {
      failure = err
    }
    const answer = throughMount(mnt, () => readAnswer(fd))
    if (failure !== undefined || !answer.startsWith('checkpoint-')) {
      throw new CkptError(answer.startsWith('error: ') ? answer.slice(7) : `checkpoint of ${pid}: ${messageOf(failure ?? answer)}`)
    }
    dir = path.join(mnt, answer)
    process.stdout.write(dir + '\n')
  } finally {
    fs.closeSync(fd)
  }
  if (parsed.flags.has('inspect')) return
  const problems = (readOrUndefined(path.join(dir, 'problems')) ?? '').split('\n').filter(Boolean)
  if (problems.length === 0) return
  const more = problems.length > 1 ? ` (and ${problems.length - 1} more in ${dir}/problems)` : ''
  const release = copy ? `end it with "echo resume > ${dir}/done"` : `it stays frozen for inspection: release it with "echo resume > ${dir}/done"`
  throw new CkptError(`process ${pid} cannot be restored from this checkpoint: ${problems[0]}${more}; ${release} (--inspect: such a checkpoint is expected)`)
}

/** The one-line answer a control file holds for the request written through `fd`. */
function readAnswer(fd: number): string {
  const buf = Buffer.alloc(64 * 1024)
  return buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, 0)).toString('utf8').trim()
}

/** Runs an operation on the mount; a server that is gone is named as such. */
function throughMount<T>(mnt: string, op: () => T): T {
  try {
    return op()
  } catch (err) {
    if (errnoOf(err) === 'ENOTCONN') throw deadMount(mnt)
    throw err
  }
}

function mountFlag(parsed: Parsed): string | undefined {
  const given = parsed.flags.get('mount')
  return typeof given === 'string' ? given : undefined
}

async function restore(parsed: Parsed): Promise<void> {
  const [given] = exactly(parsed, 1, 'PATH')
  if (parsed.flags.has('mount') && parsed.flags.has('no-mount')) throw new UsageError('--mount and --no-mount exclude each other')
  // A directory already in the restore area is restored where it is.
  const resolved = path.resolve(given)
  const inArea = given !== '-' && path.basename(path.dirname(resolved)) === 'restore' && ownCkptfsMounts().includes(path.dirname(path.dirname(resolved)))
  // With no mount of the caller's (or --no-mount) there is no server to ask: this process
  // restores it, and the task is not its child either.
  const direct = !inArea && (parsed.flags.has('no-mount') || (!parsed.flags.has('mount') && ownCkptfsMounts().length === 0))
  const mnt = direct ? undefined : chooseMount(mountFlag(parsed))
  const input = inArea ? undefined : await openRestoreInput(given)
  // Files replaced on purpose since the checkpoint are accepted (never files the task could not open).
  const allowReplaced = parsed.flags.has('allow-replaced')
  const explain = (err: unknown) => new CkptError(input ? input.explain(messageOf(err)) : messageOf(err), errnoOf(err))
  try {
    const pid = mnt === undefined
      ? await restorePath(input!.path, { allowReplaced }, input!.storedBy).catch((err: unknown) => {
        throw explain(err)
      })
      : await restoreThroughMount(mnt, given, input, explain, allowReplaced)
    process.stdout.write(`${pid}\n`)
  } finally {
    input?.dispose()
  }
}

async function restoreThroughMount(mnt: string, given: string, input: RestoreInput | undefined, explain: (err: unknown) => CkptError, allowReplaced: boolean): Promise<number> {
  const area = path.join(mnt, 'restore')
  let dir: string
  if (!input) {
    dir = path.resolve(given)
  } else {
    const base = given === '-' ? 'stdin' : path.basename(path.resolve(given)).replace(/\.tar\.gz$|\.[^.]*$/, '')
    dir = throughMount(mnt, () => claimRestoreDir(area, base || 'saved'))
    try {
      // The restore area trusts what is copied in (the mount's owner chose it); what is read
      // here from the user's disk is first held to its owners' rule (lib/restore/owner.ts).
      if (!input.isDirectory) {
        await checkImageCredentials(input.path, input.storedBy, input.path)
        fs.copyFileSync(input.path, path.join(dir, 'image'))
      } else if (holdsTaskDir(input.path)) {
        // A saved tree goes in as the image made from it (read and validated here, as a
        // restore would): one file through the mount instead of one per value, seconds
        // instead of minutes for a 10,000-fd tree's 181,065 files.
        await treeToImage(input.path, path.join(dir, 'image'), { validate: true, storedBy: input.storedBy })
      } else {
        // a directory holding an image
        const image = imageFileIn(fs.readdirSync(input.path), input.path)
        if (image !== undefined) await checkImageCredentials(path.join(input.path, image), input.storedBy, path.join(input.path, image))
        execFileSync('cp', ['-a', `${input.path}/.`, dir])
      }
    } catch (err) {
      fs.rmSync(dir, { recursive: true, force: true })
      throw explain(errnoOf(err) === 'ENOTCONN' ? deadMount(mnt) : err)
    }
  }
  try {
    try {
      await startRestore(dir, allowReplaced ? 'allow-replaced\n' : '1\n').catch((err: unknown) => {
        throw errnoOf(err) === 'ENOTCONN' ? deadMount(mnt) : err
      })
    } catch (err) {
      if (errnoOf(err) === 'ENOTCONN') throw err
      const status = readOrUndefined(path.join(dir, 'status'))
      throw explain(status?.startsWith('error: ') ? status.slice(7) : `restore of ${input?.label ?? dir}: ${messageOf(err)}`)
    }
    const status = fs.readFileSync(path.join(dir, 'status'), 'utf8').trim()
    const m = /^restored ([0-9]+)$/.exec(status)
    if (!m) throw explain(`restore of ${input?.label ?? dir}: ${status}`)
    return Number(m[1])
  } finally {
    // A copy made here has given its answer (printed above); kept, it would hold the
    // server's memory or disk until the unmount.
    if (input) fs.rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * Writes `1` to restore/NAME/done; while the server works on it, passes on what the restore
 * waits for (`status` reads "restoring: WHAT") to stderr, once, so the user knows why.
 */
async function startRestore(dir: string, word: string): Promise<void> {
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
    await fs.promises.writeFile(path.join(dir, 'done'), word)
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

async function seal(parsed: Parsed): Promise<void> {
  const [tree] = exactly(parsed, 1, 'TREE')
  const rewrote = sealTree(tree)
  process.stdout.write(rewrote.length === 0 ? `nothing rewritten: every check of ${tree} matches\n` : rewrote.map((rel) => `rewrote ${rel}\n`).join(''))
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
  restore: { run: restore, valued: ['mount'], plain: ['no-mount', 'allow-replaced'] },
  check: { run: check, valued: [], plain: [] },
  show: { run: show, valued: [], plain: [] },
  seal: { run: seal, valued: [], plain: [] },
  demo: { run: async (p) => { exactly(p, 0, 'no arguments'); await runDemo() }, valued: [], plain: [] },
}

const isHelp = (a: string) => a === '--help' || a === '-h' || a === 'help'

function usageOf(name: string): string {
  const line = USAGE.split('\n').find((l) => l.startsWith(`  ckptfs ${name}`))!.trim()
  return `usage: ${line}\n${HELP[name]}`
}

function version(): string {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }
  return `ckptfs ${pkg.version}`
}

/** Usage on request goes to stdout with exit 0; a usage error to stderr with exit 2. */
export async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv
  if (name === undefined) {
    process.stderr.write(`ckptfs: a command is missing\n${USAGE}\n`)
    process.exitCode = 2
    return
  }
  if (name === '--version' || name === 'version') {
    process.stdout.write(version() + '\n')
    return
  }
  if (isHelp(name)) {
    const topic = rest[0]
    if (topic !== undefined && !COMMANDS[topic]) {
      process.stderr.write(`ckptfs help: unknown command ${topic}\n${USAGE}\n`)
      process.exitCode = 2
      return
    }
    process.stdout.write((topic === undefined ? USAGE : usageOf(topic)) + '\n')
    return
  }
  const command = COMMANDS[name]
  if (!command) {
    process.stderr.write(`ckptfs: unknown command ${name}\n${USAGE}\n`)
    process.exitCode = 2
    return
  }
  if (rest.some((a) => a === '--help' || a === '-h')) {
    process.stdout.write(usageOf(name) + '\n')
    return
  }
  try {
    await command.run(parse(rest, command.valued, command.plain))
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`ckptfs ${name}: ${err.message}\n${usageOf(name).split('\n')[0]}\n`)
      process.exitCode = 2
    } else {
      process.stderr.write(`ckptfs ${name}: ${messageOf(err)}\n`)
      process.exitCode = 1
    }
  }
}

if (require.main === module) void main(process.argv.slice(2))
