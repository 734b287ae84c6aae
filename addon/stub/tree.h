// The stub's commands for restoring a process tree (tree.c).
#ifndef CKPTFS_STUB_TREE_H
#define CKPTFS_STUB_TREE_H
#include <stdint.h>

// Serves the server's commands on ctl (fork a child, make a zombie) until 'E'; object_fd maps
// each object id (1..objects) to the fd that holds it here.
void serve_tree_commands(int ctl, int reply, int work_base, const int *object_fd, uint32_t objects);
// Runs the stub again in a child forked without exec (restorer.c); never returns.
void restart_stub(int argc, char **argv) __attribute__((noreturn));
#endif
