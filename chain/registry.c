/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: the process-wide registry of resolution indexes.
 *
 * Design notes
 * ------------
 * Every chain whose frozen part has the same topmost file uses the same index: 100 clones of
 * one template with a 20-snapshot history hold one index and one set of 21 fds, not 100.  The
 * key is the identity of that topmost frozen file: (st_dev, st_ino) plus its uuid (all zero
 * for a raw image) and its size.  (st_dev, st_ino) cannot be reused while the entry lives,
 * because the index keeps the file open; the uuid and size make a match mean "the layer the
 * child's header names", so a link check that passes against the registry is the same check
 * open.c would make against the file.
 *
 * Locking: `registry_lock` protects the list and every index's `refs`.  An index is built
 * outside the lock (it may read thousands of maps); two chains racing to build the same one
 * both build it, the first to insert wins, the other frees its copy.  The last reference is
 * dropped under the lock (the index leaves the list), and the index is freed after the lock is
 * released: it is unreachable by then, so it is freed exactly once.
 *
 * Idle indexes (cc_set_index_cache): the frozen part is immutable while it is locked, so an
 * index whose last chain closed is worth keeping: every reconnect (qemu-img, nbdinfo, a guest
 * reboot) would otherwise rebuild it from every map of the chain.  Within a byte budget, the
 * last put keeps the index listed with refs 0 and its files open but *unlocked*: an idle
 * cache must not stop a pool tool from merging or deleting a layer nobody uses (the locks are
 * what tells it so).  So a file may change while idle, and reuse revalidates: the layer is
 * relocked shared (a writer holding it now means a miss), and each file must still be what
 * was opened: linked, same size, st_mtim and st_ctim, and for a layer the same header
 * generation (every writer bumps it when it sets the dirty bit; the timestamps catch in-place
 * writes, which do not).  Any difference drops the index and the open builds a new one from
 * the files, so a merge that replaced a layer is never served from a stale index.  Budget
 * exceeded (bytes, or a quarter of the descriptor limit): the least recently used idle index
 * goes first.  An idle index holding a file that was deleted meanwhile is dropped at the next
 * open or close of any chain (at most one check a second), so its disk space comes back.  A
 * remote template's bottom has no descriptor to fstat or lock: its descriptor file, stat'ed by
 * path, must be the same inode, size and times, and the remote's fingerprint is checked by
 * every open of a chain on it anyway (open.c).  An index
 * stacked by a live push (base != NULL) holds its base and is not kept.
 */
#include "chain/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cc_index *registry_head; /* protected by registry_lock */
static uint64_t cache_budget;          /* bytes of idle indexes to keep; 0: keep none */
static uint64_t cache_used;            /* protected by registry_lock, like the two below */
static uint64_t cache_stamp;
static size_t cache_idle;
static size_t cache_fds;     /* descriptors the idle indexes hold */
static size_t cache_fds_max; /* a quarter of RLIMIT_NOFILE, set with the budget */
static struct timespec last_sweep;

/* Memory an idle index holds: its runs, its layers (an ovl_layer with a dropped map is its
 * header and a few fields, ~4.5 KiB with the parent path) and their paths. */
static size_t
index_cost(const struct cc_index *idx)
{
  size_t c = sizeof *idx + idx->nruns * sizeof(struct cc_run) + idx->nlayers * 4800;

  for (size_t i = 0; i < idx->nlayers; i++)
    c += idx->layers[i].path ? strlen(idx->layers[i].path) + 1 : 0;
  return c;
}

static int
set_lock(int fd, short type)
{
  struct flock fl = {.l_type = type, .l_whence = SEEK_SET};

  return fcntl(fd, F_OFD_SETLK, &fl);
}

/* A remote bottom holds no descriptor of its file (fd -1): its identity is the descriptor file
 * it was opened from, which must still be linked at its path, the same inode, size, st_mtim
 * and st_ctim (a template deleted and added again under the same name is a new file).  What
 * the remote serves is checked by its fingerprint on every open (open.c), not here. */
static int
remote_changed(const struct cc_frozen *f)
{
  struct stat st;

  return stat(f->path, &st) < 0 || st.st_dev != f->dev || st.st_ino != f->ino ||
         (uint64_t)st.st_size != f->st_size || st.st_mtim.tv_sec != f->mtime.tv_sec ||
         st.st_mtim.tv_nsec != f->mtime.tv_nsec || st.st_ctim.tv_sec != f->ctime.tv_sec ||
         st.st_ctim.tv_nsec != f->ctime.tv_nsec;
}

/* Is every file of an idle index what it was when opened?  Relocks each one shared first:
 * then nobody can start writing it, and what we compare is final. */
