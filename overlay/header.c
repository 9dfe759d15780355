/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: the header (FORMAT.md section 4).
 *
 * Two slots; the valid one with the larger generation is current.  A change writes the whole
 * new header into the other slot and syncs it, so a torn header write can only ever leave the
 * previous header current.  Decoding checks magic and checksum (is this slot valid at all,
 * FORMAT.md 4.3); validation checks the fields of the chosen header against the format and our
 * limits, and names the field at fault.  header_length is a field like any other here: a slot
 * whose checksum is correct but whose header_length is not a multiple of 8 (or < 256) is valid,
 * so it can be current, and then the file is refused.  Only a length that puts the checksummed
 * range outside the slot makes the slot invalid, because then there is no checksum to verify.
 * A torn header write never produces a valid slot with a bad field, so falling back to the older
 * slot there would mean silently serving older metadata than the file says is current.
 */
#include "overlay/internal.h"

#include <inttypes.h>
#include <unistd.h>

uint64_t
ovl_l1_region(uint32_t l1_entries)
{
  return ((uint64_t)l1_entries * 8 + OVL_BLOCK - 1) / OVL_BLOCK * OVL_BLOCK;
}

uint32_t
ovl_l1_entries_for(uint64_t virtual_size, uint32_t cluster_bits)
{
  uint64_t span = (uint64_t)OVL_L2_ENTRIES << cluster_bits;
  uint64_t n = (virtual_size + span - 1) / span;

  return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

void
ovl_header_encode(const struct ovl_header *h, uint8_t slot[OVL_SLOT_SIZE])
{
  memset(slot, 0, OVL_SLOT_SIZE);
  memcpy(slot + HO_MAGIC, OVL_MAGIC, 8);
  put_le32(slot + HO_VERSION, h->version);
  put_le32(slot + HO_HEADER_LENGTH, h->header_length);
  put_le64(slot + HO_INCOMPAT, h->incompat);
  put_le64(slot + HO_COMPAT, h->compat);
  put_le64(slot + HO_AUTOCLEAR, h->autoclear);
  put_le64(slot + HO_GENERATION, h->generation);
  memcpy(slot + HO_UUID, h->uuid, OVL_UUID_LEN);
  put_le64(slot + HO_VIRTUAL_SIZE, h->virtual_size);
  put_le32(slot + HO_CLUSTER_BITS, h->cluster_bits);
  put_le32(slot + HO_L1_ENTRIES, h->l1_entries);
  put_le64(slot + HO_L1_OFFSET, h->l1_offset);
  put_le64(slot + HO_CREATE_TIME, h->create_time);
  put_le32(slot + HO_PARENT_KIND, h->parent_kind);
  put_le32(slot + HO_PARENT_PATH_LENGTH, h->parent_path_length);
  memcpy(slot + HO_PARENT_UUID, h->parent_uuid, OVL_UUID_LEN);
  put_le64(slot + HO_PARENT_SIZE, h->parent_size);
  memcpy(slot + h->header_length, h->parent_path, h->parent_path_length);
  put_le32(slot + HO_CHECKSUM, ovl_crc32c(slot, h->header_length + h->parent_path_length));
}

/* Returns 0 if the slot is valid (FORMAT.md 4.3), -EINVAL (bad magic: unused slot) or -EUCLEAN
 * (bad checksum, or lengths that put the checksummed range outside the slot).  The fields are
 * not checked here: ovl_header_validate does that for the current slot. */
int
ovl_header_decode(const char *path, const uint8_t slot[OVL_SLOT_SIZE], struct ovl_header *h)
{
  uint8_t tmp[OVL_SLOT_SIZE];
  uint32_t want, have;

  if (memcmp(slot + HO_MAGIC, OVL_MAGIC, 8) != 0)
    return cc_error_set(EINVAL, "open: %s: not a cowchain layer (bad magic)", path);
  h->version = get_le32(slot + HO_VERSION);
  h->header_length = get_le32(slot + HO_HEADER_LENGTH);
  h->parent_path_length = get_le32(slot + HO_PARENT_PATH_LENGTH);
  if (h->header_length > OVL_SLOT_SIZE || h->parent_path_length > OVL_SLOT_SIZE ||
      h->header_length + h->parent_path_length > OVL_SLOT_SIZE)
    return cc_error_set(EUCLEAN,
                        "open: %s: bad header_length %" PRIu32 " or parent_path_length %" PRIu32
                        " (the checksummed range ends past the 4096-byte slot)",
                        path, h->header_length, h->parent_path_length);

  memcpy(tmp, slot, OVL_SLOT_SIZE);
  put_le32(tmp + HO_CHECKSUM, 0);
  want = get_le32(slot + HO_CHECKSUM);
  have = ovl_crc32c(tmp, h->header_length + h->parent_path_length);
  if (want != have)
    return cc_error_set(
        EUCLEAN, "open: %s: bad header checksum (stored 0x%08" PRIx32 ", computed 0x%08" PRIx32 ")",
        path, want, have);

  h->incompat = get_le64(slot + HO_INCOMPAT);
  h->compat = get_le64(slot + HO_COMPAT);
  h->autoclear = get_le64(slot + HO_AUTOCLEAR);
  h->generation = get_le64(slot + HO_GENERATION);
  memcpy(h->uuid, slot + HO_UUID, OVL_UUID_LEN);
  h->virtual_size = get_le64(slot + HO_VIRTUAL_SIZE);
  h->cluster_bits = get_le32(slot + HO_CLUSTER_BITS);
  h->l1_entries = get_le32(slot + HO_L1_ENTRIES);
  h->l1_offset = get_le64(slot + HO_L1_OFFSET);
  h->create_time = get_le64(slot + HO_CREATE_TIME);
  h->parent_kind = get_le32(slot + HO_PARENT_KIND);
  memcpy(h->parent_uuid, slot + HO_PARENT_UUID, OVL_UUID_LEN);
  h->parent_size = get_le64(slot + HO_PARENT_SIZE);
  memset(h->parent_path, 0, sizeof h->parent_path);
  if (h->parent_path_length <= OVL_MAX_PARENT_PATH)
    memcpy(h->parent_path, slot + h->header_length, h->parent_path_length);
  return 0;
}

static bool
is_zero(const uint8_t *p, size_t n)
{
  while (n--)
    if (*p++)
      return false;
  return true;
}

int
ovl_header_validate(const char *path, const struct ovl_header *h)
{
  uint64_t unknown;

  if (h->version != OVL_VERSION)
    return cc_error_set(ENOTSUP,
                        "open: %s: unsupported format version %" PRIu32
                        " (this cowchain reads version %u)",
                        path, h->version, OVL_VERSION);
  /* The current slot's own header_length (decode only made sure its checksum could be checked):
   * refused, never a reason to fall back to the other slot. */
  if (h->header_length < OVL_HEADER_LENGTH || h->header_length % 8 != 0)
    return cc_error_set(EUCLEAN,
                        "open: %s: current header (generation %" PRIu64
                        ") has bad header_length %" PRIu32
                        " (must be a multiple of 8, at least %u)",
                        path, h->generation, h->header_length, OVL_HEADER_LENGTH);
  unknown = h->incompat & ~OVL_INCOMPAT_KNOWN;
  if (unknown)
    return cc_error_set(ENOTSUP, "open: %s: unknown incompatible feature bits 0x%" PRIx64, path,
                        unknown);
  if (h->generation == 0)
    return cc_error_set(EUCLEAN, "open: %s: header generation is 0", path);
  if (is_zero(h->uuid, OVL_UUID_LEN))
    return cc_error_set(EUCLEAN, "open: %s: layer uuid is all zero", path);
  if (h->virtual_size == 0 || h->virtual_size % 512 != 0 || h->virtual_size > OVL_MAX_VIRTUAL_SIZE)
    return cc_error_set(EUCLEAN,
                        "open: %s: bad virtual_size %" PRIu64
                        " (must be a non-zero multiple of 512, at most 2^62)",
                        path, h->virtual_size);
  if (h->cluster_bits < OVL_MIN_CLUSTER_BITS || h->cluster_bits > OVL_MAX_CLUSTER_BITS)
    return cc_error_set(EUCLEAN, "open: %s: bad cluster_bits %" PRIu32 " (must be %u to %u)", path,
                        h->cluster_bits, OVL_MIN_CLUSTER_BITS, OVL_MAX_CLUSTER_BITS);
  if (h->l1_entries != ovl_l1_entries_for(h->virtual_size, h->cluster_bits))
    return cc_error_set(EUCLEAN,
                        "open: %s: l1_entries %" PRIu32
                        " does not match virtual_size (expected %" PRIu32 ")",
                        path, h->l1_entries, ovl_l1_entries_for(h->virtual_size, h->cluster_bits));
  if (h->l1_entries > OVL_MAX_L1_ENTRIES)
    return cc_error_set(
        EFBIG,
        "open: %s: virtual disk too large for this implementation (l1_entries %" PRIu32
        " > %" PRIu32 ")",
        path, h->l1_entries, OVL_MAX_L1_ENTRIES);
  if (h->l1_offset != OVL_L1_OFFSET)
    return cc_error_set(EUCLEAN, "open: %s: bad l1_offset %" PRIu64 " (must be %u)", path,
                        h->l1_offset, OVL_L1_OFFSET);

  switch (h->parent_kind) {
  case OVL_PARENT_NONE:
    if (h->parent_path_length != 0 || h->parent_size != 0 || !is_zero(h->parent_uuid, OVL_UUID_LEN))
      return cc_error_set(EUCLEAN, "open: %s: parent fields set although the layer has no parent",
                          path);
    break;
  case OVL_PARENT_LAYER:
  case OVL_PARENT_RAW:
  case OVL_PARENT_NBD:
    if (h->parent_path_length == 0 || h->parent_path_length > OVL_MAX_PARENT_PATH)
      return cc_error_set(EUCLEAN, "open: %s: bad parent path length %" PRIu32 " (must be 1 to %u)",
                          path, h->parent_path_length, OVL_MAX_PARENT_PATH);
    if (h->parent_path[0] == '/')
      return cc_error_set(EUCLEAN, "open: %s: parent path '%s' is absolute", path, h->parent_path);
    if (strlen(h->parent_path) != h->parent_path_length)
      return cc_error_set(EUCLEAN, "open: %s: parent path contains a NUL byte", path);
    if (h->parent_size > h->virtual_size)
      return cc_error_set(EUCLEAN,
                          "open: %s: parent_size %" PRIu64 " exceeds virtual_size %" PRIu64, path,
                          h->parent_size, h->virtual_size);
    if (h->parent_kind == OVL_PARENT_LAYER && is_zero(h->parent_uuid, OVL_UUID_LEN))
      return cc_error_set(EUCLEAN, "open: %s: parent uuid is all zero", path);
    break;
  default:
    return cc_error_set(EUCLEAN, "open: %s: bad parent_kind %" PRIu32, path, h->parent_kind);
  }
  return 0;
}

/* Write `h` into the non-current slot with the next generation and make it durable; only then
 * does it become current.  Caller holds l->lock (or owns the layer alone). */
int
ovl_header_write(struct ovl_layer *l, const struct ovl_header *h)
{
  uint8_t slot[OVL_SLOT_SIZE];
  struct ovl_header nh = *h;
  unsigned target = 1 - l->cur_slot;
  int r = ovl_check_sync_error(l, "header");

  if (r < 0)
    return r;
  nh.generation = l->hdr.generation + 1;
  ovl_header_encode(&nh, slot);
  r = ovl_pwrite_full(l, slot, OVL_SLOT_SIZE, (uint64_t)target * OVL_SLOT_SIZE);
  if (r < 0)
    return r;
  r = ovl_sync(l, "header");
  if (r < 0)
    return r;
  l->hdr = nh;
  l->cur_slot = target;
  return 0;
}
