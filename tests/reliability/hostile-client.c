/* SPDX-License-Identifier: BSD-3-Clause */
/* hostile-client: requests a well-behaved NBD client never sends, and connections that vanish.
 *
 *   hostile-client badreq SOCK EXPORT    out-of-range, wrapping, unaligned, oversized, zero-length
 *                                        requests and unknown flags, with libnbd's client-side
 *                                        checks off (nbd_set_strict_mode(h, 0)); each must fail
 *                                        (or be harmless) and the server must keep serving
 *   hostile-client drop SOCK EXPORT N    N connections that send reads and writes (in the
 *                                        scratch range [32 MiB, 48 MiB)) and close the socket
 *                                        with the requests in flight; every 4th one is a raw
 *                                        socket that sends a partial handshake or garbage
 *   hostile-client names SOCK NAME...    each NAME must be refused (exit 1 if one opens)
 *   hostile-client eio SOCK EXPORT TRIGGER
 *                                        injected EIO (fault-shim.so, switched by writing TRIGGER)
 *                                        reaches the client as EIO on writes, reads and flush;
 *                                        nothing written before is lost; works again after
 *   hostile-client fsyncgate SOCK EXPORT TRIGGER
 *                                        a failed flush whose dirty pages the kernel dropped
 *                                        (FAULT_DROP=1) must never be followed by a flush that
 *                                        succeeds while acknowledged data is missing
 *   hostile-client tls SOCK EXPORT PSKFILE psk|plain|wrongkey
 *                                        TLS-PSK as user alice works; no TLS or a wrong key fails
 *   hostile-client pattern SOCK EXPORT write|check OFFSET LENGTH SEED
 *                                        write (and flush) or check a pattern
 * Exit 0 ok, 1 a failed check (what on stderr), 2 usage/setup error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <libnbd.h>

#define M (1024u * 1024u)

#define FAIL(...)                                                                                  \
  do {                                                                                             \
    fprintf(stderr, "hostile-client: %s:%d: ", __func__, __LINE__);                                \
    fprintf(stderr, __VA_ARGS__);                                                                  \
    fprintf(stderr, "\n");                                                                         \
    exit(1);                                                                                       \
  } while (0)

static struct nbd_handle *
try_connect(const char *sock, const char *name)
{
  struct nbd_handle *h = nbd_create();

  if (h == NULL)
    FAIL("nbd_create: %s", nbd_get_error());
  if (nbd_set_export_name(h, name) < 0 || nbd_connect_unix(h, sock) < 0) {
    nbd_close(h);
    return NULL;
  }
  return h;
}

static struct nbd_handle *
connect_export(const char *sock, const char *name)
{
  struct nbd_handle *h = try_connect(sock, name);

  if (h == NULL)
    FAIL("connect %s: %s", name, nbd_get_error());
  return h;
}

static void
fill(uint8_t *buf, size_t len, uint64_t off, uint64_t seed)
{
  for (size_t i = 0; i < len; i++) {
    uint64_t x = (off + i) / 8 * 0x9e3779b97f4a7c15ull ^ seed;
    buf[i] = (uint8_t)(x >> (8 * ((off + i) % 8)));
  }
}

/* ---- pattern ---- */

static int
cmd_pattern(const char *sock, const char *name, const char *op, uint64_t off, uint64_t len,
            uint64_t seed)
{
  struct nbd_handle *h = connect_export(sock, name);
  uint8_t *want = malloc(len), *got = malloc(len);

  if (want == NULL || got == NULL)
    FAIL("malloc");
  fill(want, len, off, seed);
  if (strcmp(op, "write") == 0) {
    if (nbd_pwrite(h, want, len, off, 0) < 0 || nbd_flush(h, 0) < 0)
      FAIL("write: %s", nbd_get_error());
  } else {
    if (nbd_pread(h, got, len, off, 0) < 0)
      FAIL("read: %s", nbd_get_error());
    for (uint64_t i = 0; i < len; i++)
      if (got[i] != want[i])
        FAIL("%s: byte %" PRIu64 " is 0x%02x, expected 0x%02x", name, off + i, got[i], want[i]);
  }
  nbd_shutdown(h, 0);
  nbd_close(h);
  free(want);
  free(got);
  return 0;
}

/* ---- badreq ---- */

