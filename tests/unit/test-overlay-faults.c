/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: I/O errors and short writes, injected through overlay/io.h's table.
 *
 * One workload is run once per I/O operation it performs, failing exactly that operation (EIO
 * or ENOSPC).  The failing call must return a negative errno with a message (never succeed,
 * never crash); then the layer is closed (which may fail) and reopened with real I/O, and it
 * must open and hold every write completed before the failure: exactly, if the close
 * succeeded; else as of the last successful flush or any later write (as after a crash).
 * Short writes are legal for pwrite(2); a separate test makes every one short.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "overlay/io.h"
#include "overlay/overlay.h"
#include "tests/unit/util-overlay.h"

TestSuite(overlay_faults, .timeout = 120);

#define K 1024u
#define M (1024u * 1024u)
#define SECT 512u
#define VSIZE (2u * M)
#define NSECT (VSIZE / SECT)
#define NOPS 40

/* ---- the failing I/O table ---- */

static long io_count; /* I/O operations so far */
static long io_fail_at = -1;
static int io_fail_errno = EIO;
static int io_short;  /* make every pwrite short */
static int io_failed; /* the injection fired */

static int
inject(void)
{
  if (io_count++ == io_fail_at) {
    io_failed = 1;
    errno = io_fail_errno;
    return 1;
  }
  return 0;
}

static ssize_t
f_pwrite(int fd, const void *buf, size_t count, off_t offset)
{
  if (inject())
    return -1;
  if (io_short && count > 1)
    count = count / 2 + (count > 4096 ? 1 : 0); /* odd lengths too */
  return ovl_io_default.pwrite(fd, buf, count, offset);
}

/* No real sync: nothing here survives a real crash anyway, and syncs are slow on a shared
 * disk. */
static int
f_fdatasync(int fd)
{
  (void)fd;
  return inject() ? -1 : 0;
}

static int
f_fallocate(int fd, int mode, off_t offset, off_t len)
{
  return inject() ? -1 : ovl_io_default.fallocate(fd, mode, offset, len);
}

static int
f_ftruncate(int fd, off_t length)
{
  return inject() ? -1 : ovl_io_default.ftruncate(fd, length);
}

static const struct ovl_io_ops fault_ops = {
    .pwrite = f_pwrite,
    .fdatasync = f_fdatasync,
    .fallocate = f_fallocate,
    .ftruncate = f_ftruncate,
};

/* ---- the workload ---- */

struct run {
  uint64_t seed;
  char *path;
  struct otu_below below;
  uint8_t *cur;     /* the disk if every call so far took effect */
  uint8_t *flushed; /* the disk as of the last successful flush */
  /* sectors changed since the last successful flush, with their versions */
  struct {
    uint32_t sect;
    uint8_t data[SECT];
  } * vers;
  size_t nvers, capvers;
};

static void
add_versions(struct run *r, uint64_t off, uint64_t len)
{
  for (uint64_t s = off / SECT; len && s <= (off + len - 1) / SECT; s++) {
    if (r->nvers == r->capvers) {
      r->capvers = r->capvers ? 2 * r->capvers : 1024;
      r->vers = realloc(r->vers, r->capvers * sizeof *r->vers);
      cr_assert_not_null(r->vers);
    }
    r->vers[r->nvers].sect = (uint32_t)s;
    memcpy(r->vers[r->nvers].data, r->cur + s * SECT, SECT);
    r->nvers++;
  }
}

static void
flushed_now(struct run *r)
{
  memcpy(r->flushed, r->cur, VSIZE);
  r->nvers = 0;
}

/* Run the workload until an operation fails (returns its index) or to the end (-1).  The
 * failed operation's effect is in r->cur; *prev gets the disk without it. */
