/* SPDX-License-Identifier: BSD-3-Clause */
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
 * The other direction (POOL.md 5.6, "into the snapshot"), taken when it copies less: S has one
 * child C of S's size; the record drops the snapshot first (R1, the commit point: before it S
 * is an export and must not change), then C's allocated and zero sub-clusters are copied into
 * S (R2: only sub-clusters C hides, so nothing any export reads changes), C's children are
 * relinked onto S (R3), every record naming C names S (R4), and C goes (R5).  A crash between
 * R1 and R4 leaves an extra unnamed layer S under the clone, which reads the same.
 *
 * Data moves file to file with ovl_copy_in (FORMAT.md 7.6); each changed L2 table is written
 * once, at the flush that ends the copy.
 *
 * Live (POOL.md 6.2, merge_live): when a server holds S or a child, the locks of step 1 are
 * refused and the merge goes into the children with the servers: a served top is filled by its
 * server piece by piece with its write gate closed (so a guest write always wins) and relinked
 * by it; frozen children are locked shared and written through an unlocked handle (their
 * readers get the same bytes through S); every server then forgets S (its chains through S are
 * rebuilt from the files) before the record drops the snapshot.
 *
 * Both layers must use the same sub-cluster size so that every copied unit is a whole
 * sub-cluster of Ci (no copy-up from below is ever needed); every layer the pool creates
 * does, and a pool layer that doesn't is refused with that reason.
 */
#include "pool/internal.h"

#include "common/control-proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MERGE_STEP (64ull << 20) /* bytes per ovl_copy_in call between progress reports */
#define MAX_EXT 64

struct merge {
  struct ovl_layer *from, *into; /* copy `from`'s blocks into `into` */
  uint64_t done, total;
  int count_only; /* only add up the data bytes a copy would write, into `done` */
  cc_progress_fn progress;
  void *opaque;
};

static void
merge_report(struct merge *m)
{
  if (m->progress && m->total)
    m->progress(m->opaque, m->done < m->total ? m->done : m->total, m->total);
}

/* Copy `from`'s data extent [eo, ee) into `into`: whole sub-clusters file to file
 * (ovl_copy_in), and a last partial sub-cluster (`from` ends inside it, at its virtual size
 * while `into` is larger) written whole through a buffer, with zeroes past `from`'s end, which
 * is what `into` read there through `from`. */
static int
merge_data(struct merge *m, uint64_t eo, uint64_t ee, uint64_t phys)
{
  uint64_t sc = ovl_sc_size(m->into), isize = ovl_virtual_size(m->into);
  uint64_t whole = ee == isize ? ee : ee / sc * sc, pos = eo;
  int r;

  if (m->count_only) {
    m->done += ee - eo;
    return 0;
  }
  while (pos < whole) {
    uint64_t k = whole - pos < MERGE_STEP ? whole - pos : MERGE_STEP;
    if ((r = ovl_copy_in(m->into, pos, k, ovl_fd(m->from), phys + (pos - eo), ovl_path(m->from))) <
        0)
      return r;
    pos += k;
    m->done += k;
    merge_report(m);
  }
  if (whole < ee) {
    uint64_t n = whole + sc < isize ? sc : isize - whole;
    char *buf = calloc(1, (size_t)sc);
    if (buf == NULL)
      return cc_error_set(ENOMEM, "merge: out of memory");
    r = ovl_pread(m->from, buf, ee - whole, whole, NULL, NULL);
    if (r == 0)
      r = ovl_pwrite(m->into, buf, n, whole, 0, NULL, NULL);
    free(buf);
    if (r < 0)
      return r;
    m->done += ee - whole;
  }
  return 0;
}

/* Copy `from`'s allocated/zero state into `into` over [off, off + len). */
static int
merge_run(struct merge *m, uint64_t off, uint64_t len)
{
  struct ovl_extent ext[MAX_EXT];
  uint64_t end = off + len;

  while (off < end) {
    int n = ovl_map(m->from, off, end - off, ext, MAX_EXT), i;
    if (n < 0)
      return n;
    if (n == 0)
      break;
    for (i = 0; i < n; i++) {
      uint64_t eo = ext[i].offset, ee = ext[i].offset + ext[i].length;
      int r = 0;
      if (ext[i].state == OVL_ZERO && !m->count_only)
        r = ovl_zero(m->into, ee - eo, eo, 0, NULL, NULL);
      else if (ext[i].state == OVL_DATA)
        r = merge_data(m, eo, ee, ext[i].phys);
      if (r < 0)
        return r;
      off = ee;
    }
  }
  return 0;
}

