// Shared pieces of the ckptfs native helper: the error record every system call fills in,
// the asynchronous task that carries a request to a worker thread and its result back, and
// the argument conversion helpers used by each concern's entry points.
#ifndef CKPTFS_MODULE_H
#define CKPTFS_MODULE_H

#include <node_api.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// A failed system call, recorded off the JS thread and turned into an Error on it.
// msg names the call and its arguments; the strerror text is appended when converted.
typedef struct nerr {
  int code;       // errno value, 0 = no error
  int raw;        // msg is the whole message (no strerror text appended)
  char msg[1200]; // e.g. "process_vm_readv(pid 123, 0x7f00, 4096)"; a stub's reply names paths
} nerr_t;

void nerr_set(nerr_t *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// Same, for failures that are not one system call (e.g. the restorer's own error line).
void nerr_set_raw(nerr_t *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// Builds the Error object: message "<msg>: <strerror>", .code = errno name, .errno = number.
napi_value nerr_to_js(napi_env env, const nerr_t *e);
// Throws on the JS thread (for synchronous calls and argument errors).
void throw_errno(napi_env env, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// One asynchronous request. `run` executes on a worker (the tracer thread or a libuv pool
// thread) and may fill `err`; `settle` runs on the JS thread afterwards and returns the value
// the promise resolves with (only called when err.code == 0); `destroy` frees the task.
typedef struct task task_t;
struct task {
  task_t *next;                                  // tracer queue link
  void (*run)(task_t *t);
  napi_value (*settle)(napi_env env, task_t *t); // NULL: resolve with undefined
  void (*destroy)(task_t *t);                    // NULL: free(t)
  napi_deferred deferred;
  napi_async_work work;                          // pool tasks only
  struct instance *inst;                         // tracer tasks only
  // Tracer tasks that work on one process being restored: that process's PID, or 0. Tasks of
  // different such processes overlap on the tracer thread (tracer.c); NULL or 0: runs alone.
  // Called on the tracer thread.
  pid_t (*process)(task_t *t);
  napi_ref keep[2];                              // JS objects the worker uses (buffers)
  nerr_t err;
};

// Resolves or rejects t->deferred from t->err / t->settle, then releases t. JS thread only.
void task_finish(napi_env env, task_t *t);
// Runs t->run on libuv's pool and returns the task's promise (takes ownership of t).
napi_value pool_submit(napi_env env, task_t *t);
// Creates the deferred/promise pair for a task.
napi_value task_promise(napi_env env, task_t *t);
// Releases a task that never ran (argument error after allocation).
void task_free(napi_env env, task_t *t);

// Argument helpers: each throws a TypeError (and returns false) on a bad argument.
int arg_count(napi_env env, napi_callback_info info, size_t want, napi_value *argv);
int get_i32(napi_env env, napi_value v, const char *name, int32_t *out);
int get_u64(napi_env env, napi_value v, const char *name, uint64_t *out); // bigint or number
int get_bool(napi_env env, napi_value v, const char *name, int *out);
int get_buffer(napi_env env, napi_value v, const char *name, void **data, size_t *len);
int type_error(napi_env env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Sends a sock_diag dump request (`req`, NETLINK_SOCK_DIAG socket `nl`) and calls each() with
// every SOCK_DIAG_BY_FAMILY message of at least `min_len` bytes (its length after the header)
// until the dump ends. Returns 0, or -1 with a JS error thrown that names `what`.
typedef void sockdiag_each_fn(napi_env env, const void *msg, size_t len, void *arg);
int sockdiag_dump(napi_env env, int nl, const void *req, size_t req_len, size_t min_len, const char *what, sockdiag_each_fn *each, void *arg);

napi_value make_u64(napi_env env, uint64_t v);  // BigInt
napi_value make_i64(napi_env env, int64_t v);   // BigInt
napi_value make_i32(napi_env env, int32_t v);
napi_value make_undefined(napi_env env);
// A Buffer that takes ownership of malloc()ed data (freed when the Buffer is collected).
napi_value make_owned_buffer(napi_env env, void *data, size_t len);

// Entry points, one group per concern (registered in module.c).
napi_value js_freeze(napi_env env, napi_callback_info info);
napi_value js_thaw(napi_env env, napi_callback_info info);
napi_value js_get_thread_registers(napi_env env, napi_callback_info info);
napi_value js_set_thread_registers(napi_env env, napi_callback_info info);
napi_value js_get_seccomp_filters(napi_env env, napi_callback_info info);
napi_value js_peek_siginfo(napi_env env, napi_callback_info info);
napi_value js_inject_batch(napi_env env, napi_callback_info info);
napi_value js_read_memory(napi_env env, napi_callback_info info);
napi_value js_alloc_touched(napi_env env, napi_callback_info info);
napi_value js_read_memory_into(napi_env env, napi_callback_info info);
napi_value js_read_memory_into_now(napi_env env, napi_callback_info info);
napi_value js_scan_pagemap(napi_env env, napi_callback_info info);
napi_value js_scan_pagemaps(napi_env env, napi_callback_info info);
napi_value js_unix_sockets(napi_env env, napi_callback_info info);
napi_value js_peek_socket(napi_env env, napi_callback_info info);
napi_value js_kcmp_file(napi_env env, napi_callback_info info);
napi_value js_freeze_many(napi_env env, napi_callback_info info);
napi_value js_kcmp_file_across(napi_env env, napi_callback_info info);
napi_value js_kcmp_groups(napi_env env, napi_callback_info info);
napi_value js_xstate_size(napi_env env, napi_callback_info info);
napi_value js_kcmp_epoll_target(napi_env env, napi_callback_info info);
napi_value js_get_fd(napi_env env, napi_callback_info info);
napi_value js_peek_pipe(napi_env env, napi_callback_info info);
napi_value js_pipe_size(napi_env env, napi_callback_info info);
napi_value js_close(napi_env env, napi_callback_info info);
napi_value js_event_fd(napi_env env, napi_callback_info info);
napi_value js_inet_socket(napi_env env, napi_callback_info info);
napi_value js_tcp_repair_dump(napi_env env, napi_callback_info info);
napi_value js_tcp_repair_off(napi_env env, napi_callback_info info);
napi_value js_netlink_socket(napi_env env, napi_callback_info info);
napi_value js_packet_socket(napi_env env, napi_callback_info info);
napi_value js_inet_diag(napi_env env, napi_callback_info info);
napi_value js_spawn_restorer(napi_env env, napi_callback_info info);
napi_value js_spawn_tree(napi_env env, napi_callback_info info);
napi_value js_seize_thread(napi_env env, napi_callback_info info);
napi_value js_write_memory(napi_env env, napi_callback_info info);
napi_value js_set_thread_state(napi_env env, napi_callback_info info);
napi_value js_crc32c(napi_env env, napi_callback_info info);
napi_value js_crc32c_of_memory(napi_env env, napi_callback_info info);
napi_value js_lazy_fill(napi_env env, napi_callback_info info);
napi_value js_pid_fd(napi_env env, napi_callback_info info);
napi_value js_read_tree(napi_env env, napi_callback_info info);

// CRC32C of p[0, n) continuing from `seed` (lib/checksum.ts's, for any thread).
uint32_t ckptfs_crc32c(uint32_t seed, const void *p, size_t n);

#endif
