// Lazy restore (docs/RESTORE.md "Lazy restore"): a restored task's private anonymous pages are
// filled on first touch through userfaultfd, from the saved files, by a thread of our own
// (never the tracer thread, never the JS thread), and everything else in the background.
//
// lazyFill(uffd, pid, ranges, pieces, order, hold, kin) registers `ranges` (MISSING mode) on `uffd` (a
// userfaultfd the task made, taken with pidfd_getfd: its ioctls act on the task's mm) and
// returns a promise that settles when every stored page is in (or the fill failed). The
// bytes come in pieces: each is the unit the saved copy recorded one CRC32C for (1 MiB of a
// mapping's stored pages): where it lies (fd, offset, length: one or more file extents) and
// where it goes (task addresses). A piece is read whole and checked before any byte of it is
// copied in (UFFDIO_COPY), so the task never sees an unchecked byte. Pages of a registered
// range with no stored data get UFFDIO_ZEROPAGE. Faults are served from the start; the
// background fill waits until the fd `hold` is readable (the caller's signal that the task
// runs: until then the fill would only slow the rest of the restore down), when hold >= 0.
//
// What the task does meanwhile is followed through the non-cooperative events:
//   REMOVE (madvise DONTNEED/REMOVE) and UNMAP: those pages are never filled any more
//     (a later touch gets a zero page, as without the fill);
//   REMAP (mremap): the moved pages are found at their new address;
//   FORK: the child gets a uffd of its own (installed here on read); its missing pages are
//     filled as the parent's, from a copy of the parent's page states.
// A piece that cannot be read whole, or whose CRC32C differs, ends the fill: the task and its
// descendants are killed (SIGKILL) while their faults still wait, so no process runs on with
// a page it should not have; the promise resolves with the error and the piece's index.
// `kin` (int32 pairs: PID, pidfd) names the other processes of a restored tree, each filled by
// a lazyFill of its own: a failure here kills them too (through their pidfds, so a PID reused
// meanwhile is never hit), with their descendants, as the tree is restored whole. The pidfds
// are the caller's (pidFd, once per tree: not one set per fill), kept open until every fill
// of the tree has ended.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "module.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#define MAX_KIN 4096  // the other processes of a tree

#define PAGE 4096ull
#define NO_PIECE (-1)
#define NO_ADDR UINT64_MAX
#define MAX_SPACES 64  // the task and the children it forks during the fill
#define FAULT_WINDOW (64ull << 10)  // what a fault copies in at least: aligned, a power of two
#define BG_STEP (256ull << 10)      // the background fill's step: faults are answered between steps
enum { FOR_FAULTS = 0, FOR_BACKGROUND = 1 };  // the two checked-piece buffers

enum { MISSING = 0, FILLED = 1, GONE = 2 };  // page states

typedef struct { uint64_t addr, len; } seg_t;      // task addresses, as saved
typedef struct { int32_t fd; uint64_t at, len; } src_t;  // where the bytes lie
typedef struct {
  uint32_t crc, nseg, nsrc;
  uint64_t len;
  seg_t *seg;
  src_t *src;
} piece_t;
typedef struct { uint64_t start, len; } range_t;
// Every segment of every piece, sorted by address: which piece holds a page is found by a
// binary search here. Nothing is kept per page but its state (one byte, calloc()ed and so
// untouched until used): the set-up before the task runs does no per-page work.
typedef struct { uint64_t addr, len, off; int32_t piece; } segref_t;  // off: in the piece's bytes
// Where saved addresses are now in one process (mremap moves them): [cur, cur+len) holds
// what was at [orig, orig+len).
typedef struct { uint64_t cur, len, orig; } move_t;

typedef struct {
  int uffd;
  uint8_t **state;  // per range, per page
  move_t *moves;
  size_t nmoves, capmoves;
  size_t cursor;    // background: next index into `order`
  uint64_t part;    // background: next offset in that piece's bytes
} space_t;

typedef struct {
  task_t task;
  pid_t pid;
  range_t *ranges;
  size_t nranges;
  piece_t *pieces;
  size_t npieces;
  segref_t *segs;         // sorted by addr, not overlapping
  size_t nsegs;
  uint32_t *order;
  size_t norder;
  space_t spaces[MAX_SPACES];
  size_t nspaces;
  uint8_t *buf[2];        // the bytes of a checked piece: one for faults, one for the background
  int32_t buf_piece[2];   // which (NO_PIECE: none)
  uint8_t *touched;       // per piece: asked for by a fault first
  uint32_t *first;        // pieces in the order of their first fault
  size_t nfirst;
  uint64_t copied, zeroed, faults;
  struct timespec t0;
  double seconds;
  int32_t failed_piece;
  char failure[240];
  int root_uffd;          // the restored process's own uffd (the others are its children's)
  int root_ended;         // it ended (or was killed) before its last page was in
  int hold;               // >= 0: no background work until this fd is readable (the caller's)
  napi_threadsafe_function tsfn;
  uint8_t *blob[3];       // the argument buffers, copied
  pid_t *kin;             // the tree's other processes (killed with this one on a failure)
  int *kin_fd;            // their pidfds (the caller's)
  size_t nkin;
} lazy_t;

