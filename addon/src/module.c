// Node-API registration, errors, argument conversion and the generic task plumbing shared by
// the tracer thread and libuv's pool.
#include "module.h"
#include "tracer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- errors ----

void nerr_set(nerr_t *e, int code, const char *fmt, ...) {
  if (e->code) return;  // keep the first failure: it is the cause, later ones are fallout
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  e->code = code ? code : EIO;
}

void nerr_set_raw(nerr_t *e, int code, const char *fmt, ...) {
  if (e->code) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  e->code = code ? code : EIO;
  e->raw = 1;
}

napi_value nerr_to_js(napi_env env, const nerr_t *e) {
  char text[1400];
  if (e->raw)
    snprintf(text, sizeof text, "%s", e->msg);
  else
    snprintf(text, sizeof text, "%s: %s", e->msg, strerror(e->code));
  const char *name = strerrorname_np(e->code);
  char fallback[24];
  if (!name) {
    snprintf(fallback, sizeof fallback, "E%d", e->code);
    name = fallback;
  }
  napi_value msg, code, err, num;
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, msg, &err);  // sets .code
  napi_create_int32(env, e->code, &num);
  napi_set_named_property(env, err, "errno", num);
  return err;
}

void throw_errno(napi_env env, int code, const char *fmt, ...) {
  nerr_t e = {0};
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e.msg, sizeof e.msg, fmt, ap);
  va_end(ap);
  e.code = code ? code : EIO;
  napi_throw(env, nerr_to_js(env, &e));
}

int type_error(napi_env env, const char *fmt, ...) {
  char text[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", text);
  return 0;
}

// ---- arguments ----

int arg_count(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < want) return type_error(env, "expected %zu arguments, got %zu", want, argc);
  return 1;
}

int get_i32(napi_env env, napi_value v, const char *name, int32_t *out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_number) return type_error(env, "%s must be a number", name);
  double d;
  napi_get_value_double(env, v, &d);
  if (d != (double)(int32_t)d) return type_error(env, "%s must be a 32-bit integer", name);
  *out = (int32_t)d;
  return 1;
}

int get_u64(napi_env env, napi_value v, const char *name, uint64_t *out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_bigint) {
    // Negative BigInts are taken modulo 2^64 (e.g. -1n for an fd argument of -1).
    bool lossless;
    int64_t s;
    napi_get_value_bigint_int64(env, v, &s, &lossless);
    if (lossless) {
      *out = (uint64_t)s;
      return 1;
    }
    napi_get_value_bigint_uint64(env, v, out, &lossless);
    if (!lossless) return type_error(env, "%s does not fit in 64 bits", name);
    return 1;
  }
  if (t == napi_number) {
    double d;
    napi_get_value_double(env, v, &d);
    if (d < 0 || d > 9007199254740991.0 || d != (double)(uint64_t)d)
      return type_error(env, "%s must be a non-negative safe integer", name);
    *out = (uint64_t)d;
    return 1;
  }
  return type_error(env, "%s must be a bigint", name);
}

int get_bool(napi_env env, napi_value v, const char *name, int *out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_boolean) return type_error(env, "%s must be a boolean", name);
  bool b;
  napi_get_value_bool(env, v, &b);
  *out = b;
  return 1;
}

int get_buffer(napi_env env, napi_value v, const char *name, void **data, size_t *len) {
  bool is;
  napi_is_buffer(env, v, &is);
  if (is) {
    napi_get_buffer_info(env, v, data, len);
    return 1;
  }
  napi_is_typedarray(env, v, &is);
  if (is) {
    napi_typedarray_type type;
    size_t n, off;
    napi_value ab;
    napi_get_typedarray_info(env, v, &type, &n, data, &ab, &off);
    if (type == napi_uint8_array) {
      *len = n;
      return 1;
    }
  }
  return type_error(env, "%s must be a Buffer", name);
}

napi_value make_u64(napi_env env, uint64_t v) {
  napi_value r;
  napi_create_bigint_uint64(env, v, &r);
  return r;
}

napi_value make_i64(napi_env env, int64_t v) {
  napi_value r;
  napi_create_bigint_int64(env, v, &r);
  return r;
}

