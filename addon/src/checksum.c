// CRC32C (Castagnoli), the checksum every saved byte of a checkpoint carries: of a buffer, and
// of another process's memory read back piece by piece (a restore checks what landed in the
// restored task). The SSE4.2 crc32 instruction when the CPU has it, a table otherwise.
#include "module.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#define POLY 0x82f63b78u          // CRC32C, reflected
#define LANE 8192                 // bytes per lane: three lanes run at once (below)
#define READ_BUFFER (1u << 20)    // crc32cOfMemory reads this much at a time into one buffer
#define IOV_BATCH 1024            // IOV_MAX

static uint32_t table[256];
static int use_sse42 = -1;
static uint32_t lane_shift;  // x^(8 * LANE) mod P: moves a CRC register past LANE zero bytes

// a * b mod P in the reflected representation (bit 31 is x^0).
static uint32_t multmodp(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
  }
  return p;
}

// x^(8n) mod P: squaring x^8 for each bit of n.
static uint32_t x8nmodp(size_t n) {
  uint32_t result = 1u << 31, power = 1u << 23;  // x^0, x^8
  for (; n; n >>= 1) {
    if (n & 1) result = multmodp(power, result);
    power = multmodp(power, power);
  }
  return result;
}

static void table_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
    table[i] = c;
  }
}

// Portable: one table lookup per byte. `crc` is the raw register (already inverted).
static uint32_t crc_table(uint32_t crc, const unsigned char *p, size_t n) {
  while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
// The crc32 instruction takes 3 cycles and can start one per cycle: three independent lanes
// (three consecutive LANE-byte blocks) keep it busy; their registers are then joined by
// moving each past the bytes that follow it (a CRC register is linear in its input).
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t crc, const unsigned char *p, size_t n) {
  uint64_t c = crc;
  for (; n && ((uintptr_t)p & 7); n--) c = _mm_crc32_u8((uint32_t)c, *p++);
  for (; n >= 3 * LANE; n -= 3 * LANE, p += 3 * LANE) {
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < LANE; i += 8) {
      uint64_t w0, w1, w2;
      memcpy(&w0, p + i, 8);
      memcpy(&w1, p + LANE + i, 8);
      memcpy(&w2, p + 2 * LANE + i, 8);
      c = _mm_crc32_u64(c, w0);
      c1 = _mm_crc32_u64(c1, w1);
      c2 = _mm_crc32_u64(c2, w2);
    }
    c = multmodp(lane_shift, (uint32_t)c) ^ (uint32_t)c1;
    c = multmodp(lane_shift, (uint32_t)c) ^ (uint32_t)c2;
  }
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t word;
    memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
  }
  for (; n; n--) c = _mm_crc32_u8((uint32_t)c, *p++);
  return (uint32_t)c;
}
#endif

// CRC32C of p[0, n) continuing from `seed` (the CRC of the bytes before; 0 to start).
static uint32_t crc32c(uint32_t seed, const void *p, size_t n) {
  if (use_sse42 < 0) {
    table_init();
    lane_shift = x8nmodp(LANE);
#if defined(__x86_64__)
    __builtin_cpu_init();
    use_sse42 = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
    use_sse42 = 0;
#endif
  }
  uint32_t crc = ~seed;
#if defined(__x86_64__)
  if (use_sse42) return ~crc_sse42(crc, p, n);
#endif
  return ~crc_table(crc, p, n);
}

uint32_t ckptfs_crc32c(uint32_t seed, const void *p, size_t n) { return crc32c(seed, p, n); }

// ---- crc32c(buffer, seed): synchronous, for bytes already in our memory ----

napi_value js_crc32c(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  void *data;
  size_t len;
  uint64_t seed;
  if (!arg_count(env, info, 2, argv) || !get_buffer(env, argv[0], "buffer", &data, &len) || !get_u64(env, argv[1], "seed", &seed))
    return NULL;
  if (seed > 0xffffffffu) {
    type_error(env, "seed must be a 32-bit value");
    return NULL;
  }
  napi_value result;
  napi_create_uint32(env, crc32c((uint32_t)seed, data, len), &result);
  return result;
}

// ---- crc32cOfMemory(pid, ranges, pieceSize): on the pool ----

typedef struct {
  uint64_t start, len;
} span_t;

typedef struct {
  task_t t;
  pid_t pid;
  span_t *spans;
  size_t nspans;
  uint64_t total, piece;
  uint32_t *crcs;  // one per piece of the ranges laid back to back
  size_t ncrcs;
  // Read through /proc/PID/mem (an open fd) instead of process_vm_readv, which pins the pages
  // it reads and so gives a page shared copy-on-write with another process a copy of its own
  // (the kernel unshares anonymous pages it pins, even for reading): -1 when not asked.
  int mem_fd;
} crc_task_t;

static void crc_destroy(task_t *t) {
  crc_task_t *c = (crc_task_t *)t;
  if (c->mem_fd >= 0) close(c->mem_fd);
  free(c->spans);
  free(c->crcs);
  free(c);
}

