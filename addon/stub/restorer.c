// The restorer stub: the first program a restored process runs (docs/RESTORE.md). It opens
// the saved file table with native code, reports, and waits in pause() for the tracer, which
// then replaces its memory and registers by injected system calls.
//
//   restorer PLAN_FD CTL_FD REPLY_FD [INHERITED]
//
// INHERITED (a child of a restored tree, forked by its parent's stub, tree.c): that many
// objects it inherits sit at REPLY_FD+1 ..; the plan names each by its place (KIND_INHERITED).
//
// It waits for one byte on CTL_FD (written once the tracer has seized it, so a server that
// dies before that leaves nothing behind), builds every fd, writes "ok\n" or "error: WHY\n" to
// REPLY_FD, closes its own fds and pauses.
//
// Every file the saved task named by path is opened with the task's own filesystem
// credentials (fsuid, fsgid, groups, and only the capabilities its effective set held): a
// restore never opens what the task could not have opened. A reopened file must also be the
// saved one (check_identity). The stub's own credentials come back before it reports.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/if_packet.h>
#include <linux/kcmp.h>
#include <linux/magic.h>
#include <linux/netlink.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/fsuid.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <stddef.h>
#include <time.h>
#include <unistd.h>

#include "tree.h"

// The most fds one SCM_RIGHTS message passes (the kernel's SCM_MAX_FD, not in the user headers).
#define SCM_MAX_FD 253
#define REFUSED_FLAGS (O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY)
// The bit O_TMPFILE adds to O_DIRECTORY (the kernel's __O_TMPFILE).
#define TMPFILE_BIT 020000000

static int reply_fd = -1;
static int work_base;        // first fd number of the stub's working area
static int next_work;        // next free working fd
static uint32_t objects;     // the plan's object ids are 1..objects
static int *object_fd;       // object id -> the fd it was opened at (-1: not yet)

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
  char msg[1024] = "error: ";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + 7, sizeof msg - 8, fmt, ap);
  va_end(ap);
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

// ---- where each object's fds go ----
//
// The fd table (at the end of the plan) is read before any object is opened. Each object is
// made straight at its home, the lowest fd that names it, and its other fds are dups of it.
// The server orders the records by home, and open() and its kin return the lowest free
// number, so most objects land at home with no further call: one system call per fd where
// a move through the working area took four (measured: 10,000 fds in 65 ms that way).

struct fd_slot {
  int fd;
  int cloexec;
};
static struct fd_slot *slots;  // every fd of the table, grouped by object, its home first
static uint32_t *slots_at;     // object id -> its first slot; id + 1 -> one past its last

// Reads the fd table, refusing numbers outside the task's range, numbers listed twice and
// objects out of range; leaves the plan at the first record.
static void read_fd_table(uint32_t objects, uint32_t records, uint32_t fds) {
  const uint8_t *records_at = plan;
  for (uint32_t i = 0; i < records; i++) {
    (void)u32("object kind");
    (void)u32("object id");
    uint32_t length = u32("object length");
    need(length, "object payload");
    plan += length;
  }
  const uint8_t *table_at = plan;
  if ((size_t)(plan_end - plan) / 12 < fds) fail("plan: the fd table is truncated");
  uint8_t *listed = calloc((size_t)work_base, 1);
  slots_at = calloc((size_t)objects + 2, sizeof *slots_at);
  slots = calloc(fds ? fds : 1, sizeof *slots);
  if (!listed || !slots_at || !slots) fail("out of memory");
  for (uint32_t i = 0; i < fds; i++) {
    int fd = i32("fd");
    uint32_t id = u32("fd object");
    (void)u32("close_on_exec");
    if (fd < 0 || fd >= work_base) fail("fd %d: outside 0..%d", fd, work_base - 1);
    if (id == 0 || id > objects) fail("fd %d: names files/%u, which is not in the plan", fd, id);
    if (listed[fd]) fail("fd %d: listed twice", fd);
    listed[fd] = 1;
    slots_at[id + 1]++;
  }
  if (plan != plan_end) fail("plan: %ld bytes left over", (long)(plan_end - plan));
  free(listed);
  for (uint32_t id = 1; id <= objects + 1; id++) slots_at[id] += slots_at[id - 1];
  uint32_t *filled = calloc((size_t)objects + 1, sizeof *filled);
  if (!filled) fail("out of memory");
  plan = table_at;
  for (uint32_t i = 0; i < fds; i++) {
    int fd = i32("fd");
    uint32_t id = u32("fd object");
    int cloexec = u32("close_on_exec") != 0;
    struct fd_slot *first = &slots[slots_at[id]], *slot = first + filled[id]++;
    *slot = (struct fd_slot){fd, cloexec};
    if (slot->fd < first->fd) {  // the lowest fd goes first: it is the home
      struct fd_slot lower = *slot;
      *slot = *first;
      *first = lower;
    }
  }
  free(filled);
  plan = records_at;
}

// The home of object `id` and whether it is close-on-exec; -1 for an object no fd names (a
// pipe end or file only an epoll item still watches).
static int home_of(uint32_t id, int *cloexec) {
  if (slots_at[id] == slots_at[id + 1]) return -1;
  if (cloexec) *cloexec = slots[slots_at[id]].cloexec;
  return slots[slots_at[id]].fd;
}

// Puts the new fd of object `id` in place: at its home, moved there unless it is there
// already, with the object's other fds duplicated from it; an object without a home goes to
// the working area. `cloexec_set`: whether fd was made close-on-exec. Returns where it is.
// Puts `fd` in the place of object `id`, already settled (each fd of it, or its working fd),
// with the same close-on-exec flags; closes `fd`.
static void resettle(int fd, uint32_t id, int work_fd, const char *what) {
  if (slots_at[id] == slots_at[id + 1] && dup3(fd, work_fd, O_CLOEXEC) < 0) fail("%s: dup3 to fd %d: %s", what, work_fd, strerror(errno));
  for (uint32_t i = slots_at[id]; i < slots_at[id + 1]; i++) {
    if (dup3(fd, slots[i].fd, slots[i].cloexec ? O_CLOEXEC : 0) < 0) fail("%s: dup3 to fd %d: %s", what, slots[i].fd, strerror(errno));
  }
  close(fd);
}

static int settle(int fd, uint32_t id, int cloexec_set, const char *what) {
  int cloexec = 0, home = home_of(id, &cloexec);
  if (home < 0) return to_work(fd, what);
  if (fd != home) {
    if (dup3(fd, home, cloexec ? O_CLOEXEC : 0) < 0) fail("%s: dup3 to fd %d: %s", what, home, strerror(errno));
    close(fd);
  } else if (cloexec != cloexec_set) {
    if (fcntl(fd, F_SETFD, cloexec ? FD_CLOEXEC : 0) < 0) fail("%s: F_SETFD fd %d: %s", what, fd, strerror(errno));
  }
  for (uint32_t i = slots_at[id] + 1; i < slots_at[id + 1]; i++) {
    if (dup3(home, slots[i].fd, slots[i].cloexec ? O_CLOEXEC : 0) < 0) fail("%s: dup3 to fd %d: %s", what, slots[i].fd, strerror(errno));
  }
  return home;
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

// Writes `data` as the file's contents, leaving every block of zeros a hole (lseek past it,
// ftruncate to the length at the end), so a sparse file comes back sparse (SEEK_HOLE and
// SEEK_DATA answer as before) and takes no room for its holes.
#define SPARSE_BLOCK 4096
static void write_sparse(int fd, const uint8_t *data, uint32_t len, const char *what) {
  static const uint8_t zeros[SPARSE_BLOCK];
  for (uint32_t at = 0; at < len;) {
    uint32_t n = len - at < SPARSE_BLOCK ? len - at : SPARSE_BLOCK;
    if (memcmp(data + at, zeros, n) == 0) {
      at += n;
      continue;
    }
    // Data up to the next block of zeros, in one write.
    uint32_t end = at + n;
    while (end < len) {
      uint32_t m = len - end < SPARSE_BLOCK ? len - end : SPARSE_BLOCK;
      if (memcmp(data + end, zeros, m) == 0) break;
      end += m;
    }
    if (lseek(fd, (off_t)at, SEEK_SET) < 0) fail("%s: lseek to %u: %s", what, at, strerror(errno));
    write_all(fd, data + at, end - at, what);
    at = end;
  }
  if (ftruncate(fd, (off_t)len) < 0) fail("%s: ftruncate to %u: %s", what, len, strerror(errno));
}

static void seek_to(int fd, uint64_t pos, const char *what) {
  if (pos == 0) return;
  if (lseek(fd, (off_t)pos, SEEK_SET) < 0 && errno != ESPIPE) fail("%s: lseek to %llu: %s", what, (unsigned long long)pos, strerror(errno));
}

// Sets the status flags fcntl can change (O_APPEND, O_NONBLOCK, O_DIRECT, O_NOATIME, O_ASYNC).
// The "ino:" line of /proc/PID/fdinfo/FD (read without touching the file's filesystem).
static unsigned long long fdinfo_ino(const char *fdinfo) {
  char buf[4096];
  int fd = open(fdinfo, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *line = strstr(buf, "\nino:");
  return line ? strtoull(line + 5, NULL, 10) : 0;
}

// Whether a process other than this one has the fifo open as `keeper` does: an fd whose link
// names the same path and whose fdinfo names the same inode. Links and fdinfo are read from
// /proc only, so a process holding a file of a hung filesystem cannot block this.
static int fifo_held_elsewhere(int keeper, const char *path, const char *what) {
  char self_link[64], self_info[64], target[4096], link[4096];
  snprintf(self_link, sizeof self_link, "/proc/self/fd/%d", keeper);
  snprintf(self_info, sizeof self_info, "/proc/self/fdinfo/%d", keeper);
  ssize_t tn = readlink(self_link, target, sizeof target - 1);
  unsigned long long ino = fdinfo_ino(self_info);
  if (tn < 0 || ino == 0) fail("%s: fifo %s: cannot read its own fd in /proc: %s", what, path, strerror(errno));
  target[tn] = 0;
  DIR *procs = opendir("/proc");
  if (!procs) fail("%s: fifo %s: opendir /proc: %s", what, path, strerror(errno));
  pid_t self = getpid();
  int held = 0;
  struct dirent *p;
  while (!held && (p = readdir(procs))) {
    char *end;
    long pid = strtol(p->d_name, &end, 10);
    if (*end || pid <= 0 || pid == self) continue;
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/fd", pid);
    DIR *fds = opendir(dir);
    if (!fds) continue;  // gone meanwhile, or a kernel thread
    struct dirent *f;
    while (!held && (f = readdir(fds))) {
      if (f->d_name[0] == '.') continue;
      char name[128], info[128];
      snprintf(name, sizeof name, "/proc/%ld/fd/%s", pid, f->d_name);
      ssize_t n = readlink(name, link, sizeof link - 1);
      if (n != tn || memcmp(link, target, (size_t)n) != 0) continue;
      snprintf(info, sizeof info, "/proc/%ld/fdinfo/%s", pid, f->d_name);
      held = fdinfo_ino(info) == ino;
    }
    closedir(fds);
  }
  closedir(procs);
  return held;
}

static void set_status_flags(int fd, int flags, const char *what) {
  if (fcntl(fd, F_SETFL, flags) < 0) fail("%s: F_SETFL: %s", what, strerror(errno));
}

// Opens `path` with the saved flags; close-on-exec as `cloexec` says (that flag is the fd's,
// not the file's: it comes from the fd table). Returns the new fd, wherever it landed.
static int open_path(const char *path, int flags, int cloexec, const char *what) {
  if (flags & REFUSED_FLAGS) fail("%s: open flags 0%o include O_CREAT, O_EXCL, O_TRUNC or O_NOCTTY", what, flags);
  // A file made with O_TMPFILE keeps both of its bits in its flags (F_GETFL shows them); opened
  // by a path with them, the open would make a new file in a directory, or fail (ENOTDIR).
  if (flags & TMPFILE_BIT) flags &= ~(TMPFILE_BIT | O_DIRECTORY);
  int fd = open(path, (flags & ~O_CLOEXEC) | (cloexec ? O_CLOEXEC : 0));
  if (fd < 0) fail("%s: open %s: %s", what, path, strerror(errno));
  return fd;
}

// More open file descriptions of one pipe than its two ends (a task that opened
// /proc/self/fd/N of an end): each is reopened the same way, through /proc/self/fd of the new
// pipe, while both of its ends are still open (so the open never waits for the other side).
// Payload: u32 count, then per description u32 object id, i32 open flags (with the access mode).
static void open_pipe_extras(const int p[2], int *object_fd, uint32_t objects, const char *what) {
  uint32_t count = u32("extra description count");
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", p[0]);
  for (uint32_t i = 0; i < count; i++) {
    uint32_t id = u32("extra description");
    int flags = i32("extra description flags");
    if (id == 0 || id > objects) fail("%s: extra description id out of range", what);
    if (object_fd[id] >= 0) fail("%s: files/%u is planned twice", what, id);
    char one[64];
    snprintf(one, sizeof one, "%s (files/%u)", what, id);
    object_fd[id] = settle(open_path(path, flags, 0, one), id, 0, one);
  }
}

// ---- the task's filesystem credentials ----
//
// Plan flags: the checkpoint was made on this boot (dev and inode are compared too); the
// user allowed replaced files (no identity check; the credentials still apply).
#define PLAN_SAME_BOOT 1u
#define PLAN_ALLOW_REPLACED 2u
#define PLAN_TREE_COMMANDS 4u  // a task of a tree: serve the server's commands (tree.c) before closing
#define PLAN_STORED_BY_ROOT 8u  // root alone stored the checkpoint (lib/restore/owner.ts)
static uint32_t plan_flags;

struct creds {
  uid_t fsuid, euid;
  gid_t fsgid, egid;
  int ngroups;
  gid_t *groups;
  struct __user_cap_data_struct caps[2];
};
static struct creds own;  // the stub's (the server's), put back once the files are open
static struct creds task;  // the saved task's: fsuid, fsgid, groups; caps[].effective

static void get_caps(struct __user_cap_data_struct caps[2]) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  if (syscall(SYS_capget, &h, caps) < 0) fail("capget: %s", strerror(errno));
}
static void set_caps(struct __user_cap_data_struct caps[2], const char *why) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  if (syscall(SYS_capset, &h, caps) < 0) fail("capset (%s): %s", why, strerror(errno));
}

// setfsuid and setfsgid report no error: the id is read back (a call with -1 changes nothing).
static void set_fs_ids(uid_t uid, gid_t gid, const char *why) {
  setfsgid(gid);
  if ((gid_t)setfsgid((gid_t)-1) != gid) fail("setfsgid(%u) (%s) was refused", (unsigned)gid, why);
  setfsuid(uid);
  if ((uid_t)setfsuid((uid_t)-1) != uid) fail("setfsuid(%u) (%s) was refused", (unsigned)uid, why);
}

