// A frozen thread's seccomp filter chain, read through ptrace (so on the tracer thread):
// PTRACE_SECCOMP_GET_FILTER gives each filter's classic BPF program (struct sock_filter[],
// 8 bytes per instruction) by its index counted from the oldest (0: the first installed), and
// PTRACE_SECCOMP_GET_METADATA the flags it was installed with that the kernel remembers
// (SECCOMP_FILTER_FLAG_LOG). Both need CONFIG_CHECKPOINT_RESTORE and CAP_SYS_ADMIN.
#include "tracer.h"

#include <errno.h>
#include <linux/filter.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>

#ifndef PTRACE_SECCOMP_GET_FILTER
#define PTRACE_SECCOMP_GET_FILTER 0x420c
#endif
#ifndef PTRACE_SECCOMP_GET_METADATA
#define PTRACE_SECCOMP_GET_METADATA 0x420d
#endif

// The kernel's limits (BPF_MAXINSNS per program; MAX_INSNS_PER_PATH over a chain, counting 4
// more per filter): a chain longer than that cannot exist, so reading stops there.
#define MAX_FILTER_INSNS 4096
#define MAX_CHAIN_FILTERS (32768 / 5)

struct seccomp_metadata_ {
  uint64_t filter_off;
  uint64_t flags;
};

typedef struct {
  struct sock_filter *insns;
  long len;
  uint64_t flags;
} filter_t;

typedef struct {
  task_t t;
  pid_t tid;
  filter_t *filters;  // oldest first, as the kernel indexes them
  size_t n;
} seccomp_task_t;

static void seccomp_destroy(task_t *t) {
  seccomp_task_t *st = (seccomp_task_t *)t;
  for (size_t i = 0; i < st->n; i++) free(st->filters[i].insns);
  free(st->filters);
  free(st);
}

static void get_filters_run(task_t *t) {
  seccomp_task_t *st = (seccomp_task_t *)t;
  pid_t tid = st->tid;
  st->filters = calloc(MAX_CHAIN_FILTERS, sizeof *st->filters);
  if (!st->filters) {
    nerr_set(&t->err, ENOMEM, "getSeccompFilters(tid %d)", tid);
    return;
  }
  for (unsigned long i = 0;; i++) {
    // With no buffer the kernel answers the program's length in instructions.
    long len = ptrace(PTRACE_SECCOMP_GET_FILTER, tid, (void *)i, NULL);
    if (len < 0) {
      // ENOENT: past the newest filter. EINVAL at index 0: the thread has no filter (mode 0 or 1).
      if (errno == ENOENT || (errno == EINVAL && i == 0)) return;
      nerr_set(&t->err, errno, "ptrace(PTRACE_SECCOMP_GET_FILTER, tid %d, index %lu)", tid, i);
      return;
    }
    if (i == MAX_CHAIN_FILTERS || len <= 0 || len > MAX_FILTER_INSNS) {
      nerr_set(&t->err, E2BIG, "ptrace(PTRACE_SECCOMP_GET_FILTER, tid %d, index %lu): %ld instructions", tid, i, len);
      return;
    }
    filter_t *f = &st->filters[st->n];
    f->insns = calloc((size_t)len, sizeof *f->insns);
    if (!f->insns) {
      nerr_set(&t->err, ENOMEM, "getSeccompFilters(tid %d)", tid);
      return;
    }
    st->n++;
    f->len = ptrace(PTRACE_SECCOMP_GET_FILTER, tid, (void *)i, f->insns);
    if (f->len != len) {
      nerr_set(&t->err, f->len < 0 ? errno : EIO, "ptrace(PTRACE_SECCOMP_GET_FILTER, tid %d, index %lu): %ld instructions, then %ld", tid, i, len, f->len);
      return;
    }
    struct seccomp_metadata_ md = {.filter_off = i};
    if (ptrace(PTRACE_SECCOMP_GET_METADATA, tid, (void *)sizeof md, &md) < 0) {
      nerr_set(&t->err, errno, "ptrace(PTRACE_SECCOMP_GET_METADATA, tid %d, index %lu)", tid, i);
      return;
    }
    f->flags = md.flags;
  }
}

// [{flags, insns}], oldest first (the order they were installed in, and are installed again).
static napi_value get_filters_settle(napi_env env, task_t *t) {
  seccomp_task_t *st = (seccomp_task_t *)t;
  napi_value arr;
  napi_create_array_with_length(env, st->n, &arr);
  for (size_t i = 0; i < st->n; i++) {
    const filter_t *f = &st->filters[i];
    napi_value o, insns;
    void *p;
    napi_create_object(env, &o);
    napi_create_buffer_copy(env, (size_t)f->len * sizeof *f->insns, f->insns, &p, &insns);
    napi_set_named_property(env, o, "flags", make_i32(env, (int32_t)f->flags));
    napi_set_named_property(env, o, "insns", insns);
    napi_set_element(env, arr, (uint32_t)i, o);
  }
  return arr;
}

napi_value js_get_seccomp_filters(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t tid;
  if (!arg_count(env, info, 1, argv) || !get_i32(env, argv[0], "tid", &tid)) return NULL;
  seccomp_task_t *st = calloc(1, sizeof *st);
  if (!st) return NULL;
  st->t.run = get_filters_run;
  st->t.settle = get_filters_settle;
  st->t.destroy = seccomp_destroy;
  st->tid = tid;
  return tracer_submit(env, &st->t);
}
