/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: bulk fills (ovl_copy_in, FORMAT.md 7.6).
 *
 * A fill lands the source's bytes in the layer and publishes them as allocated; sub-clusters
 * already allocated are written in place, zero ones become allocated; a fill across several L2
 * tables keeps each table's new clusters contiguous; a range ending at a virtual size inside a
 * sub-cluster leaves that sub-cluster whole in the file; misaligned ranges and read-only layers
 * are refused.  The map is checked with the tests' own decoder after close.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
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
