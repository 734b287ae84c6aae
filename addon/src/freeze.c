// freeze / thaw: PTRACE_SEIZE + PTRACE_INTERRUPT every thread of a process, and later detach
// (or kill) them again. Also the tracer's bookkeeping of frozen processes and of threads that
// still owe us a wait (orphans).
//
// Signals during freeze: between PTRACE_SEIZE and the interrupt stop a thread may report a
// signal-delivery-stop instead (a seized tracee stops for every signal it dequeues). That
// signal has already been taken off the pending queue, so detaching or parking the thread
// there would lose it. We resume it with PTRACE_CONT(sig), which delivers the signal exactly
// as without us (a handler frame is set up, or the default action runs: ignore, stop or die)
// and, because the PTRACE_INTERRUPT trap is still pending (re-issued to be sure), the thread
// stops again before running any user instruction (its registers then show the handler
// frame, if one was set up), and the wait goes on for the event stop.
#include "tracer.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

#define FREEZE_TIMEOUT_MS 5000  // a thread that does not stop by then is in an uninterruptible wait
#define REAP_TIMEOUT_MS 2000

// ---- frozen processes ----

static frozen_proc_t *procs;
static size_t nprocs, capprocs;

frozen_proc_t *frozen_find(pid_t pid) {
  for (size_t i = 0; i < nprocs; i++)
    if (procs[i].pid == pid) return &procs[i];
  return NULL;
}

frozen_proc_t *frozen_find_tid(pid_t tid) {
  for (size_t i = 0; i < nprocs; i++)
    for (size_t j = 0; j < procs[i].n; j++)
      if (procs[i].threads[j].tid == tid) return &procs[i];
  return NULL;
}

pid_t restored_process_of(pid_t tid) {
  frozen_proc_t *p = frozen_find_tid(tid);
  return p && p->restored ? p->pid : 0;
}

static int proc_add_thread(frozen_proc_t *p, pid_t tid) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 16;
    frozen_thread_t *n = realloc(p->threads, cap * sizeof *n);
    if (!n) return -1;
    p->threads = n;
    p->cap = cap;
  }
  p->threads[p->n++] = (frozen_thread_t){.tid = tid, .status = 0, .flags = 0};
  return 0;
}

static int procs_insert(frozen_proc_t *p) {
  if (nprocs == capprocs) {
    size_t cap = capprocs ? capprocs * 2 : 8;
    frozen_proc_t *n = realloc(procs, cap * sizeof *n);
    if (!n) return -1;
    procs = n;
    capprocs = cap;
  }
  procs[nprocs++] = *p;
  return 0;
}

int frozen_adopt(pid_t pid, const frozen_thread_t *th, int options, pid_t keeper, int keeper_fd, void *keeper_stack) {
  frozen_proc_t p = {.pid = pid, .options = options, .keeper = keeper, .keeper_fd = keeper_fd, .keeper_stack = keeper_stack, .restored = 1};
  if (proc_add_thread(&p, th->tid) < 0) return -1;
  p.threads[0] = *th;
  if (procs_insert(&p) < 0) {
    free(p.threads);
    return -1;
  }
  return 0;
}

static void procs_remove(frozen_proc_t *p) {
  free(p->threads);
  *p = procs[--nprocs];
}

void frozen_forget(pid_t pid) {
  frozen_proc_t *p = frozen_find(pid);
  if (p) procs_remove(p);
}

// ---- orphans: threads we still have to wait for (reap) or detach once they stop ----

typedef struct {
  pid_t tid;
  int kind;
} orphan_t;

static orphan_t *orphans;
static size_t norphans, caporphans;

void orphan_add(pid_t tid, int kind) {
  if (norphans == caporphans) {
    size_t cap = caporphans ? caporphans * 2 : 16;
    orphan_t *n = realloc(orphans, cap * sizeof *n);
    if (!n) return;  // out of memory: the kernel cleans up when our process exits
    orphans = n;
    caporphans = cap;
  }
  orphans[norphans++] = (orphan_t){tid, kind};
}

