/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: concurrent writers, readers and flushes on one layer (overlay.h design notes:
 * lock-free lookups, in-place writes without the lock, allocation under it).
 *
 * Each writer thread owns the sub-clusters k with k % NW == its index, so writers touch the
 * same clusters and L2 tables (racing allocation, copy-up next to each other's data) but never
 * the same bytes.  An owner keeps a private byte model of its sub-clusters and publishes every
 * change under a per-sub-cluster sequence counter (odd while it writes).  Readers read a
 * sub-cluster through the layer, copy the model, and compare only if the counter did not move:
 * a seqlock, so every comparison is against the exact state the read must show.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "overlay/io.h"
#include "overlay/overlay.h"
#include "tests/unit/util-overlay.h"

TestSuite(overlay_threads, .timeout = 120);

#define NW 4
#define NR 2
#define SC 512u /* 16 KiB clusters */
#define VSIZE (16u << 20)
#define NSC (VSIZE / SC)
#define OPS_PER_WRITER 10000

struct shared {
  struct ovl_layer *l;
  struct otu_below below;
  uint8_t *model;        /* VSIZE bytes: what each sub-cluster reads as */
  _Atomic unsigned *seq; /* per sub-cluster */
  atomic_int writers_left;
  atomic_int failed;
  char msg[256];
  uint64_t seed;
  atomic_ulong checked, skipped;
};

struct targ {
  struct shared *sh;
  int idx;
};

static void fail(struct shared *sh, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
fail(struct shared *sh, const char *fmt, ...)
{
  if (atomic_exchange(&sh->failed, 1))
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sh->msg, sizeof sh->msg, fmt, ap);
  va_end(ap);
}

static int
below_cb(void *opaque, void *buf, uint64_t length, uint64_t offset)
{
  /* the pattern below is immutable, so concurrent callers need no lock */
  const struct otu_below *b = opaque;
  otu_pattern(b->seed, buf, length, offset);
  return 0;
}

static void *
writer(void *arg)
{
  struct targ *t = arg;
  struct shared *sh = t->sh;
  uint64_t rng = sh->seed + 1000u * (uint64_t)t->idx + 1;
  uint8_t buf[SC];

  for (int i = 0; i < OPS_PER_WRITER && !atomic_load(&sh->failed); i++) {
    uint64_t k = otu_rand_below(&rng, NSC / NW) * NW + (uint64_t)t->idx;
    uint64_t base = k * SC;
    unsigned kind = (unsigned)otu_rand_below(&rng, 10);
    int e;

    atomic_fetch_add_explicit(&sh->seq[k], 1, memory_order_acq_rel); /* odd: changing */
    if (kind < 6) {
      /* whole or partial: a partial one of an unallocated sub-cluster is a copy-up */
      uint64_t a = kind < 3 ? 0 : otu_rand_below(&rng, SC);
      uint64_t n = kind < 3 ? SC : 1 + otu_rand_below(&rng, SC - a);
      otu_pattern(rng ^ (uint64_t)i, buf, n, base + a);
      e = ovl_pwrite(sh->l, buf, n, base + a, 0, below_cb, &sh->below);
      if (e == 0)
        memcpy(sh->model + base + a, buf, n);
    } else if (kind < 9) {
      e = ovl_zero(sh->l, SC, base, kind == 8 ? OVL_MAY_TRIM : 0, below_cb, &sh->below);
      if (e == 0)
        memset(sh->model + base, 0, SC);
    } else {
      e = ovl_flush(sh->l);
    }
    atomic_fetch_add_explicit(&sh->seq[k], 1, memory_order_acq_rel); /* even: stable */
    if (e != 0)
      fail(sh, "writer %d op %d: %d %s", t->idx, i, e, cc_error_get());
  }
  atomic_fetch_sub(&sh->writers_left, 1);
  return NULL;
}

static void *
reader(void *arg)
{
  struct targ *t = arg;
  struct shared *sh = t->sh;
  uint64_t rng = sh->seed * 7 + (uint64_t)t->idx;
  uint8_t got[4 * SC], want[4 * SC];

  /* until the writers are done, and at least a minimum of reads even on a starved machine */
  for (long it = 0; (atomic_load(&sh->writers_left) > 0 || it < 3000) && !atomic_load(&sh->failed);
       it++) {
    /* four consecutive sub-clusters: four owners, one cluster or two */
    uint64_t k0 = otu_rand_below(&rng, NSC - 4);
    unsigned s1[4], s2[4];
    for (int i = 0; i < 4; i++)
      s1[i] = atomic_load_explicit(&sh->seq[k0 + i], memory_order_acquire);
    int e = ovl_pread(sh->l, got, sizeof got, k0 * SC, below_cb, &sh->below);
    memcpy(want, sh->model + k0 * SC, sizeof want);
    atomic_thread_fence(memory_order_acquire);
    for (int i = 0; i < 4; i++)
      s2[i] = atomic_load_explicit(&sh->seq[k0 + i], memory_order_relaxed);
    if (e != 0) {
      fail(sh, "reader: ovl_pread at %" PRIu64 ": %d %s", k0 * SC, e, cc_error_get());
      break;
    }
    for (int i = 0; i < 4; i++) {
      if ((s1[i] & 1) || s1[i] != s2[i]) {
        atomic_fetch_add(&sh->skipped, 1);
        continue;
      }
      if (memcmp(got + i * SC, want + i * SC, SC) != 0) {
        fail(sh, "reader: sub-cluster %" PRIu64 " (offset %" PRIu64 ", seq %u) read wrong bytes",
             k0 + (uint64_t)i, (k0 + (uint64_t)i) * SC, s1[i]);
        break;
      }
      atomic_fetch_add(&sh->checked, 1);
    }
  }
  return NULL;
}

/* ovl_map from a thread too: it must never report a state whose bytes a read contradicts;
 * here it only has to stay sane (tile the range) while the map changes under it. */
static void *
mapper(void *arg)
{
  struct shared *sh = arg;
  struct ovl_extent e[64];
  while (atomic_load(&sh->writers_left) > 0 && !atomic_load(&sh->failed)) {
    uint64_t pos = 0;
    while (pos < VSIZE) {
      int n = ovl_map(sh->l, pos, VSIZE - pos, e, 64);
      if (n <= 0) {
        fail(sh, "mapper: ovl_map at %" PRIu64 ": %d %s", pos, n, cc_error_get());
        return NULL;
      }
      for (int i = 0; i < n; i++) {
        if (e[i].offset != pos || e[i].length == 0) {
          fail(sh, "mapper: extent at %" PRIu64 " does not continue at %" PRIu64, e[i].offset, pos);
          return NULL;
        }
        pos += e[i].length;
      }
    }
  }
  return NULL;
}

Test(overlay_threads, writers_readers_flushes)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  struct shared sh;
  memset(&sh, 0, sizeof sh);
  sh.seed = otu_seed("overlay_threads::writers_readers_flushes");
  otu_io_nosync(); /* durability is the crash suite's business */
  sh.below.seed = sh.seed ^ 0x5A5A;
  sh.model = malloc(VSIZE);
  sh.seq = calloc(NSC, sizeof *sh.seq);
  cr_assert(sh.model && sh.seq);
  otu_pattern(sh.below.seed, sh.model, VSIZE, 0);
  otu_create(path, VSIZE, 16384);
  sh.l = otu_open(path, OVL_RDWR);
  atomic_store(&sh.writers_left, NW);

  pthread_t w[NW], r[NR], m;
  struct targ wa[NW], ra[NR];
  for (int i = 0; i < NW; i++) {
    wa[i] = (struct targ){&sh, i};
    cr_assert_eq(pthread_create(&w[i], NULL, writer, &wa[i]), 0);
  }
  for (int i = 0; i < NR; i++) {
    ra[i] = (struct targ){&sh, i};
    cr_assert_eq(pthread_create(&r[i], NULL, reader, &ra[i]), 0);
  }
  cr_assert_eq(pthread_create(&m, NULL, mapper, &sh), 0);
  for (int i = 0; i < NW; i++)
    pthread_join(w[i], NULL);
  for (int i = 0; i < NR; i++)
    pthread_join(r[i], NULL);
  pthread_join(m, NULL);
  cr_assert_eq(atomic_load(&sh.failed), 0, "%s (seed %" PRIu64 ")", sh.msg, sh.seed);
  cr_log_info("threads: %lu sub-cluster reads checked, %lu skipped (being written)",
              atomic_load(&sh.checked), atomic_load(&sh.skipped));
  cr_assert_gt(atomic_load(&sh.checked), 1000u, "the readers checked too little to mean much");

  /* quiescent: everything, through the layer and after a reopen */
  uint8_t *buf = malloc(VSIZE);
  for (int pass = 0; pass < 2; pass++) {
    cr_assert_eq(ovl_pread(sh.l, buf, VSIZE, 0, below_cb, &sh.below), 0, "%s", cc_error_get());
    long d = otu_first_diff(buf, sh.model, VSIZE);
    cr_assert_eq(d, -1, "pass %d: byte %ld differs (seed %" PRIu64 ")", pass, d, sh.seed);
    cr_assert_eq(ovl_close(sh.l), 0, "%s", cc_error_get());
    sh.l = otu_open(path, pass ? OVL_RDONLY : OVL_RDWR);
  }
  ovl_close(sh.l);
  free(buf);
  free(sh.model);
  free(sh.seq);
  free(path);
  otu_rmtree(dir);
}

