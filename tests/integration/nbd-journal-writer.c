/* SPDX-License-Identifier: BSD-3-Clause */
/* nbd-journal-writer: continuous tagged writes on 2 connections around a live top switch, and
 * the point-in-time check of what each side of the switch holds.
 *
 *   nbd-journal-writer write SOCK EXPORT[,EXPORT2] SECONDS AT-MS[,AT-MS...] JOURNAL 'CMD'
 * ['CMD'...] nbd-journal-writer verify SOCK EXPORT[,EXPORT2] JOURNAL frozen[:K]|final
 *
 * write: the first NBLK 4 KiB blocks of EXPORT are tagged (block number, sequence number,
 * repeated).  2 connections x 2 threads write them continuously, synchronously, each thread
 * owning the blocks b with b % 4 == its index, so a block has at most one write in flight and
 * its sequence numbers grow with time.  With two exports (a multi-disk VM), each gets 2
 * connections: thread i writes through connection i / 2, which is on export (i / 2) % 2, so
 * the blocks are split between the exports and verify reads each from its own.  Several
 * commands run one after the other, each at its AT-MS (or as soon as the previous returned);
 * each has its own window, and `frozen:K` verifies against the K-th (from 0).  Every write's issue
 * and completion times are kept.  At PUSH-AT-MS the main thread runs PUSH-COMMAND (sh -c), noting
 * when it was sent and when it returned.  Afterwards, per block: lo = the last seq completed before
 * the command was sent, hi = the last seq issued before it returned, final = the last seq; written
 * to JOURNAL.  Any failed request or disconnect is an error (exit 1).  Printed: the write latency,
 * max and p99, of writes outside the command's window, and the max of writes overlapping it (the
 * stall).
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
#define MAXEXP 2
#define MAXCONN 4
#define PER_CONN 2
#define MAXTHREADS (MAXCONN * PER_CONN)
#define MAXCMDS 16

static int nexp = 1, nconn = 2, nthreads = 4;
static char *exports[MAXEXP];

/* Split "a,b" into exports[] (at most MAXEXP) and size the writers to it. */
static void
set_exports(char *list)
{
  char *save = NULL;

  nexp = 0;
  for (char *t = strtok_r(list, ",", &save); t && nexp < MAXEXP; t = strtok_r(NULL, ",", &save))
    exports[nexp++] = t;
  nconn = 2 * nexp;
  nthreads = nconn * PER_CONN;
}

