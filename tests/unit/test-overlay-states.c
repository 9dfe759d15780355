/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: every sub-cluster state transition of FORMAT.md 5.2 and 7.1, observed through
 * ovl_pread (the bytes), ovl_map (the states) and the raw file (where the bytes live).
 *
 * The image below is otu_below_pattern: every byte is a known function of its offset, so a read
 * that returns parent bytes where it should return zeroes (or the reverse) is caught.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "overlay/overlay.h"
#include "tests/unit/util-overlay.h"

TestSuite(overlay_states, .timeout = 60);

#define K 1024u

/* One layer with a pattern below it. */
struct fx {
  char *dir, *path;
  struct ovl_layer *l;
  struct otu_below below;
  uint64_t vsize;
  uint32_t cs, sc;
};

static void
fx_setup(struct fx *f, uint64_t vsize, uint32_t cs)
{
  memset(f, 0, sizeof *f);
  f->dir = otu_tmpdir();
  f->path = otu_join(f->dir, "l.cow");
  f->vsize = vsize;
  f->cs = cs ? cs : 128 * K;
  f->sc = f->cs / 32;
  f->below.seed = 0xB0B;
  f->below.limit = vsize;
  otu_create(f->path, vsize, cs);
  f->l = otu_open(f->path, OVL_RDWR);
}

static void
fx_reopen(struct fx *f, unsigned flags)
{
  cr_assert_eq(ovl_close(f->l), 0, "close: %s", cc_error_get());
  f->l = otu_open(f->path, flags);
}

static void
fx_teardown(struct fx *f)
{
  cr_assert_eq(ovl_close(f->l), 0, "close: %s", cc_error_get());
  cr_assert_eq(f->below.bad, 0, "the below callback was asked for bytes past the virtual size");
  free(f->path);
  otu_rmtree(f->dir);
}

static void
fx_write(struct fx *f, const void *buf, uint64_t len, uint64_t off)
{
  int r = ovl_pwrite(f->l, buf, len, off, 0, otu_below_pattern, &f->below);
  cr_assert_eq(r, 0, "ovl_pwrite(%" PRIu64 ", %" PRIu64 "): %d %s", len, off, r, cc_error_get());
}

static void
fx_zero(struct fx *f, uint64_t len, uint64_t off, unsigned flags)
{
  int r = ovl_zero(f->l, len, off, flags, otu_below_pattern, &f->below);
  cr_assert_eq(r, 0, "ovl_zero(%" PRIu64 ", %" PRIu64 "): %d %s", len, off, r, cc_error_get());
}

/* Read [off, off + len) through the layer and compare with `want`. */
static void
fx_expect(struct fx *f, const uint8_t *want, uint64_t len, uint64_t off, const char *what)
{
  uint8_t *got = malloc(len);
  int r = ovl_pread(f->l, got, len, off, otu_below_pattern, &f->below);
  cr_assert_eq(r, 0, "%s: ovl_pread: %d %s", what, r, cc_error_get());
  long d = otu_first_diff(got, want, len);
  cr_assert_eq(d, -1, "%s: byte %" PRIu64 " is %02x, expected %02x", what,
               off + (uint64_t)(d < 0 ? 0 : d), d < 0 ? 0 : got[d], d < 0 ? 0 : want[d]);
  free(got);
}

static void
fx_expect_below(struct fx *f, uint64_t len, uint64_t off, const char *what)
{
  uint8_t *want = malloc(len);
  otu_pattern(f->below.seed, want, len, off);
  fx_expect(f, want, len, off, what);
  free(want);
}

static void
fx_expect_zero(struct fx *f, uint64_t len, uint64_t off, const char *what)
{
  uint8_t *want = calloc(1, len);
  fx_expect(f, want, len, off, what);
  free(want);
}

/* The map of [off, off + len) as one state per sub-cluster, checking on the way that the
 * extents tile the range in order with no gap or overlap, and that each DATA extent's phys
 * advances with its offset. */
static void
sc_states(struct ovl_layer *l, uint64_t off, uint64_t len, uint32_t sc, enum ovl_state *out)
{
  struct ovl_extent e[8];
  uint64_t pos = off, end = off + len;

  while (pos < end) {
    int n = ovl_map(l, pos, end - pos, e, 8);
    cr_assert_gt(n, 0, "ovl_map(%" PRIu64 ", %" PRIu64 "): %d %s", pos, end - pos, n,
                 cc_error_get());
    for (int i = 0; i < n; i++) {
      cr_assert_eq(e[i].offset, pos, "extent %d starts at %" PRIu64 ", expected %" PRIu64, i,
                   e[i].offset, pos);
      cr_assert_gt(e[i].length, 0u);
      cr_assert_leq(e[i].offset + e[i].length, end, "extent runs past the asked range");
      for (uint64_t b = e[i].offset; b < e[i].offset + e[i].length; b += sc)
        out[(b - off) / sc] = e[i].state;
      pos += e[i].length;
    }
  }
}

static enum ovl_state
state_at(struct fx *f, uint64_t off)
{
  enum ovl_state s;
  sc_states(f->l, off, f->sc, f->sc, &s);
  return s;
}

struct xext {
  uint64_t offset, length;
  enum ovl_state state;
};

