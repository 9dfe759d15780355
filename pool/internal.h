/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: helpers shared by the pool/ files.  Private to the pool code.
 *
 * Every function returns 0 or a negative errno after cc_error_set(), like the public API.
 */
#ifndef COWCHAIN_POOL_INTERNAL_H
#define COWCHAIN_POOL_INTERNAL_H

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/error.h"
#include "common/time.h"
#include "overlay/overlay.h"
#include "pool/pool.h"

#define POOL_MARKER "cowchain-pool"
#define POOL_MARKER_LINE "cowchain-pool 1\n"
#define POOL_MARKER_MAX (sizeof POOL_MARKER_LINE + CC_GROUP_MAX + 8)

struct cc_pool {
  char *dir;
  int lock_fd; /* the marker, flock'ed LOCK_EX while an operation runs; -1 otherwise */
  /* Access (POOL.md section 1.1): owner-only unless the marker records a group. */
  char group[CC_GROUP_MAX + 1]; /* "" for an owner-only pool */
  gid_t gid;                    /* the group's id; (gid_t)-1 for an owner-only pool */
  unsigned file_mode;           /* 0600, or 0640 with a group */
  unsigned dir_mode;            /* 0700, or 02750 with a group (setgid: new files inherit it) */
};

/* pool.c: paths, locking, durable steps */

