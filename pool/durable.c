/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: the durable steps (POOL.md section 4), batched per operation.
 *
 * Design notes
 * ------------
 * Every file a pool operation adds is made in tmp/, synced, renamed into place, and its
 * directory synced.  Done one file after the other that is two syncs per file, and a sync costs
 * a journal commit (1.5-4 ms here): a snapshot create made five in a row.  Most of them do not
 * depend on each other, so an operation describes all its changes in one *batch* and the batch
 * makes them in three rounds:
 *
 *   prepare  1. at once, one thread each: every new layer created in tmp/ and synced; every
 *               record written to its own tmp/ file and synced; every layer being frozen flushed
 *               (its data and map durable, dirty bit cleared, lock made shared: ovl_freeze);
 *            2. as soon as the layers of round 1 are done (the records and freezes may still
 *               be syncing): every new layer renamed into layers/, then layers/ synced once;
 *   commit   3. the records renamed into place in the order they were added, each directory
 *               synced once after its records' renames, before any later directory's records
 *               are renamed (a template record never becomes durable before the clone record
 *               added ahead of it).
 *
 * What must be durable before what: a record is the commit point, so everything it names must be
 * durable before its rename is: the layer (data: round 1, name: round 2) and the layer it
 * freezes (round 1); and the record's own bytes (round 1) before its name.  Nothing in rounds
 * 1-2 changes what any reader sees: a new layer nobody names is a leftover (POOL.md 2), a tmp/
 * file belongs to a live process, a flushed layer reads as before.  So a crash before round 3
 * leaves "before" plus leftovers, and round 3 is the operation's commit.  Records of one
 * directory are renamed together and then synced once, so after a crash any subset of them may
 * be in place: a batch puts records in one directory together only when each is a commit of
 * its own (the records after a snapshot intent, 6.3) or they are independent.
 *
 * Threads, not io_uring: a sync on io_uring is done by a kernel worker that strace does not see,
 * and the power-loss replay (tests/reliability/powerloss.py) must see every sync to model what
 * is durable.  strace -f follows threads; the replay applies each call when it returns, which is
 * causal (a rename after a join comes after the sync the join waited for).  Threads are made
 * per batch (~0.1 ms for all), never kept.
 *
 * pool_step() (the crash-test hook) is called once after the prepare rounds and once per
 * directory of the commit, always by the calling thread.
 */
#include "pool/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum item_kind {
  ITEM_LAYER,   /* a new empty layer, created by the batch */
  ITEM_ADOPTED, /* a complete layer already durable in tmp/ (full clone, resize copy) */
  ITEM_RECORD,
  ITEM_FREEZE,
};

struct pool_item {
  enum item_kind kind;
  char sub[16];       /* directory it goes into */
  char tmp[PATH_MAX]; /* its file in tmp/ while there is one, else "" */
  char final[PATH_MAX];
  char *data;                  /* RECORD: the contents */
  struct ovl_create_opts opts; /* LAYER */
  uint8_t uuid[OVL_UUID_LEN];  /* LAYER */
  char ppath[OVL_MAX_PARENT_PATH + 1];
  struct ovl_layer *layer; /* FREEZE */
  struct cc_pool *p;
  int r; /* the job's result, and its message if r < 0 */
  char err[CC_ERROR_MAX];
  pthread_t thread;
  int threaded;
};

void
pool_batch_init(struct pool_batch *b, struct cc_pool *p)
{
  memset(b, 0, sizeof *b);
  b->p = p;
}

static struct pool_item *
batch_add(struct pool_batch *b, enum item_kind kind, const char *sub)
{
  struct pool_item *it;

  if (b->n == b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 4;
    struct pool_item *ni = realloc(b->items, cap * sizeof *ni);
    if (ni == NULL) {
      cc_error_set(ENOMEM, "pool: out of memory");
      return NULL;
    }
    b->items = ni;
    b->cap = cap;
  }
  it = &b->items[b->n++];
  memset(it, 0, sizeof *it);
  it->kind = kind;
  it->p = b->p;
  snprintf(it->sub, sizeof it->sub, "%s", sub);
  return it;
}