static struct nbd_handle *
lax_connect(const char *sock, const char *name)
{
  struct nbd_handle *h = connect_export(sock, name);

  /* No client-side bounds, alignment, flag, zero-size or payload checks: the server sees it all. */
  if (nbd_set_strict_mode(h, 0) < 0)
    FAIL("nbd_set_strict_mode: %s", nbd_get_error());
  return h;
}

/* After a hostile request: the connection may have been dropped by the server (allowed for a
 * request it cannot parse); the server itself must answer a good read on a new one if so. */
static struct nbd_handle *
still_serving(struct nbd_handle *h, const char *sock, const char *name, const char *what,
              int *dropped)
{
  uint8_t b[4096];

  if (nbd_aio_is_ready(h) && nbd_pread(h, b, sizeof b, 0, 0) == 0)
    return h;
  nbd_close(h);
  (*dropped)++;
  h = lax_connect(sock, name);
  if (nbd_pread(h, b, sizeof b, 0, 0) < 0)
    FAIL("after %s, a new connection cannot read: %s", what, nbd_get_error());
  return h;
}

#define EXPECT_FAIL(call, what)                                                                    \
  do {                                                                                             \
    tried++;                                                                                       \
    if ((call) == 0)                                                                               \
      FAIL("%s succeeded", what);                                                                  \
    h = still_serving(h, sock, name, what, &dropped);                                              \
  } while (0)
#define HARMLESS(call, what)                                                                       \
  do {                                                                                             \
    tried++;                                                                                       \
    (void)(call);                                                                                  \
    h = still_serving(h, sock, name, what, &dropped);                                              \
  } while (0)

static int
extent_cb(void *user, const char *metacontext, uint64_t offset, uint32_t *entries, size_t nr,
          int *error)
{
  (void)user;
  (void)metacontext;
  (void)offset;
  (void)entries;
  (void)nr;
  (void)error;
  return 0;
}