/* snprintf a path under the pool; -ENAMETOOLONG if it doesn't fit. */
int pool_path(const struct cc_pool *p, char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int pool_layer_path(const struct cc_pool *p, const char *uuid, char *buf, size_t len);
int pool_image_path(const struct cc_pool *p, const char *name, char *buf, size_t len);

/* Exclusive lock for the duration of one operation; `what` names it in the error. */
int pool_lock(struct cc_pool *p, const char *what);
void pool_unlock(struct cc_pool *p);

/* One durable step of an operation is done.  With COWCHAIN_CRASH_AT=N in the environment, the
 * N-th step of the process _exits(99) right after it, to test that every step leaves the pool
 * as before or as after (tests/integration/test-cli-crash.sh). */
long pool_step(void); /* returns the step's number */
/* COWCHAIN_KILL_SERVER_AT=N: at step N, pool_step sends SIGKILL to `pid` (the server a live
 * operation is talking to, 0 for none) and waits for its control connection `fd` to end, so
 * tests can kill the server at every step of a live operation (live.c). */
void pool_step_victim(pid_t pid, int fd);

/* Give a file the pool creates its mode and group, whatever the umask: the pool's file mode,
 * without the write bits if `readonly` (template images).  `path` names it in the error. */
int pool_secure_fd(const struct cc_pool *p, int fd, const char *path, int readonly);
/* The same for a file created by path (ovl_create, qemu-img): its group; ovl_create and
 * pool_secure_fd set the mode. */
int pool_secure_group(const struct cc_pool *p, const char *path);
/* Permission bits (and whether the group must match) that check accepts for a file of mode
 * `st_mode`: directories the pool's dir_mode, sockets rw for the group too, files file_mode. */
unsigned pool_allowed_mode(const struct cc_pool *p, unsigned st_mode);

/* A unique path in tmp/ for a new file: tmp/PREFIX-PID-COUNTER.SUFFIX */
int pool_tmp_path(const struct cc_pool *p, const char *prefix, const char *suffix, char *buf,
                  size_t len);

/* durable.c: the durable steps of one operation (POOL.md 4), as one batch.  Describe every
 * change first (no I/O: new layers, whose uuids are chosen at once so records can name them;
 * layers already made in tmp/; records; layers to freeze), then:
 *
 *   pool_batch_prepare  everything nobody reads yet, at once (one thread per item): new layers
 *                       created and synced, then renamed into layers/ and layers/ synced once;
 *                       each record complete and synced in its own tmp/ file; each layer to
 *                       freeze flushed and frozen (ovl_freeze: data and map durable, clean, its
 *                       lock shared from then on, so ovl_close does no I/O).  A crash during or
 *                       after it leaves "before" plus leftovers.
 *   pool_batch_commit   the records renamed into place in the order added, one sync per
 *                       directory, each directory's renames durable before the next
 *                       directory's first rename: the commit point(s).  Records added
 *                       one after the other into one directory may become durable in any
 *                       subset after a crash: batch only records that are each a commit of
 *                       their own.  On failure b->committed counts the records (in the order
 *                       added) known to be in place and durable.
 *   pool_batch_free     always: removes what is still in tmp/ (never an installed layer, never
 *                       an adopted file: that stays the caller's until installed).
 *
 * The prepare step is one pool_step (crash hook), and each directory of the commit one more.
 * Every record and every new layer is written through a batch; pool_write_record,
 * pool_write_clone, pool_write_template, pool_new_layer and pool_install_layer are batches of
 * one, for the operations whose steps depend on each other. */
struct pool_item;
struct pool_batch {
  struct cc_pool *p;
  struct pool_item *items;
  size_t n, cap;
  int prepared;
  size_t committed;
};
void pool_batch_init(struct pool_batch *b, struct cc_pool *p);
/* A new empty layer of `size` on `parent` (NULL: none; copied), created in the prepare. */
int pool_batch_layer(struct pool_batch *b, uint64_t size, const struct ovl_parent *parent,
                     char uuid_out[CC_UUID_STR]);
/* A complete, durable layer file in tmp/ (full clone, resize copy), installed in the prepare. */
int pool_batch_adopt_layer(struct pool_batch *b, const char *tmp_path, const char *uuid);
/* Record SUB/NAME with contents `data` (copied): written in the prepare, in place at commit. */
int pool_batch_record(struct pool_batch *b, const char *sub, const char *name, const char *data);
/* A layer open for writing that the records will call frozen (a snapshot's, a template's):
 * ovl_freeze'd in the prepare, so it is durable before any record names it so. */
int pool_batch_freeze(struct pool_batch *b, struct ovl_layer *l);
int pool_batch_prepare(struct pool_batch *b);
int pool_batch_commit(struct pool_batch *b);
void pool_batch_free(struct pool_batch *b);

int pool_fsync_dir(const struct cc_pool *p, const char *sub);
/* A batch of one record: SUB/NAME written atomically (tmp/ file, fsync, rename, fsync SUB). */
int pool_write_record(struct cc_pool *p, const char *sub, const char *name, const char *data);
/* Unlink SUB/NAME and fsync SUB. */
int pool_remove_record(struct cc_pool *p, const char *sub, const char *name);

/* Does SUB/NAME exist as a clone or template? -EEXIST with "OP: NAME: already exists". */
int pool_name_free(struct cc_pool *p, const char *op, const char *name);

/* A batch of one new layer: an empty layer on `parent` created in tmp/, made durable, renamed
 * into layers/, layers/ fsync'ed.  uuid_out gets the new layer's uuid as a string. */
int pool_new_layer(struct cc_pool *p, uint64_t size, const struct ovl_parent *parent,
                   char uuid_out[CC_UUID_STR]);
/* A batch of one adopted layer: a finished file from tmp/ into layers/UUID.cow (rename + fsync
 * layers/); tmp_path stays the caller's to remove on failure. */
int pool_install_layer(struct cc_pool *p, const char *tmp_path, const char *uuid);

/* clone.c: the first steps of every operation that gives clone `c` a new top (snapshot revert,
 * template promote).  Take the current top's exclusive lock (a server holding the clone makes
 * us refuse here, before anything changed, naming "OP: CLONE" and the holder), then add to batch
 * `b` a new empty layer on layer `base` (the top itself, or a snapshot's layer) and the freeze
 * of the old top (its data durable before a record calls it a snapshot or template; its lock
 * shared from then on, which still keeps every writer out).  The caller adds its records,
 * prepares and commits the batch, then closes *held: until then no server can open the old top
 * for writing, so cc_pool_open_export's re-read of the record sees the switch (export.c).  On
 * failure nothing is held (the caller frees the batch). */
int pool_freeze_top(struct cc_pool *p, const char *op, const struct cc_clone *c, const char *base,
                    struct pool_batch *b, struct ovl_layer **held, char newtop[CC_UUID_STR]);

/* remote.c: images/NAME.nbd; the parent link of a layer on a remote template; unlink the
 * descriptor of a deleted remote template (best effort: check reports a leftover). */
int pool_remote_path(const struct cc_pool *p, const char *name, char *buf, size_t len);
/* Ask remote template `name`'s remote again (size, fingerprint, and the whole content when a
 * hash was recorded: *whole = 1): 0 if it still serves what was added, -EUCLEAN if not. */
int pool_remote_verify(struct cc_pool *p, const char *name, int *whole);
int pool_parent_of_remote(struct cc_pool *p, const struct cc_template *t, struct ovl_parent *par,
                          char *pathbuf, size_t pathlen);
void pool_remote_forget(struct cc_pool *p, const char *name);

/* The parent link for a new layer on top of template / layer `uuid`. */
int pool_parent_of_template(struct cc_pool *p, const struct cc_template *t, struct ovl_parent *par,
                            char *pathbuf, size_t pathlen);
int pool_parent_of_layer(struct cc_pool *p, const char *uuid, struct ovl_parent *par, char *pathbuf,
                         size_t pathlen);

/* Open layer `uuid` with ovl_open flags; the error names the pool object `what`. */
int pool_open_layer(struct cc_pool *p, const char *uuid, unsigned flags, const char *what,
                    struct ovl_layer **out);

int64_t pool_now(void);

/* resize.c: the size of a new clone of a `src_size` source: *size 0 becomes src_size, else it
 * is rounded up to 512 and must be >= src_size (-EINVAL naming clone `name`). */
int pool_clone_size(const char *name, uint64_t src_size, uint64_t *size);
/* "64 MiB" when exact, else "N bytes". */
void pool_size_str(uint64_t n, char *buf, size_t len);

/* records.c: a uuid as records and layer file names spell it (36 lowercase hex digits and
 * dashes). */
int pool_uuid_valid(const char *s);
/* A layer's parent link as the pool writes them (POOL.md 2), the one parser of them: kind
 * OVL_PARENT_LAYER "UUID.cow" (a sibling in layers/) fills uuid, OVL_PARENT_RAW
 * "../images/NAME.raw" fills image; the other is "".  OVL_PARENT_NONE is 0 with both "".
 * -EINVAL, no message, both "", for any other link: it is not ours to follow (it may leave the
 * pool), and a caller must never build a path from it. */
int pool_parse_parent_link(int parent_kind, const char *link, char uuid[CC_UUID_STR],
                           char image[CC_NAME_MAX + 1]);

/* records.c; `op` starts every error message ("clone delete: vm1: no such clone"). */
int pool_get_clone(struct cc_pool *p, const char *op, const char *name, struct cc_clone *c);
int pool_get_template(struct cc_pool *p, const char *op, const char *name, struct cc_template *t);
int pool_format_clone(const struct cc_clone *c, char **out);
/* The record of c / t added to batch b (durable.c); the write_ forms are batches of one. */
int pool_batch_clone(struct pool_batch *b, const struct cc_clone *c);
int pool_batch_template(struct pool_batch *b, const struct cc_template *t);
int pool_write_clone(struct cc_pool *p, const struct cc_clone *c);
int pool_write_template(struct cc_pool *p, const struct cc_template *t);
/* Index of snapshot `snap` in c, or -1. */
int pool_find_snap(const struct cc_clone *c, const char *snap);
/* Resolve "CLONE@SNAP" or "NAME" to a layer uuid / raw image: fills exactly one of layer/tmpl. */
struct pool_target {
  enum cc_export_kind kind;
  char name[CC_NAME_MAX + 1];
  char snap[CC_NAME_MAX + 1];
  char layer[CC_UUID_STR]; /* "" for a raw template */
  struct cc_template tmpl; /* kind TEMPLATE */
  uint64_t size;
};
int pool_resolve(struct cc_pool *p, const char *what, const char *export_name,
                 struct pool_target *t);

/* graph.c: every layer file and who references it */
struct pool_node {
  char uuid[CC_UUID_STR];
  enum ovl_parent_kind parent_kind;
  char parent[CC_UUID_STR];           /* LAYER: parent uuid */
  char parent_image[CC_NAME_MAX + 1]; /* RAW: template image name */
  uint64_t virtual_size;
  uint64_t parent_size; /* as recorded in the header when the link was made */
  uint64_t disk_bytes;
  int dirty;
  int bad;                               /* could not be opened; `error` says why */
  char error[OVL_MAX_PARENT_PATH + 256]; /* room for a whole parent path */
  int referenced;                        /* named by a record */
  int live;                              /* referenced, or a parent of a live layer */
  int mark;                              /* scratch for callers */
};
struct pool_graph {
  struct pool_node *nodes;
  size_t n;
  struct cc_template *tmpls;
  size_t ntmpls;
  struct cc_clone *clones;
  size_t nclones;
};
int pool_graph_load(struct cc_pool *p, struct pool_graph *g);
void pool_graph_free(struct pool_graph *g);
struct pool_node *pool_graph_find(struct pool_graph *g, const char *uuid);
/* -EUCLEAN, naming it, if a live layer could not be read: its parent link is unknown, so any
 * decision "nothing depends on X" could be wrong.  Operations that delete layers call this. */
int pool_graph_require_sound(const struct pool_graph *g, const char *what);
/* Recompute `referenced` and `live` from the records in g (after the caller edited them). */
void pool_graph_mark_live(struct pool_graph *g);
/* Unlink every layer that is not live and images no raw template names; `locked_ok` skips
 * layers someone holds open (reported as leaks by check).  Returns the number removed. */
int pool_collect_garbage(struct cc_pool *p, struct pool_graph *g);

/* live.c: operations on served clones through their servers' control sockets (POOL.md 6). */
/* Snapshot SNAP of every clone in the comma-separated list, served or not, as one instant. */
int pool_snapshot_create_many(struct cc_pool *p, const char *clones, const char *snap,
                              const char *description);
/* Apply the pending intents (tmp/intent-*.snap) to record c, just read: an intent is the commit
 * point of a multi-clone snapshot, so every reader sees its records as after (POOL.md 6.3). */
int pool_intent_apply(struct cc_pool *p, const char *op, struct cc_clone *c);
/* Under the pool lock: write the records of every pending intent, then remove it. */
int pool_intent_roll_forward(struct cc_pool *p, unsigned *done);
/* Before an operation that changes clone `clone` under its clients (revert, delete): if a server
 * has connections to it, refuse (-EBUSY, "WHAT: CLONE: N connections open on nbdkit pid P" and
 * `why`), or with `force` have the server evict them (control verb `evict`: their requests fail
 * with ESHUTDOWN, the chain closes).  *served says a server had the clone: its chain may still
 * be closing, so the caller retries its layer lock for a moment (POOL_BUSY_RETRIES). */
#define POOL_BUSY_RETRIES 50 /* x 100 ms: a server closing a chain after its last connection */
int pool_live_exclusive(struct cc_pool *p, const char *what, const char *clone, int force,
                        const char *why, int *served);

/* The pool's servers for a live merge (live.c; POOL.md 6.2): open connects to every control
 * socket and asks each `held`; top_holder finds the server (an index) holding top file
 * `top_path` for writing and its export name, or -1; call sends one request (ok words in
 * `ok`, valid until the next call). */
struct pool_live;
int pool_live_open(struct cc_pool *p, struct pool_live **out);
void pool_live_close(struct pool_live *l);
size_t pool_live_servers(const struct pool_live *l);
int pool_live_top_holder(struct pool_live *l, const char *top_path, char *name, size_t len);
long pool_live_pid(const struct pool_live *l, int srv);
int pool_live_call(struct pool_live *l, int srv, const char *what, const char *req, char **ok,
                   int *nok);

/* copy.c */
/* hash.c: the content hash of a template image (POOL.md 3.1.1): XXH64 of 64 KiB chunks,
 * chained; holes and zero chunks hash alike.  Feed the bytes in file order. */
#define POOL_HASH_CHUNK 65536u
#define POOL_HASH_STR 32 /* "xxh64-64k:" + 16 hex digits + NUL, with room */
struct pool_hash {
  uint64_t state, total, zero_chunk;
  size_t fill;
  uint8_t *buf; /* the partial chunk */
};
uint64_t pool_xxh64(const void *data, size_t len, uint64_t seed);
int pool_hash_init(struct pool_hash *h);
void pool_hash_feed(struct pool_hash *h, const void *data, size_t len);
void pool_hash_zero(struct pool_hash *h, uint64_t len);
void pool_hash_final(struct pool_hash *h, char out[POOL_HASH_STR]);
void pool_hash_free(struct pool_hash *h);
/* The hash of a whole file, reading only its data extents; progress every 64 MiB. */
int pool_hash_fd(int fd, const char *name, char out[POOL_HASH_STR], cc_progress_fn progress,
                 void *opaque);

/* verify.c: the protected-template keys of a template record (hash, mtime, inode): key parses
 * `key val` into t (1 taken, 0 not one of them, -1 malformed); extra appends their lines to a
 * record being written in buf. */
struct stat;
int pool_template_key(struct cc_template *t, const char *key, const char *val);
void pool_template_extra(const struct cc_template *t, char *buf, size_t len);
void pool_template_set_identity(struct cc_template *t, const struct stat *st);
/* 1 with a message (what changed, what to run) if the image's fstat no longer matches the
 * identity recorded at import; 0 if it matches or nothing was recorded. */
int pool_template_ident_fault(const struct cc_template *t, const struct stat *st, char *msg,
                              size_t len);
/* After an open: refuse (-EUCLEAN, "open: EXPORT: template NAME: ...") a chain whose raw
 * image is not the file recorded at import. */
int pool_check_chain_base(struct cc_pool *p, struct cc_chain *c, const char *export_name);

/* copy.c: pool_copy_raw_sparse that also feeds every byte of the image to `h` (may be NULL). */
int pool_copy_raw_sparse_hash(const char *src, int dst_fd, uint64_t *size_out, struct pool_hash *h,
                              cc_progress_fn progress, void *opaque);
int pool_copy_raw_sparse(const char *src, int dst_fd, uint64_t *size_out, cc_progress_fn progress,
                         void *opaque);
/* Copy the chain `c` into a layer / file: its data runs file to file (copy_file_range; into a
 * layer through ovl_copy_in_fills, in source order, with bridges), zero and hole runs left
 * unallocated / as holes (POOL.md 5.4). */
int pool_copy_chain_to_layer(struct cc_chain *c, struct ovl_layer *dst, cc_progress_fn progress,
                             void *opaque);
int pool_copy_chain_to_fd(struct cc_chain *c, int fd, const char *file, cc_progress_fn progress,
                          void *opaque);
/* Run a command (argv[0] looked up in PATH) and wait; its stderr's last line goes into the
 * error message. */
int pool_run(const char *what, char *const argv[]);
/* The same, keeping at most `max` bytes of its stdout in *out (malloc'd, NUL-terminated; free
 * it); more is -EFBIG.  Run under timeout(1) (argv "timeout", SECONDS, CMD...), running out of
 * time is -ETIMEDOUT naming CMD.  With exit_status, any exit code of CMD is a success stored
 * there (except timeout's 124, 125 and 127). */
int pool_run_output(const char *what, char *const argv[], char **out, size_t max, int *exit_status);

/* inspect.c: what qemu-img says about an image to import (POOL.md section 5.1) */
struct pool_image_facts {
  char format[16];       /* as qemu-img detected it */
  uint64_t virtual_size; /* bytes */
  uint64_t need_bytes;   /* disk space the raw copy needs (qemu-img measure), or virtual size */
};
/* Inspect `abspath` (an absolute path) with `qemu-img info`: refuse, with one line naming the
 * image and the fault, a detected format other than `format`, a virtual size beyond the format
 * limit and (unless allow_refs) any reference to another file: backing file, data file, VMDK
 * extents or descriptor, json:/protocol names.  `shown` is the name the user gave. */
int pool_inspect_image(const char *shown, const char *abspath, const char *format, int allow_refs,
                       struct pool_image_facts *out);
/* The --image-opts string that opens `abspath` as `format` with every reference disabled. */
int pool_image_opts(const char *abspath, const char *format, char **out);

/* One finding of check (and check --deep): formatted, counted in sum by severity (0 ok, 1 leak,
 * 2 error, 3 warning), and given to report (if any). */
void pool_vreport(cc_report_fn report, void *opaque, struct cc_check_summary *sum, int severity,
                  const char *fmt, va_list ap);

#endif