// Reads the task's credentials from the plan and keeps the stub's own.
static void read_creds(void) {
  task.fsuid = u32("fsuid");
  task.fsgid = u32("fsgid");
  uint32_t lo = u32("cap_effective"), hi = u32("cap_effective");
  task.caps[0].effective = lo;
  task.caps[1].effective = hi;
  uint32_t n = u32("group count");
  if (n > 65536) fail("plan: %u groups is more than NGROUPS_MAX", n);
  task.ngroups = (int)n;
  task.groups = calloc(n ? n : 1, sizeof(gid_t));
  if (!task.groups) fail("out of memory");
  for (uint32_t i = 0; i < n; i++) task.groups[i] = u32("group");
  own.fsuid = (uid_t)setfsuid((uid_t)-1);
  own.fsgid = (gid_t)setfsgid((gid_t)-1);
  own.euid = geteuid();
  own.egid = getegid();
  own.ngroups = getgroups(0, NULL);
  if (own.ngroups < 0) fail("getgroups: %s", strerror(errno));
  own.groups = calloc(own.ngroups ? (size_t)own.ngroups : 1, sizeof(gid_t));
  if (!own.groups || getgroups(own.ngroups, own.groups) < 0) fail("getgroups: %s", strerror(errno));
  get_caps(own.caps);
}

// The effective ids too: the kernel records them in what the stub makes for the task (a UNIX
// socket's SO_PEERCRED, from its listen(), socketpair() or connect(), shows the maker's euid
// and egid to every peer), so a user's restored server must not answer its clients as root.
// The fs ids stand for the effective ones (the plan carries no others; they differ only in a
// task that called setfsuid itself). The real and saved ids stay the restorer's: no user may
// signal the stub, and it can take its own ids back.
static void set_effective_ids(uid_t uid, gid_t gid, const char *why) {
  if (syscall(SYS_setresgid, (gid_t)-1, gid, (gid_t)-1) < 0) fail("setresgid(-1, %u, -1) (%s): %s", (unsigned)gid, why, strerror(errno));
  if (syscall(SYS_setresuid, (uid_t)-1, uid, (uid_t)-1) < 0) fail("setresuid(-1, %u, -1) (%s): %s", (unsigned)uid, why, strerror(errno));
}

// From here on, opens and creations are checked as the saved task's would be. The stub is
// single-threaded: the raw system calls change exactly its credentials.
static void become_task(void) {
  if (syscall(SYS_setgroups, (size_t)task.ngroups, task.groups) < 0) fail("setgroups to the task's %d groups: %s", task.ngroups, strerror(errno));
  set_effective_ids(task.fsuid, task.fsgid, "the task's");
  set_fs_ids(task.fsuid, task.fsgid, "the task's");
  struct __user_cap_data_struct caps[2];
  for (int i = 0; i < 2; i++) {
    caps[i] = own.caps[i];
    caps[i].effective = own.caps[i].permitted & task.caps[i].effective;
  }
  set_caps(caps, "the task's effective set");
}

static void become_restorer(void) {
  set_caps(own.caps, "the restorer's own");
  set_effective_ids(own.euid, own.egid, "the restorer's own");
  set_fs_ids(own.fsuid, own.fsgid, "the restorer's own");
  if (syscall(SYS_setgroups, (size_t)own.ngroups, own.groups) < 0) fail("setgroups back: %s", strerror(errno));
  // An effective uid going back to 0 raised every permitted capability: exactly the own again.
  set_caps(own.caps, "the restorer's own");
}

// ---- is it the saved file? ----

struct identity {
  uint32_t mode, uid, gid;
  uint64_t dev, ino;
  uint64_t btime_ns; // 0: not known (the filesystem keeps none, or an older save)
};

static struct identity read_identity(void) {
  struct identity id;
  id.mode = u32("inode_mode");
  id.uid = u32("uid");
  id.gid = u32("gid");
  id.dev = u64("dev");
  id.ino = u64("ino");
  id.btime_ns = u64("btime");
  return id;
}

// Whether fd is a file of /proc. Its inode numbers are made afresh for each process (a
// restored task's /proc/PID/fdinfo/N is a new inode): they say nothing about identity there.
static int on_procfs(int fd, const char *path, const char *what) {
  struct statfs fs;
  if (fstatfs(fd, &fs) < 0) fail("%s: fstatfs %s: %s", what, path, strerror(errno));
  return fs.f_type == PROC_SUPER_MAGIC;
}

// Refuses a reopened file that is not the one the task had: another type, owner or mode,
// or (on the boot that saved it) another device or inode, except on /proc (on_procfs). fd N
// names the task's fd.
static void check_identity(int fd, const struct identity *want, const char *path, const char *what) {
  if (plan_flags & PLAN_ALLOW_REPLACED) return;
  struct stat st;
  if (fstat(fd, &st) < 0) fail("%s: fstat %s: %s", what, path, strerror(errno));
  char why[200] = "";
  if ((st.st_mode & S_IFMT) != (want->mode & S_IFMT)) snprintf(why, sizeof why, "file type 0%o, saved 0%o", st.st_mode & S_IFMT, want->mode & S_IFMT);
  else if (st.st_uid != want->uid || st.st_gid != want->gid) snprintf(why, sizeof why, "owner %u:%u, saved %u:%u", (unsigned)st.st_uid, (unsigned)st.st_gid, want->uid, want->gid);
  else if ((st.st_mode & 07777) != (want->mode & 07777)) snprintf(why, sizeof why, "mode 0%o, saved 0%o", st.st_mode & 07777, want->mode & 07777);
  else if ((plan_flags & PLAN_SAME_BOOT) && !on_procfs(fd, path, what) && ((uint64_t)st.st_dev != want->dev || (uint64_t)st.st_ino != want->ino)) {
    snprintf(why, sizeof why, "device %llu inode %llu, saved device %llu inode %llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino, (unsigned long long)want->dev, (unsigned long long)want->ino);
  } else if ((plan_flags & PLAN_SAME_BOOT) && want->btime_ns != 0) {
    // The same inode number can belong to a new file once the saved one is removed: its
    // birth time tells them apart where the filesystem keeps one.
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_BTIME, &sx) < 0) fail("%s: statx %s: %s", what, path, strerror(errno));
    uint64_t born = (uint64_t)sx.stx_btime.tv_sec * 1000000000ull + sx.stx_btime.tv_nsec;
    if ((sx.stx_mask & STATX_BTIME) && born != want->btime_ns) {
      snprintf(why, sizeof why, "inode %llu born at %llu ns, saved born at %llu ns: a new file given the saved inode number", (unsigned long long)st.st_ino, (unsigned long long)born, (unsigned long long)want->btime_ns);
    }
  }
  if (!why[0]) return;
  fail("%s: %s is not the saved file (%s); if it was replaced on purpose, restore with --allow-replaced", what, path, why);
}

// An unlinked file comes back with its contents in an O_TMPFILE of its old directory: it
// never has a name anyone could open, rename or link (O_EXCL: not even later), and it is
// created with the task's credentials, so only where the task could write. It is reopened
// with the saved flags, then given the saved owner and mode as the task could: the kernel
// refuses an owner the task could not give, and drops a setgid bit it could not set.
static int open_unlinked(const char *path, int flags, int cloexec, mode_t mode, uid_t uid, gid_t gid, const uint8_t *data, uint32_t len, const char *what) {
  char dir[4200];
  const char *slash = strrchr(path, '/');
  if (!slash) fail("%s: %s is not an absolute path", what, path);
  snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
  // A description the task made with O_TMPFILE (tmpfile(3)) is the unnamed file itself, made
  // with its access mode (O_TMPFILE needs write access), so its flags are the saved ones.
  int made_so = (flags & TMPFILE_BIT) && (flags & O_ACCMODE) != O_RDONLY;
  int tmp = open(dir, O_TMPFILE | O_EXCL | (made_so ? flags & O_ACCMODE : O_RDWR) | O_CLOEXEC, 0600);
  if (tmp < 0) fail("%s: recreate %s as an unnamed file in %s: %s", what, path, dir, strerror(errno));
  tmp = to_work(tmp, what);
  write_sparse(tmp, data, len, what);
  int reopened = tmp;
  if (made_so) {
    // Status flags after the contents (a write with O_APPEND would go to the end).
    set_status_flags(tmp, flags, what);
    if (fcntl(tmp, F_SETFD, cloexec ? FD_CLOEXEC : 0) < 0) fail("%s: F_SETFD: %s", what, strerror(errno));
  } else {
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", tmp);
    reopened = open_path(self, flags, cloexec, what);
  }
  struct stat made;
  if (fstat(tmp, &made) < 0) fail("%s: fstat the recreated %s: %s", what, path, strerror(errno));
  if ((made.st_uid != uid || made.st_gid != gid) && fchown(tmp, uid, gid) < 0) {
    fail("%s: give the recreated %s its saved owner %u:%u: %s", what, path, (unsigned)uid, (unsigned)gid, strerror(errno));
  }
  if (fchmod(tmp, mode & 07777) < 0) fail("%s: give the recreated %s its saved mode 0%o: %s", what, path, mode & 07777, strerror(errno));
  if (reopened != tmp) close(tmp);
  return reopened;
}

// ---- signalfd, timerfd, inotify, epoll ----

#ifndef TFD_IOC_SET_TICKS
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)
#endif
// More unused inotify wd numbers than this before a watch is refused (each costs two calls).
#define MAX_WD_GAP (1 << 20)

#define MAPPED_FILE_ROOM 65536

// Makes RLIMIT_NOFILE allow fd number `fd` (an epoll item's number may lie above them all).
static void room_for(int fd, const char *what) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) < 0) fail("%s: getrlimit(NOFILE): %s", what, strerror(errno));
  if ((rlim_t)fd < r.rlim_cur) return;
  r.rlim_cur = (rlim_t)fd + 1;
  if (r.rlim_max < r.rlim_cur) r.rlim_max = r.rlim_cur;
  if (setrlimit(RLIMIT_NOFILE, &r) < 0) fail("%s: setrlimit(NOFILE, %d): %s", what, fd + 1, strerror(errno));
}

static int open_signalfd(uint64_t mask, int flags, const char *what) {
  int fd = (int)syscall(SYS_signalfd4, -1, &mask, sizeof mask, flags & O_NONBLOCK);
  if (fd < 0) fail("%s: signalfd: %s", what, strerror(errno));
  return fd;
}

static struct timespec ns_to_timespec(uint64_t ns) {
  return (struct timespec){(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
}

// A timer first expires `value_ns` from now (0: disarmed); with TFD_TIMER_ABSTIME that is made
// absolute on its clock. Pending expirations go back with TFD_IOC_SET_TICKS, after settime
// (which clears them).
static int open_timerfd(int clockid, int flags, int settime_flags, uint64_t value_ns, uint64_t interval_ns, uint64_t ticks, const char *what) {
  int fd = timerfd_create(clockid, flags & TFD_NONBLOCK);
  if (fd < 0) fail("%s: timerfd_create(clock %d): %s", what, clockid, strerror(errno));
  if (value_ns) {
    struct itimerspec its = {ns_to_timespec(interval_ns), ns_to_timespec(value_ns)};
    if (settime_flags & TFD_TIMER_ABSTIME) {
      int base = clockid == CLOCK_REALTIME_ALARM ? CLOCK_REALTIME : clockid == CLOCK_BOOTTIME_ALARM ? CLOCK_BOOTTIME : clockid;
      struct timespec now;
      if (clock_gettime(base, &now) < 0) fail("%s: clock_gettime(%d): %s", what, base, strerror(errno));
      its.it_value.tv_sec += now.tv_sec;
      its.it_value.tv_nsec += now.tv_nsec;
      if (its.it_value.tv_nsec >= 1000000000) {
        its.it_value.tv_sec++;
        its.it_value.tv_nsec -= 1000000000;
      }
    }
    if (timerfd_settime(fd, settime_flags, &its, NULL) < 0) fail("%s: timerfd_settime: %s", what, strerror(errno));
  }
  if (ticks && ioctl(fd, TFD_IOC_SET_TICKS, &ticks) < 0) fail("%s: TFD_IOC_SET_TICKS %llu: %s", what, (unsigned long long)ticks, strerror(errno));
  return fd;
}

// Reads and drops every queued event (the IN_IGNORED of placeholder watches).
static void drain_inotify(int fd, const char *what) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) fail("%s: F_SETFL: %s", what, strerror(errno));
  char buf[4096] __attribute__((aligned(8)));
  while (read(fd, buf, sizeof buf) > 0) continue;
  if (errno != EAGAIN) fail("%s: read placeholder events: %s", what, strerror(errno));
  set_status_flags(fd, fl, what);
}

// Watches come in wd order with their saved wd. The kernel hands out wds in increasing order,
// so a gap (a watch the task removed) is skipped by adding and removing a placeholder watch on
// a memfd of our own, which no watch of the task can name.
static int open_inotify(int flags, uint32_t count, const char *what) {
  int fd = inotify_init1(flags & IN_NONBLOCK);
  if (fd < 0) fail("%s: inotify_init1: %s", what, strerror(errno));
  int next = 1, placeholder = -1;
  char placeholder_path[64];
  for (uint32_t i = 0; i < count; i++) {
    int wd = i32("wd");
    uint32_t mask = u32("mask");
    char *path = string("path");
    if (wd < next) fail("%s/watches/%d: watches are not in increasing wd order", what, wd);
    if (wd - next > MAX_WD_GAP) fail("%s/watches/%d: %d unused wd numbers before it are too many to skip", what, wd, wd - next);
    while (next < wd) {
      if (placeholder < 0) {
        placeholder = (int)syscall(SYS_memfd_create, "ckptfs-wd-placeholder", 0u);
        if (placeholder < 0) fail("%s: memfd_create: %s", what, strerror(errno));
        placeholder = to_work(placeholder, what);
        snprintf(placeholder_path, sizeof placeholder_path, "/proc/self/fd/%d", placeholder);
      }
      int got = inotify_add_watch(fd, placeholder_path, IN_ATTRIB);
      if (got < 0) fail("%s/watches/%d: placeholder watch: %s", what, wd, strerror(errno));
      if (got != next) fail("%s/watches/%d: the kernel handed out wd %d, not %d", what, wd, got, next);
      if (inotify_rm_watch(fd, got) < 0) fail("%s/watches/%d: remove placeholder watch %d: %s", what, wd, got, strerror(errno));
      next++;
    }
    int got = inotify_add_watch(fd, path, mask);
    if (got < 0) fail("%s/watches/%d: inotify_add_watch %s: %s", what, wd, path, strerror(errno));
    if (got != wd) fail("%s/watches/%d: inotify_add_watch %s gave wd %d (is the inode watched twice?)", what, wd, path, got);
    next = wd + 1;
    free(path);
  }
  if (placeholder >= 0) {
    close(placeholder);
    drain_inotify(fd, what);
  }
  return fd;
}

// Epoll items are added once every fd of the task is in place (reference/003).
struct epoll_item {
  int32_t tfd;
  uint32_t target;  // the object id of the watched file
  uint32_t events;
  uint64_t data;
};
struct epoll_set {
  uint32_t id;
  uint32_t count;
  struct epoll_item *items;
};
static struct epoll_set *epoll_sets;
static size_t epoll_set_count;

