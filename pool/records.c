/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: template and clone records, parsed and written.
 *
 * Design notes
 * ------------
 * A record is a small text file (POOL.md section 3): a version line, then one "key value" per
 * line.  Records are read whole and replaced whole (a batch, durable.c), never edited in place,
 * so a reader sees the old file or the new one.  Parsing is strict: an unknown key, a malformed
 * uuid or a bad name is an error naming the record and the line, because a record that says
 * something we don't understand must not be silently rewritten without it.
 *
 * A uuid from a record becomes a path (layers/UUID.cow), so it is checked to be exactly 36
 * lowercase hex digits and dashes: a record can never name a file outside layers/.
 * Snapshot descriptions are percent-encoded (bytes outside '!'..'~', and '%') so a description
 * is one field of one line whatever it contains.
 */
#include "pool/internal.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
pool_uuid_valid(const char *s)
{
  size_t i;

  if (strlen(s) != 36)
    return 0;
  for (i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-')
        return 0;
    } else if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
      return 0;
    }
  }
  return 1;
}

int
pool_parse_parent_link(int parent_kind, const char *link, char uuid[CC_UUID_STR],
                       char image[CC_NAME_MAX + 1])
{
  size_t len = strlen(link);

  uuid[0] = '\0';
  image[0] = '\0';
  if (parent_kind == OVL_PARENT_NONE)
    return 0;
  if (parent_kind == OVL_PARENT_LAYER) {
    /* "UUID.cow": a sibling in layers/, named by a real uuid (not any 36 bytes). */
    if (len != 36 + 4 || strcmp(link + 36, ".cow") != 0)
      return -EINVAL;
    memcpy(uuid, link, 36);
    uuid[36] = '\0';
    if (!pool_uuid_valid(uuid)) {
      uuid[0] = '\0';
      return -EINVAL;
    }
    return 0;
  }
  if (parent_kind == OVL_PARENT_RAW || parent_kind == OVL_PARENT_NBD) {
    /* "../images/NAME.raw" (or NAME.nbd, a remote descriptor); "../images/../../etc/x.raw" has
     * the right frame, so the name inside must be a name. */
    if (strncmp(link, "../images/", 10) != 0 || len <= 14 ||
        strcmp(link + len - 4, parent_kind == OVL_PARENT_RAW ? ".raw" : ".nbd") != 0 ||
        len - 14 > CC_NAME_MAX)
      return -EINVAL;
    memcpy(image, link + 10, len - 14);
    image[len - 14] = '\0';
    if (!cc_name_valid(image)) {
      image[0] = '\0';
      return -EINVAL;
    }
    return 0;
  }
  return -EINVAL;
}

static void
pct_encode(const char *in, char *out, size_t len)
{
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;

  for (; *in && o + 4 < len; in++) {
    unsigned char ch = (unsigned char)*in;
    if (ch > ' ' && ch < 0x7f && ch != '%') {
      out[o++] = (char)ch;
    } else {
      out[o++] = '%';
      out[o++] = hex[ch >> 4];
      out[o++] = hex[ch & 15];
    }
  }
  out[o] = '\0';
}

