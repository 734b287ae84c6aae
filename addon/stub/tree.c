// The stub's part in restoring a process tree (docs/RESTORE.md, "A process tree"): once its
// file table is open, a stub whose plan says so serves commands from the server before it
// closes its working area. It forks each child with the child's saved PID, passing it the
// objects the child inherits at fixed numbers; the child then execs the stub again with its
// own plan. It forks each zombie too, which exits at once with its saved status.
//
//   'F' pid server_pid plan_fd ctl_fd reply_fd pgid count objref*count
//       the child's plan, control and reply fds are the server's (opened through
//       /proc/SERVER/fd: this stub still has the restorer's credentials); the child gets them
//       at work_base .. +2 and the objects at work_base+3 .., in the order given
//       keep_memory: the child is not exec'd again but restarts the stub in place
//       (restart_stub), so it keeps the memory premapped here ('M') by fork, shared
//       copy-on-write with this task
//   'M' count, per area: start len (u64) prot flags advice path_len extents (u32) path,
//       per extent: addr at length (u64): maps each area where nothing is mapped yet
//       (MAP_FIXED_NOREPLACE) and reads its stored pages in from the file at path; answered
//       "ok " and one '1' (mapped and filled) or '0' (the place is taken here) per area
//   'Z' pid status session_leader pgid
//   'E' the children are made: return (the caller closes the working area)
// Each command is answered "ok\n" or "error: WHY\n" on the reply pipe.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tree.h"

extern char **environ;

static void answer(int reply, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void answer(int reply, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg - 1, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if (n > (int)sizeof msg - 2) n = (int)sizeof msg - 2;
  msg[n] = '\n';
  if (write(reply, msg, (size_t)n + 1) < 0) _exit(3);
}

static void read_exact(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) _exit(4);  // the server went away: the tree dies with it (PTRACE_O_EXITKILL)
    p += n;
    len -= (size_t)n;
  }
}

// clone3 with fork semantics (a copy of this stub, SIGCHLD to us on exit) and a chosen PID.
static pid_t fork_with_pid(pid_t pid) {
  uint64_t set_tid = (uint64_t)pid;
  struct clone_args ca;
  memset(&ca, 0, sizeof ca);
  ca.exit_signal = SIGCHLD;
  ca.set_tid = (uint64_t)(uintptr_t)&set_tid;
  ca.set_tid_size = 1;
  return (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
}

static int open_server_fd(uint32_t server, uint32_t fd, int flags) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%u/fd/%u", server, fd);
  return open(path, flags | O_CLOEXEC);
}

// In the forked child: its fds into place (its three at work_base.., the objects after them,
// nothing else), then the stub again. Failures go to the child's own reply pipe.
static void __attribute__((noreturn)) exec_child(int work_base, const int mine[3], const int *objects, uint32_t count, uint32_t pgid, int keep_memory) {
  int reply = mine[2];
  if (pgid && setpgid(0, (pid_t)pgid) < 0) {
    answer(reply, "error: setpgid(0, %u): %s", pgid, strerror(errno));
    _exit(127);
  }
  // Every source is first copied above every target, so placing one never overwrites another.
  int top = work_base + 3 + (int)count;
  int *moved = malloc((3 + (size_t)count) * sizeof *moved);
  if (!moved) {
    answer(reply, "error: out of memory");
    _exit(127);
  }
  for (uint32_t i = 0; i < 3 + count; i++) {
    int from = i < 3 ? mine[i] : objects[i - 3];
    moved[i] = fcntl(from, F_DUPFD_CLOEXEC, top);
    if (moved[i] < 0) {
      answer(reply, "error: F_DUPFD of fd %d: %s", from, strerror(errno));
      _exit(127);
    }
  }
  for (uint32_t i = 0; i < 3 + count; i++) {
    if (dup2(moved[i], work_base + (int)i) < 0) {  // dup2 clears close-on-exec on the copy
      answer(reply, "error: dup2 to fd %d: %s", work_base + (int)i, strerror(errno));
      _exit(127);
    }
  }
  reply = work_base + 2;
  if (work_base > 0) syscall(SYS_close_range, 0u, (unsigned)work_base - 1, 0u);
  syscall(SYS_close_range, (unsigned)top, ~0u, 0u);
  char num[4][16];
  char *argv[6] = {"restorer", num[0], num[1], num[2], num[3], NULL};
  for (int i = 0; i < 3; i++) snprintf(num[i], sizeof num[i], "%d", work_base + i);
  snprintf(num[3], sizeof num[3], "%u", count);
  if (keep_memory) restart_stub(5, argv);
  execve("/proc/self/exe", argv, environ);
  answer(reply, "error: execve of the stub: %s", strerror(errno));
  _exit(127);
}