static int
revalidate(struct cc_index *idx)
{
  for (size_t i = 0; i < idx->nlayers; i++) {
    struct cc_frozen *f = &idx->layers[i];
    struct stat st;

    if (f->remote) {
      if (remote_changed(f))
        return -1;
      continue;
    }
    if (set_lock(f->fd, F_RDLCK) < 0 && (errno == EAGAIN || errno == EACCES))
      return -1; /* a writer has it now */
    if (fstat(f->fd, &st) < 0 || st.st_nlink == 0 || (uint64_t)st.st_size != f->st_size ||
        st.st_mtim.tv_sec != f->mtime.tv_sec || st.st_mtim.tv_nsec != f->mtime.tv_nsec ||
        st.st_ctim.tv_sec != f->ctime.tv_sec || st.st_ctim.tv_nsec != f->ctime.tv_nsec)
      return -1;
    if (f->ovl && ovl_revalidate(f->ovl) < 0)
      return -1;
  }
  return 0;
}

static void
unlock_files(struct cc_index *idx)
{
  for (size_t i = 0; i < idx->nlayers; i++)
    if (idx->layers[i].fd >= 0)
      set_lock(idx->layers[i].fd, F_UNLCK);
}

/* Caller holds registry_lock: take the idle index at *p out of the list and the accounts. */
static struct cc_index *
idle_unlink_locked(struct cc_index **p)
{
  struct cc_index *v = *p;

  *p = v->next;
  v->next = NULL;
  cache_used -= v->cost;
  cache_fds -= v->nlayers;
  cache_idle--;
  return v;
}

/* Does an idle index hold a file that was deleted meanwhile (a merged-away snapshot)?  Then it
 * can never be reused, and its descriptors keep the file's disk space. */
static int
holds_unlinked(const struct cc_index *idx)
{
  for (size_t i = 0; i < idx->nlayers; i++) {
    struct stat st;

    if (idx->layers[i].remote) {
      if (remote_changed(&idx->layers[i]))
        return 1;
      continue;
    }
    if (fstat(idx->layers[i].fd, &st) < 0 || st.st_nlink == 0)
      return 1;
  }
  return 0;
}

/* Caller holds registry_lock.  Unlink idle indexes, least recently used first, until the
 * idle ones fit in the budget (bytes and descriptors); and, at most once a second, every idle
 * index holding a deleted file, so the space of a layer a pool operation removed is given
 * back at the next open or close of any chain rather than when the index is evicted.  Returns
 * them as a list (through `next`) to free unlocked. */
static struct cc_index *
evict_locked(void)
{
  struct cc_index *out = NULL;
  struct timespec now;

  clock_gettime(CLOCK_MONOTONIC, &now);
  if (cache_idle > 0 && now.tv_sec != last_sweep.tv_sec) {
    last_sweep = now;
    for (struct cc_index **p = &registry_head; *p;) {
      if ((*p)->refs == 0 && holds_unlinked(*p)) {
        struct cc_index *v = idle_unlink_locked(p);

        v->next = out;
        out = v;
      } else {
        p = &(*p)->next;
      }
    }
  }
  while (cache_used > cache_budget || cache_fds > cache_fds_max) {
    struct cc_index **victim = NULL;

    for (struct cc_index **p = &registry_head; *p; p = &(*p)->next)
      if ((*p)->refs == 0 && (!victim || (*p)->stamp < (*victim)->stamp))
        victim = p;
    if (!victim)
      break;
    struct cc_index *v = idle_unlink_locked(victim);

    v->next = out;
    out = v;
  }
  return out;
}

static void
free_list(struct cc_index *l)
{
  while (l) {
    struct cc_index *n = l->next;
    cc_index_free(l);
    l = n;
  }
}

void
cc_set_index_cache(uint64_t bytes)
{
  struct cc_index *gone;

  struct rlimit rl;
  size_t fds = 1024;

  /* The descriptors too: idle indexes must leave most of the limit to open chains. */
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY)
    fds = (size_t)rl.rlim_max;
  else if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    fds = 1u << 20;
  pthread_mutex_lock(&registry_lock);
  cache_budget = bytes;
  cache_fds_max = fds / 4;
  gone = evict_locked();
  pthread_mutex_unlock(&registry_lock);
  free_list(gone);
}

uint64_t
cc_chain_index_cache_used(void)
{
  uint64_t n;

  pthread_mutex_lock(&registry_lock);
  n = cache_used;
  pthread_mutex_unlock(&registry_lock);
  return n;
}

size_t
cc_chain_index_cached(void)
{
  size_t n;

  pthread_mutex_lock(&registry_lock);
  n = cache_idle;
  pthread_mutex_unlock(&registry_lock);
  return n;
}

static int
key_eq(const struct cc_index *idx, dev_t dev, ino_t ino, const uint8_t uuid[OVL_UUID_LEN],
       uint64_t size)
{
  return idx->dev == dev && idx->ino == ino && idx->size == size &&
         memcmp(idx->uuid, uuid, OVL_UUID_LEN) == 0;
}

/* Caller holds registry_lock. */
static struct cc_index *
find_locked(dev_t dev, ino_t ino, const uint8_t uuid[OVL_UUID_LEN], uint64_t size)
{
  for (struct cc_index *i = registry_head; i; i = i->next)
    if (key_eq(i, dev, ino, uuid, size))
      return i;
  return NULL;
}

