/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: the map (FORMAT.md section 5) in memory and on disk.
 *
 * In memory the map mirrors the file: an array of l1_entries pointers, each NULL (no L2 table:
 * 256 clusters unallocated) or an L2 table of 256 atomic entries.  Memory therefore grows with
 * the 32 MiB regions (at 128 KiB clusters) that were ever written, plus 8 bytes per region of
 * virtual size for the pointer array.
 *
 * Loading validates every invariant of FORMAT.md section 5.3 before the layer is usable, so the
 * rest of overlay/ never sees an entry that points outside the file or at another cluster.
 *
 * Lookups (ovl_map, ovl_pread) live here too: they take no lock (overlay.h, "Concurrency").
 *
 * Flushing follows FORMAT.md section 7.2: sync data, write changed L2 tables, sync, write the
 * L1 blocks that gained tables, sync.  Changes stay marked until their write succeeded, so a
 * failed flush (ENOSPC, EIO) is retried whole by the next one.
 *
 * A client's flush (ovl_map_flush) does not hold the layer lock across its syncs: first writes
 * need that lock, and an fdatasync that waits for a journal commit held every first write of
 * every connection for its whole length (a live merge's 128 MiB made that 150-170 ms).  Under
 * the lock it takes a *snapshot*: every dirty table encoded into a buffer, and every L1 block
 * that gains a table encoded too, then the dirty marks cleared; without it, it syncs the data
 * and writes the snapshot in the 7.2 order.  That is enough for 7.2's rule "data before map":
 * a first write publishes its bits only after its data is written (write.c), so every entry of
 * the snapshot names bytes already written, which the first sync makes durable; and an L1 block
 * of the snapshot names only tables that are either already durable or in the snapshot (every
 * table not yet in the durable L1 is in the dirty list, all of which the snapshot takes).
 * Changes made while the flush runs are marked again and go to the next flush.  Flushes run one
 * at a time (flush_lock, taken before `lock`), so snapshots reach the file in order; a failed
 * write marks the snapshot's tables dirty again.  Above FLUSH_SNAPSHOT_MAX tables the buffers
 * would be large, and the flush holds the lock as before.
 */
#include "overlay/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct object {
  uint64_t off, len;
  uint32_t l1, l2; /* l2 == UINT32_MAX: the object is the L2 table itself */
};

static int
cmp_object(const void *a, const void *b)
{
  const struct object *x = a, *y = b;

  return x->off < y->off ? -1 : x->off > y->off;
}

static void
describe(char *buf, size_t len, const struct object *o)
{
  if (o->l2 == UINT32_MAX)
    snprintf(buf, len, "L2 table of L1 entry %" PRIu32 " at %" PRIu64, o->l1, o->off);
  else
    snprintf(buf, len, "cluster %" PRIu64 " (L1 %" PRIu32 " L2 %" PRIu32 ") at %" PRIu64,
             (uint64_t)o->l1 * OVL_L2_ENTRIES + o->l2, o->l1, o->l2, o->off);
}

/* Does the file reach `end`?  An unlocked open (OVL_NOLOCK: info, a merge probing a served
 * top) may read a map that its writer flushed after our fstat, naming bytes the file gained
 * since.  The writer extends the file before it flushes the entries naming the new bytes
 * (FORMAT.md 7.2), so the file's size *now* covers everything a table read earlier names: ask
 * again before calling the map truncated.  Only a failing check pays the fstat. */
static bool
file_reaches(struct ovl_layer *l, uint64_t end)
{
  struct stat st;

  if (end <= l->file_size)
    return true;
  if ((l->flags & OVL_NOLOCK) && fstat(l->fd, &st) == 0 && (uint64_t)st.st_size > l->file_size)
    l->file_size = (uint64_t)st.st_size;
  return end <= l->file_size;
}