int orphan_work(void) {
  for (size_t i = 0; i < norphans;) {
    int st;
    pid_t r = waitpid(orphans[i].tid, &st, __WALL | WNOHANG);
    int done = 1;
    if (r == 0) {
      done = 0;
    } else if (r > 0 && WIFSTOPPED(st)) {
      // A late stop (e.g. after an uninterruptible wait): let it go, handing back a signal
      // it was about to receive.
      int sig = (st >> 16) == 0 ? WSTOPSIG(st) : 0;
      if (ptrace(PTRACE_DETACH, orphans[i].tid, 0, (void *)(long)sig) < 0 && errno != ESRCH) done = 0;
    }
    if (done)
      orphans[i] = orphans[--norphans];
    else
      i++;
  }
  return norphans != 0;
}

// ---- /proc helpers ----

// Lists /proc/PID/task. Returns a malloc()ed array (count in *n) or NULL with errno.
static pid_t *list_tasks(pid_t pid, size_t *n) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR *d = opendir(path);
  if (!d) return NULL;
  size_t cap = 16, cnt = 0;
  pid_t *v = malloc(cap * sizeof *v);
  struct dirent *de;
  while (v && (de = readdir(d))) {
    if (!isdigit((unsigned char)de->d_name[0])) continue;
    if (cnt == cap) {
      pid_t *nv = realloc(v, (cap *= 2) * sizeof *v);
      if (!nv) {
        free(v);
        v = NULL;
        break;
      }
      v = nv;
    }
    v[cnt++] = (pid_t)atoi(de->d_name);
  }
  int saved = errno;
  closedir(d);
  if (!v) errno = saved ? saved : ENOMEM;
  *n = cnt;
  return v;
}

// State letter from /proc/PID/task/TID/stat ('?' if unreadable).
static char thread_state(pid_t pid, pid_t tid) {
  char path[80], buf[512];
  snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return '?';
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return '?';
  buf[n] = 0;
  char *p = strrchr(buf, ')');  // comm may contain spaces and parentheses
  return p && p[1] == ' ' ? p[2] : '?';
}

// Reads one "Name:\t<hex>" field of /proc/PID/task/TID/status.
static int status_hex(const char *text, const char *field, uint64_t *out) {
  const char *p = strstr(text, field);
  if (!p) return -1;
  *out = strtoull(p + strlen(field), NULL, 16);
  return 0;
}

// ---- freeze ----

int wait_event_stop(frozen_thread_t *th, int64_t deadline_ms, nerr_t *err) {
  for (;;) {
    int64_t left = deadline_ms - mono_ms();
    int st;
    pid_t r = tracer_wait(th->tid, &st, left > 0 ? (int)left : 0);
    if (r == 0) {
      nerr_set(err, ETIMEDOUT, "waitpid(tid %d): no ptrace stop in time (uninterruptible wait?)", th->tid);
      return -1;
    }
    if (r < 0) {
      if (errno == ECHILD) return 0;
      nerr_set(err, errno, "waitpid(tid %d, __WALL)", th->tid);
      return -1;
    }
    if (WIFEXITED(st) || WIFSIGNALED(st)) {
      th->status = st;  // reaped just now: how it ended, for the caller's message
      return 0;
    }
    if (!WIFSTOPPED(st)) continue;
    if ((st >> 16) == 0) {
      // Signal-delivery-stop (see the comment at the top): deliver it, then wait for the trap.
      if (ptrace(PTRACE_CONT, th->tid, 0, (void *)(long)WSTOPSIG(st)) < 0 && errno != ESRCH) {
        nerr_set(err, errno, "ptrace(PTRACE_CONT, tid %d, sig %d)", th->tid, WSTOPSIG(st));
        return -1;
      }
      ptrace(PTRACE_INTERRUPT, th->tid, 0, 0);
      continue;
    }
    // PTRACE_EVENT_STOP: our interrupt (SIGTRAP) or a group-stop (SIGSTOP, SIGTSTP, ...).
    // No other event can occur: our options (FROZEN_OPTIONS) ask for none.
    th->status = st;
    th->flags |= TH_STOPPED;
    return 1;
  }
}

