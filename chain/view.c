/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: views, and changing a chain's layers while it is read (live snapshots).
 *
 * Design notes
 * ------------
 * Everything a request needs to know about a chain's layers (the writable top, the shared
 * index of the frozen part, the top's path) is one immutable `struct cc_view`, published in
 * c->view as one pointer.  A request loads the pointer once, between cc_view_enter and
 * cc_view_leave, and uses only that view, so it sees either the chain before a switch or the
 * chain after it, never a mix.  A switch (cc_chain_push_top, or a rebuild after a live merge)
 * builds the new view completely, stores the pointer, then waits for a *grace period* before it
 * frees what only the old view used.
 *
 * Grace periods are a two-counter scheme in the manner of SRCU, per chain:
 *
 *   reader                                  switcher (under switch_lock)
 *   e = epoch & 1                           store view = new
 *   readers[e]++          (seq_cst)         twice: e = epoch & 1; epoch++;
 *   v = view              (seq_cst)                wait until readers[e] == 0
 *   ... use v ...                           retire the old view
 *   readers[e]--
 *
 * Why it is safe: a reader counted in readers[e] that the switcher sees as zero either had not
 * incremented yet, and then loads `view` after the switcher's store (seq_cst orders the
 * increment after the switcher's read of the counter, hence after its store), so it holds the
 * new view; or it had left.  Two rounds are needed because a reader may read `epoch`, stall,
 * and increment a counter the previous switch already drained: the second round drains that
 * counter too.  New readers always go to the counter not being drained, so a switch finishes
 * after the requests in flight at its start, however busy the chain is.
 *
 * Cost on the read path: two atomic increments on a per-chain cache line and one load; no
 * mutex, no system call.  The switcher spins with short sleeps (requests are bounded by their
 * I/O); it never holds a lock a reader needs.
 *
 * Pushing a top (a live snapshot): the caller has stopped writes (no write, zero or flush in
 * flight; reads may continue).  The new top N must be an empty, durable layer whose parent is
 * the current top T, already in place.  Then:
 *
 *   1. open N exclusively and check its link names T (same file, uuid and size);
 *   2. build the index of the new frozen part (the old index's runs with T's map on top, one
 *      pass: cost O(runs of the chain), not O(depth x runs));
 *   3. seal T (ovl_seal: writes refused from now on, nothing flushed, lock still exclusive);
 *   4. register the index (other chains on T now share it), publish {N, new index};
 *   5. after the grace period: free the old view; T is now the chain's `unsettled` layer;
 *   6. settle (cc_chain_settle, called by the caller once its writers run again, by any
 *      flush of the chain, by close and by the next switch): freeze T (ovl_freeze: flush,
 *      clear the dirty bit, exclusive -> shared lock in one step), then drop its in-memory map
 *      (the index holds it).
 *
 * Settling: T's flush is the slow part of a switch (an fdatasync of everything the guests
 * wrote since their last flush; on ext4 it also waits for the journal commit), and nothing
 * needs it before the guests write again: their new writes go to N.  What does need it: a
 * client's flush (it covers the writes it sent to T, so cc_chain_flush settles first); another
 * open of T (it would read T's map from the file, which lacks every unflushed first write: the
 * exclusive lock, kept until the settle, makes such an open fail as it would on a served top);
 * and the promise that a snapshot is durable once the command that made it returns (the
 * server settles before it answers push-top, after it has reopened the gates).
 *
 * Any failure before step 4 leaves the chain as it was (T still its writable top); step 4
 * cannot fail.  T's lock is never released, only converted, so no other writer can open it in
 * between.  The new index extends the old one (cc_index.base): it references it for the lower
 * layers' files instead of reopening them.
 *
 * Known cost: each push keeps the previous index's run array alive as the base of the next
 * one, so memory grows with pushes x runs until the chain is reopened or rebuilt (a live
 * merge's `forget` rebuilds the chains it touches from the files).
 *
 * Live merge (POOL.md 6.2): cc_chain_fill_top copies a frozen layer into the top's holes (the
 * caller has stopped writes, so "a hole" cannot change under it; reads may run: a hole being
 * filled reads the same through the frozen part); cc_chain_relink_top rewrites the top's
 * parent link (the old view still reads the same bytes); cc_chain_refresh_frozen rebuilds the
 * frozen part from the files as the links now say (after cc_chain_forget_file no index
 * holding the merged layer can be found in the registry) and publishes it like a push,
 * readers never paused.
 */
