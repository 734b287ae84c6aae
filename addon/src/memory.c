// Memory of another process: process_vm_readv/writev and the /proc/PID/pagemap scan. These
// need no ptrace stop and may take a while, so they run on libuv's pool (writeMemory too: it
// is listed with the restore calls, but needs nothing from the tracer thread).
#include "module.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#define IOV_BATCH 1024            // IOV_MAX: the most iovecs one process_vm_readv accepts
#define READ_CHUNK (1ULL << 30)   // bytes per call, well below MAX_RW_COUNT (2 GiB - 4 KiB)
#define PAGEMAP_CHUNK 8192        // entries per pread: 64 KiB
// The largest buffer made here (readMemory, allocTouched): below node's Buffer limit (node 20:
// 4 GiB), so node never refuses its length; bigger copies take several buffers.
#define BUFFER_MAX (1ULL << 30)

#define PM_PRESENT (1ULL << 63)
#define PM_SWAPPED (1ULL << 62)
#define PM_FILE_OR_SHARED (1ULL << 61)
#define PM_MMAP_EXCLUSIVE (1ULL << 56)
#define PAGE 4096ULL

typedef struct {
  uint64_t start, len;
} range_t;

typedef struct {
  task_t t;
  pid_t pid;
  range_t *ranges;  // readMemoryInto: the ranges; scanPagemap(s): the runs found
  size_t nranges, cap;
  unsigned char *dst;  // readMemory: malloc()ed result; readMemoryInto: into + intoOffset
  uint64_t addr, len;  // readMemory: [addr, addr + len)
  int owned;  // dst is ours (readMemory)
} mem_task_t;

static void mem_destroy(task_t *t) {
  mem_task_t *m = (mem_task_t *)t;
  free(m->ranges);
  if (m->owned) free(m->dst);
  free(m);
}

static mem_task_t *mem_task(void (*run)(task_t *), napi_value (*settle)(napi_env, task_t *)) {
  mem_task_t *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->t.run = run;
  m->t.settle = settle;
  m->t.destroy = mem_destroy;
  return m;
}

// Reading a page through process_vm_readv pins it, and the kernel then gives the process its
// own copy of an anonymous page it shares copy-on-write with another (a forked child and its
// parent), even for reading: a checkpoint read that way doubled a forked tree's memory (64 MiB
// parent and child: 64 MiB in use before `cat` of the child's pages, 128 MiB after). Pages
// the process does not map alone (pagemap: present but not PM_MMAP_EXCLUSIVE, or swapped) are
// read through /proc/PID/mem instead, which copies without pinning (about half the speed).
typedef struct {
  pid_t pid;
  int pagemap, mem;       // opened on first use; -1 not yet, -2 could not be opened
  uint64_t *entries;      // a window of pagemap entries
  uint64_t first, count;  // the window's first page and its number of entries
  struct iovec local[1], remote[IOV_BATCH];
  size_t cnt;
  uint64_t total;
  unsigned char *batch_dst;
} reader_t;

static int lazy_open(reader_t *rd, int *fd, const char *what) {
  if (*fd == -1) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", rd->pid, what);
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0) *fd = -2;
  }
  return *fd;
}

// Whether `page` may be shared with another process (see above). Without pagemap: no (the
// read still returns the right bytes).
static int page_shared(reader_t *rd, uint64_t page) {
  if (page < rd->first || page >= rd->first + rd->count) {
    rd->count = 0;
    if (lazy_open(rd, &rd->pagemap, "pagemap") < 0) return 0;
    if (!rd->entries && !(rd->entries = malloc(PAGEMAP_CHUNK * sizeof *rd->entries))) return 0;
    ssize_t got = pread(rd->pagemap, rd->entries, PAGEMAP_CHUNK * sizeof *rd->entries, (off_t)(page * sizeof *rd->entries));
    if (got < (ssize_t)sizeof *rd->entries) return 0;
    rd->first = page;
    rd->count = (uint64_t)got / sizeof *rd->entries;
  }
  uint64_t e = rd->entries[page - rd->first];
  return (e & PM_SWAPPED) || ((e & PM_PRESENT) && !(e & PM_MMAP_EXCLUSIVE));
}

