/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: clones larger than their source, and growing a clone (POOL.md section 5.9).
 *
 * Design notes
 * ------------
 * Only a clone's writable top ever changes size; its snapshots, its template and every layer
 * below keep theirs, and the part of the disk beyond a lower layer's size reads as zero
 * (FORMAT.md 7.3.1), so a clone created with --size or grown later needs no data written.
 * Growing is refused while a server holds the clone (the exclusive lock on its top): a
 * connection must never see its disk change size under it; the next open sees the new size.
 *
 * Steps of `clone resize` (each leaves the pool as before or as after):
 *
 *   in place (the new size fits the top's L1 region, always up to 16 GiB with 128 KiB
 *   clusters): one header write grows the top (ovl_grow), then the clone record gets the new
 *   size.  A crash between the two leaves a record smaller than its top; running the same
 *   resize again finds the top already grown and only rewrites the record.
 *
 *   by copy (a larger L1 region is needed): a new layer of the new size with the old top's
 *   parent link is made in tmp/, the old top's own sub-clusters (data and zero) are copied
 *   into it (copy_file_range where the file system can share blocks), it is made durable and
 *   renamed into layers/, the record is replaced to name it, and the old top is removed.  The
 *   cost is the clone's own data since its last snapshot, never the template's.
 *
 * Shrinking is refused: the guest's file systems end where the disk ended, and bytes beyond
 * the new end would be lost.
 */
#include "pool/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAP_BATCH 64
#define SIZE_MAX_DISK (UINT64_C(1) << 62) /* FORMAT.md 8: the largest virtual size */

int
pool_clone_size(const char *name, uint64_t src_size, uint64_t *size)
{
  char a[32], b[32];

  if (*size == 0) {
    *size = src_size;
    return 0;
  }
  if (*size > SIZE_MAX_DISK)
    return cc_error_set(EINVAL, "clone create: %s: size %" PRIu64 " is beyond the limit (2^62)",
                        name, *size);
  *size = (*size + 511) / 512 * 512;
  if (*size < src_size) {
    pool_size_str(*size, a, sizeof a);
    pool_size_str(src_size, b, sizeof b);
    return cc_error_set(EINVAL,
                        "clone create: %s: --size %s is smaller than the source (%s); a clone "
                        "can only be as large or larger",
                        name, a, b);
  }
  return 0;
}

