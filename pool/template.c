/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: templates (import, create, promote, delete).
 *
 * Design notes
 * ------------
 * A template is immutable: a raw image (images/NAME.raw, read-only: 0400, or 0440 with a group) or
 * a frozen layer.  Each operation's step order is in POOL.md section 5; the rule is always "make
 * the new files durable where no record can see them, then switch records, then remove what is no
 * longer reachable", so a crash leaves the old or the new state plus at most unreferenced files.
 *
 * Import copies the data before taking the pool lock (it can take minutes) and re-checks the
 * name under the lock before installing anything.
 */
#include "pool/internal.h"

#include "overlay/format.h" /* OVL_MAX_VIRTUAL_SIZE */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static const char *const known_formats[] = {"raw", "qcow2", "vmdk", "vdi", "vhdx"};

/* What format a file's first bytes announce, or NULL for none we know (raw). */
static const char *
sniff_format(const char *file)
{
  unsigned char b[16] = {0};
  ssize_t n;
  int fd = open(file, O_RDONLY | O_CLOEXEC);

  if (fd == -1)
    return NULL;
  n = pread(fd, b, sizeof b, 0);
  close(fd);
  if (n >= 4 && memcmp(b, "QFI\xfb", 4) == 0)
    return "qcow2";
  if (n >= 4 && memcmp(b, "KDMV", 4) == 0)
    return "vmdk";
  if (n >= 8 && memcmp(b, "vhdxfile", 8) == 0)
    return "vhdx";
  if (n >= 4 && memcmp(b, "<<< ", 4) == 0)
    return "vdi";
  return NULL;
}

/* Does `file` read as a json: or protocol name ("nbd:host", "http://...") to qemu-img?  A colon
 * before the first slash is what qemu-img takes for a protocol prefix. */
static int
looks_like_protocol(const char *file)
{
  const char *colon = strchr(file, ':'), *slash = strchr(file, '/');

  return colon && (!slash || colon < slash);
}

/* Refuse, before anything is written, an import the pool's file system cannot hold. */
static int
check_space(struct cc_pool *p, const char *file, uint64_t need)
{
  char tmpdir[PATH_MAX];
  struct statvfs sv;
  uint64_t avail;
  int r;

  if ((r = pool_path(p, tmpdir, sizeof tmpdir, "tmp")) < 0)
    return r;
  if (statvfs(tmpdir, &sv) == -1)
    return cc_error_set(errno, "template import: %s: statvfs: %s", tmpdir, strerror(errno));
  avail = (uint64_t)sv.f_bavail * sv.f_frsize;
  if (need > avail)
    return cc_error_set(ENOSPC,
                        "template import: %s: needs %llu bytes of data, the pool has %llu free",
                        file, (unsigned long long)need, (unsigned long long)avail);
  return 0;
}

