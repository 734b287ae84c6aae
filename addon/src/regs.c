// Per-thread CPU and signal state of a frozen thread: registers, xsave area, signal mask, rseq
// registration, queued siginfo. All of it through ptrace, so on the tracer thread.
#include "tracer.h"

#include <cpuid.h>
#include <elf.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>

#ifndef PTRACE_GETSIGMASK
#define PTRACE_GETSIGMASK 0x420a
#define PTRACE_SETSIGMASK 0x420b
#endif
#ifndef PTRACE_PEEKSIGINFO
#define PTRACE_PEEKSIGINFO 0x4209
#endif
#ifndef PTRACE_PEEKSIGINFO_SHARED
#define PTRACE_PEEKSIGINFO_SHARED 1
#endif
#define PTRACE_GET_RSEQ_CONFIGURATION_ 0x420f
#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

#define XSTATE_MAX 16384
#define SIGINFO_SIZE 128

struct rseq_config {
  uint64_t rseq_abi_pointer;
  uint32_t rseq_abi_size;
  uint32_t signature;
  uint32_t flags;
  uint32_t pad;
};

typedef struct {
  task_t t;
  pid_t tid;
  int shared;
  struct user_regs_struct regs;
  uint64_t sigmask;
  struct rseq_config rseq;
  unsigned char *xstate;  // XSTATE_MAX bytes, xstate_len used
  size_t xstate_len;
  unsigned char *data;  // peekSiginfo records
  size_t data_len;
} regs_task_t;

static void regs_destroy(task_t *t) {
  regs_task_t *rt = (regs_task_t *)t;
  free(rt->xstate);
  free(rt->data);
  free(rt);
}

static regs_task_t *regs_task(void (*run)(task_t *), napi_value (*settle)(napi_env, task_t *)) {
  regs_task_t *rt = calloc(1, sizeof *rt);
  if (!rt) return NULL;
  rt->t.run = run;
  rt->t.settle = settle;
  rt->t.destroy = regs_destroy;
  return rt;
}

// ---- getThreadRegisters ----

static void get_regs_run(task_t *t) {
  regs_task_t *rt = (regs_task_t *)t;
  pid_t tid = rt->tid;
  if (ptrace(PTRACE_GETREGS, tid, 0, &rt->regs) < 0) {
    nerr_set(&t->err, errno, "ptrace(PTRACE_GETREGS, tid %d)", tid);
    return;
  }
  rt->xstate = malloc(XSTATE_MAX);
  if (!rt->xstate) {
    nerr_set(&t->err, ENOMEM, "getThreadRegisters(tid %d)", tid);
    return;
  }
  // The kernel shrinks iov_len to the size of this CPU's xsave layout; keep it as returned.
  struct iovec iov = {rt->xstate, XSTATE_MAX};
  if (ptrace(PTRACE_GETREGSET, tid, (void *)NT_X86_XSTATE, &iov) < 0) {
    nerr_set(&t->err, errno, "ptrace(PTRACE_GETREGSET, tid %d, NT_X86_XSTATE)", tid);
    return;
  }
  rt->xstate_len = iov.iov_len;
  if (ptrace(PTRACE_GETSIGMASK, tid, (void *)sizeof rt->sigmask, &rt->sigmask) < 0) {
    nerr_set(&t->err, errno, "ptrace(PTRACE_GETSIGMASK, tid %d)", tid);
    return;
  }
  if (ptrace(PTRACE_GET_RSEQ_CONFIGURATION_, tid, (void *)sizeof rt->rseq, &rt->rseq) < 0) {
    nerr_set(&t->err, errno, "ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid %d)", tid);
    return;
  }
}

static napi_value get_regs_settle(napi_env env, task_t *t) {
  regs_task_t *rt = (regs_task_t *)t;
  napi_value o, regs, xstate, rseq;
  void *p;
  napi_create_object(env, &o);
  napi_create_buffer_copy(env, sizeof rt->regs, &rt->regs, &p, &regs);
  napi_create_buffer_copy(env, rt->xstate_len, rt->xstate, &p, &xstate);
  napi_set_named_property(env, o, "regs", regs);
  napi_set_named_property(env, o, "xstate", xstate);
  napi_set_named_property(env, o, "sigmask", make_u64(env, rt->sigmask));
  napi_create_object(env, &rseq);
  napi_set_named_property(env, rseq, "pointer", make_u64(env, rt->rseq.rseq_abi_pointer));
  napi_set_named_property(env, rseq, "size", make_i32(env, (int32_t)rt->rseq.rseq_abi_size));
  napi_value sig;
  napi_create_uint32(env, rt->rseq.signature, &sig);
  napi_set_named_property(env, rseq, "signature", sig);
  napi_set_named_property(env, rseq, "flags", make_i32(env, (int32_t)rt->rseq.flags));
  napi_set_named_property(env, o, "rseq", rseq);
  return o;
}

napi_value js_get_thread_registers(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t tid;
  if (!arg_count(env, info, 1, argv) || !get_i32(env, argv[0], "tid", &tid)) return NULL;
  regs_task_t *rt = regs_task(get_regs_run, get_regs_settle);
  if (!rt) return NULL;
  rt->tid = tid;
  return tracer_submit(env, &rt->t);
}

// ---- setThreadRegisters ----

static void set_regs_run(task_t *t) {
  regs_task_t *rt = (regs_task_t *)t;
  if (ptrace(PTRACE_SETREGS, rt->tid, 0, &rt->regs) < 0)
    nerr_set(&t->err, errno, "ptrace(PTRACE_SETREGS, tid %d)", rt->tid);
}

// Overlaps other restored processes' work (tracer.c).
static pid_t regs_process(task_t *t) { return restored_process_of(((regs_task_t *)t)->tid); }

