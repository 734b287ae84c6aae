// injectBatch: runs system calls inside a frozen thread through a `syscall` instruction of its
// vdso, then puts the thread back exactly as it was (registers, signal mask, pending signals).
//
// Per call: regs = saved, rip = the instruction, rax = nr, args in rdi/rsi/rdx/r10/r8/r9,
// orig_rax = -1 (so no restart logic fires for the original interrupted call), resume until
// the call has executed, result = rax.
//
// Signals: for the whole batch the thread's mask blocks every signal, so a signal that is
// pending or arrives meanwhile is not dequeued and stays pending (SIGKILL/SIGSTOP cannot be
// blocked: a SIGSTOP dequeued on the way is suppressed and sent again with tgkill at the end).
// rt_sigprocmask calls of the batch are therefore emulated against the thread's real mask
// (the "virtual" mask), which is installed when the batch ends. Threads created by the batch
// (clone) inherit the all-blocked mask: set theirs explicitly.
//
// Resuming: by default PTRACE_SINGLESTEP (one stop per call). A single-step trap is a forced
// SIGTRAP, and forcing a signal the thread ignores makes the kernel reset its disposition to
// SIG_DFL. So when SIGTRAP is ignored or pending in the thread, and from any injected
// rt_sigaction(SIGTRAP) on, calls run with PTRACE_SYSCALL (+PTRACE_O_TRACESYSGOOD) instead:
// entry and exit stops, no signal. Since the kernel decides about restarting the original
// system call only on the way out of get_signal(), a batch that ends in a syscall-exit stop
// ends with PTRACE_INTERRUPT + PTRACE_CONT to get back into such a stop. A call that sends the
// thread's own process a SIGTRAP (a restore queueing a saved pending one) switches too: in
// single-step mode SIGTRAP is deliverable and the stepping would consume it. Once in syscall
// mode SIGTRAP is blocked as well, so one that arrives stays pending with its siginfo.
//
// SIGTRAPs the kernel makes during a batch (si_code > 0: the single-step trap, the runner's
// int3) are ours and are never handed to the program: its default action kills it with a core
// dump. Only a SIGTRAP someone sent (si_code <= 0) is sent again when the batch ends.
//
// Placement (restore): the scratch area can be mapped at a given address (MAP_FIXED_NOREPLACE)
// and a given `syscall` instruction used instead of the vdso's.
//
// Kept scratch (restore, placement.keepScratch): the scratch area is mapped at its given
// address by the first batch and left there for the next ones (the caller unmaps it), which
// saves the two calls that map and unmap it per batch. It is recorded on the frozen process;
// a batch without keepScratch forgets it (the caller's last batch unmaps it). Bytes past the
// batch's own are zeroed, as a fresh mapping's are.
//
// Runner (restore, placement.runnerPage): a page of the tracee's that the restore mapped for
// itself (read, write, execute). Consecutive plain calls then run in one go instead of one
// stop each: a loop that makes each call of a table and stores its result is written into the
// page with the table, the thread runs it with PTRACE_CONT and stops at its final int3 (a
// SIGTRAP, as a single step's, so used only in single-step mode). Each stop costs two context
// switches, which on a loaded machine is most of a restore's time. Calls the tracer must see
// one at a time (the emulated rt_sigprocmask, rt_sigaction(SIGTRAP), interruptAtEntry, calls
// that make a thread or process, which would run the loop too) keep the one-stop-per-call way. The vdso address found is
// cached per frozen process and forgotten after any batch that may have changed the layout.
#include "tracer.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PTRACE_GETSIGMASK
#define PTRACE_GETSIGMASK 0x420a
#define PTRACE_SETSIGMASK 0x420b
#endif
#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define INJECT_TIMEOUT_MS 10000
#define MAX_CALL_ARGS 6
#define SIGBIT(s) (1ULL << ((s) - 1))

typedef struct {
  int32_t nr;
  uint32_t scratch_args;
  uint64_t args[MAX_CALL_ARGS];
  int interrupt_at_entry;  // PTRACE_INTERRUPT at the syscall-entry stop (see inject_one)
} call_t;

typedef struct {
  task_t t;
  pid_t tid;
  uint64_t runner_page;    // placement, 0: no runner
  uint64_t keep_scratch;   // placement: size of the kept scratch area at scratch_addr, 0: not kept
  size_t scratch_size;
  unsigned char *init;  // scratchInit copy
  size_t init_len;
  call_t *calls;
  size_t ncalls;
  int64_t *results;
  unsigned char *scratch;  // read back
  uint64_t scratch_addr;   // placement, 0: anywhere
  uint64_t syscall_addr;   // placement, 0: the vdso's
} inject_task_t;

// State of one batch.
typedef struct {
  pid_t tid, tgid;
  uint64_t insn;        // address of `0f 05`
  int options;          // the tracee's ptrace options outside the batch
  int syscall_mode;     // resume with PTRACE_SYSCALL instead of PTRACE_SINGLESTEP
  int in_exit_stop;     // last stop was a syscall-exit stop
  int mask_set;         // the batch's blocking mask is installed
  int dead;             // the thread exited
  const struct user_regs_struct *saved;
  uint64_t vmask;       // the thread's signal mask as the batch's calls see it
  int requeue[8];       // unblockable signals suppressed on the way, sent again at the end
  int nrequeue;
  int timeout_ms;        // per resume: INJECT_TIMEOUT_MS per call it runs
  nerr_t *err;
} ictx_t;

