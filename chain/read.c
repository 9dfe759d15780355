/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: the read path.
 *
 * Design notes
 * ------------
 * A read is resolved before any I/O is issued.  The writable top (if any) is described with
 * ovl_map, which takes no lock; its allocated runs become pieces of the top's file, its zero
 * runs are memset, and its unallocated runs are resolved through the frozen part's index
 * (index.c), which yields more pieces or more memsets.  Pieces are kept in virtual order and
 * merged on insert when one continues the previous (same fd, contiguous file offset and
 * buffer), so a contiguous extent of one file is one system call however many runs it spans.
 *
 * Fast path: most reads (4 KiB guest I/O) lie inside one extent of the top or one run of the
 * index.  One ovl_map call for one extent, and one binary search in the index, say so; then the
 * read is one pread (or a memset) with no plan, no piece array and no merging.
 *
 * A remote template's bottom (remote.c) has no local descriptor: its runs are read from the
 * remote (or its local cache) as they are planned, on the fast path and in a plan alike, and
 * never become pieces, so io=auto/uring batches and cache=none's O_DIRECT descriptor
 * (cc_frozen_dfd) see only local files.
 *
 * The pieces of one request are then read together: on the calling thread's io_uring
 * (uring.c), or with pread (CC_IO_SYNC, or when io_uring is unavailable).  io=auto
 * (CC_IO_AUTO, the plugin's default) sends a one-piece read to pread, because a ring round
 * trip for one read that the page cache completes inline only adds SQE/CQE work
 * (docs/BENCHMARKS.md), and a read of several pieces to the ring, where they overlap when
 * they have to wait for the disk.  Both give
 * identical results: a short read resumes from where it stopped, EINTR/EAGAIN retry, and a
 * read that hits end of file inside a piece is corruption (-EIO, naming the file): the index
 * never points past the end of a raw image, and FORMAT.md section 9 makes a truncated layer an
 * error, never zeroes.
 *
 * Concurrency: a write racing with a read of the same bytes lands before or after it (the top
 * never rebinds a physical cluster, so a stale map entry can only show that cluster's old or
 * new bytes, or zeroes after a hole punch).  The index is immutable.  A read plans and reads
 * inside one entered view (view.c), so a live top switch never closes a file under it.
 */
#include "chain/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"

#define MAP_BATCH 64
#define PIECE_MAX (1u << 30) /* io_uring read lengths are 32-bit; stay well inside */

void
cc_plan_init(struct cc_plan *p)
{
  p->v = p->inline_v;
  p->n = 0;
  p->cap = sizeof p->inline_v / sizeof p->inline_v[0];
}

void
cc_plan_free(struct cc_plan *p)
{
  if (p->v != p->inline_v)
    free(p->v);
  cc_plan_init(p);
}

/* Append `len` bytes at `phys` of `fd` into `buf`, extending the last piece when it continues
 * exactly there. */
int
cc_plan_add(struct cc_plan *p, int fd, const char *path, uint64_t phys, char *buf, size_t len,
            int direct)
{
  while (len > 0) {
    struct cc_piece *last = p->n ? &p->v[p->n - 1] : NULL;
    size_t take;

    if (last && last->fd == fd && last->phys + last->len == phys && last->buf + last->len == buf &&
        last->len < PIECE_MAX) {
      take = len < PIECE_MAX - last->len ? len : PIECE_MAX - last->len;
      last->len += take;
    } else {
      if (p->n == p->cap) {
        size_t cap = p->cap * 2;
        struct cc_piece *v;

        if (p->v == p->inline_v) {
          v = malloc(cap * sizeof *v);
          if (v)
            memcpy(v, p->inline_v, p->n * sizeof *v);
        } else {
          v = realloc(p->v, cap * sizeof *v);
        }
        if (!v)
          return cc_error_set(ENOMEM, "pread: %s: out of memory", path);
        p->v = v;
        p->cap = cap;
      }
      take = len < PIECE_MAX ? len : PIECE_MAX;
      p->v[p->n++] = (struct cc_piece){
          .fd = fd, .path = path, .phys = phys, .buf = buf, .len = take, .direct = direct};
    }
    phys += take;
    buf += take;
    len -= take;
  }
  return 0;
}

struct plan_ctx {
  struct cc_plan *plan;
  int direct; /* cache=none: frozen files through their O_DIRECT descriptor */
  char *buf;  /* receives byte `offset` */
  uint64_t offset;
  const struct cc_view *v; /* planning the writable top: whose layer */
};

static int
plan_seg(void *opaque, const struct cc_seg *s)
{
  struct plan_ctx *ctx = opaque;
  char *b = ctx->buf + (s->offset - ctx->offset);

  if (s->kind == CC_RUN_DATA && s->file->remote) /* a remote bottom: read it now (remote.c) */
    return cc_remote_pread(s->file->remote, b, s->length, s->phys);
  if (s->kind == CC_RUN_DATA) {
    int dfd = ctx->direct ? cc_frozen_dfd(s->file) : -1;

    return cc_plan_add(ctx->plan, dfd >= 0 ? dfd : s->file->fd, s->file->path, s->phys, b,
                       s->length, dfd >= 0);
  }
  memset(b, 0, s->length); /* HOLE and ZERO read as zero and need no I/O */
  return 0;
}

/* Plan [offset, offset + length) of the frozen part into buf. */
int
cc_plan_index(struct cc_plan *p, const struct cc_index *idx, char *buf, uint64_t length,
              uint64_t offset, int direct)
{
  struct plan_ctx ctx = {.plan = p, .buf = buf, .offset = offset, .direct = direct};

  return cc_index_walk(idx, offset, length, plan_seg, &ctx);
}

/* Read every piece with pread.  Pieces are consumed (advanced) as they are read. */
int
cc_sync_exec(struct cc_piece *v, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    struct cc_piece *pc = &v[i];

    while (pc->len > pc->tail) {
      ssize_t r = pread(pc->fd, pc->buf, pc->len, (off_t)pc->phys);

      if (r < 0 && (errno == EINTR || errno == EAGAIN))
        continue;
      if (r < 0)
        return cc_error_set(errno, "pread: %s: offset %llu: %s", pc->path,
                            (unsigned long long)pc->phys, strerror(errno));
      if (r == 0)
        return cc_error_set(EIO,
                            "pread: %s: end of file at offset %llu inside allocated data "
                            "(file truncated or corrupt)",
                            pc->path, (unsigned long long)pc->phys);
      pc->phys += (uint64_t)r;
      pc->buf += r;
      pc->len -= (size_t)r;
    }
    pc->len = 0;
  }
  return 0;
}

