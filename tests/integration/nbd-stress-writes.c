/* SPDX-License-Identifier: BSD-3-Clause */
/* nbd-stress-writes: many small non-overlapping requests in flight on several connections.
 *
 *   nbd-stress-writes SOCK EXPORT SEED [CONNS [PASSES]]
 *
 * The export is cut into random segments (1..700 bytes, one in eight up to 12 KiB; gaps of
 * 0..50 bytes that are never written), dealt round-robin to CONNS connections (default 2).
 * Each pass issues one request for every segment: a write of a fresh pattern (most), a
 * write-zeroes or a trim, of the whole segment or a part of it; each connection keeps up to 16
 * of its requests in flight (what qemu's NBD client does), from one thread per connection.
 * Requests in flight never overlap, so NBD defines the result: the model is updated when a
 * request is issued, and after the passes, a flush on every connection and a read of the whole
 * export through each connection must equal the model byte for byte.  Bytes never written keep
 * their initial contents, read once at the start.
 *
 * Issue 11: a write that partly covered an allocated sub-cluster used to read the rest of it and
 * write it back, losing a concurrent write into that rest; this client finds that within a pass.
 * Exit 0: equal; 1: a difference or a failed request (printed with the seed); 2: usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#define MAX_CONNS 8
#define IN_FLIGHT 16
#define MAX_SEG (12u << 10)

struct seg {
  uint64_t off;
  uint32_t len;
};

struct conn {
  struct nbd_handle *h;
  struct seg *segs;
  size_t nsegs;
  uint64_t rng;
  unsigned char *model; /* shared; this connection only touches its own segments */
  uint64_t size;
  int idx;
  char err[512];
};

static uint64_t seed;

static uint64_t
rnd(uint64_t *s)
{
  uint64_t z = (*s += 0x9E3779B97F4A7C15u);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
  return z ^ (z >> 31);
}

static uint64_t
below(uint64_t *s, uint64_t n)
{
  return rnd(s) % n;
}

static void
die(const char *what)
{
  fprintf(stderr, "nbd-stress-writes: %s: %s (seed %" PRIu64 ")\n", what, nbd_get_error(), seed);
  exit(1);
}

/* One pass of a connection: a request per segment, IN_FLIGHT at a time. */
static void *
run_pass(void *arg)
{
  struct conn *c = arg;
  unsigned char *bufs[IN_FLIGHT];
  int64_t cookies[IN_FLIGHT];
  size_t next = 0;

  for (int i = 0; i < IN_FLIGHT; i++) {
    bufs[i] = malloc(MAX_SEG);
    cookies[i] = 0;
    if (!bufs[i]) {
      snprintf(c->err, sizeof c->err, "out of memory");
      return NULL;
    }
  }
  for (;;) {
    bool busy = false;

    for (int i = 0; i < IN_FLIGHT; i++) {
      if (cookies[i] > 0) {
        int r = nbd_aio_command_completed(c->h, (uint64_t)cookies[i]);
        if (r == -1) {
          snprintf(c->err, sizeof c->err, "connection %d: request failed: %s", c->idx,
                   nbd_get_error());
          goto out;
        }
        if (r == 0) {
          busy = true;
          continue;
        }
        cookies[i] = 0;
      }
      if (next == c->nsegs)
        continue;
      const struct seg *s = &c->segs[next++];
      uint64_t a = below(&c->rng, 3) == 0 ? below(&c->rng, s->len) : 0;
      uint64_t n = below(&c->rng, 2) ? s->len - a : 1 + below(&c->rng, s->len - a);
      uint64_t off = s->off + a;
      unsigned kind = (unsigned)below(&c->rng, 10);
      if (kind < 7) {
        for (uint64_t b = 0; b < n; b++)
          bufs[i][b] = (unsigned char)rnd(&c->rng);
        memcpy(c->model + off, bufs[i], n);
        cookies[i] = nbd_aio_pwrite(c->h, bufs[i], n, off, NBD_NULL_COMPLETION, 0);
      } else {
        memset(c->model + off, 0, n);
        cookies[i] = kind < 9 ? nbd_aio_zero(c->h, n, off, NBD_NULL_COMPLETION, 0)
                              : nbd_aio_trim(c->h, n, off, NBD_NULL_COMPLETION, 0);
      }
      if (cookies[i] == -1) {
        snprintf(c->err, sizeof c->err, "connection %d: issue: %s", c->idx, nbd_get_error());
        goto out;
      }
      busy = true;
    }
    if (!busy)
      break;
    if (nbd_poll(c->h, -1) == -1) {
      snprintf(c->err, sizeof c->err, "connection %d: poll: %s", c->idx, nbd_get_error());
      goto out;
    }
  }
out:
  for (int i = 0; i < IN_FLIGHT; i++)
    free(bufs[i]);
  return NULL;
}

