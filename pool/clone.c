/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: clones (linked and full), clone delete, snapshot create and revert.
 *
 * Design notes
 * ------------
 * A linked clone, a snapshot and a revert are each one new empty layer plus one record
 * replacement: O(1) whatever the disk size.  The steps (POOL.md section 5), one batch
 * (durable.c) in three rounds of syncs:
 *
 *   1. at once: the new layer created in tmp/ and made durable; the new record written to
 *      its tmp/ file and made durable; the old top, if the record freezes it, flushed
 *                                                                (crash: garbage in tmp/)
 *   2. the new layer renamed into layers/, fsync layers/         (crash: unreferenced layer)
 *   3. the clone record renamed into place, fsync clones/        (the operation happened)
 *   4. remove what no record reaches any more (revert, delete)   (crash: unreferenced layer)
 *
 * Before step 1 the operation takes the exclusive OFD lock on the clone's current top and
 * keeps it until step 3 is durable.  A server holding the top (a VM is running on the clone)
 * makes the operation fail with the holder's name instead of freezing a layer that is still
 * being written.  cc_pool_open_export re-reads the record after it opened the top, so a server
 * can never end up writing a layer that step 3 has just frozen.
 */
#include "pool/internal.h"
#include "pool/qga.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Full clone: copy the whole chain of `from` into a parentless layer in tmp/. */
static int
full_copy(struct cc_pool *p, const char *from, char *tmp, size_t tmplen, char uuid[CC_UUID_STR],
          uint64_t *size, uint64_t want, cc_progress_fn progress, void *opaque)
{
  struct ovl_create_opts opts = {.cluster_size = 0};
  struct ovl_layer *dst = NULL;
  struct cc_chain *src = NULL;
  uint8_t raw_uuid[OVL_UUID_LEN];
  int r, r2;

  if ((r = cc_pool_open_export(p, from, 1, 0, &src, NULL)) < 0)
    return r;
  opts.virtual_size = *size = want > cc_chain_size(src) ? want : cc_chain_size(src);
  opts.parent.kind = OVL_PARENT_NONE;
  opts.mode = p->file_mode;
  if ((r = pool_tmp_path(p, "full", ".cow", tmp, tmplen)) < 0)
    goto out;
  if ((r = ovl_create(tmp, &opts, raw_uuid)) < 0 || (r = pool_secure_group(p, tmp)) < 0)
    goto out;
  ovl_uuid_str(raw_uuid, uuid);
  if ((r = ovl_open(tmp, OVL_RDWR, &dst)) < 0)
    goto out;
  r = pool_copy_chain_to_layer(src, dst, progress, opaque);
  r2 = ovl_close(dst); /* flushes: the copy is durable before the file gets a name */
  if (r == 0)
    r = r2;
out:
  cc_chain_close(src);
  if (r < 0)
    unlink(tmp);
  return r;
}

int
cc_clone_create(struct cc_pool *p, const char *name, const char *from, int full,
                cc_progress_fn progress, void *opaque)
{
  return cc_clone_create_size(p, name, from, full, 0, progress, opaque);
}

int
cc_clone_create_size(struct cc_pool *p, const char *name, const char *from, int full, uint64_t size,
                     cc_progress_fn progress, void *opaque)
{
  char ppath[PATH_MAX], tmp[PATH_MAX] = "";
  struct ovl_parent par;
  struct pool_target t;
  struct pool_batch b;
  struct cc_clone c;
  int r;

  if ((r = pool_name_free(p, "clone create", name)) < 0)
    return r;
  if ((r = pool_resolve(p, "clone create", from, &t)) < 0)
    return r;
  if (t.kind == CC_EXPORT_CLONE)
    return cc_error_set(EINVAL,
                        "clone create: %s: is a clone; clone from a snapshot of it "
                        "(%s@SNAP) or from a template",
                        from, from);
  memset(&c, 0, sizeof c);
  snprintf(c.name, sizeof c.name, "%s", name);
  snprintf(c.origin, sizeof c.origin, "%s", from);
  c.full = full;
  if ((r = pool_clone_size(name, t.size, &size)) < 0)
    return r;
  c.size = size;
  if (full) {
    /* The copy runs without the pool lock (it may take minutes); the source's layers are
     * locked shared by the open chain, so nothing merges them away meanwhile. */
    if ((r = full_copy(p, from, tmp, sizeof tmp, c.top, &c.size, size, progress, opaque)) < 0)
      return r;
    pool_step();
  }
  pool_batch_init(&b, p);
  if ((r = pool_lock(p, "clone create")) < 0)
    goto fail;
  /* The name may have been taken while we were not holding the lock; a linked clone's source
   * may have gone (a full copy no longer needs it). */
  if ((r = pool_name_free(p, "clone create", name)) < 0 ||
      (!full && (r = pool_resolve(p, "clone create", from, &t)) < 0))
    goto fail;
  if (full) {
    if ((r = pool_batch_adopt_layer(&b, tmp, c.top)) < 0)
      goto fail;
  } else {
    if (t.kind == CC_EXPORT_TEMPLATE)
      r = pool_parent_of_template(p, &t.tmpl, &par, ppath, sizeof ppath);
    else
      r = pool_parent_of_layer(p, t.layer, &par, ppath, sizeof ppath);
    if (r < 0 || (r = pool_batch_layer(&b, size > t.size ? size : t.size, &par, c.top)) < 0)
      goto fail;
  }
  /* The record names the new layer: prepared while the layer is made, renamed after it. */
  c.created = pool_now();
  if ((r = pool_batch_clone(&b, &c)) < 0 || (r = pool_batch_prepare(&b)) < 0)
    goto fail;
  r = pool_batch_commit(&b);
  pool_batch_free(&b);
  pool_unlock(p);
  return r;

fail:
  pool_batch_free(&b);
  if (tmp[0])
    unlink(tmp); /* a full copy not installed (installed: the name is gone, this fails) */
  pool_unlock(p);
  return r;
}

