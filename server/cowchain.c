/* nbdkit-cowchain-plugin: every clone, snapshot and template of a cowchain pool as an export.
 *
 * Design notes
 *
 * Thin by design: names are parsed and resolved by pool/, reads and writes are done by
 * chain/, and the table that lets several connections share one open chain is in exports.c.
 * This file maps nbdkit's callbacks onto those and chain/'s -errno results onto the errnos
 * that survive the NBD wire.
 *
 *   export     what                       access
 *   NAME       a clone's writable top     read-write (read-only under nbdkit -r)
 *   NAME@SNAP  a snapshot of clone NAME   read-only
 *   TEMPLATE   a template                 read-only
 *
 * Lifecycle: .config validates and realpath()s the pool (nbdkit chdir("/")s after forking, so
 * the path must be absolute), .get_ready opens the pool so a wrong directory is reported
 * before the server detaches.  No threads and no io_uring rings are created here: chain/
 * makes one ring per worker thread lazily, after nbdkit's fork.
 *
 * Per connection: .open resolves the (untrusted) export name, refusing anything that is not a
 * valid NAME or NAME@SNAP before it can become a path, and takes a reference on the shared
 * export; .close drops it.  The handle holds only that reference, so there is no per-handle
 * state to lock in PARALLEL mode.
 *
 * Errors: chain/ returns -errno and leaves a "call: object: reason" message in cc_error_get();
 * we log it once with the export name and send the client EIO, ENOSPC, EPERM, ENOMEM or EINVAL
 * (anything else would reach the client as a misleading EINVAL, see NBDKIT-NOTES §1.4).
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chain/chain.h"
#include "pool/pool.h"
#include "common/error.h"
#include "common/escape.h"
#include "server/exports.h"

#ifndef COWCHAIN_VERSION
#define COWCHAIN_VERSION "unknown"
#endif

/* No limit of ours: chain/ splits any request itself, and nbdkit already refuses data
 * requests above 64 MiB (its MAX_REQUEST_SIZE) before they reach us. */
#define MAX_BLOCK 0xffffffffu

/* Configuration, written only during .config/.config_complete/.get_ready (single-threaded). */
static char *pool_dir;       /* pool=, absolute */
/* io=: CC_IO_SYNC (default) or 0 (uring).  pread is the default because it measured as fast
 * or faster on a warm page cache at every depth (docs/BENCHMARKS.md, io_uring ablation). */
static unsigned io_flags = CC_IO_SYNC;
static char *default_name;   /* default=, or NULL: the empty export name is refused */
/* The pool handle is exports.c's (exports_pool()), opened in .get_ready. */

/* One per connection: just the shared export. */
struct handle {
  struct cc_export *e;
  int readonly; /* nbdkit -r, or a read-only export */
};

/* chain/'s rare operational messages (e.g. io_uring unavailable) belong in nbdkit's log. */
static void
log_chain_message(const char *msg)
{
  char buf[CC_ESCAPED_SIZE(512)]; /* cc_log's longest message */

  nbdkit_debug("%s", cc_escape(msg, buf, sizeof buf));
}

static void
cowchain_load(void)
{
  cc_set_log(log_chain_message);
}

static void
cowchain_unload(void)
{
  exports_shutdown(); /* closes the pool too */
  free(pool_dir);
  free(default_name);
}

static int
cowchain_config(const char *key, const char *value)
{
  if (strcmp(key, "pool") == 0) {
    free(pool_dir);
    /* Absolute and canonical now: after the fork nbdkit runs in "/". */
    pool_dir = nbdkit_realpath(value);
    if (pool_dir == NULL)
      return -1;
  } else if (strcmp(key, "io") == 0) {
    if (strcmp(value, "uring") == 0)
      io_flags = 0;
    else if (strcmp(value, "sync") == 0)
      io_flags = CC_IO_SYNC;
    else {
      nbdkit_error("io=%s: unknown I/O mode; use io=sync (the default) or io=uring", value);
      return -1;
    }
  } else if (strcmp(key, "default") == 0) {
    char name[CC_NAME_MAX + 1], snap[CC_NAME_MAX + 1];

    cc_error_clear();
    if (cc_export_name_parse(value, name, snap) < 0) {
      nbdkit_error("default=%s: %s; give an export name such as vm1 or vm1@snap", value,
                   cc_error_get());
      return -1;
    }
    free(default_name);
    default_name = strdup(value);
    if (default_name == NULL) {
      nbdkit_error("strdup: %m");
      return -1;
    }
  } else {
    nbdkit_error("unknown parameter '%s'; cowchain takes pool=DIR, io=uring|sync and "
                 "default=NAME",
                 key);
    return -1;
  }
  return 0;
}

