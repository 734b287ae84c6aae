// A socket of another process seen from here: taken with pidfd_getfd, its options read with
// getsockopt, and its receive queue read without consuming it: recvmsg(MSG_PEEK) walking the
// queue with SO_PEEK_OFF (measured on 6.18: each peek advances the offset by the bytes it
// copied; a datagram peeked whole comes back as one message), the task's own SO_PEEK_OFF put
// back afterwards. The task is frozen; every call is non-blocking, so this runs synchronously.
//
// Fds passed with SCM_RIGHTS and still queued come with the peek as new fds of this process
// (close-on-exec), new descriptors of the very descriptions in flight: they are handed to the
// caller, who captures what they hold and must close them.
#include "module.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

static void set_named(napi_env env, napi_value obj, const char *name, napi_value v) { napi_set_named_property(env, obj, name, v); }

static int get_int_opt(int fd, int level, int name, int *out) {
  socklen_t len = sizeof *out;
  return getsockopt(fd, level, name, out, &len);
}

static int get_timeo_us(int fd, int name, int64_t *out) {
  struct timeval tv;
  socklen_t len = sizeof tv;
  if (getsockopt(fd, SOL_SOCKET, name, &tv, &len) < 0) return -1;
  *out = (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
  return 0;
}

// The fds an SCM_RIGHTS message handed us, as a JS array (undefined when there were none);
// adds their number to *count. Without a JS array (an error on the way) they are closed.
static napi_value take_rights(napi_env env, struct msghdr *msg, int *count) {
  napi_value list = NULL;
  uint32_t at = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int *fds = (int *)CMSG_DATA(c);
    if (!list && n > 0 && napi_create_array(env, &list) != napi_ok) list = NULL;
    for (size_t i = 0; i < n; i++) {
      if (list) napi_set_element(env, list, at++, make_i32(env, fds[i]));
      else close(fds[i]);
    }
    *count += (int)n;
  }
  return list ? list : make_undefined(env);
}

// Closes the fds of one take_rights array (undefined: none).
static void close_list(napi_env env, napi_value list) {
  napi_value v;
  uint32_t n = 0;
  bool is_array = false;
  if (!list || napi_is_array(env, list, &is_array) != napi_ok || !is_array) return;
  napi_get_array_length(env, list, &n);
  for (uint32_t j = 0; j < n; j++) {
    int32_t fd;
    if (napi_get_element(env, list, j, &v) == napi_ok && napi_get_value_int32(env, v, &fd) == napi_ok) close(fd);
  }
}

// Closes the fds of the first `count` messages' arrays (an error after some were taken).
static void close_rights(napi_env env, napi_value rights, uint32_t count) {
  for (uint32_t i = 0; i < count; i++) {
    napi_value list;
    if (napi_get_element(env, rights, i, &list) == napi_ok) close_list(env, list);
  }
}

typedef struct {
  void *data;
  size_t len;
  struct sockaddr_un from;
  socklen_t from_len;
} peeked_t;

