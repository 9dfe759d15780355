/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: opening a chain and validating every parent link.
 *
 * Design notes
 * ------------
 * A chain is opened from its top file down.  A writable top (CC_RDWR) is opened exclusively
 * and stays with the chain; everything below it is the *frozen part*, which lives in a shared
 * resolution index (index.c) found in, or added to, the registry (registry.c).  A read-only
 * chain is all frozen part: its top file is the index's topmost file.
 *
 * Validation follows docs/FORMAT.md section 4.1 for every link: the parent exists, is a layer
 * with the recorded uuid (kind LAYER) or a raw image (kind RAW), and still has the recorded
 * size; a child is never smaller than its parent; no file appears twice (cycle, detected by
 * (st_dev, st_ino) *before* the file is opened, so a cycle through the exclusively locked
 * writable top is reported as a cycle, not as a lock conflict); at most CC_MAX_DEPTH files.
 * A fault is reported as "open: CHILD: parent RECORDED-PATH: what is wrong".
 *
 * A registry hit is checked against the same key the walk would check (identity, uuid, size),
 * so reusing an index is exactly as safe as re-validating the chain: the index holds every
 * frozen file open and locked shared, so none of them can change while it exists.
 *
 * Raw images are never probed for a header: a raw image's first bytes are guest data.  A file
 * is raw only because a parent link says so, or because the caller passed CC_RAW.
 *
 * Confinement (cc_chain_open_within): each file's realpath must lie under the canonical root,
 * checked right before the file is opened.  An index remembers the root it was checked
 * against; a registry hit from an index built without that root is checked layer by layer.
 * A process that can swap files in the directory between check and open could still win the
 * race: the root is meant to be writable only by the user opening the chain.
 *
 * File descriptors: a chain of N layers holds N fds (once per distinct frozen part), so the
 * first open raises RLIMIT_NOFILE's soft limit to the hard limit.
 */
#include "chain/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"

static size_t max_depth = CC_MAX_DEPTH;
static atomic_ullong index_builds; /* testing.h */

/* One parent link to follow: the file `path` as the header of `child` describes it. */
struct link {
  const char *child; /* the layer whose header names this file; NULL for a read-only top */
  char rel[OVL_MAX_PARENT_PATH + 1]; /* the parent path as recorded */
  char *path;                        /* resolved path (owned until moved into a cc_frozen) */
  enum ovl_parent_kind kind;
  int checked;                /* uuid/size below were recorded by the child: check them */
  uint8_t uuid[OVL_UUID_LEN]; /* LAYER */
  uint64_t size;
  uint64_t child_size;
};

struct ident {
  dev_t dev;
  ino_t ino;
};

static pthread_once_t nofile_once = PTHREAD_ONCE_INIT;

static void
raise_nofile(void)
{
  struct rlimit rl;

  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
      cc_log("cannot raise the open file limit (%m): deep chains may fail with EMFILE");
  }
}

/* "open: CHILD: parent REL: reason", or "open: PATH: reason" for the top of a chain. */
static int __attribute__((format(printf, 3, 4)))
link_error(const struct link *lk, int err, const char *fmt, ...)
{
  char reason[1536];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  if (lk->child)
    return cc_error_set(err, "open: %s: parent %s: %s", lk->child, lk->rel, reason);
  return cc_error_set(err, "open: %s: %s", lk->path, reason);
}

/* The parent path `rel` resolved against the directory of `child`.  Deep chains with "../"
 * links would grow the joined path; past PATH_MAX / 2 the directory is canonicalized. */
char *
cc_join_parent(const char *child, const char *rel)
{
  const char *slash = strrchr(child, '/');
  size_t dlen = slash ? (size_t)(slash - child) : 1;
  char *dir, *out = NULL;

  if (rel[0] == '/')
    return strdup(rel);
  if (slash && dlen == 0)
    dlen = 1; /* a layer in "/" */
  dir = slash ? strndup(child, dlen) : strdup(".");
  if (!dir)
    return NULL;
  if (strlen(dir) + strlen(rel) + 2 > PATH_MAX / 2) {
    char *canon = realpath(dir, NULL);

    if (canon) {
      free(dir);
      dir = canon;
    }
  }
  if (asprintf(&out, "%s%s%s", dir, strcmp(dir, "/") ? "/" : "", rel) < 0)
    out = NULL;
  free(dir);
  return out;
}

