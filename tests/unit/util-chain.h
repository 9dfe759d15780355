/* SPDX-License-Identifier: BSD-3-Clause */
/* Helpers for the chain/ unit tests (tests/unit/test-chain-*.c): a reference model of a
 * virtual disk, layer/raw-file builders and checkers that compare a cc_chain with the model.
 *
 * The model keeps the bytes the disk must read back and, per granule (the sub-cluster size of
 * the chain's layers, at most 4096), what extents may report there:
 *
 *   CTU_HOLE     nothing in the chain ever touched it      -> HOLE|ZERO only
 *   CTU_DATA     written (or raw data)                     -> data only
 *   CTU_ZERO     wholly zeroed by write-zeroes/trim        -> ZERO only
 *   CTU_ANYZERO  partly zeroed (the overlay may write data zeroes or keep a zero state)
 *                                                          -> data or ZERO
 *
 * plus, whatever the state, "ZERO bit set => the bytes are zero".
 * Temporary directories, randomness and the seed come from util-overlay.h (otu_*).
 */
#ifndef COWCHAIN_TESTS_UTIL_CHAIN_H
#define COWCHAIN_TESTS_UTIL_CHAIN_H

#include <stddef.h>
#include <stdint.h>

#include "chain/chain.h"
#include "chain/testing.h"
#include "overlay/overlay.h"

enum ctu_state { CTU_HOLE = 0, CTU_DATA = 1, CTU_ZERO = 2, CTU_ANYZERO = 3 };

struct ctu_model {
  uint8_t *data;
  uint8_t *state; /* one enum ctu_state per granule */
  uint64_t size;
  uint32_t granule;
};

void ctu_model_init(struct ctu_model *m, uint64_t size, uint32_t granule);
/* Extend to `size` (new bytes: zero, HOLE). */
void ctu_model_grow(struct ctu_model *m, uint64_t size);
void ctu_model_copy(struct ctu_model *dst, const struct ctu_model *src);
void ctu_model_free(struct ctu_model *m);
void ctu_model_write(struct ctu_model *m, const void *buf, uint64_t len, uint64_t off);
void ctu_model_zero(struct ctu_model *m, uint64_t len, uint64_t off);

/* Write the model as a sparse raw image: every 4096-byte block that holds a DATA granule is
 * written, the rest left as holes.  The model size must be a multiple of 4096. */
void ctu_write_raw(const char *path, const struct ctu_model *m);

/* ovl_create, asserting success.  kind NONE ignores rel/puuid/psize. */
void ctu_layer(const char *path, uint64_t vsize, uint32_t cluster, enum ovl_parent_kind kind,
               const char *rel, const uint8_t *puuid, uint64_t psize,
               uint8_t uuid_out[OVL_UUID_LEN]);

/* ---- layer stacks: layer i is "<dir>/<prefix><i>.cow", on layer i-1 ---- */

/* The path of layer i of the stack, malloc'd. */
char *ctu_stack_path(const char *dir, const char *prefix, int i);
/* Create layer i of the stack (virtual size `size`, default cluster size) on layer i-1, whose
 * uuid is uuids[i-1]; its own goes to uuids[i].  The bottom is layer 0, parentless, or, when
 * `raw` names a raw image in `dir`, that image: then layer 1 sits on it and there is no layer 0.
 */
void ctu_stack_layer(const char *dir, const char *prefix, int i, uint64_t size, const char *raw,
                     uint8_t uuids[][OVL_UUID_LEN]);
/* A template for a stack: the model m (`size` bytes, 4096-byte granules) gets random data in
 * about half of its 4096-byte blocks, drawn from rng, and is written as the sparse raw image
 * dir/name (ctu_write_raw). */
void ctu_random_raw(const char *dir, const char *name, struct ctu_model *m, uint64_t size,
                    uint64_t *rng);

/* cc_chain_open, asserting success. */
struct cc_chain *ctu_open(const char *path, unsigned flags);

/* Read [off, off + len) through the chain and compare every byte with the model. */
void ctu_check_read(struct cc_chain *c, const struct ctu_model *m, uint64_t off, uint64_t len);
/* The whole disk, in reads of `chunk` bytes. */
void ctu_check_all(struct cc_chain *c, const struct ctu_model *m, uint64_t chunk);
/* cc_chain_extents over [off, off + len): ascending, contiguous, merged, and consistent with
 * the model as described above. */
void ctu_check_extents(struct cc_chain *c, const struct ctu_model *m, uint64_t off, uint64_t len);

/* Number of open file descriptors of this process whose target (readlink of /proc/self/fd/N)
 * starts with `prefix`: a directory, or e.g. "anon_inode:[io_uring]". */
int ctu_count_fds(const char *prefix);

#endif