/* Check one decoded L2 entry against FORMAT.md section 5.3 (1, 2, 4). */
static int
check_entry(struct ovl_layer *l, uint32_t i, uint32_t j, uint64_t phys, uint32_t alloc,
            uint32_t zero)
{
  uint64_t cluster = (uint64_t)i * OVL_L2_ENTRIES + j;
  uint64_t cstart = cluster << l->cluster_bits;
  const char *p = l->path;

  if (alloc & zero)
    return cc_error_set(EUCLEAN,
                        "open: %s: cluster %" PRIu64
                        ": sub-clusters both allocated and zero (0x%08" PRIx32 ")",
                        p, cluster, alloc & zero);
  if (alloc && phys == 0)
    return cc_error_set(
        EUCLEAN, "open: %s: cluster %" PRIu64 ": allocated sub-clusters but no cluster offset", p,
        cluster);
  if (phys && (phys % OVL_BLOCK != 0 || phys < l->data_start ||
               phys > OVL_MAX_FILE_OFFSET - l->cluster_size))
    return cc_error_set(EUCLEAN, "open: %s: cluster %" PRIu64 ": cluster offset %" PRIu64 " is %s",
                        p, cluster, phys,
                        phys % OVL_BLOCK       ? "not aligned to 4096"
                        : phys < l->data_start ? "inside the header or L1 table"
                                               : "beyond the largest file offset (2^62)");
  if (cstart >= l->hdr.virtual_size) {
    if (phys || alloc || zero)
      return cc_error_set(
          EUCLEAN, "open: %s: cluster %" PRIu64 " lies beyond the virtual size but is not empty", p,
          cluster);
    return 0;
  }
  if (cstart + l->cluster_size > l->hdr.virtual_size) {
    /* sub-clusters wholly beyond the virtual size must be empty */
    uint64_t used = (l->hdr.virtual_size - cstart + l->sc_size - 1) >> l->sc_bits;
    uint32_t beyond = used >= 32 ? 0 : ~ovl_sc_mask(0, (unsigned)used - 1);
    if ((alloc | zero) & beyond)
      return cc_error_set(
          EUCLEAN, "open: %s: cluster %" PRIu64 ": sub-clusters beyond the virtual size are set", p,
          cluster);
  }
  /* FORMAT.md 5.3 (2): every allocated sub-cluster lies wholly inside the file, all sc_size
   * bytes of it even when it straddles virtual_size; the bound cluster itself may extend past
   * EOF (a cluster whose first sub-cluster was written), so only up to the last allocated
   * sub-cluster is checked. */
  if (alloc) {
    unsigned last = 31 - (unsigned)__builtin_clz(alloc);
    if (!file_reaches(l, phys + ((uint64_t)last + 1) * l->sc_size))
      return cc_error_set(EUCLEAN,
                          "open: %s: cluster %" PRIu64 ": allocated data at %" PRIu64
                          " lies past the end of the file (%" PRIu64 " bytes): truncated?",
                          p, cluster, phys, l->file_size);
  }
  return 0;
}