static void defer_epoll_items(uint32_t id, uint32_t count, const char *what) {
  if (count > (size_t)(plan_end - plan) / 20) fail("%s: %u items do not fit in the plan", what, count);
  struct epoll_set *grown = realloc(epoll_sets, (epoll_set_count + 1) * sizeof *epoll_sets);
  if (!grown) fail("out of memory");
  epoll_sets = grown;
  struct epoll_set *set = &epoll_sets[epoll_set_count++];
  set->id = id;
  set->count = count;
  set->items = calloc(count ? count : 1, sizeof *set->items);
  if (!set->items) fail("out of memory");
  for (uint32_t i = 0; i < count; i++) {
    set->items[i].tfd = i32("item fd");
    set->items[i].target = u32("item target");
    set->items[i].events = u32("item events");
    set->items[i].data = u64("item data");
  }
}

// An fd moves from `from` to `to`: every reference to it follows.
static void retarget(int from, int to, int *object_fd, uint32_t objects) {
  for (uint32_t i = 1; i <= objects; i++)
    if (object_fd[i] == from) object_fd[i] = to;
  if (reply_fd == from) reply_fd = to;
}

// The kernel keys an item by (file, fd number): the watched file goes at the number the item
// was added with. Where the task holds another file at that number, that file is set aside
// and put back with its close-on-exec flag; a number the task does not use is closed again
// (the item stays, bound to the file, as it was in the task).
static void add_epoll_item(uint32_t epoll_id, const struct epoll_item *item, int *object_fd, uint32_t objects, const char *what) {
  struct epoll_event ev = {.events = item->events, .data.u64 = item->data};
  int tfd = item->tfd;
  pid_t self = getpid();
  if (syscall(SYS_kcmp, self, self, KCMP_FILE, tfd, object_fd[item->target]) == 0) {
    if (epoll_ctl(object_fd[epoll_id], EPOLL_CTL_ADD, tfd, &ev) < 0) fail("%s: epoll_ctl(ADD, fd %d): %s", what, tfd, strerror(errno));
    return;
  }
  int held = fcntl(tfd, F_GETFD), aside = -1;
  if (held >= 0) {
    room_for(next_work, what);
    aside = fcntl(tfd, F_DUPFD, next_work);
    if (aside < 0) fail("%s: F_DUPFD fd %d: %s", what, tfd, strerror(errno));
    next_work = aside + 1;
    // The file at tfd may be an object in use here (the epoll set itself, at its home).
    retarget(tfd, aside, object_fd, objects);
    if (tfd >= work_base) aside = -1;  // one of ours: it lives on at its new number
  }
  room_for(tfd, what);
  if (dup2(object_fd[item->target], tfd) < 0) fail("%s: dup2 to fd %d: %s", what, tfd, strerror(errno));
  if (epoll_ctl(object_fd[epoll_id], EPOLL_CTL_ADD, tfd, &ev) < 0) fail("%s: epoll_ctl(ADD, fd %d): %s", what, tfd, strerror(errno));
  if (aside >= 0) {
    if (dup3(aside, tfd, held & FD_CLOEXEC ? O_CLOEXEC : 0) < 0) fail("%s: dup3 back to fd %d: %s", what, tfd, strerror(errno));
    retarget(aside, tfd, object_fd, objects);
    close(aside);
  } else {
    close(tfd);
  }
}

static void add_epoll_items(int *object_fd, uint32_t objects) {
  for (size_t s = 0; s < epoll_set_count; s++) {
    const struct epoll_set *set = &epoll_sets[s];
    for (uint32_t i = 0; i < set->count; i++) {
      const struct epoll_item *item = &set->items[i];
      char what[64];
      snprintf(what, sizeof what, "files/%u/items/%u", set->id, i);
      if (item->tfd < 0) fail("%s: fd %d is negative", what, item->tfd);
      if (item->target == 0 || item->target > objects || object_fd[item->target] < 0) fail("%s: names files/%u, which was not opened", what, item->target);
      add_epoll_item(set->id, item, object_fd, objects, what);
    }
  }
}

// ---- one function per kind of object ----
//
// Each opens one object of the plan (its payload is next in the plan) and puts it at its
// home (settle), or, for a pipe, every description of it. `cloexec` is the home fd's flag,
// which only an open by path needs (settle sets it for the others).
#define UNUSED __attribute__((unused))

// A task may hold a file it can no longer open itself: it opened it before it changed its ids
// (a daemon's log, zdtm pid00). Opened as the task, that fails with EACCES. The restorer opens
// it in the task's place only when that gives the task nothing it did not have: root alone
// stored the checkpoint (a user's could name any file), it was made on this boot and files may
// not have been replaced, and the path names a regular file that is the saved one (type,
// owner, mode, device, inode, birth time): looked up with O_PATH (opening nothing), checked,
// and only then opened, through /proc/self/fd. Anything else fails as the task's open did.
static int open_path_or_saved(const char *path, int flags, int cloexec, const struct identity *saved, const char *what) {
  if (flags & REFUSED_FLAGS) fail("%s: open flags 0%o include O_CREAT, O_EXCL, O_TRUNC or O_NOCTTY", what, flags);
  if (flags & TMPFILE_BIT) flags &= ~(TMPFILE_BIT | O_DIRECTORY);
  int fd = open(path, (flags & ~O_CLOEXEC) | (cloexec ? O_CLOEXEC : 0));
  if (fd >= 0) return fd;
  int e = errno;
  int trusted = (plan_flags & PLAN_STORED_BY_ROOT) && (plan_flags & PLAN_SAME_BOOT) && !(plan_flags & PLAN_ALLOW_REPLACED);
  if ((e != EACCES && e != EPERM) || !trusted || (saved->mode & S_IFMT) != S_IFREG) fail("%s: open %s: %s", what, path, strerror(e));
  become_restorer();
  int found = open(path, O_PATH | O_CLOEXEC);
  if (found < 0) fail("%s: open %s: %s (as the task); look it up as the restorer: %s", what, path, strerror(e), strerror(errno));
  // /proc's inode numbers say nothing of identity (on_procfs): never there.
  if (on_procfs(found, path, what)) fail("%s: open %s: %s (as the task), and a file of /proc is not opened in its place", what, path, strerror(e));
  check_identity(found, saved, path, what);
  char self[64];
  snprintf(self, sizeof self, "/proc/self/fd/%d", found);
  fd = open(self, (flags & ~O_CLOEXEC) | (cloexec ? O_CLOEXEC : 0));
  if (fd < 0) fail("%s: open %s: %s (as the task); as the restorer: %s", what, path, strerror(e), strerror(errno));
  close(found);
  become_task();
  return fd;
}

static void open_path_object(uint32_t id, int cloexec, const char *what) {
  int flags = i32("flags");
  uint64_t pos = u64("pos");
  char *path = string("path");
  struct identity saved = read_identity();
  int fd = open_path_or_saved(path, flags, cloexec, &saved, what);
  check_identity(fd, &saved, path, what);
  fd = settle(fd, id, cloexec, what);
  seek_to(fd, pos, what);
  object_fd[id] = fd;
  free(path);
}

static void open_unlinked_object(uint32_t id, int cloexec, const char *what) {
  int flags = i32("flags");
  uint32_t mode = u32("mode"), uid = u32("uid"), gid = u32("gid");
  uint64_t pos = u64("pos");
  char *path = string("path");
  uint32_t len;
  const uint8_t *data = blob("contents", &len);
  // Another open file description of the same inode, made by an earlier record: this
  // one is opened through it, so both are one file again.
  uint32_t same_as = u32("same inode as");
  if (same_as > objects) fail("%s: same inode as files/%u: out of range", what, same_as);
  int fd;
  if (same_as) {
    if (object_fd[same_as] < 0) fail("%s: same inode as files/%u, which is not open yet", what, same_as);
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", object_fd[same_as]);
    fd = settle(open_path(self, flags, cloexec, what), id, cloexec, what);
  } else {
    fd = settle(open_unlinked(path, flags, cloexec, mode, uid, gid, data, len, what), id, cloexec, what);
  }
  seek_to(fd, pos, what);
  object_fd[id] = fd;
  free(path);
}

static void open_memfd_object(uint32_t id, int cloexec UNUSED, const char *what) {
  int flags = i32("flags");
  uint64_t pos = u64("pos");
  char *name = string("name");
  uint32_t len;
  const uint8_t *data = blob("contents", &len);
  // Permission bits only: the memfd is made by root here, never setuid or setgid.
  uint32_t mode = u32("mode") & 0777;
  int fd = (int)syscall(SYS_memfd_create, name, 0u);
  if (fd < 0) fail("%s: memfd_create: %s", what, strerror(errno));
  fd = settle(fd, id, 0, what);
  if (fchmod(fd, mode) < 0) fail("%s: fchmod %o: %s", what, mode, strerror(errno));
  write_all(fd, data, len, what);
  seek_to(fd, pos, what);
  set_status_flags(fd, flags, what);
  object_fd[id] = fd;
  free(name);
}

static void open_pipe_object(uint32_t id UNUSED, int cloexec UNUSED, const char *what) {
  (void)u64("pipe id");
  uint32_t len;
  const uint8_t *data = blob("buffered", &len);
  uint32_t capacity = u32("capacity");
  uint32_t read_id = u32("read end");
  int read_flags = i32("read flags");
  uint32_t write_id = u32("write end");
  int write_flags = i32("write flags");
  if (read_id > objects) fail("%s: read end id out of range", what);
  if (write_id > objects) fail("%s: write end id out of range", what);
  if ((read_id && object_fd[read_id] >= 0) || (write_id && object_fd[write_id] >= 0)) fail("%s: an end is planned twice", what);
  int p[2];
  if (pipe2(p, 0) < 0) fail("%s: pipe2: %s", what, strerror(errno));
  // The ends stay where pipe2 put them only if both are at home: settling one must
  // never overwrite the other.
  if (p[0] != (read_id ? home_of(read_id, NULL) : -1) || p[1] != (write_id ? home_of(write_id, NULL) : -1)) {
    p[0] = to_work(p[0], what);
    p[1] = to_work(p[1], what);
  }
  // The saved capacity (0: not recorded; then at least room for the bytes). Never less than
  // the bytes: writing them would block.
  if (capacity && capacity < len) fail("%s: %u bytes buffered, capacity %u", what, len, capacity);
  uint32_t want = capacity ? capacity : len > 65536 ? len : 0;
  if (want && fcntl(p[1], F_SETPIPE_SZ, (int)want) < 0) fail("%s: F_SETPIPE_SZ %u: %s", what, want, strerror(errno));
  write_all(p[1], data, len, what);
  open_pipe_extras(p, object_fd, objects, what);
  if (read_id) {
    set_status_flags(p[0], read_flags, what);
    object_fd[read_id] = settle(p[0], read_id, 0, what);
  } else {
    close(p[0]);
  }
  if (write_id) {
    set_status_flags(p[1], write_flags, what);
    object_fd[write_id] = settle(p[1], write_id, 0, what);
  } else {
    close(p[1]);
  }
}

static void open_fifo_object(uint32_t id, int cloexec, const char *what) {
  int flags = i32("flags");
  char *path = string("path");
  struct identity saved = read_identity();
  uint32_t len;
  const uint8_t *data = blob("buffered", &len);
  // A temporary read-write end: neither the open below nor the refill can block. Held
  // from here on, it also keeps the fifo's buffer from vanishing while this decides.
  int keeper = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (keeper < 0) fail("%s: open fifo %s: %s", what, path, strerror(errno));
  keeper = to_work(keeper, what);
  check_identity(keeper, &saved, path, what);
  // Exactly once: if another process holds the fifo open, the kernel kept its buffer
  // (the saved bytes are still there, or were read by then); only a fifo nobody held
  // lost its buffer and gets the saved bytes back.
  if (len > 0 && !fifo_held_elsewhere(keeper, path, what)) write_all(keeper, data, len, what);
  int fd = open_path(path, flags | O_NONBLOCK, cloexec, what);
  check_identity(fd, &saved, path, what);
  set_status_flags(fd, flags, what);
  close(keeper);
  object_fd[id] = settle(fd, id, cloexec, what);
  free(path);
}

static void open_eventfd_object(uint32_t id, int cloexec UNUSED, const char *what) {
  uint64_t count = u64("count");
  int flags = i32("flags");
  int fd = eventfd(0, flags & (EFD_NONBLOCK | EFD_SEMAPHORE));
  if (fd < 0) fail("%s: eventfd: %s", what, strerror(errno));
  fd = settle(fd, id, 0, what);
  if (count && write(fd, &count, 8) != 8) fail("%s: eventfd write: %s", what, strerror(errno));
  object_fd[id] = fd;
}

static void open_signalfd_object(uint32_t id, int cloexec UNUSED, const char *what) {
  uint64_t mask = u64("mask");
  int flags = i32("flags");
  object_fd[id] = settle(open_signalfd(mask, flags, what), id, 0, what);
}

static void open_timerfd_object(uint32_t id, int cloexec UNUSED, const char *what) {
  int clockid = i32("clockid"), flags = i32("flags"), settime_flags = i32("settime flags");
  uint64_t value_ns = u64("value_ns"), interval_ns = u64("interval_ns"), ticks = u64("ticks");
  object_fd[id] = settle(open_timerfd(clockid, flags, settime_flags, value_ns, interval_ns, ticks, what), id, 0, what);
}

static void open_inotify_object(uint32_t id, int cloexec UNUSED, const char *what) {
  int flags = i32("flags");
  uint32_t count = u32("watch count");
  object_fd[id] = settle(open_inotify(flags, count, what), id, 0, what);
}

static void open_epoll_object(uint32_t id, int cloexec UNUSED, const char *what) {
  int flags = i32("flags");
  uint32_t count = u32("item count");
  int fd = epoll_create1(0);
  if (fd < 0) fail("%s: epoll_create1: %s", what, strerror(errno));
  fd = settle(fd, id, 0, what);
  if (flags & O_NONBLOCK) set_status_flags(fd, O_NONBLOCK, what);
  object_fd[id] = fd;
  defer_epoll_items(id, count, what);
}