#include "chain/internal.h"

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/error.h"

struct cc_view *
cc_view_enter(struct cc_chain *c, unsigned *ticket)
{
  unsigned e = (unsigned)(atomic_load(&c->epoch) & 1);

  atomic_fetch_add(&c->readers[e].n, 1);
  *ticket = e;
  return atomic_load(&c->view);
}

void
cc_view_leave(struct cc_chain *c, unsigned ticket)
{
  atomic_fetch_sub_explicit(&c->readers[ticket].n, 1, memory_order_release);
}

void
cc_view_free(struct cc_view *v)
{
  if (!v)
    return;
  cc_index_put(v->idx);
  free(v->path);
  free(v);
}

/* Wait until no reader can still hold a view older than the current one.  Caller holds
 * switch_lock. */
static void
synchronize(struct cc_chain *c)
{
  for (int round = 0; round < 2; round++) {
    unsigned long e = atomic_fetch_add(&c->epoch, 1) & 1;
    unsigned spins = 0;

    while (atomic_load(&c->readers[e].n) != 0) {
      if (++spins < 64) {
        sched_yield();
      } else {
        struct timespec ts = {0, 50 * 1000}; /* 50 us */
        nanosleep(&ts, NULL);
      }
    }
  }
}

/* Publish `nv` and retire the old view after a grace period; returns the old view, whose
 * memory the caller frees (cc_view_free) once it has released what only it used. */
static struct cc_view *
publish(struct cc_chain *c, struct cc_view *nv)
{
  struct cc_view *old = atomic_exchange(&c->view, nv);

  synchronize(c);
  return old;
}

/* Check that the layer N (just opened) names T as its parent, as a child's link must. */
static int
check_link(const char *npath, const struct ovl_info *ni, const struct ovl_info *ti,
           const struct stat *tst, uint64_t size)
{
  char want[37], got[37];
  struct stat st;
  char *ppath;

  if (ni->parent_kind != OVL_PARENT_LAYER)
    return cc_error_set(
        EINVAL, "push: %s: new top has no parent layer (it must be the current top)", npath);
  if (memcmp(ni->parent_uuid, ti->uuid, OVL_UUID_LEN) != 0) {
    ovl_uuid_str(ti->uuid, want);
    ovl_uuid_str(ni->parent_uuid, got);
    return cc_error_set(EINVAL, "push: %s: parent uuid %s is not the current top's %s", npath, got,
                        want);
  }
  if (ni->parent_size != ti->virtual_size || ni->virtual_size != size)
    return cc_error_set(EINVAL, "push: %s: size %llu (parent %llu) differs from the chain's %llu",
                        npath, (unsigned long long)ni->virtual_size,
                        (unsigned long long)ni->parent_size, (unsigned long long)size);
  if (!(ppath = cc_join_parent(npath, ni->parent_path)))
    return cc_error_set(ENOMEM, "push: %s: out of memory", npath);
  if (stat(ppath, &st) < 0 || st.st_dev != tst->st_dev || st.st_ino != tst->st_ino) {
    int r = cc_error_set(EINVAL, "push: %s: parent %s is not the current top's file", npath,
                         ni->parent_path);
    free(ppath);
    return r;
  }
  free(ppath);
  return 0;
}

/* Open the new top exclusively (into *n) and check it may stack on view old's top. */
static int
open_new_top(const struct cc_view *old, uint64_t size, const char *path, struct ovl_layer **n,
             struct ovl_info *ni, struct ovl_info *ti, struct stat *tst)
{
  int r;

  if ((r = ovl_open(path, OVL_RDWR, n)) < 0)
    return r;
  ovl_get_info(*n, ni);
  ovl_get_info(old->top, ti);
  if (fstat(old->top_fd, tst) < 0)
    return cc_error_set(errno, "push: %s: fstat: %s", old->path, strerror(errno));
  return check_link(path, ni, ti, tst, size);
}

