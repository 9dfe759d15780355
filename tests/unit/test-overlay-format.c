/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: the layer file format (docs/FORMAT.md sections 3, 4 and 7.3-7.4).
 *
 * Round-trips through the API, and the header bytes on disk checked against the spec with an
 * independent decoder (util-overlay.c), so that writer and reader cannot agree on a mistake.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "overlay/overlay.h"
#include "tests/unit/util-overlay.h"

TestSuite(overlay_format, .timeout = 60);

static const uint8_t zero_uuid[OVL_UUID_LEN];

static uint64_t
now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t
align_up(uint64_t x, uint64_t a)
{
  return (x + a - 1) / a * a;
}

static uint32_t
l1_entries_for(uint64_t vsize, uint32_t cluster_size)
{
  uint64_t per = (uint64_t)cluster_size * 256;
  return (uint32_t)((vsize + per - 1) / per);
}

static unsigned
log2u(uint32_t v)
{
  unsigned b = 0;
  while ((1u << b) < v)
    b++;
  return b;
}

/* Check every byte of header slot `idx` against FORMAT.md 4.1 for the given expectations. */
static void
check_slot_bytes(const char *path, int idx, uint64_t generation, uint64_t vsize, uint32_t csize,
                 const struct ovl_parent *parent, const uint8_t uuid[OVL_UUID_LEN])
{
  uint8_t s[OTU_SLOT_SIZE];
  size_t ppl = parent->kind == OVL_PARENT_NONE ? 0 : strlen(parent->path);

  otu_read_slot(path, idx, s);
  cr_assert_eq(memcmp(s, "COWCHAIN", 8), 0, "magic");
  cr_assert_eq(otu_le32(s + OTU_H_VERSION), 1u, "version");
  cr_assert_eq(otu_le32(s + OTU_H_HEADER_LENGTH), 256u, "header_length");
  cr_assert_eq(otu_le64(s + OTU_H_INCOMPAT), 0u, "incompatible_features");
  cr_assert_eq(otu_le64(s + OTU_H_COMPAT), 0u, "compatible_features");
  cr_assert_eq(otu_le64(s + OTU_H_AUTOCLEAR), 0u, "autoclear_features");
  cr_assert_eq(otu_le64(s + OTU_H_GENERATION), generation, "generation");
  cr_assert_eq(memcmp(s + OTU_H_UUID, uuid, OVL_UUID_LEN), 0, "uuid");
  cr_assert_eq(otu_le64(s + OTU_H_VIRTUAL_SIZE), vsize, "virtual_size");
  cr_assert_eq(otu_le32(s + OTU_H_CLUSTER_BITS), log2u(csize), "cluster_bits");
  cr_assert_eq(otu_le32(s + OTU_H_L1_ENTRIES), l1_entries_for(vsize, csize), "l1_entries");
  cr_assert_eq(otu_le64(s + OTU_H_L1_OFFSET), 8192u, "l1_offset");
  cr_assert_eq(otu_le32(s + OTU_H_PARENT_KIND), (uint32_t)parent->kind, "parent_kind");
  cr_assert_eq(otu_le32(s + OTU_H_PARENT_PATH_LENGTH), (uint32_t)ppl, "parent_path_length");
  if (parent->kind == OVL_PARENT_LAYER)
    cr_assert_eq(memcmp(s + OTU_H_PARENT_UUID, parent->uuid, OVL_UUID_LEN), 0, "parent_uuid");
  else
    cr_assert_eq(memcmp(s + OTU_H_PARENT_UUID, zero_uuid, OVL_UUID_LEN), 0, "parent_uuid 0");
  cr_assert_eq(otu_le64(s + OTU_H_PARENT_SIZE), parent->kind == OVL_PARENT_NONE ? 0 : parent->size,
               "parent_size");
  for (size_t i = OTU_H_RESERVED; i < OTU_H_CHECKSUM; i++)
    cr_assert_eq(s[i], 0, "reserved byte %zu not zero", i);
  if (ppl)
    cr_assert_eq(memcmp(s + 256, parent->path, ppl), 0, "parent path bytes");
  for (size_t i = 256 + ppl; i < OTU_SLOT_SIZE; i++)
    cr_assert_eq(s[i], 0, "slot byte %zu after the path not zero", i);

  /* the checksum, recomputed here from the definition */
  uint8_t tmp[OTU_SLOT_SIZE];
  memcpy(tmp, s, sizeof tmp);
  memset(tmp + OTU_H_CHECKSUM, 0, 4);
  uint32_t want = otu_crc32c(tmp, 256 + ppl);
  cr_assert_eq(otu_le32(s + OTU_H_CHECKSUM), want, "header_checksum %08x, expected %08x",
               otu_le32(s + OTU_H_CHECKSUM), want);
}

