/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: operations on clones a server is serving (docs/POOL.md section 6).
 *
 * Design notes
 * ------------
 * A served clone's top is locked exclusively by its server, so the pool cannot freeze it by
 * itself: it asks the server, through the server's control socket POOL/run/nbdkit-PID.ctl
 * (common/control-proto.h; the man page's CONTROL SOCKET).  This file is the client side:
 *
 *   - discovery (live_open): connect to every socket in POOL/run, ask each `held`, remember
 *     which server has which clone open for writing and with how many connections.  A socket
 *     that refuses with ECONNREFUSED belongs to a dead server and is unlinked; one we cannot
 *     talk to (another uid) is skipped: if its server holds a clone, the layer lock says so.
 *     A server serves one control client at a time, so the connections stay open for the whole
 *     operation and are reused (a second connect to the same server would wait for ourselves).
 *   - snapshot create of one or several clones, served or not, in the POOL.md 6.1 order: new
 *     tops created durably before any gate closes; `quiesce` every served clone (all servers);
 *     commit; `push-top`.  Offline clones have their tops locked exclusively instead, as in
 *     5.5.  One clone commits with one record replacement; several commit with an *intent*
 *     file (below), so a crash leaves every clone before or every clone after.
 *   - `connections NAME` for the operations that must not change a disk under a guest (revert,
 *     clone delete).
 *
 * The intent (POOL.md 6.3).  tmp/intent-PID-N.snap names every (clone, old top T, new top N,
 * snapshot) of one multi-clone snapshot.  It is written (atomically, durably) after the gates
 * are closed and before the first record replacement; from then on it is the commit point:
 * pool_get_clone (records.c), which every reader of a clone record goes through (the plugin
 * resolving an export, listings, the graph of check and garbage collection), applies a pending
 * intent to a record whose top is still T, so everyone sees "after" as soon as the intent
 * exists.  The records are then replaced one by one (each replacement changes nothing a reader
 * sees), and the intent is removed.  An intent left by a dead process is rolled forward (its
 * records written, then it is removed) by the next pool_lock, i.e. the next pool operation or
 * `check`.  A server whose control client died with gates closed resolves the clone again
 * (control.c), through pool_get_clone too, so it switches to N exactly when the intent exists.
 *
 * Crash test hooks: every durable step calls pool_step (COWCHAIN_CRASH_AT=N exits there);
 * COWCHAIN_KILL_SERVER_AT=N instead sends SIGKILL to the (first) server taking part in the
 * operation at step N and waits for it to be gone (pool_step_victim), so tests can kill the
 * server at every step too.
 */
#include "common/time.h"
#include "pool/internal.h"

#include "common/control-proto.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LIVE_CONNECT_MS 10000 /* greeting of a server (it may be busy with another client) */
#define LIVE_REPLY_MS 30000   /* a reply (quiesce may drain for 5 s per export) */
#define LIVE_HOLD_MS 10000    /* gates closed for us at most this long */
#define LIVE_COMMIT_MS 5000   /* commit only if this much of the hold is left */
#define LIVE_MAX_SERVERS 64
#define LIVE_MAX_CLONES 64    /* clones in one snapshot create (the server's MAX_EXPORTS) */
#define LIVE_RETRIES 30       /* x 100 ms: a server opening or closing a clone while we looked */
#define LIVE_CLOSING_TRIES 10 /* x 50 ms: connections counted again before a refusal */
#define LIVE_CLOSING_MS 50

struct live_export {
  char name[2 * CC_NAME_MAX + 2];
  char top[PATH_MAX]; /* the file its chain is on */
  unsigned conns;
  int rw;
};

struct live_server {
  char path[PATH_MAX];
  long pid;
  struct ccp_conn *conn;
  struct live_export *ex;
  size_t nex;
};

struct live_set {
  struct live_server srv[LIVE_MAX_SERVERS];
  size_t n;
  char *line; /* CCP_LINE_MAX + 1 */
};

static void
live_close(struct live_set *s)
{
  for (size_t i = 0; i < s->n; i++) {
    if (s->srv[i].conn) {
      close(s->srv[i].conn->fd);
      free(s->srv[i].conn);
    }
    free(s->srv[i].ex);
  }
  s->n = 0;
  free(s->line);
  s->line = NULL;
}

/* Send one request and read its answer.  `data` (may be NULL) gets each "data" line's words;
 * ok_words (may be NULL, CCP_MAX_WORDS) the words after "ok", in s->line.  An "err" becomes
 * -ERRNO with the server's message. */
typedef int (*live_data_fn)(void *opaque, char **w, int n);
static int
live_call(struct live_set *s, struct live_server *v, const char *what, const char *req,
          live_data_fn data, void *opaque, char **ok_words, int *nok)
{
  char *w[CCP_MAX_WORDS];
  int r, n;

  if ((r = ccp_write_line(v->conn->fd, req)) < 0)
    return cc_error_set(-r, "%s: server %ld (%s): %s", what, v->pid, v->path, strerror(-r));
  for (;;) {
    r = ccp_read_line(v->conn, s->line, LIVE_REPLY_MS);
    if (r < 0)
      return cc_error_set(-r, "%s: server %ld: %s", what, v->pid,
                          r == -EPIPE       ? "closed the control connection (did it exit?)"
                          : r == -ETIMEDOUT ? "did not answer in time"
                                            : strerror(-r));
    if (strncmp(s->line, "err ", 4) == 0) {
      char *end;
      long e = strtol(s->line + 4, &end, 10);
      if (e <= 0 || e > 4095)
        e = EPROTO;
      return cc_error_set((int)e, "%s: server %ld: %s", what, v->pid, *end ? end + 1 : "");
    }
    n = ccp_split(s->line, w, CCP_MAX_WORDS);
    if (n < 1)
      return cc_error_set(EPROTO, "%s: server %ld: malformed reply", what, v->pid);
    if (strcmp(w[0], "data") == 0) {
      if (data && (r = data(opaque, w + 1, n - 1)) < 0)
        return r;
      continue;
    }
    if (strcmp(w[0], "ok") != 0)
      return cc_error_set(EPROTO, "%s: server %ld: unexpected reply '%s'", what, v->pid, w[0]);
    if (ok_words) {
      for (int i = 1; i < n; i++)
        ok_words[i - 1] = w[i];
      *nok = n - 1;
    }
    return 0;
  }
}

static int
held_line(void *opaque, char **w, int n)
{
  struct live_server *v = opaque;
  struct live_export *e;

  if (n != 4)
    return cc_error_set(EPROTO, "held: server %ld: malformed data line", v->pid);
  e = realloc(v->ex, (v->nex + 1) * sizeof *e);
  if (e == NULL)
    return cc_error_set(ENOMEM, "held: out of memory");
  v->ex = e;
  e = &v->ex[v->nex++];
  snprintf(e->name, sizeof e->name, "%s", w[0]);
  e->conns = (unsigned)strtoul(w[1], NULL, 10);
  snprintf(e->top, sizeof e->top, "%s", w[2]);
  e->rw = strcmp(w[3], "rw") == 0;
  return 0;
}

/* Connect to every server of the pool and learn what each holds. */
static int
live_open(struct cc_pool *p, struct live_set *s)
{
  char dir[PATH_MAX], path[PATH_MAX];
  struct dirent *d;
  DIR *dp;
  int r = 0;

  memset(s, 0, sizeof *s);
  if (!(s->line = malloc(CCP_LINE_MAX + 1)))
    return cc_error_set(ENOMEM, "out of memory");
  if ((r = pool_path(p, dir, sizeof dir, "run")) < 0)
    return r;
  if ((dp = opendir(dir)) == NULL)
    return 0; /* no server ever ran: nothing is served */
  while ((d = readdir(dp)) != NULL && s->n < LIVE_MAX_SERVERS) {
    struct live_server *v = &s->srv[s->n];
    size_t len = strlen(d->d_name);
    long pid;
    int fd;

    if (strncmp(d->d_name, "nbdkit-", 7) != 0 || len < 12 ||
        strcmp(d->d_name + len - 4, ".ctl") != 0)
      continue;
    pid = strtol(d->d_name + 7, NULL, 10);
    if (snprintf(path, sizeof path, "%s/%s", dir, d->d_name) >= (int)sizeof path)
      continue;
    memset(v, 0, sizeof *v);
    if (!(v->conn = malloc(sizeof *v->conn))) {
      r = cc_error_set(ENOMEM, "out of memory");
      break;
    }
    fd = ccp_connect(path, v->conn, LIVE_CONNECT_MS);
    if (fd < 0) {
      free(v->conn);
      v->conn = NULL;
      /* A dead server's socket: nobody listens any more (POOL.md 6). */
      if (fd == -ECONNREFUSED)
        unlink(path);
      continue;
    }
    snprintf(v->path, sizeof v->path, "%s", path);
    v->pid = pid;
    s->n++;
    if ((r = live_call(s, v, "held", "held", held_line, v, NULL, NULL)) < 0)
      break;
  }
  closedir(dp);
  return r;
}

/* The server holding clone `name` for writing, or NULL; *ex (may be NULL) its entry. */
static struct live_server *
live_holder(struct live_set *s, const char *name, const struct live_export **ex)
{
  for (size_t i = 0; i < s->n; i++)
    for (size_t k = 0; k < s->srv[i].nex; k++)
      if (s->srv[i].ex[k].rw && strcmp(s->srv[i].ex[k].name, name) == 0) {
        if (ex)
          *ex = &s->srv[i].ex[k];
        return &s->srv[i];
      }
  return NULL;
}

/* Ask v how many connections `name` has now (`connections NAME`). */
static int
live_connections(struct live_set *s, struct live_server *v, const char *what, const char *name,
                 unsigned *conns)
{
  char req[CC_NAME_MAX * 3 + 32] = "connections", *w[CCP_MAX_WORDS];
  int r, n = 0;

  if ((r = ccp_append(req, sizeof req, name)) < 0)
    return cc_error_set(-r, "%s: %s: name too long", what, name);
  if ((r = live_call(s, v, what, req, NULL, NULL, w, &n)) < 0)
    return r;
  *conns = n >= 1 ? (unsigned)strtoul(w[0], NULL, 10) : 0;
  return 0;
}

/* A durable step of a live operation; the COWCHAIN_KILL_SERVER_AT hook kills server v. */
static void
live_step(struct live_server *v)
{
  (void)v;
  pool_step();
}

/* ---- depth ---- */

/* Files in the chain under layer `uuid` (the layer itself included, and a raw image). */
static int
chain_depth(struct cc_pool *p, const char *what, const char *top, size_t *depth)
{
  char uuid[CC_UUID_STR], image[CC_NAME_MAX + 1] = "";
  size_t d = 0;
  int r;

  snprintf(uuid, sizeof uuid, "%s", top);
  while (uuid[0]) {
    struct ovl_layer *l;
    struct ovl_info info;

    if (++d > CC_MAX_DEPTH)
      break;
    if ((r = pool_open_layer(p, uuid, OVL_RDONLY | OVL_NOLOCK | OVL_HEADER_ONLY, what, &l)) < 0)
      return r;
    ovl_get_info(l, &info);
    ovl_close(l);
    if (pool_parse_parent_link(info.parent_kind, info.parent_path, uuid, image) < 0)
      break;
  }
  if (image[0])
    d++;
  *depth = d;
  return 0;
}

/* ---- intents ---- */

#define INTENT_MAGIC "cowchain-intent 1"

struct intent_entry {
  char clone[CC_NAME_MAX + 1];
  char old_top[CC_UUID_STR], new_top[CC_UUID_STR];
  struct cc_snapshot snap;
};

/* Parse intent file `path`; *out malloc'd.  -EUCLEAN for a malformed one.  Each line after the
 * version is "snapshot CLONE OLD-TOP NEW-TOP SNAP CREATED DESCRIPTION", words percent-encoded
 * as on the control socket (common/control-proto.h; "%" is the empty description). */
static int
intent_read(const char *path, struct intent_entry **out, size_t *n)
{
  struct intent_entry *v = NULL, *e;
  char *line = malloc(CCP_LINE_MAX + 1), *w[8];
  size_t k = 0;
  FILE *f = fopen(path, "re");
  int first = 1, nw;

  *out = NULL;
  *n = 0;
  if (f == NULL || line == NULL) {
    int err = f ? ENOMEM : errno;
    if (f)
      fclose(f);
    free(line);
    return -err;
  }
  while (fgets(line, CCP_LINE_MAX + 1, f)) {
    line[strcspn(line, "\n")] = '\0';
    if (first) {
      first = 0;
      if (strcmp(line, INTENT_MAGIC) != 0)
        goto bad;
      continue;
    }
    nw = ccp_split(line, w, 8);
    if (nw != 7 || strcmp(w[0], "snapshot") != 0 || !cc_name_valid(w[1]) ||
        !pool_uuid_valid(w[2]) || !pool_uuid_valid(w[3]) || !cc_name_valid(w[4]) ||
        strlen(w[6]) > CC_DESC_MAX)
      goto bad;
    if (!(e = realloc(v, (k + 1) * sizeof *e)))
      goto bad;
    v = e;
    e = &v[k];
    memset(e, 0, sizeof *e);
    if (cc_time_parse(w[5], &e->snap.created) < 0)
      goto bad;
    strcpy(e->clone, w[1]);
    strcpy(e->old_top, w[2]);
    strcpy(e->new_top, w[3]);
    strcpy(e->snap.name, w[4]);
    strcpy(e->snap.layer, w[2]);
    strcpy(e->snap.description, w[6]);
    k++;
  }
  fclose(f);
  free(line);
  if (first) {
    free(v);
    return -EUCLEAN; /* empty: never written by us (records are written whole, then renamed) */
  }
  *out = v;
  *n = k;
  return 0;
bad:
  fclose(f);
  free(line);
  free(v);
  return -EUCLEAN;
}

static int
is_intent_name(const char *n)
{
  size_t len = strlen(n);
  return strncmp(n, "intent-", 7) == 0 && len > 12 && strcmp(n + len - 5, ".snap") == 0;
}

/* Apply entry e to record c if c still names the old top (the intent is the commit point). */
static int
intent_apply_one(struct cc_clone *c, const struct intent_entry *e)
{
  struct cc_snapshot *ns;

  if (strcmp(c->name, e->clone) != 0 || strcmp(c->top, e->old_top) != 0)
    return 0;
  if (pool_find_snap(c, e->snap.name) < 0) {
    if (!(ns = realloc(c->snaps, (c->nsnaps + 1) * sizeof *ns)))
      return cc_error_set(ENOMEM, "%s: out of memory", c->name);
    c->snaps = ns;
    c->snaps[c->nsnaps++] = e->snap;
  }
  strcpy(c->top, e->new_top);
  return 1;
}

int
pool_intent_apply(struct cc_pool *p, const char *op, struct cc_clone *c)
{
  char dir[PATH_MAX], path[PATH_MAX];
  struct dirent *d;
  DIR *dp;
  int r = 0;

  if (pool_path(p, dir, sizeof dir, "tmp") < 0 || (dp = opendir(dir)) == NULL)
    return 0;
  while (r >= 0 && (d = readdir(dp)) != NULL) {
    struct intent_entry *v;
    size_t n;

    if (!is_intent_name(d->d_name) ||
        snprintf(path, sizeof path, "%s/%s", dir, d->d_name) >= (int)sizeof path)
      continue;
    if (intent_read(path, &v, &n) < 0)
      continue; /* check reports it; a malformed intent cannot decide anything */
    for (size_t i = 0; i < n && r >= 0; i++)
      r = intent_apply_one(c, &v[i]);
    free(v);
  }
  closedir(dp);
  if (r < 0) {
    char msg[CC_ERROR_MAX];
    snprintf(msg, sizeof msg, "%s", cc_error_get());
    cc_clone_free(c);
    return cc_error_set(-r, "%s: %s", op, msg);
  }
  return 0;
}

/* Write the records an intent names (pool_get_clone already applies it), then remove it. */
static int
intent_finish(struct cc_pool *p, const char *path, int remove_only)
{
  struct intent_entry *v;
  size_t n;
  int r;

  if ((r = intent_read(path, &v, &n)) < 0)
    return r == -EUCLEAN ? cc_error_set(EUCLEAN, "%s: malformed intent file", path)
                         : cc_error_set(-r, "%s: %s", path, strerror(-r));
  for (size_t i = 0; i < n && !remove_only; i++) {
    struct cc_clone c;

    r = pool_get_clone(p, "roll forward", v[i].clone, &c);
    if (r == -ENOENT)
      continue; /* deleted since: nothing to commit */
    if (r < 0)
      goto out;
    r = pool_write_clone(p, &c);
    cc_clone_free(&c);
    if (r < 0)
      goto out;
  }
  if (unlink(path) < 0) {
    r = cc_error_set(errno, "%s: %s", path, strerror(errno));
    goto out;
  }
  r = pool_fsync_dir(p, "tmp");
  pool_step();
out:
  free(v);
  return r;
}

int
pool_intent_roll_forward(struct cc_pool *p, unsigned *done)
{
  char dir[PATH_MAX], path[PATH_MAX];
  struct dirent *d;
  DIR *dp;
  int r = 0;

  if (done)
    *done = 0;
  if (pool_path(p, dir, sizeof dir, "tmp") < 0 || (dp = opendir(dir)) == NULL)
    return 0;
  while ((d = readdir(dp)) != NULL) {
    if (!is_intent_name(d->d_name) ||
        snprintf(path, sizeof path, "%s/%s", dir, d->d_name) >= (int)sizeof path)
      continue;
    /* Under the pool lock, every intent is a dead (or finished) operation's. */
    if ((r = intent_finish(p, path, 0)) < 0)
      break;
    if (done)
      (*done)++;
  }
  closedir(dp);
  return r;
}

static int
intent_write(struct cc_pool *p, const struct intent_entry *v, size_t n, char *path, size_t pathlen)
{
  char name[64], when[32], *buf;
  static unsigned counter;
  size_t len = 64 + n * (4 * CC_DESC_MAX + 512), off;
  int r = 0;

  snprintf(name, sizeof name, "intent-%ld-%u.snap", (long)getpid(), counter++);
  if ((r = pool_path(p, path, pathlen, "tmp/%s", name)) < 0)
    return r;
  if (!(buf = malloc(len)))
    return cc_error_set(ENOMEM, "snapshot create: out of memory");
  off = (size_t)snprintf(buf, len, "%s\n", INTENT_MAGIC);
  for (size_t i = 0; i < n && r == 0; i++) {
    char *l = buf + off;
    size_t room = len - off - 1;
    l[0] = '\0';
    cc_time_format(v[i].snap.created, CC_TIME_ISO, when, sizeof when);
    if ((r = ccp_append(l, room, "snapshot")) < 0 || (r = ccp_append(l, room, v[i].clone)) < 0 ||
        (r = ccp_append(l, room, v[i].old_top)) < 0 ||
        (r = ccp_append(l, room, v[i].new_top)) < 0 ||
        (r = ccp_append(l, room, v[i].snap.name)) < 0 || (r = ccp_append(l, room, when)) < 0 ||
        (r = ccp_append(l, room, v[i].snap.description)) < 0)
      break;
    off += strlen(l);
    buf[off++] = '\n';
    buf[off] = '\0';
  }
  if (r < 0)
    r = cc_error_set(-r, "snapshot create: intent: too long");
  else
    r = pool_write_record(p, "tmp", name, buf);
  free(buf);
  return r;
}

/* ---- snapshot create ---- */

struct snap_item {
  struct cc_clone c;        /* the record before */
  struct cc_clone after;    /* the record after (a copy with top and snapshot changed) */
  struct live_server *srv;  /* serving it, or NULL: offline */
  struct ovl_layer *held;   /* offline: the top's exclusive lock */
  char newtop[CC_UUID_STR]; /* "" until created */
  char newpath[PATH_MAX];   /* layers/NEWTOP.cow */
  int quiesced;
};

/* Undo what one attempt did before its commit: reopen gates, unlock tops, remove new tops. */
static void
snap_undo(struct cc_pool *p, struct live_set *s, struct snap_item *it, size_t n)
{
  char msg[CC_ERROR_MAX];
  int any = 0;

  snprintf(msg, sizeof msg, "%s", cc_error_get()); /* keep the reason of the failure */
  for (size_t i = 0; i < n; i++) {
    if (it[i].quiesced && it[i].srv) {
      live_call(s, it[i].srv, "resume", "resume", NULL, NULL, NULL, NULL);
      for (size_t k = 0; k < n; k++)
        if (it[k].srv == it[i].srv)
          it[k].quiesced = 0;
    }
    ovl_close(it[i].held);
    it[i].held = NULL;
    if (it[i].newtop[0]) {
      unlink(it[i].newpath);
      it[i].newtop[0] = '\0';
      any = 1;
    }
  }
  if (any)
    pool_fsync_dir(p, "layers");
  cc_error_set(EIO, "%s", msg); /* the caller returns its own errno; this keeps the message */
}

static int
clone_copy(struct cc_clone *dst, const struct cc_clone *src)
{
  *dst = *src;
  dst->snaps = malloc((src->nsnaps + 1) * sizeof *dst->snaps);
  if (dst->snaps == NULL)
    return cc_error_set(ENOMEM, "snapshot create: out of memory");
  if (src->nsnaps) /* a record without snapshots has no array to copy from */
    memcpy(dst->snaps, src->snaps, src->nsnaps * sizeof *dst->snaps);
  return 0;
}

/* One attempt, from discovery to the end.  -EAGAIN: a server opened or closed a clone while
 * we looked (nothing changed; try again). */
static int
snap_attempt(struct cc_pool *p, struct snap_item *it, size_t n, const char *snap,
             const char *description, int *committed)
{
  char what[CC_NAME_MAX + 32], intent[PATH_MAX] = "", req[CCP_LINE_MAX / 2];
  struct intent_entry *iv = NULL;
  struct pool_batch b;
  struct live_set s;
  long long t0;
  int r;

  pool_batch_init(&b, p);
  if ((r = live_open(p, &s)) < 0)
    goto out;
  for (size_t i = 0; i < s.n; i++)
    if (s.srv[i].nex) {
      pool_step_victim((pid_t)s.srv[i].pid, s.srv[i].conn->fd);
      break;
    }
  /* 1. Who serves what; offline tops locked (a server with control=off makes us refuse here). */
  for (size_t i = 0; i < n; i++) {
    const struct live_export *ex;
    char path[PATH_MAX];
    it[i].srv = live_holder(&s, it[i].c.name, &ex);
    if (it[i].srv) {
      /* The server's chain must sit on the top the record names, or push-top would refuse
       * after our commit (the new top's parent would not be its top). */
      if ((r = pool_layer_path(p, it[i].c.top, path, sizeof path)) < 0)
        goto undo;
      if (strcmp(path, ex->top) != 0) {
        r = cc_error_set(ESTALE,
                         "snapshot create: %s: nbdkit pid %ld serves it on %s, but its record "
                         "names %s; restart that server",
                         it[i].c.name, it[i].srv->pid, ex->top, path);
        goto undo;
      }
      continue;
    }
    snprintf(what, sizeof what, "snapshot create: %s", it[i].c.name);
    if ((r = pool_open_layer(p, it[i].c.top, OVL_RDWR, what, &it[i].held)) < 0) {
      if (r == -EBUSY)
        r = -EAGAIN; /* perhaps a server opened it since `held`: look again */
      goto undo;
    }
  }
  /* 2. Every new top, durable, before any gate closes (the stall stays one record write). */
  for (size_t i = 0; i < n; i++) {
    struct ovl_parent par;
    char ppath[64];
    if ((r = pool_parent_of_layer(p, it[i].c.top, &par, ppath, sizeof ppath)) < 0 ||
        (r = pool_batch_layer(&b, it[i].c.size, &par, it[i].newtop)) < 0 ||
        (r = pool_layer_path(p, it[i].newtop, it[i].newpath, sizeof it[i].newpath)) < 0 ||
        (!it[i].srv && (r = pool_batch_freeze(&b, it[i].held)) < 0))
      goto undo;
  }
  /* The records after. */
  for (size_t i = 0; i < n; i++) {
    struct cc_snapshot *ns;
    cc_clone_free(&it[i].after);
    if ((r = clone_copy(&it[i].after, &it[i].c)) < 0)
      goto undo;
    ns = &it[i].after.snaps[it[i].after.nsnaps++];
    memset(ns, 0, sizeof *ns);
    snprintf(ns->name, sizeof ns->name, "%s", snap);
    snprintf(ns->layer, sizeof ns->layer, "%s", it[i].c.top);
    ns->created = pool_now();
    snprintf(ns->description, sizeof ns->description, "%s", description ? description : "");
    strcpy(it[i].after.top, it[i].newtop);
  }
  if (n == 1 && (r = pool_batch_clone(&b, &it[0].after)) < 0)
    goto undo;
  if ((r = pool_batch_prepare(&b)) < 0)
    goto undo;
  /* 3. quiesce: one request per server naming all its clones (all or nothing there). */
  t0 = cc_mono_ms();
  for (size_t i = 0; i < n; i++) {
    if (!it[i].srv || it[i].quiesced)
      continue;
    snprintf(req, sizeof req, "quiesce %d", LIVE_HOLD_MS);
    for (size_t k = i; k < n; k++)
      if (it[k].srv == it[i].srv)
        ccp_append(req, sizeof req, it[k].c.name);
    if ((r = live_call(&s, it[i].srv, "snapshot create: quiesce", req, NULL, NULL, NULL, NULL)) <
        0) {
      if (r == -ENOENT)
        r = -EAGAIN; /* its last connection left since `held`: look again */
      goto undo;
    }
    for (size_t k = i; k < n; k++)
      if (it[k].srv == it[i].srv)
        it[k].quiesced = 1;
    live_step(it[i].srv);
  }
  /* A hold that might expire before push-top would let a server write a layer the records are
   * about to call a snapshot (POOL.md 6.1): commit only well inside it. */
  if (cc_mono_ms() - t0 > LIVE_HOLD_MS - LIVE_COMMIT_MS) {
    r = cc_error_set(ETIMEDOUT, "snapshot create: closing the write gates took too long");
    goto undo;
  }
  /* 4. Commit: one record, or the intent then the records. */
  if (n > 1) {
    if (!(iv = calloc(n, sizeof *iv))) {
      r = cc_error_set(ENOMEM, "snapshot create: out of memory");
      goto undo;
    }
    for (size_t i = 0; i < n; i++) {
      strcpy(iv[i].clone, it[i].c.name);
      strcpy(iv[i].old_top, it[i].c.top);
      strcpy(iv[i].new_top, it[i].newtop);
      iv[i].snap = it[i].after.snaps[it[i].after.nsnaps - 1];
    }
    if ((r = intent_write(p, iv, n, intent, sizeof intent)) < 0)
      goto undo;
    *committed = 1;
    live_step(it[0].srv);
  }
  if (n == 1) {
    r = pool_batch_commit(&b);
    if (b.committed)
      *committed = 1;
    if (r < 0)
      goto undo;
  }
  for (size_t i = 0; n > 1 && i < n; i++) {
    if ((r = pool_write_clone(p, &it[i].after)) < 0) {
      if (!*committed)
        goto undo;
      goto out; /* the intent decides; the next pool operation rolls it forward */
    }
    *committed = 1;
  }
  /* 5. push-top: the servers switch to the new tops and reopen the gates. */
  for (size_t i = 0; i < n; i++) {
    int k2, tries;
    if (!it[i].srv || !it[i].quiesced)
      continue;
    strcpy(req, "push-top");
    for (size_t k = i; k < n; k++)
      if (it[k].srv == it[i].srv) {
        ccp_append(req, sizeof req, it[k].c.name);
        ccp_append(req, sizeof req, it[k].newpath);
      }
    for (tries = 0; tries < 2; tries++) {
      cc_error_clear();
      if ((r = live_call(&s, it[i].srv, "snapshot create: push-top", req, NULL, NULL, NULL,
                         NULL)) == 0)
        break;
      if (r == -EPIPE || r == -ECONNRESET || r == -ETIMEDOUT)
        break; /* the server is gone: the records decide when it comes back */
    }
    for (k2 = (int)i; k2 < (int)n; k2++)
      if (it[k2].srv == it[i].srv)
        it[k2].quiesced = 0;
    if (r < 0) {
      char msg[CC_ERROR_MAX];
      snprintf(msg, sizeof msg, "%s", cc_error_get());
      r = cc_error_set(-r,
                       "%s (the snapshot %s is committed in the pool records; a server that "
                       "failed to switch keeps its gates closed until its hold ends)",
                       msg, snap);
      goto out;
    }
    live_step(it[i].srv);
  }
  if (intent[0]) {
    if (unlink(intent) == 0)
      pool_fsync_dir(p, "tmp");
    pool_step();
  }
  r = 0;
  goto out;

undo:
  if (!*committed)
    snap_undo(p, &s, it, n);
out:
  for (size_t i = 0; i < n; i++) {
    ovl_close(it[i].held);
    it[i].held = NULL;
    it[i].srv = NULL;
    it[i].quiesced = 0;
  }
  free(iv);
  pool_batch_free(&b);
  pool_step_victim(0, -1);
  live_close(&s);
  return r;
}

int
pool_snapshot_create_many(struct cc_pool *p, const char *clones, const char *snap,
                          const char *description)
{
  struct snap_item *it = NULL;
  char list[LIVE_MAX_CLONES * (CC_NAME_MAX + 1) + 1], *save = NULL, *tok;
  size_t n = 0;
  int r, committed = 0;

  if (!cc_name_valid(snap))
    return cc_error_set(EINVAL,
                        "snapshot create: '%.80s': not a valid snapshot name (letters, "
                        "digits, '.', '_', '-'; at most 64)",
                        snap);
  if (strlen(clones) >= sizeof list)
    return cc_error_set(E2BIG, "snapshot create: more than %d clones", LIVE_MAX_CLONES);
  if (description && strlen(description) > CC_DESC_MAX)
    return cc_error_set(EINVAL, "snapshot create: %s@%s: description longer than %d bytes", clones,
                        snap, CC_DESC_MAX);
  strcpy(list, clones);
  if (!(it = calloc(LIVE_MAX_CLONES, sizeof *it)))
    return cc_error_set(ENOMEM, "snapshot create: out of memory");
  if ((r = pool_lock(p, "snapshot create")) < 0)
    goto out;
  if (list[0] == ',' || (list[0] && list[strlen(list) - 1] == ',') || strstr(list, ",,")) {
    r = cc_error_set(EINVAL, "snapshot create: '%.200s': an empty clone name in the list", clones);
    goto out;
  }
  for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    size_t depth;
    if (n == LIVE_MAX_CLONES) {
      r = cc_error_set(E2BIG, "snapshot create: more than %d clones", LIVE_MAX_CLONES);
      goto out;
    }
    for (size_t k = 0; k < n; k++)
      if (strcmp(it[k].c.name, tok) == 0) {
        r = cc_error_set(EINVAL, "snapshot create: %s: named twice", tok);
        goto out;
      }
    if ((r = pool_get_clone(p, "snapshot create", tok, &it[n].c)) < 0)
      goto out;
    n++;
    if (pool_find_snap(&it[n - 1].c, snap) >= 0) {
      r = cc_error_set(EEXIST, "snapshot create: %s@%s: already exists", tok, snap);
      goto out;
    }
    /* Limits up front (issue 14 item 7): the new top adds one file to the chain. */
    if ((r = chain_depth(p, "snapshot create", it[n - 1].c.top, &depth)) < 0)
      goto out;
    if (depth + 1 > CC_MAX_DEPTH) {
      r = cc_error_set(EMLINK,
                       "snapshot create: %s: its chain already has %zu files, the limit is %d; "
                       "delete a snapshot first (snapshot delete merges its layer away)",
                       tok, depth, CC_MAX_DEPTH);
      goto out;
    }
  }
  if (n == 0) {
    r = cc_error_set(EINVAL, "snapshot create: no clone named");
    goto out;
  }
  for (int attempt = 0;; attempt++) {
    cc_error_clear();
    r = snap_attempt(p, it, n, snap, description, &committed);
    if (r != -EAGAIN || committed || attempt + 1 == LIVE_RETRIES)
      break;
    /* A connection opening the clone or the last one closing it (its final flush) holds the
     * top without being listed by `held`: give it a moment. */
    usleep(100000);
  }
  if (r == -EAGAIN && !committed) {
    /* The last attempt's reason (a layer lock names its holder: a server with control=off). */
    char msg[CC_ERROR_MAX];
    snprintf(msg, sizeof msg, "%s", cc_error_get());
    r = cc_error_set(EBUSY, "%s", msg);
  }
out:
  for (size_t i = 0; i < LIVE_MAX_CLONES; i++) {
    cc_clone_free(&it[i].c);
    cc_clone_free(&it[i].after);
  }
  free(it);
  pool_unlock(p);
  return r;
}

