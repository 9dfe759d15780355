/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: a stack of layers read and written as one virtual disk.
 *
 * Errors: like overlay/, functions return 0 (or a count) on success and a negative errno on
 * failure after recording a "call: object: reason" message with cc_error_set(); functions
 * returning pointers return NULL and set errno.
 *
 * Threads: one struct cc_chain is shared by every connection to an export (multi-conn); all
 * data functions may be called concurrently from many threads.
 */
#ifndef COWCHAIN_CHAIN_H
#define COWCHAIN_CHAIN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct cc_chain;

/* cc_chain_open flags */
#define CC_RDWR 1u    /* open the top layer for writing (exclusive lock) */
#define CC_IO_SYNC 2u /* read with pread instead of io_uring */
/* CC_IO_AUTO: a read served by one piece goes straight to pread, a read of several pieces is
 * one batch on the thread's io_uring (pread where io_uring is unavailable).  Neither flag:
 * every read through io_uring (io=uring). */
#define CC_IO_AUTO 8u
/* CC_DIRECT (cache=none): data of the frozen layers and raw images is read with O_DIRECT,
 * bypassing the page cache; unaligned reads go through an aligned bounce buffer.  The writable
 * top stays buffered (chain/read.c says why). */
#define CC_DIRECT 16u
/* The flags that choose how reads reach the files: what a pool passes through to chains. */
#define CC_IO_MASK (CC_IO_SYNC | CC_IO_AUTO | CC_DIRECT)
/* CC_RAW: top_path is a raw image (a template export): read-only.  Never probed: a raw
 * image's first bytes are guest data and may spell anything. */
#define CC_RAW 4u
/* CC_REMOTE: top_path is a remote descriptor (FORMAT.md section 11): the chain is the remote NBD
 * export it names, read-only (a remote template's own export). */
#define CC_REMOTE 32u

/* write flags */
#define CC_FUA 1u
#define CC_MAY_TRIM 2u

/* extent types: the same bits as NBD / nbdkit (NBDKIT_EXTENT_HOLE = 1, _ZERO = 2) */
#define CC_EXTENT_HOLE 1u
#define CC_EXTENT_ZERO 2u

#define CC_MAX_DEPTH 4096

/* Open the chain whose top is the layer file `top_path` (or a raw image, read-only, with
 * CC_RAW), following and validating parent links down to the bottom.  Frozen layers (all but a
 * writable top) are locked shared and resolved through an index shared with every other open chain
 * on the same frozen layers. */
int cc_chain_open(const char *top_path, unsigned flags, struct cc_chain **out);

/* The same, and every file of the chain (the top too) must resolve (realpath: through "..",
 * symlinks) to a path inside the directory `root`; one that does not is refused with -EPERM:
 * "open: CHILD: parent REL: resolves to PATH, outside ROOT".  A pool opens its chains this way,
 * so a layer cannot make a server read a host file. */
int cc_chain_open_within(const char *top_path, unsigned flags, const char *root,
                         struct cc_chain **out);

/* Flush if writable, release the layers and the shared index reference.  NULL is allowed. */
int cc_chain_close(struct cc_chain *c);

uint64_t cc_chain_size(const struct cc_chain *c);
int cc_chain_writable(const struct cc_chain *c);
uint32_t cc_chain_block_size(const struct cc_chain *c); /* preferred I/O granularity */
size_t cc_chain_depth(const struct cc_chain *c);        /* layers, counting a raw bottom */
struct stat;
/* The chain's bottom file when it is a raw image (base.c): its path as reached and the fstat
 * of the open fd.  1 if there is one, 0 if the chain does not end in a raw image (a layer or
 * a remote template's export), or -errno. */
int cc_chain_raw_base(struct cc_chain *c, char *path, size_t pathlen, struct stat *st);

int cc_chain_pread(struct cc_chain *c, void *buf, uint64_t length, uint64_t offset);
int cc_chain_pwrite(struct cc_chain *c, const void *buf, uint64_t length, uint64_t offset,
                    unsigned flags);