/* Fill `lk` with the parent link that `child`'s header records; -ENOMEM if the path cannot be
 * built. */
static int
link_from_header(struct link *lk, const char *child, const struct ovl_info *info)
{
  lk->child = child;
  snprintf(lk->rel, sizeof lk->rel, "%s", info->parent_path);
  lk->kind = info->parent_kind;
  lk->checked = 1;
  memcpy(lk->uuid, info->parent_uuid, OVL_UUID_LEN);
  lk->size = info->parent_size;
  lk->child_size = info->virtual_size;
  lk->path = cc_join_parent(child, info->parent_path);
  return lk->path ? 0 : -ENOMEM;
}

/* Take a shared OFD lock on a raw image, as ovl_open does for layers, so no writer (a pool
 * tool, another nbdkit) can open it while a chain reads it. */
static int
lock_raw_shared(const struct link *lk, int fd)
{
  struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET};
  char holder[256];

  if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
    return 0;
  if (errno != EAGAIN && errno != EACCES)
    return 0; /* no OFD locks on this file system: templates are read-only anyway */
  ovl_lock_holder(lk->path, holder, sizeof holder);
  return link_error(lk, EBUSY, "locked for writing by %s", holder);
}

static int
open_raw(const struct link *lk, struct cc_frozen *f)
{
  struct stat st;
  int r;

  f->fd = open(lk->path, O_RDONLY | O_CLOEXEC);
  if (f->fd < 0)
    return link_error(lk, errno, "%s", strerror(errno));
  if (fstat(f->fd, &st) < 0)
    return link_error(lk, errno, "fstat: %s", strerror(errno));
  if (S_ISREG(st.st_mode)) {
    f->size = (uint64_t)st.st_size;
  } else if (S_ISBLK(st.st_mode)) {
    off_t end = lseek(f->fd, 0, SEEK_END);

    if (end < 0)
      return link_error(lk, errno, "size: %s", strerror(errno));
    f->size = (uint64_t)end;
  } else {
    return link_error(lk, EINVAL, "not a regular file or block device");
  }
  f->dev = st.st_dev;
  f->ino = st.st_ino;
  f->st_size = (uint64_t)st.st_size;
  f->mtime = st.st_mtim;
  f->ctime = st.st_ctim;
  if ((r = lock_raw_shared(lk, f->fd)) < 0)
    return r;
  return 0;
}

/* A remote bottom: the descriptor file is read now, the remote is reached later (remote.c). */
static int
open_remote(const struct link *lk, struct cc_frozen *f)
{
  struct stat st;
  int fd = open(lk->path, O_RDONLY | O_CLOEXEC), r;

  if (fd < 0)
    return link_error(lk, errno, "%s", strerror(errno));
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return link_error(lk, EINVAL, "not a regular file (a remote descriptor)");
  }
  r = cc_remote_open(lk->path, fd, &f->remote);
  close(fd);
  if (r < 0)
    return r;
  f->fd = -1;
  f->size = cc_remote_size(f->remote);
  f->dev = st.st_dev;
  f->ino = st.st_ino;
  /* The descriptor is the remote bottom's identity in an idle index (registry.c revalidates
   * it by path; the remote's own fingerprint is checked on every open). */
  f->st_size = (uint64_t)st.st_size;
  f->mtime = st.st_mtim;
  f->ctime = st.st_ctim;
  return 0;
}