/* ovl_map over the whole disk must be exactly these (maximal) extents. */
static void
expect_extents(struct fx *f, const struct xext *x, int nx)
{
  struct ovl_extent e[64];
  int n = ovl_map(f->l, 0, f->vsize, e, 64);
  cr_assert_eq(n, nx, "ovl_map returned %d extents, expected %d", n, nx);
  for (int i = 0; i < n; i++) {
    cr_assert_eq(e[i].offset, x[i].offset, "extent %d offset %" PRIu64, i, e[i].offset);
    cr_assert_eq(e[i].length, x[i].length, "extent %d length %" PRIu64, i, e[i].length);
    cr_assert_eq(e[i].state, x[i].state, "extent %d state %d", i, e[i].state);
  }
}

static uint8_t *
pat(uint64_t seed, uint64_t len, uint64_t off)
{
  uint8_t *b = malloc(len);
  otu_pattern(seed, b, len, off);
  return b;
}

static uint64_t
blocks_bytes(const char *path)
{
  struct stat st;
  cr_assert_eq(stat(path, &st), 0);
  return (uint64_t)st.st_blocks * 512;
}

/* unallocated -> allocated, a whole sub-cluster; nothing else is copied up. */
Test(overlay_states, unallocated_to_allocated_full)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  uint8_t *d = pat(1, 4 * K, 8 * K);
  fx_write(&f, d, 4 * K, 8 * K);
  cr_assert_eq(f.below.calls, 0u, "a whole sub-cluster write read the image below");
  struct xext x[] = {{0, 8 * K, OVL_UNALLOCATED},
                     {8 * K, 4 * K, OVL_DATA},
                     {12 * K, f.vsize - 12 * K, OVL_UNALLOCATED}};
  expect_extents(&f, x, 3);
  fx_expect(&f, d, 4 * K, 8 * K, "written sub-cluster");
  fx_expect_below(&f, 8 * K, 0, "sub-clusters before");
  fx_expect_below(&f, 128 * K - 12 * K, 12 * K, "sub-clusters after");
  struct ovl_info in;
  ovl_get_info(f.l, &in);
  cr_assert_eq(in.allocated_bytes, 4 * K);
  cr_assert_eq(in.zero_bytes, 0u);

  fx_reopen(&f, OVL_RDONLY);
  expect_extents(&f, x, 3);
  fx_expect(&f, d, 4 * K, 8 * K, "after reopen");
  free(d);
  fx_teardown(&f);
}

/* unallocated -> allocated, part of a sub-cluster: the rest comes from below, and only that
 * sub-cluster is read from below. */
Test(overlay_states, unallocated_to_allocated_partial_copyup)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  const uint64_t sc0 = 8 * K, off = sc0 + 1000, len = 100;
  uint8_t *d = pat(2, len, off);
  fx_write(&f, d, len, off);
  cr_assert_gt(f.below.calls, 0u, "partial write did no copy-up");
  for (unsigned i = 0; i < f.below.nlog; i++)
    cr_assert(f.below.log_off[i] >= sc0 && f.below.log_off[i] + f.below.log_len[i] <= sc0 + 4 * K,
              "copy-up read [%" PRIu64 ", +%" PRIu64 ") outside the touched sub-cluster",
              f.below.log_off[i], f.below.log_len[i]);
  struct xext x[] = {{0, sc0, OVL_UNALLOCATED},
                     {sc0, 4 * K, OVL_DATA},
                     {sc0 + 4 * K, f.vsize - sc0 - 4 * K, OVL_UNALLOCATED}};
  expect_extents(&f, x, 3);

  uint8_t *want = pat(f.below.seed, 4 * K, sc0);
  memcpy(want + 1000, d, len);
  fx_expect(&f, want, 4 * K, sc0, "copied-up sub-cluster");

  /* the copied-up bytes now live in the layer: a different image below must not show */
  fx_reopen(&f, OVL_RDONLY);
  f.below.seed = 0xD1FF;
  fx_expect(&f, want, 4 * K, sc0, "copy-up is materialized");
  free(want);
  free(d);
  fx_teardown(&f);
}

/* A write straddling sub-cluster boundaries copies up the two partial ends only. */
Test(overlay_states, write_straddles_subclusters)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  const uint64_t off = 4 * K - 10, len = 4 * K + 20; /* sc 0 (10 B), sc 1 (all), sc 2 (10 B) */
  uint8_t *d = pat(3, len, off);
  fx_write(&f, d, len, off);
  for (unsigned i = 0; i < f.below.nlog; i++)
    cr_assert(f.below.log_off[i] + f.below.log_len[i] <= 12 * K, "copy-up beyond sc 2");
  enum ovl_state st[4];
  sc_states(f.l, 0, 16 * K, f.sc, st);
  cr_assert(st[0] == OVL_DATA && st[1] == OVL_DATA && st[2] == OVL_DATA, "sc 0-2 not DATA");
  cr_assert_eq(st[3], OVL_UNALLOCATED);
  uint8_t *want = pat(f.below.seed, 16 * K, 0);
  memcpy(want + off, d, len);
  fx_expect(&f, want, 16 * K, 0, "straddling write");
  free(want);
  free(d);
  fx_teardown(&f);
}

