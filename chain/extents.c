/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: extents (NBD block status) across the whole chain.
 *
 * Design notes
 * ------------
 * The answer is the read path's resolution without the I/O: the writable top's own states
 * (ovl_map) where it has any, the frozen part's index where it has none.
 *
 *   top allocated                         -> data (0)
 *   top zero                              -> CC_EXTENT_ZERO
 *   top unallocated, index DATA           -> data (0)
 *   top unallocated, index ZERO           -> CC_EXTENT_ZERO
 *   top unallocated, index HOLE           -> CC_EXTENT_HOLE | CC_EXTENT_ZERO
 *
 * HOLE means nothing in the chain ever wrote those bytes (raw-image holes, no parent, beyond a
 * parent's size), so copying tools (nbdcopy, qemu-img convert) can skip them and keep the
 * copy sparse.  Adjacent extents of one type are merged before they reach the callback, so
 * the caller sees ascending, contiguous, maximal extents starting at `offset`.
 */
#include "chain/internal.h"

#include <errno.h>

#include "common/error.h"

#define MAP_BATCH 64

struct ext_ctx {
  cc_extent_fn fn;
  void *opaque;
  int have; /* an extent is pending */
  uint64_t off, len;
  uint32_t type;
};

/* Add [off, off + len) of `type`; hand the pending extent to the callback when this one does
 * not continue it. */
static int
emit(struct ext_ctx *x, uint64_t off, uint64_t len, uint32_t type)
{
  int r;

  if (len == 0)
    return 0;
  if (x->have && x->type == type && x->off + x->len == off) {
    x->len += len;
    return 0;
  }
  if (x->have && (r = x->fn(x->opaque, x->off, x->len, x->type)) != 0)
    return r;
  x->have = 1;
  x->off = off;
  x->len = len;
  x->type = type;
  return 0;
}

static int
seg_extent(void *opaque, const struct cc_seg *s)
{
  static const uint32_t type[] = {
      [CC_RUN_HOLE] = CC_EXTENT_HOLE | CC_EXTENT_ZERO,
      [CC_RUN_ZERO] = CC_EXTENT_ZERO,
      [CC_RUN_DATA] = 0,
  };

  if (s->kind == CC_RUN_DATA && s->file->remote) /* the remote's own block status */
    return cc_remote_walk(s->file->remote, s, seg_extent, opaque);
  return emit(opaque, s->offset, s->length, type[s->kind]);
}

struct top_ctx {
  const struct cc_view *v;
  struct ext_ctx *x;
};

/* One extent of the top: its own data and zeroes, the frozen part where it has nothing. */
static int
top_extent(void *opaque, const struct ovl_extent *e)
{
  struct top_ctx *t = opaque;

  switch (e->state) {
  case OVL_DATA:
    return emit(t->x, e->offset, e->length, 0);
  case OVL_ZERO:
    return emit(t->x, e->offset, e->length, CC_EXTENT_ZERO);
  default:
    return cc_index_walk(t->v->idx, e->offset, e->length, seg_extent, t->x);
  }
}

int
cc_chain_extents(struct cc_chain *c, uint64_t length, uint64_t offset, cc_extent_fn fn,
                 void *opaque)
{
  struct ext_ctx x = {.fn = fn, .opaque = opaque};
  struct cc_view *v;
  unsigned ticket;
  int r;

  v = cc_view_enter(c, &ticket);
  r = cc_range_check(c, v, "extents", offset, length);
  if (r == 0 && length > 0) {
    if (v->top)
      r = cc_top_walk(v, "extents", offset, length, top_extent, &(struct top_ctx){.v = v, .x = &x});
    else
      r = cc_index_walk(v->idx, offset, length, seg_extent, &x);
  }
  cc_view_leave(c, ticket);
  /* The callback runs outside the view: it may be slow (nbdkit_add_extent allocates). */
  if (r == 0 && x.have)
    r = fn(opaque, x.off, x.len, x.type);
  return r;
}
