/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: where the bytes of a chain live (cc_chain_runs), for copies that move whole
 * runs file to file (full clone, export) instead of reading them through a buffer.
 *
 * Design notes
 * ------------
 * The same resolution as extents.c (the writable top's own states where it has any, the frozen
 * part's index elsewhere), but a data run also says which file holds it and where: the top's
 * fd, a frozen layer's fd or the raw image's.  Adjacent runs are merged when they have the
 * same type and, for data, the same file at contiguous offsets, so a flat run of a template
 * reaches the caller as one run however many layers sit on it.
 */
#include "chain/internal.h"

#include <errno.h>

#include "common/error.h"

struct runs_ctx {
  struct cc_view *v;
  cc_run_fn fn;
  void *opaque;
  int have;
  struct cc_chain_run cur;
};

static int
add(struct runs_ctx *x, const struct cc_chain_run *r)
{
  int rc;

  if (r->length == 0)
    return 0;
  if (x->have && x->cur.type == r->type && x->cur.offset + x->cur.length == r->offset &&
      (r->type != 0 || (x->cur.fd == r->fd && x->cur.phys + x->cur.length == r->phys))) {
    x->cur.length += r->length;
    return 0;
  }
  if (x->have && (rc = x->fn(x->opaque, &x->cur)) != 0)
    return rc;
  x->have = 1;
  x->cur = *r;
  return 0;
}

static int
seg_run(void *opaque, const struct cc_seg *s)
{
  struct cc_chain_run r = {.offset = s->offset, .length = s->length, .fd = -1};

  if (s->kind == CC_RUN_DATA && s->file->remote) /* split by the remote's block status */
    return cc_remote_walk(s->file->remote, s, seg_run, opaque);
  switch (s->kind) {
  case CC_RUN_DATA:
    r.type = 0;
    r.fd = s->file->fd;
    r.phys = s->phys;
    r.path = s->file->path;
    r.cluster_size = s->file->ovl ? ovl_cluster_size(s->file->ovl) : 0;
    break;
  case CC_RUN_ZERO:
    r.type = CC_EXTENT_ZERO;
    break;
  default:
    r.type = CC_EXTENT_HOLE | CC_EXTENT_ZERO;
  }
  return add(opaque, &r);
}

static int
top_run(void *opaque, const struct ovl_extent *e)
{
  struct runs_ctx *x = opaque;
  struct cc_chain_run r = {.offset = e->offset, .length = e->length, .fd = -1};

  switch (e->state) {
  case OVL_DATA:
    r.fd = x->v->top_fd;
    r.phys = e->phys;
    r.path = x->v->path;
    r.cluster_size = ovl_cluster_size(x->v->top);
    return add(x, &r);
  case OVL_ZERO:
    r.type = CC_EXTENT_ZERO;
    return add(x, &r);
  default:
    return cc_index_walk(x->v->idx, e->offset, e->length, seg_run, x);
  }
}

int
cc_chain_runs(struct cc_chain *c, uint64_t length, uint64_t offset, cc_run_fn fn, void *opaque)
{
  struct runs_ctx x = {.fn = fn, .opaque = opaque};
  unsigned ticket;
  int r;

  /* The callback runs inside the view: the fds it is given stay open until we leave it. */
  x.v = cc_view_enter(c, &ticket);
  r = cc_range_check(c, x.v, "runs", offset, length);
  if (r == 0 && length > 0) {
    if (x.v->top)
      r = cc_top_walk(x.v, "runs", offset, length, top_run, &x);
    else
      r = cc_index_walk(x.v->idx, offset, length, seg_run, &x);
    if (r == 0 && x.have)
      r = fn(opaque, &x.cur);
  }
  cc_view_leave(c, ticket);
  return r;
}
