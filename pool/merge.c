/* cowchain pool: snapshot delete, which merges the snapshot's layer into its children.
 *
 * Design notes
 * ------------
 * Let S be the snapshot's layer, P its parent, and C1..Cn the layers whose parent is S (the
 * clone's top or later snapshots, and tops of clones made from this snapshot).  Each Ci reads
 * through to S where Ci is unallocated.  Deleting S without changing what any Ci reads means:
 *
 *   1. lock S and every Ci exclusively (refuse, naming the holder, if a server has one);
 *      refuse if a Ci is a template's layer (templates are immutable);
 *   2. for each Ci: copy into Ci every sub-cluster that is unallocated in Ci and allocated or
 *      zero in S (data written as data, zero as zero), then flush Ci;
 *   3. for each Ci: relink Ci's parent from S to P (one header write, FORMAT.md 7.3);
 *   4. replace the clone record without the snapshot;
 *   5. unlink S.
 *
 * Why every crash point is safe: step 2 only fills holes of Ci with the very bytes Ci was
 * reading through them, so Ci's contents are unchanged at every instant (a partly done copy
 * is just some sub-clusters that now live in Ci); the record still names the snapshot, so the
 * pool is "before".  After step 3 for some Ci, those Ci read the same bytes from themselves
 * instead of through S; the others still sit on S, which is still named by the record: still
 * "before", and running the delete again finishes the job (a relinked Ci is no longer a child
 * of S).  Step 4 is the atomic switch to "after"; a crash before step 5 leaves S as a layer no
 * record reaches, which check reports as a leak and --repair removes.
 *
 * Both layers must use the same sub-cluster size so that every copied unit is a whole
 * sub-cluster of Ci (no copy-up from below is ever needed); every layer the pool creates
 * does, and a pool layer that doesn't is refused with that reason.
 */
#include "pool/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MERGE_CHUNK (1u << 20)
#define MAX_EXT 64

struct merge {
  struct ovl_layer *s;
  uint64_t done, total;
  cc_progress_fn progress;
  void *opaque;
  char *buf;
};

/* Copy S's allocated/zero state into child over [off, off + len), a run unallocated in child. */
static int
merge_run(struct merge *m, struct ovl_layer *child, uint64_t off, uint64_t len)
{
  struct ovl_extent ext[MAX_EXT];
  uint64_t end = off + len;

  while (off < end) {
    int n = ovl_map(m->s, off, end - off, ext, MAX_EXT), i;
    if (n < 0)
      return n;
    if (n == 0)
      break;
    for (i = 0; i < n; i++) {
      uint64_t eo = ext[i].offset, ee = ext[i].offset + ext[i].length;
      int r = 0;
      if (ext[i].state == OVL_ZERO) {
        r = ovl_zero(child, ee - eo, eo, 0, NULL, NULL);
      } else if (ext[i].state == OVL_DATA) {
        while (eo < ee && r == 0) {
          uint64_t k = ee - eo < MERGE_CHUNK ? ee - eo : MERGE_CHUNK;
          r = ovl_pread(m->s, m->buf, k, eo, NULL, NULL);
          if (r == 0)
            r = ovl_pwrite(child, m->buf, k, eo, 0, NULL, NULL);
          eo += k;
          m->done += k;
          if (m->progress && m->total)
            m->progress(m->opaque, m->done < m->total ? m->done : m->total, m->total);
        }
      }
      if (r < 0)
        return r;
      off = ext[i].offset + ext[i].length;
    }
  }
  return 0;
}

static int
merge_into(struct merge *m, struct ovl_layer *child)
{
  struct ovl_extent ext[MAX_EXT];
  uint64_t size = ovl_virtual_size(child), off = 0;
  int r;

  while (off < size) {
    int n = ovl_map(child, off, size - off, ext, MAX_EXT), i;
    if (n < 0)
      return n;
    if (n == 0)
      break;
    for (i = 0; i < n; i++) {
      if (ext[i].state == OVL_UNALLOCATED &&
          (r = merge_run(m, child, ext[i].offset, ext[i].length)) < 0)
        return r;
      off = ext[i].offset + ext[i].length;
    }
  }
  return ovl_flush(child);
}

/* Is `uuid` named by any record other than snapshot `skip` of clone `clone`? */
static const char *
other_reference(const struct pool_graph *g, const char *uuid, const char *clone, const char *skip)
{
  size_t i, j;

  for (i = 0; i < g->ntmpls; i++)
    if (g->tmpls[i].kind == CC_TEMPLATE_LAYER && strcmp(g->tmpls[i].layer, uuid) == 0)
      return g->tmpls[i].name;
  for (i = 0; i < g->nclones; i++) {
    if (strcmp(g->clones[i].top, uuid) == 0)
      return g->clones[i].name;
    for (j = 0; j < g->clones[i].nsnaps; j++)
      if (strcmp(g->clones[i].snaps[j].layer, uuid) == 0 &&
          !(strcmp(g->clones[i].name, clone) == 0 && strcmp(g->clones[i].snaps[j].name, skip) == 0))
        return g->clones[i].name;
  }
  return NULL;
}