/* ovl_below_fn for the writable top (opaque: the writer's view): the frozen part, read
 * synchronously (copy-up is small and already under the top's allocation lock; a ring buys
 * nothing there). */
int
cc_below_read(void *opaque, void *buf, uint64_t length, uint64_t offset)
{
  const struct cc_view *v = opaque;
  struct cc_plan plan;
  int r;

  cc_plan_init(&plan);
  r = cc_plan_index(&plan, v->idx, buf, length, offset, 0);
  if (r == 0)
    r = cc_sync_exec(plan.v, plan.n);
  cc_plan_free(&plan);
  return r;
}

int
cc_range_check(const struct cc_chain *c, const struct cc_view *v, const char *call, uint64_t offset,
               uint64_t length)
{
  if (offset > c->size || length > c->size - offset)
    return cc_error_set(EINVAL, "%s: %s: range %llu+%llu beyond the end of the disk (%llu)", call,
                        v->path, (unsigned long long)offset, (unsigned long long)length,
                        (unsigned long long)c->size);
  return 0;
}

int
cc_top_walk(const struct cc_view *v, const char *call, uint64_t offset, uint64_t length,
            cc_top_fn fn, void *opaque)
{
  struct ovl_extent ext[MAP_BATCH];
  uint64_t pos = offset, end = offset + length;
  int n, r;

  while (pos < end) {
    n = ovl_map(v->top, pos, end - pos, ext, MAP_BATCH);
    if (n < 0)
      return n;
    if (n == 0)
      return cc_error_set(EIO, "%s: %s: no map extent at offset %llu", call, v->path,
                          (unsigned long long)pos);
    for (int k = 0; k < n; k++) {
      if (ext[k].offset != pos || ext[k].length == 0 || ext[k].length > end - pos)
        return cc_error_set(EIO, "%s: %s: inconsistent map extent at offset %llu", call, v->path,
                            (unsigned long long)pos);
      r = fn(opaque, &ext[k]);
      if (r != 0)
        return r;
      pos += ext[k].length;
    }
  }
  return 0;
}

