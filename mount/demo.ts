// `ckptfs demo`: the whole cycle of SPEC.md on the embedded sample program (examples/counter.c):
// mount, checkpoint, look at the tree, back it up, kill the program, restore it, watch it
// carry on. Every step is a real command, printed as a shell transcript.

import { execFileSync, spawn } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'
import * as path from 'path'

const repo = path.resolve(__dirname, '..', '..')
const cli = path.join(__dirname, 'cli.js')

function say(text: string): void {
  process.stdout.write(text + '\n')
}

function ckptfs(...args: string[]): string {
  say(`$ ckptfs ${args.join(' ')}`)
  const out = execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  if (out) process.stdout.write(out)
  return out.trim()
}

function shell(command: string): string {
  say(`$ ${command}`)
  const out = execFileSync('bash', ['-c', command], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  if (out) process.stdout.write(out)
  return out.trim()
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

function lastCount(log: string): number {
  const lines = fs.readFileSync(log, 'utf8').trim().split('\n')
  return Number(lines[lines.length - 1])
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return !/^[ZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3))
  } catch {
    return false
  }
}

export async function runDemo(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ckptfs-demo-'))
  const mnt = path.join(work, 'mnt')
  const log = path.join(work, 'counter.log')
  const program = path.join(work, 'counter')
  let pids: number[] = []
  let mounted = false
  try {
    say('# The sample program counts up every 200 ms into a log file it keeps open.')
    execFileSync('gcc', ['-O2', '-o', program, path.join(repo, 'examples', 'counter.c')])
    const child = spawn(program, [log], { detached: true, stdio: 'ignore' })
    child.unref()
    const pid = child.pid!
    pids.push(pid)
    await sleep(1000)
    say(`# counter runs as PID ${pid}; its log ends at ${lastCount(log)}.\n`)

    ckptfs('mount', mnt)
    mounted = true
    const dir = ckptfs('checkpoint', String(pid), '--mount', mnt)
    const frozenAt = lastCount(log)
    say(`\n# The process is frozen (state ${fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1][0]}); its log stays at ${frozenAt}.`)
    shell(`ls ${dir}`)
    shell(`cat ${dir}/status`)
    shell(`ls ${dir}/task-${pid}`)
    shell(`for fd in ${dir}/task-${pid}/fds/*; do echo "fd $(cat $fd/fd_nr) -> files/$(cat $fd/fd): $(cat ${dir}/files/$(cat $fd/fd)/target)"; done`)
    shell(`head -n 5 ${dir}/task-${pid}/memory/maps`)
    say('')
    ckptfs('show', dir)

    say('\n# Back the checkpoint up with cp -a, then kill the frozen program through done.')
    const saved = path.join(work, 'saved')
    shell(`cp -a ${dir} ${saved} && du -sh ${saved}`)
    shell(`echo kill > ${dir}/done`)
    await sleep(300)
    say(`# PID ${pid} is ${alive(pid) ? 'still alive (unexpected)' : 'gone'}; ${path.basename(dir)} is ${fs.readdirSync(mnt).includes(path.basename(dir)) ? 'still listed (unexpected)' : 'gone from the mount'}.\n`)
    pids = []

    say('# Restore it from the saved copy: the program is back with its PID and carries on.')
    const restored = Number(ckptfs('restore', saved, '--mount', mnt))
    pids.push(restored)
    await sleep(1200)
    const counts = fs.readFileSync(log, 'utf8').trim().split('\n').map(Number)
    const after = counts.slice(counts.indexOf(frozenAt))
    say(`# The log went on from ${frozenAt}: ${after.slice(0, 6).join(', ')}, ... ${after[after.length - 1]}`)
    const gapless = after.every((n, i) => n === frozenAt + i)
    say(`# ${gapless ? 'No gap and no repeat' : 'The count has a gap or a repeat (unexpected)'}; PID ${restored} is ${alive(restored) ? 'running' : 'not running (unexpected)'}.`)
  } finally {
    for (const p of pids) try { process.kill(p, 'SIGKILL') } catch { /* gone */ }
    if (mounted) execFileSync(process.execPath, [cli, 'umount', mnt], { stdio: 'inherit' })
    fs.rmSync(work, { recursive: true, force: true })
  }
}