static void fork_child(int ctl, int reply, int work_base, const int *object_fd, uint32_t objects) {
  uint32_t w[8];
  read_exact(ctl, w, sizeof w);
  uint32_t pid = w[0], server = w[1], count = w[6], pgid = w[5], keep_memory = w[7];
  if (count > objects) {
    answer(reply, "error: task-%u: %u objects to pass, the plan has %u", pid, count, objects);
    return;
  }
  uint32_t *refs = malloc((count ? count : 1) * sizeof *refs);
  int *fds = malloc((count ? count : 1) * sizeof *fds);
  if (!refs || !fds) _exit(5);
  read_exact(ctl, refs, count * sizeof *refs);
  for (uint32_t i = 0; i < count; i++) {
    if (refs[i] == 0 || refs[i] > objects || object_fd[refs[i]] < 0) {
      answer(reply, "error: task-%u inherits files/%u, which this task does not hold", pid, refs[i]);
      free(refs);
      free(fds);
      return;
    }
    fds[i] = object_fd[refs[i]];
  }
  int mine[3] = {open_server_fd(server, w[2], O_RDONLY), open_server_fd(server, w[3], O_RDONLY), open_server_fd(server, w[4], O_WRONLY)};
  if (mine[0] < 0 || mine[1] < 0 || mine[2] < 0) {
    answer(reply, "error: task-%u: open the server's plan and pipes: %s", pid, strerror(errno));
  } else {
    pid_t child = fork_with_pid((pid_t)pid);
    if (child == 0) exec_child(work_base, mine, fds, count, pgid, keep_memory != 0);
    if (child < 0 && errno == EEXIST)
      answer(reply, "error: PID %u is taken", pid);
    else if (child < 0)
      answer(reply, "error: clone3(set_tid [%u]): %s", pid, strerror(errno));
    else
      answer(reply, "ok");
  }
  for (int i = 0; i < 3; i++)
    if (mine[i] >= 0) close(mine[i]);
  free(refs);
  free(fds);
}

// The most areas one 'M' command maps (its answer is one line).
#define PREMAP_MAX 400
#define PREMAP_PATH_MAX 4096

struct premap_area {
  uint64_t start, len;
  uint32_t prot, flags, advice, path_len, extents;
};

