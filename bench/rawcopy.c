// rawcopy PID ADDR LEN [CHUNK] [PASSES]: the raw cost of copying LEN bytes at ADDR out of
// process PID with process_vm_readv, in one loop of CHUNK-byte calls (default 4 MiB), into a
// destination buffer that is allocated and touched (memset) first. Only the loop is timed.
// Prints one line per pass: "pass I NS" (CLOCK_MONOTONIC nanoseconds).
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

static uint64_t now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: rawcopy PID ADDR LEN [CHUNK] [PASSES]\n");
    return 2;
  }
  pid_t pid = (pid_t)strtol(argv[1], NULL, 10);
  uintptr_t addr = (uintptr_t)strtoull(argv[2], NULL, 0);
  size_t len = strtoull(argv[3], NULL, 0);
  size_t chunk = argc > 4 ? strtoull(argv[4], NULL, 0) : 4u << 20;
  int passes = argc > 5 ? atoi(argv[5]) : 1;
  char *dst = malloc(len);
  if (!dst) {
    perror("rawcopy: malloc");
    return 1;
  }
  memset(dst, 1, len);
  for (int p = 0; p < passes; p++) {
    uint64_t t0 = now();
    for (size_t off = 0; off < len; off += chunk) {
      size_t n = len - off < chunk ? len - off : chunk;
      struct iovec local = {dst + off, n}, remote = {(void *)(addr + off), n};
      ssize_t got = process_vm_readv(pid, &local, 1, &remote, 1, 0);
      if (got != (ssize_t)n) {
        fprintf(stderr, "rawcopy: process_vm_readv at +%zu: %s\n", off, got < 0 ? strerror(errno) : "short read");
        return 1;
      }
    }
    printf("pass %d %llu\n", p + 1, (unsigned long long)(now() - t0));
  }
  return 0;
}
