// The registry of file handlers: which handler captures an fd, from what /proc/PID/fd/N shows
// and the inode's type, and which one loads a saved fd_type (from a tree or an image). A new
// kind of file is one module and one line in `byKind`.

import type { FdType, FileDescription } from '../model'
import { chardev } from './chardev'
import { directory } from './directory'
import { epoll } from './epoll'
import { eventfd } from './eventfd'
import { fanotify } from './fanotify'
import { fifo } from './fifo'
import type { FdProbe, FileHandler, StubKinds } from './handler'
import { inotify } from './inotify'
import { pathTypeOf } from './path'
import { pipe } from './pipe'
import { regular } from './regular'
import { signalfd } from './signalfd'
import { socket } from './socket'
import { timerfd } from './timerfd'
import { unknown } from './unknown'

/**
 * A handler as the registry keeps it. Handlers take only descriptions of their own `types`
 * (dispatch is by type, below), so forgetting which variant each one handles is safe.
 */
const registered = <D extends FileDescription>(handler: FileHandler<D>): FileHandler => handler as unknown as FileHandler

/**
 * Kinds of targets: a path target's inode type (file, dir, chr, blk, fifo), "pipe:" and
 * "socket:" for "pipe:[N]" and "socket:[N]", and anonymous inodes by their full name.
 */
const byKind = new Map<string, FileHandler>([
  ['file', registered(regular)],
  ['dir', registered(directory)],
  ['chr', registered(chardev)],
  ['blk', registered(chardev)],
  ['fifo', registered(fifo)],
  ['pipe:', registered(pipe)],
  ['socket:', registered(socket)],
  ['anon_inode:[eventfd]', registered(eventfd)],
  ['anon_inode:[eventpoll]', registered(epoll)],
  ['anon_inode:[signalfd]', registered(signalfd)],
  ['anon_inode:[timerfd]', registered(timerfd)],
  ['anon_inode:inotify', registered(inotify)],
  ['anon_inode:[fanotify]', registered(fanotify)],
])

/** The kind of an fd's target (see byKind), or undefined for files no handler knows. */
function kindOf(target: string, mode: number | undefined): string | undefined {
  if (target.startsWith('/')) return mode === undefined ? undefined : pathTypeOf(mode)
  const bracket = /^(pipe|socket):\[\d+\]$/.exec(target)
  return bracket ? `${bracket[1]}:` : target
}

/** Every file no other handler knows. */
const fallback = registered(unknown)

export function handlerFor(probe: FdProbe): FileHandler {
  const kind = kindOf(probe.target, probe.stat?.mode)
  return (kind !== undefined && byKind.get(kind)) || fallback
}

const handlers = [...new Set([...byKind.values(), fallback])]
const byType = new Map<string, FileHandler>()
for (const handler of handlers) for (const type of handler.types) byType.set(type, handler)

/** Every fd_type some handler loads. */
export const fdTypes = (): FdType[] => [...byType.keys()] as FdType[]

/** The `details` oneof members of the image's FileDescription that handlers use. */
const detailFields = [...new Set(handlers.flatMap((h) => (h.image ? [h.image.field] : [])))]
export const imageFields = (): readonly string[] => detailFields

/**
 * The stub's object kinds of all handlers, name -> number. Two handlers may share a kind
 * (reopening by path) but never give one name two numbers or one number two names.
 */
export function stubKinds(): StubKinds {
  const kinds: Record<string, number> = {}
  const names = new Map<number, string>()
  for (const handler of handlers) {
    for (const [name, number] of Object.entries(handler.stubKinds ?? {})) {
      if ((kinds[name] ?? number) !== number || (names.get(number) ?? name) !== name) {
        throw new Error(`file handlers: stub kind ${name} = ${number} clashes with ${names.get(number) ?? name} = ${kinds[name] ?? number}`)
      }
      kinds[name] = number
      names.set(number, name)
    }
  }
  return kinds
}

/** The handler of a saved fd_type, or undefined for a type no handler loads. */
export function handlerForType(type: string): FileHandler | undefined {
  return byType.get(type)
}

/** The handler that shows a description. */
export function handlerOf(desc: FileDescription): FileHandler {
  return byType.get(desc.type) ?? fallback
}