/* ---- writers sharing sub-clusters (issue 11) ----
 *
 * The suite above gives each writer whole sub-clusters, so it could never see two requests
 * race inside one sub-cluster.  Here the disk is cut into random segments (mostly 1..700 bytes,
 * one in eight up to three sub-clusters long) with gaps of 0..50 bytes (never written: they keep
 * reading the image below), each owned by one writer.  Neighbouring segments of different
 * writers share sub-clusters and clusters, so byte-unaligned writes, partial and whole
 * zeroes and trims, first writes (copy-up from below) and in-place overwrites of one sub-cluster
 * run at the same time on different threads: what a guest with 512-byte sectors and 16 requests
 * in flight does.  Requests never overlap, so NBD defines the result: every byte ends as its
 * owner last wrote it.  Each owner keeps the model of its own bytes (no lock needed) and reads
 * its segment back after each request; the whole disk is compared at the end of each round and
 * after a reopen.  Every round is a fresh layer whose writers start together at a barrier, so
 * most requests are first writes racing each other and the overwrites beside them. */

#define SH_NW 6
#define SH_ROUNDS 100
#define SH_OPS 1500
#define SH_VSIZE (512u << 10)
#define SH_MAXSEG (3u * 4096u)

struct seg {
  uint64_t off, len;
};