// Detaches whatever freeze managed to seize, after a failure.
static void undo_seize(frozen_proc_t *p) {
  for (size_t i = 0; i < p->n; i++) {
    frozen_thread_t *th = &p->threads[i];
    if (!(th->flags & TH_STOPPED)) {
      // Seized and interrupted, but the stop has not been collected: it must be, since
      // PTRACE_DETACH needs a stopped tracee.
      nerr_t ignored = {0};
      int r = wait_event_stop(th, mono_ms() + 100, &ignored);
      if (r == 0) continue;
      if (r < 0) {
        orphan_add(th->tid, ORPHAN_DETACH);
        continue;
      }
    }
    if (ptrace(PTRACE_DETACH, th->tid, 0, 0) < 0) orphan_add(th->tid, ORPHAN_REAP);
  }
  free(p->threads);
  p->threads = NULL;
  p->n = p->cap = 0;
}

typedef struct {
  task_t t;
  pid_t pid;
  int kill;
  pid_t tid;  // seizeThread
  frozen_thread_t *out;
  size_t nout;
} freeze_task_t;

// Seizes and interrupts every thread /proc/PID/task lists that p does not hold yet. Returns
// how many were new (0: every listed thread is held), or -1 with err set.
static long seize_listed(frozen_proc_t *p, nerr_t *err) {
  size_t n;
  pid_t *tids = list_tasks(p->pid, &n);
  if (!tids) {
    nerr_set(err, errno == ENOENT ? ESRCH : errno, "opendir(/proc/%d/task)", p->pid);
    return -1;
  }
  long added = 0;
  for (size_t i = 0; i < n; i++) {
    pid_t tid = tids[i];
    int known = 0;
    for (size_t j = 0; j < p->n && !known; j++) known = p->threads[j].tid == tid;
    if (known) continue;
    if (ptrace(PTRACE_SEIZE, tid, 0, (void *)(long)p->options) < 0) {
      int e = errno;
      if (e == ESRCH) continue;  // exited meanwhile
      // A zombie (e.g. a leader that called pthread_exit) cannot be seized and needs no stop;
      // nor can a thread that is exiting (the kernel refuses once its exit state is set),
      // which may be gone (or dead, 'X') by the time we look.
      if (e == EPERM) {
        char state = thread_state(p->pid, tid);
        if (state == 'Z' || state == 'X' || state == '?') continue;
      }
      nerr_set(err, e, "ptrace(PTRACE_SEIZE, tid %d)", tid);
      free(tids);
      return -1;
    }
    if (proc_add_thread(p, tid) < 0) {
      ptrace(PTRACE_INTERRUPT, tid, 0, 0);
      orphan_add(tid, ORPHAN_DETACH);
      nerr_set(err, ENOMEM, "freeze(pid %d)", p->pid);
      free(tids);
      return -1;
    }
    added++;
    if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0 && errno != ESRCH) {
      nerr_set(err, errno, "ptrace(PTRACE_INTERRUPT, tid %d)", tid);
      free(tids);
      return -1;
    }
  }
  free(tids);
  return added;
}

// Round after round: collect the stops of the threads seized last round (dropping the ones
// that died), then seize what /proc lists anew. A round that finds nothing new means every
// thread is stopped (a clone in progress shows its child in /proc before the parent can stop).
// The first round's threads must have been seized already (seize_listed).
static int freeze_rounds(frozen_proc_t *p, size_t first_new, int64_t deadline, nerr_t *err) {
  for (;;) {
    for (size_t i = first_new; i < p->n;) {
      int r = wait_event_stop(&p->threads[i], deadline, err);
      if (r < 0) return -1;
      if (r == 0)
        p->threads[i] = p->threads[--p->n];
      else
        i++;
    }
    first_new = p->n;
    long added = seize_listed(p, err);
    if (added < 0) return -1;
    if (added == 0) break;
  }
  if (p->n == 0) {
    nerr_set(err, ESRCH, "freeze(pid %d): no live thread", p->pid);
    return -1;
  }
  return 0;
}

