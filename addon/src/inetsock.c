// TCP and UDP sockets: what a copy of a task's socket (taken with getFd, pidfd_getfd) says
// about itself, and TCP_REPAIR on it (docs/RESTORE.md, kind 16). All calls are single,
// non-blocking system calls on an fd of this process, so they run synchronously; the queues
// a repair dump copies are at most the socket's buffer sizes.
#include "module.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>

static void set_prop(napi_env env, napi_value obj, const char *name, napi_value v) {
  napi_set_named_property(env, obj, name, v);
}

static napi_value make_str(napi_env env, const char *s) {
  napi_value v;
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  return v;
}

// getsockopt of an int; -1 with errno set when the socket has no such option.
static int int_opt(int fd, int level, int name, int *out) {
  socklen_t len = sizeof *out;
  *out = 0;
  return getsockopt(fd, level, name, out, &len);
}

// An address as {addr, port}; undefined for an address of no family (not bound, not connected).
static napi_value address_to_js(napi_env env, const struct sockaddr_storage *ss) {
  char text[INET6_ADDRSTRLEN];
  int port;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const void *)ss;
    inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    port = ntohs(in->sin_port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const void *)ss;
    inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
    port = ntohs(in6->sin6_port);
  } else {
    return make_undefined(env);
  }
  napi_value obj;
  napi_create_object(env, &obj);
  set_prop(env, obj, "addr", make_str(env, text));
  set_prop(env, obj, "port", make_i32(env, port));
  if (ss->ss_family == AF_INET6) set_prop(env, obj, "scopeId", make_i32(env, (int32_t)((const struct sockaddr_in6 *)(const void *)ss)->sin6_scope_id));
  return obj;
}

static int64_t timeout_us(int fd, int name) {
  struct timeval tv = {0, 0};
  socklen_t len = sizeof tv;
  if (getsockopt(fd, SOL_SOCKET, name, &tv, &len) < 0) return 0;
  return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

// The datagrams queued on a UDP socket and the address each came from, peeked: recvmsg
// (MSG_PEEK) walking the queue with SO_PEEK_OFF, which each peek of a whole datagram moves past
// it (a zero-length one is marked peeked and skipped by the next), as sockpeek.c does for UNIX
// sockets; the socket's own SO_PEEK_OFF is put back. Sets queue and senders on obj; -1 with
// errno on failure.
static int udp_queue(napi_env env, int fd, napi_value obj) {
  int peek_off = -1, zero = 0;
  if (int_opt(fd, SOL_SOCKET, SO_PEEK_OFF, &peek_off) < 0 || setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero) < 0) return -1;
  napi_value queue, senders;
  napi_create_array(env, &queue);
  napi_create_array(env, &senders);
  static char buf[65536];
  int err = 0;
  for (uint32_t count = 0;; count++) {
    struct sockaddr_storage from;
    memset(&from, 0, sizeof from);
    struct iovec iov = {buf, sizeof buf};
    struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0) {
      err = errno == EAGAIN ? 0 : errno;
      break;
    }
    if (count >= 1 << 20) {  // more than any receive buffer holds: the peek offset did not move on
      err = EOVERFLOW;
      break;
    }
    if ((size_t)n > sizeof buf) {  // no UDP datagram is larger than 65535 - 8 bytes
      err = EMSGSIZE;
      break;
    }
    char *copy = malloc(n ? (size_t)n : 1);
    if (!copy) {
      err = ENOMEM;
      break;
    }
    memcpy(copy, buf, (size_t)n);
    napi_set_element(env, queue, count, make_owned_buffer(env, copy, (size_t)n));
    napi_set_element(env, senders, count, address_to_js(env, &from));
  }
  if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &peek_off, sizeof peek_off) < 0 && !err) err = errno;
  if (err) {
    errno = err;
    return -1;
  }
  set_prop(env, obj, "queue", queue);
  set_prop(env, obj, "senders", senders);
  return 0;
}

