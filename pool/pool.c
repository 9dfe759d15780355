/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: the directory layout, names, locking and the crash-test hook of the durable
 * steps (the steps themselves, batched per operation: durable.c).
 *
 * Design notes
 * ------------
 * A pool operation is a sequence of *durable steps*, each one a single atomic change of the
 * directory tree made durable before the next begins:
 *
 *   - a new file (layer, image, record) is written under tmp/, fsync'ed, then renamed into its
 *     directory, and that directory is fsync'ed;
 *   - a record is replaced by renaming a complete new copy over it;
 *   - a file is removed by unlink + fsync of its directory.
 *
 * The order of steps in each operation (POOL.md section 5) is chosen so that after every step
 * the records describe either the old state or the new one; what a crash can leave behind is
 * only garbage that no record reaches (a file in tmp/, a layer or image nobody names), which
 * `check` reports as a leak and `check --repair` removes.  durable.c makes the independent
 * steps of one operation together (struct pool_batch), so their syncs overlap.
 *
 * pool_step() counts the steps of the process; COWCHAIN_CRASH_AT=N kills the process right
 * after step N so the crash tests can try every point.
 *
 * Locking: operations that change records hold an exclusive flock(2) on POOL/cowchain-pool from
 * start to end, so garbage collection (which deletes unreachable layers) never races with an
 * operation that has installed a layer but not yet written the record naming it.  Readers take
 * no pool lock.  Layers in use by a server are protected by the overlay's OFD locks instead.
 */
#include "pool/internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *const pool_subdirs[] = {"images", "layers", "templates", "clones", "tmp"};

int
cc_name_valid(const char *name)
{
  size_t i;

  if (name == NULL || !isalnum((unsigned char)name[0]))
    return 0;
  for (i = 1; name[i]; i++) {
    unsigned char ch = (unsigned char)name[i];
    if (i >= CC_NAME_MAX)
      return 0;
    if (!(isalnum(ch) || ch == '.' || ch == '_' || ch == '-'))
      return 0;
  }
  return 1;
}

/* Why a name is invalid, for messages that say what to type instead. */
static const char *
name_fault(const char *name)
{
  size_t len = strlen(name);

  if (len == 0)
    return "empty name";
  if (len > CC_NAME_MAX)
    return "name longer than 64 characters";
  if (!isalnum((unsigned char)name[0]))
    return "name must start with a letter or digit";
  return "name may contain only letters, digits, '.', '_' and '-'";
}

int
cc_export_name_parse(const char *export_name, char name[CC_NAME_MAX + 1],
                     char snap[CC_NAME_MAX + 1])
{
  const char *at = strchr(export_name, '@');
  size_t nlen = at ? (size_t)(at - export_name) : strlen(export_name);
  char tmp[CC_NAME_MAX + 2];

  name[0] = snap[0] = '\0';
  if (nlen > CC_NAME_MAX)
    return cc_error_set(EINVAL, "name: '%.80s': name longer than 64 characters", export_name);
  memcpy(tmp, export_name, nlen);
  tmp[nlen] = '\0';
  if (!cc_name_valid(tmp))
    return cc_error_set(EINVAL, "name: '%.80s': %s", export_name, name_fault(tmp));
  if (at) {
    if (strchr(at + 1, '@'))
      return cc_error_set(EINVAL, "name: '%.80s': more than one '@'", export_name);
    if (!cc_name_valid(at + 1))
      return cc_error_set(EINVAL, "name: '%.80s': snapshot %s", export_name, name_fault(at + 1));
    strcpy(snap, at + 1);
  }
  strcpy(name, tmp);
  return 0;
}

int
pool_path(const struct cc_pool *p, char *buf, size_t len, const char *fmt, ...)
{
  va_list ap;
  int n = snprintf(buf, len, "%s/", p->dir);
  int m;

  if (n < 0 || (size_t)n >= len)
    return cc_error_set(ENAMETOOLONG, "path: %s: pool path too long", p->dir);
  va_start(ap, fmt);
  m = vsnprintf(buf + n, len - (size_t)n, fmt, ap);
  va_end(ap);
  if (m < 0 || (size_t)m >= len - (size_t)n)
    return cc_error_set(ENAMETOOLONG, "path: %s: path too long", p->dir);
  return 0;
}

