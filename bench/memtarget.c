// memtarget MIB: a benchmark target with MIB MiB of touched private anonymous memory, and a
// thread that measures how long the process was stopped: it spins reading CLOCK_MONOTONIC
// and records the gaps longer than 200 us (start and length, in ns; the 32 longest are kept).
// A frozen process sees one gap: its stop time. SIGUSR1 prints the gaps recorded since the
// last report
//   gaps N START:LENGTH ...
// (times are CLOCK_MONOTONIC ns, comparable with the benchmark's clock) and forgets them.
// Prints "ready pid=PID addr=0xADDR len=BYTES" once the memory is touched.
// memtarget MIB DIR: also answers requests, for the lazy restore's time to first response: a
// byte written to the fifo DIR/req is answered on the fifo DIR/resp with one byte, the sum of
// the first bytes of 64 pages spread over the memory (a request touches them).
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#define MAX_GAPS 32
#define MIN_GAP_NS 200000
// Only the spinning thread touches the gaps: it keeps the MAX_GAPS longest since the last
// report (preemption on a busy machine makes many short ones), and prints the report itself
// when the main thread asks (SIGUSR1), then starts over.
static struct { uint64_t start, len; } gaps[MAX_GAPS];
static int ngaps;
static atomic_int report_wanted;

static uint64_t now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void record(uint64_t start, uint64_t len) {
  int slot = ngaps;
  if (ngaps == MAX_GAPS) {
    slot = 0;
    for (int i = 1; i < MAX_GAPS; i++) if (gaps[i].len < gaps[slot].len) slot = i;
    if (gaps[slot].len >= len) return;
  } else {
    ngaps++;
  }
  gaps[slot].start = start;
  gaps[slot].len = len;
}

static void *spin(void *arg) {
  (void)arg;
  uint64_t prev = now();
  for (;;) {
    uint64_t t = now();
    if (t - prev > MIN_GAP_NS) record(prev, t - prev);
    if (atomic_exchange(&report_wanted, 0)) {
      printf("gaps %d", ngaps);
      for (int i = 0; i < ngaps; i++) printf(" %llu:%llu", (unsigned long long)gaps[i].start, (unsigned long long)gaps[i].len);
      printf("\n");
      fflush(stdout);
      ngaps = 0;
      t = now(); // the report's own time is no gap
    }
    prev = t;
  }
  return NULL;
}

static unsigned char *memory;
static size_t memory_len;
static int req_fd = -1, resp_fd = -1;

static void *answer(void *arg) {
  (void)arg;
  size_t pages = memory_len / 4096, next = 0;
  for (;;) {
    char c;
    if (read(req_fd, &c, 1) != 1) continue;
    unsigned char sum = 0;
    for (int i = 0; i < 64; i++, next += 7919) sum += memory[(next % pages) * 4096 + 8];
    if (write(resp_fd, &sum, 1) != 1) continue;
  }
  return NULL;
}

int main(int argc, char **argv) {
  close_range(3, ~0U, 0); // nothing inherited beyond stdio
  size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
  size_t len = mib << 20;
  char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    perror("memtarget: mmap");
    return 1;
  }
  memset(mem, 0x5a, len);
  for (size_t off = 0; off < len; off += 4096) memcpy(mem + off, &off, sizeof off); // pages differ
  memory = (unsigned char *)mem;
  memory_len = len;
  if (argc > 2) {
    // Opened read-write: a fifo opened so never waits for the other end.
    char path[4096];
    snprintf(path, sizeof path, "%s/req", argv[2]);
    req_fd = open(path, O_RDWR | O_CLOEXEC);
    snprintf(path, sizeof path, "%s/resp", argv[2]);
    resp_fd = open(path, O_RDWR | O_CLOEXEC);
    if (req_fd < 0 || resp_fd < 0) {
      perror("memtarget: open the fifos");
      return 1;
    }
  }

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, NULL); // the spinner inherits the mask
  pthread_t thread;
  if (pthread_create(&thread, NULL, spin, NULL) != 0) return 1;
  pthread_t answerer;
  if (req_fd >= 0 && pthread_create(&answerer, NULL, answer, NULL) != 0) return 1;

  printf("ready pid=%d addr=%p len=%zu\n", (int)getpid(), (void *)mem, len);
  fflush(stdout);
  for (;;) {
    int sig;
    if (sigwait(&set, &sig) == 0) atomic_store(&report_wanted, 1);
  }
}
