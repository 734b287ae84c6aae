// Restore of a whole process tree (docs/RESTORE.md, "A process tree"). The order of creation,
// the fd plans and the script the addon's spawnTree follows are made here; each task is then
// rebuilt as one process is (engine.ts), and every task is released only once all are done.
//
// Top-down: the root's stub opens every object of the tree (its own at their homes, the rest
// in its working area); each child is forked by its restored parent's stub and inherits the
// objects its part of the tree holds (so an open file description shared across processes is
// one again, and a pipe's bytes are written once); zombies are forked and exit at once.

import { CkptError, messageOf } from '../errors'
import { lifeState, waitUntil } from '../lifecycle'
import { asPid, type FdEntry, type ObjRef, type Vma, type ZombieTask } from '../model'
import { native } from '../native'
import { PhaseTimer } from '../trace'
import { checkRestorable, fileAccess, premapMode, rebuildSpawned, restoreProcess, stubPath, ZOMBIE_WAIT_MS, type RestoreOptions, type SharedSource } from './engine'
import { inheritedMappings, premapChunks, resolveInherited } from './cow'
import { framePlan, RecordBuilder, type PlannedRecord } from './fdplan'
import { closeConnectionGaps } from '../files/inetsock'
import { fillContents } from './contents'
import { planFileRecords } from './files'
import type { SavedCheckpoint } from './load'
import { isDeletedSharedFile } from '../task/memory'
import { TreeFill } from './lazy'

/** The stub's record of an object inherited from the parent (addon/stub/restorer.c, KIND_INHERITED). */
const KIND_INHERITED = 0x100

/** Restores a saved checkpoint: one process, or the whole tree it holds. Returns the root's PID. */
export async function restoreCheckpoint(saved: SavedCheckpoint, timer: PhaseTimer, options: RestoreOptions = {}): Promise<number> {
  if ((saved.others ?? []).length === 0 && (saved.zombies ?? []).length === 0) return restoreProcess(saved, timer, options)
  try {
    return await restoreTree(saved, timer, options)
  } finally {
    // Restored or not, every process's TCP connections end their gaps (lib/netgap.ts).
    for (const t of liveTasks(saved)) await closeConnectionGaps(t.fileTable, t.process.creds.euid)
  }
}

/** One process of the tree in the order it is made: a live task (its saved parts) or a zombie. */
type Member = { live: SavedCheckpoint; zombie?: undefined } | { zombie: ZombieTask; live?: undefined }

interface Links {
  pid: number
  ppid: number
  pgid: number
  sid: number
}

const linksOf = (m: Member): Links => (m.live ? { pid: m.live.pid, ppid: m.live.process.ppid, pgid: m.live.process.pgid, sid: m.live.process.sid } : m.zombie!)

/** How a task gets its session and group after its parent forked it (0: nothing to do). */
interface Placement {
  member: Member
  /** Group to join with setpgid(0, pgid), led by a process made before. */
  joinGroup: number
  /** A zombie that leads its session (setsid) or its group (joinGroup = its PID). */
  sessionLeader: boolean
}

/**
 * Parents first, and a group's leader before the processes that join the group. A link the
 * kernel cannot make again is refused naming the task: a process in another session than its
 * parent's that it does not lead, or in a group that is neither its parent's nor its own nor
 * led by a process of the tree.
 */