static void freeze_run(task_t *t) {
  freeze_task_t *ft = (freeze_task_t *)t;
  pid_t pid = ft->pid;
  if (frozen_find(pid)) {
    nerr_set(&t->err, EBUSY, "freeze(pid %d): already frozen", pid);
    return;
  }
  frozen_proc_t p = {.pid = pid, .options = FROZEN_OPTIONS};
  if (seize_listed(&p, &t->err) < 0 || freeze_rounds(&p, 0, mono_ms() + FREEZE_TIMEOUT_MS, &t->err) < 0) goto fail;
  ft->out = malloc(p.n * sizeof *ft->out);
  if (!ft->out || procs_insert(&p) < 0) {
    nerr_set(&t->err, ENOMEM, "freeze(pid %d)", pid);
    goto fail;
  }
  memcpy(ft->out, p.threads, p.n * sizeof *ft->out);
  ft->nout = p.n;
  return;
fail:
  undo_seize(&p);
}

// [{tid, status}] of stopped threads, as freeze and freezeMany answer them.
static napi_value threads_to_js(napi_env env, const frozen_thread_t *threads, size_t n) {
  napi_value arr;
  napi_create_array_with_length(env, n, &arr);
  for (size_t i = 0; i < n; i++) {
    napi_value o;
    napi_create_object(env, &o);
    napi_set_named_property(env, o, "tid", make_i32(env, threads[i].tid));
    napi_set_named_property(env, o, "status", make_i32(env, threads[i].status));
    napi_set_element(env, arr, (uint32_t)i, o);
  }
  return arr;
}

static napi_value freeze_settle(napi_env env, task_t *t) {
  freeze_task_t *ft = (freeze_task_t *)t;
  return threads_to_js(env, ft->out, ft->nout);
}

static void freeze_destroy(task_t *t) {
  free(((freeze_task_t *)t)->out);
  free(t);
}

napi_value js_freeze(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t pid;
  if (!arg_count(env, info, 1, argv) || !get_i32(env, argv[0], "pid", &pid)) return NULL;
  if (pid <= 0) {
    throw_errno(env, EINVAL, "freeze(pid %d)", pid);
    return NULL;
  }
  freeze_task_t *ft = calloc(1, sizeof *ft);
  if (!ft) return NULL;
  ft->t.run = freeze_run;
  ft->t.settle = freeze_settle;
  ft->t.destroy = freeze_destroy;
  ft->pid = pid;
  return tracer_submit(env, &ft->t);
}

// freezeMany: several processes at once (the children found in one pass over a process
// tree). Every process's threads are interrupted first, then the stops are collected, so the
// processes stop side by side rather than one after the other. Each process succeeds or
// fails on its own: the answer holds, per PID, its threads or its error.
typedef struct {
  task_t t;
  size_t n;
  pid_t *pids;
  frozen_proc_t *procs;  // per PID; .threads NULL after a failure
  nerr_t *errs;
} freeze_many_t;

static void freeze_many_run(task_t *t) {
  freeze_many_t *fm = (freeze_many_t *)t;
  int64_t deadline = mono_ms() + FREEZE_TIMEOUT_MS;
  char *failed = calloc(fm->n ? fm->n : 1, 1);
  if (!failed) {
    nerr_set(&t->err, ENOMEM, "freezeMany");
    return;
  }
  for (size_t i = 0; i < fm->n; i++) {
    fm->procs[i] = (frozen_proc_t){.pid = fm->pids[i], .options = FROZEN_OPTIONS};
    if (frozen_find(fm->pids[i])) {
      nerr_set(&fm->errs[i], EBUSY, "freeze(pid %d): already frozen", fm->pids[i]);
      failed[i] = 1;
    } else if (seize_listed(&fm->procs[i], &fm->errs[i]) < 0) {
      failed[i] = 1;
    }
  }
  for (size_t i = 0; i < fm->n; i++) {
    if (!failed[i] && freeze_rounds(&fm->procs[i], 0, deadline, &fm->errs[i]) < 0) failed[i] = 1;
  }
  for (size_t i = 0; i < fm->n; i++) {
    frozen_proc_t *p = &fm->procs[i];
    if (!failed[i]) {
      // The caller's copy of the threads; the tracker keeps its own.
      frozen_thread_t *copy = malloc(p->n * sizeof *copy);
      frozen_proc_t kept = *p;
      if (copy && procs_insert(&kept) == 0) {
        memcpy(copy, p->threads, p->n * sizeof *copy);
        p->threads = copy;
        continue;
      }
      free(copy);
      nerr_set(&fm->errs[i], ENOMEM, "freeze(pid %d)", p->pid);
    }
    undo_seize(p);  // frees and clears p->threads
  }
  free(failed);
}

