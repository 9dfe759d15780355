/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: private declarations shared by the chain/ modules.
 *
 * Design notes
 * ------------
 * A chain is a writable top layer (or none, for a read-only chain) on a *frozen part*: every
 * other layer down to the bottom (a raw image, or a layer without parent).  Nothing writes a
 * frozen layer while we hold it (each is locked shared, and a writer needs the exclusive lock),
 * so the frozen part is resolved once into a `struct cc_index`: a sorted array of runs that
 * says, for every byte of [0, size), which file and offset hold it, or that it reads as zero.
 * A read costs one binary search and a walk over the runs it covers, whatever the depth.
 *
 * Sharing: an index is keyed by the identity of its topmost frozen file (st_dev, st_ino, uuid,
 * size) in a process-wide registry (registry.c), refcounted, and shared by every chain whose
 * frozen part has that top.  The index owns the frozen layers (their ovl_layer or raw fd), so
 * their locks and fds live exactly as long as some chain needs them.
 *
 * Locking: the registry mutex protects the registry list and every index's `refs`.  Everything
 * else in an index is immutable after it is built, so readers take no lock.  The writable top
 * does its own locking (overlay.h).
 *
 * Views (view.c): a chain's top, index and top path form one immutable `struct cc_view`,
 * published as one pointer.  Every request enters the view (cc_view_enter: two atomic
 * increments on a per-chain counter, no lock), uses only that view, and leaves.  A live top
 * switch (cc_chain_push_top) or a rebuild after a live merge publishes a
 * new view and frees what only the old one used after an SRCU-like two-epoch grace period.
 * `switch_lock` serializes switches; readers never take it.
 */
#ifndef COWCHAIN_CHAIN_INTERNAL_H
#define COWCHAIN_CHAIN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/types.h>
#include <time.h>

#include "chain/chain.h"
#include "chain/testing.h"
#include "overlay/overlay.h"

struct cc_remote;

/* One frozen file of a chain. */
struct cc_frozen {
  struct ovl_layer *ovl;    /* NULL for a raw image or a remote bottom */
  struct cc_remote *remote; /* a remote bottom (remote.c): fd is -1, reads go to the remote */
  int fd;                   /* ovl_fd(ovl), or the raw image's own fd (owned) */
  char *path;               /* as we reached it: joined from the parent links */
  uint64_t size;            /* virtual size (raw: file size) */
  dev_t dev;
  ino_t ino;
  /* What the file was when opened, to tell whether it changed while an idle index held it
   * unlocked (registry.c): st_size, st_mtim, st_ctim. */
  uint64_t st_size;
  struct timespec mtime, ctime;
  /* cache=none: an O_DIRECT descriptor of the same file, opened on first use (-1: not yet,
   * -2: O_DIRECT refused here).  A cell of its own, so the copies of this struct in stacked
   * indexes share it; NULL: never read directly (a live-pushed layer). */
  _Atomic int *dfd;
};

enum cc_run_kind {
  CC_RUN_HOLE = 0,  /* reads zero: raw hole, no parent, or beyond a parent's size */
  CC_RUN_ZERO = 1,  /* reads zero: a zero sub-cluster in some layer hides what is below */
  CC_RUN_DATA = 2,  /* bytes at `phys` in layers[layer] */
  CC_RUN_UNRES = 3, /* only while building: this file has nothing here, what is below shows */
};

/* A run covers [start, next run's start), the last one [start, index size).  24 bytes. */
struct cc_run {
  uint64_t start;
  uint64_t phys;  /* DATA: file offset of byte `start` */
  uint32_t layer; /* DATA: index into cc_index.layers */
  uint32_t kind;  /* enum cc_run_kind */
};

struct cc_index {
  /* Protected by the registry mutex. */
  struct cc_index *next;
  unsigned long refs;
  /* refs == 0 and still listed: an idle index kept for the next open (registry.c), its files
   * open but unlocked.  `stamp` orders the idle ones (least recently used first); `cost` is
   * what it counts against the cache budget. */
  uint64_t stamp;
  size_t cost;

  /* Immutable once built. */
  dev_t dev; /* identity of the topmost frozen file: the registry key */
  ino_t ino;
  uint8_t uuid[OVL_UUID_LEN]; /* all zero for a raw image */
  uint64_t size;              /* virtual size of the topmost frozen file */
  size_t nlayers;
  struct cc_frozen *layers; /* [0] is the bottom, [nlayers - 1] the topmost frozen file */
  size_t nruns;
  struct cc_run *runs;
  char *root; /* every file was checked to resolve inside this directory; NULL if unchecked */
  /* An index made by a live push (view.c) extends the index below it: it holds a reference on
   * `base` and owns only its top `nowned` layers; layers[0 .. nlayers - nowned) are base's
   * (same fds, same paths) and stay open as long as base does.  Built from files: base NULL,
   * nowned == nlayers. */
  struct cc_index *base;
  size_t nowned;
  /* Forgotten (cc_chain_forget_file): out of the registry, never kept idle. */
  int stale;
};

