/* SPDX-License-Identifier: BSD-3-Clause */
/* Shared helpers of the chain/ unit tests; see util-chain.h for the model's rules. */
#include "tests/unit/util-chain.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "tests/unit/util-overlay.h"

void
ctu_model_init(struct ctu_model *m, uint64_t size, uint32_t granule)
{
  cr_assert(granule >= 512 && granule <= 4096 && (granule & (granule - 1)) == 0);
  m->size = 0;
  m->granule = granule;
  m->data = NULL;
  m->state = NULL;
  ctu_model_grow(m, size);
}

void
ctu_model_grow(struct ctu_model *m, uint64_t size)
{
  uint64_t ng_old = (m->size + m->granule - 1) / m->granule;
  uint64_t ng = (size + m->granule - 1) / m->granule;

  if (size <= m->size)
    return;
  m->data = realloc(m->data, size);
  m->state = realloc(m->state, ng ? ng : 1);
  cr_assert(m->data && m->state);
  memset(m->data + m->size, 0, size - m->size);
  memset(m->state + ng_old, CTU_HOLE, ng - ng_old);
  m->size = size;
}

void
ctu_model_copy(struct ctu_model *dst, const struct ctu_model *src)
{
  uint64_t ng = (src->size + src->granule - 1) / src->granule;

  dst->size = src->size;
  dst->granule = src->granule;
  dst->data = malloc(src->size ? src->size : 1);
  dst->state = malloc(ng ? ng : 1);
  cr_assert(dst->data && dst->state);
  memcpy(dst->data, src->data, src->size);
  memcpy(dst->state, src->state, ng);
}

void
ctu_model_free(struct ctu_model *m)
{
  free(m->data);
  free(m->state);
  m->data = m->state = NULL;
  m->size = 0;
}

void
ctu_model_write(struct ctu_model *m, const void *buf, uint64_t len, uint64_t off)
{
  cr_assert(off + len <= m->size);
  if (len == 0)
    return;
  memcpy(m->data + off, buf, len);
  for (uint64_t g = off / m->granule; g <= (off + len - 1) / m->granule; g++)
    m->state[g] = CTU_DATA;
}

void
ctu_model_zero(struct ctu_model *m, uint64_t len, uint64_t off)
{
  cr_assert(off + len <= m->size);
  if (len == 0)
    return;
  memset(m->data + off, 0, len);
  for (uint64_t g = off / m->granule; g <= (off + len - 1) / m->granule; g++) {
    uint64_t gs = g * m->granule, ge = gs + m->granule;

    if (gs >= off && ge <= off + len)
      m->state[g] = CTU_ZERO;
    else /* the overlay writes data zeroes, or keeps a zero sub-cluster zero */
      m->state[g] = CTU_ANYZERO;
  }
}

void
ctu_write_raw(const char *path, const struct ctu_model *m)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);

  cr_assert(fd >= 0, "open %s: %s", path, strerror(errno));
  cr_assert(m->size % 4096 == 0);
  cr_assert(ftruncate(fd, (off_t)m->size) == 0);
  for (uint64_t b = 0; b < m->size; b += 4096) {
    int data = 0;

    for (uint64_t g = b / m->granule; g < (b + 4096) / m->granule; g++)
      if (m->state[g] == CTU_DATA)
        data = 1;
    if (data)
      cr_assert(pwrite(fd, m->data + b, 4096, (off_t)b) == 4096);
  }
  close(fd);
}

void
ctu_layer(const char *path, uint64_t vsize, uint32_t cluster, enum ovl_parent_kind kind,
          const char *rel, const uint8_t *puuid, uint64_t psize, uint8_t uuid_out[OVL_UUID_LEN])
{
  struct ovl_create_opts o = {.virtual_size = vsize, .cluster_size = cluster};
  int r;

  o.parent.kind = kind;
  if (kind != OVL_PARENT_NONE) {
    o.parent.path = rel;
    o.parent.size = psize;
    if (puuid)
      memcpy(o.parent.uuid, puuid, OVL_UUID_LEN);
  }
  r = ovl_create(path, &o, uuid_out);
  cr_assert_eq(r, 0, "ovl_create %s: %s", path, cc_error_get());
}

char *
ctu_stack_path(const char *dir, const char *prefix, int i)
{
  char *s;

  cr_assert_neq(asprintf(&s, "%s/%s%d.cow", dir, prefix, i), -1);
  return s;
}

void
ctu_stack_layer(const char *dir, const char *prefix, int i, uint64_t size, const char *raw,
                uint8_t uuids[][OVL_UUID_LEN])
{
  char *p = ctu_stack_path(dir, prefix, i), rel[64];

  cr_assert(i > 0 || !raw, "layer 0 of a stack on raw image %s", raw);
  if (i == 0)
    ctu_layer(p, size, 0, OVL_PARENT_NONE, NULL, NULL, 0, uuids[0]);
  else if (i == 1 && raw)
    ctu_layer(p, size, 0, OVL_PARENT_RAW, raw, NULL, size, uuids[1]);
  else {
    snprintf(rel, sizeof rel, "%s%d.cow", prefix, i - 1);
    ctu_layer(p, size, 0, OVL_PARENT_LAYER, rel, uuids[i - 1], size, uuids[i]);
  }
  free(p);
}

void
ctu_random_raw(const char *dir, const char *name, struct ctu_model *m, uint64_t size, uint64_t *rng)
{
  uint8_t buf[4096];
  char *raw = otu_join(dir, name);

  ctu_model_init(m, size, 4096);
  for (uint64_t b = 0; b < size; b += 4096) {
    if (otu_rand_below(rng, 2)) {
      for (int i = 0; i < 4096; i++)
        buf[i] = (uint8_t)otu_rand(rng);
      ctu_model_write(m, buf, 4096, b);
    }
  }
  ctu_write_raw(raw, m);
  free(raw);
}