// Reads the pending process_vm_readv batch; partial reads continue where they stopped.
static int flush_batch(reader_t *rd, nerr_t *err) {
  size_t at = 0;
  while (rd->total > 0) {
    rd->local[0] = (struct iovec){rd->batch_dst, rd->total};
    ssize_t got = process_vm_readv(rd->pid, rd->local, 1, rd->remote + at, rd->cnt - at, 0);
    if (got <= 0) {
      nerr_set(err, got < 0 ? errno : EFAULT, "process_vm_readv(pid %d, 0x%llx, %llu)", rd->pid,
               (unsigned long long)(uintptr_t)rd->remote[at].iov_base, (unsigned long long)rd->remote[at].iov_len);
      return -1;
    }
    rd->batch_dst += got;
    rd->total -= (uint64_t)got;
    for (size_t left = (size_t)got; left;) {
      size_t take = rd->remote[at].iov_len < left ? rd->remote[at].iov_len : left;
      rd->remote[at].iov_base = (char *)rd->remote[at].iov_base + take;
      rd->remote[at].iov_len -= take;
      left -= take;
      if (rd->remote[at].iov_len == 0) at++;
    }
  }
  rd->cnt = 0;
  return 0;
}

static int read_unpinned(reader_t *rd, uint64_t addr, uint64_t len, unsigned char *dst, nerr_t *err) {
  if (lazy_open(rd, &rd->mem, "mem") < 0) {
    nerr_set(err, errno, "open(/proc/%d/mem)", rd->pid);
    return -1;
  }
  while (len > 0) {
    ssize_t got = pread(rd->mem, dst, len, (off_t)addr);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      nerr_set(err, got < 0 ? errno : EFAULT, "pread(/proc/%d/mem, 0x%llx, %llu)", rd->pid, (unsigned long long)addr, (unsigned long long)len);
      return -1;
    }
    addr += (uint64_t)got;
    dst += got;
    len -= (uint64_t)got;
  }
  return 0;
}

// Reads the ranges back to back into dst, each run of pages the way that leaves it shared.
static void read_ranges(pid_t pid, const range_t *r, size_t n, unsigned char *dst, nerr_t *err) {
  reader_t rd = {.pid = pid, .pagemap = -1, .mem = -1};
  for (size_t i = 0; i < n && !err->code; i++) {
    uint64_t at = r[i].start, end = r[i].start + r[i].len;
    while (at < end) {
      // The run of pages from `at` of one kind (shared or not).
      int shared = page_shared(&rd, at / PAGE);
      uint64_t next = (at / PAGE + 1) * PAGE;
      while (next < end && page_shared(&rd, next / PAGE) == shared) next += PAGE;
      uint64_t len = (next < end ? next : end) - at;
      if (shared) {
        if (flush_batch(&rd, err) < 0 || read_unpinned(&rd, at, len, dst, err) < 0) break;
      } else {
        if (rd.cnt == IOV_BATCH || rd.total + len > READ_CHUNK) {
          if (flush_batch(&rd, err) < 0) break;
        }
        if (rd.cnt == 0) rd.batch_dst = dst;
        rd.remote[rd.cnt++] = (struct iovec){(void *)(uintptr_t)at, len};
        rd.total += len;
      }
      dst += len;
      at += len;
    }
  }
  if (!err->code) flush_batch(&rd, err);
  if (rd.pagemap >= 0) close(rd.pagemap);
  if (rd.mem >= 0) close(rd.mem);
  free(rd.entries);
}

// ---- readMemory ----

static void read_memory_run(task_t *t) {
  mem_task_t *m = (mem_task_t *)t;
  if (!m->len) return;
  m->dst = malloc(m->len);
  if (!m->dst) {
    nerr_set(&t->err, ENOMEM, "readMemory(pid %d, 0x%llx, %llu)", m->pid, (unsigned long long)m->addr,
             (unsigned long long)m->len);
    return;
  }
  range_t r = {m->addr, m->len};
  read_ranges(m->pid, &r, 1, m->dst, &t->err);
}

static napi_value read_memory_settle(napi_env env, task_t *t) {
  mem_task_t *m = (mem_task_t *)t;
  napi_value b = make_owned_buffer(env, m->dst, m->len);
  m->dst = NULL;  // owned by the Buffer now
  return b;
}

napi_value js_read_memory(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t pid;
  uint64_t addr, len;
  if (!arg_count(env, info, 3, argv) || !get_i32(env, argv[0], "pid", &pid) ||
      !get_u64(env, argv[1], "addr", &addr) || !get_u64(env, argv[2], "length", &len))
    return NULL;
  if (len > BUFFER_MAX) {
    throw_errno(env, ERANGE, "readMemory(pid %d, 0x%llx, %llu): at most %llu bytes at once", pid,
                (unsigned long long)addr, (unsigned long long)len, BUFFER_MAX);
    return NULL;
  }
  mem_task_t *m = mem_task(read_memory_run, read_memory_settle);
  if (!m) return NULL;
  m->pid = pid;
  m->addr = addr;
  m->len = len;
  m->owned = 1;
  return pool_submit(env, &m->t);
}