int
cc_clone_delete(struct cc_pool *p, const char *name)
{
  char what[CC_NAME_MAX + 32];
  struct ovl_layer **held = NULL;
  struct pool_graph g;
  size_t i, nheld = 0;
  int r, served = 0;

  snprintf(what, sizeof what, "clone delete: %.64s", name);
  if ((r = pool_lock(p, "clone delete")) < 0)
    return r;
  /* A connected clone is never deleted under its clients (issue 14 item 5). */
  if (cc_name_valid(name) &&
      (r = pool_live_exclusive(p, "clone delete", name, 0, "; disconnect them first", &served)) < 0)
    goto unlock;
  if ((r = pool_graph_load(p, &g)) < 0)
    goto unlock;
  for (i = 0; i < g.nclones; i++)
    if (strcmp(g.clones[i].name, name) == 0)
      break;
  if (i == g.nclones) {
    if (!cc_name_valid(name))
      r = cc_error_set(EINVAL, "clone delete: '%.80s': not a valid name", name);
    else
      r = cc_error_set(ENOENT, "clone delete: %s: no such clone", name);
    goto out;
  }
  /* The layers that only this clone reaches: the top, its snapshots, and any of their
   * ancestors no other record needs (a snapshot that another clone was made from stays). */
  cc_clone_free(&g.clones[i]);
  g.clones[i] = g.clones[--g.nclones];
  for (i = 0; i < g.n; i++)
    g.nodes[i].mark = g.nodes[i].live;
  pool_graph_mark_live(&g);
  /* Only layers that stay must be readable: a broken clone can still be deleted. */
  if ((r = pool_graph_require_sound(&g, what)) < 0)
    goto out;
  held = calloc(g.n ? g.n : 1, sizeof *held);
  if (held == NULL) {
    r = cc_error_set(ENOMEM, "clone delete: out of memory");
    goto out;
  }
  /* Lock every layer we are about to delete: a server on the clone or on one of its
   * snapshots makes us refuse before anything changed. */
  for (i = 0; i < g.n; i++) {
    if (!g.nodes[i].mark || g.nodes[i].live || g.nodes[i].bad)
      continue; /* an unreadable layer cannot be served either */
    for (int t = 0;; t++) {
      r = pool_open_layer(p, g.nodes[i].uuid, OVL_RDWR, what, &held[nheld]);
      if (r != -EBUSY || !served || t == POOL_BUSY_RETRIES)
        break;
      usleep(100000); /* the server is closing the chain of its last connection */
    }
    if (r < 0)
      goto out;
    nheld++;
  }
  if ((r = pool_remove_record(p, "clones", name)) < 0)
    goto out;
  for (i = 0; i < g.n; i++) {
    char path[PATH_MAX];
    if (g.nodes[i].mark && !g.nodes[i].live &&
        pool_layer_path(p, g.nodes[i].uuid, path, sizeof path) == 0)
      unlink(path);
  }
  pool_fsync_dir(p, "layers");
  pool_step();
out:
  while (nheld)
    ovl_close(held[--nheld]);
  free(held);
  pool_graph_free(&g);
unlock:
  pool_unlock(p);
  return r;
}

int
pool_freeze_top(struct cc_pool *p, const char *op, const struct cc_clone *c, const char *base,
                struct pool_batch *b, struct ovl_layer **held, char newtop[CC_UUID_STR])
{
  char ppath[64], what[CC_NAME_MAX + 32];
  struct ovl_parent par;
  int r;

  *held = NULL;
  snprintf(what, sizeof what, "%s: %s", op, c->name);
  if ((r = pool_open_layer(p, c->top, OVL_RDWR, what, held)) < 0 ||
      (r = pool_parent_of_layer(p, base, &par, ppath, sizeof ppath)) < 0 ||
      (r = pool_batch_layer(b, c->size, &par, newtop)) < 0 ||
      (r = pool_batch_freeze(b, *held)) < 0) {
    ovl_close(*held);
    *held = NULL;
    return r;
  }
  return 0;
}

