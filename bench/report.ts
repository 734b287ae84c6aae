// The results: one row per figure, printed as a plain-text table and written as markdown
// (bench/out/results.md) for the README. Targets are checked, never asserted: a row says
// "meets" or "misses" (and by how much), reference figures say nothing.

import { execFileSync } from 'child_process'
import * as fs from 'fs'
import * as os from 'os'

export interface Row {
  section: string
  measure: string
  result: string
  target?: string
  verdict?: string
  note?: string
}

export class Report {
  readonly rows: Row[] = []
  readonly notes: string[] = []

  constructor(readonly section: string) {}

  /** A figure shown for reference (no target). */
  ref(measure: string, result: string, note?: string): void {
    this.rows.push({ section: this.section, measure, result, note })
  }

  /** A figure with a target: `ok` says whether it meets it; `miss` says by how much when not. */
  check(measure: string, result: string, target: string, ok: boolean, miss: string, note?: string): void {
    this.rows.push({ section: this.section, measure, result, target, verdict: ok ? 'meets' : `misses (${miss})`, note })
  }

  /** A figure that could not be measured. */
  failed(measure: string, why: string, target?: string): void {
    this.rows.push({ section: this.section, measure, result: 'not measured', target, verdict: target ? 'misses (failed)' : undefined, note: why })
  }

  note(text: string): void {
    this.notes.push(`${this.section}: ${text}`)
  }
}

// ---- formatting numbers ----

export const fmtS = (s: number): string => (s >= 120 ? `${(s / 60).toFixed(1)} min` : s >= 10 ? `${s.toFixed(1)} s` : s >= 1 ? `${s.toFixed(2)} s` : `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`)
export const fmtMs = (ms: number): string => fmtS(ms / 1000)
export const fmtX = (x: number): string => `${x.toFixed(2)}x`
export const fmtN = (n: number): string => n.toLocaleString('en-US')
/** How far a ratio is beyond its limit, e.g. "40% over the 1.5x limit". */
export const over = (ratio: number, limit: number): string => `${Math.round((ratio / limit - 1) * 100)}% over the ${limit}x limit`
/** How far a ratio is below its floor, e.g. "at 0.50x, 38% under the 0.8x floor". */
export const under = (ratio: number, floor: number): string => `${Math.round((1 - ratio / floor) * 100)}% under the ${floor}x floor`
export const fmtRate = (bytes: number, s: number): string => `${fmtN(Math.round(bytes / s / 1e6))} MB/s`

// ---- the machine ----

function firstLine(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim().split('\n')[0]
  } catch {
    return '?'
  }
}

export function machineLines(repo: string): string[] {
  const cpu = os.cpus()[0]?.model ?? '?'
  const load = os.loadavg().map((l) => l.toFixed(2)).join(' ')
  const head = firstLine('git', ['-C', repo, 'rev-parse', '--short', 'HEAD'])
  const dirty = firstLine('git', ['-C', repo, 'status', '--porcelain', '--untracked-files=no']) !== '' ? ' + uncommitted changes' : ''
  return [
    `date: ${new Date().toISOString()}`,
    `machine: nproc ${firstLine('nproc', [])}, kernel ${os.release()}, ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, load average ${load} at start`,
    `software: node ${process.version}, ckptfs ${head}${dirty}`,
  ]
}

// ---- output ----

function pad(s: string, n: number): string {
  return s + ' '.repeat(Math.max(0, n - s.length))
}

export function textTable(header: string[], rows: Row[], notes: string[], elapsed: number): string {
  const out: string[] = [...header, '']
  const cols: Array<keyof Row> = ['measure', 'result', 'target', 'verdict']
  const titles = ['measure', 'result', 'target', 'verdict']
  const width = cols.map((c, i) => Math.max(titles[i].length, ...rows.map((r) => (r[c] ?? '').length)))
  let section = ''
  for (const r of rows) {
    if (r.section !== section) {
      section = r.section
      out.push(section, cols.map((_c, i) => pad(titles[i], width[i])).join('  '), width.map((w) => '-'.repeat(w)).join('  '))
    }
    out.push(cols.map((c, i) => pad(r[c] ?? '', width[i])).join('  ').trimEnd())
    if (r.note) out.push(`    ${r.note}`)
  }
  if (notes.length) out.push('', 'notes:', ...notes.map((n) => `- ${n}`))
  out.push('', `whole run: ${fmtS(elapsed)}`)
  return out.join('\n') + '\n'
}

const md = (s: string): string => s.replace(/\|/g, '\\|')

export function markdownTable(header: string[], rows: Row[], notes: string[], elapsed: number): string {
  const out: string[] = ['## Benchmarks', '', ...header.map((h) => `- ${h}`), '']
  let section = ''
  for (const r of rows) {
    if (r.section !== section) {
      section = r.section
      out.push('', `### ${section}`, '', '| measure | result | target | verdict |', '|---|---|---|---|')
    }
    const result = r.note ? `${md(r.result)}<br><sub>${md(r.note)}</sub>` : md(r.result)
    out.push(`| ${md(r.measure)} | ${result} | ${md(r.target ?? '')} | ${md(r.verdict ?? '')} |`)
  }
  if (notes.length) out.push('', 'Notes:', '', ...notes.map((n) => `- ${md(n)}`))
  out.push('', `Whole run: ${fmtS(elapsed)}.`)
  return out.join('\n') + '\n'
}

export function writeMarkdown(file: string, text: string): void {
  fs.writeFileSync(file, text)
}