/* A new reference to the index keyed so, or NULL if there is none. */
struct cc_index *
cc_registry_get(dev_t dev, ino_t ino, const uint8_t uuid[OVL_UUID_LEN], uint64_t size)
{
  struct cc_index *idx, *gone;

  pthread_mutex_lock(&registry_lock);
  gone = evict_locked();
  idx = find_locked(dev, ino, uuid, size);
  if (idx && idx->refs > 0) {
    idx->refs++;
    pthread_mutex_unlock(&registry_lock);
    free_list(gone);
    return idx;
  }
  if (idx) {
    /* Idle: take it out of the list while its files are checked (no lock held for that); a
     * racing open of the same chain misses and builds its own, and publish sorts it out. */
    for (struct cc_index **p = &registry_head; *p; p = &(*p)->next) {
      if (*p == idx) {
        idle_unlink_locked(p);
        break;
      }
    }
  }
  pthread_mutex_unlock(&registry_lock);
  free_list(gone);
  if (!idx)
    return NULL;
  if (revalidate(idx) < 0) {
    cc_index_free(idx);
    return NULL;
  }
  return cc_registry_insert(idx);
}

struct cc_index *
cc_registry_publish(struct cc_index *idx)
{
  struct cc_index *old;

  pthread_mutex_lock(&registry_lock);
  old = find_locked(idx->dev, idx->ino, idx->uuid, idx->size);
  if (old && old->refs == 0) {
    /* An idle index of the same key lost to this fresh one (it was being revalidated, or is
     * stale): drop it. */
    for (struct cc_index **p = &registry_head; *p; p = &(*p)->next) {
      if (*p == old) {
        idle_unlink_locked(p);
        break;
      }
    }
    pthread_mutex_unlock(&registry_lock);
    cc_index_free(old);
    return cc_registry_publish(idx);
  }
  if (old) {
    old->refs++;
  } else {
    idx->refs = 1;
    idx->next = registry_head;
    registry_head = idx;
  }
  pthread_mutex_unlock(&registry_lock);
  return old;
}

/* Publish a freshly built index (refs ignored) and return the reference the caller holds: idx
 * itself, or the equal index another thread published first (then idx is freed). */
struct cc_index *
cc_registry_insert(struct cc_index *idx)
{
  struct cc_index *old = cc_registry_publish(idx);

  if (old) {
    cc_index_free(idx);
    return old;
  }
  return idx;
}

struct cc_index *
cc_index_get(struct cc_index *idx)
{
  pthread_mutex_lock(&registry_lock);
  idx->refs++;
  pthread_mutex_unlock(&registry_lock);
  return idx;
}

/* Drop one reference; the last one unlinks and frees the index. */
void
cc_index_put(struct cc_index *idx)
{
  int last = 0;

  if (!idx)
    return;
  pthread_mutex_lock(&registry_lock);
  if (--idx->refs == 0 && cache_budget > 0 && !idx->stale && idx->base == NULL &&
      idx->nowned == idx->nlayers) {
    idx->cost = index_cost(idx);
    if (idx->cost <= cache_budget) {
      struct cc_index *gone;

      /* Keep it, unlocked (design notes); it stays listed under its key. */
      unlock_files(idx);
      idx->stamp = ++cache_stamp;
      cache_used += idx->cost;
      cache_fds += idx->nlayers;
      cache_idle++;
      gone = evict_locked();
      pthread_mutex_unlock(&registry_lock);
      free_list(gone);
      return;
    }
  }
  if (idx->refs == 0) {
    for (struct cc_index **p = &registry_head; *p; p = &(*p)->next) {
      if (*p == idx) {
        *p = idx->next;
        break;
      }
    }
    last = 1;
  }
  pthread_mutex_unlock(&registry_lock);
  if (last)
    cc_index_free(idx);
}

size_t
cc_chain_index_count(void)
{
  size_t n = 0;

  pthread_mutex_lock(&registry_lock);
  for (struct cc_index *i = registry_head; i; i = i->next)
    n += i->refs > 0;
  pthread_mutex_unlock(&registry_lock);
  return n;
}

/* A live merge relinked layers under this file's chains, and will delete it (POOL.md 6.2):
 * an index holding it still reads the right bytes, but a chain opened later must be built
 * from the files as they are now.  The key cannot tell (a relink deep below the topmost
 * frozen file changes nothing of that file), so the indexes holding it leave the list. */
size_t
cc_chain_forget_file(dev_t dev, ino_t ino)
{
  struct cc_index *gone = NULL;
  size_t n = 0;

  pthread_mutex_lock(&registry_lock);
  for (struct cc_index **p = &registry_head; *p;) {
    struct cc_index *idx = *p;
    int holds = 0;

    for (size_t i = 0; i < idx->nlayers && !holds; i++)
      holds = idx->layers[i].dev == dev && idx->layers[i].ino == ino;
    if (!holds) {
      p = &idx->next;
      continue;
    }
    idx->stale = 1;
    n++;
    if (idx->refs == 0) {
      idle_unlink_locked(p);
      idx->next = gone;
      gone = idx;
    } else {
      *p = idx->next;
      idx->next = NULL;
    }
  }
  pthread_mutex_unlock(&registry_lock);
  free_list(gone);
  return n;
}