int
cc_chain_push_check(struct cc_chain *c, const char *new_top_path)
{
  struct ovl_info *ni = malloc(sizeof *ni), *ti = malloc(sizeof *ti);
  struct ovl_layer *n = NULL;
  struct cc_view *v;
  struct stat tst;
  int r;

  pthread_mutex_lock(&c->switch_lock);
  v = atomic_load(&c->view);
  if (!ni || !ti)
    r = cc_error_set(ENOMEM, "push: %s: out of memory", new_top_path);
  else if (!v->top)
    r = cc_error_set(EPERM, "push: %s: chain is read-only", v->path);
  else
    r = open_new_top(v, c->size, new_top_path, &n, ni, ti, &tst);
  if (n)
    ovl_close(n);
  pthread_mutex_unlock(&c->switch_lock);
  free(ni);
  free(ti);
  return r;
}

int
cc_chain_push_top(struct cc_chain *c, const char *new_top_path)
{
  int r = cc_chain_switch_top(c, new_top_path);

  return r < 0 ? r : cc_chain_settle(c);
}

int
cc_chain_settle(struct cc_chain *c)
{
  struct ovl_layer *t;
  int r = 0;

  if (!atomic_load(&c->unsettled))
    return 0;
  pthread_mutex_lock(&c->settle_lock);
  t = atomic_load(&c->unsettled);
  if (t && c->unsettled_owned) {
    /* Closed even if the flush fails (nothing else can make it durable later), and the
     * error is the caller's: the writes T held may not be durable. */
    r = ovl_close(t);
    atomic_store(&c->unsettled, NULL);
  } else if (t && (r = ovl_freeze(t)) == 0) {
    /* Only the shared index reads T now (the grace period of the switch has passed). */
    ovl_drop_map(t);
    atomic_store(&c->unsettled, NULL);
  }
  pthread_mutex_unlock(&c->settle_lock);
  return r;
}

int
cc_chain_switch_top(struct cc_chain *c, const char *new_top_path)
{
  struct ovl_info *ni = NULL, *ti = NULL;
  struct ovl_layer *n = NULL;
  struct cc_index *idx = NULL, *shared;
  struct cc_view *old, *nv = NULL;
  struct cc_frozen f = {.fd = -1};
  struct stat tst;
  int r;

  pthread_mutex_lock(&c->switch_lock);
  old = atomic_load(&c->view); /* stable: only switchers change it, and we hold the lock */
  if (!old->top) {
    r = cc_error_set(EPERM, "push: %s: chain is read-only", old->path);
    goto out;
  }
  /* The previous switch's old top first: a chain has at most one layer unsettled. */
  if ((r = cc_chain_settle(c)) < 0)
    goto out;
  ni = malloc(sizeof *ni);
  ti = malloc(sizeof *ti);
  nv = calloc(1, sizeof *nv);
  if (!ni || !ti || !nv || !(nv->path = strdup(new_top_path)) || !(f.path = strdup(old->path))) {
    r = cc_error_set(ENOMEM, "push: %s: out of memory", new_top_path);
    goto out;
  }
  /* 1. The new top, and its link to the current one. */
  if ((r = open_new_top(old, c->size, new_top_path, &n, ni, ti, &tst)) < 0)
    goto out;
  /* 2. The new frozen part's index, from T's map while T is still the (quiet) top. */
  f.ovl = old->top;
  f.fd = old->top_fd;
  f.size = ti->virtual_size;
  f.dev = tst.st_dev;
  f.ino = tst.st_ino;
  if ((r = cc_index_stack(old->idx, &f, &idx)) < 0)
    goto out;
  /* 3. Seal T: no more writes; its flush is cc_chain_settle's.  After this nothing can fail. */
  if ((r = ovl_seal(old->top)) < 0)
    goto out;
  /* 4. Share it, publish. */
  idx->nowned = 1; /* T (and f.path) now belong to the index */
  f.path = NULL;
  shared = cc_registry_publish(idx);
  if (shared) {
    /* Another chain of this process opened T read-only between the freeze and now (its own
     * descriptor, its own index): use that one, and close our T once no reader needs it. */
    idx->nowned = 0;
    nv->idx = shared;
  } else {
    nv->idx = idx;
  }
  nv->top = n;
  nv->top_fd = ovl_fd(n);
  n = NULL;
  publish(c, nv);
  nv = NULL;
  /* 5. Nobody reads through the old view now. */
  if (shared) {
    /* Our T is nobody's now: cc_chain_settle closes it, which makes a sealed layer durable. */
    c->unsettled_owned = true;
    free(idx->layers[idx->nlayers - 1].path);
    cc_index_free(idx);
  } else {
    c->unsettled_owned = false; /* the index owns T; settle drops its map when durable */
  }
  atomic_store(&c->unsettled, old->top);
  cc_view_free(old);
  idx = NULL;
  r = 0;
out:
  if (idx) {
    idx->nowned = 0;
    cc_index_free(idx);
  }
  if (n)
    ovl_close(n);
  free(f.path);
  cc_view_free(nv);
  free(ni);
  free(ti);
  pthread_mutex_unlock(&c->switch_lock);
  return r;
}