struct sh_shared {
  struct ovl_layer *l;
  struct otu_below below;
  uint8_t *model;
  struct seg *segs[SH_NW];
  size_t nsegs[SH_NW];
  uint64_t seed;
  pthread_barrier_t start;
  atomic_int failed;
  char msg[256];
};

struct sh_targ {
  struct sh_shared *sh;
  int idx;
};

static void
sh_fail(struct sh_shared *sh, const char *msg, int idx, int op, uint64_t off, uint64_t len, long d)
{
  if (atomic_exchange(&sh->failed, 1))
    return;
  snprintf(sh->msg, sizeof sh->msg, "writer %d op %d: %s at %" PRIu64 "+%" PRIu64 " (byte %ld): %s",
           idx, op, msg, off, len, d, cc_error_get());
}

static void *
sh_writer(void *arg)
{
  struct sh_targ *t = arg;
  struct sh_shared *sh = t->sh;
  uint64_t rng = sh->seed * 31 + (uint64_t)t->idx + 1;
  uint8_t *buf = malloc(SH_MAXSEG), *back = malloc(SH_MAXSEG);

  pthread_barrier_wait(&sh->start);
  for (int i = 0; i < SH_OPS && buf && back && !atomic_load(&sh->failed); i++) {
    const struct seg *s = &sh->segs[t->idx][otu_rand_below(&rng, sh->nsegs[t->idx])];
    uint64_t a = otu_rand_below(&rng, 4) == 0 ? 0 : otu_rand_below(&rng, s->len);
    uint64_t n = a == 0 && otu_rand_below(&rng, 2) ? s->len : 1 + otu_rand_below(&rng, s->len - a);
    uint64_t off = s->off + a;
    unsigned kind = (unsigned)otu_rand_below(&rng, 20);
    int e;

    if (kind < 14) {
      otu_pattern(rng ^ (uint64_t)i << 20, buf, n, off);
      e = ovl_pwrite(sh->l, buf, n, off, 0, below_cb, &sh->below);
      if (e == 0)
        memcpy(sh->model + off, buf, n);
    } else if (kind < 19) {
      e = ovl_zero(sh->l, n, off, kind >= 17 ? OVL_MAY_TRIM : 0, below_cb, &sh->below);
      if (e == 0)
        memset(sh->model + off, 0, n);
    } else {
      e = ovl_flush(sh->l);
    }
    if (e != 0) {
      sh_fail(sh, "request failed", t->idx, i, off, n, -1);
      break;
    }
    /* read the owner's whole segment back: this request's bytes and the earlier ones */
    e = ovl_pread(sh->l, back, s->len, s->off, below_cb, &sh->below);
    long d = e == 0 ? otu_first_diff(back, sh->model + s->off, s->len) : -1;
    if (e != 0 || d != -1) {
      sh_fail(sh, e ? "read-back failed" : "read-back differs", t->idx, i, s->off, s->len, d);
      break;
    }
  }
  free(buf);
  free(back);
  return NULL;
}

