// spawnTree: makes every process of a saved tree with its PID, each by its restored parent
// (docs/RESTORE.md, "A process tree"). The root is started as one process is (restore.c);
// each other task is forked by its parent's stub on a command sent over the parent's control
// pipe, while that stub still holds its file table and the objects its descendants inherit.
//
// The script (built by lib/restore/pstree.ts), little-endian u32 words:
//   count, then per task, parents first (the root first):
//   pid, parent pid (0: the root), kind (0 live, 1 zombie), pgid to join (0: none),
//   exit status (zombie), session leader (zombie: 1), plan length, plan bytes,
//   passed count, objref * passed count (what the child inherits from its parent, in order),
//   keep memory (1: forked without exec, keeping what its parent premapped),
//   premap chunk count, per chunk: length, bytes (an 'M' command's body, below)
// It resolves with one byte per premapped area, in script order: '1' mapped and filled in its
// task before any child of it was forked, '0' not (the place was taken in that task's stub).
//
// Commands to a stub (its control pipe) and its answer ("ok" or "error: WHY" on its reply):
//   'F' pid server_pid plan_fd ctl_fd reply_fd pgid count keep_memory objref*count: fork a child
//   'M' area count, areas: premap areas for the children (addon/stub/tree.c), before any 'F'
//   'Z' pid status session_leader pgid: fork a child that exits at once with status
//   'E': done; the stub closes its working area and waits in pause()
// A failure kills every task made so far by PID; the root's keeper, a subreaper, reaps them.
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <unistd.h>

typedef struct {
  pid_t pid, parent;
  uint32_t kind, pgid, status, session;
  const unsigned char *plan;
  uint32_t plan_len, passed;
  const unsigned char *objrefs;
  uint32_t keep_memory, premap_chunks;
  const unsigned char *premap;  // premap_chunks times: length, then that many bytes
  size_t premap_len;
  size_t premap_at;  // where its areas' answers go in the whole answer
} tree_entry_t;

typedef struct {
  task_t t;
  char *stub;
  int work_base;
  unsigned char *script;
  size_t script_len;
  char *premapped;  // the answer: one '0' or '1' per premapped area
  size_t npremapped;
} tree_task_t;

enum { KIND_LIVE = 0, KIND_ZOMBIE = 1 };

