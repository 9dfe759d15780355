/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain plugin: the per-process table of open exports.
 *
 * Design notes
 *
 * Every clone, snapshot and template of the pool is its own NBD export, and a client may open
 * several connections to one export (multi-conn: qemu, nbdcopy).  Those connections must share
 * ONE struct cc_chain: a clone's top layer is locked exclusively when opened for writing, so a
 * second cc_chain on it would be refused, and a flush on one connection must make writes from
 * every connection durable before we reply (that is what can_multi_conn promises).
 *
 * So the plugin keeps a table of open exports:
 *
 *   table ──> { name, path, state, refs, chain } ──> { ... } ──> NULL
 *
 *  - exports_acquire (from .open) looks the export up by (name, top path).  Hit: refs++.
 *    Miss: insert an OPENING placeholder, open the chain, mark it OPEN.
 *  - exports_release (from .close) does refs--; at zero it marks the entry CLOSING, closes the
 *    chain (cc_chain_close flushes and drops the layer locks) and removes the entry, so the CLI
 *    can snapshot or delete a clone as soon as the last client has disconnected.
 *
 *   (miss) ──> OPENING ──open ok──> OPEN ──last close──> CLOSING ──closed──> (gone)
 *                 └──open failed──> (gone)
 *
 * Why the key includes the top path: the CLI changes what a name means while we run (snapshot
 * create gives a clone a new top layer, revert another one; a clone can be deleted and created
 * again).  .open resolves the name afresh each time; connections already open keep the chain
 * they have, and a new connection to a changed name gets a new entry for the new top.  The old
 * entry lives on, unreachable by lookup, until its last connection closes.
 *
 * Locking: table_lock guards the list and every entry's state and refs; table_cond is
 * broadcast whenever an entry leaves OPENING or CLOSING.  Chains are opened and closed WITHOUT
 * the lock, so a slow open (a deep chain's index) or a slow final flush never holds up the
 * connections of other exports.  A connection that finds its export OPENING or CLOSING waits
 * on table_cond and looks again: it must neither open a second chain (the clone's top is
 * locked exclusively, so it would be refused by our own first open) nor reopen before the
 * close has released the layer lock.  I/O never takes table_lock: the data callbacks use
 * e->chain directly (chain/ is thread-safe), and e->chain is constant while refs > 0.
 *
 * Race tolerated: between the lookup's cc_pool_resolve_export and the open the CLI may switch
 * the clone's top.  cc_pool_open_export handles that itself (pool/export.c: it follows the new
 * record) and says which top it opened; the entry is keyed by that top, so an entry's path
 * always names the layer its chain was opened on.  If the top moved on, the placeholder's key
 * changes when the open completes; connections waiting on it wake and look again.  (A read-only
 * server may then hold two chains on one top for a moment, harmless: nothing writes them.)
 *
 * The pool handle and the I/O flags live here, and only here: exports_init opens the pool in
 * .get_ready, exports_shutdown closes it, and the rest of the plugin asks exports_pool().
 *
 * Read-only: nbdkit's -r is process-wide, so every connection of one server asks with the same
 * `readonly`; an entry is shared regardless and can_write asks the handle and the chain.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "server/exports.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/escape.h"

/* -D cowchain.exports=1: log every acquire/release with its reference count. */
NBDKIT_DLL_PUBLIC int cowchain_debug_exports = 0;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t table_cond = PTHREAD_COND_INITIALIZER; /* an entry left OPENING/CLOSING */
static struct cc_export *table;                              /* under table_lock */
static struct cc_pool *pool;   /* opened by exports_init before any connection, then only read */
static unsigned pool_io_flags; /* CC_IO_MASK bits (chain.h), likewise */

/* The last chain/ or pool/ error (escaped into buf: it may quote paths and parent links with any
 * bytes, see common/error.h), or a generic one if chain/ left none. */
static const char *
last_error(int r, char buf[CC_ESCAPED_SIZE(CC_ERROR_MAX)])
{
  const char *msg = cc_error_get();

  return msg[0] ? cc_escape(msg, buf, CC_ESCAPED_SIZE(CC_ERROR_MAX)) : strerror(-r);
}

int
exports_init(const char *pool_dir, unsigned io_flags)
{
  char buf[CC_ESCAPED_SIZE(CC_ERROR_MAX)];
  int r;

  cc_error_clear();
  r = cc_pool_open(pool_dir, &pool);
  if (r < 0) {
    /* pool/'s message names the directory already. */
    if (cc_error_get()[0])
      nbdkit_error("%s", last_error(r, buf));
    else
      nbdkit_error("pool=%s: %s", pool_dir, strerror(-r));
    return -1;
  }
  pool_io_flags = io_flags;
  return 0;
}

struct cc_pool *
exports_pool(void)
{
  return pool;
}

static struct cc_export *
lookup_locked(const char *name, const char *path)
{
  struct cc_export *e;

  for (e = table; e; e = e->next)
    if (strcmp(e->name, name) == 0 && strcmp(e->path, path) == 0)
      return e;
  return NULL;
}