export function creationOrder(saved: SavedCheckpoint, tasks: SavedCheckpoint[]): Placement[] {
  const members: Member[] = [...tasks.slice(1).map((live) => ({ live })), ...(saved.zombies ?? []).map((zombie) => ({ zombie }))]
  const byPid = new Map<number, Links>([[saved.pid, linksOf({ live: saved })], ...members.map((m) => [linksOf(m).pid, linksOf(m)] as [number, Links])])
  const placed = new Set<number>([saved.pid])
  const order: Placement[] = [{ member: { live: saved }, joinGroup: 0, sessionLeader: false }]
  const placementOf = (m: Member): Placement | string => {
    const t = linksOf(m)
    const parent = byPid.get(t.ppid)
    if (!parent) return `task-${t.pid}/ppid: ${t.ppid} is not a process of the tree`
    if (!placed.has(parent.pid)) return `task-${t.pid}: its parent ${t.ppid} is not made yet`
    const sessionLeader = t.sid === t.pid
    if (sessionLeader && t.pgid !== t.pid) return `task-${t.pid}/pgid: ${t.pgid}, but it leads session ${t.sid}: a session leader leads its group`
    if (!sessionLeader && t.sid !== parent.sid) return `task-${t.pid}/sid: session ${t.sid} is not its parent's (${parent.sid}) and it does not lead it: a process cannot join another session`
    if (sessionLeader || t.pgid === parent.pgid) return { member: m, joinGroup: 0, sessionLeader }
    if (t.pgid === t.pid) return { member: m, joinGroup: m.zombie ? t.pid : 0, sessionLeader }
    const leader = byPid.get(t.pgid)
    if (!leader || leader.pgid !== leader.pid) return `task-${t.pid}/pgid: group ${t.pgid} is neither its parent's (${parent.pgid}) nor its own, and no process of the tree leads it`
    if (!placed.has(leader.pid)) return `task-${t.pid}: the leader ${t.pgid} of its group is not made yet`
    return { member: m, joinGroup: t.pgid, sessionLeader }
  }
  let pending = members.sort((a, b) => linksOf(a).pid - linksOf(b).pid)
  while (pending.length > 0) {
    const waiting: Member[] = []
    for (const m of pending) {
      const p = placementOf(m)
      if (typeof p === 'string') {
        waiting.push(m)
        continue
      }
      order.push(p)
      placed.add(linksOf(m).pid)
    }
    if (waiting.length === pending.length) {
      const why = placementOf(waiting[0]) as string
      throw new CkptError(`${why}: the tree cannot be made again`, 'EINVAL')
    }
    pending = waiting
  }
  return order
}

/** The saved parts of each live process, the root first; the others' fds name the root's files. */
function liveTasks(saved: SavedCheckpoint): SavedCheckpoint[] {
  const others = (saved.others ?? []).map((o): SavedCheckpoint => ({
    pid: asPid(o.pid), process: o.process, threads: o.threads, vmas: o.vmas,
    fileTable: { fds: o.fds, files: saved.fileTable.files }, bootId: saved.bootId,
  }))
  return [saved, ...others]
}

/** For each live task, every objref its fds or its descendants' fds name (what it must hold when it forks). */
function subtreeObjects(tasks: SavedCheckpoint[]): Map<number, ObjRef[]> {
  const children = new Map<number, number[]>()
  for (const t of tasks.slice(1)) children.set(t.process.ppid, [...(children.get(t.process.ppid) ?? []), t.pid])
  const byPid = new Map<number, SavedCheckpoint>(tasks.map((t) => [t.pid, t]))
  const result = new Map<number, ObjRef[]>()
  const collect = (pid: number): Set<ObjRef> => {
    const refs = new Set<ObjRef>(byPid.get(pid)!.fileTable.fds.map((f: FdEntry) => f.objref))
    for (const child of children.get(pid) ?? []) for (const r of collect(child)) refs.add(r)
    result.set(pid, [...refs].sort((a, b) => a - b))
    return refs
  }
  collect(tasks[0].pid)
  return result
}

/** The addon's spawnTree script (addon/src/tree.c). */
function encodeScript(entries: Array<{ pid: number; parent: number; zombie: boolean; joinGroup: number; status: number; sessionLeader: boolean; plan: Buffer; passed: ObjRef[]; keepMemory: boolean; premap: Buffer[] }>): Buffer {
  const parts: Buffer[] = []
  const head = Buffer.alloc(4)
  head.writeUInt32LE(entries.length)
  parts.push(head)
  for (const e of entries) {
    const fixed = Buffer.alloc(28)
    ;[e.pid, e.parent, e.zombie ? 1 : 0, e.joinGroup, e.status, e.sessionLeader ? 1 : 0, e.plan.length].forEach((v, i) => fixed.writeUInt32LE(v, i * 4))
    const passed = Buffer.alloc(4 + e.passed.length * 4)
    passed.writeUInt32LE(e.passed.length)
    e.passed.forEach((r, i) => passed.writeUInt32LE(r, 4 + i * 4))
    const memory = Buffer.alloc(8)
    memory.writeUInt32LE(e.keepMemory ? 1 : 0, 0)
    memory.writeUInt32LE(e.premap.length, 4)
    parts.push(fixed, e.plan, passed, memory)
    for (const chunk of e.premap) {
      const length = Buffer.alloc(4)
      length.writeUInt32LE(chunk.length)
      parts.push(length, chunk)
    }
  }
  return Buffer.concat(parts)
}

