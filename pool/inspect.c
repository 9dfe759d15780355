/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: inspecting an image before `template import` converts it.
 *
 * Design notes
 * ------------
 * Images come from people we do not know.  qemu-img follows every reference an image makes by
 * design: a qcow2 backing file or external data file, a VMDK descriptor's extents, a json: or
 * protocol filename.  Converting such an image copies whatever host file it names (as the user
 * running the import, often root) into a template that is then served to every client.  So,
 * before any byte is written (POOL.md section 5.1):
 *
 *   1. `timeout 30 qemu-img info --output=json -U ABSPATH` (no -f: qemu-img says what the file
 *      is; the path is absolute, so qemu-img never reads it as a protocol or json: name);
 *   2. the JSON is parsed here (a small strict parser: objects, arrays, strings with escapes,
 *      numbers, literals; depth-limited) and refused if it names any other file: a key ending
 *      in "backing-filename", a "data-file", any "filename" other than the image's own (VMDK
 *      extents, the children of newer qemu-img), or a VMDK whose file is a text descriptor;
 *   3. a detected format other than --format, or a virtual size beyond OVL_MAX_VIRTUAL_SIZE,
 *      is refused too; `qemu-img check` (references disabled) refuses a corrupt or truncated
 *      image (qemu-img would convert one, reading past its end as zeroes); then `qemu-img
 *      measure` tells how much data the raw copy will hold.
 *
 * The conversion then opens the image with --image-opts "driver=FMT,file.driver=file,
 * file.filename=PATH,backing=" (backing disabled: qemu 7.2 spells null as the empty string),
 * so a reference the inspection missed still cannot pull in a backing file.  qemu-img offers
 * no option that disables a qcow2 data file or VMDK extents (it refuses data-file options for
 * an image without one); for those, step 2 is the guard.
 */
#include "pool/internal.h"

#include "overlay/format.h" /* OVL_MAX_VIRTUAL_SIZE */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define INFO_TIMEOUT "30"          /* seconds for qemu-img info / measure */
#define CHECK_TIMEOUT "120"        /* seconds for qemu-img check (reads all metadata) */
#define INFO_MAX_OUTPUT (1u << 20) /* bytes of JSON we accept */
#define JSON_MAX_DEPTH 32
#define JSON_MAX_STRING 8192

/* ---- a small JSON parser that reports every scalar with its key path ------------------ */

struct json {
  const char *s; /* next character */
  int depth;
  const char *err;           /* first fault */
  char path[512];            /* "format-specific.data.extents[].filename" */
  char buf[JSON_MAX_STRING]; /* the string just parsed (a key is copied before recursing) */
  void (*scalar)(void *opaque, const char *path, const char *val, int is_string);
  void *opaque;
};

static void
ws(struct json *j)
{
  while (*j->s == ' ' || *j->s == '\t' || *j->s == '\n' || *j->s == '\r')
    j->s++;
}