static void
shared_subclusters(uint32_t cluster_size, const char *name)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  uint8_t *buf = malloc(SH_VSIZE);
  struct sh_shared sh;

  memset(&sh, 0, sizeof sh);
  sh.seed = otu_seed(name);
  otu_io_nosync();
  sh.model = malloc(SH_VSIZE);
  cr_assert(sh.model && buf);
  cr_assert_eq(pthread_barrier_init(&sh.start, NULL, SH_NW), 0);

  for (int round = 0; round < SH_ROUNDS; round++) {
    uint64_t rng = sh.seed + (uint64_t)round * 7919;
    size_t cap[SH_NW] = {0};

    sh.below.seed = rng ^ 0xA5A5;
    otu_pattern(sh.below.seed, sh.model, SH_VSIZE, 0);
    for (int i = 0; i < SH_NW; i++)
      sh.nsegs[i] = 0;
    for (uint64_t o = otu_rand_below(&rng, 50); o + SH_MAXSEG < SH_VSIZE;) {
      uint64_t len = otu_rand_below(&rng, 8) ? 1 + otu_rand_below(&rng, 700)
                                             : 1 + otu_rand_below(&rng, SH_MAXSEG);
      int w = (int)otu_rand_below(&rng, SH_NW);
      if (sh.nsegs[w] == cap[w]) {
        cap[w] = cap[w] ? 2 * cap[w] : 256;
        sh.segs[w] = realloc(sh.segs[w], cap[w] * sizeof *sh.segs[w]);
        cr_assert(sh.segs[w]);
      }
      sh.segs[w][sh.nsegs[w]++] = (struct seg){o, len};
      o += len + otu_rand_below(&rng, 51);
    }
    otu_create(path, SH_VSIZE, cluster_size);
    sh.l = otu_open(path, OVL_RDWR);

    pthread_t w[SH_NW];
    struct sh_targ wa[SH_NW];
    for (int i = 0; i < SH_NW; i++) {
      wa[i] = (struct sh_targ){&sh, i};
      cr_assert_eq(pthread_create(&w[i], NULL, sh_writer, &wa[i]), 0);
    }
    for (int i = 0; i < SH_NW; i++)
      pthread_join(w[i], NULL);
    cr_assert_eq(atomic_load(&sh.failed), 0, "round %d: %s (seed %" PRIu64 ")", round, sh.msg,
                 sh.seed);

    for (int pass = 0; pass < 2; pass++) {
      cr_assert_eq(ovl_pread(sh.l, buf, SH_VSIZE, 0, below_cb, &sh.below), 0, "%s", cc_error_get());
      long d = otu_first_diff(buf, sh.model, SH_VSIZE);
      cr_assert_eq(d, -1, "round %d pass %d: byte %ld differs (seed %" PRIu64 ")", round, pass, d,
                   sh.seed);
      cr_assert_eq(ovl_close(sh.l), 0, "%s", cc_error_get());
      sh.l = pass ? NULL : otu_open(path, OVL_RDONLY);
    }
    cr_assert_eq(unlink(path), 0);
  }
  pthread_barrier_destroy(&sh.start);
  free(buf);
  for (int i = 0; i < SH_NW; i++)
    free(sh.segs[i]);
  free(sh.model);
  free(path);
  otu_rmtree(dir);
}

