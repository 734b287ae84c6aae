// spawnRestorer: starts the process that becomes a restored task (docs/RESTORE.md, step 3).
//
// On the tracer thread (the new process must be seized by the thread that will drive it):
// start a keeper process (clone with CLONE_VM: no copy of the server's memory) that calls
// clone3(set_tid = [pid]) and stays the new process's parent until the restore ends. On
// success the keeper exits, so the restored task is reparented to init (or the nearest
// subreaper) and is never a child of the server (libuv would reap its stops and exit). On
// failure the keeper reaps the killed task first, so nothing is left behind, not even a
// zombie (init here does not reap orphans). If the server dies, the keeper's release pipe
// closes; the task dies by PTRACE_O_EXITKILL and the keeper reaps it too. The new process puts the plan memfd and the
// control and reply pipes at workFdBase..+2, closes every other fd, resets signal dispositions
// and mask (the server ignores SIGPIPE and the tracer thread blocks everything: neither may
// leak into the restored task, since the plan restores only non-default actions), and execs
// the stub with GLIBC_TUNABLES=glibc.pthread.rseq=0 as its only environment.
// The tracer seizes it with PTRACE_O_EXITKILL (a half-restored task dies with the server)
// and PTRACE_O_SUSPEND_SECCOMP (the seccomp filters the restore installs act only once the
// task is let go, not on the calls injected after them: tracer.h), writes one byte on the control pipe, and reads the stub's reply line: "ok" -> interrupt it
// and track it like a frozen task; "error: ..." -> kill it and reject with that line.
#include "tracer.h"
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

#define REPLY_TIMEOUT_MS 60000  // the stub opens every file of the task (10,000 fds: < 0.3 s)
#define STOP_TIMEOUT_MS 5000

typedef struct {
  task_t t;
  pid_t pid;
  int work_base;
  char *stub;
  unsigned char *plan;
  size_t plan_len;
} spawn_task_t;

// Everything the two children need, prepared before vfork: between vfork and execve only
// async-signal-safe calls on this memory.
typedef struct {
  pid_t pid;
  int base;
  int src[3];  // plan, ctl read end, reply write end (all >= base + 3, close-on-exec)
  const char *stub;
  char *argv[5];
  char *envp[2];
  char num[3][16];
} child_setup_t;

static void child_say(int fd, const char *what, int err) {
  // "error: restorer setup: WHAT: ENAME\n", without stdio or malloc.
  const char *name = strerrorname_np(err);
  const char *parts[] = {"error: restorer setup: ", what, ": ", name ? name : "unknown error", "\n"};
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
    if (write(fd, parts[i], strlen(parts[i])) < 0) return;
}

// The new process (clone3 child): fds into place, clean signal state, exec the stub.
static void __attribute__((noreturn)) grandchild(const child_setup_t *cs) {
  int reply = cs->src[2];
  for (int i = 0; i < 3; i++) {
    if (dup2(cs->src[i], cs->base + i) < 0) {  // dup2 clears close-on-exec on the copy
      child_say(reply, "dup2", errno);
      _exit(127);
    }
  }
  if (cs->base > 0) syscall(SYS_close_range, 0u, (unsigned)cs->base - 1, 0u);
  syscall(SYS_close_range, (unsigned)cs->base + 3, ~0u, 0u);
  reply = cs->base + 2;
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; s++) sigaction(s, &dfl, NULL);  // EINVAL for KILL/STOP/glibc's own: fine
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  execve(cs->stub, cs->argv, cs->envp);
  child_say(reply, "execve", errno);
  _exit(127);
}