// ---- readMemoryInto ----

static void read_into_run(task_t *t) {
  mem_task_t *m = (mem_task_t *)t;
  read_ranges(m->pid, m->ranges, m->nranges, m->dst, &t->err);
}

// Parses (pid, ranges, into, intoOffset) into m; on failure a JS exception is pending.
static int parse_read_into(napi_env env, napi_callback_info info, const char *name, mem_task_t *m, napi_value *into_value) {
  napi_value argv[4];
  int32_t pid, off;
  void *into;
  size_t into_len;
  bool is_array;
  if (!arg_count(env, info, 4, argv) || !get_i32(env, argv[0], "pid", &pid) ||
      !get_buffer(env, argv[2], "into", &into, &into_len) || !get_i32(env, argv[3], "intoOffset", &off))
    return 0;
  napi_is_array(env, argv[1], &is_array);
  if (!is_array) {
    type_error(env, "ranges must be an array");
    return 0;
  }
  uint32_t n;
  napi_get_array_length(env, argv[1], &n);
  m->pid = pid;
  m->ranges = malloc((n ? n : 1) * sizeof *m->ranges);
  if (!m->ranges) {
    throw_errno(env, ENOMEM, "%s: %u ranges", name, n);
    return 0;
  }
  m->nranges = n;
  uint64_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value r, v;
    napi_get_element(env, argv[1], i, &r);
    napi_valuetype vt;
    napi_typeof(env, r, &vt);
    if (vt != napi_object) {
      type_error(env, "ranges[%u] must be an object", i);
      return 0;
    }
    napi_get_named_property(env, r, "start", &v);
    if (!get_u64(env, v, "ranges[].start", &m->ranges[i].start)) return 0;
    napi_get_named_property(env, r, "length", &v);
    if (!get_u64(env, v, "ranges[].length", &m->ranges[i].len)) return 0;
    total += m->ranges[i].len;
  }
  if (off < 0 || (uint64_t)off > into_len || total > into_len - (uint64_t)off) {
    throw_errno(env, ERANGE, "%s(pid %d): %llu bytes do not fit at offset %d of a %zu-byte buffer", name, pid,
                (unsigned long long)total, off, into_len);
    return 0;
  }
  m->dst = (unsigned char *)into + off;
  m->len = total;
  *into_value = argv[2];
  return 1;
}

napi_value js_read_memory_into(napi_env env, napi_callback_info info) {
  mem_task_t *m = mem_task(read_into_run, NULL);
  if (!m) return NULL;
  napi_value into;
  if (!parse_read_into(env, info, "readMemoryInto", m, &into)) goto bad;
  // Keep the destination alive while a pool thread writes into it.
  if (napi_create_reference(env, into, 1, &m->t.keep[0]) != napi_ok) goto bad;
  return pool_submit(env, &m->t);
bad:
  if (m->t.keep[0]) napi_delete_reference(env, m->t.keep[0]);
  mem_destroy(&m->t);
  return NULL;
}

// Synchronous, for small reads of a frozen task's resident memory (the mount's read path):
// as fast as copying the bytes, where a trip through the pool would cost more than the copy.
#define READ_NOW_MAX (1u << 20)
napi_value js_read_memory_into_now(napi_env env, napi_callback_info info) {
  mem_task_t *m = mem_task(read_into_run, NULL);
  if (!m) return NULL;
  napi_value into;
  if (parse_read_into(env, info, "readMemoryIntoNow", m, &into)) {
    if (m->len > READ_NOW_MAX) {
      throw_errno(env, EINVAL, "readMemoryIntoNow(pid %d): %llu bytes is more than the %u it reads at once", m->pid,
                  (unsigned long long)m->len, READ_NOW_MAX);
    } else {
      read_ranges(m->pid, m->ranges, m->nranges, m->dst, &m->t.err);
      if (m->t.err.code) napi_throw(env, nerr_to_js(env, &m->t.err));
    }
  }
  mem_destroy(&m->t);
  return NULL;
}

// ---- writeMemory ----

