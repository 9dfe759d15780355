/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: protected templates (POOL.md 3.1.1) and the deep check (POOL.md 7).
 *
 * Design notes
 * ------------
 * A raw template must never change: every clone reads through to it.  Nothing in cowchain
 * opens an image for writing, but root (or a tool run by mistake) can write to images/NAME.raw
 * directly, and every clone on it would silently read the new bytes.  So:
 *
 *   - at import the content hash (hash.c) is computed while the data is copied, and recorded
 *     with the image file's identity: size, mtime (nanoseconds) and inode;
 *   - every open of a chain that ends in a raw image compares that identity with the fstat of
 *     the very fd the chain holds (cc_chain_raw_base): three integers, no I/O.  Any write to
 *     the file changes its mtime, and a replaced file has another inode.  A mismatch refuses
 *     the open, naming the template and the command that checks it;
 *   - `template verify NAME` and `check --deep` re-hash the image.  Equal contents with another
 *     identity (the pool was copied or restored: new inodes, new mtimes) is not a fault: the
 *     new identity is recorded, and opens work again.  Different contents is an error that
 *     only the user can resolve (restore the image, or delete the clones made on it).
 *
 * The identity check is cheap but not proof: `touch -d` can put an mtime back after a write.
 * That is what the deep check is for.  Templates recorded without a hash (a layer template,
 * or imported by an older cowchain) are not checked; `check --deep` says so in a note.
 *
 * Records: the keys `hash`, `mtime` and `inode` of a template record are parsed and written
 * here, so records.c only calls two functions.
 */
#include "pool/internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t
mtime_ns(const struct stat *st)
{
  return (uint64_t)st->st_mtim.tv_sec * UINT64_C(1000000000) + (uint64_t)st->st_mtim.tv_nsec;
}

int
pool_template_key(struct cc_template *t, const char *key, const char *val)
{
  char *end;

  if (strcmp(key, "hash") == 0) {
    if (strncmp(val, "xxh64-64k:", 10) != 0 || strlen(val) != 26 ||
        strspn(val + 10, "0123456789abcdef") != 16)
      return -1;
    snprintf(t->hash, sizeof t->hash, "%s", val);
    return 1;
  }
  if (strcmp(key, "mtime") == 0) {
    unsigned long long s, ns;
    int n = -1;

    if (sscanf(val, "%llu.%9llu%n", &s, &ns, &n) != 2 || n != (int)strlen(val) ||
        strlen(strchr(val, '.') + 1) != 9)
      return -1;
    t->mtime_ns = (uint64_t)s * UINT64_C(1000000000) + ns;
    return 1;
  }
  if (strcmp(key, "inode") == 0) {
    errno = 0;
    t->inode = strtoull(val, &end, 10);
    if (errno || *end || val[0] < '0' || val[0] > '9')
      return -1;
    return 1;
  }
  return 0;
}

void
pool_template_extra(const struct cc_template *t, char *buf, size_t len)
{
  size_t used = strlen(buf);

  if (t->hash[0] && used < len)
    snprintf(buf + used, len - used,
             "hash %s\nmtime %" PRIu64 ".%09" PRIu64 "\ninode %" PRIu64 "\n", t->hash,
             t->mtime_ns / UINT64_C(1000000000), t->mtime_ns % UINT64_C(1000000000), t->inode);
}

void
pool_template_set_identity(struct cc_template *t, const struct stat *st)
{
  t->mtime_ns = mtime_ns(st);
  t->inode = (uint64_t)st->st_ino;
}

/* 2026-01-31T12:00:00.123456789Z: a write within the same second must show. */
static void
iso_ns(uint64_t ns, char *buf, size_t len)
{
  char sec[32];
  size_t n;

  cc_time_format((int64_t)(ns / UINT64_C(1000000000)), CC_TIME_ISO, sec, sizeof sec);
  n = strlen(sec);
  if (n && sec[n - 1] == 'Z')
    sec[n - 1] = 0;
  snprintf(buf, len, "%s.%09uZ", sec, (unsigned)(ns % UINT64_C(1000000000)));
}

int
pool_template_ident_fault(const struct cc_template *t, const struct stat *st, char *msg, size_t len)
{
  char was[40], now[40];

  if (!t->hash[0])
    return 0;
  if ((uint64_t)st->st_size == t->size && mtime_ns(st) == t->mtime_ns &&
      (uint64_t)st->st_ino == t->inode)
    return 0;
  iso_ns(t->mtime_ns, was, sizeof was);
  iso_ns(mtime_ns(st), now, sizeof now);
  if ((uint64_t)st->st_size != t->size)
    snprintf(msg, len,
             "images/%s.raw changed since it was imported (size %llu, recorded %llu); run "
             "'cowchain template verify %s' to compare its contents with the recorded hash",
             t->name, (unsigned long long)st->st_size, (unsigned long long)t->size, t->name);
  else if ((uint64_t)st->st_ino != t->inode)
    snprintf(msg, len,
             "images/%s.raw is not the file that was imported (inode %llu, recorded %llu); run "
             "'cowchain template verify %s' to compare its contents with the recorded hash",
             t->name, (unsigned long long)st->st_ino, (unsigned long long)t->inode, t->name);
  else
    snprintf(msg, len,
             "images/%s.raw was modified since it was imported (mtime %s, recorded %s); run "
             "'cowchain template verify %s' to compare its contents with the recorded hash",
             t->name, now, was, t->name);
  return 1;
}

