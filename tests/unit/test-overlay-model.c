/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: thousands of random operations compared byte for byte with a reference model.
 *
 * The model is the obvious one: the virtual disk as a plain byte array (initially the image
 * below, a deterministic pattern) plus one state per sub-cluster.  Writes, zeroes (with and
 * without may-trim, FUA or not), reads of random ranges, flushes and close/reopen cycles are
 * drawn from a seeded PRNG; the seed is printed and COWCHAIN_SEED replays a run exactly.
 * Every read is compared with the byte array, every ovl_map answer with the sub-cluster states,
 * and the bytes of every DATA extent with the file at the extent's phys.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "overlay/overlay.h"
#include "tests/unit/util-overlay.h"

TestSuite(overlay_model, .timeout = 120);

#define K 1024u
#define M (1024u * 1024u)

/* Model states per sub-cluster.  ZD: zero or data, both right (a partial zero of a sub-cluster
 * that already reads zero may be left alone or written as data zeroes); resolved by the next
 * ovl_map look. */
enum { M_U = 0, M_Z = 1, M_D = 2, M_ZD = 3 };

#define HIST 24

struct run {
  const char *name;
  int no_below; /* no image below: NULL callback, unallocated reads as zero */
  char *dir, *path;
  struct ovl_layer *l;
  struct otu_below below;
  uint64_t seed, rng;
  uint64_t vsize;
  uint32_t cs, sc;
  uint64_t nsc;
  uint8_t *disk; /* the reference: what every byte must read as */
  uint8_t *st;   /* per sub-cluster model state */
  uint8_t *buf, *buf2;
  int op;
  char hist[HIST][96]; /* the last operations, printed when a check fails */
  unsigned long nreads, nwrites, nzeroes, nflushes, nreopens, nmaps;
};

static void note(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
note(struct run *r, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->hist[r->op % HIST], sizeof r->hist[0], fmt, ap);
  va_end(ap);
}

/* Print the recent history and the seed; called before a failing assertion. */
static void
dump(struct run *r)
{
  fprintf(stderr, "%s: failure at op %d, seed %" PRIu64 " (COWCHAIN_SEED=%" PRIu64 ")\n", r->name,
          r->op, r->seed, r->seed);
  for (int i = r->op - HIST + 1; i <= r->op; i++)
    if (i >= 0)
      fprintf(stderr, "  op %d: %s\n", i, r->hist[i % HIST]);
}

#define CHECK(r, cond, ...)                                                                        \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      dump(r);                                                                                     \
      cr_assert_fail(__VA_ARGS__);                                                                 \
    }                                                                                              \
  } while (0)

static uint64_t
rnd(struct run *r, uint64_t n)
{
  return otu_rand_below(&r->rng, n);
}

/* A random range inside the disk: unaligned, sector-aligned or sub-cluster-aligned, of a size
 * from a few bytes to a few clusters. */
static void
pick_range(struct run *r, uint64_t *off, uint64_t *len)
{
  uint64_t o, n;
  switch (rnd(r, 4)) {
  case 0:
    n = 1 + rnd(r, 600);
    break;
  case 1:
    n = 1 + rnd(r, r->cs);
    break;
  case 2:
    n = 1 + rnd(r, 3ull * r->cs);
    break;
  default:
    n = (1 + rnd(r, 40)) * r->sc;
    break;
  }
  /* a third of ranges end near the end of the disk, where the edge cases are */
  o = rnd(r, 3) == 0 ? r->vsize - 1 - rnd(r, 4ull * r->cs < r->vsize ? 4ull * r->cs : r->vsize)
                     : rnd(r, r->vsize);
  switch (rnd(r, 3)) {
  case 0:
    break;
  case 1:
    o &= ~511ull;
    n = (n + 511) & ~511ull;
    break;
  default:
    o -= o % r->sc;
    break;
  }
  if (n > r->vsize - o)
    n = r->vsize - o;
  *off = o;
  *len = n;
}

static ovl_below_fn
below_fn(struct run *r)
{
  return r->no_below ? NULL : otu_below_pattern;
}