/* The export whose connection writes block b. */
static int
export_of(uint32_t b)
{
  return (int)((b % (uint32_t)nthreads) / PER_CONN) % nexp;
}

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
    b = (uint32_t)(rng % (NBLK / (uint32_t)nthreads)) * (uint32_t)nthreads + (uint32_t)w->idx;
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
do_write(const char *sock, int secs, char *at_list, const char *journal, char **cmds, int ncmds)
{
  struct nbd_handle *h[MAXCONN];
  struct worker w[MAXTHREADS];
  pthread_t t[MAXTHREADS];
  static uint32_t fin[NBLK];
  uint8_t *buf = malloc(BLK);
  int64_t sent[MAXCMDS], replied[MAXCMDS], start, end, stall = 0, base_max = 0, *lat;
  long at[MAXCMDS];
  size_t nlat = 0, total = 0, in_window = 0;
  int rc = 0, st[MAXCMDS], nat = 0;
  char *save = NULL;
  FILE *f;

  for (char *x = strtok_r(at_list, ",", &save); x && nat < MAXCMDS; x = strtok_r(NULL, ",", &save))
    at[nat++] = atol(x);
  if (nat != ncmds || ncmds > MAXCMDS) {
    fprintf(stderr, "nbd-journal-writer: %d times for %d commands\n", nat, ncmds);
    return 2;
  }
  for (int c = 0; c < nconn; c++)
    h[c] = connect_to(sock, exports[c % nexp]);
  for (uint32_t b = 0; b < NBLK; b++) {
    tag(buf, b, 0);
    if (nbd_pwrite(h[export_of(b)], buf, BLK, (uint64_t)b * BLK, 0) < 0) {
      fprintf(stderr, "nbd-journal-writer: initial write: %s\n", nbd_get_error());
      return 1;
    }
  }
  for (int c = 0; c < nexp; c++)
    if (nbd_flush(h[c], 0) < 0) {
      fprintf(stderr, "nbd-journal-writer: flush: %s\n", nbd_get_error());
      return 1;
    }
  start = now_us();
  for (int i = 0; i < nthreads; i++) {
    w[i] = (struct worker){.h = h[i / PER_CONN], .idx = i};
    pthread_create(&t[i], NULL, work, &w[i]);
  }
  for (int k = 0; k < ncmds; k++) {
    while (now_us() < start + (int64_t)at[k] * 1000)
      usleep(1000);
    sent[k] = now_us();
    st[k] = system(cmds[k]);
    replied[k] = now_us();
  }
  end = start + (int64_t)secs * 1000000;
  while (now_us() < end)
    usleep(10000);
  atomic_store(&stop, 1);
  for (int i = 0; i < nthreads; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < nthreads; i++) {
    if (w[i].err[0]) {
      fprintf(stderr, "nbd-journal-writer: writer %d: %s\n", i, w[i].err);
      rc = 1;
    }
    total += w[i].n;
  }
  for (int c = 0; c < nconn; c++) {
    if (nbd_flush(h[c], 0) < 0 || nbd_shutdown(h[c], 0) < 0) {
      fprintf(stderr, "nbd-journal-writer: connection %d at the end: %s\n", c, nbd_get_error());
      rc = 1;
    }
    nbd_close(h[c]);
  }
  for (int k = 0; k < ncmds; k++)
    if (st[k] != 0) {
      fprintf(stderr, "nbd-journal-writer: command %d failed (status %d): %s\n", k, st[k], cmds[k]);
      rc = 1;
    }
  lat = malloc((total + 1) * sizeof *lat);
  for (int i = 0; i < nthreads; i++) {
    for (size_t k = 0; k < w[i].n; k++) {
      const struct rec *r = &w[i].log[k];
      int64_t l = r->done_us - r->issue_us;
      int during = 0;

      if (r->seq > fin[r->block])
        fin[r->block] = r->seq;
      for (int c = 0; c < ncmds; c++)
        if (r->issue_us < replied[c] && r->done_us > sent[c])
          during = 1;
      if (during) {
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
  printf("writes %zu (%zu overlapping a command), %d commands:", total, in_window, ncmds);
  for (int k = 0; k < ncmds; k++)
    printf(" %.3f ms", (double)(replied[k] - sent[k]) / 1000.0);
  printf("\nwrite latency without a command: max %.3f ms, p99 %.3f ms; during one: max %.3f ms "
         "(the write stall)\n",
         (double)base_max / 1000.0, nlat ? (double)lat[nlat * 99 / 100] / 1000.0 : 0.0,
         (double)stall / 1000.0);
  free(lat);
  f = fopen(journal, "w");
  if (!f) {
    perror(journal);
    return 1;
  }
  /* The windows, the per-block last seq, then every write (verify derives the rest). */
  fprintf(f, "layout %d %d\n", nexp, nthreads);
  for (int k = 0; k < ncmds; k++)
    fprintf(f, "window %" PRId64 " %" PRId64 "\n", sent[k], replied[k]);
  for (uint32_t b = 0; b < NBLK; b++)
    fprintf(f, "block %u %u\n", b, fin[b]);
  for (int i = 0; i < nthreads; i++)
    for (size_t k = 0; k < w[i].n; k++)
      fprintf(f, "write %u %u %" PRId64 " %" PRId64 "\n", w[i].log[k].block, w[i].log[k].seq,
              w[i].log[k].issue_us, w[i].log[k].done_us);
  fclose(f);
  for (int i = 0; i < nthreads; i++)
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
do_verify(const char *sock, char *names, const char *journal, const char *mode)
{
  struct nbd_handle *h[MAXEXP];
  uint8_t *buf = malloc(BLK);
  FILE *f = fopen(journal, "r");
  static unsigned lo[NBLK], hi[NBLK], fin[NBLK];
  static struct times tm[NBLK];
  static int64_t got[NBLK];
  unsigned b, seq, bad = 0, n = 0;
  int frozen = strncmp(mode, "frozen", 6) == 0, want = 0, nwin = 0, jexp, jthreads;
  int64_t sent = 0, replied = 0, is, dn, from = INT64_MIN, to = INT64_MAX;
  char kind[16], name[512];

  snprintf(name, sizeof name, "%s", names);
  if (frozen && mode[6] == ':')
    want = atoi(mode + 7);
  set_exports(names);
  if (!f || fscanf(f, "layout %d %d", &jexp, &jthreads) != 2 || jexp != nexp ||
      jthreads != nthreads) {
    fprintf(stderr, "nbd-journal-writer: %s: not a journal of %d export(s)\n", journal, nexp);
    return 1;
  }
  while (fscanf(f, "%15s", kind) == 1) {
    unsigned z;
    int64_t x, y;

    if (strcmp(kind, "window") == 0 && fscanf(f, "%" SCNd64 " %" SCNd64, &x, &y) == 2) {
      if (nwin++ == want)
        sent = x, replied = y;
    } else if (strcmp(kind, "block") == 0 && fscanf(f, "%u %u", &b, &z) == 2 && b < NBLK) {
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
      /* The window's bounds: the last write completed before the command was sent must be
       * there, none issued after it returned may be. */
      if (dn < sent && seq > lo[b])
        lo[b] = seq;
      if (is < replied && seq > hi[b])
        hi[b] = seq;
    } else {
      fprintf(stderr, "nbd-journal-writer: %s: malformed\n", journal);
      return 1;
    }
  }
  fclose(f);
  if (frozen && want >= nwin) {
    fprintf(stderr, "nbd-journal-writer: %s: no window %d (%d commands)\n", journal, want, nwin);
    return 1;
  }
  for (int e = 0; e < nexp; e++)
    h[e] = connect_to(sock, exports[e]);
  for (b = 0; b < NBLK; b++) {
    if (nbd_pread(h[export_of(b)], buf, BLK, (uint64_t)b * BLK, 0) < 0) {
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
  for (int e = 0; e < nexp; e++) {
    nbd_shutdown(h[e], 0);
    nbd_close(h[e]);
  }
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
  if (argc >= 8 && strcmp(argv[1], "write") == 0) {
    set_exports(argv[3]);
    return do_write(argv[2], atoi(argv[4]), argv[5], argv[6], argv + 7, argc - 7);
  }
  if (argc == 6 && strcmp(argv[1], "verify") == 0)
    return do_verify(argv[2], argv[3], argv[4], argv[5]);
  fprintf(stderr,
          "usage: nbd-journal-writer write SOCK EXPORT[,EXPORT] SECONDS AT-MS[,AT-MS...] "
          "JOURNAL CMD [CMD...]\n"
          "       nbd-journal-writer verify SOCK EXPORT[,EXPORT] JOURNAL frozen[:K]|final\n");
  return 2;
}