Test(overlay_format, crc32c_check_value)
{
  /* The test's own CRC must be right before it can judge the implementation's. */
  cr_assert_eq(otu_crc32c("123456789", 9), 0xE3069283u);
  cr_assert_eq(otu_crc32c("", 0), 0u);
}

/* Create, check the bytes on disk, open, check ovl_get_info, for one geometry and parent. */
static void
roundtrip(uint64_t vsize, uint32_t csize_opt, const struct ovl_parent *parent)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "layer.cow");
  uint32_t csize = csize_opt ? csize_opt : 128u * 1024u;
  struct ovl_create_opts o;
  uint8_t uuid[OVL_UUID_LEN];

  memset(&o, 0, sizeof o);
  o.virtual_size = vsize;
  o.cluster_size = csize_opt;
  o.parent = *parent;
  uint64_t t0 = now_ns();
  int r = ovl_create(path, &o, uuid);
  uint64_t t1 = now_ns();
  cr_assert_eq(r, 0, "ovl_create: %d %s", r, cc_error_get());

  cr_assert_neq(memcmp(uuid, zero_uuid, OVL_UUID_LEN), 0, "uuid all zero");
  cr_assert_eq(uuid[6] >> 4, 4, "uuid is not RFC 4122 version 4");
  cr_assert_eq(uuid[8] >> 6, 2, "uuid variant is not RFC 4122");

  /* FORMAT.md 7.4: slot 0 generation 1, slot 1 zero, file extended to data_start */
  check_slot_bytes(path, 0, 1, vsize, csize, parent, uuid);
  uint8_t s1[OTU_SLOT_SIZE], zeros[OTU_SLOT_SIZE];
  memset(zeros, 0, sizeof zeros);
  otu_read_slot(path, 1, s1);
  cr_assert_eq(memcmp(s1, zeros, OTU_SLOT_SIZE), 0, "slot 1 of a new file is not zero");
  uint64_t data_start = 8192 + align_up((uint64_t)l1_entries_for(vsize, csize) * 8, 4096);
  cr_assert_eq(otu_file_size(path), data_start, "file size is not data_start");

  uint8_t s0[OTU_SLOT_SIZE];
  otu_read_slot(path, 0, s0);
  uint64_t ctime = otu_le64(s0 + OTU_H_CREATE_TIME);
  /* generous slack: clocks are read on both sides of the call, granularity may differ */
  cr_assert(ctime + 1000000000u >= t0 && ctime <= t1 + 1000000000u,
            "create_time %" PRIu64 " outside [%" PRIu64 ", %" PRIu64 "]", ctime, t0, t1);

  struct ovl_layer *l = otu_open(path, OVL_RDONLY);
  struct ovl_info in;
  ovl_get_info(l, &in);
  cr_assert_eq(memcmp(in.uuid, uuid, OVL_UUID_LEN), 0);
  cr_assert_eq(in.virtual_size, vsize);
  cr_assert_eq(in.cluster_size, csize);
  cr_assert_eq(in.sc_size, csize / 32);
  cr_assert_eq(in.create_time_ns, ctime);
  cr_assert_eq(in.generation, 1u);
  cr_assert_eq(in.dirty, 0);
  cr_assert_eq(in.corrupt, 0);
  cr_assert_eq(in.parent_kind, parent->kind);
  if (parent->kind == OVL_PARENT_NONE) {
    cr_assert_str_eq(in.parent_path, "");
    cr_assert_eq(in.parent_size, 0u);
  } else {
    cr_assert_str_eq(in.parent_path, parent->path);
    cr_assert_eq(in.parent_size, parent->size);
  }
  if (parent->kind == OVL_PARENT_LAYER)
    cr_assert_eq(memcmp(in.parent_uuid, parent->uuid, OVL_UUID_LEN), 0);
  else
    cr_assert_eq(memcmp(in.parent_uuid, zero_uuid, OVL_UUID_LEN), 0);
  cr_assert_eq(in.allocated_bytes, 0u);
  cr_assert_eq(in.zero_bytes, 0u);
  cr_assert_eq(in.frontier, data_start, "frontier of an empty layer is data_start");
  cr_assert_eq(in.file_size, data_start);
  cr_assert_eq(ovl_virtual_size(l), vsize);
  cr_assert_eq(ovl_sc_size(l), csize / 32);
  cr_assert_eq(ovl_writable(l), 0);
  cr_assert_str_eq(ovl_path(l), path);
  cr_assert_geq(ovl_fd(l), 0);
  cr_assert_eq(ovl_close(l), 0);

  otu_rmtree(dir);
  free(path);
}

