/* SPDX-License-Identifier: BSD-3-Clause */
/* Helpers of the pool/ unit suites (tests/unit/test-pool-*.c): the fixture of a suite whose
 * every test works on a new, empty pool.  Temporary directories come from util-overlay.h. */
#ifndef COWCHAIN_TESTS_UTIL_POOL_H
#define COWCHAIN_TESTS_UTIL_POOL_H

#include "pool/pool.h"

/* A new temporary directory otu_dir with an empty pool in it, *pooldir ("<otu_dir>/pool",
 * malloc'd), initialised and opened as *pool; asserts success.  A suite's .init. */
void ptu_pool_new(char **pooldir, struct cc_pool **pool);
/* Close the pool, free *pooldir and remove otu_dir.  The suite's .fini. */
void ptu_pool_remove(char **pooldir, struct cc_pool **pool);

#endif
