/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: every malformed-file case of FORMAT.md 4 and 5.3 is refused on open with a negative
 * errno and a message naming the file and the fault, and never crashes (this suite runs under
 * ASan in CI).
 *
 * Each case starts from a valid layer made through the API and patches bytes with pwrite;
 * header patches recompute the checksum (util-overlay.c) so that the check under test, not the
 * checksum, is what refuses the file.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "overlay/overlay.h"
#include "tests/unit/util-overlay.h"

TestSuite(overlay_malformed, .timeout = 60);

#define K 1024u
#define M (1024u * 1024u)
#define DATA_VSIZE (40ull * M) /* two L1 entries with 128 KiB clusters */

static int
contains_ci(const char *hay, const char *needle)
{
  size_t n = strlen(needle);
  for (; *hay; hay++)
    if (strncasecmp(hay, needle, n) == 0)
      return 1;
  return 0;
}

/* ovl_open(flags) must fail; the message must name the path and contain one of the NULL-
 * terminated key words (case-insensitive); the refused open must not change the file; and
 * ovl_check must refuse it too. */
static void
expect_refused(const char *path, unsigned flags, const char *what, ...)
{
  size_t len0, len1;
  uint8_t *before = otu_slurp(path, &len0);
  struct ovl_layer *l = NULL;

  cc_error_clear();
  int r = ovl_open(path, flags, &l);
  if (r == 0)
    ovl_close(l);
  cr_assert_lt(r, 0, "%s: ovl_open(%s) accepted the file", what, flags ? "RDWR" : "RDONLY");
  const char *msg = cc_error_get();
  cr_log_info("%s: %d %s", what, r, msg);
  cr_expect(strstr(msg, path) != NULL, "%s: message does not name the file: \"%s\"", what, msg);

  va_list ap;
  va_start(ap, what);
  int found = 0;
  const char *kw, *first = NULL;
  while ((kw = va_arg(ap, const char *)) != NULL) {
    if (!first)
      first = kw;
    if (contains_ci(msg, kw))
      found = 1;
  }
  va_end(ap);
  cr_expect(found, "%s: message does not name the fault (\"%s\"...): \"%s\"", what, first, msg);

  uint8_t *after = otu_slurp(path, &len1);
  cr_assert(len0 == len1 && memcmp(before, after, len0) == 0, "%s: a refused open changed the file",
            what);
  free(before);
  free(after);

  /* ovl_check validates as a read-only open does (the corrupt bit alone passes it) */
  if (flags == OVL_RDONLY) {
    struct ovl_check_result res;
    memset(&res, 0, sizeof res);
    cr_expect_lt(ovl_check(path, 0, &res), 0, "%s: ovl_check accepted the file", what);
  }
}

/* First byte past everything the map references (and past EOF): a place no object is at. */
static uint64_t
free_offset(const char *path)
{
  struct ovl_layer *l = otu_open(path, OVL_RDONLY);
  struct ovl_info in;
  ovl_get_info(l, &in);
  ovl_close(l);
  uint64_t end = in.frontier > in.file_size ? in.frontier : in.file_size;
  return (end + 4095) / 4096 * 4096;
}

/* A fresh layer: slot 0 only, no map. */
static char *
mk_fresh(const char *dir, const char *name, uint64_t vsize)
{
  char *path = otu_join(dir, name);
  otu_create(path, vsize, 0);
  return path;
}

/* A layer with a raw parent "p.raw" of 1 MiB. */
static char *
mk_parent(const char *dir, const char *name)
{
  char *path = otu_join(dir, name);
  struct ovl_create_opts o = {.virtual_size = 8 * M,
                              .parent = {.kind = OVL_PARENT_RAW, .path = "p.raw", .size = M}};
  cr_assert_eq(ovl_create(path, &o, NULL), 0, "%s", cc_error_get());
  return path;
}

/* A closed layer with a map, both header slots valid:
 *   cluster 0: sc 0-3 data; cluster 1: all data; cluster 2: sc 5 data; cluster 3: sc 0-7 zero;
 *   cluster 256 (second L2 table): sc 0 data. */