void
pool_size_str(uint64_t n, char *buf, size_t len)
{
  static const char *unit[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  unsigned u = 0;
  uint64_t v = n;

  while (v >= 1024 && v % 1024 == 0 && u + 1 < sizeof unit / sizeof unit[0]) {
    v /= 1024;
    u++;
  }
  snprintf(buf, len, "%" PRIu64 " %s", v, unit[u]);
}

/* Copy the own sub-clusters of `src` (data and zero) into the empty layer `dst`. */
static int
copy_own(struct ovl_layer *src, struct ovl_layer *dst)
{
  uint64_t size = ovl_virtual_size(src), pos = 0;
  uint64_t sc = ovl_sc_size(dst);
  struct ovl_extent ext[MAP_BATCH];
  char *tail = NULL;
  int n, r = 0;

  while (pos < size) {
    n = ovl_map(src, pos, size - pos, ext, MAP_BATCH);
    if (n <= 0)
      return n < 0 ? n : cc_error_set(EIO, "resize: %s: map ends early", ovl_path(src));
    for (int k = 0; k < n && r == 0; k++) {
      const struct ovl_extent *e = &ext[k];
      uint64_t whole = e->length / sc * sc;

      if (e->state == OVL_ZERO) {
        r = ovl_zero(dst, e->length, e->offset, 0, NULL, NULL);
      } else if (e->state == OVL_DATA) {
        /* Sub-cluster aligned except where the old disk ended inside a sub-cluster: that
         * tail goes through a normal write, whose copy-up of the rest reads zero. */
        if (whole)
          r = ovl_copy_in(dst, e->offset, whole, ovl_fd(src), e->phys, ovl_path(src));
        if (r == 0 && whole < e->length) {
          size_t t = (size_t)(e->length - whole);

          if (!(tail = malloc(t)))
            return cc_error_set(ENOMEM, "resize: out of memory");
          if (pread(ovl_fd(src), tail, t, (off_t)(e->phys + whole)) != (ssize_t)t)
            r = cc_error_set(EIO, "resize: %s: short read", ovl_path(src));
          else
            r = ovl_pwrite(dst, tail, t, e->offset + whole, 0, NULL, NULL);
          free(tail);
          tail = NULL;
        }
      }
      pos = e->offset + e->length;
    }
    if (r < 0)
      return r;
  }
  return 0;
}

/* The clone's top copied into a new layer of `size` bytes, installed in layers/. */
static int
grow_by_copy(struct cc_pool *p, struct ovl_layer *top, uint64_t size, char newtop[CC_UUID_STR])
{
  struct ovl_create_opts opts = {.virtual_size = size, .mode = p->file_mode};
  struct ovl_info *info = malloc(sizeof *info);
  struct ovl_layer *dst = NULL;
  uint8_t uuid[OVL_UUID_LEN];
  char tmp[PATH_MAX];
  int r, r2;

  if (!info)
    return cc_error_set(ENOMEM, "clone resize: out of memory");
  ovl_get_info(top, info);
  opts.cluster_size = info->cluster_size;
  opts.parent.kind = info->parent_kind;
  opts.parent.path = info->parent_kind == OVL_PARENT_NONE ? NULL : info->parent_path;
  memcpy(opts.parent.uuid, info->parent_uuid, OVL_UUID_LEN);
  opts.parent.size = info->parent_size;
  if ((r = pool_tmp_path(p, "grow", ".cow", tmp, sizeof tmp)) < 0)
    goto out;
  if ((r = ovl_create(tmp, &opts, uuid)) < 0 || (r = pool_secure_group(p, tmp)) < 0 ||
      (r = ovl_open(tmp, OVL_RDWR, &dst)) < 0)
    goto fail;
  r = copy_own(top, dst);
  r2 = ovl_close(dst); /* flushes: the copy is durable before the file gets a name */
  if (r == 0)
    r = r2;
  if (r < 0)
    goto fail;
  pool_step();
  ovl_uuid_str(uuid, newtop);
  if ((r = pool_install_layer(p, tmp, newtop)) < 0)
    goto fail;
  goto out;
fail:
  unlink(tmp);
out:
  free(info);
  return r;
}

int
cc_clone_resize(struct cc_pool *p, const char *name, uint64_t size)
{
  char what[CC_NAME_MAX + 32], a[32], b[32], newtop[CC_UUID_STR] = "", old[PATH_MAX];
  struct ovl_layer *top = NULL;
  struct cc_clone c;
  uint64_t cur;
  int r;

  snprintf(what, sizeof what, "clone resize: %.64s", name);
  if (size == 0 || size > SIZE_MAX_DISK)
    return cc_error_set(EINVAL, "%s: size %" PRIu64 " is out of range (1 byte to 2^62)", what,
                        size);
  size = (size + 511) / 512 * 512;
  if ((r = pool_lock(p, "clone resize")) < 0)
    return r;
  if ((r = pool_get_clone(p, "clone resize", name, &c)) < 0)
    goto unlock;
  /* A server on the clone holds its top: refuse, naming it, before anything changed. */
  if ((r = pool_open_layer(p, c.top, OVL_RDWR, what, &top)) < 0)
    goto out;
  cur = ovl_virtual_size(top);
  if (size < cur) {
    pool_size_str(size, a, sizeof a);
    pool_size_str(cur, b, sizeof b);
    r = cc_error_set(EINVAL,
                     "%s: %s is smaller than the clone (%s): shrinking is refused, the guest's "
                     "data beyond the new end would be lost",
                     what, a, b);
    goto out;
  }
  if (size > cur) {
    r = ovl_grow(top, size);
    if (r == -EFBIG && size <= SIZE_MAX_DISK && strstr(cc_error_get(), "L1 table region") != NULL)
      r = grow_by_copy(p, top, size, newtop);
    if (r < 0)
      goto out;
    pool_step();
  }
  if (newtop[0]) {
    if ((r = pool_layer_path(p, c.top, old, sizeof old)) < 0)
      goto out;
    snprintf(c.top, sizeof c.top, "%s", newtop);
  }
  c.size = size;
  if ((r = pool_write_clone(p, &c)) < 0) {
    if (newtop[0] && pool_layer_path(p, newtop, old, sizeof old) == 0)
      unlink(old); /* no record names it */
    goto out;
  }
  if (newtop[0]) {
    /* The old top: no record names it any more, and we still hold its lock. */
    unlink(old);
    pool_fsync_dir(p, "layers");
    pool_step();
  }
out:
  ovl_close(top);
  cc_clone_free(&c);
unlock:
  pool_unlock(p);
  return r;
}