static int
cowchain_config_complete(void)
{
  if (pool_dir == NULL) {
    nbdkit_error("the pool directory is required: nbdkit cowchain pool=DIR "
                 "(create one with: cowchain --pool DIR pool init)");
    return -1;
  }
  return 0;
}

#define cowchain_config_help                                                                       \
  "pool=DIR              (required) The cowchain pool directory to serve.\n"                       \
  "io=sync|uring         How reads reach the layers (default: sync).\n"                           \
  "default=NAME          Export served to clients that ask for the empty name."

static void
cowchain_dump_plugin(void)
{
  printf("cowchain_version=%s\n", COWCHAIN_VERSION);
  printf("cowchain_io=uring,sync\n");
  printf("cowchain_io_default=sync\n");
  printf("cowchain_exports=clone,snapshot,template\n");
  printf("cowchain_snapshot_separator=@\n");
  printf("cowchain_name_max=%d\n", CC_NAME_MAX);
  printf("cowchain_max_depth=%d\n", CC_MAX_DEPTH);
}

/* Before the fork, while errors still reach the user; no threads or rings here. */
static int
cowchain_get_ready(void)
{
  return exports_init(pool_dir, io_flags);
}

/* nbdkit has bound its sockets (under its umask 0022): the pool's socket gets the pool's
 * mode, 0600 or 0660 with the pool's group (POOL.md 1.1). */
static int
cowchain_after_fork(void)
{
  if (cc_pool_secure_socket(exports_pool()) < 0) {
    nbdkit_error("%s", cc_error_get());
    return -1;
  }
  return 0;
}

static int
cowchain_list_exports(int readonly, int is_tls, struct nbdkit_exports *exports)
{
  struct cc_export_info *info = NULL;
  size_t i, n = 0;
  int r = 0;

  (void)readonly;
  (void)is_tls;
  if (exports_list(&info, &n) < 0)
    return -1;
  /* Already sorted by name, so `nbdinfo --list` output is stable. */
  for (i = 0; i < n && r == 0; i++)
    r = nbdkit_add_export(exports, info[i].name,
                          info[i].description[0] ? info[i].description : NULL);
  free(info);
  return r;
}

/* The canonical name for the client's "".  Without default= we still return "" so that .open
 * can tell the client's operator what to do instead of a bare "not permitted". */
static const char *
cowchain_default_export(int readonly, int is_tls)
{
  (void)readonly;
  (void)is_tls;
  return default_name ? default_name : "";
}

static void *
cowchain_open(int readonly)
{
  const char *name = nbdkit_export_name();
  char base[CC_NAME_MAX + 1], snap[CC_NAME_MAX + 1];
  struct handle *h;

  if (name == NULL || name[0] == '\0') {
    nbdkit_error("open: no export name given: ask for one of the pool's exports by name "
                 "(nbdinfo --list shows them), or start the server with default=NAME");
    return NULL;
  }
  /* The name is untrusted client input: refuse it before it can get near a path. */
  cc_error_clear();
  if (cc_export_name_parse(name, base, snap) < 0) {
    char msg[CC_ESCAPED_SIZE(CC_ERROR_MAX)];

    /* The message quotes the name: escape it so a client cannot forge log lines. */
    nbdkit_error("open: invalid export name: %s", cc_escape(cc_error_get(), msg, sizeof msg));
    return NULL;
  }

  h = malloc(sizeof *h);
  if (h == NULL) {
    nbdkit_error("malloc: %m");
    return NULL;
  }
  h->e = exports_acquire(name, readonly);
  if (h->e == NULL) {
    free(h);
    return NULL;
  }
  h->readonly = readonly || !cc_chain_writable(h->e->chain);
  return h;
}

