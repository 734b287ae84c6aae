// File descriptors of another process: kcmp, pidfd_getfd, a non-consuming look into pipes,
// and close(2) for the fds getFd hands out.
//
// kcmpFile, getFd and close are single fast system calls and run synchronously. peekPipe is a
// handful of calls that never block (everything is O_NONBLOCK) but copies up to the pipe's
// capacity (1 MiB at most without CAP_SYS_RESOURCE), so it runs on libuv's pool.
#include "module.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/kcmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

// kcmp(KCMP_FILE) of fd1 of pid1 and fd2 of pid2: 0 when both are one open file description.
static napi_value kcmp_file(napi_env env, int32_t pid1, int32_t fd1, int32_t pid2, int32_t fd2) {
  long r = syscall(SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2);
  if (r < 0) {
    throw_errno(env, errno, "kcmp(pid %d, pid %d, KCMP_FILE, %d, %d)", pid1, pid2, fd1, fd2);
    return NULL;
  }
  return make_i32(env, (int32_t)r);
}

napi_value js_kcmp_file(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t pid, fd1, fd2;
  if (!arg_count(env, info, 3, argv) || !get_i32(env, argv[0], "pid", &pid) || !get_i32(env, argv[1], "fd1", &fd1) ||
      !get_i32(env, argv[2], "fd2", &fd2))
    return NULL;
  return kcmp_file(env, pid, fd1, pid, fd2);
}

// kcmpFileAcross: the same comparison between fds of two processes (a tree's tasks share
// descriptions inherited over fork or passed over SCM_RIGHTS).
napi_value js_kcmp_file_across(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t pid1, fd1, pid2, fd2;
  if (!arg_count(env, info, 4, argv) || !get_i32(env, argv[0], "pid1", &pid1) || !get_i32(env, argv[1], "fd1", &fd1) ||
      !get_i32(env, argv[2], "pid2", &pid2) || !get_i32(env, argv[3], "fd2", &fd2))
    return NULL;
  return kcmp_file(env, pid1, fd1, pid2, fd2);
}

// kcmpGroups: sorts fds with kcmp(KCMP_FILE) as the comparator (the kernel's order of the
// struct file pointers) and labels each fd with the lowest fd of its open file description.
// One native call instead of n log n calls from JavaScript: 10,000 fds of /dev/null form one
// candidate group of that size.
typedef struct {
  pid_t pid;
  const int32_t *fds;
  int err;
  int32_t bad_a, bad_b;
} kcmp_sort_t;

static int kcmp_order(const void *a, const void *b, void *arg) {
  kcmp_sort_t *ks = arg;
  int32_t fa = ks->fds[*(const int32_t *)a], fb = ks->fds[*(const int32_t *)b];
  long r = syscall(SYS_kcmp, ks->pid, ks->pid, KCMP_FILE, fa, fb);
  if (r < 0 || r == 3) {
    if (!ks->err) {
      ks->err = r < 0 ? errno : EINVAL;
      ks->bad_a = fa;
      ks->bad_b = fb;
    }
    return 0;
  }
  return r == 0 ? 0 : r == 1 ? -1 : 1;
}