/* Copy into `into` what `from` holds over the runs where `where` is in state `state`:
 * forward (from S, into Ci, where Ci is unallocated) or the other way (from C, into S, where C
 * is allocated or zero: `where` == `from`, state < 0 for "not unallocated").  Then flush `into`,
 * unless only counting. */
static int
merge_walk(struct merge *m, struct ovl_layer *where, int unallocated)
{
  struct ovl_extent ext[MAX_EXT];
  uint64_t size = ovl_virtual_size(m->from), off = 0;
  int r;

  if (ovl_virtual_size(where) < size)
    size = ovl_virtual_size(where);
  while (off < size) {
    int n = ovl_map(where, off, size - off, ext, MAX_EXT), i;
    if (n < 0)
      return n;
    if (n == 0)
      break;
    for (i = 0; i < n; i++) {
      if ((ext[i].state == OVL_UNALLOCATED) == unallocated &&
          (r = merge_run(m, ext[i].offset, ext[i].length)) < 0)
        return r;
      off = ext[i].offset + ext[i].length;
    }
  }
  return m->count_only ? 0 : ovl_flush(m->into);
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

/* The uuids of the live layers whose parent is `uuid`; marks them in g (n->mark). */
static size_t
mark_children(struct pool_graph *g, const char *uuid)
{
  size_t i, k = 0;

  for (i = 0; i < g->n; i++) {
    struct pool_node *n = &g->nodes[i];
    n->mark = n->parent_kind == OVL_PARENT_LAYER && strcmp(n->parent, uuid) == 0 && n->live;
    k += (size_t)n->mark;
  }
  return k;
}

/* Reverse direction (POOL.md 5.6, "child into snapshot"): S's only child C goes into S's file,
 * S takes C's place in every record and as parent of C's children, C goes.  The snapshot's
 * line is already gone (the commit point); from here on S is an unnamed layer under C, and
 * every step leaves each export reading what it read. */
static int
merge_reverse(struct cc_pool *p, struct pool_graph *g, const struct cc_clone *c, struct merge *m,
              const char *suuid, const char *cuuid, const char *what)
{
  struct ovl_layer **gkids = NULL;
  struct ovl_parent par;
  char ppath[64], path[PATH_MAX];
  size_t i, ngk = 0, nopen = 0;
  int r;

  /* Step R2: C's blocks into S, where C hides S (so nothing any export reads changes). */
  if ((r = merge_walk(m, m->from, 0)) < 0)
    return r;
  pool_step();
  /* Step R3: C's children sit on S now (S reads as C did). */
  ngk = mark_children(g, cuuid);
  if (ngk > 0) {
    if ((gkids = calloc(ngk, sizeof *gkids)) == NULL)
      return cc_error_set(ENOMEM, "%s: out of memory", what);
    if ((r = pool_parent_of_layer(p, suuid, &par, ppath, sizeof ppath)) < 0)
      goto out;
    for (i = 0; i < g->n && r == 0; i++)
      if (g->nodes[i].mark &&
          (r = pool_open_layer(p, g->nodes[i].uuid, OVL_RDWR, what, &gkids[nopen])) == 0)
        nopen++;
    for (i = 0; i < nopen && r == 0; i++)
      if ((r = ovl_set_parent(gkids[i], &par)) == 0)
        pool_step();
    if (r < 0)
      goto out;
  }
  /* Step R4: every record that names C names S instead. */
  for (i = 0; i < g->nclones; i++) {
    const struct cc_clone *rec = strcmp(g->clones[i].name, c->name) == 0 ? c : &g->clones[i];
    struct cc_clone copy = *rec;
    size_t j;
    int hit = strcmp(copy.top, cuuid) == 0;

    for (j = 0; j < copy.nsnaps; j++)
      hit |= strcmp(copy.snaps[j].layer, cuuid) == 0;
    if (!hit)
      continue;
    copy.snaps = calloc(copy.nsnaps ? copy.nsnaps : 1, sizeof *copy.snaps);
    if (copy.snaps == NULL) {
      r = cc_error_set(ENOMEM, "%s: out of memory", what);
      goto out;
    }
    if (copy.nsnaps)
      memcpy(copy.snaps, rec->snaps, copy.nsnaps * sizeof *copy.snaps);
    if (strcmp(copy.top, cuuid) == 0)
      snprintf(copy.top, sizeof copy.top, "%s", suuid);
    for (j = 0; j < copy.nsnaps; j++)
      if (strcmp(copy.snaps[j].layer, cuuid) == 0)
        snprintf(copy.snaps[j].layer, sizeof copy.snaps[j].layer, "%s", suuid);
    r = pool_write_clone(p, &copy);
    free(copy.snaps);
    if (r < 0)
      goto out;
  }
  /* Step R5: C is unreachable (a failure here only leaks the file). */
  if (pool_layer_path(p, cuuid, path, sizeof path) == 0 && unlink(path) == 0) {
    pool_fsync_dir(p, "layers");
    pool_step();
  }
out:
  while (nopen) {
    int rc = ovl_close(gkids[--nopen]);
    if (r == 0 && rc < 0)
      r = rc;
  }
  free(gkids);
  return r;
}

/* ---- live merge (POOL.md 6.2) ---- */

#define LIVE_PIECE (2ull << 20) /* bytes of the snapshot per merge-top request: one gate stall */
#define MERGE_RETRIES 30        /* x 100 ms: a server opening or closing a clone while we looked */

struct live_kid {
  char uuid[CC_UUID_STR], path[PATH_MAX], name[2 * CC_NAME_MAX + 2];
  struct ovl_layer *lock; /* our lock on it: exclusive (offline child) or shared (frozen) */
  struct ovl_layer *w;    /* where we write it: lock itself, or an unlocked handle; NULL: served */
  int srv;                /* served top: the server's index, else -1 */
};

static const char *
kind_word(int kind)
{
  return kind == OVL_PARENT_LAYER ? "layer" : kind == OVL_PARENT_RAW ? "raw" : "none";
}

/* The snapshot's layer S is held by a server (it is in a served chain), or one of its children
 * is: copy into the children with the servers (POOL.md 6.2).  Always into the children: the
 * other direction would write S, which a server may be reading as CLONE@SNAP, and move a
 * served top.  Called under the pool lock with the record copy `c` already without the
 * snapshot; g's children of S marked. */
static int
merge_live(struct cc_pool *p, struct pool_graph *g, struct cc_clone *c, struct merge *m,
           const char *suuid, const char *what, struct cc_merge_info *res)
{
  struct pool_live *L = NULL;
  struct live_kid *k = NULL;
  struct ovl_layer *s = NULL;
  struct ovl_info sinfo;
  struct ovl_parent par;
  char spath[PATH_MAX], *req = NULL, *ok[CCP_MAX_WORDS];
  size_t i, nk = 0;
  uint64_t copied = 0; /* bytes the copy wrote (a served top: as its server counted them) */
  int r, nok;

  if ((r = pool_live_open(p, &L)) < 0)
    goto out;
  if (pool_live_servers(L) == 0) {
    r = -EBUSY; /* not a server's: refused as offline (the caller keeps the lock's message) */
    goto out;
  }
  if (!(k = calloc(g->n + 1, sizeof *k)) || !(req = malloc(CCP_LINE_MAX))) {
    r = cc_error_set(ENOMEM, "%s: out of memory", what);
    goto out;
  }
  /* Step 1: S shared (no writer can have it), each child as it can be had. */
  if ((r = pool_layer_path(p, suuid, spath, sizeof spath)) < 0 ||
      (r = pool_open_layer(p, suuid, OVL_RDONLY, what, &s)) < 0)
    goto out;
  ovl_get_info(s, &sinfo);
  for (i = 0; i < g->n; i++) {
    struct live_kid *x;
    struct ovl_layer *probe;

    if (!g->nodes[i].mark)
      continue;
    x = &k[nk++];
    x->srv = -1;
    snprintf(x->uuid, sizeof x->uuid, "%s", g->nodes[i].uuid);
    if ((r = pool_layer_path(p, x->uuid, x->path, sizeof x->path)) < 0)
      goto out;
    x->srv = pool_live_top_holder(L, x->path, x->name, sizeof x->name);
    if (x->srv >= 0) {
      /* A served top: the server writes it (merge-top); we only look at its geometry. */
      if ((r = pool_open_layer(p, x->uuid, OVL_RDONLY | OVL_NOLOCK | OVL_HEADER_ONLY, what,
                               &probe)) < 0)
        goto out;
    } else {
      r = pool_open_layer(p, x->uuid, OVL_RDWR, what, &x->lock);
      if (r == -EBUSY) {
        /* Frozen, read by a server: a shared lock proves nobody writes it, and we write only
         * holes whose bytes its readers get from S (POOL.md 6.2). */
        cc_error_clear();
        if ((r = pool_open_layer(p, x->uuid, OVL_RDONLY, what, &x->lock)) < 0) {
          char msg[CC_ERROR_MAX];
          snprintf(msg, sizeof msg, "%s", cc_error_get());
          /* -EAGAIN: nothing changed yet; a connection opening the clone, or the last one
           * closing it (its final flush), holds the top without being listed by `held`. */
          r = cc_error_set(EAGAIN,
                           "%s (it is written by a process that is not a cowchain server "
                           "with a control socket)",
                           msg);
          goto out;
        }
        if ((r = pool_open_layer(p, x->uuid, OVL_RDWR | OVL_NOLOCK, what, &x->w)) < 0)
          goto out;
      } else if (r < 0) {
        goto out;
      } else {
        x->w = x->lock;
      }
      probe = x->w;
    }
    if (ovl_sc_size(probe) != ovl_sc_size(s) || ovl_virtual_size(probe) < sinfo.virtual_size ||
        (x->srv >= 0 && ovl_virtual_size(probe) != sinfo.virtual_size &&
         sinfo.virtual_size % ovl_sc_size(s) != 0)) {
      r = cc_error_set(EINVAL,
                       "%s: layer %s has a different cluster size or disk size; cannot merge", what,
                       x->uuid);
      if (x->srv >= 0)
        ovl_close(probe);
      goto out;
    }
    if (x->srv >= 0)
      ovl_close(probe);
  }
  /* What the copy writes at most: a served top's map changes under the guest, so S's data. */
  m->count_only = 1;
  m->from = s;
  m->done = 0;
  for (i = 0; i < nk; i++) {
    if (k[i].srv >= 0) {
      m->done += sinfo.allocated_bytes;
    } else {
      m->into = k[i].w;
      if ((r = merge_walk(m, k[i].w, 1)) < 0)
        goto out;
    }
  }
  res->direction = CC_MERGE_INTO_CHILDREN;
  res->into_children_bytes = res->written_bytes = m->total = m->done;
  res->into_snapshot_bytes = 0;
  m->count_only = 0;
  m->done = 0;

  /* Step 2: every child's holes from S; a served top's through its server, piece by piece
   * (the guest's writes win, and the copy ends: S is frozen and finite). */
  for (i = 0; i < nk; i++) {
    if (k[i].srv < 0) {
      uint64_t before = m->done;
      m->into = k[i].w;
      if ((r = merge_walk(m, k[i].w, 1)) < 0)
        goto out;
      copied += m->done - before;
      pool_step();
      continue;
    }
    {
      struct ovl_extent ext[MAX_EXT];
      uint64_t off = 0, size = sinfo.virtual_size;

      while (off < size) {
        int n = ovl_map(s, off, size - off, ext, MAX_EXT), e;
        if (n < 0) {
          r = n;
          goto out;
        }
        if (n == 0)
          break;
        for (e = 0; e < n; e++) {
          uint64_t eo = ext[e].offset, ee = eo + ext[e].length;
          off = ee;
          if (ext[e].state == OVL_UNALLOCATED)
            continue;
          while (eo < ee) {
            uint64_t len = ee - eo < LIVE_PIECE ? ee - eo : LIVE_PIECE;
            char num[32];
            req[0] = '\0';
            ccp_append(req, CCP_LINE_MAX, "merge-top");
            ccp_append(req, CCP_LINE_MAX, k[i].name);
            ccp_append(req, CCP_LINE_MAX, spath);
            snprintf(num, sizeof num, "%llu", (unsigned long long)eo);
            ccp_append(req, CCP_LINE_MAX, num);
            snprintf(num, sizeof num, "%llu", (unsigned long long)len);
            ccp_append(req, CCP_LINE_MAX, num);
            if ((r = pool_live_call(L, k[i].srv, what, req, ok, &nok)) < 0) {
              if (r == -ENOENT)
                r = -EAGAIN; /* its last connection left: nothing relinked yet, start again */
              goto out;
            }
            if (nok >= 1)
              copied += strtoull(ok[0], NULL, 10);
            if (ext[e].state == OVL_DATA)
              m->done += len;
            merge_report(m);
            eo += len;
          }
        }
      }
    }
    pool_step();
  }

  /* Step 3: each child onto S's parent (a served top: flushed, then relinked, by its server). */
  memset(&par, 0, sizeof par);
  par.kind = sinfo.parent_kind;
  par.path = sinfo.parent_kind == OVL_PARENT_NONE ? NULL : sinfo.parent_path;
  memcpy(par.uuid, sinfo.parent_uuid, OVL_UUID_LEN);
  par.size = sinfo.parent_size;
  for (i = 0; i < nk; i++) {
    if (k[i].srv < 0) {
      r = ovl_set_parent(k[i].w, &par);
    } else {
      req[0] = '\0';
      ccp_append(req, CCP_LINE_MAX, "relink-top");
      ccp_append(req, CCP_LINE_MAX, k[i].name);
      ccp_append(req, CCP_LINE_MAX, kind_word(sinfo.parent_kind));
      ccp_append(req, CCP_LINE_MAX, par.path ? par.path : "-");
      r = pool_live_call(L, k[i].srv, what, req, ok, &nok);
    }
    if (r < 0)
      goto out;
    pool_step();
  }

  /* Step 4: every server drops the indexes holding S and rebuilds its chains through it. */
  for (i = 0; i < pool_live_servers(L); i++) {
    req[0] = '\0';
    ccp_append(req, CCP_LINE_MAX, "forget");
    ccp_append(req, CCP_LINE_MAX, spath);
    if ((r = pool_live_call(L, (int)i, what, req, ok, &nok)) < 0)
      goto out;
  }
  pool_step();

  res->written_bytes = copied;
  /* Step 5: the snapshot is gone (commit point). */
  if ((r = pool_write_clone(p, c)) < 0)
    goto out;

  /* Step 6: S is unreachable; the servers' old indexes may still hold it open (its space
   * returns when their last reader leaves). */
  if (unlink(spath) == 0) {
    pool_fsync_dir(p, "layers");
    pool_step();
  }
out:
  for (i = 0; i < nk; i++) {
    int rc = 0;
    if (k[i].w && k[i].w != k[i].lock)
      rc = ovl_close(k[i].w);
    if (k[i].lock) {
      int rc2 = ovl_close(k[i].lock);
      rc = rc < 0 ? rc : rc2;
    }
    if (r == 0 && rc < 0)
      r = rc;
  }
  if (s)
    ovl_close(s);
  free(k);
  free(req);
  pool_live_close(L);
  return r;
}

int
cc_snapshot_delete(struct cc_pool *p, const char *clone, const char *snap, cc_progress_fn progress,
                   void *opaque)
{
  return cc_snapshot_delete_info(p, clone, snap, progress, opaque, NULL);
}

int
cc_snapshot_delete_info(struct cc_pool *p, const char *clone, const char *snap,
                        cc_progress_fn progress, void *opaque, struct cc_merge_info *info)
{
  struct merge m = {.progress = progress, .opaque = opaque};
  struct ovl_layer **kids = NULL, *s = NULL;
  struct ovl_info sinfo, cinfo;
  struct ovl_parent par;
  struct pool_graph g;
  struct cc_clone c;
  struct cc_merge_info res = {.direction = CC_MERGE_NAME_ONLY};
  char what[2 * CC_NAME_MAX + 32], suuid[CC_UUID_STR], cuuid[CC_UUID_STR] = "";
  size_t i, nopen = 0;
  int r, si, reverse_ok;

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
  /* Drop the entry from our copy of the record now; it is written in step 4 (R1). */
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
  mark_children(&g, suuid);
  for (i = 0; i < g.n; i++) {
    const char *t;
    if (g.nodes[i].mark && (t = template_of(&g, g.nodes[i].uuid)) != NULL) {
      r = cc_error_set(EBUSY,
                       "%s: template %s sits directly on this snapshot and templates are "
                       "immutable; delete template %s first or keep the snapshot",
                       what, t, t);
      goto out;
    }
  }
  if ((r = pool_open_layer(p, suuid, OVL_RDWR, what, &s)) < 0)
    goto busy;
  ovl_get_info(s, &sinfo);
  for (i = 0; i < g.n; i++) {
    if (!g.nodes[i].mark)
      continue;
    if ((r = pool_open_layer(p, g.nodes[i].uuid, OVL_RDWR, what, &kids[nopen])) < 0)
      goto busy;
    if (ovl_sc_size(kids[nopen]) != ovl_sc_size(s) ||
        ovl_virtual_size(kids[nopen]) < sinfo.virtual_size) {
      nopen++;
      r = cc_error_set(EINVAL,
                       "%s: layer %s has a different cluster size or disk size; cannot "
                       "merge",
                       what, g.nodes[i].uuid);
      goto out;
    }
    snprintf(cuuid, sizeof cuuid, "%s", g.nodes[i].uuid);
    nopen++;
  }

  /* Which direction writes less (POOL.md 5.6): S's blocks that the children lack, into the
   * children; or, with one child C of S's size none of whose children is a template layer,
   * C's blocks into S. */
  m.count_only = 1;
  m.from = s;
  for (i = 0; i < nopen; i++) {
    m.into = kids[i];
    if ((r = merge_walk(&m, kids[i], 1)) < 0)
      goto out;
  }
  res.into_children_bytes = m.done;
  reverse_ok = nopen == 1 && ovl_virtual_size(kids[0]) == sinfo.virtual_size;
  if (reverse_ok) {
    ovl_get_info(kids[0], &cinfo);
    res.into_snapshot_bytes = cinfo.allocated_bytes;
    mark_children(&g, cuuid);
    for (i = 0; i < g.n; i++)
      if (g.nodes[i].mark && template_of(&g, g.nodes[i].uuid))
        reverse_ok = 0;
  }
  m.count_only = 0;
  m.done = 0;

  if (reverse_ok && res.into_snapshot_bytes < res.into_children_bytes) {
    res.direction = CC_MERGE_INTO_SNAPSHOT;
    res.written_bytes = res.into_snapshot_bytes;
    m.from = kids[0];
    m.into = s;
    m.total = res.into_snapshot_bytes;
    /* Step R1: the snapshot is gone (commit point); S stays, unnamed, under C. */
    if ((r = pool_write_clone(p, &c)) < 0)
      goto out;
    r = merge_reverse(p, &g, &c, &m, suuid, cuuid, what);
    goto out;
  }

  /* Step 2: fill each child's holes from S. */
  res.direction = CC_MERGE_INTO_CHILDREN;
  res.written_bytes = res.into_children_bytes;
  m.total = res.into_children_bytes;
  m.from = s;
  for (i = 0; i < nopen; i++) {
    m.into = kids[i];
    if ((r = merge_walk(&m, kids[i], 1)) < 0)
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

  goto out;

busy:
  /* A layer is in use: by a server we can talk to, a live merge (POOL.md 6.2). */
  if (r == -EBUSY) {
    char msg[CC_ERROR_MAX];

    snprintf(msg, sizeof msg, "%s", cc_error_get());
    while (nopen)
      ovl_close(kids[--nopen]);
    ovl_close(s);
    s = NULL;
    for (int attempt = 0;; attempt++) {
      cc_error_clear();
      mark_children(&g, suuid);
      r = merge_live(p, &g, &c, &m, suuid, what, &res);
      if (r != -EAGAIN || attempt + 1 == MERGE_RETRIES)
        break;
      usleep(100000);
    }
    if (r == -EAGAIN) {
      char last[CC_ERROR_MAX];
      snprintf(last, sizeof last, "%s", cc_error_get());
      r = cc_error_set(EBUSY, "%s", last);
    }
    if (r == -EBUSY && !cc_error_get()[0])
      r = cc_error_set(EBUSY, "%s", msg);
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
  {
    int rc = ovl_close(s);
    if (r == 0 && rc < 0)
      r = rc;
  }
  pool_graph_free(&g);
  cc_clone_free(&c);
  if (r == 0 && info)
    *info = res;
unlock:
  pool_unlock(p);
  return r;
}