int
pool_check_chain_base(struct cc_pool *p, struct cc_chain *c, const char *export_name)
{
  char path[PATH_MAX], name[CC_NAME_MAX + 1], msg[1024];
  const char *base, *dot;
  struct cc_template t;
  struct stat st;
  int r = cc_chain_raw_base(c, path, sizeof path, &st);

  if (r <= 0)
    return r;
  /* The chain was opened confined to the pool, so a raw bottom is images/NAME.raw. */
  base = strrchr(path, '/');
  base = base ? base + 1 : path;
  dot = strrchr(base, '.');
  if (!dot || strcmp(dot, ".raw") != 0 || (size_t)(dot - base) > CC_NAME_MAX)
    return 0;
  snprintf(name, sizeof name, "%.*s", (int)(dot - base), base);
  if (pool_get_template(p, "open", name, &t) < 0)
    return 0; /* no record: check reports the orphan image */
  if (pool_template_ident_fault(&t, &st, msg, sizeof msg))
    return cc_error_set(EUCLEAN, "open: %s: template %s: %s", export_name, name, msg);
  return 0;
}

int
cc_template_verify(struct cc_pool *p, const char *name, cc_progress_fn progress, void *opaque,
                   int *updated)
{
  char path[PATH_MAX], got[POOL_HASH_STR], msg[1024];
  struct cc_template t, again;
  struct stat st;
  int fd, r;

  *updated = 0;
  if ((r = pool_get_template(p, "template verify", name, &t)) < 0)
    return r;
  if (t.kind != CC_TEMPLATE_RAW || !t.hash[0])
    return cc_error_set(
        ENOTSUP, "template verify: %s: no content hash recorded (%s); nothing to compare", name,
        t.kind != CC_TEMPLATE_RAW ? "a layer template" : "imported by a cowchain without hashes");
  if ((r = pool_image_path(p, name, path, sizeof path)) < 0)
    return r;
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
    return cc_error_set(errno, "template verify: %s: %s: %s", name, path, strerror(errno));
  if (fstat(fd, &st) == -1) {
    r = cc_error_set(errno, "template verify: %s: %s: %s", name, path, strerror(errno));
    close(fd);
    return r;
  }
  r = pool_hash_fd(fd, path, got, progress, opaque);
  close(fd);
  if (r < 0)
    return r;
  if (strcmp(got, t.hash) != 0 || (uint64_t)st.st_size != t.size)
    return cc_error_set(EUCLEAN,
                        "template verify: %s: images/%s.raw CHANGED since it was imported "
                        "(content hash %s, recorded %s): every clone on it now reads bytes it "
                        "was not made from; restore the image from a copy, or delete its clones",
                        name, name, got, t.hash);
  if (!pool_template_ident_fault(&t, &st, msg, sizeof msg))
    return 0;
  /* Same bytes, another identity (the pool was copied or restored): record the new one, under
   * the pool lock, if the record is still the one we checked against. */
  if ((r = pool_lock(p, "template verify")) < 0)
    return r;
  if ((r = pool_get_template(p, "template verify", name, &again)) == 0 &&
      strcmp(again.hash, t.hash) == 0) {
    pool_template_set_identity(&again, &st);
    if ((r = pool_write_template(p, &again)) == 0)
      *updated = 1;
  }
  pool_unlock(p);
  return r;
}

/* check --deep ------------------------------------------------------------------------------ */

struct deep {
  cc_report_fn report;
  void *opaque;
  cc_progress_fn progress;
  void *popaque;
  struct cc_check_summary *sum;
};

static void __attribute__((format(printf, 3, 4)))
deep_say(struct deep *d, int severity, const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  pool_vreport(d->report, d->opaque, d->sum, severity, fmt, ap);
  va_end(ap);
}