int
pool_batch_layer(struct pool_batch *b, uint64_t size, const struct ovl_parent *parent,
                 char uuid_out[CC_UUID_STR])
{
  struct pool_item *it = batch_add(b, ITEM_LAYER, "layers");
  int r;

  if (it == NULL)
    return -ENOMEM;
  it->opts.virtual_size = size;
  it->opts.mode = b->p->file_mode;
  it->opts.uuid = it->uuid;
  if (parent) {
    it->opts.parent = *parent;
    if (parent->path) {
      snprintf(it->ppath, sizeof it->ppath, "%s", parent->path);
      it->opts.parent.path = it->ppath;
    }
  }
  /* The uuid now, so the records naming the layer are prepared while it is being created. */
  if ((r = ovl_uuid_random(it->uuid)) < 0) {
    b->n--;
    return cc_error_set(-r, "new layer: getrandom: %s", strerror(-r));
  }
  ovl_uuid_str(it->uuid, uuid_out);
  /* tmp/ and layers/ are siblings, so a "../images/X.raw" parent link means the same in both,
   * and a "UUID.cow" link is only followed once the file is in layers/. */
  if ((r = pool_tmp_path(b->p, "layer", ".cow", it->tmp, sizeof it->tmp)) < 0 ||
      (r = pool_layer_path(b->p, uuid_out, it->final, sizeof it->final)) < 0) {
    b->n--;
    return r;
  }
  return 0;
}

int
pool_batch_adopt_layer(struct pool_batch *b, const char *tmp_path, const char *uuid)
{
  struct pool_item *it = batch_add(b, ITEM_ADOPTED, "layers");
  int r;

  if (it == NULL)
    return -ENOMEM;
  snprintf(it->tmp, sizeof it->tmp, "%s", tmp_path);
  if ((r = pool_layer_path(b->p, uuid, it->final, sizeof it->final)) < 0) {
    b->n--;
    return r;
  }
  return 0;
}

int
pool_batch_record(struct pool_batch *b, const char *sub, const char *name, const char *data)
{
  struct pool_item *it = batch_add(b, ITEM_RECORD, sub);
  int r;

  if (it == NULL)
    return -ENOMEM;
  if ((it->data = strdup(data)) == NULL) {
    b->n--;
    return cc_error_set(ENOMEM, "write record: %s/%s: out of memory", sub, name);
  }
  if ((r = pool_tmp_path(b->p, "rec", "", it->tmp, sizeof it->tmp)) < 0 ||
      (r = pool_path(b->p, it->final, sizeof it->final, "%s/%s", sub, name)) < 0) {
    free(it->data);
    b->n--;
    return r;
  }
  return 0;
}

int
pool_batch_freeze(struct pool_batch *b, struct ovl_layer *l)
{
  struct pool_item *it = batch_add(b, ITEM_FREEZE, "");

  if (it == NULL)
    return -ENOMEM;
  it->layer = l;
  return 0;
}

/* Round 1 of one record: its complete contents in its tmp/ file, synced. */
static int
record_make(struct pool_item *it)
{
  size_t len = strlen(it->data), done = 0;
  int fd, r;

  fd = open(it->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd == -1)
    return cc_error_set(errno, "write record: %s: %s", it->tmp, strerror(errno));
  if ((r = pool_secure_fd(it->p, fd, it->tmp, 0)) < 0)
    goto fail;
  while (done < len) {
    ssize_t w = write(fd, it->data + done, len - done);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      r = cc_error_set(errno, "write record: %s: %s", it->tmp, strerror(errno));
      goto fail;
    }
    done += (size_t)w;
  }
  if (fsync(fd) == -1) {
    r = cc_error_set(errno, "write record: %s: fsync: %s", it->tmp, strerror(errno));
    goto fail;
  }
  close(fd);
  return 0;

