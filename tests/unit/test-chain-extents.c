/* SPDX-License-Identifier: BSD-3-Clause */
/* chain/: extents across a chain, case by case (the model test checks random chains).
 *
 *   top data -> 0, top zero -> ZERO, unallocated -> what the frozen part says:
 *   data in a lower layer or the raw image -> 0, zero in a lower layer -> ZERO,
 *   raw hole / beyond the parent's size / no parent -> HOLE|ZERO.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "tests/unit/util-chain.h"
#include "tests/unit/util-overlay.h"

#define KiB 1024u
#define H (CC_EXTENT_HOLE | CC_EXTENT_ZERO)
#define Z CC_EXTENT_ZERO
#define D 0u

TestSuite(chain_extents, .init = otu_dir_init, .fini = otu_dir_fini, .timeout = 30);

struct ext {
  uint64_t off, len;
  uint32_t type;
};

struct ext_list {
  struct ext v[64];
  int n;
  int stop_after; /* return 7 after this many callbacks (0: never) */
};

static int
collect(void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  struct ext_list *l = opaque;

  cr_assert_lt(l->n, 64);
  l->v[l->n++] = (struct ext){offset, length, type};
  return l->stop_after && l->n >= l->stop_after ? 7 : 0;
}

static void
expect(struct cc_chain *c, uint64_t off, uint64_t len, const struct ext *want, int nwant)
{
  struct ext_list l = {.n = 0};
  int r = cc_chain_extents(c, len, off, collect, &l);

  cr_assert_eq(r, 0, "%s", cc_error_get());
  for (int i = 0; i < l.n && i < nwant; i++)
    cr_assert(l.v[i].off == want[i].off && l.v[i].len == want[i].len && l.v[i].type == want[i].type,
              "extent %d: got %lu+%lu type %u, want %lu+%lu type %u", i, (unsigned long)l.v[i].off,
              (unsigned long)l.v[i].len, l.v[i].type, (unsigned long)want[i].off,
              (unsigned long)want[i].len, want[i].type);
  cr_assert_eq(l.n, nwant, "got %d extents, want %d", l.n, nwant);
}

/* A raw image whose 4 KiB blocks listed in `data` hold 0x55, the rest holes. */
static char *
make_raw(const char *name, uint64_t size, const int *data, int ndata)
{
  char *p = otu_join(otu_dir, name);
  int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0644);
  uint8_t buf[4096];

  cr_assert(fd >= 0);
  memset(buf, 0x55, sizeof buf);
  cr_assert_eq(ftruncate(fd, (off_t)size), 0);
  for (int i = 0; i < ndata; i++) {
    uint64_t off = (uint64_t)data[i] * 4096;
    size_t n = size - off < 4096 ? size - off : 4096;

    cr_assert_eq(pwrite(fd, buf, n, (off_t)off), (ssize_t)n);
  }
  close(fd);
  return p;
}

Test(chain_extents, raw_template)
{
  const int data[] = {1, 2, 5};
  char *raw = make_raw("t.raw", 8 * 4096, data, 3);
  struct cc_chain *c = ctu_open(raw, CC_RAW);

  expect(c, 0, 8 * 4096,
         (struct ext[]){
             {0, 4096, H}, {4096, 8192, D}, {12288, 8192, H}, {20480, 4096, D}, {24576, 8192, H}},
         5);
  /* a range starting and ending inside runs */
  expect(c, 5000, 10000, (struct ext[]){{5000, 7288, D}, {12288, 2712, H}}, 2);
  cc_chain_close(c);
  free(raw);
}

