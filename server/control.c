/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain plugin: the control channel (live snapshots of served clones).
 *
 * Design notes
 *
 * Modelled on nbdkit's pause filter (filters/pause/pause.c): a unix socket, one background
 * thread that accepts one client at a time, requests in flight counted and drained.  Ours:
 *
 *  - The socket is POOL/run/nbdkit-PID.ctl, so several servers of one pool each have their own
 *    and a client finds the one that holds a clone by asking each (`held`).  It is bound in
 *    .after_fork, not .config_complete: nbdkit may fork to the background after
 *    .config_complete, and the name carries the serving process's pid.  POOL/run is created
 *    0700 if missing; the socket is chmod'ed 0600.  A socket file with our own pid in its name
 *    can only be a dead process's (pids are unique among the living), so we replace it; the
 *    server never unlinks another name: a client that gets ECONNREFUSED on one unlinks it
 *    (control-proto.h).  The socket is removed at .cleanup/.unload.  A kill -9 leaves it behind,
 *    harmlessly: the next server has another pid.
 *  - Every client's peer credentials (SO_PEERCRED) are checked: the server's own uid or root,
 *    anyone else gets "err 1 ..." (EPERM) instead of the greeting and is disconnected.
 *  - The protocol (common/control-proto.h, the man page's CONTROL SOCKET) is line-framed and
 *    versioned.  Commands: hello, held, connections, quiesce, push-top, resume, evict, and for
 *    a live merge (POOL.md 6.2) merge-top, relink-top, forget.
 *
 * A live snapshot of exports E1..En (one or several clones, one consistent instant):
 *
 *   quiesce MS E1..En   close every Ei's write gate (gate.c) and drain it; all or nothing.
 *                       The gates stay closed for this client for at most MS.
 *   (the client makes the pool records durable: the commit point, docs/POOL.md section 6)
 *   push-top E1 N1 ...  check every new top first (cc_chain_push_check), then switch each chain
 *                       (cc_chain_switch_top: the old top sealed, not yet flushed) and
 *                       retarget its export entry, reopen the gates, then settle each chain
 *                       (the old tops made durable, cc_chain_settle) and only then answer.
 *
 * The old tops' flush is the slow part (an fdatasync of what the guests wrote since their last
 * flush), so it runs after the gates reopen: the clients' stall is the drain, the records'
 * commit and the switch.  A client's flush that arrives before the settle has finished waits
 * for it (cc_chain_flush), so no flush is answered while a write it covers is not durable.
 *
 * push-top without a prior quiesce does both in one request (for callers that need no commit
 * point in between).  If the client disappears or the hold expires while the gates are closed,
 * the server lets the records decide: for each held export it resolves the name again, and if
 * the clone's record now names another top (the commit happened) it makes the switch itself;
 * otherwise nothing changed.  Then it reopens the gates.  So a crashed CLI never leaves the
 * guest stalled, and never leaves the server writing a layer the records call a snapshot.
 *
 * Threads and locks: one control thread; it serializes every command, so gates are closed by
 * one closer at a time.  It takes export references (exports_hold_writable) for as long as it
 * holds their gates, so an export cannot be closed under it.  stop_pipe wakes it at shutdown.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "common/time.h"
#include "server/control.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "chain/chain.h"
#include "overlay/overlay.h"
#include "common/control-proto.h"
#include "common/error.h"
#include "server/exports.h"

#define DRAIN_TIMEOUT_MS 5000 /* requests in flight must leave within this */
#define IDLE_TIMEOUT_MS 30000 /* a client that says nothing for this long is dropped */
#define MAX_HOLD_MS 60000     /* upper bound of a quiesce hold */
#define MAX_EXPORTS 64        /* exports per quiesce / push-top */

static int enabled = 1;      /* control=on|off */
static const char *pool_dir; /* absolute, set in get_ready */
static struct cc_pool *pool; /* for resolving names after an abandoned hold */
static char *sock_path;      /* bound socket, or NULL */
static int listen_fd = -1;
static int stop_pipe[2] = {-1, -1};
static pthread_t thread;
static int thread_started;
static atomic_int stopping;

