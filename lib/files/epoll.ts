// epoll: the watched items (fd number, events, data) from fdinfo. Each item is matched to the
// description its fd number refers to now when that fd still holds the watched inode; restore
// adds items back after every other fd exists (reference/003).

import { CkptError } from '../errors'
import type { EpollDescription, EpollItem } from '../model'
import { userDevFromKernel } from '../procfs'
import { attr, each, hex, type TableEntry } from '../tree/node'
import { parseObjRef, withCommon } from './common'
import type { CaptureContext, FileHandler } from './handler'
import { INT_MAX, U32_MAX, U64_MAX, type SavedDir } from './saved'

const itemLine = /^tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:\s*-?\d+\s+ino:\s*([0-9a-f]+)\s+sdev:\s*([0-9a-f]+)/

const itemEntries: TableEntry<EpollItem>[] = [
  attr('tfd', (i) => i.tfd),
  attr('events', (i) => hex(i.events)),
  attr('data', (i) => hex(i.data)),
  attr('target', (i) => i.targetObjref ?? ''),
]

/** Items are numbered 0.. in the order fdinfo lists them (one fd number may appear twice, for two files). */
const table = withCommon<EpollDescription>([
  each('items', async (d) => new Map(d.items.map((item, n) => [String(n), item])), itemEntries),
])

function parseItem(line: string, where: string, ctx: CaptureContext): EpollItem {
  const m = itemLine.exec(line)
  if (!m) throw new CkptError(`${where}: unexpected epoll item ${JSON.stringify(line)}`)
  const tfd = Number(m[1])
  const ino = BigInt('0x' + m[4])
  const dev = userDevFromKernel(parseInt(m[5], 16))
  const now = ctx.described(tfd)
  // The fd may have been closed (the item lives on while the file does) or reused for another file.
  const same = now !== undefined && now.probe.fdinfo.ino === ino && (now.probe.stat === undefined || now.probe.stat.dev === dev)
  return { tfd, events: parseInt(m[2], 16), data: BigInt('0x' + m[3]), targetObjref: same ? now.objref : undefined }
}

async function loadItem(dir: SavedDir): Promise<EpollItem> {
  const tfd = await dir.int('tfd', 0, INT_MAX)
  const events = Number(await dir.hex('events', U32_MAX))
  const data = await dir.hex('data', U64_MAX)
  const target = await dir.text('target')
  const targetObjref = target === '' ? undefined : parseObjRef(target)
  if (target !== '' && targetObjref === undefined) throw dir.fail('target', `not an object reference or empty: ${JSON.stringify(target)}`)
  await dir.finish()
  return { tfd, events, data, targetObjref }
}

export const epoll: FileHandler<EpollDescription> = {
  types: ['epoll'],

  async capture(probe, base, ctx) {
    const where = `/proc/${ctx.pid}/fdinfo/${probe.fd}`
    const items = probe.fdinfo.extra.filter((l) => l.startsWith('tfd:')).map((l) => parseItem(l, where, ctx))
    return { ...base, type: 'epoll', items }
  },

  entries: () => table,

  async load(dir, base) {
    const itemsDir = await dir.dir('items')
    const items: EpollItem[] = []
    for (const itemDir of await itemsDir.numberedDirs()) items.push(await loadItem(itemDir))
    return { ...base, type: 'epoll', items }
  },
}

