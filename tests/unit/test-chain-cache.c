/* SPDX-License-Identifier: BSD-3-Clause */
/* chain/: the cache of idle resolution indexes (cc_set_index_cache, chain/registry.c).
 *
 * - An index outlives its last chain within the budget and is reused by the next open (no
 *   build), and while idle it holds no lock: a writer may open its layers.
 * - Over the budget the least recently used idle index goes; the chain rebuilt after that
 *   reads the same bytes.
 * - A layer changed while idle (a write that allocates: new header generation; an in-place
 *   overwrite: same generation, new mtime; a layer replaced by rename) is never served from
 *   the stale index.
 * Every read is compared with a reference model of the disk (util-chain.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "tests/unit/util-chain.h"
#include "tests/unit/util-overlay.h"

#define SIZE (1024u * 1024u)
#define NSNAP 6

struct pool {
  char *dir;
  struct ctu_model m[NSNAP + 1]; /* m[i]: what snapshot i reads */
  uint8_t snap_uuid[NSNAP + 1][OVL_UUID_LEN];
  uint64_t rng;
};

static char *live_dir;

static void
cleanup(void)
{
  cc_set_index_cache(0);
  otu_rmtree(live_dir);
  live_dir = NULL;
}

static char *
snap_path(struct pool *p, int i)
{
  return ctu_stack_path(p->dir, "s", i);
}

/* Write `len` random bytes at `off` through a writable chain on layer i, recording them in the
 * models of i and of every snapshot above that does not hide them: here, only i itself is
 * checked afterwards, through a clone or a read-only chain on i. */
static void
write_layer(struct pool *p, int i, uint64_t off, uint64_t len)
{
  uint8_t *buf = malloc(len);
  char *s = snap_path(p, i);
  struct cc_chain *c = ctu_open(s, CC_RDWR | CC_IO_SYNC);

  for (uint64_t j = 0; j < len; j++)
    buf[j] = (uint8_t)otu_rand(&p->rng);
  cr_assert_eq(cc_chain_pwrite(c, buf, len, off, 0), 0, "%s", cc_error_get());
  cr_assert_eq(cc_chain_close(c), 0);
  ctu_model_write(&p->m[i], buf, len, off);
  free(buf);
  free(s);
}

/* A raw template and NSNAP layers, each with a few writes. */
static void
make_pool(struct pool *p)
{
  memset(p, 0, sizeof *p);
  otu_io_nosync();
  p->rng = otu_seed("chain_cache");
  p->dir = otu_tmpdir();
  live_dir = p->dir;
  ctu_random_raw(p->dir, "t.raw", &p->m[0], SIZE, &p->rng);
  for (int i = 1; i <= NSNAP; i++) {
    ctu_stack_layer(p->dir, "s", i, SIZE, "t.raw", p->snap_uuid);
    ctu_model_copy(&p->m[i], &p->m[i - 1]); /* allocates m[i] */
    for (int k = 0; k < 4; k++) {
      uint64_t len = 1 + otu_rand_below(&p->rng, 3 * 4096);

      write_layer(p, i, otu_rand_below(&p->rng, SIZE - len), len);
    }
  }
}

static void
free_pool(struct pool *p)
{
  for (int i = 0; i <= NSNAP; i++)
    ctu_model_free(&p->m[i]);
  otu_rmtree(p->dir);
  live_dir = NULL;
}

/* Open snapshot i read-only, compare everything with its model, close. */
static void
check_snap(struct pool *p, int i)
{
  char *s = snap_path(p, i);
  struct cc_chain *c = ctu_open(s, 0);

  ctu_check_all(c, &p->m[i], 65536);
  cr_assert_eq(cc_chain_close(c), 0);
  free(s);
}

/* check_snap, asserting whether it built an index (1) or reused one (0). */
static void
check_built(struct pool *p, int i, uint64_t built, const char *what)
{
  uint64_t b = cc_chain_index_builds();

  check_snap(p, i);
  cr_assert_eq(cc_chain_index_builds() - b, built, "%s", what);
}

TestSuite(chain_cache, .fini = cleanup, .timeout = 60);

