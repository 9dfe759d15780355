/* SPDX-License-Identifier: BSD-3-Clause */
/* fault-shim.so: I/O errors on chosen files, switched on and off from outside, for nbdkit.
 *
 * LD_PRELOAD=fault-shim.so FAULT_TRIGGER=FILE FAULT_MATCH=SUBSTRING nbdkit ...
 *
 * While FILE exists, calls on descriptors whose path (/proc/self/fd) contains SUBSTRING fail
 * with EIO, by the letters FILE holds:
 *   r  pread, preadv (and the 64-bit names): reads
 *   w  pwrite, pwritev, fallocate, ftruncate: writes
 *   s  fdatasync, fsync: syncs
 * Everything else, and every other file, goes to libc.  A test can thus fail exactly the layer
 * files of a pool, at the moment it chooses, without root (no device-mapper error target).
 *
 * FAULT_DROP=1 also makes a failed sync behave as Linux does after a write-back error since
 * 4.13: the dirty pages are dropped (marked clean; later reads see what the disk had) and the
 * error is reported once, so the *next* fsync succeeds.  The shim remembers, per matching
 * descriptor, the bytes each pwrite replaced since the last sync (it reads them first), and on
 * the failed sync puts them back.  That is the case a writer must not treat as "retry the flush".
 *
 * FAULT_POWERCUT=FILE (with FAULT_DROP=1): a power cut.  A thread polls for FILE every
 * millisecond; when it appears, every later write or sync on a matching file blocks forever, the
 * bytes of every write not yet synced are put back (as the disk would hold them), and the process
 * exits at once (_exit 137).  A sync that completed before the cut is durable; its caller may
 * not have been told (the cut can come between the two), which a power cut allows too.  Writes
 * in flight during the cut may land after it, whole or torn: allowed, they were not synced.
 * FAULT_TORN=SEED tears the un-synced writes instead: each of their 512-byte sectors is put
 * back or left, at random.
 *
 * Not covered: io_uring reads (the server must run with io=sync for read faults), mmap.
 * Built without sanitizers: it is loaded before their runtime.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define REAL(name) real_##name
#define LOAD(name)                                                                                 \
  do {                                                                                             \
    if (REAL(name) == NULL)                                                                        \
      REAL(name) = dlsym(RTLD_NEXT, #name);                                                        \
  } while (0)

static ssize_t (*REAL(pread))(int, void *, size_t, off_t);
static ssize_t (*REAL(pread64))(int, void *, size_t, off_t);
static ssize_t (*REAL(preadv))(int, const struct iovec *, int, off_t);
static ssize_t (*REAL(preadv64))(int, const struct iovec *, int, off_t);
static ssize_t (*REAL(pwrite))(int, const void *, size_t, off_t);
static ssize_t (*REAL(pwrite64))(int, const void *, size_t, off_t);
static ssize_t (*REAL(pwritev))(int, const struct iovec *, int, off_t);
static ssize_t (*REAL(pwritev64))(int, const struct iovec *, int, off_t);
static int (*REAL(fdatasync))(int);
static int (*REAL(fsync))(int);
static int (*REAL(fallocate))(int, int, off_t, off_t);
static int (*REAL(fallocate64))(int, int, off_t, off_t);
static int (*REAL(ftruncate))(int, off_t);
static int (*REAL(ftruncate64))(int, off_t);

/* Does `fd` name a file we fail, and is `op` (r, w or s) switched on? */
static int
faulty(int fd, char op)
{
  const char *trigger = getenv("FAULT_TRIGGER"), *match = getenv("FAULT_MATCH");
  char link[64], path[4096], mode[16];
  ssize_t n;
  int tfd, saved = errno;

  if (trigger == NULL || match == NULL)
    return 0;
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink(link, path, sizeof path - 1);
  if (n <= 0)
    goto no;
  path[n] = '\0';
  if (strstr(path, match) == NULL)
    goto no;
  tfd = open(trigger, O_RDONLY | O_CLOEXEC);
  if (tfd < 0)
    goto no;
  LOAD(pread);
  n = REAL(pread)(tfd, mode, sizeof mode - 1, 0);
  close(tfd);
  if (n <= 0)
    goto no;
  mode[n] = '\0';
  if (strchr(mode, op) == NULL)
    goto no;
  errno = saved;
  return 1;
no:
  errno = saved;
  return 0;
}