/* A write straddling a cluster boundary allocates in both clusters. */
Test(overlay_states, write_straddles_clusters)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 16 * K); /* 512-byte sub-clusters */
  const uint64_t off = 3 * 16 * K - 700, len = 1400;
  uint8_t *d = pat(4, len, off);
  fx_write(&f, d, len, off);
  enum ovl_state st[8];
  uint64_t base = 3 * 16 * K - 4 * 512;
  sc_states(f.l, base, 8 * 512, f.sc, st);
  const enum ovl_state want_st[8] = {OVL_UNALLOCATED, OVL_UNALLOCATED, OVL_DATA,
                                     OVL_DATA,        OVL_DATA,        OVL_DATA,
                                     OVL_UNALLOCATED, OVL_UNALLOCATED};
  for (int i = 0; i < 8; i++)
    cr_assert_eq(st[i], want_st[i], "sub-cluster %d around the cluster boundary", i);
  uint8_t *want = pat(f.below.seed, 8 * 512, base);
  memcpy(want + (off - base), d, len);
  fx_expect(&f, want, 8 * 512, base, "cluster-straddling write");
  fx_reopen(&f, OVL_RDONLY);
  fx_expect(&f, want, 8 * 512, base, "after reopen");
  free(want);
  free(d);
  fx_teardown(&f);
}

/* A large write spanning several clusters and two L2 tables. */
Test(overlay_states, write_spans_l2_tables)
{
  struct fx f;
  fx_setup(&f, 12u << 20, 16 * K); /* an L2 table spans 4 MiB */
  const uint64_t off = (4u << 20) - 100 * K - 3, len = 300 * K;
  uint8_t *d = pat(5, len, off);
  fx_write(&f, d, len, off);
  fx_expect(&f, d, len, off, "big write");
  fx_reopen(&f, OVL_RDONLY);
  fx_expect(&f, d, len, off, "big write after reopen");
  fx_expect_below(&f, 16 * K, off + len + 512, "after the big write");
  free(d);
  fx_teardown(&f);
}

/* unallocated -> zero: hides the image below. */
Test(overlay_states, unallocated_to_zero)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  fx_zero(&f, 4 * K, 16 * K, 0);
  cr_assert_eq(state_at(&f, 16 * K), OVL_ZERO);
  struct xext x[] = {{0, 16 * K, OVL_UNALLOCATED},
                     {16 * K, 4 * K, OVL_ZERO},
                     {20 * K, f.vsize - 20 * K, OVL_UNALLOCATED}};
  expect_extents(&f, x, 3);
  fx_expect_zero(&f, 4 * K, 16 * K, "zeroed sub-cluster");
  fx_expect_below(&f, 16 * K, 0, "before");
  struct ovl_info in;
  ovl_get_info(f.l, &in);
  cr_assert_eq(in.zero_bytes, 4 * K);
  cr_assert_eq(in.allocated_bytes, 0u);
  fx_reopen(&f, OVL_RDONLY);
  expect_extents(&f, x, 3);
  fx_expect_zero(&f, 4 * K, 16 * K, "zeroed sub-cluster after reopen");
  fx_teardown(&f);
}

/* Zeroing part of an unallocated sub-cluster writes data: below bytes plus zeroes. */
Test(overlay_states, unallocated_partial_zero)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  fx_zero(&f, 1000, 4 * K + 96, OVL_MAY_TRIM);
  cr_assert_eq(state_at(&f, 4 * K), OVL_DATA, "a partly zeroed sub-cluster must be data");
  uint8_t *want = pat(f.below.seed, 4 * K, 4 * K);
  memset(want + 96, 0, 1000);
  fx_expect(&f, want, 4 * K, 4 * K, "partly zeroed");
  free(want);
  fx_teardown(&f);
}

/* allocated -> zero without trim. */
Test(overlay_states, allocated_to_zero)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  uint8_t *d = pat(6, 128 * K, 0);
  fx_write(&f, d, 128 * K, 0);
  fx_zero(&f, 8 * K, 8 * K, 0);
  struct xext x[] = {{0, 8 * K, OVL_DATA},
                     {8 * K, 8 * K, OVL_ZERO},
                     {16 * K, 112 * K, OVL_DATA},
                     {128 * K, f.vsize - 128 * K, OVL_UNALLOCATED}};
  expect_extents(&f, x, 4);
  memset(d + 8 * K, 0, 8 * K);
  fx_expect(&f, d, 128 * K, 0, "after zero");
  struct ovl_info in;
  ovl_get_info(f.l, &in);
  cr_assert_eq(in.allocated_bytes, 120 * K);
  cr_assert_eq(in.zero_bytes, 8 * K);
  fx_reopen(&f, OVL_RDONLY);
  expect_extents(&f, x, 4);
  fx_expect(&f, d, 128 * K, 0, "after reopen");
  free(d);
  fx_teardown(&f);
}

/* allocated -> zero with may-trim: whole clusters give their space back. */
Test(overlay_states, allocated_to_zero_trim_releases_space)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  uint8_t *d = pat(7, 512 * K, 0);
  fx_write(&f, d, 512 * K, 0);
  cr_assert_eq(ovl_flush(f.l), 0, "%s", cc_error_get());
  uint64_t b1 = blocks_bytes(f.path);
  cr_assert_geq(b1, 512 * K, "written data is not in the file? %" PRIu64, b1);
  fx_zero(&f, 256 * K, 128 * K, OVL_MAY_TRIM);
  cr_assert_eq(ovl_flush(f.l), 0, "%s", cc_error_get());
  uint64_t b2 = blocks_bytes(f.path);
  /* 256 KiB less some slack: punching the middle of an extent can cost the file system an
   * extent-tree block */
  cr_assert(b2 + 256 * K - 16 * K <= b1,
            "trim of two whole clusters released %" PRId64 " bytes, expected about 256 KiB",
            (int64_t)b1 - (int64_t)b2);
  memset(d + 128 * K, 0, 256 * K);
  fx_expect(&f, d, 512 * K, 0, "after trim");
  cr_assert_eq(state_at(&f, 128 * K), OVL_ZERO);
  cr_assert_eq(state_at(&f, 384 * K - 4 * K), OVL_ZERO);
  cr_assert_eq(state_at(&f, 384 * K), OVL_DATA);
  /* a trim reads back as zeroes, never as the image below (FORMAT.md 7.1) */
  fx_reopen(&f, OVL_RDWR);
  fx_expect(&f, d, 512 * K, 0, "after trim and reopen");

  /* zero -> allocated again after the trim: the punched cluster must come back right */
  uint8_t *d2 = pat(8, 4 * K, 200 * K);
  fx_write(&f, d2, 4 * K, 200 * K);
  memcpy(d + 200 * K, d2, 4 * K);
  fx_expect(&f, d, 512 * K, 0, "rewrite after trim");
  fx_reopen(&f, OVL_RDONLY);
  fx_expect(&f, d, 512 * K, 0, "rewrite after trim, reopened");
  free(d2);
  free(d);
  fx_teardown(&f);
}

