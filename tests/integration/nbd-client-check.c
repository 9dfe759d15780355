/* SPDX-License-Identifier: BSD-3-Clause */
/* nbd-client-check: a libnbd client for the integration tests.
 *
 * It checks what shell tools can't check precisely: the errno a request fails with, block
 * status flags after zero/trim, multi-conn visibility between two connections, and export
 * names made of arbitrary bytes.  Each subcommand exits 0 on success, 1 on a failed check
 * (after printing what and where), 2 on a usage error.
 *
 *   nbd-client-check rw SOCK EXPORT        read/write/FUA/zero/fast-zero/trim/block-status/flush
 *   nbd-client-check multiconn SOCK EXPORT write on one connection, flush, read on another
 *   nbd-client-check readonly SOCK EXPORT  the export is read-only and writes fail with EPERM
 *   nbd-client-check open SOCK NAME        exit 0 if NAME opens, 3 if the server refuses it
 *   nbd-client-check hold SOCK NAME SECS   keep NAME open for SECS seconds (prints "open")
 *   nbd-client-check enospc SOCK NAME FILE fill NAME until ENOSPC, check, delete FILE, write again
 *   nbd-client-check list SOCK             print the exports, one "NAME<TAB>DESCRIPTION" a line
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libnbd.h>

#define FAIL(...)                                                                                  \
  do {                                                                                             \
    fprintf(stderr, "nbd-client-check: %s:%d: ", __func__, __LINE__);                              \
    fprintf(stderr, __VA_ARGS__);                                                                  \
    fprintf(stderr, "\n");                                                                         \
    exit(1);                                                                                       \
  } while (0)

/* Fail with libnbd's message unless the call succeeded. */
#define CHECK(call)                                                                                \
  do {                                                                                             \
    if ((call) == -1)                                                                              \
      FAIL("%s: %s", #call, nbd_get_error());                                                      \
  } while (0)

static struct nbd_handle *
connect_export(const char *sock, const char *name, bool meta)
{
  struct nbd_handle *h = nbd_create();

  if (h == NULL)
    FAIL("nbd_create: %s", nbd_get_error());
  CHECK(nbd_set_export_name(h, name));
  if (meta)
    CHECK(nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION));
  CHECK(nbd_connect_unix(h, sock));
  return h;
}

static void
fill(unsigned char *buf, size_t len, unsigned seed)
{
  size_t i;

  for (i = 0; i < len; i++)
    buf[i] = (unsigned char)(seed * 31 + i * 7 + (i >> 9));
}

static void
expect_bytes(struct nbd_handle *h, uint64_t off, size_t len, const unsigned char *want,
             const char *what)
{
  unsigned char *got = malloc(len);
  size_t i;

  if (got == NULL)
    FAIL("malloc");
  CHECK(nbd_pread(h, got, len, off, 0));
  for (i = 0; i < len; i++)
    if (got[i] != want[i])
      FAIL("%s: byte at %" PRIu64 " is 0x%02x, expected 0x%02x", what, off + i, got[i], want[i]);
  free(got);
}

static void
expect_zero(struct nbd_handle *h, uint64_t off, size_t len, const char *what)
{
  unsigned char *zero = calloc(1, len);

  if (zero == NULL)
    FAIL("calloc");
  expect_bytes(h, off, len, zero, what);
  free(zero);
}

/* Block status: collects whether every byte of [off, off+len) has LIBNBD_STATE_ZERO. */
struct bs_result {
  uint64_t start, end; /* the range asked about */
  uint64_t covered;    /* bytes reported */
  bool all_zero;
};

static int
bs_callback(void *opaque, const char *metacontext, uint64_t offset, uint32_t *entries,
            size_t nr_entries, int *error)
{
  struct bs_result *r = opaque;
  size_t i;

  (void)error;
  if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  for (i = 0; i + 1 < nr_entries; i += 2) {
    uint64_t len = entries[i];
    uint32_t flags = entries[i + 1];

    if (offset < r->end && !(flags & LIBNBD_STATE_ZERO))
      r->all_zero = false;
    offset += len;
    r->covered += len;
  }
  return 0;
}

static void
expect_status_zero(struct nbd_handle *h, uint64_t off, uint64_t len, const char *what)
{
  uint64_t pos = off;

  /* The server may answer with less than asked; walk until the range is covered. */
  while (pos < off + len) {
    struct bs_result r = {pos, off + len, 0, true};

    CHECK(nbd_block_status(h, off + len - pos, pos,
                           (nbd_extent_callback){.callback = bs_callback, .user_data = &r}, 0));
    if (!r.all_zero)
      FAIL("%s: block status near %" PRIu64 " does not report zero", what, pos);
    if (r.covered == 0)
      FAIL("%s: block status made no progress at %" PRIu64, what, pos);
    pos += r.covered;
  }
}