// ---- finding a syscall instruction ----

static int read_tgid(pid_t tid) {
  char path[64], text[1024];
  snprintf(path, sizeof path, "/proc/%d/status", tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return -1;
  text[n] = 0;
  const char *p = strstr(text, "\nTgid:");
  return p ? atoi(p + 6) : -1;
}

// Finds `0f 05` in the [vdso] mapping of the thread's process. Looked up through the thread
// itself: a main thread that has exited shows no maps and gives no access to the memory.
static int find_vdso_syscall(pid_t tid, uint64_t *out, nerr_t *err) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/maps", tid);
  FILE *f = fopen(path, "re");
  if (!f) {
    nerr_set(err, errno, "fopen(%s)", path);
    return -1;
  }
  char line[512];
  unsigned long long start = 0, end = 0;
  int found = 0;
  while (fgets(line, sizeof line, f)) {
    if (strstr(line, "[vdso]") && sscanf(line, "%llx-%llx", &start, &end) == 2) {
      found = 1;
      break;
    }
  }
  fclose(f);
  if (!found || end <= start || end - start > (1 << 20)) {
    nerr_set(err, ENOENT, "injectBatch(tid %d): no [vdso] mapping", tid);
    return -1;
  }
  size_t len = end - start;
  unsigned char *buf = malloc(len);
  if (!buf) {
    nerr_set(err, ENOMEM, "injectBatch(tid %d)", tid);
    return -1;
  }
  struct iovec l = {buf, len}, r = {(void *)(uintptr_t)start, len};
  ssize_t n = process_vm_readv(tid, &l, 1, &r, 1, 0);
  if (n < 0) {
    nerr_set(err, errno, "process_vm_readv(pid %d, 0x%llx, %zu)", tid, start, len);
    free(buf);
    return -1;
  }
  unsigned char *hit = memmem(buf, (size_t)n, "\x0f\x05", 2);
  size_t off = hit ? (size_t)(hit - buf) : 0;
  free(buf);
  if (!hit) {
    nerr_set(err, ENOENT, "injectBatch(tid %d): no syscall instruction in [vdso]", tid);
    return -1;
  }
  *out = start + off;
  return 0;
}

// Checks that a cached address still holds `0f 05` (the vdso may have been moved).
static int insn_still_there(pid_t tid, uint64_t addr) {
  errno = 0;
  long word = ptrace(PTRACE_PEEKTEXT, tid, (void *)addr, 0);
  return !errno && (word & 0xffff) == 0x050f;
}

static int locate_insn(ictx_t *c) {
  frozen_proc_t *p = frozen_find(c->tgid);
  if (p && p->syscall_insn && insn_still_there(c->tid, p->syscall_insn)) {
    c->insn = p->syscall_insn;
    return 0;
  }
  if (find_vdso_syscall(c->tid, &c->insn, c->err) < 0) return -1;
  if (p) p->syscall_insn = c->insn;
  return 0;
}

// ---- running one call ----