/** A zombie's PID must be free too; one held by a zombie (the original, not reaped yet) is waited for. */
async function awaitZombiePidFree(z: ZombieTask): Promise<void> {
  if (lifeState(z.pid) === 'zombie') await waitUntil(() => lifeState(z.pid) !== 'zombie', { limitMs: ZOMBIE_WAIT_MS })
  if (lifeState(z.pid) !== 'gone') throw new CkptError(`task-${z.pid}: PID ${z.pid} (a zombie of the tree) is taken`, 'EEXIST')
}

/**
 * MAP_SHARED anonymous memory, or a deleted file mapped shared (a /dev/shm semaphore, a
 * memfd), that two processes of the tree mapped (the same device and inode in their maps):
 * the first to be rebuilt maps it (recreating the deleted file) and gets its pages, each
 * later one maps that same object (engine.ts, sharedFrom).
 */
function sharedMemory(tasks: SavedCheckpoint[]): { from: Map<number, Map<Vma, SharedSource>>; extent: Map<string, bigint> } {
  const owners = new Map<string, { pid: number; vmas: Vma[] }>()
  const extent = new Map<string, bigint>()
  const from = new Map<number, Map<Vma, SharedSource>>()
  for (const t of tasks) {
    for (const v of t.vmas.filter((m) => m.kind === 'shared-anonymous' || isDeletedSharedFile(m))) {
      const key = `${v.dev} ${v.inode}`
      const owner = owners.get(key)
      if (!owner) owners.set(key, { pid: t.pid, vmas: [v] })
      else if (owner.pid === t.pid) owner.vmas.push(v)
      const end = v.offset + (v.end - v.start)
      if (v.kind === 'shared-anonymous' && end > (extent.get(key) ?? 0n)) extent.set(key, end)
    }
  }
  for (const t of tasks) {
    const mine = new Map<Vma, SharedSource>()
    for (const v of t.vmas.filter((m) => m.kind === 'shared-anonymous' || isDeletedSharedFile(m))) {
      const owner = owners.get(`${v.dev} ${v.inode}`)!
      if (owner.pid !== t.pid) mine.set(v, { pid: owner.pid, vma: owner.vmas[0], covered: covers(owner.vmas, v.offset, v.offset + (v.end - v.start)) })
    }
    from.set(t.pid, mine)
  }
  return { from, extent }
}

/** Whether the mappings `vmas` (of one object) together map its bytes [from, to). */
function covers(vmas: Vma[], from: bigint, to: bigint): boolean {
  const ranges = vmas.map((v) => [v.offset, v.offset + (v.end - v.start)] as const).sort((a, b) => (a[0] < b[0] ? -1 : 1))
  let reached = from
  for (const [start, end] of ranges) {
    if (start > reached) break
    if (end > reached) reached = end
  }
  return reached >= to
}

/** How many processes of a tree are rebuilt at once: as many as the tracer thread overlaps (OVERLAP_MAX, addon/src/tracer.c). */
const REBUILDS_AT_ONCE = 8

/**
 * Runs `work` on every item, at most `width` at a time, in the items' order of start; waits
 * for all (a failure does not stop the others: the caller kills every task only once none is
 * being worked on).
 */
async function inTurns<T>(items: T[], width: number, work: (item: T) => Promise<void>): Promise<PromiseSettledResult<void>[]> {
  const outcomes: PromiseSettledResult<void>[] = new Array(items.length)
  let next = 0
  const lane = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++
      outcomes[i] = await work(items[i]).then((value) => ({ status: 'fulfilled' as const, value }), (reason: unknown) => ({ status: 'rejected' as const, reason }))
    }
  }
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, lane))
  return outcomes
}

/**
 * Who takes each saved lock again: a POSIX lock belongs to one process, recorded with it
 * (`task-PID`, lib/files/locks.ts), and is taken by that process through its own fd of the
 * description; flock and OFD locks belong to the description and are taken once, by the
 * first process (in the order made) holding it. Another process taking a lock again would
 * conflict with it.
 */
function withLocksOnce(tasks: SavedCheckpoint[]): SavedCheckpoint[] {
  const locked = new Set<ObjRef>()
  return tasks.map((t) => {
    const held = new Set(t.fileTable.fds.map((f) => f.objref))
    const files = t.fileTable.files.map((d) => {
      if (d.locks.length === 0 || !held.has(d.objref)) return d
      const first = !locked.has(d.objref)
      locked.add(d.objref)
      const locks = d.locks.filter((l) => (l.kind === 'posix' && l.owner !== undefined ? l.owner === t.pid : first))
      return locks.length === d.locks.length ? d : { ...d, locks }
    })
    return { ...t, fileTable: { fds: t.fileTable.fds, files } }
  })
}