/* Read every allocated byte of layer `uuid`: media errors and truncation show up here. */
static void
deep_layer(struct cc_pool *p, struct deep *d, const char *uuid)
{
  const size_t step = 1u << 20;
  struct ovl_extent ext[64];
  struct ovl_layer *l = NULL;
  uint64_t pos = 0, size;
  char *buf;
  int n;

  if (pool_open_layer(p, uuid, OVL_RDONLY | OVL_NOLOCK, "check --deep", &l) < 0) {
    deep_say(d, 2, "layer %s: %s", uuid, cc_error_get());
    return;
  }
  if ((buf = malloc(step)) == NULL) {
    ovl_close(l);
    deep_say(d, 2, "layer %s: out of memory", uuid);
    return;
  }
  size = ovl_virtual_size(l);
  while (pos < size) {
    if ((n = ovl_map(l, pos, size - pos, ext, 64)) <= 0) {
      deep_say(d, 2, "layer %s: map: %s", uuid, n < 0 ? cc_error_get() : "ends early");
      break;
    }
    for (int k = 0; k < n; k++) {
      for (uint64_t o = 0; ext[k].state == OVL_DATA && o < ext[k].length; o += step) {
        size_t len = ext[k].length - o < step ? (size_t)(ext[k].length - o) : step;
        ssize_t got = pread(ovl_fd(l), buf, len, (off_t)(ext[k].phys + o));

        if (got != (ssize_t)len) {
          deep_say(d, 2, "layer %s: data at offset %llu cannot be read: %s", uuid,
                   (unsigned long long)(ext[k].offset + o),
                   got < 0 ? strerror(errno) : "end of file (truncated)");
          goto out;
        }
      }
      pos = ext[k].offset + ext[k].length;
    }
    if (d->progress)
      d->progress(d->popaque, pos, size);
  }
out:
  free(buf);
  ovl_close(l);
}

/* Re-hash raw template `tname`, reporting the outcome. */
static void
deep_template(struct cc_pool *p, struct deep *d, const struct cc_template *t)
{
  int updated;

  if (t->kind != CC_TEMPLATE_RAW)
    return;
  if (!t->hash[0]) {
    deep_say(d, 0, "template %s: no content hash recorded (imported before hashes)", t->name);
    return;
  }
  if (cc_template_verify(p, t->name, d->progress, d->popaque, &updated) < 0)
    deep_say(d, 2, "%s", cc_error_get());
  else
    deep_say(d, 0, "template %s: contents match the hash recorded at import%s", t->name,
             updated ? " (new file identity recorded)" : "");
}

int
cc_pool_check_deep(struct cc_pool *p, const char *name, int repair, cc_report_fn report,
                   void *opaque, cc_progress_fn progress, void *popaque,
                   struct cc_check_summary *sum)
{
  struct cc_check_summary pre = {0};
  struct deep d = {report, opaque, progress, popaque, &pre};
  struct pool_target t;
  struct pool_graph g;
  const char *image = NULL;
  size_t i;
  int r;

  if (name && (r = pool_resolve(p, "check", name, &t)) < 0)
    return r;
  if ((r = pool_graph_load(p, &g)) < 0)
    return r;
  /* Templates first: a copied pool's images get their new identity recorded (contents
   * permitting) before the plain checks compare identities. */
  if (!name) {
    for (i = 0; i < g.ntmpls; i++)
      deep_template(p, &d, &g.tmpls[i]);
  } else {
    struct pool_node *n = t.layer[0] ? pool_graph_find(&g, t.layer) : NULL;

    if (t.kind == CC_EXPORT_TEMPLATE && t.tmpl.kind == CC_TEMPLATE_RAW)
      image = t.tmpl.name;
    for (size_t depth = 0; n && !n->bad && depth <= g.n; depth++) {
      if (n->parent_kind == OVL_PARENT_RAW)
        image = n->parent_image;
      n = n->parent_kind == OVL_PARENT_LAYER ? pool_graph_find(&g, n->parent) : NULL;
    }
    for (i = 0; image && i < g.ntmpls; i++)
      if (strcmp(g.tmpls[i].name, image) == 0)
        deep_template(p, &d, &g.tmpls[i]);
  }
  r = cc_pool_check(p, name, repair, report, opaque, sum); /* resets *sum */
  sum->errors += pre.errors;
  if (r < 0 && r != -EUCLEAN) {
    pool_graph_free(&g);
    return r;
  }
  /* Then every byte of the layers' data: all readable layers, or NAME's chain, top first. */
  d.sum = sum;
  if (!name) {
    for (i = 0; i < g.n; i++)
      if (!g.nodes[i].bad)
        deep_layer(p, &d, g.nodes[i].uuid);
  } else {
    struct pool_node *n = t.layer[0] ? pool_graph_find(&g, t.layer) : NULL;

    for (size_t depth = 0; n && !n->bad && depth <= g.n; depth++) {
      deep_layer(p, &d, n->uuid);
      n = n->parent_kind == OVL_PARENT_LAYER ? pool_graph_find(&g, n->parent) : NULL;
    }
  }
  pool_graph_free(&g);
  if (sum->errors)
    return cc_error_set(EUCLEAN, "check: %s: %u error%s found", name ? name : cc_pool_dir(p),
                        sum->errors, sum->errors == 1 ? "" : "s");
  return 0;
}