/* raw (1 data block) <- l1 (data at 64K, zero at 128K, larger: 512K) <- top (writable) */
Test(chain_extents, through_layers)
{
  const int data[] = {0};
  char *raw = make_raw("t.raw", 256 * KiB, data, 1);
  char *l1 = otu_join(otu_dir, "l1.cow"), *top = otu_join(otu_dir, "top.cow");
  uint8_t u1[OVL_UUID_LEN], buf[8192];
  struct cc_chain *c;

  ctu_layer(l1, 512 * KiB, 0, OVL_PARENT_RAW, "t.raw", NULL, 256 * KiB, u1);
  c = ctu_open(l1, CC_RDWR);
  memset(buf, 0x66, sizeof buf);
  cr_assert_eq(cc_chain_pwrite(c, buf, 8192, 64 * KiB, 0), 0);
  cr_assert_eq(cc_chain_zero(c, 8192, 128 * KiB, 0), 0);
  cr_assert_eq(cc_chain_zero(c, 4096, 0, CC_MAY_TRIM), 0, "trim hides the raw data block");
  cc_chain_close(c);
  ctu_layer(top, 1024 * KiB, 0, OVL_PARENT_LAYER, "l1.cow", u1, 512 * KiB, NULL);

  c = ctu_open(top, CC_RDWR);
  expect(c, 0, 1024 * KiB,
         (struct ext[]){{0, 4096, Z},
                        {4096, 60 * KiB, H},
                        {64 * KiB, 8192, D},
                        {72 * KiB, 56 * KiB, H},
                        {128 * KiB, 8192, Z},
                        {136 * KiB, (1024 - 136) * KiB, H}},
         6);
  /* the top's own states win */
  cr_assert_eq(cc_chain_pwrite(c, buf, 4096, 0, 0), 0);
  cr_assert_eq(cc_chain_zero(c, 4096, 64 * KiB, 0), 0);
  cr_assert_eq(cc_chain_pwrite(c, buf, 4096, 600 * KiB, 0), 0); /* beyond l1's size */
  expect(c, 0, 1024 * KiB,
         (struct ext[]){{0, 4096, D},
                        {4096, 60 * KiB, H},
                        {64 * KiB, 4096, Z},
                        {68 * KiB, 4096, D},
                        {72 * KiB, 56 * KiB, H},
                        {128 * KiB, 8192, Z},
                        {136 * KiB, (600 - 136) * KiB, H},
                        {600 * KiB, 4096, D},
                        {604 * KiB, 420 * KiB, H}},
         9);
  /* zero next to a lower zero merges into one extent */
  cr_assert_eq(cc_chain_zero(c, 4096, 124 * KiB, 0), 0);
  expect(
      c, 100 * KiB, 48 * KiB,
      (struct ext[]){{100 * KiB, 24 * KiB, H}, {124 * KiB, 12 * KiB, Z}, {136 * KiB, 12 * KiB, H}},
      3);
  cc_chain_close(c);

  /* read-only view of the same chain, through the shared index only */
  c = ctu_open(l1, 0);
  expect(c, 0, 512 * KiB,
         (struct ext[]){{0, 4096, Z},
                        {4096, 60 * KiB, H},
                        {64 * KiB, 8192, D},
                        {72 * KiB, 56 * KiB, H},
                        {128 * KiB, 8192, Z},
                        {136 * KiB, 376 * KiB, H}},
         6);
  cc_chain_close(c);
  free(raw);
  free(l1);
  free(top);
}

Test(chain_extents, no_parent_and_early_stop)
{
  char *a = otu_join(otu_dir, "a.cow");
  struct cc_chain *c;
  uint8_t buf[4096] = {1};
  struct ext_list l = {.stop_after = 1};

  ctu_layer(a, 256 * KiB, 0, OVL_PARENT_NONE, NULL, NULL, 0, NULL);
  c = ctu_open(a, CC_RDWR);
  expect(c, 0, 256 * KiB, (struct ext[]){{0, 256 * KiB, H}}, 1);
  cr_assert_eq(cc_chain_pwrite(c, buf, 4096, 8192, 0), 0);
  cr_assert_eq(cc_chain_extents(c, 256 * KiB, 0, collect, &l), 7, "the callback's value");
  cr_assert_eq(l.n, 1);
  cr_assert(l.v[0].off == 0 && l.v[0].len == 8192 && l.v[0].type == H);
  cr_assert_eq(cc_chain_extents(c, 0, 0, collect, &l), 0, "empty range: no callback");
  cr_assert_eq(l.n, 1);
  cr_assert_eq(cc_chain_extents(c, 4096, 256 * KiB - 2048, collect, &l), -EINVAL);
  cc_chain_close(c);
  free(a);
}