fail:
  close(fd);
  unlink(it->tmp);
  it->tmp[0] = '\0';
  return r;
}

/* Round 1 of one item, in whichever thread runs it. */
static void *
item_run(void *arg)
{
  struct pool_item *it = arg;

  switch (it->kind) {
  case ITEM_LAYER:
    /* ovl_create syncs the file (FORMAT.md 7.4) */
    it->r = ovl_create(it->tmp, &it->opts, NULL);
    if (it->r == 0 && (it->r = pool_secure_group(it->p, it->tmp)) < 0)
      unlink(it->tmp);
    if (it->r < 0)
      it->tmp[0] = '\0';
    break;
  case ITEM_RECORD:
    it->r = record_make(it);
    break;
  case ITEM_FREEZE:
    it->r = ovl_freeze(it->layer);
    break;
  case ITEM_ADOPTED:
    it->r = 0;
    break;
  }
  if (it->r < 0)
    snprintf(it->err, sizeof it->err, "%s", cc_error_get());
  return NULL;
}

static void
item_start(struct pool_item *it)
{
  /* Without a thread (none left, EAGAIN) the item runs here: slower, still correct. */
  it->threaded = pthread_create(&it->thread, NULL, item_run, it) == 0;
  if (!it->threaded)
    item_run(it);
}

static void
item_wait(struct pool_item *it)
{
  if (it->threaded)
    pthread_join(it->thread, NULL);
  it->threaded = 0;
}

/* Round 2: every new layer of round 1 renamed into layers/, then layers/ synced once. */
static int
install_layers(struct pool_batch *b, size_t nlayers)
{
  for (size_t i = 0; i < b->n; i++) {
    struct pool_item *it = &b->items[i];
    if (it->kind != ITEM_LAYER && it->kind != ITEM_ADOPTED)
      continue;
    /* A uuid collision would be a bug in the generator; never replace a layer. */
    if (access(it->final, F_OK) == 0)
      return cc_error_set(EEXIST, "install layer: %s: already exists", it->final);
    if (rename(it->tmp, it->final) == -1)
      return cc_error_set(errno, "install layer: %s: %s", it->final, strerror(errno));
    it->tmp[0] = '\0';
  }
  return nlayers ? pool_fsync_dir(b->p, "layers") : 0;
}

int
pool_batch_prepare(struct pool_batch *b)
{
  size_t nlayers = 0, first = b->n;
  int r = 0, ri = 0;

  for (size_t i = 0; i < b->n; i++)
    if (b->items[i].kind == ITEM_LAYER || b->items[i].kind == ITEM_ADOPTED) {
      nlayers++;
      if (first == b->n && b->items[i].kind == ITEM_LAYER)
        first = i;
    }
  /* Every item but one in a thread of its own; the calling thread makes the first new layer
   * (the longest chain: create, then install and sync layers/), or the only item. */
  if (first == b->n && b->n > 0)
    first = 0;
  for (size_t i = 0; i < b->n; i++)
    if (i != first)
      item_start(&b->items[i]);
  if (first < b->n)
    item_run(&b->items[first]);
  for (size_t i = 0; i < b->n; i++) {
    struct pool_item *it = &b->items[i];
    if (it->kind == ITEM_LAYER || it->kind == ITEM_ADOPTED) {
      item_wait(it);
      if (it->r < 0 && r == 0)
        r = it->r, ri = (int)i;
    }
  }
  if (r == 0 && nlayers) {
    r = install_layers(b, nlayers);
    if (r < 0)
      ri = -1; /* the message is ours */
  }
  for (size_t i = 0; i < b->n; i++) {
    struct pool_item *it = &b->items[i];
    item_wait(it);
    if (it->r < 0 && r == 0)
      r = it->r, ri = (int)i;
  }
  if (r < 0) {
    if (ri >= 0)
      cc_error_set(-r, "%s", b->items[ri].err);
    return r;
  }
  b->prepared = 1;
  if (b->n)
    pool_step();
  return 0;
}