static int
hexval(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static int
pct_decode(const char *in, char *out, size_t len)
{
  size_t o = 0;

  for (; *in; in++) {
    if (o + 1 >= len)
      return -1;
    if (*in == '%') {
      int h = hexval(in[1]), l = h >= 0 ? hexval(in[2]) : -1;
      if (h < 0 || l < 0)
        return -1;
      out[o++] = (char)(h << 4 | l);
      in += 2;
    } else {
      out[o++] = *in;
    }
  }
  out[o] = '\0';
  return 0;
}

/* Read SUB/NAME into a malloc'd string. */
static int
read_record(struct cc_pool *p, const char *sub, const char *name, const char *what, char **out)
{
  char path[PATH_MAX];
  char *buf = NULL;
  size_t len = 0;
  FILE *f;
  int r;

  if (!cc_name_valid(name))
    return cc_error_set(EINVAL, "%s: '%.80s': not a valid name", what, name);
  if ((r = pool_path(p, path, sizeof path, "%s/%s", sub, name)) < 0)
    return r;
  f = fopen(path, "re");
  if (f == NULL) {
    if (errno == ENOENT)
      return cc_error_set(ENOENT, "%s: %s: no such %s", what, name,
                          strcmp(sub, "clones") == 0 ? "clone" : "template");
    return cc_error_set(errno, "%s: %s: %s", what, path, strerror(errno));
  }
  buf = malloc(65536 + 1);
  if (buf == NULL) {
    fclose(f);
    return cc_error_set(ENOMEM, "%s: %s: out of memory", what, name);
  }
  /* Records are small; a snapshot line is at most ~3.2 KiB.  Grow for very many snapshots. */
  for (;;) {
    size_t got = fread(buf + len, 1, 65536, f);
    char *nb;
    len += got;
    if (got < 65536)
      break;
    nb = realloc(buf, len + 65536 + 1);
    if (nb == NULL) {
      free(buf);
      fclose(f);
      return cc_error_set(ENOMEM, "%s: %s: out of memory", what, name);
    }
    buf = nb;
  }
  fclose(f);
  buf[len] = '\0';
  *out = buf;
  return 0;
}

int
pool_get_template(struct cc_pool *p, const char *op, const char *name, struct cc_template *t)
{
  char *buf, *line, *save = NULL;
  int r, lineno = 0, have_kind = 0, have_size = 0;

  if ((r = read_record(p, "templates", name, op, &buf)) < 0)
    return r;
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "%s", name);
  for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char key[32], val[128];
    lineno++;
    if (lineno == 1) {
      if (strcmp(line, "cowchain-template 1") != 0)
        goto bad;
      continue;
    }
    if (sscanf(line, "%31s %127s", key, val) != 2)
      goto bad;
    if (strcmp(key, "kind") == 0) {
      if (strcmp(val, "raw") == 0)
        t->kind = CC_TEMPLATE_RAW;
      else if (strcmp(val, "layer") == 0)
        t->kind = CC_TEMPLATE_LAYER;
      else if (strcmp(val, "remote") == 0)
        t->kind = CC_TEMPLATE_REMOTE;
      else
        goto bad;
      have_kind = 1;
    } else if (strcmp(key, "layer") == 0) {
      if (!pool_uuid_valid(val))
        goto bad;
      strcpy(t->layer, val);
    } else if (strcmp(key, "image") == 0) {
      /* informational: images/NAME.raw (raw) or images/NAME.nbd (remote), always */
    } else if (strcmp(key, "created") == 0) {
      if (cc_time_parse(val, &t->created) < 0)
        goto bad;
    } else if (strcmp(key, "size") == 0) {
      char *end;
      t->size = strtoull(val, &end, 10);
      if (*end)
        goto bad;
      have_size = 1;
    } else if (pool_template_key(t, key, val) <= 0) {
      goto bad;
    }
  }
  if (!have_kind || !have_size || (t->kind == CC_TEMPLATE_LAYER && !t->layer[0]))
    goto bad_missing;
  free(buf);
  return 0;

bad:
  free(buf);
  return cc_error_set(EUCLEAN, "%s: %s: malformed template record at line %d", op, name, lineno);
bad_missing:
  free(buf);
  return cc_error_set(EUCLEAN, "%s: %s: template record lacks kind, size or layer", op, name);
}

int
cc_pool_get_template(struct cc_pool *p, const char *name, struct cc_template *t)
{
  return pool_get_template(p, "template", name, t);
}

int
pool_batch_template(struct pool_batch *b, const struct cc_template *t)
{
  char buf[512], when[32];

  cc_time_format(t->created, CC_TIME_ISO, when, sizeof when);
  if (t->kind == CC_TEMPLATE_RAW)
    snprintf(buf, sizeof buf,
             "cowchain-template 1\nkind raw\nimage images/%s.raw\n"
             "created %s\nsize %" PRIu64 "\n",
             t->name, when, t->size);
  else if (t->kind == CC_TEMPLATE_REMOTE)
    snprintf(buf, sizeof buf,
             "cowchain-template 1\nkind remote\nimage images/%s.nbd\n"
             "created %s\nsize %" PRIu64 "\n",
             t->name, when, t->size);
  else
    snprintf(buf, sizeof buf,
             "cowchain-template 1\nkind layer\nlayer %s\ncreated %s\n"
             "size %" PRIu64 "\n",
             t->layer, when, t->size);
  pool_template_extra(t, buf, sizeof buf);
  return pool_batch_record(b, "templates", t->name, buf);
}