napi_value js_kcmp_groups(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "pid", &pid)) return NULL;
  uint32_t n;
  if (napi_get_array_length(env, argv[1], &n) != napi_ok) {
    type_error(env, "fds must be an array of numbers");
    return NULL;
  }
  int32_t *fds = malloc((n ? n : 1) * sizeof *fds), *order = malloc((n ? n : 1) * sizeof *order);
  if (!fds || !order) {
    free(fds);
    free(order);
    throw_errno(env, ENOMEM, "kcmpGroups(%u fds)", n);
    return NULL;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    napi_get_element(env, argv[1], i, &v);
    if (!get_i32(env, v, "fd", &fds[i])) {
      free(fds);
      free(order);
      return NULL;
    }
    order[i] = (int32_t)i;
  }
  kcmp_sort_t ks = {.pid = pid, .fds = fds};
  qsort_r(order, n, sizeof *order, kcmp_order, &ks);
  napi_value out = NULL;
  if (ks.err) {
    throw_errno(env, ks.err, "kcmp(pid %d, pid %d, KCMP_FILE, %d, %d)", pid, pid, ks.bad_a, ks.bad_b);
  } else {
    napi_create_array_with_length(env, n, &out);
    for (uint32_t i = 0; i < n;) {
      // One run of equal entries is one description: label it with its lowest fd.
      uint32_t j = i + 1;
      int32_t lowest = fds[order[i]];
      while (j < n && kcmp_order(&order[j - 1], &order[j], &ks) == 0) {
        if (fds[order[j]] < lowest) lowest = fds[order[j]];
        j++;
      }
      for (uint32_t k = i; k < j; k++) napi_set_element(env, out, (uint32_t)order[k], make_i32(env, lowest));
      i = j;
    }
    if (ks.err) {
      throw_errno(env, ks.err, "kcmp(pid %d, pid %d, KCMP_FILE, %d, %d)", pid, pid, ks.bad_a, ks.bad_b);
      out = NULL;
    }
  }
  free(fds);
  free(order);
  return out;
}

// kcmp(pid, pid, KCMP_EPOLL_TFD, fd, {efd, tfd, toff}): compares the file at the task's `fd`
// with the one its epoll `efd` watches as item (tfd, toff), toff counting the items with the
// same fd number in the order fdinfo lists them. Finds an item's file after its fd was closed.
napi_value js_kcmp_epoll_target(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  int32_t pid, fd, efd, tfd, toff, epoll_pid;
  size_t argc = 6;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5) {
    napi_throw_type_error(env, NULL, "kcmpEpollTarget(pid, fd, efd, tfd, toff[, epollPid])");
    return NULL;
  }
  if (!get_i32(env, argv[0], "pid", &pid) || !get_i32(env, argv[1], "fd", &fd) ||
      !get_i32(env, argv[2], "efd", &efd) || !get_i32(env, argv[3], "tfd", &tfd) || !get_i32(env, argv[4], "toff", &toff))
    return NULL;
  // The epoll may be another process's (one in flight is ckptfs's own fd).
  epoll_pid = pid;
  if (argc >= 6 && !get_i32(env, argv[5], "epollPid", &epoll_pid)) return NULL;
  struct kcmp_epoll_slot slot = {(uint32_t)efd, (uint32_t)tfd, (uint32_t)toff};
  long r = syscall(SYS_kcmp, pid, epoll_pid, KCMP_EPOLL_TFD, fd, (unsigned long)&slot);
  if (r < 0) {
    throw_errno(env, errno, "kcmp(pid %d, pid %d, KCMP_EPOLL_TFD, %d, {%d, %d, %d})", pid, epoll_pid, fd, efd, tfd, toff);
    return NULL;
  }
  return make_i32(env, (int32_t)r);
}

napi_value js_get_fd(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid, fd;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "pid", &pid) || !get_i32(env, argv[1], "fd", &fd))
    return NULL;
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) {
    throw_errno(env, errno, "pidfd_open(pid %d)", pid);
    return NULL;
  }
  int r = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);  // the new fd is O_CLOEXEC
  int e = errno;
  close(pidfd);
  if (r < 0) {
    throw_errno(env, e, "pidfd_getfd(pid %d, fd %d)", pid, fd);
    return NULL;
  }
  return make_i32(env, r);
}

napi_value js_event_fd(napi_env env, napi_callback_info info) {
  (void)info;
  int fd = eventfd(0, EFD_CLOEXEC);
  if (fd < 0) {
    throw_errno(env, errno, "eventfd");
    return NULL;
  }
  return make_i32(env, fd);
}

napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!arg_count(env, info, 1, argv) || !get_i32(env, argv[0], "fd", &fd)) return NULL;
  // No retry on EINTR: on Linux the fd is released even then.
  if (close(fd) < 0 && errno != EINTR) {
    throw_errno(env, errno, "close(%d)", fd);
    return NULL;
  }
  return make_undefined(env);
}

// ---- pipeSize ----

