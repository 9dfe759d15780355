/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: exports as the plugin sees them (NAME, NAME@SNAP, TEMPLATE).
 *
 * Design notes
 * ------------
 * The plugin calls these for every `nbdinfo --list` and every new connection, so they read the
 * records fresh each time (a clone created a second ago is visible at once) and never take the
 * pool lock: a record is replaced by rename, so each read sees a complete old or new file.
 *
 * Access rules (the plugin's man page, DESCRIPTION): a clone is its writable top; a snapshot and a
 * template are read-only, always, whatever the client asks.  A template's raw image or layer is
 * never opened for writing by anyone; a snapshot's layer only by `snapshot delete` (merge), which
 * refuses while a server holds it.
 */
#include "pool/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static int
cmp_export(const void *a, const void *b)
{
  return strcmp(((const struct cc_export_info *)a)->name, ((const struct cc_export_info *)b)->name);
}

int
cc_pool_list_exports(struct cc_pool *p, struct cc_export_info **out, size_t *n)
{
  struct cc_template *tmpls = NULL;
  struct cc_clone *clones = NULL;
  struct cc_export_info *list;
  size_t nt = 0, nc = 0, total, i, j, k = 0;
  int r;

  if ((r = cc_pool_list_templates(p, &tmpls, &nt)) < 0)
    return r;
  if ((r = cc_pool_list_clones(p, &clones, &nc)) < 0) {
    free(tmpls);
    return r;
  }
  total = nt + nc;
  for (i = 0; i < nc; i++)
    total += clones[i].nsnaps;
  list = calloc(total ? total : 1, sizeof *list);
  if (list == NULL) {
    free(tmpls);
    cc_clone_list_free(clones, nc);
    return cc_error_set(ENOMEM, "list exports: out of memory");
  }
  for (i = 0; i < nt; i++, k++) {
    char when[32];
    cc_time_format(tmpls[i].created, CC_TIME_ISO, when, sizeof when);
    snprintf(list[k].name, sizeof list[k].name, "%s", tmpls[i].name);
    list[k].kind = CC_EXPORT_TEMPLATE;
    list[k].size = tmpls[i].size;
    snprintf(list[k].description, sizeof list[k].description,
             "template (%s), created %s, read-only",
             tmpls[i].kind == CC_TEMPLATE_RAW ? "raw image" : "layer", when);
  }
  for (i = 0; i < nc; i++) {
    const struct cc_clone *c = &clones[i];
    snprintf(list[k].name, sizeof list[k].name, "%s", c->name);
    list[k].kind = CC_EXPORT_CLONE;
    list[k].size = c->size;
    snprintf(list[k].description, sizeof list[k].description,
             "clone%s%s, %zu snapshot%s, read-write",
             c->origin[0] ? (c->full ? " (full copy) of " : " of ") : "", c->origin, c->nsnaps,
             c->nsnaps == 1 ? "" : "s");
    k++;
    for (j = 0; j < c->nsnaps; j++, k++) {
      const struct cc_snapshot *s = &c->snaps[j];
      char when[32];
      cc_time_format(s->created, CC_TIME_ISO, when, sizeof when);
      snprintf(list[k].name, sizeof list[k].name, "%s@%s", c->name, s->name);
      list[k].kind = CC_EXPORT_SNAPSHOT;
      list[k].size = c->size;
      {
        /* Long descriptions are cut to fit the NBD description (a UI hint, not data). */
        char d[64 + 2 * CC_NAME_MAX + CC_DESC_MAX];
        size_t dl = (size_t)snprintf(d, sizeof d, "snapshot of %s, created %s, read-only%s%s",
                                     c->name, when, s->description[0] ? ": " : "", s->description);
        if (dl >= sizeof list[k].description)
          dl = sizeof list[k].description - 1;
        memcpy(list[k].description, d, dl);
        list[k].description[dl] = '\0';
      }
    }
  }
  free(tmpls);
  cc_clone_list_free(clones, nc);
  qsort(list, k, sizeof *list, cmp_export);
  *out = list;
  *n = k;
  return 0;
}

/* The file an export's chain starts at. */
static int
target_path(struct cc_pool *p, const struct pool_target *t, char *path, size_t pathlen)
{
  if (t->kind == CC_EXPORT_TEMPLATE && t->tmpl.kind == CC_TEMPLATE_RAW)
    return pool_image_path(p, t->tmpl.name, path, pathlen);
  return pool_layer_path(p, t->layer, path, pathlen);
}

int
cc_pool_resolve_export(struct cc_pool *p, const char *export_name, char *path, size_t pathlen,
                       enum cc_export_kind *kind)
{
  struct pool_target t;
  int r;

  if ((r = pool_resolve(p, "export", export_name, &t)) < 0)
    return r;
  if ((r = target_path(p, &t, path, pathlen)) < 0)
    return r;
  if (kind)
    *kind = t.kind;
  return 0;
}

/* Open the chain `t` resolved to, with the export's access rules; the error names the export. */
static int
open_target(struct cc_pool *p, const char *export_name, const struct pool_target *t, int readonly,
            unsigned io_flags, char *path, size_t pathlen, struct cc_chain **out)
{
  char msg[CC_ERROR_MAX];
  unsigned flags = io_flags & CC_IO_MASK;
  int r;

  if ((r = target_path(p, t, path, pathlen)) < 0)
    return r;
  if (t->kind == CC_EXPORT_CLONE && !readonly)
    flags |= CC_RDWR;
  /* A raw image is never probed for a header: its first bytes are guest data. */
  if (t->kind == CC_EXPORT_TEMPLATE && t->tmpl.kind == CC_TEMPLATE_RAW)
    flags |= CC_RAW;
  /* Confined to the pool: a layer whose parent link leaves it is refused (POOL.md 2). */
  cc_error_clear();
  r = cc_chain_open_within(path, flags, p->dir, out);
  if (r < 0) {
    /* chain/ names the file; the user typed the export name, so it comes first, always. */
    snprintf(msg, sizeof msg, "%s", cc_error_get()[0] ? cc_error_get() : strerror(-r));
    return cc_error_set(-r, "open: %s: %s", export_name, msg);
  }
  /* A protected template (POOL.md 3.1.1): the image the chain holds is the one imported. */
  if ((r = pool_check_chain_base(p, *out, export_name)) < 0) {
    cc_chain_close(*out);
    *out = NULL;
    return r;
  }
  return 0;
}

/* The open race: a snapshot, revert or promote may switch a clone's top between our reading of
 * the record and our open.  Each such operation holds the top's exclusive lock from before it
 * reads the record until the new record is durable.  Opening a clone for writing takes that
 * lock, so once we hold it and the record still names the same layer, no operation can freeze
 * the layer under us.  If the record changed, the layer we hold is frozen (or about to go): let
 * it go and follow the new record, once; a clone whose top changes again in that window is
 * -EAGAIN ("try again"), which takes a snapshot per open to happen.  A read-only open needs no
 * check: whatever layer it opened is a consistent disk, and desc->top says which one it was. */
/* Wait (at most timeout_ms) until no pool operation holds the pool lock.  An operation locks the
 * layers it changes only while it holds the pool lock, so a layer lock found taken during one is
 * transient: an open that met it may try again once the operation is over (a client connecting
 * while `snapshot create` of the clone runs offline: the new record names the new top, whose
 * parent the CLI still holds exclusively for an instant; or the old record, whose top the CLI
 * holds until its new record is durable).  The operation may also have ended between the
 * refusal and this call, so the caller retries either way, a few times.  Shared and polled, so
 * it never queues other operations. */
static void
wait_for_operation(struct cc_pool *p, int timeout_ms)
{
  char path[PATH_MAX];
  int fd;

  if (pool_path(p, path, sizeof path, POOL_MARKER) < 0 ||
      (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
    return;
  for (int ms = 0; ms < timeout_ms && flock(fd, LOCK_SH | LOCK_NB) != 0; ms += 5)
    usleep(5000);
  close(fd);
}

int
cc_pool_open_export(struct cc_pool *p, const char *export_name, int readonly, unsigned io_flags,
                    struct cc_chain **out, struct cc_export_desc *desc)
{
  char path[PATH_MAX];
  struct pool_target t, again;
  int r, tries, busy = 0;

  for (tries = 0;; tries++) {
    if ((r = pool_resolve(p, "open", export_name, &t)) < 0)
      return r;
    r = open_target(p, export_name, &t, readonly, io_flags, path, sizeof path, out);
    if (r == -EBUSY && busy++ < 3) {
      wait_for_operation(p, 5000);
      tries--;
      continue;
    }
    if (r < 0)
      return r;
    if (t.kind != CC_EXPORT_CLONE || readonly)
      break;
    r = pool_resolve(p, "open", export_name, &again);
    if (r == 0 && again.kind == t.kind && strcmp(again.layer, t.layer) == 0)
      break;
    cc_chain_close(*out);
    *out = NULL;
    if (r < 0)
      return r;
    if (tries == 1)
      return cc_error_set(EAGAIN, "open: %s: the clone keeps changing; try again", export_name);
  }
  if (desc) {
    snprintf(desc->name, sizeof desc->name, "%s", export_name);
    desc->kind = t.kind;
    snprintf(desc->top, sizeof desc->top, "%s", path);
    desc->readonly = !cc_chain_writable(*out);
  }
  return 0;
}