/* What a reader of a chain uses, published as one pointer (view.c).  Immutable: a change of
 * top or frozen part publishes a new view; the old one is retired after a grace period. */
struct cc_view {
  struct ovl_layer *top; /* the writable top; NULL for a read-only chain (owned by the chain) */
  int top_fd;
  struct cc_index *idx; /* frozen part (one reference); NULL when the top has no parent */
  char *path;           /* the top file, for messages */
};

struct cc_chain {
  unsigned flags;
  uint64_t size; /* constant */
  /* The current view; readers load it inside cc_view_enter/leave (view.c). */
  _Atomic(struct cc_view *) view;
  /* Grace-period bookkeeping (view.c): readers count themselves in readers[epoch & 1]. */
  _Atomic unsigned long epoch;
  struct {
    _Atomic unsigned long n;
    char pad[64 - sizeof(unsigned long)];
  } readers[2] __attribute__((aligned(64)));
  /* Serializes view changes (push, replace); never taken by readers. */
  pthread_mutex_t switch_lock;
  /* The old top of the last cc_chain_switch_top while it is sealed but not yet durable
   * (view.c), or NULL.  settle_lock serializes finishing it (the control thread, a client's
   * flush); it is taken after switch_lock when both are. */
  _Atomic(struct ovl_layer *) unsettled;
  bool unsettled_owned; /* no index owns it (another chain's index was shared): close it */
  pthread_mutex_t settle_lock;
};

/* view.c: the read side of a chain's view.  enter returns the current view and a ticket that
 * leave needs; between the two the view and everything it references stay valid. */
struct cc_view *cc_view_enter(struct cc_chain *c, unsigned *ticket);
void cc_view_leave(struct cc_chain *c, unsigned ticket);
/* Free a view's own memory and drop its index reference (not its top). */
void cc_view_free(struct cc_view *v);

/* One stretch of the virtual disk as the frozen part resolves it. */
struct cc_seg {
  uint64_t offset, length;
  enum cc_run_kind kind;
  uint64_t phys;                /* DATA */
  const struct cc_frozen *file; /* DATA */
};
typedef int (*cc_seg_fn)(void *opaque, const struct cc_seg *seg);

/* index.c */
/* Build while walking (open.c): the topmost frozen file first (pos 0), then each parent as
 * it is opened, so its map can be dropped at once (the peak is one layer's map).  add records
 * file f's own extents; finish resolves them all in one sweep (the topmost extent covering a
 * byte wins) and hands the runs to idx, whose layers are bottom first (pos p becomes
 * nlayers - 1 - p). */
struct cc_runvec {
  struct cc_run *v;
  size_t n, cap;
};
struct cc_bext {
  uint64_t start, end, phys;
  uint32_t pos, kind; /* DATA, ZERO, or HOLE (a raw hole, or beyond this layer's size) */
};
struct cc_builder {
  struct cc_runvec layer; /* one file's own runs (scratch) */
  struct cc_bext *e;      /* every file's extents that decide something */
  size_t n, cap;
  uint64_t size; /* of the topmost frozen file: the index's size */
  int started;
};
void cc_builder_init(struct cc_builder *b);
int cc_builder_add(struct cc_builder *b, const struct cc_frozen *f, uint32_t pos);
int cc_builder_finish(struct cc_builder *b, struct cc_index *idx);
void cc_builder_free(struct cc_builder *b);
void cc_index_free(struct cc_index *idx);
/* A new index for `below` (NULL: nothing below) with `top` stacked on it, built from top's map
 * in one pass over below's runs.  top is copied into the new index, not yet owned by it
 * (nowned 0): the caller sets nowned = 1 once it hands the layer over. */
int cc_index_stack(struct cc_index *below, const struct cc_frozen *top, struct cc_index **out);
/* Call fn for the segments of [offset, offset + length); beyond idx->size (or idx == NULL) is a
 * HOLE.  Stops at, and returns, fn's first non-zero value. */
int cc_index_walk(const struct cc_index *idx, uint64_t offset, uint64_t length, cc_seg_fn fn,
                  void *opaque);
/* The read fast path: 1 and *seg if one run covers [offset, offset + length) (beyond the size,
 * or idx NULL: a HOLE), else 0. */
int cc_index_one(const struct cc_index *idx, uint64_t offset, uint64_t length, struct cc_seg *seg);

/* Walk the writable top's map over [offset, offset + length), calling fn for each extent in
 * order; a map that skips or overlaps is -EIO naming `call` and the layer.  Stops at the first
 * non-zero return of fn and returns it. */