/* write-zeroes and trim: afterwards the range reads as zero */
int cc_chain_zero(struct cc_chain *c, uint64_t length, uint64_t offset, unsigned flags);
int cc_chain_flush(struct cc_chain *c);

/* Live snapshot: make the empty, durable layer `new_top_path`, whose parent is the current top
 * T, the chain's writable top, and T part of the frozen part (flushed, clean, locked shared,
 * resolved through a new shared index that other chains on T find in the registry).  The
 * caller guarantees that no write, zero or flush is in flight on this chain; reads may run
 * throughout and see the chain before or after, never a mix (view.c).  On failure the chain
 * is unchanged.  Returns 0 or -errno. */
int cc_chain_push_top(struct cc_chain *c, const char *new_top_path);
/* cc_chain_push_top in two halves, for a caller whose writers wait meanwhile (a live
 * snapshot: the write gate is closed only for the switch).  cc_chain_switch_top does
 * everything but make T durable: T is sealed (ovl_seal: no more writes, exclusive lock kept,
 * so no other process reads its map before it is complete) and the switch cannot fail after
 * that.  cc_chain_settle finishes the freeze: T's data and map are made durable, its dirty bit
 * cleared, its lock made shared, its in-memory map dropped.  Every cc_chain_flush settles
 * first (a flush covers the writes that went to T), and so do cc_chain_close and the next
 * switch.  A failed settle leaves T unsettled and returns the error again on every call: the
 * client's flushes fail rather than promise what is not durable.  cc_chain_settle returns 0 at
 * once when nothing is unsettled. */
int cc_chain_switch_top(struct cc_chain *c, const char *new_top_path);
int cc_chain_settle(struct cc_chain *c);
/* The checks cc_chain_push_top makes before it changes anything (the new top can be opened for
 * writing and names the current top as parent), without changing anything: a caller switching
 * several chains at once checks them all first. */
int cc_chain_push_check(struct cc_chain *c, const char *new_top_path);

/* Live merge into a served chain (docs/POOL.md 6.2).  The caller guarantees that no write, zero
 * or flush is in flight for fill_top and relink_top (the server's write gate is closed); reads
 * may run throughout.
 *
 * cc_chain_fill_top: copy the layer `src` (an open read-only layer of the same sub-cluster
 * size) into the writable top over [offset, offset + length), only where the top is
 * unallocated: a sub-cluster the guest wrote or zeroed is never touched, so a guest write
 * always wins over the older data.  *copied (may be NULL) gets the bytes written.
 * cc_chain_relink_top: flush the top (data before map), then point its parent link at `link`
 * (relative to the top, as the pool writes links; kind OVL_PARENT_*), checked by opening it.
 * The view is unchanged: the old frozen part reads the same bytes under the top.
 * cc_chain_refresh_frozen: rebuild the frozen part from the files as the top's (or, for a
 * read-only chain, the topmost frozen file's) link names them now, and switch readers to it
 * (a grace period, no pause).
 * cc_chain_forget_file: no chain opened from now on may reuse an index that holds the file
 * (dev, ino): every such index leaves the registry (idle ones are freed, used ones live on
 * with their chains, unshared).  Returns how many.  cc_chain_uses_file: 1 if the chain's
 * frozen part holds that file. */
struct ovl_layer;
int cc_chain_fill_top(struct cc_chain *c, struct ovl_layer *src, uint64_t offset, uint64_t length,
                      uint64_t *copied);
int cc_chain_relink_top(struct cc_chain *c, int kind, const char *link);
int cc_chain_refresh_frozen(struct cc_chain *c);
size_t cc_chain_forget_file(dev_t dev, ino_t ino);
int cc_chain_uses_file(struct cc_chain *c, dev_t dev, ino_t ino);

/* Report [offset, offset + length) as ascending contiguous extents through `fn`, merged over the
 * whole chain: data (0), zero (CC_EXTENT_ZERO), hole (CC_EXTENT_HOLE|CC_EXTENT_ZERO).  May stop
 * early after at least one extent if `fn` returns non-zero (that value is returned). */
typedef int (*cc_extent_fn)(void *opaque, uint64_t offset, uint64_t length, uint32_t type);
int cc_chain_extents(struct cc_chain *c, uint64_t length, uint64_t offset, cc_extent_fn fn,
                     void *opaque);

