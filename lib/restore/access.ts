// Opening what the saved task named, as the saved task: its fsuid, fsgid and groups, and no
// capability its effective set lacked, so the kernel refuses what the task could not have
// opened (a path swapped for a symlink to a root-only file after the checkpoint). The
// restorer's own credentials come back right after: reading the server's own page files,
// creating threads with chosen IDs and PR_SET_MM_MAP need them. And a file reopened to map
// must be the one that was mapped (dev and inode, on the boot that saved them).

import * as fs from 'fs'
import { CkptError } from '../errors'
import type { Credentials, Vma } from '../model'
import { majorMinor } from '../procfs'
import type { Call, Scratch } from './engine'
import { SYS } from './syscalls'

const LINUX_CAPABILITY_VERSION_3 = 0x20080522
const UNCHANGED = 0xffffffffn

/** capset(2) of three 64-bit sets, with its header and data in the scratch area. */
export function capsetCall(scratch: Scratch, effective: bigint, permitted: bigint, inheritable: bigint, what: string): Call {
  const header = Buffer.alloc(8)
  header.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0)
  const data = Buffer.alloc(24) // two struct __user_cap_data_struct {effective, permitted, inheritable}
  for (let i = 0; i < 2; i++) {
    const word = (mask: bigint) => Number((mask >> BigInt(32 * i)) & 0xffffffffn)
    data.writeUInt32LE(word(effective), i * 12)
    data.writeUInt32LE(word(permitted), i * 12 + 4)
    data.writeUInt32LE(word(inheritable), i * 12 + 8)
  }
  return { nr: SYS.capset, args: [scratch.put(header), scratch.put(data)], scratchArgs: 0b11, what: `capset (${what})` }
}

interface OwnCredentials {
  fsuid: number
  fsgid: number
  groups: number[]
  inheritable: bigint
  permitted: bigint
  effective: bigint
}

/** The credentials thread `tid` has now (the restorer's, until the saved ones are set at the end). */
function currentCredentials(tid: number): OwnCredentials {
  const status = fs.readFileSync(`/proc/${tid}/status`, 'utf8')
  const line = (name: string): string => {
    const m = new RegExp(`^${name}:[ \\t]*(.*)$`, 'm').exec(status)
    if (!m) throw new CkptError(`restore: /proc/${tid}/status has no ${name}`)
    return m[1].trim()
  }
  const ids = (name: string) => line(name).split(/\s+/).map(Number)
  return {
    fsuid: ids('Uid')[3],
    fsgid: ids('Gid')[3],
    groups: line('Groups') === '' ? [] : ids('Groups'),
    inheritable: BigInt('0x' + line('CapInh')),
    permitted: BigInt('0x' + line('CapPrm')),
    effective: BigInt('0x' + line('CapEff')),
  }
}

function groupsCall(scratch: Scratch, groups: number[], what: string): Call {
  const list = Buffer.alloc(Math.max(4, groups.length * 4))
  groups.forEach((g, i) => list.writeUInt32LE(g, i * 4))
  return { nr: SYS.setgroups, args: [BigInt(groups.length), scratch.put(list)], scratchArgs: 0b10, what }
}

/** `calls` wrapped in the switch to the task's file credentials and back, and how to check the switch took. */
export interface AsTask {
  calls: Call[]
  /** Index in `calls` of the first call given. */
  first: number
  /** Throws unless the fsuid and fsgid really were the task's (setfsuid reports no error). */
  verify(results: bigint[]): void
}

/**
 * Runs `calls` (in thread `tid`) with the saved task's filesystem credentials: groups,
 * fsgid, fsuid, then an effective set cut to what the task had. Back after, in reverse.
 */
export function asTask(tid: number, task: Credentials, scratch: Scratch, calls: Call[]): AsTask {
  const own = currentCredentials(tid)
  const become: Call[] = [
    groupsCall(scratch, task.groups, 'setgroups to the task\'s groups'),
    { nr: SYS.setfsgid, args: [BigInt(task.fsgid)], what: 'setfsgid to the task\'s' },
    { nr: SYS.setfsuid, args: [BigInt(task.fsuid)], what: 'setfsuid to the task\'s' },
    // Changing fsuid away from 0 drops the file capabilities; this sets exactly the task's.
    capsetCall(scratch, own.permitted & task.capEffective, own.permitted, own.inheritable, 'the task\'s effective set'),
    { nr: SYS.setfsgid, args: [UNCHANGED], what: 'read back fsgid' },
    { nr: SYS.setfsuid, args: [UNCHANGED], what: 'read back fsuid' },
  ]
  const back: Call[] = [
    capsetCall(scratch, own.effective, own.permitted, own.inheritable, 'the restorer\'s own'),
    { nr: SYS.setfsuid, args: [BigInt(own.fsuid)], what: 'setfsuid back' },
    { nr: SYS.setfsgid, args: [BigInt(own.fsgid)], what: 'setfsgid back' },
    groupsCall(scratch, own.groups, 'setgroups back'),
  ]
  return {
    calls: [...become, ...calls, ...back],
    first: become.length,
    verify(results) {
      const [fsgid, fsuid] = [results[become.length - 2], results[become.length - 1]]
      if (fsgid !== BigInt(task.fsgid) || fsuid !== BigInt(task.fsuid)) {
        throw new CkptError(`restore: could not take the task's fsuid ${task.fsuid} and fsgid ${task.fsgid} to open its files (got ${fsuid}, ${fsgid})`, 'EPERM')
      }
    },
  }
}

/** struct stat (x86-64): st_dev at 0, st_ino at 8; its size. */
export const STAT_SIZE = 144

/**
 * Refuses a file reopened to map (`stat`: its struct stat) that is not the one the saved
 * mapping had: another device or inode. Only meaningful on the boot that saved them.
 */
export function checkMappedFile(pid: number, v: Vma, stat: Buffer, name: string): void {
  const dev = majorMinor(stat.readBigUInt64LE(0))
  const ino = stat.readBigUInt64LE(8)
  const [major, minor] = v.dev.split(':').map((h) => parseInt(h, 16))
  if (dev.major === major && dev.minor === minor && ino === v.inode) return
  throw new CkptError(
    `task-${pid}/memory/vmas/${name}: ${v.path} is not the file that was mapped (device ${dev.major.toString(16)}:${dev.minor.toString(16)} inode ${ino}, saved ${v.dev} inode ${v.inode}); if it was replaced on purpose, restore with --allow-replaced`,
    'EPERM',
  )
}