Test(overlay_format, roundtrip_default_cluster)
{
  struct ovl_parent p = {.kind = OVL_PARENT_NONE};
  roundtrip(64u << 20, 0, &p);
}

Test(overlay_format, roundtrip_16k_cluster)
{
  struct ovl_parent p = {.kind = OVL_PARENT_NONE};
  roundtrip(5u << 20, 16u * 1024, &p);
}

Test(overlay_format, roundtrip_2m_cluster)
{
  struct ovl_parent p = {.kind = OVL_PARENT_NONE};
  roundtrip(3ull << 30, 2u << 20, &p);
}

Test(overlay_format, roundtrip_odd_size)
{
  /* not a multiple of the cluster size nor of an L2's span: l1_entries rounds up */
  struct ovl_parent p = {.kind = OVL_PARENT_NONE};
  roundtrip((32u << 20) + 512, 0, &p);
  roundtrip(512, 0, &p);
}

Test(overlay_format, roundtrip_parent_raw)
{
  struct ovl_parent p = {.kind = OVL_PARENT_RAW, .path = "../images/debian.raw", .size = 1u << 30};
  roundtrip(2u << 30, 0, &p);
}

Test(overlay_format, roundtrip_parent_layer)
{
  struct ovl_parent p = {.kind = OVL_PARENT_LAYER, .path = "0b6e-base.cow", .size = 64u << 20};
  for (int i = 0; i < OVL_UUID_LEN; i++)
    p.uuid[i] = (uint8_t)(0xA0 + i);
  roundtrip(64u << 20, 0, &p);
}

Test(overlay_format, roundtrip_parent_path_max)
{
  static char longpath[OVL_MAX_PARENT_PATH + 1];
  memset(longpath, 'p', OVL_MAX_PARENT_PATH);
  longpath[OVL_MAX_PARENT_PATH] = '\0';
  struct ovl_parent p = {.kind = OVL_PARENT_RAW, .path = longpath, .size = 4096};
  roundtrip(1u << 20, 16384, &p);
}