// Reads the stub's reply line while keeping it running: a seized task stops for every signal
// it gets, and would then never answer. Returns 1 with a line, 0 on EOF/death, -1 on error.
// With until_eof, goes on reading (and discarding) until EOF: the stub closes its working fds
// after its reply, so EOF means it is done and on its way into pause().
int read_reply(pid_t pid, int fd, char *line, size_t cap, int until_eof, int *dead, nerr_t *err) {
  size_t len = 0;
  int64_t deadline = mono_ms() + REPLY_TIMEOUT_MS;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, 20);
    if (r > 0) {
      ssize_t n = read(fd, line + len, cap - 1 - len);
      if (n < 0 && errno != EINTR && errno != EAGAIN) {
        nerr_set(err, errno, "read(restorer reply pipe)");
        return -1;
      }
      if (n == 0) {
        line[len] = 0;
        return len > 0;
      }
      if (n > 0) {
        len += (size_t)n;
        line[len] = 0;
        if (until_eof) {
          len = 0;
          continue;
        }
        char *nl = memchr(line, '\n', len);
        if (nl) {
          *nl = 0;
          return 1;
        }
        if (len == cap - 1) return 1;  // overlong: take what there is
      }
    }
    int st;
    pid_t w = waitpid(pid, &st, __WALL | WNOHANG);
    if (w == pid) {
      if (WIFEXITED(st) || WIFSIGNALED(st)) {
        *dead = 1;
        continue;  // drain what it wrote before dying
      }
      if (WIFSTOPPED(st)) {
        int sig = (st >> 16) == 0 ? WSTOPSIG(st) : 0;
        ptrace(PTRACE_CONT, pid, 0, (void *)(long)sig);
      }
    }
    if (*dead && r == 0) {
      line[len] = 0;
      return len > 0;
    }
    if (mono_ms() > deadline) {
      nerr_set(err, ETIMEDOUT, "restorer(pid %d): no reply within %d s", pid, REPLY_TIMEOUT_MS / 1000);
      return -1;
    }
  }
}

// The new process is made with CLONE_VM | CLONE_VFORK: a plain clone3 from the keeper (which
// shares the server's memory) copied the server's page tables only for execve to drop them,
// about 25 ms for a server of 300 MB here. Sharing memory, the child needs a stack of its
// own, and returning from a system call wrapper onto it is impossible: this is clone3 in a few
// instructions (Debian 12's glibc exports no clone3 wrapper). The child calls fn(arg) on its
// stack and exits should fn return. x86-64 only, as the rest of the restore.
static long clone3_with_stack(struct clone_args *ca, void (*fn)(void *), void *arg) {
  long ret;
  register void (*entry)(void *) __asm__("r12") = fn;
  register void *entry_arg __asm__("r13") = arg;
  __asm__ volatile(
      "syscall\n\t"
      "test %%rax, %%rax\n\t"
      "jnz 1f\n\t"
      "xor %%ebp, %%ebp\n\t"
      "mov %%r13, %%rdi\n\t"
      "call *%%r12\n\t"
      "mov $60, %%eax\n\t"
      "mov $127, %%edi\n\t"
      "syscall\n\t"
      "1:\n\t"
      : "=a"(ret)
      : "a"((long)SYS_clone3), "D"(ca), "S"(sizeof *ca), "r"(entry), "r"(entry_arg)
      : "rcx", "r11", "memory");
  return ret;
}

static void grandchild_entry(void *cs) {
  grandchild(cs);
}

typedef struct {
  child_setup_t *cs;
  struct clone_args *ca;
  int status_w;   // the keeper reports clone3's result here (pid or -errno, 4 bytes)
  int release_r;  // and waits here for 'k' (keep the task) or anything else (reap it)
} keeper_setup_t;

static void close_all_but(int a, int b) {
  int lo = a < b ? a : b, hi = a < b ? b : a;
  if (lo > 0) syscall(SYS_close_range, 0u, (unsigned)lo - 1, 0u);
  if (hi > lo + 1) syscall(SYS_close_range, (unsigned)lo + 1, (unsigned)hi - 1, 0u);
  syscall(SYS_close_range, (unsigned)hi + 1, ~0u, 0u);
}

// The keeper runs in the server's memory on its own stack: system calls only. It shares the
// tracer thread's TLS (errno), as does the new process until its execve, which is harmless:
// the tracer waits on the status pipe meanwhile, and never looks at errno for that read's
// success. Signals cannot run the server's handlers in either: the tracer thread blocks them
// all, the mask is inherited, and the new process unmasks only after resetting every action.
static int keeper_main(void *arg) {
  keeper_setup_t *ks = arg;
  // A subreaper: when a restored tree is ended, its processes (and zombies) whose parents
  // died first come to the keeper, which reaps them all; init here may not.
  syscall(SYS_prctl, PR_SET_CHILD_SUBREAPER, 1L, 0L, 0L, 0L);
  long r = clone3_with_stack(ks->ca, grandchild_entry, ks->cs);
  int32_t result = (int32_t)r;  // the raw system call: the pid, or -errno
  close_all_but(ks->status_w, ks->release_r);
  if (write(ks->status_w, &result, sizeof result) != (ssize_t)sizeof result || r <= 0) _exit(1);
  char verdict = 0;
  while (read(ks->release_r, &verdict, 1) < 0 && errno == EINTR) {
  }
  if (verdict != 'k') {
    kill((pid_t)r, SIGKILL);
    int st;
    while (waitpid((pid_t)r, &st, __WALL) < 0 && errno == EINTR) {
    }
    // Every other process of the tree was killed before this verdict: reap what came here.
    while (waitpid(-1, &st, __WALL) > 0 || errno == EINTR) {
    }
  }
  _exit(0);
}

