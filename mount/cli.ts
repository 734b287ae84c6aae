// The `ckptfs` command line (SPEC "Command line"). Each command is a thin use of the mount's
// file interface or of lib; exit status 0 success, 1 failure (one line on stderr), 2 bad usage.

// The modules a command needs are loaded when it runs (`await import`): loading all of lib for
// every command cost about 0.18 s of CPU per run, more than node itself takes to start.

import { spawn } from 'child_process'
import * as fs from 'fs'
import * as path from 'path'
import { CkptError, errnoOf, messageOf } from '../lib/errors'
import type { RestoreInput } from '../lib/restore/input'
import { Progress } from './progress'
import { allCkptfsMounts, chooseMount, deadMount, ownCkptfsMounts } from './mounts'
import type { LazyOutcome } from '../lib/restore/lazy'
import { readRecord, removeLeftovers, serverRuns } from './records'
import type { Server } from './server'

const USAGE = `usage:
  ckptfs mount MNT [--foreground] [--cache-size BYTES]
  ckptfs umount MNT
  ckptfs checkpoint PID [--mount MNT] [--copy] [--inspect]
  ckptfs restore PATH|- [--mount MNT | --no-mount] [--allow-replaced] [--lazy]
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
This command restores by itself, the pages read where they lie (a mount is not needed; a
--mount given must answer); a PATH inside MNT/restore/ is restored by its server. --lazy: the
process runs before its memory is back, pages come in on first touch and in the background;
the PID is printed at once, and the command ends when the last page (of every process of a tree) is in. --allow-replaced accepts files replaced since the checkpoint (a
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
  const { Server } = await import('./server')
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
  const isMounted = () => allCkptfsMounts().some((m) => m.mnt === mnt)
  // The server module (fuse-native and all of lib) only for a mount that must be cleaned up.
  const cleanUpDeadMount = async (m: string) => (await import('./server')).cleanUpDeadMount(m)
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
  const progress = new Progress('umount')
  try {
    progress.step(`waiting for the server of ${mnt} (pid ${server}) to resume its tasks and unmount`)
    for (let waited = 0; running() && isMounted(); waited += 50) {
      if (waited > 30_000) throw new CkptError(`the server of ${mnt} (pid ${server}) did not unmount within 30 s`)
      await sleep(50)
    }
    if (isMounted()) await cleanUpDeadMount(mnt)
    // Unmounted: the server still removes the files copied into restore/ (slow for big trees).
    progress.step(`${mnt} is unmounted; waiting for its server to remove the files copied into restore/`)
    for (let waited = 0; running(); waited += 50) {
      if (waited === 2_000) progress.note(`${mnt} is unmounted; waiting for its server to remove the files copied into restore/`)
      if (waited > 600_000) throw new CkptError(`${mnt} is unmounted, but its server (pid ${server}) is still removing ${record.backing} after 10 minutes`)
      await sleep(50)
    }
  } finally {
    progress.finish()
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
  const { ancestryOf } = await import('../lib/lifecycle')
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
  const progress = new Progress('checkpoint')
  // Written asynchronously, so the progress line is drawn while the server works (a --copy of
  // a big process takes seconds).
  progress.step(copy ? `capturing process ${pid} whole (--copy)` : `freezing process ${pid}`)
  let dir: string
  try {
    const handle = await throughMountAsync(mnt, () => fs.promises.open(control, 'r+'))
    try {
      let failure: unknown
      try {
        await handle.write(request)
      } catch (err) {
        failure = err
      }
      const answer = await throughMountAsync(mnt, () => readAnswer(handle))
      if (failure !== undefined || !answer.startsWith('checkpoint-')) {
        throw new CkptError(answer.startsWith('error: ') ? answer.slice(7) : `checkpoint of ${pid}: ${messageOf(failure ?? answer)}`)
      }
      dir = path.join(mnt, answer)
    } finally {
      await handle.close()
    }
  } finally {
    progress.finish()
  }
  process.stdout.write(dir + '\n')
  if (parsed.flags.has('inspect')) return
  const problems = (readOrUndefined(path.join(dir, 'problems')) ?? '').split('\n').filter(Boolean)
  if (problems.length === 0) {
    noteConnections(dir, copy)
    return
  }
  const more = problems.length > 1 ? ` (and ${problems.length - 1} more in ${dir}/problems)` : ''
  const release = copy ? `end it with "echo resume > ${dir}/done"` : `it stays frozen for inspection: release it with "echo resume > ${dir}/done"`
  throw new CkptError(`process ${pid} cannot be restored from this checkpoint: ${problems[0]}${more}; ${release} (--inspect: such a checkpoint is expected)`)
}

/**
 * Says on stderr which established TCP connections the checkpoint holds (README, "TCP and UDP
 * sockets"): what `done` does to them is not what it does to the rest of the process.
 */
function noteConnections(dir: string, copy: boolean): void {
  const files = path.join(dir, 'files')
  let names: string[]
  try {
    names = fs.readdirSync(files)
  } catch {
    return // the checkpoint ended meanwhile: nothing to say
  }
  const held = names.filter((n) => fs.existsSync(path.join(files, n, 'tcp'))).map((n) => {
    const value = (name: string) => (readOrUndefined(path.join(files, n, name)) ?? '').trim()
    const at = (addr: string, port: string) => (addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`)
    return `files/${n} ${at(value('local_addr'), value('local_port'))} <-> ${at(value('peer_addr'), value('peer_port'))}`
  })
  if (held.length === 0) return
  const what = `${held.length} established TCP connection${held.length > 1 ? 's' : ''} (${held.join(', ')})`
  const note = copy
    ? `saved ${what} as they were at the checkpoint; the process runs on with them, so a restore after it used them resumes from older sequence numbers`
    : `holds ${what} in repair mode: "echo 1 > ${dir}/done" lets them carry on; after "echo kill > ${dir}/done" they survive only through a restore of this checkpoint (their peers' packets are dropped until then)`
  process.stderr.write(`ckptfs checkpoint: note: ${path.basename(dir)} ${note}\n`)
}

