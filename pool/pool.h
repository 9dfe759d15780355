/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: a directory of templates, clones and their snapshots.
 *
 * Layout (docs/POOL.md is the full specification):
 *
 *   POOL/cowchain-pool       marker: the line "cowchain-pool 1" [+ "group NAME"]
 *   POOL/images/NAME.raw     raw template images, read-only (0400/0440), never opened for writing
 *   POOL/images/NAME.nbd     remote template descriptors (URI, size, fingerprint), read-only
 *   POOL/layers/UUID.cow     every layer file, named by its uuid (parent links stay valid
 *                            because all layers share one directory)
 *   POOL/templates/NAME      template record (text, see POOL.md)
 *   POOL/clones/NAME         clone record: top layer, snapshots (name, layer, time, description)
 *   POOL/tmp/                files of operations in progress
 *
 * Modes: owner-only (dirs 0700, files 0600) or, with a group, 02750/0640, set explicitly
 * whatever the umask (POOL.md section 1.1).
 *
 * Records are replaced atomically (write in tmp/, fsync, rename, fsync the directory), so every
 * pool operation is a series of steps that each leave the pool as before or as after.
 * Template and clone names share one namespace.
 *
 * Operations that change the pool hold an exclusive flock on POOL/cowchain-pool for their whole
 * run, so two `cowchain` commands never interleave their steps.  Readers (the plugin listing and
 * opening exports) take no pool lock: every record they read is either the old or the new file.
 *
 * Layering: pool/ sits above chain/ (a stack of layers as one disk) and overlay/ (one layer
 * file) and calls only them and common/; server/ and cli/ call pool/ (and chain/ for I/O).
 *
 * Errors: as in chain/chain.h (negative errno + cc_error_set message).
 */
#ifndef COWCHAIN_POOL_H
#define COWCHAIN_POOL_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "chain/chain.h"

struct cc_pool;

/* Names of templates, clones and snapshots: [A-Za-z0-9][A-Za-z0-9._-]{0,63}. */
#define CC_NAME_MAX 64
int cc_name_valid(const char *name);

/* Split "NAME" or "NAME@SNAP" and check both parts; snap[0] is "" for a plain name.
 * Returns 0 or -EINVAL with a message naming the fault. */
int cc_export_name_parse(const char *export_name, char name[CC_NAME_MAX + 1],
                         char snap[CC_NAME_MAX + 1]);

/* Create a pool.  group NULL: owner-only (directories 0700, files 0600); otherwise the name of
 * a group that may read the pool (directories 02750 with that group, files 0640), recorded in
 * the marker so every file created later follows it. */
#define CC_GROUP_MAX 32
int cc_pool_init(const char *dir, const char *group);
int cc_pool_open(const char *dir, struct cc_pool **out);
void cc_pool_close(struct cc_pool *p);
const char *cc_pool_dir(const struct cc_pool *p);
/* The group recorded by `pool init --group`, or "" for an owner-only pool. */
const char *cc_pool_group(const struct cc_pool *p);
/* Give the pool's socket POOL/cowchain.sock, if there is one, the pool's mode: 0600, or 0660
 * with the pool's group.  nbdkit binds it under its own umask (0022), so the plugin calls this
 * once the socket exists (.after_fork). */
int cc_pool_secure_socket(struct cc_pool *p);

enum cc_export_kind { CC_EXPORT_CLONE, CC_EXPORT_SNAPSHOT, CC_EXPORT_TEMPLATE };

struct cc_export_info {
  char name[2 * CC_NAME_MAX + 2]; /* NAME or NAME@SNAP */
  enum cc_export_kind kind;
  uint64_t size;
  char description[256];
};

/* Every export of the pool, sorted by name, read fresh from the directory each call.
 * *out is malloc'd; free() it. */
int cc_pool_list_exports(struct cc_pool *p, struct cc_export_info **out, size_t *n);

/* Resolve an export name to the path of its top file and whether it is writable.  Only a hint
 * for a later open: the CLI may switch a clone's top at any moment (cc_pool_open_export says
 * what it really opened). */
int cc_pool_resolve_export(struct cc_pool *p, const char *export_name, char *path, size_t pathlen,
                           enum cc_export_kind *kind);

