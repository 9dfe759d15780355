/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests: a chain whose bottom is a remote template (chain/remote.c) on the issue 15 read
 * path and index cache.
 *
 * Design notes
 * ------------
 * A remote bottom has no local descriptor (fd -1), which every new path of the read path and
 * of the idle index cache had to learn: the single-piece fast path, io=auto batches, cache=none
 * (CC_DIRECT must not open anything with O_DIRECT for it), and the registry's revalidation and
 * sweep of idle indexes (no fd to fstat or lock: the descriptor file is stat'ed by path).  The
 * remote is a real `nbdkit -r file` on a unix socket in the test's directory, started by PID
 * and killed by PID.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "chain/chain.h"
#include "chain/testing.h"
#include "common/error.h"
#include "tests/unit/util-chain.h"
#include "tests/unit/util-overlay.h"

#define SIZE (4u << 20)

static char *dir;
static pid_t remote_pid = -1;
static struct ctu_model model;

static void
cleanup(void)
{
  cc_set_index_cache(0);
  if (remote_pid > 0) {
    kill(remote_pid, SIGKILL);
    waitpid(remote_pid, NULL, 0);
    remote_pid = -1;
  }
  ctu_model_free(&model);
  otu_rmtree(dir);
  dir = NULL;
}

/* Write `len` bytes of `text` to `path` through a temporary name, so the path names a new
 * inode. */
static void
write_file(const char *path, const void *text, size_t len)
{
  char *tmp;
  FILE *f;

  cr_assert_neq(asprintf(&tmp, "%s.tmp", path), -1);
  f = fopen(tmp, "w");
  cr_assert_not_null(f, "%s: %s", tmp, strerror(errno));
  cr_assert_eq(fwrite(text, 1, len, f), len);
  cr_assert_eq(fclose(f), 0);
  cr_assert_eq(rename(tmp, path), 0);
  free(tmp);
}

/* base.raw (data with holes) served read-only by nbdkit, its descriptor rt.nbd, and an empty
 * read-only layer top.cow on it. */
static void
setup_remote(void)
{
  char *raw, *sock, *pidf, *desc, *top, *uri, text[4096];
  struct cc_remote_desc d;
  uint8_t *buf = malloc(SIZE);
  int n;

  dir = otu_tmpdir();
  cr_assert_not_null(buf);
  srand(17);
  for (size_t i = 0; i < SIZE; i++)
    buf[i] = (uint8_t)rand();
  ctu_model_init(&model, SIZE, 4096);
  ctu_model_write(&model, buf, 1u << 20, 0);
  ctu_model_write(&model, buf + (3u << 20), 1u << 20, 3u << 20); /* a hole between */
  free(buf);
  raw = otu_join(dir, "base.raw");
  sock = otu_join(dir, "remote.sock");
  pidf = otu_join(dir, "remote.pid");
  desc = otu_join(dir, "rt.nbd");
  top = otu_join(dir, "top.cow");
  ctu_write_raw(raw, &model);

  remote_pid = fork();
  cr_assert_neq(remote_pid, -1);
  if (remote_pid == 0) {
    execlp("nbdkit", "nbdkit", "-f", "-r", "-U", sock, "-P", pidf, "file", raw, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 300; i++) {
    struct stat st;

    if (stat(pidf, &st) == 0 && st.st_size > 0)
      break;
    cr_assert_eq(waitpid(remote_pid, NULL, WNOHANG), 0, "nbdkit exited (is it installed?)");
    nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL);
  }
  cr_assert_neq(asprintf(&uri, "nbd+unix:///?socket=%s", sock), -1);
  cr_assert_eq(cc_remote_probe("rt", uri, 0, &d), 0, "%s", cc_error_get());
  cr_assert_eq(d.size, SIZE);
  n = cc_remote_desc_format(&d, text, sizeof text);
  cr_assert_gt(n, 0);
  write_file(desc, text, (size_t)n);
  ctu_layer(top, SIZE, 0, OVL_PARENT_NBD, "rt.nbd", NULL, SIZE, NULL);
  free(raw);
  free(sock);
  free(pidf);
  free(desc);
  free(top);
  free(uri);
}

/* Open top.cow read-only with `flags`, read all of it in `chunk`-sized reads (and a few odd
 * ones), close; return how many indexes that built. */
static uint64_t
open_read_close(unsigned flags, uint64_t chunk)
{
  uint64_t b = cc_chain_index_builds();
  char *top = otu_join(dir, "top.cow");
  struct cc_chain *c = ctu_open(top, flags);

  ctu_check_all(c, &model, chunk);
  ctu_check_read(c, &model, 4095, 3);                     /* unaligned, one run */
  ctu_check_read(c, &model, (1u << 20) - 100, 200);       /* data then hole: a plan */
  ctu_check_read(c, &model, (3u << 20) - 4096 + 7, 8192); /* hole then data */
  ctu_check_read(c, &model, 0, SIZE);                     /* every run at once */
  cr_assert_eq(cc_chain_close(c), 0);
  free(top);
  return cc_chain_index_builds() - b;
}

TestSuite(chain_remote, .init = setup_remote, .fini = cleanup, .timeout = 120);

/* Every io mode, with and without cache=none: the same bytes as the template.  Before the
 * merge fixes, the fast path made a piece on fd -1 (EBADF) and cache=none could open the
 * descriptor file itself with O_DIRECT. */
Test(chain_remote, reads_in_every_io_mode)
{
  const unsigned modes[] = {
      CC_IO_AUTO, CC_IO_SYNC, 0, CC_IO_AUTO | CC_DIRECT, CC_IO_SYNC | CC_DIRECT, CC_DIRECT};

  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    open_read_close(modes[i], 4096);
    open_read_close(modes[i], 65536 + 512);
  }
}

/* An idle index of a chain on a remote bottom is reused (its descriptor unchanged), survives
 * the once-a-second sweep for deleted files, and is dropped when the descriptor is replaced. */
Test(chain_remote, idle_index_revalidated_by_descriptor)
{
  char *desc = otu_join(dir, "rt.nbd");
  uint8_t *text;
  size_t len;

  cc_set_index_cache(64u << 20);
  cr_assert_eq(open_read_close(CC_IO_AUTO, 65536), 1, "first open builds");
  cr_assert_eq(cc_chain_index_cached(), 1, "kept idle");
  cr_assert_eq(open_read_close(CC_IO_AUTO, 65536), 0, "reopen is a cache hit");
  /* The sweep runs at most once a second, at an open or close. */
  sleep(2);
  cr_assert_eq(open_read_close(CC_IO_AUTO | CC_DIRECT, 65536), 0,
               "the sweep kept it: the descriptor is still linked");
  cr_assert_eq(cc_chain_index_cached(), 1);

  /* The same text under a new inode (template deleted and added again): a new identity. */
  text = otu_slurp(desc, &len);
  write_file(desc, text, len);
  cr_assert_eq(open_read_close(CC_IO_AUTO, 65536), 1, "a replaced descriptor is rebuilt");
  free(text);
  free(desc);
}