// peekSocket(pid, fd): { domain, type, acceptconn, rcvbuf, sndbuf, passcred, rcvtimeoUs,
// sndtimeoUs, peekOff, queue: Buffer[], senders: (Buffer|undefined)[], rights:
// (number[]|undefined)[], rightsInFlight }. queue holds one Buffer per datagram or seqpacket
// record, and the bytes of a stream in pieces (a piece ends where fds came with the bytes);
// senders the sender's address of each (datagrams; undefined when it had none); rights the
// fds passed with each, now open in this process (the caller closes them).
napi_value js_peek_socket(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid, tfd;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "pid", &pid) || !get_i32(env, argv[1], "fd", &tfd)) return NULL;
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) {
    throw_errno(env, errno, "pidfd_open(pid %d)", pid);
    return NULL;
  }
  int fd = (int)syscall(SYS_pidfd_getfd, pidfd, tfd, 0);
  int e = errno;
  close(pidfd);
  if (fd < 0) {
    throw_errno(env, e, "pidfd_getfd(pid %d, fd %d)", pid, tfd);
    return NULL;
  }
  int domain = 0, type = 0, acceptconn = 0, rcvbuf = 0, sndbuf = 0, passcred = 0, peek_off = -1;
  int64_t rcvtimeo = 0, sndtimeo = 0;
  if (get_int_opt(fd, SOL_SOCKET, SO_DOMAIN, &domain) < 0 || get_int_opt(fd, SOL_SOCKET, SO_TYPE, &type) < 0 ||
      get_int_opt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acceptconn) < 0 || get_int_opt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf) < 0 ||
      get_int_opt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf) < 0 || get_int_opt(fd, SOL_SOCKET, SO_PASSCRED, &passcred) < 0 ||
      get_int_opt(fd, SOL_SOCKET, SO_PEEK_OFF, &peek_off) < 0 || get_timeo_us(fd, SO_RCVTIMEO, &rcvtimeo) < 0 ||
      get_timeo_us(fd, SO_SNDTIMEO, &sndtimeo) < 0) {
    throw_errno(env, errno, "getsockopt(pid %d, fd %d)", pid, tfd);
    close(fd);
    return NULL;
  }
  napi_value obj, queue, senders, rights_list;
  napi_create_object(env, &obj);
  napi_create_array(env, &queue);
  napi_create_array(env, &senders);
  napi_create_array(env, &rights_list);
  int rights = 0;
  uint32_t count = 0;
  // Only a socket that has a queue to read: not a listening one, not one of another family
  // (those are the caller's to read their own way).
  if (domain == AF_UNIX && !acceptconn) {
    int zero = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero) < 0) {
      throw_errno(env, errno, "setsockopt(pid %d, fd %d, SO_PEEK_OFF, 0)", pid, tfd);
      close(fd);
      return NULL;
    }
    int records = type != SOCK_STREAM;
    size_t cap = 1 << 16;
    int offset = 0;
    for (;;) {
      void *buf = malloc(cap);
      if (!buf) {
        e = ENOMEM;
        break;
      }
      union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int) * 253) + CMSG_SPACE(sizeof(struct ucred))];
      } control;
      struct sockaddr_un from;
      struct iovec iov = {buf, cap};
      struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1,
                           .msg_control = &control, .msg_controllen = sizeof control};
      ssize_t n = recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC | (records ? MSG_TRUNC : 0));
      int err = errno;
      napi_value passed = n >= 0 ? take_rights(env, &msg, &rights) : NULL;
      if (n >= 0 && (msg.msg_flags & MSG_CTRUNC)) {
        // Fds that did not fit (or that this process had no room for) were dropped by the
        // kernel: the queue cannot be captured whole.
        napi_set_element(env, rights_list, count, passed);
        close_rights(env, rights_list, count + 1);
        free(buf);
        setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &peek_off, sizeof peek_off);
        close(fd);
        throw_errno(env, EMFILE, "recvmsg(pid %d, fd %d, MSG_PEEK): queued message %u: its control data (fds passed with SCM_RIGHTS) did not all come through", pid, tfd, count + 1);
        return NULL;
      }
      if (n < 0) {
        free(buf);
        // EAGAIN: the end of the queue; EINVAL: a stream socket that is not connected;
        // ENOTCONN: a seqpacket socket that is not (zdtm sk-unix-rel-seqpacket's listener).
        e = err == EAGAIN || err == EINVAL || err == ENOTCONN ? 0 : err;
        break;
      }
      if (records && (size_t)n > cap) {
        // A datagram larger than the buffer: peek it again whole, from where it starts.
        free(buf);
        cap = (size_t)n;
        setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &offset, sizeof offset);
        close_list(env, passed);  // they come again with the whole datagram
        continue;
      }
      if (n == 0 && !records) {
        close_list(env, passed);
        free(buf);
        e = 0;
        break;  // end of stream (shut down): nothing more
      }
      offset += (int)n;
      napi_set_element(env, queue, count, make_owned_buffer(env, buf, (size_t)n));
      napi_value sender;
      if (records && msg.msg_namelen > sizeof(sa_family_t)) {
        size_t len = msg.msg_namelen - sizeof(sa_family_t);
        void *copy = malloc(len);
        if (copy) memcpy(copy, from.sun_path, len);
        sender = copy ? make_owned_buffer(env, copy, len) : make_undefined(env);
      } else {
        sender = make_undefined(env);
      }
      napi_set_element(env, senders, count, sender);
      napi_set_element(env, rights_list, count, passed);
      count++;
      // A zero-length datagram is marked peeked by the kernel and skipped by the next peek.
    }
    // The task's own peek offset (-1: off) comes back whatever happened above.
    if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &peek_off, sizeof peek_off) < 0 && !e) e = errno;
    if (e) {
      close_rights(env, rights_list, count);
      throw_errno(env, e, "recvmsg(pid %d, fd %d, MSG_PEEK)", pid, tfd);
      close(fd);
      return NULL;
    }
  }
  close(fd);
  set_named(env, obj, "domain", make_i32(env, domain));
  set_named(env, obj, "type", make_i32(env, type));
  set_named(env, obj, "acceptconn", make_i32(env, acceptconn));
  set_named(env, obj, "rcvbuf", make_i32(env, rcvbuf));
  set_named(env, obj, "sndbuf", make_i32(env, sndbuf));
  set_named(env, obj, "passcred", make_i32(env, passcred));
  set_named(env, obj, "peekOff", make_i32(env, peek_off));
  set_named(env, obj, "rcvtimeoUs", make_i64(env, rcvtimeo));
  set_named(env, obj, "sndtimeoUs", make_i64(env, sndtimeo));
  set_named(env, obj, "queue", queue);
  set_named(env, obj, "senders", senders);
  set_named(env, obj, "rights", rights_list);
  set_named(env, obj, "rightsInFlight", make_i32(env, rights));
  return obj;
}
