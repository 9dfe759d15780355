/* SPDX-License-Identifier: BSD-3-Clause */
/* crash-writer: a verified write workload for the crash loop (scripts/crashloop).
 *
 *   crash-writer write  SOCK EXPORT JOURNAL FIRST-GEN SEED
 *       Writes until the server goes away (killed, or its power cut, at a random moment): 4 KiB
 *       aligned writes of 1-16 blocks, some FUA, some write-zeroes or trims, and one request in
 *       four a small one of 1-7 sectors of 512 bytes at any sector of the first 256 KiB, so that
 *       several small requests in flight share a 4 KiB sub-cluster (issue 11); up to 8 requests
 *       in flight on disjoint sectors over two connections, a flush every 1-64 requests (on one
 *       connection when the server offers multi-conn: it must cover both).  Every request is
 *       recorded in JOURNAL *before* it is sent ("W"), an FUA write's completion after it
 *       returns ("A"), a flush after it returns ("F", then fsync of the journal), so the
 *       journal always knows everything the server may have done and everything it promised.
 *   crash-writer verify SOCK EXPORT JOURNAL BASELINE TEMPLATE-RAW [UNIT]
 *       Replays JOURNAL over BASELINE (what each block held when the writer started; all
 *       "template" when BASELINE does not exist yet) and reads every block of the export:
 *         - a block whose last write was flushed (or FUA-acknowledged) holds exactly that write;
 *         - a block with writes sent since then holds the flushed contents or one of those
 *           writes, never anything else (other bytes, another block's data, an older write).
 *       UNIT (4096, or 512 after torn power cuts) is the granularity of "old or new" for blocks
 *       that only whole-block requests touched; blocks that small requests touched are checked
 *       per 512-byte sector (each sector holds one of its candidates).
 *       Then flushes and rewrites BASELINE with what it read, for the next round, and prints
 *       "verified BLOCKS blocks, PENDING with unflushed writes (NEW new, OLD old), ...".
 *
 * Block contents are a function of (block, generation): 16 header bytes (block, generation) and
 * a hash stream, so a misplaced block (another cluster's data) or a stale one is recognized; a
 * small request writes the same bytes of the sectors it covers.  The journal counts sectors:
 * "W GEN FIRST-SECTOR SECTORS KIND".
 * Generation 0 is the template's bytes at that offset, generation 1 is zeroes (zero/trim).
 * Exit: 0 ok, 1 a verification failed (what and where on stderr), 2 usage or setup error.
 * `write` exits 0 once the connection fails: that is how it is meant to end.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libnbd.h>

#define BLK 4096u
#define SECT 512u
#define SPB (BLK / SECT) /* sectors per block */
#define SMALL_ZONE 64    /* blocks: where the small requests go */
#define QD 8
#define MAXRUN 16

#define GEN_TEMPLATE 0
#define GEN_ZERO 1

static void
die(const char *what)
{
  fprintf(stderr, "crash-writer: %s: %s\n", what,
          nbd_get_error() ? nbd_get_error() : strerror(errno));
  exit(2);
}