static void write_memory_run(task_t *t) {
  mem_task_t *m = (mem_task_t *)t;
  // Partial writes continue where they stopped; no progress is an error naming the address
  // (e.g. a read-only mapping: process_vm_writev does not force writes like /proc/PID/mem).
  for (uint64_t done = 0; done < m->len;) {
    uint64_t n = m->len - done;
    if (n > READ_CHUNK) n = READ_CHUNK;
    struct iovec local = {m->dst + done, n}, remote = {(void *)(uintptr_t)(m->addr + done), n};
    ssize_t got = process_vm_writev(m->pid, &local, 1, &remote, 1, 0);
    if (got <= 0) {
      nerr_set(&t->err, got < 0 ? errno : EFAULT, "process_vm_writev(pid %d, 0x%llx, %llu)", m->pid,
               (unsigned long long)(m->addr + done), (unsigned long long)(m->len - done));
      return;
    }
    done += (uint64_t)got;
  }
}

napi_value js_write_memory(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t pid;
  uint64_t addr;
  void *data;
  size_t len;
  if (!arg_count(env, info, 3, argv) || !get_i32(env, argv[0], "pid", &pid) ||
      !get_u64(env, argv[1], "addr", &addr) || !get_buffer(env, argv[2], "data", &data, &len))
    return NULL;
  mem_task_t *m = mem_task(write_memory_run, NULL);
  if (!m) return NULL;
  m->pid = pid;
  m->addr = addr;
  m->len = len;
  m->dst = data;  // the caller's buffer, read in place (not owned)
  if (napi_create_reference(env, argv[2], 1, &m->t.keep[0]) != napi_ok) {
    mem_destroy(&m->t);
    return NULL;
  }
  return pool_submit(env, &m->t);
}

// ---- scanPagemap, scanPagemaps ----

typedef struct {
  range_t *runs;
  size_t n, cap;
} runlist_t;

static int add_run(runlist_t *l, size_t floor, uint64_t start, uint64_t len) {
  // Runs of one range merge; a run never merges into the previous range's last one.
  if (l->n > floor && l->runs[l->n - 1].start + l->runs[l->n - 1].len == start) {
    l->runs[l->n - 1].len += len;
    return 0;
  }
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 256;
    range_t *n = realloc(l->runs, cap * sizeof *n);
    if (!n) return -1;
    l->runs = n;
    l->cap = cap;
  }
  l->runs[l->n++] = (range_t){start, len};
  return 0;
}

#define PM_PFN_MASK ((1ULL << 55) - 1)

// The frame of the kernel's shared zero page (what a read of untouched anonymous memory
// maps): two processes both showing it share no inherited page, so it is never a match.
// Found once by reading a fresh page of our own; UINT64_MAX when that cannot be seen.
static uint64_t zero_pfn = 0;
static pthread_once_t zero_pfn_once = PTHREAD_ONCE_INIT;

static void find_zero_pfn(void) {
  zero_pfn = UINT64_MAX;
  volatile unsigned char *p = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  (void)p[0];
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  uint64_t e = 0;
  if (fd >= 0) {
    if (pread(fd, &e, sizeof e, (off_t)((uintptr_t)p / PAGE * 8)) == (ssize_t)sizeof e && (e & PM_PRESENT) && (e & PM_PFN_MASK))
      zero_pfn = e & PM_PFN_MASK;
    close(fd);
  }
  munmap((void *)p, PAGE);
}

// The frame of a kept page that another process may hold too (present, a frame the caller
// can see, not the zero page); 0 otherwise.
static uint64_t shareable_frame(uint64_t e) {
  if (!(e & PM_PRESENT)) return 0;
  uint64_t pfn = e & PM_PFN_MASK;
  return pfn == zero_pfn ? 0 : pfn;
}

// The ranges to scan: one (scanPagemap) or many (scanPagemaps), each answered by its own
// runs; ends[i] is where the runs of request i end in s->stored (and s->inherited).
// frames: where to record the frame of each page of the range (shareable_frame; 0 for pages
// not kept), for a child's scan to compare with. parent: the parent's frames for the same
// range; a kept page whose frame is the parent's at the same address is an inherited run,
// not a stored one.
typedef struct {
  uint64_t start, len;
  int private_only;
  uint64_t *frames;
  uint64_t *parent;
} scan_request_t;

typedef struct {
  mem_task_t m;
  scan_request_t *requests;
  size_t *ends, *inherited_ends;
  runlist_t stored, inherited;
  size_t n;
  // The parent's pagemap, read again around each chunk of the child's (parent_fd, -1: not
  // asked): a page is inherited only if the parent maps that very frame just before and just
  // after the child's read. The frames recorded at the parent's own scan may be stale by now
  // (the kernel migrates pages of frozen tasks too, e.g. compaction): a stale one misses
  // sharing, and a frame freed meanwhile and reused by a page of the child's own would take
  // that page for the parent's.
  int32_t parent_pid;
  int parent_fd;
  uint64_t *parent_before, *parent_after;
} scan_many_task_t;

