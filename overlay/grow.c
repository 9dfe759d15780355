/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: growing a layer's virtual size in place (docs/FORMAT.md section 4.4).
 *
 * Design notes
 * ------------
 * A layer's L1 table lives in a region padded to a multiple of 4096 bytes (section 3), and
 * the padding is zero.  As long as the larger size needs no more L1 entries than that region
 * holds, growing is a header change only: the new L1 entries are already on disk and zero
 * (no L2 table), the map is unchanged, and the one header write (section 7.3) switches from
 * the old size to the new one atomically.  With the default 128 KiB clusters one 4096-byte
 * region covers 16 GiB, so this is the common case.  A size that needs a larger region would
 * move the first L2 tables and clusters out of the way; that is not done here: ovl_grow
 * returns -EFBIG without changing anything and the caller copies the layer's own data into a
 * new, larger layer instead (pool/resize.c).
 *
 * What the grown part reads as: the new clusters are unallocated, so they read through to the
 * parent, which is never larger than the old size (parent_size <= virtual_size), and beyond a
 * parent's size everything reads as zero (section 8).  The one exception is the sub-cluster
 * that straddled the old end when the old size was not a multiple of the sub-cluster size:
 * its allocated bytes past the old end were never part of the disk, so they are zeroed in the
 * file (and made durable) before the header makes them visible.
 *
 * Locking: the caller holds the layer exclusively (OVL_RDWR) and runs no I/O on it meanwhile
 * (a pool operation); the layer lock is taken for the header write as every header change
 * does.
 */
#include "overlay/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Zero the bytes of the sub-cluster straddling `old_size` that lie past it, if allocated. */
static int
zero_tail(struct ovl_layer *l, uint64_t old_size)
{
  uint64_t cluster = old_size >> l->cluster_bits;
  uint64_t in = old_size & (l->cluster_size - 1);
  uint64_t sc = in >> l->sc_bits, tail = l->sc_size - (in & (l->sc_size - 1));
  struct ovl_l2 *t;
  uint64_t bits, phys;
  char *zero;
  int r;

  if ((old_size & (l->sc_size - 1)) == 0)
    return 0;
  t = atomic_load(&l->l1[cluster / OVL_L2_ENTRIES]);
  if (t == NULL)
    return 0;
  bits = atomic_load(&t->e[cluster % OVL_L2_ENTRIES].bits);
  phys = atomic_load(&t->e[cluster % OVL_L2_ENTRIES].phys);
  if (!(ovl_bits_alloc(bits) & (UINT32_C(1) << sc)))
    return 0;
  zero = calloc(1, (size_t)tail);
  if (zero == NULL)
    return cc_error_set(ENOMEM, "grow: %s: out of memory", l->path);
  r = ovl_pwrite_full(l, zero, tail, phys + in);
  free(zero);
  if (r == 0)
    r = ovl_sync(l, "grow");
  return r;
}

int
ovl_grow(struct ovl_layer *l, uint64_t new_size)
{
  struct ovl_header h;
  uint32_t n;
  int r;

  if (!(l->flags & OVL_RDWR))
    return cc_error_set(EPERM, "grow: %s: layer is open read-only", l->path);
  if (new_size % 512 != 0 || new_size > OVL_MAX_VIRTUAL_SIZE)
    return cc_error_set(EINVAL, "grow: %s: bad size %" PRIu64 " (a multiple of 512, at most 2^62)",
                        l->path, new_size);
  if (new_size < l->hdr.virtual_size)
    return cc_error_set(EINVAL,
                        "grow: %s: %" PRIu64 " bytes is smaller than the layer (%" PRIu64 ")",
                        l->path, new_size, l->hdr.virtual_size);
  if (new_size == l->hdr.virtual_size)
    return 0;
  n = ovl_l1_entries_for(new_size, l->cluster_bits);
  if (n > OVL_MAX_L1_ENTRIES)
    return cc_error_set(EFBIG, "grow: %s: %" PRIu64 " bytes is too large for this implementation",
                        l->path, new_size);
  if (ovl_l1_region(n) != ovl_l1_region(l->hdr.l1_entries))
    return cc_error_set(EFBIG, "grow: %s: %" PRIu64 " bytes needs a larger L1 table region",
                        l->path, new_size);

  pthread_mutex_lock(&l->flush_lock);
  pthread_mutex_lock(&l->lock);
  if (n > l->hdr.l1_entries) {
    _Atomic(struct ovl_l2 *) *l1 = realloc(l->l1, (size_t)n * sizeof *l1);

    if (l1 == NULL) {
      pthread_mutex_unlock(&l->lock);
      pthread_mutex_unlock(&l->flush_lock);
      return cc_error_set(ENOMEM, "grow: %s: out of memory", l->path);
    }
    for (uint32_t i = l->hdr.l1_entries; i < n; i++)
      atomic_init(&l1[i], NULL);
    l->l1 = l1;
  }
  h = l->hdr;
  h.virtual_size = new_size;
  h.l1_entries = n;
  r = ovl_header_validate(l->path, &h);
  if (r == 0)
    r = ovl_map_flush_locked(l);
  if (r == 0)
    r = zero_tail(l, l->hdr.virtual_size);
  if (r == 0)
    r = ovl_header_write(l, &h);
  if (r == 0)
    l->nclusters = (new_size + l->cluster_size - 1) >> l->cluster_bits;
  pthread_mutex_unlock(&l->lock);
  pthread_mutex_unlock(&l->flush_lock);
  return r;
}