/* A trim of part of a sub-cluster must still read as zeroes. */
Test(overlay_states, allocated_partial_trim)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  uint8_t *d = pat(9, 16 * K, 0);
  fx_write(&f, d, 16 * K, 0);
  fx_zero(&f, 6 * K, 1 * K, OVL_MAY_TRIM); /* sc 0 and sc 1 partly: data zeroes */
  memset(d + 1 * K, 0, 6 * K);
  fx_expect(&f, d, 16 * K, 0, "partial trim");
  cr_assert_eq(state_at(&f, 0), OVL_DATA);
  cr_assert_eq(state_at(&f, 4 * K), OVL_DATA, "sc 1 was only partly zeroed (4K..7K)");
  fx_zero(&f, 4 * K, 8 * K, OVL_MAY_TRIM);
  cr_assert_eq(state_at(&f, 8 * K), OVL_ZERO);
  memset(d + 8 * K, 0, 4 * K);
  fx_reopen(&f, OVL_RDONLY);
  fx_expect(&f, d, 16 * K, 0, "partial trim after reopen");
  free(d);
  fx_teardown(&f);
}

/* zero -> allocated by a partial write: the rest of the sub-cluster is zero, not below. */
Test(overlay_states, zero_to_allocated_partial)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  fx_zero(&f, 8 * K, 0, 0);
  unsigned long calls = f.below.calls;
  uint8_t *d = pat(10, 100, 5 * K + 7);
  fx_write(&f, d, 100, 5 * K + 7);
  cr_assert_eq(f.below.calls, calls, "a write into a zero sub-cluster read the image below");
  cr_assert_eq(state_at(&f, 4 * K), OVL_DATA);
  cr_assert_eq(state_at(&f, 0), OVL_ZERO);
  uint8_t want[8 * K];
  memset(want, 0, sizeof want);
  memcpy(want + 5 * K + 7, d, 100);
  fx_expect(&f, want, 8 * K, 0, "partial write into zero");
  fx_reopen(&f, OVL_RDONLY);
  fx_expect(&f, want, 8 * K, 0, "after reopen");
  free(d);
  fx_teardown(&f);
}

Test(overlay_states, zero_to_allocated_full)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  fx_zero(&f, 128 * K, 128 * K, OVL_MAY_TRIM);
  uint8_t *d = pat(11, 4 * K, 132 * K);
  fx_write(&f, d, 4 * K, 132 * K);
  struct xext x[] = {{0, 128 * K, OVL_UNALLOCATED},
                     {128 * K, 4 * K, OVL_ZERO},
                     {132 * K, 4 * K, OVL_DATA},
                     {136 * K, 120 * K, OVL_ZERO},
                     {256 * K, f.vsize - 256 * K, OVL_UNALLOCATED}};
  expect_extents(&f, x, 5);
  fx_expect(&f, d, 4 * K, 132 * K, "full write into zero");
  free(d);
  fx_teardown(&f);
}

/* allocated -> allocated: in place, the map and the file size do not change. */
Test(overlay_states, allocated_in_place)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  uint8_t *d = pat(12, 8 * K, 64 * K);
  fx_write(&f, d, 8 * K, 64 * K);
  struct ovl_extent e1, e2;
  cr_assert_eq(ovl_map(f.l, 64 * K, 8 * K, &e1, 1), 1);
  cr_assert_eq(e1.state, OVL_DATA);
  cr_assert_eq(ovl_flush(f.l), 0);
  uint64_t size1 = otu_file_size(f.path);
  unsigned long calls = f.below.calls;

  uint8_t *d2 = pat(13, 3000, 64 * K + 2000);
  fx_write(&f, d2, 3000, 64 * K + 2000);
  cr_assert_eq(f.below.calls, calls, "a write into allocated data read the image below");
  cr_assert_eq(ovl_map(f.l, 64 * K, 8 * K, &e2, 1), 1);
  cr_assert_eq(e2.state, OVL_DATA);
  cr_assert_eq(e2.phys, e1.phys, "an in-place write moved the data");
  cr_assert_eq(e2.length, 8 * K);
  cr_assert_eq(otu_file_size(f.path), size1, "an in-place write grew the file");
  memcpy(d + 2000, d2, 3000);
  fx_expect(&f, d, 8 * K, 64 * K, "in place");
  /* the bytes are where ovl_map says */
  uint8_t raw[8 * K];
  otu_read_at(f.path, raw, sizeof raw, e2.phys);
  cr_assert_eq(otu_first_diff(raw, d, sizeof raw), -1, "file bytes at phys differ");
  free(d2);
  free(d);
  fx_teardown(&f);
}

