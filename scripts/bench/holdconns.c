/* SPDX-License-Identifier: BSD-3-Clause */
/* holdconns: open N NBD connections at once, touch each export, run a command while they are
 * all held open, then close them.  Used by the memory benchmark (scripts/bench/memory.sh) to
 * measure one server's RSS with N clients connected.
 *
 * usage: holdconns STRIDE 'COMMAND' URI...
 *   For each URI: connect, then read 4 KiB at every STRIDE bytes of the export (STRIDE 0:
 *   one read at offset 0).  When all are connected and read, run COMMAND with /bin/sh, then
 *   disconnect all.  Exit status: COMMAND's, or 1 on any NBD error.
 *
 * Build: cc -O2 -o holdconns holdconns.c $(pkg-config --cflags --libs libnbd)
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <libnbd.h>

int
main(int argc, char **argv)
{
  static char buf[4096];
  uint64_t stride;
  int n, i, status;
  struct nbd_handle **h;

  if (argc < 4) {
    fprintf(stderr, "usage: holdconns STRIDE COMMAND URI...\n");
    return 2;
  }
  stride = strtoull(argv[1], NULL, 0);
  n = argc - 3;
  h = calloc((size_t)n, sizeof *h);
  if (!h)
    return 1;
  for (i = 0; i < n; i++) {
    int64_t size;
    uint64_t off;

    h[i] = nbd_create();
    if (!h[i] || nbd_connect_uri(h[i], argv[3 + i]) == -1 || (size = nbd_get_size(h[i])) < 0) {
      fprintf(stderr, "holdconns: %s: %s\n", argv[3 + i], nbd_get_error());
      return 1;
    }
    for (off = 0; off + sizeof buf <= (uint64_t)size; off += stride ? stride : (uint64_t)size) {
      if (nbd_pread(h[i], buf, sizeof buf, off, 0) == -1) {
        fprintf(stderr, "holdconns: pread %s at %" PRIu64 ": %s\n", argv[3 + i], off,
                nbd_get_error());
        return 1;
      }
    }
  }
  status = system(argv[2]);
  for (i = 0; i < n; i++) {
    nbd_shutdown(h[i], 0);
    nbd_close(h[i]);
  }
  free(h);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