// inetSocket(fd): family, type, protocol, addresses, TCP state and the options ckptfs keeps
// (TCP_CORK among them);
// a UDP socket's queued datagrams with their senders.
napi_value js_inet_socket(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!arg_count(env, info, 1, argv) || !get_i32(env, argv[0], "fd", &fd)) return NULL;
  int domain, type, protocol;
  if (int_opt(fd, SOL_SOCKET, SO_DOMAIN, &domain) < 0 || int_opt(fd, SOL_SOCKET, SO_TYPE, &type) < 0 || int_opt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol) < 0) {
    throw_errno(env, errno, "getsockopt(fd %d, SO_DOMAIN/SO_TYPE/SO_PROTOCOL)", fd);
    return NULL;
  }
  napi_value obj;
  napi_create_object(env, &obj);
  set_prop(env, obj, "domain", make_i32(env, domain));
  set_prop(env, obj, "type", make_i32(env, type));
  set_prop(env, obj, "protocol", make_i32(env, protocol));
  if (domain != AF_INET && domain != AF_INET6) return obj;

  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  memset(&ss, 0, sizeof ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
    throw_errno(env, errno, "getsockname(fd %d)", fd);
    return NULL;
  }
  set_prop(env, obj, "local", address_to_js(env, &ss));
  len = sizeof ss;
  memset(&ss, 0, sizeof ss);
  int connected = getpeername(fd, (struct sockaddr *)&ss, &len) == 0;
  set_prop(env, obj, "peer", connected ? address_to_js(env, &ss) : make_undefined(env));

  // tcpi_state is the kernel's sk_state; for a listening socket tcpi_unacked is the accept
  // queue's length and tcpi_sacked its limit (the backlog listen() was given, capped by somaxconn).
  int state = connected ? 1 : 7;  // TCP_ESTABLISHED, TCP_CLOSE: what a UDP socket's state is
  int32_t backlog = 0, pending = 0;
  if (protocol == IPPROTO_TCP) {
    struct tcp_info ti;
    socklen_t tlen = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, SOL_TCP, TCP_INFO, &ti, &tlen) < 0) {
      throw_errno(env, errno, "getsockopt(fd %d, TCP_INFO)", fd);
      return NULL;
    }
    state = ti.tcpi_state;
    if (state == TCP_LISTEN) {
      backlog = (int32_t)ti.tcpi_sacked;
      pending = (int32_t)ti.tcpi_unacked;
    }
  }
  set_prop(env, obj, "state", make_i32(env, state));
  set_prop(env, obj, "backlog", make_i32(env, backlog));
  set_prop(env, obj, "pending", make_i32(env, pending));
  int inq = 0, outq = 0;
  if (state != TCP_LISTEN) {
    ioctl(fd, SIOCINQ, &inq);
    ioctl(fd, SIOCOUTQ, &outq);
  }
  set_prop(env, obj, "inq", make_i32(env, inq));
  set_prop(env, obj, "outq", make_i32(env, outq));

  static const struct { const char *name; int level, opt; } opts[] = {
    {"reuseaddr", SOL_SOCKET, SO_REUSEADDR}, {"reuseport", SOL_SOCKET, SO_REUSEPORT},
    {"keepalive", SOL_SOCKET, SO_KEEPALIVE}, {"broadcast", SOL_SOCKET, SO_BROADCAST},
    {"rcvbuf", SOL_SOCKET, SO_RCVBUF}, {"sndbuf", SOL_SOCKET, SO_SNDBUF},
  };
  for (size_t i = 0; i < sizeof opts / sizeof *opts; i++) {
    int v;
    if (int_opt(fd, opts[i].level, opts[i].opt, &v) < 0) v = 0;
    set_prop(env, obj, opts[i].name, make_i32(env, v));
  }
  int v = 0;
  if (domain == AF_INET6 && int_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v) < 0) v = 0;
  set_prop(env, obj, "v6only", make_i32(env, v));
  static const struct { const char *name; int opt; } tcp_opts[] = {
    {"nodelay", TCP_NODELAY}, {"keepidle", TCP_KEEPIDLE}, {"keepintvl", TCP_KEEPINTVL}, {"keepcnt", TCP_KEEPCNT}, {"cork", TCP_CORK},
  };
  for (size_t i = 0; i < sizeof tcp_opts / sizeof *tcp_opts; i++) {
    v = 0;
    if (protocol == IPPROTO_TCP && int_opt(fd, SOL_TCP, tcp_opts[i].opt, &v) < 0) v = 0;
    set_prop(env, obj, tcp_opts[i].name, make_i32(env, v));
  }
  set_prop(env, obj, "rcvtimeoUs", make_i64(env, timeout_us(fd, SO_RCVTIMEO)));
  set_prop(env, obj, "sndtimeoUs", make_i64(env, timeout_us(fd, SO_SNDTIMEO)));
  if (protocol == IPPROTO_UDP && udp_queue(env, fd, obj) < 0) {
    throw_errno(env, errno, "recvmsg(fd %d, MSG_PEEK): the queued datagrams", fd);
    return NULL;
  }
  return obj;
}

static int set_repair(int fd, int on) {
  return setsockopt(fd, SOL_TCP, TCP_REPAIR, &on, sizeof on);
}

// The sequence number and the bytes of one queue, peeked (nothing is taken from the socket).
static int dump_queue(napi_env env, int fd, int queue, int size_ioctl, napi_value obj, const char *seq_name, const char *data_name, nerr_t *err) {
  if (setsockopt(fd, SOL_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue) < 0) {
    nerr_set(err, errno, "setsockopt(fd %d, TCP_REPAIR_QUEUE, %d)", fd, queue);
    return -1;
  }
  unsigned seq;
  socklen_t len = sizeof seq;
  if (getsockopt(fd, SOL_TCP, TCP_QUEUE_SEQ, &seq, &len) < 0) {
    nerr_set(err, errno, "getsockopt(fd %d, TCP_QUEUE_SEQ)", fd);
    return -1;
  }
  int size = 0;
  if (ioctl(fd, size_ioctl, &size) < 0) {
    nerr_set(err, errno, "ioctl(fd %d, %s)", fd, size_ioctl == SIOCINQ ? "SIOCINQ" : "SIOCOUTQ");
    return -1;
  }
  char *data = malloc(size ? (size_t)size : 1);
  if (!data) {
    nerr_set(err, ENOMEM, "%s of fd %d (%d bytes)", data_name, fd, size);
    return -1;
  }
  ssize_t got = size ? recv(fd, data, (size_t)size, MSG_PEEK | MSG_DONTWAIT) : 0;
  if (got != size) {
    nerr_set(err, got < 0 ? errno : EIO, "recv(fd %d, %s, MSG_PEEK): %zd of %d bytes", fd, data_name, got, size);
    free(data);
    return -1;
  }
  set_prop(env, obj, seq_name, make_u64(env, seq));
  set_prop(env, obj, data_name, make_owned_buffer(env, data, (size_t)size));
  return 0;
}

