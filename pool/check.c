/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: check (and repair) and du.
 *
 * Design notes
 * ------------
 * check looks at three things:
 *
 *   - records: every layer and image a record names exists, opens, and has the size the
 *     record says; a clone's top is nobody's parent (a layer with children is frozen);
 *   - chains: every layer from each checked record down to the bottom passes ovl_check (the
 *     full header and map validation) and its parent link names an existing parent of the
 *     recorded size; a cycle or a missing parent is an error;
 *   - leftovers: layers and images no record reaches, files in tmp/ whose creating process is
 *     gone, and layers with leaked space or a stale dirty bit;
 *   - access (whole-pool checks only): every directory and file of the pool whose mode lets
 *     more users in than the pool's mode (POOL.md section 1.1), or whose group is not the
 *     pool's group, is a warning; --repair takes the extra bits away and sets the group.
 *
 * Errors are inconsistencies that lose or misread data; leftovers ("leaks") are what a crash
 * may leave by design (POOL.md section 5) and cost only space.  --repair removes leftovers and
 * reclaims leaked space (holding the pool lock, so no operation is between its steps); it never
 * touches an error, because the right fix needs a human.  A layer a server holds open is
 * reported and skipped: its dirty bit is expected, not a leak.
 *
 * du charges each layer's and image's disk space to every template and clone that reaches it:
 * to its "own" bytes if only one does, to "shared" otherwise.
 */
#include "pool/internal.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct checker {
  struct cc_pool *p;
  struct pool_graph g;
  int repair;
  cc_report_fn report;
  void *opaque;
  struct cc_check_summary *sum;
  int walk; /* number of the current check_chain walk; node->mark is the walk that reached it */
};

