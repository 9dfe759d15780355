/* SPDX-License-Identifier: BSD-3-Clause */
/* chain/: live top switch (cc_chain_push_top, view.c).
 *
 * - After a push, the old top reads exactly the state at the push (opened read-only through
 *   the registry: the same shared index), the chain reads the same, new writes go to the new
 *   top only, and reopening the new top from disk reads what the live chain read.
 * - 100 pushes under 4 reader threads that verify every read (a static region against the
 *   model, a tagged region against "never older than a completed write, never torn") while 2
 *   writer threads are paused around each push and resumed after; after each push the frozen
 *   layer reads exactly the writers' state at the pause.
 * - cc_chain_switch_top leaves the old top sealed (not flushed, locked exclusively) until the
 *   chain's first flush or its close settles it.
 * - Refusals leave the chain unchanged: a new top whose parent is not the top, a read-only
 *   chain.
 * - Push time at depth 1 and 64 of a populated chain, logged (no assertion on time).
 * Leaks and races: the ASan build fails through CTest's FAIL_REGULAR_EXPRESSION.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "tests/unit/util-chain.h"
#include "tests/unit/util-overlay.h"

#define SIZE (1024u * 1024u)
#define AREG (SIZE / 2)            /* [0, AREG): static data, verified against the model */
#define BLK 4096u                  /* [AREG, SIZE): tagged blocks */
#define NBLK ((SIZE - AREG) / BLK) /* 128 */
#define NWRITERS 2
#define NREADERS 4
#define NPUSH 100

static char *live_dir;

static void
cleanup(void)
{
  otu_rmtree(live_dir);
  live_dir = NULL;
}

TestSuite(chain_push, .fini = cleanup, .timeout = 300);

/* A tagged block: (block, seq) repeated. */
static void
tag_fill(uint8_t *buf, uint64_t block, uint64_t seq)
{
  for (size_t i = 0; i < BLK; i += 16) {
    memcpy(buf + i, &block, 8);
    memcpy(buf + i + 8, &seq, 8);
  }
}

/* The seq of a tagged block, or -1 if it is torn or not block `block`'s. */
static int64_t
tag_check(const uint8_t *buf, uint64_t block)
{
  uint64_t b0, s0;

  memcpy(&b0, buf, 8);
  memcpy(&s0, buf + 8, 8);
  if (b0 != block)
    return -1;
  for (size_t i = 16; i < BLK; i += 16)
    if (memcmp(buf + i, buf, 16) != 0)
      return -1;
  return (int64_t)s0;
}

struct shared {
  struct cc_chain *c;
  const struct ctu_model *m;   /* region A */
  _Atomic uint64_t done[NBLK]; /* last completed seq per block */
  _Atomic int writing[NBLK];   /* a write of the block is in flight */
  _Atomic int stop;
  _Atomic int pause;  /* writers: stop writing */
  _Atomic int paused; /* writers acknowledging the pause */
  _Atomic long reads, writes;
  _Atomic int failed;
  char why[256];
  pthread_mutex_t why_lock;
};

