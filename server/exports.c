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
 * Race tolerated: between cc_pool_resolve_export and cc_pool_open_export the CLI may switch the
 * clone's top.  We resolve again after opening and retry if the answer changed, so an entry's
 * path always names the layer its chain was opened on.
 *
 * Read-only: nbdkit's -r is process-wide, so every connection of one server asks with the same
 * `readonly`; an entry is shared regardless and can_write asks the handle and the chain.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "exports.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* -D cowchain.exports=1: log every acquire/release with its reference count. */
NBDKIT_DLL_PUBLIC int cowchain_debug_exports = 0;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t table_cond = PTHREAD_COND_INITIALIZER; /* an entry left OPENING/CLOSING */
static struct cc_export *table;                              /* under table_lock */
static struct cc_pool *pool;   /* set before any connection, then only read */
static unsigned pool_io_flags; /* CC_IO_SYNC or 0 */

/* How many times .open re-resolves when the CLI keeps moving a clone's top under us. */
#define RESOLVE_TRIES 3

void
exports_init(struct cc_pool *p, unsigned io_flags)
{
  pool = p;
  pool_io_flags = io_flags;
}

/* The last chain/pool error, or a generic one if chain/ left none. */
static const char *
last_error(int r)
{
  const char *msg = cc_error_get();

  return msg[0] ? msg : strerror(-r);
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
  int r;

  cc_error_clear();
  r = cc_chain_close(e->chain);
  e->chain = NULL;
  if (r < 0)
    nbdkit_error("close: %s: %s", e->name, last_error(r));
}

/* Log why `name` cannot be opened, naming it once: pool messages usually name it already. */
static struct cc_export *
open_error(const char *name, int r)
{
  const char *msg = last_error(r);

  if (strstr(msg, name))
    nbdkit_error("%s", msg);
  else
    nbdkit_error("open: %s: %s", name, msg);
  return NULL;
}

/* Open the chain for `name`, whose top the caller resolved to `path` (table_lock NOT held).
 * Returns 0, -EAGAIN if the name changed meaning meanwhile (the caller looks again), or -1
 * after nbdkit_error. */
static int
open_chain(const char *name, const char *path, enum cc_export_kind kind, int readonly,
           struct cc_chain **chain)
{
  char again[PATH_MAX];
  enum cc_export_kind kind2;
  int r;

  cc_error_clear();
  r = cc_pool_open_export(pool, name, readonly, pool_io_flags, chain);
  if (r < 0) {
    open_error(name, r); /* EBUSY: the message names the lock's holder */
    return -1;
  }
  cc_error_clear();
  r = cc_pool_resolve_export(pool, name, again, sizeof again, &kind2);
  if (r == 0 && strcmp(path, again) == 0 && kind == kind2)
    return 0;
  /* The name changed meaning while we opened it: drop what we got and look again. */
  cc_chain_close(*chain);
  *chain = NULL;
  return -EAGAIN;
}

struct cc_export *
exports_acquire(const char *name, int readonly)
{
  char path[PATH_MAX];
  enum cc_export_kind kind;
  struct cc_chain *chain = NULL;
  struct cc_export *e;
  int r, tries = 0;

  pthread_mutex_lock(&table_lock);
again:
  cc_error_clear();
  r = cc_pool_resolve_export(pool, name, path, sizeof path, &kind);
  if (r < 0) {
    pthread_mutex_unlock(&table_lock);
    return open_error(name, r);
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

  r = open_chain(name, path, kind, readonly, &chain);

  pthread_mutex_lock(&table_lock);
  pthread_cond_broadcast(&table_cond);
  if (r < 0) {
    unlink_locked(e);
    free(e->path);
    free(e);
    if (r == -EAGAIN && ++tries < RESOLVE_TRIES)
      goto again;
    pthread_mutex_unlock(&table_lock);
    if (r == -EAGAIN)
      nbdkit_error("open: %s: export keeps changing while being opened; try again", name);
    return NULL;
  }
  e->chain = chain;
  e->state = EXPORT_OPEN;
  pthread_mutex_unlock(&table_lock);
  if (cowchain_debug_exports)
    nbdkit_debug("exports: %s: opened %s (%s, %zu layers)", name, path,
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
  int r;

  /* No table_lock: listing reads the records afresh and shares no state (pool.h), so it need
   * not wait behind a slow chain open or close. */
  cc_error_clear();
  r = cc_pool_list_exports(pool, out, n);
  if (r < 0)
    nbdkit_error("list_exports: %s: %s", cc_pool_dir(pool), last_error(r));
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