int
control_config(const char *value)
{
  int b = nbdkit_parse_bool(value);

  if (b < 0)
    return -1;
  enabled = b;
  return 0;
}

void
control_init(const char *dir, struct cc_pool *p)
{
  pool_dir = dir;
  pool = p;
}

const char *
control_socket_path(void)
{
  return sock_path;
}

/* ---- one client's session ---- */

struct held {
  struct cc_export *e; /* a reference, gate closed */
};

struct session {
  struct ccp_conn *conn;
  struct held held[MAX_EXPORTS];
  int nheld;
  long long hold_deadline;     /* cc_mono_ms() value, while nheld > 0 */
  long long closed_at_us;      /* when the first gate closed */
  char *line;                  /* CCP_LINE_MAX + 1 */
  struct ovl_layer *merge_src; /* merge-top's source layer, kept open between pieces */
  char merge_path[PATH_MAX];
};

static int reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int
reply(struct session *s, const char *fmt, ...)
{
  char buf[4096];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  /* A message must stay on one line. */
  for (char *p = buf; *p; p++)
    if (*p == '\n' || *p == '\r')
      *p = ' ';
  return ccp_write_line(s->conn->fd, buf);
}

static int reply_err(struct session *s, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int
reply_err(struct session *s, int err, const char *fmt, ...)
{
  char msg[3500];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return reply(s, "err %d %s", err, msg);
}

static struct held *
find_held(struct session *s, const char *name)
{
  for (int i = 0; i < s->nheld; i++)
    if (strcmp(s->held[i].e->name, name) == 0)
      return &s->held[i];
  return NULL;
}

/* Reopen every held gate, then settle every chain a push-top switched (its old top made
 * durable while the clients already write again, chain.h), and drop the references.  Returns
 * 0, or the first settle error with its message in msg. */
static int
release_all(struct session *s, char *msg, size_t len)
{
  int err = 0;

  for (int i = 0; i < s->nheld; i++)
    gate_open(&s->held[i].e->gate);
  for (int i = 0; i < s->nheld; i++) {
    struct cc_export *e = s->held[i].e;
    int r;

    cc_error_clear();
    if ((r = cc_chain_settle(e->chain)) < 0) {
      char why[CC_ERROR_MAX];

      snprintf(why, sizeof why, "%s: switched, but the old top could not be made durable: %s",
               e->name, cc_error_get());
      nbdkit_error("control: %s", why);
      if (!err && msg)
        snprintf(msg, len, "%s", why);
      if (!err)
        err = r;
    }
    exports_release(e);
  }
  s->nheld = 0;
  return err;
}

/* Close the gates of names[0..n) not held yet and drain them; all or nothing
 * (on failure the ones this call closed are reopened and the reply is sent). */
static int
quiesce(struct session *s, char **names, int n)
{
  int first = s->nheld, err = 0;
  char msg[1024] = "";

  for (int i = 0; i < n && !err; i++) {
    struct cc_export *e;
    int r;

    if (find_held(s, names[i]))
      continue;
    if (s->nheld == MAX_EXPORTS) {
      err = E2BIG;
      snprintf(msg, sizeof msg, "quiesce: more than %d exports", MAX_EXPORTS);
      break;
    }
    e = exports_hold_writable(names[i]);
    if (e == NULL) {
      err = ENOENT;
      snprintf(msg, sizeof msg, "quiesce: %s: not open for writing on this server", names[i]);
      break;
    }
    if (s->nheld == 0)
      s->closed_at_us = cc_mono_us();
    r = gate_close(&e->gate, DRAIN_TIMEOUT_MS);
    if (r < 0) {
      exports_release(e);
      err = -r;
      snprintf(msg, sizeof msg, "quiesce: %s: %s", names[i],
               r == -ETIMEDOUT ? "requests in flight did not finish in time" : strerror(-r));
      break;
    }
    s->held[s->nheld++].e = e;
  }
  /* No flush here: the old tops are made durable after the gates reopen (release_all), so
   * that fdatasync is not part of the clients' stall (docs/POOL.md 6.1). */
  if (err) {
    for (int i = first; i < s->nheld; i++) {
      gate_open(&s->held[i].e->gate);
      exports_release(s->held[i].e);
    }
    s->nheld = first;
    reply_err(s, err, "%s", msg);
    return -err;
  }
  return 0;
}

static void
cmd_quiesce(struct session *s, char **w, int n)
{
  long ms;
  char *end;

  if (n < 3) {
    reply_err(s, EINVAL, "usage: quiesce HOLD-MS NAME...");
    return;
  }
  ms = strtol(w[1], &end, 10);
  if (*end || ms <= 0 || ms > MAX_HOLD_MS) {
    reply_err(s, EINVAL, "quiesce: hold %s: give 1 to %d milliseconds", w[1], MAX_HOLD_MS);
    return;
  }
  if (quiesce(s, w + 2, n - 2) < 0)
    return;
  s->hold_deadline = cc_mono_ms() + ms;
  reply(s, "ok %d", s->nheld);
}

/* Switch export e to new top `path` and retarget its entry. */
static int
switch_one(struct cc_export *e, const char *path, char *msg, size_t len)
{
  int r;

  cc_error_clear();
  r = cc_chain_switch_top(e->chain, path); /* settled by release_all */
  if (r < 0) {
    snprintf(msg, len, "push-top: %s: %s", e->name, cc_error_get());
    return r;
  }
  if (exports_retarget(e, path) < 0)
    nbdkit_error("push-top: %s: out of memory recording the new top (new connections may be "
                 "refused until the last one closes)",
                 e->name);
  if (cowchain_debug_exports)
    nbdkit_debug("control: %s: now on %s (%zu layers)", e->name, path, cc_chain_depth(e->chain));
  return 0;
}

static void
cmd_push_top(struct session *s, char **w, int n)
{
  int pairs = (n - 1) / 2, had = s->nheld, switched = 0;
  char *names[MAX_EXPORTS], msg[2048];
  long long stall;

  if (n < 3 || (n - 1) % 2 != 0 || pairs > MAX_EXPORTS) {
    reply_err(s, EINVAL, "usage: push-top NAME NEW-TOP-PATH [NAME NEW-TOP-PATH...]");
    return;
  }
  for (int i = 0; i < pairs; i++)
    names[i] = w[1 + 2 * i];
  if (quiesce(s, names, pairs) < 0)
    return;
  /* All or nothing: every new top must pass the checks before any chain changes. */
  for (int i = 0; i < pairs; i++) {
    struct held *h = find_held(s, names[i]);
    int r;

    cc_error_clear();
    r = cc_chain_push_check(h->e->chain, w[2 + 2 * i]);
    if (r < 0) {
      if (!had)
        release_all(s, NULL, 0); /* our own quiesce: undo it */
      reply_err(s, -r, "push-top: %s: %s (nothing switched)", names[i], cc_error_get());
      return;
    }
  }
  for (int i = 0; i < pairs; i++) {
    struct held *h = find_held(s, names[i]);
    int r = switch_one(h->e, w[2 + 2 * i], msg, sizeof msg);

    if (r < 0) {
      /* Only an I/O error freezing the old top gets here, after the checks passed.  The gates
       * stay closed if the client quiesced first: its records may already name the new tops,
       * and it must retry or put them back, then resume. */
      if (!had)
        release_all(s, NULL, 0);
      reply_err(s, -r, "%s (%d of %d switched%s)", msg, switched, pairs,
                had ? "; gates still closed" : "");
      return;
    }
    switched++;
  }
  stall = cc_mono_us() - s->closed_at_us;
  /* The reply waits for the settle, so that the snapshot is durable when the command returns;
   * the clients write again before it (the stall reported ends at the reopening). */
  if (release_all(s, msg, sizeof msg) < 0) {
    reply_err(s, EIO, "push-top: %s", msg);
    return;
  }
  reply(s, "ok %d %lld", switched, stall);
}

static void
cmd_resume(struct session *s, char **w, int n)
{
  (void)w;
  (void)n;
  int k = s->nheld;

  release_all(s, NULL, 0);
  reply(s, "ok %d", k);
}

/* The client left or the hold expired with gates closed: the records decide (see the notes). */
static void
abandon_hold(struct session *s, const char *why)
{
  for (int i = 0; i < s->nheld; i++) {
    struct cc_export *e = s->held[i].e;
    char path[PATH_MAX], msg[2048];
    enum cc_export_kind kind;
    int r;

    cc_error_clear();
    r = cc_pool_resolve_export(pool, e->name, path, sizeof path, &kind);
    if (r == 0 && strcmp(path, e->path) != 0) {
      if (switch_one(e, path, msg, sizeof msg) == 0)
        nbdkit_debug("control: %s: %s; the pool record names %s: switched to it", e->name, why,
                     path);
      else
        nbdkit_error("control: %s: %s; the pool record names %s but the switch failed: %s", e->name,
                     why, path, msg);
    } else {
      nbdkit_debug("control: %s: %s; nothing changed", e->name, why);
    }
  }
  release_all(s, NULL, 0);
}

static void
cmd_held(struct session *s)
{
  struct exports_item *v = NULL;
  size_t n = 0;
  char line[CCP_LINE_MAX / 4], num[32];

  if (exports_snapshot(&v, &n) < 0) {
    reply_err(s, ENOMEM, "held: out of memory");
    return;
  }
  for (size_t i = 0; i < n; i++) {
    unsigned conns = v[i].refs;

    for (int k = 0; k < s->nheld; k++)
      if (s->held[k].e == v[i].e)
        conns--; /* our own reference is not a connection */
    strcpy(line, "data");
    snprintf(num, sizeof num, "%u", conns);
    ccp_append(line, sizeof line, v[i].name);
    ccp_append(line, sizeof line, num);
    ccp_append(line, sizeof line, v[i].path);
    ccp_append(line, sizeof line, v[i].writable ? "rw" : "ro");
    ccp_write_line(s->conn->fd, line);
  }
  free(v);
  reply(s, "ok %zu", n);
}

static void
cmd_connections(struct session *s, char **w, int n)
{
  struct exports_item *v = NULL;
  size_t k = 0;
  unsigned conns = 0;

  if (n != 2) {
    reply_err(s, EINVAL, "usage: connections NAME");
    return;
  }
  if (exports_snapshot(&v, &k) < 0) {
    reply_err(s, ENOMEM, "connections: out of memory");
    return;
  }
  for (size_t i = 0; i < k; i++) {
    if (strcmp(v[i].name, w[1]) != 0)
      continue;
    conns += v[i].refs;
    for (int j = 0; j < s->nheld; j++)
      if (s->held[j].e == v[i].e)
        conns--;
  }
  free(v);
  reply(s, "ok %u", conns);
}

/* evict NAME: for `snapshot revert --force`.  The gate is closed and drained (writes finish,
 * the chain is flushed on close), then every connection's requests fail with ESHUTDOWN and the
 * chain is closed, so its layer locks go and the pool may change the clone. */
static void
cmd_evict(struct session *s, char **w, int n)
{
  struct cc_export *e;
  int r;

  if (n != 2) {
    reply_err(s, EINVAL, "usage: evict NAME");
    return;
  }
  if (find_held(s, w[1])) {
    reply_err(s, EBUSY, "evict: %s: its gate is held by this session (resume first)", w[1]);
    return;
  }
  e = exports_hold_writable(w[1]);
  if (e == NULL) {
    reply(s, "ok 0"); /* nothing open: nobody to evict */
    return;
  }
  r = gate_close(&e->gate, DRAIN_TIMEOUT_MS);
  if (r < 0) {
    exports_release(e);
    reply_err(s, -r, "evict: %s: %s", w[1],
              r == -ETIMEDOUT ? "requests in flight did not finish in time" : strerror(-r));
    return;
  }
  r = exports_evict(e, DRAIN_TIMEOUT_MS);
  gate_open(&e->gate); /* the writes that waited now fail: the entry is evicted */
  exports_release(e);
  if (r < 0) {
    reply_err(s, -r,
              "evict: %s: reads in flight did not finish in time (its requests fail "
              "from now on; the chain closes with its last connection)",
              w[1]);
    return;
  }
  reply(s, "ok %d", r);
}

/* ---- live merge (docs/POOL.md 6.2) ---- */

/* merge-top NAME SRC OFFSET LENGTH: copy layer SRC into NAME's top over the range, only where
 * the top is unallocated, with the export's write gate closed for this one piece (so no guest
 * write is in flight while "unallocated" is checked and filled: a guest write always wins).
 * The client sends pieces of a few MiB, so each stall is one piece's copy.  SRC stays open in
 * the session between pieces. */
static void
cmd_merge_top(struct session *s, char **w, int n)
{
  unsigned long long off, len;
  uint64_t copied = 0;
  struct cc_export *e;
  long long t0;
  char *end1, *end2;
  int r;

  if (n != 5) {
    reply_err(s, EINVAL, "usage: merge-top NAME SRC-LAYER OFFSET LENGTH");
    return;
  }
  off = strtoull(w[3], &end1, 10);
  len = strtoull(w[4], &end2, 10);
  if (*end1 || *end2 || len == 0) {
    reply_err(s, EINVAL, "merge-top: %s: bad range %s %s", w[1], w[3], w[4]);
    return;
  }
  if (find_held(s, w[1])) {
    reply_err(s, EBUSY, "merge-top: %s: its gate is held by this session (resume first)", w[1]);
    return;
  }
  if (!s->merge_src || strcmp(s->merge_path, w[2]) != 0) {
    if (s->merge_src)
      ovl_close(s->merge_src);
    s->merge_src = NULL;
    cc_error_clear();
    /* Shared lock: nobody may write the layer we copy (the pool holds the pool lock). */
    if ((r = ovl_open(w[2], OVL_RDONLY, &s->merge_src)) < 0) {
      reply_err(s, -r, "merge-top: %s: %s", w[1], cc_error_get());
      return;
    }
    snprintf(s->merge_path, sizeof s->merge_path, "%s", w[2]);
  }
  if ((e = exports_hold_writable(w[1])) == NULL) {
    reply_err(s, ENOENT, "merge-top: %s: not open for writing on this server", w[1]);
    return;
  }
  t0 = cc_mono_us();
  if ((r = gate_close(&e->gate, DRAIN_TIMEOUT_MS)) < 0) {
    exports_release(e);
    reply_err(s, -r, "merge-top: %s: %s", w[1],
              r == -ETIMEDOUT ? "requests in flight did not finish in time" : strerror(-r));
    return;
  }
  cc_error_clear();
  r = cc_chain_fill_top(e->chain, s->merge_src, off, len, &copied);
  gate_open(&e->gate);
  exports_release(e);
  if (r < 0)
    reply_err(s, -r, "merge-top: %s: %s", w[1], cc_error_get());
  else
    reply(s, "ok %llu %lld", (unsigned long long)copied, cc_mono_us() - t0);
}

/* relink-top NAME KIND LINK: flush NAME's top and point its parent link at LINK (kind none,
 * layer or raw; LINK relative to the top, "%" for none): one flush with the gate open (the
 * merged data), then the gate closed for a second flush (what the guest wrote since) and the
 * header write; then refresh the frozen part (no pause: readers switch views). */
static void
cmd_relink_top(struct session *s, char **w, int n)
{
  struct cc_export *e;
  long long t0, stall;
  int kind, r;

  if (n != 4) {
    reply_err(s, EINVAL, "usage: relink-top NAME none|layer|raw LINK");
    return;
  }
  kind = strcmp(w[2], "none") == 0    ? OVL_PARENT_NONE
         : strcmp(w[2], "layer") == 0 ? OVL_PARENT_LAYER
         : strcmp(w[2], "raw") == 0   ? OVL_PARENT_RAW
                                      : -1;
  if (kind < 0) {
    reply_err(s, EINVAL, "relink-top: %s: kind %s: give none, layer or raw", w[1], w[2]);
    return;
  }
  if (find_held(s, w[1])) {
    reply_err(s, EBUSY, "relink-top: %s: its gate is held by this session (resume first)", w[1]);
    return;
  }
  if ((e = exports_hold_writable(w[1])) == NULL) {
    reply_err(s, ENOENT, "relink-top: %s: not open for writing on this server", w[1]);
    return;
  }
  /* The merge's pieces are still in the page cache: flush them with the gate open, so the
   * flush under the gate below covers only what the guest wrote meanwhile (a 128 MiB merge
   * made that a 160 ms stall of every guest write, BENCHMARKS.md). */
  cc_error_clear();
  if ((r = cc_chain_flush(e->chain)) < 0) {
    exports_release(e);
    reply_err(s, -r, "relink-top: %s: %s", w[1], cc_error_get());
    return;
  }
  t0 = cc_mono_us();
  if ((r = gate_close(&e->gate, DRAIN_TIMEOUT_MS)) < 0) {
    exports_release(e);
    reply_err(s, -r, "relink-top: %s: %s", w[1],
              r == -ETIMEDOUT ? "requests in flight did not finish in time" : strerror(-r));
    return;
  }
  cc_error_clear();
  r = cc_chain_relink_top(e->chain, kind, kind == OVL_PARENT_NONE ? NULL : w[3]);
  gate_open(&e->gate);
  stall = cc_mono_us() - t0;
  if (r == 0) {
    cc_error_clear();
    r = cc_chain_refresh_frozen(e->chain);
  }
  exports_release(e);
  if (r < 0)
    reply_err(s, -r, "relink-top: %s: %s", w[1], cc_error_get());
  else
    reply(s, "ok %lld", stall);
}

/* forget LAYER: a live merge is about to delete LAYER.  No chain opened from now on may reuse
 * an index that holds it (chain/registry.c), and every open export whose frozen part holds it
 * is rebuilt from the files as they are now (readers switch views; nothing pauses). */
static void
cmd_forget(struct session *s, char **w, int n)
{
  struct exports_item *v = NULL;
  struct stat st;
  size_t k = 0;
  int refreshed = 0, failed = 0;
  char msg[1024] = "";

  if (n != 2) {
    reply_err(s, EINVAL, "usage: forget LAYER");
    return;
  }
  if (s->merge_src && strcmp(s->merge_path, w[1]) == 0) {
    ovl_close(s->merge_src); /* merge-top's copy of it is done */
    s->merge_src = NULL;
  }
  if (stat(w[1], &st) < 0) {
    reply(s, "ok 0 0"); /* already gone: an index holding it reads it through its fd */
    return;
  }
  cc_chain_forget_file(st.st_dev, st.st_ino);
  if (exports_snapshot(&v, &k) < 0) {
    reply_err(s, ENOMEM, "forget: out of memory");
    return;
  }
  for (size_t i = 0; i < k; i++) {
    struct cc_export *e = exports_hold_open(v[i].name);
    if (!e)
      continue;
    if (cc_chain_uses_file(e->chain, st.st_dev, st.st_ino)) {
      cc_error_clear();
      if (cc_chain_refresh_frozen(e->chain) == 0) {
        refreshed++;
      } else {
        /* It still reads the same bytes through the old index: not fatal, only the space
         * of the deleted layer stays held until its last connection closes. */
        failed++;
        snprintf(msg, sizeof msg, "%s: %s", e->name, cc_error_get());
        nbdkit_error("control: forget: %s", msg);
      }
    }
    exports_release(e);
  }
  free(v);
  reply(s, "ok %d %d", refreshed, failed);
}

static void
dispatch(struct session *s, char **w, int n)
{
  if (strcmp(w[0], "hello") == 0) {
    char dir[PATH_MAX * 3 + 1];

    ccp_encode(pool_dir ? pool_dir : "", dir, sizeof dir);
    reply(s, "ok cowchain-control %d pid %ld pool %s", CCP_VERSION, (long)getpid(), dir);
  } else if (strcmp(w[0], "held") == 0) {
    cmd_held(s);
  } else if (strcmp(w[0], "connections") == 0) {
    cmd_connections(s, w, n);
  } else if (strcmp(w[0], "quiesce") == 0) {
    cmd_quiesce(s, w, n);
  } else if (strcmp(w[0], "push-top") == 0) {
    cmd_push_top(s, w, n);
  } else if (strcmp(w[0], "resume") == 0) {
    cmd_resume(s, w, n);
  } else if (strcmp(w[0], "evict") == 0) {
    cmd_evict(s, w, n);
  } else if (strcmp(w[0], "merge-top") == 0) {
    cmd_merge_top(s, w, n);
  } else if (strcmp(w[0], "relink-top") == 0) {
    cmd_relink_top(s, w, n);
  } else if (strcmp(w[0], "forget") == 0) {
    cmd_forget(s, w, n);
  } else {
    char name[64];

    ccp_encode(w[0], name, sizeof name);
    reply_err(s, ENOSYS, "unknown command %s (this server speaks cowchain-control %d)", name,
              CCP_VERSION);
  }
}

/* Serve one accepted client until it leaves. */
static void
session_run(int fd)
{
  struct ccp_conn *conn = malloc(sizeof *conn);
  struct session s = {.conn = conn};
  char *words[CCP_MAX_WORDS];

  s.line = malloc(CCP_LINE_MAX + 1);
  if (!conn || !s.line)
    goto out;
  ccp_init(conn, fd);
  if (ccp_write_line(fd, CCP_GREETING) < 0)
    goto out;
  for (;;) {
    long long idle_end = cc_mono_ms() + IDLE_TIMEOUT_MS;
    int r, n;

    /* Wake at least once a second to notice a shutdown. */
    do {
      long long end = s.nheld ? s.hold_deadline : idle_end;
      long long left = end - cc_mono_ms();

      if (atomic_load(&stopping)) {
        r = -ESHUTDOWN;
        break;
      }
      if (left <= 0) {
        r = -ETIMEDOUT;
        break;
      }
      r = ccp_read_line(conn, s.line, left < 1000 ? (int)left : 1000);
    } while (r == -ETIMEDOUT);
    if (r < 0) {
      /* Gone, idle, shut down, or the hold expired: in every case the session ends (a client
       * whose hold expired learns it from the closed connection). */
      if (s.nheld)
        abandon_hold(&s, r == -ETIMEDOUT ? "hold expired"
                         : r == -EPIPE   ? "client left with gates closed"
                                         : "control channel error with gates closed");
      break;
    }
    n = ccp_split(s.line, words, CCP_MAX_WORDS);
    if (n < 0) {
      reply_err(&s, -n, "malformed request (words are percent-encoded, at most %d)", CCP_MAX_WORDS);
      continue;
    }
    if (n == 0)
      continue;
    dispatch(&s, words, n);
  }
out:
  if (s.nheld)
    abandon_hold(&s, "control channel closed");
  if (s.merge_src)
    ovl_close(s.merge_src);
  free(s.line);
  free(conn);
  close(fd);
}

/* Peer check: the server's uid or root.  Sends the refusal itself. */
static int
peer_allowed(int fd)
{
  struct ucred cred;
  socklen_t len = sizeof cred;
  char msg[160];

  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
    nbdkit_error("control: SO_PEERCRED: %m");
    return 0;
  }
  if (cred.uid == geteuid() || cred.uid == 0)
    return 1;
  snprintf(msg, sizeof msg,
           "err %d permission denied: uid %u is neither root nor the server's uid %u", EPERM,
           (unsigned)cred.uid, (unsigned)geteuid());
  ccp_write_line(fd, msg);
  nbdkit_debug("control: refused a client with uid %u (pid %ld)", (unsigned)cred.uid,
               (long)cred.pid);
  return 0;
}