void keeper_release(pid_t keeper, int keeper_fd, void *stack, char verdict) {
  if (keeper <= 0) return;
  if (write(keeper_fd, &verdict, 1) < 0) {
    // Closing the pipe below tells the keeper the same as 'x'.
  }
  close(keeper_fd);
  int st;
  while (waitpid(keeper, &st, __WALL) < 0 && errno == EINTR) {
  }
  free(stack);  // only now: the keeper ran on it until it exited
}

#define KEEPER_STACK (64 * 1024)
#define CHILD_STACK (64 * 1024)

int restorer_start(pid_t pid, const char *stub, const unsigned char *plan_bytes, size_t plan_len, int base, spawned_t *out, nerr_t *err) {
  int plan = -1, ctl[2] = {-1, -1}, reply[2] = {-1, -1};
  child_setup_t cs = {.pid = pid, .base = base, .src = {-1, -1, -1}, .stub = stub};
  int created = 0, seized = 0;
  pid_t keeper = -1;
  int keeper_fd = -1;
  char *keeper_stack = NULL;
  char *child_stack = NULL;
  *out = (spawned_t){.pid = pid, .keeper = -1, .keeper_fd = -1, .ctl_w = -1, .reply_r = -1};

  plan = memfd_create("ckptfs-plan", MFD_CLOEXEC);
  if (plan < 0) {
    nerr_set(err, errno, "memfd_create(ckptfs-plan)");
    goto out;
  }
  for (size_t done = 0; done < plan_len;) {
    ssize_t n = write(plan, plan_bytes + done, plan_len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      nerr_set(err, n < 0 ? errno : EIO, "write(plan memfd, %zu)", plan_len - done);
      goto out;
    }
    done += (size_t)n;
  }
  if (pipe2(ctl, O_CLOEXEC) < 0 || pipe2(reply, O_CLOEXEC) < 0) {
    nerr_set(err, errno, "pipe2(O_CLOEXEC)");
    goto out;
  }
  // The child's copies sit above the target numbers so that placing one never overwrites another.
  int from[3] = {plan, ctl[0], reply[1]};
  for (int i = 0; i < 3; i++) {
    cs.src[i] = fcntl(from[i], F_DUPFD_CLOEXEC, base + 3);
    if (cs.src[i] < 0) {
      nerr_set(err, errno, "fcntl(F_DUPFD_CLOEXEC, %d)", base + 3);
      goto out;
    }
    snprintf(cs.num[i], sizeof cs.num[i], "%d", base + i);
  }
  cs.argv[0] = (char *)stub;
  for (int i = 0; i < 3; i++) cs.argv[i + 1] = cs.num[i];
  cs.argv[4] = NULL;
  cs.envp[0] = "GLIBC_TUNABLES=glibc.pthread.rseq=0";
  cs.envp[1] = NULL;

  uint64_t set_tid = (uint64_t)pid;
  struct clone_args ca;
  memset(&ca, 0, sizeof ca);
  ca.flags = CLONE_VM | CLONE_VFORK;
  ca.exit_signal = SIGCHLD;
  ca.set_tid = (uint64_t)(uintptr_t)&set_tid;
  ca.set_tid_size = 1;
  child_stack = malloc(CHILD_STACK);
  if (!child_stack) {
    nerr_set(err, ENOMEM, "restorer child stack");
    goto out;
  }
  ca.stack = (uint64_t)(uintptr_t)child_stack;
  ca.stack_size = CHILD_STACK;

  int status[2] = {-1, -1}, release[2] = {-1, -1};
  if (pipe2(status, O_CLOEXEC) < 0 || pipe2(release, O_CLOEXEC) < 0) {
    nerr_set(err, errno, "pipe2(keeper)");
    goto out;
  }
  keeper_setup_t ks = {.cs = &cs, .ca = &ca, .status_w = status[1], .release_r = release[0]};
  keeper_stack = malloc(KEEPER_STACK);
  if (!keeper_stack) {
    nerr_set(err, ENOMEM, "keeper stack");
    goto out;
  }
  keeper = clone(keeper_main, keeper_stack + KEEPER_STACK, CLONE_VM | SIGCHLD, &ks);
  if (keeper < 0) {
    nerr_set(err, errno, "clone(keeper)");
    goto out;
  }
  close(status[1]);
  close(release[0]);
  status[1] = release[0] = -1;
  keeper_fd = release[1];
  release[1] = -1;
  int32_t result = 0;
  ssize_t got_result;
  while ((got_result = read(status[0], &result, sizeof result)) < 0 && errno == EINTR) {
  }
  close(status[0]);
  status[0] = -1;
  if (got_result != (ssize_t)sizeof result || result <= 0) {
    nerr_set(err, got_result == (ssize_t)sizeof result && result < 0 ? -result : EIO, "clone3(set_tid [%d])", pid);
    goto out;
  }
  created = 1;
  // Our copies of the child's ends: closed, so that EOF on the reply means the stub is gone.
  for (int i = 0; i < 3; i++) {
    close(cs.src[i]);
    cs.src[i] = -1;
  }
  close(ctl[0]);
  close(reply[1]);
  ctl[0] = reply[1] = -1;

  if (ptrace(PTRACE_SEIZE, pid, 0, (void *)(long)RESTORED_OPTIONS) < 0) {
    int e = errno;
    char line[512];
    int dead = 1;
    nerr_t ignored = {0};
    if (read_reply(pid, reply[0], line, sizeof line, 0, &dead, &ignored) == 1)
      nerr_set_raw(err, EIO, "restorer(pid %d): %s", pid, line);
    else
      nerr_set(err, e, "ptrace(PTRACE_SEIZE, pid %d, PTRACE_O_EXITKILL | PTRACE_O_SUSPEND_SECCOMP)", pid);
    goto out;
  }
  seized = 1;
  if (write(ctl[1], "g", 1) != 1) {
    nerr_set(err, errno, "write(restorer control pipe)");
    goto out;
  }
  char line[1024];
  int dead = 0;
  int got = read_reply(pid, reply[0], line, sizeof line, 0, &dead, err);
  if (got < 0) goto out;
  if (got == 0) {
    nerr_set_raw(err, EIO, "restorer(pid %d): exited without a reply", pid);
    goto out;
  }
  if (strcmp(line, "ok") != 0) {
    nerr_set_raw(err, EIO, "restorer(pid %d): %s", pid, line);
    goto out;
  }
  // Handed over: the caller settles the stub (restorer_settle) or ends it (restorer_abort).
  *out = (spawned_t){.pid = pid, .keeper = keeper, .keeper_fd = keeper_fd, .keeper_stack = keeper_stack, .ctl_w = ctl[1], .reply_r = reply[0]};
  keeper = -1;
  keeper_fd = -1;
  keeper_stack = NULL;
  ctl[1] = reply[0] = -1;
out:
  if (err->code && created) {
    // Never leave a half-made task behind. Only ever the pid clone3 gave us.
    kill(pid, SIGKILL);
    if (seized) reap_killed(&pid, 1);
  }
  if (keeper > 0) {
    // The keeper reaps the task (or has nothing to reap) and exits; we reap the keeper.
    if (keeper_fd >= 0) {
      keeper_release(keeper, keeper_fd, keeper_stack, 'x');
    } else {
      int st;
      while (waitpid(keeper, &st, __WALL) < 0 && errno == EINTR) {
      }
      free(keeper_stack);
    }
  } else {
    free(keeper_stack);
  }
  // The child ran on its stack until it called execve (or died): the keeper, suspended until
  // then (CLONE_VFORK), has reported since, or never ran.
  free(child_stack);
  for (int i = 0; i < 3; i++)
    if (cs.src[i] >= 0) close(cs.src[i]);
  int fds[] = {plan, ctl[0], ctl[1], reply[0], reply[1]};
  for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
    if (fds[i] >= 0) close(fds[i]);
  return err->code ? -1 : 0;
}

