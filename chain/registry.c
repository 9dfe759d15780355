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
 */
#include "chain/internal.h"

#include <pthread.h>
#include <string.h>

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cc_index *registry_head; /* protected by registry_lock */

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
  struct cc_index *idx;

  pthread_mutex_lock(&registry_lock);
  idx = find_locked(dev, ino, uuid, size);
  if (idx)
    idx->refs++;
  pthread_mutex_unlock(&registry_lock);
  return idx;
}

struct cc_index *
cc_registry_publish(struct cc_index *idx)
{
  struct cc_index *old;

  pthread_mutex_lock(&registry_lock);
  old = find_locked(idx->dev, idx->ino, idx->uuid, idx->size);
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
  if (--idx->refs == 0) {
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
    n++;
  pthread_mutex_unlock(&registry_lock);
  return n;
}
