/* SPDX-License-Identifier: BSD-3-Clause */
/* Shared helpers of the overlay/ unit tests (tests/unit/test-overlay-*.c).
 *
 * These helpers are an independent oracle: they decode and patch layer files from
 * docs/FORMAT.md alone (their own CRC-32C, their own little-endian accessors, their own field
 * offsets) and never include overlay/'s private headers, so a spec misreading in overlay/
 * cannot hide behind the same misreading here.  Every name starts with otu_ because this file
 * is linked into every unit suite, including other modules' suites.
 */
#ifndef COWCHAIN_TESTS_UTIL_OVERLAY_H
#define COWCHAIN_TESTS_UTIL_OVERLAY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "overlay/overlay.h"

/* Header field offsets, FORMAT.md section 4.1 (typed in from the spec, on purpose). */
enum {
  OTU_H_MAGIC = 0,
  OTU_H_VERSION = 8,
  OTU_H_HEADER_LENGTH = 12,
  OTU_H_INCOMPAT = 16,
  OTU_H_COMPAT = 24,
  OTU_H_AUTOCLEAR = 32,
  OTU_H_GENERATION = 40,
  OTU_H_UUID = 48,
  OTU_H_VIRTUAL_SIZE = 64,
  OTU_H_CLUSTER_BITS = 72,
  OTU_H_L1_ENTRIES = 76,
  OTU_H_L1_OFFSET = 80,
  OTU_H_CREATE_TIME = 88,
  OTU_H_PARENT_KIND = 96,
  OTU_H_PARENT_PATH_LENGTH = 100,
  OTU_H_PARENT_UUID = 104,
  OTU_H_PARENT_SIZE = 120,
  OTU_H_RESERVED = 128,
  OTU_H_CHECKSUM = 252,
};

#define OTU_SLOT_SIZE 4096u
#define OTU_L1_OFFSET 8192u
#define OTU_L2_SIZE 4096u

/* ---- temporary directories ---- */

/* mkdtemp under /tmp; returns a malloc'd path (asserts on failure). */
char *otu_tmpdir(void);
/* Remove a directory tree made by otu_tmpdir, then free the path. */
void otu_rmtree(char *dir);
/* dir + "/" + name, malloc'd. */
char *otu_join(const char *dir, const char *name);
/* The fixture of a suite whose every test works in a new temporary directory, otu_dir:
 * TestSuite(name, .init = otu_dir_init, .fini = otu_dir_fini) (the fini also runs after a
 * failed assertion, so nothing is left in /tmp). */
extern char *otu_dir;
void otu_dir_init(void);
void otu_dir_fini(void);

/* ---- encoding ---- */

uint32_t otu_crc32c(const void *buf, size_t len);
uint32_t otu_le32(const uint8_t *p);
uint64_t otu_le64(const uint8_t *p);
void otu_put32(uint8_t *p, uint32_t v);
void otu_put64(uint8_t *p, uint64_t v);

/* ---- raw file access (assert on I/O failure) ---- */

void otu_read_at(const char *path, void *buf, size_t len, uint64_t off);
void otu_write_at(const char *path, const void *buf, size_t len, uint64_t off);
uint64_t otu_file_size(const char *path);
/* Whole file into a malloc'd buffer; size in *len. */
uint8_t *otu_slurp(const char *path, size_t *len);

/* ---- header slots ---- */

/* Is this slot valid by FORMAT.md 4.3 (magic and checksum)?  The checksummed length is clamped
 * to the slot, so garbage lengths do not read out of bounds. */
int otu_slot_valid(const uint8_t slot[OTU_SLOT_SIZE]);
/* Recompute the checksum of a slot in memory. */
void otu_slot_fix_crc(uint8_t slot[OTU_SLOT_SIZE]);
void otu_read_slot(const char *path, int idx, uint8_t slot[OTU_SLOT_SIZE]);
void otu_write_slot(const char *path, int idx, const uint8_t slot[OTU_SLOT_SIZE]);
/* Index of the current slot (valid, larger generation), or -1 if none. */
int otu_current_slot(const char *path);
/* Patch `len` bytes at `off` of the current slot and recompute its checksum. */
void otu_patch_header(const char *path, size_t off, const void *bytes, size_t len);
void otu_patch_header32(const char *path, size_t off, uint32_t v);
void otu_patch_header64(const char *path, size_t off, uint64_t v);

/* ---- map (read straight from the file) ---- */

struct otu_l2e {
  uint64_t cluster_offset;
  uint32_t alloc, zero;
};

uint64_t otu_l1_get(const char *path, uint32_t i);
void otu_l1_set(const char *path, uint32_t i, uint64_t v);
struct otu_l2e otu_l2_get(const char *path, uint64_t l2_offset, uint32_t j);
void otu_l2_set(const char *path, uint64_t l2_offset, uint32_t j, struct otu_l2e e);

/* Decode the whole map of a (closed) layer with this file's own decoder and check the
 * invariants of FORMAT.md 5.1 and 5.3 independently of overlay/.  Fills one state per
 * sub-cluster (OVL_UNALLOCATED, OVL_ZERO, OVL_DATA) and, if `phys` is not NULL, the file offset
 * of each allocated one.  Returns 0, or -1 with the fault in err. */
int otu_decode_map(const char *path, uint8_t *states, uint64_t *phys, uint64_t nsc, char *err,
                   size_t errlen);

/* ---- data patterns and randomness ---- */

/* splitmix64 step: the PRNG of every randomized test (small, seedable, portable). */
uint64_t otu_rand(uint64_t *state);
/* Uniform in [0, n) (n > 0). */
uint64_t otu_rand_below(uint64_t *state, uint64_t n);
/* The seed of a randomized test: $COWCHAIN_SEED if set, else time-based.  Prints it. */
uint64_t otu_seed(const char *test_name);

/* Byte `off` of the deterministic "parent" pattern number `seed`.  Fills buf with bytes
 * [off, off + len). */
void otu_pattern(uint64_t seed, void *buf, uint64_t len, uint64_t off);
/* An ovl_below_fn serving otu_pattern; opaque points at a struct otu_below. */
struct otu_below {
  uint64_t seed;
  uint64_t limit; /* virtual size: a call beyond it sets `bad` and fails */
  int bad;
  unsigned long calls;
  /* optional log of the ranges asked for (copy-up tests) */
  uint64_t log_off[64], log_len[64];
  unsigned nlog;
};
int otu_below_pattern(void *opaque, void *buf, uint64_t length, uint64_t offset);

/* ---- I/O ---- */

/* Point overlay/'s ovl_io at a table whose fdatasync does nothing (the rest are the real
 * calls), for this test process: for suites that never look at durability (the overlay's crash
 * tests do), since syncs are slow on a shared disk (a 1,000-layer chain is thousands of syncs,
 * seconds each on a loaded machine). */
void otu_io_nosync(void);

/* ---- layers ---- */

/* ovl_create with no parent, asserting success. */
void otu_create(const char *path, uint64_t virtual_size, uint32_t cluster_size);
/* ovl_open, asserting success. */
struct ovl_layer *otu_open(const char *path, unsigned flags);

/* Index of the first differing byte, or -1 if equal. */
long otu_first_diff(const void *a, const void *b, size_t len);

#endif