int
ovl_map_load(struct ovl_layer *l)
{
  uint32_t n = l->hdr.l1_entries;
  uint8_t *l1raw = NULL, *l2raw = NULL;
  struct object *obj = NULL;
  size_t nobj = 0, cap = 0;
  int r = 0;

  /* before allocating anything sized by the header: a short file cannot hold that L1 table */
  if (l->file_size < l->data_start)
    return cc_error_set(EUCLEAN,
                        "open: %s: file is truncated (%" PRIu64
                        " bytes, the L1 table ends at %" PRIu64 ")",
                        l->path, l->file_size, l->data_start);
  l->l1 = calloc(n, sizeof *l->l1);
  l1raw = malloc((size_t)n * 8);
  l2raw = malloc(OVL_BLOCK);
  if (!l->l1 || !l1raw || !l2raw) {
    r = cc_error_set(ENOMEM, "open: %s: out of memory for the map", l->path);
    goto out;
  }
  r = ovl_pread_full(l, l1raw, (uint64_t)n * 8, l->hdr.l1_offset);
  if (r < 0)
    goto out;

  for (uint32_t i = 0; i < n; i++) {
    uint64_t off = get_le64(l1raw + (size_t)i * 8);
    struct ovl_l2 *t;

    if (off == 0)
      continue;
    if (off % OVL_BLOCK != 0 || off < l->data_start || off > OVL_MAX_FILE_OFFSET ||
        !file_reaches(l, off + OVL_BLOCK)) {
      r = cc_error_set(EUCLEAN, "open: %s: L1 entry %" PRIu32 ": L2 table offset %" PRIu64 " is %s",
                       l->path, i, off,
                       off % OVL_BLOCK       ? "not aligned to 4096"
                       : off < l->data_start ? "inside the header or L1 table"
                                             : "past the end of the file");
      goto out;
    }
    r = ovl_pread_full(l, l2raw, OVL_BLOCK, off);
    if (r < 0)
      goto out;
    t = calloc(1, sizeof *t);
    if (!t) {
      r = cc_error_set(ENOMEM, "open: %s: out of memory for the map", l->path);
      goto out;
    }
    t->disk_offset = off;
    atomic_store_explicit(&l->l1[i], t, memory_order_relaxed);
    if (nobj + OVL_L2_ENTRIES + 1 > cap) {
      size_t ncap = cap ? cap * 2 : 1024;
      while (ncap < nobj + OVL_L2_ENTRIES + 1)
        ncap *= 2;
      struct object *no = realloc(obj, ncap * sizeof *obj);
      if (!no) {
        r = cc_error_set(ENOMEM, "open: %s: out of memory for the map", l->path);
        goto out;
      }
      obj = no;
      cap = ncap;
    }
    obj[nobj++] = (struct object){off, OVL_BLOCK, i, UINT32_MAX};
    for (uint32_t j = 0; j < OVL_L2_ENTRIES; j++) {
      const uint8_t *e = l2raw + (size_t)j * OVL_L2_ENTRY_SIZE;
      uint64_t phys = get_le64(e);
      uint32_t alloc = get_le32(e + 8), zero = get_le32(e + 12);

      r = check_entry(l, i, j, phys, alloc, zero);
      if (r < 0)
        goto out;
      atomic_store_explicit(&t->e[j].phys, phys, memory_order_relaxed);
      atomic_store_explicit(&t->e[j].bits, ovl_bits_make(alloc, zero), memory_order_relaxed);
      if (phys)
        obj[nobj++] = (struct object){phys, l->cluster_size, i, j};
    }
  }

  /* FORMAT.md 5.3 (3): referenced objects are pairwise disjoint (and, checked above, all lie at
   * or after data_start, so none overlaps the header or L1). */
  l->frontier = l->data_start;
  if (nobj) {
    qsort(obj, nobj, sizeof *obj, cmp_object);
    for (size_t k = 0; k + 1 < nobj; k++) {
      if (obj[k].off + obj[k].len > obj[k + 1].off) {
        char a[128], b[128];
        describe(a, sizeof a, &obj[k]);
        describe(b, sizeof b, &obj[k + 1]);
        r = cc_error_set(EUCLEAN, "open: %s: %s overlaps %s", l->path, a, b);
        goto out;
      }
    }
    l->frontier = obj[nobj - 1].off + obj[nobj - 1].len;
  }

out:
  free(l1raw);
  free(l2raw);
  free(obj);
  return r;
}

void
ovl_map_free(struct ovl_layer *l)
{
  if (l->l1) {
    for (uint32_t i = 0; i < l->hdr.l1_entries; i++)
      free(atomic_load_explicit(&l->l1[i], memory_order_relaxed));
    free(l->l1);
    l->l1 = NULL;
  }
  free(l->dirty_l2);
  l->dirty_l2 = NULL;
}