static napi_value freeze_many_settle(napi_env env, task_t *t) {
  freeze_many_t *fm = (freeze_many_t *)t;
  napi_value arr;
  napi_create_array_with_length(env, fm->n, &arr);
  for (size_t i = 0; i < fm->n; i++) {
    napi_value o;
    napi_create_object(env, &o);
    napi_set_named_property(env, o, "pid", make_i32(env, fm->pids[i]));
    frozen_proc_t *p = &fm->procs[i];
    if (p->threads) {
      napi_set_named_property(env, o, "threads", threads_to_js(env, p->threads, p->n));
    } else {
      napi_set_named_property(env, o, "error", nerr_to_js(env, &fm->errs[i]));
    }
    napi_set_element(env, arr, (uint32_t)i, o);
  }
  return arr;
}

static void freeze_many_destroy(task_t *t) {
  freeze_many_t *fm = (freeze_many_t *)t;
  for (size_t i = 0; i < fm->n; i++) free(fm->procs[i].threads);
  free(fm->pids);
  free(fm->procs);
  free(fm->errs);
  free(fm);
}

napi_value js_freeze_many(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!arg_count(env, info, 1, argv)) return NULL;
  uint32_t n = 0;
  bool is_array = false;
  napi_is_array(env, argv[0], &is_array);
  if (!is_array || napi_get_array_length(env, argv[0], &n) != napi_ok) {
    throw_errno(env, EINVAL, "freezeMany: pids must be an array");
    return NULL;
  }
  freeze_many_t *fm = calloc(1, sizeof *fm);
  if (!fm) return NULL;
  fm->n = n;
  fm->pids = calloc(n ? n : 1, sizeof *fm->pids);
  fm->procs = calloc(n ? n : 1, sizeof *fm->procs);
  fm->errs = calloc(n ? n : 1, sizeof *fm->errs);
  if (!fm->pids || !fm->procs || !fm->errs) {
    free(fm->pids);
    free(fm->procs);
    free(fm->errs);
    free(fm);
    throw_errno(env, ENOMEM, "freezeMany");
    return NULL;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    int32_t pid = 0;
    napi_get_element(env, argv[0], i, &v);
    int ok = get_i32(env, v, "pid", &pid);
    if (!ok || pid <= 0) {
      if (ok) throw_errno(env, EINVAL, "freezeMany(pid %d)", pid);
      free(fm->pids);
      free(fm->procs);
      free(fm->errs);
      free(fm);
      return NULL;
    }
    fm->pids[i] = pid;
  }
  fm->t.run = freeze_many_run;
  fm->t.settle = freeze_many_settle;
  fm->t.destroy = freeze_many_destroy;
  return tracer_submit(env, &fm->t);
}

// ---- thaw ----

#define NR_RT_SIGTIMEDWAIT 128
#define NR_EPOLL_WAIT 232
#define NR_EPOLL_PWAIT 281
#define NR_EPOLL_PWAIT2 441

// Signals whose default action is to ignore them (SIGCONT only resumes a stopped task).
#define DEFAULT_IGNORED ((1ULL << (SIGCHLD - 1)) | (1ULL << (SIGURG - 1)) | (1ULL << (SIGWINCH - 1)) | (1ULL << (SIGCONT - 1)))