// A fanotify group with its saved fanotify_init flags, and its marks added back by path in the
// plan's order: the mask, then the ignored mask (a second call: the kernel takes them one at a
// time). Refusals name a mark by its number in the tree (marks/N). As every
// open here, with the task's credentials: admin-only flags and mount or filesystem marks need
// the CAP_SYS_ADMIN the task had.
#define FANOTIFY_MARK_FLAGS (FAN_MARK_DONT_FOLLOW | FAN_MARK_MOUNT | FAN_MARK_FILESYSTEM | FAN_MARK_EVICTABLE)
#define FANOTIFY_IGNORE_FLAGS (FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_IGNORE)
static void open_fanotify_object(uint32_t id, int cloexec UNUSED, const char *what) {
  uint32_t init_flags = u32("init flags"), event_flags = u32("event flags");
  int status = i32("status flags");
  uint32_t count = u32("mark count");
  int fd = fanotify_init(init_flags, event_flags);
  if (fd < 0) fail("%s: fanotify_init(0x%x, 0%o): %s", what, init_flags, event_flags, strerror(errno));
  fd = settle(fd, id, (init_flags & FAN_CLOEXEC) != 0, what);
  for (uint32_t k = 0; k < count; k++) {
    uint32_t i = u32("mark number"), flags = u32("mark flags"), mask = u32("mask"), ignore_flags = u32("ignore flags"), ignored = u32("ignored mask");
    char *path = string("path");
    if (flags & ~FANOTIFY_MARK_FLAGS) fail("%s/marks/%u: mark flags 0x%x are not for adding a mark", what, i, flags);
    if (ignore_flags & ~FANOTIFY_IGNORE_FLAGS) fail("%s/marks/%u: ignore flags 0x%x are not for an ignored mask", what, i, ignore_flags);
    if (mask && fanotify_mark(fd, FAN_MARK_ADD | flags, mask, AT_FDCWD, path) < 0)
      fail("%s/marks/%u: fanotify_mark %s mask 0x%x: %s", what, i, path, mask, strerror(errno));
    if (ignored && fanotify_mark(fd, FAN_MARK_ADD | flags | ignore_flags, ignored, AT_FDCWD, path) < 0)
      fail("%s/marks/%u: fanotify_mark %s ignored mask 0x%x: %s", what, i, path, ignored, strerror(errno));
    free(path);
  }
  // O_NONBLOCK of the file may differ from the group's FAN_NONBLOCK (fcntl after init).
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) fail("%s: F_GETFL: %s", what, strerror(errno));
  set_status_flags(fd, (fl & ~O_NONBLOCK) | (status & O_NONBLOCK), what);
  object_fd[id] = fd;
}

// ---- UNIX sockets (lib/files/unixsock.ts) ----
//
// Each socket is one object. Its record makes the socket at its home, binds its name, sets its
// options and listens; a connected pair (stream, seqpacket, or datagrams connected to each
// other) is one socketpair(), made by the first of the two records, whose other end waits in
// the working area for the peer's record. What needs every socket in place is done in
// finish_unix_sockets, after the last record: queued messages are sent in (through the peer,
// from the saved sender, or from a socket of the stub's own), datagram sockets are connected,
// shutdowns made, names of sockets whose path had been unlinked removed again, and the status
// flags and peek offsets set. Everything runs with the task's credentials (become_task): a
// name is created as the task would create it, in a directory the task may write to.
enum unix_link { LINK_NONE = 0, LINK_PAIR = 1, LINK_CONNECT = 2, LINK_PEER_CLOSED = 3, LINK_PENDING = 4 };
enum unix_bind { BIND_NONE = 0, BIND_PATH = 1, BIND_ABSTRACT = 2 };

struct unix_socket {
  int made;               // the record was read
  int fd;                 // where it lives (its home, or the working area)
  int type, flags, link, shutdown_bits, peek_off;
  uint32_t peer;          // the peer's object id (LINK_PAIR, LINK_CONNECT; LINK_PENDING: the listener)
  uint32_t position;      // LINK_PENDING: its place in the listener's queue of connections (1: next)
  uint32_t via;           // LINK_PAIR: the listening socket that accepted it (its name is this socket's), or 0
  int rcvbuf, sndbuf, passcred;
  uint64_t rcvtimeo, sndtimeo;
  struct sockaddr_un addr;
  socklen_t addr_len;     // 0: no name
  char *dir;              // a relative name's directory (NULL: the name is not relative)
  int unlink_after;       // the path was unlinked at checkpoint: bound, then removed again
  int closed_end;         // LINK_PEER_CLOSED: the other end, closed once the queue is in
  uint32_t queued;        // messages, each u32 sender id + bytes + u32 count + ids of fds passed, at `queue` in the plan
  const uint8_t *queue;
};
static struct unix_socket *unix_sockets;  // by object id, made with the first socket record
static int *unix_pending;                 // object id -> the other end of a pair made for it (-1)

static struct unix_socket *unix_socket_of(uint32_t id) {
  if (!unix_sockets) {
    unix_sockets = calloc(objects + 1, sizeof *unix_sockets);
    unix_pending = malloc((objects + 1) * sizeof *unix_pending);
    if (!unix_sockets || !unix_pending) fail("out of memory");
    for (uint32_t i = 0; i <= objects; i++) unix_pending[i] = -1;
  }
  return &unix_sockets[id];
}

// A relative name is bound, connected to, sent to and unlinked in its directory: the stub
// goes there for the call (as the task: its search permission counts), then comes back.
static int enter_dir(const char *dir, const char *what) {
  if (!dir) return -1;
  int back = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (back < 0) fail("%s: open the working directory: %s", what, strerror(errno));
  if (chdir(dir) < 0) fail("%s: chdir %s to bind its relative name: %s", what, dir, strerror(errno));
  return back;
}

static void leave_dir(int back, const char *what) {
  if (back < 0) return;
  if (fchdir(back) < 0) fail("%s: back to the working directory: %s", what, strerror(errno));
  close(back);
}

static const char *type_name(int type) {
  return type == SOCK_STREAM ? "stream" : type == SOCK_DGRAM ? "dgram" : type == SOCK_SEQPACKET ? "seqpacket" : "?";
}

// The name as text for messages: the path, or @ and the abstract name (bytes shown as \xNN).
static const char *shown_name(const struct unix_socket *s, char *out, size_t size) {
  size_t len = s->addr_len - offsetof(struct sockaddr_un, sun_path), at = 0;
  const char *p = s->addr.sun_path;
  if (len > 0 && p[0] == 0) {
    snprintf(out, size, "@");
    at = 1;
    p++;
    len--;
  } else if (len > 0 && p[len - 1] == 0) {
    len--;
  }
  for (size_t i = 0; i < len && at + 5 < size; i++) {
    unsigned char c = (unsigned char)p[i];
    at += (size_t)snprintf(out + at, size - at, c >= 0x20 && c < 0x7f && c != '\\' ? "%c" : "\\x%02x", c);
  }
  out[at] = 0;
  return out;
}

// Whether a socket file is left over from a socket that no longer exists: connecting a datagram
// socket to it is refused with ECONNREFUSED only when no socket is bound to its inode (a live
// socket of another type answers EPROTOTYPE, a live datagram one accepts).
static int stale_socket_file(const struct sockaddr_un *addr, socklen_t len) {
  int probe = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return 0;
  int r = connect(probe, (const struct sockaddr *)addr, len);
  int e = errno;
  close(probe);
  return r < 0 && e == ECONNREFUSED;
}

static const char *file_kind(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFDIR: return "a directory";
    case S_IFLNK: return "a symbolic link";
    case S_IFIFO: return "a fifo";
    case S_IFCHR: return "a character device";
    case S_IFBLK: return "a block device";
    default: return "not a socket";
  }
}

// Binds a path name. A socket file already there that no socket uses any more (the saved
// process's own, left behind when it died) is removed first; anything else at the path
// (another file, a symbolic link, a socket in use) is refused and left alone. The file is
// created with the task's credentials and the saved permission bits.
static void bind_path(struct unix_socket *s, int fd, mode_t mode, const char *what) {
  char shown[400];
  struct stat st;
  const char *path = s->addr.sun_path;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) fail("%s: socket path %s is now %s: refused", what, shown_name(s, shown, sizeof shown), file_kind(st.st_mode));
    if (!stale_socket_file(&s->addr, s->addr_len)) fail("%s: socket path %s is in use by another socket: refused", what, shown_name(s, shown, sizeof shown));
    if (unlink(path) < 0) fail("%s: unlink the stale socket file %s: %s", what, shown_name(s, shown, sizeof shown), strerror(errno));
  } else if (errno != ENOENT) {
    fail("%s: lstat %s: %s", what, shown_name(s, shown, sizeof shown), strerror(errno));
  }
  mode_t old = umask(~mode & 0777);
  int r = bind(fd, (const struct sockaddr *)&s->addr, s->addr_len);
  int e = errno;
  umask(old);
  if (r < 0) fail("%s: bind %s: %s", what, shown_name(s, shown, sizeof shown), strerror(e));
}

// A name whose path was unlinked at checkpoint: bound at the saved path when nothing is there,
// else at a temporary name beside it; either is unlinked again once every socket is connected
// (finish_unix_sockets), so the socket has its name but no file on disk, as it had.
static void bind_unlinked(struct unix_socket *s, int fd, uint32_t id, const char *what) {
  char shown[400];
  struct stat st;
  if (lstat(s->addr.sun_path, &st) == 0 || errno != ENOENT) {
    char *slash = strrchr(s->addr.sun_path, '/');
    size_t dir = slash ? (size_t)(slash - s->addr.sun_path) : 0;
    char temp[sizeof s->addr.sun_path];
    int n = slash ? snprintf(temp, sizeof temp, "%.*s/.ckptfs-%d-%u", (int)dir, s->addr.sun_path, (int)getpid(), id)
                  : snprintf(temp, sizeof temp, ".ckptfs-%d-%u", (int)getpid(), id);
    if (n < 0 || (size_t)n >= sizeof temp) fail("%s: no room for a temporary name beside %s", what, shown_name(s, shown, sizeof shown));
    memcpy(s->addr.sun_path, temp, (size_t)n + 1);
    s->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
  }
  if (bind(fd, (const struct sockaddr *)&s->addr, s->addr_len) < 0) fail("%s: bind %s: %s", what, shown_name(s, shown, sizeof shown), strerror(errno));
  s->unlink_after = 1;
}

static void set_int_opt(int fd, int name, int value, const char *opt, const char *what) {
  if (setsockopt(fd, SOL_SOCKET, name, &value, sizeof value) < 0) fail("%s: setsockopt %s %d: %s", what, opt, value, strerror(errno));
}

static void set_timeo(int fd, int name, uint64_t us, const char *opt, const char *what) {
  struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
  if (setsockopt(fd, SOL_SOCKET, name, &tv, sizeof tv) < 0) fail("%s: setsockopt %s: %s", what, opt, strerror(errno));
}

// Buffer sizes first: a queue is sent in later, through them.
static void set_unix_options(const struct unix_socket *s, const char *what) {
  if (s->rcvbuf > 0) set_int_opt(s->fd, SO_RCVBUF, s->rcvbuf / 2, "SO_RCVBUF", what);
  if (s->sndbuf > 0) set_int_opt(s->fd, SO_SNDBUF, s->sndbuf / 2, "SO_SNDBUF", what);
  if (s->passcred) set_int_opt(s->fd, SO_PASSCRED, 1, "SO_PASSCRED", what);
  if (s->rcvtimeo) set_timeo(s->fd, SO_RCVTIMEO, s->rcvtimeo, "SO_RCVTIMEO", what);
  if (s->sndtimeo) set_timeo(s->fd, SO_SNDTIMEO, s->sndtimeo, "SO_SNDTIMEO", what);
}

// A connection its server accepted from a listening socket of the checkpoint is made again
// that way, in place of the socketpair: a client connects to the listener by name and the
// listener accepts it, so the accepted socket has the listener's name and the client sees it
// as its peer's (getsockname, getpeername), as they did. The listener has no connection
// waiting yet (those connect after), so the accept never waits. A task that may not connect
// to it (the socket file's mode) keeps the socketpair, whose ends have no names.
static void accept_again(uint32_t id, const char *what) {
  struct unix_socket *s = &unix_sockets[id], *l = &unix_sockets[s->via], *c = &unix_sockets[s->peer];
  char shown[400];
  if (!l->made || l->addr_len == 0 || l->type != s->type) fail("%s: files/%u is not a listening %s socket with a name", what, s->via, type_name(s->type));
  if (!c->made || c->link != LINK_PAIR || c->peer != id) fail("%s: its peer files/%u is not its other end", what, s->peer);
  int client = socket(AF_UNIX, s->type | SOCK_CLOEXEC, 0);
  if (client < 0) fail("%s: socket: %s", what, strerror(errno));
  int back = enter_dir(l->dir, what);
  int r = connect(client, (const struct sockaddr *)&l->addr, l->addr_len), e = errno;
  leave_dir(back, what);
  if (r < 0 && (e == EACCES || e == EPERM)) {
    // The task may not connect to its own listener (its socket file's mode): the socketpair stays.
    close(client);
    return;
  }
  if (r < 0) fail("%s: connect to %s: %s", what, shown_name(l, shown, sizeof shown), strerror(e));
  int accepted = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (accepted < 0) fail("%s: accept on %s: %s", what, shown_name(l, shown, sizeof shown), strerror(errno));
  if (fcntl(accepted, F_SETFL, 0) < 0) fail("%s: F_SETFL: %s", what, strerror(errno));
  resettle(accepted, id, s->fd, what);
  resettle(client, s->peer, c->fd, what);
  set_unix_options(s, what);
  set_unix_options(c, what);
}