static void say(struct checker *k, int severity, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

void
pool_vreport(cc_report_fn report, void *opaque, struct cc_check_summary *sum, int severity,
             const char *fmt, va_list ap)
{
  char msg[1536];

  vsnprintf(msg, sizeof msg, fmt, ap);
  if (severity == 2)
    sum->errors++;
  else if (severity == 1)
    sum->leaks++;
  else if (severity == 3)
    sum->warnings++;
  if (report)
    report(opaque, severity, msg);
}

static void
say(struct checker *k, int severity, const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  pool_vreport(k->report, k->opaque, k->sum, severity, fmt, ap);
  va_end(ap);
}

/* ovl_check one layer (check_chain calls it once per layer), unless a server holds it. */
static void
check_layer(struct checker *k, struct pool_node *n)
{
  struct ovl_check_result res;
  struct ovl_layer *l;
  char path[PATH_MAX];
  int r;

  k->sum->layers_checked++;
  if (pool_layer_path(k->p, n->uuid, path, sizeof path) < 0)
    return;
  if (n->bad) {
    /* A layer a server is writing was read without a lock: say so rather than cry corrupt. */
    r = ovl_open(path, OVL_RDONLY, &l);
    if (r == -EBUSY) {
      char holder[128];
      ovl_lock_holder(path, holder, sizeof holder);
      say(k, 0, "layer %s: in use by %s; skipped", n->uuid, holder);
    } else {
      if (r == 0)
        ovl_close(l);
      say(k, 2, "%s", n->error);
    }
    return;
  }
  /* A shared lock fails only if a server has it open for writing: then dirty is expected. */
  r = ovl_open(path, OVL_RDONLY, &l);
  if (r == -EBUSY) {
    char holder[128];
    ovl_lock_holder(path, holder, sizeof holder);
    say(k, 0, "layer %s: in use by %s; skipped", n->uuid, holder);
    return;
  }
  if (r == 0)
    ovl_close(l);
  r = ovl_check(path, k->repair, &res);
  if (r == -EBUSY) {
    say(k, 0, "layer %s: in use; not repaired", n->uuid);
    r = ovl_check(path, 0, &res);
  }
  if (r < 0) {
    say(k, 2, "layer %s: %s", n->uuid, cc_error_get());
    return;
  }
  if (res.corrupt)
    say(k, 2, "layer %s: marked corrupt", n->uuid);
  if (res.dirty || res.leaked_bytes) {
    say(k, 1, "layer %s: %s%s%llu leaked bytes%s", n->uuid,
        res.dirty ? "not closed cleanly (dirty)" : "", res.dirty ? ", " : "",
        (unsigned long long)res.leaked_bytes, res.repaired ? " (repaired)" : "");
    if (res.repaired)
      k->sum->repaired++;
  }
}

/* Check the chain from layer `uuid` down; `what` names the record for messages.
 *
 * Each walk has its own number, and a layer's mark is the walk that first reached it.  Meeting
 * a layer marked by this walk is a cycle; one marked by an earlier walk was checked with
 * everything below it (any fault there, a cycle included, already reported once).  The cycle
 * test must come first: checking "marked at all" alone stops at the first repeated layer of a
 * cycle and reports nothing. */
static void
check_chain(struct checker *k, const char *uuid, const char *what)
{
  struct pool_node *n = pool_graph_find(&k->g, uuid), *parent;
  int walk = ++k->walk;
  char path[PATH_MAX];
  struct stat st;

  if (n == NULL) {
    say(k, 2, "%s: layer %s is missing", what, uuid);
    return;
  }
  while (n) {
    if (n->mark == walk) {
      say(k, 2, "%s: cycle in the parent links at layer %s", what, n->uuid);
      return;
    }
    if (n->mark) /* reached by an earlier walk: checked already, with everything below it */
      return;
    n->mark = walk;
    check_layer(k, n);
    if (n->bad)
      return;
    switch (n->parent_kind) {
    case OVL_PARENT_LAYER:
      parent = pool_graph_find(&k->g, n->parent);
      if (parent == NULL) {
        say(k, 2, "%s: layer %s: parent layer %s is missing", what, n->uuid, n->parent);
        return;
      }
      if (!parent->bad && parent->virtual_size != n->parent_size)
        say(k, 2, "%s: layer %s: parent %s changed size (%llu, linked at %llu)", what, n->uuid,
            parent->uuid, (unsigned long long)parent->virtual_size,
            (unsigned long long)n->parent_size);
      n = parent;
      break;
    case OVL_PARENT_RAW:
      if (pool_image_path(k->p, n->parent_image, path, sizeof path) < 0)
        return;
      if (stat(path, &st) == -1)
        say(k, 2, "%s: layer %s: image %s: %s", what, n->uuid, path, strerror(errno));
      else if ((uint64_t)st.st_size != n->parent_size)
        say(k, 2, "%s: layer %s: image images/%s.raw changed size", what, n->uuid, n->parent_image);
      return;
    default:
      return;
    }
  }
}

static void
check_template(struct checker *k, const struct cc_template *t)
{
  char what[CC_NAME_MAX + 16], path[PATH_MAX], msg[1024];
  struct stat st;

  snprintf(what, sizeof what, "template %s", t->name);
  if (t->kind == CC_TEMPLATE_LAYER) {
    struct pool_node *n = pool_graph_find(&k->g, t->layer);
    check_chain(k, t->layer, what);
    if (n && !n->bad && n->virtual_size != t->size)
      say(k, 2, "%s: layer size %llu, record says %llu", what, (unsigned long long)n->virtual_size,
          (unsigned long long)t->size);
    return;
  }
  if (pool_image_path(k->p, t->name, path, sizeof path) < 0)
    return;
  if (stat(path, &st) == -1)
    say(k, 2, "%s: %s: %s", what, path, strerror(errno));
  else if ((uint64_t)st.st_size != t->size)
    say(k, 2, "%s: image size %llu, record says %llu", what, (unsigned long long)st.st_size,
        (unsigned long long)t->size);
  else if (pool_template_ident_fault(t, &st, msg, sizeof msg))
    say(k, 2, "%s: %s", what, msg);
  else if (st.st_mode & 0222) {
    int fixed = k->repair && chmod(path, (mode_t)(k->p->file_mode & ~0222u)) == 0;
    say(k, 1, "%s: image is writable (mode %o); templates must be read-only%s", what,
        st.st_mode & 0777, fixed ? " (repaired)" : "");
    if (fixed)
      k->sum->repaired++;
  }
}

static void
check_clone(struct checker *k, const struct cc_clone *c, const char *only_snap)
{
  char what[2 * CC_NAME_MAX + 16];
  size_t i, j;

  if (!only_snap) {
    snprintf(what, sizeof what, "clone %s", c->name);
    check_chain(k, c->top, what);
    for (i = 0; i < k->g.n; i++)
      if (k->g.nodes[i].parent_kind == OVL_PARENT_LAYER && k->g.nodes[i].live &&
          strcmp(k->g.nodes[i].parent, c->top) == 0)
        say(k, 2, "%s: its writable top %s is the parent of layer %s", what, c->top,
            k->g.nodes[i].uuid);
  }
  for (j = 0; j < c->nsnaps; j++) {
    if (only_snap && strcmp(c->snaps[j].name, only_snap) != 0)
      continue;
    snprintf(what, sizeof what, "snapshot %s@%s", c->name, c->snaps[j].name);
    check_chain(k, c->snaps[j].layer, what);
  }
}

/* Leftovers anywhere in the pool: unreachable layers and images, stale tmp/ files. */
static void
check_leftovers(struct checker *k)
{
  char path[PATH_MAX];
  struct dirent *d;
  size_t i;
  DIR *dir;

  for (i = 0; i < k->g.n; i++)
    if (!k->g.nodes[i].live)
      say(k, 1, "layer %s: no record reaches it (left by an interrupted or finished operation)",
          k->g.nodes[i].uuid);
  if (pool_path(k->p, path, sizeof path, "tmp") == 0 && (dir = opendir(path)) != NULL) {
    while ((d = readdir(dir)) != NULL) {
      long pid = 0;
      const char *dash = strchr(d->d_name, '-');
      if (d->d_name[0] == '.')
        continue;
      /* An intent is a commit point, never a leftover: pool_lock rolled every one forward, so
       * one still here could not be (live.c). */
      if (strncmp(d->d_name, "intent-", 7) == 0) {
        say(k, 2, "tmp/%s: a snapshot intent that could not be rolled forward", d->d_name);
        continue;
      }
      /* tmp/PREFIX-PID-N...: a file of a running operation is not stale. */
      if (dash)
        pid = strtol(dash + 1, NULL, 10);
      if (pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM))
        continue;
      say(k, 1, "tmp/%s: stale file of an interrupted operation%s", d->d_name,
          k->repair ? " (removed)" : "");
      if (k->repair) {
        char f[PATH_MAX];
        if (pool_path(k->p, f, sizeof f, "tmp/%s", d->d_name) == 0 && unlink(f) == 0)
          k->sum->repaired++;
      }
    }
    closedir(dir);
  }
}