static int
hex4(const char *s, unsigned *out)
{
  unsigned v = 0;
  int i;

  for (i = 0; i < 4; i++) {
    char c = s[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f')
      v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      v |= (unsigned)(c - 'A' + 10);
    else
      return -1;
  }
  *out = v;
  return 0;
}

/* Parse a string into buf (UTF-8, NUL-terminated; an embedded \u0000 is a fault). */
static int
json_string(struct json *j, char *buf, size_t len)
{
  size_t o = 0;

  if (*j->s != '"')
    return j->err = "expected a string", -1;
  j->s++;
  while (*j->s != '"') {
    unsigned c = (unsigned char)*j->s++;
    if (c == 0 || c < 0x20)
      return j->err = "bad character in a string", -1;
    if (c == '\\') {
      char e = *j->s++;
      switch (e) {
      case '"':
      case '\\':
      case '/':
        c = (unsigned char)e;
        break;
      case 'b':
        c = '\b';
        break;
      case 'f':
        c = '\f';
        break;
      case 'n':
        c = '\n';
        break;
      case 'r':
        c = '\r';
        break;
      case 't':
        c = '\t';
        break;
      case 'u':
        if (hex4(j->s, &c) < 0)
          return j->err = "bad \\u escape", -1;
        j->s += 4;
        if (c >= 0xd800 && c < 0xdc00) {
          unsigned lo;
          if (j->s[0] != '\\' || j->s[1] != 'u' || hex4(j->s + 2, &lo) < 0 || lo < 0xdc00 ||
              lo >= 0xe000)
            return j->err = "bad surrogate pair", -1;
          j->s += 6;
          c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (c == 0)
          return j->err = "NUL in a string", -1;
        break;
      default:
        return j->err = "bad escape", -1;
      }
    }
    if (o + 5 >= len)
      return j->err = "string too long", -1;
    if (c < 0x80) {
      buf[o++] = (char)c;
    } else if (c < 0x800) {
      buf[o++] = (char)(0xc0 | (c >> 6));
      buf[o++] = (char)(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
      buf[o++] = (char)(0xe0 | (c >> 12));
      buf[o++] = (char)(0x80 | ((c >> 6) & 0x3f));
      buf[o++] = (char)(0x80 | (c & 0x3f));
    } else {
      buf[o++] = (char)(0xf0 | (c >> 18));
      buf[o++] = (char)(0x80 | ((c >> 12) & 0x3f));
      buf[o++] = (char)(0x80 | ((c >> 6) & 0x3f));
      buf[o++] = (char)(0x80 | (c & 0x3f));
    }
  }
  j->s++;
  buf[o] = '\0';
  return 0;
}

static int json_value(struct json *j);

/* Append ".key" or "[]" to the path for the duration of one value. */
static int
json_child(struct json *j, const char *key)
{
  size_t plen = strlen(j->path);
  int r;

  if (key) {
    if (plen + strlen(key) + 2 >= sizeof j->path)
      return j->err = "key path too long", -1;
    snprintf(j->path + plen, sizeof j->path - plen, "%s%s", plen ? "." : "", key);
  } else {
    if (plen + 3 >= sizeof j->path)
      return j->err = "key path too long", -1;
    strcat(j->path, "[]");
  }
  r = json_value(j);
  j->path[plen] = '\0';
  return r;
}

static int
json_value(struct json *j)
{
  static const char *const literals[] = {"true", "false", "null"};
  char *buf = j->buf;
  size_t i;

  ws(j);
  if (++j->depth > JSON_MAX_DEPTH)
    return j->err = "nested too deep", -1;
  if (*j->s == '{' || *j->s == '[') {
    int obj = *j->s == '{';
    char end = obj ? '}' : ']';

    j->s++;
    ws(j);
    if (*j->s == end) {
      j->s++;
      j->depth--;
      return 0;
    }
    for (;;) {
      char *key = NULL;
      ws(j);
      if (obj) {
        if (json_string(j, buf, JSON_MAX_STRING) < 0)
          return -1;
        if ((key = strdup(buf)) == NULL)
          return j->err = "out of memory", -1;
        ws(j);
        if (*j->s++ != ':') {
          free(key);
          return j->err = "expected ':'", -1;
        }
      }
      int r = json_child(j, key);
      free(key);
      if (r < 0)
        return -1;
      ws(j);
      if (*j->s == ',') {
        j->s++;
        continue;
      }
      if (*j->s++ != end)
        return j->err = obj ? "expected ',' or '}'" : "expected ',' or ']'", -1;
      break;
    }
    j->depth--;
    return 0;
  }
  if (*j->s == '"') {
    if (json_string(j, buf, JSON_MAX_STRING) < 0)
      return -1;
    j->scalar(j->opaque, j->path, buf, 1);
    j->depth--;
    return 0;
  }
  for (i = 0; i < 3; i++) {
    size_t l = strlen(literals[i]);
    if (strncmp(j->s, literals[i], l) == 0) {
      j->s += l;
      j->scalar(j->opaque, j->path, literals[i], 0);
      j->depth--;
      return 0;
    }
  }
  if (*j->s == '-' || (*j->s >= '0' && *j->s <= '9')) {
    size_t n = strspn(j->s, "-+.eE0123456789");
    if (n >= 32)
      return j->err = "number too long", -1;
    memcpy(buf, j->s, n);
    buf[n] = '\0';
    j->s += n;
    j->scalar(j->opaque, j->path, buf, 0);
    j->depth--;
    return 0;
  }
  return j->err = "unexpected character", -1;
}

/* Parse the whole document; -1 with j->err set if it is not one well-formed JSON value. */
static int
json_parse(struct json *j, const char *text)
{
  j->s = text;
  j->depth = 0;
  j->err = NULL;
  j->path[0] = '\0';
  if (json_value(j) < 0)
    return -1;
  ws(j);
  if (*j->s != '\0')
    return j->err = "trailing characters", -1;
  return 0;
}

/* ---- what qemu-img info says ----------------------------------------------------------- */

struct facts {
  char format[16];
  char filename[PATH_MAX];
  int have_size, bad_size;
  uint64_t virtual_size;
  char ref_kind[48];  /* the first reference found: what it is ... */
  char ref[PATH_MAX]; /* ... and what it names */
  char *filenames;    /* every other "filename" value, each NUL-terminated */
  size_t filenames_len;
  int oom;
};

static int
parse_u64(const char *s, uint64_t *out)
{
  char *end;
  unsigned long long v;

  if (*s < '0' || *s > '9')
    return -1;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno || *end)
    return -1;
  *out = v;
  return 0;
}

static void
note_ref(struct facts *f, const char *kind, const char *val)
{
  if (f->ref_kind[0])
    return;
  snprintf(f->ref_kind, sizeof f->ref_kind, "%s", kind);
  snprintf(f->ref, sizeof f->ref, "%s", val);
}

static void
on_scalar(void *opaque, const char *path, const char *val, int is_string)
{
  struct facts *f = opaque;
  const char *leaf = strrchr(path, '.');
  size_t plen = strlen(path);

  leaf = leaf ? leaf + 1 : path;
  if (strcmp(path, "format") == 0 && is_string) {
    snprintf(f->format, sizeof f->format, "%s", val);
  } else if (strcmp(path, "virtual-size") == 0) {
    f->have_size = 1;
    if (is_string || parse_u64(val, &f->virtual_size) < 0)
      f->bad_size = 1;
  } else if (strcmp(path, "filename") == 0 && is_string) {
    snprintf(f->filename, sizeof f->filename, "%s", val);
  } else if (plen >= 16 && strcmp(path + plen - 16, "backing-filename") == 0) {
    note_ref(f, "backing file", val);
  } else if (strcmp(leaf, "data-file") == 0) {
    note_ref(f, "external data file", val);
  } else if (strcmp(leaf, "filename") == 0 && is_string) {
    /* Compared with the image's own name once the whole document is read. */
    size_t l = strlen(val) + 1;
    char *n = realloc(f->filenames, f->filenames_len + l);
    if (n == NULL) {
      f->oom = 1;
      return;
    }
    memcpy(n + f->filenames_len, val, l);
    f->filenames = n;
    f->filenames_len += l;
  }
}

/* A VMDK whose first bytes are a text descriptor keeps all its data in other files. */
static int
is_vmdk_descriptor(const char *path)
{
  static const char sig[] = "# Disk DescriptorFile";
  char b[sizeof sig - 1];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ssize_t n;

  if (fd == -1)
    return 0;
  n = pread(fd, b, sizeof b, 0);
  close(fd);
  return n == (ssize_t)sizeof b && memcmp(b, sig, sizeof b) == 0;
}

int
pool_image_opts(const char *abspath, const char *format, char **out)
{
  size_t i, o = 0, len = strlen(abspath);
  char *s = malloc(2 * len + strlen(format) + 64);

  if (s == NULL)
    return cc_error_set(ENOMEM, "template import: out of memory");
  o = (size_t)sprintf(s, "driver=%s,file.driver=file,file.filename=", format);
  /* QemuOpts: a comma inside a value is written as two. */
  for (i = 0; i < len; i++) {
    s[o++] = abspath[i];
    if (abspath[i] == ',')
      s[o++] = ',';
  }
  strcpy(s + o, ",backing=");
  *out = s;
  return 0;
}

/* `qemu-img check` of the image itself (references disabled): a truncated or corrupt image
 * is refused rather than converted (qemu-img reads past the end of a truncated file as
 * zeroes).  Exit 3 (leaked clusters only) and 63 (the format has no check) are fine. */
static int
check_image(const char *shown, const char *abspath, const char *format)
{
  char *opts = NULL, *out = NULL;
  int r, status = 0;

  if ((r = pool_image_opts(abspath, format, &opts)) < 0)
    return r;
  char *argv[] = {"timeout",       CHECK_TIMEOUT,  "qemu-img", "check", "-U",
                  "--output=json", "--image-opts", opts,       NULL};
  r = pool_run_output("template import: qemu-img check", argv, &out, INFO_MAX_OUTPUT, &status);
  free(opts);
  if (r < 0)
    return r;
  if (status == 2) {
    const char *c = strstr(out, "\"corruptions\":");
    r = cc_error_set(EINVAL,
                     "template import: %s: corrupt or truncated image (qemu-img check: "
                     "%llu corruptions)",
                     shown, c ? strtoull(c + 15, NULL, 10) : 0ull);
  } else if (status != 0 && status != 3 && status != 63) {
    r = cc_error_set(EINVAL,
                     "template import: %s: qemu-img check could not check the image "
                     "(exit %d)",
                     shown, status);
  }
  free(out);
  return r;
}

/* How much data the raw copy will hold, by `qemu-img measure` (allocated clusters, counted in
 * full); 0 if qemu-img cannot tell. */
static uint64_t
measure(const char *abspath, const char *format, int allow_refs)
{
  char *opts = NULL, *out = NULL, *p;
  uint64_t v = 0;

  if (allow_refs) {
    char *argv[] = {"timeout", INFO_TIMEOUT, "qemu-img", "measure",      "--output=json",
                    "-O",      "qcow2",      "-f",       (char *)format, (char *)abspath,
                    NULL};
    if (pool_run_output("template import: qemu-img measure", argv, &out, 4096, NULL) < 0)
      return 0;
  } else {
    if (pool_image_opts(abspath, format, &opts) < 0)
      return 0;
    char *argv[] = {"timeout", INFO_TIMEOUT, "qemu-img",     "measure", "--output=json",
                    "-O",      "qcow2",      "--image-opts", opts,      NULL};
    int r = pool_run_output("template import: qemu-img measure", argv, &out, 4096, NULL);
    free(opts);
    if (r < 0)
      return 0;
  }
  /* {"bitmaps": 0, "required": N, "fully-allocated": M}: one key is all we need. */
  p = strstr(out, "\"required\":");
  if (p) {
    p += 11;
    while (*p == ' ')
      p++;
    v = strtoull(p, NULL, 10);
  }
  free(out);
  return v;
}

int
pool_inspect_image(const char *shown, const char *abspath, const char *format, int allow_refs,
                   struct pool_image_facts *out)
{
  char *argv[] = {"timeout",       INFO_TIMEOUT, "qemu-img",      "info",
                  "--output=json", "-U",         (char *)abspath, NULL};
  struct facts *f = calloc(1, sizeof *f);
  struct json j = {.scalar = on_scalar};
  const char *hint = "; add --allow-backing to import a chain you trust (it reads the files "
                     "the image names)";
  char *text = NULL;
  int r;

  if (f == NULL)
    return cc_error_set(ENOMEM, "template import: out of memory");
  memset(out, 0, sizeof *out);
  if ((r = pool_run_output("template import: qemu-img info", argv, &text, INFO_MAX_OUTPUT, NULL)) <
      0)
    goto out;
  j.opaque = f;
  if (json_parse(&j, text) < 0 || f->oom) {
    r = cc_error_set(EINVAL, "template import: %s: qemu-img info: unreadable output (%s)", shown,
                     f->oom ? "out of memory" : j.err);
    goto out;
  }
  if (f->format[0] == '\0' || !f->have_size || f->bad_size) {
    r = cc_error_set(EINVAL, "template import: %s: qemu-img info gave no %s", shown,
                     f->format[0] ? "virtual size" : "format");
    goto out;
  }
  if (strcmp(f->format, format) != 0) {
    r = cc_error_set(EINVAL, "template import: %s: the file is %s, not %s (check --format)", shown,
                     f->format, format);
    goto out;
  }
  if (!allow_refs) {
    size_t o;
    for (o = 0; o < f->filenames_len && !f->ref_kind[0]; o += strlen(f->filenames + o) + 1)
      if (strcmp(f->filenames + o, f->filename) != 0)
        note_ref(f, strcmp(format, "vmdk") == 0 ? "VMDK extent" : "other file", f->filenames + o);
    if (!f->ref_kind[0] && strcmp(format, "vmdk") == 0 && is_vmdk_descriptor(abspath))
      note_ref(f, "VMDK descriptor", "data in other files");
    if (f->ref_kind[0]) {
      r = cc_error_set(EPERM, "template import: %s: refers to %s '%.256s'; refused%s", shown,
                       f->ref_kind, f->ref, hint);
      goto out;
    }
  }
  if (f->virtual_size == 0) {
    r = cc_error_set(EINVAL, "template import: %s: empty image", shown);
    goto out;
  }
  if (f->virtual_size > OVL_MAX_VIRTUAL_SIZE - 511) {
    r = cc_error_set(EFBIG,
                     "template import: %s: virtual size %llu bytes is beyond the 4 EiB "
                     "limit of the pool",
                     shown, (unsigned long long)f->virtual_size);
    goto out;
  }
  if ((r = check_image(shown, abspath, format)) < 0)
    goto out;
  snprintf(out->format, sizeof out->format, "%s", f->format);
  out->virtual_size = f->virtual_size;
  out->need_bytes = measure(abspath, format, allow_refs);
  if (out->need_bytes == 0 || out->need_bytes > out->virtual_size)
    out->need_bytes = out->virtual_size;
  r = 0;
out:
  free(text);
  free(f->filenames);
  free(f);
  return r;
}