// Reads one area's pages in: each extent, `length` bytes at `at` of the file, to `addr`
// inside the area. 0, or -1 having answered why (the file is shorter: it changed).
// The file of a user's saved tree may be a link to a fifo or a device by now: it is looked up
// with O_PATH (which opens nothing) and opened only while a regular file (as
// lib/files/source.ts, holdSavedFile). -1 with errno set, EINVAL for anything else.
static int open_regular(const char *path) {
  int found = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (found < 0) return -1;
  struct stat st;
  int fd = -1;
  if (fstat(found, &st) == 0) {
    if (!S_ISREG(st.st_mode)) errno = EINVAL;
    else {
      char self[64];
      snprintf(self, sizeof self, "/proc/self/fd/%d", found);
      fd = open(self, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    }
  }
  int e = errno;
  close(found);
  errno = e;
  return fd;
}

static int fill_area(int reply, const struct premap_area *a, const char *path, int ctl) {
  int fd = open_regular(path);
  int rc = 0;
  if (fd < 0) {
    answer(reply, "error: open %s to read pages from it: %s", path, errno == EINVAL ? "not a regular file (any more)" : strerror(errno));
    rc = -1;
  }
  for (uint32_t i = 0; i < a->extents; i++) {
    uint64_t e[3];
    read_exact(ctl, e, sizeof e);  // read all of them, whatever happens, to stay in step
    if (rc < 0) continue;
    if (e[0] < a->start || e[2] > a->len || e[0] - a->start > a->len - e[2]) {
      answer(reply, "error: premap: pages for 0x%llx+0x%llx lie outside the area 0x%llx+0x%llx", (unsigned long long)e[0], (unsigned long long)e[2], (unsigned long long)a->start, (unsigned long long)a->len);
      rc = -1;
      continue;
    }
    for (uint64_t done = 0; done < e[2];) {
      ssize_t n = pread(fd, (char *)(uintptr_t)(e[0] + done), (size_t)(e[2] - done), (off_t)(e[1] + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        answer(reply, "error: read the pages of 0x%llx from %s: %s at byte %llu (did the file change?)", (unsigned long long)a->start, path, n < 0 ? strerror(errno) : "end of file", (unsigned long long)(e[1] + done));
        rc = -1;
        break;
      }
      done += (uint64_t)n;
    }
  }
  if (fd >= 0) close(fd);
  return rc;
}

static void premap(int ctl, int reply) {
  uint32_t count;
  read_exact(ctl, &count, sizeof count);
  if (count > PREMAP_MAX) {
    answer(reply, "error: premap: %u areas, at most %u at once", count, PREMAP_MAX);
    _exit(6);  // out of step with the server: nothing sensible follows
  }
  char bits[PREMAP_MAX + 1];
  char *path = malloc(PREMAP_PATH_MAX + 1);
  if (!path) _exit(5);
  int failed = 0;
  for (uint32_t i = 0; i < count; i++) {
    struct premap_area a;
    read_exact(ctl, &a.start, 8);
    read_exact(ctl, &a.len, 8);
    read_exact(ctl, &a.prot, 4 * 5);
    if (a.path_len > PREMAP_PATH_MAX) {
      answer(reply, "error: premap: a path of %u bytes", a.path_len);
      _exit(6);
    }
    read_exact(ctl, path, a.path_len);
    path[a.path_len] = 0;
    bits[i] = '0';
    void *at = failed ? MAP_FAILED : mmap((void *)(uintptr_t)a.start, (size_t)a.len, (int)a.prot, (int)(a.flags | MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE), -1, 0);
    if (at != MAP_FAILED && at != (void *)(uintptr_t)a.start) {
      munmap(at, (size_t)a.len);  // a kernel without MAP_FIXED_NOREPLACE placed it elsewhere
      at = MAP_FAILED;
    }
    if (at == MAP_FAILED) {
      uint64_t skip[3];
      for (uint32_t k = 0; k < a.extents; k++) read_exact(ctl, skip, sizeof skip);
      continue;
    }
    // Huge pages allowed or refused before the pages fault in; a refusal here only changes speed.
    if (a.advice) (void)madvise(at, (size_t)a.len, (int)a.advice);
    if (fill_area(reply, &a, path, ctl) < 0) {
      failed = 1;
      munmap(at, (size_t)a.len);
      continue;
    }
    bits[i] = '1';
  }
  free(path);
  if (failed) return;  // fill_area answered
  bits[count] = 0;
  answer(reply, "ok %s", bits);
}

// A child that exits at once with the saved wait status: by exit code, or killed by the
// saved signal (without a core file: RLIMIT_CORE 0, so the status's core flag is lost).
static void __attribute__((noreturn)) become_zombie(uint32_t status, uint32_t session, uint32_t pgid) {
  if (session) setsid();
  else if (pgid) setpgid(0, (pid_t)pgid);
  if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
  int sig = WTERMSIG(status);
  struct rlimit none = {0, 0};
  setrlimit(RLIMIT_CORE, &none);
  signal(sig, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  sigprocmask(SIG_UNBLOCK, &set, NULL);
  kill(getpid(), sig);
  _exit(128 + sig);
}

static void make_zombie(int ctl, int reply) {
  uint32_t w[4];
  read_exact(ctl, w, sizeof w);
  uint32_t pid = w[0], status = w[1];
  if ((status & 0x7f) == 0x7f || (!WIFEXITED(status) && !WIFSIGNALED(status))) {
    answer(reply, "error: task-%u: exit status 0x%x is not one of an exited process", pid, status);
    return;
  }
  pid_t child = fork_with_pid((pid_t)pid);
  if (child == 0) become_zombie(status, w[2], w[3]);
  if (child < 0) {
    answer(reply, errno == EEXIST ? "error: PID %u is taken%s" : "error: clone3(set_tid [%u]): %s", pid, errno == EEXIST ? "" : strerror(errno));
    return;
  }
  // Exited but not reaped: its parent's wait gets it after the restore.
  siginfo_t si;
  memset(&si, 0, sizeof si);
  while (waitid(P_PID, (id_t)child, &si, WEXITED | WNOWAIT) < 0) {
    if (errno != EINTR) {
      answer(reply, "error: waitid(task-%u): %s", pid, strerror(errno));
      return;
    }
  }
  int got_exit = si.si_code == CLD_EXITED;
  if (got_exit ? !WIFEXITED(status) || si.si_status != WEXITSTATUS(status) : !WIFSIGNALED(status) || si.si_status != WTERMSIG(status)) {
    answer(reply, "error: task-%u: ended with %s %d, not the saved status 0x%x", pid, got_exit ? "exit code" : "signal", si.si_status, status);
    return;
  }
  answer(reply, "ok");
}

void serve_tree_commands(int ctl, int reply, int work_base, const int *object_fd, uint32_t objects) {
  for (;;) {
    char cmd;
    read_exact(ctl, &cmd, 1);
    switch (cmd) {
      case 'F':
        fork_child(ctl, reply, work_base, object_fd, objects);
        break;
      case 'M':
        premap(ctl, reply);
        break;
      case 'Z':
        make_zombie(ctl, reply);
        break;
      case 'E':
        return;
      default:
        answer(reply, "error: unknown command 0x%02x", (unsigned char)cmd);
        _exit(6);
    }
  }
}