// ---- page bookkeeping ----

static range_t *range_of(lazy_t *l, uint64_t orig, size_t *ri) {
  size_t lo = 0, hi = l->nranges;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    range_t *r = &l->ranges[mid];
    if (orig < r->start) hi = mid;
    else if (orig >= r->start + r->len) lo = mid + 1;
    else {
      *ri = mid;
      return r;
    }
  }
  return NULL;
}

// The segment holding saved address `orig`, or NULL.
static segref_t *seg_at(lazy_t *l, uint64_t orig) {
  size_t lo = 0, hi = l->nsegs;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    segref_t *g = &l->segs[mid];
    if (orig < g->addr) hi = mid;
    else if (orig >= g->addr + g->len) lo = mid + 1;
    else return g;
  }
  return NULL;
}

static uint64_t to_orig(space_t *s, uint64_t cur) {
  for (size_t i = 0; i < s->nmoves; i++)
    if (cur >= s->moves[i].cur && cur < s->moves[i].cur + s->moves[i].len) return s->moves[i].orig + (cur - s->moves[i].cur);
  return NO_ADDR;
}

static uint64_t to_cur(space_t *s, uint64_t orig) {
  for (size_t i = 0; i < s->nmoves; i++)
    if (orig >= s->moves[i].orig && orig < s->moves[i].orig + s->moves[i].len) return s->moves[i].cur + (orig - s->moves[i].orig);
  return NO_ADDR;
}

static uint8_t *state_at(lazy_t *l, space_t *s, uint64_t orig) {
  size_t ri;
  range_t *r = range_of(l, orig, &ri);
  return r ? &s->state[ri][(orig - r->start) / PAGE] : NULL;
}

static int add_move(space_t *s, uint64_t cur, uint64_t len, uint64_t orig) {
  if (len == 0) return 0;
  if (s->nmoves == s->capmoves) {
    size_t cap = s->capmoves ? 2 * s->capmoves : 16;
    move_t *m = realloc(s->moves, cap * sizeof *m);
    if (!m) return -ENOMEM;
    s->moves = m;
    s->capmoves = cap;
  }
  s->moves[s->nmoves++] = (move_t){cur, len, orig};
  return 0;
}

// Cuts [from, from+len) (current addresses) out of the moves; with `shift`, the cut parts
// come back at from+shift (an mremap), else they are gone (an unmap).
static int cut_moves(space_t *s, uint64_t from, uint64_t len, int shift_it, uint64_t to) {
  size_t n = s->nmoves;
  for (size_t i = 0; i < n; i++) {
    move_t m = s->moves[i];
    uint64_t a = m.cur > from ? m.cur : from;
    uint64_t b = m.cur + m.len < from + len ? m.cur + m.len : from + len;
    if (a >= b) continue;
    // keep the parts before and after; the middle moves or goes
    s->moves[i].len = 0;
    if (add_move(s, m.cur, a - m.cur, m.orig) || add_move(s, b, m.cur + m.len - b, m.orig + (b - m.cur))) return -ENOMEM;
    if (shift_it && add_move(s, to + (a - from), b - a, m.orig + (a - m.cur))) return -ENOMEM;
  }
  size_t k = 0;  // drop the emptied entries
  for (size_t i = 0; i < s->nmoves; i++)
    if (s->moves[i].len) s->moves[k++] = s->moves[i];
  s->nmoves = k;
  return 0;
}

// ---- failing: the task and its descendants die before any fault of theirs is answered ----

// The process and its descendants (every thread's children file: a fork from any thread
// makes a child of the process).
static size_t collect_tree(pid_t pid, pid_t *out, size_t n, size_t cap) {
  if (n >= cap) return n;
  out[n++] = pid;
  char path[96];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR *d = opendir(path);
  if (!d) return n;
  pid_t kids[256];
  size_t nk = 0;
  for (struct dirent *e; (e = readdir(d)) && nk < 256;) {
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "/proc/%d/task/%s/children", pid, e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    long child;
    while (nk < 256 && fscanf(f, "%ld", &child) == 1) kids[nk++] = (pid_t)child;
    fclose(f);
  }
  closedir(d);
  for (size_t i = 0; i < nk; i++) n = collect_tree(kids[i], out, n, cap);
  return n;
}