static int
workload(struct run *r, struct ovl_layer *l, uint8_t *prev)
{
  uint64_t rng = r->seed;
  uint8_t *buf = malloc(64 * K);
  int failed = -1;

  for (int i = 0; i < NOPS && failed < 0; i++) {
    unsigned dice = (unsigned)otu_rand_below(&rng, 10);
    uint64_t off = otu_rand_below(&rng, VSIZE), len = 1 + otu_rand_below(&rng, 40 * K);
    if (otu_rand_below(&rng, 2))
      off &= ~(uint64_t)4095;
    if (len > VSIZE - off)
      len = VSIZE - off;
    memcpy(prev, r->cur, VSIZE);
    int e, flush = 0;
    cc_error_clear();
    if (dice < 6) {
      unsigned fl = otu_rand_below(&rng, 6) == 0 ? OVL_FUA : 0;
      otu_pattern(rng, buf, len, off);
      e = ovl_pwrite(l, buf, len, off, fl, otu_below_pattern, &r->below);
      memcpy(r->cur + off, buf, len);
      add_versions(r, off, len);
      flush = fl != 0;
    } else if (dice < 8) {
      unsigned fl = otu_rand_below(&rng, 2) ? OVL_MAY_TRIM : 0;
      e = ovl_zero(l, len, off, fl, otu_below_pattern, &r->below);
      memset(r->cur + off, 0, len);
      add_versions(r, off, len);
    } else {
      e = ovl_flush(l);
      flush = 1;
    }
    if (e < 0) {
      cr_assert_neq(cc_error_get()[0], '\0', "op %d failed (%d) without a message", i, e);
      cr_assert(io_failed, "op %d failed (%d: %s) with no fault injected", i, e, cc_error_get());
      failed = i;
    } else {
      cr_assert_eq(e, 0);
      if (flush)
        flushed_now(r);
    }
  }
  free(buf);
  return failed;
}

/* Every sector equals one of the allowed versions. */
static void
check_disk(struct run *r, struct ovl_layer *l, const uint8_t *a, const uint8_t *b, int any_since,
           const char *what)
{
  uint8_t *got = malloc(VSIZE);
  cr_assert_eq(ovl_pread(l, got, VSIZE, 0, otu_below_pattern, &r->below), 0, "%s: %s", what,
               cc_error_get());
  for (uint64_t s = 0; s < NSECT; s++) {
    const uint8_t *g = got + s * SECT;
    int ok = memcmp(g, a + s * SECT, SECT) == 0 || (b && memcmp(g, b + s * SECT, SECT) == 0);
    for (size_t v = 0; !ok && any_since && v < r->nvers; v++)
      ok = r->vers[v].sect == s && memcmp(g, r->vers[v].data, SECT) == 0;
    cr_assert(ok, "%s: sector at %" PRIu64 " holds bytes of no allowed version", what, s * SECT);
  }
  free(got);
}

static void
run_one(uint64_t seed, long fail_at, int err, int short_writes, long *n_io, int *n_failed_close)
{
  char *dir = otu_tmpdir();
  struct run r;
  memset(&r, 0, sizeof r);
  r.seed = seed;
  r.path = otu_join(dir, "l.cow");
  r.below.seed = seed ^ 0xFA17;
  r.cur = malloc(VSIZE);
  r.flushed = malloc(VSIZE);
  uint8_t *prev = malloc(VSIZE);
  otu_pattern(r.below.seed, r.cur, VSIZE, 0);
  flushed_now(&r);
  /* the table stays in place for the whole run (for its cheap syncs), armed only around the
   * workload and its close */
  io_fail_at = -1;
  io_short = short_writes;
  ovl_io = &fault_ops;
  otu_create(r.path, VSIZE, 16 * K);

  struct ovl_layer *l = otu_open(r.path, OVL_RDWR);
  io_count = 0;
  io_fail_at = fail_at;
  io_fail_errno = err;
  io_failed = 0;
  int failed = workload(&r, l, prev);
  char what[96];
  snprintf(what, sizeof what, "seed %" PRIu64 ", I/O %ld fails with %s, op %d failed", seed,
           fail_at, strerror(err), failed);
  if (io_failed && failed < 0) {
    /* an injected failure that no call reported: only a punch (advisory) may be ignored */
    cr_log_info("%s: failure not reported (advisory call?)", what);
  }
  /* still consistent in memory: reads show the old or the new bytes of the failed call */
  check_disk(&r, l, r.cur, failed >= 0 ? prev : NULL, 0, what);
  int ce = ovl_close(l); /* still armed: the failure may hit the close's flush */
  io_fail_at = -1;
  *n_io = io_count;
  if (ce < 0)
    (*n_failed_close)++;

  l = NULL;
  int e = ovl_open(r.path, OVL_RDWR, &l);
  cr_assert_eq(e, 0, "%s: reopen: %d %s", what, e, cc_error_get());
  if (ce == 0)
    check_disk(&r, l, r.cur, failed >= 0 ? prev : NULL, 0, what);
  else
    check_disk(&r, l, r.flushed, NULL, 1, what);
  /* and it takes writes again */
  uint8_t nb[8192];
  memset(nb, 0xC3, sizeof nb);
  cr_assert_eq(ovl_pwrite(l, nb, sizeof nb, VSIZE / 2 + 100, 0, NULL, NULL), 0, "%s: %s", what,
               cc_error_get());
  cr_assert_eq(ovl_close(l), 0, "%s: %s", what, cc_error_get());
  struct ovl_check_result res;
  cr_assert_eq(ovl_check(r.path, 0, &res), 0, "%s: ovl_check: %s", what, cc_error_get());
  ovl_io = &ovl_io_default;
  io_short = 0;

  free(prev);
  free(r.cur);
  free(r.flushed);
  free(r.vers);
  free(r.path);
  otu_rmtree(dir);
}

