/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: the content hash of a template image (POOL.md section 3.1.1).
 *
 * Design notes
 * ------------
 * What it is for: noticing that a template's bytes changed behind the pool's back (a write to
 * images/NAME.raw by root, a restore from a bad backup), which would silently change every
 * clone on it.  The threat is an accident, not an adversary: whoever can rewrite the image can
 * rewrite the record too.  So the hash must be fast (it runs during import and over every
 * template in `check --deep`) and have negligible accidental collisions; it need not be
 * cryptographic.  XXH64 (Yann Collet's xxHash, 64-bit variant) runs at memory speed in plain
 * C, is short enough to implement here from its specification (no new library; none of the
 * -dev packages the build already uses has a fast hash), and `xxhsum -H1` (Debian package
 * xxhash) is an independent oracle for the unit test.
 *
 * Sparse files: the hash is of the bytes, not of the layout, and must not cost time in holes
 * (a 100 GiB image with 2 GiB of data).  So the image is cut into 64 KiB chunks, each chunk is
 * hashed alone, and the chunk hashes are chained: state = XXH64(le64(state) || le64(chunk
 * hash)).  A chunk of zeroes always has the same hash, computed once, so a hole costs one
 * 16-byte hash per 64 KiB; the result is the same whether a zero chunk is a hole, written
 * zeroes, or half of each.  The final value is XXH64(le64(state) || le64(size)); records spell
 * it "xxh64-64k:" and 16 hex digits.
 *
 * Feeding is in file order; pool_hash_feed buffers a partial chunk, so callers feed whatever
 * pieces they copy (data extents, holes between them) without aligning anything.
 */
#include "pool/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define P1 UINT64_C(0x9E3779B185EBCA87)
#define P2 UINT64_C(0xC2B2AE3D27D4EB4F)
#define P3 UINT64_C(0x165667B19E3779F9)
#define P4 UINT64_C(0x85EBCA77C2B2AE63)
#define P5 UINT64_C(0x27D4EB2F165667C5)

static inline uint64_t
rotl(uint64_t x, int r)
{
  return (x << r) | (x >> (64 - r));
}

static inline uint64_t
rd64(const uint8_t *p)
{
  uint64_t v = 0;

  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

static inline uint32_t
rd32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t
xround(uint64_t acc, uint64_t in)
{
  acc += in * P2;
  acc = rotl(acc, 31);
  return acc * P1;
}

static inline uint64_t
merge(uint64_t acc, uint64_t v)
{
  acc ^= xround(0, v);
  return acc * P1 + P4;
}

uint64_t
pool_xxh64(const void *data, size_t len, uint64_t seed)
{
  const uint8_t *p = data, *end = p + len;
  uint64_t h;

  if (len >= 32) {
    uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
    const uint8_t *limit = end - 32;

    do {
      v1 = xround(v1, rd64(p));
      v2 = xround(v2, rd64(p + 8));
      v3 = xround(v3, rd64(p + 16));
      v4 = xround(v4, rd64(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    h = merge(h, v1);
    h = merge(h, v2);
    h = merge(h, v3);
    h = merge(h, v4);
  } else {
    h = seed + P5;
  }
  h += (uint64_t)len;
  for (; p + 8 <= end; p += 8) {
    h ^= xround(0, rd64(p));
    h = rotl(h, 27) * P1 + P4;
  }
  if (p + 4 <= end) {
    h ^= (uint64_t)rd32(p) * P1;
    h = rotl(h, 23) * P2 + P3;
    p += 4;
  }
  for (; p < end; p++) {
    h ^= (uint64_t)*p * P5;
    h = rotl(h, 11) * P1;
  }
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

static void
put64(uint8_t *b, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(v >> (8 * i));
}

static void
chain(struct pool_hash *h, uint64_t chunk_hash)
{
  uint8_t b[16];

  put64(b, h->state);
  put64(b + 8, chunk_hash);
  h->state = pool_xxh64(b, sizeof b, 0);
}

int
pool_hash_init(struct pool_hash *h)
{
  memset(h, 0, sizeof *h);
  h->buf = calloc(1, POOL_HASH_CHUNK);
  if (h->buf == NULL)
    return cc_error_set(ENOMEM, "hash: out of memory");
  h->zero_chunk = pool_xxh64(h->buf, POOL_HASH_CHUNK, 0);
  return 0;
}

void
pool_hash_free(struct pool_hash *h)
{
  free(h->buf);
  h->buf = NULL;
}

void
pool_hash_feed(struct pool_hash *h, const void *data, size_t len)
{
  const uint8_t *p = data;

  h->total += len;
  while (len > 0) {
    if (h->fill == 0 && len >= POOL_HASH_CHUNK) {
      chain(h, pool_xxh64(p, POOL_HASH_CHUNK, 0));
      p += POOL_HASH_CHUNK;
      len -= POOL_HASH_CHUNK;
      continue;
    }
    size_t n = POOL_HASH_CHUNK - h->fill < len ? POOL_HASH_CHUNK - h->fill : len;
    memcpy(h->buf + h->fill, p, n);
    h->fill += n;
    p += n;
    len -= n;
    if (h->fill == POOL_HASH_CHUNK) {
      chain(h, pool_xxh64(h->buf, POOL_HASH_CHUNK, 0));
      h->fill = 0;
    }
  }
}

void
pool_hash_zero(struct pool_hash *h, uint64_t len)
{
  if (h->fill > 0) {
    size_t n = POOL_HASH_CHUNK - h->fill < len ? POOL_HASH_CHUNK - h->fill : (size_t)len;

    memset(h->buf + h->fill, 0, n);
    h->fill += n;
    h->total += n;
    len -= n;
    if (h->fill == POOL_HASH_CHUNK) {
      chain(h, pool_xxh64(h->buf, POOL_HASH_CHUNK, 0));
      h->fill = 0;
    }
  }
  for (; len >= POOL_HASH_CHUNK; len -= POOL_HASH_CHUNK) {
    chain(h, h->zero_chunk);
    h->total += POOL_HASH_CHUNK;
  }
  if (len > 0) {
    memset(h->buf, 0, (size_t)len);
    h->fill = (size_t)len;
    h->total += len;
  }
}

void
pool_hash_final(struct pool_hash *h, char out[POOL_HASH_STR])
{
  uint8_t b[16];

  if (h->fill > 0)
    chain(h, pool_xxh64(h->buf, h->fill, 0));
  h->fill = 0;
  put64(b, h->state);
  put64(b + 8, h->total);
  snprintf(out, POOL_HASH_STR, "xxh64-64k:%016llx", (unsigned long long)pool_xxh64(b, 16, 0));
}

int
pool_hash_fd(int fd, const char *name, char out[POOL_HASH_STR], cc_progress_fn progress,
             void *opaque)
{
  const size_t step = 1u << 20;
  struct pool_hash h;
  struct stat st;
  uint64_t size, off = 0, last = 0;
  char *buf;
  int r = 0;

  if (fstat(fd, &st) == -1)
    return cc_error_set(errno, "hash: %s: %s", name, strerror(errno));
  size = (uint64_t)st.st_size;
  if ((r = pool_hash_init(&h)) < 0)
    return r;
  if ((buf = malloc(step)) == NULL) {
    pool_hash_free(&h);
    return cc_error_set(ENOMEM, "hash: out of memory");
  }
  while (off < size) {
    off_t data = lseek(fd, (off_t)off, SEEK_DATA), hole;

    if (data == -1 && errno == ENXIO)
      data = (off_t)size; /* only a hole up to EOF */
    else if (data == -1)
      data = (off_t)off; /* no SEEK_DATA: everything is data */
    hole = data < (off_t)size ? lseek(fd, data, SEEK_HOLE) : (off_t)size;
    if (hole == -1 || hole > (off_t)size)
      hole = (off_t)size;
    pool_hash_zero(&h, (uint64_t)data - off);
    off = (uint64_t)data;
    while (off < (uint64_t)hole) {
      size_t n = (uint64_t)hole - off < step ? (size_t)((uint64_t)hole - off) : step;
      ssize_t got = pread(fd, buf, n, (off_t)off);

      if (got < 0 && errno == EINTR)
        continue;
      if (got <= 0) {
        r = cc_error_set(got < 0 ? errno : EIO, "hash: %s: read at %llu: %s", name,
                         (unsigned long long)off, got < 0 ? strerror(errno) : "end of file");
        goto out;
      }
      pool_hash_feed(&h, buf, (size_t)got);
      off += (uint64_t)got;
      if (progress && (off - last >= (64ull << 20) || off == size)) {
        last = off;
        progress(opaque, off, size);
      }
    }
  }
  if (progress)
    progress(opaque, size, size);
  pool_hash_final(&h, out);
out:
  free(buf);
  pool_hash_free(&h);
  return r;
}