static void
fail_once(struct shared *s, const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock(&s->why_lock);
  if (!atomic_exchange(&s->failed, 1)) {
    va_start(ap, fmt);
    vsnprintf(s->why, sizeof s->why, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&s->why_lock);
}

struct wctx {
  struct shared *s;
  int id;
};

static void *
writer(void *opaque)
{
  struct wctx *w = opaque;
  struct shared *s = w->s;
  uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(w->id + 1);
  uint8_t *buf = malloc(BLK);
  int was_paused = 0;

  while (!atomic_load(&s->stop)) {
    if (atomic_load(&s->pause)) {
      if (!was_paused) {
        atomic_fetch_add(&s->paused, 1);
        was_paused = 1;
      }
      usleep(100);
      continue;
    }
    if (was_paused) {
      atomic_fetch_sub(&s->paused, 1);
      was_paused = 0;
    }
    /* This writer owns the blocks b with b % NWRITERS == id. */
    uint64_t b = otu_rand_below(&rng, NBLK / NWRITERS) * NWRITERS + (uint64_t)w->id;
    uint64_t seq = atomic_load(&s->done[b]) + 1;

    tag_fill(buf, b, seq);
    atomic_store(&s->writing[b], 1);
    if (cc_chain_pwrite(s->c, buf, BLK, AREG + b * BLK, 0) < 0) {
      fail_once(s, "pwrite block %llu: %s", (unsigned long long)b, cc_error_get());
      break;
    }
    atomic_store(&s->done[b], seq);
    atomic_store(&s->writing[b], 0);
    atomic_fetch_add(&s->writes, 1);
  }
  if (was_paused)
    atomic_fetch_sub(&s->paused, 1);
  free(buf);
  return NULL;
}

static void *
reader(void *opaque)
{
  struct wctx *w = opaque;
  struct shared *s = w->s;
  uint64_t rng = 0x2545f4914f6cdd1dull * (uint64_t)(w->id + 7);
  uint8_t *buf = malloc(4 * BLK);

  while (!atomic_load(&s->stop) && !atomic_load(&s->failed)) {
    if (otu_rand_below(&rng, 2)) {
      /* Region A: exact. */
      uint64_t len = 1 + otu_rand_below(&rng, 4 * BLK);
      uint64_t off = otu_rand_below(&rng, AREG - len);

      if (cc_chain_pread(s->c, buf, len, off) < 0) {
        fail_once(s, "pread A: %s", cc_error_get());
        break;
      }
      if (memcmp(buf, s->m->data + off, len) != 0) {
        fail_once(s, "region A mismatch at %llu+%llu", (unsigned long long)off,
                  (unsigned long long)len);
        break;
      }
    } else {
      /* Region B: up to 4 blocks.  A block no write touched during the read must read exactly
       * its last completed seq; one that was being written may read old, new or a mix (NBD
       * leaves overlapping requests unordered), but never an older completed state. */
      uint64_t n = 1 + otu_rand_below(&rng, 4);
      uint64_t b = otu_rand_below(&rng, NBLK - n + 1);
      uint64_t f0[4];
      int w0[4];

      for (uint64_t k = 0; k < n; k++) {
        w0[k] = atomic_load(&s->writing[b + k]);
        f0[k] = atomic_load(&s->done[b + k]);
      }
      if (cc_chain_pread(s->c, buf, n * BLK, AREG + b * BLK) < 0) {
        fail_once(s, "pread B: %s", cc_error_get());
        break;
      }
      for (uint64_t k = 0; k < n; k++) {
        int64_t seq = tag_check(buf + k * BLK, b + k);
        /* writing before done: a write that overlapped the read is either still flagged, or
         * has already moved done on (the writer sets done before clearing writing). */
        int w1 = atomic_load(&s->writing[b + k]);
        uint64_t f1 = atomic_load(&s->done[b + k]);
        int quiet = !w0[k] && !w1 && f1 == f0[k];

        if (quiet ? seq != (int64_t)f0[k] : (seq >= 0 && (uint64_t)seq < f0[k])) {
          fail_once(s, "block %llu: read seq %lld, completed %llu%s", (unsigned long long)(b + k),
                    (long long)seq, (unsigned long long)f0[k],
                    quiet ? " (no write in flight)" : "");
          break;
        }
      }
    }
    atomic_fetch_add(&s->reads, 1);
  }
  free(buf);
  return NULL;
}

/* Region A random data and region B tagged seq 0, written into layer t0 through a chain. */
static void
populate_base(const char *path, struct ctu_model *m, uint64_t *rng)
{
  struct cc_chain *c = ctu_open(path, CC_RDWR | CC_IO_SYNC);
  uint8_t *buf = malloc(AREG);

  for (uint64_t i = 0; i < AREG; i++)
    buf[i] = (uint8_t)otu_rand(rng);
  cr_assert_eq(cc_chain_pwrite(c, buf, AREG, 0, 0), 0, "%s", cc_error_get());
  ctu_model_write(m, buf, AREG, 0);
  for (uint64_t b = 0; b < NBLK; b++) {
    tag_fill(buf, b, 0);
    cr_assert_eq(cc_chain_pwrite(c, buf, BLK, AREG + b * BLK, 0), 0, "%s", cc_error_get());
    ctu_model_write(m, buf, BLK, AREG + b * BLK);
  }
  cr_assert_eq(cc_chain_close(c), 0, "%s", cc_error_get());
  free(buf);
}

/* Every tagged block of chain c has exactly seq want[b]. */
static void
check_tags(struct cc_chain *c, const uint64_t *want, const char *what)
{
  uint8_t *buf = malloc(BLK);

  for (uint64_t b = 0; b < NBLK; b++) {
    cr_assert_eq(cc_chain_pread(c, buf, BLK, AREG + b * BLK), 0, "%s", cc_error_get());
    int64_t seq = tag_check(buf, b);
    cr_assert_eq(seq, (int64_t)want[b], "%s: block %llu has seq %lld, expected %llu", what,
                 (unsigned long long)b, (long long)seq, (unsigned long long)want[b]);
  }
  free(buf);
}

Test(chain_push, frozen_state_new_top_reopen_share)
{
  char *dir = otu_tmpdir(), *p0, *p1, *p2;
  uint8_t uuids[3][OVL_UUID_LEN];
  struct ctu_model m, at_push;
  uint64_t rng = otu_seed("chain_push_basic");
  struct cc_chain *c, *ro, *clone;
  uint8_t buf[8192];

  live_dir = dir;
  otu_io_nosync();
  ctu_model_init(&m, SIZE, 4096);
  ctu_stack_layer(dir, "t", 0, SIZE, NULL, uuids);
  p0 = ctu_stack_path(dir, "t", 0);
  populate_base(p0, &m, &rng);
  ctu_stack_layer(dir, "t", 1, SIZE, NULL, uuids);
  p1 = ctu_stack_path(dir, "t", 1);
  c = ctu_open(p1, CC_RDWR | CC_IO_SYNC);
  for (int k = 0; k < 50; k++) {
    uint64_t len = 1 + otu_rand_below(&rng, sizeof buf);
    uint64_t off = otu_rand_below(&rng, SIZE - len);

    for (uint64_t j = 0; j < len; j++)
      buf[j] = (uint8_t)otu_rand(&rng);
    cr_assert_eq(cc_chain_pwrite(c, buf, len, off, 0), 0, "%s", cc_error_get());
    ctu_model_write(&m, buf, len, off);
  }
  ctu_model_copy(&at_push, &m);
  cr_assert_eq(cc_chain_depth(c), 2);

  ctu_stack_layer(dir, "t", 2, SIZE, NULL, uuids);
  p2 = ctu_stack_path(dir, "t", 2);
  cr_assert_eq(cc_chain_push_top(c, p2), 0, "%s", cc_error_get());
  cr_assert_eq(cc_chain_depth(c), 3);
  cr_assert(cc_chain_writable(c));
  ctu_check_all(c, &m, 65536);
  ctu_check_extents(c, &m, 0, SIZE);

  /* The old top, read-only: the state at the push, through the very same index. */
  ro = ctu_open(p1, CC_IO_SYNC);
  cr_assert_eq(cc_chain_index_id(ro), cc_chain_index_id(c), "the frozen part is not shared");
  ctu_check_all(ro, &at_push, 65536);
  /* A writer cannot have it any more (it is frozen and locked shared). */
  {
    struct cc_chain *w = NULL;
    cr_assert_eq(cc_chain_open(p1, CC_RDWR, &w), -EBUSY);
  }
  /* A clone of it shares the index too. */
  {
    char *pc;
    cr_assert_neq(asprintf(&pc, "%s/clone.cow", dir), -1);
    ctu_layer(pc, SIZE, 0, OVL_PARENT_LAYER, "t1.cow", uuids[1], SIZE, NULL);
    clone = ctu_open(pc, CC_RDWR | CC_IO_SYNC);
    cr_assert_eq(cc_chain_index_id(clone), cc_chain_index_id(c));
    ctu_check_all(clone, &at_push, 65536);
    cr_assert_eq(cc_chain_close(clone), 0);
    free(pc);
  }

  /* New writes land in the new top only. */
  for (int k = 0; k < 50; k++) {
    uint64_t len = 1 + otu_rand_below(&rng, sizeof buf);
    uint64_t off = otu_rand_below(&rng, SIZE - len);

    for (uint64_t j = 0; j < len; j++)
      buf[j] = (uint8_t)otu_rand(&rng);
    cr_assert_eq(cc_chain_pwrite(c, buf, len, off, CC_FUA), 0, "%s", cc_error_get());
    ctu_model_write(&m, buf, len, off);
  }
  cr_assert_eq(cc_chain_zero(c, 8192, 4096, 0), 0, "%s", cc_error_get());
  ctu_model_zero(&m, 8192, 4096);
  ctu_check_all(c, &m, 65536);
  ctu_check_all(ro, &at_push, 65536);
  cr_assert_eq(cc_chain_close(ro), 0);

  /* From disk: the new top reads what the live chain read, and t1 what it had at the push. */
  cr_assert_eq(cc_chain_close(c), 0, "%s", cc_error_get());
  cr_assert_eq(cc_chain_index_count(), 0, "an index outlived its chains");
  c = ctu_open(p2, CC_RDWR | CC_IO_SYNC);
  ctu_check_all(c, &m, 65536);
  ctu_check_extents(c, &m, 0, SIZE);
  cr_assert_eq(cc_chain_close(c), 0);
  ro = ctu_open(p1, CC_IO_SYNC);
  ctu_check_all(ro, &at_push, 65536);
  cr_assert_eq(cc_chain_close(ro), 0);
  {
    struct ovl_layer *l;
    struct ovl_info info;
    cr_assert_eq(ovl_open(p1, OVL_RDONLY, &l), 0);
    ovl_get_info(l, &info);
    cr_assert_eq(info.dirty, 0, "the frozen layer was left dirty");
    ovl_close(l);
  }
  cr_assert_eq(cc_chain_index_count(), 0);
  ctu_model_free(&m);
  ctu_model_free(&at_push);
  free(p0);
  free(p1);
  free(p2);
  cleanup();
}

/* What ovl_open (no lock) reads of the file at `path` now: dirty bit and allocated bytes. */
static void
on_disk(const char *path, int *dirty, uint64_t *alloc)
{
  struct ovl_layer *l;
  struct ovl_info info;

  cr_assert_eq(ovl_open(path, OVL_RDONLY | OVL_NOLOCK, &l), 0, "%s", cc_error_get());
  ovl_get_info(l, &info);
  *dirty = info.dirty;
  *alloc = info.allocated_bytes;
  ovl_close(l);
}

/* A live snapshot's switch leaves the old top sealed: reads right, nothing flushed, the
 * exclusive lock kept (another open would read an incomplete map); the first flush of the
 * chain settles it (its writes durable, clean, shared), and close settles it too. */
Test(chain_push, switch_leaves_old_top_sealed_until_settled)
{
  char *dir = otu_tmpdir(), *p0, *p1, *p2, *p3;
  uint8_t uuids[4][OVL_UUID_LEN];
  struct ctu_model m;
  uint64_t rng = otu_seed("chain_push_settle"), alloc;
  struct cc_chain *c, *ro = NULL;
  uint8_t buf[8192];
  int dirty;

  live_dir = dir;
  ctu_model_init(&m, SIZE, 4096);
  ctu_stack_layer(dir, "t", 0, SIZE, NULL, uuids);
  p0 = ctu_stack_path(dir, "t", 0);
  populate_base(p0, &m, &rng);
  ctu_stack_layer(dir, "t", 1, SIZE, NULL, uuids);
  p1 = ctu_stack_path(dir, "t", 1);
  c = ctu_open(p1, CC_RDWR | CC_IO_SYNC);
  for (int k = 0; k < 20; k++) {
    uint64_t off = otu_rand_below(&rng, SIZE - sizeof buf);
    for (size_t j = 0; j < sizeof buf; j++)
      buf[j] = (uint8_t)otu_rand(&rng);
    cr_assert_eq(cc_chain_pwrite(c, buf, sizeof buf, off, 0), 0, "%s", cc_error_get());
    ctu_model_write(&m, buf, sizeof buf, off);
  }
  ctu_stack_layer(dir, "t", 2, SIZE, NULL, uuids);
  p2 = ctu_stack_path(dir, "t", 2);
  cr_assert_eq(cc_chain_switch_top(c, p2), 0, "%s", cc_error_get());
  ctu_check_all(c, &m, 65536);
  /* Not flushed: the file's map lacks every write, the dirty bit is set. */
  on_disk(p1, &dirty, &alloc);
  cr_assert(dirty, "the sealed old top was made clean by the switch");
  cr_assert_eq(alloc, 0, "the sealed old top's map reached the file before the settle");
  cr_assert_eq(cc_chain_open(p1, CC_IO_SYNC, &ro), -EBUSY,
               "the sealed old top could be opened while its map is incomplete on disk");
  /* The chain's first flush settles it. */
  cr_assert_eq(cc_chain_flush(c), 0, "%s", cc_error_get());
  on_disk(p1, &dirty, &alloc);
  cr_assert(!dirty, "the flush did not settle the old top");
  cr_assert_gt(alloc, 0);
  ro = ctu_open(p1, CC_IO_SYNC);
  ctu_check_all(ro, &m, 65536);
  cr_assert_eq(cc_chain_close(ro), 0);
  cr_assert_eq(cc_chain_settle(c), 0, "settling twice");
  /* Again, and this time close settles. */
  cr_assert_eq(cc_chain_pwrite(c, buf, sizeof buf, 0, 0), 0, "%s", cc_error_get());
  ctu_model_write(&m, buf, sizeof buf, 0);
  ctu_stack_layer(dir, "t", 3, SIZE, NULL, uuids);
  p3 = ctu_stack_path(dir, "t", 3);
  cr_assert_eq(cc_chain_switch_top(c, p3), 0, "%s", cc_error_get());
  cr_assert_eq(cc_chain_close(c), 0, "%s", cc_error_get());
  on_disk(p2, &dirty, &alloc);
  cr_assert(!dirty, "close did not settle the old top");
  ro = ctu_open(p2, CC_IO_SYNC);
  ctu_check_all(ro, &m, 65536);
  cr_assert_eq(cc_chain_close(ro), 0);
  cr_assert_eq(cc_chain_index_count(), 0);
  ctu_model_free(&m);
  free(p0);
  free(p1);
  free(p2);
  free(p3);
  cleanup();
}

Test(chain_push, refusals_leave_the_chain_unchanged)
{
  char *dir = otu_tmpdir(), *p0, *p1, *bad;
  uint8_t uuids[2][OVL_UUID_LEN], other[OVL_UUID_LEN];
  struct cc_chain *c, *ro;
  uint8_t buf[4096];

  live_dir = dir;
  otu_io_nosync();
  ctu_stack_layer(dir, "t", 0, SIZE, NULL, uuids);
  ctu_stack_layer(dir, "t", 1, SIZE, NULL, uuids);
  p0 = ctu_stack_path(dir, "t", 0);
  p1 = ctu_stack_path(dir, "t", 1);
  c = ctu_open(p1, CC_RDWR | CC_IO_SYNC);
  cr_assert_neq(asprintf(&bad, "%s/bad.cow", dir), -1);
  /* Parent t0, not the top t1. */
  ctu_layer(bad, SIZE, 0, OVL_PARENT_LAYER, "t0.cow", uuids[0], SIZE, other);
  cr_assert_eq(cc_chain_push_top(c, bad), -EINVAL);
  cr_assert(strstr(cc_error_get(), "not the current top") != NULL, "%s", cc_error_get());
  cr_assert_eq(cc_chain_depth(c), 2);
  memset(buf, 0x5a, sizeof buf);
  cr_assert_eq(cc_chain_pwrite(c, buf, sizeof buf, 0, 0), 0, "still writable: %s", cc_error_get());
  cr_assert_eq(cc_chain_close(c), 0);
  /* The refused layer was not left locked: it can be opened for writing. */
  c = ctu_open(bad, CC_RDWR);
  cr_assert_eq(cc_chain_close(c), 0);
  ro = ctu_open(p0, CC_IO_SYNC);
  cr_assert_eq(cc_chain_push_top(ro, p1), -EPERM);
  cr_assert_eq(cc_chain_close(ro), 0);
  cr_assert_eq(cc_chain_index_count(), 0);
  free(bad);
  free(p0);
  free(p1);
  cleanup();
}

Test(chain_push, hundred_pushes_under_readers_and_writers)
{
  char *dir = otu_tmpdir();
  uint8_t(*uuids)[OVL_UUID_LEN] = calloc(NPUSH + 2, OVL_UUID_LEN);
  struct ctu_model m;
  uint64_t rng = otu_seed("chain_push_threads");
  struct shared *s = calloc(1, sizeof *s);
  pthread_t wt[NWRITERS], rt[NREADERS];
  struct wctx wc[NWRITERS], rc[NREADERS];
  uint64_t at_push[NBLK];
  char *p;

  live_dir = dir;
  otu_io_nosync();
  ctu_model_init(&m, SIZE, 4096);
  ctu_stack_layer(dir, "t", 0, SIZE, NULL, uuids);
  p = ctu_stack_path(dir, "t", 0);
  populate_base(p, &m, &rng);
  free(p);
  ctu_stack_layer(dir, "t", 1, SIZE, NULL, uuids);
  p = ctu_stack_path(dir, "t", 1);
  s->c = ctu_open(p, CC_RDWR | CC_IO_SYNC);
  free(p);
  s->m = &m;
  pthread_mutex_init(&s->why_lock, NULL);
  for (int i = 0; i < NWRITERS; i++) {
    wc[i] = (struct wctx){s, i};
    cr_assert_eq(pthread_create(&wt[i], NULL, writer, &wc[i]), 0);
  }
  for (int i = 0; i < NREADERS; i++) {
    rc[i] = (struct wctx){s, i};
    cr_assert_eq(pthread_create(&rt[i], NULL, reader, &rc[i]), 0);
  }

  for (int i = 1; i <= NPUSH && !atomic_load(&s->failed); i++) {
    struct cc_chain *ro;
    char *prev;

    usleep(2000 + (useconds_t)otu_rand_below(&rng, 3000)); /* let the writers write */
    /* Quiesce writes: what the server's gate does. */
    atomic_store(&s->pause, 1);
    while (atomic_load(&s->paused) < NWRITERS)
      usleep(50);
    for (uint64_t b = 0; b < NBLK; b++)
      at_push[b] = atomic_load(&s->done[b]);
    ctu_stack_layer(dir, "t", i + 1, SIZE, NULL, uuids);
    p = ctu_stack_path(dir, "t", i + 1);
    cr_assert_eq(cc_chain_push_top(s->c, p), 0, "push %d: %s", i, cc_error_get());
    free(p);
    atomic_store(&s->pause, 0);
    /* The frozen layer holds exactly the state at the push, while the writers go on. */
    prev = ctu_stack_path(dir, "t", i);
    ro = ctu_open(prev, CC_IO_SYNC);
    free(prev);
    cr_assert_eq(cc_chain_index_id(ro), cc_chain_index_id(s->c));
    check_tags(ro, at_push, "frozen layer");
    ctu_check_read(ro, &m, 0, AREG);
    cr_assert_eq(cc_chain_close(ro), 0);
  }
  atomic_store(&s->stop, 1);
  for (int i = 0; i < NWRITERS; i++)
    pthread_join(wt[i], NULL);
  for (int i = 0; i < NREADERS; i++)
    pthread_join(rt[i], NULL);
  cr_assert_eq(atomic_load(&s->failed), 0, "%s", s->why);
  cr_log_info("%d pushes, %ld reads, %ld writes", NPUSH, (long)atomic_load(&s->reads),
              (long)atomic_load(&s->writes));
  cr_assert_gt(atomic_load(&s->reads), NPUSH);
  cr_assert_gt(atomic_load(&s->writes), NPUSH);
  cr_assert_eq(cc_chain_depth(s->c), NPUSH + 2);

  /* Final state, live and from disk. */
  for (uint64_t b = 0; b < NBLK; b++)
    at_push[b] = atomic_load(&s->done[b]);
  check_tags(s->c, at_push, "live chain");
  cr_assert_eq(cc_chain_close(s->c), 0, "%s", cc_error_get());
  cr_assert_eq(cc_chain_index_count(), 0);
  p = ctu_stack_path(dir, "t", NPUSH + 1);
  s->c = ctu_open(p, CC_RDWR | CC_IO_SYNC);
  free(p);
  check_tags(s->c, at_push, "reopened chain");
  ctu_check_read(s->c, &m, 0, AREG);
  cr_assert_eq(cc_chain_close(s->c), 0);
  pthread_mutex_destroy(&s->why_lock);
  free(s);
  free(uuids);
  ctu_model_free(&m);
  cleanup();
}

static double
now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A chain of `depth` layers, each with 256 scattered 4 KiB writes over 64 MiB; push once. */
static double
time_push(int depth)
{
  const uint64_t size = 64ull << 20;
  char *dir = otu_tmpdir(), *p;
  uint8_t(*uuids)[OVL_UUID_LEN] = calloc((size_t)depth + 1, OVL_UUID_LEN);
  uint64_t rng = otu_seed("chain_push_time");
  uint8_t buf[4096];
  struct cc_chain *c = NULL;
  double t0, t1;

  live_dir = dir;
  otu_io_nosync();
  for (int i = 0; i < depth; i++) {
    ctu_stack_layer(dir, "t", i, size, NULL, uuids);
    p = ctu_stack_path(dir, "t", i);
    c = ctu_open(p, CC_RDWR | CC_IO_SYNC);
    free(p);
    for (int k = 0; k < 256; k++) {
      memset(buf, (int)otu_rand(&rng), sizeof buf);
      cr_assert_eq(cc_chain_pwrite(c, buf, sizeof buf, otu_rand_below(&rng, size / 4096) * 4096, 0),
                   0, "%s", cc_error_get());
    }
    if (i + 1 < depth)
      cr_assert_eq(cc_chain_close(c), 0);
  }
  ctu_stack_layer(dir, "t", depth, size, NULL, uuids);
  p = ctu_stack_path(dir, "t", depth);
  t0 = now_ms();
  cr_assert_eq(cc_chain_push_top(c, p), 0, "%s", cc_error_get());
  t1 = now_ms();
  free(p);
  cr_log_info("push at depth %d (%zu runs below the new top): %.3f ms", depth,
              cc_chain_index_runs(c), t1 - t0);
  fprintf(stderr, "chain_push: push at depth %d (%zu runs): %.3f ms\n", depth,
          cc_chain_index_runs(c), t1 - t0);
  cr_assert_eq(cc_chain_close(c), 0);
  free(uuids);
  cleanup();
  return t1 - t0;
}

Test(chain_push, push_time_depth_1_and_64)
{
  time_push(1);
  time_push(64);
}