static void
unlink_locked(struct cc_export *e)
{
  struct cc_export **pp;

  for (pp = &table; *pp; pp = &(*pp)->next)
    if (*pp == e) {
      *pp = e->next;
      return;
    }
}

/* Close the chain; logs (cannot report) a failed final flush. */
static void
close_chain(struct cc_export *e)
{
  char buf[CC_ESCAPED_SIZE(CC_ERROR_MAX)];
  int r;

  cc_error_clear();
  r = cc_chain_close(e->chain);
  e->chain = NULL;
  if (r < 0)
    nbdkit_error("close: %s: %s", e->name, last_error(r, buf));
}

/* Log why `name` cannot be opened: pool/ names the export in every message (pool.h). */
static struct cc_export *
open_error(int r)
{
  char buf[CC_ESCAPED_SIZE(CC_ERROR_MAX)];

  nbdkit_error("%s", last_error(r, buf));
  return NULL;
}

struct cc_export *
exports_acquire(const char *name, int readonly)
{
  char path[PATH_MAX];
  enum cc_export_kind kind;
  struct cc_export_desc desc;
  struct cc_chain *chain = NULL;
  struct cc_export *e;
  char *top = NULL;
  int r;

  pthread_mutex_lock(&table_lock);
again:
  cc_error_clear();
  r = cc_pool_resolve_export(pool, name, path, sizeof path, &kind);
  if (r < 0) {
    pthread_mutex_unlock(&table_lock);
    return open_error(r);
  }
  e = lookup_locked(name, path);
  if (e && e->state != EXPORT_OPEN) {
    /* Another connection is opening or closing this very chain: wait for the outcome rather
     * than collide with its layer lock, then look again (the name may have moved on). */
    pthread_cond_wait(&table_cond, &table_lock);
    goto again;
  }
  if (e) {
    e->refs++;
    if (cowchain_debug_exports)
      nbdkit_debug("exports: %s: shared (%u connections)", name, e->refs);
    pthread_mutex_unlock(&table_lock);
    return e;
  }

  /* Miss: publish a placeholder so that connections to the same export wait for us, and open
   * the chain without the lock so that other exports are not held up. */
  e = calloc(1, sizeof *e);
  if (e == NULL || (e->path = strdup(path)) == NULL) {
    pthread_mutex_unlock(&table_lock);
    nbdkit_error("open: %s: %m", name);
    free(e);
    return NULL;
  }
  e->state = EXPORT_OPENING;
  e->refs = 1;
  e->kind = kind;
  snprintf(e->name, sizeof e->name, "%s", name);
  e->next = table;
  table = e;
  pthread_mutex_unlock(&table_lock);

  cc_error_clear();
  r = cc_pool_open_export(pool, name, readonly, pool_io_flags, &chain, &desc);
  if (r == 0 && strcmp(desc.top, path) != 0 && (top = strdup(desc.top)) == NULL) {
    cc_chain_close(chain);
    r = cc_error_set(ENOMEM, "open: %s: out of memory", name);
  }

  pthread_mutex_lock(&table_lock);
  pthread_cond_broadcast(&table_cond);
  if (r < 0) {
    unlink_locked(e);
    pthread_mutex_unlock(&table_lock);
    free(e->path);
    free(e);
    return open_error(r); /* EBUSY: the message names the lock's holder */
  }
  if (top) {
    /* The CLI switched the top after our lookup: key the entry by what was opened. */
    free(e->path);
    e->path = top;
  }
  e->kind = desc.kind;
  e->chain = chain;
  e->state = EXPORT_OPEN;
  pthread_mutex_unlock(&table_lock);
  if (cowchain_debug_exports)
    nbdkit_debug("exports: %s: opened %s (%s, %zu layers)", name, desc.top,
                 cc_chain_writable(chain) ? "read-write" : "read-only", cc_chain_depth(chain));
  return e;
}

void
exports_release(struct cc_export *e)
{
  pthread_mutex_lock(&table_lock);
  e->refs--;
  if (cowchain_debug_exports)
    nbdkit_debug("exports: %s: released (%u connections left)", e->name, e->refs);
  if (e->refs > 0) {
    pthread_mutex_unlock(&table_lock);
    return;
  }
  if (e->detached) {
    /* Evicted: its chain is closed and it is out of the table already. */
    pthread_mutex_unlock(&table_lock);
    free(e->path);
    free(e);
    return;
  }
  /* Last one: close without the lock (the final flush may take a while), but stay in the table
   * as CLOSING so that a reconnect waits for the layer lock to be released instead of being
   * refused by it. */
  e->state = EXPORT_CLOSING;
  pthread_mutex_unlock(&table_lock);

  close_chain(e);

  pthread_mutex_lock(&table_lock);
  unlink_locked(e);
  pthread_cond_broadcast(&table_cond);
  pthread_mutex_unlock(&table_lock);
  free(e->path);
  free(e);
}