static char *
mk_data(const char *dir, const char *name, uint64_t vsize)
{
  char *path = otu_join(dir, name);
  uint8_t *buf = malloc(128 * K);
  otu_create(path, vsize, 0);
  struct ovl_layer *l = otu_open(path, OVL_RDWR);
  otu_pattern(1, buf, 128 * K, 0);
  cr_assert_eq(ovl_pwrite(l, buf, 16 * K, 0, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_pwrite(l, buf, 128 * K, 128 * K, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_pwrite(l, buf, 4 * K, 256 * K + 20 * K, 0, NULL, NULL), 0);
  cr_assert_eq(ovl_zero(l, 32 * K, 384 * K, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_pwrite(l, buf, 4 * K, 32 * M, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  free(buf);
  return path;
}

/* Sanity: the unpatched bases open, else every refusal below proves nothing. */
Test(overlay_malformed, bases_are_valid)
{
  char *dir = otu_tmpdir();
  char *a = mk_fresh(dir, "a.cow", 8 * M), *b = mk_parent(dir, "b.cow"),
       *c = mk_data(dir, "c.cow", DATA_VSIZE);
  const char *paths[] = {a, b, c};
  for (int i = 0; i < 3; i++) {
    struct ovl_layer *l = otu_open(paths[i], OVL_RDWR);
    ovl_close(l);
    struct ovl_check_result res;
    cr_assert_eq(ovl_check(paths[i], 0, &res), 0, "%s", cc_error_get());
  }
  cr_assert_eq(otu_current_slot(c), 0);
  uint8_t s[OTU_SLOT_SIZE];
  otu_read_slot(c, 1, s);
  cr_assert(otu_slot_valid(s), "mk_data should leave both slots valid");
  cr_assert_neq(otu_l1_get(c, 0), 0u);
  cr_assert_neq(otu_l1_get(c, 1), 0u);
  free(a);
  free(b);
  free(c);
  otu_rmtree(dir);
}

/* ---- header slots ---- */

Test(overlay_malformed, bad_magic_both_slots)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  for (int i = 0; i < 2; i++) {
    uint8_t s[OTU_SLOT_SIZE];
    otu_read_slot(p, i, s);
    memcpy(s, "COWCHAIX", 8);
    otu_slot_fix_crc(s);
    otu_write_slot(p, i, s);
  }
  expect_refused(p, OVL_RDONLY, "bad magic", "magic", "no valid header", "not a cowchain", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, not_a_layer_at_all)
{
  char *dir = otu_tmpdir();
  char *p = otu_join(dir, "junk.cow");
  uint8_t junk[16384];
  otu_pattern(3, junk, sizeof junk, 0);
  FILE *f = fopen(p, "w");
  fwrite(junk, 1, sizeof junk, f);
  fclose(f);
  expect_refused(p, OVL_RDONLY, "random bytes", "magic", "no valid header", "not a cowchain", NULL);
  /* and an empty file */
  f = fopen(p, "w");
  fclose(f);
  expect_refused(p, OVL_RDONLY, "empty file", "magic", "no valid header", "not a cowchain", "short",
                 "truncated", "too small", NULL);
  free(p);
  otu_rmtree(dir);
}

/* A slot with a wrong magic is unused: the other valid slot is current. */
Test(overlay_malformed, bad_magic_newer_slot_uses_older)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  uint8_t s[OTU_SLOT_SIZE];
  int cur = otu_current_slot(p);
  otu_read_slot(p, 1 - cur, s);
  uint64_t older = otu_le64(s + OTU_H_GENERATION);
  otu_read_slot(p, cur, s);
  s[0] = 'X';
  otu_write_slot(p, cur, s);
  struct ovl_layer *l = otu_open(p, OVL_RDONLY);
  struct ovl_info in;
  ovl_get_info(l, &in);
  cr_assert_eq(in.generation, older);
  ovl_close(l);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, bad_checksum_both_slots)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  for (int i = 0; i < 2; i++) {
    uint8_t s[OTU_SLOT_SIZE];
    otu_read_slot(p, i, s);
    s[OTU_H_VIRTUAL_SIZE] ^= 0x02; /* a field change the checksum does not cover */
    otu_write_slot(p, i, s);
  }
  expect_refused(p, OVL_RDONLY, "bad checksum in both slots", "checksum", "crc", "no valid header",
                 NULL);
  char *q = mk_fresh(dir, "fresh.cow", 8 * M);
  uint8_t s[OTU_SLOT_SIZE];
  otu_read_slot(q, 0, s);
  s[OTU_H_CHECKSUM] ^= 1;
  otu_write_slot(q, 0, s);
  expect_refused(q, OVL_RDWR, "bad checksum in the only slot", "checksum", "crc", "no valid header",
                 NULL);
  free(q);
  free(p);
  otu_rmtree(dir);
}

/* A torn header write: the newer slot's checksum is wrong, the older slot is current. */
Test(overlay_malformed, bad_checksum_newer_slot_uses_older)
{
  char *dir = otu_tmpdir();
  char *p = mk_fresh(dir, "l.cow", 8 * M);
  struct ovl_layer *l = otu_open(p, OVL_RDWR);
  struct ovl_parent par = {.kind = OVL_PARENT_RAW, .path = "new.raw", .size = 4096};
  cr_assert_eq(ovl_set_parent(l, &par), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0);

  int cur = otu_current_slot(p);
  uint8_t s[OTU_SLOT_SIZE], o[OTU_SLOT_SIZE];
  otu_read_slot(p, cur, s);
  otu_read_slot(p, 1 - cur, o);
  cr_assert(otu_slot_valid(o), "no older slot to fall back to");
  cr_assert_eq(otu_le32(s + OTU_H_PARENT_KIND), 2u);
  /* half of the newer slot torn: its second half reverted to zeroes */
  memset(s + 200, 0, OTU_SLOT_SIZE - 200);
  otu_write_slot(p, cur, s);

  l = otu_open(p, OVL_RDWR);
  struct ovl_info in;
  ovl_get_info(l, &in);
  cr_assert_eq(in.generation, otu_le64(o + OTU_H_GENERATION), "the older slot was not used");
  cr_assert_eq(in.parent_kind, (enum ovl_parent_kind)otu_le32(o + OTU_H_PARENT_KIND));
  ovl_close(l);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, unsupported_version)
{
  char *dir = otu_tmpdir();
  char *p = mk_fresh(dir, "l.cow", 8 * M);
  otu_patch_header32(p, OTU_H_VERSION, 2);
  expect_refused(p, OVL_RDONLY, "version 2", "version", NULL);
  otu_patch_header32(p, OTU_H_VERSION, 0);
  expect_refused(p, OVL_RDONLY, "version 0", "version", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, unknown_incompatible_feature)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  otu_patch_header64(p, OTU_H_INCOMPAT, 1ull << 2);
  expect_refused(p, OVL_RDONLY, "incompatible bit 2", "feature", "incompatible", NULL);
  otu_patch_header64(p, OTU_H_INCOMPAT, 1ull << 63 | 1);
  expect_refused(p, OVL_RDWR, "incompatible bit 63", "feature", "incompatible", NULL);
  free(p);
  otu_rmtree(dir);
}

/* corrupt: refused for writing, allowed read-only (salvage). */
Test(overlay_malformed, corrupt_bit)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  otu_patch_header64(p, OTU_H_INCOMPAT, 2);
  expect_refused(p, OVL_RDWR, "corrupt bit, RDWR", "corrupt", NULL);
  struct ovl_layer *l = otu_open(p, OVL_RDONLY);
  struct ovl_info in;
  ovl_get_info(l, &in);
  cr_assert_eq(in.corrupt, 1);
  uint8_t buf[4096], want[4096];
  otu_pattern(1, want, sizeof want, 0); /* mk_data wrote pattern 1 of [0, 128K) at 128K */
  cr_assert_eq(ovl_pread(l, buf, 4096, 128 * K, NULL, NULL), 0);
  cr_assert_eq(memcmp(buf, want, 4096), 0, "salvage read");
  ovl_close(l);
  free(p);
  otu_rmtree(dir);
}

/* The dirty bit alone is fine for both modes (FORMAT.md 4.2). */
Test(overlay_malformed, dirty_bit_opens)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  otu_patch_header64(p, OTU_H_INCOMPAT, 1);
  struct ovl_layer *l = otu_open(p, OVL_RDONLY);
  struct ovl_info in;
  ovl_get_info(l, &in);
  cr_assert_eq(in.dirty, 1);
  ovl_close(l);
  l = otu_open(p, OVL_RDWR);
  cr_assert_eq(ovl_close(l), 0);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, header_length)
{
  char *dir = otu_tmpdir();
  char *p = mk_fresh(dir, "l.cow", 8 * M);
  otu_patch_header32(p, OTU_H_HEADER_LENGTH, 248);
  expect_refused(p, OVL_RDONLY, "header_length 248", "header_length", "header length", NULL);
  otu_patch_header32(p, OTU_H_HEADER_LENGTH, 260);
  expect_refused(p, OVL_RDONLY, "header_length 260", "header_length", "header length", NULL);
  otu_patch_header32(p, OTU_H_HEADER_LENGTH, 0);
  expect_refused(p, OVL_RDONLY, "header_length 0", "header_length", "header length", NULL);
  free(p);
  /* header_length + parent_path_length > 4096 */
  p = mk_parent(dir, "q.cow");
  otu_patch_header32(p, OTU_H_HEADER_LENGTH, 4096);
  expect_refused(p, OVL_RDONLY, "header_length 4096 plus a path", "header_length", "header length",
                 "checksum", NULL);
  otu_patch_header32(p, OTU_H_HEADER_LENGTH, 0xFFFFFFF8u);
  expect_refused(p, OVL_RDONLY, "header_length huge", "header_length", "header length", "checksum",
                 NULL);
  free(p);
  otu_rmtree(dir);
}

/* FORMAT.md 4.3: a slot with a correct checksum is valid whatever its fields say, so a newer
 * slot whose header_length is 260 (not a multiple of 8) is current and the file is refused;
 * the older, otherwise fine slot must not be served instead.  The same damage in the older
 * slot is harmless: the newer one is current. */
Test(overlay_malformed, newer_slot_with_bad_header_length)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  uint8_t s[2][OTU_SLOT_SIZE];
  int cur = otu_current_slot(p);

  cr_assert_geq(cur, 0);
  otu_read_slot(p, 1 - cur, s[1 - cur]);
  cr_assert(otu_slot_valid(s[1 - cur]), "mk_data should leave the older slot valid too");
  otu_read_slot(p, cur, s[cur]);
  cr_assert_gt(otu_le64(s[cur] + OTU_H_GENERATION), otu_le64(s[1 - cur] + OTU_H_GENERATION));

  otu_patch_header32(p, OTU_H_HEADER_LENGTH, 260);
  otu_read_slot(p, cur, s[cur]);
  cr_assert(otu_slot_valid(s[cur]), "the patched slot must stay valid (checksum fixed)");
  cr_assert_eq(otu_current_slot(p), cur, "the patched slot must still be the newer one");
  expect_refused(p, OVL_RDONLY, "newer slot with header_length 260", "header_length", NULL);
  expect_refused(p, OVL_RDWR, "newer slot with header_length 260 (rdwr)", "header_length", NULL);
  cr_expect(contains_ci(cc_error_get(), "260"), "the message should give the value: %s",
            cc_error_get());

  /* Swap the roles: the damaged slot becomes the older one, and the file opens. */
  otu_put64(s[cur] + OTU_H_GENERATION, otu_le64(s[1 - cur] + OTU_H_GENERATION) - 1);
  otu_slot_fix_crc(s[cur]);
  otu_write_slot(p, cur, s[cur]);
  cr_assert_eq(otu_current_slot(p), 1 - cur);
  struct ovl_layer *l = NULL;
  int r = ovl_open(p, OVL_RDONLY, &l);
  cr_expect_eq(r, 0, "an older slot's bad header_length refused the file: %s", cc_error_get());
  if (r == 0)
    ovl_close(l);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, cluster_bits_out_of_range)
{
  char *dir = otu_tmpdir();
  char *p = mk_fresh(dir, "l.cow", 8 * M);
  const uint32_t bad[] = {13, 22, 0, 63, 64, 0xFFFFFFFFu};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char what[64];
    snprintf(what, sizeof what, "cluster_bits %u", bad[i]);
    otu_patch_header32(p, OTU_H_CLUSTER_BITS, bad[i]);
    expect_refused(p, OVL_RDONLY, what, "cluster_bits", "cluster size", "cluster_size", NULL);
  }
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l1_entries_inconsistent)
{
  char *dir = otu_tmpdir();
  char *p = mk_fresh(dir, "l.cow", 64 * M); /* 2 entries */
  const uint32_t bad[] = {1, 3, 0, 0xFFFFFFFFu};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char what[64];
    snprintf(what, sizeof what, "l1_entries %u", bad[i]);
    otu_patch_header32(p, OTU_H_L1_ENTRIES, bad[i]);
    expect_refused(p, OVL_RDONLY, what, "l1_entries", "L1 entries", NULL);
  }
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l1_offset)
{
  char *dir = otu_tmpdir();
  char *p = mk_fresh(dir, "l.cow", 8 * M);
  otu_patch_header64(p, OTU_H_L1_OFFSET, 12288);
  expect_refused(p, OVL_RDONLY, "l1_offset 12288", "l1_offset", "L1 offset", NULL);
  otu_patch_header64(p, OTU_H_L1_OFFSET, 0);
  expect_refused(p, OVL_RDONLY, "l1_offset 0", "l1_offset", "L1 offset", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, virtual_size)
{
  char *dir = otu_tmpdir();
  char *p = mk_fresh(dir, "l.cow", 8 * M);
  otu_patch_header64(p, OTU_H_VIRTUAL_SIZE, 0);
  otu_patch_header32(p, OTU_H_L1_ENTRIES, 0);
  expect_refused(p, OVL_RDONLY, "virtual size 0", "virtual_size", "virtual size", NULL);
  otu_patch_header64(p, OTU_H_VIRTUAL_SIZE, 8 * M - 100);
  otu_patch_header32(p, OTU_H_L1_ENTRIES, 1);
  expect_refused(p, OVL_RDONLY, "virtual size not a multiple of 512", "virtual_size",
                 "virtual size", NULL);
  otu_patch_header64(p, OTU_H_VIRTUAL_SIZE, (1ull << 62) + 512);
  otu_patch_header32(p, OTU_H_L1_ENTRIES,
                     (uint32_t)(((1ull << 62) + 512 + (32ull * M) - 1) / (32ull * M)));
  expect_refused(p, OVL_RDONLY, "virtual size beyond 2^62", "virtual_size", "virtual size",
                 "l1_entries", "limit", NULL);
  /* within the format, beyond the implementation limit of 4 Mi L1 entries */
  otu_patch_header64(p, OTU_H_VIRTUAL_SIZE, (4ull * M + 1) * 32 * M);
  otu_patch_header32(p, OTU_H_L1_ENTRIES, 4 * M + 1);
  expect_refused(p, OVL_RDONLY, "L1 beyond the implementation limit", "limit", "too large",
                 "l1_entries", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, generation_zero)
{
  char *dir = otu_tmpdir();
  char *p = mk_fresh(dir, "l.cow", 8 * M);
  otu_patch_header64(p, OTU_H_GENERATION, 0);
  expect_refused(p, OVL_RDONLY, "generation 0", "generation", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, uuid_all_zero)
{
  char *dir = otu_tmpdir();
  char *p = mk_fresh(dir, "l.cow", 8 * M);
  uint8_t z[OVL_UUID_LEN] = {0};
  otu_patch_header(p, OTU_H_UUID, z, sizeof z);
  expect_refused(p, OVL_RDONLY, "uuid all zero", "uuid", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, parent_kind_invalid)
{
  char *dir = otu_tmpdir();
  char *p = mk_parent(dir, "l.cow");
  otu_patch_header32(p, OTU_H_PARENT_KIND, 3);
  expect_refused(p, OVL_RDONLY, "parent_kind 3", "parent_kind", "parent kind", NULL);
  otu_patch_header32(p, OTU_H_PARENT_KIND, 0x80000001u);
  expect_refused(p, OVL_RDONLY, "parent_kind huge", "parent_kind", "parent kind", NULL);
  free(p);
  otu_rmtree(dir);
}

/* Set the parent path bytes and length of the current slot. */
static void
set_parent_path(const char *p, const void *bytes, uint32_t len)
{
  uint8_t s[OTU_SLOT_SIZE];
  int cur = otu_current_slot(p);
  otu_read_slot(p, cur, s);
  memset(s + 256, 0, OTU_SLOT_SIZE - 256);
  memcpy(s + 256, bytes, len);
  otu_put32(s + OTU_H_PARENT_PATH_LENGTH, len);
  otu_slot_fix_crc(s);
  otu_write_slot(p, cur, s);
}

Test(overlay_malformed, parent_path)
{
  char *dir = otu_tmpdir();
  char *p = mk_parent(dir, "l.cow");
  set_parent_path(p, "/etc/p.raw", 10);
  expect_refused(p, OVL_RDONLY, "absolute parent path", "parent", NULL);
  set_parent_path(p, "", 0);
  expect_refused(p, OVL_RDONLY, "empty parent path", "parent", NULL);
  static char longp[1025];
  memset(longp, 'a', sizeof longp);
  set_parent_path(p, longp, 1025);
  expect_refused(p, OVL_RDONLY, "parent path of 1025 bytes", "parent", NULL);
  set_parent_path(p, "p\0.raw", 6);
  expect_refused(p, OVL_RDONLY, "NUL in the parent path", "parent", NULL);
  free(p);

  /* no parent, yet a path */
  p = mk_fresh(dir, "n.cow", 8 * M);
  set_parent_path(p, "x.raw", 5);
  expect_refused(p, OVL_RDONLY, "path without a parent", "parent", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, parent_size_and_uuid)
{
  char *dir = otu_tmpdir();
  char *p = mk_parent(dir, "l.cow");
  otu_patch_header64(p, OTU_H_PARENT_SIZE, 8 * M + 512);
  expect_refused(p, OVL_RDONLY, "parent_size > virtual_size", "parent_size", "parent size", NULL);
  free(p);
  p = mk_fresh(dir, "n.cow", 8 * M);
  otu_patch_header64(p, OTU_H_PARENT_SIZE, 4096);
  expect_refused(p, OVL_RDONLY, "parent_size without a parent", "parent", NULL);
  free(p);
  otu_rmtree(dir);
}

/* ---- the map ---- */

Test(overlay_malformed, truncated_file)
{
  char *dir = otu_tmpdir();
  char *p = mk_fresh(dir, "l.cow", 8 * M); /* data_start = 12288 */
  cr_assert_eq(truncate(p, 12288 - 512), 0);
  expect_refused(p, OVL_RDONLY, "file shorter than the L1 region", "truncated", "short", "size",
                 "L1", NULL);
  cr_assert_eq(truncate(p, 4096), 0);
  expect_refused(p, OVL_RDONLY, "file of one slot", "truncated", "short", "size", "L1", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l1_entry_misaligned)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  otu_l1_set(p, 0, otu_l1_get(p, 0) + 512);
  expect_refused(p, OVL_RDONLY, "L1 entry misaligned", "L1", "align", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l1_entry_past_eof)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  otu_l1_set(p, 1, free_offset(p));
  expect_refused(p, OVL_RDONLY, "L1 entry at EOF", "L1", "past", "end of", "beyond", NULL);
  otu_l1_set(p, 1, 1ull << 50);
  expect_refused(p, OVL_RDONLY, "L1 entry far past EOF", "L1", "past", "end of", "beyond", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l1_entry_into_header)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  otu_l1_set(p, 0, 4096);
  expect_refused(p, OVL_RDONLY, "L1 entry into the header", "L1", "data_start", "header", "overlap",
                 NULL);
  otu_l1_set(p, 0, 8192);
  expect_refused(p, OVL_RDONLY, "L1 entry into the L1 table", "L1", "data_start", "overlap", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, two_l1_entries_share_an_l2)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  otu_l1_set(p, 1, otu_l1_get(p, 0));
  expect_refused(p, OVL_RDONLY, "two L1 entries, one L2 table", "overlap", NULL);
  free(p);
  otu_rmtree(dir);
}

/* Helpers for L2 patches of mk_data's first table. */
static uint64_t
l2a(const char *p)
{
  uint64_t t = otu_l1_get(p, 0);
  cr_assert_neq(t, 0u);
  return t;
}

Test(overlay_malformed, l2_alloc_without_cluster)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  struct otu_l2e e = {.cluster_offset = 0, .alloc = 1, .zero = 0};
  otu_l2_set(p, l2a(p), 10, e); /* an empty entry */
  expect_refused(p, OVL_RDONLY, "alloc bit, no cluster", "cluster", "offset", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l2_alloc_and_zero)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  struct otu_l2e e = otu_l2_get(p, l2a(p), 0);
  cr_assert_eq(e.alloc & 1, 1u);
  e.zero |= 1;
  otu_l2_set(p, l2a(p), 0, e);
  expect_refused(p, OVL_RDONLY, "alloc and zero", "zero", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l2_cluster_misaligned)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  struct otu_l2e e = otu_l2_get(p, l2a(p), 2);
  e.cluster_offset += 512;
  otu_l2_set(p, l2a(p), 2, e);
  expect_refused(p, OVL_RDONLY, "cluster offset misaligned", "align", "cluster", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l2_allocated_past_eof)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  struct otu_l2e e = otu_l2_get(p, l2a(p), 2);
  e.cluster_offset = free_offset(p) + 4096 * 4;
  otu_l2_set(p, l2a(p), 2, e);
  expect_refused(p, OVL_RDONLY, "data past EOF", "past", "end of", "beyond", "truncated", NULL);
  free(p);
  /* the same by truncation: the last allocated sub-cluster is cut */
  p = mk_data(dir, "t.cow", DATA_VSIZE);
  cr_assert_eq(truncate(p, (off_t)otu_file_size(p) - 512), 0);
  expect_refused(p, OVL_RDONLY, "file cut short", "past", "end of", "beyond", "truncated", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l2_clusters_overlap)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  struct otu_l2e e0 = otu_l2_get(p, l2a(p), 0), e2 = otu_l2_get(p, l2a(p), 2);
  e2.cluster_offset = e0.cluster_offset;
  otu_l2_set(p, l2a(p), 2, e2);
  expect_refused(p, OVL_RDONLY, "two clusters, same place", "overlap", NULL);
  e2.cluster_offset = e0.cluster_offset + 64 * K; /* overlapping by half */
  otu_l2_set(p, l2a(p), 2, e2);
  expect_refused(p, OVL_RDONLY, "two clusters overlapping", "overlap", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l2_cluster_overlaps_l2_table)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  uint64_t t1 = otu_l1_get(p, 1);
  struct otu_l2e e = otu_l2_get(p, l2a(p), 2);
  e.cluster_offset = t1 - 64 * K; /* its last half covers the second L2 table */
  if (t1 < 64 * K + 12288)
    e.cluster_offset = t1;
  otu_l2_set(p, l2a(p), 2, e);
  expect_refused(p, OVL_RDONLY, "cluster over an L2 table", "overlap", NULL);
  e.cluster_offset = l2a(p);
  otu_l2_set(p, l2a(p), 2, e);
  expect_refused(p, OVL_RDONLY, "cluster at its own L2 table", "overlap", NULL);
  free(p);
  otu_rmtree(dir);
}

Test(overlay_malformed, l2_cluster_into_header)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  struct otu_l2e e = otu_l2_get(p, l2a(p), 2);
  e.cluster_offset = 4096;
  otu_l2_set(p, l2a(p), 2, e);
  expect_refused(p, OVL_RDONLY, "cluster over the header", "data_start", "overlap", "header",
                 "offset", NULL);
  free(p);
  otu_rmtree(dir);
}

/* FORMAT.md 5.3 invariant 4: nothing set at or beyond the virtual size. */
Test(overlay_malformed, bits_beyond_virtual_size)
{
  char *dir = otu_tmpdir();
  /* 40 MiB - 64 KiB: cluster 319 keeps sub-clusters 0-15, clusters 320-511 are beyond */
  const uint64_t vsize = DATA_VSIZE - 64 * K;
  char *p = mk_data(dir, "l.cow", vsize);
  uint64_t t1 = otu_l1_get(p, 1), fo = free_offset(p);
  cr_assert_neq(t1, 0u);

  struct otu_l2e e = {.cluster_offset = 0, .alloc = 0, .zero = 1u << 16};
  otu_l2_set(p, t1, 63, e);
  expect_refused(p, OVL_RDONLY, "zero bit beyond the virtual size", "beyond", "virtual size",
                 "past", NULL);
  e = (struct otu_l2e){.cluster_offset = 0, .alloc = 0, .zero = 1u << 15};
  otu_l2_set(p, t1, 63, e); /* the last in-range sub-cluster: fine */
  struct ovl_layer *l = otu_open(p, OVL_RDONLY);
  ovl_close(l);

  e = (struct otu_l2e){.cluster_offset = 0, .alloc = 0, .zero = 1};
  otu_l2_set(p, t1, 64, e);
  expect_refused(p, OVL_RDONLY, "zero bit in a cluster beyond", "beyond", "virtual size", "past",
                 NULL);
  e = (struct otu_l2e){.cluster_offset = fo, .alloc = 0, .zero = 0};
  otu_l2_set(p, t1, 64, e);
  expect_refused(p, OVL_RDONLY, "bound cluster beyond", "beyond", "virtual size", "past", NULL);
  otu_l2_set(p, t1, 64, (struct otu_l2e){0, 0, 0});

  /* an allocated bit beyond, with a real (in-file) physical cluster behind it */
  uint64_t phys = fo;
  cr_assert_eq(truncate(p, (off_t)(phys + 128 * K)), 0);
  e = (struct otu_l2e){.cluster_offset = phys, .alloc = 1, .zero = 0};
  otu_l2_set(p, t1, 63, e);
  l = otu_open(p, OVL_RDONLY); /* sub-cluster 0 of cluster 319: in range, legal */
  ovl_close(l);
  e.alloc = 1u | 1u << 20;
  otu_l2_set(p, t1, 63, e);
  expect_refused(p, OVL_RDONLY, "alloc bit beyond the virtual size", "beyond", "virtual size",
                 "past", NULL);
  free(p);
  otu_rmtree(dir);
}

/* Space past the frontier holds no information (FORMAT.md 3, 6): junk there is not an error. */
Test(overlay_malformed, junk_past_frontier_is_ignored)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  uint64_t size = otu_file_size(p);
  uint8_t junk[8192];
  otu_pattern(77, junk, sizeof junk, 0);
  otu_write_at(p, junk, sizeof junk, size + 1000);
  struct ovl_layer *l = otu_open(p, OVL_RDWR);
  uint8_t buf[4096], want[4096];
  /* a new allocation may land on the junk: it must not show through */
  memset(want, 0xAB, sizeof want);
  cr_assert_eq(ovl_pwrite(l, want, 4096, 5 * M, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_pread(l, buf, 4096, 5 * M + 0, NULL, NULL), 0);
  cr_assert_eq(memcmp(buf, want, 4096), 0);
  cr_assert_eq(ovl_pread(l, buf, 4096, 5 * M + 4096, NULL, NULL), 0);
  for (int i = 0; i < 4096; i++)
    cr_assert_eq(buf[i], 0, "junk past the frontier shows through at byte %d", i);
  cr_assert_eq(ovl_close(l), 0);
  free(p);
  otu_rmtree(dir);
}

/* Random damage anywhere in the header or map: refused or accepted, never a crash, and an
 * accepted file reads without error or reports one cleanly. */
Test(overlay_malformed, fuzz_never_crashes)
{
  char *dir = otu_tmpdir();
  char *base = mk_data(dir, "base.cow", DATA_VSIZE - 64 * K);
  size_t blen;
  uint8_t *orig = otu_slurp(base, &blen);
  uint64_t seed = otu_seed("overlay_malformed::fuzz_never_crashes"), rng = seed;
  uint64_t t0 = otu_l1_get(base, 0), t1 = otu_l1_get(base, 1);
  char *p = otu_join(dir, "fuzz.cow");
  uint8_t *buf = malloc(M);
  int accepted = 0;

  for (int it = 0; it < 300; it++) {
    uint8_t *img = malloc(blen);
    memcpy(img, orig, blen);
    int nflips = 1 + (int)otu_rand_below(&rng, 4);
    int where = (int)otu_rand_below(&rng, 4);
    int cur = otu_current_slot(base);
    for (int k = 0; k < nflips; k++) {
      uint64_t off;
      switch (where) {
      case 0: /* the current header's fixed part */
        off = (uint64_t)cur * 4096 + otu_rand_below(&rng, 256);
        break;
      case 1:
        off = 8192 + otu_rand_below(&rng, 16);
        break;
      case 2:
        off = t0 + otu_rand_below(&rng, 4096);
        break;
      default:
        off = t1 + otu_rand_below(&rng, 4096);
        break;
      }
      img[off] ^= (uint8_t)(1u << otu_rand_below(&rng, 8));
    }
    if (where == 0) {
      /* checksum fixed so that the field checks run, other slot unusable so this one is read */
      otu_slot_fix_crc(img + cur * 4096);
      img[(1 - cur) * 4096] = 'X';
    }
    unlink(p);
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(img, 1, blen, f), blen);
    fclose(f);
    free(img);

    struct ovl_layer *l = NULL;
    int r = ovl_open(p, OVL_RDONLY, &l);
    if (r < 0) {
      cr_assert_neq(cc_error_get()[0], '\0', "iteration %d: refused without a message", it);
      continue;
    }
    accepted++;
    uint64_t vs = ovl_virtual_size(l);
    for (uint64_t off = 0; off < vs && off < 64 * M; off += M) {
      uint64_t n = vs - off < M ? vs - off : M;
      (void)ovl_pread(l, buf, n, off, NULL, NULL);
    }
    struct ovl_extent e[16];
    (void)ovl_map(l, 0, vs, e, 16);
    ovl_close(l);
  }
  cr_log_info("fuzz: seed %" PRIu64 ", 300 damaged files, %d accepted", seed, accepted);
  free(buf);
  free(orig);
  free(p);
  free(base);
  otu_rmtree(dir);
}

/* FORMAT.md 5.3 (2, 4): a bound cluster may end past EOF as long as its allocated
 * sub-clusters do not, and a sub-cluster straddling virtual_size lies wholly in the file.
 * 1 MiB + 512 with 128 KiB clusters: cluster 8's sub-cluster 0 straddles the end. */
Test(overlay_malformed, straddling_subcluster_and_cluster_past_eof)
{
  char *dir = otu_tmpdir();
  char *p = otu_join(dir, "l.cow");
  uint8_t buf[512], back[512];
  struct ovl_layer *l;

  otu_create(p, M + 512, 0);
  l = otu_open(p, OVL_RDWR);
  memset(buf, 0xAB, sizeof buf);
  cr_assert_eq(ovl_pwrite(l, buf, 512, M, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());

  uint64_t l2 = otu_l1_get(p, 0);
  struct otu_l2e e = otu_l2_get(p, l2, 8);
  uint64_t size = otu_file_size(p);
  cr_assert_eq(e.alloc, 1u, "only the straddling sub-cluster is allocated");
  cr_assert_geq(size, e.cluster_offset + 4 * K, "the whole straddling sub-cluster is in the file");
  cr_assert_lt(size, e.cluster_offset + 128 * K, "this case needs a cluster that ends past EOF");
  l = otu_open(p, OVL_RDONLY); /* accepted as it is */
  cr_assert_eq(ovl_pread(l, back, 512, M, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(memcmp(buf, back, 512), 0);
  ovl_close(l);
  struct ovl_check_result res;
  cr_assert_eq(ovl_check(p, 0, &res), 0, "%s", cc_error_get());

  /* The file cut inside the straddling sub-cluster (past virtual_size's share of it): refused. */
  cr_assert_eq(truncate(p, (off_t)(e.cluster_offset + 4 * K - 512)), 0);
  expect_refused(p, OVL_RDONLY, "straddling sub-cluster cut by EOF", "end of the file", NULL);
  free(p);
  otu_rmtree(dir);
}

/* What the spec tells readers to ignore or to accept must not be refused: reserved bytes,
 * bytes after the parent path, and a longer fixed part (header_length 264, a multiple of 8:
 * the parent path then starts at 264). */
Test(overlay_malformed, accepted_variants)
{
  char *dir = otu_tmpdir();
  char *p = mk_parent(dir, "l.cow");
  uint8_t s[OTU_SLOT_SIZE];
  struct ovl_layer *l;
  struct ovl_info in;

  otu_read_slot(p, 0, s);
  memset(s + OTU_H_RESERVED, 0xA5, OTU_H_CHECKSUM - OTU_H_RESERVED);
  otu_slot_fix_crc(s);
  otu_write_slot(p, 0, s);
  l = otu_open(p, OVL_RDONLY);
  ovl_close(l);

  otu_read_slot(p, 0, s);
  memset(s + 256 + 5, 0x5A, 100); /* after "p.raw": outside the checksum, reserved */
  otu_write_slot(p, 0, s);
  l = otu_open(p, OVL_RDONLY);
  ovl_get_info(l, &in);
  cr_assert_str_eq(in.parent_path, "p.raw");
  ovl_close(l);

  otu_read_slot(p, 0, s);
  memset(s + 256, 0, OTU_SLOT_SIZE - 256);
  memset(s + 256, 0xEE, 8); /* an unknown extension of the fixed part */
  memcpy(s + 264, "p.raw", 5);
  otu_put32(s + OTU_H_HEADER_LENGTH, 264);
  otu_slot_fix_crc(s);
  otu_write_slot(p, 0, s);
  l = NULL;
  int r = ovl_open(p, OVL_RDONLY, &l);
  cr_expect_eq(r, 0, "header_length 264 refused: %s", cc_error_get());
  if (r == 0) {
    ovl_get_info(l, &in);
    cr_expect_str_eq(in.parent_path, "p.raw", "the path after a 264-byte fixed part");
    ovl_close(l);
  }
  free(p);
  otu_rmtree(dir);
}

/* Not a layer file at all: a directory, a FIFO-free special file.  An error, never a hang or a
 * crash. */
Test(overlay_malformed, not_a_regular_file)
{
  char *dir = otu_tmpdir();
  struct ovl_layer *l = NULL;
  cc_error_clear();
  int r = ovl_open(dir, OVL_RDONLY, &l);
  cr_assert_lt(r, 0, "a directory opened as a layer");
  cr_expect(strstr(cc_error_get(), dir) != NULL, "message: %s", cc_error_get());
  r = ovl_open("/dev/null", OVL_RDONLY, &l);
  cr_assert_lt(r, 0, "/dev/null opened as a layer");
  otu_rmtree(dir);
}

/* FORMAT.md 4.3: the current slot is chosen by magic, checksum and generation alone; if it then
 * breaks a limit the file is refused, not read through the older slot (which would silently
 * undo the newer header's change). */
Test(overlay_malformed, broken_current_slot_no_fallback)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  uint8_t s[OTU_SLOT_SIZE];
  otu_read_slot(p, 1 - otu_current_slot(p), s);
  cr_assert(otu_slot_valid(s), "no valid older slot");
  otu_patch_header32(p, OTU_H_CLUSTER_BITS, 22);
  expect_refused(p, OVL_RDONLY, "current slot with cluster_bits 22, valid older slot",
                 "cluster_bits", "cluster size", NULL);
  free(p);
  otu_rmtree(dir);
}

/* Offsets near 2^64: "offset + length <= file size" must not wrap around. */
Test(overlay_malformed, offsets_that_wrap)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  uint64_t t0 = l2a(p);
  otu_l1_set(p, 1, UINT64_MAX - 4095);
  expect_refused(p, OVL_RDONLY, "L1 entry 2^64 - 4096", "L1", "past", "end of", "beyond", NULL);
  free(p);

  p = mk_data(dir, "m.cow", DATA_VSIZE);
  t0 = l2a(p);
  struct otu_l2e e = otu_l2_get(p, t0, 2);
  e.cluster_offset = UINT64_MAX - 4095;
  otu_l2_set(p, t0, 2, e);
  expect_refused(p, OVL_RDONLY, "cluster at 2^64 - 4096", "past", "end of", "beyond", "offset",
                 "overlap", NULL);
  e.cluster_offset = UINT64_MAX - 128 * K + 1; /* aligned, ends exactly at 2^64 */
  otu_l2_set(p, t0, 2, e);
  expect_refused(p, OVL_RDONLY, "cluster ending at 2^64", "past", "end of", "beyond", "offset",
                 "overlap", NULL);
  /* allocated sub-cluster 5 then wraps to file offset 0: accepted, it would read and write
   * header slot 0 as data */
  e.cluster_offset = 0 - 5ull * 4096;
  otu_l2_set(p, t0, 2, e);
  expect_refused(p, OVL_RDONLY, "sub-cluster wrapping to offset 0", "past", "end of", "beyond",
                 "offset", "overlap", NULL);
  /* bound but nothing allocated yet: the first write to sub-cluster 5 would land on slot 0 */
  e.alloc = 0;
  otu_l2_set(p, t0, 2, e);
  expect_refused(p, OVL_RDONLY, "bound cluster wrapping past 2^64", "offset", "overlap", "beyond",
                 "past", NULL);
  free(p);
  otu_rmtree(dir);
}

/* OVL_HEADER_ONLY (a parent-link walk): the header is still validated, the map is not read, so
 * a layer with a broken map opens header-only (and reports its identity) but not for I/O; a
 * broken header is refused as by a full open; a header-only open cannot be for writing. */
Test(overlay_malformed, header_only_open)
{
  char *dir = otu_tmpdir();
  char *p = mk_data(dir, "l.cow", DATA_VSIZE);
  struct ovl_layer *l = NULL;
  struct ovl_info full, hdr;
  char buf[512];

  l = otu_open(p, OVL_RDONLY);
  ovl_get_info(l, &full);
  ovl_close(l);
  otu_l1_set(p, 0, otu_l1_get(p, 0) + 512); /* the map is now invalid */
  expect_refused(p, OVL_RDONLY, "L1 entry misaligned", "L1", "align", NULL);
  cr_assert_eq(ovl_open(p, OVL_RDONLY | OVL_NOLOCK | OVL_HEADER_ONLY, &l), 0, "%s", cc_error_get());
  ovl_get_info(l, &hdr);
  cr_assert_eq(memcmp(hdr.uuid, full.uuid, OVL_UUID_LEN), 0);
  cr_assert_eq(hdr.virtual_size, full.virtual_size);
  cr_assert_eq(hdr.generation, full.generation);
  cr_assert_eq(hdr.parent_kind, full.parent_kind);
  cr_assert_eq(ovl_pread(l, buf, sizeof buf, 0, NULL, NULL), -EINVAL, "I/O on a header-only open");
  ovl_close(l);
  cr_assert_eq(ovl_open(p, OVL_RDWR | OVL_HEADER_ONLY, &l), -EINVAL);
  cr_assert(strstr(cc_error_get(), "header-only"), "%s", cc_error_get());
  otu_write_at(p, "XXXXXXXX", 8, 0); /* slot 0's magic */
  otu_write_at(p, "XXXXXXXX", 8, OTU_SLOT_SIZE);
  cr_assert_lt(ovl_open(p, OVL_RDONLY | OVL_NOLOCK | OVL_HEADER_ONLY, &l), 0,
               "a broken header opened header-only");
  free(p);
  otu_rmtree(dir);
}
