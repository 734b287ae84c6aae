// Phase timings for profiling, printed to stderr when CKPTFS_TRACE names the operation
// (CKPTFS_TRACE=restore, =checkpoint, or =all). Off by default; costs one clock read per phase.

export class PhaseTimer {
  readonly enabled: boolean
  private last = process.hrtime.bigint()
  private readonly start = this.last
  private readonly phases: string[] = []

  constructor(private readonly what: string) {
    const wanted = (process.env.CKPTFS_TRACE ?? '').split(',')
    this.enabled = wanted.includes(what) || wanted.includes('all')
  }

  /** Ends the phase running since the last mark (or the start). */
  mark(phase: string): void {
    if (!this.enabled) return
    const now = process.hrtime.bigint()
    this.phases.push(`${phase} ${ms(now - this.last)}`)
    this.last = now
  }

  /** Prints the phases and the total, once. */
  report(subject: string): void {
    if (!this.enabled) return
    process.stderr.write(`ckptfs: ${this.what} ${subject}: ${this.phases.join(', ')}; total ${ms(process.hrtime.bigint() - this.start)}\n`)
  }
}

const ms = (ns: bigint): string => `${(Number(ns) / 1e6).toFixed(1)} ms`