static int
cmd_rw(const char *sock, const char *name)
{
  struct nbd_handle *h = connect_export(sock, name, true);
  enum { LEN = 300 * 1024 };
  unsigned char *buf = malloc(LEN);
  int64_t size;

  if (buf == NULL)
    FAIL("malloc");
  size = nbd_get_size(h);
  if (size < 4 * 1024 * 1024)
    FAIL("export %s is %" PRId64 " bytes; the test needs at least 4 MiB", name, size);
  if (nbd_is_read_only(h) != 0)
    FAIL("export %s should be writable", name);
  if (nbd_can_flush(h) != 1 || nbd_can_fua(h) != 1 || nbd_can_trim(h) != 1 ||
      nbd_can_zero(h) != 1 || nbd_can_fast_zero(h) != 1 || nbd_can_multi_conn(h) != 1 ||
      nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1)
    FAIL("missing capability: flush=%d fua=%d trim=%d zero=%d fast_zero=%d multi_conn=%d "
         "base:allocation=%d",
         nbd_can_flush(h), nbd_can_fua(h), nbd_can_trim(h), nbd_can_zero(h), nbd_can_fast_zero(h),
         nbd_can_multi_conn(h), nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION));
  if (nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM) != 1)
    FAIL("minimum block size %" PRId64 ", expected 1", nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM));
  if (nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED) < 512)
    FAIL("preferred block size %" PRId64, nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED));

  /* An unaligned write across 4 KiB sub-cluster and 128 KiB cluster boundaries. */
  fill(buf, LEN, 1);
  CHECK(nbd_pwrite(h, buf, LEN, 100 * 1024 + 123, 0));
  expect_bytes(h, 100 * 1024 + 123, LEN, buf, "pwrite");

  /* FUA write. */
  fill(buf, 8192, 2);
  CHECK(nbd_pwrite(h, buf, 8192, 1024 * 1024 - 4096, LIBNBD_CMD_FLAG_FUA));
  expect_bytes(h, 1024 * 1024 - 4096, 8192, buf, "pwrite FUA");

  /* Write zeroes: plain (NO_HOLE: allocated zeroes), may-trim, fast. */
  CHECK(nbd_zero(h, 64 * 1024, 100 * 1024 + 4096, LIBNBD_CMD_FLAG_NO_HOLE));
  expect_zero(h, 100 * 1024 + 4096, 64 * 1024, "zero NO_HOLE");
  CHECK(nbd_zero(h, 200 * 1024, 2 * 1024 * 1024, 0));
  expect_zero(h, 2 * 1024 * 1024, 200 * 1024, "zero");
  expect_status_zero(h, 2 * 1024 * 1024, 200 * 1024, "zero");
  CHECK(nbd_zero(h, 128 * 1024, 2560 * 1024, LIBNBD_CMD_FLAG_FAST_ZERO | LIBNBD_CMD_FLAG_FUA));
  expect_zero(h, 2560 * 1024, 128 * 1024, "fast zero");
  /* Unaligned zero: the bytes around it keep their data. */
  fill(buf, LEN, 3);
  CHECK(nbd_pwrite(h, buf, 16384, 3 * 1024 * 1024, 0));
  CHECK(nbd_zero(h, 5000, 3 * 1024 * 1024 + 1000, 0));
  expect_bytes(h, 3 * 1024 * 1024, 1000, buf, "before unaligned zero");
  expect_zero(h, 3 * 1024 * 1024 + 1000, 5000, "unaligned zero");
  expect_bytes(h, 3 * 1024 * 1024 + 6000, 16384 - 6000, buf + 6000, "after unaligned zero");

  /* Trim in a clone must read back as zeroes, never as the template below. */
  CHECK(nbd_trim(h, 256 * 1024, 0, 0));
  expect_zero(h, 0, 256 * 1024, "trim");
  expect_status_zero(h, 0, 256 * 1024, "trim");
  CHECK(nbd_trim(h, 4096, 512 * 1024, LIBNBD_CMD_FLAG_FUA));
  expect_zero(h, 512 * 1024, 4096, "trim FUA");

  /* The last byte of the export. */
  buf[0] = 0x5a;
  CHECK(nbd_pwrite(h, buf, 1, (uint64_t)size - 1, 0));
  expect_bytes(h, (uint64_t)size - 1, 1, buf, "last byte");

  CHECK(nbd_cache(h, 1024 * 1024, 0, 0));
  CHECK(nbd_flush(h, 0));
  CHECK(nbd_shutdown(h, 0));
  nbd_close(h);
  free(buf);
  return 0;
}