// Our PTRACE_INTERRUPT woke epoll_wait/epoll_pwait/epoll_pwait2/rt_sigtimedwait, which do not
// restart but return -EINTR. If nothing else interrupts them (no group-stop, no pending signal
// that is unblocked and not ignored), rewind the thread so the call is issued again and the
// program never sees an EINTR caused by us. Ignored signals count as nothing: a traced thread
// queues them (and is woken by them), an untraced one would have discarded them. A signal
// delivered to a handler during freeze leaves rip at the handler and rax 0: no match below.
static void fix_interrupted_wait(pid_t pid, frozen_thread_t *th) {
  if (!(th->flags & TH_STOPPED)) return;
  if (WSTOPSIG(th->status) != SIGTRAP) return;  // group-stop: a real stop signal interrupted it
  struct user_regs_struct regs;
  if (ptrace(PTRACE_GETREGS, th->tid, 0, &regs) < 0) return;
  long long nr = (long long)regs.orig_rax;
  if (nr != NR_EPOLL_WAIT && nr != NR_EPOLL_PWAIT && nr != NR_EPOLL_PWAIT2 && nr != NR_RT_SIGTIMEDWAIT) return;
  if ((long long)regs.rax != -EINTR) return;

  char path[80], text[4096];
  snprintf(path, sizeof path, "/proc/%d/task/%d/status", pid, th->tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return;
  text[n] = 0;
  uint64_t pnd, shd, blk, ign, cgt;
  if (status_hex(text, "\nSigPnd:", &pnd) || status_hex(text, "\nShdPnd:", &shd) ||
      status_hex(text, "\nSigBlk:", &blk) || status_hex(text, "\nSigIgn:", &ign) ||
      status_hex(text, "\nSigCgt:", &cgt))
    return;
  uint64_t ignored = ign | (DEFAULT_IGNORED & ~cgt);
  if ((pnd | shd) & ~blk & ~ignored) return;  // a signal will interrupt it: the EINTR is genuine

  // rip must sit right after a `syscall` instruction (0f 05).
  errno = 0;
  long word = ptrace(PTRACE_PEEKTEXT, th->tid, (void *)(regs.rip - 2), 0);
  if (errno || (word & 0xffff) != 0x050f) return;
  regs.rax = regs.orig_rax;
  regs.rip -= 2;
  regs.orig_rax = (unsigned long long)-1;  // no restart logic on the way out: plain re-execution
  ptrace(PTRACE_SETREGS, th->tid, 0, &regs);
}

// After SIGKILL: collect each thread's exit so no traced zombie keeps the process from being
// reaped by its parent. Threads that take longer are left to the orphan list.
void reap_killed(const pid_t *ids, size_t n) {
  size_t left = n;
  pid_t *tids = malloc((n ? n : 1) * sizeof *tids);
  if (!tids) {
    for (size_t i = 0; i < n; i++) orphan_add(ids[i], ORPHAN_REAP);
    return;
  }
  memcpy(tids, ids, n * sizeof *tids);
  int64_t start = mono_ms();
  long delay_ns = 50000;
  for (;;) {
    for (size_t i = 0; i < left;) {
      int st;
      pid_t r = waitpid(tids[i], &st, __WALL | WNOHANG);
      // Exited (reaped now) or no longer ours (ECHILD): done. A stop cannot outlast SIGKILL.
      if (r < 0 || (r > 0 && (WIFEXITED(st) || WIFSIGNALED(st))))
        tids[i] = tids[--left];
      else
        i++;
    }
    if (!left) break;
    if (mono_ms() - start > REAP_TIMEOUT_MS) {
      for (size_t i = 0; i < left; i++) orphan_add(tids[i], ORPHAN_REAP);
      break;
    }
    struct timespec d = {0, delay_ns};
    nanosleep(&d, NULL);
    if (delay_ns < 5000000) delay_ns *= 2;
  }
  free(tids);
}

static void thaw_run(task_t *t) {
  freeze_task_t *ft = (freeze_task_t *)t;
  frozen_proc_t *p = frozen_find(ft->pid);
  if (!p) {
    nerr_set(&t->err, ESRCH, "thaw(pid %d): not frozen", ft->pid);
    return;
  }
  if (ft->kill) {
    // Killed while still stopped: no instruction of the task runs in between.
    if (kill(p->pid, SIGKILL) == 0 || errno == ESRCH) {
      pid_t *tids = malloc(p->n * sizeof *tids);
      if (tids) {
        for (size_t i = 0; i < p->n; i++) tids[i] = p->threads[i].tid;
        reap_killed(tids, p->n);
        free(tids);
      } else {
        for (size_t i = 0; i < p->n; i++) orphan_add(p->threads[i].tid, ORPHAN_REAP);
      }
      keeper_release(p->keeper, p->keeper_fd, p->keeper_stack, 'x');
      procs_remove(p);
      return;
    }
    nerr_set(&t->err, errno, "kill(pid %d, SIGKILL)", p->pid);
    // Fall through: never leave the task stopped.
  }
  for (size_t i = 0; i < p->n; i++) {
    frozen_thread_t *th = &p->threads[i];
    if (!ft->kill) fix_interrupted_wait(p->pid, th);
    if (ptrace(PTRACE_DETACH, th->tid, 0, 0) < 0) {
      if (errno == ESRCH) {
        // Gone (killed by someone else while frozen): it owes us its exit status.
        orphan_add(th->tid, ORPHAN_REAP);
      } else {
        nerr_set(&t->err, errno, "ptrace(PTRACE_DETACH, tid %d)", th->tid);
      }
    }
  }
  keeper_release(p->keeper, p->keeper_fd, p->keeper_stack, 'k');
  procs_remove(p);
}

napi_value js_thaw(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid;
  int kill;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "pid", &pid) ||
      !get_bool(env, argv[1], "kill", &kill))
    return NULL;
  freeze_task_t *ft = calloc(1, sizeof *ft);
  if (!ft) return NULL;
  ft->t.run = thaw_run;
  ft->pid = pid;
  ft->kill = kill;
  return tracer_submit(env, &ft->t);
}