int
pool_layer_path(const struct cc_pool *p, const char *uuid, char *buf, size_t len)
{
  return pool_path(p, buf, len, "layers/%s.cow", uuid);
}

int
pool_image_path(const struct cc_pool *p, const char *name, char *buf, size_t len)
{
  return pool_path(p, buf, len, "images/%s.raw", name);
}

/* Fill p's access fields for `group` ("" or NULL: owner-only). */
static int
pool_set_access(struct cc_pool *p, const char *what, const char *group)
{
  struct group *gr;

  p->group[0] = '\0';
  p->gid = (gid_t)-1;
  p->file_mode = 0600;
  p->dir_mode = 0700;
  if (group == NULL || group[0] == '\0')
    return 0;
  if (strlen(group) > CC_GROUP_MAX || strspn(group, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq"
                                                    "rstuvwxyz0123456789._-") != strlen(group))
    return cc_error_set(EINVAL, "%s: group '%.40s': not a group name", what, group);
  errno = 0;
  gr = getgrnam(group);
  if (gr == NULL)
    return cc_error_set(errno ? errno : ENOENT, "%s: group '%s': %s", what, group,
                        errno ? strerror(errno) : "no such group (see getent group)");
  snprintf(p->group, sizeof p->group, "%s", group);
  p->gid = gr->gr_gid;
  p->file_mode = 0640;
  p->dir_mode = 02750;
  return 0;
}

int
pool_secure_fd(const struct cc_pool *p, int fd, const char *path, int readonly)
{
  mode_t mode = (mode_t)(readonly ? p->file_mode & ~0222u : p->file_mode);

  if (p->gid != (gid_t)-1 && fchown(fd, (uid_t)-1, p->gid) == -1)
    return cc_error_set(errno, "chown: %s: group %s: %s", path, p->group, strerror(errno));
  if (fchmod(fd, mode) == -1)
    return cc_error_set(errno, "chmod: %s: %s", path, strerror(errno));
  return 0;
}

int
pool_secure_group(const struct cc_pool *p, const char *path)
{
  struct stat st;

  /* tmp/ is setgid, so this is normally a no-op; it matters if someone cleared the bit. */
  if (p->gid == (gid_t)-1 || (stat(path, &st) == 0 && st.st_gid == p->gid))
    return 0;
  if (chown(path, (uid_t)-1, p->gid) == -1)
    return cc_error_set(errno, "chown: %s: group %s: %s", path, p->group, strerror(errno));
  return 0;
}

unsigned
pool_allowed_mode(const struct cc_pool *p, unsigned st_mode)
{
  if (S_ISDIR(st_mode))
    return p->dir_mode & 0777;
  if (S_ISSOCK(st_mode))
    return p->file_mode | (p->gid != (gid_t)-1 ? 0020u : 0u);
  return p->file_mode;
}

/* mkdir (or take the existing) `path` and give it the pool's directory mode and group. */
static int
pool_mkdir(const struct cc_pool *p, const char *path)
{
  if (mkdir(path, 0700) == -1 && errno != EEXIST)
    return cc_error_set(errno, "pool init: %s: %s", path, strerror(errno));
  if (p->gid != (gid_t)-1 && chown(path, (uid_t)-1, p->gid) == -1)
    return cc_error_set(errno, "pool init: %s: group %s: %s", path, p->group, strerror(errno));
  if (chmod(path, (mode_t)p->dir_mode) == -1)
    return cc_error_set(errno, "pool init: %s: chmod: %s", path, strerror(errno));
  return 0;
}

