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
 *   [4096, 4096 + 16 N)   one 16-byte entry per block: state, CRC-32C of the data, a CRC-32C of
 *                         the entry itself (block number, state, data CRC), zero
 *   data_off + B * BS     block B's bytes (state DATA only; ZERO blocks store nothing)
 *
 * Every read of a cached block is checked against its CRC; a block that does not match (a torn
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
#define RC_ENTRY 16u
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
  _Atomic uint64_t *ent; /* state << 32 | crc */
  _Atomic uint64_t used; /* DATA blocks */
  _Atomic uint64_t hand; /* clock hand for eviction */
};

/* Open caches of this process: one per file, shared by every chain on that template (the OFD
 * lock would refuse a second open of the same file even in this process). */
static pthread_mutex_t caches_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cc_rcache *caches;

static uint32_t
entry_crc(uint64_t b, uint32_t state, uint32_t crc)
{
  uint32_t v[4] = {(uint32_t)b, (uint32_t)(b >> 32), state, crc};

  return ovl_crc32c(v, sizeof v);
}

static void
put_entry(struct cc_rcache *c, uint64_t b, uint32_t state, uint32_t crc)
{
  uint32_t e[4] = {state, crc, entry_crc(b, state, crc), 0};

  if (pwrite(c->fd, e, sizeof e, (off_t)(RC_HEADER + b * RC_ENTRY)) != (ssize_t)sizeof e)
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
  uint32_t (*raw)[4] = NULL;
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
  c->ent = calloc(c->nblocks, sizeof *c->ent);
  if (!c->ent)
    goto disable;
  if (!fresh) {
    raw = malloc(c->nblocks * RC_ENTRY);
    if (!raw || pread(c->fd, raw, c->nblocks * RC_ENTRY, RC_HEADER) < 0)
      goto disable;
    for (uint64_t b = 0; b < c->nblocks; b++) {
      uint32_t st = raw[b][0], crc = raw[b][1];

      if ((st == E_DATA || st == E_ZERO) && raw[b][2] == entry_crc(b, st, crc)) {
        atomic_init(&c->ent[b], (uint64_t)st << 32 | crc);
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
  free(c->ent);
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
  free((void *)c->ent);
  free(c->path);
  free(c);
}

/* Drop block b if it still holds entry value `seen`. */
static void
drop(struct cc_rcache *c, uint64_t b, uint64_t seen)
{
  if (atomic_compare_exchange_strong(&c->ent[b], &seen, 0)) {
    if (seen >> 32 == E_DATA)
      atomic_fetch_sub(&c->used, 1);
    put_entry(c, b, E_ABSENT, 0);
  }
}

/* Make room for one DATA block: evict the next DATA block the clock hand finds. */
static void
evict_one(struct cc_rcache *c)
{
  for (uint64_t i = 0; i < c->nblocks; i++) {
    uint64_t b = atomic_fetch_add(&c->hand, 1) % c->nblocks;
    uint64_t e = atomic_load(&c->ent[b]);

    if (e >> 32 == E_DATA) {
      drop(c, b, e);
      fallocate(c->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(c->data_off + b * RC_BLOCK),
                RC_BLOCK);
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
  uint64_t n = blen(c, b), none = 0;
  uint32_t crc = ovl_crc32c(p, n);

  if (atomic_load(&c->ent[b]) != 0)
    return;
  if (all_zero(p, n)) {
    if (atomic_compare_exchange_strong(&c->ent[b], &none, (uint64_t)E_ZERO << 32 | crc))
      put_entry(c, b, E_ZERO, crc);
    return;
  }
  while (atomic_load(&c->used) >= c->max_blocks)
    evict_one(c);
  if (pwrite(c->fd, p, n, (off_t)(c->data_off + b * RC_BLOCK)) != (ssize_t)n)
    return; /* e.g. ENOSPC: simply not cached */
  if (atomic_compare_exchange_strong(&c->ent[b], &none, (uint64_t)E_DATA << 32 | crc)) {
    atomic_fetch_add(&c->used, 1);
    put_entry(c, b, E_DATA, crc);
  }
}

/* Block b from the cache into p, checked; 0 on a hit. */
static int
lookup(struct cc_rcache *c, uint64_t b, char *p)
{
  uint64_t e = atomic_load(&c->ent[b]), n = blen(c, b);

  if (e >> 32 == E_ZERO) {
    memset(p, 0, n);
    return 0;
  }
  if (e >> 32 != E_DATA)
    return -1;
  if (pread(c->fd, p, n, (off_t)(c->data_off + b * RC_BLOCK)) == (ssize_t)n &&
      ovl_crc32c(p, n) == (uint32_t)e)
    return 0;
  cc_log("template cache %s: block %" PRIu64 " fails its check: dropped, read again", c->path, b);
  drop(c, b, e);
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
    if (atomic_load(&c->ent[b]) >> 32 == E_ABSENT)
      return 0; /* not all known: the caller reports its error */
  *covered = 1;
  for (uint64_t b = first; b <= last && r == 0; b++) {
    uint64_t bo = b * RC_BLOCK, from = seg->offset > bo ? seg->offset : bo,
             to = end < bo + blen(c, b) ? end : bo + blen(c, b);
    struct cc_seg s = {.offset = from, .length = to - from, .kind = CC_RUN_ZERO};

    if (atomic_load(&c->ent[b]) >> 32 == E_DATA)
      s.kind = CC_RUN_DATA, s.phys = from, s.file = data;
    r = fn(opaque, &s);
  }
  return r;
}

int
cc_rcache_read(struct cc_rcache *c, void *buf, uint64_t len, uint64_t off, cc_fetch_fn fetch,
               void *opaque)
{
  uint64_t b = off / RC_BLOCK, last = (off + len - 1) / RC_BLOCK;
  char *blk = malloc(RC_BLOCK), *run = NULL;
  int r = 0;

  if (!blk)
    return cc_error_set(ENOMEM, "pread: template cache: out of memory");
  while (b <= last && r == 0) {
    uint64_t bo = b * RC_BLOCK, e;

    if (lookup(c, b, blk) == 0) {
      uint64_t from = off > bo ? off - bo : 0, to = off + len < bo + blen(c, b) ? off + len - bo
                                                                                  : blen(c, b);
      memcpy((char *)buf + (bo + from - off), blk + from, to - from);
      b++;
      continue;
    }
    /* A run of missing blocks, read from the remote at once. */
    for (e = b; e + 1 <= last && atomic_load(&c->ent[e + 1]) >> 32 != E_DATA &&
                atomic_load(&c->ent[e + 1]) >> 32 != E_ZERO;
         e++)
      ;
    {
      uint64_t ro = bo, rl = (e + 1) * RC_BLOCK < c->size ? (e + 1) * RC_BLOCK - ro : c->size - ro;
      uint64_t from = off > ro ? off : ro, to = off + len < ro + rl ? off + len : ro + rl;

      free(run);
      if ((run = malloc(rl)) == NULL) {
        r = cc_error_set(ENOMEM, "pread: template cache: out of memory");
        break;
      }
      if ((r = fetch(opaque, run, rl, ro)) < 0)
        break;
      memcpy((char *)buf + (from - off), run + (from - ro), to - from);
      for (uint64_t k = b; k <= e; k++)
        insert(c, k, run + (k - b) * RC_BLOCK);
      b = e + 1;
    }
  }
  free(run);
  free(blk);
  return r;
}