/* ---- live merge (POOL.md 6.2) ---- */

int
cc_chain_fill_top(struct cc_chain *c, struct ovl_layer *src, uint64_t offset, uint64_t length,
                  uint64_t *copied)
{
  struct ovl_extent se[64], te[64];
  struct cc_view *v;
  uint64_t end, done = 0;
  int r = 0;

  pthread_mutex_lock(&c->switch_lock);
  v = atomic_load(&c->view);
  if (!v->top) {
    r = cc_error_set(EPERM, "merge: %s: chain is read-only", v->path);
    goto out;
  }
  if (ovl_sc_size(src) != ovl_sc_size(v->top)) {
    r = cc_error_set(EINVAL, "merge: %s: sub-cluster size differs from %s's", ovl_path(src),
                     v->path);
    goto out;
  }
  end = offset + length;
  if (end > ovl_virtual_size(src))
    end = ovl_virtual_size(src);
  if (end > c->size)
    end = c->size;
  /* The source's allocated and zero runs, and inside each the top's unallocated ones: with no
   * write in flight, "unallocated" cannot change under us, and a write that comes after the
   * gate reopens lands on top of what we copied (a newer write wins). */
  while (offset < end && r == 0) {
    int n = ovl_map(src, offset, end - offset, se, 64);
    if (n <= 0) {
      r = n;
      break;
    }
    for (int i = 0; i < n && r == 0; i++) {
      uint64_t so = se[i].offset, send = so + se[i].length;
      offset = send;
      if (se[i].state == OVL_UNALLOCATED)
        continue;
      while (so < send && r == 0) {
        int m = ovl_map(v->top, so, send - so, te, 64);
        if (m <= 0) {
          r = m;
          break;
        }
        for (int k = 0; k < m && r == 0; k++) {
          uint64_t to = te[k].offset, tl = te[k].length;
          so = to + tl;
          if (te[k].state != OVL_UNALLOCATED)
            continue;
          if (se[i].state == OVL_ZERO)
            r = ovl_zero(v->top, tl, to, 0, NULL, NULL);
          else
            r = ovl_copy_in(v->top, to, tl, ovl_fd(src), se[i].phys + (to - se[i].offset),
                            ovl_path(src));
          done += tl;
        }
      }
    }
  }
out:
  pthread_mutex_unlock(&c->switch_lock);
  if (copied)
    *copied = done;
  return r < 0 ? r : 0;
}

int
cc_chain_relink_top(struct cc_chain *c, int kind, const char *link)
{
  struct ovl_parent par = {.kind = (enum ovl_parent_kind)kind};
  struct ovl_layer *pl = NULL;
  struct cc_view *v;
  char *abs = NULL;
  int r;

  pthread_mutex_lock(&c->switch_lock);
  v = atomic_load(&c->view);
  if (!v->top) {
    r = cc_error_set(EPERM, "relink: %s: chain is read-only", v->path);
    goto out;
  }
  if (kind != OVL_PARENT_NONE) {
    struct stat st;

    if (!link || !(abs = cc_join_parent(v->path, link))) {
      r = cc_error_set(ENOMEM, "relink: %s: out of memory", v->path);
      goto out;
    }
    par.path = link;
    if (kind == OVL_PARENT_LAYER) {
      struct ovl_info info;

      /* its uuid and size only: the header, not the map (the caller's gate may be closed) */
      if ((r = ovl_open(abs, OVL_RDONLY | OVL_NOLOCK | OVL_HEADER_ONLY, &pl)) < 0)
        goto out;
      ovl_get_info(pl, &info);
      memcpy(par.uuid, info.uuid, OVL_UUID_LEN);
      par.size = info.virtual_size;
    } else if (stat(abs, &st) < 0) {
      r = cc_error_set(errno, "relink: %s: %s", abs, strerror(errno));
      goto out;
    } else {
      par.size = (uint64_t)st.st_size;
    }
  }
  /* What was copied into the top must be durable before the link stops reaching it. */
  if ((r = ovl_flush(v->top)) < 0)
    goto out;
  r = ovl_set_parent(v->top, &par);
out:
  if (pl)
    ovl_close(pl);
  free(abs);
  pthread_mutex_unlock(&c->switch_lock);
  return r;
}

