/* SPDX-License-Identifier: BSD-3-Clause */
/* chain/: randomized model tests.  Chains of random depth (1 to 64 layers, on a raw image or
 * on a parentless layer) and one of 1,000 files get random writes, write-zeroes/trims, reads
 * of random ranges (which span layer boundaries) and freezes (close, new empty layer on top,
 * reopen), and every byte read is compared with an in-memory model (util-chain.h).  Extents
 * are checked against the model after each layer.  Each test runs with io_uring and with
 * pread; the seed is printed and $COWCHAIN_SEED replays it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "tests/unit/util-chain.h"
#include "tests/unit/util-overlay.h"

#define MAX_IO (96u * 1024u)

struct round {
  uint64_t rng;
  char *dir;
  unsigned io; /* CC_IO_SYNC, CC_IO_AUTO or 0 */
  uint32_t cluster;
  struct ctu_model m;
  uint8_t *scratch;
  int raw;        /* the bottom is a raw image */
  size_t nlayers; /* layer files so far: l0 .. l<nlayers-1> */
  uint8_t top_uuid[OVL_UUID_LEN];
  uint64_t top_size;
};

/* The temporary directory of the round in progress, removed by the suite's fini when an
 * assertion ends the test early. */
static char *live_dir;

static void
cleanup(void)
{
  otu_rmtree(live_dir);
  live_dir = NULL;
}

TestSuite(chain_model, .fini = cleanup, .timeout = 120);

static char *
layer_path(const struct round *t, size_t i)
{
  char *p;

  cr_assert_neq(asprintf(&p, "%s/layers/l%zu.cow", t->dir, i), -1);
  return p;
}

static uint64_t
rnd(struct round *t, uint64_t n)
{
  return otu_rand_below(&t->rng, n);
}

/* A random length (often small, sometimes up to MAX_IO) and offset inside the disk. */
static void
rand_range(struct round *t, uint64_t *off, uint64_t *len)
{
  uint64_t size = t->m.size;
  uint64_t l = rnd(t, 4) == 0 ? 1 + rnd(t, MAX_IO) : 1 + rnd(t, 3 * t->cluster / 32 + 100);

  if (l > size)
    l = size;
  *len = l;
  *off = rnd(t, size - l + 1);
}

static void
random_op(struct round *t, struct cc_chain *c)
{
  uint64_t off, len;
  unsigned k = (unsigned)rnd(t, 20);
  int r;

  rand_range(t, &off, &len);
  if (k < 9) {
    for (uint64_t i = 0; i < len; i++)
      t->scratch[i] = (uint8_t)(otu_rand(&t->rng) | 1); /* never zero: zeroes come from zero */
    r = cc_chain_pwrite(c, t->scratch, len, off, rnd(t, 8) == 0 ? CC_FUA : 0);
    cr_assert_eq(r, 0, "pwrite %" PRIu64 "+%" PRIu64 ": %s", off, len, cc_error_get());
    ctu_model_write(&t->m, t->scratch, len, off);
  } else if (k < 13) {
    unsigned flags = (rnd(t, 2) ? CC_MAY_TRIM : 0) | (rnd(t, 8) == 0 ? CC_FUA : 0);

    r = cc_chain_zero(c, len, off, flags);
    cr_assert_eq(r, 0, "zero %" PRIu64 "+%" PRIu64 ": %s", off, len, cc_error_get());
    ctu_model_zero(&t->m, len, off);
  } else if (k < 18) {
    ctu_check_read(c, &t->m, off, len);
  } else if (k == 18) {
    cr_assert_eq(cc_chain_flush(c), 0, "flush: %s", cc_error_get());
  } else {
    ctu_check_extents(c, &t->m, off, len);
  }
}