struct cc_chain *
ctu_open(const char *path, unsigned flags)
{
  struct cc_chain *c = NULL;
  int r = cc_chain_open(path, flags, &c);

  cr_assert_eq(r, 0, "cc_chain_open %s (flags %u): %d %s", path, flags, r, cc_error_get());
  cr_assert_not_null(c);
  return c;
}

void
ctu_check_read(struct cc_chain *c, const struct ctu_model *m, uint64_t off, uint64_t len)
{
  uint8_t *buf = malloc(len ? len : 1);
  int r;

  cr_assert_not_null(buf);
  memset(buf, 0xA5, len); /* zero pieces must really be written */
  r = cc_chain_pread(c, buf, len, off);
  cr_assert_eq(r, 0, "pread %" PRIu64 "+%" PRIu64 ": %d %s", off, len, r, cc_error_get());
  if (memcmp(buf, m->data + off, len) != 0) {
    for (uint64_t i = 0; i < len; i++)
      cr_assert_eq(buf[i], m->data[off + i],
                   "pread %" PRIu64 "+%" PRIu64 ": byte %" PRIu64 " is %#x, expected %#x", off, len,
                   off + i, buf[i], m->data[off + i]);
  }
  free(buf);
}

void
ctu_check_all(struct cc_chain *c, const struct ctu_model *m, uint64_t chunk)
{
  cr_assert_eq(cc_chain_size(c), m->size);
  for (uint64_t off = 0; off < m->size; off += chunk)
    ctu_check_read(c, m, off, m->size - off < chunk ? m->size - off : chunk);
}

struct ext_list {
  uint64_t *off, *len;
  uint32_t *type;
  size_t n, cap;
};

static int
collect(void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  struct ext_list *l = opaque;

  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 64;
    l->off = realloc(l->off, l->cap * sizeof *l->off);
    l->len = realloc(l->len, l->cap * sizeof *l->len);
    l->type = realloc(l->type, l->cap * sizeof *l->type);
    cr_assert(l->off && l->len && l->type);
  }
  l->off[l->n] = offset;
  l->len[l->n] = length;
  l->type[l->n] = type;
  l->n++;
  return 0;
}

static const char *
state_name(int s)
{
  static const char *names[] = {"HOLE", "DATA", "ZERO", "ANYZERO"};
  return names[s & 3];
}

void
ctu_check_extents(struct cc_chain *c, const struct ctu_model *m, uint64_t off, uint64_t len)
{
  struct ext_list l = {0};
  uint64_t pos = off;
  int r = cc_chain_extents(c, len, off, collect, &l);

  cr_assert_eq(r, 0, "extents %" PRIu64 "+%" PRIu64 ": %d %s", off, len, r, cc_error_get());
  if (len > 0)
    cr_assert_gt(l.n, 0);
  for (size_t i = 0; i < l.n; i++) {
    uint64_t eo = l.off[i], el = l.len[i];
    uint32_t t = l.type[i];

    cr_assert_eq(eo, pos, "extent %zu starts at %" PRIu64 ", expected %" PRIu64, i, eo, pos);
    cr_assert_gt(el, 0, "extent %zu is empty", i);
    cr_assert(t == 0 || t == CC_EXTENT_ZERO || t == (CC_EXTENT_HOLE | CC_EXTENT_ZERO),
              "extent %zu has type %u", i, t);
    if (i > 0)
      cr_assert_neq(t, l.type[i - 1], "extents %zu and %zu have the same type %u: not merged",
                    i - 1, i, t);
    if (t & CC_EXTENT_ZERO) {
      for (uint64_t b = eo; b < eo + el; b++)
        cr_assert_eq(m->data[b], 0,
                     "extent %" PRIu64 "+%" PRIu64 " type %u but byte %" PRIu64 " is %#x", eo, el,
                     t, b, m->data[b]);
    }
    for (uint64_t g = eo / m->granule; g <= (eo + el - 1) / m->granule; g++) {
      int s = m->state[g];
      int ok = s == CTU_HOLE   ? t == (CC_EXTENT_HOLE | CC_EXTENT_ZERO)
               : s == CTU_DATA ? t == 0
               : s == CTU_ZERO ? t == CC_EXTENT_ZERO
                               : (t == 0 || t == CC_EXTENT_ZERO);

      cr_assert(ok, "extent %" PRIu64 "+%" PRIu64 " type %u, but granule at %" PRIu64 " is %s", eo,
                el, t, g * m->granule, state_name(s));
    }
    pos = eo + el;
  }
  cr_assert_eq(pos, off + len, "extents end at %" PRIu64 ", expected %" PRIu64, pos, off + len);
  free(l.off);
  free(l.len);
  free(l.type);
}

int
ctu_count_fds(const char *prefix)
{
  DIR *d = opendir("/proc/self/fd");
  struct dirent *de;
  int n = 0;

  cr_assert_not_null(d);
  while ((de = readdir(d)) != NULL) {
    char link[300], target[4096];
    ssize_t len;

    if (de->d_name[0] == '.')
      continue;
    snprintf(link, sizeof link, "/proc/self/fd/%s", de->d_name);
    len = readlink(link, target, sizeof target - 1);
    if (len < 0)
      continue;
    target[len] = '\0';
    if (strncmp(target, prefix, strlen(prefix)) == 0)
      n++;
  }
  closedir(d);
  return n;
}