Test(chain_cache, reuse_after_close_and_no_lock_while_idle)
{
  struct pool p;
  struct cc_chain *c;
  struct ovl_layer *w;
  char *s;
  uint64_t b0;
  const void *id;

  make_pool(&p);
  cc_set_index_cache(64u << 20);
  s = snap_path(&p, NSNAP);
  b0 = cc_chain_index_builds();
  c = ctu_open(s, 0);
  id = cc_chain_index_id(c);
  cr_assert_eq(cc_chain_index_builds(), b0 + 1);
  ctu_check_all(c, &p.m[NSNAP], 65536);
  cr_assert_eq(cc_chain_close(c), 0);
  cr_assert_eq(cc_chain_index_count(), 0, "no chain uses it");
  cr_assert_eq(cc_chain_index_cached(), 1, "kept idle");
  cr_assert_gt(cc_chain_index_cache_used(), 0);

  /* Idle means unlocked: a writer can take every layer (and let go, changing nothing). */
  for (int i = 1; i <= NSNAP; i++) {
    char *l = snap_path(&p, i);

    cr_assert_eq(ovl_open(l, OVL_RDWR, &w), 0, "%s while idle: %s", l, cc_error_get());
    cr_assert_eq(ovl_close(w), 0);
    free(l);
  }

  c = ctu_open(s, 0);
  cr_assert_eq(cc_chain_index_builds(), b0 + 1, "reopen is a cache hit");
  cr_assert_eq(cc_chain_index_id(c), id);
  cr_assert_eq(cc_chain_index_cached(), 0);
  cr_assert_eq(cc_chain_index_count(), 1);
  ctu_check_all(c, &p.m[NSNAP], 65536);
  /* In use again: locked again. */
  cr_assert_eq(ovl_open(s, OVL_RDWR, &w), -EBUSY);
  cr_assert_eq(cc_chain_close(c), 0);

  /* Budget 0 frees the idle index and its files. */
  cc_set_index_cache(0);
  cr_assert_eq(cc_chain_index_cached(), 0);
  cr_assert_eq(cc_chain_index_cache_used(), 0);
  cr_assert_eq(ctu_count_fds(p.dir), 0);
  free(s);
  free_pool(&p);
}

Test(chain_cache, lru_eviction_under_budget)
{
  struct pool p;
  uint64_t b0, ua, uab;

  make_pool(&p);
  cc_set_index_cache(64u << 20);
  b0 = cc_chain_index_builds();
  check_snap(&p, 3); /* A */
  ua = cc_chain_index_cache_used();
  check_snap(&p, 5); /* B */
  uab = cc_chain_index_cache_used();
  cr_assert_eq(cc_chain_index_cached(), 2);
  cr_assert_eq(cc_chain_index_builds(), b0 + 2);

  /* Room for B only: A, the least recently used, goes. */
  cc_set_index_cache(uab - 1);
  cr_assert_eq(cc_chain_index_cached(), 1);
  cr_assert_eq(cc_chain_index_cache_used(), uab - ua);
  check_snap(&p, 5);
  cr_assert_eq(cc_chain_index_builds(), b0 + 2, "B kept");
  check_snap(&p, 3);
  cr_assert_eq(cc_chain_index_builds(), b0 + 3, "A evicted, rebuilt, and reads right");
  /* A's close cached it again, over the budget: B (used before A) went. */
  cr_assert_eq(cc_chain_index_cached(), 1);
  check_snap(&p, 3);
  cr_assert_eq(cc_chain_index_builds(), b0 + 3, "A kept");
  check_snap(&p, 5);
  cr_assert_eq(cc_chain_index_builds(), b0 + 4, "B evicted and rebuilt");

  /* A budget smaller than any index keeps none. */
  cc_set_index_cache(1);
  cr_assert_eq(cc_chain_index_cached(), 0);
  check_snap(&p, 5);
  cr_assert_eq(cc_chain_index_cached(), 0);
  cr_assert_eq(ctu_count_fds(p.dir), 0);
  free_pool(&p);
}

