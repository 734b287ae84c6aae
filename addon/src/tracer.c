// The tracer thread and its job queue.
//
// ptrace requests are valid only from the thread that attached, so every ptrace-related call
// is a task executed by this one pthread, started in submission order. Results go back to the
// JS thread through a threadsafe function, which is referenced only while tasks are pending so
// that an idle tracer never keeps the event loop (and the process) alive.
//
// Overlap: most of a restore's time on this thread is spent waiting for a tracee to run its
// injected calls and stop again (two context switches per stop; on a loaded machine, the wait
// for a CPU). Tasks that work on one process being restored (task_t.process) therefore run as
// coroutines on this same thread: when one waits for its tracee (tracer_wait), the next ones
// in the queue, for other processes, start or go on, so the tracees of several processes run
// at once while every ptrace request still comes from this thread. Tasks start in queue order;
// a task for a process that has one running, or one without a process (freeze, thaw, spawn,
// anything that changes the list of frozen processes), waits until the running ones are done,
// and nothing queued after it starts before it.
#include "tracer.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static task_t *head, *tail;
static int started;     // guarded by mu
static int start_error; // errno of a failed pthread_create, guarded by mu

int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

// How long a wait yields the CPU in a loop before it starts sleeping. A sleep here lasts
// 60 us or more whatever is asked, and injected calls (a 1 MiB pread while pages are
// restored) often take a few hundred microseconds: sleeping would double their cost.
#define SPIN_US 5000

// ---- overlapping tasks (see the top) ----

// Tasks running at once: the restore rebuilds a few processes at a time (lib/restore/pstree.ts).
#define OVERLAP_MAX 8
// A coroutine's stack: inject.c's deepest path uses a few pages (4 KiB buffers, /proc reads).
#define CO_STACK (256 * 1024)

typedef struct {
  task_t *t;  // NULL: a free slot
  pid_t proc;
  ucontext_t ctx;  // never moved or copied once made: glibc's points into itself
  char *stack;     // CO_STACK bytes above a guard page, kept for the next task
  int done;
} co_t;

static co_t cos[OVERLAP_MAX];
static int nco;               // slots in use
static ucontext_t sched_ctx;  // the scheduler (tracer_main)
static co_t *current;         // the coroutine running now; NULL: the scheduler or a task run alone
static unsigned long progress; // waits that ended, in coroutines: the scheduler spins less while they do

static void co_entry(void) {
  co_t *c = current;
  c->t->run(c->t);
  c->done = 1;  // back to the scheduler through uc_link
}

// Starts t as a coroutine (nco < OVERLAP_MAX). 0, or -1 (no stack: the caller runs it alone).
static int co_start(task_t *t, pid_t proc) {
  co_t *c = cos;
  while (c->t) c++;
  if (!c->stack) {
    char *m = mmap(NULL, CO_STACK + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (m == MAP_FAILED) return -1;
    mprotect(m, 4096, PROT_NONE);  // an overflow faults instead of writing over another stack
    c->stack = m + 4096;
  }
  if (getcontext(&c->ctx) < 0) return -1;
  c->ctx.uc_stack.ss_sp = c->stack;
  c->ctx.uc_stack.ss_size = CO_STACK;
  c->ctx.uc_link = &sched_ctx;
  makecontext(&c->ctx, co_entry, 0);
  c->t = t;
  c->proc = proc;
  c->done = 0;
  nco++;
  return 0;
}

static int co_busy(pid_t proc) {
  for (int i = 0; i < OVERLAP_MAX; i++)
    if (cos[i].t && cos[i].proc == proc) return 1;
  return 0;
}

static void deliver(task_t *t);

// Runs every coroutine until it waits again or ends; the ended ones are delivered.
static void co_round(void) {
  for (int i = 0; i < OVERLAP_MAX; i++) {
    if (!cos[i].t) continue;
    current = &cos[i];
    swapcontext(&sched_ctx, &cos[i].ctx);
    current = NULL;
    if (!cos[i].done) continue;
    task_t *t = cos[i].t;
    cos[i].t = NULL;
    nco--;
    deliver(t);
  }
}

// Waiting for nothing in particular: a yield for the first SPIN_US of it (a stop usually comes
// within microseconds), then sleeps doubling from *delay_ns up to 2 ms.
static void idle(int64_t waited_us, long *delay_ns) {
  if (waited_us < SPIN_US) {
    sched_yield();
    return;
  }
  struct timespec ts = {0, *delay_ns};
  nanosleep(&ts, NULL);
  if (*delay_ns < 2000000) *delay_ns *= 2;
}

pid_t tracer_wait(pid_t tid, int *status, int timeout_ms) {
  int64_t start = mono_us();
  int64_t deadline = start + (int64_t)timeout_ms * 1000;
  if (current) {
    for (;;) {
      pid_t r = waitpid(tid, status, __WALL | WNOHANG);
      if (r != 0) {
        if (r < 0 && errno == EINTR) continue;
        progress++;
        return r;
      }
      if (mono_us() >= deadline) return 0;
      co_t *me = current;
      swapcontext(&me->ctx, &sched_ctx);
    }
  }
  long delay_ns = 50000;
  for (;;) {
    pid_t r = waitpid(tid, status, __WALL | WNOHANG);
    if (r != 0) {
      if (r < 0 && errno == EINTR) continue;
      return r;
    }
    int64_t now = mono_us();
    if (now >= deadline) return 0;
    idle(now - start, &delay_ns);
  }
}

static void deliver(task_t *t) {
  struct instance *inst = t->inst;
  int sent = 0;
  pthread_mutex_lock(&mu);
  if (!inst->closed) sent = napi_call_threadsafe_function(inst->tsfn, t, napi_tsfn_nonblocking) == napi_ok;
  pthread_mutex_unlock(&mu);
  // Environment gone: nobody can be told; free the C side only (JS handles died with it).
  if (!sent) {
    if (t->destroy)
      t->destroy(t);
    else
      free(t);
  }
}

static void *tracer_main(void *arg) {
  (void)arg;
  // tracer_wait sleeps in microsecond steps: the default 50 us timer slack would dominate.
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  int orphans = 0;
  // While coroutines wait: yield the CPU for SPIN_US after the last progress, then sleep in
  // growing steps, as tracer_wait does for one.
  int64_t stalled_since = 0;
  long delay_ns = 50000;
  for (;;) {
    task_t *alone = NULL;
    int started = 0;
    pthread_mutex_lock(&mu);
    while (!head && nco == 0) {
      if (!orphans) {
        pthread_cond_wait(&cv, &mu);
        continue;
      }
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      ts.tv_nsec += 50 * 1000000L;
      if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
      }
      if (pthread_cond_timedwait(&cv, &mu, &ts) == ETIMEDOUT && !head) {
        pthread_mutex_unlock(&mu);
        orphans = orphan_work();
        pthread_mutex_lock(&mu);
      }
    }
    // Start what may start, in queue order.
    while (head) {
      task_t *t = head;
      pid_t proc = t->process ? t->process(t) : 0;
      if (proc && nco < OVERLAP_MAX && !co_busy(proc)) {
        head = t->next;
        if (!head) tail = NULL;
        t->next = NULL;
        if (co_start(t, proc) < 0) {
          alone = t;  // no stack for it: run alone once the others are done
          break;
        }
        started = 1;
        continue;
      }
      if (!proc && nco == 0) {
        head = t->next;
        if (!head) tail = NULL;
        t->next = NULL;
        alone = t;
      }
      break;
    }
    pthread_mutex_unlock(&mu);

    if (alone && nco == 0) {
      alone->run(alone);
      deliver(alone);
      orphans = orphan_work();
      continue;
    }
    if (nco == 0) continue;
    unsigned long before = progress;
    int running = nco;
    co_round();
    if (alone) {
      // Taken off the queue without a stack: the others end first, then it runs.
      while (nco > 0) {
        co_round();
        if (nco > 0) sched_yield();
      }
      alone->run(alone);
      deliver(alone);
    }
    if (nco == 0) orphans = orphan_work();
    if (started || progress != before || nco < running) {
      stalled_since = 0;
      delay_ns = 50000;
      continue;
    }
    int64_t now = mono_us();
    if (!stalled_since) stalled_since = now;
    idle(now - stalled_since, &delay_ns);
  }
  return NULL;
}

