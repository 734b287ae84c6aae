// restorefloor LEN [PASSES [hold]]: the fastest raw way to put LEN bytes of touched memory into
// another process, the floor of a memory restore. A forked child maps a fresh private
// anonymous region of LEN bytes and waits; per pass the parent (1) asks the child to
// populate it with madvise(MADV_POPULATE_WRITE) and waits for its answer, then (2) writes
// LEN bytes into it with process_vm_writev (64 MiB calls) from a source buffer that was
// touched beforehand, holding the bytes bench/memtarget.c holds (0x5a, each page starting
// with its offset). Each pass gets a fresh mapping (the child unmaps and maps again, untimed).
// Prints one line per pass: "pass I POPULATE_NS WRITE_NS" (CLOCK_MONOTONIC nanoseconds).
// With "hold", it then prints "holding" and keeps its memory until stdin ends.
//
// restorefloor warm LEN: faults in LEN bytes of fresh memory, writes them and exits. On this
// virtual machine a fresh page costs 10 to 30 times more when the guest has not used it
// lately (populating 1 GiB: 0.12-0.2 s with recently freed pages, 0.7-4.6 s without), and
// the kernel hands out the most recently freed pages first. The benchmark runs this before
// each timed step, so the floor pass and the restore it is compared with draw their pages
// from the same pool, whichever of them runs first.
//
// restorefloor verify PID ADDR LEN: reads LEN bytes at ADDR of PID with process_vm_readv and
// checks they are memtarget's bytes; prints "ok" or the first difference (exit status 1).
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define CHUNK (64u << 20)

static uint64_t now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fill(char *mem, size_t len) {
  memset(mem, 0x5a, len);
  for (size_t off = 0; off < len; off += 4096) memcpy(mem + off, &off, sizeof off);
}

static int verify(pid_t pid, uintptr_t addr, size_t len) {
  char *want = malloc(CHUNK), *got = malloc(CHUNK);
  if (!want || !got) return perror("restorefloor: malloc"), 1;
  for (size_t off = 0; off < len; off += CHUNK) {
    size_t n = len - off < CHUNK ? len - off : CHUNK;
    memset(want, 0x5a, n);
    for (size_t p = 0; p < n; p += 4096) {
      size_t at = off + p;
      memcpy(want + p, &at, sizeof at);
    }
    struct iovec local = {got, n}, remote = {(void *)(addr + off), n};
    ssize_t r = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (r != (ssize_t)n) {
      printf("read at +%zu: %s\n", off, r < 0 ? strerror(errno) : "short read");
      return 1;
    }
    if (memcmp(want, got, n) != 0) {
      size_t i = 0;
      while (want[i] == got[i]) i++;
      printf("differs at +%zu\n", off + i);
      return 1;
    }
  }
  printf("ok\n");
  return 0;
}

static int warm(size_t len) {
  char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return perror("restorefloor: mmap"), 1;
  madvise(mem, len, MADV_POPULATE_WRITE);
  memset(mem, 0x5a, len);
  return 0;
}

static void xfer(int fd, void *buf, size_t n, int writing) {
  ssize_t r = writing ? write(fd, buf, n) : read(fd, buf, n);
  if (r != (ssize_t)n) {
    fprintf(stderr, "restorefloor: pipe %s: %s\n", writing ? "write" : "read", r < 0 ? strerror(errno) : "short");
    exit(1);
  }
}

int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[1], "verify") == 0)
    return verify((pid_t)strtol(argv[2], NULL, 10), (uintptr_t)strtoull(argv[3], NULL, 0), strtoull(argv[4], NULL, 0));
  if (argc == 3 && strcmp(argv[1], "warm") == 0) return warm(strtoull(argv[2], NULL, 0));
  if (argc < 2) {
    fprintf(stderr, "usage: restorefloor LEN [PASSES [hold]] | restorefloor warm LEN | restorefloor verify PID ADDR LEN\n");
    return 2;
  }
  size_t len = strtoull(argv[1], NULL, 0);
  int passes = argc > 2 ? atoi(argv[2]) : 1;
  int hold = argc > 3 && strcmp(argv[3], "hold") == 0;
  int ask[2], answer[2];
  if (pipe(ask) || pipe(answer)) return perror("restorefloor: pipe"), 1;
  pid_t child = fork();
  if (child < 0) return perror("restorefloor: fork"), 1;
  if (child == 0) {
    // The destination: maps a fresh region, sends its address, then per request byte:
    // 'p' populate it (answers 0 or errno), 'n' unmap and map a fresh one (answers its address).
    close(ask[1]);
    close(answer[0]);
    char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) _exit(1);
    xfer(answer[1], &mem, sizeof mem, 1);
    char c;
    while (read(ask[0], &c, 1) == 1) {
      if (c == 'p') {
        int err = madvise(mem, len, MADV_POPULATE_WRITE) ? errno : 0;
        xfer(answer[1], &err, sizeof err, 1);
      } else if (c == 'n') {
        munmap(mem, len);
        mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) _exit(1);
        xfer(answer[1], &mem, sizeof mem, 1);
      }
    }
    _exit(0);
  }
  close(ask[0]);
  close(answer[1]);
  char *src = malloc(len);
  if (!src) return perror("restorefloor: malloc"), 1;
  fill(src, len);
  char *dst;
  xfer(answer[0], &dst, sizeof dst, 0);
  int status = 0;
  for (int p = 0; p < passes && status == 0; p++) {
    if (p > 0) {
      xfer(ask[1], "n", 1, 1);
      xfer(answer[0], &dst, sizeof dst, 0);
    }
    uint64_t t0 = now();
    int err;
    xfer(ask[1], "p", 1, 1);
    xfer(answer[0], &err, sizeof err, 0);
    uint64_t t1 = now();
    if (err) {
      fprintf(stderr, "restorefloor: madvise(MADV_POPULATE_WRITE): %s\n", strerror(err));
      status = 1;
      break;
    }
    for (size_t off = 0; off < len; off += CHUNK) {
      size_t n = len - off < CHUNK ? len - off : CHUNK;
      struct iovec local = {src + off, n}, remote = {dst + off, n};
      ssize_t w = process_vm_writev(child, &local, 1, &remote, 1, 0);
      if (w != (ssize_t)n) {
        fprintf(stderr, "restorefloor: process_vm_writev at +%zu: %s\n", off, w < 0 ? strerror(errno) : "short write");
        status = 1;
        break;
      }
    }
    uint64_t t2 = now();
    if (status == 0) printf("pass %d %llu %llu\n", p + 1, (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1));
    fflush(stdout);
  }
  if (hold) {
    // Keeps both regions until stdin ends, so that a restore timed meanwhile cannot reuse
    // the pages this run just freed (pages the VM has backed are far cheaper to fill).
    printf("holding\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {
    }
  }
  close(ask[1]); // the child exits on EOF
  waitpid(child, NULL, 0);
  return status;
}
