/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: what `cowchain info` shows: the backing chain of an export, layer by layer.
 *
 * Design notes
 * ------------
 * Like `qemu-img info --backing-chain`: one entry per file from the export's top down to the
 * bottom, with the numbers the layer header and the map give (virtual size, allocated and zero
 * bytes, cluster size, creation time) and the disk space the file really uses.  Each layer is
 * opened without a lock (OVL_NOLOCK), so info works while a server runs on the clone.  The
 * `role` names the record that refers to the layer, which is how a user recognises an
 * otherwise anonymous uuid.
 */
#include "pool/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bytes in data extents of a raw file (SEEK_DATA/SEEK_HOLE; all of it if unsupported). */
static uint64_t
raw_data_bytes(int fd, uint64_t size)
{
  uint64_t off = 0, total = 0;

  while (off < size) {
    off_t d = lseek(fd, (off_t)off, SEEK_DATA), h;
    if (d == -1)
      return errno == ENXIO ? total : size;
    h = lseek(fd, d, SEEK_HOLE);
    if (h == -1)
      return size;
    total += (uint64_t)(h - d);
    off = (uint64_t)h;
  }
  return total;
}

static void
find_role(const struct cc_template *tm, size_t nt, const struct cc_clone *cl, size_t nc,
          const char *uuid, char *role, size_t len)
{
  size_t i, j;

  role[0] = '\0';
  for (i = 0; i < nt; i++)
    if (tm[i].kind == CC_TEMPLATE_LAYER && strcmp(tm[i].layer, uuid) == 0) {
      snprintf(role, len, "template %s", tm[i].name);
      return;
    }
  for (i = 0; i < nc; i++) {
    if (strcmp(cl[i].top, uuid) == 0) {
      snprintf(role, len, "%s (top)", cl[i].name);
      return;
    }
    for (j = 0; j < cl[i].nsnaps; j++)
      if (strcmp(cl[i].snaps[j].layer, uuid) == 0) {
        snprintf(role, len, "%s@%s", cl[i].name, cl[i].snaps[j].name);
        return;
      }
  }
}

static int
raw_entry(struct cc_pool *p, const char *name, struct cc_layer_info *li)
{
  char path[PATH_MAX];
  struct stat st;
  int fd, r;

  if ((r = pool_remote_path(p, name, path, sizeof path)) < 0)
    return r;
  if (access(path, F_OK) == 0) {
    /* A remote template: its descriptor; nothing of it is on local disk. */
    struct cc_remote_desc d;
    if ((r = cc_template_remote_desc(p, name, &d)) < 0)
      return r;
    snprintf(li->file, sizeof li->file, "images/%s.nbd", name);
    li->raw = 1;
    li->virtual_size = d.size;
    li->allocated_bytes = d.size;
    snprintf(li->role, sizeof li->role, "template %s (remote)", name);
    return 0;
  }
  if ((r = pool_image_path(p, name, path, sizeof path)) < 0)
    return r;
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd == -1 || fstat(fd, &st) == -1) {
    r = cc_error_set(errno, "info: %s: %s", path, strerror(errno));
    if (fd != -1)
      close(fd);
    return r;
  }
  snprintf(li->file, sizeof li->file, "images/%s.raw", name);
  li->raw = 1;
  li->virtual_size = (uint64_t)st.st_size;
  li->allocated_bytes = raw_data_bytes(fd, (uint64_t)st.st_size);
  li->disk_bytes = (uint64_t)st.st_blocks * 512;
  li->created = (int64_t)st.st_mtime;
  snprintf(li->role, sizeof li->role, "template %s", name);
  close(fd);
  return 0;
}