/* The bottom: a sparse raw image with random blocks, or nothing (l0 has no parent). */
static void
make_bottom(struct round *t)
{
  uint64_t size = 4096 * (16 + rnd(t, 160));
  char *p;

  ctu_model_init(&t->m, size, t->cluster / 32);
  t->raw = rnd(t, 3) != 0;
  if (t->raw) {
    for (uint64_t b = 0; b < size; b += 4096) {
      uint64_t k = rnd(t, 10);

      if (k < 4) {
        for (int i = 0; i < 4096; i++)
          t->scratch[i] = (uint8_t)otu_rand(&t->rng);
        ctu_model_write(&t->m, t->scratch, 4096, b);
      } else if (k == 4) {
        memset(t->scratch, 0, 4096); /* data that happens to be zero */
        ctu_model_write(&t->m, t->scratch, 4096, b);
      }
    }
    p = otu_join(t->dir, "images/base.raw");
    ctu_write_raw(p, &t->m);
    free(p);
  }
  /* l0 may be larger than the raw image: the rest reads as zero (a HOLE).  Sizes stay
   * multiples of 4096 so that model granules never straddle a size boundary. */
  t->top_size = size + (rnd(t, 3) == 0 ? 4096 * rnd(t, 16) : 0);
  p = layer_path(t, 0);
  ctu_layer(p, t->top_size, t->cluster, t->raw ? OVL_PARENT_RAW : OVL_PARENT_NONE,
            "../images/base.raw", NULL, size, t->top_uuid);
  ctu_model_grow(&t->m, t->top_size);
  free(p);
  t->nlayers = 1;
}

/* Freeze the current top: a new empty layer on it, sometimes larger. */
static void
freeze(struct round *t)
{
  char *p = layer_path(t, t->nlayers);
  char rel[64];
  uint64_t grow = rnd(t, 4) == 0 ? 4096 * rnd(t, 32) : 0;

  snprintf(rel, sizeof rel, "l%zu.cow", t->nlayers - 1);
  ctu_layer(p, t->m.size + grow, t->cluster, OVL_PARENT_LAYER, rel, t->top_uuid, t->m.size,
            t->top_uuid);
  ctu_model_grow(&t->m, t->m.size + grow);
  free(p);
  t->nlayers++;
}

static void
round_init(struct round *t, uint64_t seed, unsigned io)
{
  char *p;

  memset(t, 0, sizeof *t);
  t->rng = seed;
  t->io = io;
  t->dir = otu_tmpdir();
  live_dir = t->dir;
  t->cluster = 16384u << rnd(t, 4); /* sub-clusters of 512 to 4096 bytes */
  t->scratch = malloc(MAX_IO);
  cr_assert_not_null(t->scratch);
  p = otu_join(t->dir, "images");
  cr_assert_eq(mkdir(p, 0755), 0);
  free(p);
  p = otu_join(t->dir, "layers");
  cr_assert_eq(mkdir(p, 0755), 0);
  free(p);
}

static void
round_fini(struct round *t)
{
  ctu_model_free(&t->m);
  free(t->scratch);
  otu_rmtree(t->dir);
  live_dir = NULL;
}

/* The whole chain, read-only, with both I/O paths: the same bytes as the model. */
static void
check_readonly(struct round *t, size_t top)
{
  char *p = layer_path(t, top);

  for (int sync = 0; sync < 2; sync++) {
    struct cc_chain *c = ctu_open(p, sync ? CC_IO_SYNC : 0);

    cr_assert_eq(cc_chain_writable(c), 0);
    ctu_check_all(c, &t->m, 32768 + 512 * rnd(t, 64));
    ctu_check_extents(c, &t->m, 0, t->m.size);
    cc_chain_close(c);
  }
  free(p);
}

/* One round: a chain of `depth` layers built by writing and freezing through the chain API.
 * Now and then a read-only chain is opened on a layer just frozen (a snapshot): it must share
 * the writable chain's index while that layer is the writable chain's parent, and keep
 * reading the snapshot's bytes while later layers change. */