// The parent's pagemap entries for `n` pages from page `first` into `out`; 1 when all were read.
static int read_parent_frames(scan_many_task_t *s, uint64_t first, uint64_t n, uint64_t *out) {
  size_t want = n * 8, got = 0;
  while (got < want) {
    ssize_t r = pread(s->parent_fd, (char *)out + got, want - got, (off_t)(first * 8 + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 0;
    got += (size_t)r;
  }
  return 1;
}

// Appends the kept runs of request `r` to s->stored (s->inherited), reading pagemap through
// `fd` with `buf` (PAGEMAP_CHUNK entries). Returns 0, or -1 with the task's error set.
static int scan_range(scan_many_task_t *s, int fd, const char *path, uint64_t *buf, const scan_request_t *r) {
  mem_task_t *m = &s->m;
  const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  const size_t floor = s->stored.n, inherited_floor = s->inherited.n;
  uint64_t first = r->start / page, count = r->len / page;
  // Current run of kept pages, extended page by page and flushed when it breaks; `run_inherited`
  // says which list it goes to.
  uint64_t run_start = 0, run_pages = 0;
  int run_inherited = 0;
#define FLUSH_RUN()                                                                                          \
  do {                                                                                                       \
    if (run_pages && (run_inherited ? add_run(&s->inherited, inherited_floor, run_start, run_pages * page)  \
                                    : add_run(&s->stored, floor, run_start, run_pages * page)) < 0)         \
      goto oom;                                                                                              \
    run_pages = 0;                                                                                           \
  } while (0)
  for (uint64_t done = 0; done < count;) {
    uint64_t want = count - done;
    if (want > PAGEMAP_CHUNK) want = PAGEMAP_CHUNK;
    int live_before = r->parent && s->parent_fd >= 0 && read_parent_frames(s, first + done, want, s->parent_before);
    ssize_t got = pread(fd, buf, want * 8, (off_t)((first + done) * 8));
    if (got < 0) {
      if (errno == EINTR) continue;
      nerr_set(&m->t.err, errno, "pread(%s, %llu, 0x%llx)", path, (unsigned long long)want * 8,
               (unsigned long long)(first + done) * 8);
      return -1;
    }
    if (got == 0) break;  // past the end of the address space: nothing there
    uint64_t n = (uint64_t)got / 8;
    // The parent's frames just after the child's read (parent_before was read just before it).
    int live = r->parent && s->parent_fd >= 0 && live_before && read_parent_frames(s, first + done, n, s->parent_after);
    for (uint64_t i = 0; i < n; i++) {
      uint64_t e = buf[i];
      int keep = (e & (PM_PRESENT | PM_SWAPPED)) && !(r->private_only && (e & PM_FILE_OR_SHARED));
      uint64_t frame = keep ? shareable_frame(e) : 0;
      if (r->frames) r->frames[done + i] = frame;
      // The parent stored this page at its scan (its recorded frame is not 0) and maps this very
      // frame around the child's read; without the parent's pagemap, no page is inherited.
      int inherited = frame != 0 && r->parent && r->parent[done + i] != 0 && live &&
                      shareable_frame(s->parent_before[i]) == frame && shareable_frame(s->parent_after[i]) == frame;
      if (keep) {
        if (run_pages && inherited != run_inherited) FLUSH_RUN();
        if (!run_pages) {
          run_start = (first + done + i) * page;
          run_inherited = inherited;
        }
        run_pages++;
      } else {
        FLUSH_RUN();
      }
    }
    done += n;
  }
  FLUSH_RUN();
#undef FLUSH_RUN
  return 0;
oom:
  nerr_set(&m->t.err, ENOMEM, "scanPagemap(pid %d)", m->pid);
  return -1;
}

static void scan_many_destroy(task_t *t) {
  scan_many_task_t *s = (scan_many_task_t *)t;
  for (size_t i = 0; s->requests && i < s->n; i++) {
    free(s->requests[i].frames);
    free(s->requests[i].parent);
  }
  free(s->requests);
  free(s->parent_before);
  free(s->parent_after);
  free(s->ends);
  free(s->inherited_ends);
  free(s->stored.runs);
  free(s->inherited.runs);
  free(s);
}

// One open of pagemap and one buffer for every range: a small process's two dozen mappings
// cost one pool round trip instead of one each.
static void scan_many_run(task_t *t) {
  scan_many_task_t *s = (scan_many_task_t *)t;
  mem_task_t *m = &s->m;
  pthread_once(&zero_pfn_once, find_zero_pfn);
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/pagemap", m->pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    nerr_set(&t->err, errno == ENOENT ? ESRCH : errno, "open(%s)", path);
    return;
  }
  uint64_t *buf = malloc(PAGEMAP_CHUNK * sizeof *buf);
  if (!buf) {
    close(fd);
    nerr_set(&t->err, ENOMEM, "scanPagemap(pid %d)", m->pid);
    return;
  }
  int compares = 0;
  for (size_t i = 0; i < s->n; i++) compares |= s->requests[i].parent != NULL;
  if (compares && s->parent_pid > 0) {
    char parent_path[64];
    snprintf(parent_path, sizeof parent_path, "/proc/%d/pagemap", s->parent_pid);
    s->parent_before = malloc(PAGEMAP_CHUNK * sizeof *s->parent_before);
    s->parent_after = malloc(PAGEMAP_CHUNK * sizeof *s->parent_after);
    // Without the parent's pagemap the child's pages are all stored: safe, only bigger.
    if (s->parent_before && s->parent_after) s->parent_fd = open(parent_path, O_RDONLY | O_CLOEXEC);
  }
  for (size_t i = 0; i < s->n; i++) {
    if (scan_range(s, fd, path, buf, &s->requests[i]) < 0) break;
    s->ends[i] = s->stored.n;
    s->inherited_ends[i] = s->inherited.n;
  }
  free(buf);
  close(fd);
  if (s->parent_fd >= 0) close(s->parent_fd);
}

static napi_value runs_to_js(napi_env env, const range_t *runs, size_t n) {
  napi_value arr;
  napi_create_array_with_length(env, n, &arr);
  for (size_t i = 0; i < n; i++) {
    napi_value o;
    napi_create_object(env, &o);
    napi_set_named_property(env, o, "start", make_u64(env, runs[i].start));
    napi_set_named_property(env, o, "length", make_u64(env, runs[i].len));
    napi_set_element(env, arr, (uint32_t)i, o);
  }
  return arr;
}

static napi_value scan_one_settle(napi_env env, task_t *t) {
  scan_many_task_t *s = (scan_many_task_t *)t;
  return runs_to_js(env, s->stored.runs, s->stored.n);
}

// Each range's stored runs; where frames or parent frames were asked, the array also carries
// `frames` (a Buffer of one u64 per page) and `inherited` (the runs held as the parent's).
static napi_value scan_many_settle(napi_env env, task_t *t) {
  scan_many_task_t *s = (scan_many_task_t *)t;
  napi_value arr;
  napi_create_array_with_length(env, s->n, &arr);
  for (size_t i = 0, from = 0, inherited_from = 0; i < s->n; from = s->ends[i], inherited_from = s->inherited_ends[i], i++) {
    napi_value runs = runs_to_js(env, s->stored.runs + from, s->ends[i] - from);
    const scan_request_t *r = &s->requests[i];
    if (r->frames) {
      napi_value b;
      void *p;
      if (napi_create_buffer_copy(env, r->len / PAGE * 8, r->frames, &p, &b) == napi_ok) napi_set_named_property(env, runs, "frames", b);
    }
    if (r->parent) napi_set_named_property(env, runs, "inherited", runs_to_js(env, s->inherited.runs + inherited_from, s->inherited_ends[i] - inherited_from));
    napi_set_element(env, arr, (uint32_t)i, runs);
  }
  return arr;
}

static scan_many_task_t *scan_task(pid_t pid, size_t n, napi_value (*settle)(napi_env, task_t *)) {
  scan_many_task_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->requests = calloc(n ? n : 1, sizeof *s->requests);
  s->ends = calloc(n ? n : 1, sizeof *s->ends);
  s->inherited_ends = calloc(n ? n : 1, sizeof *s->inherited_ends);
  if (!s->requests || !s->ends || !s->inherited_ends) {
    scan_many_destroy(&s->m.t);
    return NULL;
  }
  s->parent_fd = -1;
  s->m.t.run = scan_many_run;
  s->m.t.settle = settle;
  s->m.t.destroy = scan_many_destroy;
  s->m.pid = pid;
  s->n = n;
  return s;
}

static int check_range(napi_env env, const char *what, int32_t pid, uint64_t start, uint64_t end) {
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  if (end < start || start % page || end % page) {
    throw_errno(env, EINVAL, "%s(pid %d, 0x%llx, 0x%llx): range must be page-aligned", what, pid,
                (unsigned long long)start, (unsigned long long)end);
    return 0;
  }
  return 1;
}

napi_value js_scan_pagemap(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t pid;
  uint64_t start, end;
  int private_only;
  if (!arg_count(env, info, 4, argv) || !get_i32(env, argv[0], "pid", &pid) ||
      !get_u64(env, argv[1], "start", &start) || !get_u64(env, argv[2], "end", &end) ||
      !get_bool(env, argv[3], "privateOnly", &private_only) || !check_range(env, "scanPagemap", pid, start, end))
    return NULL;
  scan_many_task_t *s = scan_task(pid, 1, scan_one_settle);
  if (!s) {
    throw_errno(env, ENOMEM, "scanPagemap(pid %d)", pid);
    return NULL;
  }
  s->requests[0] = (scan_request_t){start, end - start, private_only, NULL, NULL};
  return pool_submit(env, &s->m.t);
}

// A request's optional `frames: true` (record each page's frame) and `parentFrames: Buffer`
// (the parent's frames for the same range, one u64 per page). 1, or 0 having thrown.
static int scan_frames_of(napi_env env, int32_t pid, napi_value r, scan_request_t *q) {
  napi_value v;
  bool has = false, want = false;
  size_t pages = q->len / PAGE;
  if (napi_has_named_property(env, r, "frames", &has) == napi_ok && has && napi_get_named_property(env, r, "frames", &v) == napi_ok &&
      napi_get_value_bool(env, v, &want) == napi_ok && want) {
    if (!(q->frames = calloc(pages ? pages : 1, 8))) {
      throw_errno(env, ENOMEM, "scanPagemaps(pid %d): frames of 0x%llx bytes", pid, (unsigned long long)q->len);
      return 0;
    }
  }
  if (napi_has_named_property(env, r, "parentFrames", &has) == napi_ok && has) {
    void *data;
    size_t len;
    if (napi_get_named_property(env, r, "parentFrames", &v) != napi_ok || !get_buffer(env, v, "parentFrames", &data, &len)) return 0;
    if (len != pages * 8) {
      throw_errno(env, EINVAL, "scanPagemaps(pid %d, 0x%llx): parentFrames has %zu bytes, the range %llu pages", pid, (unsigned long long)q->start, len, (unsigned long long)pages);
      return 0;
    }
    if (!(q->parent = malloc(len ? len : 1))) {
      throw_errno(env, ENOMEM, "scanPagemaps(pid %d): parent frames", pid);
      return 0;
    }
    memcpy(q->parent, data, len);
  }
  return 1;
}

// scanPagemaps(pid, [{start, end, privateOnly, frames?, parentFrames?}, ...]): scanPagemap of
// each range, in one call; see scan_many_settle for what frames and parentFrames add.
napi_value js_scan_pagemaps(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  int32_t pid, parent_pid = 0;
  bool is_array = false;
  uint32_t n = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) {
    throw_errno(env, EINVAL, "scanPagemaps(pid, ranges[, parentPid]): 2 or 3 arguments");
    return NULL;
  }
  if (!get_i32(env, argv[0], "pid", &pid)) return NULL;
  napi_valuetype third = napi_undefined;
  if (argc >= 3 && napi_typeof(env, argv[2], &third) == napi_ok && third != napi_undefined && !get_i32(env, argv[2], "parentPid", &parent_pid)) return NULL;
  if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &n) != napi_ok) {
    throw_errno(env, EINVAL, "scanPagemaps(pid %d): ranges must be an array", pid);
    return NULL;
  }
  scan_many_task_t *s = scan_task(pid, n, scan_many_settle);
  if (!s) {
    throw_errno(env, ENOMEM, "scanPagemaps(pid %d, %u ranges)", pid, n);
    return NULL;
  }
  s->parent_pid = parent_pid;
  for (uint32_t i = 0; i < n; i++) {
    napi_value r, v;
    uint64_t start, end;
    int private_only;
    if (napi_get_element(env, argv[1], i, &r) != napi_ok ||
        napi_get_named_property(env, r, "start", &v) != napi_ok || !get_u64(env, v, "start", &start) ||
        napi_get_named_property(env, r, "end", &v) != napi_ok || !get_u64(env, v, "end", &end) ||
        napi_get_named_property(env, r, "privateOnly", &v) != napi_ok ||
        !get_bool(env, v, "privateOnly", &private_only) || !check_range(env, "scanPagemaps", pid, start, end)) {
      scan_many_destroy(&s->m.t);
      return NULL;
    }
    s->requests[i] = (scan_request_t){start, end - start, private_only, NULL, NULL};
    if (!scan_frames_of(env, pid, r, &s->requests[i])) {
      scan_many_destroy(&s->m.t);
      return NULL;
    }
  }
  return pool_submit(env, &s->m.t);
}

