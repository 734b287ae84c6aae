// How much memory a copy may take: a copy made in the server beyond it would call the OOM
// killer, which may pick the server.

import * as fs from 'fs'

/** MemAvailable of /proc/meminfo in bytes: what can be had without swapping or the OOM killer. */
export function availableMemory(): number {
  const found = /^MemAvailable:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))
  return found ? Number(found[1]) * 1024 : Infinity
}