/* Produce tmp/... holding the raw bytes of `file`; returns its size. */
static int
import_data(struct cc_pool *p, const char *file, const char *abspath, const char *format,
            int allow_refs, char *tmp, size_t tmplen, uint64_t *size, struct cc_template *t,
            cc_progress_fn progress, void *opaque)
{
  struct pool_hash h;
  struct stat st;
  int fd, r, hashed = 0;

  if (strcmp(format, "raw") == 0) {
    /* A raw file names nothing; it costs its data blocks (the copy is sparse). */
    if (stat(abspath, &st) == -1)
      return cc_error_set(errno, "template import: %s: %s", file, strerror(errno));
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > OVL_MAX_VIRTUAL_SIZE - 511)
      return cc_error_set(EFBIG, "template import: %s: larger than the 4 EiB limit of the pool",
                          file);
    if (S_ISREG(st.st_mode) && (r = check_space(p, file, (uint64_t)st.st_blocks * 512)) < 0)
      return r;
    if ((r = pool_tmp_path(p, "import", ".raw", tmp, tmplen)) < 0)
      return r;
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1)
      return cc_error_set(errno, "template import: %s: %s", tmp, strerror(errno));
    /* The content hash is computed from the bytes as they are copied (POOL.md 3.1.1). */
    if ((r = pool_hash_init(&h)) < 0) {
      close(fd);
      unlink(tmp);
      return r;
    }
    r = pool_copy_raw_sparse_hash(abspath, fd, size, &h, progress, opaque);
    hashed = 1;
  } else {
    struct pool_image_facts facts;
    char *opts = NULL;

    if ((r = pool_inspect_image(file, abspath, format, allow_refs, &facts)) < 0)
      return r;
    if ((r = check_space(p, file, facts.need_bytes)) < 0)
      return r;
    if ((r = pool_tmp_path(p, "import", ".raw", tmp, tmplen)) < 0)
      return r;
    /* Made here with the pool's mode: qemu-img truncates an existing file and keeps its mode,
     * where a file it created would get the umask's. */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1)
      return cc_error_set(errno, "template import: %s: %s", tmp, strerror(errno));
    r = pool_secure_fd(p, fd, tmp, 0);
    close(fd);
    if (r < 0) {
      unlink(tmp);
      return r;
    }
    if (allow_refs) {
      /* The user vouches for the chain: let qemu-img follow what the image names. */
      char *argv[] = {"qemu-img",      "convert", "-f", (char *)format, "-O", "raw",
                      (char *)abspath, tmp,       NULL};
      r = pool_run("template import: qemu-img convert", argv);
    } else {
      /* References disabled, so a check that missed one still cannot read another file. */
      if ((r = pool_image_opts(abspath, format, &opts)) < 0) {
        unlink(tmp);
        return r;
      }
      char *argv[] = {"qemu-img", "convert", "--image-opts", opts, "-O", "raw", tmp, NULL};
      r = pool_run("template import: qemu-img convert", argv);
      free(opts);
    }
    if (r < 0) {
      unlink(tmp);
      return r;
    }
    fd = open(tmp, O_RDWR | O_CLOEXEC); /* read back for the hash */
    if (fd == -1 || fstat(fd, &st) == -1) {
      r = cc_error_set(errno, "template import: %s: %s", tmp, strerror(errno));
      if (fd != -1)
        close(fd);
      unlink(tmp);
      return r;
    }
    *size = (uint64_t)st.st_size;
  }
  if (r == 0 && *size == 0)
    r = cc_error_set(EINVAL, "template import: %s: empty image", file);
  /* Layers need a virtual size that is a multiple of 512: pad with zeroes (a hole). */
  if (r == 0 && *size % 512 != 0) {
    if (hashed)
      pool_hash_zero(&h, 512 - *size % 512);
    *size += 512 - *size % 512;
    if (ftruncate(fd, (off_t)*size) == -1)
      r = cc_error_set(errno, "template import: %s: %s", tmp, strerror(errno));
  }
  /* qemu-img wrote the file itself: its data extents are read once here (the page cache
   * still holds what it just wrote); a raw import hashed during its copy. */
  if (r == 0 && hashed)
    pool_hash_final(&h, t->hash);
  else if (r == 0)
    r = pool_hash_fd(fd, tmp, t->hash, NULL, NULL);
  if (hashed)
    pool_hash_free(&h);
  /* qemu-img created its output under the umask: the pool's mode, read-only, is set here. */
  if (r == 0)
    r = pool_secure_fd(p, fd, tmp, 1);
  if (r == 0 && fsync(fd) == -1)
    r = cc_error_set(errno, "template import: %s: %s", tmp, strerror(errno));
  /* The identity every open compares: rename keeps the inode and the mtime. */
  if (r == 0 && fstat(fd, &st) == -1)
    r = cc_error_set(errno, "template import: %s: %s", tmp, strerror(errno));
  if (r == 0)
    pool_template_set_identity(t, &st);
  close(fd);
  if (r < 0)
    unlink(tmp);
  return r;
}