int
cc_pool_backing_chain(struct cc_pool *p, const char *name, struct cc_layer_info **out, size_t *n)
{
  struct cc_template *tm = NULL;
  struct cc_clone *cl = NULL;
  struct cc_layer_info *list = NULL;
  struct pool_target t;
  size_t nt = 0, nc = 0, cnt = 0, cap = 0;
  char uuid[CC_UUID_STR], image[CC_NAME_MAX + 1] = "";
  int r;

  if ((r = pool_resolve(p, "info", name, &t)) < 0)
    return r;
  if ((r = cc_pool_list_templates(p, &tm, &nt)) < 0)
    return r;
  if ((r = cc_pool_list_clones(p, &cl, &nc)) < 0)
    goto out;
  strcpy(uuid, t.layer);
  if (t.kind == CC_EXPORT_TEMPLATE && t.tmpl.kind != CC_TEMPLATE_LAYER)
    strcpy(image, t.tmpl.name), uuid[0] = '\0';
  while (uuid[0] || image[0]) {
    struct cc_layer_info *li;
    if (cnt == cap) {
      struct cc_layer_info *nl = realloc(list, (cap = cap ? cap * 2 : 8) * sizeof *nl);
      if (nl == NULL) {
        r = cc_error_set(ENOMEM, "info: out of memory");
        goto out;
      }
      list = nl;
    }
    if (cnt >= CC_MAX_DEPTH) {
      r = cc_error_set(ELOOP, "info: %s: chain deeper than %d layers (a cycle?)", name,
                       CC_MAX_DEPTH);
      goto out;
    }
    li = &list[cnt++];
    memset(li, 0, sizeof *li);
    if (image[0]) {
      if ((r = raw_entry(p, image, li)) < 0)
        goto out;
      break;
    } else {
      struct ovl_layer *l;
      struct ovl_info info;
      char path[PATH_MAX];
      struct stat st;
      if ((r = pool_open_layer(p, uuid, OVL_RDONLY | OVL_NOLOCK, "info", &l)) < 0)
        goto out;
      ovl_get_info(l, &info);
      ovl_close(l);
      snprintf(li->file, sizeof li->file, "layers/%s.cow", uuid);
      strcpy(li->uuid, uuid);
      li->virtual_size = info.virtual_size;
      li->allocated_bytes = info.allocated_bytes;
      li->zero_bytes = info.zero_bytes;
      li->disk_bytes = info.file_blocks_bytes;
      if (pool_layer_path(p, uuid, path, sizeof path) == 0 && stat(path, &st) == 0)
        li->disk_bytes = (uint64_t)st.st_blocks * 512;
      li->cluster_size = info.cluster_size;
      li->created = (int64_t)(info.create_time_ns / 1000000000ull);
      li->dirty = info.dirty;
      snprintf(li->parent, sizeof li->parent, "%s", info.parent_path);
      find_role(tm, nt, cl, nc, uuid, li->role, sizeof li->role);
      /* The walk follows only links the pool could have written; any other one ends it here
       * (li->parent shows it as stored, and check reports it). */
      (void)pool_parse_parent_link(info.parent_kind, info.parent_path, uuid, image);
    }
  }
  *out = list;
  *n = cnt;
  list = NULL;
out:
  free(list);
  free(tm);
  cc_clone_list_free(cl, nc);
  return r;
}

/* Parent uuid of a layer ("" if it has none or its parent is a raw image). */
static int
layer_parent(struct cc_pool *p, const char *uuid, char parent[CC_UUID_STR], uint64_t *alloc,
             uint64_t *disk)
{
  struct ovl_layer *l;
  struct ovl_info info;
  int r;

  if ((r = pool_open_layer(p, uuid, OVL_RDONLY | OVL_NOLOCK, "snapshot list", &l)) < 0)
    return r;
  ovl_get_info(l, &info);
  ovl_close(l);
  {
    char image[CC_NAME_MAX + 1];
    /* A raw image or a link the pool could not have written: no parent snapshot. */
    if (pool_parse_parent_link(info.parent_kind, info.parent_path, parent, image) < 0)
      parent[0] = '\0';
  }
  if (alloc)
    *alloc = info.allocated_bytes;
  if (disk)
    *disk = info.file_blocks_bytes;
  return 0;
}

/* Index of the snapshot of c whose layer is `uuid` or the nearest ancestor of it, or -1.
 * Ancestors that are no snapshot of c (a promoted template's layer) are walked through. */
static int
nearest_snapshot(struct cc_pool *p, const struct cc_clone *c, const char *uuid)
{
  char cur[CC_UUID_STR];
  int depth;

  snprintf(cur, sizeof cur, "%s", uuid);
  for (depth = 0; cur[0] && depth < CC_MAX_DEPTH; depth++) {
    int i = -1;
    size_t k;
    for (k = 0; k < c->nsnaps; k++)
      if (strcmp(c->snaps[k].layer, cur) == 0)
        i = (int)k;
    if (i >= 0)
      return i;
    if (layer_parent(p, cur, cur, NULL, NULL) < 0)
      return -1;
  }
  return -1;
}

int
cc_pool_snapshot_list(struct cc_pool *p, const char *clone, struct cc_snapshot_info **out,
                      size_t *n)
{
  struct cc_snapshot_info *list;
  struct cc_clone c;
  char parent[CC_UUID_STR];
  size_t i;
  int r, cur;

  if ((r = pool_get_clone(p, "snapshot list", clone, &c)) < 0)
    return r;
  list = calloc(c.nsnaps ? c.nsnaps : 1, sizeof *list);
  if (list == NULL) {
    cc_clone_free(&c);
    return cc_error_set(ENOMEM, "snapshot list: out of memory");
  }
  for (i = 0; i < c.nsnaps; i++) {
    int pi;
    list[i].s = c.snaps[i];
    if ((r = layer_parent(p, c.snaps[i].layer, parent, &list[i].allocated_bytes,
                          &list[i].disk_bytes)) < 0)
      goto fail;
    pi = parent[0] ? nearest_snapshot(p, &c, parent) : -1;
    if (pi >= 0)
      snprintf(list[i].parent, sizeof list[i].parent, "%s", c.snaps[pi].name);
  }
  for (i = 0; i < c.nsnaps; i++) {
    size_t k;
    for (k = 0; k < c.nsnaps; k++)
      if (strcmp(list[k].parent, c.snaps[i].name) == 0)
        list[i].children++;
  }
  if ((r = layer_parent(p, c.top, parent, NULL, NULL)) < 0)
    goto fail;
  cur = parent[0] ? nearest_snapshot(p, &c, parent) : -1;
  if (cur >= 0)
    list[cur].current = 1;
  *out = list;
  *n = c.nsnaps;
  cc_clone_free(&c);
  return 0;

fail:
  free(list);
  cc_clone_free(&c);
  return r;
}