/* ovl_map: runs merge where states match (and, for data, where the file is contiguous);
 * phys is right; max bounds the answer and a second call resumes. */
Test(overlay_states, map_merging_and_contiguity)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  uint8_t *d = pat(14, 12 * K, 0);
  fx_write(&f, d, 4 * K, 0); /* sc 0, 1, 2 of cluster 0 written separately */
  fx_write(&f, d + 8 * K, 4 * K, 8 * K);
  fx_write(&f, d + 4 * K, 4 * K, 4 * K);
  fx_zero(&f, 4 * K, 12 * K, 0);
  fx_zero(&f, 4 * K, 16 * K, 0);
  uint8_t *d5 = pat(15, 4 * K, 5 * 128 * K);
  fx_write(&f, d5, 4 * K, 5 * 128 * K);
  struct xext x[] = {{0, 12 * K, OVL_DATA},
                     {12 * K, 8 * K, OVL_ZERO},
                     {20 * K, 5 * 128 * K - 20 * K, OVL_UNALLOCATED},
                     {5 * 128 * K, 4 * K, OVL_DATA},
                     {5 * 128 * K + 4 * K, f.vsize - 5 * 128 * K - 4 * K, OVL_UNALLOCATED}};
  expect_extents(&f, x, 5);

  struct ovl_extent e[5];
  cr_assert_eq(ovl_map(f.l, 0, f.vsize, e, 5), 5);
  uint8_t raw[12 * K];
  otu_read_at(f.path, raw, 12 * K, e[0].phys);
  cr_assert_eq(otu_first_diff(raw, d, 12 * K), -1, "data extent 0 is not at its phys");
  otu_read_at(f.path, raw, 4 * K, e[3].phys);
  cr_assert_eq(otu_first_diff(raw, d5, 4 * K), -1, "data extent 3 is not at its phys");
  cr_assert_eq(e[0].phys % 4096, 0u);

  /* a range starting mid-extent is clipped to it, phys offset with it */
  struct ovl_extent m;
  cr_assert_eq(ovl_map(f.l, 4 * K + 100, 1000, &m, 1), 1);
  cr_assert_eq(m.offset, 4 * K + 100);
  cr_assert_eq(m.length, 1000u);
  cr_assert_eq(m.state, OVL_DATA);
  cr_assert_eq(m.phys, e[0].phys + 4 * K + 100);

  /* max = 2: two extents, then resume from the end of the second */
  struct ovl_extent two[2];
  cr_assert_eq(ovl_map(f.l, 0, f.vsize, two, 2), 2);
  cr_assert_eq(two[1].offset + two[1].length, 20 * K);
  int n = ovl_map(f.l, 20 * K, f.vsize - 20 * K, e, 5);
  cr_assert_eq(n, 3);
  cr_assert_eq(e[0].state, OVL_UNALLOCATED);

  /* data in two clusters, written in order, whose physical clusters are not known to be
   * adjacent: whatever ovl_map says, adjacent data extents must not be contiguous in the file
   * (else they should have merged) */
  fx_write(&f, d, 4 * K, 7 * 128 * K - 4 * K);
  fx_write(&f, d, 4 * K, 7 * 128 * K);
  n = ovl_map(f.l, 7 * 128 * K - 4 * K, 8 * K, e, 5);
  cr_assert(n == 1 || n == 2);
  if (n == 2)
    cr_assert_neq(e[0].phys + e[0].length, e[1].phys, "contiguous data extents not merged");
  free(d5);
  free(d);
  fx_teardown(&f);
}

