// Netlink and packet sockets (docs/RESTORE.md, kinds 17 and 18): what a copy of a task's
// socket (taken with getFd, pidfd_getfd) says about itself through getsockname, getpeername
// and getsockopt, and what only sock_diag tells (netlink_diag: a dump in progress; packet_diag:
// PACKET_COPY_THRESH, the membership list and the rings). The diag socket is made in the
// task's network namespace (the calling thread enters it for the one socket() call and comes
// back), so a task in a namespace of its own is seen in its own tables. Every call is a
// single non-blocking system call or one netlink dump: they run synchronously.
#include "module.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/netlink_diag.h>
#include <linux/inet_diag.h>
#include <linux/packet_diag.h>
#include <linux/sock_diag.h>
#include <net/if.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#ifndef SO_MEMINFO
#define SO_MEMINFO 55
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

static void set_prop(napi_env env, napi_value obj, const char *name, napi_value v) { napi_set_named_property(env, obj, name, v); }

// The socket's own address (`size` bytes at `addr`) and its inode; 0, or -1 with a JS error thrown.
static int name_and_stat(napi_env env, int fd, void *addr, socklen_t size, struct stat *st) {
  memset(addr, 0, size);
  if (getsockname(fd, (struct sockaddr *)addr, &size) < 0) {
    throw_errno(env, errno, "getsockname(fd %d)", fd);
    return -1;
  }
  if (fstat(fd, st) < 0) {
    throw_errno(env, errno, "fstat(fd %d)", fd);
    return -1;
  }
  return 0;
}

static napi_value make_u32v(napi_env env, uint32_t v) {
  napi_value r;
  napi_create_uint32(env, v, &r);
  return r;
}

// getsockopt of an int; the option's absence (an older kernel) reads as 0.
static int opt_int(int fd, int level, int name) {
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(fd, level, name, &v, &len) < 0) return 0;
  return v;
}

// Bytes waiting in the receive queue (SO_MEMINFO's SK_MEMINFO_RMEM_ALLOC; -1: not known).
static int64_t queued_bytes(int fd) {
  uint32_t mem[SK_MEMINFO_VARS];
  socklen_t len = sizeof mem;
  memset(mem, 0, sizeof mem);
  if (getsockopt(fd, SOL_SOCKET, SO_MEMINFO, mem, &len) < 0 || len < sizeof(uint32_t)) return -1;
  return mem[SK_MEMINFO_RMEM_ALLOC];
}

// The number of BPF instructions a classic filter attached with SO_ATTACH_FILTER has (0: none).
static int filter_length(int fd) {
  socklen_t len = 0;
  if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, NULL, &len) < 0) return 0;
  return (int)len;
}

// The options every socket family of this module keeps.
static void common_to_js(napi_env env, napi_value obj, int fd) {
  set_prop(env, obj, "type", make_i32(env, opt_int(fd, SOL_SOCKET, SO_TYPE)));
  set_prop(env, obj, "rcvbuf", make_i32(env, opt_int(fd, SOL_SOCKET, SO_RCVBUF)));
  set_prop(env, obj, "sndbuf", make_i32(env, opt_int(fd, SOL_SOCKET, SO_SNDBUF)));
  set_prop(env, obj, "queued", make_i64(env, queued_bytes(fd)));
  set_prop(env, obj, "filter", make_i32(env, filter_length(fd)));
}

// A NETLINK_SOCK_DIAG socket in the network namespace of `pid`; -1 with errno set.
static int diag_socket_of(int pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/net", pid);
  struct stat theirs, ours;
  if (stat(path, &theirs) < 0 || stat("/proc/thread-self/ns/net", &ours) < 0) return -1;
  if (theirs.st_ino == ours.st_ino && theirs.st_dev == ours.st_dev) return socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  int back = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  int there = open(path, O_RDONLY | O_CLOEXEC);
  int sk = -1, saved = 0;
  if (back >= 0 && there >= 0 && setns(there, CLONE_NEWNET) == 0) {
    sk = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    saved = errno;
    // Coming back cannot fail for a thread that could leave (it holds the namespace open).
    if (setns(back, CLONE_NEWNET) < 0) abort();
  } else {
    saved = errno;
  }
  if (back >= 0) close(back);
  if (there >= 0) close(there);
  errno = saved;
  return sk;
}

