// readTree(path, inlineMax, budget[, useRing = true]): one walk of a saved tree on a pool
// thread, returning every entry's kind, owner and mode, and the bytes and CRC32C of each small
// regular file, in one Buffer (lib/restore/snapshot.ts reads it). A restore reads a 10,000-fd tree's 240,000 small
// files; one open, read and close per file by path from JavaScript, and an lstat per entry for
// the owner check, cost most of its time in system calls and their bindings.
//
// The tree may be in a directory a user controls and changes while root reads it: every entry
// below the top is opened relative to its directory's fd with O_NOFOLLOW (a symbolic link is
// recorded, never followed), owner and mode come from fstat of the very fd that is read (what
// is checked is what is read), and only what getdents calls a regular file or a directory (or
// does not say) is opened at all, with O_NONBLOCK (a fifo swapped in does not block the walk).
//
// The walk is shared by two threads, each writing into a buffer of its own, joined in order at
// the end: the walk is system calls, and a second core halves it. What they share out is the
// top's entries, and the entries of each directory of the top (files/, task-PID/) in chunks:
// by whole top entries one thread walked files/ (four fifths of a 10,000-fd tree) alone. On a virtual machine each system call's entry and exit cost as much as its work,
// so a directory is listed by getdents64 into a buffer of its own (fdopendir would fstat and
// fcntl the fd again: two calls more for each of a 10,000-fd tree's 20,000 directories).
//
// Layout (little-endian), directories in depth-first order:
//   top:   u32 mode, u32 uid, u32 entries the owner check must look at (below), then the top
//          directory's block
//   block: u32 entry count, then each entry:
//          u8 kind (0 regular file, 1 directory, 2 other), u8 flags (1 symbolic link, 2 inlined),
//          u16 name length, u32 mode, u32 uid, u32 crc32c (a file held) or the length of the
//          block that follows (a directory), f64 size, u32 data length (a file held, else 0),
//          the name, the data; a directory's own block follows its entry at once.
// The entries the owner check must look at (lib/restore/owner.ts: storedBySnapshot) are those
// not owned by root, and those others may write (symbolic links aside): their count lets it
// skip the records of a tree root alone wrote, and nothing else.
#include <dirent.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "module.h"

// Deeper than any saved tree (task-PID/memory/vmas/NAME/... is a few levels): each level holds a directory fd.
#define MAX_DEPTH 64
#define ENTRY_HEAD 24
#define KIND_FILE 0
#define KIND_DIR 1
#define KIND_OTHER 2
#define FLAG_SYMLINK 1
#define FLAG_INLINED 2
// getdents64's buffer: a saved tree's directories hold a few dozen entries (files/ of a
// 10,000-fd task 10,000: some 30 calls).
#define DENTS_SIZE (32 << 10)
#define THREADS 2
// Buffers from this size on are asked to be backed by huge pages (below).
#define HUGE_FROM ((size_t)4 << 20)
#define HUGE_PAGE ((uintptr_t)2 << 20)
// A bound on what a walk holds (names, records and small files): a saved tree of 1,000 processes
// is far below it, and a tree a user crafted to exhaust root's memory stops here.
#define OUTPUT_MAX ((size_t)1 << 30)

// What one thread writes: the records of the items it took (each a span of `out`), and its first failure.
typedef struct {
  const char *top;
  size_t inline_max;  // files up to this size are read whole
  size_t budget;      // at most this many file bytes in all
  size_t *inlined;    // file bytes read so far, all threads together
  char *out;
  size_t len, cap;
  uint32_t notable;    // entries the owner check must look at (see the layout)
  struct ring *ring;   // this thread's io_uring, or NULL: one system call per step (below)
  nerr_t err;
  char *rel;           // the path below the top of what is being read, for errors (PATH_MAX bytes: the thread's)
} tree_read_t;

// A 10,000-fd tree's walk writes 13 MB. On a virtual machine a first touch of a page costs tens
// of microseconds (the host maps it too): 3,300 of them for 13 MB, where huge pages take 7.
// A hint; where the kernel keeps no huge pages for it, nothing changes.
static void want_huge_pages(char *p, size_t len) {
  if (len < HUGE_FROM) return;
  uintptr_t start = ((uintptr_t)p + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
  uintptr_t end = ((uintptr_t)p + len) & ~(HUGE_PAGE - 1);
  if (end > start) madvise((void *)start, end - start, MADV_HUGEPAGE);
}

// Room for `n` more bytes at the end of the output; its offset, or -1 (ENOMEM set).
static ssize_t reserve(tree_read_t *r, size_t n) {
  if (r->len + n > OUTPUT_MAX) {
    nerr_set_raw(&r->err, E2BIG, "%s: too many entries to read (over 1 GiB of names and small files): not a saved checkpoint", r->top);
    return -1;
  }
  if (r->len + n > r->cap) {
    size_t cap = r->cap ? r->cap : 1 << 16;
    while (cap < r->len + n) cap *= 2;
    char *p = realloc(r->out, cap);
    if (!p) {
      nerr_set(&r->err, ENOMEM, "readTree(%s): %zu bytes", r->top, cap);
      return -1;
    }
    r->out = p;
    r->cap = cap;
    want_huge_pages(p, cap);
  }
  ssize_t at = (ssize_t)r->len;
  r->len += n;
  return at;
}

static void put32(tree_read_t *r, size_t at, uint32_t v) { memcpy(r->out + at, &v, 4); }

// Appends `name` to r->rel for messages; returns the length to cut back to.
static size_t rel_push(tree_read_t *r, const char *name) {
  size_t was = strlen(r->rel);
  if (was + 1 + strlen(name) < PATH_MAX) {
    if (was) r->rel[was] = '/';
    strcpy(r->rel + (was ? was + 1 : 0), name);
  }
  return was;
}

static int fail(tree_read_t *r, int code, const char *what) {
  nerr_set(&r->err, code, "%s/%s: %s", r->top, r->rel, what);
  return -1;
}

// "." and "..", which every walk here leaves out.
static int is_dot_entry(const char *name) { return name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])); }