static int
cmd_badreq(const char *sock, const char *name)
{
  struct nbd_handle *h = lax_connect(sock, name);
  int64_t size = nbd_get_size(h);
  uint64_t s = (uint64_t)size;
  uint8_t *big = calloc(1, 64 * M + 4096), before[4096];
  int tried = 0, dropped = 0;
  nbd_extent_callback ecb = {.callback = extent_cb};

  if (big == NULL)
    FAIL("calloc");
  if (nbd_pread(h, before, sizeof before, s - sizeof before, 0) < 0)
    FAIL("read the end: %s", nbd_get_error());

  /* Past the end, straddling it, wrapping around 2^64. */
  EXPECT_FAIL(nbd_pread(h, big, 512, s, 0), "read at the size");
  EXPECT_FAIL(nbd_pread(h, big, 2, s - 1, 0), "read across the end");
  EXPECT_FAIL(nbd_pread(h, big, 4096, UINT64_MAX - 1000, 0), "read wrapping past 2^64");
  EXPECT_FAIL(nbd_pread(h, big, 4096, INT64_MAX, 0), "read at 2^63-1");
  EXPECT_FAIL(nbd_pwrite(h, "xy", 2, s - 1, 0), "write across the end");
  EXPECT_FAIL(nbd_pwrite(h, big, 4096, UINT64_MAX - 100, 0), "write wrapping past 2^64");
  EXPECT_FAIL(nbd_pwrite(h, big, 512, s, LIBNBD_CMD_FLAG_FUA), "FUA write at the size");
  EXPECT_FAIL(nbd_zero(h, 1 * M, s - 4096, 0), "zero across the end");
  EXPECT_FAIL(nbd_zero(h, 4096, UINT64_MAX - 2048, 0), "zero wrapping past 2^64");
  EXPECT_FAIL(nbd_trim(h, 8192, s - 4096, 0), "trim across the end");
  EXPECT_FAIL(nbd_trim(h, UINT32_MAX, UINT64_MAX - 10, 0), "trim wrapping past 2^64");
  EXPECT_FAIL(nbd_cache(h, 8192, s, 0), "cache past the end");
  EXPECT_FAIL(nbd_block_status(h, 4096, s + 4096, ecb, 0), "block status past the end");
  HARMLESS(nbd_block_status(h, UINT32_MAX, 0, ecb, 0), "block status of 4 GiB");
  /* Oversized: at and past nbdkit's 64 MiB request limit (a write sends its payload whatever the
   * server thinks of it; the server must skip or drop it, never read it as requests). */
  HARMLESS(nbd_pread(h, big, 64 * M, 0, 0), "read of 64 MiB");
  EXPECT_FAIL(nbd_pwrite(h, big, 64 * M, 32 * M, 0), "write of 64 MiB past the end");
  HARMLESS(nbd_pread(h, big, 64 * M + 4096, 0, 0), "read of 64 MiB + 4 KiB");
  EXPECT_FAIL(nbd_pwrite(h, big, 64 * M + 4096, 32 * M, 0), "write of 64 MiB + 4 KiB");
  /* Zero-length requests (the NBD spec leaves them unspecified; they must not hurt). */
  HARMLESS(nbd_pread(h, big, 0, 4096, 0), "zero-length read");
  HARMLESS(nbd_pwrite(h, big, 0, 32 * M, 0), "zero-length write");
  HARMLESS(nbd_zero(h, 0, 32 * M, 0), "zero-length zero");
  HARMLESS(nbd_trim(h, 0, 32 * M, 0), "zero-length trim");
  HARMLESS(nbd_pread(h, big, 0, s + 4096, 0), "zero-length read past the end");
  /* Unaligned, odd sizes, in the scratch range: allowed (minimum block size 1). */
  HARMLESS(nbd_pwrite(h, big, 4097, 32 * M + 4095, 0), "unaligned write");
  HARMLESS(nbd_zero(h, 3, 32 * M + 1, LIBNBD_CMD_FLAG_NO_HOLE), "3-byte zero");
  HARMLESS(nbd_trim(h, 5000, 32 * M + 7, 0), "unaligned trim");
  /* Flags that do not belong to the command, or that no spec defines. */
  HARMLESS(nbd_pread(h, big, 4096, 0, LIBNBD_CMD_FLAG_FUA), "read with FUA");
  HARMLESS(nbd_pread(h, big, 4096, 0, 1u << 12), "read with an undefined flag");
  HARMLESS(nbd_pwrite(h, big, 4096, 32 * M, 1u << 13), "write with an undefined flag");
  HARMLESS(nbd_flush(h, LIBNBD_CMD_FLAG_FUA | LIBNBD_CMD_FLAG_NO_HOLE), "flush with flags");
  HARMLESS(nbd_zero(h, 4096, 32 * M, LIBNBD_CMD_FLAG_FAST_ZERO | LIBNBD_CMD_FLAG_DF),
           "zero with DF");

  /* The last bytes of the disk survived the writes that straddled the end. */
  if (nbd_pread(h, big, sizeof before, s - sizeof before, 0) < 0)
    FAIL("read the end: %s", nbd_get_error());
  if (memcmp(big, before, sizeof before) != 0)
    FAIL("a refused request changed the last 4 KiB of the disk");
  nbd_shutdown(h, 0);
  nbd_close(h);
  free(big);
  printf("badreq: %d hostile requests, %d connections dropped by the server\n", tried, dropped);
  return 0;
}

/* ---- drop ---- */

/* A raw unix socket that misbehaves during the handshake. */
static void
raw_garbage(const char *sock, unsigned kind)
{
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  char buf[256];

  if (fd < 0)
    FAIL("socket: %m");
  snprintf(a.sun_path, sizeof a.sun_path, "%s", sock);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
    FAIL("connect %s: %m (is the server down?)", sock);
  switch (kind % 4) {
  case 0: /* nothing: close at once */
    break;
  case 1: /* read the greeting, answer half of the client flags */
    (void)!read(fd, buf, 18);
    (void)!write(fd, "\0", 1);
    break;
  case 2: /* flags, then an option header claiming a 4 GiB option, then close */
    (void)!read(fd, buf, 18);
    (void)!write(fd, "\0\0\0\3IHAVEOPT\0\0\0\1\xff\xff\xff\xff", 20);
    break;
  case 3: /* pure garbage */
    memset(buf, 0xa5, sizeof buf);
    (void)!write(fd, buf, sizeof buf);
    break;
  }
  close(fd);
}