/* ---- FAULT_DROP: pre-images of writes since the last sync ---- */

struct undo {
  struct undo *next;
  int fd;
  off_t off;
  size_t len;
  unsigned char data[];
};
static struct undo *undo_list;
static volatile int frozen;
/* the power is cut: no write or sync ever returns again */ /* newest first: restoring in list
                                                               order leaves the oldest bytes */
static pthread_mutex_t undo_lock = PTHREAD_MUTEX_INITIALIZER;

static void
freeze_if_cut(void)
{
  while (frozen)
    pause();
}

static int
dropping(void)
{
  const char *d = getenv("FAULT_DROP");
  return d && d[0] == '1';
}

/* Remember what [off, off+len) of fd holds before a write replaces it (a hole reads as zeroes,
 * and past the end of the file as zeroes too: the disk never had those bytes). */
static void
remember(int fd, off_t off, size_t len)
{
  const char *match = getenv("FAULT_MATCH");
  char link[64], path[4096];
  struct undo *u;
  ssize_t n;

  if (!dropping() || match == NULL)
    return;
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink(link, path, sizeof path - 1);
  if (n <= 0)
    return;
  path[n] = '\0';
  if (strstr(path, match) == NULL)
    return;
  u = calloc(1, sizeof *u + len);
  if (u == NULL)
    return;
  u->fd = fd;
  u->off = off;
  u->len = len;
  LOAD(pread);
  (void)REAL(pread)(fd, u->data, len, off);
  pthread_mutex_lock(&undo_lock);
  u->next = undo_list;
  undo_list = u;
  pthread_mutex_unlock(&undo_lock);
}

/* A sync of fd happened (ok) or failed with pages dropped (!ok): forget or restore fd's undo. */
static void
settle(int fd, int ok)
{
  struct undo **p, *u;

  LOAD(pwrite);
  pthread_mutex_lock(&undo_lock);
  if (frozen) {
    pthread_mutex_unlock(&undo_lock);
    freeze_if_cut();
  }
  p = &undo_list;
  while ((u = *p) != NULL) {
    if (u->fd != fd) {
      p = &u->next;
      continue;
    }
    if (!ok)
      (void)REAL(pwrite)(fd, u->data, u->len, u->off);
    *p = u->next;
    free(u);
  }
  pthread_mutex_unlock(&undo_lock);
}

static size_t
iov_len(const struct iovec *iov, int n)
{
  size_t len = 0;
  for (int i = 0; i < n; i++)
    len += iov[i].iov_len;
  return len;
}

#define FAIL_IF(fd, op, ret)                                                                       \
  do {                                                                                             \
    if (faulty(fd, op)) {                                                                          \
      errno = EIO;                                                                                 \
      return ret;                                                                                  \
    }                                                                                              \
  } while (0)

ssize_t
pread(int fd, void *buf, size_t n, off_t off)
{
  LOAD(pread);
  FAIL_IF(fd, 'r', -1);
  return REAL(pread)(fd, buf, n, off);
}

ssize_t
pread64(int fd, void *buf, size_t n, off_t off)
{
  LOAD(pread64);
  FAIL_IF(fd, 'r', -1);
  return REAL(pread64)(fd, buf, n, off);
}

ssize_t
preadv(int fd, const struct iovec *iov, int cnt, off_t off)
{
  LOAD(preadv);
  FAIL_IF(fd, 'r', -1);
  return REAL(preadv)(fd, iov, cnt, off);
}

ssize_t
preadv64(int fd, const struct iovec *iov, int cnt, off_t off)
{
  LOAD(preadv64);
  FAIL_IF(fd, 'r', -1);
  return REAL(preadv64)(fd, iov, cnt, off);
}

ssize_t
pwrite(int fd, const void *buf, size_t n, off_t off)
{
  LOAD(pwrite);
  freeze_if_cut();
  FAIL_IF(fd, 'w', -1);
  remember(fd, off, n);
  return REAL(pwrite)(fd, buf, n, off);
}

