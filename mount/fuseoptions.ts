// The options every ckptfs mount is made with (mount/server.ts), and the benchmark's trivial
// server too (bench/trivial-server.ts), so that its floor is measured under the same rules.

/**
 * How long the kernel may keep a name's entry without asking again. Attributes are not kept
 * (attr_timeout=0): a kept size of a file whose contents change (status, a restore's status)
 * made readers that trust st_size (node's readFile) read it cut short ("restor"), and kept
 * attributes answered `stat` for a while after the server died. What the server ends at the
 * top level is forgotten at once (mount/invalidate.ts).
 */
export const ATTR_TIMEOUT_S = 1

/** fuse-native's options for a mount whose type shows as fuse.`name`. */
export function fuseOptions(name: string): Record<string, unknown> {
  return {
    mkdir: true,
    force: true,
    // A safety net for operations that wait on a task or a restore; reads never wait long
    // (memory is read synchronously, files from local disk) and a timer per 128 KiB read
    // costs 10-20% of the read rate (notes/fuse-native.md); release answers at once.
    timeout: { default: 120_000, read: false, release: false },
    // fuse-native has no direct_io option and drops zero-valued ones; libfuse takes both from
    // the fsname string. direct_io doubles read throughput (no page-cache copy) and lets
    // files whose size changes (status) be read whole, whatever size the kernel keeps.
    // Entries are kept ATTR_TIMEOUT_S, attributes not at all (above; libfuse 2 has one
    // setting for every node).
    fsname: `${name},direct_io,attr_timeout=0,entry_timeout=${ATTR_TIMEOUT_S}`,
    subtype: name,
  }
}