typedef int (*cc_top_fn)(void *opaque, const struct ovl_extent *e);
/* 0, or EINVAL "CALL: PATH: range O+L beyond the end of the disk (SIZE)": the one range check
 * of every request on a chain (read, write, extents, runs). */
int cc_range_check(const struct cc_chain *c, const struct cc_view *v, const char *call,
                   uint64_t offset, uint64_t length);

int cc_top_walk(const struct cc_view *v, const char *call, uint64_t offset, uint64_t length,
                cc_top_fn fn, void *opaque);

/* open.c */
char *cc_join_parent(const char *child, const char *rel);

/* registry.c */
struct cc_index *cc_registry_get(dev_t dev, ino_t ino, const uint8_t uuid[OVL_UUID_LEN],
                                 uint64_t size);
struct cc_index *cc_registry_insert(struct cc_index *idx);
/* Publish idx unless an equal index exists: NULL if idx is now registered (refs 1), else a new
 * reference to the existing one (idx untouched, still the caller's). */
struct cc_index *cc_registry_publish(struct cc_index *idx);
void cc_index_put(struct cc_index *idx);
struct cc_index *cc_index_get(struct cc_index *idx); /* one more reference; returns idx */

/* A slice of a read: `len` bytes at `phys` in `fd` go to `buf`.  The last `tail` bytes are
 * optional: an O_DIRECT read widened to the block size may end at end of file before them. */
struct cc_piece {
  int fd;
  const char *path; /* for error messages */
  uint64_t phys;
  char *buf;
  size_t len;
  size_t tail;
  int direct; /* fd is an O_DIRECT descriptor */
};

/* The file pieces of one request, in virtual order; adjacent ones are merged on insert. */
struct cc_plan {
  struct cc_piece *v;
  size_t n, cap;
  struct cc_piece inline_v[16];
};

/* read.c */
void cc_plan_init(struct cc_plan *p);
void cc_plan_free(struct cc_plan *p);
int cc_plan_index(struct cc_plan *p, const struct cc_index *idx, char *buf, uint64_t length,
                  uint64_t offset, int direct);
int cc_plan_add(struct cc_plan *p, int fd, const char *path, uint64_t phys, char *buf, size_t len,
                int direct);
/* The O_DIRECT descriptor of f (opened on first use), or -1 if it has none. */
int cc_frozen_dfd(const struct cc_frozen *f);
/* Close and free f->dfd (the owner of the cell only). */
void cc_frozen_dfd_free(struct cc_frozen *f);
int cc_sync_exec(struct cc_piece *v, size_t n);
int cc_below_read(void *opaque, void *buf, uint64_t length, uint64_t offset);

/* uring.c: 0 or -errno; CC_URING_UNAVAILABLE when no ring could be had (use cc_sync_exec). */
#define CC_URING_UNAVAILABLE 1
int cc_uring_exec(struct cc_piece *v, size_t n);
int cc_uring_disabled(void);

/* remote.c.  open: from the descriptor open at fd (no connection yet).  check: connect from
 * this thread if it has no connection; -EINVAL when the remote serves something else (size or
 * fingerprint), 0 when it matches or cannot be reached now.  pread: 0 or -EIO.  walk: split the
 * remote DATA segment `seg` by NBD block status; DATA pieces point at a frozen file with fd -1
 * and no remote, so callers do not split them again. */
int cc_remote_open(const char *path, int fd, struct cc_remote **out);
int cc_remote_check(struct cc_remote *r);
uint64_t cc_remote_size(const struct cc_remote *r);
int cc_remote_pread(struct cc_remote *r, void *buf, uint64_t len, uint64_t off);
int cc_remote_walk(struct cc_remote *r, const struct cc_seg *seg, cc_seg_fn fn, void *opaque);
void cc_remote_close(struct cc_remote *r);

/* remote-cache.c: the local read cache of a remote template (template-cache=DIR).  open: *out
 * NULL (and 0) when the cache cannot be used, which is logged, not an error.  read: through
 * the cache; missing blocks come from fetch(opaque, buf, len, off). */
struct cc_rcache;
typedef int (*cc_fetch_fn)(void *opaque, void *buf, uint64_t len, uint64_t off);
int cc_rcache_open(const char *dir, const char *fingerprint, uint64_t size, uint64_t max_bytes,
                   struct cc_rcache **out);
int cc_rcache_read(struct cc_rcache *c, void *buf, uint64_t len, uint64_t off, cc_fetch_fn fetch,
                   void *opaque);
void cc_rcache_close(struct cc_rcache *c);
/* Extents of `seg` from what the cache knows (DATA or ZERO per block), when the remote cannot
 * answer; *covered 0 (nothing emitted) unless every block of seg is known.  Returns fn's. */
int cc_rcache_walk(struct cc_rcache *c, const struct cc_seg *seg, const struct cc_frozen *data,
                   cc_seg_fn fn, void *opaque, int *covered);

/* log.c */
void cc_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