static uint32_t word(const unsigned char *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

// Parses the script; -1 (err set) when it does not hold together.
static int parse_script(const unsigned char *s, size_t len, tree_entry_t **out, uint32_t *count, size_t *areas, nerr_t *err) {
  size_t at = 0;
#define NEED(n)                                                           \
  if (len - at < (size_t)(n)) {                                          \
    nerr_set_raw(err, EINVAL, "spawnTree: script truncated at %zu", at); \
    free(*out);                                                          \
    *out = NULL;                                                         \
    return -1;                                                           \
  }
  *out = NULL;
  *areas = 0;
  NEED(4);
  *count = word(s);
  at = 4;
  if (*count == 0 || *count > (1u << 16)) {
    nerr_set_raw(err, EINVAL, "spawnTree: %u tasks", *count);
    return -1;
  }
  *out = calloc(*count, sizeof **out);
  if (!*out) {
    nerr_set(err, ENOMEM, "spawnTree");
    return -1;
  }
  for (uint32_t i = 0; i < *count; i++) {
    tree_entry_t *e = &(*out)[i];
    NEED(28);
    e->pid = (pid_t)word(s + at);
    e->parent = (pid_t)word(s + at + 4);
    e->kind = word(s + at + 8);
    e->pgid = word(s + at + 12);
    e->status = word(s + at + 16);
    e->session = word(s + at + 20);
    e->plan_len = word(s + at + 24);
    at += 28;
    NEED(e->plan_len);
    e->plan = s + at;
    at += e->plan_len;
    NEED(4);
    e->passed = word(s + at);
    at += 4;
    NEED((size_t)e->passed * 4);
    e->objrefs = s + at;
    at += (size_t)e->passed * 4;
    NEED(8);
    e->keep_memory = word(s + at);
    e->premap_chunks = word(s + at + 4);
    at += 8;
    e->premap = s + at;
    e->premap_at = *areas;
    for (uint32_t c = 0; c < e->premap_chunks; c++) {
      NEED(4);
      uint32_t clen = word(s + at);
      at += 4;
      NEED(clen);
      if (clen < 4) {
        nerr_set_raw(err, EINVAL, "spawnTree: task-%d: premap chunk of %u bytes", e->pid, clen);
        free(*out);
        *out = NULL;
        return -1;
      }
      *areas += word(s + at);
      at += clen;
    }
    e->premap_len = (size_t)(s + at - e->premap);
  }
#undef NEED
  return 0;
}

static int write_all_fd(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

// Sends a command (head, then body) to a running stub and reads its answer line. `doing`
// names the work for the messages; `about` is the task the command is for.
static int ask(spawned_t *to, const void *head, size_t head_len, const void *body, size_t body_len, char *line, size_t cap, const char *doing, pid_t about, nerr_t *err) {
  if (write_all_fd(to->ctl_w, head, head_len) < 0 || (body_len && write_all_fd(to->ctl_w, body, body_len) < 0)) {
    nerr_set(err, errno, "task-%d: %s: write(control pipe of %d)", about, doing, to->pid);
    return -1;
  }
  int dead = 0;
  int got = read_reply(to->pid, to->reply_r, line, cap, 0, &dead, err);
  if (got < 0) return -1;
  if (got == 0) {
    nerr_set_raw(err, EIO, "task-%d: %d exited while %s", about, to->pid, doing);
    return -1;
  }
  return 0;
}

// Sends one command to a running stub; its answer must be "ok".
static int command(spawned_t *to, const void *cmd, size_t len, const char *what, pid_t about, nerr_t *err) {
  char line[1024];
  if (ask(to, cmd, len, NULL, 0, line, sizeof line, what, about, err) < 0) return -1;
  if (strcmp(line, "ok") != 0) {
    nerr_set_raw(err, EIO, "task-%d: %s (asked of %d): %s", about, what, to->pid, line);
    return -1;
  }
  return 0;
}

// A child of a restored task: its stub forks it (with the fds it inherits), it execs the stub
// with its own plan, and is seized here before it reads its "go". Its "ok" (its file table is
// open) is read later, by child_ready, once something needs it: meanwhile the next processes
// are forked, so the stubs open their file tables side by side rather than one by one.
static int make_child(spawned_t *parent, const tree_entry_t *e, spawned_t *out, int *created, nerr_t *err) {
  int plan = memfd_create("ckptfs-plan", MFD_CLOEXEC);
  int ctl[2] = {-1, -1}, reply[2] = {-1, -1};
  int rc = -1;
  uint32_t *cmd = NULL;
  if (plan < 0) {
    nerr_set(err, errno, "memfd_create(ckptfs-plan)");
    goto out;
  }
  if (write_all_fd(plan, e->plan, e->plan_len) < 0) {
    nerr_set(err, errno, "write(plan memfd of task-%d)", e->pid);
    goto out;
  }
  if (pipe2(ctl, O_CLOEXEC) < 0 || pipe2(reply, O_CLOEXEC) < 0) {
    nerr_set(err, errno, "pipe2(O_CLOEXEC)");
    goto out;
  }
  size_t words = 9 + e->passed;
  cmd = malloc(1 + words * 4);
  if (!cmd) {
    nerr_set(err, ENOMEM, "spawnTree");
    goto out;
  }
  unsigned char *c = (unsigned char *)cmd;
  uint32_t head[8] = {(uint32_t)e->pid, (uint32_t)getpid(), (uint32_t)plan, (uint32_t)ctl[0], (uint32_t)reply[1], e->pgid, e->passed, e->keep_memory};
  c[0] = 'F';
  memcpy(c + 1, head, 8 * 4);
  memcpy(c + 1 + 8 * 4, e->objrefs, (size_t)e->passed * 4);
  if (command(parent, c, 1 + 8 * 4 + (size_t)e->passed * 4, "forking it", e->pid, err) < 0) goto out;
  *created = 1;
  // The child has its own copies now; ours go, so EOF on its reply means it is gone.
  close(plan);
  close(ctl[0]);
  close(reply[1]);
  plan = ctl[0] = reply[1] = -1;
  if (ptrace(PTRACE_SEIZE, e->pid, 0, (void *)(long)RESTORED_OPTIONS) < 0) {
    // Gone already: its own reason (a setpgid or exec that failed before it ran the stub).
    int seize_errno = errno;
    char said[512];
    int gone = 1;
    nerr_t ignored = {0};
    if (read_reply(e->pid, reply[0], said, sizeof said, 0, &gone, &ignored) == 1)
      nerr_set_raw(err, EIO, "task-%d: %s", e->pid, said);
    else
      nerr_set(err, seize_errno, "task-%d: ptrace(PTRACE_SEIZE, PTRACE_O_EXITKILL | PTRACE_O_SUSPEND_SECCOMP)", e->pid);
    goto out;
  }
  if (write(ctl[1], "g", 1) != 1) {
    nerr_set(err, errno, "task-%d: write(restorer control pipe)", e->pid);
    goto out;
  }
  *out = (spawned_t){.pid = e->pid, .keeper = -1, .keeper_fd = -1, .ctl_w = ctl[1], .reply_r = reply[0]};
  ctl[1] = reply[0] = -1;
  rc = 0;
out:
  free(cmd);
  int fds[] = {plan, ctl[0], ctl[1], reply[0], reply[1]};
  for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
    if (fds[i] >= 0) close(fds[i]);
  return rc;
}

// The "ok" of a child made by make_child: its stub has its file table and serves commands.
static int child_ready(spawned_t *child, nerr_t *err) {
  char line[1024];
  int dead = 0;
  int got = read_reply(child->pid, child->reply_r, line, sizeof line, 0, &dead, err);
  if (got < 0) return -1;
  if (got == 0 || strcmp(line, "ok") != 0) {
    nerr_set_raw(err, EIO, "restorer(pid %d): %s", child->pid, got == 0 ? "exited without a reply" : line);
    return -1;
  }
  return 0;
}

// Has a task's stub map and fill the memory its children will inherit (its 'M' chunks), before
// it forks any of them; puts one '0' or '1' per area in its place in the answer.
static int premap_memory(spawned_t *to, const tree_entry_t *e, tree_task_t *tt, nerr_t *err) {
  const unsigned char *p = e->premap;
  size_t at = e->premap_at;
  for (uint32_t c = 0; c < e->premap_chunks; c++) {
    uint32_t len = word(p);
    const unsigned char *body = p + 4;
    p += 4 + len;
    uint32_t areas = word(body);
    char line[1024];
    if (ask(to, "M", 1, body, len, line, sizeof line, "mapping the memory its children inherit", e->pid, err) < 0) return -1;
    if (strncmp(line, "ok ", 3) != 0 || strlen(line + 3) != areas || strspn(line + 3, "01") != areas) {
      nerr_set_raw(err, EIO, "task-%d: mapping the memory its children inherit: %s", e->pid, line);
      return -1;
    }
    memcpy(tt->premapped + at, line + 3, areas);
    at += areas;
  }
  return 0;
}

static int make_zombie(spawned_t *parent, const tree_entry_t *e, nerr_t *err) {
  unsigned char c[1 + 16];
  uint32_t w[4] = {(uint32_t)e->pid, e->status, e->session, e->pgid};
  c[0] = 'Z';
  memcpy(c + 1, w, sizeof w);
  return command(parent, c, sizeof c, "making the zombie", e->pid, err);
}

static spawned_t *spawned_of(spawned_t *all, const tree_entry_t *entries, uint32_t n, pid_t pid) {
  for (uint32_t i = 0; i < n; i++)
    if (entries[i].pid == pid && entries[i].kind == KIND_LIVE && all[i].pid > 0) return &all[i];
  return NULL;
}

static void tree_run(task_t *t) {
  tree_task_t *tt = (tree_task_t *)t;
  nerr_t *err = &t->err;
  tree_entry_t *e = NULL;
  uint32_t n = 0;
  size_t areas = 0;
  if (parse_script(tt->script, tt->script_len, &e, &n, &areas, err) < 0) return;
  tt->premapped = malloc(areas ? areas : 1);
  if (!tt->premapped) {
    nerr_set(err, ENOMEM, "spawnTree");
    free(e);
    return;
  }
  memset(tt->premapped, '0', areas);
  tt->npremapped = areas;
  spawned_t *s = calloc(n, sizeof *s);
  int *made = calloc(n, sizeof *made);      // the PID exists (live or zombie)
  int *adopted = calloc(n, sizeof *adopted);  // settled: kept like a frozen task
  int *unready = calloc(n, sizeof *unready);  // forked, its "ok" not read yet
  int *premapped = calloc(n, sizeof *premapped);  // its 'M' chunks are sent
  if (!s || !made || !adopted || !unready || !premapped) {
    nerr_set(err, ENOMEM, "spawnTree");
    goto out;
  }
  for (uint32_t i = 0; i < n; i++) s[i] = (spawned_t){.pid = 0, .keeper = -1, .keeper_fd = -1, .ctl_w = -1, .reply_r = -1};
  if (e[0].parent != 0 || e[0].kind != KIND_LIVE) {
    nerr_set_raw(err, EINVAL, "spawnTree: the first task must be the live root");
    goto out;
  }
  if (restorer_start(e[0].pid, tt->stub, e[0].plan, e[0].plan_len, tt->work_base, &s[0], err) < 0) goto out;
  made[0] = 1;
  for (uint32_t i = 1; i < n; i++) {
    spawned_t *parent = spawned_of(s, e, i, e[i].parent);
    if (!parent) {
      nerr_set_raw(err, EINVAL, "task-%d: its parent %d is not made before it", e[i].pid, e[i].parent);
      goto out;
    }
    size_t p = (size_t)(parent - s);
    if (unready[p]) {
      if (child_ready(parent, err) < 0) goto out;
      unready[p] = 0;
    }
    if (!premapped[p]) {
      // Areas are answered in script order: a parent's are sent before its first child.
      if (premap_memory(parent, &e[p], tt, err) < 0) goto out;
      premapped[p] = 1;
    }
    if (e[i].kind == KIND_ZOMBIE) {
      // The zombie exists once its parent answers (it waits for the exit, WNOWAIT).
      made[i] = 1;
      if (make_zombie(parent, &e[i], err) < 0) goto out;
    } else {
      if (make_child(parent, &e[i], &s[i], &made[i], err) < 0) goto out;
      unready[i] = 1;
    }
  }
  for (uint32_t i = 1; i < n; i++) {
    if (!unready[i]) continue;
    if (child_ready(&s[i], err) < 0) goto out;
    unready[i] = 0;
  }
  // Every task exists: each closes its working area (what it passed on), then is stopped.
  // All are told first, so that they close theirs side by side, not one after another.
  for (uint32_t k = n; k-- > 0;) {
    if (e[k].kind != KIND_LIVE) continue;
    if (write(s[k].ctl_w, "E", 1) != 1) {
      nerr_set(err, errno, "task-%d: write(restorer control pipe)", e[k].pid);
      goto out;
    }
  }
  for (uint32_t k = n; k-- > 0;) {
    if (e[k].kind != KIND_LIVE) continue;
    if (restorer_settle(&s[k], err) < 0) goto out;
    adopted[k] = 1;
  }
out:
  if (err->code && s && made) {
    // All or nothing: every task made so far dies, the root last; its keeper reaps the rest.
    pid_t *seized = calloc(n, sizeof *seized);
    size_t nseized = 0;
    for (uint32_t i = 1; i < n; i++) {
      if (!made[i]) continue;
      kill(e[i].pid, SIGKILL);
      if (e[i].kind == KIND_LIVE && seized) seized[nseized++] = e[i].pid;
    }
    if (seized) reap_killed(seized, nseized);
    free(seized);
    for (uint32_t i = 1; i < n; i++) {
      if (adopted[i]) frozen_forget(e[i].pid);
      if (s[i].ctl_w >= 0) close(s[i].ctl_w);
      if (s[i].reply_r >= 0) close(s[i].reply_r);
    }
    if (made[0]) {
      if (adopted[0]) {
        // Settled last: nothing after it can fail.
      } else {
        restorer_abort(&s[0]);
      }
    }
  }
  free(s);
  free(made);
  free(adopted);
  free(unready);
  free(premapped);
  free(e);
}

static napi_value tree_settle(napi_env env, task_t *t) {
  tree_task_t *tt = (tree_task_t *)t;
  napi_value b = make_owned_buffer(env, tt->premapped, tt->npremapped);
  tt->premapped = NULL;
  return b;
}

static void tree_destroy(task_t *t) {
  tree_task_t *tt = (tree_task_t *)t;
  free(tt->premapped);
  free(tt->stub);
  free(tt->script);
  free(tt);
}

napi_value js_spawn_tree(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int32_t base;
  void *script;
  size_t script_len, stub_len;
  if (!arg_count(env, info, 3, argv) || !get_i32(env, argv[1], "workFdBase", &base) ||
      !get_buffer(env, argv[2], "script", &script, &script_len))
    return NULL;
  napi_valuetype vt;
  napi_typeof(env, argv[0], &vt);
  if (vt != napi_string) {
    type_error(env, "stub must be a string");
    return NULL;
  }
  if (base < 0 || base > (1 << 20)) {
    throw_errno(env, EINVAL, "spawnTree(workFdBase %d)", base);
    return NULL;
  }
  tree_task_t *tt = calloc(1, sizeof *tt);
  if (!tt) return NULL;
  tt->t.run = tree_run;
  tt->t.destroy = tree_destroy;
  tt->t.settle = tree_settle;
  tt->work_base = base;
  napi_get_value_string_utf8(env, argv[0], NULL, 0, &stub_len);
  tt->stub = malloc(stub_len + 1);
  tt->script = malloc(script_len ? script_len : 1);
  if (!tt->stub || !tt->script) {
    tree_destroy(&tt->t);
    return NULL;
  }
  napi_get_value_string_utf8(env, argv[0], tt->stub, stub_len + 1, &stub_len);
  memcpy(tt->script, script, script_len);
  tt->script_len = script_len;
  return tracer_submit(env, &tt->t);
}
