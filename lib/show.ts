// `ckptfs show PATH`: a human summary of a saved checkpoint (in the manner of CRIU's `crit x`):
// the process, its threads, its memory mappings and its fds. PATH is a saved tree (a copy
// of checkpoint-N, with its task-PID/), an image file, or a directory holding only an image
// (`image`, or a copy of checkpoint-N.image).

import * as fs from 'fs'
import * as path from 'path'
import { byteSize } from './bytesize'
import { CkptError } from './errors'
import { handlerOf } from './files/index'
import { loadTree } from './image/convert'
import { readImage } from './image/decode'
import { DiskDir } from './files/saved'
import type { CheckpointMode, FileDescription, FileTable, ProcessState, ThreadState, Vma, ZombieTask } from './model'
import { imageFileIn, parseSaved } from './restore/load'
import type { TreeTaskParts } from './restore/validate'

interface Shown {
  source: string
  mode: CheckpointMode | 'unknown'
  process: ProcessState
  threads: ThreadState[]
  vmas: Vma[]
  fileTable: FileTable
  /** The rest of a process tree: its other processes and zombies. */
  others?: TreeTaskParts[]
  zombies?: ZombieTask[]
}

export async function showCheckpoint(target: string): Promise<string> {
  return summary(await load(target))
}

async function load(target: string): Promise<Shown> {
  const stat = await fs.promises.stat(target).catch(() => {
    throw new CkptError(`${target}: no such file or directory`, 'ENOENT')
  })
  let image = target
  if (stat.isDirectory()) {
    const names = await fs.promises.readdir(target)
    const taskDirs = names.filter((n) => /^task-[0-9]+$/.test(n))
    if (taskDirs.length > 1) {
      // A process tree: parsed (not validated) as a restore would read it.
      const saved = await parseSaved(new DiskDir(target), target)
      const mode = names.includes('mode') ? fs.readFileSync(path.join(target, 'mode'), 'utf8').trim() : 'unknown'
      return { source: `saved tree ${target}`, mode: mode === 'lazy' || mode === 'copy' ? mode : 'unknown', ...saved }
    }
    if (taskDirs.length === 1) {
      const { task, mode } = await loadTree(target)
      const [process, threads, vmas, fileTable] = await Promise.all([task.process(), task.threads(), task.vmas(), task.fileTable()])
      return { source: `saved tree ${target}`, mode: mode ?? 'unknown', process, threads, vmas, fileTable }
    }
    const found = imageFileIn(names, target)
    if (found === undefined) throw new CkptError(`${target}: neither a task-PID directory nor an image file: not a saved checkpoint`, 'EINVAL')
    image = path.join(target, found)
  }
  const loaded = await readImage(image)
  const { major, minor } = loaded.header.formatVersion
  return { source: `image ${image} (format ${major}.${minor})`, mode: loaded.header.mode, ...loaded }
}

/** "off", or the filters (each stored once), their instructions and the threads they act on, and the threads in strict mode. */
function seccompText(p: Shown['process'], threads: readonly ThreadState[]): string {
  const strict = threads.filter((t) => t.seccompStrict).length
  const strictText = strict === 0 ? '' : `strict mode on ${strict} thread${strict === 1 ? '' : 's'}`
  if (p.seccompThreads.length === 0) return strictText || 'off'
  const insns = p.seccompFilters.reduce((sum, f) => sum + f.insns.length / 8, 0)
  const logged = p.seccompFilters.filter((f) => (f.flags & 2) !== 0).length
  const filtered = p.seccompThreads.length
  const filters = `${p.seccompFilters.length} filter${p.seccompFilters.length === 1 ? '' : 's'} (${insns} instructions${logged ? `, ${logged} logged` : ''}) on ${filtered} thread${filtered === 1 ? '' : 's'}, no_new_privs ${p.noNewPrivs ? 'on' : 'off'}`
  return strictText ? `${filters}; ${strictText}` : filters
}

