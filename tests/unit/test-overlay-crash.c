/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: crash ordering (FORMAT.md section 7), checked exhaustively over one workload.
 *
 * A recording struct ovl_io_ops (overlay/io.h) forwards every pwrite, fallocate, ftruncate and
 * fdatasync of a workload (writes, zeroes, bulk fills with ovl_copy_in, which copies with pread +
 * pwrite when the table has no copy_file_range, flushes, parent changes) to the real calls and logs
 * it.  Then, for every prefix of the log (every cut point), the file is rebuilt as a crash at that
 * point could leave it: every operation up to the last fdatasync before the cut is on disk; of the
 * operations after it, none, all, or a random write-back: each 512-byte sector they changed holds
 * its contents as of a random moment (the page cache writes back in any order, a write tears
 * between sectors, and a sector is the unit a disk writes atomically).  Each such file must
 *   - open (ovl_open) and so satisfy every invariant of FORMAT.md 5.3;
 *   - read, for every 512-byte sector, its contents as of the last flush that completed before
 *     the cut, or the contents some later write (issued before the cut) gave it: never other
 *     bytes, never older bytes;
 * and, for a sample, accept new writes after the crash without disturbing what was there.
 *
 * Sectors rather than sub-clusters are the unit of "old or new" because an in-place write into
 * an allocated sub-cluster larger than a sector can tear between sectors; FORMAT.md 7's
 * guarantee is per sub-cluster only for the map, which this checks by the opens succeeding and
 * unallocated sub-clusters reading the image below.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "overlay/io.h"
#include "overlay/overlay.h"
#include "tests/unit/util-overlay.h"

TestSuite(overlay_crash, .timeout = 240);

#define K 1024u
#define M (1024u * 1024u)
#define SECT 512u

/* ---- the recording I/O shim ---- */

enum io_kind { IO_PWRITE, IO_SYNC, IO_FALLOC, IO_TRUNC };

struct io_rec {
  enum io_kind kind;
  int mode;          /* fallocate */
  uint64_t off, len; /* pwrite/fallocate range; ftruncate: len */
  uint8_t *data;     /* pwrite bytes (a copy) */
};

static struct io_rec *io_log;
static size_t io_n, io_cap;

static struct io_rec *
io_push(enum io_kind kind)
{
  if (io_n == io_cap) {
    io_cap = io_cap ? 2 * io_cap : 1024;
    io_log = realloc(io_log, io_cap * sizeof *io_log);
    cr_assert_not_null(io_log);
  }
  struct io_rec *r = &io_log[io_n++];
  memset(r, 0, sizeof *r);
  r->kind = kind;
  return r;
}

/* Each wrapper logs only what the real call did: a short pwrite logs its short length. */
static ssize_t
rec_pwrite(int fd, const void *buf, size_t count, off_t offset)
{
  ssize_t n = ovl_io_default.pwrite(fd, buf, count, offset);
  if (n > 0) {
    struct io_rec *r = io_push(IO_PWRITE);
    r->off = (uint64_t)offset;
    r->len = (uint64_t)n;
    r->data = malloc((size_t)n);
    cr_assert_not_null(r->data);
    memcpy(r->data, buf, (size_t)n);
  }
  return n;
}

/* Logged, not performed: crashes here are simulated from the log, so real durability buys
 * nothing but time on a shared disk. */
static int
rec_fdatasync(int fd)
{
  (void)fd;
  io_push(IO_SYNC);
  return 0;
}

static int
rec_fallocate(int fd, int mode, off_t offset, off_t len)
{
  int e = ovl_io_default.fallocate(fd, mode, offset, len);
  if (e == 0) {
    struct io_rec *r = io_push(IO_FALLOC);
    r->mode = mode;
    r->off = (uint64_t)offset;
    r->len = (uint64_t)len;
  }
  return e;
}

static int
rec_ftruncate(int fd, off_t length)
{
  int e = ovl_io_default.ftruncate(fd, length);
  if (e == 0)
    io_push(IO_TRUNC)->len = (uint64_t)length;
  return e;
}

static const struct ovl_io_ops rec_ops = {
    .pwrite = rec_pwrite,
    .fdatasync = rec_fdatasync,
    .fallocate = rec_fallocate,
    .ftruncate = rec_ftruncate,
};

/* ---- file images ---- */