int
pool_write_template(struct cc_pool *p, const struct cc_template *t)
{
  struct pool_batch b;
  int r;

  pool_batch_init(&b, p);
  if ((r = pool_batch_template(&b, t)) == 0 && (r = pool_batch_prepare(&b)) == 0)
    r = pool_batch_commit(&b);
  pool_batch_free(&b);
  return r;
}

void
cc_clone_free(struct cc_clone *c)
{
  if (c) {
    free(c->snaps);
    c->snaps = NULL;
    c->nsnaps = 0;
  }
}

int
pool_get_clone(struct cc_pool *p, const char *op, const char *name, struct cc_clone *c)
{
  char *buf, *line, *save = NULL;
  int r, lineno = 0, have_size = 0;

  if ((r = read_record(p, "clones", name, op, &buf)) < 0)
    return r;
  memset(c, 0, sizeof *c);
  snprintf(c->name, sizeof c->name, "%s", name);
  for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char key[32], a[160], b[64], d[40], e[3 * CC_DESC_MAX + 1];
    int n;
    lineno++;
    if (lineno == 1) {
      if (strcmp(line, "cowchain-clone 1") != 0)
        goto bad;
      continue;
    }
    e[0] = '\0';
    n = sscanf(line, "%31s %159s %63s %39s %3072s", key, a, b, d, e);
    if (n < 2)
      goto bad;
    if (strcmp(key, "top") == 0 && n == 2) {
      if (!pool_uuid_valid(a))
        goto bad;
      strcpy(c->top, a);
    } else if (strcmp(key, "created") == 0 && n == 2) {
      if (cc_time_parse(a, &c->created) < 0)
        goto bad;
    } else if (strcmp(key, "origin") == 0 && (n == 2 || (n == 3 && strcmp(b, "full") == 0))) {
      char on[CC_NAME_MAX + 1], os[CC_NAME_MAX + 1];
      if (strlen(a) >= sizeof c->origin || cc_export_name_parse(a, on, os) < 0)
        goto bad;
      strcpy(c->origin, a);
      c->full = n == 3;
    } else if (strcmp(key, "size") == 0 && n == 2) {
      char *end;
      c->size = strtoull(a, &end, 10);
      if (*end)
        goto bad;
      have_size = 1;
    } else if (strcmp(key, "snapshot") == 0 && n >= 4) {
      struct cc_snapshot *s, *ns;
      if (!cc_name_valid(a) || !pool_uuid_valid(b))
        goto bad;
      ns = realloc(c->snaps, (c->nsnaps + 1) * sizeof *ns);
      if (ns == NULL) {
        free(buf);
        cc_clone_free(c);
        return cc_error_set(ENOMEM, "%s: %s: out of memory", op, name);
      }
      c->snaps = ns;
      s = &c->snaps[c->nsnaps++];
      memset(s, 0, sizeof *s);
      strcpy(s->name, a);
      strcpy(s->layer, b);
      if (cc_time_parse(d, &s->created) < 0 ||
          pct_decode(e, s->description, sizeof s->description) < 0)
        goto bad;
    } else {
      goto bad;
    }
  }
  if (!c->top[0] || !have_size) {
    free(buf);
    cc_clone_free(c);
    return cc_error_set(EUCLEAN, "%s: %s: clone record lacks top or size", op, name);
  }
  free(buf);
  /* A pending multi-clone snapshot's intent decides as the record does (live.c). */
  return pool_intent_apply(p, op, c);

bad:
  free(buf);
  cc_clone_free(c);
  return cc_error_set(EUCLEAN, "%s: %s: malformed clone record at line %d", op, name, lineno);
}

int
cc_pool_get_clone(struct cc_pool *p, const char *name, struct cc_clone *c)
{
  return pool_get_clone(p, "clone", name, c);
}

