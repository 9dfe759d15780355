/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/grow.c and the chain read beyond a lower layer's size (FORMAT.md 7.3.1).
 *
 * - A writable top grown in place: the old bytes read the same, everything past the parent's
 *   size and the old size reads as zero, also the allocated sub-cluster that straddled the old
 *   end even when the file holds other bytes past the old end (they were never disk bytes),
 *   and the chain's extents say HOLE|ZERO where nothing in the chain wrote.
 * - Writes beyond the old end after the grow, read back through a reopened chain; a snapshot
 *   layer below keeps its own size.
 * - Refusals that change nothing: shrinking, a read-only layer, and a size needing a larger L1
 *   region (-EFBIG).
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
#define MiB (1024u * 1024u)

static void
setup(void)
{
  otu_dir_init();
  otu_io_nosync();
}

TestSuite(chain_grow, .init = setup, .fini = otu_dir_fini, .timeout = 60);

/* raw (1 MiB, random) <- top.cow (1 MiB + 512, 64 KiB clusters: 2 KiB sub-clusters, so the
 * last one straddles the end), with the last 512 bytes written. */
static char *
build(struct ctu_model *m)
{
  char *raw = otu_join(otu_dir, "t.raw"), *top = otu_join(otu_dir, "top.cow");
  uint64_t rng = otu_seed("chain_grow");
  uint8_t blk[4096];
  struct cc_chain *c;

  ctu_model_init(m, 1 * MiB, 512);
  for (uint64_t b = 0; b < m->size; b += 8192) { /* every other block: holes too */
    for (int i = 0; i < 4096; i++)
      blk[i] = (uint8_t)otu_rand(&rng);
    ctu_model_write(m, blk, 4096, b);
  }
  ctu_write_raw(raw, m);
  ctu_layer(top, 1 * MiB + 512, 64 * KiB, OVL_PARENT_RAW, "t.raw", NULL, 1 * MiB, NULL);
  ctu_model_grow(m, 1 * MiB + 512);
  c = ctu_open(top, CC_RDWR | CC_IO_SYNC);
  memset(blk, 0x5a, 512);
  cr_assert_eq(cc_chain_pwrite(c, blk, 512, 1 * MiB, 0), 0, "%s", cc_error_get());
  ctu_model_write(m, blk, 512, 1 * MiB);
  cr_assert_eq(cc_chain_close(c), 0);
  free(raw);
  return top;
}