static void
do_read(struct run *r, uint64_t off, uint64_t len)
{
  int e = ovl_pread(r->l, r->buf, len, off, below_fn(r), &r->below);
  CHECK(r, e == 0, "ovl_pread(%" PRIu64 ", %" PRIu64 "): %d %s", off, len, e, cc_error_get());
  long d = otu_first_diff(r->buf, r->disk + off, len);
  CHECK(r, d < 0, "read [%" PRIu64 ", +%" PRIu64 "): byte %" PRIu64 " is %02x, model %02x", off,
        len, off + (uint64_t)d, r->buf[d < 0 ? 0 : d], r->disk[off + (uint64_t)(d < 0 ? 0 : d)]);
  r->nreads++;
}

static void
do_write(struct run *r, uint64_t off, uint64_t len, unsigned flags)
{
  otu_pattern(r->seed ^ (uint64_t)r->op * 0x9E37u, r->buf, len, off);
  int e = ovl_pwrite(r->l, r->buf, len, off, flags, below_fn(r), &r->below);
  CHECK(r, e == 0, "ovl_pwrite(%" PRIu64 ", %" PRIu64 "): %d %s", off, len, e, cc_error_get());
  memcpy(r->disk + off, r->buf, len);
  for (uint64_t k = off / r->sc; k <= (off + len - 1) / r->sc; k++)
    r->st[k] = M_D;
  r->nwrites++;
}

static void
do_zero(struct run *r, uint64_t off, uint64_t len, unsigned flags)
{
  int e = ovl_zero(r->l, len, off, flags, below_fn(r), &r->below);
  CHECK(r, e == 0, "ovl_zero(%" PRIu64 ", %" PRIu64 "): %d %s", off, len, e, cc_error_get());
  memset(r->disk + off, 0, len);
  for (uint64_t k = off / r->sc; k <= (off + len - 1) / r->sc; k++) {
    uint64_t s0 = k * r->sc, s1 = s0 + r->sc;
    if (s1 > r->vsize)
      s1 = r->vsize;
    if (off <= s0 && off + len >= s1)
      /* whole (in-range part of the) sub-cluster; the last, partial one may be either */
      r->st[k] = s1 - s0 == r->sc ? M_Z : M_ZD;
    else if (r->st[k] == M_Z || r->st[k] == M_ZD)
      r->st[k] = M_ZD;
    else
      r->st[k] = M_D;
  }
  r->nzeroes++;
}

static int
state_ok(uint8_t model, enum ovl_state got)
{
  switch (model) {
  case M_U:
    return got == OVL_UNALLOCATED;
  case M_Z:
    return got == OVL_ZERO;
  case M_D:
    return got == OVL_DATA;
  default:
    return got == OVL_ZERO || got == OVL_DATA;
  }
}

/* ovl_map over [off, off + len) against the model states; DATA bytes checked in the file. */
static void
do_map(struct run *r, uint64_t off, uint64_t len)
{
  struct ovl_extent e[32];
  uint64_t pos = off, end = off + len;
  struct ovl_extent prev = {0};
  int have_prev = 0;
  int fd = open(r->path, O_RDONLY | O_CLOEXEC);
  cr_assert_geq(fd, 0);

  while (pos < end) {
    int n = ovl_map(r->l, pos, end - pos, e, 32);
    CHECK(r, n > 0, "ovl_map(%" PRIu64 ", %" PRIu64 "): %d %s", pos, end - pos, n, cc_error_get());
    for (int i = 0; i < n; i++) {
      CHECK(r, e[i].offset == pos && e[i].length > 0 && e[i].offset + e[i].length <= end,
            "ovl_map: extent [%" PRIu64 ", +%" PRIu64 ") does not continue at %" PRIu64,
            e[i].offset, e[i].length, pos);
      for (uint64_t b = e[i].offset; b < e[i].offset + e[i].length;) {
        uint64_t k = b / r->sc;
        CHECK(r, state_ok(r->st[k], e[i].state),
              "ovl_map: sub-cluster %" PRIu64 " (offset %" PRIu64 ") is %d, model %d", k, k * r->sc,
              e[i].state, r->st[k]);
        if (r->st[k] == M_ZD)
          r->st[k] = e[i].state == OVL_ZERO ? M_Z : M_D;
        b = (k + 1) * r->sc;
      }
      if (e[i].state == OVL_DATA) {
        uint8_t *raw = r->buf2;
        ssize_t got = pread(fd, raw, e[i].length, (off_t)e[i].phys);
        CHECK(r, got == (ssize_t)e[i].length, "short pread of the file at phys %" PRIu64,
              e[i].phys);
        long d = otu_first_diff(raw, r->disk + e[i].offset, e[i].length);
        CHECK(r, d < 0, "file bytes at phys %" PRIu64 " for offset %" PRIu64 " differ at +%ld",
              e[i].phys, e[i].offset, d);
      }
      /* extents are maximal: equal neighbours would have been one run */
      if (have_prev && prev.state == e[i].state)
        CHECK(r, e[i].state == OVL_DATA && prev.phys + prev.length != e[i].phys,
              "ovl_map: extents at %" PRIu64 " and %" PRIu64 " should have merged", prev.offset,
              e[i].offset);
      prev = e[i];
      have_prev = 1;
      pos += e[i].length;
    }
  }
  close(fd);
  r->nmaps++;
}

