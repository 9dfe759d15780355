/* SPDX-License-Identifier: BSD-3-Clause */
/* Shared helpers of the overlay/ unit tests; see util-overlay.h for why they re-derive the
 * format from docs/FORMAT.md instead of using overlay/format.h. */
#include "tests/unit/util-overlay.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>

#include "common/error.h"
#include "overlay/io.h"

char *
otu_tmpdir(void)
{
  char *d = strdup("/tmp/cc-otest-XXXXXX");
  cr_assert_not_null(d);
  cr_assert_not_null(mkdtemp(d), "mkdtemp: %s", strerror(errno));
  return d;
}

static void
rmtree_at(const char *dir)
{
  DIR *dh = opendir(dir);
  struct dirent *de;

  if (dh == NULL)
    return;
  while ((de = readdir(dh)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
      continue;
    char *p = otu_join(dir, de->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
      rmtree_at(p);
    else
      unlink(p);
    free(p);
  }
  closedir(dh);
  rmdir(dir);
}

void
otu_rmtree(char *dir)
{
  if (dir == NULL)
    return;
  rmtree_at(dir);
  free(dir);
}

char *
otu_join(const char *dir, const char *name)
{
  char *p;
  cr_assert_neq(asprintf(&p, "%s/%s", dir, name), -1);
  return p;
}

char *otu_dir;

void
otu_dir_init(void)
{
  otu_dir = otu_tmpdir();
}

void
otu_dir_fini(void)
{
  otu_rmtree(otu_dir);
  otu_dir = NULL;
}

/* Bitwise CRC-32C, written from the definition (reflected polynomial 0x82F63B78), slow and
 * obviously right rather than table-driven like the implementation under test. */
uint32_t
otu_crc32c(const void *buf, size_t len)
{
  const uint8_t *p = buf;
  uint32_t crc = 0xFFFFFFFFu;

  for (size_t i = 0; i < len; i++) {
    crc ^= p[i];
    for (int b = 0; b < 8; b++)
      crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return crc ^ 0xFFFFFFFFu;
}

uint32_t
otu_le32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t
otu_le64(const uint8_t *p)
{
  return (uint64_t)otu_le32(p) | (uint64_t)otu_le32(p + 4) << 32;
}

void
otu_put32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

void
otu_put64(uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

void
otu_read_at(const char *path, void *buf, size_t len, uint64_t off)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
  ssize_t r = pread(fd, buf, len, (off_t)off);
  cr_assert_eq(r, (ssize_t)len, "pread %s at %" PRIu64 ": %zd", path, off, r);
  close(fd);
}

void
otu_write_at(const char *path, const void *buf, size_t len, uint64_t off)
{
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
  ssize_t r = pwrite(fd, buf, len, (off_t)off);
  cr_assert_eq(r, (ssize_t)len, "pwrite %s at %" PRIu64 ": %zd", path, off, r);
  close(fd);
}

uint64_t
otu_file_size(const char *path)
{
  struct stat st;
  cr_assert_eq(stat(path, &st), 0, "stat %s: %s", path, strerror(errno));
  return (uint64_t)st.st_size;
}

uint8_t *
otu_slurp(const char *path, size_t *len)
{
  size_t n = (size_t)otu_file_size(path);
  uint8_t *b = malloc(n ? n : 1);
  cr_assert_not_null(b);
  if (n)
    otu_read_at(path, b, n, 0);
  *len = n;
  return b;
}

static size_t
slot_crc_len(const uint8_t slot[OTU_SLOT_SIZE])
{
  uint64_t n =
      (uint64_t)otu_le32(slot + OTU_H_HEADER_LENGTH) + otu_le32(slot + OTU_H_PARENT_PATH_LENGTH);
  return n > OTU_SLOT_SIZE ? OTU_SLOT_SIZE : (size_t)n;
}

static uint32_t
slot_crc(const uint8_t slot[OTU_SLOT_SIZE])
{
  uint8_t tmp[OTU_SLOT_SIZE];
  memcpy(tmp, slot, OTU_SLOT_SIZE);
  memset(tmp + OTU_H_CHECKSUM, 0, 4);
  return otu_crc32c(tmp, slot_crc_len(slot));
}

int
otu_slot_valid(const uint8_t slot[OTU_SLOT_SIZE])
{
  return memcmp(slot, "COWCHAIN", 8) == 0 && otu_le32(slot + OTU_H_CHECKSUM) == slot_crc(slot);
}

void
otu_slot_fix_crc(uint8_t slot[OTU_SLOT_SIZE])
{
  otu_put32(slot + OTU_H_CHECKSUM, slot_crc(slot));
}

void
otu_read_slot(const char *path, int idx, uint8_t slot[OTU_SLOT_SIZE])
{
  otu_read_at(path, slot, OTU_SLOT_SIZE, (uint64_t)idx * OTU_SLOT_SIZE);
}

void
otu_write_slot(const char *path, int idx, const uint8_t slot[OTU_SLOT_SIZE])
{
  otu_write_at(path, slot, OTU_SLOT_SIZE, (uint64_t)idx * OTU_SLOT_SIZE);
}

int
otu_current_slot(const char *path)
{
  uint8_t s[2][OTU_SLOT_SIZE];
  int v[2];

  for (int i = 0; i < 2; i++) {
    otu_read_slot(path, i, s[i]);
    v[i] = otu_slot_valid(s[i]);
  }
  if (v[0] && v[1])
    return otu_le64(s[1] + OTU_H_GENERATION) > otu_le64(s[0] + OTU_H_GENERATION) ? 1 : 0;
  return v[0] ? 0 : v[1] ? 1 : -1;
}

void
otu_patch_header(const char *path, size_t off, const void *bytes, size_t len)
{
  uint8_t slot[OTU_SLOT_SIZE];
  int cur = otu_current_slot(path);

  cr_assert_geq(cur, 0, "%s: no valid header slot to patch", path);
  cr_assert_leq(off + len, OTU_SLOT_SIZE);
  otu_read_slot(path, cur, slot);
  memcpy(slot + off, bytes, len);
  otu_slot_fix_crc(slot);
  otu_write_slot(path, cur, slot);
}

void
otu_patch_header32(const char *path, size_t off, uint32_t v)
{
  uint8_t b[4];
  otu_put32(b, v);
  otu_patch_header(path, off, b, 4);
}

void
otu_patch_header64(const char *path, size_t off, uint64_t v)
{
  uint8_t b[8];
  otu_put64(b, v);
  otu_patch_header(path, off, b, 8);
}

uint64_t
otu_l1_get(const char *path, uint32_t i)
{
  uint8_t b[8];
  otu_read_at(path, b, 8, OTU_L1_OFFSET + 8ull * i);
  return otu_le64(b);
}

void
otu_l1_set(const char *path, uint32_t i, uint64_t v)
{
  uint8_t b[8];
  otu_put64(b, v);
  otu_write_at(path, b, 8, OTU_L1_OFFSET + 8ull * i);
}

struct otu_l2e
otu_l2_get(const char *path, uint64_t l2_offset, uint32_t j)
{
  uint8_t b[16];
  struct otu_l2e e;

  otu_read_at(path, b, 16, l2_offset + 16ull * j);
  e.cluster_offset = otu_le64(b);
  e.alloc = otu_le32(b + 8);
  e.zero = otu_le32(b + 12);
  return e;
}

void
otu_l2_set(const char *path, uint64_t l2_offset, uint32_t j, struct otu_l2e e)
{
  uint8_t b[16];

  otu_put64(b, e.cluster_offset);
  otu_put32(b + 8, e.alloc);
  otu_put32(b + 12, e.zero);
  otu_write_at(path, b, 16, l2_offset + 16ull * j);
}

struct otu_obj {
  uint64_t start, end;
};

static int
obj_cmp(const void *a, const void *b)
{
  const struct otu_obj *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

int
otu_decode_map(const char *path, uint8_t *states, uint64_t *phys, uint64_t nsc, char *err,
               size_t errlen)
{
  uint8_t slot[OTU_SLOT_SIZE];
  int cur = otu_current_slot(path);
  int ret = -1;

  if (cur < 0) {
    snprintf(err, errlen, "no valid header slot");
    return -1;
  }
  otu_read_slot(path, cur, slot);
  uint64_t vsize = otu_le64(slot + OTU_H_VIRTUAL_SIZE);
  uint32_t cbits = otu_le32(slot + OTU_H_CLUSTER_BITS);
  uint32_t l1n = otu_le32(slot + OTU_H_L1_ENTRIES);
  uint64_t cs = 1ull << cbits, sc = cs / 32;
  uint64_t data_start = 8192 + (l1n * 8ull + 4095) / 4096 * 4096;
  uint64_t fsize = otu_file_size(path);
  uint64_t want_sc = (vsize + sc - 1) / sc;

  if (want_sc != nsc) {
    snprintf(err, errlen, "%" PRIu64 " sub-clusters, caller expects %" PRIu64, want_sc, nsc);
    return -1;
  }
  memset(states, OVL_UNALLOCATED, nsc);
  uint64_t *l1 = calloc(l1n, 8);
  uint8_t *l2 = malloc(OTU_L2_SIZE);
  size_t nobj = 0, capobj = 64;
  struct otu_obj *obj = malloc(capobj * sizeof *obj);
  cr_assert(l1 && l2 && obj);
  obj[nobj++] = (struct otu_obj){0, data_start};
  if (l1n) {
    uint8_t *raw = malloc(l1n * 8ull);
    cr_assert_not_null(raw);
    otu_read_at(path, raw, l1n * 8ull, OTU_L1_OFFSET); /* one read: this runs per crash state */
    for (uint32_t i = 0; i < l1n; i++)
      l1[i] = otu_le64(raw + 8ull * i);
    free(raw);
  }
  for (uint32_t i = 0; i < l1n; i++) {
    if (l1[i] == 0)
      continue;
    if (l1[i] % 4096 || l1[i] < data_start || l1[i] > fsize || fsize - l1[i] < 4096) {
      snprintf(err, errlen, "L1 %u: bad L2 offset %" PRIu64, i, l1[i]);
      goto out;
    }
    if (nobj + 257 > capobj) {
      capobj = 2 * capobj + 257;
      obj = realloc(obj, capobj * sizeof *obj);
      cr_assert_not_null(obj);
    }
    obj[nobj++] = (struct otu_obj){l1[i], l1[i] + 4096};
    otu_read_at(path, l2, OTU_L2_SIZE, l1[i]);
    for (uint32_t j = 0; j < 256; j++) {
      uint64_t c = (uint64_t)i * 256 + j, cstart = c * cs;
      uint64_t off = otu_le64(l2 + 16 * j);
      uint32_t a = otu_le32(l2 + 16 * j + 8), z = otu_le32(l2 + 16 * j + 12);
      if (cstart >= vsize) {
        if (off || a || z) {
          snprintf(err, errlen, "cluster %" PRIu64 " beyond the disk is not empty", c);
          goto out;
        }
        continue;
      }
      if (a & z) {
        snprintf(err, errlen, "cluster %" PRIu64 ": alloc & zero %08x", c, a & z);
        goto out;
      }
      if (a && !off) {
        snprintf(err, errlen, "cluster %" PRIu64 ": allocated without a cluster offset", c);
        goto out;
      }
      if (off) {
        if (off % 4096 || off < data_start || off > UINT64_MAX - cs) {
          snprintf(err, errlen, "cluster %" PRIu64 ": bad offset %" PRIu64, c, off);
          goto out;
        }
        obj[nobj++] = (struct otu_obj){off, off + cs};
      }
      for (unsigned k = 0; k < 32; k++) {
        uint64_t s0 = cstart + k * sc;
        int set = (int)((a | z) >> k & 1);
        if (s0 >= vsize) {
          if (set) {
            snprintf(err, errlen, "cluster %" PRIu64 " sc %u beyond the disk is set", c, k);
            goto out;
          }
          continue;
        }
        if (a >> k & 1) {
          if (off > fsize || (k + 1) * sc > fsize - off) {
            snprintf(err, errlen, "cluster %" PRIu64 " sc %u lies past EOF %" PRIu64, c, k, fsize);
            goto out;
          }
          states[s0 / sc] = OVL_DATA;
          if (phys)
            phys[s0 / sc] = off + k * sc;
        } else if (z >> k & 1) {
          states[s0 / sc] = OVL_ZERO;
        }
      }
    }
  }
  qsort(obj, nobj, sizeof *obj, obj_cmp);
  for (size_t n = 1; n < nobj; n++)
    if (obj[n].start < obj[n - 1].end) {
      snprintf(err, errlen, "objects at %" PRIu64 " and %" PRIu64 " overlap", obj[n - 1].start,
               obj[n].start);
      goto out;
    }
  ret = 0;
out:
  free(obj);
  free(l1);
  free(l2);
  return ret;
}

uint64_t
otu_rand(uint64_t *state)
{
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t
otu_rand_below(uint64_t *state, uint64_t n)
{
  return otu_rand(state) % n;
}

uint64_t
otu_seed(const char *test_name)
{
  const char *env = getenv("COWCHAIN_SEED");
  uint64_t seed;

  if (env != NULL && *env != '\0') {
    seed = strtoull(env, NULL, 0);
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed = (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec ^ (uint64_t)getpid() << 32;
  }
  /* stderr directly as well as the criterion log: the seed must survive a crash of the test */
  fprintf(stderr, "%s: seed %" PRIu64 " (rerun with COWCHAIN_SEED=%" PRIu64 ")\n", test_name, seed,
          seed);
  return seed;
}

/* 8 pattern bytes per 8-aligned word, each word a hash of (seed, word index): any byte can be
 * computed from its offset alone, so the "parent" needs no storage. */
void
otu_pattern(uint64_t seed, void *buf, uint64_t len, uint64_t off)
{
  uint8_t *p = buf;
  uint64_t end = off + len;

  while (off < end) {
    uint64_t w = seed ^ ((off >> 3) * 0xD1B54A32D192ED03ull);
    uint64_t h = otu_rand(&w);
    unsigned k = (unsigned)(off & 7);
    for (; k < 8 && off < end; k++, off++)
      *p++ = (uint8_t)(h >> (8 * k));
  }
}

int
otu_below_pattern(void *opaque, void *buf, uint64_t length, uint64_t offset)
{
  struct otu_below *b = opaque;

  b->calls++;
  if (b->nlog < 64) {
    b->log_off[b->nlog] = offset;
    b->log_len[b->nlog] = length;
    b->nlog++;
  }
  if (b->limit && (offset > b->limit || length > b->limit - offset)) {
    b->bad = 1;
    return -EIO;
  }
  otu_pattern(b->seed, buf, length, offset);
  return 0;
}

static int
nosync_fdatasync(int fd)
{
  (void)fd;
  return 0;
}

static struct ovl_io_ops nosync_ops;

void
otu_io_nosync(void)
{
  nosync_ops = ovl_io_default;
  nosync_ops.fdatasync = nosync_fdatasync;
  ovl_io = &nosync_ops;
}

void
otu_create(const char *path, uint64_t virtual_size, uint32_t cluster_size)
{
  struct ovl_create_opts o;

  memset(&o, 0, sizeof o);
  o.virtual_size = virtual_size;
  o.cluster_size = cluster_size;
  o.parent.kind = OVL_PARENT_NONE;
  int r = ovl_create(path, &o, NULL);
  cr_assert_eq(r, 0, "ovl_create %s: %d %s", path, r, cc_error_get());
}

struct ovl_layer *
otu_open(const char *path, unsigned flags)
{
  struct ovl_layer *l = NULL;
  int r = ovl_open(path, flags, &l);
  cr_assert_eq(r, 0, "ovl_open %s: %d %s", path, r, cc_error_get());
  cr_assert_not_null(l);
  return l;
}

long
otu_first_diff(const void *a, const void *b, size_t len)
{
  const uint8_t *x = a, *y = b;
  if (memcmp(x, y, len) == 0)
    return -1;
  for (size_t i = 0; i < len; i++)
    if (x[i] != y[i])
      return (long)i;
  return -1;
}
