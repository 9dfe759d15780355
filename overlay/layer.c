/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: creating, opening, closing and reading one layer file.
 *
 * Design notes: the layout, states and write ordering are in docs/FORMAT.md; the in-memory map
 * and its lock-free readers (ovl_map, ovl_pread) are in overlay.h and map.c.  Opening validates the
 * whole header and map before anything else may touch the layer, so every later lookup can trust
 * the offsets it finds.  A layer opened for writing sets the dirty bit only when it first
 * allocates, so opening a clone just to look at it (nbdinfo --list opens every export) writes
 * nothing.
 */
#include "overlay/internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int
ovl_pread_full(struct ovl_layer *l, void *buf, uint64_t len, uint64_t phys)
{
  uint8_t *p = buf;

  while (len > 0) {
    ssize_t n = pread(l->fd, p, len, (off_t)phys);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return cc_error_set(errno, "read: %s: offset %" PRIu64 ": %s", l->path, phys,
                          strerror(errno));
    }
    if (n == 0)
      return cc_error_set(EIO,
                          "read: %s: offset %" PRIu64 ": unexpected end of file (layer truncated?)",
                          l->path, phys);
    p += n;
    len -= (uint64_t)n;
    phys += (uint64_t)n;
  }
  return 0;
}

static int
pwrite_all(int fd, const char *path, const void *buf, uint64_t len, uint64_t phys)
{
  const uint8_t *p = buf;

  while (len > 0) {
    ssize_t n = ovl_io->pwrite(fd, p, len, (off_t)phys);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return cc_error_set(errno, "write: %s: offset %" PRIu64 ": %s", path, phys, strerror(errno));
    }
    p += n;
    len -= (uint64_t)n;
    phys += (uint64_t)n;
  }
  return 0;
}

int
ovl_check_sync_error(struct ovl_layer *l, const char *call)
{
  int err = atomic_load_explicit(&l->sync_error, memory_order_relaxed);

  if (err)
    return cc_error_set(
        EIO,
        "%s: %s: an earlier fdatasync failed (%s); writes since the last good flush may be lost, "
        "so the layer refuses writes and flushes until it is reopened",
        call, l->path, strerror(err));
  return 0;
}

int
ovl_sync(struct ovl_layer *l, const char *call)
{
  int r = ovl_check_sync_error(l, call);

  if (r < 0)
    return r;
  if (ovl_io->fdatasync(l->fd) == -1) {
    int err = errno;
    atomic_store_explicit(&l->sync_error, err, memory_order_relaxed);
    return cc_error_set(err, "%s: %s: fdatasync: %s", call, l->path, strerror(err));
  }
  return 0;
}

int
ovl_pwrite_full(const struct ovl_layer *l, const void *buf, uint64_t len, uint64_t phys)
{
  return pwrite_all(l->fd, l->path, buf, len, phys);
}

void
ovl_uuid_str(const uint8_t u[OVL_UUID_LEN], char out[37])
{
  snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
           u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
           u[15]);
}

int
ovl_uuid_random(uint8_t u[OVL_UUID_LEN])
{
  size_t got = 0;

  while (got < OVL_UUID_LEN) {
    ssize_t n = getrandom(u + got, OVL_UUID_LEN - got, 0);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    got += (size_t)n;
  }
  u[6] = (uint8_t)((u[6] & 0x0F) | 0x40); /* RFC 4122 version 4 */
  u[8] = (uint8_t)((u[8] & 0x3F) | 0x80);
  return 0;
}