static int
cmd_drop(const char *sock, const char *name, int n)
{
  static uint8_t buf[8][1 * M];
  int raw = 0, mid = 0;

  for (int i = 0; i < n; i++) {
    if (i % 4 == 3) {
      raw_garbage(sock, (unsigned)(i / 4));
      raw++;
      continue;
    }
    struct nbd_handle *h = connect_export(sock, name);
    /* Up to 8 reads and writes of 1 MiB (libnbd sends them as soon as the socket takes them),
     * then close with every reply unread: the server finds the peer gone mid-request. */
    for (int k = 0; k < 1 + i % 8; k++) {
      uint64_t off = 32 * M + (uint64_t)((i * 7 + k) % 15) * M;
      if (k % 2)
        (void)nbd_aio_pwrite(h, buf[k], sizeof buf[k], off, NBD_NULL_COMPLETION, 0);
      else
        (void)nbd_aio_pread(h, buf[k], sizeof buf[k], off, NBD_NULL_COMPLETION, 0);
    }
    /* Let some requests reach the server (a few loop turns of the state machine), not all. */
    for (int k = 0; k < i % 3; k++)
      (void)nbd_poll(h, 0);
    nbd_close(h);
    mid++;
  }
  printf("drop: %d connections closed mid-request, %d raw sockets with a broken handshake\n", mid,
         raw);
  return 0;
}

/* ---- names ---- */

static int
cmd_names(const char *sock, int n, char **names)
{
  for (int i = 0; i < n; i++) {
    struct nbd_handle *h = try_connect(sock, names[i]);
    if (h != NULL)
      FAIL("export name '%s' (%zu bytes) was served", names[i], strlen(names[i]));
  }
  printf("names: %d hostile names refused\n", n);
  return 0;
}

/* ---- eio ---- */

static void
trigger(const char *path, const char *mode)
{
  if (mode == NULL) {
    if (unlink(path) < 0 && errno != ENOENT)
      FAIL("unlink %s: %m", path);
    return;
  }
  FILE *f = fopen(path, "w");
  if (f == NULL || fputs(mode, f) < 0 || fclose(f) != 0)
    FAIL("write %s: %m", path);
}

#define EXPECT_EIO(call, what)                                                                     \
  do {                                                                                             \
    if ((call) == 0)                                                                               \
      FAIL("%s succeeded with the fault on", what);                                                \
    if (nbd_get_errno() != EIO)                                                                    \
      FAIL("%s failed with %s, expected EIO (%s)", what, strerror(nbd_get_errno()),                \
           nbd_get_error());                                                                       \
  } while (0)

static void
expect_pattern(struct nbd_handle *h, uint64_t off, uint64_t len, uint64_t seed, const char *what)
{
  uint8_t *want = malloc(len), *got = malloc(len);

  if (want == NULL || got == NULL)
    FAIL("malloc");
  fill(want, len, off, seed);
  if (nbd_pread(h, got, len, off, 0) < 0)
    FAIL("%s: read: %s", what, nbd_get_error());
  for (uint64_t i = 0; i < len; i++)
    if (got[i] != want[i])
      FAIL("%s: byte %" PRIu64 " is 0x%02x, expected 0x%02x", what, off + i, got[i], want[i]);
  free(want);
  free(got);
}

static void
put_pattern(struct nbd_handle *h, uint64_t off, uint64_t len, uint64_t seed)
{
  uint8_t *b = malloc(len);

  if (b == NULL)
    FAIL("malloc");
  fill(b, len, off, seed);
  if (nbd_pwrite(h, b, len, off, 0) < 0)
    FAIL("write at %" PRIu64 ": %s", off, nbd_get_error());
  free(b);
}