// seizeThread: a thread that a restore created in a task we hold (an injected clone3 whose
// child spins in place) is seized with the task's options, stopped, and tracked with it.
static void seize_thread_run(task_t *t) {
  freeze_task_t *ft = (freeze_task_t *)t;
  pid_t tid = ft->tid;
  frozen_proc_t *p = frozen_find(ft->pid);
  if (!p) {
    nerr_set(&t->err, ESRCH, "seizeThread(pid %d): not frozen", ft->pid);
    return;
  }
  if (ptrace(PTRACE_SEIZE, tid, 0, (void *)(long)p->options) < 0) {
    nerr_set(&t->err, errno, "ptrace(PTRACE_SEIZE, tid %d)", tid);
    return;
  }
  if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0) {
    nerr_set(&t->err, errno, "ptrace(PTRACE_INTERRUPT, tid %d)", tid);
    return;
  }
  frozen_thread_t th = {.tid = tid};
  int r = wait_event_stop(&th, mono_ms() + FREEZE_TIMEOUT_MS, &t->err);
  if (r <= 0) {
    if (r == 0) nerr_set(&t->err, ESRCH, "seizeThread(tid %d): thread exited", tid);
    return;
  }
  if (proc_add_thread(p, tid) < 0) {
    nerr_set(&t->err, ENOMEM, "seizeThread(tid %d)", tid);
    return;
  }
  p->threads[p->n - 1] = th;
}

napi_value js_seize_thread(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t pid, tid;
  if (!arg_count(env, info, 2, argv) || !get_i32(env, argv[0], "pid", &pid) || !get_i32(env, argv[1], "tid", &tid))
    return NULL;
  freeze_task_t *ft = calloc(1, sizeof *ft);
  if (!ft) return NULL;
  ft->t.run = seize_thread_run;
  ft->pid = pid;
  ft->tid = tid;
  return tracer_submit(env, &ft->t);
}
