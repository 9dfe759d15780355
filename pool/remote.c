/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: remote templates (template add --uri), an NBD export of another server.
 *
 * Design notes
 * ------------
 * A remote template is a template record of kind `remote` plus its remote descriptor
 * images/NAME.nbd (FORMAT.md section 11: URI, size, fingerprint), read-only like a raw image.
 * Layers on it link to "../images/NAME.nbd" with parent kind 3, so everything that follows
 * parent links (clones, snapshots, full clones, promote, export, check) treats it as it treats
 * a raw image, and chain/ reaches the export with libnbd (chain/remote.c).
 *
 * `template add` talks to the remote before taking the pool lock (a full --verify hash can take
 * minutes), writes the descriptor durably in tmp/, then under the lock re-checks the name,
 * renames the descriptor into images/ and writes the record: the same order as import (POOL.md
 * 5.1), so a crash leaves the old state plus at most an unreferenced file.  Delete removes the
 * record, then the descriptor; the remote export is not ours and is never touched.
 */
#include "pool/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int
pool_remote_path(const struct cc_pool *p, const char *name, char *buf, size_t len)
{
  return pool_path(p, buf, len, "images/%s.nbd", name);
}

/* nbd://, nbds://, nbd+unix://, nbds+unix:// (libnbd's URI forms; TLS-PSK in the query as
 * nbdinfo takes it: nbds://USER@HOST/EXPORT?tls-psk-file=FILE).  Files the URI names must be
 * absolute: the server reads them after nbdkit's chdir("/"). */
static int
check_uri(const char *name, const char *uri)
{
  static const char *const schemes[] = {"nbd://", "nbds://", "nbd+unix://", "nbds+unix://"};
  const char *q;
  size_t i;

  for (i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
    if (strncmp(uri, schemes[i], strlen(schemes[i])) == 0)
      break;
  if (i == sizeof schemes / sizeof schemes[0])
    return cc_error_set(EINVAL,
                        "template add: %s: %.256s: not an NBD URI (nbd://, nbds://, nbd+unix://, "
                        "nbds+unix://)",
                        name, uri);
  for (q = strchr(uri, '?'); q; q = strchr(q + 1, '&')) {
    const char *v = strchr(q, '=');
    if (v && (strncmp(q + 1, "socket=", 7) == 0 || strncmp(q + 1, "tls-psk-file=", 13) == 0) &&
        v[1] != '/' && strncmp(v + 1, "%2F", 3) != 0 && strncmp(v + 1, "%2f", 3) != 0)
      return cc_error_set(EINVAL, "template add: %s: %.256s: %.*s must be an absolute path", name,
                          uri, (int)(v - q - 1), q + 1);
  }
  return 0;
}

int
cc_template_add(struct cc_pool *p, const char *name, const char *uri, unsigned flags)
{
  char tmp[PATH_MAX], final[PATH_MAX], text[2048];
  struct cc_remote_desc d;
  struct cc_template t;
  int fd, n, r;

  if ((r = pool_name_free(p, "template add", name)) < 0 || (r = check_uri(name, uri)) < 0)
    return r;
  if ((r = cc_remote_probe(name, uri, flags, &d)) < 0)
    return r;
  if ((n = cc_remote_desc_format(&d, text, sizeof text)) < 0)
    return n;
  if ((r = pool_tmp_path(p, "add", ".nbd", tmp, sizeof tmp)) < 0)
    return r;
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd == -1)
    return cc_error_set(errno, "template add: %s: %s", tmp, strerror(errno));
  if (write(fd, text, (size_t)n) != n)
    r = cc_error_set(errno ? errno : EIO, "template add: %s: %s", tmp, strerror(errno));
  if (r == 0)
    r = pool_secure_fd(p, fd, tmp, 1);
  if (r == 0 && fsync(fd) == -1)
    r = cc_error_set(errno, "template add: %s: %s", tmp, strerror(errno));
  close(fd);
  if (r < 0) {
    unlink(tmp);
    return r;
  }
  pool_step();
  if ((r = pool_lock(p, "template add")) < 0)
    goto fail;
  if ((r = pool_name_free(p, "template add", name)) < 0 ||
      (r = pool_remote_path(p, name, final, sizeof final)) < 0)
    goto fail_locked;
  if (rename(tmp, final) == -1) {
    r = cc_error_set(errno, "template add: %s: %s", final, strerror(errno));
    goto fail_locked;
  }
  if ((r = pool_fsync_dir(p, "images")) < 0)
    goto out;
  pool_step();
  memset(&t, 0, sizeof t);
  snprintf(t.name, sizeof t.name, "%s", name);
  t.kind = CC_TEMPLATE_REMOTE;
  t.created = pool_now();
  t.size = d.size;
  r = pool_write_template(p, &t);
out:
  pool_unlock(p);
  return r;
fail_locked:
  pool_unlock(p);
fail:
  unlink(tmp);
  return r;
}

