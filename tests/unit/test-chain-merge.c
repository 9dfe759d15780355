/* SPDX-License-Identifier: BSD-3-Clause */
/* chain/: the live merge primitives (view.c, registry.c; docs/POOL.md 6.2).
 *
 * - fill_top copies a frozen layer into the writable top only where the top is unallocated:
 *   what was written to the top since (the guest's newer data) survives; the chain reads the
 *   same before and after; relink_top points the top past the merged layer (still reading the
 *   same), refresh_frozen rebuilds the frozen part without it (the chain lets go of its file),
 *   and the top reopened from disk after the layer is removed reads the same.
 * - forget_file: an index holding the file is no longer shared with chains opened afterwards
 *   (they build their own), and refresh_frozen rebuilds a read-only chain too.
 * Leaks: the ASan build fails through CTest's FAIL_REGULAR_EXPRESSION.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "tests/unit/util-chain.h"
#include "tests/unit/util-overlay.h"

#define SIZE (2u * 1024u * 1024u)

static char *merge_dir;

static void
cleanup(void)
{
  otu_rmtree(merge_dir);
  merge_dir = NULL;
}

TestSuite(chain_merge, .fini = cleanup, .timeout = 120);

/* Random writes through the chain (into its top), mirrored in the model. */
static void
scribble(struct cc_chain *c, struct ctu_model *m, uint64_t *rng, int n)
{
  uint8_t buf[65536];

  for (int k = 0; k < n; k++) {
    uint64_t len = 1 + otu_rand_below(rng, sizeof buf);
    uint64_t off = otu_rand_below(rng, SIZE - len);
    for (uint64_t j = 0; j < len; j++)
      buf[j] = (uint8_t)otu_rand(rng);
    cr_assert_eq(cc_chain_pwrite(c, buf, len, off, 0), 0, "%s", cc_error_get());
    ctu_model_write(m, buf, len, off);
  }
}

static void
ident(const char *path, struct stat *st)
{
  cr_assert_eq(stat(path, st), 0, "%s", path);
}

/* t0 <- t1 (the snapshot S to merge) <- t2 (the live top).  *c is open on t2 (read-write). */
static void
build(const char *dir, uint8_t uuids[][OVL_UUID_LEN], struct ctu_model *m, uint64_t *rng,
      struct cc_chain **c)
{
  char *p0 = ctu_stack_path(dir, "t", 0), *p1 = ctu_stack_path(dir, "t", 1),
       *p2 = ctu_stack_path(dir, "t", 2);
  struct cc_chain *w;

  ctu_stack_layer(dir, "t", 0, SIZE, NULL, uuids);
  w = ctu_open(p0, CC_RDWR | CC_IO_SYNC);
  scribble(w, m, rng, 40);
  cr_assert_eq(cc_chain_close(w), 0);
  ctu_stack_layer(dir, "t", 1, SIZE, NULL, uuids);
  w = ctu_open(p1, CC_RDWR | CC_IO_SYNC);
  scribble(w, m, rng, 40);
  cr_assert_eq(cc_chain_close(w), 0);
  ctu_stack_layer(dir, "t", 2, SIZE, NULL, uuids);
  *c = ctu_open(p2, CC_RDWR | CC_IO_SYNC);
  scribble(*c, m, rng, 20); /* the guest's writes since the snapshot */
  free(p0);
  free(p1);
  free(p2);
}