/* ---- the other operations' checks ---- */

int
pool_live_exclusive(struct cc_pool *p, const char *what, const char *clone, int force,
                    const char *why, int *served)
{
  struct live_server *v;
  struct live_set s;
  unsigned conns = 0;
  int r;

  *served = 0;
  if ((r = live_open(p, &s)) < 0)
    goto out;
  if ((v = live_holder(&s, clone, NULL)) == NULL)
    goto out; /* nobody serves it: the layer locks decide, as offline */
  *served = 1;
  /* A client that has just disconnected is still counted until nbdkit closes its connection
   * (a few milliseconds): a script that disconnects, then reverts, must not be refused for it.
   * So count again for a moment before refusing; a connected guest costs that moment. */
  for (int tries = 0;; tries++) {
    if ((r = live_connections(&s, v, what, clone, &conns)) < 0 || conns == 0)
      goto out; /* its last connection is closing: the caller waits for the chain to close */
    if (force || tries == LIVE_CLOSING_TRIES)
      break;
    usleep(LIVE_CLOSING_MS * 1000);
  }
  if (!force) {
    r = cc_error_set(EBUSY, "%s: %s: %u connection%s open on nbdkit pid %ld%s", what, clone, conns,
                     conns == 1 ? "" : "s", v->pid, why);
    goto out;
  }
  {
    char req[CC_NAME_MAX * 3 + 16] = "evict";
    ccp_append(req, sizeof req, clone);
    r = live_call(&s, v, what, req, NULL, NULL, NULL, NULL);
  }
out:
  live_close(&s);
  return r;
}

