// The restorer stub: the first program a restored process runs (docs/RESTORE.md). It opens
// the saved file table with native code, reports, and waits in pause() for the tracer, which
// then replaces its memory and registers by injected system calls.
//
//   restorer PLAN_FD CTL_FD REPLY_FD
//
// It waits for one byte on CTL_FD (written once the tracer has seized it, so a server that
// dies before that leaves nothing behind), builds every fd, writes "ok\n" or "error: WHY\n" to
// REPLY_FD, closes its own fds and pauses.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

enum kind { K_PATH = 1, K_UNLINKED = 2, K_MEMFD = 3, K_PIPE = 4, K_FIFO = 5, K_EVENTFD = 6 };
#define REFUSED_FLAGS (O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY)

static int reply_fd = -1;
static int work_base;        // first fd number of the stub's working area
static int next_work;        // next free working fd
static char **created;       // temporary names to remove if the restore fails
static size_t created_count;

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
  char msg[1024] = "error: ";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + 7, sizeof msg - 8, fmt, ap);
  va_end(ap);
  for (size_t i = 0; i < created_count; i++) unlink(created[i]);
  size_t n = strlen(msg);
  msg[n] = '\n';
  if (write(reply_fd, msg, n + 1) < 0) _exit(3);
  _exit(1);
}

// ---- reading the plan ----

static const uint8_t *plan, *plan_end;

static void need(size_t n, const char *what) {
  if ((size_t)(plan_end - plan) < n) fail("plan: truncated in %s", what);
}
static uint32_t u32(const char *what) {
  uint32_t v;
  need(4, what);
  memcpy(&v, plan, 4);
  plan += 4;
  return v;
}
static int32_t i32(const char *what) { return (int32_t)u32(what); }
static uint64_t u64(const char *what) {
  uint64_t v;
  need(8, what);
  memcpy(&v, plan, 8);
  plan += 8;
  return v;
}
// A length-prefixed byte string; *len gets its length. Points into the plan.
static const uint8_t *blob(const char *what, uint32_t *len) {
  *len = u32(what);
  need(*len, what);
  const uint8_t *p = plan;
  plan += *len;
  return p;
}
// A length-prefixed string copied out NUL-terminated (plans never hold NULs in paths).
static char *string(const char *what) {
  uint32_t len;
  const uint8_t *p = blob(what, &len);
  char *s = malloc(len + 1);
  if (!s) fail("out of memory");
  memcpy(s, p, len);
  s[len] = 0;
  if (strlen(s) != len) fail("plan: %s holds a NUL byte", what);
  return s;
}

// ---- helpers ----

// Moves fd into the working area so it can never collide with a task fd number.
static int to_work(int fd, const char *what) {
  int moved = fcntl(fd, F_DUPFD, next_work);
  if (moved < 0) fail("%s: F_DUPFD: %s", what, strerror(errno));
  if (moved != fd) close(fd);
  next_work = moved + 1;
  return moved;
}

static void write_all(int fd, const uint8_t *data, uint32_t len, const char *what) {
  while (len > 0) {
    ssize_t n = write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("%s: write: %s", what, strerror(errno));
    data += n;
    len -= (uint32_t)n;
  }
}

static void seek_to(int fd, uint64_t pos, const char *what) {
  if (pos == 0) return;
  if (lseek(fd, (off_t)pos, SEEK_SET) < 0 && errno != ESPIPE) fail("%s: lseek to %llu: %s", what, (unsigned long long)pos, strerror(errno));
}

// Sets the status flags fcntl can change (O_APPEND, O_NONBLOCK, O_DIRECT, O_NOATIME, O_ASYNC).
static void set_status_flags(int fd, int flags, const char *what) {
  if (fcntl(fd, F_SETFL, flags) < 0) fail("%s: F_SETFL: %s", what, strerror(errno));
}

static int open_path(const char *path, int flags, const char *what) {
  if (flags & REFUSED_FLAGS) fail("%s: open flags 0%o include O_CREAT, O_EXCL, O_TRUNC or O_NOCTTY", what, flags);
  int fd = open(path, flags & ~O_CLOEXEC);
  if (fd < 0) fail("%s: open %s: %s", what, path, strerror(errno));
  return to_work(fd, what);
}

static void remember_created(const char *path) {
  char **grown = realloc(created, (created_count + 1) * sizeof *created);
  if (!grown) fail("out of memory");
  created = grown;
  created[created_count++] = strdup(path);
}

