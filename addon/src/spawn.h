// Starting restorer stubs (restore.c) for one process or a whole tree (tree.c). Tracer thread only.
#ifndef CKPTFS_SPAWN_H
#define CKPTFS_SPAWN_H
#include "tracer.h"

// A stub that has opened its file table and answered "ok", still running: seized, with the
// server's ends of its control and reply pipes, and (the root of a restore) its keeper.
typedef struct {
  pid_t pid;
  pid_t keeper;  // -1: none (a child made by its restored parent)
  int keeper_fd;
  void *keeper_stack;
  int ctl_w;    // the stub's control pipe (commands, tree.c)
  int reply_r;  // its reply pipe
} spawned_t;

// Makes the root of a restore: keeper, clone3(set_tid), execve of the stub, seize, "go", and
// its "ok". On failure nothing is left (err set, -1).
int restorer_start(pid_t pid, const char *stub, const unsigned char *plan, size_t plan_len, int base, spawned_t *out, nerr_t *err);
// Waits for a stub that is done (its working fds closed), stops it and keeps it like a frozen task.
int restorer_settle(spawned_t *sp, nerr_t *err);
// Kills a stub not settled yet and ends its keeper (which reaps what the tree left to it).
void restorer_abort(spawned_t *sp);
// Reads one reply line of a running seized stub (restore.c). 1 line, 0 EOF, -1 error.
int read_reply(pid_t pid, int fd, char *line, size_t cap, int until_eof, int *dead, nerr_t *err);
#endif