/** The one-line answer a control file holds for the request written through `handle`. */
async function readAnswer(handle: fs.promises.FileHandle): Promise<string> {
  const buf = Buffer.alloc(64 * 1024)
  const { bytesRead } = await handle.read(buf, 0, buf.length, 0)
  return buf.subarray(0, bytesRead).toString('utf8').trim()
}

/** Runs an operation on the mount; a server that is gone is named as such. */
async function throughMountAsync<T>(mnt: string, op: () => Promise<T>): Promise<T> {
  try {
    return await op()
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
  // A saved copy on disk (a tree, an image, a tar, stdin) is restored by this process from
  // where it lies, mount or not: its pages are read by the task from the saved files, never
  // pushed through FUSE into restore/ (issue 16). A mount named with --mount must still answer.
  if (!inArea && parsed.flags.has('mount')) chooseMount(mountFlag(parsed))
  const mnt = inArea ? path.dirname(path.dirname(resolved)) : undefined
  const progress = new Progress('restore')
  let input: RestoreInput | undefined
  let restoreModule: typeof import('../lib/restore/index') | undefined
  try {
    if (!inArea) {
      // A file or a tar is read whole first (a tar or stdin unpacked into a scratch directory).
      progress.step(`reading ${given === '-' ? 'stdin' : resolved}`)
      const { openRestoreInput } = await import('../lib/restore/input')
      const opening = openRestoreInput(given, (done, total) => progress.advance(done, total))
      opening.catch(() => undefined) // awaited below: its failure is this command's
      // A saved tree is walked on a pool thread (lib/restore/snapshot.ts): the restore's
      // modules load on this one meanwhile (about 0.1 s of CPU that no longer waits for it).
      restoreModule = await import('../lib/restore/index')
      input = await opening
    }
    // Files replaced on purpose since the checkpoint are accepted (never files the task could not open).
    const allowReplaced = parsed.flags.has('allow-replaced')
    const explain = (err: unknown) => new CkptError(input ? input.explain(messageOf(err)) : messageOf(err), errnoOf(err))
    // --lazy: the PID is printed as soon as the process runs; the command ends when its last
    // page is in (lib/restore/lazy.ts), and says so on stderr.
    const lazy = parsed.flags.has('lazy')
    const lazyModule = lazy ? await import('../lib/restore/lazy') : undefined
    let fill: Promise<LazyOutcome> | undefined
    // A saved tree on disk keeps the record of the pages its last lazy restore touched first
    // (task-PID/memory/first_touched): they are filled first next time.
    const record = lazy && input?.isDirectory && input.path === resolved ? lazyModule!.firstTouchedRecord(resolved) : undefined
    const prefetch = record?.prefetch
    let pid: number
    if (mnt === undefined) {
      progress.step(`restoring ${input!.label}`)
      const { restorePath } = restoreModule ?? (await import('../lib/restore/index'))
      pid = await restorePath(input!.path, { allowReplaced, note: progress.note, lazy: lazy ? (f) => { fill = f } : undefined, prefetch }, input!.storedBy, input!.tree).catch((err: unknown) => {
        throw explain(err)
      })
    } else {
      progress.step(`restoring ${resolved}`)
      pid = await restoreInArea(mnt, resolved, explain, allowReplaced, lazy, progress)
    }
    progress.finish()
    process.stdout.write(`${pid}\n`)
    if (lazy && mnt === undefined) {
      // This process serves the missing pages: ending it now would leave them reading zero.
      const refuse = (signal: string) => process.stderr.write(`ckptfs restore: ${signal} ignored: ${pid} still needs this command until its last page is in\n`)
      for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, refuse)
      try {
        const done = fill ? await fill.catch((err: unknown) => { throw explain(err) }) : undefined
        process.stderr.write(`ckptfs restore: ${lazyReport(pid, done)}\n`)
        if (record && done) {
          try {
            record.keep(done)
          } catch (err) {
            process.stderr.write(`ckptfs restore: the record of first touches was not kept: ${messageOf(err)}\n`)
          }
        }
      } finally {
        for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(signal, refuse)
      }
    }
  } finally {
    progress.finish()
    input?.dispose()
  }
}

