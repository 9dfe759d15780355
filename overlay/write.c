/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: writes, write-zeroes and flush (FORMAT.md section 7).
 *
 * Two paths.  A write whose sub-clusters are all allocated already goes straight to the file
 * with no lock: the map does not change and the physical cluster can never move.  Anything
 * else (first writes, copy-up, writes into zero sub-clusters) reserves the sub-clusters it will
 * allocate under the layer lock, writes the data without it, and publishes the map bits under
 * it again, so first writes into different sub-clusters run in parallel, and neither a
 * concurrent reader nor a flush can ever see an entry that names unwritten bytes.  Zeroing
 * changes bits only, under the lock.
 *
 * Copy-up is per sub-cluster: a 4 KiB write into a fresh clone with the default 128 KiB clusters
 * writes exactly 4 KiB and reads nothing from below.  Only a write that covers part of an
 * *unallocated* sub-cluster reads the rest of that sub-cluster (from below, or the zero state)
 * so the whole sub-cluster can be written before it is marked allocated.
 *
 * Concurrency on one sub-cluster (FORMAT.md section 7.5 states the same rule):
 *  - reads and in-place writes take no lock and may run at any time, alongside anything;
 *  - every change of the map (binding a cluster, publishing a first write's bits, zero, trim)
 *    holds the layer lock, so they are serialized among themselves; a flush holds it only to
 *    copy the dirty map (map.c), so a change after that copy goes to the next flush;
 *  - a first write reserves the unallocated sub-clusters it covers (under the lock) for the
 *    time it writes their data; another request that would write them or change their bits
 *    waits for the reservation to end, so a reserved sub-cluster has one writer;
 *  - nothing ever writes a byte of an *allocated* sub-cluster that its request does not cover:
 *    a locked write that also covers allocated sub-clusters writes only its own bytes there, in
 *    place, exactly as the lock-free path would.  Read-modify-write of an allocated sub-cluster
 *    would write back stale bytes over a lock-free write landing in between (issue 11: lost
 *    acknowledged writes under 16 small writes in flight);
 *  - read-modify-write (copy-up) happens only to sub-clusters that are not allocated and that
 *    the writer has reserved: no lock-free write can be writing into them (that path needs
 *    every sub-cluster of its range allocated, and the bit is published only after the whole
 *    sub-cluster is written), and no other locked one (it waits for the reservation);
 *  - a sub-cluster leaves the allocated state (zero, trim) only when its request covers it
 *    whole, so a lock-free write still in flight into it overlaps that request, and NBD leaves
 *    the result of overlapping requests in flight to the server: it is one or the other.  Its
 *    bytes may still land in the file after the map says zero; they are never referenced until
 *    the sub-cluster is written whole again, and if they land after that rewrite, they cover
 *    only bytes the in-flight write owned (the order "zero, that write, the rewrite").
 */
#include "overlay/internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>

/* ovl_zero writes data zeroes only for the partial sub-clusters at the ends of a range: at most
 * two (less than two whole ones) per cluster, so two of the largest sub-clusters suffice. */
static const uint8_t zero_buf[2u << (OVL_MAX_CLUSTER_BITS - 5)];

static int
check_range(struct ovl_layer *l, const char *call, uint64_t length, uint64_t offset)
{
  if (!(l->flags & OVL_RDWR))
    return cc_error_set(EPERM, "%s: %s: layer is open read-only", call, l->path);
  if (atomic_load_explicit(&l->sync_error, memory_order_relaxed))
    return ovl_check_sync_error(l, call);
  if (offset > l->hdr.virtual_size || length > l->hdr.virtual_size - offset)
    return cc_error_set(EINVAL,
                        "%s: %s: range %" PRIu64 "+%" PRIu64 " beyond the virtual size %" PRIu64,
                        call, l->path, offset, length, l->hdr.virtual_size);
  return 0;
}

/* Lock-free: if every sub-cluster of the range is allocated, write in place and return 1. */
static int
try_write_in_place(struct ovl_layer *l, const uint8_t *buf, uint64_t length, uint64_t offset)
{
  uint64_t pos = offset, end = offset + length;

  while (pos < end) {
    uint64_t cluster = pos >> l->cluster_bits, cstart = cluster << l->cluster_bits;
    uint64_t cend = cstart + l->cluster_size < end ? cstart + l->cluster_size : end;
    struct ovl_l2 *t = atomic_load_explicit(&l->l1[cluster / OVL_L2_ENTRIES], memory_order_acquire);
    uint32_t mask;
    uint64_t bits;

    if (!t)
      return 0;
    mask = ovl_sc_mask((unsigned)((pos - cstart) >> l->sc_bits),
                       (unsigned)((cend - 1 - cstart) >> l->sc_bits));
    bits = atomic_load_explicit(&t->e[cluster % OVL_L2_ENTRIES].bits, memory_order_acquire);
    if ((ovl_bits_alloc(bits) & mask) != mask)
      return 0;
    pos = cend;
  }
  for (pos = offset; pos < end;) {
    uint64_t cluster = pos >> l->cluster_bits, cstart = cluster << l->cluster_bits;
    uint64_t cend = cstart + l->cluster_size < end ? cstart + l->cluster_size : end;
    struct ovl_l2 *t = atomic_load_explicit(&l->l1[cluster / OVL_L2_ENTRIES], memory_order_acquire);
    uint64_t phys =
        atomic_load_explicit(&t->e[cluster % OVL_L2_ENTRIES].phys, memory_order_relaxed);
    int r = ovl_pwrite_full(l, buf + (pos - offset), cend - pos, phys + (pos - cstart));

    if (r < 0)
      return r;
    pos = cend;
  }
  return 1;
}

/* Fill dst with what unallocated sub-cluster k of the cluster at cstart reads as: zeroes for a
 * zero sub-cluster (or with no image below), else the image below.  The tail of a sub-cluster
 * that straddles the virtual size is kept zero (it is never read). */
static int
fill_subcluster(struct ovl_layer *l, uint8_t *dst, uint64_t cstart, unsigned k, uint64_t bits,
                ovl_below_fn below, void *opaque)
{
  uint64_t vstart = cstart + ((uint64_t)k << l->sc_bits);
  uint64_t n = l->sc_size;

  if (vstart + n > l->hdr.virtual_size) {
    memset(dst, 0, n);
    n = l->hdr.virtual_size - vstart;
  }
  if ((ovl_bits_zero(bits) >> k & 1) || !below) {
    memset(dst, 0, n);
    return 0;
  }
  return below(opaque, dst, n, vstart);
}

/* Write [r0, r1) of the virtual disk into sub-clusters k..j of the cluster at cstart, none of
 * which is allocated and all of which the caller has reserved, so no other request writes them
 * or changes their bits: complete the uncovered head of k and tail of j (copy-up, or zeroes) and
 * write the whole sub-clusters at once.  Runs without the layer lock. */
static int
write_new_subclusters(struct ovl_layer *l, const uint8_t *buf, uint64_t r0, uint64_t r1,
                      uint64_t cstart, unsigned k, unsigned j, uint64_t bits, uint64_t phys,
                      ovl_below_fn below, void *opaque)
{
  uint64_t a0 = cstart + ((uint64_t)k << l->sc_bits);
  uint64_t a1 = cstart + ((uint64_t)(j + 1) << l->sc_bits);
  uint8_t *scratch;
  int r = 0;

  /* Only a write covering whole sub-clusters skips the scratch copy.  A write ending at a
   * virtual size that is not sub-cluster aligned still writes the whole last sub-cluster
   * (padded with zeroes), or the file would end inside allocated data (FORMAT.md 5.3 (2)). */
  if (r0 == a0 && r1 == a1)
    return ovl_pwrite_full(l, buf, r1 - r0, phys + (a0 - cstart));
  scratch = malloc(a1 - a0);
  if (!scratch)
    return cc_error_set(ENOMEM, "write: %s: out of memory", l->path);
  if (r0 != a0)
    r = fill_subcluster(l, scratch, cstart, k, bits, below, opaque);
  if (r == 0 && r1 != a1 && (j != k || r0 == a0))
    r = fill_subcluster(l, scratch + (a1 - a0 - l->sc_size), cstart, j, bits, below, opaque);
  if (r == 0) {
    memcpy(scratch + (r0 - a0), buf, r1 - r0);
    r = ovl_pwrite_full(l, scratch, a1 - a0, phys + (a0 - cstart));
  }
  free(scratch);
  return r;
}

/* Does any first write in progress hold a sub-cluster of `mask` in `cluster`?  Caller holds
 * l->lock. */
static bool
reserved(const struct ovl_layer *l, uint64_t cluster, uint32_t mask)
{
  for (const struct ovl_reservation *v = l->reserved; v; v = v->next)
    if (v->cluster == cluster && (v->mask & mask))
      return true;
  return false;
}

/* Wait until no first write in progress holds a sub-cluster of `mask` in `cluster`.  Caller
 * holds l->lock; it is released while waiting, so the caller re-reads the map after. */
static void
wait_unreserved(struct ovl_layer *l, uint64_t cluster, uint32_t mask)
{
  while (reserved(l, cluster, mask))
    pthread_cond_wait(&l->reserved_done, &l->lock);
}

static void
unreserve(struct ovl_layer *l, struct ovl_reservation *v)
{
  struct ovl_reservation **pp = &l->reserved;

  while (*pp != v)
    pp = &(*pp)->next;
  *pp = v->next;
  pthread_cond_broadcast(&l->reserved_done);
}

/* Space for the next first writes, reserved in the file system ahead of the frontier.  A
 * first write into a hole costs the kernel a block allocation (delayed allocation on ext4,
 * then a real one at writeback) on top of the page copy; into space allocated beforehand it is
 * a write into an unwritten extent, and one fallocate allocates OVL_PREALLOC bytes as a few
 * extents instead of block by block: at iodepth 32 first writes ran 5-17% faster, 0.75-0.80x
 * of overwrites against 0.65-0.71x without (BENCHMARKS.md, "Preallocation ahead of the
 * frontier").  KEEP_SIZE: the file's size, which every map check
 * is held to (FORMAT.md 5.3), does not change, and the space holds no content: it is not part
 * of the file (FORMAT.md section 6).  Best effort: a file system that refuses fallocate is not
 * asked again by this open; ENOSPC leaves the write to find out for itself, and is asked again
 * only OVL_PREALLOC later.  Caller holds l->lock (one fallocate per OVL_PREALLOC bytes of new
 * clusters, so the first writes it holds up are few); `phys` is the cluster just bound. */
static void
preallocate_locked(struct ovl_layer *l, uint64_t phys)
{
  uint64_t start = phys > l->prealloc_end ? phys : l->prealloc_end;

  if (l->frontier <= l->prealloc_end)
    return;
  l->prealloc_end = l->frontier + OVL_PREALLOC;
  if (ovl_io->fallocate(l->fd, FALLOC_FL_KEEP_SIZE, (off_t)start,
                        (off_t)(l->prealloc_end - start)) == -1 &&
      (errno == EOPNOTSUPP || errno == ENOSYS))
    l->prealloc_end = UINT64_MAX;
}

/* Write [pos, cend) inside one cluster.  Called with l->lock held, returns with it held, and
 * releases it while the data is written: first writes of different sub-clusters proceed in
 * parallel (issue 16, finding C of BENCHMARKS.md).
 *
 * Under the lock: bind the physical cluster if it has none, and reserve the sub-clusters that
 * are not allocated yet (waiting for any other first write that holds one of them).  Without
 * it: write the range in runs of sub-clusters of one kind.  A run already allocated gets exactly
 * the bytes the request covers, in place, as the lock-free path would write them: its other
 * bytes may belong to a lock-free write in flight this very moment, so they are never read and
 * written back (issue 11: that read-modify-write lost acknowledged writes).  A reserved run is
 * completed and written whole by write_new_subclusters.  Under the lock again: publish the
 * reserved sub-clusters as allocated (data before map) and release them. */
static int
write_cluster(struct ovl_layer *l, const uint8_t *buf, uint64_t pos, uint64_t cend,
              ovl_below_fn below, void *opaque)
{
  uint64_t cluster = pos >> l->cluster_bits, cstart = cluster << l->cluster_bits;
  uint32_t i = (uint32_t)(cluster / OVL_L2_ENTRIES);
  unsigned k0 = (unsigned)((pos - cstart) >> l->sc_bits);
  unsigned k1 = (unsigned)((cend - 1 - cstart) >> l->sc_bits);
  uint32_t mask = ovl_sc_mask(k0, k1);
  struct ovl_reservation v;
  struct ovl_l2 *t;
  struct ovl_entry *e;
  uint64_t bits, phys;
  uint32_t alloc;
  int r = 0;

  t = ovl_l2_get_or_create(l, cluster);
  if (!t)
    return -errno;
  e = &t->e[cluster % OVL_L2_ENTRIES];
  for (;;) {
    bits = atomic_load_explicit(&e->bits, memory_order_relaxed);
    alloc = ovl_bits_alloc(bits);
    if ((alloc & mask) == mask || !reserved(l, cluster, mask & ~alloc))
      break;
    wait_unreserved(l, cluster, mask & ~alloc);
  }
  phys = atomic_load_explicit(&e->phys, memory_order_relaxed);

  if ((alloc & mask) == mask) {
    /* allocated meanwhile (or by the time we got the lock): an in-place write */
    pthread_mutex_unlock(&l->lock);
    r = ovl_pwrite_full(l, buf, cend - pos, phys + (pos - cstart));
    pthread_mutex_lock(&l->lock);
    return r;
  }

  if (phys == 0) {
    r = ovl_set_dirty_locked(l);
    if (r < 0)
      return r;
    phys = l->frontier;
    l->frontier += l->cluster_size;
    preallocate_locked(l, phys);
    /* bound for life (FORMAT.md section 6); published before any bit that needs it */
    atomic_store_explicit(&e->phys, phys, memory_order_release);
    r = ovl_mark_dirty(l, i);
    if (r < 0)
      return r;
  }
  v = (struct ovl_reservation){cluster, mask & ~alloc, l->reserved};
  l->reserved = &v;
  pthread_mutex_unlock(&l->lock);

  for (unsigned k = k0; k <= k1 && r == 0;) {
    bool allocated = alloc >> k & 1;
    unsigned j = k;
    uint64_t r0, r1;

    while (j < k1 && (bool)(alloc >> (j + 1) & 1) == allocated)
      j++;
    r0 = cstart + ((uint64_t)k << l->sc_bits);
    r1 = cstart + ((uint64_t)(j + 1) << l->sc_bits);
    if (r0 < pos)
      r0 = pos;
    if (r1 > cend)
      r1 = cend;
    if (allocated)
      r = ovl_pwrite_full(l, buf + (r0 - pos), r1 - r0, phys + (r0 - cstart));
    else
      r = write_new_subclusters(l, buf + (r0 - pos), r0, r1, cstart, k, j, bits, phys, below,
                                opaque);
    k = j + 1;
  }

  pthread_mutex_lock(&l->lock);
  if (r == 0) {
    /* every byte is written: now the reserved sub-clusters may be read.  Other sub-clusters'
     * bits may have changed meanwhile (under this lock), so change only ours. */
    bits = atomic_load_explicit(&e->bits, memory_order_relaxed);
    bits = ovl_bits_make(ovl_bits_alloc(bits) | v.mask, ovl_bits_zero(bits) & ~v.mask);
    atomic_store_explicit(&e->bits, bits, memory_order_release);
    r = ovl_mark_dirty(l, i);
  }
  unreserve(l, &v);
  return r;
}

/* Write [offset, offset + length) cluster by cluster.  Called with l->lock held; write_cluster
 * releases it while data is written, so the map may change between clusters. */
static int
write_locked(struct ovl_layer *l, const uint8_t *buf, uint64_t length, uint64_t offset, bool zeroes,
             ovl_below_fn below, void *opaque)
{
  uint64_t pos = offset, end = offset + length;

  while (pos < end) {
    uint64_t cstart = pos >> l->cluster_bits << l->cluster_bits;
    uint64_t cend = cstart + l->cluster_size < end ? cstart + l->cluster_size : end;
    int r = write_cluster(l, zeroes ? zero_buf : buf + (pos - offset), pos, cend, below, opaque);

    if (r < 0)
      return r;
    pos = cend;
  }
  return 0;
}

int
ovl_flush(struct ovl_layer *l)
{
  if (!(l->flags & OVL_RDWR) && !l->sealed)
    return 0;
  return ovl_map_flush(l);
}

int
ovl_pwrite(struct ovl_layer *l, const void *buf, uint64_t length, uint64_t offset, unsigned flags,
           ovl_below_fn below, void *opaque)
{
  int r = check_range(l, "write", length, offset);

  if (r < 0 || length == 0)
    return r;
  r = try_write_in_place(l, buf, length, offset);
  if (r == 0) {
    pthread_mutex_lock(&l->lock);
    r = write_locked(l, buf, length, offset, false, below, opaque);
    pthread_mutex_unlock(&l->lock);
  }
  if (r >= 0 && (flags & OVL_FUA))
    r = ovl_flush(l);
  return r < 0 ? r : 0;
}

/* Punch the file space of sub-clusters `mask` of a bound cluster.  Advisory: the map already
 * says zero, so a file system without hole punching loses only space. */
static void
punch(struct ovl_layer *l, uint64_t phys, uint32_t mask)
{
  unsigned k = 0;

  while (mask) {
    unsigned start, len;

    while (!(mask >> k & 1))
      k++;
    start = k;
    while (k < 32 && (mask >> k & 1))
      k++;
    len = k - start;
    mask &= ~ovl_sc_mask(start, k - 1);
    (void)ovl_io->fallocate(l->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            (off_t)(phys + ((uint64_t)start << l->sc_bits)),
                            (off_t)((uint64_t)len << l->sc_bits));
  }
}

/* Turn sub-clusters `mask` of one cluster to zero.  Caller holds l->lock. */
static int
zero_subclusters_locked(struct ovl_layer *l, uint64_t cluster, uint32_t mask, unsigned flags)
{
  struct ovl_l2 *t = atomic_load_explicit(&l->l1[cluster / OVL_L2_ENTRIES], memory_order_relaxed);
  struct ovl_entry *e;
  uint64_t bits, nbits;

  if (!t && !(t = ovl_l2_get_or_create(l, cluster)))
    return -errno;
  e = &t->e[cluster % OVL_L2_ENTRIES];
  /* a first write in progress on one of them completes first (it overlaps this request, so
   * either order is allowed); changing its bits under it would mix the two */
  wait_unreserved(l, cluster, mask);
  bits = atomic_load_explicit(&e->bits, memory_order_relaxed);
  nbits = ovl_bits_make(ovl_bits_alloc(bits) & ~mask, ovl_bits_zero(bits) | mask);
  if (nbits == bits)
    return 0;
  atomic_store_explicit(&e->bits, nbits, memory_order_release);
  if ((flags & OVL_MAY_TRIM) && (ovl_bits_alloc(bits) & mask))
    punch(l, atomic_load_explicit(&e->phys, memory_order_relaxed), ovl_bits_alloc(bits) & mask);
  return ovl_mark_dirty(l, (uint32_t)(cluster / OVL_L2_ENTRIES));
}

int
ovl_zero(struct ovl_layer *l, uint64_t length, uint64_t offset, unsigned flags, ovl_below_fn below,
         void *opaque)
{
  uint64_t pos = offset, end = offset + length;
  int r = check_range(l, "zero", length, offset);

  if (r < 0 || length == 0)
    return r;
  pthread_mutex_lock(&l->lock);
  while (pos < end && r == 0) {
    uint64_t cluster = pos >> l->cluster_bits, cstart = cluster << l->cluster_bits;
    uint64_t cend = cstart + l->cluster_size < end ? cstart + l->cluster_size : end;
    /* whole sub-clusters [f0, f1); the disk's end counts as a sub-cluster end */
    uint64_t f0 = (pos - cstart + l->sc_size - 1) >> l->sc_bits;
    uint64_t f1 = cend == l->hdr.virtual_size ? (cend - cstart + l->sc_size - 1) >> l->sc_bits
                                              : (cend - cstart) >> l->sc_bits;

    if (f0 >= f1) {
      r = write_locked(l, NULL, cend - pos, pos, true, below, opaque);
    } else {
      uint64_t w0 = cstart + (f0 << l->sc_bits), w1 = cstart + (f1 << l->sc_bits);
      if (pos < w0)
        r = write_locked(l, NULL, w0 - pos, pos, true, below, opaque);
      if (r == 0)
        r = zero_subclusters_locked(l, cluster, ovl_sc_mask((unsigned)f0, (unsigned)f1 - 1), flags);
      if (r == 0 && w1 < cend)
        r = write_locked(l, NULL, cend - w1, w1, true, below, opaque);
    }
    pos = cend;
  }
  pthread_mutex_unlock(&l->lock);
  if (r == 0 && (flags & OVL_FUA))
    r = ovl_flush(l);
  return r;
}
