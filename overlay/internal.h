/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: in-memory state of an open layer.  Private to overlay/. */
#ifndef COWCHAIN_OVERLAY_INTERNAL_H
#define COWCHAIN_OVERLAY_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "overlay/format.h"
#include "overlay/io.h"
#include "overlay/overlay.h"

/* How far ahead of the frontier first writes preallocate the file (write.c). */
#define OVL_PREALLOC (4u << 20)

/* Sub-clusters `mask` of `cluster` being written for the first time (write.c). */
struct ovl_reservation {
  uint64_t cluster;
  uint32_t mask;
  struct ovl_reservation *next;
};

/* The decoded header (host byte order). */
struct ovl_header {
  uint32_t version;
  uint32_t header_length;
  uint64_t incompat, compat, autoclear;
  uint64_t generation;
  uint8_t uuid[OVL_UUID_LEN];
  uint64_t virtual_size;
  uint32_t cluster_bits;
  uint32_t l1_entries;
  uint64_t l1_offset;
  uint64_t create_time;
  uint32_t parent_kind;
  uint32_t parent_path_length;
  uint8_t parent_uuid[OVL_UUID_LEN];
  uint64_t parent_size;
  char parent_path[OVL_MAX_PARENT_PATH + 1];
};

/* One L2 entry.  `phys` is written once (0 -> offset) before any bit that needs it is
 * published; `bits` holds the alloc bitmap in the low 32 bits and the zero bitmap in the high
 * 32.  Readers load bits (acquire) then phys, with no lock. */
struct ovl_entry {
  _Atomic uint64_t phys;
  _Atomic uint64_t bits;
};

struct ovl_l2 {
  struct ovl_entry e[OVL_L2_ENTRIES];
  uint64_t disk_offset; /* where this table lives in the file; fixed at allocation */
  bool dirty;           /* changed since the last flush (guarded by layer lock) */
  bool l1_dirty;        /* its L1 entry is not durable yet (guarded by layer lock) */
};

struct ovl_layer {
  char *path;
  int fd;
  unsigned flags;
  struct ovl_header hdr; /* current header; changed only under `lock` */
  unsigned cur_slot;

  uint32_t cluster_bits, sc_bits;
  uint64_t cluster_size, sc_size;
  uint64_t nclusters;
  uint64_t data_start;

  /* l1_entries pointers; a slot goes NULL -> table once (release store), never back */
  _Atomic(struct ovl_l2 *) *l1;

  /* Guards every map change, allocation, the dirty lists, flush and header writes.  Reads and
   * in-place writes of allocated sub-clusters do not take it. */
  pthread_mutex_t lock;
  /* Held by every flush for its whole length (map.c: a client's flush syncs without `lock`),
   * and by everything that makes the layer clean or drops its map; taken before `lock`. */
  pthread_mutex_t flush_lock;
  uint64_t frontier;
  /* write.c: space is preallocated (fallocate KEEP_SIZE) up to here, ahead of the frontier;
   * 0 while this open bound no cluster, so a clean close knows whether to give back what is
   * left past the end of the file (layer.c).  Under `lock`. */
  uint64_t prealloc_end;
  bool dirty_on_disk; /* the durable header has the dirty bit */
  /* First writes in progress (write.c): sub-clusters reserved under `lock`, written without
   * it, published under it again.  A request that would change the bits of a reserved
   * sub-cluster waits on `reserved_done`.  Nodes live on the writers' stacks. */
  struct ovl_reservation *reserved;
  pthread_cond_t reserved_done;
  uint32_t *dirty_l2; /* indexes of L2 tables with dirty or l1_dirty set */
  size_t ndirty_l2, dirty_cap;

  uint64_t file_size, file_blocks_bytes; /* at open */
  /* errno of a failed fdatasync, or 0.  Linux reports a writeback error once and marks the
   * pages clean, so a later fdatasync "succeeds" although data is gone ("fsyncgate"): after a
   * failure no flush may succeed again, and the layer refuses writes until it is reopened
   * (the durable map never referenced the lost data, so a reopen is consistent).  Set under
   * `lock`, read without it. */
  _Atomic int sync_error;
  /* ovl_seal: writes refused (OVL_RDWR cleared) but nothing made durable yet and the lock
   * still exclusive; ovl_freeze (or ovl_close) finishes the freeze. */
  bool sealed;
  bool map_dropped;                     /* ovl_drop_map: l1 is NULL, counts below are kept */
  uint64_t dropped_alloc, dropped_zero; /* sub-cluster counts at the drop */
};

/* header.c */
void ovl_header_encode(const struct ovl_header *h, uint8_t slot[OVL_SLOT_SIZE]);
int ovl_header_decode(const char *path, const uint8_t slot[OVL_SLOT_SIZE], struct ovl_header *h);
int ovl_header_validate(const char *path, const struct ovl_header *h);
int ovl_header_write(struct ovl_layer *l, const struct ovl_header *h);
uint64_t ovl_l1_region(uint32_t l1_entries);
uint32_t ovl_l1_entries_for(uint64_t virtual_size, uint32_t cluster_bits);

/* map.c */
int ovl_map_load(struct ovl_layer *l);
void ovl_map_free(struct ovl_layer *l);
struct ovl_l2 *ovl_l2_get_or_create(struct ovl_layer *l, uint64_t cluster);
int ovl_mark_dirty(struct ovl_layer *l, uint32_t l1_index);
int ovl_map_flush_locked(struct ovl_layer *l);
/* The same, for a client's flush: takes flush_lock, holds `lock` only to take a snapshot of
 * the dirty tables (map.c design notes).  Caller holds neither lock. */
int ovl_map_flush(struct ovl_layer *l);

/* layer.c: fdatasync with the sticky failure rule above; and the check for it */
int ovl_sync(struct ovl_layer *l, const char *call);
int ovl_check_sync_error(struct ovl_layer *l, const char *call);

/* lock.c */
int ovl_lock_fd(int fd, const char *path, bool exclusive);

/* layer.c */
int ovl_set_dirty_locked(struct ovl_layer *l);
int ovl_pread_full(struct ovl_layer *l, void *buf, uint64_t len, uint64_t phys);
int ovl_pwrite_full(const struct ovl_layer *l, const void *buf, uint64_t len, uint64_t phys);

static inline uint32_t
ovl_bits_alloc(uint64_t bits)
{
  return (uint32_t)bits;
}

static inline uint32_t
ovl_bits_zero(uint64_t bits)
{
  return (uint32_t)(bits >> 32);
}

static inline uint64_t
ovl_bits_make(uint32_t alloc, uint32_t zero)
{
  return (uint64_t)alloc | (uint64_t)zero << 32;
}

/* mask of sub-clusters first..last inclusive (0 <= first <= last < 32) */
static inline uint32_t
ovl_sc_mask(unsigned first, unsigned last)
{
  uint32_t hi = last >= 31 ? UINT32_MAX : (UINT32_C(1) << (last + 1)) - 1;
  return hi & ~((UINT32_C(1) << first) - 1);
}

#endif