int
cc_pool_init(const char *dir, const char *group)
{
  char path[PATH_MAX], marker[POOL_MARKER_MAX];
  struct cc_pool p = {.dir = (char *)dir, .lock_fd = -1};
  size_t i, mlen;
  int fd, r;

  if ((r = pool_set_access(&p, "pool init", group)) < 0)
    return r;
  snprintf(path, sizeof path, "%s/" POOL_MARKER, dir);
  if (access(path, F_OK) == 0)
    return cc_error_set(EEXIST, "pool init: %s: already a pool", dir);
  /* Directories first, each made owner-only (or group-only) before anything goes in it. */
  if ((r = pool_mkdir(&p, dir)) < 0)
    return r;
  for (i = 0; i < sizeof pool_subdirs / sizeof pool_subdirs[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, pool_subdirs[i]);
    if ((r = pool_mkdir(&p, path)) < 0)
      return r;
  }
  /* The marker goes last: a directory without it is not a pool, so a crash before this point
   * leaves nothing that looks like a half-made pool. */
  mlen = (size_t)snprintf(marker, sizeof marker, POOL_MARKER_LINE "%s%s%s",
                          p.group[0] ? "group " : "", p.group, p.group[0] ? "\n" : "");
  snprintf(path, sizeof path, "%s/tmp/marker", dir);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd == -1)
    return cc_error_set(errno, "pool init: %s: %s", path, strerror(errno));
  if ((r = pool_secure_fd(&p, fd, path, 0)) < 0) {
    close(fd);
    return r;
  }
  if (write(fd, marker, mlen) != (ssize_t)mlen || fsync(fd) == -1) {
    int e = errno ? errno : EIO;
    close(fd);
    return cc_error_set(e, "pool init: %s: %s", path, strerror(e));
  }
  close(fd);
  {
    char final[PATH_MAX];
    snprintf(final, sizeof final, "%s/" POOL_MARKER, dir);
    if (rename(path, final) == -1)
      return cc_error_set(errno, "pool init: %s: %s", final, strerror(errno));
  }
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd != -1) {
    fsync(fd);
    close(fd);
  }
  return 0;
}

int
cc_pool_open(const char *dir, struct cc_pool **out)
{
  char path[PATH_MAX], line[64] = "", group[CC_GROUP_MAX + 2] = "";
  struct cc_pool *p;
  FILE *f;
  size_t len = strlen(dir);
  int r;

  while (len > 1 && dir[len - 1] == '/')
    len--;
  if (len + 64 >= PATH_MAX)
    return cc_error_set(ENAMETOOLONG, "pool: %s: path too long", dir);
  snprintf(path, sizeof path, "%.*s/" POOL_MARKER, (int)len, dir);
  f = fopen(path, "re");
  if (f == NULL) {
    if (errno == ENOENT)
      return cc_error_set(ENOENT, "pool: %.*s: not a cowchain pool (run 'cowchain pool init')",
                          (int)len, dir);
    return cc_error_set(errno, "pool: %s: %s", path, strerror(errno));
  }
  if (fgets(line, sizeof line, f) == NULL || strcmp(line, POOL_MARKER_LINE) != 0) {
    fclose(f);
    return cc_error_set(EINVAL, "pool: %s: unknown pool version '%.20s'", path, line);
  }
  /* Optional second line: "group NAME" (POOL.md section 1.1). */
  if (fgets(line, sizeof line, f) != NULL) {
    size_t l = strlen(line);
    if (strncmp(line, "group ", 6) != 0 || l < 8 || line[l - 1] != '\n' || l - 7 > CC_GROUP_MAX ||
        fgetc(f) != EOF) {
      fclose(f);
      return cc_error_set(EINVAL, "pool: %s: unknown line '%.40s'", path, line);
    }
    memcpy(group, line + 6, l - 7);
    group[l - 7] = '\0';
  }
  fclose(f);
  p = calloc(1, sizeof *p);
  /* Absolute and canonical, as the plugin's pool= (nbdkit_realpath): paths the CLI and a
   * server exchange over the control socket, and compare, must name files the same way
   * whatever directory the CLI was started in. */
  if (p)
    p->dir = realpath(dir, NULL);
  if (p && p->dir == NULL)
    p->dir = strndup(dir, len);
  if (p == NULL || p->dir == NULL) {
    free(p);
    return cc_error_set(ENOMEM, "pool: %s: out of memory", dir);
  }
  p->lock_fd = -1;
  if ((r = pool_set_access(p, "pool", group)) < 0) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s", cc_error_get());
    cc_pool_close(p);
    return cc_error_set(-r, "%s (recorded in %s)", msg, path);
  }
  *out = p;
  return 0;
}

