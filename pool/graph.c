/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: the graph of layers (who is whose parent) and who references them.
 *
 * Design notes
 * ------------
 * Records name layers (a clone's top, its snapshots, a template's layer) and raw images (raw
 * templates); layer headers name their parents.  Which files are still needed is therefore
 * "reachable from a record through parent links": a layer is *live* if a record names it or it
 * is the parent of a live layer.  Everything else in layers/ and images/ is garbage that a
 * crashed or finished operation left behind.
 *
 * The graph is read fresh for each operation by opening every layer header without a lock
 * (OVL_NOLOCK: a server may hold them).  This costs one open per layer, which is what lets
 * `clone delete`, `snapshot revert`, `template delete` and `check` answer questions like "does
 * anything still sit on this layer?" without a second copy of the parent links that could
 * disagree with the headers.
 *
 * Garbage is collected only under the pool lock (pool_lock), so an operation that has
 * installed a new layer but not yet written the record naming it never loses that layer.
 */
#include "pool/internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int
cmp_node(const void *a, const void *b)
{
  return strcmp(((const struct pool_node *)a)->uuid, ((const struct pool_node *)b)->uuid);
}

/* Fill a node from the layer's header. */
static void
load_node(struct cc_pool *p, struct pool_node *n)
{
  struct ovl_layer *l;
  struct ovl_info info;
  char path[PATH_MAX];
  struct stat st;

  if (pool_layer_path(p, n->uuid, path, sizeof path) == 0 && lstat(path, &st) == 0) {
    n->disk_bytes = (uint64_t)st.st_blocks * 512;
    /* The pool creates only regular files; a symlink could point anywhere on the host. */
    if (!S_ISREG(st.st_mode)) {
      n->bad = 1;
      snprintf(n->error, sizeof n->error, "layer %s: not a regular file (a symlink?)", n->uuid);
      return;
    }
  }
  if (pool_open_layer(p, n->uuid, OVL_RDONLY | OVL_NOLOCK, "layer", &l) < 0) {
    n->bad = 1;
    snprintf(n->error, sizeof n->error, "%s", cc_error_get());
    return;
  }
  ovl_get_info(l, &info);
  ovl_close(l);
  n->virtual_size = info.virtual_size;
  n->parent_kind = info.parent_kind;
  n->parent_size = info.parent_size;
  n->dirty = info.dirty;
  {
    char u[37];
    ovl_uuid_str(info.uuid, u);
    /* The file name is the identity records and parent links use: it must match. */
    if (strcmp(u, n->uuid) != 0) {
      n->bad = 1;
      snprintf(n->error, sizeof n->error, "layer %s: header uuid is %s", n->uuid, u);
      return;
    }
  }
  if (pool_parse_parent_link(info.parent_kind, info.parent_path, n->parent, n->parent_image) < 0) {
    n->bad = 1;
    snprintf(n->error, sizeof n->error, "layer %s: parent link '%s' leaves the pool", n->uuid,
             info.parent_path);
  } else if (info.parent_kind == OVL_PARENT_LAYER) {
    char pu[37];
    ovl_uuid_str(info.parent_uuid, pu);
    /* The link's file name and the header's parent uuid must agree. */
    if (strcmp(n->parent, pu) != 0) {
      n->bad = 1;
      snprintf(n->error, sizeof n->error, "layer %s: parent link %s names uuid %s", n->uuid,
               info.parent_path, pu);
      n->parent[0] = '\0';
    }
  }
}

int
pool_graph_load(struct cc_pool *p, struct pool_graph *g)
{
  char path[PATH_MAX];
  struct dirent *d;
  size_t cap = 0, i;
  DIR *dir;
  int r;

  memset(g, 0, sizeof *g);
  if ((r = cc_pool_list_templates(p, &g->tmpls, &g->ntmpls)) < 0)
    return r;
  if ((r = cc_pool_list_clones(p, &g->clones, &g->nclones)) < 0)
    goto fail;
  if ((r = pool_path(p, path, sizeof path, "layers")) < 0)
    goto fail;
  dir = opendir(path);
  if (dir == NULL) {
    r = cc_error_set(errno, "layers: %s: %s", path, strerror(errno));
    goto fail;
  }
  while ((d = readdir(dir)) != NULL) {
    size_t len = strlen(d->d_name);
    struct pool_node *n;
    if (len != 40 || strcmp(d->d_name + 36, ".cow") != 0)
      continue;
    if (g->n == cap) {
      struct pool_node *nn = realloc(g->nodes, (cap = cap ? cap * 2 : 32) * sizeof *nn);
      if (nn == NULL) {
        closedir(dir);
        r = cc_error_set(ENOMEM, "layers: out of memory");
        goto fail;
      }
      g->nodes = nn;
    }
    n = &g->nodes[g->n++];
    memset(n, 0, sizeof *n);
    memcpy(n->uuid, d->d_name, 36);
  }
  closedir(dir);
  if (g->n)
    qsort(g->nodes, g->n, sizeof *g->nodes, cmp_node);
  for (i = 0; i < g->n; i++)
    load_node(p, &g->nodes[i]);
  pool_graph_mark_live(g);
  return 0;

fail:
  pool_graph_free(g);
  return r;
}