// An unlinked file comes back with its contents: created under a free temporary name in its
// old directory, filled, reopened with the saved flags, and unlinked again.
static int open_unlinked(const char *path, int flags, mode_t mode, const uint8_t *data, uint32_t len, const char *what) {
  char tmp[4200];
  const char *slash = strrchr(path, '/');
  int dirlen = slash ? (int)(slash - path) : 0;
  int fd = -1;
  for (int attempt = 0; fd < 0 && attempt < 100; attempt++) {
    snprintf(tmp, sizeof tmp, "%.*s/.ckptfs-restore-%d-%d", dirlen, path, getpid(), attempt);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode & 07777);
    if (fd < 0 && errno != EEXIST) fail("%s: create %s: %s", what, tmp, strerror(errno));
  }
  if (fd < 0) fail("%s: no free temporary name next to %s", what, path);
  remember_created(tmp);
  write_all(fd, data, len, what);
  close(fd);
  int reopened = open_path(tmp, flags, what);
  if (unlink(tmp) < 0) fail("%s: unlink %s: %s", what, tmp, strerror(errno));
  created_count--;
  return reopened;
}

// ---- main ----

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  int plan_fd = atoi(argv[1]), ctl_fd = atoi(argv[2]);
  reply_fd = atoi(argv[3]);

  char go;
  if (read(ctl_fd, &go, 1) != 1) _exit(4);  // the server went away before seizing us

  struct stat st;
  if (fstat(plan_fd, &st) < 0) fail("plan: fstat: %s", strerror(errno));
  void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, plan_fd, 0);
  if (map == MAP_FAILED) fail("plan: mmap: %s", strerror(errno));
  plan = map;
  plan_end = plan + st.st_size;

  need(4, "magic");
  if (memcmp(plan, "CKRS", 4) != 0) fail("plan: bad magic");
  plan += 4;
  if (u32("version") != 1) fail("plan: unknown version");
  work_base = i32("work_fd_base");
  uint32_t objects = u32("object_count"), records = u32("record_count"), fds = u32("fd_count");
  if (objects > (1u << 20)) fail("plan: %u objects is more than the stub handles", objects);
  int session = i32("session"), pgid_self = i32("pgid_self");
  uint64_t nofile_soft = u64("nofile_soft"), nofile_hard = u64("nofile_hard");

  // Room for the task's fds and the working area; the saved limits are set again at the end.
  struct rlimit need_files = { (rlim_t)work_base + objects + 16, (rlim_t)work_base + objects + 16 };
  if (nofile_hard > need_files.rlim_max) need_files.rlim_max = (rlim_t)nofile_hard;
  if (setrlimit(RLIMIT_NOFILE, &need_files) < 0) fail("setrlimit(NOFILE, %llu): %s", (unsigned long long)need_files.rlim_cur, strerror(errno));
  (void)nofile_soft;

  if (session && setsid() < 0) fail("setsid: %s", strerror(errno));
  if (!session && pgid_self && setpgid(0, 0) < 0) fail("setpgid: %s", strerror(errno));

  // Nothing the server had open may leak into the task: close all but our three.
  int keep_lo = plan_fd, keep_hi = plan_fd;
  if (ctl_fd < keep_lo) keep_lo = ctl_fd;
  if (reply_fd < keep_lo) keep_lo = reply_fd;
  if (ctl_fd > keep_hi) keep_hi = ctl_fd;
  if (reply_fd > keep_hi) keep_hi = reply_fd;
  if (keep_lo > 0) syscall(SYS_close_range, 0u, (unsigned)keep_lo - 1, 0u);
  syscall(SYS_close_range, (unsigned)keep_hi + 1, ~0u, 0u);
  next_work = keep_hi + 1;
  if (next_work < work_base) next_work = work_base;

  int *object_fd = calloc(objects + 1, sizeof(int));
  if (!object_fd) fail("out of memory");
  for (uint32_t i = 0; i <= objects; i++) object_fd[i] = -1;

  for (uint32_t i = 0; i < records; i++) {
    uint32_t kind = u32("object kind"), id = u32("object id"), length = u32("object length");
    need(length, "object payload");
    const uint8_t *end = plan + length;
    char what[48];
    snprintf(what, sizeof what, "files/%u", id);
    if (id == 0 || id > objects) fail("%s: object id out of range", what);
    switch (kind) {
      case K_PATH: {
        int flags = i32("flags");
        uint64_t pos = u64("pos");
        char *path = string("path");
        int fd = open_path(path, flags, what);
        seek_to(fd, pos, what);
        object_fd[id] = fd;
        free(path);
        break;
      }
      case K_UNLINKED: {
        int flags = i32("flags");
        uint32_t mode = u32("mode");
        uint64_t pos = u64("pos");
        char *path = string("path");
        uint32_t len;
        const uint8_t *data = blob("contents", &len);
        int fd = open_unlinked(path, flags, mode, data, len, what);
        seek_to(fd, pos, what);
        object_fd[id] = fd;
        free(path);
        break;
      }
      case K_MEMFD: {
        int flags = i32("flags");
        uint64_t pos = u64("pos");
        char *name = string("name");
        uint32_t len;
        const uint8_t *data = blob("contents", &len);
        int fd = (int)syscall(SYS_memfd_create, name, 0u);
        if (fd < 0) fail("%s: memfd_create: %s", what, strerror(errno));
        fd = to_work(fd, what);
        write_all(fd, data, len, what);
        seek_to(fd, pos, what);
        set_status_flags(fd, flags, what);
        object_fd[id] = fd;
        free(name);
        break;
      }
      case K_PIPE: {
        (void)u64("pipe id");
        uint32_t len;
        const uint8_t *data = blob("buffered", &len);
        uint32_t read_id = u32("read end");
        int read_flags = i32("read flags");
        uint32_t write_id = u32("write end");
        int write_flags = i32("write flags");
        int p[2];
        if (pipe2(p, 0) < 0) fail("%s: pipe2: %s", what, strerror(errno));
        p[0] = to_work(p[0], what);
        p[1] = to_work(p[1], what);
        if (len > 65536 && fcntl(p[1], F_SETPIPE_SZ, (int)len) < 0) fail("%s: F_SETPIPE_SZ %u: %s", what, len, strerror(errno));
        write_all(p[1], data, len, what);
        if (read_id) {
          if (read_id > objects) fail("%s: read end id out of range", what);
          set_status_flags(p[0], read_flags, what);
          object_fd[read_id] = p[0];
        } else {
          close(p[0]);
        }
        if (write_id) {
          if (write_id > objects) fail("%s: write end id out of range", what);
          set_status_flags(p[1], write_flags, what);
          object_fd[write_id] = p[1];
        } else {
          close(p[1]);
        }
        break;
      }
      case K_FIFO: {
        int flags = i32("flags");
        char *path = string("path");
        uint32_t len;
        const uint8_t *data = blob("buffered", &len);
        // A temporary read-write end: neither the open below nor the refill can block.
        int keeper = open(path, O_RDWR | O_NONBLOCK);
        if (keeper < 0) fail("%s: open fifo %s: %s", what, path, strerror(errno));
        keeper = to_work(keeper, what);
        write_all(keeper, data, len, what);
        int fd = open_path(path, flags | O_NONBLOCK, what);
        set_status_flags(fd, flags, what);
        close(keeper);
        object_fd[id] = fd;
        free(path);
        break;
      }
      case K_EVENTFD: {
        uint64_t count = u64("count");
        int flags = i32("flags");
        int fd = eventfd(0, flags & (EFD_NONBLOCK | EFD_SEMAPHORE));
        if (fd < 0) fail("%s: eventfd: %s", what, strerror(errno));
        fd = to_work(fd, what);
        if (count && write(fd, &count, 8) != 8) fail("%s: eventfd write: %s", what, strerror(errno));
        object_fd[id] = fd;
        break;
      }
      default:
        fail("%s: unknown object kind %u", what, kind);
    }
    if (plan != end) fail("%s: payload length does not match its kind", what);
  }

  // Place every fd at its number. Working fds all lie above the task's, so nothing placed
  // here is overwritten later.
  for (uint32_t i = 0; i < fds; i++) {
    int fd = i32("fd"), id = (int)u32("fd object"), cloexec = (int)u32("close_on_exec");
    if (fd < 0 || fd >= work_base) fail("fd %d: outside 0..%d", fd, work_base - 1);
    if (id <= 0 || (uint32_t)id > objects || object_fd[id] < 0) fail("fd %d: names files/%d, which was not opened", fd, id);
    if (dup3(object_fd[id], fd, cloexec ? O_CLOEXEC : 0) < 0) fail("fd %d: dup3: %s", fd, strerror(errno));
  }
  if (plan != plan_end) fail("plan: %ld bytes left over", (long)(plan_end - plan));

  if (write(reply_fd, "ok\n", 3) != 3) _exit(5);
  syscall(SYS_close_range, (unsigned)work_base, ~0u, 0u);
  for (;;) pause();
}