/* Remember that L2 table i (or its L1 entry) must be written by the next flush. */
static int
remember_dirty(struct ovl_layer *l, uint32_t i, struct ovl_l2 *t)
{
  if (t->dirty || t->l1_dirty)
    return 0;
  if (l->ndirty_l2 == l->dirty_cap) {
    size_t ncap = l->dirty_cap ? l->dirty_cap * 2 : 64;
    uint32_t *n = realloc(l->dirty_l2, ncap * sizeof *n);
    if (!n)
      return cc_error_set(ENOMEM, "write: %s: out of memory", l->path);
    l->dirty_l2 = n;
    l->dirty_cap = ncap;
  }
  l->dirty_l2[l->ndirty_l2++] = i;
  return 0;
}

int
ovl_mark_dirty(struct ovl_layer *l, uint32_t i)
{
  struct ovl_l2 *t = atomic_load_explicit(&l->l1[i], memory_order_relaxed);
  int r = remember_dirty(l, i, t);

  if (r == 0)
    t->dirty = true;
  return r;
}

/* The L2 table covering `cluster`, allocating one at the frontier if there is none.  Caller
 * holds l->lock.  Returns NULL (message set, errno set) on failure. */
struct ovl_l2 *
ovl_l2_get_or_create(struct ovl_layer *l, uint64_t cluster)
{
  uint32_t i = (uint32_t)(cluster / OVL_L2_ENTRIES);
  struct ovl_l2 *t = atomic_load_explicit(&l->l1[i], memory_order_relaxed);
  int r;

  if (t)
    return t;
  r = ovl_set_dirty_locked(l);
  if (r < 0) {
    errno = -r;
    return NULL;
  }
  t = calloc(1, sizeof *t);
  if (!t) {
    errno = ENOMEM;
    cc_error_set(ENOMEM, "write: %s: out of memory", l->path);
    return NULL;
  }
  r = remember_dirty(l, i, t);
  if (r < 0) {
    free(t);
    errno = -r;
    return NULL;
  }
  t->disk_offset = l->frontier;
  t->dirty = true;
  t->l1_dirty = true;
  l->frontier += OVL_BLOCK;
  atomic_store_explicit(&l->l1[i], t, memory_order_release);
  return t;
}

static void
encode_l2(const struct ovl_l2 *t, uint8_t *buf)
{
  for (uint32_t j = 0; j < OVL_L2_ENTRIES; j++) {
    uint8_t *e = buf + (size_t)j * OVL_L2_ENTRY_SIZE;
    uint64_t bits = atomic_load_explicit(&t->e[j].bits, memory_order_relaxed);

    put_le64(e, atomic_load_explicit(&t->e[j].phys, memory_order_relaxed));
    put_le32(e + 8, ovl_bits_alloc(bits));
    put_le32(e + 12, ovl_bits_zero(bits));
  }
}

static int
cmp_u32(const void *a, const void *b)
{
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

  return x < y ? -1 : x > y;
}

/* Encode L1 block `block` (OVL_BLOCK / 8 entries, fewer in the last) from the tables in memory
 * into buf; returns how many entries it holds.  Caller holds l->lock. */
static uint32_t
encode_l1_block(struct ovl_layer *l, uint64_t block, uint8_t *buf)
{
  uint32_t first = (uint32_t)(block * OVL_BLOCK / 8), count = OVL_BLOCK / 8;

  if (first + count > l->hdr.l1_entries)
    count = l->hdr.l1_entries - first;
  memset(buf, 0, OVL_BLOCK);
  for (uint32_t e = 0; e < count; e++) {
    struct ovl_l2 *t = atomic_load_explicit(&l->l1[first + e], memory_order_relaxed);
    put_le64(buf + (size_t)e * 8, t ? t->disk_offset : 0);
  }
  return count;
}

static int
sync_fd(struct ovl_layer *l)
{
  return ovl_sync(l, "flush");
}