// Payload: i32 type, i32 flags, u32 bind (0 none, 1 path, 2 abstract), bytes name (sun_path
// without the terminating NUL; abstract: without the leading NUL), bytes dir (a relative path
// name's directory, absolute; else empty), u32 unlinked, u32 mode,
// i32 backlog (-1: not listening), u32 link (0 none, 1 pair, 2 connect, 3 peer closed,
// 4 pending: connected to a listener, not accepted), u32 peer id, u32 accept position, u32 shutdown (1 read, 2 write), i32 rcvbuf, i32 sndbuf (as getsockopt showed
// them: twice what setsockopt takes), i32 passcred, u64 rcvtimeo_us, u64 sndtimeo_us,
// i32 peek_off, u32 via (a connected socket accepted by a listening socket of the
// checkpoint: that socket's id; else 0), u32 count, then per queued message u32 sender id
// (0: none), bytes data, u32 fd count and the object id of each fd passed with it (SCM_RIGHTS).
static void open_unix_socket_object(uint32_t id, int cloexec UNUSED, const char *what) {
  struct unix_socket *s = unix_socket_of(id);
  s->type = i32("socket type");
  s->flags = i32("flags");
  uint32_t bind_kind = u32("bind"), name_len;
  const uint8_t *name = blob("name", &name_len);
  uint32_t dir_len;
  const uint8_t *dir = blob("dir", &dir_len);
  uint32_t unlinked = u32("unlinked"), mode = u32("mode");
  int backlog = i32("backlog");
  s->link = (int)u32("link");
  s->peer = u32("peer");
  s->position = u32("accept position");
  s->shutdown_bits = (int)u32("shutdown");
  s->rcvbuf = i32("rcvbuf"), s->sndbuf = i32("sndbuf"), s->passcred = i32("passcred");
  s->rcvtimeo = u64("rcvtimeo"), s->sndtimeo = u64("sndtimeo");
  s->peek_off = i32("peek_off");
  s->via = u32("via");
  if (s->via > objects || s->via == id || (s->via && (s->link != LINK_PAIR || s->type == SOCK_DGRAM))) fail("%s: bad listening socket files/%u", what, s->via);
  s->queued = u32("message count");
  s->queue = plan;
  for (uint32_t i = 0; i < s->queued; i++) {
    uint32_t len;
    if (u32("sender") > objects) fail("%s: queued message %u: sender out of range", what, i);
    (void)blob("message", &len);
    uint32_t passed = u32("fd count");
    if (passed > SCM_MAX_FD) fail("%s: queued message %u passes %u fds, more than %d", what, i, passed, SCM_MAX_FD);
    for (uint32_t j = 0; j < passed; j++) {
      uint32_t ref = u32("passed fd");
      if (ref == 0 || ref > objects) fail("%s: queued message %u: passed fd %u out of range", what, i, j);
    }
  }
  if (s->type != SOCK_STREAM && s->type != SOCK_DGRAM && s->type != SOCK_SEQPACKET) fail("%s: socket type %d is not stream, dgram or seqpacket", what, s->type);
  if (bind_kind > BIND_ABSTRACT || name_len + 1 > sizeof s->addr.sun_path || (bind_kind == BIND_NONE) != (name_len == 0)) fail("%s: bad socket name", what);
  int named_peer = s->link == LINK_PAIR || s->link == LINK_CONNECT || s->link == LINK_PENDING;
  // A datagram socket may be connected to its own name (link connect to itself); nothing else names itself.
  if (s->link > LINK_PENDING || named_peer != (s->peer != 0) || s->peer > objects || (s->peer == id && s->link != LINK_CONNECT)) fail("%s: bad peer", what);
  if ((s->link == LINK_PENDING) != (s->position != 0) || s->position > objects) fail("%s: bad accept position %u", what, s->position);
  if (s->shutdown_bits & ~3) fail("%s: bad shutdown bits %d", what, s->shutdown_bits);
  s->addr.sun_family = AF_UNIX;
  if (bind_kind == BIND_ABSTRACT) {
    memcpy(s->addr.sun_path + 1, name, name_len);
    s->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + name_len);
  } else if (bind_kind == BIND_PATH) {
    memcpy(s->addr.sun_path, name, name_len);
    if (memchr(name, 0, name_len)) fail("%s: a socket path must be without NUL bytes", what);
    // A relative name comes with the absolute directory it is bound in; an absolute one with none.
    if ((name[0] != '/') != (dir_len > 0)) fail("%s: a socket path must be absolute, or relative with a directory", what);
    s->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + name_len + 1);
  }
  if (dir_len > 0) {
    if (bind_kind != BIND_PATH || dir[0] != '/' || memchr(dir, 0, dir_len)) fail("%s: bad directory for a relative name", what);
    s->dir = strndup((const char *)dir, dir_len);
    if (!s->dir) fail("out of memory");
  }

  int fd;
  s->closed_end = -1;
  if (s->link == LINK_PAIR && unix_pending[id] >= 0) {
    // The peer's record made the pair: this end waited in the working area.
    struct unix_socket *p = &unix_sockets[s->peer];
    if (!p->made || p->peer != id || p->type != s->type) fail("%s: the pair made by files/%u does not name this socket", what, s->peer);
    fd = unix_pending[id];
    unix_pending[id] = -1;
  } else if (s->link == LINK_PAIR || s->link == LINK_PEER_CLOSED) {
    int sv[2];
    if (socketpair(AF_UNIX, s->type | SOCK_CLOEXEC, 0, sv) < 0) fail("%s: socketpair(%s): %s", what, type_name(s->type), strerror(errno));
    int other = to_work(sv[1], what);
    if (s->link == LINK_PAIR) {
      if (unix_socket_of(s->peer)->made) fail("%s: its peer files/%u was made before it without a pair", what, s->peer);
      unix_pending[s->peer] = other;
    } else {
      s->closed_end = other;
    }
    fd = sv[0];
  } else {
    fd = socket(AF_UNIX, s->type | SOCK_CLOEXEC, 0);
    if (fd < 0) fail("%s: socket(AF_UNIX, %s): %s", what, type_name(s->type), strerror(errno));
  }
  fd = settle(fd, id, 1, what);
  s->fd = fd;
  s->made = 1;
  object_fd[id] = fd;

  set_unix_options(s, what);

  if (bind_kind == BIND_PATH) {
    int back = enter_dir(s->dir, what);
    if (unlinked) bind_unlinked(s, fd, id, what);
    else bind_path(s, fd, mode & 07777, what);
    leave_dir(back, what);
  } else if (bind_kind == BIND_ABSTRACT && bind(fd, (const struct sockaddr *)&s->addr, s->addr_len) < 0) {
    char shown[400];
    fail("%s: bind %s: %s", what, shown_name(s, shown, sizeof shown), strerror(errno));
  }
  if (backlog >= 0 && listen(fd, backlog) < 0) fail("%s: listen(%d): %s", what, backlog, strerror(errno));
}

// Sends all of `data` from `from` (to `to` when given: an unconnected receiver), never waiting:
// the saved queue fitted the saved buffers, which are set again.
// The fds in flight go with the first bytes of the message (a stream's piece went in whole
// when it was queued: it fits the buffers that held it).
// Every piece carries SCM_CREDENTIALS naming the task itself (its pid, and the ids the stub
// has taken as the task's: become_task): a receiver with SO_PASSCRED would otherwise be told
// the stub's real ids, root's, and a checkpoint stored in a user's files could make its own
// process receive messages "from root". The saved sender's credentials are not in the
// checkpoint; the task's own are ones it could always have sent itself.
static void send_queued(int from, const struct unix_socket *to, int by_address, const uint8_t *data, uint32_t len, const int *fds, uint32_t nfds, int type, const char *what) {
  union {
    struct cmsghdr align;
    char space[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * SCM_MAX_FD)];
  } control;
  struct ucred self = {.pid = getpid(), .uid = task.fsuid, .gid = task.fsgid};
  int back = by_address ? enter_dir(to->dir, what) : -1;
  do {
    struct iovec iov = {(void *)data, len};
    struct msghdr msg = {.msg_name = by_address ? (void *)&to->addr : NULL, .msg_namelen = by_address ? to->addr_len : 0, .msg_iov = &iov, .msg_iovlen = 1};
    memset(&control, 0, sizeof control);
    msg.msg_control = control.space;
    msg.msg_controllen = CMSG_SPACE(sizeof self) + (nfds ? CMSG_SPACE(sizeof(int) * nfds) : 0);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_CREDENTIALS;
    c->cmsg_len = CMSG_LEN(sizeof self);
    memcpy(CMSG_DATA(c), &self, sizeof self);
    if (nfds) {
      c = CMSG_NXTHDR(&msg, c);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
      memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t n = sendmsg(from, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("%s: sending its queued %u bytes%s back in: %s", what, len, nfds ? " and the fds passed with them" : "", strerror(errno));
    if (type != SOCK_STREAM && (uint32_t)n != len) fail("%s: a queued message of %u bytes went in as %zd", what, len, n);
    if (type == SOCK_STREAM && nfds && (uint32_t)n != len) fail("%s: a queued piece of %u bytes that passes fds went in as %zd", what, len, n);
    nfds = 0;
    data += n;
    len -= (uint32_t)n;
  } while (len > 0);
  leave_dir(back, what);
}

static void finish_unix_sockets(void) {
  if (!unix_sockets) return;
  char what[64];
  for (uint32_t id = 1; id <= objects; id++) {
    if (!unix_sockets[id].made || !unix_sockets[id].via) continue;
    snprintf(what, sizeof what, "files/%u", id);
    accept_again(id, what);
  }
  // Queues, before any datagram socket is connected (a connected one takes messages only from its peer).
  for (uint32_t id = 1; id <= objects; id++) {
    struct unix_socket *s = &unix_sockets[id];
    if (!s->made || !s->queued) continue;
    snprintf(what, sizeof what, "files/%u", id);
    plan = s->queue;
    int scratch = -1;
    for (uint32_t i = 0; i < s->queued; i++) {
      uint32_t sender = u32("sender"), len;
      const uint8_t *data = blob("message", &len);
      uint32_t nfds = u32("fd count");
      int fds[SCM_MAX_FD];
      for (uint32_t j = 0; j < nfds; j++) {
        uint32_t ref = u32("passed fd");
        if (object_fd[ref] < 0) fail("%s: queued message %u passes files/%u, which was not opened", what, i, ref);
        fds[j] = object_fd[ref];
      }
      // Through the other end of its pair; else from the saved sender, addressed; else from a
      // socket of the stub's own (the message then has no sender address).
      int from = -1, by_address = 0;
      if (s->link == LINK_PAIR) from = unix_sockets[s->peer].fd;
      else if (s->link == LINK_PEER_CLOSED) from = s->closed_end;
      else if (s->addr_len == 0) fail("%s: messages are queued on a socket that has neither a name nor a peer", what);
      else if (sender && unix_sockets[sender].made && unix_sockets[sender].type == s->type) from = unix_sockets[sender].fd, by_address = 1;
      else {
        if (scratch < 0 && (scratch = socket(AF_UNIX, s->type | SOCK_CLOEXEC, 0)) < 0) fail("%s: socket: %s", what, strerror(errno));
        from = scratch, by_address = 1;
      }
      send_queued(from, s, by_address, data, len, fds, nfds, s->type, what);
    }
    if (scratch >= 0) close(scratch);
  }
  for (uint32_t id = 1; id <= objects; id++) {
    struct unix_socket *s = &unix_sockets[id];
    if (!s->made) continue;
    snprintf(what, sizeof what, "files/%u", id);
    if (s->link == LINK_CONNECT) {
      struct unix_socket *p = &unix_sockets[s->peer];
      char shown[400];
      if (!p->made || p->addr_len == 0) fail("%s: its peer files/%u has no name to connect to", what, s->peer);
      int back = enter_dir(p->dir, what);
      if (connect(s->fd, (const struct sockaddr *)&p->addr, p->addr_len) < 0) fail("%s: connect to %s: %s", what, shown_name(p, shown, sizeof shown), strerror(errno));
      leave_dir(back, what);
    }
    if (s->closed_end >= 0) close(s->closed_end);
  }
  // Connections waiting to be accepted, in the order the listeners had them: each connect
  // queues one on its listener, whose accept() hands them out first come, first served.
  for (uint32_t position = 1, more = 1; more; position++) {
    more = 0;
    for (uint32_t id = 1; id <= objects; id++) {
      struct unix_socket *s = &unix_sockets[id];
      if (!s->made || s->link != LINK_PENDING || s->position < position) continue;
      if (s->position > position) {
        more = 1;
        continue;
      }
      snprintf(what, sizeof what, "files/%u", id);
      struct unix_socket *l = &unix_sockets[s->peer];
      char shown[400];
      if (!l->made || l->addr_len == 0) fail("%s: its listener files/%u has no name to connect to", what, s->peer);
      // Never waiting: the listener's backlog had room for it.
      set_status_flags(s->fd, O_NONBLOCK, what);
      int back = enter_dir(l->dir, what);
      if (connect(s->fd, (const struct sockaddr *)&l->addr, l->addr_len) < 0) fail("%s: connect to %s: %s", what, shown_name(l, shown, sizeof shown), strerror(errno));
      leave_dir(back, what);
    }
  }
  for (uint32_t id = 1; id <= objects; id++) {
    struct unix_socket *s = &unix_sockets[id];
    if (!s->made) continue;
    snprintf(what, sizeof what, "files/%u", id);
    static const int how[] = {-1, SHUT_RD, SHUT_WR, SHUT_RDWR};
    if (s->link != LINK_PEER_CLOSED && s->shutdown_bits && shutdown(s->fd, how[s->shutdown_bits]) < 0) fail("%s: shutdown: %s", what, strerror(errno));
    if (s->unlink_after) {
      int back = enter_dir(s->dir, what);
      if (unlink(s->addr.sun_path) < 0) fail("%s: unlink %s: %s", what, s->addr.sun_path, strerror(errno));
      leave_dir(back, what);
    }
    if (s->peek_off >= 0) set_int_opt(s->fd, SO_PEEK_OFF, s->peek_off, "SO_PEEK_OFF", what);
    set_status_flags(s->fd, s->flags, what);
  }
}

// The object kinds, indexed by the number a plan record carries. The TypeScript handlers
// (lib/files/*.ts) declare the same numbers and names as their `stubKinds`;
// `restorer --kinds` prints this table and test/fdkinds.test.ts checks that the two agree.

// ---- TCP and UDP sockets (kind 16) ----

static void sock_opt(int fd, int level, int name, int value, const char *opt, const char *what) {
  if (setsockopt(fd, level, name, &value, sizeof value) < 0) fail("%s: setsockopt(%s, %d): %s", what, opt, value, strerror(errno));
}

static void sock_timeout(int fd, int name, uint64_t us, const char *opt, const char *what) {
  if (!us) return;
  struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
  if (setsockopt(fd, SOL_SOCKET, name, &tv, sizeof tv) < 0) fail("%s: setsockopt(%s): %s", what, opt, strerror(errno));
}

// A buffer size as getsockopt showed it (the kernel doubles what setsockopt is given): set only
// when it differs from what a new socket has, so a size the program never chose stays tuned
// by the kernel.
static void sock_buffer(int fd, int name, int saved, const char *opt, const char *what) {
  int now = 0;
  socklen_t len = sizeof now;
  if (getsockopt(fd, SOL_SOCKET, name, &now, &len) < 0) fail("%s: getsockopt(%s): %s", what, opt, strerror(errno));
  if (saved <= 0 || saved == now) return;
  sock_opt(fd, SOL_SOCKET, name, saved / 2, opt, what);
  // Above net.core.[rw]mem_max (a size the kernel tuned up, or one forced): forced, when the
  // task's CAP_NET_ADMIN allows it, else as large as the sysctl lets it be.
  len = sizeof now;
  if (getsockopt(fd, SOL_SOCKET, name, &now, &len) == 0 && now < saved) {
    int half = saved / 2;
    setsockopt(fd, SOL_SOCKET, name == SO_SNDBUF ? SO_SNDBUFFORCE : SO_RCVBUFFORCE, &half, sizeof half);
  }
}

static const struct sockaddr *sock_address(const uint8_t *raw, uint32_t len, int domain, const char *name, const char *what) {
  if (len == 0) return NULL;
  size_t want = domain == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
  sa_family_t family;
  memcpy(&family, raw, sizeof family);
  if (len != want || family != domain) fail("%s: %s address of %u bytes does not match the socket's family", what, name, len);
  return (const struct sockaddr *)(const void *)raw;
}

// Makes room in the socket's send (SO_SNDBUFFORCE) or receive (SO_RCVBUFFORCE) buffer for
// `more` bytes: what it holds now, twice those bytes (an skb's overhead) and 1 MiB. Forcing
// takes the CAP_NET_ADMIN the task had (repair mode took it too, in its own namespace): 0
// when refused, and the caller waits for room instead.
static int grow_buffer(int fd, int force, uint32_t more) {
  int name = force == SO_SNDBUFFORCE ? SO_SNDBUF : SO_RCVBUF, now = 0;
  socklen_t len = sizeof now;
  if (getsockopt(fd, SOL_SOCKET, name, &now, &len) < 0) return 0;
  int64_t want = (int64_t)now + 2 * (int64_t)more + (1 << 20);
  int half = want / 2 > INT32_MAX / 2 ? INT32_MAX / 2 : (int)(want / 2);
  return setsockopt(fd, SOL_SOCKET, force, &half, sizeof half) == 0;
}

// The kernel may refuse a large piece (a queue restored in repair mode is one linear skb per
// send, ENOMEM) or have no room for it (EAGAIN: the buffer the queue was saved from was full,
// and what the bytes take in it now is not what they took then). The buffer is grown once
// (`force`: grow_buffer) and set back to its saved size by the caller once every queue is in:
// a full buffer then is as full as it was, and nothing depends on the peer, whose packets the
// gap still drops (an unsent queue waiting for its acknowledgements would wait for ever).
// Without the right to grow it: smaller pieces first, then a wait for room, bounded so a
// restore never hangs on a queue. Sets *grown when the buffer was grown.
static void send_queue_bytes(int fd, const uint8_t *data, uint32_t len, int flags, int force, int *grown, const char *queue, const char *what) {
  uint32_t piece = len;
  int tried = 0;
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  while (len > 0) {
    ssize_t n = send(fd, data, len < piece ? len : piece, flags | MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == ENOMEM || errno == ENOBUFS)) {
      int saved_errno = errno;
      if (!tried) {
        tried = 1;
        if (grow_buffer(fd, force, len)) {
          *grown = 1;
          continue;
        }
      }
      errno = saved_errno;
      if (piece > 1024) {
        piece /= 2;
        continue;
      }
      struct timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      if (now.tv_sec - start.tv_sec < 10) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, 100);
        continue;
      }
    }
    if (n <= 0) fail("%s: restoring the %s (%u bytes left): %s", what, queue, len, n < 0 ? strerror(errno) : "nothing sent");
    data += n;
    len -= (uint32_t)n;
  }
}