/* What cc_pool_open_export opened. */
struct cc_export_desc {
  char name[2 * CC_NAME_MAX + 2]; /* the export name asked for: NAME or NAME@SNAP */
  enum cc_export_kind kind;
  char top[PATH_MAX]; /* the file the chain was opened on (its top layer, or the raw image) */
  int readonly;       /* opened read-only: a snapshot, a template, or `readonly` was asked */
};

/* Open an export: a clone read-write (read-only if `readonly`), a snapshot or a template
 * read-only.  io_flags: CC_IO_MASK bits (chain.h).  desc (may be NULL) gets what was opened: a
 * clone's top is followed if the CLI switches it while we open (export.c says how).  Every error
 * message names the export ("open: vm1: ..."). */
int cc_pool_open_export(struct cc_pool *p, const char *export_name, int readonly, unsigned io_flags,
                        struct cc_chain **out, struct cc_export_desc *desc);

/* ------------------------------------------------------------------------------------------
 * Records (docs/POOL.md section 3).  Layers are named by their uuid, as 36 characters.
 */
#define CC_UUID_STR 37
#define CC_DESC_MAX 1024

/* REMOTE: an NBD export of another server, named by the remote descriptor images/NAME.nbd
 * (FORMAT.md section 11, POOL.md section 3.1). */
enum cc_template_kind { CC_TEMPLATE_RAW, CC_TEMPLATE_LAYER, CC_TEMPLATE_REMOTE };

struct cc_template {
  char name[CC_NAME_MAX + 1];
  enum cc_template_kind kind;
  char layer[CC_UUID_STR]; /* CC_TEMPLATE_LAYER: the layer's uuid; "" for raw */
  int64_t created;         /* seconds since the epoch */
  uint64_t size;           /* virtual size in bytes */
  /* A raw template imported with a content hash (POOL.md 3.1.1): the hash and the image's
   * identity at import (mtime in nanoseconds since the epoch, inode).  hash "" if none. */
  char hash[32];
  uint64_t mtime_ns, inode;
};

struct cc_snapshot {
  char name[CC_NAME_MAX + 1];
  char layer[CC_UUID_STR];
  int64_t created;
  char description[CC_DESC_MAX + 1];
};

struct cc_clone {
  char name[CC_NAME_MAX + 1];
  char origin[2 * CC_NAME_MAX + 2]; /* what it was created from ("" if unknown); informational */
  int full;                         /* created with --full */
  char top[CC_UUID_STR];
  int64_t created;
  uint64_t size;
  size_t nsnaps;
  struct cc_snapshot *snaps; /* malloc'd, in creation order */
};

/* -ENOENT (with a message) if there is no such record. */
int cc_pool_get_template(struct cc_pool *p, const char *name, struct cc_template *out);
int cc_pool_get_clone(struct cc_pool *p, const char *name, struct cc_clone *out);
void cc_clone_free(struct cc_clone *c); /* frees snaps; the struct itself is the caller's */

/* Every record, sorted by name.  Free with free() / cc_clone_list_free(). */
int cc_pool_list_templates(struct cc_pool *p, struct cc_template **out, size_t *n);
int cc_pool_list_clones(struct cc_pool *p, struct cc_clone **out, size_t *n);
void cc_clone_list_free(struct cc_clone *list, size_t n);

/* ------------------------------------------------------------------------------------------
 * Operations.  Each one is atomic (POOL.md section 5 gives the steps); each refuses, with the
 * reason, to touch a layer that a running server holds open.
 *
 * Long operations report progress through `progress` (may be NULL), at most every few MiB.
 */
typedef void (*cc_progress_fn)(void *opaque, uint64_t done, uint64_t total);

/* template add (pool/remote.c): the read-only NBD export `uri` becomes template `name`.  flags:
 * CC_PROBE_VERIFY (hash the whole content too), CC_PROBE_ALLOW_WRITABLE. */
int cc_template_add(struct cc_pool *p, const char *name, const char *uri, unsigned flags);
/* The descriptor of remote template `name`. */
int cc_template_remote_desc(struct cc_pool *p, const char *name, struct cc_remote_desc *out);

/* format: NULL or "raw" copies sparsely; qcow2, vmdk, vdi, vhdx convert with qemu-img after an
 * inspection that refuses images naming other files (backing files, data files, VMDK extents,
 * json:/protocol names), a format other than `format`, and images bigger than the pool's free
 * space or the format limit (POOL.md section 5.1).  CC_IMPORT_ALLOW_BACKING skips the
 * reference refusal and lets qemu-img read what the image names (a chain the user trusts). */