/* FORMAT.md section 7.2.  Caller holds l->lock, so no map change races with it. */
int
ovl_map_flush_locked(struct ovl_layer *l)
{
  uint8_t buf[OVL_BLOCK];
  bool l1_changed = false;
  int r;

  /* step 1: data (and anything else written so far) is durable */
  r = sync_fd(l);
  if (r < 0 || l->ndirty_l2 == 0)
    return r;

  /* step 2 + 3: changed L2 tables */
  qsort(l->dirty_l2, l->ndirty_l2, sizeof *l->dirty_l2, cmp_u32);
  for (size_t k = 0; k < l->ndirty_l2; k++) {
    struct ovl_l2 *t = atomic_load_explicit(&l->l1[l->dirty_l2[k]], memory_order_relaxed);

    l1_changed |= t->l1_dirty;
    if (!t->dirty)
      continue;
    encode_l2(t, buf);
    r = ovl_pwrite_full(l, buf, OVL_BLOCK, t->disk_offset);
    if (r < 0)
      return r;
  }
  r = sync_fd(l);
  if (r < 0)
    return r;
  for (size_t k = 0; k < l->ndirty_l2; k++)
    atomic_load_explicit(&l->l1[l->dirty_l2[k]], memory_order_relaxed)->dirty = false;

  /* step 4 + 5: L1 blocks that gained tables; dirty_l2 is sorted, so each block once */
  if (l1_changed) {
    uint64_t last_block = UINT64_MAX;
    for (size_t k = 0; k < l->ndirty_l2; k++) {
      uint32_t i = l->dirty_l2[k];
      uint64_t block = (uint64_t)i * 8 / OVL_BLOCK;
      uint32_t count;

      if (!atomic_load_explicit(&l->l1[i], memory_order_relaxed)->l1_dirty || block == last_block)
        continue;
      last_block = block;
      count = encode_l1_block(l, block, buf);
      r = ovl_pwrite_full(l, buf, (uint64_t)count * 8, l->hdr.l1_offset + block * OVL_BLOCK);
      if (r < 0)
        return r;
    }
    r = sync_fd(l);
    if (r < 0)
      return r;
  }
  for (size_t k = 0; k < l->ndirty_l2; k++)
    atomic_load_explicit(&l->l1[l->dirty_l2[k]], memory_order_relaxed)->l1_dirty = false;
  l->ndirty_l2 = 0;
  return 0;
}

/* ---- lookups: ovl_map and ovl_pread, lock-free (overlay.h, "Concurrency") ---- */

/* State of sub-cluster k given an entry's bits. */
static enum ovl_state
sc_state(uint64_t bits, unsigned k)
{
  if (ovl_bits_alloc(bits) >> k & 1)
    return OVL_DATA;
  if (ovl_bits_zero(bits) >> k & 1)
    return OVL_ZERO;
  return OVL_UNALLOCATED;
}

