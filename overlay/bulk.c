/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: bulk fills (ovl_copy_in, ovl_copy_in_fills), for pool operations that copy
 * whole runs of data into a layer they hold exclusively: full clone, snapshot delete (merge).
 *
 * Design notes
 * ------------
 * A bulk fill is many first writes at once, under the same rule as write.c: data before map
 * (FORMAT.md sections 7.1 and 7.6).  A batch of fills is done under the layer lock:
 *
 *   1. tables: every L2 table the batch needs that does not exist yet, at the frontier, all of
 *      them before any data, so no table ever splits a run of new clusters;
 *   2. bind and copy, in the fills' order: a physical cluster at the frontier for every cluster
 *      that has none, bound in its entry (FORMAT.md 6: for life) but with no bit published, so a
 *      reader still sees every sub-cluster in its old state; the bytes go in one call per run
 *      that is contiguous in both the source and the layer file (copy_file_range: the kernel
 *      shares the extents on XFS with reflink and on btrfs, and copies inside the kernel
 *      elsewhere; pread + pwrite of 128 KiB where the kernel says EXDEV, EOPNOTSUPP, EINVAL or
 *      ENOSYS).  The caller orders the fills by (source file, source offset), so clusters that
 *      are neighbours in a source file become neighbours in the layer whatever their virtual
 *      offsets, and a whole run of them is one call.  Sub-clusters that are already allocated
 *      are written in place (only the bytes of the range);
 *   3. publish: set the alloc bits (clearing the zero bits) of every copied sub-cluster and mark
 *      the L2 tables dirty.  Nothing reaches the disk's map before the caller's ovl_flush, which
 *      makes the data durable first and writes each changed L2 table once (FORMAT.md 7.2).
 *
 * Bridges (ovl_copy_in_fills, OVL_FILL_BRIDGE): where the caller says the source bytes between
 * two fills of one file may be shared into the layer, the next cluster is bound as far past the
 * frontier as the gap is long, and the two runs and the gap between them become one
 * FICLONERANGE: the gap is space no entry references (FORMAT.md 3, 7.6), shared with the
 * source.  Only when the run so far ends at the frontier and the next fill starts a fresh
 * cluster, so the gap is space nothing was ever written to.  The first clone the kernel
 * refuses (a file system that does not share extents, an unaligned range) ends bridging for
 * the batch: that run is copied piece by piece (its gaps stay holes) and the later clusters
 * are bound compactly again.
 *
 * A failure between 2 and 3 leaves bound clusters without bits: leaked space, never an entry
 * naming unwritten bytes.  Readers and in-place writers run alongside (they never touch a
 * sub-cluster that is not allocated yet); other map changes wait for the lock.  ovl_copy_in
 * takes the lock one L2 table's stretch at a time (a live merge fills a served top with it),
 * ovl_copy_in_fills once for the whole batch (a new layer nobody else holds).
 */
#include "overlay/internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define BULK_BUF (128u << 10) /* pread + pwrite fallback: 8 MiB ran 5-7x slower (cache misses) */
#define BULK_CFR_MAX (1ull << 30) /* bytes per copy_file_range call */

/* A stretch of the run being gathered that holds fill data (a bridged run has several). */
struct part {
  uint64_t src, dst, len;
};