static int
open_layer(const struct link *lk, struct cc_frozen *f, struct ovl_info *info)
{
  struct stat st;
  int r;

  r = ovl_open(lk->path, OVL_RDONLY, &f->ovl);
  if (r < 0) {
    char msg[1024];
    const char *m = cc_error_get();

    if (!lk->child)
      return r; /* the top file: overlay's message already names it */
    if (strncmp(m, "open: ", 6) == 0)
      m += 6;
    snprintf(msg, sizeof msg, "%s", m);
    return link_error(lk, -r, "%s", msg);
  }
  f->fd = ovl_fd(f->ovl);
  ovl_get_header_info(f->ovl, info);
  f->size = info->virtual_size;
  if (fstat(f->fd, &st) < 0)
    return link_error(lk, errno, "fstat: %s", strerror(errno));
  f->dev = st.st_dev;
  f->ino = st.st_ino;
  f->st_size = (uint64_t)st.st_size;
  f->mtime = st.st_mtim;
  f->ctime = st.st_ctim;
  if (lk->checked && memcmp(info->uuid, lk->uuid, OVL_UUID_LEN) != 0) {
    char want[37], got[37];

    ovl_uuid_str(lk->uuid, want);
    ovl_uuid_str(info->uuid, got);
    return link_error(lk, EINVAL, "uuid mismatch (expected %s, found %s)", want, got);
  }
  return 0;
}

/* Is `path` (resolved) inside the canonical directory `root`?  0, or a link_error. */
static int
check_within(const struct link *lk, const char *path, const char *root)
{
  char *real;
  size_t rl;
  int inside;

  if (root == NULL)
    return 0;
  rl = strlen(root);
  real = realpath(path, NULL);
  if (real == NULL)
    return link_error(lk, errno, "%s", strerror(errno));
  inside = strncmp(real, root, rl) == 0 && (real[rl] == '/' || (rl == 1 && root[0] == '/'));
  if (!inside) {
    int r = link_error(lk, EPERM, "resolves to %s, outside %s", real, root);
    free(real);
    return r;
  }
  free(real);
  return 0;
}

/* A shared index found in the registry: were all its files checked against `root`? */
static int
index_within(const struct cc_index *idx, const char *root)
{
  if (root == NULL || (idx->root && strcmp(idx->root, root) == 0))
    return 0;
  for (size_t i = 0; i < idx->nlayers; i++) {
    struct link lk = {.child = NULL, .path = idx->layers[i].path};
    int r = check_within(&lk, idx->layers[i].path, root);
    if (r < 0)
      return r;
  }
  return 0;
}

static int
seen_before(const struct ident *above, size_t nabove, const struct cc_frozen *v, size_t n,
            dev_t dev, ino_t ino)
{
  for (size_t i = 0; i < nabove; i++)
    if (above[i].dev == dev && above[i].ino == ino)
      return 1;
  for (size_t i = 0; i < n; i++)
    if (v[i].dev == dev && v[i].ino == ino)
      return 1;
  return 0;
}

static void
frozen_release(struct cc_frozen *v, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    if (v[i].ovl)
      ovl_close(v[i].ovl);
    else if (v[i].remote)
      cc_remote_close(v[i].remote);
    else if (v[i].fd >= 0)
      close(v[i].fd);
    cc_frozen_dfd_free(&v[i]);
    free(v[i].path);
  }
  free(v);
}

/* Find or build the index of the frozen part whose topmost file `lk` names.  `above` are the
 * identities of the files above it (the writable top), for cycle detection and depth; `top`
 * is the chain's top path, for the depth message. */