struct image {
  uint8_t *b;
  uint64_t size, cap;
};

static void
img_resize(struct image *im, uint64_t size)
{
  if (size > im->cap) {
    uint64_t cap = im->cap ? im->cap : 1u << 20;
    while (cap < size)
      cap *= 2;
    im->b = realloc(im->b, cap);
    cr_assert_not_null(im->b);
    im->cap = cap;
  }
  if (size > im->size)
    memset(im->b + im->size, 0, size - im->size);
  im->size = size;
}

static void
img_copy(struct image *dst, const struct image *src)
{
  img_resize(dst, 0);
  img_resize(dst, src->size);
  memcpy(dst->b, src->b, src->size);
}

/* Apply bytes [from, to) of a pwrite's data. */
static void
img_pwrite_part(struct image *im, const struct io_rec *r, uint64_t from, uint64_t to)
{
  if (r->off + to > im->size)
    img_resize(im, r->off + to);
  memcpy(im->b + r->off + from, r->data + from, to - from);
}

static void
img_apply(struct image *im, const struct io_rec *r)
{
  switch (r->kind) {
  case IO_PWRITE:
    img_pwrite_part(im, r, 0, r->len);
    break;
  case IO_TRUNC:
    if (r->len < im->size)
      im->size = r->len;
    else
      img_resize(im, r->len);
    break;
  case IO_FALLOC:
    if (r->mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
      uint64_t end = r->off + r->len;
      if (!(r->mode & FALLOC_FL_KEEP_SIZE) && end > im->size)
        img_resize(im, end);
      if (end > im->size)
        end = im->size;
      if (r->off < end)
        memset(im->b + r->off, 0, end - r->off);
    } else if (!(r->mode & FALLOC_FL_KEEP_SIZE) && r->off + r->len > im->size) {
      img_resize(im, r->off + r->len);
    }
    break;
  case IO_SYNC:
    break;
  }
}

/* The file range [lo, hi) an operation changes, for the write-back model below. */
static int
io_range(const struct io_rec *r, uint64_t *lo, uint64_t *hi)
{
  if (r->kind == IO_PWRITE ||
      (r->kind == IO_FALLOC && r->mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))) {
    *lo = r->off;
    *hi = r->off + r->len;
    return 1;
  }
  return 0;
}

/* A crash image: `dur` (what the last fdatasync made durable) plus some write-back of the page
 * cache.  The page cache `w` replays ops [from, to) in order; after each op, every 512-byte
 * sector it changed is written back to the disk image `d` with probability 1/2.  So each sector
 * ends up holding its contents as of some moment (a sector is written whole, as disks do,
 * and sectors reach the disk in any order), and the file size is the size as of some moment.
 */
static void
img_crash(struct image *d, struct image *w, const struct image *dur, size_t from, size_t to,
          uint64_t *rng)
{
  uint64_t nsize = to - from + 1, pick = otu_rand(rng) % nsize, size = dur->size;

  img_copy(d, dur);
  img_copy(w, dur);
  for (size_t i = from; i < to; i++) {
    uint64_t lo, hi;
    img_apply(w, &io_log[i]);
    if (i - from + 1 == pick)
      size = w->size;
    if (!io_range(&io_log[i], &lo, &hi))
      continue;
    for (uint64_t sct = lo / SECT * SECT; sct < hi && sct < w->size; sct += SECT) {
      if (!(otu_rand(rng) & 1))
        continue;
      uint64_t end = sct + SECT < w->size ? sct + SECT : w->size;
      if (end > d->size)
        img_resize(d, end);
      memcpy(d->b + sct, w->b + sct, end - sct);
    }
  }
  if (d->size > size)
    d->size = size;
  else
    img_resize(d, size);
}

static void
img_save(const struct image *im, const char *path)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
  uint64_t done = 0;
  while (done < im->size) {
    ssize_t n = write(fd, im->b + done, im->size - done);
    cr_assert_gt(n, 0);
    done += (uint64_t)n;
  }
  close(fd);
}

/* ---- the workload and its model ---- */

/* One version of one sector: its bytes after workload op `op`. */
struct ver {
  int op;
  uint32_t at; /* offset in the arena */
};

struct sect {
  struct ver *v;
  int n, cap;
};

