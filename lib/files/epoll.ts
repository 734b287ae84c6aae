// epoll: the watched items (fd number, events, data) from fdinfo. Each item is matched to the
// description of the file it watches: the one its fd number holds now when that is the only
// description of the watched inode, else the one kcmp (KCMP_EPOLL_TFD) names, which also finds
// the file after its fd number was closed or reused. Restore adds items back after every
// other fd exists (reference/003), each at the fd number it was added with.

import { CkptError } from '../errors'
import type { EpollDescription, EpollItem, ObjRef } from '../model'
import { userDevFromKernel } from '../procfs'
import { RecordBuilder } from '../restore/fdplan'
import type { Fields } from '../image/records'
import { asObjRef } from '../model'

/** The stub's kind; its items are added in the stub's last pass, once every fd is in place (reference/003). */
const KINDS = { epoll: 10 } as const
import { attr, each, hex, type TableEntry } from '../tree/node'
import { described, invalid, O_NONBLOCK, parseObjRef, withCommon } from './common'
import type { CaptureContext, FdProbe, FileHandler } from './handler'
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

interface RawItem {
  tfd: number
  events: number
  data: bigint
  ino: bigint
  dev: bigint
}

function parseItem(line: string, where: string): RawItem {
  const m = itemLine.exec(line)
  if (!m) throw new CkptError(`${where}: unexpected epoll item ${JSON.stringify(line)}`)
  return { tfd: Number(m[1]), events: parseInt(m[2], 16), data: BigInt('0x' + m[3]), ino: BigInt('0x' + m[4]), dev: userDevFromKernel(parseInt(m[5], 16)) }
}

type Held = { objref: ObjRef; probe: FdProbe }

const holds = (h: Held, item: RawItem): boolean => h.probe.fdinfo.ino === item.ino && (h.probe.stat === undefined || h.probe.stat.dev === item.dev)

/**
 * The description of the file that item number `toff` of fd number `item.tfd` watches, or
 * undefined when no fd of the task holds that file. `byIno` lists the descriptions per inode.
 */
function targetOf(item: RawItem, toff: number, efd: number, byIno: Map<bigint, Held[]>, ctx: CaptureContext): ObjRef | undefined {
  const candidates = (byIno.get(item.ino) ?? []).filter((h) => holds(h, item))
  const now = ctx.described(item.tfd)
  const nowHolds = now !== undefined && holds(now, item)
  // The fd number holds the only description of the inode: that is the file (no kcmp needed).
  if (nowHolds && candidates.length === 1) return now.objref
  // Otherwise the fd was closed or reused, or the inode is shared (all anonymous inodes are
  // one, eventfd and timerfd alike): kcmp compares the files themselves.
  const order: Array<[number, ObjRef]> = candidates.filter((h) => !nowHolds || h.objref !== now.objref).map((h) => [h.probe.fd, h.objref])
  if (nowHolds) order.unshift([item.tfd, now.objref])
  for (const [fd, objref] of order) {
    const same = ctx.epollTargetIs(fd, efd, item.tfd, toff)
    if (same === undefined) return nowHolds ? now.objref : candidates.length === 1 ? candidates[0].objref : undefined
    if (same) return objref
  }
  return undefined
}

function loadItem(dir: SavedDir): EpollItem {
  const tfd = dir.int('tfd', 0, INT_MAX)
  const events = Number(dir.hex('events', U32_MAX))
  const data = dir.hex('data', U64_MAX)
  const target = dir.text('target')
  const targetObjref = target === '' ? undefined : parseObjRef(target)
  if (target !== '' && targetObjref === undefined) throw dir.fail('target', `not an object reference or empty: ${JSON.stringify(target)}`)
  dir.finish()
  return { tfd, events, data, targetObjref }
}

export const epoll: FileHandler<EpollDescription> = {
  types: ['epoll'],

  async capture(probe, base, ctx) {
    const where = `/proc/${ctx.pid}/fdinfo/${probe.fd}`
    const raw = probe.fdinfo.extra.filter((l) => l.startsWith('tfd:')).map((l) => parseItem(l, where))
    const byIno = new Map<bigint, Held[]>()
    for (const h of raw.length > 0 ? ctx.descriptions : []) {
      const same = byIno.get(h.probe.fdinfo.ino)
      if (same) same.push(h)
      else byIno.set(h.probe.fdinfo.ino, [h])
    }
    // kcmp names an item by its fd number and its rank among the items of that number.
    const ranks = new Map<number, number>()
    const items = raw.map((item): EpollItem => {
      const toff = ranks.get(item.tfd) ?? 0
      ranks.set(item.tfd, toff + 1)
      return { tfd: item.tfd, events: item.events, data: item.data, targetObjref: targetOf(item, toff, probe.fd, byIno, ctx) }
    })
    return { ...base, type: 'epoll', items }
  },

  entries: () => table,

  load(dir, base) {
    const itemsDir = dir.dir('items')
    const items: EpollItem[] = []
    for (const itemDir of itemsDir.numberedDirs()) items.push(loadItem(itemDir))
    return described<EpollDescription>(base, { type: 'epoll', items })
  },

  validate(d, { objrefs }) {
    d.items.forEach((item, n) => {
      if (item.targetObjref !== undefined && !objrefs.has(item.targetObjref)) {
        throw invalid(d, `items/${n}/target`, `names files/${item.targetObjref}, which does not exist`)
      }
    })
  },

  // EPOLL: i32 flags (O_NONBLOCK), u32 count, per item i32 tfd, u32 target objref, u32 events, u64 data.
  planRestore(d) {
    const payload = new RecordBuilder().i32(d.flags & O_NONBLOCK).u32(d.items.length)
    d.items.forEach((item, n) => {
      if (item.targetObjref === undefined) {
        throw new CkptError(`files/${d.objref}/items/${n}: watches a file that no fd of the task holds (it was added as fd ${item.tfd}): the item cannot be restored`, 'ENOTSUP')
      }
      payload.i32(item.tfd).u32(item.targetObjref).u32(item.events).u64(item.data)
    })
    return { kind: KINDS.epoll, objref: d.objref, payload }
  },
  stubKinds: KINDS,

  image: {
    field: 'epoll',
    write: (d) => d,
    read: (details, base, type) => ({ description: described<EpollDescription>(base, { type, items: details.list('items').map(epollItemFrom) }), contentsSize: undefined }),
    references: (d) => d.items.flatMap((item) => (item.targetObjref === undefined ? [] : [{ objref: item.targetObjref, what: `epoll item for fd ${item.tfd} watches objref ${item.targetObjref}` }])),
  },

  summary: (d) => `${d.target} (${d.items.length} items: fds ${d.items.map((i) => i.tfd).join(',') || '-'})`,
}

function epollItemFrom(f: Fields): EpollItem {
  return {
    tfd: f.num('tfd', { min: 0 }),
    events: f.num('events'),
    data: f.big('data'),
    targetObjref: f.has('targetObjref') ? asObjRef(f.num('targetObjref')) : undefined,
  }
}
