/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: one layer file (docs/FORMAT.md is the byte-level specification).
 *
 * Design notes
 * ------------
 * A layer maps each cluster of a virtual disk (default 128 KiB) to a physical cluster of the
 * file, with 32 sub-clusters (default 4 KiB) each in one of three states: unallocated (read the
 * image below), zero (reads zero, hides what is below), allocated (data in this file).  The map
 * is held in memory as a copy of the on-disk two-level table: an array of l1_entries pointers,
 * each NULL or a 256-entry L2 array, so memory grows with the 32 MiB regions that were written,
 * not with the virtual size.
 *
 * Concurrency: map lookups (ovl_map, ovl_pread) take no lock.  Each L2 entry is two atomic
 * 64-bit words (physical offset, then the alloc|zero bitmaps); a writer stores the offset
 * before it publishes bits that need it, and never changes a bound offset.  Every operation
 * that changes the map or allocates (binding a cluster, publishing a first write, zero/trim,
 * header changes) holds the layer's `lock` mutex; a flush holds it only to copy the dirty map
 * into buffers, and syncs and writes them without it (map.c); a first write writes its data between
 * two holds of it, with its sub-clusters reserved; writes into already allocated sub-clusters go
 * straight to the file with pwrite and take no lock.  No operation writes a byte of an allocated
 * sub-cluster that its request does not cover (write.c's design notes, FORMAT.md section 7.5), so
 * non-overlapping requests in flight at once all take effect; overlapping ones land in some
 * order, as with any block device.
 *
 * Errors: every function returning int returns 0 (or a count) on success and a negative errno
 * on failure, after recording a "call: file: reason" message with cc_error_set().
 */
#ifndef COWCHAIN_OVERLAY_H
#define COWCHAIN_OVERLAY_H

#include <stddef.h>
#include <stdint.h>

struct ovl_layer;

/* ovl_open flags */
#define OVL_RDONLY 0u
#define OVL_RDWR 1u
#define OVL_NOLOCK 2u /* take no OFD lock: inspection tools only, never for I/O */
/* Read and validate the header only, not the map (with OVL_RDONLY): O(1) whatever the layer
 * holds, for walking parent links.  The layer is as after ovl_drop_map, with unknown (0)
 * allocated and zero byte counts: ovl_get_info's header fields, ovl_fd and ovl_close work. */
#define OVL_HEADER_ONLY 4u

/* flags for writes */
#define OVL_FUA 1u      /* flush before returning (docs/FORMAT.md section 7.2) */
#define OVL_MAY_TRIM 2u /* zero: the file space of zeroed sub-clusters may be released */

#define OVL_DEFAULT_CLUSTER_SIZE (128u * 1024u)
#define OVL_UUID_LEN 16
#define OVL_MAX_PARENT_PATH 1024

enum ovl_parent_kind {
  OVL_PARENT_NONE = 0,  /* unallocated reads as zero */
  OVL_PARENT_LAYER = 1, /* another layer file, checked by uuid and size */
  OVL_PARENT_RAW = 2,   /* a raw image, checked by size */
  OVL_PARENT_NBD = 3,   /* a remote descriptor file naming an NBD export, checked by size */
};

struct ovl_parent {
  enum ovl_parent_kind kind;
  const char *path;           /* relative to the directory that holds the layer; NULL for NONE */
  uint8_t uuid[OVL_UUID_LEN]; /* LAYER only */
  uint64_t size;              /* parent's virtual size (raw: file size) */
};

struct ovl_create_opts {
  uint64_t virtual_size; /* multiple of 512 */
  uint32_t cluster_size; /* 0 = OVL_DEFAULT_CLUSTER_SIZE */
  struct ovl_parent parent;
  unsigned mode;       /* permission bits of the new file, set with fchmod (umask does not apply);
                        * 0 = 0644 */
  const uint8_t *uuid; /* the new layer's uuid (from ovl_uuid_random), or NULL for a new one:
                        * the pool names a layer in its records while the file is being made */
};

/* A random (RFC 4122 version 4) layer uuid, as ovl_create makes one; -errno of getrandom. */
int ovl_uuid_random(uint8_t uuid[OVL_UUID_LEN]);

/* Create a new layer file at `path` (O_EXCL: fails with -EEXIST if it exists) and make it
 * durable.  O(1) in the virtual size.  The new layer's uuid is stored in uuid_out if not NULL.
 * Naming the file atomically (temp name + rename) is the caller's job. */
int ovl_create(const char *path, const struct ovl_create_opts *opts,
               uint8_t uuid_out[OVL_UUID_LEN]);

/* Open and fully validate a layer file (header and map; not the parent: that is chain/'s job).
 * OVL_RDWR takes an exclusive OFD lock, OVL_RDONLY a shared one; a refused lock fails with
 * -EBUSY and a message naming the file and, where /proc/locks tells, the holding process.
 * With OVL_NOLOCK the layer may have a writer: the map is what the file held while it was read
 * (a sound map: a table naming bytes past the size taken at open is checked against the size
 * the file has then, since the writer extends the file before it flushes the entries naming
 * the new bytes), and goes stale after. */
int ovl_open(const char *path, unsigned flags, struct ovl_layer **out);

/* Flush (if writable and anything changed), clear the dirty bit, unlock and free.  The layer is
 * freed even when the flush fails; the error is returned. NULL is allowed. */
int ovl_close(struct ovl_layer *l);

struct ovl_info {
  uint8_t uuid[OVL_UUID_LEN];
  uint64_t virtual_size;
  uint32_t cluster_size;
  uint32_t sc_size;
  uint64_t create_time_ns;
  uint64_t generation;
  int dirty, corrupt;
  enum ovl_parent_kind parent_kind;
  char parent_path[OVL_MAX_PARENT_PATH + 1];
  uint8_t parent_uuid[OVL_UUID_LEN];
  uint64_t parent_size;
  uint64_t allocated_bytes;   /* sub-clusters in state allocated, in bytes */
  uint64_t zero_bytes;        /* sub-clusters in state zero, in bytes */
  uint64_t frontier;          /* allocation frontier (FORMAT.md section 6) */
  uint64_t file_size;         /* st_size at open */
  uint64_t file_blocks_bytes; /* st_blocks * 512 at open: space really used */
};

void ovl_get_info(struct ovl_layer *l, struct ovl_info *info);
/* The same without allocated_bytes and zero_bytes (left 0): those cost a pass over the whole
 * map, which opening a chain of hundreds of layers does not need. */
void ovl_get_header_info(struct ovl_layer *l, struct ovl_info *info);
const char *ovl_path(const struct ovl_layer *l);
int ovl_fd(const struct ovl_layer *l); /* for reads of allocated data by chain/ */
uint64_t ovl_virtual_size(const struct ovl_layer *l);
uint32_t ovl_sc_size(const struct ovl_layer *l);
uint32_t ovl_cluster_size(const struct ovl_layer *l);
int ovl_writable(const struct ovl_layer *l);

enum ovl_state { OVL_UNALLOCATED = 0, OVL_ZERO = 1, OVL_DATA = 2 };

struct ovl_extent {
  uint64_t offset; /* virtual */
  uint64_t length;
  uint64_t phys; /* file offset of `offset`'s byte, OVL_DATA only */
  enum ovl_state state;
};

/* Describe [offset, offset + length) (clipped to the virtual size) as runs of one state; data
 * runs merge only where the file offsets are contiguous.  Fills at most `max` extents and returns
 * how many; if they end before offset + length, call again from the end of the last one.
 * Lock-free; safe against concurrent writers. */
int ovl_map(struct ovl_layer *l, uint64_t offset, uint64_t length, struct ovl_extent *ext,
            size_t max);

/* Reads the image below this layer, for copy-up and for ovl_pread's unallocated runs.
 * Returns 0 or -errno.  NULL where a function takes one means "below reads as zero". */
typedef int (*ovl_below_fn)(void *opaque, void *buf, uint64_t length, uint64_t offset);

/* Read through this layer alone, unallocated runs from `below`.  A short read of allocated data
 * (file truncated under us) is -EIO, never zeroes. */
int ovl_pread(struct ovl_layer *l, void *buf, uint64_t length, uint64_t offset, ovl_below_fn below,
              void *opaque);

/* Write; partial unallocated sub-clusters are completed from `below` (copy-up of those
 * sub-clusters only).  flags: OVL_FUA. */
int ovl_pwrite(struct ovl_layer *l, const void *buf, uint64_t length, uint64_t offset,
               unsigned flags, ovl_below_fn below, void *opaque);

/* Make the range read as zero (write-zeroes and trim both use this).  Whole sub-clusters turn
 * zero; partial ones are written with zeroes (copy-up from `below` first).  flags: OVL_FUA,
 * OVL_MAY_TRIM (punch the released space). */
int ovl_zero(struct ovl_layer *l, uint64_t length, uint64_t offset, unsigned flags,
             ovl_below_fn below, void *opaque);

/* Bulk fill (bulk.c, FORMAT.md 7.6), for a pool operation that holds the layer exclusively:
 * copy `length` bytes of the file `src_fd` from `src_offset` into [offset, offset + length) of
 * the virtual disk, with copy_file_range where the kernel can (extents are shared on XFS with
 * reflink and on btrfs), else pread + pwrite.  `offset` is a multiple of the sub-cluster size,
 * and so is the end unless it is the virtual size.  Sub-clusters not yet allocated get physical
 * clusters reserved at the frontier (the L2 table first, so the run stays contiguous), the data
 * is written, and only then are their alloc bits published ("data before map"); allocated ones
 * are written in place.  The map reaches the disk at the next ovl_flush, which makes the data
 * durable before it writes each changed L2 table once.  `src_name` names the source in errors. */
int ovl_copy_in(struct ovl_layer *l, uint64_t offset, uint64_t length, int src_fd,
                uint64_t src_offset, const char *src_name);

/* Many bulk fills at once, for a layer nobody else holds (a full clone's new layer): the same
 * rules as ovl_copy_in per fill, under one hold of the layer lock.  New clusters are bound in
 * the order of the array (after every new L2 table the batch needs), so a caller that orders
 * its fills by (source file, source offset) gets clusters that are neighbours in a source file
 * as neighbours in the layer, and each run of them copied by one call (bulk.c).  Fills are
 * disjoint, non-empty, whole sub-clusters (an end may be the virtual size).
 * OVL_FILL_BRIDGE on a fill: the source bytes between the end of the previous fill of the same
 * file (in the array) and this fill's start hold nothing private (the caller vouches, POOL.md
 * 5.4), so on a file system that shares extents they may be shared into space of the layer no
 * entry references, making both fills and the gap one FICLONERANGE (FORMAT.md 7.6).
 * `progress` (may be NULL) is called after each call with the data bytes copied so far. */
#define OVL_FILL_BRIDGE 1u
struct ovl_fill {
  uint64_t offset, length; /* virtual range of the layer */
  int src_fd;
  uint64_t src_offset;
  const char *src_name; /* for messages */
  unsigned flags;       /* OVL_FILL_BRIDGE */
};
typedef void (*ovl_fill_progress_fn)(void *opaque, uint64_t done);
int ovl_copy_in_fills(struct ovl_layer *l, const struct ovl_fill *fills, size_t n,
                      ovl_fill_progress_fn progress, void *opaque);

/* Make every completed write durable, in the order of docs/FORMAT.md section 7.2. */
int ovl_flush(struct ovl_layer *l);

/* Turn a writable layer into a frozen one without closing it (a live snapshot): flush, clear
 * the dirty bit, convert the exclusive lock to a shared one atomically, and from then on refuse
 * writes as a read-only open would.  Lock-free readers (ovl_map, ovl_pread) may run throughout;
 * the caller guarantees no write, zero or flush is in flight.  On failure the layer is still
 * writable (and may be dirty). */
int ovl_freeze(struct ovl_layer *l);

/* The first half of ovl_freeze, which cannot fail on a writable layer: from now on refuse
 * writes, but make nothing durable and keep the exclusive lock (so no other open file
 * description can read the file's map before it holds every completed write).  A live
 * snapshot seals the old top while the write gate is closed and finishes with ovl_freeze after
 * the gate reopened, so the old top's flush is not part of the guests' stall.  ovl_freeze,
 * ovl_close and ovl_drop_map treat a sealed layer as still writable: freeze flushes and
 * converts the lock, close flushes, drop refuses. */
int ovl_seal(struct ovl_layer *l);

/* For a read-only layer whose contents chain/ has copied into its resolution index: free the
 * in-memory map, keeping the fd, the lock and the header.  Afterwards ovl_map and ovl_pread
 * fail with -EINVAL; ovl_get_info still reports the allocated and zero byte counts taken at the
 * drop.  Returns -EINVAL on a writable layer (its map is live). */
int ovl_drop_map(struct ovl_layer *l);

/* For a read-only layer held open while nobody locked it (chain/'s cache of idle indexes): 0
 * if the file still is what was opened (not removed, same size, same header generation: every
 * writer bumps it when it sets the dirty bit), else -ESTALE (or the read error) with a
 * message.  Does not change the layer. */
int ovl_revalidate(struct ovl_layer *l);

/* Replace the parent link (header rewrite, section 7.3).  Needs OVL_RDWR. */
int ovl_set_parent(struct ovl_layer *l, const struct ovl_parent *parent);

/* Grow the virtual size to `new_size` (a multiple of 512, >= the current size) in place, by one
 * header change (FORMAT.md 7.3.1; grow.c).  Needs OVL_RDWR and no I/O in flight.  -EFBIG,
 * nothing changed, when the size needs a larger L1 region: copy the layer instead. */
int ovl_grow(struct ovl_layer *l, uint64_t new_size);

struct ovl_check_result {
  int dirty;             /* the dirty bit was set */
  int corrupt;           /* the corrupt bit was set */
  uint64_t leaked_bytes; /* file bytes past the allocation frontier */
  int repaired;          /* --repair truncated the leak and cleared dirty */
};

/* Validate a layer file as ovl_open does, then look for leaked space.  With `repair`, take the
 * exclusive lock, truncate the file to the frontier and clear the dirty bit.  Returns 0 if the
 * file is valid (leaks are reported in `res`, they are not errors), or -errno with the fault. */
int ovl_check(const char *path, int repair, struct ovl_check_result *res);

/* Describe who holds an OFD lock on `path` ("pid 123 (nbdkit)"), from /proc/locks; writes
 * "another process" if it cannot tell. */
void ovl_lock_holder(const char *path, char *buf, size_t len);

/* Format a uuid as 36 characters plus NUL. */
void ovl_uuid_str(const uint8_t uuid[OVL_UUID_LEN], char out[37]);

#endif