/* 512-byte sub-clusters: segments cover up to 24 whole ones */
Test(overlay_threads, shared_subclusters_16k)
{
  shared_subclusters(16384, "overlay_threads::shared_subclusters_16k");
}

/* the default 4 KiB sub-clusters: many segments share each one */
Test(overlay_threads, shared_subclusters_128k)
{
  shared_subclusters(131072, "overlay_threads::shared_subclusters_128k");
}

/* An unlocked open (info, a merge probing a served top) reads a layer its writer keeps
 * growing and flushing: between the open's fstat and its read of the map, the writer can
 * extend the file and flush L2 entries naming the new bytes.  Such a map is sound (data and
 * tables reach the file before the entries naming them); the open must not call it
 * truncated. */
struct grower {
  struct ovl_layer *l;
  atomic_int done;
  int err;
  char msg[256];
};

static void *
grow_loop(void *arg)
{
  struct grower *g = arg;
  uint8_t buf[SC];
  uint64_t size = ovl_virtual_size(g->l);

  memset(buf, 0xA5, sizeof buf);
  /* one sub-cluster of a new cluster each time: the file grows, an L2 entry changes */
  for (uint64_t off = 0; off < size; off += 16384) {
    if (ovl_pwrite(g->l, buf, SC, off, 0, NULL, NULL) < 0 || ovl_flush(g->l) < 0) {
      g->err = 1;
      snprintf(g->msg, sizeof g->msg, "%s", cc_error_get());
      break;
    }
  }
  atomic_store(&g->done, 1);
  return NULL;
}

Test(overlay_threads, unlocked_open_of_a_growing_layer)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  struct grower g;
  pthread_t t;
  unsigned opens = 0, failures = 0;
  char first[256] = "";

  memset(&g, 0, sizeof g);
  otu_io_nosync();
  otu_create(path, 4 * VSIZE, 16384); /* 4096 clusters, 16 L2 tables */
  g.l = otu_open(path, OVL_RDWR);
  cr_assert_eq(pthread_create(&t, NULL, grow_loop, &g), 0);
  while (!atomic_load(&g.done)) {
    struct ovl_layer *r;
    if (ovl_open(path, OVL_RDONLY | OVL_NOLOCK, &r) < 0) {
      if (failures++ == 0)
        snprintf(first, sizeof first, "%s", cc_error_get());
    } else {
      ovl_close(r);
    }
    opens++;
  }
  pthread_join(t, NULL);
  cr_assert_eq(g.err, 0, "writer: %s", g.msg);
  cr_assert_eq(ovl_close(g.l), 0, "%s", cc_error_get());
  cr_assert_eq(failures, 0, "%u of %u unlocked opens failed; the first: %s", failures, opens,
               first);
  free(path);
  otu_rmtree(dir);
}

/* A client's flush syncs without the layer lock (map.c design notes): a first write, which
 * needs the lock, goes on while a flush waits in fdatasync.  With the lock held across the
 * sync, the write below waits for the sync to be let go, and the test sees it unfinished. */
