// UNIX socket diagnostics (NETLINK_SOCK_DIAG, unix_diag): every UNIX socket of this process's
// network namespace with its name, the inode its path names, its peer, the connections
// waiting on it (listening sockets), its queue lengths and its shutdown state. /proc/net/unix
// shows names but not peers, which is what tells a pair inside a checkpoint from a connection
// to a process outside it.
//
// unixSockets is one netlink dump that never blocks on anything but the kernel's answer, and
// runs synchronously.
#include "module.h"

#include <errno.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void set_named(napi_env env, napi_value obj, const char *name, napi_value v) { napi_set_named_property(env, obj, name, v); }

static napi_value make_u32(napi_env env, uint32_t v) {
  napi_value r;
  napi_create_uint32(env, v, &r);
  return r;
}

// One unix_diag_msg and its attributes as a JS object.
static napi_value socket_to_js(napi_env env, const struct unix_diag_msg *m, size_t len) {
  napi_value obj, icons;
  napi_create_object(env, &obj);
  set_named(env, obj, "ino", make_u32(env, m->udiag_ino));
  set_named(env, obj, "type", make_u32(env, m->udiag_type));
  set_named(env, obj, "state", make_u32(env, m->udiag_state));
  napi_create_array(env, &icons);
  set_named(env, obj, "icons", icons);
  const struct nlattr *a = (const struct nlattr *)((const char *)m + NLMSG_ALIGN(sizeof *m));
  size_t left = len - NLMSG_ALIGN(sizeof *m);
  while (left >= sizeof *a && a->nla_len >= sizeof *a && a->nla_len <= left) {
    const void *data = (const char *)a + NLA_HDRLEN;
    size_t dlen = a->nla_len - NLA_HDRLEN;
    switch (a->nla_type) {
      case UNIX_DIAG_NAME: {
        void *copy = malloc(dlen ? dlen : 1);
        if (copy) {
          memcpy(copy, data, dlen);
          set_named(env, obj, "name", make_owned_buffer(env, copy, dlen));
        }
        break;
      }
      case UNIX_DIAG_VFS:
        if (dlen >= sizeof(struct unix_diag_vfs)) {
          const struct unix_diag_vfs *vfs = data;
          set_named(env, obj, "vfsIno", make_u32(env, vfs->udiag_vfs_ino));
          set_named(env, obj, "vfsDev", make_u32(env, vfs->udiag_vfs_dev));
        }
        break;
      case UNIX_DIAG_PEER:
        if (dlen >= 4) set_named(env, obj, "peer", make_u32(env, *(const uint32_t *)data));
        break;
      case UNIX_DIAG_ICONS:
        for (size_t i = 0; i < dlen / 4; i++) napi_set_element(env, icons, (uint32_t)i, make_u32(env, ((const uint32_t *)data)[i]));
        break;
      case UNIX_DIAG_RQLEN:
        if (dlen >= sizeof(struct unix_diag_rqlen)) {
          const struct unix_diag_rqlen *q = data;
          set_named(env, obj, "rqueue", make_u32(env, q->udiag_rqueue));
          set_named(env, obj, "wqueue", make_u32(env, q->udiag_wqueue));
        }
        break;
      case UNIX_DIAG_SHUTDOWN:
        if (dlen >= 1) set_named(env, obj, "shutdown", make_u32(env, *(const uint8_t *)data));
        break;
    }
    size_t step = NLA_ALIGN(a->nla_len);
    if (step >= left) break;
    left -= step;
    a = (const struct nlattr *)((const char *)a + step);
  }
  return obj;
}

// unixSockets(): the dump, as an array of { ino, type, state, name?, vfsIno?, vfsDev?, peer?,
// icons, rqueue?, wqueue?, shutdown? }.
int sockdiag_dump(napi_env env, int nl, const void *req, size_t req_len, size_t min_len, const char *what, sockdiag_each_fn *each, void *arg) {
  if (send(nl, req, req_len, 0) != (ssize_t)req_len) {
    throw_errno(env, errno, "send(%s dump request)", what);
    return -1;
  }
  size_t cap = 1 << 16;
  char *buf = malloc(cap);
  if (!buf) {
    throw_errno(env, ENOMEM, "%s buffer", what);
    return -1;
  }
  int result = 0;
  for (;;) {
    ssize_t n = recv(nl, buf, cap, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      throw_errno(env, errno, "recv(%s dump)", what);
      result = -1;
      break;
    }
    if (n == 0) break;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) goto done;
      if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = NLMSG_DATA(h);
        throw_errno(env, -e->error, "%s dump", what);
        result = -1;
        goto done;
      }
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(min_len)) continue;
      each(env, NLMSG_DATA(h), h->nlmsg_len - NLMSG_HDRLEN, arg);
    }
  }
done:
  free(buf);
  return result;
}

typedef struct {
  napi_value list;
  uint32_t count;
} unix_list_t;

static void add_unix_socket(napi_env env, const void *msg, size_t len, void *arg) {
  unix_list_t *l = arg;
  napi_set_element(env, l->list, l->count++, socket_to_js(env, msg, len));
}

napi_value js_unix_sockets(napi_env env, napi_callback_info info) {
  (void)info;
  int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0) {
    throw_errno(env, errno, "socket(AF_NETLINK, NETLINK_SOCK_DIAG)");
    return NULL;
  }
  struct {
    struct nlmsghdr h;
    struct unix_diag_req r;
  } req = {
    .h = {.nlmsg_len = sizeof req, .nlmsg_type = SOCK_DIAG_BY_FAMILY, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1},
    .r = {.sdiag_family = AF_UNIX, .udiag_states = ~0u,
          .udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN},
  };
  unix_list_t l = {.count = 0};
  napi_create_array(env, &l.list);
  int r = sockdiag_dump(env, nl, &req, sizeof req, sizeof(struct unix_diag_msg), "unix_diag", add_unix_socket, &l);
  close(nl);
  return r < 0 ? NULL : l.list;
}
