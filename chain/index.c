/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: the resolution index of a chain's frozen part.
 *
 * Design notes
 * ------------
 * The index is a sorted array of runs (internal.h, struct cc_run) that tiles [0, size) of the
 * topmost frozen layer's virtual disk.  Each run is DATA (layer, phys), ZERO (a zero
 * sub-cluster somewhere hides everything below) or HOLE (nothing in the chain ever wrote it:
 * a raw image's hole, no parent, or beyond a parent's size).  A run's length is implicit (the
 * next run's start), which keeps a run at 24 bytes; memory grows with the number of runs,
 * i.e. with what was written, never with the virtual size.
 *
 * Building from files (open.c, cc_builder_*): the chain is walked from the top down, and each
 * file, as soon as it is open, gives its own extents that decide something (DATA and ZERO of a
 * layer through ovl_map, DATA and HOLE of a raw image through SEEK_DATA/SEEK_HOLE, and HOLE
 * beyond the file's size); then its map is dropped, so at most one layer's map is in memory.
 * One sweep over all extents in start order, with a heap of the active ones keyed by depth,
 * gives each stretch to the topmost file that has it (none: HOLE).  Cost O(E log E) for E
 * extents, instead of merging layer by layer (O(layers x runs): at depth 256 of 1% layers
 * that copied ~5 million runs per open).
 *
 * A live push (cc_index_stack) adds one layer on an existing index in one linear pass: its
 * DATA and ZERO extents replace what is below, its unallocated extents copy the runs below,
 * clipped.  Runs are merged on insert when they are the same kind and, for DATA, the same
 * layer with contiguous file offsets, so a read of a contiguous range in one file is one piece.
 * Either way the index is built once per frozen part and shared by every chain on it
 * (registry.c), and kept after the last chain closes (the idle cache there).
 *
 * Lookups never lock: the array is immutable once built.
 */
#include "chain/internal.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"

#define MAP_BATCH 256 /* extents per ovl_map call */

/* Append a run starting at `start` (runs are built contiguous and ascending), merging it into
 * the previous one when it just continues it. */
static int
rv_push(struct cc_runvec *rv, uint64_t start, uint32_t kind, uint32_t layer, uint64_t phys)
{
  /* A previous run of length zero (cannot come from a sane map, but costs nothing) is
   * replaced rather than kept as an empty run. */
  if (rv->n > 0 && rv->v[rv->n - 1].start == start)
    rv->n--;
  if (rv->n > 0) {
    const struct cc_run *last = &rv->v[rv->n - 1];

    if (last->kind == kind && (kind != CC_RUN_DATA || (last->layer == layer &&
                                                       last->phys + (start - last->start) == phys)))
      return 0;
  }
  if (rv->n == rv->cap) {
    size_t cap = rv->cap ? rv->cap * 2 : 64;
    struct cc_run *v = realloc(rv->v, cap * sizeof *v);

    if (!v)
      return cc_error_set(ENOMEM, "open: resolution index: out of memory");
    rv->v = v;
    rv->cap = cap;
  }
  rv->v[rv->n++] = (struct cc_run){.start = start, .phys = phys, .layer = layer, .kind = kind};
  return 0;
}

/* Runs of a raw image: data where SEEK_DATA finds it, holes elsewhere.  A file system without
 * SEEK_DATA support reports everything as data, which is correct, only less sparse. */
static int
scan_raw(struct cc_runvec *rv, const struct cc_frozen *f, uint32_t li)
{
  uint64_t pos = 0;
  int r;

  while (pos < f->size) {
    off_t d = lseek(f->fd, (off_t)pos, SEEK_DATA);
    off_t h;

    if (d < 0 && errno == ENXIO) /* only a hole up to EOF */
      return rv_push(rv, pos, CC_RUN_HOLE, 0, 0);
    if (d < 0) /* no SEEK_DATA here (e.g. a device): all data */
      return rv_push(rv, pos, CC_RUN_DATA, li, pos);
    if ((uint64_t)d >= f->size)
      return rv_push(rv, pos, CC_RUN_HOLE, 0, 0);
    if ((uint64_t)d > pos && (r = rv_push(rv, pos, CC_RUN_HOLE, 0, 0)) < 0)
      return r;
    h = lseek(f->fd, d, SEEK_HOLE);
    if (h < 0 || (uint64_t)h > f->size)
      h = (off_t)f->size;
    if ((r = rv_push(rv, (uint64_t)d, CC_RUN_DATA, li, (uint64_t)d)) < 0)
      return r;
    if (h <= d) /* cannot happen; never loop forever on a confused file system */
      h = (off_t)f->size;
    pos = (uint64_t)h;
  }
  return 0;
}

static uint64_t
run_end(const struct cc_run *v, size_t n, size_t i, uint64_t size)
{
  return i + 1 < n ? v[i + 1].start : size;
}

/* Copy the runs of `below` (covering [0, below_size)) that overlap [a, b) into `out`, clipped.
 * *ci is a cursor into below that only moves forward. */
static int
copy_below(struct cc_runvec *out, const struct cc_runvec *below, uint64_t below_size, size_t *ci,
           uint64_t a, uint64_t b)
{
  int r;

  while (*ci < below->n && run_end(below->v, below->n, *ci, below_size) <= a)
    (*ci)++;
  for (size_t i = *ci; i < below->n && below->v[i].start < b; i++) {
    const struct cc_run *run = &below->v[i];
    uint64_t s = run->start > a ? run->start : a;
    uint64_t phys = run->kind == CC_RUN_DATA ? run->phys + (s - run->start) : 0;

    if ((r = rv_push(out, s, run->kind, run->layer, phys)) < 0)
      return r;
    *ci = i; /* the next extent may start inside this run */
  }
  return 0;
}

/* Merge layer `li` over `below` (which already covers its whole virtual size) into `out`. */
static int
overlay_layer(struct cc_runvec *out, const struct cc_runvec *below, uint64_t size, uint32_t li,
              const struct cc_frozen *f)
{
  struct ovl_extent ext[MAP_BATCH];
  uint64_t pos = 0;
  size_t ci = 0;
  int n, r;

  while (pos < size) {
    n = ovl_map(f->ovl, pos, size - pos, ext, MAP_BATCH);
    if (n < 0)
      return n;
    if (n == 0)
      return cc_error_set(EIO, "open: %s: map ends at %llu before the virtual size", f->path,
                          (unsigned long long)pos);
    for (int k = 0; k < n; k++) {
      const struct ovl_extent *e = &ext[k];

      if (e->offset != pos || e->length == 0 || e->length > size - pos)
        return cc_error_set(EIO, "open: %s: map extents not contiguous at %llu", f->path,
                            (unsigned long long)pos);
      switch (e->state) {
      case OVL_UNALLOCATED:
        r = copy_below(out, below, size, &ci, e->offset, e->offset + e->length);
        break;
      case OVL_ZERO:
        r = rv_push(out, e->offset, CC_RUN_ZERO, 0, 0);
        break;
      case OVL_DATA:
        r = rv_push(out, e->offset, CC_RUN_DATA, li, e->phys);
        break;
      default:
        r = cc_error_set(EIO, "open: %s: unknown extent state %d", f->path, (int)e->state);
      }
      if (r < 0)
        return r;
      pos += e->length;
    }
  }
  return 0;
}

/* Stack layer `li` (f) onto `cur`, which covers [0, *size): afterwards `cur` covers the layer's
 * virtual size.  `next` is scratch; the two are swapped as needed. */
static int
stack_layer(struct cc_runvec *cur, struct cc_runvec *next, uint64_t *size, uint32_t li,
            const struct cc_frozen *f)
{
  int r;

  /* Beyond the size of what is below, this layer's unallocated parts read as zero. */
  if (f->size > *size) {
    if ((r = rv_push(cur, *size, CC_RUN_HOLE, 0, 0)) < 0)
      return r;
    *size = f->size;
  }
  /* A layer with nothing of its own (a fresh snapshot) changes nothing: skip the copy. */
  {
    struct ovl_extent e;
    int n = ovl_map(f->ovl, 0, *size, &e, 1);

    if (n == 1 && e.state == OVL_UNALLOCATED && e.offset == 0 && e.length == *size)
      return 0;
  }
  next->n = 0;
  if ((r = overlay_layer(next, cur, *size, li, f)) < 0)
    return r;
  struct cc_runvec t = *cur;
  *cur = *next;
  *next = t;
  return 0;
}

/* Hand the runs in `cur` (covering [0, size)) to idx, trimmed. */
static void
finish_runs(struct cc_index *idx, struct cc_runvec *cur, uint64_t size)
{
  /* Trim a trailing empty run and the slack. */
  if (cur->n > 0 && cur->v[cur->n - 1].start >= size)
    cur->n--;
  if (cur->n > 0 && cur->n < cur->cap) {
    struct cc_run *v = realloc(cur->v, cur->n * sizeof *v);

    if (v)
      cur->v = v;
  }
  idx->runs = cur->v;
  idx->nruns = cur->n;
  idx->size = size;
  cur->v = NULL;
}

void
cc_builder_init(struct cc_builder *b)
{
  memset(b, 0, sizeof *b);
}

void
cc_builder_free(struct cc_builder *b)
{
  free(b->layer.v);
  free(b->e);
  memset(b, 0, sizeof *b);
}

/* File f's own runs over [0, f->size): DATA (layer pos), ZERO, and UNRES where it has nothing
 * (a layer) or HOLE (a raw image). */
static int
own_runs(struct cc_runvec *out, const struct cc_frozen *f, uint32_t pos)
{
  struct ovl_extent ext[MAP_BATCH];
  uint64_t p = 0;
  int n, r;

  out->n = 0;
  if (!f->ovl)
    return scan_raw(out, f, pos);
  while (p < f->size) {
    n = ovl_map(f->ovl, p, f->size - p, ext, MAP_BATCH);
    if (n < 0)
      return n;
    if (n == 0)
      return cc_error_set(EIO, "open: %s: map ends at %llu before the virtual size", f->path,
                          (unsigned long long)p);
    for (int k = 0; k < n; k++) {
      const struct ovl_extent *e = &ext[k];
      uint32_t kind = e->state == OVL_DATA   ? CC_RUN_DATA
                      : e->state == OVL_ZERO ? CC_RUN_ZERO
                                             : CC_RUN_UNRES;

      if (e->offset != p || e->length == 0 || e->length > f->size - p)
        return cc_error_set(EIO, "open: %s: map extents not contiguous at %llu", f->path,
                            (unsigned long long)p);
      if (e->state != OVL_DATA && e->state != OVL_ZERO && e->state != OVL_UNALLOCATED)
        return cc_error_set(EIO, "open: %s: unknown extent state %d", f->path, (int)e->state);
      if ((r = rv_push(out, e->offset, kind, pos, kind == CC_RUN_DATA ? e->phys : 0)) < 0)
        return r;
      p += e->length;
    }
  }
  return 0;
}

static int
bext_push(struct cc_builder *b, uint64_t start, uint64_t end, uint32_t kind, uint32_t pos,
          uint64_t phys)
{
  if (start >= end)
    return 0;
  if (b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
    struct cc_bext *v = realloc(b->e, cap * sizeof *v);

    if (!v)
      return cc_error_set(ENOMEM, "open: resolution index: out of memory");
    b->e = v;
    b->cap = cap;
  }
  b->e[b->n++] = (struct cc_bext){start, end, phys, pos, kind};
  return 0;
}

int
cc_builder_add(struct cc_builder *b, const struct cc_frozen *f, uint32_t pos)
{
  struct cc_runvec *lr = &b->layer;
  uint64_t fsize;
  int r;

  if (!b->started) {
    b->started = 1;
    b->size = f->size;
  }
  fsize = f->size < b->size ? f->size : b->size;
  if ((r = own_runs(lr, f, pos)) < 0)
    return r;
  for (size_t i = 0; i < lr->n; i++) {
    const struct cc_run *run = &lr->v[i];
    uint64_t e = run_end(lr->v, lr->n, i, f->size);

    if (run->kind == CC_RUN_UNRES || run->start >= fsize)
      continue;
    if ((r = bext_push(b, run->start, e < fsize ? e : fsize, run->kind, pos, run->phys)) < 0)
      return r;
  }
  /* Beyond this layer's size nothing below shows through: it reads as zero. */
  return bext_push(b, fsize, b->size, CC_RUN_HOLE, pos, 0);
}

static int
cmp_bext(const void *a, const void *b)
{
  const struct cc_bext *x = a, *y = b;

  if (x->start != y->start)
    return x->start < y->start ? -1 : 1;
  return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* A binary min-heap of extent indexes ordered by pos (the topmost file first). */
static void
heap_push(size_t *h, size_t *n, const struct cc_bext *e, size_t x)
{
  size_t i = (*n)++;

  while (i > 0 && e[h[(i - 1) / 2]].pos > e[x].pos) {
    h[i] = h[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  h[i] = x;
}

static void
heap_pop(size_t *h, size_t *n, const struct cc_bext *e)
{
  size_t x = h[--(*n)], i = 0;

  for (;;) {
    size_t c = 2 * i + 1;

    if (c >= *n)
      break;
    if (c + 1 < *n && e[h[c + 1]].pos < e[h[c]].pos)
      c++;
    if (e[h[c]].pos >= e[x].pos)
      break;
    h[i] = h[c];
    i = c;
  }
  if (*n > 0)
    h[i] = x;
}

/* One sweep over every file's extents in start order: at each boundary the active extent of
 * the topmost file decides the run (none: a HOLE).  O(E log E) for E extents, where merging
 * layer by layer costs O(layers x runs) (docs/BENCHMARKS.md, finding A). */
int
cc_builder_finish(struct cc_builder *b, struct cc_index *idx)
{
  struct cc_runvec out = {0};
  size_t *heap = NULL, nh = 0, i = 0;
  uint64_t x = 0;
  int r = 0;

  idx->nowned = idx->nlayers;
  if (b->n > 0) {
    qsort(b->e, b->n, sizeof *b->e, cmp_bext);
    if (!(heap = malloc(b->n * sizeof *heap))) {
      r = cc_error_set(ENOMEM, "open: resolution index: out of memory");
      goto out;
    }
  }
  while (x < b->size) {
    const struct cc_bext *w;
    uint64_t next = b->size;

    while (i < b->n && b->e[i].start <= x)
      heap_push(heap, &nh, b->e, i++);
    while (nh > 0 && b->e[heap[0]].end <= x)
      heap_pop(heap, &nh, b->e);
    w = nh > 0 ? &b->e[heap[0]] : NULL;
    if (i < b->n && b->e[i].start < next)
      next = b->e[i].start;
    if (w && w->end < next)
      next = w->end;
    if (!w || w->kind == CC_RUN_HOLE)
      r = rv_push(&out, x, CC_RUN_HOLE, 0, 0);
    else if (w->kind == CC_RUN_ZERO)
      r = rv_push(&out, x, CC_RUN_ZERO, 0, 0);
    else
      r = rv_push(&out, x, CC_RUN_DATA, (uint32_t)(idx->nlayers - 1 - w->pos),
                  w->phys + (x - w->start));
    if (r < 0)
      goto out;
    x = next;
  }
  finish_runs(idx, &out, b->size);
out:
  free(out.v);
  free(heap);
  cc_builder_free(b);
  /* The maps were freed as they were merged; glibc would keep their pages otherwise. */
  malloc_trim(0);
  return r;
}

int
cc_index_stack(struct cc_index *below, const struct cc_frozen *top, struct cc_index **out)
{
  struct cc_runvec cur = {0}, next = {0};
  size_t nb = below ? below->nlayers : 0;
  uint64_t size = 0;
  struct cc_index *idx;
  struct ovl_info *info;
  int r;

  *out = NULL;
  idx = calloc(1, sizeof *idx);
  info = malloc(sizeof *info);
  if (idx)
    idx->layers = malloc((nb + 1) * sizeof *idx->layers);
  if (!idx || !info || !idx->layers) {
    r = cc_error_set(ENOMEM, "push: %s: out of memory", top->path);
    goto fail;
  }
  if (below) {
    memcpy(idx->layers, below->layers, nb * sizeof *idx->layers);
    cur.cap = below->nruns ? below->nruns : 1;
    if (!(cur.v = malloc(cur.cap * sizeof *cur.v))) {
      r = cc_error_set(ENOMEM, "push: %s: out of memory", top->path);
      goto fail;
    }
    memcpy(cur.v, below->runs, below->nruns * sizeof *cur.v);
    cur.n = below->nruns;
    size = below->size;
  }
  idx->layers[nb] = *top;
  idx->nlayers = nb + 1;
  if ((r = stack_layer(&cur, &next, &size, (uint32_t)nb, top)) < 0)
    goto fail;
  finish_runs(idx, &cur, size);
  free(next.v);
  ovl_get_header_info(top->ovl, info);
  memcpy(idx->uuid, info->uuid, OVL_UUID_LEN);
  free(info);
  idx->dev = top->dev;
  idx->ino = top->ino;
  idx->nowned = 0;
  if (below)
    idx->base = cc_index_get(below);
  *out = idx;
  return 0;

fail:
  free(cur.v);
  free(next.v);
  free(info);
  if (idx)
    free(idx->layers);
  free(idx);
  return r;
}

/* Close the frozen files it owns (dropping their shared locks), free everything and drop the
 * reference on the index below, if any.  Called without the registry lock. */
void
cc_index_free(struct cc_index *idx)
{
  if (!idx)
    return;
  for (size_t i = idx->nlayers - idx->nowned; i < idx->nlayers; i++) {
    struct cc_frozen *f = &idx->layers[i];

    if (f->ovl)
      ovl_close(f->ovl); /* read-only: nothing to flush, cannot lose data */
    else if (f->fd >= 0)
      close(f->fd);
    cc_frozen_dfd_free(f);
    free(f->path);
  }
  free(idx->layers);
  free(idx->runs);
  free(idx->root);
  cc_index_put(idx->base);
  free(idx);
}

/* Index of the run containing `offset` (< idx->size, nruns > 0). */
static size_t
find_run(const struct cc_index *idx, uint64_t offset)
{
  size_t lo = 0, hi = idx->nruns; /* answer in [lo, hi) */

  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;

    if (idx->runs[mid].start <= offset)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

int
cc_index_one(const struct cc_index *idx, uint64_t offset, uint64_t length, struct cc_seg *seg)
{
  size_t i;
  uint64_t rend;

  if (!idx || idx->nruns == 0 || offset >= idx->size) {
    *seg = (struct cc_seg){.offset = offset, .length = length, .kind = CC_RUN_HOLE};
    return 1;
  }
  i = find_run(idx, offset);
  rend = run_end(idx->runs, idx->nruns, i, idx->size);
  if (length > rend - offset)
    return 0;
  seg->offset = offset;
  seg->length = length;
  seg->kind = (enum cc_run_kind)idx->runs[i].kind;
  seg->phys = seg->kind == CC_RUN_DATA ? idx->runs[i].phys + (offset - idx->runs[i].start) : 0;
  seg->file = seg->kind == CC_RUN_DATA ? &idx->layers[idx->runs[i].layer] : NULL;
  return 1;
}

int
cc_index_walk(const struct cc_index *idx, uint64_t offset, uint64_t length, cc_seg_fn fn,
              void *opaque)
{
  uint64_t pos = offset, end = offset + length;
  struct cc_seg seg;
  int r;

  if (idx && idx->nruns > 0 && pos < idx->size) {
    for (size_t i = find_run(idx, pos); i < idx->nruns && pos < end; i++) {
      const struct cc_run *run = &idx->runs[i];
      uint64_t rend = run_end(idx->runs, idx->nruns, i, idx->size);
      uint64_t send = rend < end ? rend : end;

      seg.offset = pos;
      seg.length = send - pos;
      seg.kind = (enum cc_run_kind)run->kind;
      seg.phys = run->kind == CC_RUN_DATA ? run->phys + (pos - run->start) : 0;
      seg.file = run->kind == CC_RUN_DATA ? &idx->layers[run->layer] : NULL;
      if ((r = fn(opaque, &seg)) != 0)
        return r;
      pos = send;
    }
  }
  if (pos < end) {
    seg = (struct cc_seg){.offset = pos, .length = end - pos, .kind = CC_RUN_HOLE};
    if ((r = fn(opaque, &seg)) != 0)
      return r;
  }
  return 0;
}