int
ovl_create(const char *path, const struct ovl_create_opts *o, uint8_t uuid_out[OVL_UUID_LEN])
{
  struct ovl_header h = {0};
  uint8_t slot[OVL_SLOT_SIZE];
  uint32_t cs = o->cluster_size ? o->cluster_size : OVL_DEFAULT_CLUSTER_SIZE;
  struct timespec now;
  size_t plen = 0;
  int fd, r;

  if (cs < (1u << OVL_MIN_CLUSTER_BITS) || cs > (1u << OVL_MAX_CLUSTER_BITS) || (cs & (cs - 1)))
    return cc_error_set(
        EINVAL, "create: %s: cluster size %" PRIu32 " must be a power of two from 16K to 2M", path,
        cs);
  if (o->virtual_size == 0 || o->virtual_size % 512 || o->virtual_size > OVL_MAX_VIRTUAL_SIZE)
    return cc_error_set(EINVAL,
                        "create: %s: virtual size %" PRIu64 " must be a non-zero multiple of 512",
                        path, o->virtual_size);
  h.version = OVL_VERSION;
  h.header_length = OVL_HEADER_LENGTH;
  h.generation = 1;
  h.virtual_size = o->virtual_size;
  h.cluster_bits = (uint32_t)__builtin_ctz(cs);
  h.l1_entries = ovl_l1_entries_for(o->virtual_size, h.cluster_bits);
  h.l1_offset = OVL_L1_OFFSET;
  if (h.l1_entries > OVL_MAX_L1_ENTRIES)
    return cc_error_set(
        EFBIG, "create: %s: virtual size %" PRIu64 " is beyond this implementation's limit", path,
        o->virtual_size);
  clock_gettime(CLOCK_REALTIME, &now);
  h.create_time = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
  h.parent_kind = (uint32_t)o->parent.kind;
  if (o->parent.kind != OVL_PARENT_NONE) {
    plen = o->parent.path ? strlen(o->parent.path) : 0;
    if (plen == 0 || plen > OVL_MAX_PARENT_PATH || o->parent.path[0] == '/')
      return cc_error_set(EINVAL, "create: %s: parent path must be relative, 1 to %d bytes", path,
                          OVL_MAX_PARENT_PATH);
    if (o->parent.size > o->virtual_size)
      return cc_error_set(EINVAL,
                          "create: %s: parent size %" PRIu64 " exceeds virtual size %" PRIu64, path,
                          o->parent.size, o->virtual_size);
    h.parent_path_length = (uint32_t)plen;
    memcpy(h.parent_path, o->parent.path, plen);
    h.parent_size = o->parent.size;
    if (o->parent.kind == OVL_PARENT_LAYER)
      memcpy(h.parent_uuid, o->parent.uuid, OVL_UUID_LEN);
  }
  if (o->uuid)
    memcpy(h.uuid, o->uuid, OVL_UUID_LEN);
  else if ((r = ovl_uuid_random(h.uuid)) < 0)
    return cc_error_set(-r, "create: %s: getrandom: %s", path, strerror(-r));
  r = ovl_header_validate(path, &h);
  if (r < 0)
    return r;

  /* Created 0600, then given its mode before any byte is written: the caller's mode holds
   * whatever the umask, and a tighter mode never has a looser moment. */
  fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd == -1)
    return cc_error_set(errno, "create: %s: %s", path, strerror(errno));
  if (fchmod(fd, o->mode ? (mode_t)(o->mode & 07777) : 0644) == -1) {
    r = cc_error_set(errno, "create: %s: fchmod: %s", path, strerror(errno));
    close(fd);
    unlink(path);
    return r;
  }
  ovl_header_encode(&h, slot);
  r = pwrite_all(fd, path, slot, OVL_SLOT_SIZE, 0);
  if (r == 0 && ovl_io->ftruncate(fd, (off_t)(OVL_L1_OFFSET + ovl_l1_region(h.l1_entries))) == -1)
    r = cc_error_set(errno, "create: %s: ftruncate: %s", path, strerror(errno));
  if (r == 0 && ovl_io->fdatasync(fd) == -1)
    r = cc_error_set(errno, "create: %s: fdatasync: %s", path, strerror(errno));
  close(fd);
  if (r < 0) {
    unlink(path);
    return r;
  }
  if (uuid_out)
    memcpy(uuid_out, h.uuid, OVL_UUID_LEN);
  return 0;
}