static void *
control_thread(void *arg)
{
  (void)arg;
  while (!atomic_load(&stopping)) {
    struct pollfd p[2] = {{.fd = listen_fd, .events = POLLIN},
                          {.fd = stop_pipe[0], .events = POLLIN}};
    int fd;

    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      nbdkit_error("control: poll: %m");
      break;
    }
    if (p[1].revents)
      break;
    if (!(p[0].revents & POLLIN))
      continue;
    fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
        nbdkit_error("control: accept: %m");
      continue;
    }
    if (peer_allowed(fd))
      session_run(fd);
    else
      close(fd);
  }
  return NULL;
}

int
control_start(void)
{
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  char *run_dir = NULL;
  struct stat st;
  int err;

  if (!enabled || pool_dir == NULL)
    return 0;
  if (asprintf(&run_dir, "%s/run", pool_dir) < 0 ||
      asprintf(&sock_path, "%s/nbdkit-%ld.ctl", run_dir, (long)getpid()) < 0) {
    nbdkit_error("control: out of memory");
    goto fail;
  }
  if (strlen(sock_path) >= sizeof addr.sun_path) {
    nbdkit_error("control: socket path %s is too long for a unix socket (%zu bytes at most); "
                 "serve a pool with a shorter path, or control=off",
                 sock_path, sizeof addr.sun_path - 1);
    goto fail;
  }
  if (mkdir(run_dir, 0700) < 0 && errno != EEXIST) {
    nbdkit_error("control: mkdir %s: %m", run_dir);
    goto fail;
  }
  if (stat(run_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
    nbdkit_error("control: %s is not a directory", run_dir);
    goto fail;
  }
  strcpy(addr.sun_path, sock_path);
  /* Our pid is in the name: a file there is a dead process's that had our pid. */
  unlink(sock_path);
  listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    nbdkit_error("control: %s: %m", sock_path);
    goto fail;
  }
  /* Connecting needs write permission, which umask 0022 already denies to others; 0600 makes
   * it explicit (and the directory is 0700 when we created it). */
  if (chmod(sock_path, 0600) < 0 || listen(listen_fd, 16) < 0) {
    nbdkit_error("control: %s: %m", sock_path);
    goto fail;
  }
  if (pipe2(stop_pipe, O_CLOEXEC) < 0) {
    nbdkit_error("control: pipe: %m");
    goto fail;
  }
  err = pthread_create(&thread, NULL, control_thread, NULL);
  if (err) {
    errno = err;
    nbdkit_error("control: pthread_create: %m");
    goto fail;
  }
  thread_started = 1;
  nbdkit_debug("control: listening on %s", sock_path);
  free(run_dir);
  return 0;

fail:
  free(run_dir);
  control_stop();
  return -1;
}

void
control_stop(void)
{
  if (thread_started) {
    atomic_store(&stopping, 1);
    if (write(stop_pipe[1], "x", 1) < 0)
      nbdkit_debug("control: waking the control thread: %m");
    pthread_join(thread, NULL);
    thread_started = 0;
  }
  if (listen_fd >= 0) {
    close(listen_fd);
    listen_fd = -1;
  }
  for (int i = 0; i < 2; i++) {
    if (stop_pipe[i] >= 0)
      close(stop_pipe[i]);
    stop_pipe[i] = -1;
  }
  if (sock_path) {
    unlink(sock_path);
    free(sock_path);
    sock_path = NULL;
  }
}