Test(chain_cache, no_stale_index_after_a_layer_changed)
{
  struct pool p;
  struct ovl_layer *l;
  struct ovl_extent e;
  char *s, *tmp;

  make_pool(&p);
  cc_set_index_cache(64u << 20);
  check_built(&p, NSNAP, 1, "first open");
  check_built(&p, NSNAP, 0, "second open");

  /* 1. A write that allocates in the topmost frozen layer (new header generation). */
  write_layer(&p, NSNAP, 200000, 10000);
  check_built(&p, NSNAP, 1, "rebuilt after an allocating write");

  /* 2. A write into a lower layer where nothing above hides it: what a merge does. */
  for (uint64_t off = 0; off < SIZE; off += 4096) {
    int hidden = 0;

    for (int i = 3; i <= NSNAP && !hidden; i++) {
      char *li = snap_path(&p, i);

      cr_assert_eq(ovl_open(li, OVL_RDONLY, &l), 0);
      cr_assert_eq(ovl_map(l, off, 4096, &e, 1), 1);
      hidden = e.state != OVL_UNALLOCATED || e.length < 4096;
      ovl_close(l);
      free(li);
    }
    if (!hidden) {
      uint8_t buf[4096];

      write_layer(&p, 2, off, 4096);
      memcpy(buf, p.m[2].data + off, 4096);
      for (int i = 3; i <= NSNAP; i++)
        ctu_model_write(&p.m[i], buf, 4096, off);
      break;
    }
  }
  check_built(&p, NSNAP, 1, "rebuilt after a lower layer changed");

  /* 3. An in-place overwrite of data the layer already holds: no header change, only the
   * file's timestamps say so. */
  {
    uint8_t buf[100];
    struct cc_chain *c;

    s = snap_path(&p, NSNAP);
    c = ctu_open(s, CC_RDWR | CC_IO_SYNC);
    for (size_t j = 0; j < sizeof buf; j++)
      buf[j] = (uint8_t)otu_rand(&p.rng);
    /* 200000 + 10000 was allocated by step 1: this write is in place. */
    cr_assert_eq(cc_chain_pwrite(c, buf, sizeof buf, 204000, 0), 0);
    cr_assert_eq(cc_chain_close(c), 0);
    ctu_model_write(&p.m[NSNAP], buf, sizeof buf, 204000);
    free(s);
  }
  check_built(&p, NSNAP, 1, "rebuilt after an in-place write");

  /* 4. The frozen top replaced by another file under the same name (same uuid: a copy). */
  s = snap_path(&p, NSNAP);
  cr_assert_neq(asprintf(&tmp, "%s.new", s), -1);
  {
    size_t len;
    uint8_t *bytes = otu_slurp(s, &len);
    FILE *f = fopen(tmp, "wb");

    cr_assert_not_null(f);
    cr_assert_eq(fwrite(bytes, 1, len, f), len);
    fclose(f);
    free(bytes);
  }
  cr_assert_eq(rename(tmp, s), 0);
  check_built(&p, NSNAP, 1, "a new file is a new index");
  check_built(&p, NSNAP, 0, "and that one is kept");
  free(tmp);
  free(s);
  cc_set_index_cache(0);
  cr_assert_eq(ctu_count_fds(p.dir), 0);
  free_pool(&p);
}

Test(chain_cache, deleted_layer_is_let_go)
{
  struct pool p;
  char *s;

  make_pool(&p);
  cc_set_index_cache(64u << 20);
  check_snap(&p, NSNAP);
  check_snap(&p, 2);
  cr_assert_eq(cc_chain_index_cached(), 2);
  /* A pool operation deletes snapshot 4 (the idle index of NSNAP holds it open). */
  s = snap_path(&p, 4);
  cr_assert_eq(unlink(s), 0);
  cr_assert_eq(ctu_count_fds(s), 1, "held by the idle index");
  /* The next open of any chain, a second later (the sweep runs at most once a second), lets
   * the index holding the deleted file go; the other stays. */
  usleep(1100 * 1000);
  check_built(&p, 2, 0, "the index of snapshot 2 is still cached");
  cr_assert_eq(ctu_count_fds(s), 0, "the deleted layer's descriptor was closed");
  cr_assert_eq(cc_chain_index_cached(), 1);
  free(s);
  cc_set_index_cache(0);
  free_pool(&p);
}
