/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: bulk fills (ovl_copy_in), for pool operations that copy whole runs of data
 * into a layer they hold exclusively: full clone, snapshot delete (merge).
 *
 * Design notes
 * ------------
 * A bulk fill is many first writes at once, under the same rule as write.c: data before map
 * (FORMAT.md sections 7.1 and 7.6).  The range is done one L2 table's stretch (256 clusters) at
 * a time, each under the layer lock:
 *
 *   1. reserve: the stretch's L2 table (at the frontier, if it has none yet), then a physical
 *      cluster at the frontier for every cluster of the stretch that has none.  The offsets are
 *      bound in the entries (FORMAT.md 6: for life) but no bit is published, so a reader still
 *      sees every sub-cluster in its old state.  Reserving the table first keeps the stretch's
 *      new clusters contiguous in the file;
 *   2. copy: one copy_file_range per part of the stretch that is contiguous in the file (the
 *      kernel shares the extents on XFS with reflink and on btrfs, and copies inside the kernel
 *      elsewhere), or pread + pwrite of 8 MiB where the kernel says EXDEV, EOPNOTSUPP, EINVAL or
 *      ENOSYS.  Sub-clusters that are already allocated are written in place (only the bytes
 *      of the range);
 *   3. publish: set the alloc bits (clearing the zero bits) of every copied sub-cluster and mark
 *      the L2 table dirty.  Nothing reaches the disk's map before the caller's ovl_flush, which
 *      makes the data durable first and writes each changed L2 table once (FORMAT.md 7.2).
 *
 * A failure between 1 and 3 leaves bound clusters without bits: leaked space, never an entry
 * naming unwritten bytes.  Readers and in-place writers run alongside (they never touch a
 * sub-cluster that is not allocated yet); other map changes wait for the lock.
 */
#include "overlay/internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define BULK_BUF (8u << 20)       /* pread + pwrite fallback */
#define BULK_CFR_MAX (1ull << 30) /* bytes per copy_file_range call */

struct bulk {
  struct ovl_layer *l;
  int src_fd;
  const char *src_name;
  uint8_t *buf; /* fallback buffer, allocated on first use */
  bool no_cfr;  /* the kernel cannot copy_file_range between these files */
};

static int
copy_rw(struct bulk *b, uint64_t src, uint64_t dst, uint64_t len)
{
  if (!b->buf && !(b->buf = malloc(BULK_BUF)))
    return cc_error_set(ENOMEM, "copy: %s: out of memory", b->l->path);
  while (len > 0) {
    size_t n = len < BULK_BUF ? (size_t)len : BULK_BUF;
    ssize_t got = pread(b->src_fd, b->buf, n, (off_t)src);
    int r;

    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      return cc_error_set(got < 0 ? errno : EIO, "copy: %s: offset %" PRIu64 ": %s", b->src_name,
                          src, got < 0 ? strerror(errno) : "unexpected end of file");
    if ((r = ovl_pwrite_full(b->l, b->buf, (uint64_t)got, dst)) < 0)
      return r;
    src += (uint64_t)got;
    dst += (uint64_t)got;
    len -= (uint64_t)got;
  }
  return 0;
}

/* Copy len bytes of the source at src into the layer file at dst. */
static int
copy_run(struct bulk *b, uint64_t src, uint64_t dst, uint64_t len)
{
  while (len > 0 && !b->no_cfr && ovl_io->copy_file_range) {
    off_t in = (off_t)src, out = (off_t)dst;
    size_t n = len < BULK_CFR_MAX ? (size_t)len : (size_t)BULK_CFR_MAX;
    ssize_t c = ovl_io->copy_file_range(b->src_fd, &in, b->l->fd, &out, n, 0);

    if (c > 0) {
      src += (uint64_t)c;
      dst += (uint64_t)c;
      len -= (uint64_t)c;
      continue;
    }
    if (c == 0)
      return cc_error_set(EIO, "copy: %s: offset %" PRIu64 ": unexpected end of file", b->src_name,
                          src);
    if (errno == EINTR)
      continue;
    if (errno != EXDEV && errno != EOPNOTSUPP && errno != EINVAL && errno != ENOSYS)
      return cc_error_set(errno, "copy: %s -> %s: %s", b->src_name, b->l->path, strerror(errno));
    b->no_cfr = true;
  }
  return len > 0 ? copy_rw(b, src, dst, len) : 0;
}