int
pool_batch_commit(struct pool_batch *b)
{
  const char *sub = NULL; /* the directory of the records renamed and not yet synced */
  size_t pending = 0;
  int r;

  if (!b->prepared)
    return cc_error_set(EINVAL, "pool: commit of a batch that was not prepared");
  for (size_t i = 0; i <= b->n; i++) {
    struct pool_item *it = i < b->n ? &b->items[i] : NULL;

    if (it && it->kind != ITEM_RECORD)
      continue;
    /* A directory's records are renamed, then it is synced once, before the next directory's
     * first rename. */
    if (pending && (it == NULL || strcmp(it->sub, sub) != 0)) {
      if ((r = pool_fsync_dir(b->p, sub)) < 0)
        return r;
      b->committed += pending;
      pending = 0;
      pool_step();
    }
    if (it == NULL)
      break;
    if (rename(it->tmp, it->final) == -1) {
      r = cc_error_set(errno, "write record: %s: %s", it->final, strerror(errno));
      if (pending && pool_fsync_dir(b->p, sub) == 0) /* the ones renamed stand */
        b->committed += pending;
      return r;
    }
    it->tmp[0] = '\0';
    sub = it->sub;
    pending++;
  }
  return 0;
}

void
pool_batch_free(struct pool_batch *b)
{
  for (size_t i = 0; i < b->n; i++) {
    struct pool_item *it = &b->items[i];
    item_wait(it);
    if (it->tmp[0] && it->kind != ITEM_ADOPTED)
      unlink(it->tmp); /* not in place: nothing reads it; an adopted file is the caller's */
    free(it->data);
  }
  free(b->items);
  memset(b, 0, sizeof *b);
}

int
pool_fsync_dir(const struct cc_pool *p, const char *sub)
{
  char path[PATH_MAX];
  int fd, r;

  if ((r = pool_path(p, path, sizeof path, "%s", sub)) < 0)
    return r;
  fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1)
    return cc_error_set(errno, "fsync: %s: %s", path, strerror(errno));
  if (fsync(fd) == -1) {
    int e = errno;
    close(fd);
    return cc_error_set(e, "fsync: %s: %s", path, strerror(e));
  }
  close(fd);
  return 0;
}

int
pool_write_record(struct cc_pool *p, const char *sub, const char *name, const char *data)
{
  struct pool_batch b;
  int r;

  pool_batch_init(&b, p);
  if ((r = pool_batch_record(&b, sub, name, data)) == 0 && (r = pool_batch_prepare(&b)) == 0)
    r = pool_batch_commit(&b);
  pool_batch_free(&b);
  return r;
}

int
pool_remove_record(struct cc_pool *p, const char *sub, const char *name)
{
  char path[PATH_MAX];
  int r;

  if ((r = pool_path(p, path, sizeof path, "%s/%s", sub, name)) < 0)
    return r;
  if (unlink(path) == -1)
    return cc_error_set(errno, "remove record: %s: %s", path, strerror(errno));
  if ((r = pool_fsync_dir(p, sub)) < 0)
    return r;
  pool_step();
  return 0;
}

int
pool_install_layer(struct cc_pool *p, const char *tmp_path, const char *uuid)
{
  struct pool_batch b;
  int r;

  pool_batch_init(&b, p);
  if ((r = pool_batch_adopt_layer(&b, tmp_path, uuid)) == 0)
    r = pool_batch_prepare(&b);
  pool_batch_free(&b);
  return r;
}

int
pool_new_layer(struct cc_pool *p, uint64_t size, const struct ovl_parent *parent,
               char uuid_out[CC_UUID_STR])
{
  struct pool_batch b;
  int r;

  pool_batch_init(&b, p);
  if ((r = pool_batch_layer(&b, size, parent, uuid_out)) == 0)
    r = pool_batch_prepare(&b);
  pool_batch_free(&b);
  return r;
}