// ---- packets in the peer's name ----
// What a restore cannot put back through the socket API, the peer's FIN of a connection in
// CLOSE_WAIT, the peer's ACK of our FIN in FIN_WAIT2, a datagram queued on a UDP socket, is sent
// again as a packet from the peer's (or sender's) address to the socket's own, through a raw
// socket (the CAP_NET_RAW the task had) on the local route: it reaches the socket as it first
// did. Its mark (CKPTFS_PEER_MARK, lib/netgap.ts's PEER_MARK) lets it pass the connection's gap.
#define CKPTFS_PEER_MARK 0x636b7074

static uint32_t sum16(const void *data, size_t len, uint32_t sum) {
  const uint8_t *p = data;
  for (; len > 1; p += 2, len -= 2) sum += (uint32_t)(p[0] << 8 | p[1]);
  if (len) sum += (uint32_t)(p[0] << 8);
  return sum;
}

static uint16_t fold16(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

// An IPv4-mapped IPv6 address's IPv4 address, or 0 (not mapped).
static int mapped_v4(const struct sockaddr *sa, uint8_t out[4]) {
  if (sa->sa_family != AF_INET6) return 0;
  const uint8_t *a = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
  static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (memcmp(a, prefix, 12) != 0) return 0;
  memcpy(out, a + 12, 4);
  return 1;
}

// Sends `l4` (a TCP or UDP header and payload, its checksum field at `csum_at` zero) from `from`
// to `to` (both of one family; IPv4-mapped IPv6 ones go as IPv4) with the checksum filled in.
static void send_as_peer(const struct sockaddr *from, const struct sockaddr *to, int proto, uint8_t *l4, size_t l4len, size_t csum_at, const char *why, const char *what) {
  uint8_t src4[4], dst4[4];
  int v4 = from->sa_family == AF_INET || (mapped_v4(from, src4) && mapped_v4(to, dst4));
  if (from->sa_family == AF_INET) {
    memcpy(src4, &((const struct sockaddr_in *)(const void *)from)->sin_addr, 4);
    memcpy(dst4, &((const struct sockaddr_in *)(const void *)to)->sin_addr, 4);
  }
  const uint8_t *src = v4 ? src4 : ((const struct sockaddr_in6 *)(const void *)from)->sin6_addr.s6_addr;
  const uint8_t *dst = v4 ? dst4 : ((const struct sockaddr_in6 *)(const void *)to)->sin6_addr.s6_addr;
  size_t alen = v4 ? 4 : 16, hlen = v4 ? 20 : 40;
  if (l4len > (v4 ? 65535 - hlen : 65535)) fail("%s: %s: %zu bytes do not fit in one IP packet", what, why, l4len);
  // The pseudo-header: addresses, protocol, length.
  uint8_t pseudo[4] = {0, (uint8_t)proto, (uint8_t)(l4len >> 8), (uint8_t)l4len};
  uint32_t sum = sum16(src, alen, 0);
  sum = sum16(dst, alen, sum);
  sum = sum16(pseudo, 4, sum);
  if (!v4) sum += (uint32_t)(l4len >> 16);
  uint16_t csum = fold16(sum16(l4, l4len, sum));
  if (proto == IPPROTO_UDP && csum == 0) csum = 0xffff;
  l4[csum_at] = (uint8_t)(csum >> 8);
  l4[csum_at + 1] = (uint8_t)csum;
  uint8_t *pkt = malloc(hlen + l4len);
  if (!pkt) fail("%s: %s: out of memory", what, why);
  memset(pkt, 0, hlen);
  if (v4) {
    pkt[0] = 0x45;
    pkt[2] = (uint8_t)((hlen + l4len) >> 8);
    pkt[3] = (uint8_t)(hlen + l4len);
    pkt[6] = 0x40;  // DF
    pkt[8] = 64;
    pkt[9] = (uint8_t)proto;
    memcpy(pkt + 12, src, 4);
    memcpy(pkt + 16, dst, 4);  // the kernel fills in the header checksum
  } else {
    pkt[0] = 0x60;
    pkt[4] = (uint8_t)(l4len >> 8);
    pkt[5] = (uint8_t)l4len;
    pkt[6] = (uint8_t)proto;
    pkt[7] = 64;
    memcpy(pkt + 8, src, 16);
    memcpy(pkt + 24, dst, 16);
  }
  memcpy(pkt + hlen, l4, l4len);
  int raw = socket(v4 ? AF_INET : AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  if (raw < 0) fail("%s: %s: socket(SOCK_RAW): %s (sending it in its sender's name takes the CAP_NET_RAW the task had)", what, why, strerror(errno));
  int mark = CKPTFS_PEER_MARK;
  if (setsockopt(raw, SOL_SOCKET, SO_MARK, &mark, sizeof mark) < 0) fail("%s: %s: setsockopt(SO_MARK): %s", what, why, strerror(errno));
  struct sockaddr_storage at;
  memset(&at, 0, sizeof at);
  socklen_t atlen;
  if (v4) {
    struct sockaddr_in *in = (struct sockaddr_in *)&at;
    in->sin_family = AF_INET;
    memcpy(&in->sin_addr, dst, 4);
    atlen = sizeof *in;
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&at;
    in6->sin6_family = AF_INET6;
    memcpy(&in6->sin6_addr, dst, 16);
    atlen = sizeof *in6;
  }
  ssize_t n = sendto(raw, pkt, hlen + l4len, 0, (struct sockaddr *)&at, atlen);
  if (n != (ssize_t)(hlen + l4len)) fail("%s: %s: sendto(SOCK_RAW): %s", what, why, n < 0 ? strerror(errno) : "short");
  close(raw);
  free(pkt);
}

static uint16_t port_of(const struct sockaddr *sa) {
  return ntohs(sa->sa_family == AF_INET ? ((const struct sockaddr_in *)(const void *)sa)->sin_port : ((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
}

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8), p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16), put16(p + 2, v); }

// A bare TCP segment from the peer to the connection (no options: the timestamp the socket
// echoes stays the peer's own next one). `window` is the peer's, unscaled as on the wire.
static void tcp_as_peer(const struct sockaddr *peer, const struct sockaddr *local, uint32_t seq, uint32_t ack, uint8_t flags, uint16_t window, const char *why, const char *what) {
  uint8_t h[20] = {0};
  put16(h, port_of(peer));
  put16(h + 2, port_of(local));
  put32(h + 4, seq);
  put32(h + 8, ack);
  h[12] = 5 << 4;
  h[13] = flags;
  put16(h + 14, window);
  send_as_peer(peer, local, IPPROTO_TCP, h, sizeof h, 16, why, what);
}

// The packet sent in the peer's name arrives through the loopback's receive path, on this CPU
// at once in practice: waited for a moment so the task never runs before it is taken.
static void await_tcp_state(int fd, int state, const char *why, const char *what) {
  struct tcp_info ti;
  for (int i = 0; i < 200; i++) {
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, SOL_TCP, TCP_INFO, &ti, &len) < 0) fail("%s: getsockopt(TCP_INFO): %s", what, strerror(errno));
    if (ti.tcpi_state == state) return;
    struct timespec pause = {0, 10 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  fail("%s: %s: the connection is in TCP state %u, not %d, after 2 s", what, why, ti.tcpi_state, state);
}

// How many datagrams a UDP socket holds: its queue walked with MSG_PEEK and SO_PEEK_OFF (each
// peek moves past one datagram), the peek offset then off again (a new socket's).
static uint32_t datagrams_queued(int fd, const char *what) {
  static char buf[65536];
  sock_opt(fd, SOL_SOCKET, SO_PEEK_OFF, 0, "SO_PEEK_OFF", what);
  uint32_t n = 0;
  // Bounded: more than any receive buffer holds would be a peek offset that did not move on.
  while (n < 1 << 20 && recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC) >= 0) n++;
  if (n == 1 << 20) fail("%s: recv(MSG_PEEK): the peek offset does not move past a datagram", what);
  if (errno != EAGAIN) fail("%s: recv(MSG_PEEK): %s", what, strerror(errno));
  sock_opt(fd, SOL_SOCKET, SO_PEEK_OFF, -1, "SO_PEEK_OFF", what);
  return n;
}

// u32 count, then per datagram: bytes sender address, bytes data. Each is sent again in its
// sender's name to the socket's address (the loopback one of its family when it is bound to
// any), before the socket is connected (a connected one takes only its peer's), and all are
// waited for, so the task reads the same datagrams from the same senders, in order.
static void restore_datagrams(int fd, int domain, const struct sockaddr *local, socklen_t local_len, const char *what) {
  uint32_t count = u32("datagram count");
  if (count == 0) return;
  if (!local) fail("%s: %u datagrams queued on a socket bound to no address", what, count);
  for (uint32_t i = 0; i < count; i++) {
    uint32_t from_len, len;
    const uint8_t *from_raw = blob("datagram sender", &from_len);
    const uint8_t *data = blob("datagram", &len);
    char why[64];
    snprintf(why, sizeof why, "queued datagram %u of %u", i + 1, count);
    const struct sockaddr *from = sock_address(from_raw, from_len, domain, "sender", what);
    if (!from) fail("%s: %s has no sender", what, why);
    struct sockaddr_storage to;
    memset(&to, 0, sizeof to);
    memcpy(&to, local, local_len);
    uint8_t v4[4];
    if (domain == AF_INET && ((struct sockaddr_in *)&to)->sin_addr.s_addr == htonl(INADDR_ANY)) {
      ((struct sockaddr_in *)&to)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (domain == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&to)->sin6_addr)) {
      struct in6_addr *a = &((struct sockaddr_in6 *)&to)->sin6_addr;
      if (mapped_v4(from, v4)) {  // an IPv4 datagram on a dual-stack socket: to ::ffff:127.0.0.1
        a->s6_addr[10] = a->s6_addr[11] = 0xff;
        a->s6_addr[12] = 127;
        a->s6_addr[15] = 1;
      } else {
        *a = in6addr_loopback;
      }
    }
    if (len > 65527) fail("%s: %s of %u bytes is larger than a UDP datagram", what, why, len);
    uint8_t *l4 = malloc(8 + (size_t)len);
    if (!l4) fail("%s: %s: out of memory", what, why);
    put16(l4, port_of(from));
    put16(l4 + 2, port_of((struct sockaddr *)&to));
    put16(l4 + 4, 8 + len);
    l4[6] = l4[7] = 0;
    memcpy(l4 + 8, data, len);
    send_as_peer(from, (struct sockaddr *)&to, IPPROTO_UDP, l4, 8 + (size_t)len, 6, why, what);
    free(l4);
  }
  uint32_t got = 0;
  for (int i = 0; i < 200 && (got = datagrams_queued(fd, what)) < count; i++) {
    struct timespec pause = {0, 10 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  if (got != count) fail("%s: %u of the %u queued datagrams sent again reached the socket after 2 s", what, got, count);
}

// Sockets bound with SO_REUSEADDR and SO_REUSEPORT because another socket of the task shares
// their port (the order they are made in must not matter: two listening sockets of one port,
// one of which turned SO_REUSEPORT off after it listened; a listening socket and connections it
// accepted): their saved values are set once every socket is made (finish_inet_sockets).
struct shared_port { uint32_t id; int reuseaddr, reuseport; };
static struct shared_port *shared_ports;
static uint32_t shared_count;

static void finish_inet_sockets(void) {
  for (uint32_t i = 0; i < shared_count; i++) {
    struct shared_port *p = &shared_ports[i];
    char what[48];
    snprintf(what, sizeof what, "files/%u", p->id);
    int fd = object_fd[p->id];
    sock_opt(fd, SOL_SOCKET, SO_REUSEADDR, p->reuseaddr, "SO_REUSEADDR", what);
    sock_opt(fd, SOL_SOCKET, SO_REUSEPORT, p->reuseport, "SO_REUSEPORT", what);
  }
  free(shared_ports);
  shared_ports = NULL;
  shared_count = 0;
}

static void repair_queue(int fd, int queue, uint32_t seq, const char *what) {
  sock_opt(fd, SOL_TCP, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE", what);
  if (queue != TCP_NO_QUEUE) sock_opt(fd, SOL_TCP, TCP_QUEUE_SEQ, (int)seq, "TCP_QUEUE_SEQ", what);
}

// u32 domain, u32 type, u32 protocol, i32 flags, u32 state, bytes local, bytes peer, u32 backlog,
// i32 reuseaddr, reuseport, keepalive, broadcast, rcvbuf, sndbuf, v6only, nodelay, keepidle,
// keepintvl, keepcnt, u64 rcvtimeo_us, u64 sndtimeo_us, i32 cork, u32 shutdown (1 read, 2
// write), u32 shared (another socket of the task has its port), u32 repair, then when repair is 1:
// u32 send_seq, u32 recv_seq, bytes send_queue, u32 unsent, bytes recv_queue, u32 mss,
// u32 tcpi_options, u32 snd_wscale, u32 rcv_wscale, u32 timestamp, u32 snd_wl1, snd_wnd,
// max_window, rcv_wnd, rcv_wup, snd_mss (0: not known); then u32 datagram count and the
// datagrams (restore_datagrams; none for TCP). Made with the task's credentials: its bind is checked as the
// task's (a port below 1024 needs the CAP_NET_BIND_SERVICE it had), and TCP_REPAIR needs the
// CAP_NET_ADMIN it had.
static void open_inet_object(uint32_t id, int cloexec UNUSED, const char *what) {
  int domain = (int)u32("domain"), type = (int)u32("type"), protocol = (int)u32("protocol");
  int flags = i32("flags");
  uint32_t state = u32("state");
  uint32_t local_len, peer_len;
  const uint8_t *local_raw = blob("local address", &local_len), *peer_raw = blob("peer address", &peer_len);
  uint32_t backlog = u32("backlog");
  int reuseaddr = i32("reuseaddr"), reuseport = i32("reuseport"), keepalive = i32("keepalive"), broadcast = i32("broadcast");
  int rcvbuf = i32("rcvbuf"), sndbuf = i32("sndbuf"), v6only = i32("v6only"), nodelay = i32("nodelay");
  int keepidle = i32("keepidle"), keepintvl = i32("keepintvl"), keepcnt = i32("keepcnt");
  uint64_t rcvtimeo = u64("rcvtimeo"), sndtimeo = u64("sndtimeo");
  int cork = i32("cork");
  uint32_t shut = u32("shutdown"), shared = u32("shared");
  uint32_t repair = u32("repair");
  if (shut > 3) fail("%s: shutdown %u is not 0 to 3", what, shut);
  if (domain != AF_INET && domain != AF_INET6) fail("%s: socket family %d is not AF_INET nor AF_INET6", what, domain);
  const struct sockaddr *local = sock_address(local_raw, local_len, domain, "local", what);
  const struct sockaddr *peer = sock_address(peer_raw, peer_len, domain, "peer", what);

  int fd = socket(domain, type, protocol);
  if (fd < 0) fail("%s: socket(%d, %d, %d): %s", what, domain, type, protocol, strerror(errno));
  if (repair) {
    int on = TCP_REPAIR_ON;
    if (setsockopt(fd, SOL_TCP, TCP_REPAIR, &on, sizeof on) < 0)
      fail("%s: TCP_REPAIR: %s (restoring an established connection takes the CAP_NET_ADMIN the task had)", what, strerror(errno));
  } else if (reuseaddr || shared) {
    sock_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR", what);
  }
  if (reuseport || shared) sock_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT", what);
  if (shared) {
    struct shared_port *grown = realloc(shared_ports, (shared_count + 1) * sizeof *shared_ports);
    if (!grown) fail("%s: out of memory", what);
    shared_ports = grown;
    shared_ports[shared_count++] = (struct shared_port){id, reuseaddr != 0, reuseport != 0};
  }
  if (domain == AF_INET6) sock_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY, v6only, "IPV6_V6ONLY", what);
  if (broadcast) sock_opt(fd, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST", what);
  if (keepalive) sock_opt(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE", what);
  if (protocol == IPPROTO_TCP) {
    if (keepidle > 0) sock_opt(fd, SOL_TCP, TCP_KEEPIDLE, keepidle, "TCP_KEEPIDLE", what);
    if (keepintvl > 0) sock_opt(fd, SOL_TCP, TCP_KEEPINTVL, keepintvl, "TCP_KEEPINTVL", what);
    if (keepcnt > 0) sock_opt(fd, SOL_TCP, TCP_KEEPCNT, keepcnt, "TCP_KEEPCNT", what);
    if (nodelay) sock_opt(fd, SOL_TCP, TCP_NODELAY, 1, "TCP_NODELAY", what);
    // Before the unsent bytes are sent: a partial segment stays corked, as it was.
    if (cork) sock_opt(fd, SOL_TCP, TCP_CORK, 1, "TCP_CORK", what);
  }
  sock_buffer(fd, SO_RCVBUF, rcvbuf, "SO_RCVBUF", what);
  sock_buffer(fd, SO_SNDBUF, sndbuf, "SO_SNDBUF", what);
  sock_timeout(fd, SO_RCVTIMEO, rcvtimeo, "SO_RCVTIMEO", what);
  sock_timeout(fd, SO_SNDTIMEO, sndtimeo, "SO_SNDTIMEO", what);
  if (local && bind(fd, local, local_len) < 0) fail("%s: bind: %s", what, strerror(errno));

  if (repair) {
    uint32_t send_seq = u32("send_seq"), recv_seq = u32("recv_seq");
    uint32_t send_len, recv_len;
    const uint8_t *send_data = blob("send queue", &send_len);
    uint32_t unsent = u32("unsent");
    const uint8_t *recv_data = blob("receive queue", &recv_len);
    uint32_t mss = u32("mss"), options = u32("tcpi_options"), snd_wscale = u32("snd_wscale"), rcv_wscale = u32("rcv_wscale");
    uint32_t timestamp = u32("timestamp");
    struct tcp_repair_window window;
    window.snd_wl1 = u32("snd_wl1");
    window.snd_wnd = u32("snd_wnd");
    window.max_window = u32("max_window");
    window.rcv_wnd = u32("rcv_wnd");
    window.rcv_wup = u32("rcv_wup");
    uint32_t snd_mss = u32("snd_mss");
    if (!peer) fail("%s: an established connection without a peer address", what);
    if (unsent > send_len) fail("%s: %u unsent bytes of a send queue of %u", what, unsent, send_len);
    // The sequence numbers where the queues start: sending them in again moves each to its saved value.
    repair_queue(fd, TCP_SEND_QUEUE, send_seq - send_len, what);
    repair_queue(fd, TCP_RECV_QUEUE, recv_seq - recv_len, what);
    // The segment size: connect sizes it (mss_cache) from the clamp it finds, TCP_MAXSEG's or
    // else 536, and nothing later sizes it again (TCP_REPAIR_OPTIONS' MSS only sets the clamp),
    // so the saved one is the clamp given here. It counts the timestamp option, which connect
    // takes off (when the host sends timestamps) and which the saved size was without (when
    // the connection had them). TCP_MAXSEG takes at most 32767 (MAX_TCP_WINDOW): a larger
    // size (32768 on loopback) comes back as 32767 less the option. Reset to "not set" after
    // connect, as the program left it.
    uint32_t clamp = snd_mss + (options & TCPI_OPT_TIMESTAMPS ? 12 : 0);
    if (snd_mss) sock_opt(fd, SOL_TCP, TCP_MAXSEG, clamp > 32767 ? 32767 : (int)clamp, "TCP_MAXSEG", what);
    // In repair mode connect sends no SYN: the connection is established at once.
    if (connect(fd, peer, peer_len) < 0) fail("%s: connect (repair): %s", what, strerror(errno));
    if (snd_mss) sock_opt(fd, SOL_TCP, TCP_MAXSEG, 0, "TCP_MAXSEG", what);
    struct tcp_repair_opt opts[4];
    int n = 0;
    opts[n++] = (struct tcp_repair_opt){TCPOPT_MAXSEG, mss};
    if (options & TCPI_OPT_WSCALE) opts[n++] = (struct tcp_repair_opt){TCPOPT_WINDOW, snd_wscale | (rcv_wscale << 16)};
    if (options & TCPI_OPT_SACK) opts[n++] = (struct tcp_repair_opt){TCPOPT_SACK_PERMITTED, 0};
    if (options & TCPI_OPT_TIMESTAMPS) opts[n++] = (struct tcp_repair_opt){TCPOPT_TIMESTAMP, 0};
    if (setsockopt(fd, SOL_TCP, TCP_REPAIR_OPTIONS, opts, (socklen_t)(n * sizeof *opts)) < 0) fail("%s: TCP_REPAIR_OPTIONS: %s", what, strerror(errno));
    if (options & TCPI_OPT_TIMESTAMPS) sock_opt(fd, SOL_TCP, TCP_TIMESTAMP, (int)timestamp, "TCP_TIMESTAMP", what);
    // Bytes the task had sent go back as sent (the peer acknowledges or they are retransmitted);
    // the unsent ones are sent normally once the connection is out of repair.
    sock_opt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE", what);
    int rcv_grown = 0, snd_grown = 0;
    send_queue_bytes(fd, recv_data, recv_len, 0, SO_RCVBUFFORCE, &rcv_grown, "receive queue", what);
    sock_opt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE", what);
    send_queue_bytes(fd, send_data, send_len - unsent, 0, SO_SNDBUFFORCE, &snd_grown, "send queue", what);
    if (setsockopt(fd, SOL_TCP, TCP_REPAIR_WINDOW, &window, sizeof window) < 0) fail("%s: TCP_REPAIR_WINDOW: %s", what, strerror(errno));
    // The first unacknowledged byte, and the peer's window as it sent it (so the segments sent
    // in its name below leave the saved window as it was).
    uint32_t snd_una = send_seq - send_len;
    uint32_t wire_window = options & TCPI_OPT_WSCALE ? window.snd_wnd >> snd_wscale : window.snd_wnd;
    uint16_t peer_window = wire_window > 0xffff ? 0xffff : (uint16_t)wire_window;
    if (state == TCP_FIN_WAIT2) {
      // Our FIN goes into the send queue as sent (as CRIU does), and the peer's ACK of it is
      // sent again: FIN_WAIT1, then FIN_WAIT2.
      if (send_len != 0) fail("%s: a connection in FIN_WAIT2 with %u bytes in its send queue", what, send_len);
      sock_opt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE", what);
      if (shutdown(fd, SHUT_WR) < 0) fail("%s: shutdown(SHUT_WR) (repair): %s", what, strerror(errno));
      sock_opt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE", what);
      tcp_as_peer(peer, local, recv_seq, send_seq + 1, 0x10 /* ACK */, peer_window, "the peer's ACK of our FIN (FIN_WAIT2)", what);
      await_tcp_state(fd, TCP_FIN_WAIT2, "the peer's ACK of our FIN (FIN_WAIT2)", what);
    } else if (state == TCP_CLOSE_WAIT) {
      // The peer's FIN, after the bytes of the receive queue: the task reads them, then EOF.
      tcp_as_peer(peer, local, recv_seq, snd_una, 0x11 /* FIN, ACK */, peer_window, "the peer's FIN (CLOSE_WAIT)", what);
      await_tcp_state(fd, TCP_CLOSE_WAIT, "the peer's FIN (CLOSE_WAIT)", what);
    } else if (state != TCP_ESTABLISHED) {
      fail("%s: TCP state %u is not one a connection is restored in", what, state);
    }
    sock_opt(fd, SOL_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE", what);
    sock_opt(fd, SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF, "TCP_REPAIR", what);
    send_queue_bytes(fd, send_data + (send_len - unsent), unsent, 0, SO_SNDBUFFORCE, &snd_grown, "unsent send queue", what);
    // The sizes it was saved with again, below what the queues hold now if they were full.
    if (rcv_grown) sock_buffer(fd, SO_RCVBUF, rcvbuf, "SO_RCVBUF", what);
    if (snd_grown) sock_buffer(fd, SO_SNDBUF, sndbuf, "SO_SNDBUF", what);
    if (reuseaddr || shared) sock_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR", what);
    if (u32("datagram count")) fail("%s: a TCP connection with queued datagrams", what);
  } else {
    restore_datagrams(fd, domain, local, local_len, what);
    if (peer && connect(fd, peer, peer_len) < 0) fail("%s: connect: %s", what, strerror(errno));
  }
  if (state == TCP_LISTEN && listen(fd, (int)backlog) < 0) fail("%s: listen(%u): %s", what, backlog, strerror(errno));
  // The shutdown last (a shut read side would stop a listening socket; lib/files/inetsock.ts
  // refuses that and a connection's write side shut outside fin_wait2). On a socket that is not
  // connected the kernel sets the bits and says ENOTCONN, as it did to the program.
  if (shut && shutdown(fd, (int)shut - 1) < 0 && errno != ENOTCONN) fail("%s: shutdown(%s): %s", what, shut == 1 ? "SHUT_RD" : shut == 2 ? "SHUT_WR" : "SHUT_RDWR", strerror(errno));
  set_status_flags(fd, flags, what);
  object_fd[id] = settle(fd, id, 0, what);
}

// ---- netlink and packet sockets (kinds 17 and 18) ----

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NETLINK_GET_STRICT_CHK
#define NETLINK_GET_STRICT_CHK 12
#endif
#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

static const char *raw_type_name(int type) { return type == SOCK_RAW ? "SOCK_RAW" : type == SOCK_DGRAM ? "SOCK_DGRAM" : "?"; }

// u32 type, u32 protocol, i32 flags, u32 portid, u32 dst_portid, u32 dst_group, u32 group
// count, u32 groups..., i32 pktinfo, broadcast_error, no_enobufs, listen_all_nsid, cap_ack,
// ext_ack, get_strict_chk, rcvbuf, sndbuf. Made with the task's credentials: a protocol, a
// group or an option (NETLINK_LISTEN_ALL_NSID) that needs a capability the task lacked is
// refused as it would have been to the task. The queue is never restored (capture refuses a
// socket with one). The saved portid is bound again, autobound or not, as CRIU does: a peer
// that knew it reaches the socket again; another socket holding it now fails the restore.
static void open_netlink_object(uint32_t id, int cloexec UNUSED, const char *what) {
  int type = (int)u32("type"), protocol = (int)u32("protocol");
  int flags = i32("flags");
  uint32_t portid = u32("portid"), dst_portid = u32("dst_portid"), dst_group = u32("dst_group");
  uint32_t ngroups = u32("group count");
  if (ngroups > 65536) fail("%s: %u netlink groups", what, ngroups);
  need((size_t)ngroups * 4, "groups");
  const uint8_t *groups = plan;
  plan += (size_t)ngroups * 4;
  static const struct { int name; const char *text; } options[] = {
    {NETLINK_PKTINFO, "NETLINK_PKTINFO"}, {NETLINK_BROADCAST_ERROR, "NETLINK_BROADCAST_ERROR"},
    {NETLINK_NO_ENOBUFS, "NETLINK_NO_ENOBUFS"}, {NETLINK_LISTEN_ALL_NSID, "NETLINK_LISTEN_ALL_NSID"},
    {NETLINK_CAP_ACK, "NETLINK_CAP_ACK"}, {NETLINK_EXT_ACK, "NETLINK_EXT_ACK"}, {NETLINK_GET_STRICT_CHK, "NETLINK_GET_STRICT_CHK"},
  };
  int set[sizeof options / sizeof *options];
  for (size_t i = 0; i < sizeof options / sizeof *options; i++) set[i] = i32(options[i].text);
  int rcvbuf = i32("rcvbuf"), sndbuf = i32("sndbuf");
  if (type != SOCK_RAW && type != SOCK_DGRAM) fail("%s: netlink socket type %d is neither SOCK_RAW nor SOCK_DGRAM", what, type);
  if (dst_group > 32) fail("%s: netlink dst_group %u is above 32", what, dst_group);

  int fd = socket(AF_NETLINK, type, protocol);
  if (fd < 0) fail("%s: socket(AF_NETLINK, %s, protocol %d): %s", what, raw_type_name(type), protocol, strerror(errno));
  if (portid) {
    struct sockaddr_nl a = {.nl_family = AF_NETLINK, .nl_pid = portid};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
      fail("%s: bind to netlink portid %u (protocol %d): %s%s", what, portid, protocol, strerror(errno), errno == EADDRINUSE ? " (another socket holds that portid now)" : "");
  }
  for (uint32_t i = 0; i < ngroups; i++) {
    uint32_t g;
    memcpy(&g, groups + (size_t)i * 4, 4);
    if (setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g) < 0) fail("%s: NETLINK_ADD_MEMBERSHIP (protocol %d, group %u): %s", what, protocol, g, strerror(errno));
  }
  if (dst_portid || dst_group) {
    struct sockaddr_nl a = {.nl_family = AF_NETLINK, .nl_pid = dst_portid, .nl_groups = dst_group ? 1u << (dst_group - 1) : 0};
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) fail("%s: connect to netlink portid %u group %u: %s", what, dst_portid, dst_group, strerror(errno));
  }
  for (size_t i = 0; i < sizeof options / sizeof *options; i++)
    if (set[i]) sock_opt(fd, SOL_NETLINK, options[i].name, 1, options[i].text, what);
  sock_buffer(fd, SO_RCVBUF, rcvbuf, "SO_RCVBUF", what);
  sock_buffer(fd, SO_SNDBUF, sndbuf, "SO_SNDBUF", what);
  set_status_flags(fd, flags, what);
  object_fd[id] = settle(fd, id, 0, what);
}

// A PACKET_ADD_MEMBERSHIP request with room for any address the kernel keeps (MAX_ADDR_LEN).
struct packet_mreq_max {
  int mr_ifindex;
  unsigned short mr_type;
  unsigned short mr_alen;
  unsigned char mr_address[32];
};

static void packet_ring(int fd, int name, const char *opt, const char *what) {
  if (!u32(opt)) return;
  struct tpacket_req3 req;
  req.tp_block_size = u32("block_size");
  req.tp_block_nr = u32("block_nr");
  req.tp_frame_size = u32("frame_size");
  req.tp_frame_nr = u32("frame_nr");
  req.tp_retire_blk_tov = u32("retire_tmo");
  req.tp_sizeof_priv = u32("sizeof_priv");
  req.tp_feature_req_word = u32("features");
  if (setsockopt(fd, SOL_PACKET, name, &req, sizeof req) < 0)
    fail("%s: %s (%u blocks of %u bytes, frames of %u): %s", what, opt, req.tp_block_nr, req.tp_block_size, req.tp_frame_size, strerror(errno));
}

// u32 type, u32 protocol, i32 flags, u32 ifindex, string ifname, i32 version, reserve, auxdata,
// origdev, vnet_hdr, timestamp, copy_thresh, loss, qdisc_bypass, ignore_outgoing, rcvbuf,
// sndbuf, u32 in a fanout group (0, 1), u32 fanout, u32 membership count, each: u32 ifindex, u32 type, bytes address, u32
// count; then the RX ring and the TX ring: u32 present and when 1 its seven u32s. Made with
// the task's credentials: socket() needs the CAP_NET_RAW the task had. The interface is
// found by its saved name, which must still have the saved index. The options that a ring
// fixes (version, reserve, vnet_hdr, loss) go first, the fanout group last (it needs the
// socket bound and the ring made), as the kernel requires.
static void open_packet_object(uint32_t id, int cloexec UNUSED, const char *what) {
  int type = (int)u32("type"), protocol = (int)u32("protocol");
  int flags = i32("flags");
  uint32_t ifindex = u32("ifindex");
  char *ifname = string("ifname");
  int version = i32("version"), reserve = i32("reserve"), auxdata = i32("auxdata"), origdev = i32("origdev"), vnet_hdr = i32("vnet_hdr");
  int timestamp = i32("timestamp"), copy_thresh = i32("copy_thresh"), loss = i32("loss"), qdisc_bypass = i32("qdisc_bypass");
  int ignore_outgoing = i32("ignore_outgoing"), rcvbuf = i32("rcvbuf"), sndbuf = i32("sndbuf");
  uint32_t in_fanout = u32("in a fanout group"), fanout = u32("fanout");
  if (type != SOCK_RAW && type != SOCK_DGRAM) fail("%s: packet socket type %d is neither SOCK_RAW nor SOCK_DGRAM", what, type);
  if (protocol > 0xffff) fail("%s: packet protocol %d is above 0xffff", what, protocol);

  int fd = socket(AF_PACKET, type, (int)htons((uint16_t)protocol));
  if (fd < 0)
    fail("%s: socket(AF_PACKET, %s, 0x%04x): %s%s", what, raw_type_name(type), protocol, strerror(errno), errno == EPERM ? " (a packet socket takes the CAP_NET_RAW the task had)" : "");
  if (ifindex) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if (strlen(ifname) >= IFNAMSIZ) fail("%s: interface name %s is longer than %d", what, ifname, IFNAMSIZ - 1);
    strcpy(ifr.ifr_name, ifname);
    if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) fail("%s: interface %s (index %u) the packet socket was bound to is gone: %s", what, ifname, ifindex, strerror(errno));
    if ((uint32_t)ifr.ifr_ifindex != ifindex) fail("%s: interface %s is index %d now, not %u as when the packet socket was bound to it", what, ifname, ifr.ifr_ifindex, ifindex);
    struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_protocol = htons((uint16_t)protocol), .sll_ifindex = (int)ifindex};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) fail("%s: bind to interface %s: %s", what, ifname, strerror(errno));
  }
  free(ifname);
  if (version) sock_opt(fd, SOL_PACKET, PACKET_VERSION, version, "PACKET_VERSION", what);
  if (reserve) sock_opt(fd, SOL_PACKET, PACKET_RESERVE, reserve, "PACKET_RESERVE", what);
  if (vnet_hdr) sock_opt(fd, SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR", what);
  if (loss) sock_opt(fd, SOL_PACKET, PACKET_LOSS, 1, "PACKET_LOSS", what);
  if (auxdata) sock_opt(fd, SOL_PACKET, PACKET_AUXDATA, 1, "PACKET_AUXDATA", what);
  if (origdev) sock_opt(fd, SOL_PACKET, PACKET_ORIGDEV, 1, "PACKET_ORIGDEV", what);
  if (timestamp) sock_opt(fd, SOL_PACKET, PACKET_TIMESTAMP, timestamp, "PACKET_TIMESTAMP", what);
  if (copy_thresh) sock_opt(fd, SOL_PACKET, PACKET_COPY_THRESH, copy_thresh, "PACKET_COPY_THRESH", what);
  if (qdisc_bypass) sock_opt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS", what);
  if (ignore_outgoing) sock_opt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING", what);
  uint32_t memberships = u32("membership count");
  if (memberships > 65536) fail("%s: %u packet memberships", what, memberships);
  for (uint32_t i = 0; i < memberships; i++) {
    struct packet_mreq_max mreq;
    memset(&mreq, 0, sizeof mreq);
    mreq.mr_ifindex = (int)u32("membership ifindex");
    mreq.mr_type = (unsigned short)u32("membership type");
    uint32_t alen;
    const uint8_t *addr = blob("membership address", &alen);
    uint32_t count = u32("membership count");
    if (alen > sizeof mreq.mr_address) fail("%s: a membership address of %u bytes", what, alen);
    if (count > 1024) fail("%s: a membership added %u times", what, count);
    mreq.mr_alen = (unsigned short)alen;
    memcpy(mreq.mr_address, addr, alen);
    for (uint32_t n = 0; n < count; n++)
      if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq, sizeof mreq) < 0)
        fail("%s: PACKET_ADD_MEMBERSHIP (interface index %d, type %u): %s", what, mreq.mr_ifindex, mreq.mr_type, strerror(errno));
  }
  packet_ring(fd, PACKET_RX_RING, "PACKET_RX_RING", what);
  packet_ring(fd, PACKET_TX_RING, "PACKET_TX_RING", what);
  // The group id is given again: a kernel-chosen one (PACKET_FANOUT_FLAG_UNIQUEID) cannot be asked for by number.
  if (in_fanout) sock_opt(fd, SOL_PACKET, PACKET_FANOUT, (int)(fanout & ~((uint32_t)PACKET_FANOUT_FLAG_UNIQUEID << 16)), "PACKET_FANOUT", what);
  sock_buffer(fd, SO_RCVBUF, rcvbuf, "SO_RCVBUF", what);
  sock_buffer(fd, SO_SNDBUF, sndbuf, "SO_SNDBUF", what);
  set_status_flags(fd, flags, what);
  object_fd[id] = settle(fd, id, 0, what);
}