// Called with mu held.
static int ensure_started(void) {
  if (started) return 0;
  if (start_error) return start_error;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&cv, &ca);
  pthread_condattr_destroy(&ca);
  // The thread blocks every signal: Node handles its signals elsewhere, and none should
  // interrupt the tracer's waits.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t th;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  int rc = pthread_create(&th, &attr, tracer_main, NULL);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc) {
    start_error = rc;
    return rc;
  }
  started = 1;
  return 0;
}

// ---- JS side ----

static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  struct instance *inst = context;
  task_t *t = data;
  if (!env) {  // threadsafe function torn down with this item still queued
    if (t->destroy)
      t->destroy(t);
    else
      free(t);
    return;
  }
  task_finish(env, t);
  if (--inst->pending == 0) napi_unref_threadsafe_function(env, inst->tsfn);
}

static void mark_closed(struct instance *inst) {
  pthread_mutex_lock(&mu);
  inst->closed = 1;
  pthread_mutex_unlock(&mu);
}

static void tsfn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  mark_closed(data);
}

static void env_cleanup(void *arg) { mark_closed(arg); }

int tracer_init_env(napi_env env) {
  // The instance is never freed: tasks still on the tracer queue may point at it after the
  // environment is gone (one small struct per Node environment).
  struct instance *inst = calloc(1, sizeof *inst);
  if (!inst) {
    napi_throw_error(env, "ENOMEM", "ckptfs: out of memory");
    return 0;
  }
  napi_value name;
  napi_create_string_utf8(env, "ckptfs-tracer", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, inst, tsfn_finalize, inst, call_js,
                                      &inst->tsfn) != napi_ok)
    return 0;
  napi_unref_threadsafe_function(env, inst->tsfn);
  napi_add_env_cleanup_hook(env, env_cleanup, inst);
  napi_set_instance_data(env, inst, NULL, NULL);
  return 1;
}

napi_value tracer_submit(napi_env env, task_t *t) {
  napi_value promise = task_promise(env, t);
  if (!promise) {
    task_free(env, t);
    return NULL;
  }
  struct instance *inst;
  napi_get_instance_data(env, (void **)&inst);
  t->inst = inst;

  pthread_mutex_lock(&mu);
  int rc = ensure_started();
  if (!rc) {
    t->next = NULL;
    if (tail)
      tail->next = t;
    else
      head = t;
    tail = t;
    pthread_cond_signal(&cv);
  }
  pthread_mutex_unlock(&mu);
  if (rc) {
    nerr_set(&t->err, rc, "pthread_create(tracer thread)");
    task_finish(env, t);
    return promise;
  }
  if (inst->pending++ == 0) napi_ref_threadsafe_function(env, inst->tsfn);
  return promise;
}
