// mount/progress.ts: a command's progress line on a terminal, nothing on a pipe but the one
// line of a wait worth explaining. (End to end, through a real pty: test/lifecycle.test.ts.)

import t from 'tap'
import { Progress, type ProgressStream } from '../mount/progress'
import { waitUntil } from './lib/restore'

/** A stand-in for stderr that keeps what is written to it. */
function stream(isTTY: boolean): ProgressStream & { text: () => string } {
  const writes: string[] = []
  return { isTTY, columns: 100, write: (s: string) => writes.push(s) > 0, text: () => writes.join('') }
}

t.test('on a terminal: one line redrawn in place, bytes done of the total, then erased', async (t) => {
  const tty = stream(true)
  const progress = new Progress('restore', tty, 0)
  progress.step('copying the image into /mnt/restore/saved', 4 << 20)
  progress.advance(1 << 20)
  await waitUntil('a line with 1 of 4 MiB', () => /1\.0 MiB of 4\.0 MiB \(25%\)/.test(tty.text()))
  progress.advance(3 << 20)
  await waitUntil('a line with 3 of 4 MiB', () => /3\.0 MiB of 4\.0 MiB \(75%\)/.test(tty.text()))
  const lines = tty.text().split('\r\x1b[K').filter(Boolean)
  t.ok(lines.every((l) => /^ckptfs restore: copying the image into \/mnt\/restore\/saved: [0-9.]+ (B|MiB) of 4\.0 MiB \(\d+%\), \d+\.\d s$/.test(l)), `every draw is one such line: ${JSON.stringify(lines)}`)
  t.notMatch(tty.text(), /\n/, 'no newline: the line is redrawn, not scrolled')
  progress.note('waiting up to 10 s for a zombie')
  await waitUntil('the wait drawn', () => /ckptfs restore: waiting up to 10 s for a zombie, \d+\.\d s$/.test(tty.text()))
  progress.finish()
  t.ok(tty.text().endsWith('\r\x1b[K'), 'finish erases the line')
  const after = tty.text().length
  await new Promise((r) => setTimeout(r, 500))
  t.equal(tty.text().length, after, 'and nothing is drawn after it')
})

t.test('a line longer than the terminal is cut to fit one row', async (t) => {
  const tty = stream(true)
  const progress = new Progress('restore', tty, 0)
  progress.step(`reading ${'/very/long/path'.repeat(20)}`)
  await waitUntil('a draw', () => tty.text().length > 0)
  progress.finish()
  const [line] = tty.text().split('\r\x1b[K').filter(Boolean)
  t.ok(line.length <= 99, `at most columns - 1 characters (${line.length})`)
  t.match(line, /^ckptfs restore: reading \/very.*\.\.\..*long\/path, \d+\.\d s$/, 'the middle of the step goes, the seconds stay')
})

t.test('nothing is drawn in the first second', async (t) => {
  const tty = stream(true)
  const progress = new Progress('checkpoint', tty)
  progress.step('freezing process 42')
  await new Promise((r) => setTimeout(r, 400))
  progress.finish()
  t.equal(tty.text(), '', 'a command done within a second shows nothing')
})

t.test('piped: no progress, a wait said once as a line', async (t) => {
  const pipe = stream(false)
  const progress = new Progress('restore', pipe, 0)
  progress.step('copying the image', 4 << 20)
  progress.advance(2 << 20)
  await new Promise((r) => setTimeout(r, 500))
  t.equal(pipe.text(), '', 'no progress on a pipe')
  progress.note('waiting up to 10 s for a zombie')
  progress.finish()
  t.equal(pipe.text(), 'ckptfs restore: waiting up to 10 s for a zombie\n', 'the wait, one line')
})