int
cc_template_remote_desc(struct cc_pool *p, const char *name, struct cc_remote_desc *out)
{
  char path[PATH_MAX], buf[4096];
  ssize_t n;
  int fd, r;

  if ((r = pool_remote_path(p, name, path, sizeof path)) < 0)
    return r;
  if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
    return cc_error_set(errno, "template %s: %s: %s", name, path, strerror(errno));
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n < 0)
    return cc_error_set(errno, "template %s: %s: %s", name, path, strerror(errno));
  buf[n] = '\0';
  return cc_remote_desc_parse(path, buf, out);
}

int
pool_parent_of_remote(struct cc_pool *p, const struct cc_template *t, struct ovl_parent *par,
                      char *pathbuf, size_t pathlen)
{
  struct cc_remote_desc d;
  int r;

  if ((r = cc_template_remote_desc(p, t->name, &d)) < 0)
    return r;
  if ((size_t)snprintf(pathbuf, pathlen, "../images/%s.nbd", t->name) >= pathlen)
    return cc_error_set(ENAMETOOLONG, "template %s: path too long", t->name);
  memset(par, 0, sizeof *par);
  par->kind = OVL_PARENT_NBD;
  par->path = pathbuf;
  par->size = d.size;
  return 0;
}

void
pool_remote_forget(struct cc_pool *p, const char *name)
{
  char path[PATH_MAX];

  if (pool_remote_path(p, name, path, sizeof path) == 0 && unlink(path) == 0)
    pool_fsync_dir(p, "images");
}

/* template verify and check --deep of a remote template.  There is no image here to re-hash:
 * the descriptor is the record, and what can change is the remote.  So the remote is asked
 * again, as `template add` asked it: its size and sampled fingerprint (what every open checks)
 * and, when `--verify` recorded a content hash, the whole content hashed again.  A writable
 * export is a fault unless it was added with --allow-writable. */
int
pool_remote_verify(struct cc_pool *p, const char *name, int *whole)
{
  static const char add[] = "template add: ";
  struct cc_remote_desc d, now;
  char msg[1024];
  int r;

  *whole = 0;
  if ((r = cc_template_remote_desc(p, name, &d)) < 0)
    return r;
  r = cc_remote_probe(
      name, d.uri,
      (d.content[0] ? CC_PROBE_VERIFY : 0) | (d.writable ? CC_PROBE_ALLOW_WRITABLE : 0), &now);
  if (r < 0) {
    /* The probe speaks for `template add`; say which command this is. */
    const char *m = cc_error_get();

    snprintf(msg, sizeof msg, "%s", strncmp(m, add, sizeof add - 1) == 0 ? m + sizeof add - 1 : m);
    return cc_error_set(-r, "template verify: %s", msg);
  }
  if (now.size != d.size)
    return cc_error_set(EUCLEAN,
                        "template verify: %s: %s: the remote now serves %llu bytes, recorded "
                        "%llu: its clones cannot be opened until it serves the recorded export",
                        name, d.uri, (unsigned long long)now.size, (unsigned long long)d.size);
  if (strcmp(now.fingerprint, d.fingerprint) != 0)
    return cc_error_set(EUCLEAN,
                        "template verify: %s: %s: the remote serves OTHER CONTENT (fingerprint "
                        "%s, recorded %s): its clones cannot be opened until it serves the "
                        "recorded export",
                        name, d.uri, now.fingerprint, d.fingerprint);
  if (d.content[0] && strcmp(now.content, d.content) != 0)
    return cc_error_set(EUCLEAN,
                        "template verify: %s: %s: the remote's content CHANGED (content hash %s, "
                        "recorded %s; the sampled fingerprint still matches): every clone on it "
                        "reads bytes it was not made from",
                        name, d.uri, now.content, d.content);
  *whole = d.content[0] != 0;
  return 0;
}