struct bulk {
  struct ovl_layer *l;
  uint8_t *buf;  /* fallback buffer, allocated on first use */
  bool no_cfr;   /* the kernel cannot copy_file_range between these files */
  bool no_clone; /* a clone was refused: no more bridges */
  /* The run being gathered: src_fd's [src, src + len) goes to [dst, dst + len) of the file. */
  int src_fd;
  const char *src_name;
  uint64_t src, dst, len;
  struct part *parts; /* its data stretches, in order; more than one only when bridged */
  size_t nparts, cap;
  uint64_t need_size; /* a fill's last sub-cluster straddles the virtual size: file size */
  ovl_fill_progress_fn progress;
  void *opaque;
  uint64_t done; /* data bytes copied, for progress */
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
copy_part(struct bulk *b, uint64_t src, uint64_t dst, uint64_t len)
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

/* Write the gathered run: one clone if it bridges gaps (or its parts one by one if the kernel
 * refuses to share), else one copy. */
static int
flush_run(struct bulk *b)
{
  uint64_t data = 0;
  int r = 0;

  if (b->len == 0)
    return 0;
  if (b->nparts > 1 && !b->no_clone) {
    if (ovl_io->clone_range(b->src_fd, b->src, b->len, b->l->fd, b->dst) == 0)
      goto done;
    b->no_clone = true; /* the gaps stay holes; the parts are copied below */
  }
  for (size_t i = 0; i < b->nparts && r == 0; i++)
    r = copy_part(b, b->parts[i].src, b->parts[i].dst, b->parts[i].len);
  if (r < 0)
    return r;
done:
  for (size_t i = 0; i < b->nparts; i++)
    data += b->parts[i].len;
  b->done += data;
  b->len = 0;
  b->nparts = 0;
  if (b->progress)
    b->progress(b->opaque, b->done);
  return 0;
}

static int
add_part(struct bulk *b, uint64_t src, uint64_t dst, uint64_t len)
{
  if (b->nparts == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 16;
    struct part *p = realloc(b->parts, cap * sizeof *p);
    if (!p)
      return cc_error_set(ENOMEM, "copy: %s: out of memory", b->l->path);
    b->parts = p;
    b->cap = cap;
  }
  b->parts[b->nparts++] = (struct part){src, dst, len};
  return 0;
}

/* Add len bytes (src of the fill's file to dst of the layer) to the run, or start a new one.
 * `bridge`: dst was placed past a fresh gap as long as the source's (fill_one_locked). */
static int
gather(struct bulk *b, const struct ovl_fill *f, uint64_t src, uint64_t dst, uint64_t len,
       bool bridge)
{
  int r;

  if (b->len && b->src_fd == f->src_fd && src == b->src + b->len && dst == b->dst + b->len) {
    b->parts[b->nparts - 1].len += len;
    b->len += len;
    return 0;
  }
  if (bridge) {
    b->len = src + len - b->src;
    return add_part(b, src, dst, len);
  }
  if ((r = flush_run(b)) < 0)
    return r;
  b->src_fd = f->src_fd;
  b->src_name = f->src_name;
  b->src = src;
  b->dst = dst;
  b->len = len;
  return add_part(b, src, dst, len);
}

/* Step 2 for one fill.  Caller holds l->lock; the fill's L2 tables exist. */
static int
fill_one_locked(struct bulk *b, const struct ovl_fill *f)
{
  struct ovl_layer *l = b->l;
  uint64_t pos = f->offset, end = f->offset + f->length;
  uint64_t first = pos >> l->cluster_bits, last = (end - 1) >> l->cluster_bits;
  int r;

  for (uint64_t c = first; c <= last; c++) {
    struct ovl_l2 *t = atomic_load_explicit(&l->l1[c / OVL_L2_ENTRIES], memory_order_relaxed);
    struct ovl_entry *e = &t->e[c % OVL_L2_ENTRIES];
    uint64_t cstart = c << l->cluster_bits;
    uint64_t a = pos > cstart ? pos : cstart;
    uint64_t z = end < cstart + l->cluster_size ? end : cstart + l->cluster_size;
    uint64_t src = f->src_offset + (a - pos);
    uint64_t phys = atomic_load_explicit(&e->phys, memory_order_relaxed);
    bool bridge = false;

    if (phys == 0) {
      uint64_t at = l->frontier;
      /* A bridge: the run ends at the frontier, this fill starts a fresh cluster, the source
       * gap is whole blocks; leave as much room as the gap in the file, so one clone covers
       * run, gap and fill.  The room is past the old frontier: nothing was ever written there. */
      if (c == first && a == cstart && (f->flags & OVL_FILL_BRIDGE) && !b->no_clone &&
          ovl_io->clone_range && b->len && b->src_fd == f->src_fd && b->dst + b->len == at &&
          src > b->src + b->len && (src - (b->src + b->len)) % OVL_BLOCK == 0) {
        at += src - (b->src + b->len);
        bridge = true;
      }
      atomic_store_explicit(&e->phys, at, memory_order_release);
      l->frontier = at + l->cluster_size;
      phys = at;
    }
    if ((r = gather(b, f, src, phys + (a - cstart), z - a, bridge)) < 0)
      return r;
    /* A last sub-cluster that straddles the virtual size is in the file whole (FORMAT.md 5.3
     * (2)). */
    if (z == end && (end & (l->sc_size - 1)) != 0) {
      uint64_t need = phys + (z - cstart) + (l->sc_size - (end & (l->sc_size - 1)));
      if (need > b->need_size)
        b->need_size = need;
    }
  }
  return 0;
}

/* Step 3 for one fill, after every byte is written.  Caller holds l->lock. */
static int
publish_locked(struct ovl_layer *l, const struct ovl_fill *f)
{
  uint64_t pos = f->offset, end = f->offset + f->length;
  uint64_t first = pos >> l->cluster_bits, last = (end - 1) >> l->cluster_bits;
  int r;

  for (uint64_t c = first; c <= last; c++) {
    struct ovl_l2 *t = atomic_load_explicit(&l->l1[c / OVL_L2_ENTRIES], memory_order_relaxed);
    struct ovl_entry *e = &t->e[c % OVL_L2_ENTRIES];
    uint64_t cstart = c << l->cluster_bits;
    uint64_t a = pos > cstart ? pos : cstart;
    uint64_t z = end < cstart + l->cluster_size ? end : cstart + l->cluster_size;
    uint32_t mask = ovl_sc_mask((unsigned)((a - cstart) >> l->sc_bits),
                                (unsigned)((z - 1 - cstart) >> l->sc_bits));
    uint64_t bits = atomic_load_explicit(&e->bits, memory_order_relaxed);

    atomic_store_explicit(&e->bits,
                          ovl_bits_make(ovl_bits_alloc(bits) | mask, ovl_bits_zero(bits) & ~mask),
                          memory_order_release);
    if ((c == last || c % OVL_L2_ENTRIES == OVL_L2_ENTRIES - 1) &&
        (r = ovl_mark_dirty(l, (uint32_t)(c / OVL_L2_ENTRIES))) < 0)
      return r;
  }
  return 0;
}

/* Steps 1-3 for fills f[0..n).  Caller holds l->lock. */
static int
fill_locked(struct bulk *b, const struct ovl_fill *f, size_t n)
{
  struct ovl_layer *l = b->l;
  int r;

  if ((r = ovl_set_dirty_locked(l)) < 0)
    return r;
  /* 1: tables */
  for (size_t k = 0; k < n; k++) {
    uint64_t first = f[k].offset >> l->cluster_bits;
    uint64_t last = (f[k].offset + f[k].length - 1) >> l->cluster_bits;
    for (uint64_t c = first; c <= last; c = (c / OVL_L2_ENTRIES + 1) * OVL_L2_ENTRIES) {
      if (!ovl_l2_get_or_create(l, c))
        return -errno;
      /* bound clusters are written by the next flush even if this fill fails (leaked space) */
      if ((r = ovl_mark_dirty(l, (uint32_t)(c / OVL_L2_ENTRIES))) < 0)
        return r;
    }
  }
  /* 2: bind and copy */
  b->need_size = 0;
  for (size_t k = 0; k < n; k++)
    if ((r = fill_one_locked(b, &f[k])) < 0)
      return r;
  if ((r = flush_run(b)) < 0)
    return r;
  if (b->need_size) {
    struct stat st;
    if (fstat(l->fd, &st) == -1)
      return cc_error_set(errno, "copy: %s: %s", l->path, strerror(errno));
    if ((uint64_t)st.st_size < b->need_size && ovl_io->ftruncate(l->fd, (off_t)b->need_size) == -1)
      return cc_error_set(errno, "copy: %s: extend: %s", l->path, strerror(errno));
  }
  /* 3: publish */
  for (size_t k = 0; k < n; k++)
    if ((r = publish_locked(l, &f[k])) < 0)
      return r;
  return 0;
}

static int
check_fill(struct ovl_layer *l, const struct ovl_fill *f)
{
  uint64_t end;

  if (f->offset > l->hdr.virtual_size || f->length > l->hdr.virtual_size - f->offset)
    return cc_error_set(EINVAL,
                        "copy: %s: range %" PRIu64 "+%" PRIu64 " beyond the virtual size %" PRIu64,
                        l->path, f->offset, f->length, l->hdr.virtual_size);
  end = f->offset + f->length;
  if ((f->offset & (l->sc_size - 1)) != 0 ||
      ((end & (l->sc_size - 1)) != 0 && end != l->hdr.virtual_size))
    return cc_error_set(
        EINVAL, "copy: %s: range %" PRIu64 "+%" PRIu64 " is not whole sub-clusters of %" PRIu64,
        l->path, f->offset, f->length, l->sc_size);
  return 0;
}

static int
check_layer(struct ovl_layer *l)
{
  if (!(l->flags & OVL_RDWR))
    return cc_error_set(EPERM, "copy: %s: layer is open read-only", l->path);
  if (atomic_load_explicit(&l->sync_error, memory_order_relaxed))
    return ovl_check_sync_error(l, "copy");
  return 0;
}

int
ovl_copy_in(struct ovl_layer *l, uint64_t offset, uint64_t length, int src_fd, uint64_t src_offset,
            const char *src_name)
{
  struct ovl_fill f = {offset, length, src_fd, src_offset, src_name, 0};
  struct bulk b = {.l = l};
  uint64_t pos = offset, end = offset + length;
  int r;

  if ((r = check_layer(l)) < 0 || (r = check_fill(l, &f)) < 0)
    return r;
  while (pos < end && r == 0) {
    uint64_t stretch = (uint64_t)OVL_L2_ENTRIES << l->cluster_bits;
    uint64_t z = (pos / stretch + 1) * stretch;
    struct ovl_fill one = f;

    if (z > end)
      z = end;
    one.offset = pos;
    one.length = z - pos;
    one.src_offset = src_offset + (pos - offset);
    pthread_mutex_lock(&l->lock);
    r = fill_locked(&b, &one, 1);
    pthread_mutex_unlock(&l->lock);
    pos = z;
  }
  free(b.parts);
  free(b.buf);
  return r;
}

int
ovl_copy_in_fills(struct ovl_layer *l, const struct ovl_fill *fills, size_t n,
                  ovl_fill_progress_fn progress, void *opaque)
{
  struct bulk b = {.l = l, .progress = progress, .opaque = opaque};
  int r;

  if ((r = check_layer(l)) < 0)
    return r;
  for (size_t i = 0; i < n; i++) {
    if ((r = check_fill(l, &fills[i])) < 0)
      return r;
    if (fills[i].length == 0)
      return cc_error_set(EINVAL, "copy: %s: empty fill at %" PRIu64, l->path, fills[i].offset);
  }
  if (n == 0)
    return 0;
  pthread_mutex_lock(&l->lock);
  r = fill_locked(&b, fills, n);
  pthread_mutex_unlock(&l->lock);
  free(b.parts);
  free(b.buf);
  return r;
}