/* I/O beyond the virtual size is refused, also when offset + length overflows. */
Test(overlay_states, beyond_virtual_size_rejected)
{
  struct fx f;
  fx_setup(&f, 1u << 20, 0);
  uint8_t buf[2048];
  memset(buf, 0x11, sizeof buf);
  cr_assert_eq(ovl_pread(f.l, buf, 1024, f.vsize - 512, NULL, NULL), -EINVAL);
  cr_assert_eq(ovl_pread(f.l, buf, 1, f.vsize, NULL, NULL), -EINVAL);
  cr_assert_eq(ovl_pread(f.l, buf, 100, UINT64_MAX - 10, NULL, NULL), -EINVAL);
  cr_assert_eq(ovl_pread(f.l, buf, UINT64_MAX, 512, NULL, NULL), -EINVAL);
  cr_assert_eq(ovl_pwrite(f.l, buf, 1024, f.vsize - 512, 0, NULL, NULL), -EINVAL);
  cr_assert_eq(ovl_pwrite(f.l, buf, 100, UINT64_MAX - 10, 0, NULL, NULL), -EINVAL);
  cr_assert_eq(ovl_zero(f.l, 1024, f.vsize - 512, 0, NULL, NULL), -EINVAL);
  cr_assert_eq(ovl_zero(f.l, 100, UINT64_MAX - 10, OVL_MAY_TRIM, NULL, NULL), -EINVAL);
  /* nothing was allocated by the refused calls */
  struct ovl_info in;
  ovl_get_info(f.l, &in);
  cr_assert_eq(in.allocated_bytes + in.zero_bytes, 0u);
  /* the last sector itself is fine */
  cr_assert_eq(ovl_pwrite(f.l, buf, 512, f.vsize - 512, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_pread(f.l, buf + 1024, 512, f.vsize - 512, NULL, NULL), 0);
  cr_assert_eq(memcmp(buf, buf + 1024, 512), 0);
  /* ovl_map clips to the virtual size */
  struct ovl_extent e[4];
  int n = ovl_map(f.l, f.vsize - 8 * K, 1u << 30, e, 4);
  cr_assert_gt(n, 0);
  cr_assert_eq(e[n - 1].offset + e[n - 1].length, f.vsize, "ovl_map ran past the virtual size");
  fx_teardown(&f);
}

/* A virtual size that is not a multiple of the cluster (nor of a sub-cluster) size.  Cluster 3
 * holds sub-cluster 0 whole and the first 1 KiB of sub-cluster 1. */
#define ODD_VSIZE (3 * 128 * K + 4 * K + 1024)

/* Writing exactly the in-range tail of the last sub-cluster: FORMAT.md 5.3 invariant 2 wants
 * the whole sub-cluster inside the file, so the writer must write (or extend) it all, and the
 * layer must reopen. */
Test(overlay_states, last_partial_subcluster_written_to_the_end)
{
  struct fx f;
  const uint64_t vsize = ODD_VSIZE;
  fx_setup(&f, vsize, 0);
  uint8_t *d = pat(16, 1024, vsize - 1024);
  fx_write(&f, d, 1024, vsize - 1024);
  fx_expect(&f, d, 1024, vsize - 1024, "tail");
  fx_expect_below(&f, 4 * K, 3 * 128 * K, "sc 0 of the last cluster");
  struct ovl_extent e[4];
  int n = ovl_map(f.l, 3 * 128 * K, 1u << 20, e, 4);
  cr_assert_eq(n, 2);
  cr_assert_eq(e[0].state, OVL_UNALLOCATED);
  cr_assert_eq(e[1].state, OVL_DATA);
  cr_assert_eq(e[1].offset, vsize - 1024);
  cr_assert_eq(e[1].length, 1024u, "the last extent must stop at the virtual size");
  cr_assert_geq(otu_file_size(f.path), e[1].phys + 4 * K,
                "the allocated last sub-cluster does not lie inside the file");
  fx_reopen(&f, OVL_RDONLY);
  fx_expect(&f, d, 1024, vsize - 1024, "tail after reopen");
  free(d);
  fx_teardown(&f);
}

Test(overlay_states, last_partial_cluster)
{
  struct fx f;
  const uint64_t vsize = ODD_VSIZE;
  fx_setup(&f, vsize, 0);
  /* partial writes at the very end copy up only in-range bytes */
  uint8_t *d = pat(16, 1000, vsize - 1024);
  fx_write(&f, d, 1000, vsize - 1024);
  uint8_t *d2 = pat(17, 100, vsize - 3000);
  fx_write(&f, d2, 100, vsize - 3000);
  fx_zero(&f, 512, vsize - 512, OVL_MAY_TRIM);
  cr_assert_eq(f.below.bad, 0, "copy-up read past the virtual size");
  uint8_t *want = pat(f.below.seed, 5 * K, 3 * 128 * K);
  memcpy(want + 4 * K, d, 1000);
  memcpy(want + (vsize - 3000 - 3 * 128 * K), d2, 100);
  memset(want + 5 * K - 512, 0, 512);
  fx_expect(&f, want, 5 * K, 3 * 128 * K, "last cluster");
  struct ovl_extent e[4];
  int n = ovl_map(f.l, 3 * 128 * K, 1u << 20, e, 4);
  cr_assert_gt(n, 0);
  cr_assert_eq(e[n - 1].offset + e[n - 1].length, vsize);

  /* the reader checks that nothing beyond the virtual size is set: it must accept this */
  fx_reopen(&f, OVL_RDONLY);
  fx_expect(&f, want, 5 * K, 3 * 128 * K, "last cluster after reopen");
  uint64_t l2 = otu_l1_get(f.path, 0);
  cr_assert_neq(l2, 0u);
  struct otu_l2e le = otu_l2_get(f.path, l2, 3);
  cr_assert_eq((le.alloc | le.zero) & ~UINT32_C(3), 0u,
               "bits beyond the virtual size set on disk: alloc %08x zero %08x", le.alloc, le.zero);
  /* zero the whole in-range tail, reopen again */
  fx_reopen(&f, OVL_RDWR);
  fx_zero(&f, 5 * K - 100, 3 * 128 * K + 100, OVL_MAY_TRIM);
  memset(want + 100, 0, 5 * K - 100);
  fx_expect(&f, want, 5 * K, 3 * 128 * K, "zeroed tail");
  fx_reopen(&f, OVL_RDONLY);
  fx_expect(&f, want, 5 * K, 3 * 128 * K, "zeroed tail after reopen");
  free(want);
  free(d2);
  free(d);
  fx_teardown(&f);
}

/* Geometry extremes: 512-byte and 64 KiB sub-clusters. */
Test(overlay_states, small_and_large_subclusters)
{
  for (int pass = 0; pass < 2; pass++) {
    struct fx f;
    fx_setup(&f, 16u << 20, pass ? 2u << 20 : 16 * K);
    const uint64_t off = 3 * f.sc + 77, len = 1000;
    uint8_t *d = pat(18, len, off);
    fx_write(&f, d, len, off);
    uint64_t first = off / f.sc * f.sc, last = (off + len - 1) / f.sc * f.sc + f.sc;
    for (unsigned i = 0; i < f.below.nlog; i++)
      cr_assert(f.below.log_off[i] >= first && f.below.log_off[i] + f.below.log_len[i] <= last,
                "sc %u: copy-up outside the touched sub-clusters", f.sc);
    cr_assert_eq(state_at(&f, first), OVL_DATA);
    cr_assert_eq(state_at(&f, last), OVL_UNALLOCATED);
    if (first > 0)
      cr_assert_eq(state_at(&f, first - f.sc), OVL_UNALLOCATED);
    uint64_t span = last - first + f.sc;
    uint8_t *want = pat(f.below.seed, span, first);
    memcpy(want + (off - first), d, len);
    fx_expect(&f, want, span, first, "small/large sub-clusters");
    fx_reopen(&f, OVL_RDONLY);
    fx_expect(&f, want, span, first, "small/large sub-clusters after reopen");
    free(want);
    free(d);
    fx_teardown(&f);
  }
}

/* FUA writes and zeroes are accepted and durable like a flush. */
Test(overlay_states, fua)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  uint8_t *d = pat(19, 6000, 300 * K);
  cr_assert_eq(ovl_pwrite(f.l, d, 6000, 300 * K, OVL_FUA, otu_below_pattern, &f.below), 0, "%s",
               cc_error_get());
  cr_assert_eq(ovl_zero(f.l, 8 * K, 400 * K, OVL_FUA, otu_below_pattern, &f.below), 0);
  /* the durable map (what a crash now would leave) already shows both */
  uint64_t l2 = otu_l1_get(f.path, 0);
  cr_assert_neq(l2, 0u, "FUA write: L1 entry not written");
  struct otu_l2e e2 = otu_l2_get(f.path, l2, 2), e3 = otu_l2_get(f.path, l2, 3);
  cr_assert_neq(e2.alloc, 0u, "FUA write: L2 entry not written");
  cr_assert_neq(e3.zero, 0u, "FUA zero: L2 entry not written");
  free(d);
  fx_teardown(&f);
}