/* Pick the current header from the two slots (FORMAT.md section 4). */
static int
load_header(struct ovl_layer *l)
{
  uint8_t slots[2 * OVL_SLOT_SIZE];
  struct ovl_header h[2];
  int r[2];
  unsigned cur;

  if (l->file_size < 2 * OVL_SLOT_SIZE)
    return cc_error_set(EUCLEAN,
                        "open: %s: file is truncated (%" PRIu64 " bytes, shorter than the header)",
                        l->path, l->file_size);
  int rr = ovl_pread_full(l, slots, sizeof slots, 0);
  if (rr < 0)
    return rr;
  r[1] = ovl_header_decode(l->path, slots + OVL_SLOT_SIZE, &h[1]);
  char err1[1024];
  snprintf(err1, sizeof err1, "%s", cc_error_get());
  r[0] = ovl_header_decode(l->path, slots, &h[0]);
  if (r[0] < 0 && r[1] < 0) {
    /* report the more telling fault: a bad checksum beats "unused slot" */
    if (r[0] == -EINVAL && r[1] == -EUCLEAN)
      return cc_error_set(EUCLEAN, "%s", err1);
    return r[0];
  }
  if (r[0] == 0 && r[1] == 0)
    cur = h[1].generation > h[0].generation ? 1 : 0;
  else
    cur = r[0] == 0 ? 0 : 1;
  l->hdr = h[cur];
  l->cur_slot = cur;
  return ovl_header_validate(l->path, &l->hdr);
}

