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
 */
#ifndef COWCHAIN_CHAIN_INTERNAL_H
#define COWCHAIN_CHAIN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "chain/chain.h"
#include "chain/testing.h"
#include "overlay/overlay.h"

/* One frozen file of a chain. */
struct cc_frozen {
  struct ovl_layer *ovl; /* NULL for a raw image */
  int fd;                /* ovl_fd(ovl), or the raw image's own fd (owned) */
  char *path;            /* as we reached it: joined from the parent links */
  uint64_t size;         /* virtual size (raw: file size) */
  dev_t dev;
  ino_t ino;
};

enum cc_run_kind {
  CC_RUN_HOLE = 0, /* reads zero: raw hole, no parent, or beyond a parent's size */
  CC_RUN_ZERO = 1, /* reads zero: a zero sub-cluster in some layer hides what is below */
  CC_RUN_DATA = 2, /* bytes at `phys` in layers[layer] */
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
};

struct cc_chain {
  char *path;
  unsigned flags;
  struct ovl_layer *top; /* the writable top; NULL for a read-only chain */
  int top_fd;
  struct cc_index *idx; /* frozen part; NULL when the writable top has no parent */
  uint64_t size;
};

/* One stretch of the virtual disk as the frozen part resolves it. */
struct cc_seg {
  uint64_t offset, length;
  enum cc_run_kind kind;
  uint64_t phys;                /* DATA */
  const struct cc_frozen *file; /* DATA */
};
typedef int (*cc_seg_fn)(void *opaque, const struct cc_seg *seg);

/* index.c */
int cc_index_build(struct cc_index *idx);
void cc_index_free(struct cc_index *idx);
/* Call fn for the segments of [offset, offset + length); beyond idx->size (or idx == NULL) is a
 * HOLE.  Stops at, and returns, fn's first non-zero value. */
int cc_index_walk(const struct cc_index *idx, uint64_t offset, uint64_t length, cc_seg_fn fn,
                  void *opaque);

/* Walk the writable top's map over [offset, offset + length), calling fn for each extent in
 * order; a map that skips or overlaps is -EIO naming `call` and the layer.  Stops at the first
 * non-zero return of fn and returns it. */
typedef int (*cc_top_fn)(void *opaque, const struct ovl_extent *e);
int cc_top_walk(struct cc_chain *c, const char *call, uint64_t offset, uint64_t length, cc_top_fn fn,
                void *opaque);

/* registry.c */
struct cc_index *cc_registry_get(dev_t dev, ino_t ino, const uint8_t uuid[OVL_UUID_LEN],
                                 uint64_t size);
struct cc_index *cc_registry_insert(struct cc_index *idx);
void cc_index_put(struct cc_index *idx);

/* A slice of a read: `len` bytes at `phys` in `fd` go to `buf`. */
struct cc_piece {
  int fd;
  const char *path; /* for error messages */
  uint64_t phys;
  char *buf;
  size_t len;
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
                  uint64_t offset);
int cc_plan_add(struct cc_plan *p, int fd, const char *path, uint64_t phys, char *buf, size_t len);
int cc_sync_exec(struct cc_piece *v, size_t n);
int cc_below_read(void *opaque, void *buf, uint64_t length, uint64_t offset);

/* uring.c: 0 or -errno; CC_URING_UNAVAILABLE when no ring could be had (use cc_sync_exec). */
#define CC_URING_UNAVAILABLE 1
int cc_uring_exec(struct cc_piece *v, size_t n);
int cc_uring_disabled(void);

/* log.c */
void cc_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