/** What a lazy restore says once its last page is in (`done`: undefined when nothing was left to fill). */
function lazyReport(pid: number, done: LazyOutcome | undefined): string {
  if (!done) return `${pid}: every page was in before it ran (nothing to fill lazily)`
  const counts = `${done.pages} pages copied in, ${done.zeroPages} zero pages, ${done.faults} faults` +
    (done.prefetched ? `, ${done.prefetched} MiB pieces filled first as recorded last time` : '')
  if (done.processes) {
    // A tree: the last page of its last process (lazy.ts, TreeFill).
    const n = done.processes.length
    const ended = done.processes.filter((p) => p.ended).map((p) => p.pid)
    const endedText = ended.length ? `; ${ended.join(', ')} ended before ${ended.length === 1 ? 'its' : 'their'} last page was in` : ''
    return `${pid}: the last page of the tree's ${n} ${n === 1 ? 'process' : 'processes'} with pages to fill is in, ${done.seconds.toFixed(3)} s after the first started (${counts}${endedText})`
  }
  if (done.ended) return `${pid} ended before its last page was in (${counts} in ${done.seconds.toFixed(3)} s)`
  return `${pid}: the last page is in, ${done.seconds.toFixed(3)} s after it started (${counts})`
}

/** Restores a tree already in the restore area of `mnt` by writing to its `done`. */
async function restoreInArea(mnt: string, dir: string, explain: (err: unknown) => CkptError, allowReplaced: boolean, lazy: boolean, progress: Progress): Promise<number> {
  try {
    await startRestore(dir, lazy ? 'lazy\n' : allowReplaced ? 'allow-replaced\n' : '1\n', progress).catch((err: unknown) => {
      throw errnoOf(err) === 'ENOTCONN' ? deadMount(mnt) : err
    })
  } catch (err) {
    if (errnoOf(err) === 'ENOTCONN') throw err
    const status = readOrUndefined(path.join(dir, 'status'))
    throw explain(status?.startsWith('error: ') ? status.slice(7) : `restore of ${dir}: ${messageOf(err)}`)
  }
  const status = fs.readFileSync(path.join(dir, 'status'), 'utf8').trim()
  const m = /^restored ([0-9]+)($|, )/.exec(status)
  if (!m) throw explain(`restore of ${dir}: ${status}`)
  return Number(m[1])
}

/**
 * Writes `1` to restore/NAME/done; while the server works on it, passes on what the restore
 * waits for (`status` reads "restoring: WHAT") to `progress`, once, so the user knows why.
 */
async function startRestore(dir: string, word: string, progress: Progress): Promise<void> {
  let told = false
  const watch = setInterval(() => {
    fs.promises.readFile(path.join(dir, 'status'), 'utf8').then((status) => {
      const wait = /^restoring: (.+)$/.exec(status.trim())
      if (wait && !told) {
        told = true
        progress.note(wait[1])
      }
    }, () => undefined)
  }, 250)
  try {
    await fs.promises.writeFile(path.join(dir, 'done'), word)
  } finally {
    clearInterval(watch)
  }
}

async function check(parsed: Parsed): Promise<void> {
  const [pidText] = exactly(parsed, 1, 'PID')
  const { checkProcess } = await import('../lib/check')
  process.stdout.write((await checkProcess(parsePid(pidText))).join('\n') + '\n')
}

async function show(parsed: Parsed): Promise<void> {
  const [given] = exactly(parsed, 1, 'PATH')
  const { showCheckpoint } = await import('../lib/show')
  process.stdout.write(await showCheckpoint(path.resolve(given)))
}

async function seal(parsed: Parsed): Promise<void> {
  const [tree] = exactly(parsed, 1, 'TREE')
  const { sealTree } = await import('../lib/seal')
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
  restore: { run: restore, valued: ['mount'], plain: ['no-mount', 'allow-replaced', 'lazy'] },
  check: { run: check, valued: [], plain: [] },
  show: { run: show, valued: [], plain: [] },
  seal: { run: seal, valued: [], plain: [] },
  demo: { run: async (p) => { exactly(p, 0, 'no arguments'); await (await import('./demo')).runDemo() }, valued: [], plain: [] },
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