Test(overlay_format, uuids_differ)
{
  char *dir = otu_tmpdir();
  char *a = otu_join(dir, "a.cow"), *b = otu_join(dir, "b.cow");
  struct ovl_create_opts o = {.virtual_size = 1u << 20};
  uint8_t ua[OVL_UUID_LEN], ub[OVL_UUID_LEN];

  cr_assert_eq(ovl_create(a, &o, ua), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_create(b, &o, ub), 0, "%s", cc_error_get());
  cr_assert_neq(memcmp(ua, ub, OVL_UUID_LEN), 0, "two layers got the same uuid");
  char s[37];
  ovl_uuid_str(ua, s);
  cr_assert_eq(strlen(s), 36u);
  cr_assert(s[8] == '-' && s[13] == '-' && s[18] == '-' && s[23] == '-', "uuid string %s", s);
  cr_assert_eq(s[14], '4', "uuid string %s is not version 4", s);
  free(a);
  free(b);
  otu_rmtree(dir);
}

Test(overlay_format, create_existing_fails)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  struct ovl_create_opts o = {.virtual_size = 1u << 20};

  cr_assert_eq(ovl_create(path, &o, NULL), 0, "%s", cc_error_get());
  uint8_t before[OTU_SLOT_SIZE], after[OTU_SLOT_SIZE];
  otu_read_slot(path, 0, before);
  cr_assert_eq(ovl_create(path, &o, NULL), -EEXIST);
  otu_read_slot(path, 0, after);
  cr_assert_eq(memcmp(before, after, OTU_SLOT_SIZE), 0, "failed create changed the file");
  free(path);
  otu_rmtree(dir);
}

/* ovl_create must refuse options that would write a file its own reader refuses, and leave no
 * file behind. */
static void
create_refused(const struct ovl_create_opts *o, const char *what)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");

  cc_error_clear();
  int r = ovl_create(path, o, NULL);
  cr_expect_lt(r, 0, "%s: ovl_create accepted it", what);
  cr_expect_neq(cc_error_get()[0], '\0', "%s: no error message", what);
  cr_expect_neq(access(path, F_OK), 0, "%s: a refused create left %s behind", what, path);
  free(path);
  otu_rmtree(dir);
}

Test(overlay_format, create_refuses_bad_options)
{
  static char toolong[OVL_MAX_PARENT_PATH + 2];
  memset(toolong, 'x', OVL_MAX_PARENT_PATH + 1);
  struct ovl_create_opts o;

  o = (struct ovl_create_opts){.virtual_size = 0};
  create_refused(&o, "virtual size 0");
  o = (struct ovl_create_opts){.virtual_size = 1000};
  create_refused(&o, "virtual size not a multiple of 512");
  o = (struct ovl_create_opts){.virtual_size = 1u << 20, .cluster_size = 8192};
  create_refused(&o, "cluster size 8K");
  o = (struct ovl_create_opts){.virtual_size = 1u << 20, .cluster_size = 4u << 20};
  create_refused(&o, "cluster size 4M");
  o = (struct ovl_create_opts){.virtual_size = 1u << 20, .cluster_size = 48u * 1024};
  create_refused(&o, "cluster size not a power of two");
  o = (struct ovl_create_opts){.virtual_size = 1ull << 62, .cluster_size = 16384};
  create_refused(&o, "l1_entries beyond the implementation limit");
  o = (struct ovl_create_opts){.virtual_size = 1u << 20,
                               .parent = {.kind = OVL_PARENT_RAW, .path = "/abs.raw", .size = 512}};
  create_refused(&o, "absolute parent path");
  o = (struct ovl_create_opts){.virtual_size = 1u << 20,
                               .parent = {.kind = OVL_PARENT_RAW, .path = "", .size = 512}};
  create_refused(&o, "empty parent path");
  o = (struct ovl_create_opts){.virtual_size = 1u << 20,
                               .parent = {.kind = OVL_PARENT_RAW, .path = NULL, .size = 512}};
  create_refused(&o, "NULL parent path");
  o = (struct ovl_create_opts){.virtual_size = 1u << 20,
                               .parent = {.kind = OVL_PARENT_RAW, .path = toolong, .size = 512}};
  create_refused(&o, "parent path of 1025 bytes");
  o = (struct ovl_create_opts){
      .virtual_size = 1u << 20,
      .parent = {.kind = OVL_PARENT_RAW, .path = "p.raw", .size = 2u << 20}};
  create_refused(&o, "parent_size > virtual_size");
  o = (struct ovl_create_opts){.virtual_size = 1u << 20, .parent = {.kind = 7, .path = "p.raw"}};
  create_refused(&o, "parent kind 7");
}