/* ---- live merge (POOL.md 6.2): the servers, for merge.c ---- */

struct pool_live {
  struct live_set s;
};

int
pool_live_open(struct cc_pool *p, struct pool_live **out)
{
  struct pool_live *l = calloc(1, sizeof *l);
  int r;

  *out = NULL;
  if (!l)
    return cc_error_set(ENOMEM, "out of memory");
  if ((r = live_open(p, &l->s)) < 0) {
    live_close(&l->s);
    free(l);
    return r;
  }
  for (size_t i = 0; i < l->s.n; i++)
    if (l->s.srv[i].nex) {
      pool_step_victim((pid_t)l->s.srv[i].pid, l->s.srv[i].conn->fd);
      break;
    }
  *out = l;
  return 0;
}

void
pool_live_close(struct pool_live *l)
{
  if (!l)
    return;
  pool_step_victim(0, -1);
  live_close(&l->s);
  free(l);
}

size_t
pool_live_servers(const struct pool_live *l)
{
  return l->s.n;
}

int
pool_live_top_holder(struct pool_live *l, const char *top_path, char *name, size_t len)
{
  for (size_t i = 0; i < l->s.n; i++)
    for (size_t k = 0; k < l->s.srv[i].nex; k++)
      if (l->s.srv[i].ex[k].rw && strcmp(l->s.srv[i].ex[k].top, top_path) == 0) {
        snprintf(name, len, "%s", l->s.srv[i].ex[k].name);
        return (int)i;
      }
  return -1;
}

long
pool_live_pid(const struct pool_live *l, int srv)
{
  return l->s.srv[srv].pid;
}

int
pool_live_call(struct pool_live *l, int srv, const char *what, const char *req, char **ok, int *nok)
{
  return live_call(&l->s, &l->s.srv[srv], what, req, NULL, NULL, ok, nok);
}
