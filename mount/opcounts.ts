// CKPTFS_TRACE=fuse: counts the FUSE operations the server answers and the time from each
// request to its answer, by operation, printed to stderr when the server closes. What a walk
// (`ls -lR`, `cp -a`) costs per entry is told by these counts more than by any timing.

type Handler = (...args: unknown[]) => void

export class OpCounts {
  private readonly counts = new Map<string, { n: number; ns: bigint }>()

  static ifTraced(): OpCounts | undefined {
    const wanted = (process.env.CKPTFS_TRACE ?? '').split(',')
    return wanted.includes('fuse') || wanted.includes('all') ? new OpCounts() : undefined
  }

  /** The same operations, each counted and timed up to its callback (always the last argument). */
  wrap(ops: Record<string, unknown>): Record<string, unknown> {
    const out: Record<string, unknown> = {}
    for (const [name, op] of Object.entries(ops)) {
      if (typeof op !== 'function') {
        out[name] = op
        continue
      }
      const handler = op as Handler
      out[name] = (...args: unknown[]) => {
        const start = process.hrtime.bigint()
        const cb = args[args.length - 1] as Handler
        args[args.length - 1] = (...reply: unknown[]) => {
          const c = this.counts.get(name) ?? { n: 0, ns: 0n }
          c.n++
          c.ns += process.hrtime.bigint() - start
          this.counts.set(name, c)
          cb(...reply)
        }
        handler(...args)
      }
    }
    return out
  }

  report(mnt: string): void {
    const rows = [...this.counts].sort((a, b) => b[1].n - a[1].n)
    const text = rows.map(([name, c]) => `${name} ${c.n} (${(Number(c.ns) / 1e3 / c.n).toFixed(0)} us each)`).join(', ')
    process.stderr.write(`ckptfs: fuse ops on ${mnt}: ${text || 'none'}\n`)
  }
}