int
cc_chain_refresh_frozen(struct cc_chain *c)
{
  struct cc_chain *ro = NULL;
  struct cc_view *old, *nv = NULL, *rov;
  struct ovl_info *info = NULL;
  char *fpath = NULL;
  unsigned flags = c->flags & CC_IO_MASK;
  int r = 0;

  pthread_mutex_lock(&c->switch_lock);
  /* Reopening the files below needs a settled old top (its lock shared, its map on disk). */
  if ((r = cc_chain_settle(c)) < 0)
    goto out;
  old = atomic_load(&c->view);
  if (old->top) {
    if (!(info = malloc(sizeof *info))) {
      r = cc_error_set(ENOMEM, "refresh: %s: out of memory", old->path);
      goto out;
    }
    ovl_get_info(old->top, info);
    if (info->parent_kind != OVL_PARENT_NONE &&
        !(fpath = cc_join_parent(old->path, info->parent_path))) {
      r = cc_error_set(ENOMEM, "refresh: %s: out of memory", old->path);
      goto out;
    }
    if (info->parent_kind == OVL_PARENT_RAW)
      flags |= CC_RAW;
  } else {
    const struct cc_frozen *f = &old->idx->layers[old->idx->nlayers - 1];
    if (!(fpath = strdup(f->path))) {
      r = cc_error_set(ENOMEM, "refresh: %s: out of memory", old->path);
      goto out;
    }
    if (!f->ovl)
      flags |= CC_RAW;
  }
  /* A chain opened within a root (a pool's) stays within it: the links may have changed. */
  if (fpath &&
      (r = old->idx && old->idx->root ? cc_chain_open_within(fpath, flags, old->idx->root, &ro)
                                      : cc_chain_open(fpath, flags, &ro)) < 0)
    goto out;
  rov = ro ? atomic_load(&ro->view) : NULL;
  if (old->top && rov &&
      (info->parent_size != rov->idx->size ||
       (info->parent_kind == OVL_PARENT_LAYER &&
        memcmp(info->parent_uuid, rov->idx->uuid, OVL_UUID_LEN) != 0))) {
    r = cc_error_set(EINVAL, "refresh: %s: its parent link does not name %s", old->path, fpath);
    goto out;
  }
  if (!(nv = calloc(1, sizeof *nv)) || !(nv->path = strdup(old->path))) {
    r = cc_error_set(ENOMEM, "refresh: %s: out of memory", old->path);
    goto out;
  }
  nv->top = old->top;
  nv->top_fd = old->top_fd;
  if (rov) {
    nv->idx = rov->idx; /* steal ro's reference */
    rov->idx = NULL;
  }
  publish(c, nv);
  nv = NULL;
  cc_view_free(old); /* drops the old index, after the grace period */
out:
  cc_chain_close(ro);
  cc_view_free(nv);
  free(info);
  free(fpath);
  pthread_mutex_unlock(&c->switch_lock);
  return r;
}

int
cc_chain_uses_file(struct cc_chain *c, dev_t dev, ino_t ino)
{
  struct cc_view *v;
  int hit = 0;

  pthread_mutex_lock(&c->switch_lock);
  v = atomic_load(&c->view);
  for (size_t i = 0; v->idx && i < v->idx->nlayers && !hit; i++)
    hit = v->idx->layers[i].dev == dev && v->idx->layers[i].ino == ino;
  pthread_mutex_unlock(&c->switch_lock);
  return hit;
}