// The capacity (F_GETPIPE_SZ) of the pipe behind fd `fd` of `pid`, through a new read end of it.
napi_value js_pipe_size(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid, fd;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "pid", &pid) || !get_i32(env, argv[1], "fd", &fd)) return NULL;
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, fd);
  int src = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (src < 0) {
    throw_errno(env, errno, "open(%s, O_RDONLY|O_NONBLOCK)", path);
    return NULL;
  }
  int size = fcntl(src, F_GETPIPE_SZ);
  int err = errno;
  close(src);
  if (size < 0) {
    throw_errno(env, err, "fcntl(%s, F_GETPIPE_SZ)", path);
    return NULL;
  }
  return make_i32(env, size);
}

// ---- peekPipe ----

typedef struct {
  task_t t;
  pid_t pid;
  int fd;
  unsigned char *data;
  size_t len;
} pipe_task_t;

static void peek_pipe_run(task_t *t) {
  pipe_task_t *pt = (pipe_task_t *)t;
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd/%d", pt->pid, pt->fd);
  // Opening the magic link gives a new read end of the same pipe, whichever end the task has.
  int src = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (src < 0) {
    nerr_set(&t->err, errno, "open(%s, O_RDONLY|O_NONBLOCK)", path);
    return;
  }
  int priv[2] = {-1, -1};
  int size = fcntl(src, F_GETPIPE_SZ);
  if (size < 0) {
    nerr_set(&t->err, errno, "fcntl(%s, F_GETPIPE_SZ)", path);
    goto out;
  }
  if (pipe2(priv, O_NONBLOCK | O_CLOEXEC) < 0) {
    nerr_set(&t->err, errno, "pipe2(O_NONBLOCK|O_CLOEXEC)");
    goto out;
  }
  // tee duplicates buffer slots, so the private pipe needs as many slots as the source.
  int have = fcntl(priv[1], F_GETPIPE_SZ);
  if (have < size && fcntl(priv[1], F_SETPIPE_SZ, size) < 0) {
    nerr_set(&t->err, errno, "fcntl(pipe, F_SETPIPE_SZ, %d)", size);
    goto out;
  }
  // One tee takes every buffer there is (it never consumes the source; calling it twice
  // would duplicate the data). An empty pipe gives EAGAIN: zero bytes.
  ssize_t n = tee(src, priv[1], INT_MAX, SPLICE_F_NONBLOCK);
  if (n < 0) {
    if (errno != EAGAIN) {
      nerr_set(&t->err, errno, "tee(%s, pipe, SPLICE_F_NONBLOCK)", path);
      goto out;
    }
    n = 0;
  }
  pt->data = malloc(n ? (size_t)n : 1);
  if (!pt->data) {
    nerr_set(&t->err, ENOMEM, "peekPipe(pid %d, fd %d)", pt->pid, pt->fd);
    goto out;
  }
  while (pt->len < (size_t)n) {
    ssize_t r = read(priv[0], pt->data + pt->len, (size_t)n - pt->len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      nerr_set(&t->err, r < 0 ? errno : EIO, "read(private pipe, %zu)", (size_t)n - pt->len);
      goto out;
    }
    pt->len += (size_t)r;
  }
out:
  close(src);
  if (priv[0] >= 0) close(priv[0]);
  if (priv[1] >= 0) close(priv[1]);
}

static napi_value peek_pipe_settle(napi_env env, task_t *t) {
  pipe_task_t *pt = (pipe_task_t *)t;
  napi_value b = make_owned_buffer(env, pt->data, pt->len);
  pt->data = NULL;
  return b;
}

static void peek_pipe_destroy(task_t *t) {
  free(((pipe_task_t *)t)->data);
  free(t);
}

napi_value js_peek_pipe(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid, fd;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "pid", &pid) || !get_i32(env, argv[1], "fd", &fd))
    return NULL;
  pipe_task_t *pt = calloc(1, sizeof *pt);
  if (!pt) return NULL;
  pt->t.run = peek_pipe_run;
  pt->t.settle = peek_pipe_settle;
  pt->t.destroy = peek_pipe_destroy;
  pt->pid = pid;
  pt->fd = fd;
  return pool_submit(env, &pt->t);
}