int
ovl_open(const char *path, unsigned flags, struct ovl_layer **out)
{
  struct ovl_layer *l;
  struct stat st;
  bool rw = flags & OVL_RDWR;
  int r;

  *out = NULL;
  l = calloc(1, sizeof *l);
  if (!l || !(l->path = strdup(path))) {
    free(l);
    return cc_error_set(ENOMEM, "open: %s: out of memory", path);
  }
  l->flags = flags;
  pthread_mutex_init(&l->lock, NULL);
  pthread_mutex_init(&l->flush_lock, NULL);
  pthread_cond_init(&l->reserved_done, NULL);
  l->fd = open(path, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (l->fd == -1) {
    r = cc_error_set(errno, "open: %s: %s", path, strerror(errno));
    goto fail;
  }
  if (!(flags & OVL_NOLOCK)) {
    r = ovl_lock_fd(l->fd, path, rw);
    if (r < 0)
      goto fail;
  }
  if (fstat(l->fd, &st) == -1) {
    r = cc_error_set(errno, "open: %s: fstat: %s", path, strerror(errno));
    goto fail;
  }
  if (!S_ISREG(st.st_mode)) {
    r = cc_error_set(EINVAL, "open: %s: not a regular file", path);
    goto fail;
  }
  l->file_size = (uint64_t)st.st_size;
  l->file_blocks_bytes = (uint64_t)st.st_blocks * 512;

  r = load_header(l);
  if (r < 0)
    goto fail;
  if (rw && (l->hdr.incompat & OVL_INCOMPAT_CORRUPT)) {
    r = cc_error_set(EUCLEAN, "open: %s: layer is marked corrupt; it can only be opened read-only",
                     path);
    goto fail;
  }
  l->cluster_bits = l->hdr.cluster_bits;
  l->sc_bits = l->cluster_bits - 5;
  l->cluster_size = UINT64_C(1) << l->cluster_bits;
  l->sc_size = UINT64_C(1) << l->sc_bits;
  l->nclusters = (l->hdr.virtual_size + l->cluster_size - 1) >> l->cluster_bits;
  l->data_start = l->hdr.l1_offset + ovl_l1_region(l->hdr.l1_entries);
  l->dirty_on_disk = l->hdr.incompat & OVL_INCOMPAT_DIRTY;

  if (flags & OVL_HEADER_ONLY) {
    if (rw) {
      r = cc_error_set(EINVAL, "open: %s: a header-only open cannot be for writing", path);
      goto fail;
    }
    l->map_dropped = true; /* as after ovl_drop_map: map calls fail with -EINVAL */
  } else if ((r = ovl_map_load(l)) < 0) {
    goto fail;
  }

  if (rw && l->hdr.autoclear) {
    /* FORMAT.md 4.2: a writer clears the autoclear bits it does not know (all of them, today) */
    struct ovl_header h = l->hdr;
    h.autoclear = 0;
    r = ovl_header_write(l, &h);
    if (r < 0)
      goto fail;
  }
  *out = l;
  return 0;

fail:
  ovl_map_free(l);
  if (l->fd >= 0)
    close(l->fd);
  pthread_mutex_destroy(&l->lock);
  pthread_mutex_destroy(&l->flush_lock);
  pthread_cond_destroy(&l->reserved_done);
  free(l->path);
  free(l);
  return r;
}

int
ovl_set_dirty_locked(struct ovl_layer *l)
{
  struct ovl_header h;
  int r;

  if (l->dirty_on_disk)
    return 0;
  h = l->hdr;
  h.incompat |= OVL_INCOMPAT_DIRTY;
  r = ovl_header_write(l, &h);
  if (r == 0)
    l->dirty_on_disk = true;
  return r;
}

/* Flush, then say the file is clean (FORMAT.md 7.2): what a writer does last, at close or
 * freeze.  Caller holds l->lock; l is writable. */
static int
make_clean_locked(struct ovl_layer *l, const char *call)
{
  int r = ovl_map_flush_locked(l);

  if (r == 0 && l->dirty_on_disk) {
    struct ovl_header h = l->hdr;
    struct stat st;
    bool have_st = fstat(l->fd, &st) == 0;

    /* Bytes past the frontier were never referenced (a crash left them): drop them, make
     * that durable, and only then say the file is clean. */
    if (have_st && (uint64_t)st.st_size > l->frontier && l->frontier >= l->data_start) {
      if (ovl_io->ftruncate(l->fd, (off_t)l->frontier) == -1)
        r = cc_error_set(errno, "%s: %s: trimming leaked space: %s", call, l->path,
                         strerror(errno));
      else
        r = ovl_sync(l, call);
    } else if (have_st && l->prealloc_end != 0 && !l->reserved) {
      /* Give back the space first writes preallocated past the end of the file (write.c):
       * truncating to the file's own size drops it and changes no byte of the file, so it
       * needs no sync, and a failure loses nothing but that space (check --repair drops it
       * too).  Only with no first write in flight, the one kind of write that extends the
       * file; with none, `st_size` cannot move under us. */
      (void)ovl_io->ftruncate(l->fd, st.st_size);
    }
    l->prealloc_end = 0;
    if (r == 0) {
      h.incompat &= ~OVL_INCOMPAT_DIRTY;
      r = ovl_header_write(l, &h);
      if (r == 0)
        l->dirty_on_disk = false;
    }
  }
  return r;
}

int
ovl_close(struct ovl_layer *l)
{
  int r = 0;

  if (!l)
    return 0;
  if ((l->flags & OVL_RDWR) || l->sealed) {
    pthread_mutex_lock(&l->flush_lock);
    pthread_mutex_lock(&l->lock);
    r = make_clean_locked(l, "close");
    pthread_mutex_unlock(&l->lock);
    pthread_mutex_unlock(&l->flush_lock);
  }
  ovl_map_free(l);
  close(l->fd);
  pthread_mutex_destroy(&l->lock);
  pthread_mutex_destroy(&l->flush_lock);
  pthread_cond_destroy(&l->reserved_done);
  free(l->path);
  free(l);
  return r;
}

int
ovl_freeze(struct ovl_layer *l)
{
  struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET};
  int r;

  if (!(l->flags & OVL_RDWR) && !l->sealed)
    return cc_error_set(EINVAL, "freeze: %s: layer is not open for writing", l->path);
  pthread_mutex_lock(&l->flush_lock);
  pthread_mutex_lock(&l->lock);
  r = make_clean_locked(l, "freeze");
  /* An OFD lock request on the descriptor that holds the lock converts it in one step: no
   * instant without a lock, so no other writer can slip in. */
  if (r == 0 && !(l->flags & OVL_NOLOCK) && fcntl(l->fd, F_OFD_SETLK, &fl) == -1)
    r = cc_error_set(errno, "freeze: %s: downgrading the lock: %s", l->path, strerror(errno));
  if (r == 0) {
    l->flags &= ~OVL_RDWR;
    l->sealed = false;
  }
  pthread_mutex_unlock(&l->lock);
  pthread_mutex_unlock(&l->flush_lock);
  return r;
}