int
main(int argc, char **argv)
{
  struct conn c[MAX_CONNS];
  pthread_t th[MAX_CONNS];
  int nconns = 2, passes = 3;
  unsigned char *got;

  if (argc < 4 || argc > 6) {
    fprintf(stderr, "usage: nbd-stress-writes SOCK EXPORT SEED [CONNS [PASSES]]\n");
    return 2;
  }
  seed = strtoull(argv[3], NULL, 0);
  if (argc > 4)
    nconns = atoi(argv[4]);
  if (argc > 5)
    passes = atoi(argv[5]);
  if (nconns < 1 || nconns > MAX_CONNS || passes < 1) {
    fprintf(stderr, "nbd-stress-writes: CONNS must be 1..%d and PASSES at least 1\n", MAX_CONNS);
    return 2;
  }
  printf("nbd-stress-writes: seed %" PRIu64 ", %d connections, %d passes\n", seed, nconns, passes);
  memset(c, 0, sizeof c);
  for (int i = 0; i < nconns; i++) {
    c[i].h = nbd_create();
    if (!c[i].h || nbd_set_export_name(c[i].h, argv[2]) == -1 ||
        nbd_connect_unix(c[i].h, argv[1]) == -1)
      die("connect");
    c[i].idx = i;
    c[i].rng = seed * 1000 + (uint64_t)i;
  }
  int64_t size = nbd_get_size(c[0].h);
  if (size <= 0)
    die("size");
  c[0].size = (uint64_t)size;
  unsigned char *model = malloc((size_t)size);
  got = malloc((size_t)size);
  if (!model || !got) {
    fprintf(stderr, "nbd-stress-writes: out of memory\n");
    return 1;
  }
  if (nbd_pread(c[0].h, model, (size_t)size, 0, 0) == -1)
    die("initial read");

  uint64_t s = seed, nsegs = 0;
  for (uint64_t o = below(&s, 50); o + MAX_SEG < (uint64_t)size; nsegs++) {
    uint32_t len = (uint32_t)(below(&s, 8) ? 1 + below(&s, 700) : 1 + below(&s, MAX_SEG));
    struct conn *cc = &c[nsegs % (uint64_t)nconns];
    if ((cc->nsegs & (cc->nsegs - 1)) == 0) {
      cc->segs = realloc(cc->segs, (cc->nsegs ? 2 * cc->nsegs : 1) * sizeof *cc->segs);
      if (!cc->segs) {
        fprintf(stderr, "nbd-stress-writes: out of memory\n");
        return 1;
      }
    }
    cc->segs[cc->nsegs++] = (struct seg){o, len};
    o += len + below(&s, 51);
  }
  for (int i = 0; i < nconns; i++)
    c[i].model = model;

  for (int p = 0; p < passes; p++) {
    for (int i = 0; i < nconns; i++)
      if (pthread_create(&th[i], NULL, run_pass, &c[i]) != 0) {
        fprintf(stderr, "nbd-stress-writes: pthread_create failed\n");
        return 1;
      }
    for (int i = 0; i < nconns; i++)
      pthread_join(th[i], NULL);
    for (int i = 0; i < nconns; i++)
      if (c[i].err[0]) {
        fprintf(stderr, "nbd-stress-writes: pass %d: %s (seed %" PRIu64 ")\n", p, c[i].err, seed);
        return 1;
      }
  }
  for (int i = 0; i < nconns; i++)
    if (nbd_flush(c[i].h, 0) == -1)
      die("flush");
  int bad = 0;
  for (int i = 0; i < nconns; i++) {
    if (nbd_pread(c[i].h, got, (size_t)size, 0, 0) == -1)
      die("final read");
    for (int64_t b = 0; b < size; b++)
      if (got[b] != model[b]) {
        int64_t e = b;
        while (e < size && got[e] != model[e])
          e++;
        fprintf(stderr,
                "nbd-stress-writes: connection %d: bytes %" PRId64 "..%" PRId64
                " differ (0x%02x, expected 0x%02x; seed %" PRIu64 ")\n",
                i, b, e - 1, got[b], model[b], seed);
        if (++bad >= 5)
          break;
        b = e;
      }
    if (bad)
      break;
  }
  printf("nbd-stress-writes: %" PRIu64 " segments, %s\n", nsegs, bad ? "DIFFERENCES" : "all equal");
  for (int i = 0; i < nconns; i++) {
    nbd_shutdown(c[i].h, 0);
    nbd_close(c[i].h);
    free(c[i].segs);
  }
  free(model);
  free(got);
  return bad ? 1 : 0;
}