struct wop {
  size_t ls, le; /* io_log range of the op */
  int flush;     /* completes a flush: ovl_flush, FUA, close */
  int setpar;    /* ovl_set_parent to "p<op index>.raw" (durable when it returns) */
  char what[80];
};

struct crash {
  const char *name;
  uint64_t seed, rng;
  uint64_t vsize;
  uint32_t cs;
  uint64_t reg[2][2]; /* the two hot regions [start, end), in two different L2 tables */
  char *dir, *path, *cpath;
  uint8_t *init; /* the image below: whole virtual disk */
  uint8_t *src;  /* the source file of bulk fills (ovl_copy_in), whole virtual disk */
  int srcfd;
  uint8_t *cur; /* the model: the virtual disk as of now */
  struct sect *sect;
  uint8_t *arena;
  size_t arena_n, arena_cap;
  struct wop *ops;
  int nops, ops_cap;
  uint8_t *rd, *rd2;
  uint8_t *dstates; /* otu_decode_map output */
  unsigned long states, opened_rdwr;
};

static int
below_init(void *opaque, void *buf, uint64_t length, uint64_t offset)
{
  struct crash *c = opaque;
  if (offset > c->vsize || length > c->vsize - offset)
    return -EIO;
  memcpy(buf, c->init + offset, length);
  return 0;
}