int
exports_list(struct cc_export_info **out, size_t *n)
{
  char buf[CC_ESCAPED_SIZE(CC_ERROR_MAX)];
  int r;

  /* No table_lock: listing reads the records afresh and shares no state (pool.h), so it need
   * not wait behind a slow chain open or close. */
  cc_error_clear();
  r = cc_pool_list_exports(pool, out, n);
  if (r < 0)
    nbdkit_error("list_exports: %s: %s", cc_pool_dir(pool), last_error(r, buf));
  return r < 0 ? -1 : 0;
}

void
exports_shutdown(void)
{
  struct cc_export *e;

  pthread_mutex_lock(&table_lock);
  while ((e = table) != NULL) {
    /* Only reached if nbdkit unloads with connections open (it should not). */
    nbdkit_debug("exports: %s: still open at unload (%u connections)", e->name, e->refs);
    table = e->next;
    close_chain(e);
    free(e->path);
    free(e);
  }
  pthread_mutex_unlock(&table_lock);
  if (pool)
    cc_pool_close(pool);
  pool = NULL;
}

int
exports_holds(const char *path)
{
  struct cc_export *e;
  int found = 0;

  pthread_mutex_lock(&table_lock);
  for (e = table; e && !found; e = e->next)
    found = strcmp(e->path, path) == 0;
  pthread_mutex_unlock(&table_lock);
  return found;
}

/* Hooks for the control channel (control.c).  They only look entries up and take references;
 * the open/resolve logic above is untouched. */

struct cc_export *
exports_hold_writable(const char *name)
{
  struct cc_export *e;

  pthread_mutex_lock(&table_lock);
  for (e = table; e; e = e->next)
    if (e->state == EXPORT_OPEN && strcmp(e->name, name) == 0 && cc_chain_writable(e->chain))
      break;
  if (e)
    e->refs++;
  pthread_mutex_unlock(&table_lock);
  return e;
}

/* Any open export named `name` (read-only ones too), for a live merge refreshing its chain. */
struct cc_export *
exports_hold_open(const char *name)
{
  struct cc_export *e;

  pthread_mutex_lock(&table_lock);
  for (e = table; e; e = e->next)
    if (e->state == EXPORT_OPEN && strcmp(e->name, name) == 0 && !e->evicted)
      break;
  if (e)
    e->refs++;
  pthread_mutex_unlock(&table_lock);
  return e;
}

int
exports_retarget(struct cc_export *e, const char *path)
{
  char *p = strdup(path), *old;

  if (p == NULL)
    return -ENOMEM;
  pthread_mutex_lock(&table_lock);
  old = e->path;
  e->path = p;
  pthread_mutex_unlock(&table_lock);
  free(old);
  return 0;
}

int
exports_evict(struct cc_export *e, unsigned timeout_ms)
{
  struct timespec ts = {0, 1000000};
  int conns;

  atomic_store(&e->evicted, 1);
  /* A reader either saw `evicted` (and left without the chain) or is counted in `readers`. */
  for (unsigned ms = 0; atomic_load(&e->readers) > 0; ms++) {
    if (ms >= timeout_ms)
      return -ETIMEDOUT;
    nanosleep(&ts, NULL);
  }
  /* Like the last close: CLOSING makes new connections wait for the layer locks to go. */
  pthread_mutex_lock(&table_lock);
  e->state = EXPORT_CLOSING;
  pthread_mutex_unlock(&table_lock);
  close_chain(e);
  pthread_mutex_lock(&table_lock);
  unlink_locked(e);
  e->detached = 1;
  conns = (int)e->refs - 1; /* the caller's reference is not a connection */
  pthread_cond_broadcast(&table_cond);
  pthread_mutex_unlock(&table_lock);
  nbdkit_debug("exports: %s: evicted (%d connections' requests now fail)", e->name, conns);
  return conns;
}

int
exports_snapshot(struct exports_item **out, size_t *n)
{
  struct cc_export *e;
  struct exports_item *v = NULL;
  size_t k = 0, cap = 0;

  pthread_mutex_lock(&table_lock);
  for (e = table; e; e = e->next) {
    if (e->state != EXPORT_OPEN)
      continue;
    if (k == cap) {
      size_t ncap = cap ? 2 * cap : 16;
      struct exports_item *nv = realloc(v, ncap * sizeof *nv);

      if (nv == NULL) {
        pthread_mutex_unlock(&table_lock);
        free(v);
        return -ENOMEM;
      }
      v = nv;
      cap = ncap;
    }
    snprintf(v[k].name, sizeof v[k].name, "%s", e->name);
    snprintf(v[k].path, sizeof v[k].path, "%s", e->path);
    v[k].refs = e->refs;
    v[k].writable = cc_chain_writable(e->chain);
    v[k].e = e;
    k++;
  }
  pthread_mutex_unlock(&table_lock);
  *out = v;
  *n = k;
  return 0;
}