/* Steps 1-3 for [pos, end), which lies inside one L2 table's stretch.  Caller holds l->lock. */
static int
fill_stretch_locked(struct bulk *b, uint64_t pos, uint64_t end, uint64_t src)
{
  struct ovl_layer *l = b->l;
  uint64_t first = pos >> l->cluster_bits, last = (end - 1) >> l->cluster_bits;
  uint32_t i = (uint32_t)(first / OVL_L2_ENTRIES);
  uint64_t run_src = 0, run_dst = 0, run_len = 0;
  struct ovl_l2 *t;
  int r;

  if ((r = ovl_set_dirty_locked(l)) < 0)
    return r;
  if (!(t = ovl_l2_get_or_create(l, first)))
    return -errno;
  /* 1: reserve */
  for (uint64_t c = first; c <= last; c++) {
    struct ovl_entry *e = &t->e[c % OVL_L2_ENTRIES];
    if (atomic_load_explicit(&e->phys, memory_order_relaxed) == 0) {
      atomic_store_explicit(&e->phys, l->frontier, memory_order_release);
      l->frontier += l->cluster_size;
    }
  }
  if ((r = ovl_mark_dirty(l, i)) < 0)
    return r;
  /* 2: copy, one call per part contiguous in the file */
  for (uint64_t c = first; c <= last; c++) {
    uint64_t cstart = c << l->cluster_bits;
    uint64_t a = pos > cstart ? pos : cstart;
    uint64_t z = end < cstart + l->cluster_size ? end : cstart + l->cluster_size;
    uint64_t dst =
        atomic_load_explicit(&t->e[c % OVL_L2_ENTRIES].phys, memory_order_relaxed) + (a - cstart);

    if (run_len && dst == run_dst + run_len) {
      run_len += z - a;
      continue;
    }
    if (run_len && (r = copy_run(b, run_src, run_dst, run_len)) < 0)
      return r;
    run_src = src + (a - pos);
    run_dst = dst;
    run_len = z - a;
  }
  if ((r = copy_run(b, run_src, run_dst, run_len)) < 0)
    return r;
  /* A last sub-cluster that straddles the virtual size is in the file whole (FORMAT.md 5.3 (2)). */
  if ((end & (l->sc_size - 1)) != 0) {
    uint64_t need = run_dst + run_len + (l->sc_size - (end & (l->sc_size - 1)));
    struct stat st;
    if (fstat(l->fd, &st) == -1)
      return cc_error_set(errno, "copy: %s: %s", l->path, strerror(errno));
    if ((uint64_t)st.st_size < need && ovl_io->ftruncate(l->fd, (off_t)need) == -1)
      return cc_error_set(errno, "copy: %s: extend: %s", l->path, strerror(errno));
  }
  /* 3: publish, after every byte is written */
  for (uint64_t c = first; c <= last; c++) {
    uint64_t cstart = c << l->cluster_bits;
    uint64_t a = pos > cstart ? pos : cstart;
    uint64_t z = end < cstart + l->cluster_size ? end : cstart + l->cluster_size;
    struct ovl_entry *e = &t->e[c % OVL_L2_ENTRIES];
    uint32_t mask = ovl_sc_mask((unsigned)((a - cstart) >> l->sc_bits),
                                (unsigned)((z - 1 - cstart) >> l->sc_bits));
    uint64_t bits = atomic_load_explicit(&e->bits, memory_order_relaxed);

    atomic_store_explicit(&e->bits,
                          ovl_bits_make(ovl_bits_alloc(bits) | mask, ovl_bits_zero(bits) & ~mask),
                          memory_order_release);
  }
  return ovl_mark_dirty(l, i);
}

int
ovl_copy_in(struct ovl_layer *l, uint64_t offset, uint64_t length, int src_fd, uint64_t src_offset,
            const char *src_name)
{
  struct bulk b = {.l = l, .src_fd = src_fd, .src_name = src_name};
  uint64_t pos = offset, end;
  int r = 0;

  if (!(l->flags & OVL_RDWR))
    return cc_error_set(EPERM, "copy: %s: layer is open read-only", l->path);
  if (atomic_load_explicit(&l->sync_error, memory_order_relaxed))
    return ovl_check_sync_error(l, "copy");
  if (offset > l->hdr.virtual_size || length > l->hdr.virtual_size - offset)
    return cc_error_set(EINVAL,
                        "copy: %s: range %" PRIu64 "+%" PRIu64 " beyond the virtual size %" PRIu64,
                        l->path, offset, length, l->hdr.virtual_size);
  end = offset + length;
  if ((offset & (l->sc_size - 1)) != 0 ||
      ((end & (l->sc_size - 1)) != 0 && end != l->hdr.virtual_size))
    return cc_error_set(
        EINVAL, "copy: %s: range %" PRIu64 "+%" PRIu64 " is not whole sub-clusters of %" PRIu64,
        l->path, offset, length, l->sc_size);
  while (pos < end && r == 0) {
    uint64_t stretch = (uint64_t)OVL_L2_ENTRIES << l->cluster_bits;
    uint64_t z = (pos / stretch + 1) * stretch;

    if (z > end)
      z = end;
    pthread_mutex_lock(&l->lock);
    r = fill_stretch_locked(&b, pos, z, src_offset + (pos - offset));
    pthread_mutex_unlock(&l->lock);
    pos = z;
  }
  free(b.buf);
  return r;
}
