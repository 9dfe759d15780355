/* SPDX-License-Identifier: BSD-3-Clause */
/* nbd-session: one NBD connection kept open while a test changes the world around it.
 *
 * Design notes
 * ------------
 * The remote-template fault test must read through *one* connection before, during and after
 * the remote goes away: a new connection per read would test reconnection of the client, not
 * the server's.  Commands come on stdin, one a line; each answer is one line on stdout
 * (flushed), so the shell test can drive it through a FIFO:
 *
 *   read OFF LEN          "ok BYTE" (the first byte, hex) or "err ERRNO-NAME"
 *   until-ok OFF LEN SECS read every 100 ms until it succeeds: "ok BYTE" or "err ERRNO-NAME"
 *   quit
 *
 *   nbd-session SOCK EXPORT
 */
#include <errno.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int
one_read(struct nbd_handle *h, char *buf, uint64_t off, uint64_t len, char *out, size_t outlen)
{
  if (nbd_pread(h, buf, len, off, 0) == -1) {
    int e = nbd_get_errno();
    snprintf(out, outlen, "err %s", e == EIO ? "EIO" : e ? strerror(e) : "unknown");
    return -1;
  }
  snprintf(out, outlen, "ok %02x", (unsigned char)buf[0]);
  return 0;
}

int
main(int argc, char **argv)
{
  struct nbd_handle *h;
  char line[256], out[128], *buf;

  if (argc != 3) {
    fprintf(stderr, "usage: nbd-session SOCK EXPORT\n");
    return 2;
  }
  h = nbd_create();
  if (!h || nbd_set_export_name(h, argv[2]) == -1 || nbd_connect_unix(h, argv[1]) == -1) {
    fprintf(stderr, "nbd-session: %s\n", nbd_get_error());
    return 1;
  }
  buf = malloc(1 << 20);
  if (!buf)
    return 1;
  while (fgets(line, sizeof line, stdin)) {
    unsigned long long off, len;
    unsigned secs;

    if (sscanf(line, "read %llu %llu", &off, &len) == 2 && len <= (1 << 20)) {
      one_read(h, buf, off, len, out, sizeof out);
    } else if (sscanf(line, "until-ok %llu %llu %u", &off, &len, &secs) == 3 && len <= (1 << 20)) {
      for (unsigned i = 0; i < secs * 10; i++) {
        if (one_read(h, buf, off, len, out, sizeof out) == 0)
          break;
        nanosleep(&(struct timespec){0, 100000000}, NULL);
      }
    } else if (strncmp(line, "quit", 4) == 0) {
      break;
    } else {
      snprintf(out, sizeof out, "usage error");
    }
    printf("%s\n", out);
    fflush(stdout);
  }
  nbd_shutdown(h, 0);
  nbd_close(h);
  free(buf);
  return 0;
}