int restorer_settle(spawned_t *sp, nerr_t *err) {
  pid_t pid = sp->pid;
  char line[1024];
  int dead = 0;
  // Ready once its working fds are closed: stop it (in pause()) and keep it like a frozen task.
  if (read_reply(pid, sp->reply_r, line, sizeof line, 1, &dead, err) < 0) return -1;
  if (ptrace(PTRACE_INTERRUPT, pid, 0, 0) < 0) {
    nerr_set(err, errno, "ptrace(PTRACE_INTERRUPT, pid %d)", pid);
    return -1;
  }
  frozen_thread_t th = {.tid = pid, .status = -1};
  int r = wait_event_stop(&th, mono_ms() + STOP_TIMEOUT_MS, err);
  if (r <= 0) {
    if (r == 0) {
      char how[64];
      if (th.status == -1) snprintf(how, sizeof how, " (no longer our tracee: ECHILD)");
      else if (WIFSIGNALED(th.status)) snprintf(how, sizeof how, " (killed by signal %d)", WTERMSIG(th.status));
      else snprintf(how, sizeof how, " (exit status %d)", WEXITSTATUS(th.status));
      // Whether its keeper still holds it: a keeper that saw its release pipe close kills it.
      char keeper[96] = "";
      if (sp->keeper > 0) snprintf(keeper, sizeof keeper, "; its keeper (pid %d) is %s", sp->keeper, kill(sp->keeper, 0) == 0 ? "still there" : "gone");
      nerr_set_raw(err, ESRCH, "restorer(pid %d): exited after its reply%s%s", pid, how, keeper);
    }
    return -1;
  }
  if (frozen_adopt(pid, &th, RESTORED_OPTIONS, sp->keeper, sp->keeper_fd, sp->keeper_stack) < 0) {
    nerr_set(err, ENOMEM, "spawnRestorer(pid %d)", pid);
    return -1;
  }
  sp->keeper = -1;  // owned by the frozen task's record now
  sp->keeper_fd = -1;
  sp->keeper_stack = NULL;
  close(sp->ctl_w);
  close(sp->reply_r);
  sp->ctl_w = sp->reply_r = -1;
  return 0;
}