static void
model_round(uint64_t seed, unsigned io, size_t depth)
{
  struct round t;
  struct cc_chain *snap = NULL;
  struct ctu_model snap_m = {0};
  size_t snap_layer = 0;

  round_init(&t, seed, io);
  make_bottom(&t);
  for (size_t i = 0; i < depth; i++) {
    char *p = layer_path(&t, i);
    struct cc_chain *c = ctu_open(p, CC_RDWR | io);
    int nops = 1 + (int)rnd(&t, 6);

    cr_assert_eq(cc_chain_depth(c), i + 1 + (size_t)t.raw);
    cr_assert_eq(cc_chain_size(c), t.m.size);
    cr_assert_eq(cc_chain_writable(c), 1);
    if (snap && snap_layer + 1 == i)
      cr_assert_eq(cc_chain_index_id(c), cc_chain_index_id(snap),
                   "a clone on a snapshot must share the snapshot's index");
    for (int k = 0; k < nops; k++)
      random_op(&t, c);
    if (i + 1 == depth || rnd(&t, 4) == 0) {
      ctu_check_all(c, &t.m, 4096 + 512 * rnd(&t, 256));
      ctu_check_extents(c, &t.m, 0, t.m.size);
    }
    if (snap) {
      uint64_t off, len;

      rand_range(&t, &off, &len);
      if (off + len <= snap_m.size)
        ctu_check_read(snap, &snap_m, off, len);
    }
    cr_assert_eq(cc_chain_close(c), 0, "close: %s", cc_error_get());
    free(p);
    if (i + 1 < depth) {
      freeze(&t);
      if (!snap && rnd(&t, 4) == 0) {
        p = layer_path(&t, i);
        snap = ctu_open(p, io);
        snap_layer = i;
        free(p);
        /* the model before freeze() grew it: the snapshot keeps its own size */
        ctu_model_copy(&snap_m, &t.m);
        snap_m.size = cc_chain_size(snap);
      }
    }
  }
  if (snap) {
    ctu_check_all(snap, &snap_m, 65536);
    ctu_check_extents(snap, &snap_m, 0, snap_m.size);
    cc_chain_close(snap);
    ctu_model_free(&snap_m);
  }
  check_readonly(&t, depth - 1);
  round_fini(&t);
  cr_assert_eq(cc_chain_index_count(), 0, "every index freed when its last chain closed");
}

static void
random_depths(const char *name, unsigned io, int rounds)
{
  uint64_t seed = otu_seed(name);
  uint64_t rng = seed;

  otu_io_nosync();
  for (int r = 0; r < rounds; r++) {
    uint64_t rseed = otu_rand(&rng);
    size_t depth = 1 + (size_t)otu_rand_below(&rng, 64);

    if (r == 0)
      depth = 64; /* always cover the deepest */
    else if (r == 1)
      depth = 1;
    fprintf(stderr, "%s: round %d: depth %zu, round seed %" PRIu64 "\n", name, r, depth, rseed);
    model_round(rseed, io, depth);
  }
}

Test(chain_model, random_depths_uring)
{
  random_depths("chain_model/random_depths_uring", 0, 8);
}

Test(chain_model, random_depths_auto)
{
  random_depths("chain_model/random_depths_auto", CC_IO_AUTO, 8);
}

Test(chain_model, random_depths_direct)
{
  random_depths("chain_model/random_depths_direct", CC_IO_AUTO | CC_DIRECT, 4);
}

Test(chain_model, random_depths_sync)
{
  random_depths("chain_model/random_depths_sync", CC_IO_SYNC, 8);
}

/* A chain of `nfiles` files (a raw image and nfiles - 1 layers) with a small virtual size.
 * The frozen layers are written directly through the overlay (sub-cluster aligned, so no
 * copy-up is needed), which keeps building it linear; the top is then used through the chain
 * API with both I/O paths, frozen twice (each reopen resolves the whole chain again), and
 * read back read-only. */