int
ovl_seal(struct ovl_layer *l)
{
  if (!(l->flags & OVL_RDWR))
    return cc_error_set(EINVAL, "seal: %s: layer is not open for writing", l->path);
  pthread_mutex_lock(&l->lock);
  l->flags &= ~OVL_RDWR;
  l->sealed = true;
  pthread_mutex_unlock(&l->lock);
  return 0;
}

/* Sub-clusters in state allocated and zero, over the whole map. */
static void
count_states(struct ovl_layer *l, uint64_t *alloc, uint64_t *zero)
{
  *alloc = *zero = 0;
  if (l->map_dropped) {
    *alloc = l->dropped_alloc;
    *zero = l->dropped_zero;
    return;
  }
  for (uint32_t i = 0; i < l->hdr.l1_entries; i++) {
    struct ovl_l2 *t = atomic_load_explicit(&l->l1[i], memory_order_acquire);
    if (!t)
      continue;
    for (uint32_t j = 0; j < OVL_L2_ENTRIES; j++) {
      uint64_t bits = atomic_load_explicit(&t->e[j].bits, memory_order_acquire);
      /* Most entries of a sparse layer are empty: skip them without the two popcounts, which
       * the default -march turns into libgcc calls (docs/BENCHMARKS.md, finding A.3). */
      if (bits == 0)
        continue;
      *alloc += (uint64_t)__builtin_popcount(ovl_bits_alloc(bits));
      *zero += (uint64_t)__builtin_popcount(ovl_bits_zero(bits));
    }
  }
}

void
ovl_get_info(struct ovl_layer *l, struct ovl_info *info)
{
  uint64_t alloc = 0, zero = 0;

  ovl_get_header_info(l, info);
  count_states(l, &alloc, &zero);
  info->allocated_bytes = alloc * l->sc_size;
  info->zero_bytes = zero * l->sc_size;
}

void
ovl_get_header_info(struct ovl_layer *l, struct ovl_info *info)
{
  memset(info, 0, sizeof *info);
  pthread_mutex_lock(&l->lock);
  memcpy(info->uuid, l->hdr.uuid, OVL_UUID_LEN);
  info->virtual_size = l->hdr.virtual_size;
  info->cluster_size = (uint32_t)l->cluster_size;
  info->sc_size = (uint32_t)l->sc_size;
  info->create_time_ns = l->hdr.create_time;
  info->generation = l->hdr.generation;
  info->dirty = (l->hdr.incompat & OVL_INCOMPAT_DIRTY) != 0;
  info->corrupt = (l->hdr.incompat & OVL_INCOMPAT_CORRUPT) != 0;
  info->parent_kind = (enum ovl_parent_kind)l->hdr.parent_kind;
  memcpy(info->parent_path, l->hdr.parent_path, sizeof info->parent_path);
  memcpy(info->parent_uuid, l->hdr.parent_uuid, OVL_UUID_LEN);
  info->parent_size = l->hdr.parent_size;
  info->frontier = l->frontier;
  info->file_size = l->file_size;
  info->file_blocks_bytes = l->file_blocks_bytes;
  pthread_mutex_unlock(&l->lock);
}