void
cc_pool_close(struct cc_pool *p)
{
  if (p == NULL)
    return;
  pool_unlock(p);
  free(p->dir);
  free(p);
}

const char *
cc_pool_dir(const struct cc_pool *p)
{
  return p->dir;
}

const char *
cc_pool_group(const struct cc_pool *p)
{
  return p->group;
}

int
cc_pool_secure_socket(struct cc_pool *p)
{
  char path[PATH_MAX];
  struct stat st;
  int r;

  if ((r = pool_path(p, path, sizeof path, "cowchain.sock")) < 0)
    return r;
  if (lstat(path, &st) == -1 || !S_ISSOCK(st.st_mode))
    return 0;
  if (p->gid != (gid_t)-1 && st.st_gid != p->gid && lchown(path, (uid_t)-1, p->gid) == -1)
    return cc_error_set(errno, "socket: %s: group %s: %s", path, p->group, strerror(errno));
  if (chmod(path, (mode_t)pool_allowed_mode(p, st.st_mode)) == -1)
    return cc_error_set(errno, "socket: %s: chmod: %s", path, strerror(errno));
  return 0;
}

int
pool_lock(struct cc_pool *p, const char *what)
{
  char path[PATH_MAX];
  int r;

  if (p->lock_fd != -1)
    return 0;
  if ((r = pool_path(p, path, sizeof path, POOL_MARKER)) < 0)
    return r;
  p->lock_fd = open(path, O_RDONLY | O_CLOEXEC);
  if (p->lock_fd == -1)
    return cc_error_set(errno, "%s: %s: %s", what, path, strerror(errno));
  /* Wait: pool operations are short (a data copy runs before the lock is needed only for
   * full clones, which keep it; another command simply queues behind it). */
  if (flock(p->lock_fd, LOCK_EX) == -1) {
    int e = errno;
    close(p->lock_fd);
    p->lock_fd = -1;
    return cc_error_set(e, "%s: %s: lock: %s", what, path, strerror(e));
  }
  /* An intent left by a dead process is committed already (readers apply it): write its
   * records now so it can go.  A failure changes nothing anyone reads; check reports it. */
  if (pool_intent_roll_forward(p, NULL) < 0)
    cc_error_clear();
  return 0;
}

void
pool_unlock(struct cc_pool *p)
{
  if (p->lock_fd != -1) {
    close(p->lock_fd); /* releases the flock */
    p->lock_fd = -1;
  }
}

static pid_t step_victim;
static int step_victim_fd = -1;

void
pool_step_victim(pid_t pid, int fd)
{
  step_victim = pid;
  step_victim_fd = fd;
}

long
pool_step(void)
{
  static long crash_at = -1, kill_at = -1, count;

  if (crash_at == -1) {
    const char *s = getenv("COWCHAIN_CRASH_AT"), *k = getenv("COWCHAIN_KILL_SERVER_AT");
    crash_at = s && *s ? strtol(s, NULL, 10) : 0;
    kill_at = k && *k ? strtol(k, NULL, 10) : 0;
  }
  count++;
  if (crash_at > 0 && count == crash_at)
    _exit(99);
  if (kill_at > 0 && count == kill_at && step_victim > 0) {
    char c;
    kill(step_victim, SIGKILL);
    /* Its control socket reaches end of file once the process is dead. */
    while (step_victim_fd >= 0 && read(step_victim_fd, &c, 1) > 0)
      ;
  }
  return count;
}