static void
check_info(struct run *r)
{
  struct ovl_info in;
  uint64_t a = 0, z = 0;
  if (r->vsize % r->sc)
    return; /* how the short last sub-cluster counts is not specified */
  for (uint64_t k = 0; k < r->nsc; k++) {
    if (r->st[k] == M_ZD)
      return;
    a += r->st[k] == M_D;
    z += r->st[k] == M_Z;
  }
  ovl_get_info(r->l, &in);
  CHECK(r, in.allocated_bytes == a * r->sc, "allocated_bytes %" PRIu64 ", model %" PRIu64,
        in.allocated_bytes, a * r->sc);
  CHECK(r, in.zero_bytes == z * r->sc, "zero_bytes %" PRIu64 ", model %" PRIu64, in.zero_bytes,
        z * r->sc);
}

/* The closed file, decoded by the test's own decoder: map invariants, states and bytes. */
static void
check_file(struct run *r)
{
  uint8_t *st = malloc(r->nsc);
  uint64_t *phys = calloc(r->nsc, sizeof *phys);
  char err[256];
  int fd = open(r->path, O_RDONLY | O_CLOEXEC);
  cr_assert(st && phys && fd >= 0);
  CHECK(r, otu_decode_map(r->path, st, phys, r->nsc, err, sizeof err) == 0,
        "the closed file breaks FORMAT.md 5.3: %s", err);
  for (uint64_t k = 0; k < r->nsc; k++) {
    CHECK(r, state_ok(r->st[k], (enum ovl_state)st[k]),
          "on disk: sub-cluster %" PRIu64 " is %d, model %d", k, st[k], r->st[k]);
    if (st[k] == OVL_DATA) {
      uint64_t n = (k + 1) * r->sc > r->vsize ? r->vsize - k * r->sc : r->sc;
      CHECK(r, pread(fd, r->buf2, n, (off_t)phys[k]) == (ssize_t)n,
            "on disk: short read of sub-cluster %" PRIu64, k);
      CHECK(r, memcmp(r->buf2, r->disk + k * r->sc, n) == 0,
            "on disk: bytes of sub-cluster %" PRIu64 " at %" PRIu64 " differ", k, phys[k]);
    }
  }
  close(fd);
  free(st);
  free(phys);
}

static void
reopen(struct run *r, unsigned flags)
{
  int e = ovl_close(r->l);
  r->l = NULL;
  CHECK(r, e == 0, "ovl_close: %d %s", e, cc_error_get());
  check_file(r);
  e = ovl_open(r->path, flags, &r->l);
  CHECK(r, e == 0, "ovl_open: %d %s", e, cc_error_get());
  r->nreopens++;
}