napi_value js_set_thread_registers(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t tid;
  void *data;
  size_t len;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "tid", &tid) ||
      !get_buffer(env, argv[1], "regs", &data, &len))
    return NULL;
  if (len != sizeof(struct user_regs_struct)) {
    throw_errno(env, EINVAL, "setThreadRegisters(tid %d): regs must be %zu bytes, got %zu", tid,
                sizeof(struct user_regs_struct), len);
    return NULL;
  }
  regs_task_t *rt = regs_task(set_regs_run, NULL);
  if (!rt) return NULL;
  rt->t.process = regs_process;
  rt->tid = tid;
  memcpy(&rt->regs, data, len);  // copied now: the caller may reuse its buffer at once
  return tracer_submit(env, &rt->t);
}

// ---- setThreadState ----

static void set_state_run(task_t *t) {
  regs_task_t *rt = (regs_task_t *)t;
  // The buffer goes back at the length it was read with: the kernel checks it against this
  // CPU's xsave layout.
  struct iovec iov = {rt->xstate, rt->xstate_len};
  if (ptrace(PTRACE_SETREGSET, rt->tid, (void *)NT_X86_XSTATE, &iov) < 0) {
    nerr_set(&t->err, errno, "ptrace(PTRACE_SETREGSET, tid %d, NT_X86_XSTATE, %zu bytes)", rt->tid, rt->xstate_len);
    return;
  }
  if (ptrace(PTRACE_SETSIGMASK, rt->tid, (void *)sizeof rt->sigmask, &rt->sigmask) < 0)
    nerr_set(&t->err, errno, "ptrace(PTRACE_SETSIGMASK, tid %d)", rt->tid);
}

napi_value js_set_thread_state(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t tid;
  void *data;
  size_t len;
  uint64_t mask;
  if (!arg_count(env, info, 3, argv) || !get_i32(env, argv[0], "tid", &tid) ||
      !get_buffer(env, argv[1], "xstate", &data, &len) || !get_u64(env, argv[2], "sigmask", &mask))
    return NULL;
  if (len < 512 + 64 || len > XSTATE_MAX) {
    throw_errno(env, EINVAL, "setThreadState(tid %d): xstate of %zu bytes (expected 576..%d)", tid, len, XSTATE_MAX);
    return NULL;
  }
  regs_task_t *rt = regs_task(set_state_run, NULL);
  if (!rt) return NULL;
  rt->xstate = malloc(len);
  if (!rt->xstate) {
    regs_destroy(&rt->t);
    return NULL;
  }
  memcpy(rt->xstate, data, len);  // copied now: the caller may reuse its buffer
  rt->xstate_len = len;
  rt->t.process = regs_process;
  rt->tid = tid;
  rt->sigmask = mask;
  return tracer_submit(env, &rt->t);
}

// ---- peekSiginfo ----

struct peeksiginfo_args {
  uint64_t off;
  uint32_t flags;
  int32_t nr;
};

static void peek_siginfo_run(task_t *t) {
  regs_task_t *rt = (regs_task_t *)t;
  size_t cap = 32;
  rt->data = malloc(cap * SIGINFO_SIZE);
  if (!rt->data) {
    nerr_set(&t->err, ENOMEM, "peekSiginfo(tid %d)", rt->tid);
    return;
  }
  for (;;) {
    if (rt->data_len + 32 * SIGINFO_SIZE > cap * SIGINFO_SIZE) {
      unsigned char *n = realloc(rt->data, (cap *= 2) * SIGINFO_SIZE);
      if (!n) {
        nerr_set(&t->err, ENOMEM, "peekSiginfo(tid %d)", rt->tid);
        return;
      }
      rt->data = n;
    }
    struct peeksiginfo_args a = {
      .off = rt->data_len / SIGINFO_SIZE,
      .flags = rt->shared ? PTRACE_PEEKSIGINFO_SHARED : 0,
      .nr = 32,
    };
    long n = ptrace(PTRACE_PEEKSIGINFO, rt->tid, &a, rt->data + rt->data_len);
    if (n < 0) {
      nerr_set(&t->err, errno, "ptrace(PTRACE_PEEKSIGINFO, tid %d, off %llu%s)", rt->tid,
               (unsigned long long)a.off, rt->shared ? ", shared" : "");
      return;
    }
    if (n == 0) break;
    rt->data_len += (size_t)n * SIGINFO_SIZE;
  }
}

static napi_value peek_siginfo_settle(napi_env env, task_t *t) {
  regs_task_t *rt = (regs_task_t *)t;
  napi_value b = make_owned_buffer(env, rt->data, rt->data_len);
  rt->data = NULL;  // the Buffer owns it now
  return b;
}

napi_value js_peek_siginfo(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t tid;
  int shared;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "tid", &tid) ||
      !get_bool(env, argv[1], "shared", &shared))
    return NULL;
  regs_task_t *rt = regs_task(peek_siginfo_run, peek_siginfo_settle);
  if (!rt) return NULL;
  rt->tid = tid;
  rt->shared = shared;
  return tracer_submit(env, &rt->t);
}

// xstateSize: the size of this CPU's xsave area for the features the kernel enabled (CPUID
// leaf 0xD, EBX), which is the NT_X86_XSTATE length ptrace reads and accepts here. A saved
// area of another size cannot be written back: restore refuses it before creating anything.
napi_value js_xstate_size(napi_env env, napi_callback_info info) {
  (void)info;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(0xd, 0, &a, &b, &c, &d)) {
    throw_errno(env, ENOTSUP, "cpuid(0xd): no xsave");
    return NULL;
  }
  return make_i32(env, (int32_t)b);
}