/* FORMAT.md 7.4: creation is O(1) in the virtual size: the L1 region is a hole. */
Test(overlay_format, create_is_sparse)
{
  char *dir = otu_tmpdir();
  const uint64_t sizes[] = {1ull << 30, 1ull << 40, 64ull << 40};
  const uint32_t csizes[] = {0, 0, 2u << 20};

  for (int i = 0; i < 3; i++) {
    char name[32];
    snprintf(name, sizeof name, "l%d.cow", i);
    char *path = otu_join(dir, name);
    otu_create(path, sizes[i], csizes[i]);
    uint32_t cs = csizes[i] ? csizes[i] : 128u * 1024;
    uint64_t want = 8192 + align_up((uint64_t)l1_entries_for(sizes[i], cs) * 8, 4096);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq((uint64_t)st.st_size, want, "size %" PRIu64 ": file size", sizes[i]);
    cr_assert_leq((uint64_t)st.st_blocks * 512, 64u * 1024,
                  "virtual size %" PRIu64 ": %" PRIu64 " bytes allocated for a new layer", sizes[i],
                  (uint64_t)st.st_blocks * 512);
    /* and it opens: the all-hole L1 reads as zero entries */
    struct ovl_layer *l = otu_open(path, OVL_RDONLY);
    struct ovl_extent e;
    cr_assert_eq(ovl_map(l, 0, sizes[i], &e, 1), 1);
    cr_assert_eq(e.state, OVL_UNALLOCATED);
    cr_assert_eq(e.offset, 0u);
    cr_assert_eq(e.length, sizes[i], "one unallocated extent over an empty layer");
    ovl_close(l);
    free(path);
  }
  otu_rmtree(dir);
}

/* Data survives close and reopen, in both access modes. */
Test(overlay_format, data_roundtrip)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  const uint64_t vsize = 40u << 20; /* two L1 entries */
  const uint64_t offs[] = {0, 4096, 131072 - 100, 33u << 20, vsize - 8192};
  const uint64_t lens[] = {512, 4096, 200, 300000, 8192};
  uint8_t *buf = malloc(300000), *rd = malloc(300000);

  otu_create(path, vsize, 0);
  struct ovl_layer *l = otu_open(path, OVL_RDWR);
  for (int i = 0; i < 5; i++) {
    otu_pattern(100 + (uint64_t)i, buf, lens[i], offs[i]);
    cr_assert_eq(ovl_pwrite(l, buf, lens[i], offs[i], 0, NULL, NULL), 0, "%s", cc_error_get());
  }
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());

  for (int pass = 0; pass < 2; pass++) {
    l = otu_open(path, pass ? OVL_RDWR : OVL_RDONLY);
    for (int i = 0; i < 5; i++) {
      otu_pattern(100 + (uint64_t)i, buf, lens[i], offs[i]);
      cr_assert_eq(ovl_pread(l, rd, lens[i], offs[i], NULL, NULL), 0, "%s", cc_error_get());
      cr_assert_eq(otu_first_diff(rd, buf, lens[i]), -1, "write %d differs after reopen", i);
    }
    /* between the writes, still zero (no parent) */
    cr_assert_eq(ovl_pread(l, rd, 4096, 1u << 20, NULL, NULL), 0);
    for (int k = 0; k < 4096; k++)
      cr_assert_eq(rd[k], 0);
    struct ovl_info in;
    ovl_get_info(l, &in);
    cr_assert_eq(in.dirty, 0, "cleanly closed layer opened dirty");
    cr_assert_eq(ovl_close(l), 0);
  }
  free(buf);
  free(rd);
  free(path);
  otu_rmtree(dir);
}

