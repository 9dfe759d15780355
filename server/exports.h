/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain plugin: the per-process table of open exports (see exports.c for the design notes). */
#ifndef COWCHAIN_SERVER_EXPORTS_H
#define COWCHAIN_SERVER_EXPORTS_H

#include "pool/pool.h"
#include "server/gate.h"

/* One open export, shared by every connection to it.  Only exports.c touches the fields
 * other than `name` and `chain`; both are constant while a reference is held. */
enum cc_export_state {
  EXPORT_OPENING, /* a connection is opening the chain; others wait */
  EXPORT_OPEN,    /* chain usable, shared by `refs` connections */
  EXPORT_CLOSING, /* the last connection is closing the chain; reopeners wait */
};

struct cc_export {
  struct cc_export *next;         /* in the table's list, under table_lock */
  enum cc_export_state state;     /* under table_lock */
  unsigned refs;                  /* connections holding it, under table_lock */
  enum cc_export_kind kind;       /* constant */
  char name[2 * CC_NAME_MAX + 2]; /* NAME or NAME@SNAP, constant */
  char *path;                     /* top file of the chain, under table_lock (changed only by
                                   * exports_retarget after a live top switch) */
  struct cc_chain *chain;         /* constant while OPEN; the chain does its own locking */
  struct gate gate;               /* write/zero/trim/flush of every connection (gate.c) */
  /* Eviction (`evict NAME` on the control socket, for `snapshot revert --force`): once set,
   * every request of the entry's connections fails with ESHUTDOWN without touching the chain;
   * reads, extents and size queries count themselves in `readers` so the evictor can wait for
   * the ones already inside the chain before it closes it. */
  _Atomic int evicted;
  _Atomic unsigned long readers;
  int detached; /* evicted: out of the table, chain closed; freed by the last release */
};

/* Open the pool once before any connection (.get_ready); exports_acquire opens chains from it
 * with io_flags (CC_IO_MASK bits of chain.h).  -1 after nbdkit_error. */
int exports_init(const char *pool_dir, unsigned io_flags);
/* The pool opened by exports_init (NULL before it): the plugin's one handle on it. */
struct cc_pool *exports_pool(void);

/* Take a reference to export `name`, opening its chain if no connection has it open.
 * Returns NULL after nbdkit_error() (unknown or malformed name, locked layer, I/O error). */
struct cc_export *exports_acquire(const char *name, int readonly);

/* Drop a reference; the last one closes the chain. */
void exports_release(struct cc_export *e);

/* Every export of the pool, sorted (cc_pool_list_exports); -1 after nbdkit_error. */
int exports_list(struct cc_export_info **out, size_t *n);

/* 1 if an open export of this process has its chain on top file `path` (any state). */
int exports_holds(const char *path);

/* For the control channel (control.c). */
/* A new reference to the open, writable export `name`, or NULL. */
struct cc_export *exports_hold_writable(const char *name);
/* A new reference to any open export `name` (read-only too), or NULL. */
struct cc_export *exports_hold_open(const char *name);
/* After a live top switch: e's chain now sits on top file `path`, so new connections to the
 * name (which resolve to the new top) share e.  0 or -ENOMEM. */
int exports_retarget(struct cc_export *e, const char *path);
/* Evict e (a reference held, its gate closed and drained by the caller): its connections' requests
 * fail from now on, the chain is closed (flushed, layer locks released) once the reads inside it
 * have left, and the name is free for new connections, which open the chain afresh.  Returns the
 * connections evicted, or -ETIMEDOUT if reads did not leave within timeout_ms (the requests
 * fail, the chain stays until the last connection closes). */
int exports_evict(struct cc_export *e, unsigned timeout_ms);
/* A copy of the open entries (malloc'd; free() it). */
struct exports_item {
  char name[2 * CC_NAME_MAX + 2];
  char path[4096];
  unsigned refs;
  int writable;
  const struct cc_export *e; /* identity only: no reference is held */
};
int exports_snapshot(struct exports_item **out, size_t *n);

extern int cowchain_debug_exports; /* -D cowchain.exports=1 */

/* Close whatever is still open, then the pool (at unload, after every connection has gone). */
void exports_shutdown(void);

#endif
