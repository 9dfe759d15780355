/* SPDX-License-Identifier: BSD-3-Clause */
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
 * (nbdkit 1.32 maps any other errno to EINVAL on the wire, which would mislead the client).
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chain/chain.h"
#include "pool/pool.h"
#include "common/error.h"
#include "common/escape.h"
#include "overlay/overlay.h"
#include "server/control.h"
#include "server/exports.h"

#ifndef COWCHAIN_VERSION
#define COWCHAIN_VERSION "unknown"
#endif

/* No limit of ours: chain/ splits any request itself, and nbdkit already refuses data
 * requests above 64 MiB (its MAX_REQUEST_SIZE) before they reach us. */
#define MAX_BLOCK 0xffffffffu

/* Configuration, written only during .config/.config_complete/.get_ready (single-threaded). */
static char *pool_dir; /* pool=, absolute */
/* io=: CC_IO_AUTO (default: one-piece reads by pread, several pieces as one io_uring batch),
 * CC_IO_SYNC (pread only) or 0 (io_uring only); docs/BENCHMARKS.md measures the three. */
static unsigned io_flags = CC_IO_AUTO;
static char *default_name; /* default=, or NULL: the empty export name is refused */
/* index-cache=: bytes of idle chain indexes kept after their last connection closed, so a
 * reconnect to a deep clone is a lookup, not a rebuild (chain/registry.c). */
static int64_t index_cache = 64 << 20;
static unsigned cache_flags; /* cache=: 0 (writeback, the default) or CC_DIRECT (none) */
/* The pool handle is exports.c's (exports_pool()), opened in .get_ready. */

/* One per connection: just the shared export.  An *unavailable* handle (e == NULL) stands for
 * an export of the pool this server cannot open (a clone another process holds, a broken
 * layer): nbdinfo --list opens every listed export and fails as a whole if one open fails,
 * and nbdkit 1.32 cannot tell its probe from a real client, so such an
 * export opens read-only with its recorded size, describes why it is unavailable, and fails
 * every read with EIO and that reason. */