// Sends one dump request and calls `found` with the message whose inode is `ino` (the
// message's length after its header); returns 0 when it was found, 1 when not, -1 on error.
typedef void diag_found_fn(napi_env env, napi_value obj, const void *msg, size_t len);

typedef struct {
  uint32_t ino;
  size_t ino_offset;
  diag_found_fn *found;
  napi_value obj;
  int seen;
} diag_search_t;

static void diag_match(napi_env env, const void *msg, size_t len, void *arg) {
  diag_search_t *s = arg;
  uint32_t ino;
  memcpy(&ino, (const char *)msg + s->ino_offset, sizeof ino);
  if (ino != s->ino || s->seen) return;
  s->found(env, s->obj, msg, len);
  s->seen = 1;
}

static int diag_find(napi_env env, int pid, const void *req, size_t req_len, uint32_t ino, size_t min_len, size_t ino_offset, diag_found_fn *found, napi_value obj) {
  int nl = diag_socket_of(pid);
  if (nl < 0) {
    throw_errno(env, errno, "socket(AF_NETLINK, NETLINK_SOCK_DIAG) in the network namespace of pid %d", pid);
    return -1;
  }
  diag_search_t s = {.ino = ino, .ino_offset = ino_offset, .found = found, .obj = obj};
  int r = sockdiag_dump(env, nl, req, req_len, min_len, "sock_diag", diag_match, &s);
  close(nl);
  return r < 0 ? -1 : s.seen ? 0 : 1;
}

// The next attribute after a diag message of `head` bytes (*at starts at 0); NULL after the last.
static const struct nlattr *next_attr(const void *msg, size_t len, size_t head, size_t *at, const void **data, size_t *dlen) {
  size_t off = *at ? *at : NLMSG_ALIGN(head);
  if (off + sizeof(struct nlattr) > len) return NULL;
  const struct nlattr *a = (const struct nlattr *)((const char *)msg + off);
  if (a->nla_len < sizeof *a || off + a->nla_len > len) return NULL;
  *data = (const char *)a + NLA_HDRLEN;
  *dlen = a->nla_len - NLA_HDRLEN;
  *at = off + NLA_ALIGN(a->nla_len);
  return a;
}

static void netlink_found(napi_env env, napi_value obj, const void *msg, size_t len) {
  const struct netlink_diag_msg *m = msg;
  set_prop(env, obj, "diagState", make_u32v(env, m->ndiag_state));
  const struct nlattr *a;
  const void *data;
  size_t dlen, at = 0;
  while ((a = next_attr(msg, len, sizeof *m, &at, &data, &dlen))) {
    if (a->nla_type == NETLINK_DIAG_FLAGS && dlen >= 4) set_prop(env, obj, "diagFlags", make_u32v(env, *(const uint32_t *)data));
  }
}

