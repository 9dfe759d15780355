/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: a local read cache of a remote template's blocks (template-cache=DIR).
 *
 * Design notes
 * ------------
 * A remote template is immutable and identified by its fingerprint and size, so a cached block
 * never goes stale: one cache file per (fingerprint, size), DIR/HEX-SIZE.rcache, shared by every
 * template with that content and kept across restarts.  The file is sparse:
 *
 *   [0, 4096)             header: magic, block size, export size, fingerprint
 *   [4096, 4096 + 80 N)   one 80-byte entry per 64 KiB block: state, a CRC-32C of the entry
 *                         itself, the CRC-32C of each of the block's 16 4-KiB sub-blocks, zero
 *   data_off + B * BS     block B's bytes (state DATA only; ZERO blocks store nothing)
 *
 * Blocks are what is fetched from the remote (one 1 ms round trip brings 64 KiB as cheaply as
 * 4 KiB); sub-blocks are what is checked, so a 4 KiB read of the cache reads and checks 4 KiB.
 * CRC-32C runs on the SSE4.2 instruction where the CPU has it (the same polynomial as the
 * table-driven ovl_crc32c, which is the fallback and ~20 times slower).
 *
 * Every read of a cached sub-block is checked against its CRC; one that does not match (a torn
 * write after a crash, a bad disk, an eviction racing with the read) is dropped and read from
 * the remote again, never served.  An entry whose own CRC does not match is ignored at load.
 * Writes are data first, then the entry, without fsync: a crash can only leave an entry whose
 * data does not match, which the check drops.
 *
 * Misses are coalesced: a run of consecutive missing blocks is one remote read.  The size bound
 * counts DATA blocks; past it, a clock hand evicts (punches the block's hole, clears its entry).
 * One process owns a cache file (exclusive OFD lock); another one reads without a cache and
 * says so once.  Concurrency inside the process: entries are atomics in memory; two threads
 * filling one block write the same bytes (the template does not change).
 */
#include "chain/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "overlay/format.h" /* ovl_crc32c */

#define RC_BLOCK (64u * 1024u)
#define RC_HEADER 4096u
#define RC_SUB 4096u
#define RC_NSUB (RC_BLOCK / RC_SUB)
#define RC_ENTRY 80u
#define RC_MAGIC "COWCHAIN-RCACHE1"

enum { E_ABSENT = 0, E_DATA = 1, E_ZERO = 2 };

struct rc_header {
  char magic[16];
  uint32_t block_size;
  uint32_t reserved;
  uint64_t size;
  char fingerprint[96];
};

struct cc_rcache {
  struct cc_rcache *next; /* in `caches`, under caches_lock */
  unsigned long refs;
  int fd;
  char *path;
  uint64_t size, nblocks, data_off;
  uint64_t max_blocks;
  _Atomic uint32_t *st;     /* state of each block; published after its crcs (release) */
  uint32_t (*crc)[RC_NSUB]; /* sub-block CRCs; a block's never change once set (same data) */
  _Atomic uint64_t used;    /* DATA blocks */
  _Atomic uint64_t hand;    /* clock hand for eviction */
};

/* Open caches of this process: one per file, shared by every chain on that template (the OFD
 * lock would refuse a second open of the same file even in this process). */
static pthread_mutex_t caches_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cc_rcache *caches;

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t
crc_hw(const void *buf, size_t len)
{
  const uint8_t *p = buf;
  uint64_t crc = 0xFFFFFFFFu;

  for (; len >= 8; p += 8, len -= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    crc = _mm_crc32_u64(crc, v);
  }
  for (; len; p++, len--)
    crc = _mm_crc32_u8((uint32_t)crc, *p);
  return (uint32_t)crc ^ 0xFFFFFFFFu;
}
#endif

/* CRC-32C, the same value as ovl_crc32c. */
static uint32_t
crc32c(const void *buf, size_t len)
{
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2"))
    return crc_hw(buf, len);
#endif
  return ovl_crc32c(buf, len);
}

struct rc_entry {
  uint32_t state, ecrc, sub[RC_NSUB], zero[2];
};
_Static_assert(sizeof(struct rc_entry) == RC_ENTRY, "an entry is 80 bytes");

static uint32_t
entry_crc(uint64_t b, const struct rc_entry *e)
{
  uint32_t v[3 + RC_NSUB] = {(uint32_t)b, (uint32_t)(b >> 32), e->state};

  memcpy(v + 3, e->sub, sizeof e->sub);
  return crc32c(v, sizeof v);
}

static void
put_entry(struct cc_rcache *c, uint64_t b, uint32_t state)
{
  struct rc_entry e = {.state = state};

  if (state == E_DATA)
    memcpy(e.sub, c->crc[b], sizeof e.sub);
  e.ecrc = entry_crc(b, &e);
  if (pwrite(c->fd, &e, sizeof e, (off_t)(RC_HEADER + b * RC_ENTRY)) != (ssize_t)sizeof e)
    cc_log("template cache %s: writing entry %" PRIu64 ": %m", c->path, b);
}

static uint64_t
blen(const struct cc_rcache *c, uint64_t b)
{
  uint64_t o = b * RC_BLOCK;

  return c->size - o < RC_BLOCK ? c->size - o : RC_BLOCK;
}

static int open_file(const char *dir, const char *fingerprint, uint64_t size, uint64_t max_bytes,
                     struct cc_rcache **out);

int
cc_rcache_open(const char *dir, const char *fingerprint, uint64_t size, uint64_t max_bytes,
               struct cc_rcache **out)
{
  const char *hexp = strchr(fingerprint, ':');
  char *path;
  int r = 0;

  *out = NULL;
  if (asprintf(&path, "%s/%.64s-%" PRIu64 ".rcache", dir, hexp ? hexp + 1 : fingerprint, size) < 0)
    return cc_error_set(ENOMEM, "template cache: out of memory");
  pthread_mutex_lock(&caches_lock);
  for (struct cc_rcache *c = caches; c; c = c->next)
    if (strcmp(c->path, path) == 0) {
      c->refs++;
      *out = c;
      break;
    }
  if (!*out && (r = open_file(dir, fingerprint, size, max_bytes, out)) == 0 && *out) {
    (*out)->refs = 1;
    (*out)->next = caches;
    caches = *out;
  }
  pthread_mutex_unlock(&caches_lock);
  free(path);
  return r;
}

static int
open_file(const char *dir, const char *fingerprint, uint64_t size, uint64_t max_bytes,
          struct cc_rcache **out)
{
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
  struct rc_header h, want = {.block_size = RC_BLOCK, .size = size};
  const char *hexp = strchr(fingerprint, ':');
  struct cc_rcache *c;
  struct rc_entry *raw = NULL;
  int fresh = 0;

  *out = NULL;
  memcpy(want.magic, RC_MAGIC, 16);
  snprintf(want.fingerprint, sizeof want.fingerprint, "%s", fingerprint);
  if ((c = calloc(1, sizeof *c)) == NULL)
    return cc_error_set(ENOMEM, "template cache: out of memory");
  c->size = size;
  c->nblocks = (size + RC_BLOCK - 1) / RC_BLOCK;
  c->data_off = (RC_HEADER + c->nblocks * RC_ENTRY + RC_BLOCK - 1) / RC_BLOCK * RC_BLOCK;
  c->max_blocks = max_bytes / RC_BLOCK ? max_bytes / RC_BLOCK : 1;
  if (asprintf(&c->path, "%s/%.64s-%" PRIu64 ".rcache", dir, hexp ? hexp + 1 : fingerprint, size) <
      0) {
    free(c);
    return cc_error_set(ENOMEM, "template cache: out of memory");
  }
  c->fd = open(c->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (c->fd < 0) {
    int e = errno;
    cc_log("template cache %s: %s; reading without a cache", c->path, strerror(e));
    free(c->path);
    free(c);
    return 0;
  }
  if (fcntl(c->fd, F_OFD_SETLK, &fl) < 0) {
    cc_log("template cache %s: in use by another process; reading without a cache", c->path);
    goto disable;
  }
  if (pread(c->fd, &h, sizeof h, 0) != (ssize_t)sizeof h || memcmp(&h, &want, sizeof h) != 0) {
    /* New, or made for something else (cannot be: the name is the content's), or damaged:
     * start empty. */
    if (ftruncate(c->fd, 0) < 0 || pwrite(c->fd, &want, sizeof want, 0) != (ssize_t)sizeof want) {
      cc_log("template cache %s: %m; reading without a cache", c->path);
      goto disable;
    }
    fresh = 1;
  }
  c->st = calloc(c->nblocks, sizeof *c->st);
  c->crc = calloc(c->nblocks, sizeof *c->crc);
  if (!c->st || !c->crc)
    goto disable;
  if (!fresh) {
    raw = malloc(c->nblocks * RC_ENTRY);
    if (!raw || pread(c->fd, raw, c->nblocks * RC_ENTRY, RC_HEADER) < 0)
      goto disable;
    for (uint64_t b = 0; b < c->nblocks; b++) {
      uint32_t st = raw[b].state;

      if ((st == E_DATA || st == E_ZERO) && raw[b].ecrc == entry_crc(b, &raw[b])) {
        memcpy(c->crc[b], raw[b].sub, sizeof raw[b].sub);
        atomic_init(&c->st[b], st);
        if (st == E_DATA)
          c->used++;
      }
    }
    free(raw);
  }
  *out = c;
  return 0;
disable:
  free(raw);
  free((void *)c->st);
  free(c->crc);
  close(c->fd);
  free(c->path);
  free(c);
  return 0;
}

void
cc_rcache_close(struct cc_rcache *c)
{
  struct cc_rcache **pp;

  if (!c)
    return;
  pthread_mutex_lock(&caches_lock);
  if (--c->refs > 0) {
    pthread_mutex_unlock(&caches_lock);
    return;
  }
  for (pp = &caches; *pp; pp = &(*pp)->next)
    if (*pp == c) {
      *pp = c->next;
      break;
    }
  pthread_mutex_unlock(&caches_lock);
  close(c->fd);
  free((void *)c->st);
  free(c->crc);
  free(c->path);
  free(c);
}

/* Drop block b if it is still in state `seen`. */
static void
drop(struct cc_rcache *c, uint64_t b, uint32_t seen)
{
  if (atomic_compare_exchange_strong(&c->st[b], &seen, E_ABSENT)) {
    if (seen == E_DATA)
      atomic_fetch_sub(&c->used, 1);
    put_entry(c, b, E_ABSENT);
  }
}

/* Make room for one DATA block: evict the next DATA block the clock hand finds. */
static void
evict_one(struct cc_rcache *c)
{
  for (uint64_t i = 0; i < c->nblocks; i++) {
    uint64_t b = atomic_fetch_add(&c->hand, 1) % c->nblocks;

    if (atomic_load(&c->st[b]) == E_DATA) {
      drop(c, b, E_DATA);
      fallocate(c->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                (off_t)(c->data_off + b * RC_BLOCK), RC_BLOCK);
      return;
    }
  }
}

static int
all_zero(const char *p, uint64_t n)
{
  for (uint64_t i = 0; i < n; i++)
    if (p[i])
      return 0;
  return 1;
}

/* Remember block b's bytes p (blen bytes). */
static void
insert(struct cc_rcache *c, uint64_t b, const char *p)
{
  uint64_t n = blen(c, b);
  uint32_t none = E_ABSENT;

  if (atomic_load(&c->st[b]) != E_ABSENT)
    return;
  if (all_zero(p, n)) {
    if (atomic_compare_exchange_strong(&c->st[b], &none, E_ZERO))
      put_entry(c, b, E_ZERO);
    return;
  }
  while (atomic_load(&c->used) >= c->max_blocks)
    evict_one(c);
  if (pwrite(c->fd, p, n, (off_t)(c->data_off + b * RC_BLOCK)) != (ssize_t)n)
    return; /* e.g. ENOSPC: simply not cached */
  /* The CRCs of one block are the same whoever computes them: the template does not change. */
  for (uint64_t i = 0; i * RC_SUB < n; i++)
    c->crc[b][i] = crc32c(p + i * RC_SUB, n - i * RC_SUB < RC_SUB ? n - i * RC_SUB : RC_SUB);
  if (atomic_compare_exchange_strong_explicit(&c->st[b], &none, E_DATA, memory_order_release,
                                              memory_order_relaxed)) {
    atomic_fetch_add(&c->used, 1);
    put_entry(c, b, E_DATA);
  }
}

/* Bytes [from, to) of block b from the cache into dst, checked by sub-block; 0 on a hit.  A
 * range on sub-block boundaries is read straight into dst, any other through bounce (64 KiB). */
static int
lookup(struct cc_rcache *c, uint64_t b, char *dst, uint64_t from, uint64_t to, char *bounce)
{
  uint32_t st = atomic_load_explicit(&c->st[b], memory_order_acquire);
  uint64_t n = blen(c, b), s0 = from / RC_SUB * RC_SUB, s1 = (to + RC_SUB - 1) / RC_SUB * RC_SUB;
  char *p;

  if (st == E_ZERO) {
    memset(dst, 0, to - from);
    return 0;
  }
  if (st != E_DATA)
    return -1;
  if (s1 > n)
    s1 = n;
  p = (s0 == from && s1 == to) ? dst : bounce;
  if (pread(c->fd, p, s1 - s0, (off_t)(c->data_off + b * RC_BLOCK + s0)) == (ssize_t)(s1 - s0)) {
    uint64_t i;
    for (i = s0; i < s1; i += RC_SUB)
      if (crc32c(p + (i - s0), s1 - i < RC_SUB ? s1 - i : RC_SUB) != c->crc[b][i / RC_SUB])
        break;
    if (i >= s1) {
      if (p == bounce)
        memcpy(dst, bounce + (from - s0), to - from);
      return 0;
    }
  }
  cc_log("template cache %s: block %" PRIu64 " fails its check: dropped, read again", c->path, b);
  drop(c, b, E_DATA);
  return -1;
}

int
cc_rcache_walk(struct cc_rcache *c, const struct cc_seg *seg, const struct cc_frozen *data,
               cc_seg_fn fn, void *opaque, int *covered)
{
  uint64_t end = seg->offset + seg->length, first = seg->offset / RC_BLOCK,
           last = (end - 1) / RC_BLOCK;
  int r = 0;

  *covered = 0;
  for (uint64_t b = first; b <= last; b++)
    if (atomic_load(&c->st[b]) == E_ABSENT)
      return 0; /* not all known: the caller reports its error */
  *covered = 1;
  for (uint64_t b = first; b <= last && r == 0; b++) {
    uint64_t bo = b * RC_BLOCK, from = seg->offset > bo ? seg->offset : bo,
             to = end < bo + blen(c, b) ? end : bo + blen(c, b);
    struct cc_seg s = {.offset = from, .length = to - from, .kind = CC_RUN_ZERO};

    if (atomic_load(&c->st[b]) == E_DATA)
      s.kind = CC_RUN_DATA, s.phys = from, s.file = data;
    r = fn(opaque, &s);
  }
  return r;
}

/* A run of DATA blocks from `pos` (sub-block aligned) read with one pread straight into dst and
 * checked; how far it got (pos when nothing was read), stopping at a sub-block boundary, `end`
 * or the end of the cached run. */
static uint64_t
run_hit(struct cc_rcache *c, uint64_t pos, uint64_t end, char *dst)
{
  uint64_t b = pos / RC_BLOCK, e = b, stop;

  while ((e + 1) * RC_BLOCK < end && atomic_load(&c->st[e + 1]) == E_DATA)
    e++;
  stop = (e + 1) * RC_BLOCK < end ? (e + 1) * RC_BLOCK : end;
  if (stop != c->size)
    stop = stop / RC_SUB * RC_SUB;
  if (stop <= pos || atomic_load_explicit(&c->st[b], memory_order_acquire) != E_DATA)
    return pos;
  atomic_thread_fence(memory_order_acquire);
  if (pread(c->fd, dst, stop - pos, (off_t)(c->data_off + pos)) != (ssize_t)(stop - pos))
    return pos;
  for (uint64_t q = pos; q < stop; q += RC_SUB) {
    uint64_t k = q / RC_BLOCK, n = stop - q < RC_SUB ? stop - q : RC_SUB;

    if (atomic_load(&c->st[k]) != E_DATA ||
        crc32c(dst + (q - pos), n) != c->crc[k][q % RC_BLOCK / RC_SUB])
      return q / RC_BLOCK * RC_BLOCK > pos ? q / RC_BLOCK * RC_BLOCK
                                           : pos; /* the rest block-wise */
  }
  return stop;
}

int
cc_rcache_read(struct cc_rcache *c, void *buf, uint64_t len, uint64_t off, cc_fetch_fn fetch,
               void *opaque)
{
  uint64_t pos = off, end = off + len;
  char *blk = malloc(RC_BLOCK), *run = NULL;
  int r = 0;

  if (!blk)
    return cc_error_set(ENOMEM, "pread: template cache: out of memory");
  while (pos < end && r == 0) {
    uint64_t b = pos / RC_BLOCK, bo = b * RC_BLOCK, e, to;

    /* Cached data, contiguous in the cache file: one read for the whole run. */
    if (pos % RC_SUB == 0 && atomic_load(&c->st[b]) == E_DATA) {
      uint64_t got = run_hit(c, pos, end, (char *)buf + (pos - off));
      if (got > pos) {
        pos = got;
        continue;
      }
    }
    to = end < bo + blen(c, b) ? end - bo : blen(c, b);
    if (lookup(c, b, (char *)buf + (pos - off), pos - bo, to, blk) == 0) {
      pos = bo + to;
      continue;
    }
    /* A run of missing blocks, read from the remote at once. */
    for (e = b; (e + 1) * RC_BLOCK < end && atomic_load(&c->st[e + 1]) == E_ABSENT; e++)
      ;
    {
      uint64_t rl = (e + 1) * RC_BLOCK < c->size ? (e + 1) * RC_BLOCK - bo : c->size - bo;
      uint64_t hi = end < bo + rl ? end : bo + rl;

      free(run);
      if ((run = malloc(rl)) == NULL) {
        r = cc_error_set(ENOMEM, "pread: template cache: out of memory");
        break;
      }
      if ((r = fetch(opaque, run, rl, bo)) < 0)
        break;
      memcpy((char *)buf + (pos - off), run + (pos - bo), hi - pos);
      for (uint64_t k = b; k <= e; k++)
        insert(c, k, run + (k - b) * RC_BLOCK);
      pos = hi;
    }
  }
  free(run);
  free(blk);
  return r;
}
