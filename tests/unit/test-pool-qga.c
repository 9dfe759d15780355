/* SPDX-License-Identifier: BSD-3-Clause */
/* pool/qga.c: the guest agent client, against the stand-in agent (tests/lib/qga-standin.py)
 * on a real unix socket.
 *
 * - ok: sync, freeze (its count), thaw, in that order on the agent's side.
 * - Replies owed to an earlier client, queued before ours, are dropped by the sync.
 * - A refused freeze is an error naming the agent's reason, and the guest is thawed anyway.
 * - A freeze that outlives its timeout is -ETIMEDOUT, and a thaw follows it (answered once
 *   the late freeze is), so the guest is not left frozen.
 * - An agent that answers nothing, or answers garbage, is a timeout of the sync with a hint;
 *   a socket nobody listens on is an error naming it.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "pool/qga.h"
#include "util-overlay.h"

TestSuite(pool_qga, .timeout = 60);

struct agent {
  char *dir, *sock, *log;
  pid_t pid;
};

static void
agent_start(struct agent *a, const char *mode, const char *extra1, const char *extra2)
{
  a->dir = otu_tmpdir();
  a->sock = otu_join(a->dir, "qga.sock");
  a->log = otu_join(a->dir, "qga.log");
  a->pid = fork();
  cr_assert(a->pid >= 0);
  if (a->pid == 0) {
    /* Gone with the test process, even one a failed assertion ends before agent_stop. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execlp("python3", "python3", CC_SOURCE_DIR "/tests/lib/qga-standin.py", a->sock, a->log, mode,
           extra1, extra2, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 1000; i++) { /* at most 10 s for python to bind */
    struct stat st;

    if (stat(a->sock, &st) == 0)
      return;
    usleep(10000);
  }
  cr_assert_fail("stand-in agent did not create %s", a->sock);
}

static void
agent_stop(struct agent *a)
{
  kill(a->pid, SIGTERM);
  waitpid(a->pid, NULL, 0);
  otu_rmtree(a->dir);
  free(a->sock);
  free(a->log);
}

/* The commands the agent got, one per line. */
static void
agent_log(struct agent *a, char *buf, size_t len)
{
  FILE *f = fopen(a->log, "r");
  size_t n = 0;

  buf[0] = '\0';
  if (f == NULL)
    return;
  n = fread(buf, 1, len - 1, f);
  buf[n] = '\0';
  fclose(f);
}

Test(pool_qga, freeze_then_thaw_in_order)
{
  struct agent a;
  struct cc_qga *q;
  char log[1024];

  agent_start(&a, "ok", NULL, NULL);
  cr_assert_eq(cc_qga_open(a.sock, CC_QGA_SYNC_MS, &q), 0, "%s", cc_error_get());
  cr_assert_eq(cc_qga_freeze(q, CC_QGA_FREEZE_MS), 2, "%s", cc_error_get());
  cr_assert_eq(cc_qga_thaw(q, CC_QGA_THAW_MS), 2, "%s", cc_error_get());
  cc_qga_close(q);
  agent_log(&a, log, sizeof log);
  cr_assert_str_eq(log, "guest-sync-delimited\nguest-fsfreeze-freeze\nguest-fsfreeze-thaw\n");
  agent_stop(&a);
}

Test(pool_qga, stale_replies_are_dropped)
{
  struct agent a;
  struct cc_qga *q;

  agent_start(&a, "ok", "--stale", NULL);
  cr_assert_eq(cc_qga_open(a.sock, CC_QGA_SYNC_MS, &q), 0, "%s", cc_error_get());
  /* Without the sync dropping them, the freeze would read the stale {"return": 7}. */
  cr_assert_eq(cc_qga_freeze(q, CC_QGA_FREEZE_MS), 2, "%s", cc_error_get());
  cr_assert_eq(cc_qga_thaw(q, CC_QGA_THAW_MS), 2, "%s", cc_error_get());
  cc_qga_close(q);
  agent_stop(&a);
}

Test(pool_qga, refused_freeze_still_thaws)
{
  struct agent a;
  struct cc_qga *q;
  char log[1024];

  agent_start(&a, "refuse", NULL, NULL);
  cr_assert_eq(cc_qga_open(a.sock, CC_QGA_SYNC_MS, &q), 0, "%s", cc_error_get());
  cr_assert_eq(cc_qga_freeze(q, CC_QGA_FREEZE_MS), -EIO);
  cr_assert(strstr(cc_error_get(), "refused guest-fsfreeze-freeze: stand-in refuses \"freeze\""),
            "%s", cc_error_get());
  cr_assert(strstr(cc_error_get(), a.sock), "%s", cc_error_get());
  cc_qga_close(q);
  agent_log(&a, log, sizeof log);
  cr_assert_str_eq(log, "guest-sync-delimited\nguest-fsfreeze-freeze\nguest-fsfreeze-thaw\n");
  agent_stop(&a);
}

Test(pool_qga, freeze_timeout_thaws_after_the_late_freeze)
{
  struct agent a;
  struct cc_qga *q;
  char log[1024];

  agent_start(&a, "hang", "--hang", "1.5");
  cr_assert_eq(cc_qga_open(a.sock, CC_QGA_SYNC_MS, &q), 0, "%s", cc_error_get());
  cr_assert_eq(cc_qga_freeze(q, 300), -ETIMEDOUT);
  cr_assert(strstr(cc_error_get(), "did not answer guest-fsfreeze-freeze within 300 ms"), "%s",
            cc_error_get());
  /* The thaw was answered (after the late freeze): no "may still be frozen". */
  cr_assert_null(strstr(cc_error_get(), "thaw failed"), "%s", cc_error_get());
  cc_qga_close(q);
  agent_log(&a, log, sizeof log);
  cr_assert_str_eq(log, "guest-sync-delimited\nguest-fsfreeze-freeze\nguest-fsfreeze-thaw\n");
  agent_stop(&a);
}

Test(pool_qga, mute_agent_is_a_sync_timeout)
{
  struct agent a;
  struct cc_qga *q = (struct cc_qga *)1;

  agent_start(&a, "mute", NULL, NULL);
  cr_assert_eq(cc_qga_open(a.sock, 300, &q), -ETIMEDOUT);
  cr_assert_null(q);
  cr_assert(strstr(cc_error_get(), "is qemu-guest-agent running in the guest?"), "%s",
            cc_error_get());
  agent_stop(&a);
}

Test(pool_qga, garbage_is_not_an_answer)
{
  struct agent a;
  struct cc_qga *q;

  agent_start(&a, "garbage", NULL, NULL);
  cr_assert_eq(cc_qga_open(a.sock, 300, &q), -ETIMEDOUT);
  agent_stop(&a);
}

Test(pool_qga, no_agent)
{
  char *dir = otu_tmpdir(), *sock = otu_join(dir, "none.sock");
  struct cc_qga *q;

  cr_assert_eq(cc_qga_open(sock, 300, &q), -ENOENT);
  cr_assert(strstr(cc_error_get(), "cannot connect to the guest agent"), "%s", cc_error_get());
  cr_assert(strstr(cc_error_get(), sock), "%s", cc_error_get());
  otu_rmtree(dir);
  free(sock);
}
