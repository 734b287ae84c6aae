// The options every ckptfs mount is made with (mount/server.ts), and the benchmark's trivial
// server too (bench/trivial-server.ts), so that its floor is measured under the same rules.

/**
 * How long the kernel may keep a node's attributes and a name's entry without asking: long
 * enough for the several requests one `stat`, `cp` or `ls -l` of a file makes, short enough
 * that a size that changed (status, a restore's status) shows soon in `stat`. What the server
 * ends or changes itself at the top level is forgotten at once (mount/invalidate.ts).
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
    // Attributes and entries are kept ATTR_TIMEOUT_S (libfuse 2 has one setting for every
    // node): with none, `cp -a` made 7 requests per file and `ls -lR` 2 per entry, with it 5
    // and 1 (README Benchmarks); a volatile file's size in `stat` may be up to ATTR_TIMEOUT_S old.
    fsname: `${name},direct_io,attr_timeout=${ATTR_TIMEOUT_S},entry_timeout=${ATTR_TIMEOUT_S}`,
    subtype: name,
  }
}
