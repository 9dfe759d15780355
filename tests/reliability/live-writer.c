/* SPDX-License-Identifier: BSD-3-Clause */
/* live-writer: the client of the live power-cut tests (test-powerloss-live.sh, and
 * test-powerloss-live-merge.sh).
 *
 *   live-writer SOCK JOURNAL READY GO STOP pause|during EXPORT...
 *
 * One NBD connection per export; block i (BASE + i * BS, one cluster) of every export is
 * written with the byte (i % 250) + 1.  Each request is journaled in JOURNAL ("issue E i"
 * before the write, "wrote E i" after it returned, "flushed E i" after the flush that follows
 * it returned) with one write(2) per line, so that the journal lines sit in the strace of the
 * server and the CLI, in the order of their causes: powerloss.py --live reads from them what
 * each cut point must keep.  Writes 0-3 are flushed; write 4 is not (only the settle of the old
 * top, before the server answers push-top, makes it durable); then READY is created and, in mode
 * "pause", the writer waits for GO (the driver creates it once the CLI returned); then writes and
 * flushes go on until STOP exists; then it creates STOP.idle and stays connected, idle, until
 * STOP.quit exists.  The constants are powerloss.py's (BS, BASE, NBLOCKS).  LIVE_WRITER_PACE_MS in
 * the environment sets the pause between two blocks (5 ms by default).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#define BS 65536
#define BASE (4 << 20)
#define NBLOCKS 128
#define MAXEXP 8

static int journal;

static void
note(const char *what, const char *e, int i)
{
  char line[256];
  int n = snprintf(line, sizeof line, "%s %s %d\n", what, e, i);
  if (write(journal, line, n) != n) {
    perror("live-writer: journal");
    exit(1);
  }
}

static void
nap(long ms)
{
  struct timespec ts = {0, ms * 1000000L};
  nanosleep(&ts, NULL);
}

int
main(int argc, char **argv)
{
  if (argc < 8 || argc - 7 > MAXEXP) {
    fprintf(stderr, "usage: live-writer SOCK JOURNAL READY GO STOP pause|during EXPORT...\n");
    return 2;
  }
  const char *ready = argv[3], *go = argv[4], *stop = argv[5];
  int pause = strcmp(argv[6], "pause") == 0, nexp = argc - 7;
  struct nbd_handle *h[MAXEXP];
  static char buf[BS];
  for (int k = 0; k < nexp; k++) {
    h[k] = nbd_create();
    if (!h[k] || nbd_set_export_name(h[k], argv[7 + k]) == -1 ||
        nbd_connect_unix(h[k], argv[1]) == -1) {
      fprintf(stderr, "live-writer: %s: %s\n", argv[7 + k], nbd_get_error());
      return 1;
    }
  }
  /* A slower client for the live merge test: its writes go on while the merge copies. */
  const char *pace_env = getenv("LIVE_WRITER_PACE_MS");
  long pace = pace_env ? strtol(pace_env, NULL, 10) : 5;
  if (pace < 0 || pace > 999)
    pace = 5;
  journal = open(argv[2], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (journal < 0) {
    perror(argv[2]);
    return 1;
  }
  for (int i = 0; i < NBLOCKS && !(i > 4 && access(stop, F_OK) == 0); i++) {
    memset(buf, (i % 250) + 1, BS);
    for (int k = 0; k < nexp; k++) {
      note("issue", argv[7 + k], i);
      if (nbd_pwrite(h[k], buf, BS, (uint64_t)BASE + (uint64_t)i * BS, 0) == -1) {
        fprintf(stderr, "live-writer: write %d to %s: %s\n", i, argv[7 + k], nbd_get_error());
        return 1;
      }
      note("wrote", argv[7 + k], i);
      if (i != 4) {
        if (nbd_flush(h[k], 0) == -1) {
          fprintf(stderr, "live-writer: flush of %s: %s\n", argv[7 + k], nbd_get_error());
          return 1;
        }
        note("flushed", argv[7 + k], i);
      }
    }
    if (i == 4) {
      int fd = open(ready, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd >= 0)
        close(fd);
      while (pause && access(go, F_OK) != 0)
        nap(10);
    }
    nap(pace); /* pacing: a few writes during a command, not hundreds */
  }
  while (access(stop, F_OK) != 0)
    nap(10);
  /* Idle and connected until STOP.quit: the driver stops tracing meanwhile, so that nothing
   * the server does when the connections close (flush, the layer marked clean) happens
   * untraced while the replay is compared with the pool as tracing ended. */
  char path[4096];
  snprintf(path, sizeof path, "%s.idle", stop);
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0)
    close(fd);
  snprintf(path, sizeof path, "%s.quit", stop);
  while (access(path, F_OK) != 0)
    nap(10);
  for (int k = 0; k < nexp; k++) {
    nbd_shutdown(h[k], 0);
    nbd_close(h[k]);
  }
  return 0;
}
