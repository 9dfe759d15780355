/* SPDX-License-Identifier: BSD-3-Clause */
/* mkchain: fill the layers of a cowchain clone through the chain/ library, in one process.
 *
 * usage: mkchain POOL CLONE CMDDIR FIRST LAST
 *   For i = FIRST..LAST: open clone CLONE read-write (cc_pool_open_export), apply
 *   CMDDIR/layer-i.cmds (lines `write [-q] -P 0xNN OFFSET LENGTH`, the same files qemu-io applies
 *   to the qcow2 chain) with cc_chain_pwrite, flush and close, then `snapshot create CLONE s{i}`
 *   (cc_snapshot_create).  Equivalent to `cowchain snapshot create` after writing the same bytes
 *   through nbdkit + qemu-io, without one server, one client and one CLI process per layer, whose
 *   start-up is what made the CLI path take minutes at depth 256.
 *
 * Built by scripts/bench against the static libraries of the cowchain build directory:
 *   cc -O2 -D_GNU_SOURCE -I ROOT -o mkchain mkchain.c BUILD/pool/libcc_pool.a
 * BUILD/chain/libcc_chain.a \ BUILD/overlay/libcc_overlay.a BUILD/libcc_common.a -luring -lpthread
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool/pool.h"
#include "common/error.h"

static int
fail(const char *what, int r)
{
  const char *msg = cc_error_get();

  fprintf(stderr, "mkchain: %s: %s\n", what, msg && *msg ? msg : strerror(-r));
  return 1;
}

int
main(int argc, char **argv)
{
  struct cc_pool *p;
  char path[4096], line[256], snap[CC_NAME_MAX + 1];
  unsigned char *buf = NULL;
  size_t bufsz = 0;
  long first, last, i;
  int r;

  if (argc != 6) {
    fprintf(stderr, "usage: mkchain POOL CLONE CMDDIR FIRST LAST\n");
    return 2;
  }
  first = strtol(argv[4], NULL, 10);
  last = strtol(argv[5], NULL, 10);
  if ((r = cc_pool_open(argv[1], &p)) < 0)
    return fail(argv[1], r);
  for (i = first; i <= last; i++) {
    struct cc_chain *c;
    FILE *f;

    snprintf(path, sizeof path, "%s/layer-%ld.cmds", argv[3], i);
    if (!(f = fopen(path, "r"))) {
      perror(path);
      return 1;
    }
    if ((r = cc_pool_open_export(p, argv[2], 0, 0, &c, NULL)) < 0)
      return fail(argv[2], r);
    while (fgets(line, sizeof line, f)) {
      unsigned pat;
      uint64_t off, len;

      if (sscanf(line, "write -q -P %x %" SCNu64 " %" SCNu64, &pat, &off, &len) != 3 &&
          sscanf(line, "write -P %x %" SCNu64 " %" SCNu64, &pat, &off, &len) != 3) {
        fprintf(stderr, "mkchain: %s: cannot parse: %s", path, line);
        return 1;
      }
      if (len > bufsz) {
        free(buf);
        if (!(buf = malloc(len)))
          return fail("malloc", -ENOMEM);
        bufsz = len;
      }
      memset(buf, (int)pat, len);
      if ((r = cc_chain_pwrite(c, buf, len, off, 0)) < 0)
        return fail("pwrite", r);
    }
    fclose(f);
    if ((r = cc_chain_flush(c)) < 0 || (r = cc_chain_close(c)) < 0)
      return fail("flush/close", r);
    snprintf(snap, sizeof snap, "s%ld", i);
    if ((r = cc_snapshot_create(p, argv[2], snap, NULL)) < 0)
      return fail(snap, r);
  }
  free(buf);
  cc_pool_close(p);
  return 0;
}