static struct wop *wop_begin(struct crash *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static struct wop *
wop_begin(struct crash *c, const char *fmt, ...)
{
  if (c->nops == c->ops_cap) {
    c->ops_cap = c->ops_cap ? 2 * c->ops_cap : 256;
    c->ops = realloc(c->ops, (size_t)c->ops_cap * sizeof *c->ops);
    cr_assert_not_null(c->ops);
  }
  struct wop *w = &c->ops[c->nops];
  memset(w, 0, sizeof *w);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(w->what, sizeof w->what, fmt, ap);
  va_end(ap);
  w->ls = io_n;
  return w;
}

/* Record the new contents of every sector of [off, off + len) as versions of op c->nops. */
static void
wop_end(struct crash *c, struct wop *w, uint64_t off, uint64_t len)
{
  w->le = io_n;
  for (uint64_t s = off / SECT; len && s <= (off + len - 1) / SECT; s++) {
    struct sect *x = &c->sect[s];
    if (x->n == x->cap) {
      x->cap = x->cap ? 2 * x->cap : 4;
      x->v = realloc(x->v, (size_t)x->cap * sizeof *x->v);
      cr_assert_not_null(x->v);
    }
    if (c->arena_n + SECT > c->arena_cap) {
      c->arena_cap = c->arena_cap ? 2 * c->arena_cap : 4u << 20;
      c->arena = realloc(c->arena, c->arena_cap);
      cr_assert_not_null(c->arena);
    }
    memcpy(c->arena + c->arena_n, c->cur + s * SECT, SECT);
    x->v[x->n].op = c->nops;
    x->v[x->n].at = (uint32_t)c->arena_n;
    x->n++;
    c->arena_n += SECT;
  }
  c->nops++;
}

/* A random range in one of the hot regions. */
static void
pick(struct crash *c, uint64_t *off, uint64_t *len)
{
  const uint64_t *g = c->reg[otu_rand_below(&c->rng, 2)];
  uint64_t span = g[1] - g[0], o, n;
  switch (otu_rand_below(&c->rng, 3)) {
  case 0:
    n = 1 + otu_rand_below(&c->rng, 2000);
    break;
  case 1:
    n = SECT * (1 + otu_rand_below(&c->rng, 16));
    break;
  default:
    n = 1 + otu_rand_below(&c->rng, 2ull * c->cs);
    break;
  }
  o = g[0] + otu_rand_below(&c->rng, span);
  if (otu_rand_below(&c->rng, 2))
    o -= o % SECT;
  if (n > g[1] - o)
    n = g[1] - o;
  *off = o;
  *len = n;
}

static void
workload_phase(struct crash *c, struct ovl_layer *l, int n)
{
  uint8_t *buf = malloc(2ull * c->cs + 4096);
  uint64_t last_off = c->reg[0][0], last_len = 512;

  for (int i = 0; i < n; i++) {
    uint64_t off, len;
    unsigned dice = (unsigned)otu_rand_below(&c->rng, 100);
    pick(c, &off, &len);
    if (dice < 12) {
      /* rewrite part of the last write: in place if it is allocated */
      off = last_off + otu_rand_below(&c->rng, last_len);
      len = 1 + otu_rand_below(&c->rng, last_off + last_len - off);
    }
    if (dice < 60) {
      unsigned fl = otu_rand_below(&c->rng, 8) == 0 ? OVL_FUA : 0;
      struct wop *w =
          wop_begin(c, "pwrite [%" PRIu64 ", +%" PRIu64 ")%s", off, len, fl ? " FUA" : "");
      otu_pattern(c->seed + (uint64_t)c->nops, buf, len, off);
      int e = ovl_pwrite(l, buf, len, off, fl, below_init, c);
      cr_assert_eq(e, 0, "%s: %d %s", w->what, e, cc_error_get());
      memcpy(c->cur + off, buf, len);
      w->flush = fl != 0;
      wop_end(c, w, off, len);
      last_off = off;
      last_len = len;
    } else if (dice < 80) {
      unsigned fl = (otu_rand_below(&c->rng, 2) ? OVL_MAY_TRIM : 0) |
                    (otu_rand_below(&c->rng, 8) == 0 ? OVL_FUA : 0);
      struct wop *w = wop_begin(c, "zero [%" PRIu64 ", +%" PRIu64 ") flags %u", off, len, fl);
      int e = ovl_zero(l, len, off, fl, below_init, c);
      cr_assert_eq(e, 0, "%s: %d %s", w->what, e, cc_error_get());
      memset(c->cur + off, 0, len);
      w->flush = (fl & OVL_FUA) != 0;
      wop_end(c, w, off, len);
    } else if (dice < 86) {
      /* bulk fill (FORMAT.md 7.6) of whole sub-clusters from another file */
      uint64_t sc = c->cs / 32, end;
      off = off / sc * sc;
      end = (off + len + sc - 1) / sc * sc;
      if (end > c->vsize)
        end = c->vsize;
      len = end - off;
      struct wop *w = wop_begin(c, "copy_in [%" PRIu64 ", +%" PRIu64 ")", off, len);
      int e = ovl_copy_in(l, off, len, c->srcfd, off, "src");
      cr_assert_eq(e, 0, "%s: %d %s", w->what, e, cc_error_get());
      memcpy(c->cur + off, c->src + off, len);
      wop_end(c, w, off, len);
    } else if (dice < 89) {
      char pp[32];
      snprintf(pp, sizeof pp, "p%d.raw", c->nops);
      struct wop *w = wop_begin(c, "set_parent %s", pp);
      struct ovl_parent par = {.kind = OVL_PARENT_RAW, .path = pp, .size = 4096};
      int e = ovl_set_parent(l, &par);
      cr_assert_eq(e, 0, "%s: %d %s", w->what, e, cc_error_get());
      w->setpar = 1;
      wop_end(c, w, 0, 0);
    } else {
      struct wop *w = wop_begin(c, "flush");
      int e = ovl_flush(l);
      cr_assert_eq(e, 0, "flush: %d %s", e, cc_error_get());
      w->flush = 1;
      wop_end(c, w, 0, 0);
    }
  }
  free(buf);
}

/* Check one crash image (already saved at c->cpath) for cut `k`. */
static void
check_state(struct crash *c, size_t k, const char *variant, int recover)
{
  /* the last flush that completed before the cut: its state is the least we may see */
  int fi = -1;
  for (int j = 0; j < c->nops; j++)
    if (c->ops[j].flush && c->ops[j].le <= k)
      fi = j;

  struct ovl_layer *l = NULL;
  int e = ovl_open(c->cpath, OVL_RDONLY, &l);
  cr_assert_eq(e, 0, "%s: crash at I/O %zu of %zu (%s): ovl_open: %d %s (seed %" PRIu64 ")",
               c->name, k, io_n, variant, e, cc_error_get(), c->seed);

  /* the map, decoded independently of overlay/, satisfies FORMAT.md 5.3 too */
  char err[256];
  e = otu_decode_map(c->cpath, c->dstates, NULL, c->vsize / (c->cs / 32), err, sizeof err);
  cr_assert_eq(e, 0, "%s: crash at I/O %zu (%s): %s (seed %" PRIu64 ")", c->name, k, variant, err,
               c->seed);

  /* the parent link: the last one set before the cut, or one being set at it */
  struct ovl_info in;
  ovl_get_info(l, &in);
  int pi = -1, pok = 0;
  for (int j = 0; j < c->nops; j++)
    if (c->ops[j].setpar && c->ops[j].le <= k)
      pi = j;
  for (int j = pi; j < c->nops && !pok; j++) {
    char pp[32] = "";
    if (j >= 0 && !c->ops[j].setpar)
      continue;
    if (j > pi && c->ops[j].ls >= k)
      break;
    if (j >= 0)
      snprintf(pp, sizeof pp, "p%d.raw", j);
    pok = strcmp(in.parent_path, pp) == 0;
  }
  cr_assert(pok,
            "%s: crash at I/O %zu (%s): parent \"%s\", last set_parent before the cut: op %d "
            "(seed %" PRIu64 ")",
            c->name, k, variant, in.parent_path, pi, c->seed);

  for (int g = 0; g < 2; g++) {
    uint64_t g0 = c->reg[g][0], glen = c->reg[g][1] - g0;
    e = ovl_pread(l, c->rd, glen, g0, below_init, c);
    cr_assert_eq(e, 0, "%s: crash at I/O %zu (%s): ovl_pread: %d %s", c->name, k, variant, e,
                 cc_error_get());
    for (uint64_t s = g0 / SECT; s < (g0 + glen) / SECT; s++) {
      const uint8_t *got = c->rd + (s * SECT - g0);
      const struct sect *x = &c->sect[s];
      /* v0: the sector as of flush fi (the initial image if nothing before it) */
      int i0 = -1;
      while (i0 + 1 < x->n && x->v[i0 + 1].op <= fi)
        i0++;
      const uint8_t *v0 = i0 < 0 ? c->init + s * SECT : c->arena + x->v[i0].at;
      int ok = memcmp(got, v0, SECT) == 0;
      for (int i = i0 + 1; !ok && i < x->n && c->ops[x->v[i].op].ls < k; i++)
        ok = memcmp(got, c->arena + x->v[i].at, SECT) == 0;
      if (!ok) {
        fprintf(stderr,
                "%s: seed %" PRIu64 ": crash at I/O %zu of %zu (%s): sector at %" PRIu64
                " holds bytes of no allowed version; last durable flush: op %d\n",
                c->name, c->seed, k, io_n, variant, s * SECT, fi);
        for (int i = 0; i < x->n; i++)
          fprintf(stderr, "  version of op %d (%s), I/O [%zu, %zu)%s\n", x->v[i].op,
                  c->ops[x->v[i].op].what, c->ops[x->v[i].op].ls, c->ops[x->v[i].op].le,
                  memcmp(got, c->arena + x->v[i].at, SECT) == 0 ? " <- matches" : "");
        fprintf(stderr, "  initial: %s\n",
                memcmp(got, c->init + s * SECT, SECT) == 0 ? "matches" : "differs");
        cr_assert_fail("%s: crash at I/O %zu (%s): sector at %" PRIu64 " is wrong (seed %" PRIu64
                       ")",
                       c->name, k, variant, s * SECT, c->seed);
      }
    }
    if (recover)
      memcpy(c->rd2 + (g ? c->reg[0][1] - c->reg[0][0] : 0), c->rd, glen);
  }
  ovl_close(l);
  c->states++;
  if (!recover)
    return;

  /* Recovery: the crashed file takes new writes (allocating past its frontier, over whatever
   * a crash left there) and keeps everything else as it read just now. */
  e = ovl_open(c->cpath, OVL_RDWR, &l);
  cr_assert_eq(e, 0, "%s: crash at I/O %zu (%s): RDWR open: %d %s", c->name, k, variant, e,
               cc_error_get());
  uint64_t g = otu_rand_below(&c->rng, 2);
  uint64_t off =
      c->reg[g][0] + otu_rand_below(&c->rng, (c->reg[g][1] - c->reg[g][0]) / 4096) * 4096;
  uint8_t nb[4096];
  otu_pattern(~c->seed, nb, sizeof nb, off);
  e = ovl_pwrite(l, nb, sizeof nb, off, 0, below_init, c);
  cr_assert_eq(e, 0, "%s: recovery write: %d %s", c->name, e, cc_error_get());
  e = ovl_close(l);
  cr_assert_eq(e, 0, "%s: recovery close: %d %s", c->name, e, cc_error_get());
  l = NULL;
  e = ovl_open(c->cpath, OVL_RDONLY, &l);
  cr_assert_eq(e, 0, "%s: crash at I/O %zu (%s): reopen after recovery: %d %s", c->name, k, variant,
               e, cc_error_get());
  uint64_t base = 0;
  for (int r = 0; r < 2; r++) {
    uint64_t g0 = c->reg[r][0], glen = c->reg[r][1] - g0;
    cr_assert_eq(ovl_pread(l, c->rd, glen, g0, below_init, c), 0);
    if ((uint64_t)r == g)
      memcpy(c->rd2 + base + (off - g0), nb, sizeof nb);
    long d = otu_first_diff(c->rd, c->rd2 + base, glen);
    cr_assert_eq(d, -1,
                 "%s: crash at I/O %zu (%s): after a recovery write at %" PRIu64 ", byte %" PRIu64
                 " changed (seed %" PRIu64 ")",
                 c->name, k, variant, off, g0 + (uint64_t)(d < 0 ? 0 : d), c->seed);
    base += glen;
  }
  ovl_close(l);
  c->opened_rdwr++;
}

static void
run_crash(const char *name, uint32_t cs, uint64_t vsize, uint64_t reg2, int nops_phase)
{
  struct crash c;
  memset(&c, 0, sizeof c);
  c.name = name;
  c.seed = otu_seed(name);
  c.rng = c.seed;
  c.cs = cs;
  c.vsize = vsize;
  c.reg[0][0] = 0;
  c.reg[0][1] = M;
  c.reg[1][0] = reg2; /* in the second L2 table */
  c.reg[1][1] = reg2 + M;
  c.dir = otu_tmpdir();
  c.path = otu_join(c.dir, "l.cow");
  c.cpath = otu_join(c.dir, "crash.cow");
  c.init = malloc(vsize);
  c.cur = malloc(vsize);
  c.sect = calloc(vsize / SECT, sizeof *c.sect);
  c.rd = malloc(M);
  c.rd2 = malloc(2 * M);
  c.dstates = malloc(vsize / (cs / 32));
  cr_assert(c.init && c.cur && c.sect && c.rd && c.rd2);
  otu_pattern(c.seed ^ 0xBE10, c.init, vsize, 0);
  memcpy(c.cur, c.init, vsize);
  c.src = malloc(vsize);
  cr_assert(c.src);
  otu_pattern(c.seed ^ 0x5EC, c.src, vsize, 0);
  {
    char *sp = otu_join(c.dir, "src.bin");
    c.srcfd = open(sp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert(c.srcfd >= 0);
    cr_assert_eq(pwrite(c.srcfd, c.src, vsize, 0), (ssize_t)vsize);
    free(sp);
  }

  otu_create(c.path, vsize, cs);
  struct image base = {0};
  size_t blen;
  uint8_t *b = otu_slurp(c.path, &blen);
  img_resize(&base, blen);
  memcpy(base.b, b, blen);
  free(b);

  /* The workload, recorded: two sessions, each ended by a clean close. */
  io_n = 0;
  ovl_io = &rec_ops;
  for (int phase = 0; phase < 2; phase++) {
    struct ovl_layer *l = NULL;
    int e = ovl_open(c.path, OVL_RDWR, &l);
    cr_assert_eq(e, 0, "%s", cc_error_get());
    workload_phase(&c, l, nops_phase);
    struct wop *w = wop_begin(&c, "close");
    e = ovl_close(l);
    cr_assert_eq(e, 0, "close: %d %s", e, cc_error_get());
    w->flush = 1;
    wop_end(&c, w, 0, 0);
  }
  ovl_io = &ovl_io_default;

  /* The shim must have seen every change: replaying the whole log gives the real file. */
  struct image full = {0};
  img_copy(&full, &base);
  for (size_t i = 0; i < io_n; i++)
    img_apply(&full, &io_log[i]);
  uint8_t *real = otu_slurp(c.path, &blen);
  cr_assert_eq(full.size, (uint64_t)blen,
               "replayed size %" PRIu64 " != file size %zu: a change "
               "bypassed ovl_io",
               full.size, blen);
  long d = otu_first_diff(full.b, real, blen);
  cr_assert_eq(d, -1, "replayed log differs from the file at byte %ld: a change bypassed ovl_io",
               d);
  free(real);
  size_t nsync = 0;
  for (size_t i = 0; i < io_n; i++)
    nsync += io_log[i].kind == IO_SYNC;
  cr_assert_gt(nsync, 0u, "the workload never synced");

  /* Every cut point, with three views of the un-synced tail. */
  struct image dur = {0}, st = {0}, pc = {0};
  size_t dur_upto = 0; /* ops applied to dur */
  img_copy(&dur, &base);
  for (size_t k = 0; k <= io_n; k++) {
    /* ops before the last sync before the cut are durable */
    size_t s = 0; /* number of durable ops */
    for (size_t i = k; i > 0; i--)
      if (io_log[i - 1].kind == IO_SYNC) {
        s = i;
        break;
      }
    while (dur_upto < s)
      img_apply(&dur, &io_log[dur_upto++]);

    img_save(&dur, c.cpath);
    check_state(&c, k, "synced only", k % 7 == 0);
    if (s == k)
      continue;
    img_copy(&st, &dur);
    for (size_t i = s; i < k; i++)
      img_apply(&st, &io_log[i]);
    img_save(&st, c.cpath);
    check_state(&c, k, "all issued", 0);
    for (int v = 0; v < 2; v++) {
      img_crash(&st, &pc, &dur, s, k, &c.rng);
      img_save(&st, c.cpath);
      check_state(&c, k, v ? "random write-back (2)" : "random write-back", k % 11 == 0);
    }
  }
  fprintf(stderr,
          "%s: seed %" PRIu64 ": %d workload ops, %zu I/O ops (%zu syncs), %lu crash states "
          "checked, %lu recovered for writing\n",
          name, c.seed, c.nops, io_n, nsync, c.states, c.opened_rdwr);
  cr_log_info("%s: %lu crash states checked", name, c.states);
  cr_assert_geq(c.states, 300u, "too few crash states to mean much");

  for (size_t i = 0; i < io_n; i++)
    free(io_log[i].data);
  free(io_log);
  io_log = NULL;
  io_n = io_cap = 0;
  for (uint64_t s = 0; s < vsize / SECT; s++)
    free(c.sect[s].v);
  free(c.sect);
  free(c.arena);
  free(c.ops);
  free(base.b);
  free(full.b);
  free(dur.b);
  free(st.b);
  free(pc.b);
  free(c.init);
  free(c.src);
  close(c.srcfd);
  free(c.cur);
  free(c.rd);
  free(c.rd2);
  free(c.dstates);
  free(c.path);
  free(c.cpath);
  otu_rmtree(c.dir);
}

/* 16 KiB clusters: 512-byte sub-clusters, L2 tables every 4 MiB. */
Test(overlay_crash, every_prefix_16k_clusters)
{
  run_crash("overlay_crash::every_prefix_16k_clusters", 16 * K, 8 * M, 4 * M, 100);
}

/* 128 KiB clusters: 4 KiB sub-clusters (copy-up of partial ones), L2 tables every 32 MiB. */
Test(overlay_crash, every_prefix_128k_clusters)
{
  run_crash("overlay_crash::every_prefix_128k_clusters", 128 * K, 40 * M, 32 * M, 100);
}

/* FORMAT.md 7.4: the creator makes the file durable: its last I/O is a sync that follows
 * every write of the header and the size change. */
Test(overlay_crash, create_is_durable)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  struct ovl_create_opts o = {.virtual_size = 1ull << 40};

  io_n = 0;
  ovl_io = &rec_ops;
  int e = ovl_create(path, &o, NULL);
  ovl_io = &ovl_io_default;
  cr_assert_eq(e, 0, "%s", cc_error_get());
  cr_assert_gt(io_n, 0u, "ovl_create did no I/O through ovl_io");
  cr_assert_eq(io_log[io_n - 1].kind, IO_SYNC, "ovl_create's last I/O is not a sync");
  int wrote_slot0 = 0;
  for (size_t i = 0; i < io_n; i++)
    if (io_log[i].kind == IO_PWRITE && io_log[i].off == 0)
      wrote_slot0 = 1;
  cr_assert(wrote_slot0, "ovl_create wrote header slot 0 around ovl_io");
  for (size_t i = 0; i < io_n; i++)
    free(io_log[i].data);
  free(io_log);
  io_log = NULL;
  io_n = io_cap = 0;
  free(path);
  otu_rmtree(dir);
}