int
pool_tmp_path(const struct cc_pool *p, const char *prefix, const char *suffix, char *buf,
              size_t len)
{
  static unsigned counter;

  return pool_path(p, buf, len, "tmp/%s-%ld-%u%s", prefix, (long)getpid(), counter++, suffix);
}

int
pool_name_free(struct cc_pool *p, const char *op, const char *name)
{
  char path[PATH_MAX];
  int r;

  if (!cc_name_valid(name))
    return cc_error_set(EINVAL, "%s: '%.80s': %s", op, name, name_fault(name));
  if ((r = pool_path(p, path, sizeof path, "clones/%s", name)) < 0)
    return r;
  if (access(path, F_OK) == 0)
    return cc_error_set(EEXIST, "%s: %s: already exists (a clone)", op, name);
  if ((r = pool_path(p, path, sizeof path, "templates/%s", name)) < 0)
    return r;
  if (access(path, F_OK) == 0)
    return cc_error_set(EEXIST, "%s: %s: already exists (a template)", op, name);
  return 0;
}

int
pool_open_layer(struct cc_pool *p, const char *uuid, unsigned flags, const char *what,
                struct ovl_layer **out)
{
  char path[PATH_MAX];
  int r;

  if ((r = pool_layer_path(p, uuid, path, sizeof path)) < 0)
    return r;
  r = ovl_open(path, flags, out);
  if (r == -EBUSY) {
    char holder[128];
    ovl_lock_holder(path, holder, sizeof holder);
    return cc_error_set(EBUSY, "%s: layer %s is in use by %s", what, uuid, holder);
  }
  if (r < 0) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", cc_error_get());
    return cc_error_set(-r, "%s: %s", what, msg);
  }
  return 0;
}

int
pool_parent_of_template(struct cc_pool *p, const struct cc_template *t, struct ovl_parent *par,
                        char *pathbuf, size_t pathlen)
{
  char path[PATH_MAX];
  struct stat st;
  int r;

  if (t->kind == CC_TEMPLATE_LAYER)
    return pool_parent_of_layer(p, t->layer, par, pathbuf, pathlen);
  if (t->kind == CC_TEMPLATE_REMOTE)
    return pool_parent_of_remote(p, t, par, pathbuf, pathlen);
  if ((r = pool_image_path(p, t->name, path, sizeof path)) < 0)
    return r;
  if (stat(path, &st) == -1)
    return cc_error_set(errno, "template %s: %s: %s", t->name, path, strerror(errno));
  if ((size_t)snprintf(pathbuf, pathlen, "../images/%s.raw", t->name) >= pathlen)
    return cc_error_set(ENAMETOOLONG, "template %s: path too long", t->name);
  memset(par, 0, sizeof *par);
  par->kind = OVL_PARENT_RAW;
  par->path = pathbuf;
  par->size = (uint64_t)st.st_size;
  return 0;
}

int
pool_parent_of_layer(struct cc_pool *p, const char *uuid, struct ovl_parent *par, char *pathbuf,
                     size_t pathlen)
{
  struct ovl_layer *l;
  struct ovl_info info;
  int r;

  /* Open without a lock and without its map: we only need its identity (O(1) however much the
   * layer holds), and a server may hold it. */
  if ((r = pool_open_layer(p, uuid, OVL_RDONLY | OVL_NOLOCK | OVL_HEADER_ONLY, "parent", &l)) < 0)
    return r;
  ovl_get_info(l, &info);
  ovl_close(l);
  if ((size_t)snprintf(pathbuf, pathlen, "%s.cow", uuid) >= pathlen)
    return cc_error_set(ENAMETOOLONG, "parent %s: path too long", uuid);
  memset(par, 0, sizeof *par);
  par->kind = OVL_PARENT_LAYER;
  par->path = pathbuf;
  memcpy(par->uuid, info.uuid, OVL_UUID_LEN);
  par->size = info.virtual_size;
  return 0;
}

int64_t
pool_now(void)
{
  return (int64_t)time(NULL);
}