napi_value make_i32(napi_env env, int32_t v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

napi_value make_undefined(napi_env env) {
  napi_value r;
  napi_get_undefined(env, &r);
  return r;
}

static void free_data(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

napi_value make_owned_buffer(napi_env env, void *data, size_t len) {
  napi_value r = NULL;
  if (len == 0 || !data) {
    free(data);
    void *p;
    napi_create_buffer(env, 0, &p, &r);
    return r;
  }
  // External buffers avoid a copy of possibly large reads.
  napi_status status = napi_create_external_buffer(env, len, data, free_data, NULL, &r);
  if (status == napi_ok) return r;
  // node refuses a length over its Buffer limit as a generic failure after freeing data
  // through free_data: copying or freeing it here would be a use after free and a double free.
  if (status == napi_generic_failure) return NULL;
  // Some embedders forbid external buffers: fall back to one copy.
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) {
    napi_value ex;
    napi_get_and_clear_last_exception(env, &ex);
  }
  void *p;
  if (napi_create_buffer_copy(env, len, data, &p, &r) != napi_ok) r = NULL;  // too large for a Buffer
  free(data);
  return r;
}

// ---- tasks ----

napi_value task_promise(napi_env env, task_t *t) {
  napi_value promise;
  if (napi_create_promise(env, &t->deferred, &promise) != napi_ok) return NULL;
  return promise;
}

static void task_release(napi_env env, task_t *t) {
  for (int i = 0; i < 2; i++)
    if (t->keep[i]) napi_delete_reference(env, t->keep[i]);
  if (t->work) napi_delete_async_work(env, t->work);
  if (t->destroy)
    t->destroy(t);
  else
    free(t);
}

void task_free(napi_env env, task_t *t) { task_release(env, t); }

void task_finish(napi_env env, task_t *t) {
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  if (t->err.code) {
    napi_reject_deferred(env, t->deferred, nerr_to_js(env, &t->err));
  } else {
    napi_value v = t->settle ? t->settle(env, t) : make_undefined(env);
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending || !v) {
      napi_value ex;
      if (pending) {
        napi_get_and_clear_last_exception(env, &ex);
      } else {
        napi_value msg;
        napi_create_string_utf8(env, "ckptfs: could not build the result", NAPI_AUTO_LENGTH, &msg);
        napi_create_error(env, NULL, msg, &ex);
      }
      napi_reject_deferred(env, t->deferred, ex);
    } else {
      napi_resolve_deferred(env, t->deferred, v);
    }
  }
  napi_close_handle_scope(env, scope);
  task_release(env, t);
}

static void pool_execute(napi_env env, void *data) {
  (void)env;
  task_t *t = data;
  t->run(t);
}

static void pool_complete(napi_env env, napi_status status, void *data) {
  task_t *t = data;
  if (status == napi_cancelled) nerr_set(&t->err, ECANCELED, "async work");
  task_finish(env, t);
}

napi_value pool_submit(napi_env env, task_t *t) {
  napi_value promise = task_promise(env, t);
  if (!promise) {
    task_release(env, t);
    return NULL;
  }
  napi_value name;
  napi_create_string_utf8(env, "ckptfs", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, pool_execute, pool_complete, t, &t->work) != napi_ok ||
      napi_queue_async_work(env, t->work) != napi_ok) {
    nerr_set(&t->err, EAGAIN, "napi_queue_async_work");
    task_finish(env, t);
  }
  return promise;
}

// ---- registration ----

// Functions that return a promise report every failure through it, argument errors
// included, so that `f(...).catch(...)` sees them all. This wrapper turns an exception the
// entry point left pending into a rejected promise.
typedef struct {
  napi_callback fn;
} async_entry_t;

static napi_value async_trampoline(napi_env env, napi_callback_info info) {
  void *data = NULL;
  size_t argc = 0;
  napi_get_cb_info(env, info, &argc, NULL, NULL, &data);
  napi_value r = ((const async_entry_t *)data)->fn(env, info);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending && r) return r;
  napi_value ex, promise;
  napi_deferred deferred;
  if (pending) {
    napi_get_and_clear_last_exception(env, &ex);
  } else {
    napi_value msg;
    napi_create_string_utf8(env, "ckptfs: out of memory", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &ex);
  }
  napi_create_promise(env, &deferred, &promise);
  napi_reject_deferred(env, deferred, ex);
  return promise;
}

