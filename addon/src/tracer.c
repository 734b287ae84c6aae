// The tracer thread and its job queue.
//
// ptrace requests are valid only from the thread that attached, so every ptrace-related call
// is a task executed by this one pthread, in submission order. Results go back to the JS
// thread through a threadsafe function, which is referenced only while tasks are pending so
// that an idle tracer never keeps the event loop (and the process) alive.
#include "tracer.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>

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

pid_t tracer_wait(pid_t tid, int *status, int timeout_ms) {
  int64_t start = mono_us();
  int64_t deadline = start + (int64_t)timeout_ms * 1000;
  long delay_ns = 50000;
  for (;;) {
    pid_t r = waitpid(tid, status, __WALL | WNOHANG);
    if (r != 0) {
      if (r < 0 && errno == EINTR) continue;
      return r;
    }
    int64_t now = mono_us();
    if (now >= deadline) return 0;
    if (now - start < SPIN_US) {
      sched_yield();
      continue;
    }
    struct timespec ts = {0, delay_ns};
    nanosleep(&ts, NULL);
    if (delay_ns < 2000000) delay_ns *= 2;
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
  for (;;) {
    pthread_mutex_lock(&mu);
    while (!head) {
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
    task_t *t = head;
    head = t->next;
    if (!head) tail = NULL;
    pthread_mutex_unlock(&mu);

    t->next = NULL;
    t->run(t);
    deliver(t);
    orphans = orphan_work();
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