/* FORMAT.md 4.2 and 7.3: dirty is made durable before the first allocation and cleared on a
 * clean close; every header change goes to the non-current slot with generation + 1. */
Test(overlay_format, dirty_bit_lifecycle)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  uint8_t s[OTU_SLOT_SIZE], data[4096];

  otu_create(path, 8u << 20, 0);
  struct ovl_layer *l = otu_open(path, OVL_RDWR);
  /* opening for writing alone allocates nothing, so it need not dirty the file */
  int cur = otu_current_slot(path);
  cr_assert_eq(cur, 0);
  otu_read_slot(path, cur, s);
  cr_assert_eq(otu_le64(s + OTU_H_INCOMPAT) & 1, 0u, "dirty set before any allocation");

  memset(data, 0x5A, sizeof data);
  cr_assert_eq(ovl_pwrite(l, data, sizeof data, 65536, 0, NULL, NULL), 0, "%s", cc_error_get());
  cur = otu_current_slot(path);
  cr_assert_eq(cur, 1, "the dirty header must go to the other slot");
  otu_read_slot(path, cur, s);
  cr_assert_eq(otu_le64(s + OTU_H_INCOMPAT) & 1, 1u, "dirty not durable after an allocation");
  cr_assert_eq(otu_le64(s + OTU_H_GENERATION), 2u);
  uint8_t s0[OTU_SLOT_SIZE];
  otu_read_slot(path, 0, s0);
  cr_assert(otu_slot_valid(s0), "the old slot must stay valid");
  cr_assert_eq(otu_le64(s0 + OTU_H_GENERATION), 1u);
  cr_assert_eq(otu_le64(s0 + OTU_H_INCOMPAT), 0u);

  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  cur = otu_current_slot(path);
  otu_read_slot(path, cur, s);
  cr_assert_eq(otu_le64(s + OTU_H_INCOMPAT), 0u, "dirty still set after a clean close");
  cr_assert_eq(otu_le64(s + OTU_H_GENERATION), 3u);
  cr_assert_eq(cur, 0, "generation 3 goes back to slot 0");
  free(path);
  otu_rmtree(dir);
}

/* FORMAT.md 4.2: unknown compatible bits are preserved, unknown autoclear bits cleared by a
 * writer. */