// tcpRepairDump(fd): puts an established connection in repair mode (it then sends nothing,
// also when closed) and reads what restoring it takes. The socket stays in repair mode; on a
// failure it leaves it again.
napi_value js_tcp_repair_dump(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!arg_count(env, info, 1, argv) || !get_i32(env, argv[0], "fd", &fd)) return NULL;
  if (set_repair(fd, TCP_REPAIR_ON) < 0) {
    throw_errno(env, errno, "setsockopt(fd %d, TCP_REPAIR, 1)", fd);
    return NULL;
  }
  nerr_t err = {0};
  napi_value obj;
  napi_create_object(env, &obj);
  if (dump_queue(env, fd, TCP_SEND_QUEUE, SIOCOUTQ, obj, "sendSeq", "sendQueue", &err) < 0 ||
      dump_queue(env, fd, TCP_RECV_QUEUE, SIOCINQ, obj, "recvSeq", "recvQueue", &err) < 0)
    goto failed;
  int none = TCP_NO_QUEUE;
  setsockopt(fd, SOL_TCP, TCP_REPAIR_QUEUE, &none, sizeof none);
  int unsent = 0;
  ioctl(fd, SIOCOUTQNSD, &unsent);
  set_prop(env, obj, "unsent", make_i32(env, unsent));

  struct tcp_info ti;
  socklen_t len = sizeof ti;
  memset(&ti, 0, sizeof ti);
  if (getsockopt(fd, SOL_TCP, TCP_INFO, &ti, &len) < 0) {
    nerr_set(&err, errno, "getsockopt(fd %d, TCP_INFO)", fd);
    goto failed;
  }
  int mss;
  if (int_opt(fd, SOL_TCP, TCP_MAXSEG, &mss) < 0) {
    nerr_set(&err, errno, "getsockopt(fd %d, TCP_MAXSEG)", fd);
    goto failed;
  }
  unsigned timestamp = 0;
  len = sizeof timestamp;
  if (getsockopt(fd, SOL_TCP, TCP_TIMESTAMP, &timestamp, &len) < 0) {
    nerr_set(&err, errno, "getsockopt(fd %d, TCP_TIMESTAMP)", fd);
    goto failed;
  }
  struct tcp_repair_window w;
  len = sizeof w;
  if (getsockopt(fd, SOL_TCP, TCP_REPAIR_WINDOW, &w, &len) < 0) {
    nerr_set(&err, errno, "getsockopt(fd %d, TCP_REPAIR_WINDOW)", fd);
    goto failed;
  }
  set_prop(env, obj, "mss", make_i32(env, mss));
  // The MSS the connection sends with (mss_cache): TCP_MAXSEG in repair mode is the clamp
  // (the peer's MSS), while the segment size was also bounded by half the peer's window.
  set_prop(env, obj, "sndMss", make_i32(env, (int32_t)ti.tcpi_snd_mss));
  set_prop(env, obj, "state", make_i32(env, ti.tcpi_state));
  set_prop(env, obj, "options", make_i32(env, ti.tcpi_options));
  set_prop(env, obj, "sndWscale", make_i32(env, ti.tcpi_snd_wscale));
  set_prop(env, obj, "rcvWscale", make_i32(env, ti.tcpi_rcv_wscale));
  set_prop(env, obj, "timestamp", make_u64(env, timestamp));
  set_prop(env, obj, "sndWl1", make_u64(env, w.snd_wl1));
  set_prop(env, obj, "sndWnd", make_u64(env, w.snd_wnd));
  set_prop(env, obj, "maxWindow", make_u64(env, w.max_window));
  set_prop(env, obj, "rcvWnd", make_u64(env, w.rcv_wnd));
  set_prop(env, obj, "rcvWup", make_u64(env, w.rcv_wup));
  return obj;

failed:
  set_repair(fd, TCP_REPAIR_OFF);
  napi_throw(env, nerr_to_js(env, &err));
  return NULL;
}

// tcpRepairOff(fd): the connection works again (the kernel sends a window probe).
napi_value js_tcp_repair_off(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!arg_count(env, info, 1, argv) || !get_i32(env, argv[0], "fd", &fd)) return NULL;
  if (set_repair(fd, TCP_REPAIR_OFF) < 0) {
    throw_errno(env, errno, "setsockopt(fd %d, TCP_REPAIR, 0)", fd);
    return NULL;
  }
  return make_undefined(env);
}