Test(chain_merge, fill_relink_refresh_into_the_top)
{
  char *dir = otu_tmpdir(), *p1, *p2;
  uint8_t uuids[3][OVL_UUID_LEN];
  struct ctu_model m;
  uint64_t rng = otu_seed("chain_merge_top"), copied = 0, total = 0;
  struct cc_chain *c, *ro;
  struct ovl_layer *s;
  struct stat st1;

  merge_dir = dir;
  otu_io_nosync();
  ctu_model_init(&m, SIZE, 4096);
  build(dir, uuids, &m, &rng, &c);
  p1 = ctu_stack_path(dir, "t", 1);
  p2 = ctu_stack_path(dir, "t", 2);
  ident(p1, &st1);
  /* A read-only chain on S (like CLONE@SNAP) shares the live chain's frozen index. */
  ro = ctu_open(p1, CC_IO_SYNC);
  cr_assert_eq(cc_chain_index_id(ro), cc_chain_index_id(c));

  cr_assert_eq(ovl_open(p1, OVL_RDONLY, &s), 0, "%s", cc_error_get());
  /* In pieces, as the server does; the guest writes between pieces and must win. */
  for (uint64_t off = 0; off < SIZE; off += 256 * 1024) {
    cr_assert_eq(cc_chain_fill_top(c, s, off, 256 * 1024, &copied), 0, "%s", cc_error_get());
    total += copied;
    scribble(c, &m, &rng, 2);
    ctu_check_read(c, &m, 0, SIZE);
  }
  cr_assert_gt(total, 0, "nothing copied");
  /* Everything is in the top now: a second pass copies nothing. */
  cr_assert_eq(cc_chain_fill_top(c, s, 0, SIZE, &copied), 0, "%s", cc_error_get());
  cr_assert_eq(copied, 0, "copied %llu bytes over data already in the top",
               (unsigned long long)copied);
  cr_assert_eq(ovl_close(s), 0);

  cr_assert_eq(cc_chain_relink_top(c, OVL_PARENT_LAYER, "t0.cow"), 0, "%s", cc_error_get());
  ctu_check_all(c, &m, 65536);
  cr_assert(cc_chain_uses_file(c, st1.st_dev, st1.st_ino), "still on the old index");
  cr_assert_geq(cc_chain_forget_file(st1.st_dev, st1.st_ino), 1);
  cr_assert_eq(cc_chain_refresh_frozen(c), 0, "%s", cc_error_get());
  cr_assert(!cc_chain_uses_file(c, st1.st_dev, st1.st_ino), "the refreshed chain holds S");
  cr_assert_eq(cc_chain_depth(c), 2);
  ctu_check_all(c, &m, 65536);
  ctu_check_extents(c, &m, 0, SIZE);
  scribble(c, &m, &rng, 10);
  ctu_check_all(c, &m, 65536);

  /* A refused relink (no such parent) changes nothing. */
  cr_assert_lt(cc_chain_relink_top(c, OVL_PARENT_LAYER, "missing.cow"), 0);
  ctu_check_all(c, &m, 65536);

  cr_assert_eq(cc_chain_close(ro), 0);
  cr_assert_eq(cc_chain_close(c), 0);
  cr_assert_eq(unlink(p1), 0);
  c = ctu_open(p2, CC_RDWR | CC_IO_SYNC);
  ctu_check_all(c, &m, 65536);
  cr_assert_eq(cc_chain_close(c), 0);
  ctu_model_free(&m);
  free(p1);
  free(p2);
}

Test(chain_merge, forget_unshares_and_refresh_rebuilds_read_only)
{
  char *dir = otu_tmpdir(), *p0, *p1;
  uint8_t uuids[3][OVL_UUID_LEN];
  struct ctu_model m, at1;
  uint64_t rng = otu_seed("chain_merge_forget");
  struct cc_chain *c, *ro, *ro2;
  const void *id;
  struct stat st0;

  merge_dir = dir;
  otu_io_nosync();
  ctu_model_init(&m, SIZE, 4096);
  build(dir, uuids, &m, &rng, &c);
  cr_assert_eq(cc_chain_close(c), 0);
  p0 = ctu_stack_path(dir, "t", 0);
  p1 = ctu_stack_path(dir, "t", 1);
  ident(p0, &st0);
  c = ctu_open(p1, CC_IO_SYNC); /* read-only, its index holds t0 and t1 */
  ctu_model_init(&at1, SIZE, 4096);
  /* What t1's chain reads (the model also has t2's writes): read it back as the reference. */
  {
    uint8_t *buf = malloc(SIZE);
    cr_assert_eq(cc_chain_pread(c, buf, SIZE, 0), 0, "%s", cc_error_get());
    ctu_model_write(&at1, buf, SIZE, 0);
    free(buf);
  }
  ro = ctu_open(p1, CC_IO_SYNC);
  id = cc_chain_index_id(ro);
  cr_assert_eq(cc_chain_index_id(c), id, "one index for both");
  cr_assert(cc_chain_uses_file(c, st0.st_dev, st0.st_ino));
  cr_assert_geq(cc_chain_forget_file(st0.st_dev, st0.st_ino), 1);
  /* Opened after the forget: its own index, never the forgotten one. */
  ro2 = ctu_open(p1, CC_IO_SYNC);
  cr_assert_neq(cc_chain_index_id(ro2), id, "a chain opened after forget reused the index");
  ctu_check_all(ro2, &at1, 65536);
  /* The old ones still read right, and a refresh moves one to a fresh index. */
  ctu_check_all(ro, &at1, 65536);
  cr_assert_eq(cc_chain_refresh_frozen(ro), 0, "%s", cc_error_get());
  cr_assert_neq(cc_chain_index_id(ro), id);
  ctu_check_all(ro, &at1, 65536);
  ctu_check_all(c, &at1, 65536);
  cr_assert_eq(cc_chain_close(ro2), 0);
  cr_assert_eq(cc_chain_close(ro), 0);
  cr_assert_eq(cc_chain_close(c), 0);
  ctu_model_free(&m);
  ctu_model_free(&at1);
  free(p0);
  free(p1);
}