// netlinkSocket(pid, fd): { protocol, type, portid, dstPortid, dstGroup, groups: number[],
// pktinfo, broadcastError, noEnobufs, listenAllNsid, capAck, extAck, strictChk, rcvbuf, sndbuf,
// queued, filter, diagState?, diagFlags? } (diag fields absent when sock_diag does not list it).
napi_value js_netlink_socket(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid, fd;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "pid", &pid) || !get_i32(env, argv[1], "fd", &fd)) return NULL;
  struct sockaddr_nl self, peer;
  struct stat st;
  if (name_and_stat(env, fd, &self, sizeof self, &st) < 0) return NULL;
  socklen_t len = sizeof peer;
  memset(&peer, 0, sizeof peer);
  if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0) {
    throw_errno(env, errno, "getpeername(fd %d)", fd);
    return NULL;
  }
  napi_value obj;
  napi_create_object(env, &obj);
  set_prop(env, obj, "protocol", make_i32(env, opt_int(fd, SOL_SOCKET, SO_PROTOCOL)));
  set_prop(env, obj, "portid", make_u32v(env, self.nl_pid));
  set_prop(env, obj, "dstPortid", make_u32v(env, peer.nl_pid));
  // connect() takes one group as a mask (the lowest bit set): getpeername gives it back so.
  set_prop(env, obj, "dstGroup", make_u32v(env, peer.nl_groups ? (uint32_t)__builtin_ffs((int)peer.nl_groups) : 0));
  // Every group, however many: NETLINK_LIST_MEMBERSHIPS says how long the bitmap is.
  uint32_t small[64];
  uint32_t *bits = small;
  socklen_t blen = sizeof small;
  memset(small, 0, sizeof small);
  if (getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, bits, &blen) < 0) {
    throw_errno(env, errno, "getsockopt(fd %d, NETLINK_LIST_MEMBERSHIPS)", fd);
    return NULL;
  }
  if (blen > sizeof small) {
    bits = calloc(1, blen);
    if (!bits || getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, bits, &blen) < 0) {
      free(bits);
      throw_errno(env, bits ? errno : ENOMEM, "getsockopt(fd %d, NETLINK_LIST_MEMBERSHIPS)", fd);
      return NULL;
    }
  }
  napi_value groups;
  napi_create_array(env, &groups);
  uint32_t count = 0;
  for (uint32_t i = 0; i < blen / 4; i++)
    for (uint32_t b = 0; b < 32; b++)
      if (bits[i] & (1u << b)) napi_set_element(env, groups, count++, make_u32v(env, i * 32 + b + 1));
  if (bits != small) free(bits);
  set_prop(env, obj, "groups", groups);
  set_prop(env, obj, "pktinfo", make_i32(env, opt_int(fd, SOL_NETLINK, NETLINK_PKTINFO)));
  set_prop(env, obj, "broadcastError", make_i32(env, opt_int(fd, SOL_NETLINK, NETLINK_BROADCAST_ERROR)));
  set_prop(env, obj, "noEnobufs", make_i32(env, opt_int(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS)));
  set_prop(env, obj, "listenAllNsid", make_i32(env, opt_int(fd, SOL_NETLINK, NETLINK_LISTEN_ALL_NSID)));
  set_prop(env, obj, "capAck", make_i32(env, opt_int(fd, SOL_NETLINK, NETLINK_CAP_ACK)));
  set_prop(env, obj, "extAck", make_i32(env, opt_int(fd, SOL_NETLINK, NETLINK_EXT_ACK)));
  set_prop(env, obj, "strictChk", make_i32(env, opt_int(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK)));
  common_to_js(env, obj, fd);

  struct {
    struct nlmsghdr h;
    struct netlink_diag_req r;
  } req = {
    .h = {.nlmsg_len = sizeof req, .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1},
    .r = {.sdiag_family = AF_NETLINK, .sdiag_protocol = NDIAG_PROTO_ALL, .ndiag_ino = (uint32_t)st.st_ino, .ndiag_show = NDIAG_SHOW_FLAGS},
  };
  if (diag_find(env, pid, &req, sizeof req, (uint32_t)st.st_ino, sizeof(struct netlink_diag_msg), offsetof(struct netlink_diag_msg, ndiag_ino), netlink_found, obj) < 0) return NULL;
  return obj;
}

static napi_value ring_to_js(napi_env env, const struct packet_diag_ring *r) {
  napi_value o;
  napi_create_object(env, &o);
  set_prop(env, o, "blockSize", make_u32v(env, r->pdr_block_size));
  set_prop(env, o, "blockNr", make_u32v(env, r->pdr_block_nr));
  set_prop(env, o, "frameSize", make_u32v(env, r->pdr_frame_size));
  set_prop(env, o, "frameNr", make_u32v(env, r->pdr_frame_nr));
  set_prop(env, o, "retireTmo", make_u32v(env, r->pdr_retire_tmo));
  set_prop(env, o, "sizeofPriv", make_u32v(env, r->pdr_sizeof_priv));
  set_prop(env, o, "features", make_u32v(env, r->pdr_features));
  return o;
}