// The next block of `dfd`'s entries into `dents` (DENTS_SIZE bytes): its length, 0 at the end,
// -1 on failure (recorded).
static long next_dirents(tree_read_t *r, int dfd, char *dents) {
  for (;;) {
    long got = syscall(SYS_getdents64, dfd, dents, DENTS_SIZE);
    if (got >= 0) return got;
    if (errno != EINTR) return fail(r, errno, "getdents64");
  }
}

// Reads the open regular file `fd` of `size` bytes into the output when it fits; returns
// the bytes read (-2 when it is not inlined, -1 on failure).
static ssize_t read_small(tree_read_t *r, int fd, off_t size) {
  if ((size_t)size > r->inline_max) return -2;
  if (__atomic_add_fetch(r->inlined, (size_t)size, __ATOMIC_RELAXED) > r->budget) {
    __atomic_sub_fetch(r->inlined, (size_t)size, __ATOMIC_RELAXED);
    return -2;
  }
  ssize_t at = reserve(r, (size_t)size);
  if (at < 0) return -1;
  size_t done = 0;
  while (done < (size_t)size) {
    ssize_t n = read(fd, r->out + at + done, (size_t)size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(r, errno, "read");
    if (n == 0) break;  // shorter now than fstat said: what was read is the file
    done += (size_t)n;
  }
  r->len = (size_t)at + done;
  return (ssize_t)done;
}

static int walk(tree_read_t *r, int dfd, int depth);
static int walk_sync(tree_read_t *r, int dfd, int depth);

// One entry of the directory `dfd`: its record, its data, and (a directory) its block.
static int entry_in(tree_read_t *r, int dfd, const char *name, unsigned char type, int depth, uint32_t *count) {
  size_t name_len = strlen(name);
  if (name_len > 0xffff) return fail(r, ENAMETOOLONG, "name");
  int fd = -1;
  struct stat st;
  if (type == DT_REG || type == DT_DIR || type == DT_UNKNOWN) {
    fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 && errno != ELOOP && errno != ENOENT && errno != ENXIO) return fail(r, errno, "open");
    if (fd < 0 && errno == ENOENT) return 0;  // gone since it was listed: as if listed later
  }
  if (fd >= 0) {
    if (fstat(fd, &st) < 0) {
      close(fd);
      return fail(r, errno, "fstat");
    }
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
      close(fd);  // something else swapped in since getdents: recorded, never read
      fd = -1;
    }
  } else if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
    if (errno == ENOENT) return 0;
    return fail(r, errno, "lstat");
  }
  ssize_t head = reserve(r, ENTRY_HEAD + name_len);
  if (head < 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  unsigned char kind = fd < 0 ? KIND_OTHER : S_ISDIR(st.st_mode) ? KIND_DIR : KIND_FILE;
  unsigned char flags = S_ISLNK(st.st_mode) ? FLAG_SYMLINK : 0;
  if (st.st_uid != 0 || (!S_ISLNK(st.st_mode) && (st.st_mode & 022) != 0)) r->notable++;
  uint16_t len16 = (uint16_t)name_len;
  double size = (double)st.st_size;
  r->out[head] = (char)kind;
  memcpy(r->out + head + 2, &len16, 2);
  put32(r, head + 4, st.st_mode);
  put32(r, head + 8, st.st_uid);
  put32(r, head + 12, 0);
  memcpy(r->out + head + 16, &size, 8);
  memcpy(r->out + head + ENTRY_HEAD, name, name_len);
  // The data length follows the name (u32), then the data.
  ssize_t data_len_at = reserve(r, 4);
  if (data_len_at < 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  put32(r, data_len_at, 0);
  (*count)++;
  int rc = 0;
  if (kind == KIND_FILE) {
    size_t data_at = r->len;
    ssize_t n = read_small(r, fd, st.st_size);
    if (n >= 0) {
      flags |= FLAG_INLINED;
      put32(r, head + 12, ckptfs_crc32c(0, r->out + data_at, (size_t)n));
      double got = (double)n;
      memcpy(r->out + head + 16, &got, 8);
      put32(r, data_len_at, (uint32_t)n);
    }
    if (n == -1) rc = -1;
    close(fd);
  } else if (kind == KIND_DIR) {
    size_t block = r->len;
    if (depth + 1 >= MAX_DEPTH) {
      close(fd);
      rc = fail(r, ELOOP, "nested too deep for a saved checkpoint");
    } else {
      rc = walk(r, fd, depth + 1);
    }
    if (rc == 0) put32(r, head + 12, (uint32_t)(r->len - block));
    fd = -1;  // walk closed it
  }
  r->out[head + 1] = (char)flags;
  return rc;
}

// The same, with its path in r->rel for messages.
static int entry(tree_read_t *r, int dfd, const char *name, unsigned char type, int depth, uint32_t *count) {
  size_t cut = rel_push(r, name);
  int rc = entry_in(r, dfd, name, type, depth, count);
  r->rel[cut] = 0;
  return rc;
}

// ---- the walk through io_uring ----
//
// On this machine's virtual CPUs a system call's entry and exit cost more than the open, fstat,
// read or close of a small file itself (perf, 2026-12-07: a quarter of the walk in the
// hypervisor's interrupt enable on the way back alone; a 10,000-fd tree is some 1,000,000
// calls). So a directory's entries are taken CHUNK at a time, each step for all of them in one
// io_uring_enter: their opens, then the statx of each opened fd, then the reads of the small
// regular files; their closes go to the kernel with the next batch. Each step is the
// synchronous walk's: the open is relative to the directory's fd with the same flags
// (O_NOFOLLOW: a symbolic link is recorded, never followed; a name from getdents has no '/'),
// owner and mode come from statx of the very fd that is read (AT_EMPTY_PATH, no path), only
// what that says is a regular file is read, and what getdents calls something else is lstat'ed
// and recorded, not opened. Where io_uring cannot be set up (an older kernel,
// kernel.io_uring_disabled, a seccomp filter) the synchronous walk runs instead.

#define RING_ENTRIES 256
#define CHUNK 64
// A result not in yet (io_uring results are 0 or above, or -errno).
#define PENDING INT32_MIN
// An entry not opened because getdents says it is neither a regular file nor a directory.
#define NOT_OPENED (INT32_MIN + 1)

// One entry of a chunk: what each step found.
typedef struct {
  const char *name;
  unsigned char type;  // getdents' d_type
  int32_t open_res, stat_res, read_res;
  int fd;              // open and not yet closed or walked, else -1
  int stat_err;        // statx and fstat both failed: their errno
  mode_t mode;
  uid_t uid;
  off_t size;
  ssize_t want;        // bytes of a regular file read into the level's scratch (-2: not inlined)
  size_t data_at;      // where in the scratch
  struct statx stx;
} slot_t;

// What the walk of one depth holds: the kernel writes into stx and scratch while a step runs.
typedef struct {
  slot_t slots[CHUNK];
  char *scratch;
  size_t scratch_cap;
} level_t;

typedef struct ring {
  int fd;
  unsigned entries, cq_entries;
  unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
  unsigned *cq_head, *cq_tail, *cq_mask;
  struct io_uring_sqe *sqes;
  struct io_uring_cqe *cqes;
  void *sq_map, *cq_map;
  size_t sq_len, cq_len, sqes_len;
  unsigned queued;    // SQEs written, not yet submitted
  unsigned inflight;  // submitted, their completion not yet seen
  unsigned pending;   // opens, statx and reads whose result is awaited (closes are not)
  int broken;         // io_uring_enter failed: the kernel may still write into the levels
  level_t *levels[MAX_DEPTH];
} ring_t;

static int ring_enter(ring_t *g, unsigned wait_nr) {
  for (int tries = 0;; tries++) {
    long n = syscall(__NR_io_uring_enter, g->fd, g->queued, wait_nr, wait_nr ? IORING_ENTER_GETEVENTS : 0, NULL, 0);
    if (n >= 0) {
      g->queued -= (unsigned)n;
      g->inflight += (unsigned)n;
      return 0;
    }
    if (errno == EINTR) continue;
    if ((errno == EAGAIN || errno == EBUSY) && tries < 1000) {
      usleep(1000);  // out of kernel memory for requests, for now
      continue;
    }
    g->broken = 1;
    return -1;
  }
}

// Takes every completion there is: a result goes where its user_data points (0: a close).
static void ring_reap(ring_t *g) {
  unsigned head = *g->cq_head;
  unsigned tail = __atomic_load_n(g->cq_tail, __ATOMIC_ACQUIRE);
  for (; head != tail; head++) {
    struct io_uring_cqe *c = &g->cqes[head & *g->cq_mask];
    if (c->user_data) {
      *(int32_t *)(uintptr_t)c->user_data = c->res;
      g->pending--;
    }
    g->inflight--;
  }
  __atomic_store_n(g->cq_head, head, __ATOMIC_RELEASE);
}

// A zeroed SQE to fill and ring_push; NULL (errno set) when io_uring_enter failed.
static struct io_uring_sqe *ring_get(ring_t *g) {
  for (;;) {
    unsigned head = __atomic_load_n(g->sq_head, __ATOMIC_ACQUIRE);
    unsigned tail = *g->sq_tail;
    if (tail - head < g->entries && g->inflight + g->queued < g->cq_entries) {
      unsigned at = tail & *g->sq_mask;
      memset(&g->sqes[at], 0, sizeof g->sqes[at]);
      g->sq_array[at] = at;
      return &g->sqes[at];
    }
    // Full: submit what is queued, or wait for a completion to make room.
    if (ring_enter(g, g->queued ? 0 : 1) < 0) return NULL;
    ring_reap(g);
  }
}

static void ring_push(ring_t *g, int32_t *result) {
  unsigned at = *g->sq_tail & *g->sq_mask;
  g->sqes[at].user_data = (uintptr_t)result;
  if (result) {
    *result = PENDING;
    g->pending++;
  }
  __atomic_store_n(g->sq_tail, *g->sq_tail + 1, __ATOMIC_RELEASE);
  g->queued++;
}

// Submits what is queued and waits for every awaited result.
static int ring_run(ring_t *g) {
  while (g->pending > 0 || g->queued > 0) {
    if (ring_enter(g, g->pending > 0 ? 1 : 0) < 0) return -1;
    ring_reap(g);
  }
  return 0;
}

// Closes `fd` with the next batch; at once where the ring cannot take it.
static void ring_close_fd(ring_t *g, int fd) {
  struct io_uring_sqe *e = g->broken ? NULL : ring_get(g);
  if (!e) {
    close(fd);
    return;
  }
  e->opcode = IORING_OP_CLOSE;
  e->fd = fd;
  ring_push(g, NULL);
}

static void ring_destroy(ring_t *g) {
  if (g->fd >= 0 && !g->broken) {
    // The closes still queued or in flight finish before the ring goes.
    while ((g->queued > 0 || g->inflight > 0) && ring_enter(g, g->inflight > 0 || g->queued > 0 ? 1 : 0) == 0) ring_reap(g);
  }
  if (g->queued > 0) {
    // Not submitted (io_uring_enter failed): the closes among them are done here.
    unsigned tail = *g->sq_tail;
    for (unsigned i = tail - g->queued; i != tail; i++) {
      struct io_uring_sqe *e = &g->sqes[i & *g->sq_mask];
      if (e->opcode == IORING_OP_CLOSE) close(e->fd);
    }
  }
  if (g->sqes) munmap(g->sqes, g->sqes_len);
  if (g->cq_map && g->cq_map != g->sq_map) munmap(g->cq_map, g->cq_len);
  if (g->sq_map) munmap(g->sq_map, g->sq_len);
  if (g->fd >= 0) close(g->fd);
  g->fd = -1;
  // After a failed io_uring_enter, a statx or read may still land in a level: they are left allocated.
  for (int d = 0; d < MAX_DEPTH && !g->broken; d++) {
    if (!g->levels[d]) continue;
    free(g->levels[d]->scratch);
    free(g->levels[d]);
    g->levels[d] = NULL;
  }
}

// Whether the kernel's io_uring does every operation the walk asks of it (5.6 on; before, a
// ring could be set up but an open through it would fail).
static int ring_has_ops(int fd) {
  static const unsigned char needed[] = {IORING_OP_OPENAT, IORING_OP_STATX, IORING_OP_READ, IORING_OP_CLOSE};
  size_t len = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
  struct io_uring_probe *probe = calloc(1, len);
  if (!probe) return 0;
  int ok = syscall(__NR_io_uring_register, fd, IORING_REGISTER_PROBE, probe, 256) == 0;
  for (size_t i = 0; ok && i < sizeof needed; i++)
    ok = needed[i] <= probe->last_op && needed[i] < probe->ops_len && (probe->ops[needed[i]].flags & IO_URING_OP_SUPPORTED);
  free(probe);
  return ok;
}

// Sets up this thread's ring; -1 where io_uring is not to be had (the synchronous walk runs).
static int ring_setup(ring_t *g) {
  memset(g, 0, sizeof *g);
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  g->fd = (int)syscall(__NR_io_uring_setup, RING_ENTRIES, &p);
  if (g->fd < 0) return -1;
  if (!ring_has_ops(g->fd)) goto fail;
  g->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  g->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
  if (single) g->sq_len = g->cq_len = g->sq_len > g->cq_len ? g->sq_len : g->cq_len;
  void *sq = mmap(NULL, g->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, g->fd, IORING_OFF_SQ_RING);
  if (sq == MAP_FAILED) goto fail;
  g->sq_map = sq;
  void *cq = single ? sq : mmap(NULL, g->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, g->fd, IORING_OFF_CQ_RING);
  if (cq == MAP_FAILED) goto fail;
  g->cq_map = cq;
  g->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
  void *sqes = mmap(NULL, g->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, g->fd, IORING_OFF_SQES);
  if (sqes == MAP_FAILED) goto fail;
  g->sqes = sqes;
  g->sq_head = (unsigned *)((char *)sq + p.sq_off.head);
  g->sq_tail = (unsigned *)((char *)sq + p.sq_off.tail);
  g->sq_mask = (unsigned *)((char *)sq + p.sq_off.ring_mask);
  g->sq_array = (unsigned *)((char *)sq + p.sq_off.array);
  g->cq_head = (unsigned *)((char *)cq + p.cq_off.head);
  g->cq_tail = (unsigned *)((char *)cq + p.cq_off.tail);
  g->cq_mask = (unsigned *)((char *)cq + p.cq_off.ring_mask);
  g->cqes = (struct io_uring_cqe *)((char *)cq + p.cq_off.cqes);
  g->entries = p.sq_entries;
  g->cq_entries = p.cq_entries;
  return 0;
fail:
  ring_destroy(g);
  return -1;
}

static int walk(tree_read_t *r, int dfd, int depth);

// The record of one entry of a chunk, its steps done; a directory's block follows (walked here).
static int ring_entry(tree_read_t *r, int dfd, int depth, level_t *lv, slot_t *s, uint32_t *count) {
  size_t name_len = strlen(s->name);
  int fd = s->fd;
  s->fd = -1;
  if (name_len > 0xffff) {
    if (fd >= 0) close(fd);
    return fail(r, ENAMETOOLONG, "name");
  }
  if (s->open_res < 0 && s->open_res != NOT_OPENED) {
    int code = -s->open_res;
    if (code == ENOENT) return 0;  // gone since it was listed: as if listed later
    if (code != ELOOP && code != ENXIO) return fail(r, code, "open");
  }
  if (fd >= 0 && s->stat_err) {
    close(fd);
    return fail(r, s->stat_err, "fstat");
  }
  int opened = s->open_res >= 0;
  if (!opened) {
    struct stat st;
    if (fstatat(dfd, s->name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
      if (errno == ENOENT) return 0;
      return fail(r, errno, "lstat");
    }
    s->mode = st.st_mode;
    s->uid = st.st_uid;
    s->size = st.st_size;
  }
  ssize_t head = reserve(r, ENTRY_HEAD + name_len);
  if (head < 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  // An opened entry that is neither (swapped in since getdents) was closed after its statx.
  unsigned char kind = !opened || (!S_ISREG(s->mode) && !S_ISDIR(s->mode)) ? KIND_OTHER : S_ISDIR(s->mode) ? KIND_DIR : KIND_FILE;
  unsigned char flags = S_ISLNK(s->mode) ? FLAG_SYMLINK : 0;
  if (s->uid != 0 || (!S_ISLNK(s->mode) && (s->mode & 022) != 0)) r->notable++;
  uint16_t len16 = (uint16_t)name_len;
  double size = (double)s->size;
  r->out[head] = (char)kind;
  memcpy(r->out + head + 2, &len16, 2);
  put32(r, head + 4, s->mode);
  put32(r, head + 8, s->uid);
  put32(r, head + 12, 0);
  memcpy(r->out + head + 16, &size, 8);
  memcpy(r->out + head + ENTRY_HEAD, s->name, name_len);
  ssize_t data_len_at = reserve(r, 4);
  if (data_len_at < 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  put32(r, data_len_at, 0);
  (*count)++;
  int rc = 0;
  if (kind == KIND_FILE && s->want >= 0) {
    if (s->read_res < 0) {
      rc = fail(r, -s->read_res, "read");
    } else {
      ssize_t at = reserve(r, (size_t)s->read_res);
      if (at < 0) {
        rc = -1;
      } else {
        memcpy(r->out + at, lv->scratch + s->data_at, (size_t)s->read_res);
        flags |= FLAG_INLINED;
        put32(r, head + 12, ckptfs_crc32c(0, r->out + at, (size_t)s->read_res));
        double got = (double)s->read_res;
        memcpy(r->out + head + 16, &got, 8);
        put32(r, data_len_at, (uint32_t)s->read_res);
      }
    }
  } else if (kind == KIND_DIR) {
    size_t block = r->len;
    if (depth + 1 >= MAX_DEPTH) {
      close(fd);
      rc = fail(r, ELOOP, "nested too deep for a saved checkpoint");
    } else {
      rc = walk(r, fd, depth + 1);
    }
    if (rc == 0) put32(r, head + 12, (uint32_t)(r->len - block));
    fd = -1;  // walk closed it
  }
  if (fd >= 0) close(fd);
  r->out[head + 1] = (char)flags;
  return rc;
}

// The `n` entries in lv->slots of the directory `dfd`: opens, statx, reads, each step in one
// batch, then their records in getdents' order. The fds are all closed or walked on return.
static int ring_chunk(tree_read_t *r, int dfd, int depth, level_t *lv, int n, uint32_t *count) {
  ring_t *g = r->ring;
  slot_t *s = lv->slots;
  int opened = 0;  // the opens' results are in s[i].fd
  for (int i = 0; i < n; i++) {
    s[i].fd = -1;
    s[i].stat_err = 0;
    s[i].want = -2;
    s[i].read_res = 0;
    if (s[i].type != DT_REG && s[i].type != DT_DIR && s[i].type != DT_UNKNOWN) {
      s[i].open_res = NOT_OPENED;
      continue;
    }
    struct io_uring_sqe *e = ring_get(g);
    if (!e) goto broken;
    e->opcode = IORING_OP_OPENAT;
    e->fd = dfd;
    e->addr = (uintptr_t)s[i].name;
    e->open_flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
    ring_push(g, &s[i].open_res);
  }
  if (ring_run(g) < 0) goto broken;
  opened = 1;
  for (int i = 0; i < n; i++) s[i].fd = s[i].open_res >= 0 ? s[i].open_res : -1;
  for (int i = 0; i < n; i++) {
    if (s[i].fd < 0) continue;
    struct io_uring_sqe *e = ring_get(g);
    if (!e) goto broken;
    e->opcode = IORING_OP_STATX;
    e->fd = s[i].fd;
    e->addr = (uintptr_t)"";
    e->len = STATX_TYPE | STATX_MODE | STATX_UID | STATX_SIZE;
    e->statx_flags = AT_EMPTY_PATH;
    e->off = (uintptr_t)&s[i].stx;
    ring_push(g, &s[i].stat_res);
  }
  if (ring_run(g) < 0) goto broken;
  size_t need = 0;
  for (int i = 0; i < n; i++) {
    if (s[i].fd < 0) continue;
    const unsigned wanted = STATX_TYPE | STATX_MODE | STATX_UID | STATX_SIZE;
    if (s[i].stat_res == 0 && (s[i].stx.stx_mask & wanted) == wanted) {
      s[i].mode = s[i].stx.stx_mode;
      s[i].uid = s[i].stx.stx_uid;
      s[i].size = (off_t)s[i].stx.stx_size;
    } else {
      // A kernel whose io_uring statx refuses an empty path: the fd's fstat, as the synchronous walk.
      struct stat st;
      if (fstat(s[i].fd, &st) < 0) {
        s[i].stat_err = errno;
        continue;
      }
      s[i].mode = st.st_mode;
      s[i].uid = st.st_uid;
      s[i].size = st.st_size;
    }
    if (!S_ISREG(s[i].mode) && !S_ISDIR(s[i].mode)) {
      ring_close_fd(g, s[i].fd);  // something else swapped in since getdents: recorded, never read
      s[i].fd = -1;
      continue;
    }
    if (!S_ISREG(s[i].mode) || (size_t)s[i].size > r->inline_max) continue;
    if (__atomic_add_fetch(r->inlined, (size_t)s[i].size, __ATOMIC_RELAXED) > r->budget) {
      __atomic_sub_fetch(r->inlined, (size_t)s[i].size, __ATOMIC_RELAXED);
      continue;
    }
    s[i].want = s[i].size;
    s[i].data_at = need;
    need += (size_t)s[i].size;
  }
  if (need > lv->scratch_cap) {
    size_t cap = lv->scratch_cap ? lv->scratch_cap : 1 << 16;
    while (cap < need) cap *= 2;
    char *p = realloc(lv->scratch, cap);
    if (!p) {
      for (int i = 0; i < n; i++)
        if (s[i].fd >= 0) close(s[i].fd);
      nerr_set(&r->err, ENOMEM, "readTree(%s): %zu bytes", r->top, cap);
      return -1;
    }
    lv->scratch = p;
    lv->scratch_cap = cap;
  }
  for (int i = 0; i < n; i++) {
    if (s[i].want <= 0) continue;
    struct io_uring_sqe *e = ring_get(g);
    if (!e) goto broken;
    e->opcode = IORING_OP_READ;
    e->fd = s[i].fd;
    e->addr = (uintptr_t)(lv->scratch + s[i].data_at);
    e->len = (unsigned)s[i].want;
    e->off = 0;
    ring_push(g, &s[i].read_res);
  }
  if (ring_run(g) < 0) goto broken;
  for (int i = 0; i < n; i++) {
    if (s[i].want < 0 || s[i].fd < 0) continue;
    // Shorter than statx said: read on, as the synchronous walk does, until the end.
    while (s[i].read_res >= 0 && s[i].read_res < s[i].want) {
      ssize_t got = pread(s[i].fd, lv->scratch + s[i].data_at + s[i].read_res, (size_t)(s[i].want - s[i].read_res), s[i].read_res);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) s[i].read_res = -errno;
      if (got <= 0) break;
      s[i].read_res += (int32_t)got;
    }
    ring_close_fd(g, s[i].fd);
    s[i].fd = -1;
  }
  for (int i = 0; i < n; i++) {
    size_t cut = rel_push(r, s[i].name);
    int rc = ring_entry(r, dfd, depth, lv, &s[i], count);
    r->rel[cut] = 0;
    if (rc < 0) {
      for (int j = i + 1; j < n; j++)
        if (s[j].fd >= 0) close(s[j].fd);
      return -1;
    }
  }
  return 0;
broken:;
  // io_uring_enter failed: what was opened and seen is closed; what was not seen cannot be.
  int code = errno;
  ring_reap(g);
  for (int i = 0; i < n; i++) {
    int fd = opened ? s[i].fd : s[i].open_res >= 0 ? s[i].open_res : -1;
    if (fd >= 0) close(fd);
    s[i].fd = -1;
  }
  return fail(r, code, "io_uring_enter");
}

// What the walk of `depth` holds (made on first use); NULL with r->err set.
static level_t *ring_level(tree_read_t *r, int depth) {
  ring_t *g = r->ring;
  level_t *lv = g->levels[depth];
  if (!lv && !(lv = g->levels[depth] = calloc(1, sizeof *lv))) nerr_set(&r->err, ENOMEM, "readTree(%s): %zu bytes", r->top, sizeof *lv);
  return lv;
}

// The block of the directory `dfd` (closed here), its entries taken CHUNK at a time.
static int walk_ring(tree_read_t *r, int dfd, int depth) {
  ring_t *g = r->ring;
  level_t *lv = ring_level(r, depth);
  if (!lv) {
    close(dfd);
    return -1;
  }
  ssize_t count_at = reserve(r, 4);
  char *dents = count_at < 0 ? NULL : malloc(DENTS_SIZE);
  if (!dents) {
    if (count_at >= 0) nerr_set(&r->err, ENOMEM, "readTree(%s): %d bytes", r->top, DENTS_SIZE);
    close(dfd);
    return -1;
  }
  uint32_t count = 0;
  int rc = 0;
  for (;;) {
    long got = next_dirents(r, dfd, dents);
    if (got <= 0) {
      rc = (int)got;
      break;
    }
    for (long at = 0; at < got && rc == 0;) {
      int n = 0;
      while (at < got && n < CHUNK) {
        struct dirent64 *e = (struct dirent64 *)(dents + at);
        at += e->d_reclen;
        if (is_dot_entry(e->d_name)) continue;
        lv->slots[n].name = e->d_name;
        lv->slots[n].type = e->d_type;
        n++;
      }
      if (n > 0 && ring_chunk(r, dfd, depth, lv, n, &count) < 0) rc = -1;
    }
    if (rc < 0) break;
  }
  free(dents);
  if (rc == 0) {
    ring_close_fd(g, dfd);
    put32(r, (size_t)count_at, count);
  } else {
    close(dfd);
  }
  return rc;
}

// The block of the directory `dfd` (closed here).
static int walk(tree_read_t *r, int dfd, int depth) {
  if (r->ring) return walk_ring(r, dfd, depth);
  return walk_sync(r, dfd, depth);
}

// The same, one system call per step (no io_uring).
static int walk_sync(tree_read_t *r, int dfd, int depth) {
  ssize_t count_at = reserve(r, 4);
  char *dents = count_at < 0 ? NULL : malloc(DENTS_SIZE);
  if (!dents) {
    if (count_at >= 0) nerr_set(&r->err, ENOMEM, "readTree(%s): %d bytes", r->top, DENTS_SIZE);
    close(dfd);
    return -1;
  }
  uint32_t count = 0;
  int rc = 0;
  for (;;) {
    long got = next_dirents(r, dfd, dents);
    if (got <= 0) {
      rc = (int)got;
      break;
    }
    for (long at = 0; at < got && rc == 0;) {
      struct dirent64 *e = (struct dirent64 *)(dents + at);
      at += e->d_reclen;
      if (is_dot_entry(e->d_name)) continue;
      if (entry(r, dfd, e->d_name, e->d_type, depth, &count) < 0) rc = -1;
    }
    if (rc < 0) break;
  }
  free(dents);
  close(dfd);
  if (rc == 0) put32(r, (size_t)count_at, count);
  return rc;
}

// The request: the top, then its entries shared out between the threads. A directory of the
// top (files/, task-PID/) is listed here and its entries are shared out one by one: a
// 10,000-fd tree's files/ alone is four fifths of the walk, and by whole top entries one
// thread did that while the other waited.

// A directory of the top whose entries are items of their own.
typedef struct {
  int split;
  int fd;
  struct stat st;
  size_t first;         // its first item
  size_t count;         // its entries
  size_t items;         // its items
  char **names;
  unsigned char *types;
} top_t;

// What a thread takes: one entry of the top, or up to SPLIT_CHUNK entries of a split directory
// of the top (a chunk of the io_uring walk).
#define SPLIT_CHUNK 32
// Directories of the top with more entries than this are not shared out (see split_top).
#define SPLIT_MAX ((size_t)1 << 20)
typedef struct {
  int dfd;              // the directory they are listed in
  char **names;
  unsigned char *types;
  size_t n;
  int depth;
  const char *prefix;   // the path of `dfd` below the top, for messages
  int thread;           // whose output holds its record (and block)
  size_t start, len;    // where in it
  uint32_t found;       // records it holds (0: gone since listed)
} item_t;

typedef struct {
  task_t task;
  char *top;
  size_t inline_max, budget, inlined;
  int top_fd;
  size_t count;           // entries of the top
  char **names;
  unsigned char *types;
  top_t *tops;            // one per entry of the top
  item_t *items;
  size_t item_count;
  // Items left to take: [lo, hi). The first thread takes from the front, the second from the
  // back: a big item at either end (fds/ of a task with many fds, in a task-PID/ of few
  // entries) is started at once, not left for last.
  pthread_mutex_t lock;
  size_t lo, hi;
  size_t failed_at[THREADS];  // the item each thread failed in (its err), else item_count
  tree_read_t threads[THREADS];
  int thread_ids;         // threads handed out
  int use_ring;           // walk through io_uring where it can be set up
  int ringed;             // threads that did
  char *out;
  size_t len;
} read_request_t;

static void *take_entries(void *arg) {
  read_request_t *q = arg;
  int me = __atomic_fetch_add(&q->thread_ids, 1, __ATOMIC_RELAXED);
  tree_read_t *r = &q->threads[me];
  ring_t ring;
  int ringed = q->use_ring && ring_setup(&ring) == 0;
  char rel[PATH_MAX];
  r->top = q->top;
  r->inline_max = q->inline_max;
  r->budget = q->budget;
  r->inlined = &q->inlined;
  r->ring = ringed ? &ring : NULL;
  r->rel = rel;
  for (;;) {
    size_t i = 0;
    pthread_mutex_lock(&q->lock);
    int took = q->lo < q->hi;
    if (took) i = me == 0 ? q->lo++ : --q->hi;
    pthread_mutex_unlock(&q->lock);
    if (!took) break;
    item_t *it = &q->items[i];
    snprintf(rel, sizeof rel, "%s", it->prefix);
    it->thread = me;
    it->start = r->len;
    int rc = 0;
    if (r->ring && it->depth > 0) {
      level_t *lv = ring_level(r, it->depth);
      for (size_t j = 0; lv && j < it->n; j++) {
        lv->slots[j].name = it->names[j];
        lv->slots[j].type = it->types[j];
      }
      rc = lv ? ring_chunk(r, it->dfd, it->depth, lv, (int)it->n, &it->found) : -1;
    } else {
      for (size_t j = 0; j < it->n && rc == 0; j++) rc = entry(r, it->dfd, it->names[j], it->types[j], it->depth, &it->found);
    }
    if (rc < 0) {
      // The first failure in order is reported: every item before this one is still taken
      // (by the other thread), none after it need be.
      it->len = 0;
      q->failed_at[me] = i;
      pthread_mutex_lock(&q->lock);
      if (q->hi > i) q->hi = i;
      pthread_mutex_unlock(&q->lock);
      break;
    }
    it->len = r->len - it->start;
  }
  r->ring = NULL;
  r->rel = NULL;
  if (ringed) {
    __atomic_add_fetch(&q->ringed, 1, __ATOMIC_RELAXED);
    ring_destroy(&ring);
  }
  return NULL;
}

// Lists the directory `fd` (names and types, "." and ".." left out); -1 with errno set on
// failure (E2BIG: more than `max` entries).
static int list_dir(int fd, char ***names_out, unsigned char **types_out, size_t *count_out, size_t max) {
  DIR *d = fdopendir(dup(fd));
  if (!d) return -1;
  char **names = NULL;
  unsigned char *types = NULL;
  size_t count = 0, cap = 0;
  int rc = 0;
  for (;;) {
    errno = 0;
    struct dirent *e = readdir(d);
    if (!e) {
      if (errno) rc = -1;
      break;
    }
    if (is_dot_entry(e->d_name)) continue;
    if (count == max) {
      errno = E2BIG;
      rc = -1;
      break;
    }
    if (count == cap) {
      cap = cap ? cap * 2 : 64;
      char **n = realloc(names, cap * sizeof *n);
      if (n) names = n;
      unsigned char *ty = realloc(types, cap);
      if (ty) types = ty;
      if (!n || !ty) {
        errno = ENOMEM;
        rc = -1;
        break;
      }
    }
    if (!(names[count] = strdup(e->d_name))) {
      errno = ENOMEM;
      rc = -1;
      break;
    }
    types[count++] = e->d_type;
  }
  int code = errno;
  closedir(d);
  *names_out = names;
  *types_out = types;
  *count_out = count;
  errno = code;
  return rc;
}

// Lists the top (names and types) into q; -1 with t->err set on failure.
static int list_top(read_request_t *q) {
  if (list_dir(q->top_fd, &q->names, &q->types, &q->count, SIZE_MAX) < 0) {
    nerr_set(&q->task.err, errno, "readdir(%s)", q->top);
    return -1;
  }
  return 0;
}

// Opens and lists the directory `i` of the top so that its entries are shared out. Whatever
// goes wrong leaves it whole: its walk then meets the same and says so, in the top's order.
static void split_top(read_request_t *q, size_t i) {
  top_t *d = &q->tops[i];
  if (q->types[i] != DT_DIR && q->types[i] != DT_UNKNOWN) return;
  int fd = openat(q->top_fd, q->names[i], O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | O_DIRECTORY);
  if (fd < 0) return;
  // A directory of millions of entries (a crafted tree) is not listed whole here: walked as
  // one item, it meets the bound on the walk's output instead.
  if (fstat(fd, &d->st) < 0 || !S_ISDIR(d->st.st_mode) || list_dir(fd, &d->names, &d->types, &d->count, SPLIT_MAX) < 0) {
    close(fd);
    for (size_t j = 0; j < d->count; j++) free(d->names[j]);
    free(d->names);
    free(d->types);
    d->names = NULL;
    d->types = NULL;
    d->count = 0;
    return;
  }
  d->fd = fd;
  d->split = 1;
}

static void read_tree_run(task_t *t) {
  read_request_t *q = (read_request_t *)t;
  // The top is the path the caller named: a symbolic link to it is followed, as stat does.
  q->top_fd = open(q->top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (q->top_fd < 0) {
    nerr_set(&t->err, errno, "%s", q->top);
    return;
  }
  struct stat st;
  if (fstat(q->top_fd, &st) < 0) {
    nerr_set(&t->err, errno, "fstat(%s)", q->top);
    return;
  }
  if (list_top(q) < 0) return;
  q->tops = calloc(q->count ? q->count : 1, sizeof *q->tops);
  if (!q->tops) {
    nerr_set(&t->err, ENOMEM, "readTree(%s)", q->top);
    return;
  }
  for (size_t i = 0; i < q->count; i++) {
    q->tops[i].fd = -1;
    split_top(q, i);
    q->tops[i].first = q->item_count;
    q->tops[i].items = q->tops[i].split ? (q->tops[i].count + SPLIT_CHUNK - 1) / SPLIT_CHUNK : 1;
    q->item_count += q->tops[i].items;
  }
  q->items = calloc(q->item_count ? q->item_count : 1, sizeof *q->items);
  if (!q->items) {
    nerr_set(&t->err, ENOMEM, "readTree(%s)", q->top);
    return;
  }
  for (size_t i = 0; i < q->count; i++) {
    top_t *d = &q->tops[i];
    for (size_t j = 0; j < d->items; j++) {
      item_t *it = &q->items[d->first + j];
      it->dfd = d->split ? d->fd : q->top_fd;
      it->names = d->split ? d->names + j * SPLIT_CHUNK : q->names + i;
      it->types = d->split ? d->types + j * SPLIT_CHUNK : q->types + i;
      it->n = d->split ? (j + 1 < d->items ? SPLIT_CHUNK : d->count - j * SPLIT_CHUNK) : 1;
      it->depth = d->split ? 1 : 0;
      it->thread = -1;
      // Messages name an entry of a split directory below it (files/12/fd_type).
      it->prefix = d->split ? q->names[i] : "";
    }
  }
  q->lo = 0;
  q->hi = q->item_count;
  for (int th = 0; th < THREADS; th++) q->failed_at[th] = q->item_count;
  pthread_t helpers[THREADS - 1];
  int started = 0;
  for (; started < THREADS - 1 && (size_t)started + 1 < q->item_count; started++)
    if (pthread_create(&helpers[started], NULL, take_entries, q) != 0) break;  // fewer threads: still correct
  take_entries(q);
  for (int i = 0; i < started; i++) pthread_join(helpers[i], NULL);
  // The first failure in the top's order is the one reported.
  size_t first_bad = q->item_count;
  for (int th = 0; th < THREADS; th++) {
    if (q->failed_at[th] >= first_bad) continue;
    first_bad = q->failed_at[th];
    t->err = q->threads[th].err;
  }
  if (first_bad < q->item_count) return;
  size_t len = 16;
  uint32_t records = 0, notable = 0;
  for (int th = 0; th < THREADS; th++) notable += q->threads[th].notable;
  for (size_t k = 0; k < q->item_count; k++) len += q->items[k].len;
  for (size_t i = 0; i < q->count; i++) {
    top_t *d = &q->tops[i];
    if (!d->split) {
      records += q->items[d->first].found;
      continue;
    }
    // A split directory's record and the count of its block, written below.
    len += ENTRY_HEAD + strlen(q->names[i]) + 4 + 4;
    records++;
    if (d->st.st_uid != 0 || (d->st.st_mode & 022) != 0) notable++;
  }
  if (len > OUTPUT_MAX) {
    nerr_set_raw(&t->err, E2BIG, "%s: too many entries to read (over 1 GiB of names and small files): not a saved checkpoint", q->top);
    return;
  }
  if (!(q->out = malloc(len))) {
    nerr_set(&t->err, ENOMEM, "readTree(%s): %zu bytes", q->top, len);
    return;
  }
  want_huge_pages(q->out, len);
  uint32_t head[4] = {st.st_mode, st.st_uid, notable, records};
  memcpy(q->out, head, 16);
  q->len = 16;
  for (size_t i = 0; i < q->count; i++) {
    top_t *d = &q->tops[i];
    size_t rec = q->len;
    uint32_t found = 0;
    size_t block_len = 0;
    size_t name_len = strlen(q->names[i]);
    if (d->split) {
      // The directory's record as its walk writes it (entry_in): no data, its block follows.
      uint16_t len16 = (uint16_t)name_len;
      double size = (double)d->st.st_size;
      memset(q->out + rec, 0, ENTRY_HEAD);
      q->out[rec] = KIND_DIR;
      memcpy(q->out + rec + 2, &len16, 2);
      memcpy(q->out + rec + 4, &d->st.st_mode, 4);
      memcpy(q->out + rec + 8, &d->st.st_uid, 4);
      memcpy(q->out + rec + 16, &size, 8);
      memcpy(q->out + rec + ENTRY_HEAD, q->names[i], name_len);
      memset(q->out + rec + ENTRY_HEAD + name_len, 0, 4);
      q->len = rec + ENTRY_HEAD + name_len + 4 + 4;
    }
    for (size_t j = 0; j < d->items; j++) {
      item_t *it = &q->items[d->first + j];
      if (it->len) memcpy(q->out + q->len, q->threads[it->thread].out + it->start, it->len);
      q->len += it->len;
      block_len += it->len;
      found += it->found;
    }
    if (d->split) {
      uint32_t block = (uint32_t)(4 + block_len);
      memcpy(q->out + rec + 12, &block, 4);
      memcpy(q->out + rec + ENTRY_HEAD + name_len + 4, &found, 4);
    }
  }
  for (int th = 0; th < THREADS; th++) {
    free(q->threads[th].out);
    q->threads[th].out = NULL;
  }
}

static napi_value read_tree_settle(napi_env env, task_t *t) {
  read_request_t *q = (read_request_t *)t;
  napi_value buf = make_owned_buffer(env, q->out, q->len);
  q->out = NULL;
  // How many of the walk's threads went through io_uring (0: the synchronous walk), for tests.
  napi_value ringed;
  if (buf && napi_create_uint32(env, (uint32_t)q->ringed, &ringed) == napi_ok) napi_set_named_property(env, buf, "ringed", ringed);
  return buf;
}

static void read_tree_destroy(task_t *t) {
  read_request_t *q = (read_request_t *)t;
  if (q->top_fd >= 0) close(q->top_fd);
  for (int th = 0; th < THREADS; th++) free(q->threads[th].out);
  for (size_t i = 0; i < q->count; i++) {
    free(q->names[i]);
    if (!q->tops) continue;
    if (q->tops[i].fd >= 0) close(q->tops[i].fd);
    for (size_t j = 0; j < q->tops[i].count; j++) free(q->tops[i].names[j]);
    free(q->tops[i].names);
    free(q->tops[i].types);
  }
  free(q->names);
  free(q->types);
  free(q->tops);
  free(q->items);
  free(q->out);
  free(q->top);
  pthread_mutex_destroy(&q->lock);
  free(q);
}


napi_value js_read_tree(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  size_t argc = 4;
  int64_t inline_max, budget;
  bool use_ring = true;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 3) {
    type_error(env, "expected 3 arguments, got %zu", argc);
    return NULL;
  }
  if (argc > 3 && napi_get_value_bool(env, argv[3], &use_ring) != napi_ok) {
    type_error(env, "useRing must be a boolean");
    return NULL;
  }
  size_t top_len;
  if (napi_get_value_string_utf8(env, argv[0], NULL, 0, &top_len) != napi_ok) {
    type_error(env, "path must be a string");
    return NULL;
  }
  if (napi_get_value_int64(env, argv[1], &inline_max) != napi_ok || inline_max < 0 ||
      napi_get_value_int64(env, argv[2], &budget) != napi_ok || budget < 0) {
    type_error(env, "inlineMax and budget must be numbers >= 0");
    return NULL;
  }
  read_request_t *q = calloc(1, sizeof *q);
  if (!q || !(q->top = malloc(top_len + 1))) {
    free(q);
    throw_errno(env, ENOMEM, "readTree");
    return NULL;
  }
  q->top_fd = -1;
  pthread_mutex_init(&q->lock, NULL);
  napi_get_value_string_utf8(env, argv[0], q->top, top_len + 1, &top_len);
  q->inline_max = (size_t)inline_max;
  q->budget = (size_t)budget;
  q->use_ring = use_ring;
  q->task.run = read_tree_run;
  q->task.settle = read_tree_settle;
  q->task.destroy = read_tree_destroy;
  return pool_submit(env, &q->task);
}