static const async_entry_t async_fns[] = {
  {js_freeze}, {js_thaw}, {js_get_thread_registers}, {js_set_thread_registers}, {js_inject_batch},
  {js_peek_siginfo}, {js_read_memory}, {js_read_memory_into}, {js_scan_pagemap}, {js_scan_pagemaps}, {js_peek_pipe},
  {js_spawn_restorer}, {js_write_memory}, {js_set_thread_state}, {js_seize_thread}, {js_alloc_touched},
  {js_crc32c_of_memory}, {js_freeze_many}, {js_lazy_fill}, {js_spawn_tree}, {js_read_tree},
  {js_get_seccomp_filters},
};
static const char *const async_names[] = {
  "freeze", "thaw", "getThreadRegisters", "setThreadRegisters", "injectBatch",
  "peekSiginfo", "readMemory", "readMemoryInto", "scanPagemap", "scanPagemaps", "peekPipe",
  "spawnRestorer", "writeMemory", "setThreadState", "seizeThread", "allocTouched",
  "crc32cOfMemory", "freezeMany", "lazyFill", "spawnTree", "readTree",
  "getSeccompFilters",
};

static napi_value init(napi_env env, napi_value exports) {
  if (!tracer_init_env(env)) return NULL;
  enum { NASYNC = sizeof async_fns / sizeof async_fns[0] };
  napi_property_descriptor props[NASYNC + 20];
  for (size_t i = 0; i < NASYNC; i++)
    props[i] = (napi_property_descriptor){async_names[i], NULL, async_trampoline, NULL, NULL, NULL,
                                          napi_enumerable, (void *)&async_fns[i]};
  // Synchronous: each is one fast system call and throws on failure.
  props[NASYNC + 0] = (napi_property_descriptor){"kcmpFile", NULL, js_kcmp_file, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 1] = (napi_property_descriptor){"getFd", NULL, js_get_fd, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 2] = (napi_property_descriptor){"close", NULL, js_close, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 3] = (napi_property_descriptor){"kcmpEpollTarget", NULL, js_kcmp_epoll_target, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 4] = (napi_property_descriptor){"kcmpGroups", NULL, js_kcmp_groups, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 5] = (napi_property_descriptor){"xstateSize", NULL, js_xstate_size, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 6] = (napi_property_descriptor){"readMemoryIntoNow", NULL, js_read_memory_into_now, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 7] = (napi_property_descriptor){"crc32c", NULL, js_crc32c, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 8] = (napi_property_descriptor){"kcmpFileAcross", NULL, js_kcmp_file_across, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 9] = (napi_property_descriptor){"eventFd", NULL, js_event_fd, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 10] = (napi_property_descriptor){"unixSockets", NULL, js_unix_sockets, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 11] = (napi_property_descriptor){"peekSocket", NULL, js_peek_socket, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 12] = (napi_property_descriptor){"inetSocket", NULL, js_inet_socket, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 13] = (napi_property_descriptor){"tcpRepairDump", NULL, js_tcp_repair_dump, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 14] = (napi_property_descriptor){"tcpRepairOff", NULL, js_tcp_repair_off, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 15] = (napi_property_descriptor){"netlinkSocket", NULL, js_netlink_socket, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 16] = (napi_property_descriptor){"packetSocket", NULL, js_packet_socket, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 17] = (napi_property_descriptor){"pidFd", NULL, js_pid_fd, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 18] = (napi_property_descriptor){"pipeSize", NULL, js_pipe_size, NULL, NULL, NULL, napi_enumerable, NULL};
  props[NASYNC + 19] = (napi_property_descriptor){"inetDiag", NULL, js_inet_diag, NULL, NULL, NULL, napi_enumerable, NULL};
  napi_define_properties(env, exports, NASYNC + 20, props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