static void
fail_each(const char *name, int err)
{
  uint64_t seed = otu_seed(name);
  long total = 0;
  int failed_closes = 0;
  run_one(seed, -1, err, 0, &total, &failed_closes); /* count the I/O of a clean run */
  cr_assert_gt(total, 10, "the workload did almost no I/O");
  long n;
  for (long at = 0; at < total; at++)
    run_one(seed, at, err, 0, &n, &failed_closes);
  fprintf(stderr,
          "%s: seed %" PRIu64 ": failed each of %ld I/O operations in turn (%d closes "
          "failed)\n",
          name, seed, total, failed_closes);
}

Test(overlay_faults, each_io_fails_eio)
{
  fail_each("overlay_faults::each_io_fails_eio", EIO);
}

Test(overlay_faults, each_io_fails_enospc)
{
  fail_each("overlay_faults::each_io_fails_enospc", ENOSPC);
}

/* pwrite(2) may write less than asked; the layer must finish the job. */
Test(overlay_faults, short_writes)
{
  uint64_t seed = otu_seed("overlay_faults::short_writes");
  long n;
  int fc = 0;
  run_one(seed, -1, EIO, 1, &n, &fc);
  cr_assert_eq(fc, 0, "close failed with short writes");
}

/* ---- fsyncgate: a failed fdatasync is final until the layer is reopened ---- */

static int fail_next_sync;

static int
gate_fdatasync(int fd)
{
  (void)fd;
  if (fail_next_sync) {
    fail_next_sync = 0;
    errno = EIO;
    return -1;
  }
  return 0; /* the kernel reported the error once; from now on it says "fine" */
}

static const struct ovl_io_ops gate_ops = {
    .pwrite = f_pwrite,
    .fdatasync = gate_fdatasync,
    .fallocate = f_fallocate,
    .ftruncate = f_ftruncate,
};

Test(overlay_faults, failed_sync_is_sticky_until_reopen)
{
  char dir[] = "/tmp/cc-gate-XXXXXX", path[64];
  struct ovl_create_opts o = {.virtual_size = VSIZE};
  struct ovl_layer *l;
  uint8_t a[8192], b[8192], got[8192];

  cr_assert_not_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/g.cow", dir);
  io_count = 0;
  io_fail_at = -1;
  ovl_io = &gate_ops;
  cr_assert_eq(ovl_create(path, &o, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_open(path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  memset(a, 0xaa, sizeof a);
  memset(b, 0xbb, sizeof b);
  cr_assert_eq(ovl_pwrite(l, a, sizeof a, 0, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_flush(l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_pwrite(l, b, sizeof b, 65536, 0, NULL, NULL), 0, "%s", cc_error_get());

  fail_next_sync = 1;
  cr_assert_eq(ovl_flush(l), -EIO);
  /* the retry must not succeed although fdatasync now would */
  cr_assert_eq(ovl_flush(l), -EIO);
  cr_assert(strstr(cc_error_get(), "earlier fdatasync failed"), "%s", cc_error_get());
  cr_assert(strstr(cc_error_get(), path), "%s", cc_error_get());
  cr_assert_eq(ovl_pwrite(l, a, 4096, 0, 0, NULL, NULL), -EIO);
  cr_assert_eq(ovl_zero(l, 4096, 0, 0, NULL, NULL), -EIO);
  cr_assert_eq(ovl_pwrite(l, a, 4096, 0, OVL_FUA, NULL, NULL), -EIO);
  cr_assert_neq(ovl_close(l), 0);

  /* reopened: consistent, the flushed write intact, the unflushed one old or new */
  ovl_io = &ovl_io_default;
  cr_assert_eq(ovl_open(path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_pread(l, got, sizeof got, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_arr_eq(got, a, sizeof a);
  cr_assert_eq(ovl_pread(l, got, sizeof got, 65536, NULL, NULL), 0, "%s", cc_error_get());
  for (size_t i = 0; i < sizeof got; i++)
    cr_assert(got[i] == 0 || got[i] == 0xbb, "byte %zu is 0x%02x", i, got[i]);
  cr_assert_eq(ovl_pwrite(l, b, sizeof b, 65536, OVL_FUA, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  unlink(path);
  rmdir(dir);
}