static void packet_found(napi_env env, napi_value obj, const void *msg, size_t len) {
  const struct packet_diag_msg *m = msg;
  set_prop(env, obj, "diagFound", make_i32(env, 1));
  napi_value mclist;
  napi_create_array(env, &mclist);
  set_prop(env, obj, "mclist", mclist);
  const struct nlattr *a;
  const void *data;
  size_t dlen, at = 0;
  while ((a = next_attr(msg, len, sizeof *m, &at, &data, &dlen))) {
    switch (a->nla_type) {
      case PACKET_DIAG_INFO:
        if (dlen >= sizeof(struct packet_diag_info)) {
          const struct packet_diag_info *pi = data;
          set_prop(env, obj, "copyThresh", make_u32v(env, pi->pdi_copy_thresh));
          set_prop(env, obj, "diagFlags", make_u32v(env, pi->pdi_flags));
        }
        break;
      case PACKET_DIAG_MCLIST: {
        const struct packet_diag_mclist *ml = data;
        for (uint32_t i = 0; i < dlen / sizeof *ml; i++) {
          napi_value e, addr;
          napi_create_object(env, &e);
          set_prop(env, e, "ifindex", make_u32v(env, ml[i].pdmc_index));
          set_prop(env, e, "count", make_u32v(env, ml[i].pdmc_count));
          set_prop(env, e, "type", make_u32v(env, ml[i].pdmc_type));
          uint32_t alen = ml[i].pdmc_alen <= sizeof ml[i].pdmc_addr ? ml[i].pdmc_alen : sizeof ml[i].pdmc_addr;
          void *copy = malloc(alen ? alen : 1);
          if (copy) memcpy(copy, ml[i].pdmc_addr, alen);
          addr = copy ? make_owned_buffer(env, copy, alen) : make_undefined(env);
          set_prop(env, e, "addr", addr);
          napi_set_element(env, mclist, i, e);
        }
        break;
      }
      case PACKET_DIAG_FANOUT:
        // Present only for a socket in a group: getsockopt's 0 is also group 0 of type hash.
        set_prop(env, obj, "inFanout", make_i32(env, 1));
        break;
      case PACKET_DIAG_RX_RING:
        if (dlen >= sizeof(struct packet_diag_ring)) set_prop(env, obj, "rxRing", ring_to_js(env, data));
        break;
      case PACKET_DIAG_TX_RING:
        if (dlen >= sizeof(struct packet_diag_ring)) set_prop(env, obj, "txRing", ring_to_js(env, data));
        break;
    }
  }
}

// packetSocket(pid, fd): { protocol (host order), type, ifindex, ifname?, version, reserve,
// auxdata, origdev, vnetHdr, timestamp, fanout, loss, qdiscBypass, ignoreOutgoing, rcvbuf,
// sndbuf, queued, filter, diagFound?, copyThresh?, diagFlags?, mclist?, inFanout?, rxRing?, txRing? }.
napi_value js_packet_socket(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid, fd;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "pid", &pid) || !get_i32(env, argv[1], "fd", &fd)) return NULL;
  struct sockaddr_ll self;
  struct stat st;
  if (name_and_stat(env, fd, &self, sizeof self, &st) < 0) return NULL;
  napi_value obj;
  napi_create_object(env, &obj);
  set_prop(env, obj, "protocol", make_i32(env, ntohs(self.sll_protocol)));
  set_prop(env, obj, "ifindex", make_i32(env, self.sll_ifindex));
  if (self.sll_ifindex > 0) {
    // The name as the socket's own namespace knows it.
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_ifindex = self.sll_ifindex;
    if (ioctl(fd, SIOCGIFNAME, &ifr) == 0) {
      napi_value name;
      napi_create_string_utf8(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ), &name);
      set_prop(env, obj, "ifname", name);
    }
  }
  set_prop(env, obj, "version", make_i32(env, opt_int(fd, SOL_PACKET, PACKET_VERSION)));
  set_prop(env, obj, "reserve", make_i32(env, opt_int(fd, SOL_PACKET, PACKET_RESERVE)));
  set_prop(env, obj, "auxdata", make_i32(env, opt_int(fd, SOL_PACKET, PACKET_AUXDATA)));
  set_prop(env, obj, "origdev", make_i32(env, opt_int(fd, SOL_PACKET, PACKET_ORIGDEV)));
  set_prop(env, obj, "vnetHdr", make_i32(env, opt_int(fd, SOL_PACKET, PACKET_VNET_HDR)));
  set_prop(env, obj, "timestamp", make_i32(env, opt_int(fd, SOL_PACKET, PACKET_TIMESTAMP)));
  set_prop(env, obj, "fanout", make_u32v(env, (uint32_t)opt_int(fd, SOL_PACKET, PACKET_FANOUT)));
  set_prop(env, obj, "loss", make_i32(env, opt_int(fd, SOL_PACKET, PACKET_LOSS)));
  set_prop(env, obj, "qdiscBypass", make_i32(env, opt_int(fd, SOL_PACKET, PACKET_QDISC_BYPASS)));
  set_prop(env, obj, "ignoreOutgoing", make_i32(env, opt_int(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING)));
  common_to_js(env, obj, fd);

  struct {
    struct nlmsghdr h;
    struct packet_diag_req r;
  } req = {
    .h = {.nlmsg_len = sizeof req, .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1},
    .r = {.sdiag_family = AF_PACKET, .pdiag_ino = (uint32_t)st.st_ino, .pdiag_show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT},
  };
  if (diag_find(env, pid, &req, sizeof req, (uint32_t)st.st_ino, sizeof(struct packet_diag_msg), offsetof(struct packet_diag_msg, pdiag_ino), packet_found, obj) < 0) return NULL;
  return obj;
}