static int
acquire_index(const char *top, struct link *lk, const struct ident *above, size_t nabove,
              const char *root, struct cc_index **out)
{
  static const uint8_t zero_uuid[OVL_UUID_LEN];
  struct cc_frozen *v = NULL; /* top first, while walking */
  size_t n = 0, cap = 0;
  struct ovl_info *info = malloc(sizeof *info);
  struct cc_index *idx = NULL;
  struct cc_builder b;
  int r = 0;

  if (!info)
    return cc_error_set(ENOMEM, "open: %s: out of memory", lk->path);
  cc_builder_init(&b);
  for (;;) {
    struct cc_frozen *f;
    struct stat st;

    if (nabove + n + 1 > max_depth) {
      r = cc_error_set(ELOOP, "open: %s: chain deeper than %zu layers (limit reached at %s)", top,
                       max_depth, lk->child ? lk->child : lk->path);
      goto fail;
    }
    if (stat(lk->path, &st) < 0) {
      r = errno == ENOENT ? link_error(lk, ENOENT, "missing")
                          : link_error(lk, errno, "%s", strerror(errno));
      goto fail;
    }
    if (seen_before(above, nabove, v, n, st.st_dev, st.st_ino)) {
      r = link_error(lk, ELOOP, "cycle: %s is already in the chain", lk->path);
      goto fail;
    }
    if ((r = check_within(lk, lk->path, root)) < 0)
      goto fail;
    /* The topmost frozen file: is its index already built? */
    if (n == 0 && (lk->checked || lk->kind == OVL_PARENT_RAW) &&
        !(!lk->checked && lk->kind == OVL_PARENT_NBD)) {
      struct cc_index *hit;

      hit =
          cc_registry_get(st.st_dev, st.st_ino, lk->kind == OVL_PARENT_LAYER ? lk->uuid : zero_uuid,
                          lk->checked ? lk->size : (uint64_t)st.st_size);
      if (hit) {
        free(lk->path);
        lk->path = NULL;
        free(info);
        if ((r = index_within(hit, root)) < 0) {
          cc_index_put(hit);
          return r;
        }
        *out = hit;
        return 0;
      }
    }
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 8;
      struct cc_frozen *nv = realloc(v, ncap * sizeof *nv);

      if (!nv) {
        r = link_error(lk, ENOMEM, "out of memory");
        goto fail;
      }
      v = nv;
      cap = ncap;
    }
    f = &v[n];
    *f = (struct cc_frozen){.fd = -1, .dfd = malloc(sizeof *f->dfd)};
    if (!f->dfd) {
      r = link_error(lk, ENOMEM, "out of memory");
      goto fail;
    }
    atomic_init(f->dfd, -1);
    if (lk->kind == OVL_PARENT_RAW)
      r = open_raw(lk, f);
    else if (lk->kind == OVL_PARENT_NBD)
      r = open_remote(lk, f);
    else
      r = open_layer(lk, f, info);
    if (r < 0) {
      n++; /* release what was opened */
      goto fail;
    }
    f->path = lk->path; /* ownership moves to the frozen file */
    lk->path = NULL;
    n++;
    if (lk->checked && f->size != lk->size) {
      r = link_error(lk, EINVAL, "size changed (was %llu, now %llu)", (unsigned long long)lk->size,
                     (unsigned long long)f->size);
      goto fail;
    }
    if (lk->checked && f->size > lk->child_size) {
      r = link_error(lk, EINVAL, "parent (%llu bytes) larger than the layer (%llu bytes)",
                     (unsigned long long)f->size, (unsigned long long)lk->child_size);
      goto fail;
    }
    if (n == 1 && !lk->checked && f->ovl) {
      /* Read-only top layer: now that its uuid is known, look for its index. */
      struct cc_index *hit = cc_registry_get(f->dev, f->ino, info->uuid, f->size);

      if (hit) {
        frozen_release(v, n);
        cc_builder_free(&b);
        free(info);
        if ((r = index_within(hit, root)) < 0) {
          cc_index_put(hit);
          return r;
        }
        *out = hit;
        return 0;
      }
    }
    /* Take this file's extents now and drop its map: the peak is one layer's map, not the
     * whole chain's (docs/BENCHMARKS.md, finding B).  `info` is read below, and the header
     * stays. */
    if ((r = cc_builder_add(&b, f, (uint32_t)(n - 1))) < 0)
      goto fail;
    if (f->ovl)
      ovl_drop_map(f->ovl);
    if (!f->ovl || info->parent_kind == OVL_PARENT_NONE)
      break;
    /* Follow the link this layer records. */
    if (link_from_header(lk, f->path, info) < 0) {
      r = cc_error_set(ENOMEM, "open: %s: out of memory", f->path);
      goto fail;
    }
  }

  /* v[0] is the topmost frozen file; the index wants the bottom first. */
  idx = calloc(1, sizeof *idx);
  if (!idx) {
    r = cc_error_set(ENOMEM, "open: %s: out of memory", v[0].path);
    goto fail;
  }
  for (size_t i = 0; i < n / 2; i++) {
    struct cc_frozen t = v[i];
    v[i] = v[n - 1 - i];
    v[n - 1 - i] = t;
  }
  idx->layers = v;
  idx->nlayers = n;
  idx->dev = v[n - 1].dev;
  idx->ino = v[n - 1].ino;
  if (v[n - 1].ovl) {
    ovl_get_header_info(v[n - 1].ovl, info);
    memcpy(idx->uuid, info->uuid, OVL_UUID_LEN);
  }
  v = NULL;
  n = 0;
  if (root && (idx->root = strdup(root)) == NULL) {
    r = cc_error_set(ENOMEM, "open: %s: out of memory", top);
    cc_index_free(idx);
    goto fail;
  }
  if ((r = cc_builder_finish(&b, idx)) < 0) {
    cc_index_free(idx);
    goto fail;
  }
  atomic_fetch_add(&index_builds, 1);
  free(info);
  *out = cc_registry_insert(idx);
  /* Another thread may have published an equal index first, checked against another root. */
  if (*out != idx && (r = index_within(*out, root)) < 0) {
    cc_index_put(*out);
    *out = NULL;
    return r;
  }
  return 0;