int
ovl_map(struct ovl_layer *l, uint64_t offset, uint64_t length, struct ovl_extent *ext, size_t max)
{
  uint64_t end, pos;
  size_t n = 0;

  if (l->map_dropped)
    return cc_error_set(EINVAL, "map: %s: the map was dropped (the layer is read through an index)",
                        l->path);
  if (offset > l->hdr.virtual_size)
    return cc_error_set(EINVAL, "map: %s: offset %" PRIu64 " beyond the virtual size", l->path,
                        offset);
  end = length > l->hdr.virtual_size - offset ? l->hdr.virtual_size : offset + length;
  pos = offset;
  while (pos < end && max > 0) {
    uint64_t cluster = pos >> l->cluster_bits;
    uint32_t i = (uint32_t)(cluster / OVL_L2_ENTRIES);
    struct ovl_l2 *t = atomic_load_explicit(&l->l1[i], memory_order_acquire);
    enum ovl_state st;
    uint64_t run_end, phys = 0;

    if (!t) {
      st = OVL_UNALLOCATED;
      run_end = ((uint64_t)(i + 1) * OVL_L2_ENTRIES) << l->cluster_bits;
    } else {
      struct ovl_entry *e = &t->e[cluster % OVL_L2_ENTRIES];
      uint64_t bits = atomic_load_explicit(&e->bits, memory_order_acquire);
      unsigned k = (unsigned)((pos >> l->sc_bits) & 31);
      uint64_t cstart = cluster << l->cluster_bits;

      uint32_t same, alloc = ovl_bits_alloc(bits), zero = ovl_bits_zero(bits);

      st = sc_state(bits, k);
      /* sub-clusters k.. in state st: count the ones of its mask from k in one step */
      same = st == OVL_DATA ? alloc : st == OVL_ZERO ? zero : ~(alloc | zero);
      same >>= k;
      k += same == UINT32_MAX ? 32 - k : (unsigned)__builtin_ctz(~same);
      run_end = cstart + ((uint64_t)k << l->sc_bits);
      if (st == OVL_UNALLOCATED && k == 32) {
        /* The rest of the cluster is unallocated: so are the following empty entries of this
         * table.  A sparse layer has every table present and few entries set; stepping entry
         * by entry through the loop was most of an index build (BENCHMARKS.md, finding A.2). */
        uint32_t j = (uint32_t)(cluster % OVL_L2_ENTRIES) + 1;

        while (j < OVL_L2_ENTRIES && run_end < end &&
               atomic_load_explicit(&t->e[j].bits, memory_order_acquire) == 0) {
          run_end += l->cluster_size;
          j++;
        }
      }
      if (st == OVL_DATA)
        phys = atomic_load_explicit(&e->phys, memory_order_relaxed) + (pos - cstart);
    }
    if (run_end > end)
      run_end = end;
    if (n > 0 && ext[n - 1].state == st &&
        (st != OVL_DATA || ext[n - 1].phys + ext[n - 1].length == phys)) {
      ext[n - 1].length += run_end - pos;
    } else {
      if (n == max)
        break;
      ext[n++] = (struct ovl_extent){pos, run_end - pos, phys, st};
    }
    pos = run_end;
  }
  return (int)n;
}

int
ovl_pread(struct ovl_layer *l, void *buf, uint64_t length, uint64_t offset, ovl_below_fn below,
          void *opaque)
{
  struct ovl_extent ext[32];
  uint8_t *p = buf;

  if (offset > l->hdr.virtual_size || length > l->hdr.virtual_size - offset)
    return cc_error_set(EINVAL,
                        "read: %s: range %" PRIu64 "+%" PRIu64 " beyond the virtual size %" PRIu64,
                        l->path, offset, length, l->hdr.virtual_size);
  while (length > 0) {
    int n = ovl_map(l, offset, length, ext, 32);
    if (n < 0)
      return n;
    for (int k = 0; k < n; k++) {
      int r = 0;
      switch (ext[k].state) {
      case OVL_DATA:
        r = ovl_pread_full(l, p, ext[k].length, ext[k].phys);
        break;
      case OVL_ZERO:
        memset(p, 0, ext[k].length);
        break;
      case OVL_UNALLOCATED:
        if (below)
          r = below(opaque, p, ext[k].length, ext[k].offset);
        else
          memset(p, 0, ext[k].length);
        break;
      }
      if (r < 0)
        return r;
      p += ext[k].length;
      offset += ext[k].length;
      length -= ext[k].length;
    }
  }
  return 0;
}

#define FLUSH_SNAPSHOT_MAX 4096 /* tables (16 MiB of buffers): beyond, the locked flush */

struct flush_table {
  uint32_t i;
  uint64_t disk_offset;
  bool dirty, l1_dirty;
};

/* Mark the snapshot's tables dirty again after a failed write.  Caller holds l->lock.  If the
 * dirty list cannot grow, nothing would ever rewrite those tables: the layer then refuses
 * writes and flushes until reopened, as after a failed sync (its durable map is consistent). */
