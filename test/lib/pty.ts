// Runs a command with its stderr on a terminal (a pty made by python3's pty module) and its
// stdout on a pipe, as a user's interactive shell would with `ckptfs ... > out`.

import { spawn } from 'child_process'

/** Made here rather than with script(1): stdout stays a pipe, only stderr is the terminal. */
const RELAY = `
import fcntl, os, pty, struct, subprocess, sys, termios
master, slave = pty.openpty()
# 50 rows of 250 columns: wide enough for a whole progress line
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 50, 250, 0, 0))
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=2, stderr=slave)
os.close(slave)
while True:
    try:
        data = os.read(master, 4096)
    except OSError:  # EIO: every holder of the terminal closed it
        break
    if not data:
        break
    os.write(1, data)
sys.exit(child.wait())
`

export interface TerminalRun {
  status: number | null
  stdout: string
  /** Every byte written to the terminal (the pty turns "\\n" into "\\r\\n"). */
  terminal: string
}

/** Runs [file, args] with stderr on a pty; `watch` sees the terminal's bytes so far as they come. */
export function runWithTerminalStderr([file, args]: [string, string[]], opts: { env?: NodeJS.ProcessEnv; watch?: (terminal: string) => void } = {}): Promise<TerminalRun> {
  return new Promise((resolve) => {
    // python's stdout carries the terminal; its stderr (fd 2, which the command's stdout is) the output.
    const relay = spawn('python3', ['-c', RELAY, file, ...args], { env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] })
    let terminal = ''
    let stdout = ''
    relay.stdout!.setEncoding('utf8').on('data', (c: string) => {
      terminal += c
      opts.watch?.(terminal)
    })
    relay.stderr!.setEncoding('utf8').on('data', (c: string) => (stdout += c))
    relay.on('close', (status) => resolve({ status, stdout, terminal }))
  })
}