Test(overlay_format, feature_bits_compat_autoclear)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  uint8_t s[OTU_SLOT_SIZE], data[512];

  otu_create(path, 8u << 20, 0);
  otu_patch_header64(path, OTU_H_COMPAT, 1ull << 17);
  otu_patch_header64(path, OTU_H_AUTOCLEAR, 1ull << 40);

  struct ovl_layer *l = otu_open(path, OVL_RDONLY); /* unknown compatible bits: ignored */
  ovl_close(l);
  l = otu_open(path, OVL_RDWR);
  memset(data, 1, sizeof data);
  cr_assert_eq(ovl_pwrite(l, data, sizeof data, 0, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  int cur = otu_current_slot(path);
  otu_read_slot(path, cur, s);
  cr_assert_gt(otu_le64(s + OTU_H_GENERATION), 1u, "no header was rewritten");
  cr_assert_eq(otu_le64(s + OTU_H_COMPAT), 1ull << 17, "unknown compatible bit not preserved");
  cr_assert_eq(otu_le64(s + OTU_H_AUTOCLEAR), 0u, "unknown autoclear bit not cleared");
  free(path);
  otu_rmtree(dir);
}

Test(overlay_format, set_parent_bumps_generation)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  uint8_t s0_before[OTU_SLOT_SIZE], s[OTU_SLOT_SIZE];
  uint8_t uuid[OVL_UUID_LEN];
  struct ovl_create_opts o = {.virtual_size = 16u << 20};
  struct ovl_info in;

  cr_assert_eq(ovl_create(path, &o, uuid), 0, "%s", cc_error_get());
  otu_read_slot(path, 0, s0_before);

  struct ovl_layer *l = otu_open(path, OVL_RDWR);
  struct ovl_parent p1 = {.kind = OVL_PARENT_RAW, .path = "../img/base.raw", .size = 8u << 20};
  cr_assert_eq(ovl_set_parent(l, &p1), 0, "%s", cc_error_get());
  ovl_get_info(l, &in);
  cr_assert_eq(in.generation, 2u);
  cr_assert_eq(in.parent_kind, OVL_PARENT_RAW);
  cr_assert_str_eq(in.parent_path, "../img/base.raw");
  /* slot 1 now holds generation 2; slot 0 was not touched */
  check_slot_bytes(path, 1, 2, 16u << 20, 128u * 1024, &p1, uuid);
  otu_read_slot(path, 0, s);
  cr_assert_eq(memcmp(s, s0_before, OTU_SLOT_SIZE), 0, "the current slot was overwritten");

  struct ovl_parent p2 = {.kind = OVL_PARENT_LAYER, .path = "b.cow", .size = 16u << 20};
  memset(p2.uuid, 0x77, OVL_UUID_LEN);
  cr_assert_eq(ovl_set_parent(l, &p2), 0, "%s", cc_error_get());
  ovl_get_info(l, &in);
  cr_assert_eq(in.generation, 3u);
  check_slot_bytes(path, 0, 3, 16u << 20, 128u * 1024, &p2, uuid);
  cr_assert_eq(otu_current_slot(path), 0);

  /* invalid links are refused and change nothing */
  struct ovl_parent bad = {.kind = OVL_PARENT_RAW, .path = "/etc/passwd", .size = 512};
  cr_assert_lt(ovl_set_parent(l, &bad), 0, "absolute parent path accepted");
  bad = (struct ovl_parent){.kind = OVL_PARENT_RAW, .path = "big.raw", .size = 32u << 20};
  cr_assert_lt(ovl_set_parent(l, &bad), 0, "parent bigger than the layer accepted");
  ovl_get_info(l, &in);
  cr_assert_eq(in.generation, 3u, "a refused set_parent changed the generation");

  struct ovl_parent none = {.kind = OVL_PARENT_NONE};
  cr_assert_eq(ovl_set_parent(l, &none), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());

  l = otu_open(path, OVL_RDONLY);
  ovl_get_info(l, &in);
  cr_assert_geq(in.generation, 4u);
  cr_assert_eq(in.parent_kind, OVL_PARENT_NONE);
  cr_assert_str_eq(in.parent_path, "");
  cr_assert_eq(memcmp(in.uuid, uuid, OVL_UUID_LEN), 0, "uuid changed");
  /* read-only layers refuse header changes */
  cr_assert_lt(ovl_set_parent(l, &p1), 0, "set_parent on a read-only layer");
  ovl_close(l);
  free(path);
  otu_rmtree(dir);
}

Test(overlay_format, set_parent_persists)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  struct ovl_info in;

  otu_create(path, 16u << 20, 16384);
  struct ovl_layer *l = otu_open(path, OVL_RDWR);
  struct ovl_parent p = {.kind = OVL_PARENT_LAYER, .path = "parent.cow", .size = 12u << 20};
  for (int i = 0; i < OVL_UUID_LEN; i++)
    p.uuid[i] = (uint8_t)(i * 7 + 1);
  cr_assert_eq(ovl_set_parent(l, &p), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0);
  l = otu_open(path, OVL_RDONLY);
  ovl_get_info(l, &in);
  cr_assert_eq(in.parent_kind, OVL_PARENT_LAYER);
  cr_assert_str_eq(in.parent_path, "parent.cow");
  cr_assert_eq(memcmp(in.parent_uuid, p.uuid, OVL_UUID_LEN), 0);
  cr_assert_eq(in.parent_size, 12u << 20);
  cr_assert_eq(in.cluster_size, 16384u);
  ovl_close(l);
  free(path);
  otu_rmtree(dir);
}