async function restoreTree(saved: SavedCheckpoint, timer: PhaseTimer, options: RestoreOptions): Promise<number> {
  const root = saved.pid
  const tasks = liveTasks(saved)
  // A lazy restore: each process's own fill (lazy.ts), let go once the whole tree runs.
  const fills = options.lazy ? new TreeFill(root, tasks.map((t) => t.pid)) : undefined
  const order = creationOrder(saved, tasks)
  for (const t of tasks) await checkRestorable(t, options)
  for (const z of saved.zombies ?? []) await awaitZombiePidFree(z)
  const access = fileAccess(saved, options)
  const workFdBase = Math.max(3, ...tasks.flatMap((t) => t.fileTable.fds.map((f) => f.fd + 1)))
  const subtree = subtreeObjects(tasks)
  // Copy-on-write memory (cow.ts): what each parent maps and fills before forking its children.
  const inheritedBy = inheritedMappings(tasks)
  const inheritedPieces = resolveInherited(tasks)
  const premapByParent = new Map<number, { chunks: Buffer[]; planned: Vma[] }>()
  for (const t of tasks) {
    const areas = new Map<bigint, Vma>()
    for (const child of tasks) if (child.process.ppid === t.pid) for (const pair of inheritedBy.get(child.pid) ?? []) areas.set(pair.parent.start, pair.parent)
    if (areas.size > 0) premapByParent.set(t.pid, await premapChunks([...areas.values()].sort((a, b) => (a.start < b.start ? -1 : 1)), premapMode))
  }
  // A child keeps its memory over the fork when its parent premaps, or may hold from its own
  // parent, an area the child inherits: a grandchild gets what its parent got.
  const mayHold = new Map<number, Set<Vma>>()
  const heldAtFork = (t: SavedCheckpoint): Array<{ child: Vma; parent: Vma }> => {
    const planned = premapByParent.get(t.process.ppid)?.planned ?? []
    const held = mayHold.get(t.process.ppid) ?? new Set<Vma>()
    return (inheritedBy.get(t.pid) ?? []).filter((pair) => planned.includes(pair.parent) || held.has(pair.parent))
  }
  for (const { member } of order) if (member.live && member.live.pid !== root) mayHold.set(member.live.pid, new Set(heldAtFork(member.live).map((pair) => pair.child)))
  const rootRecords = await planFileRecords(saved.fileTable)
  const rootPlan = framePlan(saved.fileTable, saved.process, rootRecords, access, { workFdBase })
  const entries = order.map(({ member, joinGroup, sessionLeader }) => {
    if (member.zombie) {
      const z = member.zombie
      return { pid: z.pid, parent: z.ppid, zombie: true, joinGroup, status: z.exitStatus, sessionLeader, plan: Buffer.alloc(0), passed: [], keepMemory: false, premap: [] }
    }
    const t = member.live!
    const premap = premapByParent.get(t.pid)?.chunks ?? []
    if (t.pid === root) return { pid: root, parent: 0, zombie: false, joinGroup: 0, status: 0, sessionLeader: false, plan: rootPlan.bytes, passed: [], keepMemory: false, premap }
    const passed = subtree.get(t.pid)!
    const records: PlannedRecord[] = passed.map((objref, place) => ({ kind: KIND_INHERITED, objref, payload: new RecordBuilder().u32(place) }))
    const plan = framePlan(t.fileTable, t.process, records, access, { workFdBase })
    const keepMemory = mayHold.get(t.pid)!.size > 0
    return { pid: t.pid, parent: t.process.ppid, zombie: false, joinGroup, status: 0, sessionLeader: false, plan: plan.bytes, passed, keepMemory, premap }
  })
  timer.mark('plan')
  const premapAnswer = await native.spawnTree(stubPath(), rootPlan.workFdBase, encodeScript(entries)).catch((err: unknown) => {
    const code = (err as { code?: string }).code
    if (code === 'EEXIST') throw new CkptError(`task-${root}: PID ${root} is taken (by a process that started meanwhile)`, 'EEXIST')
    throw new CkptError(`restore of the tree of ${root}: ${messageOf(err)}`, code === 'EINVAL' ? 'EINVAL' : undefined)
  })
  timer.mark('processes and file tables')
  const live = withLocksOnce(order.filter((p) => p.member.live).map((p) => p.member.live!))
  const shared = sharedMemory(live)
  // The answer: one '1' (mapped and filled) or '0' (its place was taken in the stub) per area, in script order.
  const premapped = new Map<number, Set<Vma>>()
  let answered = 0
  for (const e of entries) {
    const areas = e.zombie ? [] : premapByParent.get(e.pid)?.planned ?? []
    premapped.set(e.pid, new Set(areas.filter((_, i) => premapAnswer[answered + i] === 0x31)))
    answered += areas.length
  }
  // Each kept area, with the process whose premapped pages it holds (its parent's, or what
  // its parent holds itself): parents first, as they were forked.
  const heldFrom = new Map<number, Map<Vma, number>>()
  for (const { member } of order) {
    const t = member.live
    if (!t || t.pid === root) continue
    const held = new Map<Vma, number>()
    if (mayHold.get(t.pid)!.size > 0) {
      for (const pair of inheritedBy.get(t.pid) ?? []) {
        if (premapped.get(t.process.ppid)?.has(pair.parent)) held.set(pair.child, t.process.ppid)
        else if (heldFrom.get(t.process.ppid)?.has(pair.parent)) held.set(pair.child, heldFrom.get(t.process.ppid)!.get(pair.parent)!)
      }
    }
    heldFrom.set(t.pid, held)
  }
  try {
    if (answered !== premapAnswer.length) throw new CkptError(`restore of the tree of ${root}: ${premapAnswer.length} premapped areas answered, ${answered} asked`)
    // Large unlinked files and memfds, opened by the root's stub and inherited, are filled
    // through the first process holding them (lib/restore/contents.ts).
    await fillContents(rootRecords.flatMap((r) => (r.fill ? [r.fill] : [])), live.map((t) => ({ pid: t.pid, fds: t.fileTable.fds })))
    // Several at once: the tracer thread runs one task's injected batches while another's
    // tracee runs its calls (addon/src/tracer.c), and one task's reads of /proc, checksums on
    // the pool and planning overlap another's calls. A task whose memory is shared with one
    // rebuilt before it waits for that one first.
    const rebuilt = new Map<number, Promise<void>>()
    const rebuild = async (t: SavedCheckpoint): Promise<void> => {
      const sources = shared.from.get(t.pid)!
      for (const source of sources.values()) await rebuilt.get(source.pid)
      try {
        const inherited = heldFrom.get(t.pid) ?? new Map<Vma, number>()
        const lazy = fills && { lazy: fills.take, lazyKin: fills.kin }
        await rebuildSpawned(t, timer, access, { ...options, ...lazy, sharedFrom: sources, sharedExtent: shared.extent, parentRestored: t.pid !== root, premapped: premapped.get(t.pid), inherited, inheritedPieces }, fills?.hold())
      } catch (err) {
        const message = messageOf(err)
        throw new CkptError(message.startsWith(`task-${t.pid}`) ? message : `task-${t.pid}: ${message}`, err instanceof CkptError ? err.errno : undefined)
      }
    }
    const outcomes = await inTurns(live, REBUILDS_AT_ONCE, (t) => {
      const p = rebuild(t)
      rebuilt.set(t.pid, p.catch(() => undefined))
      return p
    })
    const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected')
    if (failed) throw failed.reason
  } catch (err) {
    // All or nothing: every task dies, children first; the root's keeper reaps what is left.
    for (const t of [...live].reverse()) await native.thaw(t.pid, true).catch(() => undefined)
    // A lazy fill that found a damaged page killed the tree itself: its reason is the one.
    fills?.release()
    throw (await fills?.failure()) ?? err
  }
  // Every task is complete: only now does any of them run.
  try {
    for (const t of [...live].reverse()) await native.thaw(t.pid, false)
  } catch (err) {
    // A fill that failed meanwhile killed the tree: its reason is the one.
    fills?.release()
    throw (await fills?.failure()) ?? err
  }
  fills?.release()
  if (fills?.any) options.lazy!(fills.done())
  timer.mark('thaw')
  timer.report(`of the tree of ${root} (${live.length} processes, ${(saved.zombies ?? []).length} zombies)`)
  return root
}