/* One extent of the top: its data, its zeroes, or the frozen part where it has nothing. */
static int
plan_top_extent(void *opaque, const struct ovl_extent *e)
{
  struct plan_ctx *p = opaque;
  char *b = p->buf + (e->offset - p->offset);

  switch (e->state) {
  case OVL_DATA:
    return cc_plan_add(p->plan, p->v->top_fd, p->v->path, e->phys, b, e->length, 0);
  case OVL_ZERO:
    memset(b, 0, e->length);
    return 0;
  default:
    return cc_plan_index(p->plan, p->v->idx, b, e->length, e->offset, p->direct);
  }
}

/* Read pieces in the chain's I/O mode.  A ring that is unavailable falls back to pread (uring.c
 * said so once). */
static int
exec_plain(const struct cc_chain *c, struct cc_piece *v, size_t n)
{
  int r = CC_URING_UNAVAILABLE;

  if (!(c->flags & CC_IO_SYNC) && (!(c->flags & CC_IO_AUTO) || n > 1))
    r = cc_uring_exec(v, n);
  if (r == CC_URING_UNAVAILABLE)
    r = cc_sync_exec(v, n);
  return r;
}

#define DIO_ALIGN 4096u /* covers every logical block size Linux file systems use */

static int
dio_aligned(const struct cc_piece *pc)
{
  return pc->phys % DIO_ALIGN == 0 && pc->len % DIO_ALIGN == 0 &&
         (uintptr_t)pc->buf % DIO_ALIGN == 0;
}

/* Pieces on O_DIRECT descriptors must be block-aligned in offset, length and buffer.  One that
 * is not is widened to whole blocks and read into an aligned bounce buffer (all of a request's
 * bounced pieces share one allocation), then copied to where it belongs.  The widened end may
 * lie past the end of a raw image: that part is the piece's optional tail. */
static int
exec_pieces(const struct cc_chain *c, struct cc_piece *v, size_t n)
{
  struct cc_piece *w;
  char *bounce = NULL;
  size_t total = 0, off = 0;
  int r;

  if (!(c->flags & CC_DIRECT))
    return exec_plain(c, v, n);
  for (size_t i = 0; i < n; i++)
    if (v[i].direct && !dio_aligned(&v[i]))
      total += (size_t)((v[i].phys + v[i].len + DIO_ALIGN - 1) / DIO_ALIGN * DIO_ALIGN -
                        v[i].phys / DIO_ALIGN * DIO_ALIGN);
  if (total == 0)
    return exec_plain(c, v, n);
  w = malloc(n * sizeof *w);
  if (!w || posix_memalign((void **)&bounce, DIO_ALIGN, total) != 0) {
    free(w);
    return cc_error_set(ENOMEM, "pread: %s: out of memory for an O_DIRECT bounce buffer",
                        v[0].path);
  }
  for (size_t i = 0; i < n; i++) {
    w[i] = v[i];
    if (v[i].direct && !dio_aligned(&v[i])) {
      uint64_t a = v[i].phys / DIO_ALIGN * DIO_ALIGN;
      uint64_t e = (v[i].phys + v[i].len + DIO_ALIGN - 1) / DIO_ALIGN * DIO_ALIGN;

      w[i].phys = a;
      w[i].buf = bounce + off;
      w[i].len = (size_t)(e - a);
      w[i].tail = (size_t)(e - (v[i].phys + v[i].len));
      off += w[i].len;
    }
  }
  r = exec_plain(c, w, n);
  if (r == 0) {
    off = 0;
    for (size_t i = 0; i < n; i++) {
      if (v[i].direct && !dio_aligned(&v[i])) {
        uint64_t a = v[i].phys / DIO_ALIGN * DIO_ALIGN;
        uint64_t e = (v[i].phys + v[i].len + DIO_ALIGN - 1) / DIO_ALIGN * DIO_ALIGN;

        memcpy(v[i].buf, bounce + off + (v[i].phys - a), v[i].len);
        off += (size_t)(e - a);
      }
    }
  }
  free(bounce);
  free(w);
  return r;
}

/* The fast path: 1 if [offset, offset + length) was read as one piece or zeroes (r set), 0 if
 * it needs a plan. */
