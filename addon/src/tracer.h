// The tracer thread: the one native thread that issues every ptrace request (the kernel
// accepts requests only from the thread that attached), fed by a job queue, and the state it
// keeps about the processes it has frozen. Everything declared under "tracer thread only"
// must be called from that thread.
#ifndef CKPTFS_TRACER_H
#define CKPTFS_TRACER_H

#include "module.h"

#include <stdint.h>
#include <sys/types.h>

// Per Node environment (main thread or a worker): the threadsafe function through which the
// tracer thread settles that environment's promises.
struct instance {
  napi_threadsafe_function tsfn;
  int pending;  // tasks submitted and not yet settled (JS thread only)
  int closed;   // environment torn down: drop results (guarded by the queue mutex)
};

// Sets up the calling environment (module init). Returns 0 with an exception pending on failure.
int tracer_init_env(napi_env env);
// Queues t for the tracer thread and returns its promise (takes ownership of t).
napi_value tracer_submit(napi_env env, task_t *t);

// ---- tracer thread only ----

// waitpid(tid, __WALL) for at most timeout_ms (polling, so a thread stuck in an
// uninterruptible sleep cannot hang the tracer forever). Returns tid, 0 on timeout,
// -1 with errno on error. In a task that overlaps others (task_t.process), the wait lets the
// other tasks run meanwhile.
pid_t tracer_wait(pid_t tid, int *status, int timeout_ms);

// ptrace options. PTRACE_O_SUSPEND_SECCOMP: a tracee's seccomp filters do not apply while we
// hold it, so neither the checkpoint's injected calls (a frozen task) nor the restore's (a
// restored one, whose filters are installed before its last calls) can be killed or faked by
// them; the option ends with the detach, and the filters act again. It needs CAP_SYS_ADMIN
// and a tracer not itself under seccomp (else the seize fails with EPERM).
#define PTRACE_O_SUSPEND_SECCOMP_ (1 << 21)
#define FROZEN_OPTIONS PTRACE_O_SUSPEND_SECCOMP_
// A restored task also dies with the server (a half-restored task must not run on).
#define RESTORED_OPTIONS (PTRACE_O_EXITKILL | PTRACE_O_SUSPEND_SECCOMP_)

// What freeze recorded about one stopped thread.
enum {
  TH_STOPPED = 1,  // in a ptrace stop we can use
};

typedef struct frozen_thread {
  pid_t tid;
  int status;  // wait status of its stop
  int flags;
} frozen_thread_t;

typedef struct frozen_proc {
  pid_t pid;
  size_t n, cap;
  frozen_thread_t *threads;
  uint64_t syscall_insn;  // address of a `syscall` instruction in its vdso (0: not looked up)
  uint64_t kept_scratch;  // a scratch area injectBatch left mapped there (placement.keepScratch; 0: none)
  int options;            // ptrace options set at seize (kept across injections)
  pid_t keeper;           // restored tasks: their parent until the restore ends (0: none)
  int keeper_fd;          // write end of the keeper's release pipe
  void *keeper_stack;     // the keeper runs on it (shared memory) until it exits
  int restored;           // adopted by a restore (frozen_adopt), not frozen by a checkpoint
} frozen_proc_t;

frozen_proc_t *frozen_find(pid_t pid);
// The PID of the process being restored that thread `tid` belongs to, 0 if none: for a task's
// `process` hook (its work may then overlap other restored processes' work).
pid_t restored_process_of(pid_t tid);
frozen_proc_t *frozen_find_tid(pid_t tid);
// Tracks a task seized and stopped elsewhere (the restorer) like a frozen one, with the
// keeper process that is its parent until the restore ends. 0 or -1 (ENOMEM).
int frozen_adopt(pid_t pid, const frozen_thread_t *th, int options, pid_t keeper, int keeper_fd, void *keeper_stack);
// Drops the record of a task adopted above that was killed since (a tree restore that failed).
void frozen_forget(pid_t pid);
// Ends a restored task's keeper: 'k' lets it exit so the task is reparented to init and runs
// on; 'x' makes it reap the (killed) task first. Waits for the keeper. No-op without one.
void keeper_release(pid_t keeper, int keeper_fd, void *stack, char verdict);

// Waits until a seized, interrupted thread is in an event stop, delivering any signal it
// dequeues first (see freeze.c). Returns 1 stopped, 0 gone, -1 error (err set).
int wait_event_stop(frozen_thread_t *th, int64_t deadline_ms, nerr_t *err);
// After SIGKILL: collects the threads' ptrace exit notifications (orphans after 2 s).
void reap_killed(const pid_t *tids, size_t n);
int64_t mono_ms(void);

// Threads that died or could not be detached yet: reaped/detached later, when they report.
enum { ORPHAN_REAP = 0, ORPHAN_DETACH = 1 };
void orphan_add(pid_t tid, int kind);
// Retries the orphans; returns nonzero while some remain (the tracer then polls again soon).
int orphan_work(void);

#endif
