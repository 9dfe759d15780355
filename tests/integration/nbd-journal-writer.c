/* SPDX-License-Identifier: BSD-3-Clause */
/* nbd-journal-writer: continuous tagged writes on 2 connections around a live top switch, and
 * the point-in-time check of what each side of the switch holds.
 *
 *   nbd-journal-writer write SOCK EXPORT SECONDS PUSH-AT-MS JOURNAL 'PUSH-COMMAND'
 *   nbd-journal-writer verify SOCK EXPORT JOURNAL frozen|final
 *
 * write: the first NBLK 4 KiB blocks of EXPORT are tagged (block number, sequence number,
 * repeated).  2 connections x 2 threads write them continuously, synchronously, each thread
 * owning the blocks b with b % 4 == its index, so a block has at most one write in flight and
 * its sequence numbers grow with time.  Every write's issue and completion times are kept.  At
 * PUSH-AT-MS the main thread runs PUSH-COMMAND (sh -c), noting when it was sent and when it
 * returned.  Afterwards, per block: lo = the last seq completed before the command was sent,
 * hi = the last seq issued before it returned, final = the last seq; written to JOURNAL.  Any
 * failed request or disconnect is an error (exit 1).  Printed: the write latency, max and p99,
 * of writes outside the command's window, and the max of writes overlapping it (the stall).
 *
 * verify: read every block of EXPORT; it must be an untorn tag of that block with
 * lo <= seq <= hi (frozen: the state at the switch, every write completed before the command in
 * it, none issued after its reply) or seq == final (final).  frozen also checks that one
 * instant explains every block: some t after every block's write was issued and before the
 * block's next write completed (a switch applied at different times to different connections
 * or blocks would fail this).  JOURNAL holds the window, the per-block summary and every write.
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

#include <libnbd.h>

#define BLK 4096u
#define NBLK 2048u /* 8 MiB */
#define NCONN 2
#define PER_CONN 2
#define NTHREADS (NCONN * PER_CONN)

struct rec {
  uint32_t block;
  uint32_t seq;
  int64_t issue_us, done_us;
};

struct worker {
  struct nbd_handle *h;
  int idx;
  struct rec *log;
  size_t n, cap;
  char err[512];
};

static atomic_int stop;
static uint32_t next_seq[NBLK]; /* each block is only touched by its owner thread */