int
ovl_revalidate(struct ovl_layer *l)
{
  struct ovl_header h;
  unsigned slot = l->cur_slot;
  struct stat st;
  int r;

  if (fstat(l->fd, &st) == -1)
    return cc_error_set(errno, "revalidate: %s: fstat: %s", l->path, strerror(errno));
  if (st.st_nlink == 0)
    return cc_error_set(ESTALE, "revalidate: %s: the file was removed", l->path);
  if ((uint64_t)st.st_size != l->file_size)
    return cc_error_set(ESTALE, "revalidate: %s: size changed", l->path);
  /* load_header writes l->hdr and l->cur_slot: work on the saved copy and put it back. */
  h = l->hdr;
  r = load_header(l);
  if (r == 0 && l->hdr.generation != h.generation)
    r = cc_error_set(ESTALE,
                     "revalidate: %s: header changed (generation %" PRIu64 " -> %" PRIu64 ")",
                     l->path, h.generation, l->hdr.generation);
  l->hdr = h;
  l->cur_slot = slot;
  return r;
}

int
ovl_drop_map(struct ovl_layer *l)
{
  if ((l->flags & OVL_RDWR) || l->sealed)
    return cc_error_set(EINVAL, "drop map: %s: layer is open for writing", l->path);
  pthread_mutex_lock(&l->flush_lock); /* no flush may still be looking at the map */
  if (!l->map_dropped) {
    count_states(l, &l->dropped_alloc, &l->dropped_zero);
    ovl_map_free(l);
    l->map_dropped = true;
  }
  pthread_mutex_unlock(&l->flush_lock);
  return 0;
}

const char *
ovl_path(const struct ovl_layer *l)
{
  return l->path;
}

int
ovl_fd(const struct ovl_layer *l)
{
  return l->fd;
}

uint64_t
ovl_virtual_size(const struct ovl_layer *l)
{
  return l->hdr.virtual_size;
}

uint32_t
ovl_sc_size(const struct ovl_layer *l)
{
  return (uint32_t)l->sc_size;
}

uint32_t
ovl_cluster_size(const struct ovl_layer *l)
{
  return (uint32_t)l->cluster_size;
}

int
ovl_writable(const struct ovl_layer *l)
{
  return (l->flags & OVL_RDWR) != 0;
}

int
ovl_set_parent(struct ovl_layer *l, const struct ovl_parent *parent)
{
  struct ovl_header h;
  size_t plen = parent->kind == OVL_PARENT_NONE ? 0 : (parent->path ? strlen(parent->path) : 0);
  int r;

  if (!(l->flags & OVL_RDWR))
    return cc_error_set(EPERM, "set parent: %s: layer is open read-only", l->path);
  if (parent->kind != OVL_PARENT_NONE &&
      (plen == 0 || plen > OVL_MAX_PARENT_PATH || parent->path[0] == '/'))
    return cc_error_set(EINVAL, "set parent: %s: parent path must be relative, 1 to %d bytes",
                        l->path, OVL_MAX_PARENT_PATH);
  pthread_mutex_lock(&l->flush_lock);
  pthread_mutex_lock(&l->lock);
  h = l->hdr;
  h.parent_kind = (uint32_t)parent->kind;
  h.parent_path_length = (uint32_t)plen;
  memset(h.parent_path, 0, sizeof h.parent_path);
  if (plen)
    memcpy(h.parent_path, parent->path, plen);
  memset(h.parent_uuid, 0, OVL_UUID_LEN);
  if (parent->kind == OVL_PARENT_LAYER)
    memcpy(h.parent_uuid, parent->uuid, OVL_UUID_LEN);
  h.parent_size = parent->kind == OVL_PARENT_NONE ? 0 : parent->size;
  r = ovl_header_validate(l->path, &h);
  if (r == 0) {
    /* the data must not depend on the old parent once the new link is durable */
    r = ovl_map_flush_locked(l);
    if (r == 0)
      r = ovl_header_write(l, &h);
  }
  pthread_mutex_unlock(&l->lock);
  pthread_mutex_unlock(&l->flush_lock);
  return r;
}