/* One file or directory of the pool against the pool's mode (a warning if looser). */
static void
check_mode(struct checker *k, const char *path, const char *shown)
{
  unsigned allowed, extra;
  struct stat st;

  if (lstat(path, &st) == -1 || S_ISLNK(st.st_mode))
    return; /* symlinks have no mode of their own; layers/ ones are errors elsewhere */
  allowed = pool_allowed_mode(k->p, st.st_mode);
  extra = (unsigned)st.st_mode & 0777u & ~allowed;
  if (extra) {
    int fixed = k->repair && chmod(path, (mode_t)(st.st_mode & 07777u & ~extra)) == 0;
    say(k, 3, "%s: mode %03o is looser than the pool's %03o (%s)%s", shown,
        (unsigned)st.st_mode & 0777u, allowed,
        k->p->gid == (gid_t)-1 ? "owner-only" : "group-readable", fixed ? " (repaired)" : "");
    if (fixed)
      k->sum->repaired++;
  }
  if (k->p->gid != (gid_t)-1 && st.st_gid != k->p->gid) {
    int fixed = k->repair && lchown(path, (uid_t)-1, k->p->gid) == 0;
    say(k, 3, "%s: group %u is not the pool's group %s%s", shown, (unsigned)st.st_gid, k->p->group,
        fixed ? " (repaired)" : "");
    if (fixed)
      k->sum->repaired++;
  }
}