static void
cowchain_close(void *handle)
{
  struct handle *h = handle;

  exports_release(h->e);
  free(h);
}

/* Log chain/'s message once, with the export, and pick the errno the client will see. */
static int
fail(struct handle *h, const char *call, int r)
{
  char msg[CC_ESCAPED_SIZE(CC_ERROR_MAX)];
  int err = -r;

  if (cc_error_get()[0])
    nbdkit_error("%s: %s", h->e->name, cc_escape(cc_error_get(), msg, sizeof msg));
  else
    nbdkit_error("%s: %s: %s", call, h->e->name, strerror(err));
  switch (err) {
  case EIO:
  case ENOSPC:
  case EPERM:
  case ENOMEM:
  case EINVAL:
    break;
  case EROFS:
    err = EPERM;
    break;
  case EDQUOT:
  case EFBIG:
    err = ENOSPC;
    break;
  default:
    err = EIO;
    break;
  }
  nbdkit_set_error(err);
  return -1;
}

static int64_t
cowchain_get_size(void *handle)
{
  struct handle *h = handle;

  return (int64_t)cc_chain_size(h->e->chain);
}

static int
cowchain_block_size(void *handle, uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  struct handle *h = handle;
  uint32_t bs = cc_chain_block_size(h->e->chain);

  /* nbdkit insists on a power of two in [512, 32M] for the preferred size. */
  if (bs < 512 || bs > 32 * 1024 * 1024 || (bs & (bs - 1)) != 0)
    bs = 4096;
  *minimum = 1;
  *preferred = bs;
  *maximum = MAX_BLOCK;
  return 0;
}

static int
cowchain_can_write(void *handle)
{
  struct handle *h = handle;

  return !h->readonly;
}

static int
cowchain_can_flush(void *handle)
{
  (void)handle;
  return 1;
}

static int
cowchain_is_rotational(void *handle)
{
  (void)handle;
  return 0;
}

static int
cowchain_can_trim(void *handle)
{
  struct handle *h = handle;

  return !h->readonly;
}

static int
cowchain_can_zero(void *handle)
{
  struct handle *h = handle;

  return !h->readonly;
}

/* Zeroing marks clusters zero in the map; it never writes data, so it is always fast. */
static int
cowchain_can_fast_zero(void *handle)
{
  struct handle *h = handle;

  return !h->readonly;
}

static int
cowchain_can_fua(void *handle)
{
  (void)handle;
  return NBDKIT_FUA_NATIVE;
}

/* All connections to an export share one cc_chain, so a flush on one covers all of them. */
static int
cowchain_can_multi_conn(void *handle)
{
  (void)handle;
  return 1;
}

static int
cowchain_can_extents(void *handle)
{
  (void)handle;
  return 1;
}

/* nbdkit's emulation reads the range and discards it, which warms the page cache the layers
 * are read through: all the caching we could do natively. */
static int
cowchain_can_cache(void *handle)
{
  (void)handle;
  return NBDKIT_CACHE_EMULATE;
}

static int
cowchain_pread(void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  int r;

  (void)flags;
  cc_error_clear();
  r = cc_chain_pread(h->e->chain, buf, count, offset);
  return r < 0 ? fail(h, "pread", r) : 0;
}

/* nbdkit already refuses writes when can_write is false; these checks keep a read-only
 * export read-only even if that ever changes. */
static int
refuse_readonly(struct handle *h, const char *call)
{
  nbdkit_error("%s: %s: export is read-only", call, h->e->name);
  nbdkit_set_error(EPERM);
  return -1;
}

static int
cowchain_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  int r;

  if (h->readonly)
    return refuse_readonly(h, "pwrite");
  cc_error_clear();
  r = cc_chain_pwrite(h->e->chain, buf, count, offset, flags & NBDKIT_FLAG_FUA ? CC_FUA : 0);
  return r < 0 ? fail(h, "pwrite", r) : 0;
}

static int
cowchain_flush(void *handle, uint32_t flags)
{
  struct handle *h = handle;
  int r;

  (void)flags;
  if (h->readonly)
    return 0; /* nothing of ours to make durable */
  cc_error_clear();
  r = cc_chain_flush(h->e->chain);
  return r < 0 ? fail(h, "flush", r) : 0;
}