static void
run_model(const char *name, uint32_t cs, uint64_t vsize, int nops, int no_below)
{
  struct run r;
  memset(&r, 0, sizeof r);
  r.name = name;
  r.no_below = no_below;
  otu_io_nosync(); /* durability is the crash suite's business */
  r.seed = otu_seed(name);
  r.rng = r.seed;
  r.cs = cs;
  r.sc = cs / 32;
  r.vsize = vsize;
  r.nsc = (vsize + r.sc - 1) / r.sc;
  r.dir = otu_tmpdir();
  r.path = otu_join(r.dir, "l.cow");
  r.below.seed = r.seed * 31 + 7;
  r.below.limit = vsize;
  r.disk = malloc(vsize);
  r.st = calloc(1, r.nsc);
  r.buf = malloc(4ull * cs + 4 * M);
  r.buf2 = malloc(vsize);
  cr_assert(r.disk && r.st && r.buf && r.buf2);
  if (no_below)
    memset(r.disk, 0, vsize);
  else
    otu_pattern(r.below.seed, r.disk, vsize, 0);
  otu_create(r.path, vsize, cs);
  r.l = otu_open(r.path, OVL_RDWR);

  for (r.op = 0; r.op < nops; r.op++) {
    uint64_t off, len;
    unsigned dice = (unsigned)rnd(&r, 100);
    pick_range(&r, &off, &len);
    if (dice < 34) {
      unsigned fl = rnd(&r, 10) == 0 ? OVL_FUA : 0;
      note(&r, "pwrite [%" PRIu64 ", +%" PRIu64 ") flags %u", off, len, fl);
      do_write(&r, off, len, fl);
    } else if (dice < 50) {
      unsigned fl = (rnd(&r, 2) ? OVL_MAY_TRIM : 0) | (rnd(&r, 10) == 0 ? OVL_FUA : 0);
      note(&r, "zero [%" PRIu64 ", +%" PRIu64 ") flags %u", off, len, fl);
      do_zero(&r, off, len, fl);
    } else if (dice < 85) {
      note(&r, "pread [%" PRIu64 ", +%" PRIu64 ")", off, len);
      do_read(&r, off, len);
    } else if (dice < 90) {
      note(&r, "flush");
      int e = ovl_flush(r.l);
      CHECK(&r, e == 0, "ovl_flush: %d %s", e, cc_error_get());
      r.nflushes++;
    } else if (dice < 92) {
      note(&r, "close, reopen");
      if (rnd(&r, 3) == 0) {
        /* look at it read-only once in a while: what a snapshot reader sees */
        reopen(&r, OVL_RDONLY);
        do_map(&r, 0, r.vsize);
        do_read(&r, off, len);
      }
      reopen(&r, OVL_RDWR);
    } else {
      note(&r, "map [%" PRIu64 ", +%" PRIu64 ")", off, len);
      do_map(&r, off, len);
    }
    if (r.op % 500 == 499) {
      note(&r, "full map and info check");
      do_map(&r, 0, r.vsize);
      check_info(&r);
    }
  }
  CHECK(&r, r.below.bad == 0, "the image below was asked for bytes past the virtual size");

  /* the end state, whole, after a final close and reopen */
  note(&r, "final close, reopen, full read");
  reopen(&r, OVL_RDONLY);
  do_map(&r, 0, r.vsize);
  check_info(&r);
  for (uint64_t off = 0; off < vsize; off += 4 * M)
    do_read(&r, off, vsize - off < 4 * M ? vsize - off : 4 * M);
  ovl_close(r.l);

  cr_log_info("%s: seed %" PRIu64 ": %d ops (%lu writes, %lu zeroes, %lu reads, %lu flushes, "
              "%lu reopens, %lu map checks)",
              name, r.seed, nops, r.nwrites, r.nzeroes, r.nreads, r.nflushes, r.nreopens, r.nmaps);
  free(r.disk);
  free(r.st);
  free(r.buf);
  free(r.buf2);
  free(r.path);
  otu_rmtree(r.dir);
}

Test(overlay_model, random_16k_clusters)
{
  run_model("overlay_model::random_16k_clusters", 16 * K, 8 * M, 4000, 0);
}

Test(overlay_model, random_128k_clusters)
{
  run_model("overlay_model::random_128k_clusters", 128 * K, 8 * M, 4000, 0);
}

Test(overlay_model, random_2m_clusters)
{
  run_model("overlay_model::random_2m_clusters", 2 * M, 16 * M, 1500, 0);
}

/* Two L2 tables with 16 KiB clusters (4 MiB each), and a size that is not a multiple of the
 * cluster size. */
Test(overlay_model, random_odd_size)
{
  run_model("overlay_model::random_odd_size", 16 * K, 6 * M + 16 * K + 1536, 3000, 0);
}

/* The last sub-cluster is only partly inside the disk (4 KiB sub-clusters, 3 KiB of the last
 * one in range). */
Test(overlay_model, random_partial_last_subcluster)
{
  run_model("overlay_model::random_partial_last_subcluster", 128 * K, 8 * M - 5 * K, 3000, 0);
}

/* No image below: copy-up and unallocated reads are zeroes (NULL callback). */
Test(overlay_model, random_no_below)
{
  run_model("overlay_model::random_no_below", 64 * K, 8 * M, 3000, 1);
}