// ---- TCP and UDP sockets: what only inet_diag tells ----

#ifndef TCP_BOUND_INACTIVE
#define TCP_BOUND_INACTIVE 13
#endif

static void inet_found(napi_env env, napi_value obj, const void *msg, size_t len) {
  const struct inet_diag_msg *m = msg;
  set_prop(env, obj, "listed", make_i32(env, 1));
  set_prop(env, obj, "diagState", make_u32v(env, m->idiag_state));
  const struct nlattr *a;
  const void *data;
  size_t dlen, at = 0;
  while ((a = next_attr(msg, len, sizeof *m, &at, &data, &dlen))) {
    if (a->nla_type == INET_DIAG_SHUTDOWN && dlen >= 1) set_prop(env, obj, "shutdown", make_u32v(env, *(const uint8_t *)data));
  }
}

// One inet_diag dump of `domain`/`protocol` sockets in every state but TCP_NEW_SYN_RECV (a
// listener's pending requests have no inode), TCP_BOUND_INACTIVE included, looking for `ino`.
// Only sockets of local port `sport` (and remote port `dport`, when not 0) are sent: a task
// with thousands of sockets has each looked up in one walk of the kernel's tables, not in
// thousands of messages.
static int inet_diag_find(napi_env env, int pid, int domain, int protocol, uint16_t sport, uint16_t dport, uint32_t ino, napi_value obj) {
  struct {
    struct nlmsghdr h;
    struct inet_diag_req_v2 r;
  } req = {
    .h = {.nlmsg_len = sizeof req, .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1},
    .r = {.sdiag_family = (uint8_t)domain, .sdiag_protocol = (uint8_t)protocol, .idiag_states = ~(1u << 12),
          .id = {.idiag_sport = htons(sport), .idiag_dport = htons(dport)}},
  };
  return diag_find(env, pid, &req, sizeof req, ino, sizeof(struct inet_diag_msg), offsetof(struct inet_diag_msg, idiag_inode), inet_found, obj);
}

// Whether this kernel lists bound TCP sockets that neither listen nor connect (Linux 6.8's
// TCP_BOUND_INACTIVE): a socket of our own bound to a loopback port, looked for once.
static int bound_listed(napi_env env) {
  static int known = -1;
  if (known >= 0) return known;
  int sk = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  struct stat st;
  if (sk < 0 || bind(sk, (struct sockaddr *)&a, sizeof a) < 0 || getsockname(sk, (struct sockaddr *)&a, &alen) < 0 || fstat(sk, &st) < 0) {
    if (sk >= 0) close(sk);
    return 0;  // not known: not relied on this time, asked again next time
  }
  napi_value probe;
  napi_create_object(env, &probe);
  int r = inet_diag_find(env, getpid(), AF_INET, IPPROTO_TCP, ntohs(a.sin_port), 0, (uint32_t)st.st_ino, probe);
  close(sk);
  if (r < 0) {  // a JS error is pending: cleared, the answer is "not known"
    napi_value ignored;
    napi_get_and_clear_last_exception(env, &ignored);
    return 0;
  }
  known = r == 0;
  return known;
}