/* The pool directory, everything in it and everything in its subdirectories. */
static void
check_modes(struct checker *k)
{
  static const char *const subs[] = {"", "images", "layers", "templates", "clones", "tmp"};
  char dirpath[PATH_MAX], path[PATH_MAX], shown[PATH_MAX];
  struct dirent *d;
  size_t i;
  DIR *dir;

  check_mode(k, k->p->dir, k->p->dir);
  for (i = 0; i < sizeof subs / sizeof subs[0]; i++) {
    if (pool_path(k->p, dirpath, sizeof dirpath, "%s", subs[i]) < 0 ||
        (dir = opendir(dirpath)) == NULL)
      continue;
    while ((d = readdir(dir)) != NULL) {
      if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
        continue;
      /* Top level: the subdirectories get their own pass below (and are checked there). */
      if (pool_path(k->p, path, sizeof path, "%s%s%s", subs[i], i ? "/" : "", d->d_name) < 0)
        continue;
      snprintf(shown, sizeof shown, "%s%s%s", subs[i], i ? "/" : "", d->d_name);
      check_mode(k, path, shown);
    }
    closedir(dir);
  }
}

int
cc_pool_check(struct cc_pool *p, const char *name, int repair, cc_report_fn report, void *opaque,
              struct cc_check_summary *sum)
{
  struct checker k = {.p = p, .repair = repair, .report = report, .opaque = opaque, .sum = sum};
  struct pool_target t;
  size_t i;
  int r;

  memset(sum, 0, sizeof *sum);
  if (name && (r = pool_resolve(p, "check", name, &t)) < 0)
    return r;
  /* The lock makes "no record reaches it" mean "left over", not "being created". */
  if ((r = pool_lock(p, "check")) < 0)
    return r;
  if ((r = pool_graph_load(p, &k.g)) < 0)
    goto out;
  for (i = 0; i < k.g.ntmpls; i++)
    if (!name || (t.kind == CC_EXPORT_TEMPLATE && strcmp(k.g.tmpls[i].name, t.name) == 0))
      check_template(&k, &k.g.tmpls[i]);
  for (i = 0; i < k.g.nclones; i++)
    if (!name || (t.kind != CC_EXPORT_TEMPLATE && strcmp(k.g.clones[i].name, t.name) == 0))
      check_clone(&k, &k.g.clones[i], name && t.kind == CC_EXPORT_SNAPSHOT ? t.snap : NULL);
  check_leftovers(&k);
  if (!name)
    check_modes(&k);
  if (repair && sum->errors == 0) {
    int removed = pool_collect_garbage(p, &k.g);
    if (removed > 0)
      sum->repaired += (unsigned)removed;
  }
  if (sum->errors)
    r = cc_error_set(EUCLEAN, "check: %s: %u error%s found", name ? name : cc_pool_dir(p),
                     sum->errors, sum->errors == 1 ? "" : "s");
out:
  pool_graph_free(&k.g);
  pool_unlock(p);
  return r;
}

/* ---- du ---------------------------------------------------------------------------------- */

struct du_image {
  char name[CC_NAME_MAX + 1];
  uint64_t disk;
  unsigned users;
  int mark;
};

static void
du_walk(struct pool_graph *g, const char *uuid, struct du_image *imgs, size_t nimg)
{
  struct pool_node *n = pool_graph_find(g, uuid);
  size_t steps = 0, i;

  while (n && !n->mark && steps++ <= g->n) {
    n->mark = 1;
    if (n->parent_kind == OVL_PARENT_RAW) {
      for (i = 0; i < nimg; i++)
        if (strcmp(imgs[i].name, n->parent_image) == 0)
          imgs[i].mark = 1;
      return;
    }
    if (n->parent_kind != OVL_PARENT_LAYER)
      return;
    n = pool_graph_find(g, n->parent);
  }
}

/* Mark everything entry e (template index e, or clone e - ntmpls) reaches. */
static void
du_mark(struct pool_graph *g, size_t e, struct du_image *imgs, size_t nimg)
{
  size_t i;

  for (i = 0; i < g->n; i++)
    g->nodes[i].mark = 0;
  for (i = 0; i < nimg; i++)
    imgs[i].mark = 0;
  if (e < g->ntmpls) {
    const struct cc_template *t = &g->tmpls[e];
    if (t->kind == CC_TEMPLATE_LAYER)
      du_walk(g, t->layer, imgs, nimg);
    else
      for (i = 0; i < nimg; i++)
        if (strcmp(imgs[i].name, t->name) == 0)
          imgs[i].mark = 1;
  } else {
    const struct cc_clone *c = &g->clones[e - g->ntmpls];
    du_walk(g, c->top, imgs, nimg);
    for (i = 0; i < c->nsnaps; i++)
      du_walk(g, c->snaps[i].layer, imgs, nimg);
  }
}