typedef void open_object_fn(uint32_t id, int cloexec, const char *what);
static const struct object_kind {
  const char *name;
  open_object_fn *open;
} object_kinds[] = {
  [1] = {"path", open_path_object},
  [2] = {"unlinked", open_unlinked_object},
  [3] = {"memfd", open_memfd_object},
  [4] = {"pipe", open_pipe_object},
  [5] = {"fifo", open_fifo_object},
  [6] = {"eventfd", open_eventfd_object},
  [7] = {"signalfd", open_signalfd_object},
  [8] = {"timerfd", open_timerfd_object},
  [9] = {"inotify", open_inotify_object},
  [10] = {"epoll", open_epoll_object},
  [11] = {"fanotify", open_fanotify_object},
  [12] = {"unix_socket", open_unix_socket_object},
  [16] = {"inet", open_inet_object},
  [17] = {"netlink", open_netlink_object},
  [18] = {"packet", open_packet_object},
};

// An object this task inherits from its restored parent (a tree, tree.c): it sits at the
// working fd its place names, and goes home like any other. Not an fd type: outside the table.
#define KIND_INHERITED 0x100u
static uint32_t inherited_count;
static void open_inherited_object(uint32_t id, const char *what) {
  uint32_t place = u32("inherited place");
  if (place >= inherited_count) fail("%s: inherited as object %u of %u", what, place, inherited_count);
  int fd = work_base + 3 + (int)place;
  if (fcntl(fd, F_GETFD) < 0) fail("%s: inherited fd %d: %s", what, fd, strerror(errno));
  object_fd[id] = settle(fd, id, 0, what);
}