static pthread_mutex_t hs_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hs_cv = PTHREAD_COND_INITIALIZER;
static int hs_hold, hs_in_sync, hs_write_done;

static int
held_fdatasync(int fd)
{
  struct timespec until;

  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 20; /* never forever, whatever the code under test does */
  pthread_mutex_lock(&hs_mu);
  if (hs_hold) {
    hs_in_sync = 1;
    pthread_cond_broadcast(&hs_cv);
    while (hs_hold && pthread_cond_timedwait(&hs_cv, &hs_mu, &until) == 0)
      ;
  }
  pthread_mutex_unlock(&hs_mu);
  return ovl_io_default.fdatasync(fd);
}

static struct ovl_io_ops held_ops;

static void *
flush_thread(void *arg)
{
  return (void *)(intptr_t)ovl_flush(arg);
}

struct first_write {
  struct ovl_layer *l;
  uint64_t off;
  int r;
};

static void *
first_write_thread(void *arg)
{
  struct first_write *fw = arg;
  uint8_t buf[4096];

  memset(buf, 0x3c, sizeof buf);
  fw->r = ovl_pwrite(fw->l, buf, sizeof buf, fw->off, 0, NULL, NULL);
  pthread_mutex_lock(&hs_mu);
  hs_write_done = 1;
  pthread_cond_broadcast(&hs_cv);
  pthread_mutex_unlock(&hs_mu);
  return NULL;
}

Test(overlay_threads, first_write_during_a_flush_sync)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  struct first_write fw;
  struct ovl_layer *l;
  pthread_t f, w;
  void *fr;
  uint8_t buf[4096], got[4096];
  struct timespec until;
  int done_while_held;

  held_ops = ovl_io_default;
  held_ops.fdatasync = held_fdatasync;
  ovl_io = &held_ops;
  otu_create(path, VSIZE, 65536);
  l = otu_open(path, OVL_RDWR);
  memset(buf, 0x5a, sizeof buf);
  cr_assert_eq(ovl_pwrite(l, buf, sizeof buf, 0, 0, NULL, NULL), 0, "%s", cc_error_get());

  hs_hold = 1;
  cr_assert_eq(pthread_create(&f, NULL, flush_thread, l), 0);
  pthread_mutex_lock(&hs_mu);
  while (!hs_in_sync)
    pthread_cond_wait(&hs_cv, &hs_mu);
  pthread_mutex_unlock(&hs_mu);

  /* the flush now sits in its first fdatasync; a first write into another cluster */
  fw = (struct first_write){l, 8u << 20, -1};
  cr_assert_eq(pthread_create(&w, NULL, first_write_thread, &fw), 0);
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 5;
  pthread_mutex_lock(&hs_mu);
  while (!hs_write_done && pthread_cond_timedwait(&hs_cv, &hs_mu, &until) == 0)
    ;
  done_while_held = hs_write_done;
  hs_hold = 0;
  pthread_cond_broadcast(&hs_cv);
  pthread_mutex_unlock(&hs_mu);
  pthread_join(w, NULL);
  pthread_join(f, &fr);
  cr_assert_eq((intptr_t)fr, 0, "flush: %s", cc_error_get());
  cr_assert_eq(fw.r, 0, "write: %s", cc_error_get());
  cr_assert(done_while_held, "a first write waited for a flush's fdatasync (the layer lock was "
                             "held across the sync)");

  /* the write made during the flush is the next flush's: durable after it, as is the first */
  cr_assert_eq(ovl_flush(l), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  ovl_io = &ovl_io_default;
  l = otu_open(path, OVL_RDONLY);
  cr_assert_eq(ovl_pread(l, got, sizeof got, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_arr_eq(got, buf, sizeof got);
  memset(buf, 0x3c, sizeof buf);
  cr_assert_eq(ovl_pread(l, got, sizeof got, 8u << 20, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_arr_eq(got, buf, sizeof got);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  free(path);
  otu_rmtree(dir);
}