/* Like cc_chain_extents, and a data run also says where its bytes are: `length` bytes at `phys`
 * in the open file `fd` (a layer of the chain or the raw image; valid while the chain is open).
 * Runs are ascending and contiguous; adjacent data runs merge only within one file at
 * contiguous offsets.  For copies that move data file to file (copy_file_range): the bytes of
 * a writable top may change under the caller, so copy from a read-only chain. */
struct cc_chain_run {
  uint64_t offset, length;
  uint32_t type;    /* 0 data, CC_EXTENT_ZERO, CC_EXTENT_HOLE | CC_EXTENT_ZERO */
  int fd;           /* data: the file holding the bytes; -1 otherwise */
  uint64_t phys;    /* data: offset in fd of byte `offset` */
  const char *path; /* data: that file, for messages */
  /* data: the cluster size of the layer file holding it (its physical clusters are that big
   * and aligned with the virtual ones: phys - offset % cluster_size starts one), 0 for a raw
   * image (phys == offset) */
  uint32_t cluster_size;
};
typedef int (*cc_run_fn)(void *opaque, const struct cc_chain_run *run);
int cc_chain_runs(struct cc_chain *c, uint64_t length, uint64_t offset, cc_run_fn fn, void *opaque);

/* Remote templates (remote.c): an NBD export named by a remote descriptor file. */
#define CC_REMOTE_NAME_MAX 64
#define CC_REMOTE_URI_MAX 1024
struct cc_remote_desc {
  char name[CC_REMOTE_NAME_MAX + 1]; /* the template's name, for messages */
  char uri[CC_REMOTE_URI_MAX + 1];   /* nbd://, nbds://, nbd+unix://, nbds+unix:// */
  uint64_t size;
  char fingerprint[96]; /* "s16-sha256:HEX": sampled blocks, checked on every connection */
  char content[96];     /* "sha256:HEX" of the whole content, or "" (not checked on open) */
  int writable;         /* the export was writable when added (--allow-writable) */
};
#define CC_PROBE_VERIFY 1u         /* also hash the whole content */
#define CC_PROBE_ALLOW_WRITABLE 2u /* accept a writable export */
/* Connect to `uri` once and describe it for a descriptor named `name`: size, fingerprint,
 * (CC_PROBE_VERIFY) content hash.  A writable export is refused (-EPERM) without
 * CC_PROBE_ALLOW_WRITABLE.  Messages start with "template add: NAME: URI:". */
int cc_remote_probe(const char *name, const char *uri, unsigned flags, struct cc_remote_desc *out);
/* The descriptor's text into buf; its length, or -errno. */
int cc_remote_desc_format(const struct cc_remote_desc *d, char *buf, size_t len);
/* Parse a descriptor's text; `path` names it in messages. */
int cc_remote_desc_parse(const char *path, const char *text, struct cc_remote_desc *d);

/* How long one remote request may take before it fails with EIO and its connection is dropped
 * (default, and ms == 0: 30 s). */
void cc_remote_set_timeout(unsigned ms);
/* Cache remote templates' blocks in the directory `dir` (absolute), at most max_bytes of data
 * per template (remote-cache.c).  Applies to remote templates opened afterwards; NULL: none. */
void cc_remote_set_cache(const char *dir, uint64_t max_bytes);

/* Keep the resolution index of a frozen part after its last chain closes, up to `bytes` of
 * such idle indexes in this process (least recently used dropped first), so reopening a deep
 * chain is a lookup instead of reading every layer's map.  An idle index keeps its files open
 * but not locked, and is revalidated on reuse (chain/registry.c).  0 (the default) keeps none
 * and frees the idle ones now. */
void cc_set_index_cache(uint64_t bytes);

/* Where chain/ sends its rare operational messages (e.g. "io_uring unavailable, reading with
 * pread"), one line each, without a newline.  Default (and fn == NULL): stderr.  The plugin
 * routes them to nbdkit_debug. */
void cc_set_log(void (*fn)(const char *msg));

#endif