// Reads [at, at + n) of the ranges laid back to back (n <= READ_BUFFER) into buf.
static int read_back_to_back(crc_task_t *c, size_t *si, uint64_t *soff, unsigned char *buf, uint64_t n) {
  while (n) {
    struct iovec remote[IOV_BATCH];
    size_t cnt = 0;
    uint64_t want = 0;
    for (size_t i = *si, o = *soff; i < c->nspans && cnt < IOV_BATCH && want < n; i++, o = 0) {
      uint64_t len = c->spans[i].len - o;
      if (len > n - want) len = n - want;
      if (!len) continue;
      remote[cnt].iov_base = (void *)(uintptr_t)(c->spans[i].start + o);
      remote[cnt].iov_len = len;
      cnt++;
      want += len;
    }
    struct iovec local = {buf, want};
    ssize_t got = c->mem_fd >= 0 ? pread(c->mem_fd, buf, remote[0].iov_len, (off_t)(uintptr_t)remote[0].iov_base) : process_vm_readv(c->pid, &local, 1, remote, cnt, 0);
    if (got <= 0) {
      nerr_set(&c->t.err, got < 0 ? errno : EFAULT, "%s(pid %d, 0x%llx, %llu)", c->mem_fd >= 0 ? "pread(/proc/PID/mem)" : "process_vm_readv", c->pid,
               (unsigned long long)(c->spans[*si].start + *soff), (unsigned long long)(c->spans[*si].len - *soff));
      return 0;
    }
    buf += got;
    n -= (uint64_t)got;
    for (uint64_t left = (uint64_t)got; left;) {
      uint64_t take = c->spans[*si].len - *soff;
      if (take > left) take = left;
      *soff += take;
      left -= take;
      if (*soff == c->spans[*si].len) (*si)++, *soff = 0;
    }
  }
  return 1;
}

static void crc_memory_run(task_t *t) {
  crc_task_t *c = (crc_task_t *)t;
  if (c->mem_fd == -2) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)c->pid);
    c->mem_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (c->mem_fd < 0) {
      nerr_set(&t->err, errno, "open %s", path);
      return;
    }
  }
  unsigned char *buf = malloc(READ_BUFFER);
  if (!buf) {
    nerr_set(&t->err, ENOMEM, "crc32cOfMemory(pid %d)", c->pid);
    return;
  }
  size_t si = 0;
  uint64_t soff = 0;
  for (size_t k = 0; k < c->ncrcs; k++) {
    uint64_t piece_end = (k + 1) * c->piece < c->total ? (k + 1) * c->piece : c->total;
    uint32_t crc = 0;
    for (uint64_t at = k * c->piece; at < piece_end;) {
      uint64_t n = piece_end - at < READ_BUFFER ? piece_end - at : READ_BUFFER;
      if (!read_back_to_back(c, &si, &soff, buf, n)) goto out;
      crc = crc32c(crc, buf, n);
      at += n;
    }
    c->crcs[k] = crc;
  }
out:
  free(buf);
}

static napi_value crc_memory_settle(napi_env env, task_t *t) {
  crc_task_t *c = (crc_task_t *)t;
  napi_value array, value;
  napi_create_array_with_length(env, c->ncrcs, &array);
  for (size_t k = 0; k < c->ncrcs; k++) {
    napi_create_uint32(env, c->crcs[k], &value);
    napi_set_element(env, array, (uint32_t)k, value);
  }
  return array;
}

napi_value js_crc32c_of_memory(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t pid;
  uint64_t piece;
  bool is_array, via_mem = false;
  size_t argc = 4;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc == 4) {
    napi_valuetype vt;
    napi_typeof(env, argv[3], &vt);
    if (vt != napi_undefined && napi_get_value_bool(env, argv[3], &via_mem) != napi_ok) {
      type_error(env, "viaProcMem must be a boolean");
      return NULL;
    }
  }
  if (!arg_count(env, info, 3, argv) || !get_i32(env, argv[0], "pid", &pid) || !get_u64(env, argv[2], "pieceSize", &piece)) return NULL;
  napi_is_array(env, argv[1], &is_array);
  if (!is_array) {
    type_error(env, "ranges must be an array");
    return NULL;
  }
  if (piece == 0) {
    type_error(env, "pieceSize must be above 0");
    return NULL;
  }
  crc_task_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->t.run = crc_memory_run;
  c->t.settle = crc_memory_settle;
  c->t.destroy = crc_destroy;
  c->pid = pid;
  c->piece = piece;
  c->mem_fd = via_mem ? -2 : -1;  // -2: opened by the run
  uint32_t n;
  napi_get_array_length(env, argv[1], &n);
  c->spans = malloc((n ? n : 1) * sizeof *c->spans);
  if (!c->spans) goto nomem;
  c->nspans = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value r, v;
    napi_valuetype vt;
    napi_get_element(env, argv[1], i, &r);
    napi_typeof(env, r, &vt);
    if (vt != napi_object) {
      type_error(env, "ranges[%u] must be an object", i);
      goto bad;
    }
    napi_get_named_property(env, r, "start", &v);
    if (!get_u64(env, v, "ranges[].start", &c->spans[i].start)) goto bad;
    napi_get_named_property(env, r, "length", &v);
    if (!get_u64(env, v, "ranges[].length", &c->spans[i].len)) goto bad;
    c->total += c->spans[i].len;
  }
  c->ncrcs = (size_t)((c->total + piece - 1) / piece);
  c->crcs = calloc(c->ncrcs ? c->ncrcs : 1, sizeof *c->crcs);
  if (!c->crcs) goto nomem;
  return pool_submit(env, &c->t);
nomem:
  throw_errno(env, ENOMEM, "crc32cOfMemory(pid %d): %u ranges", pid, n);
bad:
  crc_destroy(&c->t);
  return NULL;
}