/* A raw image whose size is not a multiple of 512: the layer above it reads zeroes from there. */
Test(chain_extents, unaligned_raw_size)
{
  const int data[] = {0, 1, 2};
  char *raw = make_raw("t.raw", 10000, data, 3);
  char *a = otu_join(otu_dir, "a.cow");
  struct cc_chain *c;
  uint8_t buf[16384];

  ctu_layer(a, 16384, 0, OVL_PARENT_RAW, "t.raw", NULL, 10000, NULL);
  c = ctu_open(a, CC_RDWR);
  expect(c, 0, 16384, (struct ext[]){{0, 10000, D}, {10000, 6384, H}}, 2);
  memset(buf, 0xff, sizeof buf);
  cr_assert_eq(cc_chain_pread(c, buf, sizeof buf, 0), 0, "%s", cc_error_get());
  for (int i = 0; i < 16384; i++)
    cr_assert_eq(buf[i], i < 10000 ? 0x55 : 0, "byte %d", i);
  /* a write that straddles the end of the raw image copies up the last raw bytes */
  memset(buf, 0x77, 100);
  cr_assert_eq(cc_chain_pwrite(c, buf, 100, 9950, 0), 0, "%s", cc_error_get());
  cr_assert_eq(cc_chain_pread(c, buf, sizeof buf, 0), 0);
  for (int i = 0; i < 16384; i++)
    cr_assert_eq(buf[i], i >= 9950 && i < 10050 ? 0x77 : i < 10000 ? 0x55 : 0, "byte %d", i);
  cc_chain_close(c);
  free(raw);
  free(a);
}

/* The index grows with what was written, not with the virtual size: a 1 TiB template and a
 * 1 TiB layer resolve to a handful of runs, and contiguous data of one layer is one run. */
Test(chain_extents, index_size_follows_runs)
{
  const uint64_t TiB = 1024ull * 1024 * 1024 * 1024;
  char *raw = otu_join(otu_dir, "big.raw"), *l1 = otu_join(otu_dir, "l1.cow"),
       *l2 = otu_join(otu_dir, "l2.cow");
  uint8_t u1[OVL_UUID_LEN], buf[65536];
  struct cc_chain *c;
  int fd = open(raw, O_WRONLY | O_CREAT | O_EXCL, 0644);

  cr_assert(fd >= 0);
  cr_assert_eq(ftruncate(fd, (off_t)TiB), 0); /* all hole */
  close(fd);
  ctu_layer(l1, TiB, 0, OVL_PARENT_RAW, "big.raw", NULL, TiB, u1);
  c = ctu_open(l1, CC_RDWR);
  cr_assert_eq(cc_chain_index_runs(c), 1, "a sparse 1 TiB template is one HOLE run");
  memset(buf, 0x11, sizeof buf);
  /* 4 contiguous writes = one data run; two more far apart; one zero */
  for (int i = 0; i < 4; i++)
    cr_assert_eq(cc_chain_pwrite(c, buf, sizeof buf, 1 * TiB / 2 + (uint64_t)i * sizeof buf, 0), 0);
  cr_assert_eq(cc_chain_pwrite(c, buf, 4096, 0, 0), 0);
  cr_assert_eq(cc_chain_pwrite(c, buf, 4096, TiB - 4096, 0), 0);
  cr_assert_eq(cc_chain_zero(c, 1 << 20, TiB / 4, 0), 0);
  cc_chain_close(c);
  ctu_layer(l2, TiB, 0, OVL_PARENT_LAYER, "l1.cow", u1, TiB, NULL);
  c = ctu_open(l2, CC_RDWR);
  /* data | hole | zero | hole | data (1 run if physically contiguous) | hole | data */
  cr_assert_leq(cc_chain_index_runs(c), 10, "%zu runs", cc_chain_index_runs(c));
  cr_assert_geq(cc_chain_index_runs(c), 7, "%zu runs", cc_chain_index_runs(c));
  {
    struct ext_list l = {.n = 0};

    cr_assert_eq(cc_chain_extents(c, TiB, 0, collect, &l), 0);
    cr_assert_eq(l.n, 7, "%d extents", l.n);
    cr_assert(l.v[4].off == TiB / 2 && l.v[4].len == 4 * sizeof buf && l.v[4].type == D);
  }
  cc_chain_close(c);
  free(raw);
  free(l1);
  free(l2);
}