static void print_kinds(void) {
  for (size_t i = 0; i < sizeof object_kinds / sizeof *object_kinds; i++)
    if (object_kinds[i].open) printf("%zu %s\n", i, object_kinds[i].name);
}

// ---- main ----

// A child its parent's stub forked without exec, to keep the memory the parent mapped for it
// (tree.c, premap): the parent's plan state is dropped (not freed: it is unmapped with the
// rest of the stub's memory later) and the stub starts again on this task's own plan.
int main(int argc, char **argv);
void restart_stub(int argc, char **argv) {
  plan = plan_end = NULL;
  plan_flags = 0;
  slots = NULL;
  object_fd = NULL;
  objects = 0;
  next_work = 0;
  epoll_sets = NULL;
  epoll_set_count = 0;
  unix_sockets = NULL;
  unix_pending = NULL;
  inherited_count = 0;
  _exit(main(argc, argv));
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--kinds") == 0) {
    print_kinds();
    return 0;
  }
  if (argc != 4 && argc != 5) return 2;
  int plan_fd = atoi(argv[1]), ctl_fd = atoi(argv[2]);
  reply_fd = atoi(argv[3]);
  if (argc == 5) inherited_count = (uint32_t)atoi(argv[4]);

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
  if (u32("version") != 2) fail("plan: unknown version");
  work_base = i32("work_fd_base");
  objects = u32("object_count");
  uint32_t records = u32("record_count"), fds = u32("fd_count");
  if (objects > (1u << 20)) fail("plan: %u objects is more than the stub handles", objects);
  int session = i32("session"), pgid_self = i32("pgid_self");
  plan_flags = u32("flags");
  read_creds();

  // Room for the task's fds, the working area, and after the stub one fd per file the saved
  // mappings map (at most one per mapping: vm.max_map_count is 65530 by default), opened
  // while memory is rebuilt. Only the soft limit moves: raising the hard one needs
  // CAP_SYS_RESOURCE, which the server may lack. The saved limits are set again at the end.
  struct rlimit files;
  if (getrlimit(RLIMIT_NOFILE, &files) < 0) fail("getrlimit(NOFILE): %s", strerror(errno));
  rlim_t task_fds = (rlim_t)work_base + objects + 16;
  if (task_fds > files.rlim_max) fail("the task needs %llu fds, more than this server's hard RLIMIT_NOFILE (%llu)", (unsigned long long)task_fds, (unsigned long long)files.rlim_max);
  files.rlim_cur = task_fds + MAPPED_FILE_ROOM < files.rlim_max ? task_fds + MAPPED_FILE_ROOM : files.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &files) < 0) fail("setrlimit(NOFILE, %llu): %s", (unsigned long long)files.rlim_cur, strerror(errno));

  if (session && setsid() < 0) fail("setsid: %s", strerror(errno));
  if (!session && pgid_self && setpgid(0, 0) < 0) fail("setpgid: %s", strerror(errno));

  // Nothing the server had open may leak into the task: close all but our three.
  int keep_lo = plan_fd, keep_hi = plan_fd;
  if (ctl_fd < keep_lo) keep_lo = ctl_fd;
  if (reply_fd < keep_lo) keep_lo = reply_fd;
  if (ctl_fd > keep_hi) keep_hi = ctl_fd;
  if (reply_fd > keep_hi) keep_hi = reply_fd;
  if (inherited_count) {
    if (plan_fd != work_base || ctl_fd != work_base + 1 || reply_fd != work_base + 2) fail("inherited objects: the stub's fds are not at %d..%d", work_base, work_base + 2);
    keep_hi = work_base + 2 + (int)inherited_count;
  }
  if (keep_lo > 0) syscall(SYS_close_range, 0u, (unsigned)keep_lo - 1, 0u);
  syscall(SYS_close_range, (unsigned)keep_hi + 1, ~0u, 0u);
  next_work = keep_hi + 1;
  if (next_work < work_base) next_work = work_base;

  read_fd_table(objects, records, fds);
  object_fd = calloc(objects + 1, sizeof(int));
  if (!object_fd) fail("out of memory");
  for (uint32_t i = 0; i <= objects; i++) object_fd[i] = -1;

  become_task();
  for (uint32_t i = 0; i < records; i++) {
    uint32_t kind = u32("object kind"), id = u32("object id"), length = u32("object length");
    need(length, "object payload");
    const uint8_t *end = plan + length;
    char what[48];
    snprintf(what, sizeof what, "files/%u", id);
    if (id == 0 || id > objects) fail("%s: object id out of range", what);
    if (object_fd[id] >= 0) fail("%s: planned twice", what);
    int cloexec = 0;
    // Refusals name the task's fd too: that is what its owner knows it by.
    int home = home_of(id, &cloexec);
    if (home >= 0) snprintf(what, sizeof what, "fd %d (files/%u)", home, id);
    if (kind == KIND_INHERITED) {
      open_inherited_object(id, what);
    } else {
      if (kind >= sizeof object_kinds / sizeof *object_kinds || !object_kinds[kind].open) fail("%s: unknown object kind %u", what, kind);
      object_kinds[kind].open(id, cloexec, what);
    }
    if (plan != end) fail("%s: payload length does not match its kind", what);
  }

  // Every fd is in place (settle put it there with its object); each must have been opened.
  for (uint32_t id = 1; id <= objects; id++) {
    int home = home_of(id, NULL);
    if (home >= 0 && object_fd[id] < 0) fail("fd %d: names files/%u, which was not opened", home, id);
  }
  finish_unix_sockets();
  finish_inet_sockets();
  add_epoll_items(object_fd, objects);
  become_restorer();

  if (write(reply_fd, "ok\n", 3) != 3) _exit(5);
  if (plan_flags & PLAN_TREE_COMMANDS) serve_tree_commands(ctl_fd, reply_fd, work_base, object_fd, objects);
  syscall(SYS_close_range, (unsigned)work_base, ~0u, 0u);
  for (;;) pause();
}
