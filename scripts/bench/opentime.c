/* SPDX-License-Identifier: BSD-3-Clause */
/* opentime: how long chain/ takes to open an export and build its index, inside one process
 * (no nbdkit, no NBD client), so the open-time table of the readpath section can say how much
 * of an nbdinfo command is cowchain's.
 *
 * usage: opentime POOL EXPORT N
 *   N times: cc_pool_open_export(EXPORT, read-only) and close, with the idle index cache off
 *   (every open builds the index); then N times with the cache on (every open after the first
 *   is a cache hit).  Prints "build MEDIAN_MS MIN_MS" and "cached MEDIAN_MS MIN_MS".
 *
 * Built by scripts/bench against the static libraries of the cowchain build directory, like
 * mkchain.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "chain/chain.h"
#include "common/error.h"
#include "pool/pool.h"

static double
now_ms(void)
{
  struct timespec t;

  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int
cmp_d(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;

  return x < y ? -1 : x > y;
}

static int
series(struct cc_pool *p, const char *name, int n, const char *label)
{
  double *t = calloc((size_t)n, sizeof *t);

  for (int i = 0; i < n; i++) {
    struct cc_chain *c;
    double t0 = now_ms();
    int r = cc_pool_open_export(p, name, 1, CC_IO_AUTO, &c, NULL);

    if (r < 0) {
      fprintf(stderr, "opentime: %s: %s\n", name, cc_error_get());
      return 1;
    }
    cc_chain_close(c);
    t[i] = now_ms() - t0;
  }
  qsort(t, (size_t)n, sizeof *t, cmp_d);
  printf("%s %.3f %.3f\n", label, t[n / 2], t[0]);
  free(t);
  return 0;
}

int
main(int argc, char **argv)
{
  struct cc_pool *p;
  int n;

  if (argc != 4 || (n = atoi(argv[3])) < 1) {
    fprintf(stderr, "usage: opentime POOL EXPORT N\n");
    return 2;
  }
  if (cc_pool_open(argv[1], &p) < 0) {
    fprintf(stderr, "opentime: %s: %s\n", argv[1], cc_error_get());
    return 1;
  }
  cc_set_index_cache(0);
  if (series(p, argv[2], n, "build"))
    return 1;
  cc_set_index_cache(64u << 20);
  if (series(p, argv[2], n, "cached"))
    return 1;
  cc_set_index_cache(0);
  cc_pool_close(p);
  return 0;
}