fail:
  cc_builder_free(&b);
  frozen_release(v, n);
  free(lk->path);
  lk->path = NULL;
  free(info);
  return r;
}

int
cc_chain_open(const char *top_path, unsigned flags, struct cc_chain **out)
{
  return cc_chain_open_within(top_path, flags, NULL, out);
}

int
cc_chain_open_within(const char *top_path, unsigned flags, const char *root_dir,
                     struct cc_chain **out)
{
  struct cc_chain *c = NULL;
  struct cc_view *v = NULL;
  struct link *lk = NULL;
  char *root = NULL;
  int r;

  *out = NULL;
  pthread_once(&nofile_once, raise_nofile);
  if ((flags & (CC_RAW | CC_REMOTE)) && (flags & CC_RDWR))
    return cc_error_set(EPERM, "open: %s: a raw image is read-only", top_path);
  if (root_dir && (root = realpath(root_dir, NULL)) == NULL)
    return cc_error_set(errno, "open: %s: %s", root_dir, strerror(errno));
  if (root) {
    struct link top = {.child = NULL, .path = (char *)top_path};
    if ((r = check_within(&top, top_path, root)) < 0)
      goto fail;
  }
  c = calloc(1, sizeof *c);
  v = calloc(1, sizeof *v);
  lk = calloc(1, sizeof *lk);
  if (!c || !v || !lk || !(v->path = strdup(top_path))) {
    r = cc_error_set(ENOMEM, "open: %s: out of memory", top_path);
    goto fail;
  }
  c->flags = flags;
  v->top_fd = -1;

  if (flags & CC_RDWR) {
    struct ovl_info *info = malloc(sizeof *info);
    struct stat st;
    struct ident top;

    if (!info) {
      r = cc_error_set(ENOMEM, "open: %s: out of memory", top_path);
      goto fail;
    }
    if ((r = ovl_open(top_path, OVL_RDWR, &v->top)) < 0) {
      free(info);
      goto fail;
    }
    v->top_fd = ovl_fd(v->top);
    ovl_get_header_info(v->top, info);
    c->size = info->virtual_size;
    if (fstat(v->top_fd, &st) < 0) {
      r = cc_error_set(errno, "open: %s: fstat: %s", top_path, strerror(errno));
      free(info);
      goto fail;
    }
    top = (struct ident){st.st_dev, st.st_ino};
    if (info->parent_kind != OVL_PARENT_NONE) {
      if (link_from_header(lk, v->path, info) < 0)
        r = cc_error_set(ENOMEM, "open: %s: out of memory", top_path);
      else
        r = acquire_index(top_path, lk, &top, 1, root, &v->idx);
    }
    free(info);
    if (r < 0)
      goto fail;
  } else {
    lk->kind = (flags & CC_RAW)      ? OVL_PARENT_RAW
               : (flags & CC_REMOTE) ? OVL_PARENT_NBD
                                     : OVL_PARENT_LAYER;
    lk->path = strdup(top_path);
    if (!lk->path) {
      r = cc_error_set(ENOMEM, "open: %s: out of memory", top_path);
      goto fail;
    }
    if ((r = acquire_index(top_path, lk, NULL, 0, root, &v->idx)) < 0)
      goto fail;
    c->size = v->idx->size;
  }
  /* A remote bottom is checked on every open: it must still serve what it was added with. */
  if (v->idx && v->idx->layers[0].remote && (r = cc_remote_check(v->idx->layers[0].remote)) < 0)
    goto fail;
  /* A shared index was checked against the limit in force when it was built. */
  if ((v->top ? 1 : 0) + (v->idx ? v->idx->nlayers : 0) > max_depth) {
    r = cc_error_set(ELOOP, "open: %s: chain deeper than %zu layers", top_path, max_depth);
    goto fail;
  }
  pthread_mutex_init(&c->switch_lock, NULL);
  pthread_mutex_init(&c->settle_lock, NULL);
  atomic_init(&c->unsettled, NULL);
  atomic_init(&c->view, v);
  free(lk);
  free(root);
  *out = c;
  return 0;

fail:
  free(lk);
  free(root);
  if (v) {
    if (v->top)
      ovl_close(v->top);
    cc_view_free(v);
  }
  free(c);
  return r;
}

