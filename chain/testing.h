/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: test hooks.  What the unit tests and the fuzzers look at or change inside
 * chain/ (index sharing, the I/O path, the depth limit); not part of the API that server/,
 * cli/ and the pool use (chain/chain.h).
 */
#ifndef COWCHAIN_CHAIN_TESTING_H
#define COWCHAIN_CHAIN_TESTING_H

#include <stddef.h>
#include <stdint.h>

#include "chain/chain.h"

/* The identity of the shared resolution index a chain uses (NULL if the chain has
 * no frozen part): two chains on the same frozen layer return the same pointer. */
const void *cc_chain_index_id(const struct cc_chain *c);
/* How many resolution indexes are in use (by an open chain) in this process. */
size_t cc_chain_index_count(void);
/* How many idle indexes the cache (cc_set_index_cache) holds; not counted above. */
size_t cc_chain_index_cached(void);
/* Bytes of the cache budget the idle indexes use. */
uint64_t cc_chain_index_cache_used(void);
/* How many indexes this process has built from files (a cache hit builds none). */
uint64_t cc_chain_index_builds(void);
/* How many runs the chain's index holds (0 without a frozen part): memory is ~24 bytes each. */
size_t cc_chain_index_runs(const struct cc_chain *c);
/* 1 if reads of this chain currently go through io_uring, 0 if through pread. */
int cc_chain_uses_uring(const struct cc_chain *c);
/* A smaller depth limit than CC_MAX_DEPTH (0 restores it), so the "too deep" error can be
 * tested without creating 4097 files.  Not thread-safe: call it before opening chains. */
void cc_chain_set_max_depth(size_t n);

#endif