static int
cmd_multiconn(const char *sock, const char *name)
{
  struct nbd_handle *a = connect_export(sock, name, false);
  struct nbd_handle *b = connect_export(sock, name, false);
  unsigned char buf[65536];
  int round;

  if (nbd_can_multi_conn(a) != 1 || nbd_can_multi_conn(b) != 1)
    FAIL("export %s does not advertise multi-conn", name);
  for (round = 0; round < 8; round++) {
    struct nbd_handle *w = round % 2 ? b : a, *r = round % 2 ? a : b;
    uint64_t off = (uint64_t)round * 200 * 1024 + 777;

    fill(buf, sizeof buf, 10 + (unsigned)round);
    CHECK(nbd_pwrite(w, buf, sizeof buf, off, 0));
    CHECK(nbd_flush(w, 0));
    expect_bytes(r, off, sizeof buf, buf, "read on the other connection");
  }
  /* A zero on one connection is seen on the other too. */
  CHECK(nbd_zero(a, 4096, 777, 0));
  CHECK(nbd_flush(a, 0));
  expect_zero(b, 777, 4096, "zero seen on the other connection");
  CHECK(nbd_shutdown(a, 0));
  CHECK(nbd_shutdown(b, 0));
  nbd_close(a);
  nbd_close(b);
  return 0;
}

static int
cmd_readonly(const char *sock, const char *name)
{
  struct nbd_handle *h = connect_export(sock, name, false);
  unsigned char buf[4096];

  if (nbd_is_read_only(h) != 1)
    FAIL("export %s should be read-only", name);
  CHECK(nbd_pread(h, buf, sizeof buf, 0, 0));
  /* Let the requests reach the server: libnbd would refuse them itself otherwise. */
  CHECK(nbd_set_strict_mode(h, 0));
  memset(buf, 0xee, sizeof buf);
  if (nbd_pwrite(h, buf, sizeof buf, 0, 0) != -1)
    FAIL("pwrite to read-only export %s succeeded", name);
  if (nbd_get_errno() != EPERM)
    FAIL("pwrite to %s: errno %d (%s), expected EPERM", name, nbd_get_errno(), nbd_get_error());
  if (nbd_zero(h, 4096, 0, 0) != -1 || nbd_get_errno() != EPERM)
    FAIL("zero to read-only export %s: expected EPERM, got %s", name, nbd_get_error());
  if (nbd_trim(h, 4096, 0, 0) != -1 || nbd_get_errno() != EPERM)
    FAIL("trim to read-only export %s: expected EPERM, got %s", name, nbd_get_error());
  CHECK(nbd_shutdown(h, 0));
  nbd_close(h);
  return 0;
}

static int
cmd_open(const char *sock, const char *name)
{
  struct nbd_handle *h = nbd_create();
  int r;

  if (h == NULL)
    FAIL("nbd_create: %s", nbd_get_error());
  /* Names that are not valid UTF-8 or that libnbd would reject must still reach the server. */
  CHECK(nbd_set_export_name(h, name));
  r = nbd_connect_unix(h, sock);
  if (r == -1) {
    printf("refused: %s\n", nbd_get_error());
    nbd_close(h);
    return 3;
  }
  printf("opened: size %" PRId64 "\n", nbd_get_size(h));
  nbd_shutdown(h, 0);
  nbd_close(h);
  return 0;
}

static int
cmd_hold(const char *sock, const char *name, const char *secs)
{
  struct nbd_handle *h = connect_export(sock, name, false);

  printf("open\n");
  fflush(stdout);
  sleep((unsigned)atoi(secs));
  nbd_shutdown(h, 0);
  nbd_close(h);
  return 0;
}

/* A client that is evicted (snapshot revert --force): write 0x63 and flush, create DIR/ready,
 * wait for DIR/go, then write 0x64 and read, printing "write ok" or "write failed ERRNO" and the
 * same for the read.  The connection must stay usable as far as the protocol goes. */
static int
cmd_evictee(const char *sock, const char *name, const char *dir)
{
  struct nbd_handle *h = connect_export(sock, name, false);
  char buf[4096], path[4096];
  FILE *f;

  memset(buf, 0x63, sizeof buf);
  CHECK(nbd_pwrite(h, buf, sizeof buf, 0, 0));
  CHECK(nbd_flush(h, 0));
  snprintf(path, sizeof path, "%s/ready", dir);
  if ((f = fopen(path, "w")) == NULL)
    FAIL("fopen ready");
  fclose(f);
  snprintf(path, sizeof path, "%s/go", dir);
  while (access(path, F_OK) != 0)
    usleep(20000);
  memset(buf, 0x64, sizeof buf);
  if (nbd_pwrite(h, buf, sizeof buf, 0, 0) < 0)
    printf("write failed %d\n", nbd_get_errno());
  else
    printf("write ok\n");
  if (nbd_pread(h, buf, sizeof buf, 0, 0) < 0)
    printf("read failed %d\n", nbd_get_errno());
  else
    printf("read ok\n");
  nbd_shutdown(h, 0);
  nbd_close(h);
  return 0;
}