// inetDiag(pid, fd): { listed: 0|1, boundListed: 0|1, diagState?, shutdown } for a TCP or UDP
// socket (this process's copy `fd` of a socket of task `pid`). `shutdown` is sk_shutdown
// (RCV_SHUTDOWN 1, SEND_SHUTDOWN 2), which no getsockopt shows. A TCP socket that listens or is
// connected is in the tables by its state, and poll (POLLRDHUP) and its state tell all of its
// shutdown (its write side is shut in FIN_WAIT1 and after, never before): no dump. Else one
// inet_diag dump of its family, protocol and port in the task's network namespace; for a socket
// the tables do not hold (not bound; a closed TCP socket whose port went back) only
// RCV_SHUTDOWN is known, from poll.
napi_value js_inet_diag(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid, fd;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "pid", &pid) || !get_i32(env, argv[1], "fd", &fd)) return NULL;
  int domain = opt_int(fd, SOL_SOCKET, SO_DOMAIN), protocol = opt_int(fd, SOL_SOCKET, SO_PROTOCOL);
  struct stat st;
  if (fstat(fd, &st) < 0) {
    throw_errno(env, errno, "fstat(fd %d)", fd);
    return NULL;
  }
  if ((domain != AF_INET && domain != AF_INET6) || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)) {
    throw_errno(env, EINVAL, "fd %d: not a TCP or UDP socket", fd);
    return NULL;
  }
  struct pollfd p = {.fd = fd, .events = POLLRDHUP};
  if (poll(&p, 1, 0) < 0) {
    throw_errno(env, errno, "poll(fd %d)", fd);
    return NULL;
  }
  uint32_t rcv_shut = p.revents & POLLRDHUP ? 1 : 0;
  napi_value obj;
  napi_create_object(env, &obj);
  if (protocol == IPPROTO_TCP) {
    struct tcp_info ti;
    socklen_t tlen = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, SOL_TCP, TCP_INFO, &ti, &tlen) < 0) {
      throw_errno(env, errno, "getsockopt(fd %d, TCP_INFO)", fd);
      return NULL;
    }
    if (ti.tcpi_state != TCP_CLOSE) {
      int sent_fin = ti.tcpi_state == TCP_FIN_WAIT1 || ti.tcpi_state == TCP_FIN_WAIT2 || ti.tcpi_state == TCP_CLOSING || ti.tcpi_state == TCP_LAST_ACK || ti.tcpi_state == TCP_TIME_WAIT;
      set_prop(env, obj, "listed", make_i32(env, 1));
      set_prop(env, obj, "boundListed", make_i32(env, 1));
      set_prop(env, obj, "shutdown", make_u32v(env, (ti.tcpi_state == TCP_LISTEN ? 0 : rcv_shut) | (sent_fin ? 2 : 0)));
      return obj;
    }
  }
  set_prop(env, obj, "listed", make_i32(env, 0));
  set_prop(env, obj, "boundListed", make_i32(env, protocol == IPPROTO_TCP ? bound_listed(env) : 1));
  // The ports: sin_port and sin6_port are at the same place. No port: not in the tables.
  struct sockaddr_in6 self, peer;
  socklen_t len = sizeof self;
  memset(&self, 0, sizeof self);
  memset(&peer, 0, sizeof peer);
  if (getsockname(fd, (struct sockaddr *)&self, &len) < 0) {
    throw_errno(env, errno, "getsockname(fd %d)", fd);
    return NULL;
  }
  len = sizeof peer;
  if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0) peer.sin6_port = 0;
  int r = self.sin6_port ? inet_diag_find(env, pid, domain, protocol, ntohs(self.sin6_port), ntohs(peer.sin6_port), (uint32_t)st.st_ino, obj) : 1;
  if (r < 0) return NULL;
  if (r == 1) set_prop(env, obj, "shutdown", make_u32v(env, rcv_shut));
  return obj;
}