static uint64_t
dir_bytes(struct cc_pool *p, const char *sub)
{
  char path[PATH_MAX], f[PATH_MAX];
  uint64_t total = 0;
  struct dirent *d;
  struct stat st;
  DIR *dir;

  if (pool_path(p, path, sizeof path, "%s", sub) < 0 || (dir = opendir(path)) == NULL)
    return 0;
  while ((d = readdir(dir)) != NULL)
    if (d->d_name[0] != '.' && pool_path(p, f, sizeof f, "%s/%s", sub, d->d_name) == 0 &&
        lstat(f, &st) == 0 && S_ISREG(st.st_mode))
      total += (uint64_t)st.st_blocks * 512;
  closedir(dir);
  return total;
}

int
cc_pool_du(struct cc_pool *p, struct cc_du *out)
{
  struct pool_graph g;
  struct du_image *imgs = NULL;
  unsigned *users = NULL;
  size_t nimg = 0, ne, e, i;
  int r;

  memset(out, 0, sizeof *out);
  if ((r = pool_graph_load(p, &g)) < 0)
    return r;
  ne = g.ntmpls + g.nclones;
  imgs = calloc(g.ntmpls + 1, sizeof *imgs);
  users = calloc(g.n + 1, sizeof *users);
  out->entries = calloc(ne + 1, sizeof *out->entries);
  if (imgs == NULL || users == NULL || out->entries == NULL) {
    r = cc_error_set(ENOMEM, "du: out of memory");
    goto fail;
  }
  for (i = 0; i < g.ntmpls; i++) {
    char path[PATH_MAX];
    struct stat st;
    if (g.tmpls[i].kind != CC_TEMPLATE_RAW)
      continue;
    snprintf(imgs[nimg].name, sizeof imgs[nimg].name, "%s", g.tmpls[i].name);
    if (pool_image_path(p, g.tmpls[i].name, path, sizeof path) == 0 && stat(path, &st) == 0)
      imgs[nimg].disk = (uint64_t)st.st_blocks * 512;
    nimg++;
  }
  /* Pass 1: how many entries reach each layer and image. */
  for (e = 0; e < ne; e++) {
    du_mark(&g, e, imgs, nimg);
    for (i = 0; i < g.n; i++)
      users[i] += (unsigned)g.nodes[i].mark;
    for (i = 0; i < nimg; i++)
      imgs[i].users += (unsigned)imgs[i].mark;
  }
  /* Pass 2: charge each entry. */
  for (e = 0; e < ne; e++) {
    struct cc_du_entry *d = &out->entries[e];
    du_mark(&g, e, imgs, nimg);
    if (e < g.ntmpls) {
      snprintf(d->name, sizeof d->name, "%s", g.tmpls[e].name);
      d->template = 1;
      d->virtual_size = g.tmpls[e].size;
    } else {
      snprintf(d->name, sizeof d->name, "%s", g.clones[e - g.ntmpls].name);
      d->virtual_size = g.clones[e - g.ntmpls].size;
    }
    for (i = 0; i < g.n; i++)
      if (g.nodes[i].mark)
        *(users[i] > 1 ? &d->shared_bytes : &d->own_bytes) += g.nodes[i].disk_bytes;
    for (i = 0; i < nimg; i++)
      if (imgs[i].mark)
        *(imgs[i].users > 1 ? &d->shared_bytes : &d->own_bytes) += imgs[i].disk;
    out->logical += d->virtual_size;
  }
  out->n = ne;
  out->physical = dir_bytes(p, "images") + dir_bytes(p, "layers") + dir_bytes(p, "tmp");
  free(imgs);
  free(users);
  pool_graph_free(&g);
  return 0;

fail:
  free(imgs);
  free(users);
  free(out->entries);
  out->entries = NULL;
  pool_graph_free(&g);
  return r;
}

void
cc_du_free(struct cc_du *du)
{
  free(du->entries);
  du->entries = NULL;
  du->n = 0;
}