static int
cmd_eio(const char *sock, const char *name, const char *tpath)
{
  struct nbd_handle *h = connect_export(sock, name);
  uint8_t b[64 * 1024];

  trigger(tpath, NULL);
  /* A: flushed before any fault.  B: written, not yet flushed, when the faults come. */
  put_pattern(h, 0, 1 * M, 0xa);
  if (nbd_flush(h, 0) < 0)
    FAIL("flush: %s", nbd_get_error());
  put_pattern(h, 1 * M, 1 * M, 0xb);

  /* Writes: a new allocation, an in-place overwrite of A, a copy-up from the template. */
  trigger(tpath, "w");
  memset(b, 0xee, sizeof b);
  EXPECT_EIO(nbd_pwrite(h, b, sizeof b, 4 * M, 0), "write (new cluster)");
  EXPECT_EIO(nbd_pwrite(h, b, 4096, 8192, 0), "write (in place)");
  EXPECT_EIO(nbd_pwrite(h, b, 1000, 2 * M + 100, 0), "write (copy-up from the template)");
  EXPECT_EIO(nbd_pwrite(h, b, sizeof b, 6 * M, LIBNBD_CMD_FLAG_FUA), "FUA write");

  /* Reads of data in the clone's layer (the template image is not faulted: it still reads). */
  trigger(tpath, "r");
  EXPECT_EIO(nbd_pread(h, b, sizeof b, 0, 0), "read of the clone's data");
  if (nbd_pread(h, b, 4096, 2 * M, 0) < 0)
    FAIL("a read of the template (not faulted) failed: %s", nbd_get_error());
  for (int i = 0; i < 4096; i++)
    if (b[i] != 0x22)
      FAIL("template data at 2 MiB reads 0x%02x during the fault", b[i]);

  /* Flush: the data sync fails.  Then, fault off, the flush is retried: it may succeed (B is
   * then durable and must read back), or the layer may refuse until it is reopened (a failed
   * fdatasync may have dropped B's pages: overlay/ makes the failure final, "fsyncgate"); then
   * new connections work once the server has reopened the chain, and B reads as old or new. */
  trigger(tpath, "s");
  EXPECT_EIO(nbd_flush(h, 0), "flush");

  trigger(tpath, NULL);
  bool sticky = nbd_flush(h, 0) < 0;
  if (sticky) {
    int tries = 0;
    nbd_close(h);
    for (;;) {
      static uint8_t c[64 * 1024];
      h = connect_export(sock, name);
      fill(c, sizeof c, 4 * M, 0xc);
      if (nbd_pwrite(h, c, sizeof c, 4 * M, 0) == 0 && nbd_flush(h, 0) == 0)
        break;
      if (++tries == 50)
        FAIL("new connections after the failed flush cannot write and flush: %s", nbd_get_error());
      nbd_close(h);
      usleep(100 * 1000);
    }
    /* B was never flushed: each 4 KiB reads as the template (a hole: zeroes) or as B. */
    static uint8_t want[1 * M], got[1 * M];
    fill(want, sizeof want, 1 * M, 0xb);
    if (nbd_pread(h, got, sizeof got, 1 * M, 0) < 0)
      FAIL("read B: %s", nbd_get_error());
    for (size_t blk = 0; blk < sizeof got; blk += 4096) {
      bool zero = true;
      for (size_t i = 0; i < 4096 && zero; i++)
        zero = got[blk + i] == 0;
      if (!zero && memcmp(got + blk, want + blk, 4096) != 0)
        FAIL("B at %zu: neither the old (zero) nor the new contents", 1 * M + blk);
    }
  } else {
    expect_pattern(h, 1 * M, 1 * M, 0xb, "B (written before the faults, flushed after)");
  }
  expect_pattern(h, 0, 1 * M, 0xa, "A (flushed before the faults)");
  /* The export works again: the writes that failed now succeed. */
  put_pattern(h, 4 * M, 64 * 1024, 0xc);
  put_pattern(h, 2 * M + 100, 1000, 0xd);
  if (nbd_flush(h, 0) < 0)
    FAIL("flush: %s", nbd_get_error());
  expect_pattern(h, 4 * M, 64 * 1024, 0xc, "C (written after the faults)");
  expect_pattern(h, 2 * M + 100, 1000, 0xd, "D (copy-up after the faults)");
  nbd_shutdown(h, 0);
  nbd_close(h);
  printf("%s\n", sticky ? "sticky" : "retried");
  fprintf(stderr, "eio: writes, reads and a flush failed with EIO; nothing lost; works again\n");
  return 0;
}

/* After a failed data sync the kernel may have dropped the dirty pages (Linux since 4.13 marks
 * them clean and reports the error once; fault-shim.so with FAULT_DROP=1 does the same).  So a
 * later flush may only succeed if every write acknowledged before it is really durable: either
 * the writer rewrites them, or it keeps failing flushes until the export is reopened from its
 * durable state.  Prints "sticky" or "rewritten" for the path the server took. */
