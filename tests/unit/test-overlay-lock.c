/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: OFD locking between processes.  A layer open for writing excludes every other open;
 * read-only opens share.  The child process holds the layer while the parent probes, and the
 * two talk over pipes so that no step relies on timing.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "overlay/overlay.h"
#include "tests/unit/util-overlay.h"

TestSuite(overlay_lock, .timeout = 30);

struct holder {
  pid_t pid;
  int to_child, from_child;
};

/* Fork a child that opens `path` with `flags`, reports the ovl_open result as one byte, waits
 * for a byte from the parent, then closes and exits.  The child only uses async-safe-enough
 * calls and _exit, never criterion asserts (which belong to the parent's test). */
static struct holder
hold(const char *path, unsigned flags)
{
  int down[2], up[2];
  struct holder h;

  cr_assert_eq(pipe(down), 0);
  cr_assert_eq(pipe(up), 0);
  h.pid = fork();
  cr_assert_geq(h.pid, 0, "fork: %s", strerror(errno));
  if (h.pid == 0) {
    struct ovl_layer *l = NULL;
    char c;
    close(down[1]);
    close(up[0]);
    int r = ovl_open(path, flags, &l);
    c = (char)(r == 0 ? 'Y' : 'N');
    if (write(up[1], &c, 1) != 1)
      _exit(2);
    if (read(down[0], &c, 1) != 1)
      _exit(3);
    if (l)
      ovl_close(l);
    _exit(r == 0 ? 0 : 1);
  }
  close(down[0]);
  close(up[1]);
  h.to_child = down[1];
  h.from_child = up[0];
  char c = 0;
  cr_assert_eq(read(h.from_child, &c, 1), 1, "child died before it reported");
  cr_assert_eq(c, 'Y', "child could not open %s", path);
  return h;
}

/* Tell the child to close and exit; wait for it. */
static void
release(struct holder *h)
{
  char c = 'x';
  int st;
  cr_assert_eq(write(h->to_child, &c, 1), 1);
  cr_assert_eq(waitpid(h->pid, &st, 0), h->pid);
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed: status %d", st);
  close(h->to_child);
  close(h->from_child);
}

static void
expect_busy(const char *path, unsigned flags, pid_t holder_pid)
{
  struct ovl_layer *l = NULL;
  cc_error_clear();
  int r = ovl_open(path, flags, &l);
  if (r == 0)
    ovl_close(l);
  cr_assert_eq(r, -EBUSY, "ovl_open(%s) while locked returned %d, expected -EBUSY: %s",
               flags & OVL_RDWR ? "RDWR" : "RDONLY", r, cc_error_get());
  const char *msg = cc_error_get();
  cr_expect(strstr(msg, path) != NULL, "message does not name the file: %s", msg);
  cr_expect(strstr(msg, "in use") != NULL, "message does not say \"in use\": %s", msg);
  /* the holder is named where /proc/locks tells (it does on Linux); 0: several hold it */
  if (holder_pid == 0)
    return;
  char pidstr[32];
  snprintf(pidstr, sizeof pidstr, "%d", (int)holder_pid);
  cr_expect(strstr(msg, pidstr) != NULL, "message does not name holder pid %s: %s", pidstr, msg);
  char who[128];
  ovl_lock_holder(path, who, sizeof who);
  cr_expect(strstr(who, pidstr) != NULL, "ovl_lock_holder: \"%s\", expected pid %s", who, pidstr);
}

Test(overlay_lock, writer_excludes_everyone)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  otu_create(path, 8u << 20, 0);

  struct holder h = hold(path, OVL_RDWR);
  expect_busy(path, OVL_RDWR, h.pid);
  expect_busy(path, OVL_RDONLY, h.pid);
  /* inspection tools may look without a lock */
  struct ovl_layer *l = otu_open(path, OVL_RDONLY | OVL_NOLOCK);
  ovl_close(l);
  /* repair needs the exclusive lock too */
  struct ovl_check_result res;
  memset(&res, 0, sizeof res);
  cr_expect_eq(ovl_check(path, 1, &res), -EBUSY, "ovl_check --repair while a writer holds it");
  release(&h);

  /* after the writer exits, the parent can write */
  l = otu_open(path, OVL_RDWR);
  uint8_t b[512] = {1};
  cr_assert_eq(ovl_pwrite(l, b, sizeof b, 0, 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0);
  free(path);
  otu_rmtree(dir);
}

Test(overlay_lock, readers_share_and_exclude_writers)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  otu_create(path, 8u << 20, 0);

  struct holder h = hold(path, OVL_RDONLY);
  struct ovl_layer *l = otu_open(path, OVL_RDONLY);
  struct ovl_layer *l2 = otu_open(path, OVL_RDONLY);
  expect_busy(path, OVL_RDWR, 0); /* three readers, two processes: any may be named */
  ovl_close(l2);
  ovl_close(l);
  expect_busy(path, OVL_RDWR, h.pid);
  release(&h);
  l = otu_open(path, OVL_RDWR);
  cr_assert_eq(ovl_close(l), 0);
  free(path);
  otu_rmtree(dir);
}

/* A writer that dies without closing (SIGKILL) leaves no lock behind: OFD locks die with the
 * open file description. */
Test(overlay_lock, killed_writer_releases_lock)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  otu_create(path, 8u << 20, 0);

  struct holder h = hold(path, OVL_RDWR);
  expect_busy(path, OVL_RDWR, h.pid);
  kill(h.pid, SIGKILL);
  int st;
  cr_assert_eq(waitpid(h.pid, &st, 0), h.pid);
  close(h.to_child);
  close(h.from_child);
  struct ovl_layer *l = otu_open(path, OVL_RDWR);
  cr_assert_eq(ovl_close(l), 0);
  free(path);
  otu_rmtree(dir);
}

/* OFD locks belong to the open file description, not the process: a second open in the same
 * process (another export of the same layer, say) is refused as well. */
Test(overlay_lock, same_process_second_writer)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "l.cow");
  otu_create(path, 8u << 20, 0);
  struct ovl_layer *l = otu_open(path, OVL_RDWR), *l2 = NULL;
  cr_assert_eq(ovl_open(path, OVL_RDWR, &l2), -EBUSY);
  cr_assert_eq(ovl_open(path, OVL_RDONLY, &l2), -EBUSY);
  cr_assert_eq(ovl_close(l), 0);
  l = otu_open(path, OVL_RDWR);
  cr_assert_eq(ovl_close(l), 0);
  free(path);
  otu_rmtree(dir);
}