/* Served or not, one clone or several ("vm1,vm2"): live.c (POOL.md 5.5 and 6.1). */
int
cc_snapshot_create(struct cc_pool *p, const char *clone, const char *snap, const char *description)
{
  return pool_snapshot_create_many(p, clone, snap, description);
}

int
cc_snapshot_create_quiesced(struct cc_pool *p, const char *clones, const char *snap,
                            const char *description, const char *agent, int freeze_timeout_ms)
{
  char msg[CC_ERROR_MAX];
  struct cc_qga *q = NULL;
  int r, t;

  if (agent == NULL)
    return pool_snapshot_create_many(p, clones, snap, description);
  /* The pool lock first: the guest must not stay frozen while we queue behind another
   * operation (pool_snapshot_create_many finds it held and releases it at its end). */
  if ((r = pool_lock(p, "snapshot create")) < 0)
    return r;
  if ((r = cc_qga_open(agent, CC_QGA_SYNC_MS, &q)) < 0 ||
      (r = cc_qga_freeze(q, freeze_timeout_ms)) < 0) {
    snprintf(msg, sizeof msg, "%s", cc_error_get());
    cc_qga_close(q);
    pool_unlock(p);
    return cc_error_set(-r, "snapshot create: %s@%s: not taken: %s", clones, snap, msg);
  }
  r = pool_snapshot_create_many(p, clones, snap, description);
  snprintf(msg, sizeof msg, "%s", cc_error_get());
  t = cc_qga_thaw(q, CC_QGA_THAW_MS); /* always, whatever the snapshot did */
  cc_qga_close(q);
  if (r < 0) {
    if (t < 0) {
      char thaw[CC_ERROR_MAX];

      snprintf(thaw, sizeof thaw, "%s", cc_error_get());
      return cc_error_set(-r, "%s; and %s", msg, thaw);
    }
    return cc_error_set(-r, "%s", msg);
  }
  if (t < 0) {
    snprintf(msg, sizeof msg, "%s", cc_error_get());
    return cc_error_set(-t, "snapshot create: %s@%s is taken, but %s", clones, snap, msg);
  }
  return 0;
}

int
cc_snapshot_revert(struct cc_pool *p, const char *clone, const char *snap)
{
  return cc_snapshot_revert_flags(p, clone, snap, 0);
}

int
cc_snapshot_revert_flags(struct cc_pool *p, const char *clone, const char *snap, unsigned flags)
{
  char newtop[CC_UUID_STR], oldtop[CC_UUID_STR];
  struct ovl_layer *top = NULL;
  struct pool_batch b;
  struct pool_graph g;
  struct cc_clone c;
  int r, i, served = 0;

  pool_batch_init(&b, p);
  if ((r = pool_lock(p, "snapshot revert")) < 0)
    return r;
  if ((r = pool_get_clone(p, "snapshot revert", clone, &c)) < 0)
    goto unlock;
  if ((i = pool_find_snap(&c, snap)) < 0) {
    r = cc_error_set(ENOENT, "snapshot revert: %s@%s: no such snapshot", clone, snap);
    goto out;
  }
  /* A guest's page cache would disagree with its disk: refuse while clients are connected,
   * or, with --force, have the server drop them first (POOL.md 6.4). */
  if ((r = pool_live_exclusive(p, "snapshot revert", clone, (flags & CC_REVERT_FORCE) != 0,
                               " (a guest's cache would disagree with its reverted disk); "
                               "disconnect them, or --force to drop them",
                               &served)) < 0)
    goto out;
  for (int t = 0;; t++) {
    r = pool_freeze_top(p, "snapshot revert", &c, c.snaps[i].layer, &b, &top, newtop);
    if (r != -EBUSY || !served || t == POOL_BUSY_RETRIES)
      break;
    usleep(100000); /* the server is closing the chain of its last connection */
  }
  if (r < 0)
    goto out;
  strcpy(oldtop, c.top);
  strcpy(c.top, newtop);
  /* The old top is frozen too (in the same round as the new layer, so at no cost in time):
   * its discarded data is flushed for nothing, but its close below then does no I/O. */
  if ((r = pool_batch_clone(&b, &c)) < 0 || (r = pool_batch_prepare(&b)) < 0 ||
      (r = pool_batch_commit(&b)) < 0)
    goto out;
  /* The old top's writes since the last snapshot are discarded; its file goes unless a record
   * or another layer still reaches it.  Without a sync of layers/: one per directory per
   * operation, and a power loss that brings the file back leaves a leftover, which check
   * reports and --repair removes (POOL.md 5.7). */
  if (pool_graph_load(p, &g) == 0) {
    struct pool_node *n = pool_graph_find(&g, oldtop);
    char path[PATH_MAX];
    if (n && !n->live && pool_layer_path(p, oldtop, path, sizeof path) == 0)
      unlink(path);
    pool_graph_free(&g);
  }
out:
  pool_batch_free(&b);
  ovl_close(top);
  cc_clone_free(&c);
unlock:
  pool_unlock(p);
  return r;
}