void restorer_abort(spawned_t *sp) {
  if (sp->pid > 0 && !frozen_find(sp->pid)) {
    kill(sp->pid, SIGKILL);
    reap_killed(&sp->pid, 1);
  }
  if (sp->keeper > 0) keeper_release(sp->keeper, sp->keeper_fd, sp->keeper_stack, 'x');
  sp->keeper = -1;
  sp->keeper_fd = -1;
  sp->keeper_stack = NULL;
  if (sp->ctl_w >= 0) close(sp->ctl_w);
  if (sp->reply_r >= 0) close(sp->reply_r);
  sp->ctl_w = sp->reply_r = -1;
}

static void spawn_run(task_t *t) {
  spawn_task_t *sp = (spawn_task_t *)t;
  spawned_t one;
  if (restorer_start(sp->pid, sp->stub, sp->plan, sp->plan_len, sp->work_base, &one, &t->err) < 0) return;
  if (restorer_settle(&one, &t->err) < 0) restorer_abort(&one);
}

static void spawn_destroy(task_t *t) {
  spawn_task_t *sp = (spawn_task_t *)t;
  free(sp->stub);
  free(sp->plan);
  free(sp);
}

napi_value js_spawn_restorer(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t pid, base;
  void *plan;
  size_t plan_len, stub_len;
  if (!arg_count(env, info, 4, argv) || !get_i32(env, argv[0], "pid", &pid) ||
      !get_buffer(env, argv[2], "plan", &plan, &plan_len) || !get_i32(env, argv[3], "workFdBase", &base))
    return NULL;
  napi_valuetype vt;
  napi_typeof(env, argv[1], &vt);
  if (vt != napi_string) {
    type_error(env, "stub must be a string");
    return NULL;
  }
  if (pid <= 0 || base < 0 || base > (1 << 20)) {
    throw_errno(env, EINVAL, "spawnRestorer(pid %d, workFdBase %d)", pid, base);
    return NULL;
  }
  spawn_task_t *sp = calloc(1, sizeof *sp);
  if (!sp) return NULL;
  sp->t.run = spawn_run;
  sp->t.destroy = spawn_destroy;
  sp->pid = pid;
  sp->work_base = base;
  napi_get_value_string_utf8(env, argv[1], NULL, 0, &stub_len);
  sp->stub = malloc(stub_len + 1);
  sp->plan = malloc(plan_len ? plan_len : 1);
  if (!sp->stub || !sp->plan) {
    spawn_destroy(&sp->t);
    return NULL;
  }
  napi_get_value_string_utf8(env, argv[1], sp->stub, stub_len + 1, &stub_len);
  memcpy(sp->plan, plan, plan_len);  // copied: the caller's buffer may change meanwhile
  sp->plan_len = plan_len;
  return tracer_submit(env, &sp->t);
}
