/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: the QEMU guest agent client (pool/qga.h has the contract).
 *
 * Design notes.
 *
 * - Framing: the agent reads a stream of JSON objects and writes one reply per command, each
 *   a JSON object ended by '\n'; we reuse the control protocol's line reader
 *   (common/control-proto.c) with the same bounded waits.
 * - Synchronisation: a client that connects may find replies of an earlier client's commands
 *   still queued, and an agent's parser in the middle of an earlier client's half-written
 *   command.  guest-sync-delimited solves both (qemu's qga documentation): we send a 0xFF
 *   byte first (the agent's parser resets on it), the agent puts 0xFF before its reply, and
 *   its reply carries our random id; everything read before that reply is dropped.
 * - Replies come in command order, so after a command that timed out we know its reply is
 *   still to come: `pending` counts the replies owed, and the reply to the latest command is
 *   the last of them.  That is what lets thaw follow a timed-out freeze on the same connection
 *   (a chardev socket serves one client at a time: reconnecting is not an option while the
 *   agent is busy freezing).
 * - Parsing: only the three replies we ask for, {"return": N}, {"return": {}} and
 *   {"error": {"class": ..., "desc": "..."}}; the desc is copied with its escapes resolved
 *   (\uXXXX becomes '?': it only goes into our one error line, escaped where it is printed).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/time.h"
#include "common/control-proto.h"
#include "common/error.h"
#include "pool/qga.h"

struct cc_qga {
  char *path;
  int pending; /* replies still owed by the agent */
  struct ccp_conn c;
  char line[CCP_LINE_MAX + 1];
};

/* The next non-blank reply line (after any 0xFF) into *out, within the deadline. */
static int
read_reply(struct cc_qga *q, int64_t deadline, const char **out)
{
  for (;;) {
    int64_t left = deadline - cc_mono_ms();
    char *s, *ff;
    int r;

    if (left <= 0)
      return -ETIMEDOUT;
    r = ccp_read_line(&q->c, q->line, (int)(left > INT32_MAX ? INT32_MAX : left));
    if (r < 0)
      return r;
    s = q->line;
    while ((ff = strchr(s, '\xff')) != NULL)
      s = ff + 1;
    while (*s == ' ' || *s == '\t' || *s == '\r')
      s++;
    if (*s == '\0')
      continue;
    *out = s;
    return 0;
  }
}

/* The value after "key": in json, or NULL. */
static const char *
find_key(const char *json, const char *key)
{
  char pat[32];
  const char *p;

  snprintf(pat, sizeof pat, "\"%s\"", key);
  if ((p = strstr(json, pat)) == NULL)
    return NULL;
  p += strlen(pat);
  while (*p == ' ' || *p == '\t')
    p++;
  if (*p != ':')
    return NULL;
  p++;
  while (*p == ' ' || *p == '\t')
    p++;
  return p;
}

/* Copy the JSON string at p (at its opening quote) into out. */
static void
copy_string(const char *p, char *out, size_t len)
{
  size_t n = 0;

  if (*p++ != '"') {
    snprintf(out, len, "(no description)");
    return;
  }
  while (*p && *p != '"' && n + 1 < len) {
    char ch = *p++;

    if (ch == '\\' && *p) {
      ch = *p++;
      switch (ch) {
      case 'n':
        ch = '\n';
        break;
      case 't':
        ch = '\t';
        break;
      case 'u':
        for (int i = 0; i < 4 && *p; i++)
          p++;
        ch = '?';
        break;
      default:
        break; /* \" \\ \/ stand for themselves */
      }
    }
    out[n++] = ch;
  }
  out[n] = '\0';
}

/* Parse a reply: 0 and *value for {"return": N} ({"return": {}} is 0), -EIO with desc filled
 * for {"error": ...}, -EPROTO for anything else. */
static int
parse_reply(const char *json, long long *value, char *desc, size_t desclen)
{
  const char *p;

  if ((p = find_key(json, "return")) != NULL) {
    char *end;

    *value = 0;
    if (*p == '{' || *p == '[')
      return 0;
    *value = strtoll(p, &end, 10);
    return end == p ? -EPROTO : 0;
  }
  if (find_key(json, "error") != NULL) {
    if ((p = find_key(json, "desc")) != NULL)
      copy_string(p, desc, desclen);
    else
      snprintf(desc, desclen, "(no description)");
    return -EIO;
  }
  return -EPROTO;
}

/* Send one command; the reply to it is the last of those owed. */
static int
send_cmd(struct cc_qga *q, const char *json)
{
  int r = ccp_write_line(q->c.fd, json);

  if (r < 0)
    return cc_error_set(-r, "quiesce: %s: cannot send to the guest agent: %s", q->path,
                        strerror(-r));
  q->pending++;
  return 0;
}

/* Wait for the reply to the latest command (dropping those owed before it). */
static int
last_reply(struct cc_qga *q, const char *what, int timeout_ms, long long *value)
{
  int64_t deadline = cc_mono_ms() + timeout_ms;
  char desc[512];
  const char *json;
  int r;

  while (q->pending > 0) {
    if ((r = read_reply(q, deadline, &json)) < 0) {
      if (r == -ETIMEDOUT)
        return cc_error_set(ETIMEDOUT,
                            "quiesce: %s: the guest agent did not answer %s within %d ms", q->path,
                            what, timeout_ms);
      if (r == -EPIPE)
        return cc_error_set(EPIPE, "quiesce: %s: the guest agent closed the connection during %s",
                            q->path, what);
      return cc_error_set(-r, "quiesce: %s: reading the guest agent's answer to %s: %s", q->path,
                          what, strerror(-r));
    }
    q->pending--;
  }
  r = parse_reply(json, value, desc, sizeof desc);
  if (r == -EIO)
    return cc_error_set(EIO, "quiesce: %s: the guest agent refused %s: %s", q->path, what, desc);
  if (r < 0)
    return cc_error_set(EPROTO, "quiesce: %s: unexpected answer to %s from the guest agent: %.200s",
                        q->path, what, json);
  return 0;
}

int
cc_qga_open(const char *path, int timeout_ms, struct cc_qga **out)
{
  int64_t deadline = cc_mono_ms() + timeout_ms;
  struct cc_qga *q;
  char cmd[128];
  long long id;
  int fd, r;

  *out = NULL;
  if ((fd = ccp_dial(path)) < 0)
    return cc_error_set(-fd, "quiesce: %s: cannot connect to the guest agent: %s", path,
                        strerror(-fd));
  if (!(q = calloc(1, sizeof *q)) || !(q->path = strdup(path))) {
    free(q);
    close(fd);
    return cc_error_set(ENOMEM, "quiesce: %s: out of memory", path);
  }
  ccp_init(&q->c, fd);
  /* A random id: a stale reply of an earlier sync must not be taken for ours. */
  {
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    id = ((long long)getpid() << 20 ^ ts.tv_nsec ^ (long long)ts.tv_sec << 32) & 0x3fffffffffffLL;
  }
  snprintf(cmd, sizeof cmd,
           "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%lld}}", id);
  if ((r = send_cmd(q, cmd)) < 0)
    goto fail;
  /* Replies owed to an earlier client come first: read until ours. */
  for (;;) {
    const char *json;
    long long v;
    char desc[512];

    if ((r = read_reply(q, deadline, &json)) < 0) {
      if (r == -ETIMEDOUT)
        cc_error_set(ETIMEDOUT,
                     "quiesce: %s: the guest agent did not answer guest-sync-delimited within "
                     "%d ms (is qemu-guest-agent running in the guest?)",
                     path, timeout_ms);
      else
        cc_error_set(-r, "quiesce: %s: the guest agent %s", path,
                     r == -EPIPE ? "closed the connection" : strerror(-r));
      goto fail;
    }
    if (parse_reply(json, &v, desc, sizeof desc) == 0 && v == id)
      break;
  }
  q->pending = 0;
  *out = q;
  return 0;

fail:
  cc_qga_close(q);
  return r;
}

int
cc_qga_freeze(struct cc_qga *q, int timeout_ms)
{
  char msg[CC_ERROR_MAX];
  long long n;
  int r;

  if ((r = send_cmd(q, "{\"execute\":\"guest-fsfreeze-freeze\"}")) == 0 &&
      (r = last_reply(q, "guest-fsfreeze-freeze", timeout_ms, &n)) == 0)
    return (int)n;
  /* Thaw whatever the freeze did (a freeze that timed out may complete later: its reply and
   * the thaw's come in order, last_reply waits for the thaw's). */
  snprintf(msg, sizeof msg, "%s", cc_error_get());
  if (cc_qga_thaw(q, CC_QGA_THAW_MS) < 0) {
    char thaw[CC_ERROR_MAX];

    snprintf(thaw, sizeof thaw, "%s", cc_error_get());
    cc_error_set(-r, "%s; and thaw failed too: %s", msg, thaw);
  } else
    cc_error_set(-r, "%s", msg);
  return r;
}

int
cc_qga_thaw(struct cc_qga *q, int timeout_ms)
{
  char msg[CC_ERROR_MAX];
  long long n;
  int r;

  if ((r = send_cmd(q, "{\"execute\":\"guest-fsfreeze-thaw\"}")) == 0 &&
      (r = last_reply(q, "guest-fsfreeze-thaw", timeout_ms, &n)) == 0)
    return (int)n;
  snprintf(msg, sizeof msg, "%s", cc_error_get());
  cc_error_set(-r,
               "%s (the guest's file systems may still be frozen: thaw them with "
               "guest-fsfreeze-thaw)",
               msg);
  return r;
}

void
cc_qga_close(struct cc_qga *q)
{
  if (q == NULL)
    return;
  close(q->c.fd);
  free(q->path);
  free(q);
}