function summary(s: Shown): string {
  const p = s.process
  const stored = s.vmas.reduce((sum, v) => sum + v.pages.size, 0)
  const mapped = s.vmas.reduce((sum, v) => sum + (v.end - v.start), 0n)
  const args = p.cmdline.toString('utf8').replace(/\0$/, '').split('\0')
  const lines = [
    `checkpoint of process ${p.pid} (${p.comm})`,
    ...table([
      ['source', s.source],
      ['mode', s.mode],
      ['exe', p.exe],
      ['cmdline', args.map(quoteArg).join(' ')],
      ['cwd', p.cwd],
      ['root', p.root],
      ['ids', `ppid ${p.ppid}, pgid ${p.pgid}, sid ${p.sid}`],
      ['creds', `uid ${p.creds.uid}, gid ${p.creds.gid}, groups ${p.creds.groups.join(',') || '-'}`],
      ['signals', `${p.sigactions.filter((a) => a.handler !== 0n).length} of ${p.sigactions.length} not default, pending ${hex(p.sharedPendingMask)}`],
      ['seccomp', seccompText(p, s.threads)],
    ]),
    '',
    `threads: ${s.threads.length}`,
    ...table([
      ['TID', 'COMM', 'IP', 'SP', 'SYSCALL'],
      ...s.threads.map((t) => [String(t.tid), t.comm, hex(register(t.regs, RIP)), hex(register(t.regs, RSP)), syscallText(t)]),
    ]),
    '',
    `mappings: ${s.vmas.length}, ${size(mapped)} mapped, ${size(stored)} stored`,
    ...table([
      ['START', 'END', 'PERMS', 'KIND', 'SIZE', 'STORED', 'PATH'],
      ...s.vmas.map((v) => [hex(v.start), hex(v.end), v.perms, v.kind, size(v.end - v.start), size(v.pages.size), v.path]),
    ]),
    '',
    `fds: ${s.fileTable.fds.length}, open file descriptions: ${s.fileTable.files.length}`,
  ]
  const byObjref = new Map(s.fileTable.files.map((f) => [f.objref, f]))
  const fds = [...s.fileTable.fds].sort((a, b) => a.fd - b.fd)
  lines.push(...table([
    ['FD', 'COE', 'OBJREF', 'TYPE', 'FLAGS', 'POS', 'TARGET'],
    ...fds.map((e) => {
      const f = byObjref.get(e.objref)
      return [String(e.fd), e.closeOnExec ? '1' : '0', String(e.objref), f?.type ?? '?', f ? '0' + f.flags.toString(8) : '?', f ? String(f.pos) : '?', f ? targetText(f) : '(no description)']
    }),
  ]))
  const notes = s.fileTable.files.filter((f) => f.notCheckpointable)
  if (notes.length > 0) {
    lines.push('', 'not checkpointable:')
    for (const f of notes) {
      const used = fds.filter((e) => e.objref === f.objref).map((e) => e.fd)
      lines.push(`  files/${f.objref} (fd ${used.join(', ') || '-'}): ${f.notCheckpointable}`)
    }
  }
  lines.push(...treeSummary(s))
  return lines.join('\n') + '\n'
}

/** The other processes of a tree, one line each (the root is shown above in full). */
function treeSummary(s: Shown): string[] {
  const others = s.others ?? []
  const zombies = s.zombies ?? []
  if (others.length === 0 && zombies.length === 0) return []
  return [
    '',
    `process tree: ${1 + others.length + zombies.length} processes (the root above, ${others.length} more, ${zombies.length} zombies)`,
    ...table([
      ['PID', 'PPID', 'PGID', 'SID', 'THREADS', 'STORED', 'FDS', 'COMM'],
      ...others.map((o) => [String(o.pid), String(o.process.ppid), String(o.process.pgid), String(o.process.sid), String(o.threads.length), size(o.vmas.reduce((sum, v) => sum + v.pages.size, 0)), String(o.fds.length), o.process.comm]),
      ...zombies.map((z) => [String(z.pid), String(z.ppid), String(z.pgid), String(z.sid), 'zombie', '-', '-', `${z.comm} (exit status ${z.exitStatus})`]),
    ]),
  ]
}

/** The target, and what only this type has that a reader wants at a glance (its handler says). */
function targetText(f: FileDescription): string {
  const handler = handlerOf(f)
  return handler.summary ? handler.summary(f) : f.target
}

// x86-64 struct user_regs_struct: rip and rsp are the 17th and 20th of its 27 words.
const RIP = 16
const RSP = 19
function register(regs: Buffer, index: number): bigint {
  return regs.length >= (index + 1) * 8 ? regs.readBigUInt64LE(index * 8) : 0n
}

/** x86-64 system calls a stopped thread is commonly found in. */
const syscallNames: Record<number, string> = {
  0: 'read', 1: 'write', 7: 'poll', 23: 'select', 34: 'pause', 35: 'nanosleep', 43: 'accept', 45: 'recvfrom',
  47: 'recvmsg', 61: 'wait4', 128: 'rt_sigtimedwait', 130: 'rt_sigsuspend', 202: 'futex', 230: 'clock_nanosleep',
  232: 'epoll_wait', 247: 'waitid', 270: 'pselect6', 271: 'ppoll', 281: 'epoll_pwait', 288: 'accept4', 441: 'epoll_pwait2',
}
const restartCodes: Record<string, string> = {
  '-512': 'ERESTARTSYS', '-513': 'ERESTARTNOINTR', '-514': 'ERESTARTNOHAND', '-516': 'ERESTART_RESTARTBLOCK',
}

function syscallText(t: ThreadState): string {
  if (t.syscall.nr < 0) return '-'
  const name = syscallNames[t.syscall.nr] ?? 'syscall'
  const result = String(t.syscall.result)
  return `${name}(${t.syscall.nr}) = ${result}${restartCodes[result] ? ` ${restartCodes[result]}` : ''}`
}

const hex = (n: bigint): string => '0x' + n.toString(16)

const size = byteSize

/** An argument as a shell would need it typed, on one line: bare, 'quoted' or $'escaped'. */
function quoteArg(arg: string): string {
  if (/^[\w@%+=:,./-]+$/.test(arg)) return arg
  if (!/[\x00-\x1f\x7f]/.test(arg)) return `'${arg.replace(/'/g, `'\\''`)}'`
  const escapes: Record<string, string> = { '\n': '\\n', '\t': '\\t', '\r': '\\r', "'": "\\'", '\\': '\\\\' }
  return `$'${arg.replace(/[\x00-\x1f\x7f'\\]/g, (c) => escapes[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)}'`
}

/** Rows as aligned columns (the last one unpadded). */
function table(rows: string[][], indent = 2): string[] {
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)))
  const pad = ' '.repeat(indent)
  return rows.map((row) => pad + row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]))).join('  ').trimEnd())
}