int
pool_format_clone(const struct cc_clone *c, char **out)
{
  size_t cap = 256 + c->nsnaps * (CC_NAME_MAX + CC_UUID_STR + 48 + 3 * CC_DESC_MAX);
  char *buf = malloc(cap), when[32];
  size_t i, o;

  if (buf == NULL)
    return cc_error_set(ENOMEM, "clone: %s: out of memory", c->name);
  cc_time_format(c->created, CC_TIME_ISO, when, sizeof when);
  o = (size_t)snprintf(buf, cap, "cowchain-clone 1\ntop %s\ncreated %s\nsize %" PRIu64 "\n", c->top,
                       when, c->size);
  if (c->origin[0])
    o += (size_t)snprintf(buf + o, cap - o, "origin %s%s\n", c->origin, c->full ? " full" : "");
  for (i = 0; i < c->nsnaps; i++) {
    const struct cc_snapshot *s = &c->snaps[i];
    char desc[3 * CC_DESC_MAX + 1];
    pct_encode(s->description, desc, sizeof desc);
    cc_time_format(s->created, CC_TIME_ISO, when, sizeof when);
    o += (size_t)snprintf(buf + o, cap - o, "snapshot %s %s %s%s%s\n", s->name, s->layer, when,
                          desc[0] ? " " : "", desc);
  }
  *out = buf;
  return 0;
}

int
pool_batch_clone(struct pool_batch *b, const struct cc_clone *c)
{
  char *buf;
  int r;

  if ((r = pool_format_clone(c, &buf)) < 0)
    return r;
  r = pool_batch_record(b, "clones", c->name, buf);
  free(buf);
  return r;
}

int
pool_write_clone(struct cc_pool *p, const struct cc_clone *c)
{
  struct pool_batch b;
  int r;

  pool_batch_init(&b, p);
  if ((r = pool_batch_clone(&b, c)) == 0 && (r = pool_batch_prepare(&b)) == 0)
    r = pool_batch_commit(&b);
  pool_batch_free(&b);
  return r;
}

int
pool_find_snap(const struct cc_clone *c, const char *snap)
{
  size_t i;

  for (i = 0; i < c->nsnaps; i++)
    if (strcmp(c->snaps[i].name, snap) == 0)
      return (int)i;
  return -1;
}

