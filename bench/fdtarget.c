// fdtarget N DIR: a benchmark target holding N open fds (stdio included), then sleeps.
// Mix, interleaved in fd order: mostly separate opens of /dev/null (some close-on-exec),
// every 20th a separate open of one of 50 regular files in DIR (read-only, read-write or
// append, at various offsets), every 20th a dup of an earlier fd (half F_DUPFD_CLOEXEC),
// every 100th a pipe (both ends; every other one holds a few bytes of data).
// Raises RLIMIT_NOFILE itself. Prints "ready pid=PID fds=N" when done.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static int check(int r, const char *what) {
  if (r < 0) {
    fprintf(stderr, "fdtarget: %s: %s\n", what, strerror(errno));
    exit(1);
  }
  return r;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: fdtarget N DIR\n");
    return 2;
  }
  // Only stdin, stdout and stderr: no fd inherited from whoever started us.
  close_range(3, ~0U, 0);
  int n = atoi(argv[1]);
  const char *dir = argv[2];
  struct rlimit lim = {.rlim_cur = (rlim_t)n + 64, .rlim_max = (rlim_t)n + 64};
  check(setrlimit(RLIMIT_NOFILE, &lim), "setrlimit");

  char path[4096], block[4096];
  memset(block, 'r', sizeof block);
  for (int f = 0; f < 50; f++) {
    snprintf(path, sizeof path, "%s/file%02d", dir, f);
    int fd = check(open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644), "create");
    for (int k = 0; k <= f % 4; k++) check((int)write(fd, block, sizeof block), "write");
    close(fd);
  }

  int open_fds = 3; // stdin, stdout, stderr
  for (int i = 0; open_fds < n; i++) {
    if (i % 100 == 50 && open_fds + 2 <= n) {
      int p[2];
      check(pipe(p), "pipe");
      if (i % 200 == 50) check((int)write(p[1], "pipe data\n", 10), "write pipe");
      open_fds += 2;
    } else if (i % 20 == 7) {
      static const int modes[3] = {O_RDONLY, O_RDWR, O_WRONLY | O_APPEND};
      snprintf(path, sizeof path, "%s/file%02d", dir, (i / 20) % 50);
      int fd = check(open(path, modes[(i / 20) % 3]), "open file");
      lseek(fd, (off_t)((i / 20) % 4096), SEEK_SET);
      open_fds++;
    } else if (i % 20 == 13) {
      int from = 3 + (i * 7919) % (open_fds - 3 > 0 ? open_fds - 3 : 1);
      if (fcntl(from, F_GETFD) < 0) from = 0;
      check(fcntl(from, (i / 20) % 2 ? F_DUPFD_CLOEXEC : F_DUPFD, 0), "dup");
      open_fds++;
    } else {
      check(open("/dev/null", (i % 3 == 0 ? O_RDONLY : O_RDWR) | (i % 10 == 0 ? O_CLOEXEC : 0)), "open /dev/null");
      open_fds++;
    }
  }
  printf("ready pid=%d fds=%d\n", (int)getpid(), open_fds);
  fflush(stdout);
  for (;;) pause();
}
