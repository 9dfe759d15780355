/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: the write path.
 *
 * Design notes
 * ------------
 * Only the writable top changes; the frozen part is immutable by construction (shared locks,
 * shared index).  Every write goes to the top through ovl_pwrite / ovl_zero, which complete
 * partial unallocated sub-clusters from the image below ("copy-up", FORMAT.md section 7.1).
 * The "image below" is the frozen part, read through its index with pread (cc_below_read):
 * copy-up reads at most two sub-clusters per request, so a ring would buy nothing, and the
 * overlay may call it with its allocation lock held.
 *
 * Write-zeroes and trim are the same operation here: afterwards the range reads as zero, never
 * as the parent.  CC_MAY_TRIM lets the overlay punch the released space.  Durability is the
 * overlay's: CC_FUA maps to OVL_FUA, cc_chain_flush to ovl_flush.
 *
 * Writes to a read-only chain (snapshot, template, or a clone opened read-only) fail with
 * -EPERM and say which chain.
 *
 * Writes run inside an entered view (view.c) like reads.  A live top switch requires that no
 * write, zero or flush is in flight (the server's write gate), so a write never straddles two
 * tops; the view only keeps its files alive.
 */
#include "chain/internal.h"

#include <errno.h>

#include "common/error.h"

static int
check_write(const struct cc_chain *c, const struct cc_view *v, const char *call, uint64_t length,
            uint64_t offset)
{
  if (!v->top)
    return cc_error_set(EPERM, "%s: %s: read-only export", call, v->path);
  return cc_range_check(c, v, call, offset, length);
}

int
cc_chain_pwrite(struct cc_chain *c, const void *buf, uint64_t length, uint64_t offset,
                unsigned flags)
{
  unsigned ticket;
  struct cc_view *v = cc_view_enter(c, &ticket);
  int r = check_write(c, v, "pwrite", length, offset);

  if (r == 0 && length == 0)
    r = (flags & CC_FUA) ? ovl_flush(v->top) : 0;
  else if (r == 0)
    r = ovl_pwrite(v->top, buf, length, offset, (flags & CC_FUA) ? OVL_FUA : 0, cc_below_read, v);
  cc_view_leave(c, ticket);
  return r;
}

int
cc_chain_zero(struct cc_chain *c, uint64_t length, uint64_t offset, unsigned flags)
{
  unsigned oflags = 0, ticket;
  struct cc_view *v = cc_view_enter(c, &ticket);
  int r = check_write(c, v, "zero", length, offset);

  if (flags & CC_FUA)
    oflags |= OVL_FUA;
  if (flags & CC_MAY_TRIM)
    oflags |= OVL_MAY_TRIM;
  if (r == 0 && length == 0)
    r = (flags & CC_FUA) ? ovl_flush(v->top) : 0;
  else if (r == 0)
    r = ovl_zero(v->top, length, offset, oflags, cc_below_read, v);
  cc_view_leave(c, ticket);
  return r;
}

int
cc_chain_flush(struct cc_chain *c)
{
  unsigned ticket;
  struct cc_view *v;
  /* A client's flush covers the writes it sent before a live snapshot, which went to the old
   * top: that layer must be durable first (view.c, "Settling"). */
  int r = cc_chain_settle(c);

  if (r < 0)
    return r;
  v = cc_view_enter(c, &ticket);
  /* A read-only chain has nothing unflushed: flush is a successful no-op, as NBD expects. */
  r = v->top ? ovl_flush(v->top) : 0;
  cc_view_leave(c, ticket);
  return r;
}