/* Fill the export until the server runs out of space: the failing write must report ENOSPC,
 * everything written before it must still read back, and after `filler` is deleted (space is
 * back) the same write must succeed. */
static int
cmd_enospc(const char *sock, const char *name, const char *filler)
{
  struct nbd_handle *h = connect_export(sock, name, false);
  enum { CHUNK = 1024 * 1024 };
  unsigned char *buf = malloc(CHUNK), *want = malloc(CHUNK);
  uint64_t off, end, size;
  int err = 0;

  if (buf == NULL || want == NULL)
    FAIL("malloc");
  size = (uint64_t)nbd_get_size(h);
  fill(buf, CHUNK, 100);
  CHECK(nbd_pwrite(h, buf, CHUNK, 0, 0));
  CHECK(nbd_flush(h, 0));

  for (off = CHUNK; off + CHUNK <= size; off += CHUNK) {
    fill(buf, CHUNK, (unsigned)(off / CHUNK) + 100);
    if (nbd_pwrite(h, buf, CHUNK, off, 0) == -1) {
      err = nbd_get_errno();
      break;
    }
  }
  if (off + CHUNK > size)
    FAIL("wrote all %" PRIu64 " bytes of %s without running out of space", size, name);
  if (err != ENOSPC)
    FAIL("write at %" PRIu64 ": errno %d (%s), expected ENOSPC", off, err, nbd_get_error());
  printf("ENOSPC after %" PRIu64 " MiB\n", off / CHUNK);
  end = off;

  /* Nothing already written is lost (flush may fail while the disk is full; that's allowed). */
  for (off = 0; off < end; off += CHUNK) {
    fill(want, CHUNK, (unsigned)(off / CHUNK) + 100);
    expect_bytes(h, off, CHUNK, want, "data written before ENOSPC");
  }

  /* Space comes back: the export works again. */
  if (unlink(filler) == -1)
    FAIL("unlink %s: %s", filler, strerror(errno));
  fill(buf, CHUNK, (unsigned)(end / CHUNK) + 100);
  CHECK(nbd_pwrite(h, buf, CHUNK, end, 0));
  CHECK(nbd_flush(h, 0));
  for (off = 0; off <= end; off += CHUNK) {
    fill(want, CHUNK, (unsigned)(off / CHUNK) + 100);
    expect_bytes(h, off, CHUNK, want, "data after space came back");
  }
  CHECK(nbd_shutdown(h, 0));
  nbd_close(h);
  free(buf);
  free(want);
  return 0;
}

static int
list_callback(void *opaque, const char *name, const char *description)
{
  (void)opaque;
  printf("%s\t%s\n", name, description);
  return 0;
}

static int
cmd_list(const char *sock)
{
  struct nbd_handle *h = nbd_create();

  if (h == NULL)
    FAIL("nbd_create: %s", nbd_get_error());
  CHECK(nbd_set_opt_mode(h, true));
  CHECK(nbd_connect_unix(h, sock));
  CHECK(nbd_opt_list(h, (nbd_list_callback){.callback = list_callback}));
  CHECK(nbd_opt_abort(h));
  nbd_close(h);
  return 0;
}

int
main(int argc, char **argv)
{
  if (argc == 4 && strcmp(argv[1], "rw") == 0)
    return cmd_rw(argv[2], argv[3]);
  if (argc == 4 && strcmp(argv[1], "multiconn") == 0)
    return cmd_multiconn(argv[2], argv[3]);
  if (argc == 4 && strcmp(argv[1], "readonly") == 0)
    return cmd_readonly(argv[2], argv[3]);
  if (argc == 4 && strcmp(argv[1], "open") == 0)
    return cmd_open(argv[2], argv[3]);
  if (argc == 5 && strcmp(argv[1], "enospc") == 0)
    return cmd_enospc(argv[2], argv[3], argv[4]);
  if (argc == 5 && strcmp(argv[1], "hold") == 0)
    return cmd_hold(argv[2], argv[3], argv[4]);
  if (argc == 5 && strcmp(argv[1], "evictee") == 0)
    return cmd_evictee(argv[2], argv[3], argv[4]);
  if (argc == 3 && strcmp(argv[1], "list") == 0)
    return cmd_list(argv[2]);
  fprintf(stderr, "usage: nbd-client-check rw|multiconn|readonly|open SOCK EXPORT\n"
                  "       nbd-client-check hold SOCK EXPORT SECONDS | list SOCK\n"
                  "       nbd-client-check evictee SOCK EXPORT DIR\n"
                  "       nbd-client-check enospc SOCK EXPORT FILLER\n");
  return 2;
}