struct handle {
  struct cc_export *e;
  int readonly;     /* nbdkit -r, or a read-only export */
  const char *name; /* the export name (interned) */
  const char *why;  /* e == NULL: why the export cannot be opened (interned) */
  uint64_t size;    /* e == NULL: the recorded size */
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
  control_stop();
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
    else if (strcmp(value, "auto") == 0)
      io_flags = CC_IO_AUTO;
    else {
      nbdkit_error("io=%s: unknown I/O mode; use io=auto (the default), io=sync or io=uring",
                   value);
      return -1;
    }
  } else if (strcmp(key, "cache") == 0) {
    /* cache=none: the frozen layers' data read with O_DIRECT (chain.h, CC_DIRECT). */
    if (strcmp(value, "none") == 0)
      cache_flags = CC_DIRECT;
    else if (strcmp(value, "writeback") == 0)
      cache_flags = 0;
    else {
      nbdkit_error("cache=%s: unknown cache mode; use cache=writeback (the default) or "
                   "cache=none",
                   value);
      return -1;
    }
  } else if (strcmp(key, "index-cache") == 0) {
    index_cache = nbdkit_parse_size(value);
    if (index_cache < 0)
      return -1; /* nbdkit_parse_size said what is wrong */
  } else if (strcmp(key, "control") == 0) {
    if (control_config(value) < 0)
      return -1;
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
    nbdkit_error("unknown parameter '%s'; cowchain takes pool=DIR, io=auto|sync|uring, "
                 "cache=writeback|none, index-cache=SIZE, default=NAME and control=on|off",
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
  "io=auto|sync|uring    How reads reach the layers (default: auto).\n"                            \
  "cache=writeback|none  none: layer data read with O_DIRECT (default: writeback).\n"              \
  "index-cache=SIZE      Idle chain indexes kept for reconnects (default: 64M).\n"                 \
  "default=NAME          Export served to clients that ask for the empty name.\n"                  \
  "control=on|off        The control socket POOL/run/nbdkit-PID.ctl (default: on)."

static void
cowchain_dump_plugin(void)
{
  printf("cowchain_version=%s\n", COWCHAIN_VERSION);
  printf("cowchain_io=auto,sync,uring\n");
  printf("cowchain_io_default=auto\n");
  printf("cowchain_cache=writeback,none\n");
  printf("cowchain_exports=clone,snapshot,template\n");
  printf("cowchain_snapshot_separator=@\n");
  printf("cowchain_name_max=%d\n", CC_NAME_MAX);
  printf("cowchain_max_depth=%d\n", CC_MAX_DEPTH);
  printf("cowchain_control=%d\n", 1); /* protocol version of the control socket */
}

/* Before the fork, while errors still reach the user; no threads or rings here. */
static int
cowchain_get_ready(void)
{
  if (exports_init(pool_dir, io_flags | cache_flags) < 0)
    return -1;
  cc_set_index_cache((uint64_t)index_cache);
  control_init(pool_dir, exports_pool());
  return 0;
}

/* After nbdkit's fork (and setuid, chdir).  nbdkit has bound its sockets (under its umask
 * 0022): the pool's socket gets the pool's mode, 0600 or 0660 with the pool's group (POOL.md
 * 1.1).  The control socket carries this process's pid. */
static int
cowchain_after_fork(void)
{
  if (cc_pool_secure_socket(exports_pool()) < 0) {
    nbdkit_error("%s", cc_error_get());
    return -1;
  }
  /* Not fatal: the exports are served either way; only live operations need the socket. */
  if (control_start() < 0)
    nbdkit_error("control: no control socket: live snapshots of this server's clones are "
                 "unavailable (control=off silences this)");
  return 0;
}

/* After the last connection: no control command may run on a closing server. */
static void
cowchain_cleanup(void)
{
  control_stop();
}

/* If another process holds export `info`'s top file so that we could not open it, append why to
 * its description (issue 14, item 8).  Our own exports are skipped: their lock is ours. */
static void
describe_unavailable(struct cc_export_info *info)
{
  char path[PATH_MAX], holder[128];
  enum cc_export_kind kind;
  struct flock fl = {.l_whence = SEEK_SET};
  size_t len;
  int fd;

  cc_error_clear();
  if (cc_pool_resolve_export(exports_pool(), info->name, path, sizeof path, &kind) < 0 ||
      exports_holds(path))
    return;
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return;
  /* A clone's top is opened exclusively (any lock conflicts), everything else shared. */
  fl.l_type = kind == CC_EXPORT_CLONE ? F_WRLCK : F_RDLCK;
  if (fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) {
    ovl_lock_holder(path, holder, sizeof holder);
    len = strlen(info->description);
    snprintf(info->description + len, sizeof info->description - len,
             "%sunavailable on this server: in use by %s", len ? "; " : "", holder);
  }
  close(fd);
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
  /* Already sorted by name, so `nbdinfo --list` output is stable.  Every export is listed,
   * including those another process holds: their .open gives an unavailable handle. */
  for (i = 0; i < n && r == 0; i++) {
    describe_unavailable(&info[i]);
    r = nbdkit_add_export(exports, info[i].name,
                          info[i].description[0] ? info[i].description : NULL);
  }
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

/* An evicted export (snapshot revert --force, server/exports.h): every request fails with
 * ESHUTDOWN, so the client learns that its disk is gone (nbdkit 1.32 has no
 * nbdkit_disconnect: the plugin cannot close the connection itself). */
static int
evicted(struct handle *h, const char *call)
{
  nbdkit_error("%s: %s: this connection was disconnected from its disk by the pool "
               "(snapshot revert --force); reconnect",
               call, h->name);
  nbdkit_set_error(ESHUTDOWN);
  return -1;
}

/* Reads enter the chain counted (one atomic increment, no gate): the evictor waits for them. */
static int
read_enter(struct handle *h)
{
  atomic_fetch_add(&h->e->readers, 1);
  if (atomic_load(&h->e->evicted)) {
    atomic_fetch_sub(&h->e->readers, 1);
    return -1;
  }
  return 0;
}

static void
read_leave(struct handle *h)
{
  atomic_fetch_sub(&h->e->readers, 1);
}

/* A write, zero, trim or flush entered the gate: is it still allowed into the chain? */
static int
write_evicted(struct handle *h)
{
  if (!atomic_load(&h->e->evicted))
    return 0;
  gate_leave(&h->e->gate);
  return 1;
}

static int open_unavailable(struct handle *h);

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

  h = calloc(1, sizeof *h);
  if (h == NULL || (h->name = nbdkit_strdup_intern(name)) == NULL) {
    nbdkit_error("malloc: %m");
    free(h);
    return NULL;
  }
  cc_error_clear();
  h->e = exports_acquire(name, readonly);
  if (h->e == NULL && open_unavailable(h) < 0) {
    free(h);
    return NULL;
  }
  if (h->e) {
    if (read_enter(h) < 0) {
      /* Evicted between the acquire and here: this connection never had the disk. */
      exports_release(h->e);
      nbdkit_error("open: %s: the pool is changing this clone; try again", name);
      free(h);
      return NULL;
    }
    h->readonly = readonly || !cc_chain_writable(h->e->chain);
    read_leave(h);
  }
  return h;
}

/* exports_acquire failed (and logged why): if the pool lists the export, make h an unavailable
 * handle for it (see struct handle); otherwise -1, the client is refused as before. */
static int
open_unavailable(struct handle *h)
{
  char why[512];
  struct cc_export_info *info = NULL;
  size_t i, n = 0;
  int found = 0;

  snprintf(why, sizeof why, "%s", cc_error_get()[0] ? cc_error_get() : "cannot be opened");
  if (exports_list(&info, &n) < 0)
    return -1;
  for (i = 0; i < n; i++) {
    if (strcmp(info[i].name, h->name) == 0) {
      h->size = info[i].size;
      found = 1;
      break;
    }
  }
  free(info);
  if (!found)
    return -1;
  h->readonly = 1;
  h->why = nbdkit_printf_intern("unavailable on this server: %s", why);
  return h->why ? 0 : -1;
}

static const char *
cowchain_export_description(void *handle)
{
  struct handle *h = handle;

  return h->why; /* NULL for a served export: the listing's description stands */
}

/* A data request on an unavailable handle. */
static int
unavailable(struct handle *h, const char *call)
{
  nbdkit_error("%s: %s: %s", call, h->name, h->why);
  nbdkit_set_error(EIO);
  return -1;
}

static void
cowchain_close(void *handle)
{
  struct handle *h = handle;

  if (h->e)
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
    nbdkit_error("%s: %s", h->name, cc_escape(cc_error_get(), msg, sizeof msg));
  else
    nbdkit_error("%s: %s: %s", call, h->name, strerror(err));
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
  int64_t size;

  if (!h->e)
    return (int64_t)h->size;
  if (read_enter(h) < 0)
    return evicted(h, "get_size");
  size = (int64_t)cc_chain_size(h->e->chain);
  read_leave(h);
  return size;
}

static int
cowchain_block_size(void *handle, uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  struct handle *h = handle;
  uint32_t bs = 4096;

  if (h->e) {
    if (read_enter(h) < 0)
      return evicted(h, "block_size");
    bs = cc_chain_block_size(h->e->chain);
    read_leave(h);
  }
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
  if (!h->e)
    return unavailable(h, "pread");
  if (read_enter(h) < 0)
    return evicted(h, "pread");
  cc_error_clear();
  r = cc_chain_pread(h->e->chain, buf, count, offset);
  read_leave(h);
  return r < 0 ? fail(h, "pread", r) : 0;
}

/* nbdkit already refuses writes when can_write is false; these checks keep a read-only
 * export read-only even if that ever changes. */
static int
refuse_readonly(struct handle *h, const char *call)
{
  if (!h->e)
    return unavailable(h, call);
  nbdkit_error("%s: %s: export is read-only", call, h->name);
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
  gate_enter(&h->e->gate);
  if (write_evicted(h))
    return evicted(h, "pwrite");
  r = cc_chain_pwrite(h->e->chain, buf, count, offset, flags & NBDKIT_FLAG_FUA ? CC_FUA : 0);
  gate_leave(&h->e->gate);
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
  gate_enter(&h->e->gate);
  if (write_evicted(h))
    return evicted(h, "flush");
  r = cc_chain_flush(h->e->chain);
  gate_leave(&h->e->gate);
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
  gate_enter(&h->e->gate);
  if (write_evicted(h))
    return evicted(h, "trim");
  r = cc_chain_zero(h->e->chain, count, offset, cf);
  gate_leave(&h->e->gate);
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
  gate_enter(&h->e->gate);
  if (write_evicted(h))
    return evicted(h, "zero");
  r = cc_chain_zero(h->e->chain, count, offset, cf);
  gate_leave(&h->e->gate);
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

  if (!h->e)
    return unavailable(h, "extents");
  if (read_enter(h) < 0)
    return evicted(h, "extents");
  cc_error_clear();
  r = cc_chain_extents(h->e->chain, count, offset, add_extent, &ctx);
  read_leave(h);
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
    .cleanup = cowchain_cleanup,
    .list_exports = cowchain_list_exports,
    .default_export = cowchain_default_export,
    .open = cowchain_open,
    .close = cowchain_close,
    .export_description = cowchain_export_description,
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