static int
cmd_fsyncgate(const char *sock, const char *name, const char *tpath)
{
  struct nbd_handle *h = connect_export(sock, name);
  int r;

  trigger(tpath, NULL);
  put_pattern(h, 0, 1 * M, 0xa);
  if (nbd_flush(h, 0) < 0)
    FAIL("flush: %s", nbd_get_error());
  put_pattern(h, 8 * M, 1 * M, 0xb); /* new clusters, not yet durable */
  trigger(tpath, "s");
  EXPECT_EIO(nbd_flush(h, 0), "flush");
  trigger(tpath, NULL);
  r = nbd_flush(h, 0);
  if (r == 0) {
    /* The server claims B durable now: it must be there, now and after a restart. */
    expect_pattern(h, 8 * M, 1 * M, 0xb,
                   "B (acknowledged, then a flush failed, a retry succeeded)");
    printf("rewritten\n");
  } else {
    /* Sticky failure: fine, but the export must work again from a new connection, once the
     * server has closed the failed chain (it does so shortly after the last connection goes). */
    int tries = 0;
    nbd_close(h);
    for (;;) {
      static uint8_t c[64 * 1024];
      h = connect_export(sock, name);
      fill(c, sizeof c, 4 * M, 0xc);
      if (nbd_pwrite(h, c, sizeof c, 4 * M, 0) == 0 && nbd_flush(h, 0) == 0)
        break;
      if (++tries == 50)
        FAIL("new connections after the failed flush cannot flush: %s", nbd_get_error());
      nbd_close(h);
      usleep(100 * 1000);
    }
    printf("sticky\n");
  }
  expect_pattern(h, 0, 1 * M, 0xa, "A (flushed before the fault)");
  nbd_shutdown(h, 0);
  nbd_close(h);
  return 0;
}

/* TLS with a pre-shared key: MODE "psk" must connect and read back a write; "plain" (no TLS)
 * and "wrongkey" (a PSK file with another key) must be refused. */
static int
cmd_tls(const char *sock, const char *name, const char *pskfile, const char *mode)
{
  struct nbd_handle *h = nbd_create();
  bool want_ok = strcmp(mode, "psk") == 0;
  uint8_t b[4096], r[4096];

  if (h == NULL)
    FAIL("nbd_create: %s", nbd_get_error());
  if (strcmp(mode, "plain") != 0 &&
      (nbd_set_tls(h, LIBNBD_TLS_REQUIRE) < 0 || nbd_set_tls_username(h, "alice") < 0 ||
       nbd_set_tls_psk_file(h, pskfile) < 0))
    FAIL("tls setup: %s", nbd_get_error());
  if (nbd_set_export_name(h, name) < 0)
    FAIL("%s", nbd_get_error());
  if (nbd_connect_unix(h, sock) < 0) {
    if (want_ok)
      FAIL("TLS-PSK connection refused: %s", nbd_get_error());
    printf("tls: %s client refused: %s\n", mode, nbd_get_error());
    nbd_close(h);
    return 0;
  }
  if (!want_ok)
    FAIL("a %s client was served by a --tls=require server", mode);
  if (nbd_get_tls_negotiated(h) != 1)
    FAIL("connected without TLS");
  fill(b, sizeof b, 40 * M, 0x715);
  if (nbd_pwrite(h, b, sizeof b, 40 * M, LIBNBD_CMD_FLAG_FUA) < 0 ||
      nbd_pread(h, r, sizeof r, 40 * M, 0) < 0)
    FAIL("I/O over TLS: %s", nbd_get_error());
  if (memcmp(b, r, sizeof b) != 0)
    FAIL("read over TLS differs from the write");
  nbd_shutdown(h, 0);
  nbd_close(h);
  printf("tls: PSK client wrote and read back over TLS\n");
  return 0;
}

int
main(int argc, char **argv)
{
  if (argc == 6 && strcmp(argv[1], "tls") == 0)
    return cmd_tls(argv[2], argv[3], argv[4], argv[5]);
  if (argc == 5 && strcmp(argv[1], "fsyncgate") == 0)
    return cmd_fsyncgate(argv[2], argv[3], argv[4]);
  if (argc == 4 && strcmp(argv[1], "badreq") == 0)
    return cmd_badreq(argv[2], argv[3]);
  if (argc == 5 && strcmp(argv[1], "drop") == 0)
    return cmd_drop(argv[2], argv[3], atoi(argv[4]));
  if (argc >= 3 && strcmp(argv[1], "names") == 0)
    return cmd_names(argv[2], argc - 3, argv + 3);
  if (argc == 5 && strcmp(argv[1], "eio") == 0)
    return cmd_eio(argv[2], argv[3], argv[4]);
  if (argc == 8 && strcmp(argv[1], "pattern") == 0)
    return cmd_pattern(argv[2], argv[3], argv[4], strtoull(argv[5], NULL, 0),
                       strtoull(argv[6], NULL, 0), strtoull(argv[7], NULL, 0));
  fprintf(stderr, "usage: see the comment at the top of hostile-client.c\n");
  return 2;
}