static const char *
template_of(const struct pool_graph *g, const char *uuid)
{
  size_t i;

  for (i = 0; i < g->ntmpls; i++)
    if (g->tmpls[i].kind == CC_TEMPLATE_LAYER && strcmp(g->tmpls[i].layer, uuid) == 0)
      return g->tmpls[i].name;
  return NULL;
}

int
cc_snapshot_delete(struct cc_pool *p, const char *clone, const char *snap, cc_progress_fn progress,
                   void *opaque)
{
  struct merge m = {.progress = progress, .opaque = opaque};
  struct ovl_layer **kids = NULL;
  struct ovl_info sinfo;
  struct ovl_parent par;
  struct pool_graph g;
  struct cc_clone c;
  char what[2 * CC_NAME_MAX + 32], suuid[CC_UUID_STR];
  size_t i, nkids = 0, nopen = 0;
  int r, si;

  memset(&g, 0, sizeof g);
  if ((r = pool_lock(p, "snapshot delete")) < 0)
    return r;
  if ((r = pool_get_clone(p, "snapshot delete", clone, &c)) < 0)
    goto unlock;
  snprintf(what, sizeof what, "snapshot delete: %s@%s", clone, snap);
  if ((si = pool_find_snap(&c, snap)) < 0) {
    r = cc_error_set(ENOENT, "%s: no such snapshot", what);
    goto out;
  }
  strcpy(suuid, c.snaps[si].layer);
  if ((r = pool_graph_load(p, &g)) < 0 || (r = pool_graph_require_sound(&g, what)) < 0)
    goto out;
  /* Drop the entry from our copy of the record now; it is written in step 4. */
  memmove(&c.snaps[si], &c.snaps[si + 1], (c.nsnaps - (size_t)si - 1) * sizeof *c.snaps);
  c.nsnaps--;
  if (other_reference(&g, suuid, clone, snap)) {
    /* Another record still needs the layer as it is: forget the name only. */
    r = pool_write_clone(p, &c);
    goto out;
  }

  /* Step 1: find and lock the children, refusing before anything changes. */
  kids = calloc(g.n + 1, sizeof *kids);
  if (kids == NULL) {
    r = cc_error_set(ENOMEM, "%s: out of memory", what);
    goto out;
  }
  for (i = 0; i < g.n; i++) {
    struct pool_node *n = &g.nodes[i];
    const char *t;
    if (n->parent_kind != OVL_PARENT_LAYER || strcmp(n->parent, suuid) != 0 || !n->live)
      continue;
    if ((t = template_of(&g, n->uuid)) != NULL) {
      r = cc_error_set(EBUSY,
                       "%s: template %s sits directly on this snapshot and templates are "
                       "immutable; delete template %s first or keep the snapshot",
                       what, t, t);
      goto out;
    }
    n->mark = 1;
    nkids++;
  }
  if ((r = pool_open_layer(p, suuid, OVL_RDWR, what, &m.s)) < 0)
    goto out;
  ovl_get_info(m.s, &sinfo);
  for (i = 0; i < g.n; i++) {
    if (!g.nodes[i].mark)
      continue;
    if ((r = pool_open_layer(p, g.nodes[i].uuid, OVL_RDWR, what, &kids[nopen])) < 0)
      goto out;
    if (ovl_sc_size(kids[nopen]) != ovl_sc_size(m.s) ||
        ovl_virtual_size(kids[nopen]) < sinfo.virtual_size) {
      nopen++;
      r = cc_error_set(EINVAL,
                       "%s: layer %s has a different cluster size or disk size; cannot "
                       "merge",
                       what, g.nodes[i].uuid);
      goto out;
    }
    nopen++;
  }

  /* Step 2: fill each child's holes from S. */
  m.total = sinfo.allocated_bytes * nkids;
  m.buf = malloc(MERGE_CHUNK);
  if (m.buf == NULL) {
    r = cc_error_set(ENOMEM, "%s: out of memory", what);
    goto out;
  }
  for (i = 0; i < nopen; i++) {
    if ((r = merge_into(&m, kids[i])) < 0)
      goto out;
    pool_step();
  }

  /* Step 3: relink each child to S's parent. */
  memset(&par, 0, sizeof par);
  par.kind = sinfo.parent_kind;
  par.path = sinfo.parent_kind == OVL_PARENT_NONE ? NULL : sinfo.parent_path;
  memcpy(par.uuid, sinfo.parent_uuid, OVL_UUID_LEN);
  par.size = sinfo.parent_size;
  for (i = 0; i < nopen; i++) {
    if ((r = ovl_set_parent(kids[i], &par)) < 0)
      goto out;
    pool_step();
  }

  /* Step 4: the snapshot is gone. */
  if ((r = pool_write_clone(p, &c)) < 0)
    goto out;

  /* Step 5: S is unreachable now; remove it (a failure here only leaks the file). */
  {
    char path[PATH_MAX];
    if (pool_layer_path(p, suuid, path, sizeof path) == 0 && unlink(path) == 0) {
      pool_fsync_dir(p, "layers");
      pool_step();
    }
  }

out:
  if (kids) {
    while (nopen) {
      int rc = ovl_close(kids[--nopen]);
      if (r == 0 && rc < 0)
        r = rc;
    }
    free(kids);
  }
  ovl_close(m.s);
  free(m.buf);
  pool_graph_free(&g);
  cc_clone_free(&c);
unlock:
  pool_unlock(p);
  return r;
}
