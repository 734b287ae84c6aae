// readTree(path, inlineMax, budget): one walk of a saved tree on a pool thread, returning every
// entry's kind, owner and mode, and the bytes and CRC32C of each small regular file, in one
// Buffer (lib/restore/snapshot.ts reads it). A restore reads a 10,000-fd tree's 240,000 small
// files; one open, read and close per file by path from JavaScript, and an lstat per entry for
// the owner check, cost most of its time in system calls and their bindings.
//
// The tree may be in a directory a user controls and changes while root reads it: every entry
// below the top is opened relative to its directory's fd with O_NOFOLLOW (a symbolic link is
// recorded, never followed), owner and mode come from fstat of the very fd that is read (what
// is checked is what is read), and only what getdents calls a regular file or a directory (or
// does not say) is opened at all, with O_NONBLOCK (a fifo swapped in does not block the walk).
//
// Layout (little-endian), directories in depth-first order:
//   top:   u32 mode, u32 uid, then the top directory's block
//   block: u32 entry count, then each entry:
//          u8 kind (0 regular file, 1 directory, 2 other), u8 flags (1 symbolic link, 2 inlined),
//          u16 name length, u32 mode, u32 uid, u32 crc32c (a file held) or the length of the
//          block that follows (a directory), f64 size, u32 data length (a file held, else 0),
//          the name, the data; a directory's own block follows its entry at once.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "module.h"

// Deeper than any saved tree (task-PID/memory/vmas/NAME/... is a few levels): each level holds a directory fd.
#define MAX_DEPTH 64
#define ENTRY_HEAD 24
#define KIND_FILE 0
#define KIND_DIR 1
#define KIND_OTHER 2
#define FLAG_SYMLINK 1
#define FLAG_INLINED 2

typedef struct {
  task_t task;
  char *top;
  size_t inline_max;  // files up to this size are read whole
  size_t budget;      // at most this many file bytes in all
  size_t inlined;     // file bytes read so far
  char *out;
  size_t len, cap;
  char rel[PATH_MAX];  // the path below the top of what is being read, for errors
} tree_read_t;

// Room for `n` more bytes at the end of the output; its offset, or -1 (ENOMEM set).
static ssize_t reserve(tree_read_t *r, size_t n) {
  if (r->len + n > UINT32_MAX) {  // offsets are u32, and node holds no larger Buffer
    nerr_set_raw(&r->task.err, E2BIG, "%s: too many entries to read (over 4 GiB of names and small files): not a saved checkpoint", r->top);
    return -1;
  }
  if (r->len + n > r->cap) {
    size_t cap = r->cap ? r->cap : 1 << 20;
    while (cap < r->len + n) cap *= 2;
    char *p = realloc(r->out, cap);
    if (!p) {
      nerr_set(&r->task.err, ENOMEM, "readTree(%s): %zu bytes", r->top, cap);
      return -1;
    }
    r->out = p;
    r->cap = cap;
  }
  ssize_t at = (ssize_t)r->len;
  r->len += n;
  return at;
}

static void put32(tree_read_t *r, size_t at, uint32_t v) { memcpy(r->out + at, &v, 4); }

// Appends `name` to r->rel for messages; returns the length to cut back to.
static size_t rel_push(tree_read_t *r, const char *name) {
  size_t was = strlen(r->rel);
  if (was + 1 + strlen(name) < sizeof r->rel) {
    if (was) r->rel[was] = '/';
    strcpy(r->rel + (was ? was + 1 : 0), name);
  }
  return was;
}

static int fail(tree_read_t *r, int code, const char *what) {
  nerr_set(&r->task.err, code, "%s/%s: %s", r->top, r->rel, what);
  return -1;
}