void
pool_graph_free(struct pool_graph *g)
{
  free(g->nodes);
  free(g->tmpls);
  cc_clone_list_free(g->clones, g->nclones);
  memset(g, 0, sizeof *g);
}

struct pool_node *
pool_graph_find(struct pool_graph *g, const char *uuid)
{
  struct pool_node key;

  if (g->n == 0 || strlen(uuid) != 36)
    return NULL;
  memcpy(key.uuid, uuid, CC_UUID_STR);
  return bsearch(&key, g->nodes, g->n, sizeof key, cmp_node);
}

int
pool_graph_require_sound(const struct pool_graph *g, const char *what)
{
  size_t i;

  for (i = 0; i < g->n; i++)
    if (g->nodes[i].live && g->nodes[i].bad)
      return cc_error_set(EUCLEAN, "%s: cannot tell what depends on what: %s (see cowchain check)",
                          what, g->nodes[i].error);
  return 0;
}

/* Mark n and its ancestors live; bounded by the node count, so a cycle cannot loop. */
static void
mark_chain(struct pool_graph *g, struct pool_node *n)
{
  size_t steps = 0;

  while (n && !n->live && steps++ <= g->n) {
    n->live = 1;
    if (n->parent_kind != OVL_PARENT_LAYER)
      break;
    n = pool_graph_find(g, n->parent);
  }
}

static void
reference(struct pool_graph *g, const char *uuid)
{
  struct pool_node *n = pool_graph_find(g, uuid);

  if (n) {
    n->referenced = 1;
    mark_chain(g, n);
  }
}

void
pool_graph_mark_live(struct pool_graph *g)
{
  size_t i, j;

  for (i = 0; i < g->n; i++)
    g->nodes[i].referenced = g->nodes[i].live = 0;
  for (i = 0; i < g->ntmpls; i++)
    if (g->tmpls[i].kind == CC_TEMPLATE_LAYER)
      reference(g, g->tmpls[i].layer);
  for (i = 0; i < g->nclones; i++) {
    reference(g, g->clones[i].top);
    for (j = 0; j < g->clones[i].nsnaps; j++)
      reference(g, g->clones[i].snaps[j].layer);
  }
}

/* Is images/NAME.raw still named by a raw template of g? */
static int
image_named(const struct pool_graph *g, const char *name)
{
  size_t i;

  for (i = 0; i < g->ntmpls; i++)
    if (g->tmpls[i].kind == CC_TEMPLATE_RAW && strcmp(g->tmpls[i].name, name) == 0)
      return 1;
  return 0;
}

int
pool_collect_garbage(struct cc_pool *p, struct pool_graph *g)
{
  char path[PATH_MAX];
  struct dirent *d;
  int removed = 0, changed = 0;
  size_t i;
  DIR *dir;

  /* A live layer whose header we could not read hides its parent from mark_chain: collecting
   * now could delete a layer it sits on.  Leave everything for check to explain. */
  for (i = 0; i < g->n; i++)
    if (g->nodes[i].live && g->nodes[i].bad)
      return 0;
  for (i = 0; i < g->n; i++) {
    struct pool_node *n = &g->nodes[i];
    struct ovl_layer *l;
    if (n->live)
      continue;
    /* Someone may still read it (an export opened before its record went away): leave it
     * for check --repair rather than pull it from under a server. */
    if (!n->bad && pool_open_layer(p, n->uuid, OVL_RDWR, "gc", &l) < 0)
      continue;
    if (pool_layer_path(p, n->uuid, path, sizeof path) == 0 && unlink(path) == 0) {
      removed++;
      changed = 1;
    }
    if (!n->bad)
      ovl_close(l);
  }
  if (changed) {
    pool_fsync_dir(p, "layers");
    pool_step();
  }
  changed = 0;
  if (pool_path(p, path, sizeof path, "images") == 0 && (dir = opendir(path)) != NULL) {
    while ((d = readdir(dir)) != NULL) {
      size_t len = strlen(d->d_name);
      char name[CC_NAME_MAX + 1];
      int used = 0;
      if (len <= 4 || len - 4 > CC_NAME_MAX || strcmp(d->d_name + len - 4, ".raw") != 0)
        continue;
      memcpy(name, d->d_name, len - 4);
      name[len - 4] = '\0';
      if (image_named(g, name))
        continue;
      for (i = 0; i < g->n; i++)
        if (g->nodes[i].live && g->nodes[i].parent_kind == OVL_PARENT_RAW &&
            strcmp(g->nodes[i].parent_image, name) == 0)
          used = 1;
      if (used)
        continue;
      if (pool_image_path(p, name, path, sizeof path) == 0 && unlink(path) == 0) {
        removed++;
        changed = 1;
      }
    }
    closedir(dir);
  }
  if (changed) {
    pool_fsync_dir(p, "images");
    pool_step();
  }
  return removed;
}