static uint64_t
splitmix(uint64_t *s)
{
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* The contents of `block` written by generation `gen` >= 2. */
static void
fill(uint8_t *buf, uint64_t block, uint64_t gen)
{
  uint64_t w[BLK / 8], s = block * 0x100000001b3ull ^ gen;

  w[0] = block;
  w[1] = gen;
  for (size_t i = 2; i < BLK / 8; i++)
    w[i] = splitmix(&s);
  memcpy(buf, w, BLK);
}

static struct nbd_handle *
connect_export(const char *sock, const char *name)
{
  struct nbd_handle *h = nbd_create();

  if (h == NULL || nbd_set_export_name(h, name) < 0 || nbd_connect_unix(h, sock) < 0)
    die("connect");
  return h;
}

/* ---- write ---- */

/* Two connections, as a multi-conn client (nbdcopy, qemu with several queues) uses them: requests
 * go to either, and a flush is sent on one of them, which must cover the writes completed on
 * both (the plugin advertises multi-conn: connections share one chain). */
#define NCONN 2

struct req {
  int64_t cookie;            /* 0: slot free */
  uint64_t sect, nsect, gen; /* sectors */
  int conn;
  bool fua;
};

static struct nbd_handle *hs[NCONN];

static int jfd = -1;

static void journal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void
journal(const char *fmt, ...)
{
  char line[128];
  va_list ap;
  int len;

  va_start(ap, fmt);
  len = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  /* One write(2) per record: the writer is never killed, but nothing is left in a stdio
   * buffer if it is. */
  if (write(jfd, line, (size_t)len) != len)
    die("journal write");
}

static bool
overlaps(const struct req *q, uint64_t sect, uint64_t n)
{
  for (int i = 0; i < QD; i++)
    if (q[i].cookie && sect < q[i].sect + q[i].nsect && q[i].sect < sect + n)
      return true;
  return false;
}

/* Reap completed requests (after waiting for progress on either connection if `wait`); returns
 * false once a connection is gone. */
static bool
reap(struct req *q, bool wait)
{
  if (wait) {
    struct pollfd p[NCONN];
    for (int c = 0; c < NCONN; c++) {
      unsigned dir = nbd_aio_get_direction(hs[c]);
      p[c] = (struct pollfd){.fd = nbd_aio_get_fd(hs[c]), .events = 0};
      if (dir & LIBNBD_AIO_DIRECTION_READ)
        p[c].events |= POLLIN;
      if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        p[c].events |= POLLOUT;
    }
    if (poll(p, NCONN, 10000) < 0 && errno != EINTR)
      return false;
    for (int c = 0; c < NCONN; c++) {
      if (p[c].revents & (POLLIN | POLLHUP | POLLERR))
        if (nbd_aio_notify_read(hs[c]) < 0)
          return false;
      if (p[c].revents & POLLOUT)
        if (nbd_aio_notify_write(hs[c]) < 0)
          return false;
    }
  }
  for (int i = 0; i < QD; i++) {
    if (q[i].cookie == 0)
      continue;
    int r = nbd_aio_command_completed(hs[q[i].conn], q[i].cookie);
    if (r == 0)
      continue;
    if (r < 0)
      return false; /* failed: the server is gone (or broke, which verify will tell) */
    if (q[i].fua)
      journal("A %" PRIu64 "\n", q[i].gen);
    q[i].cookie = 0;
  }
  for (int c = 0; c < NCONN; c++)
    if (nbd_aio_is_dead(hs[c]) || nbd_aio_is_closed(hs[c]))
      return false;
  return true;
}

static int
in_flight(const struct req *q)
{
  int n = 0;
  for (int i = 0; i < QD; i++)
    n += q[i].cookie != 0;
  return n;
}

static int
cmd_write(const char *sock, const char *name, const char *jpath, uint64_t gen, uint64_t seed)
{
  struct req q[QD] = {0};
  uint64_t nblocks, s = seed, until_flush = 1;
  bool multi_conn;
  static uint8_t buf[QD][(MAXRUN + 1) * BLK];

  jfd = open(jpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (jfd < 0)
    die(jpath);
  /* The kill may come before the connection is made (the shortest delays): that is a crash
   * point with nothing written, not a failure. */
  for (int c = 0; c < NCONN; c++) {
    hs[c] = nbd_create();
    if (hs[c] == NULL || nbd_set_export_name(hs[c], name) < 0)
      die("nbd_create");
    if (nbd_connect_unix(hs[c], sock) < 0) {
      fprintf(stderr, "crash-writer: connect: %s (server already killed)\n", nbd_get_error());
      goto gone;
    }
  }
  /* Without multi-conn a flush covers only its own connection's writes: flush both then. */
  multi_conn = nbd_can_multi_conn(hs[0]) == 1;
  nblocks = (uint64_t)nbd_get_size(hs[0]) / BLK;
  if (nblocks < 2 * MAXRUN)
    die("export too small");
  for (;;) {
    if (--until_flush == 0) {
      /* Drain, then flush: the flush covers exactly the writes journaled before "F". */
      while (in_flight(q))
        if (!reap(q, true))
          goto gone;
      /* multi-conn: one flush, on a random connection, must cover both */
      int first = multi_conn ? (int)(splitmix(&s) % NCONN) : 0;
      for (int k = 0; k < (multi_conn ? 1 : NCONN); k++)
        if (nbd_flush(hs[(first + k) % NCONN], 0) < 0)
          goto gone;
      journal("F\n");
      if (fsync(jfd) < 0)
        die("journal fsync");
      until_flush = 1 + splitmix(&s) % 64;
      continue;
    }
    /* Half the requests in a hot 8 MiB (overwrites of allocated sub-clusters), half anywhere
     * (new allocations, copy-up from the template). */
    uint64_t r = splitmix(&s), n = 1 + r % MAXRUN;
    uint64_t span = (r >> 8) % 2 ? nblocks : 2048;
    if (span > nblocks)
      span = nblocks;
    uint64_t block = (r >> 16) % (span - n + 1);
    unsigned kind = (unsigned)((r >> 40) % 100);
    uint64_t sect = block * SPB, nsect = n * SPB;
    int slot = -1;

    if ((r >> 56) % 4 == 0) {
      /* small: 1-7 sectors anywhere in the first SMALL_ZONE blocks, beside other small ones */
      uint64_t r2 = splitmix(&s);
      nsect = 1 + r2 % (SPB - 1);
      sect = (r2 >> 8) % (SMALL_ZONE * SPB - nsect + 1);
      block = sect / SPB;
      n = (sect + nsect + SPB - 1) / SPB - block;
    }
    if (overlaps(q, sect, nsect))
      continue;
    while (in_flight(q) == QD)
      if (!reap(q, true))
        goto gone;
    for (int i = 0; i < QD; i++)
      if (q[i].cookie == 0) {
        slot = i;
        break;
      }
    q[slot] =
        (struct req){.sect = sect, .nsect = nsect, .gen = gen, .conn = (int)(r >> 50) % NCONN};
    struct nbd_handle *h = hs[q[slot].conn];
    int64_t c;
    if (kind < 8) { /* write-zeroes or trim: both read back as zeroes */
      journal("W %" PRIu64 " %" PRIu64 " %" PRIu64 " z\n", gen, sect, nsect);
      c = kind < 4 ? nbd_aio_zero(h, nsect * SECT, sect * SECT, NBD_NULL_COMPLETION, 0)
                   : nbd_aio_trim(h, nsect * SECT, sect * SECT, NBD_NULL_COMPLETION, 0);
    } else {
      q[slot].fua = kind < 18;
      /* the whole blocks the request touches; it sends the sectors it covers */
      for (uint64_t b = 0; b < n; b++)
        fill(buf[slot] + b * BLK, block + b, gen);
      journal("W %" PRIu64 " %" PRIu64 " %" PRIu64 " %c\n", gen, sect, nsect,
              q[slot].fua ? 'f' : 'd');
      c = nbd_aio_pwrite(h, buf[slot] + (sect - block * SPB) * SECT, nsect * SECT, sect * SECT,
                         NBD_NULL_COMPLETION, q[slot].fua ? LIBNBD_CMD_FLAG_FUA : 0);
    }
    if (c < 0)
      goto gone;
    q[slot].cookie = c;
    gen++;
    if (!reap(q, false))
      goto gone;
  }
gone:
  /* The expected end: the server was killed.  Whatever was in flight stays "sent". */
  fsync(jfd);
  close(jfd);
  for (int c = 0; c < NCONN; c++)
    nbd_close(hs[c]);
  return 0;
}

/* ---- verify ---- */

struct cand {
  uint64_t flushed;  /* what the block durably holds */
  uint64_t *pending; /* generations sent since, in order */
  size_t npending, cap;
};

static void
add_pending(struct cand *c, uint64_t gen)
{
  if (c->npending == c->cap) {
    c->cap = c->cap ? 2 * c->cap : 4;
    c->pending = realloc(c->pending, c->cap * sizeof *c->pending);
    if (c->pending == NULL)
      die("realloc");
  }
  c->pending[c->npending++] = gen;
}

/* A journaled request, for the "A" records that refer back to one. */
struct wrec {
  uint64_t gen, sect, nsect;
  bool zero;
};

/* The unit of "old or new" in verify for blocks only whole-block requests touched: 4096 (a
 * block, as written) by default; 512 (a sector) after power cuts that tear un-synced writes
 * (crashloop --torn), where each sector of an un-synced in-place write may hold its old or its
 * new contents (FORMAT.md 7.2).  Blocks that small requests touched are always checked per
 * sector: two small requests of different generations may share one block. */
static uint64_t unit = BLK;

/* Does `got` (len bytes at sector `sect`) hold generation g?  `tfd` is the template. */
static bool
holds(const uint8_t *got, uint64_t sect, uint64_t len, uint64_t g, int tfd)
{
  static uint8_t expect[BLK];

  if (g == GEN_TEMPLATE) {
    ssize_t r = pread(tfd, expect, len, (off_t)(sect * SECT));
    if (r < 0)
      die("template read");
    memset(expect + r, 0, len - (size_t)r);
    return memcmp(got, expect, len) == 0;
  }
  if (g == GEN_ZERO)
    return got[0] == 0 && memcmp(got, got + 1, len - 1) == 0;
  fill(expect, sect / SPB, g);
  return memcmp(got, expect + (sect % SPB) * SECT, len) == 0;
}

static int
cmd_verify(const char *sock, const char *name, const char *jpath, const char *bpath,
           const char *tpath)
{
  struct nbd_handle *h = connect_export(sock, name);
  /* candidates per sector; a block is checked as one unit (or `unit` pieces) unless `partial` */
  uint64_t nsect = (uint64_t)nbd_get_size(h) / SECT, nblocks = nsect / SPB;
  struct cand *cand = calloc(nsect, sizeof *cand);
  uint64_t *base = calloc(nsect, sizeof *base), *seen = calloc(nsect, sizeof *seen);
  bool *partial = calloc(nblocks, sizeof *partial);
  struct wrec *w = NULL;
  size_t nw = 0, capw = 0;
  uint64_t pending_units = 0, got_new = 0, got_old = 0, small_blocks = 0;
  static uint8_t chunk[256 * BLK];
  FILE *jf;
  int tfd, bfd, bad = 0;
  char line[256];

  if (cand == NULL || base == NULL || seen == NULL || partial == NULL)
    die("calloc");
  bfd = open(bpath, O_RDONLY | O_CLOEXEC);
  if (bfd >= 0) {
    if (read(bfd, base, nsect * sizeof *base) != (ssize_t)(nsect * sizeof *base))
      die("baseline read");
    close(bfd);
  }
  for (uint64_t x = 0; x < nsect; x++) {
    cand[x].flushed = base[x];
    /* a block whose sectors held different generations (small writes of an earlier round) */
    if (base[x] != base[x / SPB * SPB])
      partial[x / SPB] = true;
  }

  /* Replay the journal: "W" adds a candidate, "A" (FUA done) and "F" (flush done) make the last
   * write of each sector its only possible contents. */
  jf = fopen(jpath, "r");
  while (jf && fgets(line, sizeof line, jf)) {
    uint64_t gen, sect, n;
    char kind;

    if (sscanf(line, "W %" SCNu64 " %" SCNu64 " %" SCNu64 " %c", &gen, &sect, &n, &kind) == 4) {
      if (sect + n > nsect || n == 0)
        die("journal: sector out of range");
      if (nw == capw) {
        capw = capw ? 2 * capw : 1024;
        w = realloc(w, capw * sizeof *w);
        if (w == NULL)
          die("realloc");
      }
      w[nw++] = (struct wrec){gen, sect, n, kind == 'z'};
      for (uint64_t x = sect; x < sect + n; x++)
        add_pending(&cand[x], kind == 'z' ? GEN_ZERO : gen);
      if (sect % SPB)
        partial[sect / SPB] = true;
      if ((sect + n) % SPB)
        partial[(sect + n) / SPB] = true;
    } else if (sscanf(line, "A %" SCNu64, &gen) == 1) {
      /* The FUA write is durable.  Writes to its sectors sent after it are still candidates
       * (none can have been sent before it completed: in-flight requests are disjoint). */
      for (size_t i = nw; i-- > 0;) {
        if (w[i].gen != gen)
          continue;
        for (uint64_t x = w[i].sect; x < w[i].sect + w[i].nsect; x++) {
          struct cand *c = &cand[x];
          size_t k = 0;
          while (k < c->npending && c->pending[k] != gen)
            k++;
          if (k == c->npending)
            die("journal: A for a write not pending");
          c->flushed = gen;
          memmove(c->pending, c->pending + k + 1, (c->npending - k - 1) * sizeof *c->pending);
          c->npending -= k + 1;
        }
        break;
      }
    } else if (line[0] == 'F') {
      for (uint64_t x = 0; x < nsect; x++)
        if (cand[x].npending) {
          cand[x].flushed = cand[x].pending[cand[x].npending - 1];
          cand[x].npending = 0;
        }
    } else {
      fprintf(stderr, "crash-writer: journal: bad line: %s", line);
      exit(2);
    }
  }
  if (jf)
    fclose(jf);

  tfd = open(tpath, O_RDONLY | O_CLOEXEC);
  if (tfd < 0)
    die(tpath);
  for (uint64_t b0 = 0; b0 < nblocks && bad < 20; b0 += 256) {
    uint64_t nb = nblocks - b0 < 256 ? nblocks - b0 : 256;
    if (nbd_pread(h, chunk, nb * BLK, b0 * BLK, 0) < 0)
      die("pread");
    for (uint64_t b = b0; b < b0 + nb && bad < 20; b++) {
      /* whole-block requests only: every sector has the same candidates, checked per `unit` */
      uint64_t u = partial[b] ? SECT : unit, per = u / SECT;
      small_blocks += partial[b];
      for (uint64_t x = b * SPB; x < (b + 1) * SPB; x += per) {
        const uint8_t *got = chunk + (x - b0 * SPB) * SECT;
        struct cand *c = &cand[x];
        bool ok = false;

        for (size_t k = 0; k <= c->npending && !ok; k++) {
          uint64_t g = k == 0 ? c->flushed : c->pending[k - 1];
          ok = holds(got, x, u, g, tfd);
          if (ok) {
            for (uint64_t y = x; y < x + per; y++)
              seen[y] = g;
            if (c->npending) {
              pending_units++;
              if (k == 0)
                got_old++;
              else
                got_new++;
            }
          }
        }
        if (!ok) {
          uint64_t hdr[2];
          memcpy(hdr, got - (x % SPB) * SECT, sizeof hdr);
          fprintf(stderr,
                  "crash-writer: block %" PRIu64 " (offset %" PRIu64 ", %" PRIu64
                  " bytes at sector %" PRIu64 "): holds (block %" PRIu64 ", gen %" PRIu64
                  ") or other bytes; expected flushed gen %" PRIu64 " or one of %zu pending:",
                  b, x * SECT, u, x, hdr[0], hdr[1], c->flushed, c->npending);
          for (size_t k = 0; k < c->npending; k++)
            fprintf(stderr, " %" PRIu64, c->pending[k]);
          fprintf(stderr, " (0 = template, 1 = zeroes)\n");
          bad++;
          break;
        }
      }
    }
  }
  close(tfd);
  if (bad) {
    fprintf(stderr, "crash-writer: verify FAILED: %d bad blocks (first 20 shown)\n", bad);
    return 1;
  }
  /* What was read is now the baseline: flush it so it is durable, then save it. */
  if (nbd_flush(h, 0) < 0)
    die("flush");
  {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", bpath);
    bfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (bfd < 0 || write(bfd, seen, nsect * sizeof *seen) != (ssize_t)(nsect * sizeof *seen) ||
        fsync(bfd) < 0 || close(bfd) < 0 || rename(tmp, bpath) < 0)
      die("baseline write");
  }
  nbd_shutdown(h, 0);
  nbd_close(h);
  printf("verified %" PRIu64 " blocks, %" PRIu64 " units with unflushed writes (%" PRIu64
         " new, %" PRIu64 " old), %zu requests journaled, unit %" PRIu64 " bytes, %" PRIu64
         " blocks with small writes checked per sector\n",
         nblocks, pending_units, got_new, got_old, nw, unit, small_blocks);
  for (uint64_t x = 0; x < nsect; x++)
    free(cand[x].pending);
  free(cand);
  free(base);
  free(seen);
  free(partial);
  free(w);
  return 0;
}

int
main(int argc, char **argv)
{
  if (argc == 7 && strcmp(argv[1], "write") == 0)
    return cmd_write(argv[2], argv[3], argv[4], strtoull(argv[5], NULL, 10),
                     strtoull(argv[6], NULL, 10));
  if ((argc == 7 || argc == 8) && strcmp(argv[1], "verify") == 0) {
    if (argc == 8)
      unit = strtoull(argv[7], NULL, 10);
    if (unit != 512 && unit != BLK) {
      fprintf(stderr, "crash-writer: UNIT must be 512 or 4096\n");
      return 2;
    }
    return cmd_verify(argv[2], argv[3], argv[4], argv[5], argv[6]);
  }
  fprintf(stderr, "usage: crash-writer write SOCK EXPORT JOURNAL FIRST-GEN SEED\n"
                  "       crash-writer verify SOCK EXPORT JOURNAL BASELINE TEMPLATE-RAW [UNIT]\n");
  return 2;
}