static int
read_one(struct cc_chain *c, const struct cc_view *v, void *buf, uint64_t length, uint64_t offset,
         int *r)
{
  struct cc_piece pc;
  struct cc_seg seg;

  if (v->top) {
    struct ovl_extent e;
    int n = ovl_map(v->top, offset, length, &e, 1);

    if (n != 1 || e.offset != offset || e.length < length)
      return 0; /* several extents, or an error the planner reports */
    if (e.state == OVL_ZERO) {
      memset(buf, 0, length);
      *r = 0;
      return 1;
    }
    if (e.state == OVL_DATA) {
      pc = (struct cc_piece){
          .fd = v->top_fd, .path = v->path, .phys = e.phys, .buf = buf, .len = length};
      goto piece;
    }
  }
  if (!cc_index_one(v->idx, offset, length, &seg))
    return 0;
  if (seg.kind != CC_RUN_DATA) {
    memset(buf, 0, length);
    *r = 0;
    return 1;
  }
  if (seg.file->remote) { /* one run of a remote bottom: one remote read (or cache hit) */
    *r = cc_remote_pread(seg.file->remote, buf, length, seg.phys);
    return 1;
  }
  {
    int dfd = (c->flags & CC_DIRECT) ? cc_frozen_dfd(seg.file) : -1;

    pc = (struct cc_piece){.fd = dfd >= 0 ? dfd : seg.file->fd,
                           .path = seg.file->path,
                           .phys = seg.phys,
                           .buf = buf,
                           .len = length,
                           .direct = dfd >= 0};
  }
piece:
  if (length > PIECE_MAX)
    return 0;
  *r = exec_pieces(c, &pc, 1);
  return 1;
}

int
cc_chain_pread(struct cc_chain *c, void *buf, uint64_t length, uint64_t offset)
{
  struct cc_plan plan;
  struct cc_view *v;
  unsigned ticket;
  int r;

  if (offset > c->size || length > c->size - offset) {
    v = cc_view_enter(c, &ticket);
    r = cc_range_check(c, v, "pread", offset, length);
    cc_view_leave(c, ticket);
    return r;
  }
  if (length == 0)
    return 0;
  /* The view stays entered until the last piece is read: its files must stay open. */
  v = cc_view_enter(c, &ticket);
  if (read_one(c, v, buf, length, offset, &r)) {
    cc_view_leave(c, ticket);
    return r;
  }
  cc_plan_init(&plan);
  if (v->top)
    r = cc_top_walk(v, "pread", offset, length, plan_top_extent,
                    &(struct plan_ctx){.v = v,
                                       .plan = &plan,
                                       .buf = buf,
                                       .offset = offset,
                                       .direct = (c->flags & CC_DIRECT) != 0});
  else
    r = cc_plan_index(&plan, v->idx, buf, length, offset, (c->flags & CC_DIRECT) != 0);
  if (r == 0 && plan.n > 0)
    r = exec_pieces(c, plan.v, plan.n);
  cc_view_leave(c, ticket);
  cc_plan_free(&plan);
  return r;
}

int
cc_frozen_dfd(const struct cc_frozen *f)
{
  static atomic_int logged;
  char proc[64];
  int d, want = -1;

  if (!f->dfd || f->remote)
    return -1; /* a remote bottom has no local file to read directly (fd -1) */
  d = atomic_load_explicit(f->dfd, memory_order_acquire);
  if (d != -1)
    return d >= 0 ? d : -1;
  /* The same open file, not whatever the path names now: through /proc, else the path (the
   * file is locked shared, so the path cannot have been replaced by a pool operation). */
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", f->fd);
  d = open(proc, O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (d < 0 && errno == ENOENT)
    d = open(f->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (d < 0) {
    if (!atomic_exchange(&logged, 1))
      cc_log("cache=none: %s: O_DIRECT refused (%s): reading through the page cache", f->path,
             strerror(errno));
    d = -2;
  }
  if (!atomic_compare_exchange_strong(f->dfd, &want, d)) {
    if (d >= 0)
      close(d); /* another thread won; use its descriptor */
    d = want;
  }
  return d >= 0 ? d : -1;
}

void
cc_frozen_dfd_free(struct cc_frozen *f)
{
  if (!f->dfd)
    return;
  if (*f->dfd >= 0)
    close(*f->dfd);
  free((void *)f->dfd);
  f->dfd = NULL;
}