static int64_t
now_us(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
tag(uint8_t *buf, uint32_t block, uint32_t seq)
{
  uint64_t a = block, b = seq;

  for (size_t i = 0; i < BLK; i += 16) {
    memcpy(buf + i, &a, 8);
    memcpy(buf + i + 8, &b, 8);
  }
}

/* seq of an untorn tag of `block`, or -1. */
static int64_t
untag(const uint8_t *buf, uint32_t block)
{
  uint64_t a, b;

  memcpy(&a, buf, 8);
  memcpy(&b, buf + 8, 8);
  if (a != block)
    return -1;
  for (size_t i = 16; i < BLK; i += 16)
    if (memcmp(buf + i, buf, 16) != 0)
      return -1;
  return (int64_t)b;
}

static struct nbd_handle *
connect_to(const char *sock, const char *name)
{
  struct nbd_handle *h = nbd_create();

  if (!h || nbd_set_export_name(h, name) < 0 || nbd_connect_unix(h, sock) < 0) {
    fprintf(stderr, "nbd-journal-writer: connect %s: %s\n", name, nbd_get_error());
    exit(1);
  }
  return h;
}

static void *
work(void *opaque)
{
  struct worker *w = opaque;
  uint8_t *buf = malloc(BLK);
  uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(w->idx + 1);

  while (!atomic_load(&stop)) {
    uint32_t b, seq;
    int64_t t0;

    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    b = (uint32_t)(rng % (NBLK / NTHREADS)) * NTHREADS + (uint32_t)w->idx;
    seq = ++next_seq[b];
    tag(buf, b, seq);
    t0 = now_us();
    if (nbd_pwrite(w->h, buf, BLK, (uint64_t)b * BLK, 0) < 0) {
      snprintf(w->err, sizeof w->err, "pwrite block %u: %s", b, nbd_get_error());
      break;
    }
    if (w->n == w->cap) {
      w->cap = w->cap ? 2 * w->cap : 65536;
      w->log = realloc(w->log, w->cap * sizeof *w->log);
      if (!w->log) {
        snprintf(w->err, sizeof w->err, "out of memory");
        break;
      }
    }
    w->log[w->n++] = (struct rec){b, seq, t0, now_us()};
  }
  free(buf);
  return NULL;
}

static int
cmp_i64(const void *a, const void *b)
{
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static int
do_write(const char *sock, const char *name, int secs, int push_at_ms, const char *journal,
         const char *cmd)
{
  struct nbd_handle *h[NCONN];
  struct worker w[NTHREADS];
  pthread_t t[NTHREADS];
  static uint32_t lo[NBLK], hi[NBLK], fin[NBLK];
  uint8_t *buf = malloc(BLK);
  int64_t sent, replied, end, stall = 0, base_max = 0, *lat;
  size_t nlat = 0, total = 0, in_window = 0;
  int rc = 0, st;
  FILE *f;

  for (int c = 0; c < NCONN; c++)
    h[c] = connect_to(sock, name);
  for (uint32_t b = 0; b < NBLK; b++) {
    tag(buf, b, 0);
    if (nbd_pwrite(h[0], buf, BLK, (uint64_t)b * BLK, 0) < 0) {
      fprintf(stderr, "nbd-journal-writer: initial write: %s\n", nbd_get_error());
      return 1;
    }
  }
  if (nbd_flush(h[0], 0) < 0) {
    fprintf(stderr, "nbd-journal-writer: flush: %s\n", nbd_get_error());
    return 1;
  }
  for (int i = 0; i < NTHREADS; i++) {
    w[i] = (struct worker){.h = h[i / PER_CONN], .idx = i};
    pthread_create(&t[i], NULL, work, &w[i]);
  }
  usleep((useconds_t)push_at_ms * 1000);
  sent = now_us();
  st = system(cmd);
  replied = now_us();
  end = sent + (int64_t)secs * 1000000 - (int64_t)push_at_ms * 1000;
  while (now_us() < end)
    usleep(10000);
  atomic_store(&stop, 1);
  for (int i = 0; i < NTHREADS; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < NTHREADS; i++) {
    if (w[i].err[0]) {
      fprintf(stderr, "nbd-journal-writer: writer %d: %s\n", i, w[i].err);
      rc = 1;
    }
    total += w[i].n;
  }
  for (int c = 0; c < NCONN; c++) {
    if (nbd_flush(h[c], 0) < 0 || nbd_shutdown(h[c], 0) < 0) {
      fprintf(stderr, "nbd-journal-writer: connection %d at the end: %s\n", c, nbd_get_error());
      rc = 1;
    }
    nbd_close(h[c]);
  }
  if (st != 0) {
    fprintf(stderr, "nbd-journal-writer: push command failed (status %d): %s\n", st, cmd);
    rc = 1;
  }
  lat = malloc((total + 1) * sizeof *lat);
  for (int i = 0; i < NTHREADS; i++) {
    for (size_t k = 0; k < w[i].n; k++) {
      const struct rec *r = &w[i].log[k];
      int64_t l = r->done_us - r->issue_us;

      if (r->done_us < sent && r->seq > lo[r->block])
        lo[r->block] = r->seq;
      if (r->issue_us < replied && r->seq > hi[r->block])
        hi[r->block] = r->seq;
      if (r->seq > fin[r->block])
        fin[r->block] = r->seq;
      if (r->issue_us < replied && r->done_us > sent) {
        in_window++;
        if (l > stall)
          stall = l;
      } else {
        lat[nlat++] = l;
        if (l > base_max)
          base_max = l;
      }
    }
  }
  qsort(lat, nlat, sizeof *lat, cmp_i64);
  printf("writes %zu (%zu overlapping the push command), push command %.3f ms\n", total, in_window,
         (double)(replied - sent) / 1000.0);
  printf("write latency without the push: max %.3f ms, p99 %.3f ms; during the push: max %.3f ms "
         "(the write stall)\n",
         (double)base_max / 1000.0, nlat ? (double)lat[nlat * 99 / 100] / 1000.0 : 0.0,
         (double)stall / 1000.0);
  free(lat);
  f = fopen(journal, "w");
  if (!f) {
    perror(journal);
    return 1;
  }
  /* The window, the per-block summary, then every write (for the instant check). */
  fprintf(f, "window %" PRId64 " %" PRId64 "\n", sent, replied);
  for (uint32_t b = 0; b < NBLK; b++)
    fprintf(f, "block %u %u %u %u\n", b, lo[b], hi[b], fin[b]);
  for (int i = 0; i < NTHREADS; i++)
    for (size_t k = 0; k < w[i].n; k++)
      fprintf(f, "write %u %u %" PRId64 " %" PRId64 "\n", w[i].log[k].block, w[i].log[k].seq,
              w[i].log[k].issue_us, w[i].log[k].done_us);
  fclose(f);
  for (int i = 0; i < NTHREADS; i++)
    free(w[i].log);
  free(buf);
  return rc;
}

/* Per block, the times a write of each seq was issued and completed (seq 0: the prefill). */
struct times {
  int64_t *issue, *done;
  uint32_t n;
};

static int
do_verify(const char *sock, const char *name, const char *journal, const char *mode)
{
  struct nbd_handle *h = connect_to(sock, name);
  uint8_t *buf = malloc(BLK);
  FILE *f = fopen(journal, "r");
  static unsigned lo[NBLK], hi[NBLK], fin[NBLK];
  static struct times tm[NBLK];
  static int64_t got[NBLK];
  unsigned b, seq, bad = 0, n = 0;
  int frozen = strcmp(mode, "frozen") == 0;
  int64_t sent, replied, is, dn, from = INT64_MIN, to = INT64_MAX;
  char kind[16];

  if (!f || fscanf(f, "window %" SCNd64 " %" SCNd64, &sent, &replied) != 2) {
    perror(journal);
    return 1;
  }
  while (fscanf(f, "%15s", kind) == 1) {
    unsigned x, y, z;

    if (strcmp(kind, "block") == 0 && fscanf(f, "%u %u %u %u", &b, &x, &y, &z) == 4 && b < NBLK) {
      lo[b] = x;
      hi[b] = y;
      fin[b] = z;
      tm[b].n = fin[b] + 1;
      tm[b].issue = calloc(tm[b].n, sizeof(int64_t));
      tm[b].done = calloc(tm[b].n, sizeof(int64_t));
      tm[b].issue[0] = tm[b].done[0] = INT64_MIN;
    } else if (strcmp(kind, "write") == 0 &&
               fscanf(f, "%u %u %" SCNd64 " %" SCNd64, &b, &seq, &is, &dn) == 4 && b < NBLK &&
               seq < tm[b].n) {
      tm[b].issue[seq] = is;
      tm[b].done[seq] = dn;
    } else {
      fprintf(stderr, "nbd-journal-writer: %s: malformed\n", journal);
      return 1;
    }
  }
  fclose(f);
  for (b = 0; b < NBLK; b++) {
    if (nbd_pread(h, buf, BLK, (uint64_t)b * BLK, 0) < 0) {
      fprintf(stderr, "nbd-journal-writer: %s: read block %u: %s\n", name, b, nbd_get_error());
      return 1;
    }
    got[b] = untag(buf, b);
    n++;
    if (frozen ? (got[b] < lo[b] || got[b] > hi[b]) : got[b] != fin[b]) {
      if (bad++ < 10)
        fprintf(stderr,
                "nbd-journal-writer: %s: block %u has seq %" PRId64 ", expected %s %u..%u\n", name,
                b, got[b], frozen ? "within" : "exactly", frozen ? lo[b] : fin[b],
                frozen ? hi[b] : fin[b]);
      continue;
    }
    if (frozen) {
      /* The block is consistent with an instant t iff its write was issued before t and the next
       * write of the block had not completed by t.  All blocks: one common instant. */
      uint32_t s0 = (uint32_t)got[b];
      int64_t a = tm[b].issue[s0], z = s0 + 1 < tm[b].n ? tm[b].done[s0 + 1] : INT64_MAX;

      if (a > from)
        from = a;
      if (z < to)
        to = z;
    }
  }
  nbd_shutdown(h, 0);
  nbd_close(h);
  free(buf);
  if (frozen && !bad && from >= to) {
    fprintf(stderr,
            "nbd-journal-writer: %s: no single instant explains every block (latest issue "
            "%+.3f ms after the command, earliest next completion %+.3f ms)\n",
            name, (double)(from - sent) / 1000.0, (double)(to - sent) / 1000.0);
    bad++;
  }
  printf("%s: %u blocks verified (%s%s), %u wrong\n", name, n, mode,
         frozen && !bad ? ", one instant" : "", bad);
  for (b = 0; b < NBLK; b++) {
    free(tm[b].issue);
    free(tm[b].done);
  }
  return bad || n != NBLK ? 1 : 0;
}

int
main(int argc, char **argv)
{
  if (argc == 8 && strcmp(argv[1], "write") == 0)
    return do_write(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), argv[6], argv[7]);
  if (argc == 6 && strcmp(argv[1], "verify") == 0)
    return do_verify(argv[2], argv[3], argv[4], argv[5]);
  fprintf(stderr, "usage: nbd-journal-writer write SOCK EXPORT SECONDS PUSH-AT-MS JOURNAL CMD\n"
                  "       nbd-journal-writer verify SOCK EXPORT JOURNAL frozen|final\n");
  return 2;
}