/* File offset of the sub-cluster holding virtual byte `off` of layer `path`. */
static uint64_t
phys_of(const char *path, uint64_t off)
{
  struct ovl_layer *l;
  struct ovl_extent e;

  cr_assert_eq(ovl_open(path, OVL_RDONLY, &l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_map(l, off, 512, &e, 1), 1);
  cr_assert_eq(e.state, OVL_DATA);
  ovl_close(l);
  return e.phys;
}

Test(chain_grow, in_place_reads_zero_beyond)
{
  struct ctu_model m;
  char *top = build(&m);
  uint64_t phys = phys_of(top, 1 * MiB);
  struct ovl_layer *l;
  struct cc_chain *c;
  char junk[1536];
  int fd;

  /* Bytes past the old end inside the last allocated sub-cluster: not disk bytes before the
   * grow, so they must not become disk bytes after it. */
  memset(junk, 0xee, sizeof junk);
  fd = open(top, O_WRONLY);
  cr_assert(fd >= 0);
  cr_assert_eq(pwrite(fd, junk, sizeof junk, (off_t)(phys + 512)), (ssize_t)sizeof junk);
  close(fd);

  cr_assert_eq(ovl_open(top, OVL_RDWR, &l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_grow(l, 4 * MiB), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_virtual_size(l), 4 * MiB);
  cr_assert_eq(ovl_close(l), 0);
  ctu_model_grow(&m, 4 * MiB);
  /* The rest of the straddling sub-cluster is the layer's own data now: zeroes. */
  memset(junk, 0, sizeof junk);
  ctu_model_write(&m, junk, sizeof junk, 1 * MiB + 512);

  c = ctu_open(top, CC_IO_SYNC);
  cr_assert_eq(cc_chain_size(c), 4 * MiB);
  ctu_check_all(c, &m, 96 * KiB);
  ctu_check_extents(c, &m, 0, m.size);
  cc_chain_close(c);

  /* Writable again: writes beyond both old ends land and read back after a reopen. */
  c = ctu_open(top, CC_RDWR);
  memset(junk, 0x77, sizeof junk);
  cr_assert_eq(cc_chain_pwrite(c, junk, sizeof junk, 3 * MiB + 100, 0), 0, "%s", cc_error_get());
  ctu_model_write(&m, junk, sizeof junk, 3 * MiB + 100);
  cr_assert_eq(cc_chain_close(c), 0);
  c = ctu_open(top, 0);
  ctu_check_all(c, &m, 1 * MiB);
  ctu_check_extents(c, &m, 0, m.size);
  cc_chain_close(c);
  ctu_model_free(&m);
  free(top);
}

/* A grown top on a frozen layer that keeps its smaller size. */
Test(chain_grow, frozen_layer_keeps_its_size)
{
  struct ctu_model m, snap;
  char *mid = build(&m), *top = otu_join(otu_dir, "top2.cow");
  uint8_t umid[OVL_UUID_LEN], buf[8192];
  struct ovl_layer *l;
  struct ovl_info info;
  struct cc_chain *c;

  cr_assert_eq(ovl_open(mid, OVL_RDONLY, &l), 0);
  ovl_get_info(l, &info);
  memcpy(umid, info.uuid, OVL_UUID_LEN);
  ovl_close(l);
  ctu_layer(top, 1 * MiB + 512, 0, OVL_PARENT_LAYER, "top.cow", umid, 1 * MiB + 512, NULL);
  ctu_model_copy(&snap, &m);
  cr_assert_eq(ovl_open(top, OVL_RDWR, &l), 0);
  cr_assert_eq(ovl_grow(l, 8 * MiB), 0, "%s", cc_error_get());
  ovl_close(l);
  ctu_model_grow(&m, 8 * MiB);
  c = ctu_open(top, CC_RDWR);
  memset(buf, 0x42, sizeof buf);
  cr_assert_eq(cc_chain_pwrite(c, buf, sizeof buf, 1 * MiB - 4096, 0), 0, "%s", cc_error_get());
  ctu_model_write(&m, buf, sizeof buf, 1 * MiB - 4096);
  ctu_check_all(c, &m, 1 * MiB);
  ctu_check_extents(c, &m, 0, m.size);
  cc_chain_close(c);
  /* The frozen layer alone: its own size and bytes. */
  c = ctu_open(mid, 0);
  cr_assert_eq(cc_chain_size(c), 1 * MiB + 512);
  ctu_check_all(c, &snap, 64 * KiB);
  cc_chain_close(c);
  ctu_model_free(&snap);
  ctu_model_free(&m);
  free(mid);
  free(top);
}

Test(chain_grow, refusals_change_nothing)
{
  struct ctu_model m;
  char *top = build(&m);
  struct ovl_layer *l;

  cr_assert_eq(ovl_open(top, OVL_RDWR, &l), 0);
  cr_assert_eq(ovl_grow(l, 512 * KiB), -EINVAL);
  cr_assert(strstr(cc_error_get(), "smaller") != NULL, "%s", cc_error_get());
  cr_assert_eq(ovl_grow(l, 2 * MiB + 100), -EINVAL);
  /* 64 KiB clusters: one 4096-byte L1 region covers 512 * 16 MiB = 8 GiB. */
  cr_assert_eq(ovl_grow(l, (uint64_t)8 * 1024 * MiB), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_grow(l, (uint64_t)8 * 1024 * MiB + 512), -EFBIG);
  cr_assert(strstr(cc_error_get(), "L1 table region") != NULL, "%s", cc_error_get());
  cr_assert_eq(ovl_virtual_size(l), (uint64_t)8 * 1024 * MiB);
  ovl_close(l);
  cr_assert_eq(ovl_open(top, OVL_RDONLY, &l), 0);
  cr_assert_eq(ovl_grow(l, 16 * MiB), -EPERM);
  cr_assert_eq(ovl_virtual_size(l), (uint64_t)8 * 1024 * MiB);
  ovl_close(l);
  ctu_model_free(&m);
  free(top);
}
