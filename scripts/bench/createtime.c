/* SPDX-License-Identifier: BSD-3-Clause */
/* createtime: the O(1) pool operations inside one process (no process start, no exec), so
 * scripts/bench/create can say how much of a command is the operation's own work: its reads,
 * locks and durable steps.
 *
 * usage: createtime POOL FROM NAME
 *   cc_clone_create(NAME --from FROM), cc_snapshot_create(NAME x), cc_snapshot_revert(NAME x),
 *   each timed alone; prints "clone US snapshot US revert US" (microseconds, wall clock).
 *
 * Built by scripts/bench/create against the static libraries of a cowchain build directory,
 * like mkchain.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/error.h"
#include "pool/pool.h"

static long long
now_us(void)
{
  struct timespec t;

  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

int
main(int argc, char **argv)
{
  struct cc_pool *p;
  long long t0, t1, t2, t3;

  if (argc != 4) {
    fprintf(stderr, "usage: createtime POOL FROM NAME\n");
    return 2;
  }
  if (cc_pool_open(argv[1], &p) < 0) {
    fprintf(stderr, "createtime: %s\n", cc_error_get());
    return 1;
  }
  t0 = now_us();
  if (cc_clone_create(p, argv[3], argv[2], 0, NULL, NULL) < 0)
    goto fail;
  t1 = now_us();
  if (cc_snapshot_create(p, argv[3], "x", NULL) < 0)
    goto fail;
  t2 = now_us();
  if (cc_snapshot_revert(p, argv[3], "x") < 0)
    goto fail;
  t3 = now_us();
  printf("clone %lld snapshot %lld revert %lld\n", t1 - t0, t2 - t1, t3 - t2);
  cc_pool_close(p);
  return 0;

fail:
  fprintf(stderr, "createtime: %s\n", cc_error_get());
  cc_pool_close(p);
  return 1;
}
