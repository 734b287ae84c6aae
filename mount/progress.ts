// What a command that can take more than a second is doing, on stderr, and only when stderr
// is a terminal: one line redrawn in place (the step, or what it waits for; bytes done of the
// total when known; seconds so far), shown once the command has run for a second and erased
// when it ends. Piped, nothing is drawn, so a script's output stays clean; a wait the user
// should know about (a zombie holding the PID) is still said there, once, as a line.

/** The part of a stream Progress uses (process.stderr, or a test's stand-in). */
export interface ProgressStream {
  isTTY?: boolean
  columns?: number
  write(text: string): boolean
}

const REDRAW_MS = 200

export class Progress {
  private what = ''
  private done: number | undefined
  private total: number | undefined
  private readonly start = Date.now()
  private readonly timer: NodeJS.Timeout | undefined
  private drawn = false

  /** `command` names the line ("ckptfs restore: ..."); nothing is drawn before `showAfterMs`. */
  constructor(private readonly command: string, private readonly out: ProgressStream = process.stderr, private readonly showAfterMs = 1000) {
    if (!out.isTTY) return
    this.timer = setInterval(() => this.draw(), REDRAW_MS)
    this.timer.unref() // never what keeps a command alive
  }

  /** Starts a step: what the command now does or waits for, with its size in bytes when known. */
  step(what: string, total?: number): void {
    this.what = what
    this.total = total
    this.done = total === undefined ? undefined : 0
    this.draw()
  }

  /** Bytes of the current step done so far (of `total`, when it is learnt only now). */
  advance(done: number, total?: number): void {
    this.done = done
    if (total !== undefined) this.total = total
  }

  /** A wait worth explaining: the line on a terminal, or said once on stderr when piped. */
  readonly note = (what: string): void => {
    if (this.timer) this.step(what)
    else this.out.write(`ckptfs ${this.command}: ${what}\n`)
  }

  /** Erases the line and stops drawing; call it once the command ends, whatever the outcome. */
  finish(): void {
    if (this.timer) clearInterval(this.timer)
    if (this.drawn) this.out.write('\r\x1b[K')
    this.drawn = false
    this.what = ''
  }

  private draw(): void {
    const elapsed = Date.now() - this.start
    if (!this.timer || !this.what || elapsed < this.showAfterMs) return
    let figures = ''
    if (this.done !== undefined) {
      figures += this.total ? `: ${bytes(this.done)} of ${bytes(this.total)} (${Math.floor((100 * this.done) / this.total)}%)` : `: ${bytes(this.done)}`
    }
    figures += `, ${(elapsed / 1000).toFixed(1)} s`
    // One terminal row, or the redraw would scroll: a long step loses its middle, never the figures.
    let what = `ckptfs ${this.command}: ${this.what}`
    const room = Math.max(20, (this.out.columns || 80) - 1 - figures.length)
    if (what.length > room) what = `${what.slice(0, Math.ceil((room - 3) / 2))}...${what.slice(what.length - Math.floor((room - 3) / 2))}`
    this.out.write(`\r\x1b[K${what}${figures}`)
    this.drawn = true
  }
}

function bytes(n: number): string {
  if (n < 1024 * 1024) return `${n} B`
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`
  return `${(n / 1024 ** 3).toFixed(2)} GiB`
}