// allocTouched: a buffer whose pages are already written once by the kernel, for copy-mode
// captures: faulting fresh memory costs several times the copy itself here, and must not
// happen while the task is stopped. No MADV_HUGEPAGE: with THP defrag on madvise,
// compaction made populating 5x slower on this machine. Runs on the pool.
#define HUGE_PAGE (2UL << 20)  // alignment of the buffer, for fewer page-table pages

typedef struct {
  task_t t;
  size_t len;
  void *map;     // the whole mapping (aligned start inside it)
  size_t map_len;
  void *data;
  int handed;    // the buffer owns the mapping and this record (freed by its finalizer)
} touched_task_t;

static void touched_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  touched_task_t *tt = hint;
  munmap(tt->map, tt->map_len);
  free(tt);
}

static void touched_run(task_t *t) {
  touched_task_t *tt = (touched_task_t *)t;
  tt->map_len = tt->len + HUGE_PAGE;
  tt->map = mmap(NULL, tt->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (tt->map == MAP_FAILED) {
    tt->map = NULL;
    nerr_set(&t->err, errno, "mmap(%zu bytes)", tt->map_len);
    return;
  }
  uintptr_t aligned = ((uintptr_t)tt->map + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
  tt->data = (void *)aligned;
  // Filled by the kernel from /dev/zero rather than faulted in by madvise or memset: on this
  // virtual machine the kernel's first write into a page stays slow after a user-space touch,
  // and a later process_vm_readv into it then costs several times more (measured: 512 MiB
  // copied in 0.55-1.0 s after MADV_POPULATE_WRITE or memset, 0.11-0.15 s after this).
  int zero = open("/dev/zero", O_RDONLY | O_CLOEXEC);
  size_t off = 0;
  while (zero >= 0 && off < tt->len) {
    size_t want = tt->len - off > (64UL << 20) ? (64UL << 20) : tt->len - off;
    ssize_t n = read(zero, (char *)tt->data + off, want);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += (size_t)n;
  }
  if (zero >= 0) close(zero);
  if (off < tt->len && madvise((char *)tt->data + off, tt->len - off, 23 /* MADV_POPULATE_WRITE */) < 0) {
    // Touching by hand is only for kernels without MADV_POPULATE_WRITE (EINVAL): after a
    // real failure (ENOMEM) it would call the OOM killer, which may pick the server.
    if (errno != EINVAL) {
      nerr_set(&t->err, errno, "allocTouched(%zu): populating byte %zu on", tt->len, off);
      return;
    }
    for (; off < tt->len; off += 4096) ((volatile char *)tt->data)[off] = 0;
  }
}

static napi_value touched_settle(napi_env env, task_t *t) {
  touched_task_t *tt = (touched_task_t *)t;
  napi_value b;
  napi_status status = napi_create_external_buffer(env, tt->len, tt->data, touched_finalize, tt, &b);
  // node refuses a length over its Buffer limit (a generic failure) after calling the
  // finalizer itself: freeing here too was the double free. Other refusals leave it ours.
  if (status == napi_ok || status == napi_generic_failure) tt->handed = 1;
  if (status != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) throw_errno(env, ENOMEM, "allocTouched(%zu): node made no Buffer of it", tt->len);
    return NULL;
  }
  return b;
}

static void touched_destroy(task_t *t) {
  touched_task_t *tt = (touched_task_t *)t;
  if (tt->handed) return;
  if (tt->map) munmap(tt->map, tt->map_len);
  free(tt);
}

napi_value js_alloc_touched(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint64_t len;
  if (!arg_count(env, info, 1, argv) || !get_u64(env, argv[0], "length", &len)) return NULL;
  if (len == 0 || len > BUFFER_MAX) {
    throw_errno(env, len ? ERANGE : EINVAL, "allocTouched(%llu): a buffer holds 1 to %llu bytes (take several for more)",
                (unsigned long long)len, BUFFER_MAX);
    return NULL;
  }
  touched_task_t *tt = calloc(1, sizeof *tt);
  if (!tt) return NULL;
  tt->t.run = touched_run;
  tt->t.settle = touched_settle;
  tt->t.destroy = touched_destroy;
  tt->len = (size_t)len;
  return pool_submit(env, &tt->t);
}