/* Trim is advisory, but in a clone it must still hide the template below: it is a zero that
 * may deallocate. */
static int
cowchain_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  unsigned cf = CC_MAY_TRIM;
  int r;

  if (h->readonly)
    return refuse_readonly(h, "trim");
  if (flags & NBDKIT_FLAG_FUA)
    cf |= CC_FUA;
  cc_error_clear();
  r = cc_chain_zero(h->e->chain, count, offset, cf);
  return r < 0 ? fail(h, "trim", r) : 0;
}

static int
cowchain_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  unsigned cf = 0;
  int r;

  if (h->readonly)
    return refuse_readonly(h, "zero");
  /* NBDKIT_FLAG_FAST_ZERO needs nothing: zeroing is metadata-only (can_fast_zero). */
  if (flags & NBDKIT_FLAG_MAY_TRIM)
    cf |= CC_MAY_TRIM;
  if (flags & NBDKIT_FLAG_FUA)
    cf |= CC_FUA;
  cc_error_clear();
  r = cc_chain_zero(h->e->chain, count, offset, cf);
  if ((r == -ENOTSUP || r == -EOPNOTSUPP) && (flags & NBDKIT_FLAG_FAST_ZERO)) {
    /* Not expected (zeroing is metadata-only), but if chain/ ever declines, a fast-zero
     * client must see ENOTSUP, the one errno that tells it to fall back. */
    nbdkit_set_error(ENOTSUP);
    return -1;
  }
  return r < 0 ? fail(h, "zero", r) : 0;
}

struct extents_ctx {
  struct nbdkit_extents *extents;
  int req_one;
  int failed; /* nbdkit_add_extent failed and has already called nbdkit_error */
};

static int
add_extent(void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  struct extents_ctx *ctx = opaque;

  if (nbdkit_add_extent(ctx->extents, offset, length, type) < 0) {
    ctx->failed = 1;
    return 1;
  }
  /* One extent answers a REQ_ONE request; stop walking the map. */
  return ctx->req_one ? 1 : 0;
}

static int
cowchain_extents(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                 struct nbdkit_extents *extents)
{
  struct handle *h = handle;
  struct extents_ctx ctx = {extents, (flags & NBDKIT_FLAG_REQ_ONE) != 0, 0};
  int r;

  cc_error_clear();
  r = cc_chain_extents(h->e->chain, count, offset, add_extent, &ctx);
  if (ctx.failed)
    return -1;
  return r < 0 ? fail(h, "extents", r) : 0;
}

static struct nbdkit_plugin plugin = {
    .name = "cowchain",
    .longname = "cowchain linked clones and snapshots",
    .version = COWCHAIN_VERSION,
    .description = "Serve the clones, snapshots and templates of a cowchain pool",
    .load = cowchain_load,
    .unload = cowchain_unload,
    .config = cowchain_config,
    .config_complete = cowchain_config_complete,
    .config_help = cowchain_config_help,
    .magic_config_key = "pool",
    .dump_plugin = cowchain_dump_plugin,
    .get_ready = cowchain_get_ready,
    .after_fork = cowchain_after_fork,
    .list_exports = cowchain_list_exports,
    .default_export = cowchain_default_export,
    .open = cowchain_open,
    .close = cowchain_close,
    .get_size = cowchain_get_size,
    .block_size = cowchain_block_size,
    .can_write = cowchain_can_write,
    .can_flush = cowchain_can_flush,
    .is_rotational = cowchain_is_rotational,
    .can_trim = cowchain_can_trim,
    .can_zero = cowchain_can_zero,
    .can_fast_zero = cowchain_can_fast_zero,
    .can_fua = cowchain_can_fua,
    .can_multi_conn = cowchain_can_multi_conn,
    .can_extents = cowchain_can_extents,
    .can_cache = cowchain_can_cache,
    .pread = cowchain_pread,
    .pwrite = cowchain_pwrite,
    .flush = cowchain_flush,
    .trim = cowchain_trim,
    .zero = cowchain_zero,
    .extents = cowchain_extents,
    .errno_is_preserved = 0, /* errors go through nbdkit_set_error */
};

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
NBDKIT_REGISTER_PLUGIN(plugin)