static void fail(lazy_t *l, int32_t piece, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(lazy_t *l, int32_t piece, const char *fmt, ...) {
  if (l->failure[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(l->failure, sizeof l->failure, fmt, ap);
  va_end(ap);
  l->failed_piece = piece;
  // Every descendant is found before anything is killed (a killed parent's children move).
  // (The fills of a tree's processes run on threads of their own: each its own list.)
  size_t cap = 1024 + 4 * l->nkin, n = 0;
  pid_t *tree = malloc(cap * sizeof *tree);
  if (tree) {
    n = collect_tree(l->pid, tree, 0, cap);
    for (size_t i = 0; i < l->nkin; i++)
      if (l->kin_fd[i] >= 0) n = collect_tree(l->kin[i], tree, n, cap);
  }
  for (size_t i = 0; i < l->nkin; i++)
    if (l->kin_fd[i] >= 0) syscall(SYS_pidfd_send_signal, l->kin_fd[i], SIGKILL, NULL, 0);
  if (!tree) kill(l->pid, SIGKILL);
  for (size_t i = 0; i < n; i++) kill(tree[i], SIGKILL);
  free(tree);
}

// ---- reading and checking one piece ----

// The checked bytes of piece p: from either buffer if one holds it, else read into `slot`'s.
static const uint8_t *load_piece(lazy_t *l, int32_t p, int slot) {
  if (l->buf_piece[FOR_FAULTS] == p) return l->buf[FOR_FAULTS];
  if (l->buf_piece[FOR_BACKGROUND] == p) return l->buf[FOR_BACKGROUND];
  uint8_t *buf = l->buf[slot];
  l->buf_piece[slot] = NO_PIECE;
  piece_t *pc = &l->pieces[p];
  uint64_t at = 0;
  for (uint32_t i = 0; i < pc->nsrc; i++) {
    src_t *s = &pc->src[i];
    uint64_t done = 0;
    while (done < s->len) {
      ssize_t r = pread(s->fd, buf + at + done, s->len - done, (off_t)(s->at + done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        fail(l, p, "read of %llu bytes at byte %llu: %s", (unsigned long long)s->len, (unsigned long long)s->at, strerror(errno));
        return NULL;
      }
      if (r == 0) {
        fail(l, p, "the file ends at byte %llu, %llu bytes short (cut since the restore began)", (unsigned long long)(s->at + done),
             (unsigned long long)(s->len - done));
        return NULL;
      }
      done += (uint64_t)r;
    }
    at += s->len;
  }
  uint32_t crc = ckptfs_crc32c(0, buf, pc->len);
  if (crc != pc->crc) {
    fail(l, p, "CRC32C %08x where %08x was saved: the saved copy is damaged (or changed since the restore began)", crc, pc->crc);
    return NULL;
  }
  l->buf_piece[slot] = p;
  return buf;
}

// ---- filling ----

// UFFDIO_COPY of [cur, cur+len) from `from`; pages found present are skipped (and woken).
// Returns 0, -EAGAIN (the task's address space is changing: read its events first) or
// -ESRCH (the process is gone).
static int copy_in(lazy_t *l, space_t *s, uint64_t cur, const uint8_t *from, uint64_t len) {
  while (len > 0) {
    struct uffdio_copy c = {.dst = cur, .src = (uint64_t)(uintptr_t)from, .len = len, .mode = 0};
    int r = ioctl(s->uffd, UFFDIO_COPY, &c);
    uint64_t done = c.copy > 0 ? (uint64_t)c.copy : 0;
    l->copied += done / PAGE;
    cur += done, from += done, len -= done;
    if (r == 0) continue;
    int e = errno;
    if (e == EEXIST) {  // a page already there (the task wrote it, or another fault filled it)
      struct uffdio_range w = {.start = cur, .len = PAGE};
      ioctl(s->uffd, UFFDIO_WAKE, &w);
      cur += PAGE, from += PAGE, len -= PAGE;
      continue;
    }
    if (e == EAGAIN && done > 0) continue;
    if (e == EAGAIN) return -EAGAIN;
    if (e == ESRCH || e == ENOENT) return -ESRCH;
    return -e;
  }
  return 0;
}

// Copies in every page of piece p whose bytes lie at [lo, hi) of the piece that is still
// MISSING in space s (and `also`, a faulting page whatever its state: see the fork note in
// handle_fault).
static int fill_window(lazy_t *l, space_t *s, int32_t p, uint64_t also, uint64_t lo, uint64_t hi, int slot) {
  const uint8_t *buf = load_piece(l, p, slot);
  if (!buf) return -EIO;
  piece_t *pc = &l->pieces[p];
  uint64_t off = 0;
  for (uint32_t i = 0; i < pc->nseg; i++) {
    seg_t *g = &pc->seg[i];
    uint64_t run_orig = 0, run_len = 0, run_off = 0;
    for (uint64_t o = 0; o <= g->len; o += PAGE) {
      int take = 0;
      uint64_t orig = g->addr + o;
      uint8_t *st = NULL;
      if (o < g->len && off + o >= lo && off + o < hi) {
        st = state_at(l, s, orig);
        take = st && (*st == MISSING || orig == also) && to_cur(s, orig) != NO_ADDR;
      }
      // a run ends where a page is not taken or the current address is not contiguous
      if (run_len && (!take || to_cur(s, orig) != to_cur(s, run_orig) + run_len)) {
        int r = copy_in(l, s, to_cur(s, run_orig), buf + run_off, run_len);
        if (r) return r;
        for (uint64_t k = 0; k < run_len; k += PAGE) *state_at(l, s, run_orig + k) = FILLED;
        run_len = 0;
      }
      if (take) {
        if (!run_len) run_orig = orig, run_off = off + o;
        run_len += PAGE;
      }
    }
    off += g->len;
  }
  return 0;
}

static int zero_page(lazy_t *l, space_t *s, uint64_t cur) {
  struct uffdio_zeropage z = {.range = {.start = cur, .len = PAGE}, .mode = 0};
  if (ioctl(s->uffd, UFFDIO_ZEROPAGE, &z) == 0) {
    l->zeroed++;
    return 0;
  }
  int e = errno;
  if (e == EEXIST) {
    struct uffdio_range w = {.start = cur, .len = PAGE};
    ioctl(s->uffd, UFFDIO_WAKE, &w);
    return 0;
  }
  return e == EAGAIN ? -EAGAIN : e == ESRCH || e == ENOENT ? -ESRCH : -e;
}

static int handle_fault(lazy_t *l, space_t *s, uint64_t addr) {
  uint64_t cur = addr & ~(PAGE - 1);
  l->faults++;
  uint64_t orig = to_orig(s, cur);
  size_t ri;
  range_t *r = orig == NO_ADDR ? NULL : range_of(l, orig, &ri);
  if (!r) return zero_page(l, s, cur);  // grown by mremap: never stored
  uint64_t pg = (orig - r->start) / PAGE;
  segref_t *g = seg_at(l, orig);
  int32_t p = g ? g->piece : NO_PIECE;
  uint8_t *st = &s->state[ri][pg];
  if (p == NO_PIECE || *st == GONE) {
    int e = zero_page(l, s, cur);
    if (!e) *st = FILLED;
    return e;
  }
  if (!l->touched[p]) {
    l->touched[p] = 1;
    l->first[l->nfirst++] = (uint32_t)p;
  }
  // A page FILLED here may still be missing in a child forked while we filled it in the
  // parent (its page tables were copied before our copy): such a fault takes the saved bytes,
  // which is what the child had (the parent had not touched the page before the fork).
  // The first fault in a piece gets the aligned FAULT_WINDOW of its bytes around the page
  // (the whole piece is still read and checked first): copying all of a 1 MiB piece would
  // make the task wait for 256 pages where it asked for one; the background fill brings the
  // rest. A second fault in the piece last checked for faults (a task walking through it)
  // takes the rest of it.
  if (l->buf_piece[FOR_FAULTS] == p) return fill_window(l, s, p, orig, 0, UINT64_MAX, FOR_FAULTS);
  uint64_t lo = (g->off + (orig - g->addr)) & ~(FAULT_WINDOW - 1);
  return fill_window(l, s, p, orig, lo, lo + FAULT_WINDOW, FOR_FAULTS);
}

static int mark_gone(lazy_t *l, space_t *s, uint64_t start, uint64_t end) {
  for (uint64_t cur = start & ~(PAGE - 1); cur < end; cur += PAGE) {
    uint64_t orig = to_orig(s, cur);
    uint8_t *st = orig == NO_ADDR ? NULL : state_at(l, s, orig);
    if (st) *st = GONE;
  }
  return 0;
}

// The offset in piece p's bytes of its first page at or after `from` still MISSING in
// space s, or NO_ADDR.
static uint64_t missing_from(lazy_t *l, space_t *s, int32_t p, uint64_t from) {
  piece_t *pc = &l->pieces[p];
  uint64_t off = 0;
  for (uint32_t g = 0; g < pc->nseg; off += pc->seg[g].len, g++) {
    if (off + pc->seg[g].len <= from) continue;
    for (uint64_t o = from > off ? from - off : 0; o < pc->seg[g].len; o += PAGE) {
      uint8_t *st = state_at(l, s, pc->seg[g].addr + o);
      if (st && *st == MISSING && to_cur(s, pc->seg[g].addr + o) != NO_ADDR) return off + o;
    }
  }
  return NO_ADDR;
}

// Whether space s still has a stored page missing.
static int background_left(lazy_t *l, space_t *s) {
  for (size_t c = s->cursor; c < l->norder; c++)
    if (missing_from(l, s, (int32_t)l->order[c], c == s->cursor ? s->part : 0) != NO_ADDR) return 1;
  return 0;
}

static int add_space(lazy_t *l, int uffd, space_t *parent) {
  if (l->nspaces == MAX_SPACES) return -EMFILE;
  space_t *s = &l->spaces[l->nspaces];
  memset(s, 0, sizeof *s);
  s->uffd = uffd;
  s->state = calloc(l->nranges ? l->nranges : 1, sizeof *s->state);
  if (!s->state) return -ENOMEM;
  for (size_t i = 0; i < l->nranges; i++) {
    size_t pages = l->ranges[i].len / PAGE;
    s->state[i] = parent ? malloc(pages) : calloc(pages, 1);
    if (!s->state[i]) return -ENOMEM;
    if (parent) memcpy(s->state[i], parent->state[i], pages);
  }
  if (parent) {
    for (size_t i = 0; i < parent->nmoves; i++)
      if (add_move(s, parent->moves[i].cur, parent->moves[i].len, parent->moves[i].orig)) return -ENOMEM;
  } else {
    for (size_t i = 0; i < l->nranges; i++)
      if (add_move(s, l->ranges[i].start, l->ranges[i].len, l->ranges[i].start)) return -ENOMEM;
  }
  l->nspaces++;
  return 0;
}

static void drop_space(lazy_t *l, size_t i) {
  space_t *s = &l->spaces[i];
  if (s->uffd == l->root_uffd && background_left(l, s)) l->root_ended = 1;
  close(s->uffd);
  for (size_t k = 0; k < l->nranges; k++) free(s->state[k]);
  free(s->state);
  free(s->moves);
  l->spaces[i] = l->spaces[--l->nspaces];
}

// Handles every message waiting on space i. Returns 0, or -ESRCH when the process is gone.
static int read_messages(lazy_t *l, size_t i) {
  struct uffd_msg msgs[32];
  for (;;) {
    space_t *s = &l->spaces[i];
    ssize_t n = read(s->uffd, msgs, sizeof msgs);
    if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : -ESRCH;
    if (n == 0) return -ESRCH;
    for (size_t k = 0; k < (size_t)n / sizeof msgs[0]; k++) {
      struct uffd_msg *m = &msgs[k];
      s = &l->spaces[i];  // add_space may not move it, but keep it fresh
      int r = 0;
      switch (m->event) {
        case UFFD_EVENT_PAGEFAULT:
          do r = handle_fault(l, s, m->arg.pagefault.address);
          while (r == -EAGAIN && (r = read_messages(l, i)) == 0);
          break;
        case UFFD_EVENT_REMOVE:
        case UFFD_EVENT_UNMAP:
          mark_gone(l, s, m->arg.remove.start, m->arg.remove.end);
          if (m->event == UFFD_EVENT_UNMAP) r = cut_moves(s, m->arg.remove.start, m->arg.remove.end - m->arg.remove.start, 0, 0);
          break;
        case UFFD_EVENT_REMAP:
          r = cut_moves(s, m->arg.remap.from, m->arg.remap.len, 1, m->arg.remap.to);
          break;
        case UFFD_EVENT_FORK:
          r = add_space(l, (int)m->arg.fork.ufd, s);
          if (r) close((int)m->arg.fork.ufd);
          if (r) fail(l, NO_PIECE, "a fork of the restored process during the fill: %s", strerror(-r));
          break;
      }
      if (r == -EIO) return -EIO;
      if (r == -ESRCH) return -ESRCH;
      if (r < 0 && r != -EAGAIN) {
        fail(l, NO_PIECE, "userfaultfd: %s", strerror(-r));
        return -EIO;
      }
    }
  }
}

// One piece of background work in some space; 0 when no space has any left.
static int background_step(lazy_t *l, size_t *which) {
  for (size_t i = 0; i < l->nspaces; i++) {
    space_t *s = &l->spaces[i];
    while (s->cursor < l->norder) {
      uint64_t at = missing_from(l, s, (int32_t)l->order[s->cursor], s->part);
      if (at == NO_ADDR) {
        s->cursor++;
        s->part = 0;
        continue;
      }
      s->part = at & ~(BG_STEP - 1);  // the step holding the first missing page
      *which = i;
      return 1;
    }
  }
  return 0;
}

// Until the caller lets go (hold readable), only faults and events are answered.
static int serve_held(lazy_t *l) {
  struct pollfd pfd[MAX_SPACES + 1];
  for (size_t i = 0; i < l->nspaces; i++) pfd[i] = (struct pollfd){.fd = l->spaces[i].uffd, .events = POLLIN};
  pfd[l->nspaces] = (struct pollfd){.fd = l->hold, .events = POLLIN};
  int n = poll(pfd, l->nspaces + 1, -1);
  if (n < 0 && errno != EINTR) {
    fail(l, NO_PIECE, "poll: %s", strerror(errno));
    return -EIO;
  }
  if (n > 0 && pfd[l->nspaces].revents) l->hold = -1;
  for (size_t i = l->nspaces; i-- > 0;) {
    if (n <= 0 || !(pfd[i].revents & (POLLIN | POLLERR | POLLHUP))) continue;
    int r = read_messages(l, i);
    if (r == -EIO) return r;
    if (r == -ESRCH) drop_space(l, i);
  }
  return 0;
}

static void serve(lazy_t *l) {
  for (;;) {
    if (l->failure[0] || l->nspaces == 0) return;
    if (l->hold >= 0) {
      if (serve_held(l) == -EIO) return;
      continue;
    }
    struct pollfd pfd[MAX_SPACES];
    for (size_t i = 0; i < l->nspaces; i++) pfd[i] = (struct pollfd){.fd = l->spaces[i].uffd, .events = POLLIN};
    int n = poll(pfd, l->nspaces, 0);
    if (n < 0 && errno != EINTR) {
      fail(l, NO_PIECE, "poll: %s", strerror(errno));
      return;
    }
    for (size_t i = l->nspaces; i-- > 0;) {
      if (n == 0 || (n > 0 && !(pfd[i].revents & (POLLIN | POLLERR | POLLHUP)))) continue;
      int r = read_messages(l, i);
      if (r == -EIO) return;
      if (r == -ESRCH) drop_space(l, i);
    }
    // Chosen after the messages: a fork adds a space and an exit drops one (the last moves
    // into its place), so an index taken before them could name another space.
    size_t which = 0;
    int work = background_step(l, &which);
    if (!work) {
      // Nothing missing anywhere: answer what is still queued, then let go (closing the
      // uffds ends every registration: later touches are ordinary faults).
      for (size_t i = l->nspaces; i-- > 0;) {
        if (read_messages(l, i) == -EIO) return;
      }
      if (background_step(l, &which)) continue;
      while (l->nspaces) drop_space(l, l->nspaces - 1);
      return;
    }
    if (which >= l->nspaces) continue;
    // One step of a piece, then the faults again: a fault waits for BG_STEP at most.
    space_t *s = &l->spaces[which];
    int r = fill_window(l, s, (int32_t)l->order[s->cursor], NO_ADDR, s->part, s->part + BG_STEP, FOR_BACKGROUND);
    if (r == -EIO) return;
    if (r == -ESRCH) drop_space(l, which);
    else if (r == 0) s->part += BG_STEP;
    else if (r != -EAGAIN) {
      fail(l, (int32_t)l->order[s->cursor], "UFFDIO_COPY: %s", strerror(-r));
      return;
    }
  }
}

// ---- the thread and the JS side ----

static int segref_cmp(const void *a, const void *b) {
  uint64_t x = ((const segref_t *)a)->addr, y = ((const segref_t *)b)->addr;
  return x < y ? -1 : x > y;
}

static void lazy_destroy(task_t *t) {
  lazy_t *l = (lazy_t *)t;
  if (l->nspaces == 0 && l->spaces[0].uffd > 0) close(l->spaces[0].uffd);  // refused before it was served
  while (l->nspaces) drop_space(l, l->nspaces - 1);
  free(l->ranges);
  free(l->segs);
  free(l->pieces);
  free(l->buf[0]);
  free(l->buf[1]);
  free(l->touched);
  free(l->first);
  for (int i = 0; i < 3; i++) free(l->blob[i]);
  free(l->kin);
  free(l->kin_fd);
  free(l);
}

static napi_value set_prop(napi_env env, napi_value o, const char *name, napi_value v) {
  napi_set_named_property(env, o, name, v);
  return o;
}

static napi_value lazy_settle(napi_env env, task_t *t) {
  lazy_t *l = (lazy_t *)t;
  napi_value o, s;
  napi_create_object(env, &o);
  set_prop(env, o, "copiedPages", make_u64(env, l->copied));
  set_prop(env, o, "zeroPages", make_u64(env, l->zeroed));
  set_prop(env, o, "faults", make_u64(env, l->faults));
  napi_create_double(env, l->seconds, &s);
  set_prop(env, o, "seconds", s);
  napi_value first;
  napi_create_array_with_length(env, l->nfirst, &first);
  for (size_t i = 0; i < l->nfirst; i++) {
    napi_value v;
    napi_create_uint32(env, l->first[i], &v);
    napi_set_element(env, first, (uint32_t)i, v);
  }
  set_prop(env, o, "firstTouched", first);
  napi_value ended;
  napi_get_boolean(env, l->root_ended != 0, &ended);
  set_prop(env, o, "ended", ended);
  if (l->failure[0]) {
    napi_value msg;
    napi_create_string_utf8(env, l->failure, NAPI_AUTO_LENGTH, &msg);
    set_prop(env, o, "failure", msg);
    set_prop(env, o, "failedPiece", make_i32(env, l->failed_piece));
  }
  return o;
}

static void call_js(napi_env env, napi_value cb, void *context, void *data) {
  (void)cb;
  (void)context;
  lazy_t *l = data;
  napi_threadsafe_function tsfn = l->tsfn;
  if (env) task_finish(env, &l->task);
  else lazy_destroy(&l->task);
  napi_release_threadsafe_function(tsfn, napi_tsfn_release);
}

static void *lazy_thread(void *arg) {
  lazy_t *l = arg;
  serve(l);
  struct timespec t1;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  l->seconds = (double)(t1.tv_sec - l->t0.tv_sec) + (double)(t1.tv_nsec - l->t0.tv_nsec) / 1e9;
  napi_call_threadsafe_function(l->tsfn, l, napi_tsfn_blocking);
  return NULL;
}

// Copies a Buffer argument (the caller may reuse it).
static uint8_t *copy_arg(napi_env env, napi_value v, const char *name, size_t *len) {
  void *data;
  if (!get_buffer(env, v, name, &data, len)) return NULL;
  uint8_t *p = malloc(*len ? *len : 1);
  if (p) memcpy(p, data, *len);
  else throw_errno(env, ENOMEM, "lazyFill: %s", name);
  return p;
}

// Parses pieces: per piece u32 crc, u32 nseg, u32 nsrc, u32 0, then nseg * (u64 addr, u64 len),
// then nsrc * (i64 fd, u64 at, u64 len).
static int parse_pieces(lazy_t *l, const uint8_t *p, size_t len) {
  size_t at = 0, n = 0, cap = 0;
  while (at < len) {
    if (len - at < 16) return -1;
    piece_t pc;
    memcpy(&pc.crc, p + at, 4);
    memcpy(&pc.nseg, p + at + 4, 4);
    memcpy(&pc.nsrc, p + at + 8, 4);
    at += 16;
    if ((len - at) / 16 < pc.nseg || (len - at - 16ull * pc.nseg) / 24 < pc.nsrc) return -1;
    pc.seg = (seg_t *)(uintptr_t)(p + at);  // 8-aligned: the blob is malloc()ed, records are multiples of 8
    at += 16ull * pc.nseg;
    pc.src = malloc((pc.nsrc ? pc.nsrc : 1) * sizeof *pc.src);
    if (!pc.src) return -1;
    pc.len = 0;
    uint64_t seglen = 0;
    for (uint32_t i = 0; i < pc.nseg; i++) seglen += pc.seg[i].len;
    for (uint32_t i = 0; i < pc.nsrc; i++) {
      int64_t fd;
      memcpy(&fd, p + at, 8);
      memcpy(&pc.src[i].at, p + at + 8, 8);
      memcpy(&pc.src[i].len, p + at + 16, 8);
      pc.src[i].fd = (int32_t)fd;
      pc.len += pc.src[i].len;
      at += 24;
    }
    if (pc.len != seglen || pc.len > (64u << 20)) return -1;
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      piece_t *np = realloc(l->pieces, cap * sizeof *np);
      if (!np) return -1;
      l->pieces = np;
    }
    l->pieces[n++] = pc;
  }
  l->npieces = n;
  return 0;
}

napi_value js_lazy_fill(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  int32_t uffd, pid, hold;
  void *kin;
  size_t kinlen;
  if (!arg_count(env, info, 7, argv) || !get_i32(env, argv[0], "uffd", &uffd) || !get_i32(env, argv[1], "pid", &pid) ||
      !get_i32(env, argv[5], "hold", &hold) || !get_buffer(env, argv[6], "kin", &kin, &kinlen))
    return NULL;
  // From here the uffd is ours: closed on every failure, and when the fill ends.
  lazy_t *l = calloc(1, sizeof *l);
  if (!l) {
    close(uffd);
    throw_errno(env, ENOMEM, "lazyFill");
    return NULL;
  }
  l->spaces[0].uffd = uffd;
  l->task.destroy = lazy_destroy;
  l->task.settle = lazy_settle;
  l->pid = pid;
  l->hold = hold < 0 ? -1 : hold;
  l->buf_piece[0] = l->buf_piece[1] = NO_PIECE;
  if (kinlen % 8 || kinlen / 8 > MAX_KIN) {
    lazy_destroy(&l->task);
    throw_errno(env, EINVAL, "lazyFill(pid %d): kin: %zu bytes, not up to %d (PID, pidfd) pairs", pid, kinlen, MAX_KIN);
    return NULL;
  }
  size_t nkin = kinlen / 8;
  l->kin = malloc((nkin ? nkin : 1) * sizeof *l->kin);
  l->kin_fd = malloc((nkin ? nkin : 1) * sizeof *l->kin_fd);
  if (!l->kin || !l->kin_fd) {
    lazy_destroy(&l->task);
    throw_errno(env, ENOMEM, "lazyFill(pid %d)", pid);
    return NULL;
  }
  for (size_t i = 0; i < nkin; i++) {
    int32_t pair[2];
    memcpy(pair, (const uint8_t *)kin + 8 * i, 8);
    if (pair[0] <= 0 || pair[0] == pid || pair[1] < 0) continue;
    l->kin[l->nkin] = pair[0];
    l->kin_fd[l->nkin++] = pair[1];
  }
  size_t rlen, plen, olen;
  if (!(l->blob[0] = copy_arg(env, argv[2], "ranges", &rlen)) || !(l->blob[1] = copy_arg(env, argv[3], "pieces", &plen)) ||
      !(l->blob[2] = copy_arg(env, argv[4], "order", &olen))) {
    lazy_destroy(&l->task);
    return NULL;
  }
  int bad = rlen % 16 || olen % 4 || parse_pieces(l, l->blob[1], plen);
  l->nranges = rlen / 16;
  l->ranges = calloc(l->nranges ? l->nranges : 1, sizeof *l->ranges);
  l->order = (uint32_t *)(uintptr_t)l->blob[2];
  l->norder = olen / 4;
  l->touched = calloc(l->npieces ? l->npieces : 1, 1);
  l->first = calloc(l->npieces ? l->npieces : 1, sizeof *l->first);
  uint64_t maxlen = 0;
  for (size_t i = 0; i < l->npieces; i++) maxlen = l->pieces[i].len > maxlen ? l->pieces[i].len : maxlen;
  l->buf[0] = malloc(maxlen ? maxlen : 1);
  l->buf[1] = malloc(maxlen ? maxlen : 1);
  if (bad || !l->ranges || !l->touched || !l->first || !l->buf[0] || !l->buf[1]) {
    lazy_destroy(&l->task);
    throw_errno(env, EINVAL, "lazyFill(pid %d): malformed ranges, pieces or order", pid);
    return NULL;
  }
  for (size_t i = 0; i < l->norder; i++) bad |= l->order[i] >= l->npieces;
  for (size_t i = 0; i < l->nranges && !bad; i++) {
    range_t *r = &l->ranges[i];
    memcpy(&r->start, l->blob[0] + 16 * i, 8);
    memcpy(&r->len, l->blob[0] + 16 * i + 8, 8);
    bad |= r->start % PAGE || r->len % PAGE || r->len == 0 || (i && r->start < l->ranges[i - 1].start + l->ranges[i - 1].len);
    if (bad) break;
  }
  // Every stored page lies in a registered range, once: the segments, sorted, each inside
  // one range and none overlapping the one before.
  size_t nsegs = 0;
  for (size_t p = 0; p < l->npieces; p++) nsegs += l->pieces[p].nseg;
  l->segs = malloc((nsegs ? nsegs : 1) * sizeof *l->segs);
  if (!l->segs) bad = 1;
  for (size_t p = 0; p < l->npieces && !bad; p++) {
    uint64_t off = 0;
    for (uint32_t g = 0; g < l->pieces[p].nseg; g++) {
      seg_t *sg = &l->pieces[p].seg[g];
      bad |= sg->addr % PAGE || sg->len % PAGE || sg->addr + sg->len < sg->addr;
      if (sg->len) l->segs[l->nsegs++] = (segref_t){sg->addr, sg->len, off, (int32_t)p};
      off += sg->len;
    }
  }
  if (!bad) qsort(l->segs, l->nsegs, sizeof *l->segs, segref_cmp);
  for (size_t i = 0; i < l->nsegs && !bad; i++) {
    segref_t *g = &l->segs[i];
    size_t ri;
    range_t *r = range_of(l, g->addr, &ri);
    bad |= !r || g->addr + g->len > r->start + r->len || (i && g->addr < l->segs[i - 1].addr + l->segs[i - 1].len);
  }
  if (bad) {
    lazy_destroy(&l->task);
    throw_errno(env, EINVAL, "lazyFill(pid %d): a piece outside the ranges, twice, or not page-aligned", pid);
    return NULL;
  }
  // The handshake and the registrations act on the task's mm (the uffd's own).
  struct uffdio_api api = {.api = UFFD_API,
                           .features = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP};
  if (ioctl(uffd, UFFDIO_API, &api) < 0) {
    int e = errno;
    lazy_destroy(&l->task);
    throw_errno(env, e, "lazyFill(pid %d): UFFDIO_API", pid);
    return NULL;
  }
  for (size_t i = 0; i < l->nranges; i++) {
    struct uffdio_register reg = {.range = {.start = l->ranges[i].start, .len = l->ranges[i].len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
      int e = errno;
      lazy_destroy(&l->task);
      throw_errno(env, e, "lazyFill(pid %d): UFFDIO_REGISTER %llx-%llx", pid, (unsigned long long)l->ranges[i].start,
                  (unsigned long long)(l->ranges[i].start + l->ranges[i].len));
      return NULL;
    }
  }
  l->root_uffd = uffd;
  if (add_space(l, uffd, NULL)) {
    l->nspaces = 0;
    lazy_destroy(&l->task);
    throw_errno(env, ENOMEM, "lazyFill(pid %d)", pid);
    return NULL;
  }
  napi_value promise = task_promise(env, &l->task);
  napi_value name;
  napi_create_string_utf8(env, "ckptfs-lazy-fill", NAPI_AUTO_LENGTH, &name);
  if (!promise || napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, call_js, &l->tsfn) != napi_ok) {
    lazy_destroy(&l->task);
    return NULL;
  }
  clock_gettime(CLOCK_MONOTONIC, &l->t0);
  pthread_t th;
  int rc = pthread_create(&th, NULL, lazy_thread, l);
  if (rc) {
    nerr_set(&l->task.err, rc, "pthread_create(lazy fill of pid %d)", pid);
    napi_release_threadsafe_function(l->tsfn, napi_tsfn_release);
    task_finish(env, &l->task);
    return promise;
  }
  pthread_detach(th);
  return promise;
}

// pidFd(pid): a pidfd of process pid (pidfd_open: close-on-exec), for a tree's lazy fills'
// `kin`. The caller closes it.
napi_value js_pid_fd(napi_env env, napi_callback_info info) {
  napi_value argv[1], v;
  int32_t pid;
  if (!arg_count(env, info, 1, argv) || !get_i32(env, argv[0], "pid", &pid)) return NULL;
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) {
    throw_errno(env, errno, "pidfd_open(pid %d)", pid);
    return NULL;
  }
  napi_create_int32(env, fd, &v);
  return v;
}