#define CC_IMPORT_ALLOW_BACKING 1u
int cc_template_import(struct cc_pool *p, const char *name, const char *file, const char *format,
                       unsigned flags, cc_progress_fn progress, void *opaque);
/* Re-hash template `name`'s image and compare with the hash recorded at import: 0 if equal
 * (and a changed identity, e.g. after the pool was copied, is recorded anew: *updated has
 * CC_VERIFY_IDENTITY), -EUCLEAN with a message naming the template if its contents changed,
 * -ENOTSUP if no hash was recorded (a layer template, or imported before hashes).  A remote
 * template has no image here: its remote is asked again (size and sampled fingerprint, and the
 * whole content when `template add --verify` recorded a hash: CC_VERIFY_WHOLE), *updated has
 * CC_VERIFY_REMOTE.  verify.c. */
#define CC_VERIFY_IDENTITY 1
#define CC_VERIFY_REMOTE 2
#define CC_VERIFY_WHOLE 4
int cc_template_verify(struct cc_pool *p, const char *name, cc_progress_fn progress, void *opaque,
                       int *updated);
/* A blank template: a parentless empty layer of `size` bytes (rounded up to 512). */
int cc_template_create(struct cc_pool *p, const char *name, uint64_t size);
/* Freeze clone's current state as template `name`; the clone gets a new empty top. */
int cc_template_promote(struct cc_pool *p, const char *clone, const char *name);
/* Refused (-EBUSY, message listing them) while any clone, snapshot or template depends on it. */
int cc_template_delete(struct cc_pool *p, const char *name);

/* from: "TEMPLATE" or "CLONE@SNAP".  full: flatten into a standalone parentless layer. */
int cc_clone_create(struct cc_pool *p, const char *name, const char *from, int full,
                    cc_progress_fn progress, void *opaque);
/* cc_clone_create with a virtual size: 0 = the source's, otherwise >= it (rounded up to 512);
 * the part beyond the source reads as zero (resize.c). */
int cc_clone_create_size(struct cc_pool *p, const char *name, const char *from, int full,
                         uint64_t size, cc_progress_fn progress, void *opaque);
/* Grow clone `name` to `size` bytes (rounded up to 512); smaller than the clone is -EINVAL,
 * refused while a server holds it.  Its snapshots keep their size (POOL.md 5.9). */
int cc_clone_resize(struct cc_pool *p, const char *name, uint64_t size);
int cc_clone_delete(struct cc_pool *p, const char *name);

/* clone: one name or several, comma-separated ("vm1,vm2"): one snapshot of all of them at one
 * instant.  Clones a server holds are snapshotted through its control socket, without
 * stopping their clients (POOL.md 6.1); a list commits all or nothing (an intent, 6.3). */
int cc_snapshot_create(struct cc_pool *p, const char *clone, const char *snap,
                       const char *description);
/* The same, application-consistent: the guest agent on the QEMU chardev socket `agent` freezes
 * the guest's file systems first (within freeze_timeout_ms) and thaws them after, always
 * (pool/qga.h, POOL.md 6.5).  A freeze that fails or times out: no snapshot, the error says
 * why.  A thaw that fails after the snapshot was taken: the error says the snapshot exists and
 * the guest may still be frozen.  agent NULL: cc_snapshot_create. */
int cc_snapshot_create_quiesced(struct cc_pool *p, const char *clones, const char *snap,
                                const char *description, const char *agent, int freeze_timeout_ms);
int cc_snapshot_revert(struct cc_pool *p, const char *clone, const char *snap);
/* CC_REVERT_FORCE: a clone with connected clients is reverted after its server evicted them
 * (their requests fail with ESHUTDOWN from then on); without it, such a revert is refused with
 * the number of connections (POOL.md 6.4). */
#define CC_REVERT_FORCE 1u
int cc_snapshot_revert_flags(struct cc_pool *p, const char *clone, const char *snap,
                             unsigned flags);
/* Merge the snapshot's layer into its children and drop it, in the direction that writes less
 * (POOL.md 5.6). */
int cc_snapshot_delete(struct cc_pool *p, const char *clone, const char *snap,
                       cc_progress_fn progress, void *opaque);

enum cc_merge_direction {
  CC_MERGE_NAME_ONLY = 0,     /* another record names the layer: only the name went */
  CC_MERGE_INTO_CHILDREN = 1, /* the snapshot's blocks its children lacked went into them */
  CC_MERGE_INTO_SNAPSHOT = 2, /* the one child's blocks went into the snapshot's file */
};