// SigPnd | ShdPnd | SigIgn of /proc/TID/status: signals pending or ignored.
static uint64_t pending_or_ignored(pid_t tid) {
  char path[64], text[4096];
  snprintf(path, sizeof path, "/proc/%d/status", tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return 0;
  text[n] = 0;
  uint64_t bits = 0;
  static const char *const fields[] = {"\nSigPnd:", "\nShdPnd:", "\nSigIgn:"};
  for (int i = 0; i < 3; i++) {
    const char *p = strstr(text, fields[i]);
    if (p) bits |= strtoull(p + strlen(fields[i]), NULL, 16);
  }
  return bits;
}

// Switches to syscall mode; from then on SIGTRAP is blocked too (see the top).
static int set_syscall_mode(ictx_t *c) {
  if (c->syscall_mode) return 0;
  if (ptrace(PTRACE_SETOPTIONS, c->tid, 0, (void *)(long)(c->options | PTRACE_O_TRACESYSGOOD)) < 0) {
    nerr_set(c->err, errno, "ptrace(PTRACE_SETOPTIONS, tid %d, TRACESYSGOOD)", c->tid);
    return -1;
  }
  c->syscall_mode = 1;
  uint64_t all = ~0ULL;
  if (c->mask_set && ptrace(PTRACE_SETSIGMASK, c->tid, (void *)8, &all) < 0) {
    nerr_set(c->err, errno, "ptrace(PTRACE_SETSIGMASK, tid %d): blocking SIGTRAP", c->tid);
    return -1;
  }
  return 0;
}

// Whether the SIGTRAP the thread stopped for was made by the kernel (si_code > 0: a single-step
// trap, an int3, a hardware breakpoint) rather than sent by someone (kill, tgkill, sigqueue:
// si_code <= 0). During a batch only our own stepping and the runner's int3 make such traps.
static int kernel_trap(ictx_t *c) {
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (ptrace(PTRACE_GETSIGINFO, c->tid, 0, &si) < 0) return 1;  // gone: nothing to hand back anyway
  return si.si_code > 0;
}

// Records a signal taken off the thread on the way, to be sent again when the batch ends.
static void requeue_later(ictx_t *c, int sig) {
  for (int i = 0; i < c->nrequeue; i++)
    if (c->requeue[i] == sig) return;
  if (c->nrequeue < (int)(sizeof c->requeue / sizeof c->requeue[0])) c->requeue[c->nrequeue++] = sig;
}

// A call that sends SIGTRAP to a process or thread (possibly the one it runs in).
static int sends_sigtrap(int32_t nr, const uint64_t a[MAX_CALL_ARGS]) {
  switch (nr) {
    case SYS_kill:
    case SYS_tkill:
    case SYS_rt_sigqueueinfo:
      return a[1] == SIGTRAP;
    case SYS_tgkill:
    case SYS_rt_tgsigqueueinfo:
      return a[2] == SIGTRAP;
    default:
      return 0;
  }
}

// Resumes with `req` and waits for the next stop.
static int resume_wait(ictx_t *c, int req, const char *reqname, int *st) {
  if (ptrace(req, c->tid, 0, 0) < 0) {
    nerr_set(c->err, errno, "ptrace(%s, tid %d)", reqname, c->tid);
    return -1;
  }
  for (;;) {
    pid_t r = tracer_wait(c->tid, st, c->timeout_ms);
    if (r == 0) {
      // The injected call blocks: interrupt it so the thread is stopped again for the
      // register restore, and report the timeout.
      ptrace(PTRACE_INTERRUPT, c->tid, 0, 0);
      r = tracer_wait(c->tid, st, 1000);
      c->in_exit_stop = 0;
      nerr_set(c->err, ETIMEDOUT, "injectBatch(tid %d): injected call did not return within %d ms", c->tid,
               c->timeout_ms);
      if (r > 0 && (WIFEXITED(*st) || WIFSIGNALED(*st))) c->dead = 1;
      return -1;
    }
    if (r < 0) {
      if (errno == ECHILD) c->dead = 1;
      nerr_set(c->err, errno, "waitpid(tid %d, __WALL)", c->tid);
      return -1;
    }
    if (WIFEXITED(*st) || WIFSIGNALED(*st)) {
      c->dead = 1;
      nerr_set(c->err, ESRCH, "injectBatch(tid %d): thread exited", c->tid);
      return -1;
    }
    if (WIFSTOPPED(*st)) return 0;
  }
}

// A stop that is not the one the call waits for. Returns -1 if the batch cannot go on.
static int other_stop(ictx_t *c, int st, uint64_t rip) {
  if ((st >> 16) != 0) return 0;  // an event stop (group-stop): resume again
  int sig = WSTOPSIG(st);
  if ((sig == SIGSEGV || sig == SIGBUS || sig == SIGILL) && rip == c->insn) {
    nerr_set(c->err, EFAULT, "injectBatch(tid %d): cannot execute the syscall instruction at 0x%llx", c->tid,
             (unsigned long long)c->insn);
    return -1;
  }
  // Only signals our mask cannot block get here (SIGSTOP; SIGTRAP in single-step mode):
  // suppressed now, sent again when the batch is done, except a SIGTRAP the kernel made for
  // our stepping, which the program must never get (see the top).
  if (sig == SIGTRAP && kernel_trap(c)) return 0;
  requeue_later(c, sig);
  return 0;
}

// With `interrupt_at_entry`, the call runs in syscall mode and the thread is interrupted at
// its syscall-entry stop: the call then executes with a signal pending, so a sleeping call
// returns at once as if a signal had woken it (for nanosleep, -ERESTART_RESTARTBLOCK with the
// thread's restart block set, as a restore needs it). The trap is taken at the batch's end.
static int inject_one(ictx_t *c, uint64_t nr, const uint64_t a[MAX_CALL_ARGS], int interrupt_at_entry, int64_t *result) {
  if (interrupt_at_entry && set_syscall_mode(c) < 0) return -1;
  struct user_regs_struct regs = *c->saved;
  regs.rip = c->insn;
  regs.rax = nr;
  regs.orig_rax = (unsigned long long)-1;
  regs.rdi = a[0];
  regs.rsi = a[1];
  regs.rdx = a[2];
  regs.r10 = a[3];
  regs.r8 = a[4];
  regs.r9 = a[5];
  if (ptrace(PTRACE_SETREGS, c->tid, 0, &regs) < 0) {
    nerr_set(c->err, errno, "ptrace(PTRACE_SETREGS, tid %d)", c->tid);
    return -1;
  }
  int entered = 0;
  c->in_exit_stop = 0;
  for (;;) {
    int st;
    int rc = c->syscall_mode ? resume_wait(c, PTRACE_SYSCALL, "PTRACE_SYSCALL", &st)
                             : resume_wait(c, PTRACE_SINGLESTEP, "PTRACE_SINGLESTEP", &st);
    if (rc < 0) return -1;
    struct user_regs_struct now;
    if (ptrace(PTRACE_GETREGS, c->tid, 0, &now) < 0) {
      nerr_set(c->err, errno, "ptrace(PTRACE_GETREGS, tid %d)", c->tid);
      return -1;
    }
    if (c->syscall_mode) {
      if ((st >> 16) == 0 && WSTOPSIG(st) == (SIGTRAP | 0x80)) {
        if (!entered) {
          entered = 1;
          if (interrupt_at_entry && ptrace(PTRACE_INTERRUPT, c->tid, 0, 0) < 0) {
            nerr_set(c->err, errno, "ptrace(PTRACE_INTERRUPT, tid %d) at the entry of call %llu", c->tid, (unsigned long long)nr);
            return -1;
          }
          continue;
        }
        c->in_exit_stop = 1;
        *result = (int64_t)now.rax;
        return 0;
      }
    } else if ((st >> 16) == 0 && WSTOPSIG(st) == SIGTRAP && now.rip == c->insn + 2) {
      // The call has run. A SIGTRAP someone sent that arrived meanwhile is taken first (the
      // step's own trap is then not queued): it is sent again at the end.
      if (!kernel_trap(c)) requeue_later(c, SIGTRAP);
      *result = (int64_t)now.rax;
      return 0;
    }
    if (other_stop(c, st, now.rip) < 0) return -1;
  }
}

// rt_sigprocmask, emulated on the virtual mask exactly as kernel/signal.c does it.
static int64_t emulate_sigprocmask(ictx_t *c, const uint64_t a[MAX_CALL_ARGS]) {
  int how = (int)a[0];
  uint64_t nset = a[1], oset = a[2], size = a[3];
  if (size != 8) return -EINVAL;
  uint64_t old = c->vmask, set;
  if (nset) {
    struct iovec l = {&set, 8}, r = {(void *)(uintptr_t)nset, 8};
    if (process_vm_readv(c->tid, &l, 1, &r, 1, 0) != 8) return -EFAULT;
    set &= ~(SIGBIT(SIGKILL) | SIGBIT(SIGSTOP));
    switch (how) {
      case SIG_BLOCK: c->vmask |= set; break;
      case SIG_UNBLOCK: c->vmask &= ~set; break;
      case SIG_SETMASK: c->vmask = set; break;
      default: return -EINVAL;
    }
  }
  if (oset) {
    struct iovec l = {&old, 8}, r = {(void *)(uintptr_t)oset, 8};
    if (process_vm_writev(c->tid, &l, 1, &r, 1, 0) != 8) return -EFAULT;
  }
  return 0;
}

// Calls that may move, unmap or protect the vdso.
static int changes_layout(int32_t nr) {
  return nr == SYS_mmap || nr == SYS_munmap || nr == SYS_mremap || nr == SYS_mprotect || nr == SYS_shmdt ||
         nr == SYS_prctl || nr == SYS_arch_prctl;
}

// Runs a call, keeping the instruction address valid across calls that may move the vdso.
static int run_call(ictx_t *c, int32_t nr, const uint64_t a[MAX_CALL_ARGS], int interrupt_at_entry, int64_t *result) {
  if (nr == SYS_rt_sigprocmask) {
    *result = emulate_sigprocmask(c, a);
    return 0;
  }
  if (((nr == SYS_rt_sigaction && a[0] == SIGTRAP) || sends_sigtrap(nr, a)) && set_syscall_mode(c) < 0) return -1;
  if (inject_one(c, (uint64_t)(uint32_t)nr, a, interrupt_at_entry, result) < 0) return -1;
  if (changes_layout(nr) && !insn_still_there(c->tid, c->insn)) {
    uint64_t moved;
    nerr_t ignored = {0};
    if (find_vdso_syscall(c->tid, &moved, &ignored) == 0) {
      c->insn = moved;
      frozen_proc_t *p = frozen_find(c->tgid);
      if (p) p->syscall_insn = moved;
    }
  }
  return 0;
}

// ---- the runner (see the top) ----

// x86-64: r12 = table, r13 = count; each entry nr, six arguments, result (8 words).
//   loop: test r13,r13; jz done; rax..r9 = entry; syscall; entry.result = rax;
//         r12 += 64; r13--; jmp loop
//   done: int3
static const unsigned char RUNNER_CODE[] = {
    0x4d, 0x85, 0xed, 0x74, 0x32, 0x49, 0x8b, 0x04, 0x24, 0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49, 0x8b,
    0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b, 0x44,
    0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x49, 0x83,
    0xc4, 0x40, 0x49, 0xff, 0xcd, 0xeb, 0xc9, 0xcc};
#define RUNNER_DONE 0x37  // offset of the int3
#define RUNNER_CODE_AT 64   // the page's first bytes are the restore's own (syscall; jmp .)
#define RUNNER_TABLE_AT 256
#define RUNNER_ENTRY_WORDS 8
#define RUNNER_SLOTS ((4096 - RUNNER_TABLE_AT) / (RUNNER_ENTRY_WORDS * 8))

// Whether a call may run in the runner: the tracer need not act at it, and it makes no thread
// or process (a clone's child would go on running the loop).
static int runner_may_run(const call_t *call, const uint64_t a[MAX_CALL_ARGS]) {
  if (call->interrupt_at_entry) return 0;
  switch (call->nr) {
    case SYS_rt_sigprocmask:
    case SYS_clone:
    case SYS_clone3:
    case SYS_fork:
    case SYS_vfork:
    case SYS_execve:
    case SYS_execveat:
    case SYS_exit:
    case SYS_exit_group:
    case SYS_rt_sigreturn:
      return 0;
    case SYS_rt_sigaction:
      return a[0] != SIGTRAP;
    default:
      return !sends_sigtrap(call->nr, a);
  }
}

// Runs n calls (n <= RUNNER_SLOTS) through the runner. Returns 1 when done, 0 when the runner
// could not be used (nothing ran: the caller runs the calls one by one), -1 on error.
static int run_in_runner(ictx_t *c, uint64_t page, const int32_t *nrs, const uint64_t (*args)[MAX_CALL_ARGS], size_t n, int64_t *results) {
  size_t len = RUNNER_TABLE_AT - RUNNER_CODE_AT + n * RUNNER_ENTRY_WORDS * 8;
  unsigned char buf[4096];
  memset(buf, 0, sizeof buf);
  memcpy(buf, RUNNER_CODE, sizeof RUNNER_CODE);
  uint64_t *table = (uint64_t *)(buf + RUNNER_TABLE_AT - RUNNER_CODE_AT);
  for (size_t i = 0; i < n; i++) {
    uint64_t *e = table + i * RUNNER_ENTRY_WORDS;
    e[0] = (uint64_t)(uint32_t)nrs[i];
    memcpy(e + 1, args[i], MAX_CALL_ARGS * 8);
    e[7] = (uint64_t)-ENOSYS;  // what a call that never ran reports
  }
  struct iovec l = {buf, len}, r = {(void *)(uintptr_t)(page + RUNNER_CODE_AT), len};
  if (process_vm_writev(c->tid, &l, 1, &r, 1, 0) != (ssize_t)len) return 0;
  struct user_regs_struct regs = *c->saved;
  regs.rip = page + RUNNER_CODE_AT;
  regs.r12 = page + RUNNER_TABLE_AT;
  regs.r13 = n;
  regs.orig_rax = (unsigned long long)-1;
  if (ptrace(PTRACE_SETREGS, c->tid, 0, &regs) < 0) {
    nerr_set(c->err, errno, "ptrace(PTRACE_SETREGS, tid %d)", c->tid);
    return -1;
  }
  c->in_exit_stop = 0;
  c->timeout_ms = INJECT_TIMEOUT_MS * (int)n;
  uint64_t done = page + RUNNER_CODE_AT + RUNNER_DONE + 1;  // rip after the int3
  for (;;) {
    int st;
    int rc = resume_wait(c, PTRACE_CONT, "PTRACE_CONT", &st);
    if (rc < 0) break;
    struct user_regs_struct now;
    if (ptrace(PTRACE_GETREGS, c->tid, 0, &now) < 0) {
      nerr_set(c->err, errno, "ptrace(PTRACE_GETREGS, tid %d)", c->tid);
      break;
    }
    if ((st >> 16) == 0 && WSTOPSIG(st) == SIGTRAP && now.rip == done) {
      c->timeout_ms = INJECT_TIMEOUT_MS;
      l = (struct iovec){table, n * RUNNER_ENTRY_WORDS * 8};
      r = (struct iovec){(void *)(uintptr_t)(page + RUNNER_TABLE_AT), l.iov_len};
      if (process_vm_readv(c->tid, &l, 1, &r, 1, 0) != (ssize_t)l.iov_len) {
        nerr_set(c->err, errno, "process_vm_readv(pid %d, runner results)", c->tid);
        return -1;
      }
      for (size_t i = 0; i < n; i++) results[i] = (int64_t)table[i * RUNNER_ENTRY_WORDS + 7];
      return 1;
    }
    int sig = (st >> 16) == 0 ? WSTOPSIG(st) : 0;
    if ((sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGTRAP) && now.rip >= page && now.rip < page + 4096) {
      // A call of the run took the runner's page away (or the page is not ours): never go on.
      nerr_set(c->err, EFAULT, "injectBatch(tid %d): the runner at 0x%llx stopped with signal %d at 0x%llx", c->tid,
               (unsigned long long)page, sig, (unsigned long long)now.rip);
      break;
    }
    if (other_stop(c, st, now.rip) < 0) break;
  }
  c->timeout_ms = INJECT_TIMEOUT_MS;
  return -1;
}

// Puts the thread back: registers, then (after a syscall-exit stop) a stop inside
// get_signal(), options, mask, and the signals suppressed on the way.
static void finish(ictx_t *c) {
  if (c->dead) return;
  if (ptrace(PTRACE_SETREGS, c->tid, 0, c->saved) < 0)
    nerr_set(c->err, errno, "ptrace(PTRACE_SETREGS, tid %d): restoring registers", c->tid);
  if (c->in_exit_stop) {
    ptrace(PTRACE_INTERRUPT, c->tid, 0, 0);
    int st;
    int rc = resume_wait(c, PTRACE_CONT, "PTRACE_CONT", &st);
    while (rc == 0 && (st >> 16) == 0) {  // a signal-delivery-stop first (SIGSTOP)
      other_stop(c, st, 0);
      ptrace(PTRACE_INTERRUPT, c->tid, 0, 0);
      rc = resume_wait(c, PTRACE_CONT, "PTRACE_CONT", &st);
    }
    c->in_exit_stop = 0;
    if (rc < 0) return;
  }
  if (c->syscall_mode) ptrace(PTRACE_SETOPTIONS, c->tid, 0, (void *)(long)c->options);
  if (ptrace(PTRACE_SETSIGMASK, c->tid, (void *)8, &c->vmask) < 0)
    nerr_set(c->err, errno, "ptrace(PTRACE_SETSIGMASK, tid %d): restoring the mask", c->tid);
  for (int i = 0; i < c->nrequeue; i++) syscall(SYS_tgkill, c->tgid, c->tid, c->requeue[i]);
}

static void inject_run(task_t *t) {
  inject_task_t *it = (inject_task_t *)t;
  nerr_t *err = &t->err;
  ictx_t c = {.tid = it->tid, .err = err, .timeout_ms = INJECT_TIMEOUT_MS};
  frozen_proc_t *p = frozen_find_tid(it->tid);
  c.tgid = p ? p->pid : read_tgid(it->tid);
  if (c.tgid <= 0) {
    nerr_set(err, ESRCH, "injectBatch(tid %d): no such thread", it->tid);
    return;
  }
  struct user_regs_struct saved;
  if (ptrace(PTRACE_GETREGS, it->tid, 0, &saved) < 0) {
    nerr_set(err, errno, "ptrace(PTRACE_GETREGS, tid %d)", it->tid);
    return;
  }
  c.saved = &saved;
  c.options = p ? p->options : 0;
  if (it->syscall_addr) {
    if (!insn_still_there(it->tid, it->syscall_addr)) {
      nerr_set(err, EINVAL, "injectBatch(tid %d): no syscall instruction at 0x%llx", it->tid,
               (unsigned long long)it->syscall_addr);
      return;
    }
    c.insn = it->syscall_addr;
  } else if (locate_insn(&c) < 0) {
    return;
  }
  if (ptrace(PTRACE_GETSIGMASK, it->tid, (void *)8, &c.vmask) < 0) {
    nerr_set(err, errno, "ptrace(PTRACE_GETSIGMASK, tid %d)", it->tid);
    return;
  }
  uint64_t trap = SIGBIT(SIGTRAP);
  if ((pending_or_ignored(it->tid) & trap) && set_syscall_mode(&c) < 0) return;
  // Block everything; in single-step mode SIGTRAP stays deliverable, since forcing a blocked
  // SIGTRAP would also reset its handler.
  uint64_t block = c.syscall_mode ? ~0ULL : ~trap;
  if (ptrace(PTRACE_SETSIGMASK, it->tid, (void *)8, &block) < 0) {
    nerr_set(err, errno, "ptrace(PTRACE_SETSIGMASK, tid %d)", it->tid);
    if (c.syscall_mode) ptrace(PTRACE_SETOPTIONS, it->tid, 0, (void *)(long)c.options);
    return;
  }
  c.mask_set = 1;

  uint64_t base = 0;
  int layout_changed = 0;
  int kept = 0;
  if (p && !it->keep_scratch) p->kept_scratch = 0;
  if (it->scratch_size && p && it->keep_scratch && it->scratch_addr && p->kept_scratch == it->scratch_addr) {
    // Mapped by an earlier batch: this batch's bytes, then zeros to the end of its size.
    unsigned char *fill = calloc(1, it->scratch_size);
    if (fill && it->init_len) memcpy(fill, it->init, it->init_len);
    struct iovec l = {fill, it->scratch_size}, rv = {(void *)(uintptr_t)it->scratch_addr, it->scratch_size};
    if (fill && process_vm_writev(it->tid, &l, 1, &rv, 1, 0) == (ssize_t)it->scratch_size) {
      base = it->scratch_addr;
      kept = 1;
    } else {
      p->kept_scratch = 0;  // gone meanwhile: mapped again below
    }
    free(fill);
  }
  size_t mapped_size = it->scratch_size;  // a kept area is mapped whole
  if (it->scratch_size && !kept) {
    if (it->keep_scratch) mapped_size = it->keep_scratch;
    uint64_t flags = MAP_PRIVATE | MAP_ANONYMOUS | (it->scratch_addr ? MAP_FIXED_NOREPLACE : 0);
    uint64_t a[MAX_CALL_ARGS] = {it->scratch_addr, mapped_size, PROT_READ | PROT_WRITE, flags, (uint64_t)-1, 0};
    int64_t r;
    if (run_call(&c, SYS_mmap, a, 0, &r) < 0) goto out;
    if (r < 0 && r > -4096) {
      nerr_set(err, (int)-r, "injected mmap(0x%llx, %zu) in tid %d", (unsigned long long)it->scratch_addr,
               it->scratch_size, it->tid);
      goto out;
    }
    base = (uint64_t)r;
    if (it->scratch_addr && base != it->scratch_addr) {  // a kernel without MAP_FIXED_NOREPLACE
      nerr_set(err, EEXIST, "injected mmap(0x%llx, %zu) in tid %d: mapped at 0x%llx",
               (unsigned long long)it->scratch_addr, it->scratch_size, it->tid, (unsigned long long)base);
      goto unmap;
    }
    if (it->init_len) {
      struct iovec l = {it->init, it->init_len}, rv = {(void *)(uintptr_t)base, it->init_len};
      ssize_t n = process_vm_writev(it->tid, &l, 1, &rv, 1, 0);
      if (n != (ssize_t)it->init_len) {
        nerr_set(err, n < 0 ? errno : EFAULT, "process_vm_writev(pid %d, 0x%llx, %zu)", it->tid,
                 (unsigned long long)base, it->init_len);
        goto unmap;
      }
    }
    if (it->keep_scratch && it->scratch_addr && p) {
      p->kept_scratch = base;
      kept = 1;
    }
  }
  for (size_t i = 0; i < it->ncalls;) {
    // A run of at least two calls the runner may make, in single-step mode: in one go.
    size_t n = 0;
    int32_t nrs[RUNNER_SLOTS];
    uint64_t runs[RUNNER_SLOTS][MAX_CALL_ARGS];
    int run_changes_layout = 0;
    while (it->runner_page && !c.syscall_mode && i + n < it->ncalls && n < RUNNER_SLOTS) {
      call_t *call = &it->calls[i + n];
      for (int j = 0; j < MAX_CALL_ARGS; j++)
        runs[n][j] = call->args[j] + ((call->scratch_args >> j) & 1 ? base : 0);
      if (!runner_may_run(call, runs[n])) break;
      nrs[n] = call->nr;
      if (changes_layout(call->nr)) run_changes_layout = 1;
      n++;
    }
    if (n >= 2) {
      if (run_changes_layout) layout_changed = 1;
      int ran = run_in_runner(&c, it->runner_page, nrs, (const uint64_t(*)[MAX_CALL_ARGS])runs, n, &it->results[i]);
      if (ran < 0) goto unmap;
      if (ran > 0) {
        i += n;
        continue;
      }
    }
    call_t *call = &it->calls[i];
    uint64_t a[MAX_CALL_ARGS];
    for (int j = 0; j < MAX_CALL_ARGS; j++)
      a[j] = call->args[j] + ((call->scratch_args >> j) & 1 ? base : 0);
    if (changes_layout(call->nr)) layout_changed = 1;
    if (run_call(&c, call->nr, a, call->interrupt_at_entry, &it->results[i]) < 0) goto unmap;
    i++;
  }
  if (it->scratch_size) {
    it->scratch = malloc(it->scratch_size);
    struct iovec l = {it->scratch, it->scratch_size}, rv = {(void *)(uintptr_t)base, it->scratch_size};
    ssize_t n = it->scratch ? process_vm_readv(it->tid, &l, 1, &rv, 1, 0) : -1;
    if (n != (ssize_t)it->scratch_size)
      nerr_set(err, !it->scratch ? ENOMEM : n < 0 ? errno : EFAULT, "process_vm_readv(pid %d, 0x%llx, %zu)",
               it->tid, (unsigned long long)base, it->scratch_size);
  }
unmap:
  if (base && !c.dead && !kept) {
    // Unmap even after a failure; keep the first error.
    nerr_t saved_err = *err;
    err->code = 0;
    uint64_t a[MAX_CALL_ARGS] = {base, mapped_size, 0, 0, 0, 0};
    int64_t r = 0;
    if (run_call(&c, SYS_munmap, a, 0, &r) == 0 && r < 0)
      nerr_set(err, (int)-r, "injected munmap(0x%llx, %zu) in tid %d", (unsigned long long)base,
               it->scratch_size, it->tid);
    if (saved_err.code) *err = saved_err;
  }
out:
  finish(&c);
  if (layout_changed && (p = frozen_find(c.tgid))) p->syscall_insn = 0;  // look the vdso up again next time
}

// A restored process's batches overlap other restored processes' (tracer.c).
static pid_t inject_process(task_t *t) { return restored_process_of(((inject_task_t *)t)->tid); }

static napi_value inject_settle(napi_env env, task_t *t) {
  inject_task_t *it = (inject_task_t *)t;
  napi_value o, results;
  napi_create_object(env, &o);
  napi_create_array_with_length(env, it->ncalls, &results);
  for (size_t i = 0; i < it->ncalls; i++) napi_set_element(env, results, (uint32_t)i, make_i64(env, it->results[i]));
  napi_set_named_property(env, o, "results", results);
  napi_value scratch = make_owned_buffer(env, it->scratch, it->scratch ? it->scratch_size : 0);
  it->scratch = NULL;  // owned (or freed) by make_owned_buffer
  if (!scratch) return NULL;
  napi_set_named_property(env, o, "scratch", scratch);
  return o;
}

static void inject_destroy(task_t *t) {
  inject_task_t *it = (inject_task_t *)t;
  free(it->init);
  free(it->calls);
  free(it->results);
  free(it->scratch);
  free(it);
}

napi_value js_inject_batch(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int32_t tid;
  uint64_t scratch_size;
  if (!arg_count(env, info, 4, argv) || !get_i32(env, argv[0], "tid", &tid) ||
      !get_u64(env, argv[1], "scratchSize", &scratch_size))
    return NULL;
  size_t argc = 5;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5) napi_get_undefined(env, &argv[4]);
  inject_task_t *it = calloc(1, sizeof *it);
  if (!it) return NULL;
  it->t.run = inject_run;
  it->t.settle = inject_settle;
  it->t.destroy = inject_destroy;
  it->t.process = inject_process;
  it->tid = tid;
  it->scratch_size = scratch_size;

  napi_valuetype vt;
  napi_typeof(env, argv[2], &vt);
  if (vt != napi_null && vt != napi_undefined) {
    void *data;
    size_t len;
    if (!get_buffer(env, argv[2], "scratchInit", &data, &len)) goto bad;
    if (len > scratch_size) {
      throw_errno(env, EINVAL, "injectBatch(tid %d): scratchInit (%zu bytes) larger than scratchSize (%llu)", tid,
                  len, (unsigned long long)scratch_size);
      goto bad;
    }
    if (len) {
      it->init = malloc(len);
      if (!it->init) goto bad;
      memcpy(it->init, data, len);
      it->init_len = len;
    }
  }

  bool is_array;
  napi_is_array(env, argv[3], &is_array);
  if (!is_array) {
    type_error(env, "calls must be an array");
    goto bad;
  }
  uint32_t n;
  napi_get_array_length(env, argv[3], &n);
  it->calls = calloc(n ? n : 1, sizeof *it->calls);
  it->results = calloc(n ? n : 1, sizeof *it->results);
  if (!it->calls || !it->results) goto bad;
  it->ncalls = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value call, v;
    napi_get_element(env, argv[3], i, &call);
    napi_typeof(env, call, &vt);
    if (vt != napi_object) {
      type_error(env, "calls[%u] must be an object", i);
      goto bad;
    }
    napi_get_named_property(env, call, "nr", &v);
    if (!get_i32(env, v, "calls[].nr", &it->calls[i].nr)) goto bad;
    napi_get_named_property(env, call, "args", &v);
    napi_is_array(env, v, &is_array);
    uint32_t na = 0;
    if (is_array) napi_get_array_length(env, v, &na);
    if (!is_array || na > MAX_CALL_ARGS) {
      type_error(env, "calls[%u].args must be an array of at most 6 bigints", i);
      goto bad;
    }
    for (uint32_t j = 0; j < na; j++) {
      napi_value e;
      napi_get_element(env, v, j, &e);
      if (!get_u64(env, e, "calls[].args[]", &it->calls[i].args[j])) goto bad;
    }
    napi_get_named_property(env, call, "interruptAtEntry", &v);
    bool interrupt_at_entry = false;
    napi_typeof(env, v, &vt);
    if (vt == napi_boolean) napi_get_value_bool(env, v, &interrupt_at_entry);
    it->calls[i].interrupt_at_entry = interrupt_at_entry;
    napi_get_named_property(env, call, "scratchArgs", &v);
    napi_typeof(env, v, &vt);
    if (vt != napi_undefined && vt != napi_null) {
      int32_t bits;
      if (!get_i32(env, v, "calls[].scratchArgs", &bits)) goto bad;
      it->calls[i].scratch_args = (uint32_t)bits & 0x3f;
      if (it->calls[i].scratch_args && !scratch_size) {
        throw_errno(env, EINVAL, "injectBatch(tid %d): calls[%u] uses the scratch area but scratchSize is 0", tid, i);
        goto bad;
      }
    }
  }
  // placement?: { scratchAddr?: bigint, syscallAddr?: bigint }
  napi_typeof(env, argv[4], &vt);
  if (vt == napi_object) {
    napi_value v;
    napi_get_named_property(env, argv[4], "scratchAddr", &v);
    napi_typeof(env, v, &vt);
    if (vt != napi_undefined && vt != napi_null && !get_u64(env, v, "placement.scratchAddr", &it->scratch_addr))
      goto bad;
    napi_get_named_property(env, argv[4], "syscallAddr", &v);
    napi_typeof(env, v, &vt);
    if (vt != napi_undefined && vt != napi_null && !get_u64(env, v, "placement.syscallAddr", &it->syscall_addr))
      goto bad;
    napi_get_named_property(env, argv[4], "keepScratch", &v);
    napi_typeof(env, v, &vt);
    if (vt != napi_undefined && vt != napi_null && !get_u64(env, v, "placement.keepScratch", &it->keep_scratch))
      goto bad;
    if (it->keep_scratch && (it->keep_scratch & 4095 || it->scratch_size > it->keep_scratch || !it->scratch_addr)) {
      throw_errno(env, EINVAL, "injectBatch(tid %d): placement.keepScratch %llu needs a scratchAddr and page-aligned size of at least scratchSize", tid, (unsigned long long)it->keep_scratch);
      goto bad;
    }
    napi_get_named_property(env, argv[4], "runnerPage", &v);
    napi_typeof(env, v, &vt);
    if (vt != napi_undefined && vt != napi_null && !get_u64(env, v, "placement.runnerPage", &it->runner_page))
      goto bad;
    if (it->runner_page & 4095) {
      throw_errno(env, EINVAL, "injectBatch(tid %d): placement.runnerPage 0x%llx is not page-aligned", tid, (unsigned long long)it->runner_page);
      goto bad;
    }
  } else if (vt != napi_undefined && vt != napi_null) {
    type_error(env, "placement must be an object");
    goto bad;
  }
  return tracer_submit(env, &it->t);
bad:
  inject_destroy(&it->t);
  return NULL;
}