int
cc_chain_close(struct cc_chain *c)
{
  struct cc_view *v;
  int r = 0;

  if (!c)
    return 0;
  /* No reader may still be inside (the caller's contract, as for any close).  A sealed old
   * top is made durable first, as its flush was promised. */
  r = cc_chain_settle(c);
  v = atomic_load(&c->view);
  if (v->top) {
    int r2 = ovl_close(v->top);
    if (r == 0)
      r = r2;
  }
  cc_view_free(v);
  pthread_mutex_destroy(&c->switch_lock);
  pthread_mutex_destroy(&c->settle_lock);
  free(c);
  return r;
}

uint64_t
cc_chain_size(const struct cc_chain *c)
{
  return c->size;
}

/* The accessors below read the current view inside enter/leave: a push may run meanwhile. */
int
cc_chain_writable(const struct cc_chain *c)
{
  struct cc_chain *m = (struct cc_chain *)c; /* enter/leave only touch the reader counts */
  unsigned t;
  int w = cc_view_enter(m, &t)->top != NULL;

  cc_view_leave(m, t);
  return w;
}

uint32_t
cc_chain_block_size(const struct cc_chain *c)
{
  struct cc_chain *m = (struct cc_chain *)c;
  unsigned t;
  struct cc_view *v = cc_view_enter(m, &t);
  uint32_t bs = 4096;

  if (v->top)
    bs = ovl_sc_size(v->top);
  else if (v->idx && v->idx->nlayers > 0 && v->idx->layers[v->idx->nlayers - 1].ovl)
    bs = ovl_sc_size(v->idx->layers[v->idx->nlayers - 1].ovl);
  cc_view_leave(m, t);
  return bs;
}

size_t
cc_chain_depth(const struct cc_chain *c)
{
  struct cc_chain *m = (struct cc_chain *)c;
  unsigned t;
  struct cc_view *v = cc_view_enter(m, &t);
  size_t d = (v->top ? 1 : 0) + (v->idx ? v->idx->nlayers : 0);

  cc_view_leave(m, t);
  return d;
}

const void *
cc_chain_index_id(const struct cc_chain *c)
{
  struct cc_chain *m = (struct cc_chain *)c;
  unsigned t;
  const void *id = cc_view_enter(m, &t)->idx;

  cc_view_leave(m, t);
  return id;
}

size_t
cc_chain_index_runs(const struct cc_chain *c)
{
  struct cc_chain *m = (struct cc_chain *)c;
  unsigned t;
  struct cc_view *v = cc_view_enter(m, &t);
  size_t n = v->idx ? v->idx->nruns : 0;

  cc_view_leave(m, t);
  return n;
}

int
cc_chain_uses_uring(const struct cc_chain *c)
{
  return !(c->flags & CC_IO_SYNC) && !cc_uring_disabled();
}

uint64_t
cc_chain_index_builds(void)
{
  return atomic_load(&index_builds);
}

/* Test hook: a smaller depth limit, so the "too deep" error is testable without creating
 * 4097 files.  0 restores CC_MAX_DEPTH. */
void
cc_chain_set_max_depth(size_t n)
{
  max_depth = n ? n : CC_MAX_DEPTH;
}