static void
deep_chain(const char *name, size_t nfiles)
{
  struct round t;
  uint64_t seed = otu_seed(name);
  char *p;

  /* A soft fd limit below the chain's depth: cc_chain_open must raise it (to the hard limit)
   * by itself, as it will have to under a default `ulimit -n` of 1024. */
  {
    struct rlimit rl;

    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_max >= nfiles + 64) {
      rl.rlim_cur = 256;
      cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
  }
  otu_io_nosync();
  round_init(&t, seed, 0);
  t.cluster = 16384;
  ctu_model_init(&t.m, 256 * 1024, t.cluster / 32);
  t.raw = 1;
  for (uint64_t b = 0; b < t.m.size; b += 4096) {
    if (rnd(&t, 3) == 0) {
      for (int i = 0; i < 4096; i++)
        t.scratch[i] = (uint8_t)otu_rand(&t.rng);
      ctu_model_write(&t.m, t.scratch, 4096, b);
    }
  }
  p = otu_join(t.dir, "images/base.raw");
  ctu_write_raw(p, &t.m);
  free(p);
  p = layer_path(&t, 0);
  ctu_layer(p, t.m.size, t.cluster, OVL_PARENT_RAW, "../images/base.raw", NULL, t.m.size,
            t.top_uuid);
  free(p);
  t.nlayers = 1;

  /* Frozen layers l0 .. l<nfiles-3>.  Half get one or two aligned changes; the rest stay
   * empty, which still makes every read resolve through all of them. */
  while (t.nlayers < nfiles - 1) {
    struct ovl_layer *l;
    int nops = 1 + (int)rnd(&t, 2);

    if (rnd(&t, 2) != 0) {
      freeze(&t);
      continue;
    }
    p = layer_path(&t, t.nlayers - 1);
    cr_assert_eq(ovl_open(p, OVL_RDWR, &l), 0, "ovl_open %s: %s", p, cc_error_get());
    for (int k = 0; k < nops; k++) {
      uint64_t len = 512 * (1 + rnd(&t, 16));
      uint64_t off = 512 * rnd(&t, (t.m.size - len) / 512 + 1);

      if (rnd(&t, 5) == 0) {
        cr_assert_eq(ovl_zero(l, len, off, OVL_MAY_TRIM, NULL, NULL), 0, "%s", cc_error_get());
        ctu_model_zero(&t.m, len, off);
      } else {
        for (uint64_t i = 0; i < len; i++)
          t.scratch[i] = (uint8_t)(otu_rand(&t.rng) | 1);
        cr_assert_eq(ovl_pwrite(l, t.scratch, len, off, 0, NULL, NULL), 0, "%s", cc_error_get());
        ctu_model_write(&t.m, t.scratch, len, off);
      }
    }
    cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
    free(p);
    freeze(&t);
  }

  for (int pass = 0; pass < 4; pass++) {
    unsigned io = pass == 1 ? CC_IO_SYNC : pass == 3 ? CC_IO_AUTO : 0;
    struct cc_chain *c;

    p = layer_path(&t, t.nlayers - 1);
    c = ctu_open(p, CC_RDWR | io);
    free(p);
    cr_assert_eq(cc_chain_depth(c), nfiles + (size_t)(pass < 2 ? pass : 2));
    ctu_check_all(c, &t.m, 65536);
    ctu_check_extents(c, &t.m, 0, t.m.size);
    for (int k = 0; k < 40; k++)
      random_op(&t, c);
    ctu_check_all(c, &t.m, 4096 + 512 * rnd(&t, 64));
    ctu_check_extents(c, &t.m, 0, t.m.size);
    cr_assert_eq(cc_chain_close(c), 0, "close: %s", cc_error_get());
    if (pass < 2)
      freeze(&t);
  }
  check_readonly(&t, t.nlayers - 1);
  round_fini(&t);
  cr_assert_eq(cc_chain_index_count(), 0);
}

Test(chain_model, depth_1000)
{
  deep_chain("chain_model/depth_1000", 1000);
}