int
cc_template_import(struct cc_pool *p, const char *name, const char *file, const char *format,
                   unsigned flags, cc_progress_fn progress, void *opaque)
{
  char tmp[PATH_MAX], final[PATH_MAX], *abspath = NULL;
  struct cc_template t;
  uint64_t size = 0;
  size_t i;
  int r;

  if ((r = pool_name_free(p, "template import", name)) < 0)
    return r;
  if (format == NULL) {
    const char *sniffed = sniff_format(file);
    /* Never guess a format from the contents (a raw guest disk can start with any bytes); but
     * importing a qcow2 file as raw is almost always a mistake, so say what to type. */
    if (sniffed)
      return cc_error_set(EINVAL,
                          "template import: %s: looks like %s; add --format %s (or --format raw "
                          "to import its bytes as they are)",
                          file, sniffed, sniffed);
    format = "raw";
  }
  for (i = 0; i < sizeof known_formats / sizeof known_formats[0]; i++)
    if (strcmp(format, known_formats[i]) == 0)
      break;
  if (i == sizeof known_formats / sizeof known_formats[0])
    return cc_error_set(EINVAL,
                        "template import: unknown format '%.32s' (raw, qcow2, vmdk, vdi, "
                        "vhdx)",
                        format);
  if (looks_like_protocol(file))
    return cc_error_set(EINVAL,
                        "template import: %.256s: a json: or protocol name, not a local file "
                        "(write ./%.256s for a file of that name)",
                        file, file);
  if (access(file, R_OK) == -1)
    return cc_error_set(errno, "template import: %s: %s", file, strerror(errno));
  /* qemu-img gets the absolute path: it never reads one as a protocol or json: name. */
  if ((abspath = realpath(file, NULL)) == NULL)
    return cc_error_set(errno, "template import: %s: %s", file, strerror(errno));

  memset(&t, 0, sizeof t);
  r = import_data(p, file, abspath, format, !!(flags & CC_IMPORT_ALLOW_BACKING), tmp, sizeof tmp,
                  &size, &t, progress, opaque);
  free(abspath);
  if (r < 0)
    return r;
  pool_step();
  if ((r = pool_lock(p, "template import")) < 0 ||
      (r = pool_name_free(p, "template import", name)) < 0)
    goto fail;
  if ((r = pool_image_path(p, name, final, sizeof final)) < 0)
    goto fail;
  /* An images/NAME.raw without a template record is garbage from a crashed import (delete
   * is refused while anything sits on an image), so replacing it loses nothing. */
  if (rename(tmp, final) == -1) {
    r = cc_error_set(errno, "template import: %s: %s", final, strerror(errno));
    goto fail;
  }
  if ((r = pool_fsync_dir(p, "images")) < 0)
    goto out;
  pool_step();
  snprintf(t.name, sizeof t.name, "%s", name);
  t.kind = CC_TEMPLATE_RAW;
  t.created = pool_now();
  t.size = size;
  r = pool_write_template(p, &t);
out:
  pool_unlock(p);
  return r;
fail:
  unlink(tmp);
  pool_unlock(p);
  return r;
}

int
cc_template_create(struct cc_pool *p, const char *name, uint64_t size)
{
  struct pool_batch b;
  struct cc_template t;
  int r;

  if (size == 0)
    return cc_error_set(EINVAL, "template create: %s: size must be at least 512 bytes", name);
  if (size > (1ull << 62))
    return cc_error_set(EINVAL, "template create: %s: size larger than 4 EiB", name);
  size = (size + 511) & ~511ull;
  if ((r = pool_lock(p, "template create")) < 0)
    return r;
  if ((r = pool_name_free(p, "template create", name)) < 0)
    goto out;
  memset(&t, 0, sizeof t);
  snprintf(t.name, sizeof t.name, "%s", name);
  t.kind = CC_TEMPLATE_LAYER;
  t.created = pool_now();
  t.size = size;
  /* A parentless empty layer: O(1) whatever the size, and reads as zeroes; its record
   * prepared while it is made. */
  pool_batch_init(&b, p);
  if ((r = pool_batch_layer(&b, size, NULL, t.layer)) == 0 &&
      (r = pool_batch_template(&b, &t)) == 0 && (r = pool_batch_prepare(&b)) == 0)
    r = pool_batch_commit(&b);
  pool_batch_free(&b);
out:
  pool_unlock(p);
  return r;
}

int
cc_template_promote(struct cc_pool *p, const char *clone, const char *name)
{
  char newtop[CC_UUID_STR];
  struct ovl_layer *top = NULL;
  struct pool_batch b;
  struct cc_template t;
  struct cc_clone c;
  int r;

  pool_batch_init(&b, p);
  if ((r = pool_lock(p, "template promote")) < 0)
    return r;
  if ((r = pool_name_free(p, "template promote", name)) < 0)
    goto unlock;
  if ((r = pool_get_clone(p, "template promote", clone, &c)) < 0)
    goto unlock;
  if ((r = pool_freeze_top(p, "template promote", &c, c.top, &b, &top, newtop)) < 0)
    goto out;
  memset(&t, 0, sizeof t);
  snprintf(t.name, sizeof t.name, "%s", name);
  t.kind = CC_TEMPLATE_LAYER;
  t.created = pool_now();
  t.size = c.size;
  strcpy(t.layer, c.top);
  /* Clone record first: until the template record exists the old top is an unnamed frozen
   * layer under the clone (the clone reads the same).  The other order would, for one step,
   * make a template's layer the writable top of a clone.  One batch: both records are
   * prepared with the new layer and the freeze of the old top, then committed in this order
   * (clones/ synced before the template record's rename). */
  strcpy(c.top, newtop);
  if ((r = pool_batch_clone(&b, &c)) == 0 && (r = pool_batch_template(&b, &t)) == 0 &&
      (r = pool_batch_prepare(&b)) == 0)
    r = pool_batch_commit(&b);
out:
  pool_batch_free(&b);
  ovl_close(top);
  cc_clone_free(&c);
unlock:
  pool_unlock(p);
  return r;
}

