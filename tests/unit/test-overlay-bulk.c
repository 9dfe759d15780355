/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: bulk fills (ovl_copy_in, FORMAT.md 7.6).
 *
 * A fill lands the source's bytes in the layer and publishes them as allocated; sub-clusters
 * already allocated are written in place, zero ones become allocated; a fill across several L2
 * tables keeps each table's new clusters contiguous; a range ending at a virtual size inside a
 * sub-cluster leaves that sub-cluster whole in the file; misaligned ranges and read-only layers
 * are refused.  The map is checked with the tests' own decoder after close.
 *
 * Batches (ovl_copy_in_fills): new clusters follow the fills' order, so fills that are one run
 * of the source are one copy_file_range wherever they land in the virtual disk (the old engine,
 * one fill at a time in virtual order, made one call per cluster); bridges are one clone over
 * run, gap and run, with the gap unreferenced; a refused clone copies the parts one by one and
 * ends bridging.  The calls are counted by an ovl_io table (overlay/io.h), the clone emulated.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "overlay/io.h"
#include "overlay/overlay.h"
#include "tests/unit/util-overlay.h"

TestSuite(overlay_bulk, .timeout = 60);

#define K 1024u
#define M (1024u * 1024u)

struct fx {
  char *dir, *path;
  int src;
  uint8_t *data;
  uint64_t size;
};