static int
cmp_names(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the records in SUB; skips anything that is not a valid name. */
static int
list_names(struct cc_pool *p, const char *sub, char ***out, size_t *n)
{
  char path[PATH_MAX];
  char **names = NULL;
  size_t cnt = 0, cap = 0;
  struct dirent *d;
  DIR *dir;
  int r;

  if ((r = pool_path(p, path, sizeof path, "%s", sub)) < 0)
    return r;
  dir = opendir(path);
  if (dir == NULL)
    return cc_error_set(errno, "list: %s: %s", path, strerror(errno));
  while ((d = readdir(dir)) != NULL) {
    if (!cc_name_valid(d->d_name))
      continue;
    if (cnt == cap) {
      char **nn = realloc(names, (cap = cap ? cap * 2 : 16) * sizeof *nn);
      if (nn == NULL)
        goto nomem;
      names = nn;
    }
    if ((names[cnt] = strdup(d->d_name)) == NULL)
      goto nomem;
    cnt++;
  }
  closedir(dir);
  if (cnt)
    qsort(names, cnt, sizeof *names, cmp_names);
  *out = names;
  *n = cnt;
  return 0;

nomem:
  closedir(dir);
  while (cnt)
    free(names[--cnt]);
  free(names);
  return cc_error_set(ENOMEM, "list: %s: out of memory", path);
}

static void
free_names(char **names, size_t n)
{
  while (n)
    free(names[--n]);
  free(names);
}

/* One lister for both kinds of record: every SUB/NAME, sorted by name, read with `get` into an
 * array of `size`-byte elements; a record deleted while we list is skipped; on failure `drop`
 * frees the `got` elements read so far (and the array). */
struct record_kind {
  const char *sub;  /* "templates" or "clones" */
  const char *what; /* names the listing in errors */
  size_t size;
  int (*get)(struct cc_pool *p, const char *name, void *elem);
  void (*drop)(void *list, size_t got);
};

static int
list_records(struct cc_pool *p, const struct record_kind *k, void **out, size_t *n)
{
  char *list;
  char **names;
  size_t cnt, i, got = 0;
  int r;

  if ((r = list_names(p, k->sub, &names, &cnt)) < 0)
    return r;
  list = calloc(cnt ? cnt : 1, k->size);
  if (list == NULL) {
    free_names(names, cnt);
    return cc_error_set(ENOMEM, "%s: out of memory", k->what);
  }
  for (i = 0; i < cnt; i++) {
    r = k->get(p, names[i], list + got * k->size);
    if (r == -ENOENT)
      continue; /* deleted while we listed */
    if (r < 0) {
      k->drop(list, got);
      free_names(names, cnt);
      return r;
    }
    got++;
  }
  free_names(names, cnt);
  *out = list;
  *n = got;
  return 0;
}

static int
get_template(struct cc_pool *p, const char *name, void *elem)
{
  return cc_pool_get_template(p, name, elem);
}

static void
drop_templates(void *list, size_t got)
{
  (void)got;
  free(list);
}

static int
get_clone(struct cc_pool *p, const char *name, void *elem)
{
  return cc_pool_get_clone(p, name, elem);
}

static void
drop_clones(void *list, size_t got)
{
  cc_clone_list_free(list, got);
}

int
cc_pool_list_templates(struct cc_pool *p, struct cc_template **out, size_t *n)
{
  static const struct record_kind k = {"templates", "template list", sizeof **out, get_template,
                                       drop_templates};
  void *list;
  int r;

  if ((r = list_records(p, &k, &list, n)) == 0)
    *out = list;
  return r;
}

void
cc_clone_list_free(struct cc_clone *list, size_t n)
{
  size_t i;

  for (i = 0; i < n; i++)
    cc_clone_free(&list[i]);
  free(list);
}

int
cc_pool_list_clones(struct cc_pool *p, struct cc_clone **out, size_t *n)
{
  static const struct record_kind k = {"clones", "clone list", sizeof **out, get_clone,
                                       drop_clones};
  void *list;
  int r;

  if ((r = list_records(p, &k, &list, n)) == 0)
    *out = list;
  return r;
}

int
pool_resolve(struct cc_pool *p, const char *what, const char *export_name, struct pool_target *t)
{
  char msg[512];
  int r;

  memset(t, 0, sizeof *t);
  if ((r = cc_export_name_parse(export_name, t->name, t->snap)) < 0) {
    snprintf(msg, sizeof msg, "%s", cc_error_get());
    return cc_error_set(-r, "%s: %s", what, msg);
  }
  if (t->snap[0]) {
    struct cc_clone c;
    int i;
    if ((r = pool_get_clone(p, what, t->name, &c)) < 0)
      return r;
    i = pool_find_snap(&c, t->snap);
    if (i < 0) {
      cc_clone_free(&c);
      return cc_error_set(ENOENT, "%s: %s@%s: no such snapshot", what, t->name, t->snap);
    }
    t->kind = CC_EXPORT_SNAPSHOT;
    strcpy(t->layer, c.snaps[i].layer);
    t->size = c.size;
    cc_clone_free(&c);
    return 0;
  }
  {
    struct cc_clone c;
    r = pool_get_clone(p, what, t->name, &c);
    if (r == 0) {
      t->kind = CC_EXPORT_CLONE;
      strcpy(t->layer, c.top);
      t->size = c.size;
      cc_clone_free(&c);
      return 0;
    }
    if (r != -ENOENT)
      return r;
  }
  r = pool_get_template(p, what, t->name, &t->tmpl);
  if (r == -ENOENT)
    return cc_error_set(ENOENT, "%s: %s: no such clone or template", what, t->name);
  if (r < 0)
    return r;
  t->kind = CC_EXPORT_TEMPLATE;
  strcpy(t->layer, t->tmpl.layer);
  t->size = t->tmpl.size;
  return 0;
}