// Reads the open regular file `fd` of `size` bytes into the output when it fits; returns
// the bytes read (-2 when it is not inlined, -1 on failure).
static ssize_t read_small(tree_read_t *r, int fd, off_t size) {
  if ((size_t)size > r->inline_max || r->inlined + (size_t)size > r->budget) return -2;
  ssize_t at = reserve(r, (size_t)size);
  if (at < 0) return -1;
  size_t done = 0;
  while (done < (size_t)size) {
    ssize_t n = read(fd, r->out + at + done, (size_t)size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(r, errno, "read");
    if (n == 0) break;  // shorter now than fstat said: what was read is the file
    done += (size_t)n;
  }
  r->len = (size_t)at + done;
  r->inlined += done;
  return (ssize_t)done;
}

static int walk(tree_read_t *r, int dfd, int depth);

// One entry of the directory `dfd`: its record, its data, and (a directory) its block.
static int entry(tree_read_t *r, int dfd, const char *name, unsigned char type, int depth, uint32_t *count) {
  size_t name_len = strlen(name);
  if (name_len > 0xffff) return fail(r, ENAMETOOLONG, "name");
  int fd = -1;
  struct stat st;
  if (type == DT_REG || type == DT_DIR || type == DT_UNKNOWN) {
    fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 && errno != ELOOP && errno != ENOENT && errno != ENXIO) return fail(r, errno, "open");
    if (fd < 0 && errno == ENOENT) return 0;  // gone since it was listed: as if listed later
  }
  if (fd >= 0) {
    if (fstat(fd, &st) < 0) {
      close(fd);
      return fail(r, errno, "fstat");
    }
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
      close(fd);  // something else swapped in since getdents: recorded, never read
      fd = -1;
    }
  } else if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
    if (errno == ENOENT) return 0;
    return fail(r, errno, "lstat");
  }
  ssize_t head = reserve(r, ENTRY_HEAD + name_len);
  if (head < 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  unsigned char kind = fd < 0 ? KIND_OTHER : S_ISDIR(st.st_mode) ? KIND_DIR : KIND_FILE;
  unsigned char flags = S_ISLNK(st.st_mode) ? FLAG_SYMLINK : 0;
  uint16_t len16 = (uint16_t)name_len;
  double size = (double)st.st_size;
  r->out[head] = (char)kind;
  memcpy(r->out + head + 2, &len16, 2);
  put32(r, head + 4, st.st_mode);
  put32(r, head + 8, st.st_uid);
  put32(r, head + 12, 0);
  memcpy(r->out + head + 16, &size, 8);
  memcpy(r->out + head + ENTRY_HEAD, name, name_len);
  // The data length follows the name (u32), then the data.
  ssize_t data_len_at = reserve(r, 4);
  if (data_len_at < 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  put32(r, data_len_at, 0);
  (*count)++;
  int rc = 0;
  if (kind == KIND_FILE) {
    size_t cut = rel_push(r, name);
    size_t data_at = r->len;
    ssize_t n = read_small(r, fd, st.st_size);
    if (n >= 0) {
      flags |= FLAG_INLINED;
      put32(r, head + 12, ckptfs_crc32c(0, r->out + data_at, (size_t)n));
      double got = (double)n;
      memcpy(r->out + head + 16, &got, 8);
      put32(r, data_len_at, (uint32_t)n);
    }
    if (n == -1) rc = -1;
    r->rel[cut] = 0;
    close(fd);
  } else if (kind == KIND_DIR) {
    size_t cut = rel_push(r, name);
    size_t block = r->len;
    if (depth + 1 >= MAX_DEPTH) {
      close(fd);
      rc = fail(r, ELOOP, "nested too deep for a saved checkpoint");
    } else {
      rc = walk(r, fd, depth + 1);
    }
    if (rc == 0) put32(r, head + 12, (uint32_t)(r->len - block));
    r->rel[cut] = 0;
    fd = -1;  // walk closed it
  }
  r->out[head + 1] = (char)flags;
  return rc;
}

// The block of the directory `dfd` (closed here).
static int walk(tree_read_t *r, int dfd, int depth) {
  ssize_t count_at = reserve(r, 4);
  if (count_at < 0) {
    close(dfd);
    return -1;
  }
  DIR *d = fdopendir(dfd);
  if (!d) {
    int code = errno;
    close(dfd);
    return fail(r, code, "opendir");
  }
  uint32_t count = 0;
  int rc = 0;
  for (;;) {
    errno = 0;
    struct dirent *e = readdir(d);
    if (!e) {
      if (errno) rc = fail(r, errno, "readdir");
      break;
    }
    if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2]))) continue;
    if (entry(r, dirfd(d), e->d_name, e->d_type, depth, &count) < 0) {
      rc = -1;
      break;
    }
  }
  closedir(d);
  if (rc == 0) put32(r, (size_t)count_at, count);
  return rc;
}

static void read_tree_run(task_t *t) {
  tree_read_t *r = (tree_read_t *)t;
  // The top is the path the caller named: a symbolic link to it is followed, as stat does.
  int fd = open(r->top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    nerr_set(&t->err, errno, "%s", r->top);
    return;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) {
    nerr_set(&t->err, errno, "fstat(%s)", r->top);
    close(fd);
    return;
  }
  ssize_t at = reserve(r, 8);
  if (at < 0) {
    close(fd);
    return;
  }
  put32(r, (size_t)at, st.st_mode);
  put32(r, (size_t)at + 4, st.st_uid);
  walk(r, fd, 0);
}

static napi_value read_tree_settle(napi_env env, task_t *t) {
  tree_read_t *r = (tree_read_t *)t;
  napi_value buf = make_owned_buffer(env, r->out, r->len);
  r->out = NULL;
  return buf;
}

static void read_tree_destroy(task_t *t) {
  tree_read_t *r = (tree_read_t *)t;
  free(r->out);
  free(r->top);
  free(r);
}

napi_value js_read_tree(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int64_t inline_max, budget;
  if (!arg_count(env, info, 3, argv)) return NULL;
  size_t top_len;
  if (napi_get_value_string_utf8(env, argv[0], NULL, 0, &top_len) != napi_ok) {
    type_error(env, "path must be a string");
    return NULL;
  }
  if (napi_get_value_int64(env, argv[1], &inline_max) != napi_ok || inline_max < 0 ||
      napi_get_value_int64(env, argv[2], &budget) != napi_ok || budget < 0) {
    type_error(env, "inlineMax and budget must be numbers >= 0");
    return NULL;
  }
  tree_read_t *r = calloc(1, sizeof *r);
  if (!r || !(r->top = malloc(top_len + 1))) {
    free(r);
    throw_errno(env, ENOMEM, "readTree");
    return NULL;
  }
  napi_get_value_string_utf8(env, argv[0], r->top, top_len + 1, &top_len);
  r->inline_max = (size_t)inline_max;
  r->budget = (size_t)budget;
  r->task.run = read_tree_run;
  r->task.settle = read_tree_settle;
  r->task.destroy = read_tree_destroy;
  return pool_submit(env, &r->task);
}