static void
fx_init(struct fx *f, uint64_t vsize, uint32_t cs)
{
  char *sp;

  f->dir = otu_tmpdir();
  f->path = otu_join(f->dir, "l.cow");
  f->size = vsize;
  otu_create(f->path, vsize, cs);
  f->data = malloc(vsize);
  cr_assert(f->data);
  otu_pattern(42, f->data, vsize, 0);
  sp = otu_join(f->dir, "src.bin");
  f->src = open(sp, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert(f->src >= 0);
  cr_assert_eq(pwrite(f->src, f->data, vsize, 0), (ssize_t)vsize);
  free(sp);
}

static void
fx_fini(struct fx *f)
{
  close(f->src);
  free(f->data);
  free(f->path);
  otu_rmtree(f->dir);
}

static void
expect_reads(struct ovl_layer *l, uint64_t off, uint64_t len, const uint8_t *want)
{
  uint8_t *b = malloc(len);
  cr_assert_eq(ovl_pread(l, b, len, off, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(otu_first_diff(b, want, len), -1, "bytes differ at offset %llu",
               (unsigned long long)off);
  free(b);
}

Test(overlay_bulk, fill_states_and_contents)
{
  struct fx f;
  struct ovl_layer *l;
  uint8_t zero[8192] = {0}, mine[4096];
  uint64_t nsc = 80 * M / 4096, *phys = calloc(nsc, sizeof *phys);
  uint8_t *st = malloc(nsc);
  char err[256];

  fx_init(&f, 80 * M, 128 * K);
  cr_assert_eq(ovl_open(f.path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  /* an allocated sub-cluster (written in place) and a zero one inside the fill */
  memset(mine, 0x77, sizeof mine);
  cr_assert_eq(ovl_pwrite(l, mine, 4096, 40 * M, 0, NULL, NULL), 0);
  cr_assert_eq(ovl_zero(l, 8192, 40 * M + 65536, 0, NULL, NULL), 0);
  /* 36 MiB from 30 MiB: across the L2 tables of [0, 32M), [32M, 64M) and [64M, 96M) */
  cr_assert_eq(ovl_copy_in(l, 30 * M, 36 * M, f.src, 30 * M, "src"), 0, "%s", cc_error_get());
  expect_reads(l, 30 * M, 36 * M, f.data + 30 * M);
  expect_reads(l, 0, 8192, zero); /* untouched: unallocated, no parent */
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());

  cr_assert_eq(otu_decode_map(f.path, st, phys, nsc, err, sizeof err), 0, "%s", err);
  for (uint64_t k = 0; k < nsc; k++) {
    int in = k >= 30 * M / 4096 && k < 66 * M / 4096;
    cr_assert_eq(st[k], in ? OVL_DATA : OVL_UNALLOCATED, "sub-cluster %llu", (unsigned long long)k);
  }
  /* the fill's new clusters in the stretch [32M, 64M) are contiguous in the file; cluster
   * 320 (40 MiB) was bound by the write before the fill */
  for (uint64_t c = 257; c < 512; c++) {
    uint64_t prev = c == 321 ? 319 : c - 1;
    if (c == 320)
      continue;
    cr_assert_eq(phys[c * 32], phys[prev * 32] + 131072, "cluster %llu not contiguous",
                 (unsigned long long)c);
  }
  cr_assert_eq(ovl_open(f.path, OVL_RDONLY, &l), 0, "%s", cc_error_get());
  expect_reads(l, 30 * M, 36 * M, f.data + 30 * M);
  ovl_close(l);
  free(st);
  free(phys);
  fx_fini(&f);
}

Test(overlay_bulk, partial_last_subcluster)
{
  struct fx f;
  struct ovl_layer *l;
  uint64_t vs = 4 * M + 1536, nsc = (vs + 4095) / 4096, *phys = calloc(nsc, sizeof *phys);
  uint8_t *st = malloc(nsc);
  char err[256];

  fx_init(&f, vs, 128 * K);
  cr_assert_eq(ovl_open(f.path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_copy_in(l, 4 * M - 8192, 8192 + 1536, f.src, 4 * M - 8192, "src"), 0, "%s",
               cc_error_get());
  expect_reads(l, 4 * M - 8192, 8192 + 1536, f.data + 4 * M - 8192);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  /* the decoder checks that the straddling sub-cluster lies wholly inside the file */
  cr_assert_eq(otu_decode_map(f.path, st, phys, nsc, err, sizeof err), 0, "%s", err);
  cr_assert_eq(st[nsc - 1], OVL_DATA);
  free(st);
  free(phys);
  fx_fini(&f);
}

Test(overlay_bulk, refusals)
{
  struct fx f;
  struct ovl_layer *l;

  fx_init(&f, 4 * M, 128 * K);
  cr_assert_eq(ovl_open(f.path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_copy_in(l, 512, 4096, f.src, 0, "src"), -EINVAL);
  cr_assert_eq(ovl_copy_in(l, 0, 4096 + 512, f.src, 0, "src"), -EINVAL);
  cr_assert_eq(ovl_copy_in(l, 4 * M - 4096, 8192, f.src, 0, "src"), -EINVAL);
  /* a source that ends early is an error, never zeroes */
  cr_assert_eq(ftruncate(f.src, 4096), 0);
  cr_assert_eq(ovl_copy_in(l, 0, 8192, f.src, 0, "src"), -EIO);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_open(f.path, OVL_RDONLY, &l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_copy_in(l, 0, 4096, f.src, 0, "src"), -EPERM);
  ovl_close(l);
  fx_fini(&f);
}

/* ---- batches: the calls they make ---- */

static unsigned n_cfr, n_clone;
static bool clone_refuses;

static ssize_t
count_cfr(int in, off_t *ioff, int out, off_t *ooff, size_t len, unsigned flags)
{
  n_cfr++;
  return ovl_io_default.copy_file_range(in, ioff, out, ooff, len, flags);
}

/* FICLONERANGE as a file system that shares extents would do it (or refuse, EOPNOTSUPP) */
static int
fake_clone(int in, uint64_t ioff, uint64_t len, int out, uint64_t ooff)
{
  uint8_t *b;

  n_clone++;
  if (clone_refuses) {
    errno = EOPNOTSUPP;
    return -1;
  }
  b = malloc(len);
  cr_assert(b);
  cr_assert_eq(pread(in, b, len, (off_t)ioff), (ssize_t)len);
  cr_assert_eq(pwrite(out, b, len, (off_t)ooff), (ssize_t)len);
  free(b);
  return 0;
}

static struct ovl_io_ops counting;

static void
count_calls(bool with_clone, bool refuses)
{
  counting = ovl_io_default;
  counting.copy_file_range = count_cfr;
  counting.clone_range = with_clone ? fake_clone : NULL;
  clone_refuses = refuses;
  n_cfr = n_clone = 0;
  ovl_io = &counting;
}

#define C (128 * K)

/* The file offset of cluster c's data, from the tests' own decoder (0: unallocated). */
static uint64_t *
decoded(struct fx *f)
{
  uint64_t nsc = f->size / 4096, *phys = calloc(nsc, sizeof *phys);
  uint8_t *st = malloc(nsc);
  char err[256];

  cr_assert_eq(otu_decode_map(f->path, st, phys, nsc, err, sizeof err), 0, "%s", err);
  free(st);
  return phys;
}

static uint64_t
cluster_phys(const uint64_t *phys, uint64_t c)
{
  return phys[c * (C / 4096)];
}

Test(overlay_bulk, batch_follows_source_order)
{
  /* Six clusters, one run of the source, scattered over three L2 stretches of the layer. */
  static const uint64_t vc[6] = {500, 5, 300, 40, 600, 7};
  struct ovl_fill fills[6];
  struct fx f;
  struct ovl_layer *l;
  uint64_t *phys;

  fx_init(&f, 80 * M, C);
  for (int i = 0; i < 6; i++)
    fills[i] = (struct ovl_fill){vc[i] * C, C, f.src, (uint64_t)i * C, "src", 0};
  cr_assert_eq(ovl_open(f.path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  count_calls(false, false);
  cr_assert_eq(ovl_copy_in_fills(l, fills, 6, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(n_cfr, 1, "one copy_file_range for one source run, not %u", n_cfr);
  for (int i = 0; i < 6; i++)
    expect_reads(l, vc[i] * C, C, f.data + (uint64_t)i * C);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  ovl_io = &ovl_io_default;
  /* in the file in the source's order, the three L2 tables before them */
  phys = decoded(&f);
  for (int i = 1; i < 6; i++)
    cr_assert_eq(cluster_phys(phys, vc[i]), cluster_phys(phys, vc[0]) + (uint64_t)i * C,
                 "cluster %llu", (unsigned long long)vc[i]);
  cr_assert_eq(cluster_phys(phys, vc[0]), 8192 + 4096 + 3 * 4096);
  free(phys);
  fx_fini(&f);
}

/* Fills A (2 clusters), B, C from source offsets 0, 3C, 5C: gaps of one cluster each. */
static void
three_with_gaps(struct fx *f, struct ovl_fill *fl, unsigned flags)
{
  fl[0] = (struct ovl_fill){10 * C, 2 * C, f->src, 0, "src", 0};
  fl[1] = (struct ovl_fill){20 * C, C, f->src, 3 * C, "src", flags};
  fl[2] = (struct ovl_fill){30 * C, C, f->src, 5 * C, "src", flags};
}

Test(overlay_bulk, batch_bridges)
{
  struct ovl_fill fills[3];
  struct fx f;
  struct ovl_layer *l;
  uint64_t *phys, a;

  fx_init(&f, 16 * M, C);
  three_with_gaps(&f, fills, OVL_FILL_BRIDGE);
  cr_assert_eq(ovl_open(f.path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  count_calls(true, false);
  cr_assert_eq(ovl_copy_in_fills(l, fills, 3, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(n_clone, 1, "one clone over run, gap, run, gap, run; not %u", n_clone);
  cr_assert_eq(n_cfr, 0);
  expect_reads(l, 10 * C, 2 * C, f.data);
  expect_reads(l, 20 * C, C, f.data + 3 * C);
  expect_reads(l, 30 * C, C, f.data + 5 * C);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  ovl_io = &ovl_io_default;
  /* the gaps are in the file, as long as the source's, and nothing references them */
  phys = decoded(&f);
  a = cluster_phys(phys, 10);
  cr_assert_eq(cluster_phys(phys, 11), a + C);
  cr_assert_eq(cluster_phys(phys, 20), a + 3 * C);
  cr_assert_eq(cluster_phys(phys, 30), a + 5 * C);
  for (uint64_t c = 0; c < 16 * M / C; c++)
    cr_assert(c == 10 || c == 11 || c == 20 || c == 30 || cluster_phys(phys, c) == 0);
  free(phys);
  fx_fini(&f);
}

Test(overlay_bulk, batch_without_bridge_flags_is_compact)
{
  struct ovl_fill fills[3];
  struct fx f;
  struct ovl_layer *l;
  uint64_t *phys;

  fx_init(&f, 16 * M, C);
  three_with_gaps(&f, fills, 0);
  cr_assert_eq(ovl_open(f.path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  count_calls(true, false);
  cr_assert_eq(ovl_copy_in_fills(l, fills, 3, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(n_clone, 0, "a gap the caller did not vouch for is never shared");
  cr_assert_eq(n_cfr, 3);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  ovl_io = &ovl_io_default;
  phys = decoded(&f);
  cr_assert_eq(cluster_phys(phys, 20), cluster_phys(phys, 10) + 2 * C);
  cr_assert_eq(cluster_phys(phys, 30), cluster_phys(phys, 10) + 3 * C);
  free(phys);
  fx_fini(&f);
}

Test(overlay_bulk, batch_refused_clone_copies_parts)
{
  struct ovl_fill fills[5];
  struct fx f;
  struct ovl_layer *l;
  uint64_t *phys;

  fx_init(&f, 16 * M, C);
  three_with_gaps(&f, fills, OVL_FILL_BRIDGE);
  /* D starts a new run (no flag): A-C's clone is tried and refused; E would bridge from D */
  fills[3] = (struct ovl_fill){40 * C, C, f.src, 7 * C, "src", 0};
  fills[4] = (struct ovl_fill){50 * C, C, f.src, 9 * C, "src", OVL_FILL_BRIDGE};
  cr_assert_eq(ovl_open(f.path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  count_calls(true, true);
  cr_assert_eq(ovl_copy_in_fills(l, fills, 5, NULL, NULL), 0, "%s", cc_error_get());
  /* the bridged run is tried once, then copied part by part (its gaps stay holes); after the
   * refusal nothing is bridged: E is bound next to D and copied on its own */
  cr_assert_eq(n_clone, 1, "%u clones tried", n_clone);
  cr_assert_eq(n_cfr, 5, "%u copies", n_cfr);
  expect_reads(l, 10 * C, 2 * C, f.data);
  expect_reads(l, 20 * C, C, f.data + 3 * C);
  expect_reads(l, 30 * C, C, f.data + 5 * C);
  expect_reads(l, 40 * C, C, f.data + 7 * C);
  expect_reads(l, 50 * C, C, f.data + 9 * C);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  ovl_io = &ovl_io_default;
  phys = decoded(&f);
  cr_assert_eq(cluster_phys(phys, 30), cluster_phys(phys, 10) + 5 * C);
  cr_assert_eq(cluster_phys(phys, 40), cluster_phys(phys, 30) + C);
  cr_assert_eq(cluster_phys(phys, 50), cluster_phys(phys, 40) + C);
  free(phys);
  fx_fini(&f);
}

Test(overlay_bulk, batch_never_bridges_over_bound_clusters)
{
  /* B's cluster is already bound (a write before the batch): no bridge into it, its data goes
   * in place, and nothing the layer held before is overwritten by a gap. */
  struct ovl_fill fills[3];
  struct fx f;
  struct ovl_layer *l;
  uint8_t mine[4096];
  uint64_t *phys;

  fx_init(&f, 16 * M, C);
  memset(mine, 0x66, sizeof mine);
  three_with_gaps(&f, fills, OVL_FILL_BRIDGE);
  fills[1].offset += 4096; /* B fills its cluster but the first sub-cluster */
  fills[1].length -= 4096;
  fills[1].src_offset += 4096;
  cr_assert_eq(ovl_open(f.path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_pwrite(l, mine, 4096, 20 * C, 0, NULL, NULL), 0);
  count_calls(true, false);
  cr_assert_eq(ovl_copy_in_fills(l, fills, 3, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(n_clone, 0, "%u clones", n_clone);
  cr_assert_eq(n_cfr, 3, "%u copies", n_cfr);
  expect_reads(l, 20 * C, 4096, mine);
  expect_reads(l, 20 * C + 4096, C - 4096, f.data + 3 * C + 4096);
  expect_reads(l, 30 * C, C, f.data + 5 * C);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  ovl_io = &ovl_io_default;
  phys = decoded(&f);
  free(phys);
  fx_fini(&f);
}

Test(overlay_bulk, batch_refusals)
{
  struct fx f;
  struct ovl_layer *l;
  struct ovl_fill bad[2] = {{0, C, 0, 0, "src", 0}, {512, 4096, 0, 0, "src", 0}};

  fx_init(&f, 4 * M, C);
  bad[0].src_fd = bad[1].src_fd = f.src;
  cr_assert_eq(ovl_open(f.path, OVL_RDWR, &l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_copy_in_fills(l, bad, 2, NULL, NULL), -EINVAL);
  bad[1] = (struct ovl_fill){C, 0, f.src, 0, "src", 0};
  cr_assert_eq(ovl_copy_in_fills(l, bad, 2, NULL, NULL), -EINVAL);
  bad[1] = (struct ovl_fill){4 * M - 4096, 8192, f.src, 0, "src", 0};
  cr_assert_eq(ovl_copy_in_fills(l, bad, 2, NULL, NULL), -EINVAL);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  fx_fini(&f);
}