static void
flush_remark(struct ovl_layer *l, const struct flush_table *ft, size_t n)
{
  for (size_t k = 0; k < n; k++) {
    struct ovl_l2 *t = atomic_load_explicit(&l->l1[ft[k].i], memory_order_relaxed);

    if (remember_dirty(l, ft[k].i, t) < 0) {
      atomic_store_explicit(&l->sync_error, ENOMEM, memory_order_relaxed);
      return;
    }
    t->dirty |= ft[k].dirty;
    t->l1_dirty |= ft[k].l1_dirty;
  }
}

int
ovl_map_flush(struct ovl_layer *l)
{
  struct flush_table *ft = NULL;
  uint8_t *tables = NULL, *l1blocks = NULL;
  uint64_t *l1at = NULL;
  uint32_t *l1count = NULL;
  size_t n, nblocks = 0;
  int r = 0;

  pthread_mutex_lock(&l->flush_lock);
  pthread_mutex_lock(&l->lock);
  n = l->ndirty_l2;
  if (n == 0) {
    pthread_mutex_unlock(&l->lock);
    r = sync_fd(l);
    goto out;
  }
  if (n <= FLUSH_SNAPSHOT_MAX) {
    ft = malloc(n * sizeof *ft);
    tables = malloc(n * OVL_BLOCK);
    l1blocks = malloc(n * OVL_BLOCK);
    l1at = malloc(n * sizeof *l1at);
    l1count = malloc(n * sizeof *l1count);
  }
  if (!ft || !tables || !l1blocks || !l1at || !l1count) {
    r = ovl_map_flush_locked(l); /* too many tables for buffers, or no memory for them */
    pthread_mutex_unlock(&l->lock);
    goto out;
  }

  /* the snapshot: tables, then the L1 blocks (dirty_l2 sorted: each block once) */
  qsort(l->dirty_l2, n, sizeof *l->dirty_l2, cmp_u32);
  for (size_t k = 0; k < n; k++) {
    uint32_t i = l->dirty_l2[k];
    struct ovl_l2 *t = atomic_load_explicit(&l->l1[i], memory_order_relaxed);
    uint64_t block = (uint64_t)i * 8 / OVL_BLOCK;

    ft[k] = (struct flush_table){i, t->disk_offset, t->dirty, t->l1_dirty};
    if (t->dirty)
      encode_l2(t, tables + k * OVL_BLOCK);
    if (t->l1_dirty && (nblocks == 0 || l1at[nblocks - 1] != block)) {
      l1count[nblocks] = encode_l1_block(l, block, l1blocks + nblocks * OVL_BLOCK);
      l1at[nblocks++] = block;
    }
    t->dirty = false;
    t->l1_dirty = false;
  }
  l->ndirty_l2 = 0;
  pthread_mutex_unlock(&l->lock);

  /* FORMAT.md 7.2 without the lock: data, tables, L1 */
  r = sync_fd(l);
  for (size_t k = 0; r == 0 && k < n; k++)
    if (ft[k].dirty)
      r = ovl_pwrite_full(l, tables + k * OVL_BLOCK, OVL_BLOCK, ft[k].disk_offset);
  if (r == 0)
    r = sync_fd(l);
  for (size_t b = 0; r == 0 && b < nblocks; b++)
    r = ovl_pwrite_full(l, l1blocks + b * OVL_BLOCK, (uint64_t)l1count[b] * 8,
                        l->hdr.l1_offset + l1at[b] * OVL_BLOCK);

  if (r == 0 && nblocks)
    r = sync_fd(l);
  if (r < 0) {
    pthread_mutex_lock(&l->lock);
    flush_remark(l, ft, n);
    pthread_mutex_unlock(&l->lock);
  }
out:
  pthread_mutex_unlock(&l->flush_lock);
  free(ft);
  free(tables);
  free(l1blocks);
  free(l1at);
  free(l1count);
  return r;
}
