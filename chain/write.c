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
 */
#include "chain/internal.h"

#include <errno.h>

#include "common/error.h"

static int
check_write(const struct cc_chain *c, const char *call, uint64_t length, uint64_t offset)
{
  if (!c->top)
    return cc_error_set(EPERM, "%s: %s: read-only export", call, c->path);
  if (offset > c->size || length > c->size - offset)
    return cc_error_set(EINVAL, "%s: %s: range %llu+%llu beyond the end of the disk (%llu)", call,
                        c->path, (unsigned long long)offset, (unsigned long long)length,
                        (unsigned long long)c->size);
  return 0;
}

int
cc_chain_pwrite(struct cc_chain *c, const void *buf, uint64_t length, uint64_t offset,
                unsigned flags)
{
  int r = check_write(c, "pwrite", length, offset);

  if (r < 0)
    return r;
  if (length == 0)
    return (flags & CC_FUA) ? ovl_flush(c->top) : 0;
  return ovl_pwrite(c->top, buf, length, offset, (flags & CC_FUA) ? OVL_FUA : 0, cc_below_read, c);
}

int
cc_chain_zero(struct cc_chain *c, uint64_t length, uint64_t offset, unsigned flags)
{
  unsigned oflags = 0;
  int r = check_write(c, "zero", length, offset);

  if (r < 0)
    return r;
  if (flags & CC_FUA)
    oflags |= OVL_FUA;
  if (flags & CC_MAY_TRIM)
    oflags |= OVL_MAY_TRIM;
  if (length == 0)
    return (flags & CC_FUA) ? ovl_flush(c->top) : 0;
  return ovl_zero(c->top, length, offset, oflags, cc_below_read, c);
}

int
cc_chain_flush(struct cc_chain *c)
{
  /* A read-only chain has nothing unflushed: flush is a successful no-op, as NBD expects. */
  if (!c->top)
    return 0;
  return ovl_flush(c->top);
}
