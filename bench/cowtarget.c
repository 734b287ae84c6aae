// Target for the copy-on-write tree measurement (README "Process trees", issue 17). Usage:
// cowtarget MIB WORKERS: the parent fills MIB MiB of private anonymous memory (each page its
// own bytes), forks WORKERS children that each change 16 pages of it and wait, and prints
// "ready pid=P" once all have. Every other page is shared copy-on-write by all of them.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: cowtarget MIB WORKERS\n");
    return 2;
  }
  size_t n = (size_t)atoi(argv[1]) << 20;
  int workers = atoi(argv[2]);
  unsigned char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 1;
  for (size_t i = 0; i < n; i += 4096) memset(p + i, (int)((i >> 12) | 1), 4096);
  int ready[2];
  if (pipe(ready) < 0) return 1;
  for (int w = 0; w < workers; w++) {
    pid_t c = fork();
    if (c < 0) return 1;
    if (c == 0) {
      // 16 pages of its own, spread over the area.
      for (int k = 0; k < 16; k++) memset(p + ((size_t)(w * 16 + k) * 997 % (n / 4096)) * 4096, 0xa0 + w, 4096);
      (void)!write(ready[1], "x", 1);
      for (;;) pause();
    }
  }
  for (int w = 0; w < workers; w++) {
    char c;
    if (read(ready[0], &c, 1) != 1) return 1;
  }
  printf("ready pid=%d\n", (int)getpid());
  fflush(stdout);
  for (;;) pause();
}
