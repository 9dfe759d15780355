/* cowchain pool: a directory of templates, clones and their snapshots.
 *
 * Layout (docs/POOL.md is the full specification):
 *
 *   POOL/cowchain-pool       marker: the line "cowchain-pool 1"
 *   POOL/images/NAME.raw     raw template images, mode 0444, never opened for writing
 *   POOL/layers/UUID.cow     every layer file, named by its uuid (parent links stay valid
 *                            because all layers share one directory)
 *   POOL/templates/NAME      template record (text, see POOL.md)
 *   POOL/clones/NAME         clone record: top layer, snapshots (name, layer, time, description)
 *   POOL/tmp/                files of operations in progress
 *
 * Records are replaced atomically (write in tmp/, fsync, rename, fsync the directory), so every
 * pool operation is a series of steps that each leave the pool as before or as after.
 * Template and clone names share one namespace.
 *
 * Errors: as in chain.h (negative errno + cc_error_set message).
 */
#ifndef COWCHAIN_POOL_H
#define COWCHAIN_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "chain.h"

struct cc_pool;

/* Names of templates, clones and snapshots: [A-Za-z0-9][A-Za-z0-9._-]{0,63}. */
#define CC_NAME_MAX 64
int cc_name_valid(const char *name);

/* Split "NAME" or "NAME@SNAP" and check both parts; snap[0] is "" for a plain name.
 * Returns 0 or -EINVAL with a message naming the fault. */
int cc_export_name_parse(const char *export_name, char name[CC_NAME_MAX + 1],
                         char snap[CC_NAME_MAX + 1]);

int cc_pool_init(const char *dir);
int cc_pool_open(const char *dir, struct cc_pool **out);
void cc_pool_close(struct cc_pool *p);
const char *cc_pool_dir(const struct cc_pool *p);

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

/* Resolve an export name to the path of its top file and whether it is writable. */
int cc_pool_resolve_export(struct cc_pool *p, const char *export_name, char *path, size_t pathlen,
                           enum cc_export_kind *kind);

/* Open an export: a clone read-write (read-only if `readonly`), a snapshot or a template
 * read-only.  io_flags: CC_IO_SYNC or 0. */
int cc_pool_open_export(struct cc_pool *p, const char *export_name, int readonly, unsigned io_flags,
                        struct cc_chain **out);

#endif