struct cc_merge_info {
  enum cc_merge_direction direction;
  uint64_t written_bytes;       /* data bytes the merge copied */
  uint64_t into_children_bytes; /* what each direction would have copied */
  uint64_t into_snapshot_bytes; /* (0 when it was not possible) */
};

/* cc_snapshot_delete, saying which direction it took (info may be NULL). */
int cc_snapshot_delete_info(struct cc_pool *p, const char *clone, const char *snap,
                            cc_progress_fn progress, void *opaque, struct cc_merge_info *info);

/* Write export `name` (NAME, NAME@SNAP, TEMPLATE) to `file`: format NULL/"raw" (sparse) or
 * "qcow2" (through qemu-img). */
int cc_pool_export_file(struct cc_pool *p, const char *name, const char *file, const char *format,
                        cc_progress_fn progress, void *opaque);

/* ------------------------------------------------------------------------------------------
 * Inspection.
 */
struct cc_layer_info {
  char file[96];          /* relative to the pool: layers/UUID.cow or images/NAME.raw */
  char uuid[CC_UUID_STR]; /* "" for a raw image */
  int raw;                /* a raw template image */
  uint64_t virtual_size;
  uint64_t allocated_bytes; /* raw: bytes in data extents */
  uint64_t zero_bytes;
  uint64_t disk_bytes;             /* st_blocks * 512 */
  uint32_t cluster_size;           /* 0 for raw */
  int64_t created;                 /* seconds since the epoch */
  char parent[1025];               /* parent link as stored ("" if none) */
  char role[2 * CC_NAME_MAX + 32]; /* "vm1 (top)", "vm1@s1", "template base", "" */
  int dirty;
};

struct cc_snapshot_info {
  struct cc_snapshot s;
  char parent[CC_NAME_MAX + 1]; /* the snapshot this one was taken on top of, "" if none */
  int current;                  /* the clone's top sits on this snapshot */
  size_t children;              /* snapshots whose parent this is */
  uint64_t allocated_bytes;     /* data in the snapshot's own layer */
  uint64_t disk_bytes;
};
/* The snapshots of `clone` in creation order, with their tree.  *out is malloc'd; free() it. */
int cc_pool_snapshot_list(struct cc_pool *p, const char *clone, struct cc_snapshot_info **out,
                          size_t *n);

/* The chain of export `name`, top first.  *out is malloc'd; free() it. */
int cc_pool_backing_chain(struct cc_pool *p, const char *name, struct cc_layer_info **out,
                          size_t *n);

/* check: every finding goes through `report` (severity 0 note, 1 leak, 2 error, 3 warning: a
 * file or directory more open than the pool's mode).  name NULL checks every record and the
 * modes.  Returns 0 if no errors were found (leaks and warnings are not errors), -EUCLEAN (with
 * a message) if there were, or another -errno if the check itself could not run. */
struct cc_check_summary {
  unsigned layers_checked, errors, leaks, repaired, warnings;
};
typedef void (*cc_report_fn)(void *opaque, int severity, const char *msg);
int cc_pool_check(struct cc_pool *p, const char *name, int repair, cc_report_fn report,
                  void *opaque, struct cc_check_summary *sum);
/* cc_pool_check, then (deep) re-hash every raw template with a recorded hash (a changed one is
 * an error) and read every byte of every layer's data (an unreadable layer is an error), with
 * progress.  name limits both to that record's chain. */
int cc_pool_check_deep(struct cc_pool *p, const char *name, int repair, cc_report_fn report,
                       void *opaque, cc_progress_fn progress, void *popaque,
                       struct cc_check_summary *sum);

struct cc_du_entry {
  char name[CC_NAME_MAX + 1];
  int template; /* a template rather than a clone */
  uint64_t virtual_size;
  uint64_t own_bytes;    /* disk bytes of layers only this entry uses */
  uint64_t shared_bytes; /* disk bytes of layers (and images) it shares with others */
};
struct cc_du {
  struct cc_du_entry *entries; /* templates then clones, each sorted by name */
  size_t n;
  uint64_t logical;  /* sum of virtual sizes of clones and templates */
  uint64_t physical; /* disk bytes of every file in images/, layers/ and tmp/ */
};
int cc_pool_du(struct cc_pool *p, struct cc_du *out);
void cc_du_free(struct cc_du *du);

#endif
