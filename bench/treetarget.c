// Target of the process-tree benchmark (bench/tree.ts): a tree of N processes.
//   treetarget N WORKDIR
// The root opens WORKDIR/shared.log (one description every process inherits) and a pipe,
// then forks children; each child forks one grandchild while the count allows (root, then
// children and grandchildren, N in all), and each child and grandchild opens /dev/null on its
// own (a description of its own that looks like every other one to /proc, so the checkpoint's
// kcmp has to tell them apart). Each process tells the root over the pipe once it is set up;
// the root prints "ready pid=P" when all N are there. Every process then sleeps.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void settle(int tell) {
  if (open("/dev/null", O_RDONLY) < 0) die("/dev/null");
  if (write(tell, "x", 1) != 1) die("write");
  for (;;) pause();
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  int n = atoi(argv[1]);
  if (n < 1) return 2;
  char path[4096];
  snprintf(path, sizeof path, "%s/shared.log", argv[2]);
  if (open(path, O_WRONLY | O_CREAT | O_APPEND, 0644) < 0) die(path);
  int ready[2];
  if (pipe(ready) < 0) die("pipe");
  int made = 1;
  while (made < n) {
    int with_grandchild = made + 2 <= n;
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
      close(ready[0]);
      if (with_grandchild) {
        pid_t grandchild = fork();
        if (grandchild < 0) die("fork");
        if (grandchild == 0) settle(ready[1]);
      }
      settle(ready[1]);
    }
    made += with_grandchild ? 2 : 1;
  }
  close(ready[1]);
  char c;
  for (int told = 1; told < n; told++)
    if (read(ready[0], &c, 1) != 1) die("read");
  printf("ready pid=%d\n", getpid());
  fflush(stdout);
  for (;;) pause();
}