/* Does the chain from layer `uuid` reach layer `target` (or raw image `image`)? */
static int
chain_reaches(struct pool_graph *g, const char *uuid, const char *target, const char *image)
{
  struct pool_node *n = pool_graph_find(g, uuid);
  size_t steps = 0;

  while (n && steps++ <= g->n) {
    if (target && strcmp(n->uuid, target) == 0)
      return 1;
    if (n->parent_kind == OVL_PARENT_RAW || n->parent_kind == OVL_PARENT_NBD)
      return image && strcmp(n->parent_image, image) == 0;
    if (n->parent_kind != OVL_PARENT_LAYER)
      return 0;
    n = pool_graph_find(g, n->parent);
  }
  return 0;
}

static void
append_name(char *buf, size_t len, const char *name, const char *snap)
{
  size_t o = strlen(buf);

  if (o + 8 >= len)
    return;
  snprintf(buf + o, len - o, "%s%s%s%s", o ? ", " : "", name, snap ? "@" : "", snap ? snap : "");
}

int
cc_template_delete(struct cc_pool *p, const char *name)
{
  char users[512] = "";
  const char *target, *image;
  struct cc_template t;
  struct pool_graph g;
  size_t i, j;
  int r;

  if ((r = pool_lock(p, "template delete")) < 0)
    return r;
  if ((r = pool_get_template(p, "template delete", name, &t)) < 0)
    goto unlock;
  if ((r = pool_graph_load(p, &g)) < 0)
    goto unlock;
  /* Judge the pool without this template's record: its own layer may be broken (that is why
   * one deletes it), but every layer that stays must be readable to know what depends on it. */
  for (i = 0; i < g.ntmpls; i++)
    if (strcmp(g.tmpls[i].name, name) == 0)
      g.tmpls[i].kind = CC_TEMPLATE_LAYER, g.tmpls[i].layer[0] = '\0';
  pool_graph_mark_live(&g);
  if ((r = pool_graph_require_sound(&g, "template delete")) < 0)
    goto out;
  target = t.kind == CC_TEMPLATE_LAYER ? t.layer : NULL;
  image = t.kind != CC_TEMPLATE_LAYER ? t.name : NULL;
  for (i = 0; i < g.ntmpls; i++) {
    if (strcmp(g.tmpls[i].name, name) == 0 || g.tmpls[i].kind != CC_TEMPLATE_LAYER)
      continue;
    if (chain_reaches(&g, g.tmpls[i].layer, target, image))
      append_name(users, sizeof users, g.tmpls[i].name, NULL);
  }
  for (i = 0; i < g.nclones; i++) {
    const struct cc_clone *c = &g.clones[i];
    if (chain_reaches(&g, c->top, target, image))
      append_name(users, sizeof users, c->name, NULL);
    for (j = 0; j < c->nsnaps; j++)
      if (chain_reaches(&g, c->snaps[j].layer, target, image))
        append_name(users, sizeof users, c->name, c->snaps[j].name);
  }
  if (users[0]) {
    r = cc_error_set(EBUSY, "template delete: %s: in use by %s", name, users);
    goto out;
  }
  if ((r = pool_remove_record(p, "templates", name)) < 0)
    goto out;
  /* The record is gone: the template is deleted.  Its image or layer is now garbage; a crash
   * before it is unlinked leaves a leak that check --repair removes. */
  pool_collect_garbage(p, &g);
  if (t.kind == CC_TEMPLATE_REMOTE)
    pool_remote_forget(p, name); /* only the descriptor: the remote export is not ours */
out:
  pool_graph_free(&g);
unlock:
  pool_unlock(p);
  return r;
}