/* Errors: read-only layers refuse writes; a failing image below fails the copy-up and leaves
 * the sub-cluster unallocated; a short read of allocated data is EIO, never zeroes. */
static int
below_fails(void *opaque, void *buf, uint64_t length, uint64_t offset)
{
  (void)opaque, (void)buf, (void)length, (void)offset;
  return -EIO;
}

Test(overlay_states, errors)
{
  struct fx f;
  fx_setup(&f, 8u << 20, 0);
  uint8_t buf[8 * K];
  memset(buf, 0x33, sizeof buf);

  cr_assert_lt(ovl_pwrite(f.l, buf, 100, 50, 0, below_fails, NULL), 0, "copy-up error ignored");
  cr_assert_eq(state_at(&f, 0), OVL_UNALLOCATED, "failed copy-up allocated the sub-cluster");
  cr_assert_lt(ovl_pread(f.l, buf, 100, 50, below_fails, NULL), 0, "below error ignored");

  fx_write(&f, buf, 8 * K, 128 * K);
  fx_reopen(&f, OVL_RDONLY);
  cr_assert_lt(ovl_pwrite(f.l, buf, 512, 0, 0, NULL, NULL), 0, "write to a read-only layer");
  cr_assert_lt(ovl_zero(f.l, 512, 0, 0, NULL, NULL), 0, "zero on a read-only layer");

  /* cut the file under the open layer: the data read is now short */
  struct ovl_extent e;
  cr_assert_eq(ovl_map(f.l, 128 * K, 8 * K, &e, 1), 1);
  cr_assert_eq(e.state, OVL_DATA);
  cr_assert_eq(truncate(f.path, (off_t)e.phys + 1024), 0);
  memset(buf, 0x44, sizeof buf);
  int r = ovl_pread(f.l, buf, 8 * K, 128 * K, NULL, NULL);
  cr_assert_eq(r, -EIO, "short read of allocated data returned %d, expected -EIO", r);
  fx_teardown(&f);
}

/* A zero that covers no whole sub-cluster but parts of two (64 KiB sub-clusters with 2 MiB
 * clusters) is written as data zeroes, up to almost two sub-clusters of them. */
Test(overlay_states, zero_across_two_large_subclusters)
{
  struct fx f;
  fx_setup(&f, 16u << 20, 2u << 20);
  const uint64_t off = 2 * f.sc + 8 * K, len = 2 * f.sc - 16 * K; /* sc 2 and sc 3, partly */
  uint8_t *d = pat(20, 4 * f.sc, f.sc);
  fx_write(&f, d, 4 * f.sc, f.sc);
  fx_zero(&f, len, off, 0);
  memset(d + (off - f.sc), 0, len);
  fx_expect(&f, d, 4 * f.sc, f.sc, "partial zeroes over two sub-clusters, allocated");
  /* and over unallocated sub-clusters (copy-up plus zeroes) */
  fx_zero(&f, len, off + 8u * f.sc, OVL_MAY_TRIM);
  uint8_t *want = pat(f.below.seed, 4 * f.sc, 9 * f.sc);
  memset(want + (off + 8u * f.sc - 9 * f.sc), 0, len);
  fx_expect(&f, want, 4 * f.sc, 9 * f.sc, "partial zeroes over two sub-clusters, unallocated");
  free(want);
  free(d);
  fx_teardown(&f);
}

/* An L1 table of several 4 KiB blocks, the last one partial: each block written at flush is
 * the right one (8 GiB + 4 MiB with 16 KiB clusters: 2049 L1 entries, 5 blocks). */