/* A slot whose generation is lower must lose even when it is slot 1. */
Test(overlay_format, current_slot_is_larger_generation)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  struct ovl_info in;
  uint8_t s[OTU_SLOT_SIZE];

  otu_create(path, 8u << 20, 0);
  /* slot 1 := slot 0 with generation 5 and a raw parent; slot 0 stays generation 1 */
  otu_read_slot(path, 0, s);
  otu_put64(s + OTU_H_GENERATION, 5);
  otu_put32(s + OTU_H_PARENT_KIND, 2);
  otu_put32(s + OTU_H_PARENT_PATH_LENGTH, 5);
  memcpy(s + 256, "x.raw", 5);
  otu_put64(s + OTU_H_PARENT_SIZE, 4096);
  otu_slot_fix_crc(s);
  otu_write_slot(path, 1, s);

  struct ovl_layer *l = otu_open(path, OVL_RDONLY);
  ovl_get_info(l, &in);
  cr_assert_eq(in.generation, 5u);
  cr_assert_eq(in.parent_kind, OVL_PARENT_RAW);
  cr_assert_str_eq(in.parent_path, "x.raw");
  ovl_close(l);

  /* and the other way round: slot 0 newer */
  otu_read_slot(path, 0, s);
  otu_put64(s + OTU_H_GENERATION, 9);
  otu_slot_fix_crc(s);
  otu_write_slot(path, 0, s);
  l = otu_open(path, OVL_RDONLY);
  ovl_get_info(l, &in);
  cr_assert_eq(in.generation, 9u);
  cr_assert_eq(in.parent_kind, OVL_PARENT_NONE);
  ovl_close(l);
  free(path);
  otu_rmtree(dir);
}

/* FORMAT.md 4.2: opening for writing and closing without allocating writes nothing, and
 * in-place writes change no header. */
Test(overlay_format, open_close_writes_nothing)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  uint8_t data[8192];
  size_t n0, n1;

  otu_create(path, 8u << 20, 0);
  uint8_t *before = otu_slurp(path, &n0);
  struct ovl_layer *l = otu_open(path, OVL_RDWR);
  cr_assert_eq(ovl_flush(l), 0);
  cr_assert_eq(ovl_close(l), 0);
  uint8_t *after = otu_slurp(path, &n1);
  cr_assert(n0 == n1 && memcmp(before, after, n0) == 0, "open RDWR + close changed a new layer");
  free(before);
  free(after);

  /* a layer with data: an in-place write changes the data, not the header or the map */
  l = otu_open(path, OVL_RDWR);
  memset(data, 0x61, sizeof data);
  cr_assert_eq(ovl_pwrite(l, data, sizeof data, 0, 0, NULL, NULL), 0);
  cr_assert_eq(ovl_close(l), 0);
  uint8_t s0[OTU_SLOT_SIZE], s1[OTU_SLOT_SIZE];
  otu_read_slot(path, 0, s0);
  otu_read_slot(path, 1, s1);
  before = otu_slurp(path, &n0);
  l = otu_open(path, OVL_RDWR);
  memset(data, 0x62, sizeof data);
  cr_assert_eq(ovl_pwrite(l, data, 4096, 1000, 0, NULL, NULL), 0);
  cr_assert_eq(ovl_close(l), 0);
  after = otu_slurp(path, &n1);
  cr_assert_eq(n0, n1, "an in-place write changed the file size");
  cr_assert_eq(memcmp(before, after, 8192), 0, "an in-place write rewrote a header slot");
  cr_assert_eq(memcmp(before + 8192, after + 8192, 4096), 0, "an in-place write changed the L1");
  free(before);
  free(after);
  free(path);
  otu_rmtree(dir);
}
