/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: on-disk constants and encoding, mirroring docs/FORMAT.md.  Private to
 * overlay/.  Every integer on disk is little-endian (FORMAT.md section 1). */
#ifndef COWCHAIN_OVERLAY_FORMAT_H
#define COWCHAIN_OVERLAY_FORMAT_H

#include <stdint.h>
#include <string.h>

#define OVL_MAGIC "COWCHAIN"
#define OVL_VERSION 1u
#define OVL_HEADER_LENGTH 256u /* fixed part, version 1 */
#define OVL_SLOT_SIZE 4096u    /* each of the two header slots */
#define OVL_L1_OFFSET 8192u
#define OVL_BLOCK 4096u     /* L2 table size, L1 block size, allocation alignment */
#define OVL_L2_ENTRIES 256u /* 16-byte entries per L2 table */
#define OVL_L2_ENTRY_SIZE 16u
#define OVL_SUBCLUSTERS 32u
#define OVL_MIN_CLUSTER_BITS 14u /* 16 KiB */
#define OVL_MAX_CLUSTER_BITS 21u /* 2 MiB */
#define OVL_MAX_VIRTUAL_SIZE (UINT64_C(1) << 62)
/* Every referenced object ends at or below this file offset (FORMAT.md section 5.3), so offset
 * arithmetic on validated entries can never wrap and always fits off_t. */
#define OVL_MAX_FILE_OFFSET (UINT64_C(1) << 62)

/* Implementation limit (FORMAT.md section 8): the L1 table is held in memory. */
#define OVL_MAX_L1_ENTRIES (UINT32_C(4) << 20)

/* incompatible feature bits */
#define OVL_INCOMPAT_DIRTY (UINT64_C(1) << 0)
#define OVL_INCOMPAT_CORRUPT (UINT64_C(1) << 1)
#define OVL_INCOMPAT_KNOWN (OVL_INCOMPAT_DIRTY | OVL_INCOMPAT_CORRUPT)

/* header field offsets (FORMAT.md section 4.1) */
enum {
  HO_MAGIC = 0,
  HO_VERSION = 8,
  HO_HEADER_LENGTH = 12,
  HO_INCOMPAT = 16,
  HO_COMPAT = 24,
  HO_AUTOCLEAR = 32,
  HO_GENERATION = 40,
  HO_UUID = 48,
  HO_VIRTUAL_SIZE = 64,
  HO_CLUSTER_BITS = 72,
  HO_L1_ENTRIES = 76,
  HO_L1_OFFSET = 80,
  HO_CREATE_TIME = 88,
  HO_PARENT_KIND = 96,
  HO_PARENT_PATH_LENGTH = 100,
  HO_PARENT_UUID = 104,
  HO_PARENT_SIZE = 120,
  HO_CHECKSUM = 252,
};

/* The layout the spec fixes, checked at compile time (FORMAT.md sections 3-5). */
_Static_assert(sizeof OVL_MAGIC - 1 == 8, "magic is 8 bytes");
_Static_assert(HO_CHECKSUM + 4 == OVL_HEADER_LENGTH, "the checksum ends the fixed header");
_Static_assert(HO_PARENT_SIZE + 8 <= HO_CHECKSUM, "header fields fit before the checksum");
_Static_assert(HO_PARENT_UUID + 16 == HO_PARENT_SIZE, "parent uuid is 16 bytes");
_Static_assert(HO_UUID + 16 == HO_VIRTUAL_SIZE, "uuid is 16 bytes");
_Static_assert(OVL_HEADER_LENGTH % 8 == 0, "header_length is a multiple of 8");
_Static_assert(2 * OVL_SLOT_SIZE == OVL_L1_OFFSET, "two header slots precede the L1 table");
_Static_assert(OVL_L2_ENTRIES *OVL_L2_ENTRY_SIZE == OVL_BLOCK, "an L2 table is one 4 KiB block");
_Static_assert(OVL_L1_OFFSET % OVL_BLOCK == 0, "the L1 table is block aligned");
_Static_assert(OVL_SUBCLUSTERS == 32, "the alloc and zero bitmaps are 32 bits each");
_Static_assert((1u << OVL_MIN_CLUSTER_BITS) / OVL_SUBCLUSTERS >= 512,
               "a sub-cluster is at least a sector");
_Static_assert((UINT64_C(1) << OVL_MAX_CLUSTER_BITS) <= OVL_MAX_FILE_OFFSET,
               "a cluster fits any file");

static inline uint32_t
get_le32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t
get_le64(const uint8_t *p)
{
  return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static inline void
put_le32(uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static inline void
put_le64(uint8_t *p, uint64_t v)
{
  put_le32(p, (uint32_t)v);
  put_le32(p + 4, (uint32_t)(v >> 32));
}

/* CRC-32C (Castagnoli), FORMAT.md section 1. */
uint32_t ovl_crc32c(const void *buf, size_t len);

#endif