ssize_t
pwrite64(int fd, const void *buf, size_t n, off_t off)
{
  LOAD(pwrite64);
  freeze_if_cut();
  FAIL_IF(fd, 'w', -1);
  remember(fd, off, n);
  return REAL(pwrite64)(fd, buf, n, off);
}

ssize_t
pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
  LOAD(pwritev);
  freeze_if_cut();
  FAIL_IF(fd, 'w', -1);
  remember(fd, off, iov_len(iov, cnt));
  return REAL(pwritev)(fd, iov, cnt, off);
}

ssize_t
pwritev64(int fd, const struct iovec *iov, int cnt, off_t off)
{
  LOAD(pwritev64);
  freeze_if_cut();
  FAIL_IF(fd, 'w', -1);
  remember(fd, off, iov_len(iov, cnt));
  return REAL(pwritev64)(fd, iov, cnt, off);
}

int
fallocate(int fd, int mode, off_t off, off_t len)
{
  LOAD(fallocate);
  freeze_if_cut();
  FAIL_IF(fd, 'w', -1);
  return REAL(fallocate)(fd, mode, off, len);
}

int
fallocate64(int fd, int mode, off_t off, off_t len)
{
  LOAD(fallocate64);
  freeze_if_cut();
  FAIL_IF(fd, 'w', -1);
  return REAL(fallocate64)(fd, mode, off, len);
}

int
ftruncate(int fd, off_t len)
{
  LOAD(ftruncate);
  freeze_if_cut();
  FAIL_IF(fd, 'w', -1);
  return REAL(ftruncate)(fd, len);
}

int
ftruncate64(int fd, off_t len)
{
  LOAD(ftruncate64);
  freeze_if_cut();
  FAIL_IF(fd, 'w', -1);
  return REAL(ftruncate64)(fd, len);
}

int
fdatasync(int fd)
{
  LOAD(fdatasync);
  freeze_if_cut();
  if (faulty(fd, 's')) {
    if (dropping())
      settle(fd, 0);
    errno = EIO;
    return -1;
  }
  int r = REAL(fdatasync)(fd);
  if (r == 0)
    settle(fd, 1);
  return r;
}

int
fsync(int fd)
{
  LOAD(fsync);
  freeze_if_cut();
  if (faulty(fd, 's')) {
    if (dropping())
      settle(fd, 0);
    errno = EIO;
    return -1;
  }
  int r = REAL(fsync)(fd);
  if (r == 0)
    settle(fd, 1);
  return r;
}

/* ---- FAULT_POWERCUT ---- */

static void *
powercut_thread(void *arg)
{
  const char *path = arg;
  struct timespec ms = {0, 1000 * 1000};

  while (access(path, F_OK) != 0)
    nanosleep(&ms, NULL);
  frozen = 1;
  pthread_mutex_lock(&undo_lock); /* no sync can settle (forget its writes) past this point */
  LOAD(pwrite);
  const char *torn = getenv("FAULT_TORN");
  uint64_t rnd = torn ? strtoull(torn, NULL, 10) * 0x9e3779b97f4a7c15ull + 1 : 0;
  for (struct undo *u = undo_list; u; u = u->next) {
    if (!torn) {
      (void)REAL(pwrite)(u->fd, u->data, u->len, u->off);
      continue;
    }
    /* FAULT_TORN=SEED: each 512-byte sector of the write is put back or not, at random (the
     * disk wrote some sectors of it, not others).  Newest writes first, so a sector ends as
     * one of the contents it had since the last sync. */
    for (size_t k = 0; k < u->len;) {
      size_t end = ((u->off + k) / 512 + 1) * 512 - u->off;
      if (end > u->len)
        end = u->len;
      rnd ^= rnd << 13;
      rnd ^= rnd >> 7;
      rnd ^= rnd << 17;
      if (rnd & 1)
        (void)REAL(pwrite)(u->fd, u->data + k, end - k, u->off + (off_t)k);
      k = end;
    }
  }
  _exit(137);
  return NULL;
}

__attribute__((constructor)) static void
powercut_init(void)
{
  const char *path = getenv("FAULT_POWERCUT");
  pthread_t t;
  pthread_attr_t a;

  if (path == NULL || !dropping())
    return;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&t, &a, powercut_thread, (void *)path) != 0)
    abort();
}