Test(overlay_states, l1_spans_several_blocks)
{
  struct fx f;
  const uint64_t vsize = (8ull << 30) + (4u << 20);
  fx_setup(&f, vsize, 16 * K);
  const uint64_t offs[] = {0, (2ull << 30) + 12345, (6ull << 30) + 4 * K, vsize - 512,
                           (2ull << 30) - 512};
  uint8_t *d[5];
  for (int i = 0; i < 5; i++) {
    d[i] = pat(30 + (uint64_t)i, 512, offs[i]);
    fx_write(&f, d[i], 512, offs[i]);
  }
  fx_reopen(&f, OVL_RDONLY);
  for (int i = 0; i < 5; i++)
    fx_expect(&f, d[i], 512, offs[i], "write in another L1 block");
  /* the L1 entries on disk are where FORMAT.md 5.1 puts them */
  const uint32_t want_l1[] = {0, 512, 1536, 2048, 511};
  for (int i = 0; i < 5; i++)
    cr_assert_neq(otu_l1_get(f.path, want_l1[i]), 0u, "L1 entry %u not written", want_l1[i]);
  cr_assert_eq(otu_l1_get(f.path, 1), 0u);
  cr_assert_eq(otu_l1_get(f.path, 2047), 0u);
  char err[256];
  uint8_t *st = malloc(vsize / 512);
  cr_assert_eq(otu_decode_map(f.path, st, NULL, vsize / 512, err, sizeof err), 0, "%s", err);
  cr_assert_eq(st[offs[1] / 512], OVL_DATA);
  cr_assert_eq(st[offs[3] / 512], OVL_DATA);
  free(st);
  for (int i = 0; i < 5; i++)
    free(d[i]);
  fx_teardown(&f);
}

/* Offsets far beyond 32 bits of clusters or bytes: 1 PiB with 2 MiB clusters (2 Mi L1 entries,
 * a 16 MiB L1 table) and 128 TiB with 128 KiB clusters (the 4 Mi entry limit). */
Test(overlay_states, huge_virtual_disks)
{
  const uint64_t sizes[] = {1ull << 50, 128ull << 40};
  const uint32_t css[] = {2u << 20, 128 * K};
  for (int t = 0; t < 2; t++) {
    struct fx f;
    fx_setup(&f, sizes[t], css[t]);
    const uint64_t offs[] = {f.vsize - 4096, (f.vsize >> 1) + 12345, (1ull << 32) - 100,
                             (1ull << 41) + 7};
    uint8_t *d[4];
    for (int i = 0; i < 4; i++) {
      d[i] = pat(40 + (uint64_t)i, 4096, offs[i]);
      fx_write(&f, d[i], 4096, offs[i]);
    }
    fx_reopen(&f, OVL_RDONLY);
    for (int i = 0; i < 4; i++) {
      fx_expect(&f, d[i], 4096, offs[i], "huge disk");
      struct ovl_extent e;
      cr_assert_eq(ovl_map(f.l, offs[i], 4096, &e, 1), 1);
      cr_assert_eq(e.state, OVL_DATA, "huge disk: offset %" PRIu64 " not DATA", offs[i]);
      uint8_t raw[4096]; /* the first extent: a write across clusters makes two */
      cr_assert(e.length > 0 && e.length <= 4096);
      otu_read_at(f.path, raw, e.length, e.phys);
      cr_assert_eq(memcmp(raw, d[i], e.length), 0, "huge disk: bytes not at phys");
    }
    fx_expect_below(&f, 8192, f.vsize - 12288, "huge disk, unwritten");
    for (int i = 0; i < 4; i++)
      free(d[i]);
    fx_teardown(&f);
  }
}

/* ovl_drop_map: a read-only layer gives up its map (chain/ keeps the runs in its index) but
 * still reports its counts; a writable layer refuses. */
Test(overlay_states, drop_map)
{
  char dir[] = "/tmp/cc-drop-XXXXXX";
  char path[64];
  struct ovl_create_opts o = {.virtual_size = 4 << 20};
  struct ovl_layer *l;
  struct ovl_info before, after;
  struct ovl_extent e;
  uint8_t buf[8192];

  cr_assert_not_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/a.cow", dir);
  cr_assert_eq(ovl_create(path, &o, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_open(path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  memset(buf, 0x5a, sizeof buf);
  cr_assert_eq(ovl_pwrite(l, buf, sizeof buf, 65536, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_zero(l, 4096, 0, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_drop_map(l), -EINVAL);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());

  cr_assert_eq(ovl_open(path, OVL_RDONLY, &l), 0, "%s", cc_error_get());
  ovl_get_info(l, &before);
  cr_assert_eq(ovl_drop_map(l), 0);
  cr_assert_eq(ovl_drop_map(l), 0); /* twice is harmless */
  ovl_get_info(l, &after);
  cr_assert_eq(after.allocated_bytes, 8192);
  cr_assert_eq(after.zero_bytes, 4096);
  cr_assert_eq(after.allocated_bytes, before.allocated_bytes);
  cr_assert_eq(ovl_map(l, 0, 4096, &e, 1), -EINVAL);
  cr_assert(strstr(cc_error_get(), "dropped"), "%s", cc_error_get());
  cr_assert_eq(ovl_pread(l, buf, 4096, 0, NULL, NULL), -EINVAL);
  cr_assert_eq(ovl_close(l), 0);
  unlink(path);
  rmdir(dir);
}
