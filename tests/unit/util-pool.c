/* SPDX-License-Identifier: BSD-3-Clause */
/* Shared helpers of the pool/ unit suites; see util-pool.h. */
#include "tests/unit/util-pool.h"

#include <stdlib.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "tests/unit/util-overlay.h"

void
ptu_pool_new(char **pooldir, struct cc_pool **pool)
{
  otu_dir_init();
  *pooldir = otu_join(otu_dir, "pool");
  cr_assert_eq(cc_pool_init(*pooldir, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(cc_pool_open(*pooldir, pool), 0, "%s", cc_error_get());
}

void
ptu_pool_remove(char **pooldir, struct cc_pool **pool)
{
  cc_pool_close(*pool);
  *pool = NULL;
  free(*pooldir);
  *pooldir = NULL;
  otu_dir_fini();
}
