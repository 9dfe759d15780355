/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: a chain's bottom read from a remote NBD export (a remote template).
 *
 * Design notes
 * ------------
 * A remote bottom is named by a *remote descriptor* (FORMAT.md section 11): a small text file
 * holding the export's URI, its size and a fingerprint of its content.  A layer's parent link
 * of kind 3 (OVL_PARENT_NBD) names the descriptor, exactly as kind 2 names a raw image, so the
 * confinement and cycle checks of open.c apply unchanged, and the descriptor's (st_dev, st_ino)
 * is the registry key of the index built on it.
 *
 * In the index a remote bottom is one DATA run over [0, size) (its fd is -1, so index.c's
 * SEEK_DATA scan reports all data).  Sparseness comes from the remote itself: extents and runs
 * split a remote DATA segment with NBD block status (cc_remote_walk), so holes the remote
 * reports stay holes for nbdcopy, qemu-img convert and full clones.  Reads of a remote segment
 * go to the remote synchronously from the planning thread (read.c's one hook).
 *
 * Connections.  Nothing connects at load or before nbdkit forks: a connection is made lazily
 * by the thread that first needs it (an open's check, or a read in a worker).  When the remote
 * advertises multi-conn every thread has its own connection (a pthread key), so nbdkit's
 * worker threads read in parallel; otherwise one connection is shared under a mutex.  Every
 * new connection checks the export's size and sampled fingerprint against the descriptor: a
 * remote that now serves something else is refused ("size changed", "fingerprint mismatch"),
 * naming the template and the URI, never read.
 *
 * Faults.  A failed request or connection marks the remote DOWN (one log line), the request
 * fails with EIO (never zeroes; blocks the clone owns never come here), and the thread drops
 * its connection.  Reconnection is attempted by whichever request comes next once the backoff
 * (50 ms doubling to 2 s) has passed; until then requests fail at once, so a dead remote costs
 * no waiting.  The first connection that succeeds logs "reachable again".  A slow remote slows
 * only the threads reading from it: no lock is held across a remote request except the shared
 * connection's, which only that remote's readers take.
 *
 * libnbd is loaded on first use (lib_load, dlopen), not linked: every CLI command and every
 * server links chain/, few ever touch a remote template, and libnbd's own dependencies
 * (gnutls, libxml2 with ICU, p11-kit: 18 more libraries) cost every process start ~3 ms, as
 * much as a whole linked clone create's own work (BENCHMARKS.md, "Create").  The first
 * connection loads it; if it cannot be loaded, that connection fails with dlopen's reason, so
 * only remote templates need it installed.
 *
 * Fingerprint: SHA-256 over the export size (8 bytes, little endian) followed by 16 sampled
 * blocks of 4 KiB (fewer bytes at the end of a small export) at evenly spaced, 512-aligned
 * offsets from the first block to the last.  It is a cheap identity check, not an integrity
 * proof: `template add --verify` also records a SHA-256 of the whole content.
 */
#include "chain/internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <pthread.h>
#include <nettle/sha2.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"

#define SAMPLES 16
#define SAMPLE_SIZE 4096u
#define REQ_MAX (8u << 20)      /* bytes per NBD read request */
#define STATUS_MAX (1ull << 30) /* bytes per block-status request */
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define CONNECT_TIMEOUT_MS 10000 /* handshake and the fingerprint's reads */

/* libnbd, loaded by the first connection (design notes).  The soname is the one Debian's
 * libnbd0 ships, the ABI libnbd.h describes. */
#define LIBNBD_SONAME "libnbd.so.0"
#define NBD_CALLS(X)                                                                               \
  X(nbd_add_meta_context)                                                                          \
  X(nbd_aio_block_status)                                                                          \
  X(nbd_aio_command_completed)                                                                     \
  X(nbd_aio_connect_uri)                                                                           \
  X(nbd_aio_is_connecting)                                                                         \
  X(nbd_aio_is_ready)                                                                              \
  X(nbd_aio_pread)                                                                                 \
  X(nbd_can_meta_context)                                                                          \
  X(nbd_can_multi_conn)                                                                            \
  X(nbd_close)                                                                                     \
  X(nbd_create)                                                                                    \
  X(nbd_get_errno)                                                                                 \
  X(nbd_get_error)                                                                                 \
  X(nbd_get_size)                                                                                  \
  X(nbd_is_read_only)                                                                              \
  X(nbd_poll)                                                                                      \
  X(nbd_set_uri_allow_local_file)                                                                  \
  X(nbd_shutdown)

static struct {
#define X(f) __typeof__(f) *f;
  NBD_CALLS(X)
#undef X
} lib;
static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static char lib_error[256]; /* why libnbd could not be loaded; empty once it is */

static void
lib_load(void)
{
  /* COWCHAIN_TEST_LIBNBD names another library: the tests' way to see the message of a
   * machine without libnbd (the real one cannot be hidden from the loader) */
  const char *name = getenv("COWCHAIN_TEST_LIBNBD");
  void *h = dlopen(name && *name ? name : LIBNBD_SONAME, RTLD_NOW | RTLD_LOCAL);

  if (!h) {
    snprintf(lib_error, sizeof lib_error, "%s", dlerror());
    return;
  }
  /* never closed: handles made from it live until the process ends */
#define X(f)                                                                                       \
  if (!lib_error[0] && !(lib.f = (__typeof__(f) *)dlsym(h, #f)))                                   \
    snprintf(lib_error, sizeof lib_error, "%s has no %s", LIBNBD_SONAME, #f);
  NBD_CALLS(X)
#undef X
}

/* A request that takes longer fails (EIO) and drops its connection: a remote that accepts but
 * never answers (a server shutting down, a hung host) must not hold a worker forever. */
static _Atomic int request_timeout_ms = 30000;

static const char *cache_dir;
static uint64_t cache_max;

void
cc_remote_set_cache(const char *dir, uint64_t max_bytes)
{
  cache_dir = dir;
  cache_max = max_bytes;
}

void
cc_remote_set_timeout(unsigned ms)
{
  atomic_store(&request_timeout_ms, ms ? (int)ms : 30000);
}

enum { ST_NEW, ST_UP, ST_DOWN, ST_MISMATCH };

struct conn {
  struct cc_remote *r;
  struct nbd_handle *h;
  struct conn *next; /* in the process-wide list of connections */
};

struct cc_remote {
  struct cc_remote_desc d;
  char display[CC_REMOTE_NAME_MAX + CC_REMOTE_URI_MAX + 32]; /* "template NAME (URI)" */
  struct cc_frozen as_data; /* what a resolved remote DATA segment points at: fd -1 */
  pthread_key_t key;
  pthread_mutex_t shared_lock;
  struct conn shared;
  _Atomic int multi; /* -1 unknown, 0 one shared connection, 1 one per thread */
  _Atomic int state;
  _Atomic int64_t next_try_ns;
  _Atomic int backoff_ms;
  struct cc_rcache *cache; /* NULL: none */
};

/* Every per-thread connection, so a thread's key destructor can tell whether its connection
 * still exists (cc_remote_close frees them all) and close can reach the other threads' ones. */
static pthread_mutex_t conns_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conn *conns;

static int64_t
now_ns(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Run the handle until command `cookie` completes or `timeout_ms` passes: 0, or -1 with
 * libnbd's error (or ETIMEDOUT, and then the handle must be closed: the command is still in
 * flight and would write into its buffer later). */
static __thread int timed_out; /* the calling thread's last wait_command ran out of time */

static int
wait_command(struct nbd_handle *h, int64_t cookie, int timeout_ms)
{
  int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000;

  timed_out = 0;
  if (cookie == -1)
    return -1;
  for (;;) {
    int r = lib.nbd_aio_command_completed(h, (uint64_t)cookie), left;

    if (r == 1)
      return 0;
    if (r == -1)
      return -1;
    left = (int)((deadline - now_ns()) / 1000000);
    if (left <= 0) {
      timed_out = 1;
      return -1;
    }
    if (lib.nbd_poll(h, left) == -1)
      return -1;
  }
}

static int
timed_pread(struct nbd_handle *h, void *buf, uint64_t len, uint64_t off, int timeout_ms)
{
  return wait_command(h, lib.nbd_aio_pread(h, buf, len, off, NBD_NULL_COMPLETION, 0), timeout_ms);
}

static void
hex(const uint8_t *b, size_t n, char *out)
{
  static const char digits[] = "0123456789abcdef";

  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[b[i] >> 4];
    out[2 * i + 1] = digits[b[i] & 15];
  }
  out[2 * n] = '\0';
}

/* The sampled fingerprint of the export behind h (size bytes): "s16-sha256:HEX". */
static int
sampled_fingerprint(struct nbd_handle *h, uint64_t size, char *out, size_t outlen)
{
  struct sha256_ctx ctx;
  uint8_t digest[SHA256_DIGEST_SIZE], le[8], *buf = malloc(SAMPLE_SIZE);
  char hexd[2 * SHA256_DIGEST_SIZE + 1];

  if (!buf)
    return -1;
  sha256_init(&ctx);
  for (int i = 0; i < 8; i++)
    le[i] = (uint8_t)(size >> (8 * i));
  sha256_update(&ctx, sizeof le, le);
  for (int i = 0; i < SAMPLES && size > 0; i++) {
    uint64_t len = size < SAMPLE_SIZE ? size : SAMPLE_SIZE;
    uint64_t off = (size - len) / (SAMPLES - 1) * (uint64_t)i / 512 * 512;

    if (i == SAMPLES - 1)
      off = size - len;
    if (timed_pread(h, buf, len, off, CONNECT_TIMEOUT_MS) == -1) {
      free(buf);
      return -1;
    }
    sha256_update(&ctx, len, buf);
  }
  free(buf);
  sha256_digest(&ctx, sizeof digest, digest);
  hex(digest, sizeof digest, hexd);
  snprintf(out, outlen, "s16-sha256:%s", hexd);
  return 0;
}

/* SHA-256 of the whole content: "sha256:HEX". */
static int
content_hash(struct nbd_handle *h, uint64_t size, char *out, size_t outlen)
{
  struct sha256_ctx ctx;
  uint8_t digest[SHA256_DIGEST_SIZE];
  char hexd[2 * SHA256_DIGEST_SIZE + 1];
  char *buf = malloc(REQ_MAX);

  if (!buf)
    return -1;
  sha256_init(&ctx);
  for (uint64_t off = 0; off < size;) {
    uint64_t n = size - off < REQ_MAX ? size - off : REQ_MAX;

    if (timed_pread(h, buf, n, off, atomic_load(&request_timeout_ms)) == -1) {
      free(buf);
      return -1;
    }
    sha256_update(&ctx, n, (uint8_t *)buf);
    off += n;
  }
  free(buf);
  sha256_digest(&ctx, sizeof digest, digest);
  hex(digest, sizeof digest, hexd);
  snprintf(out, outlen, "sha256:%s", hexd);
  return 0;
}

/* A new handle connected to `uri`, asking for base:allocation; NULL with the message in err. */
static struct nbd_handle *
connect_uri(const char *uri, char *err, size_t errlen)
{
  struct nbd_handle *h;

  if (pthread_once(&lib_once, lib_load) != 0 || lib_error[0]) {
    snprintf(err, errlen, "remote templates need libnbd, which could not be loaded: %s",
             lib_error[0] ? lib_error : "pthread_once failed");
    return NULL;
  }
  h = lib.nbd_create();
  if (!h) {
    snprintf(err, errlen, "%s", lib.nbd_get_error());
    return NULL;
  }
  /* The URI comes from the pool's own descriptor (or the admin's command line): it may name a
   * TLS PSK file (tls-psk-file=) as nbdinfo lets it. */
  if (lib.nbd_set_uri_allow_local_file(h, true) == -1 ||
      lib.nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      lib.nbd_aio_connect_uri(h, uri) == -1)
    goto fail;
  /* Asynchronously, with a deadline: a server that accepts and never negotiates must not hang
   * the caller. */
  for (int64_t deadline = now_ns() + (int64_t)CONNECT_TIMEOUT_MS * 1000000;
       lib.nbd_aio_is_connecting(h);) {
    int left = (int)((deadline - now_ns()) / 1000000);
    if (left <= 0) {
      snprintf(err, errlen, "connecting: no handshake within %d s", CONNECT_TIMEOUT_MS / 1000);
      lib.nbd_close(h);
      return NULL;
    }
    if (lib.nbd_poll(h, left) == -1)
      goto fail;
  }
  if (!lib.nbd_aio_is_ready(h)) {
    snprintf(err, errlen, "connecting: %s",
             lib.nbd_get_error()[0] ? lib.nbd_get_error() : "refused");
    lib.nbd_close(h);
    return NULL;
  }
  return h;
fail:
  snprintf(err, errlen, "%s", lib.nbd_get_error());
  lib.nbd_close(h);
  return NULL;
}

int
cc_remote_probe(const char *name, const char *uri, unsigned flags, struct cc_remote_desc *out)
{
  struct nbd_handle *h;
  char err[512];
  int64_t size;
  int ro, r = 0;

  memset(out, 0, sizeof *out);
  if (strlen(name) >= sizeof out->name || strlen(uri) >= sizeof out->uri)
    return cc_error_set(ENAMETOOLONG, "template add: %s: name or URI too long", name);
  for (const char *c = uri; *c; c++)
    if ((unsigned char)*c <= ' ' || *c == 0x7f)
      return cc_error_set(EINVAL, "template add: %s: URI contains a space or control character",
                          name);
  snprintf(out->name, sizeof out->name, "%s", name);
  snprintf(out->uri, sizeof out->uri, "%s", uri);
  if ((h = connect_uri(uri, err, sizeof err)) == NULL)
    return cc_error_set(EHOSTUNREACH, "template add: %s: %s: %s", name, uri, err);
  size = lib.nbd_get_size(h);
  ro = lib.nbd_is_read_only(h);
  if (size < 0 || ro < 0) {
    r = cc_error_set(EIO, "template add: %s: %s: %s", name, uri, lib.nbd_get_error());
    goto out;
  }
  if (size == 0 || size % 512 != 0) {
    r = cc_error_set(EINVAL,
                     "template add: %s: %s: size %" PRId64 " is not a non-zero multiple of 512",
                     name, uri, size);
    goto out;
  }
  out->size = (uint64_t)size;
  out->writable = !ro;
  if (!ro && !(flags & CC_PROBE_ALLOW_WRITABLE)) {
    r = cc_error_set(EPERM,
                     "template add: %s: %s: the export is writable, so it could change under "
                     "its clones; serve it read-only or pass --allow-writable",
                     name, uri);
    goto out;
  }
  if (sampled_fingerprint(h, out->size, out->fingerprint, sizeof out->fingerprint) == -1 ||
      ((flags & CC_PROBE_VERIFY) &&
       content_hash(h, out->size, out->content, sizeof out->content) == -1))
    r = cc_error_set(EIO, "template add: %s: %s: reading: %s", name, uri, lib.nbd_get_error());
out:
  lib.nbd_shutdown(h, 0);
  lib.nbd_close(h);
  return r;
}

int
cc_remote_desc_format(const struct cc_remote_desc *d, char *buf, size_t len)
{
  int n =
      snprintf(buf, len, "cowchain-remote 1\nname %s\nuri %s\nsize %" PRIu64 "\nfingerprint %s\n",
               d->name, d->uri, d->size, d->fingerprint);

  if (n >= 0 && (size_t)n < len && d->content[0])
    n += snprintf(buf + n, len - (size_t)n, "content %s\n", d->content);
  if (n >= 0 && (size_t)n < len && d->writable)
    n += snprintf(buf + n, len - (size_t)n, "writable 1\n");
  if (n < 0 || (size_t)n >= len)
    return cc_error_set(ENAMETOOLONG, "remote descriptor: %s: too long", d->name);
  return n;
}

int
cc_remote_desc_parse(const char *path, const char *text, struct cc_remote_desc *d)
{
  char *copy = strdup(text), *line, *save = NULL;
  int lineno = 0, have = 0;

  if (!copy)
    return cc_error_set(ENOMEM, "open: %s: out of memory", path);
  memset(d, 0, sizeof *d);
  for (line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *sp = strchr(line, ' '), *val;
    size_t vlen;

    lineno++;
    if (lineno == 1) {
      if (strcmp(line, "cowchain-remote 1") != 0)
        goto bad;
      continue;
    }
    if (!sp)
      goto bad;
    *sp = '\0';
    val = sp + 1;
    vlen = strlen(val);
    if (vlen == 0 || strchr(val, ' '))
      goto bad;
    if (strcmp(line, "name") == 0 && vlen < sizeof d->name) {
      strcpy(d->name, val);
      have |= 1;
    } else if (strcmp(line, "uri") == 0 && vlen < sizeof d->uri) {
      strcpy(d->uri, val);
      have |= 2;
    } else if (strcmp(line, "size") == 0) {
      char *end;
      d->size = strtoull(val, &end, 10);
      if (*end || d->size == 0)
        goto bad;
      have |= 4;
    } else if (strcmp(line, "fingerprint") == 0 && vlen < sizeof d->fingerprint) {
      strcpy(d->fingerprint, val);
      have |= 8;
    } else if (strcmp(line, "content") == 0 && vlen < sizeof d->content) {
      strcpy(d->content, val);
    } else if (strcmp(line, "writable") == 0 && strcmp(val, "1") == 0) {
      d->writable = 1;
    } else {
      goto bad;
    }
  }
  free(copy);
  if (have != 15)
    return cc_error_set(EUCLEAN, "open: %s: remote descriptor lacks name, uri, size or fingerprint",
                        path);
  return 0;
bad:
  free(copy);
  return cc_error_set(EUCLEAN, "open: %s: malformed remote descriptor at line %d", path, lineno);
}

/* A connection of r verified against the descriptor, or NULL with *why set (and err). */
static struct nbd_handle *
connect_checked(struct cc_remote *r, int *why, char *err, size_t errlen)
{
  struct nbd_handle *h = connect_uri(r->d.uri, err, errlen);
  char fp[sizeof r->d.fingerprint];
  int64_t size;

  *why = ST_DOWN;
  if (!h)
    return NULL;
  size = lib.nbd_get_size(h);
  if (size < 0 || sampled_fingerprint(h, (uint64_t)size, fp, sizeof fp) == -1) {
    snprintf(err, errlen, "%s",
             timed_out ? "no answer to the fingerprint's reads" : lib.nbd_get_error());
    goto fail;
  }
  *why = ST_MISMATCH;
  if ((uint64_t)size != r->d.size) {
    snprintf(err, errlen, "size changed (recorded %" PRIu64 ", remote %" PRId64 ")", r->d.size,
             size);
    goto fail;
  }
  if (strcmp(fp, r->d.fingerprint) != 0) {
    snprintf(err, errlen, "fingerprint mismatch (recorded %s, remote %s)", r->d.fingerprint, fp);
    goto fail;
  }
  if (atomic_load(&r->multi) < 0)
    atomic_store(&r->multi, lib.nbd_can_multi_conn(h) == 1 ? 1 : 0);
  return h;
fail:
  lib.nbd_close(h);
  return NULL;
}

/* Record a state change; one log line per change. */
static void
set_state(struct cc_remote *r, int st, const char *why)
{
  int old = atomic_exchange(&r->state, st);

  if (old == st)
    return;
  if (st == ST_UP && old == ST_NEW)
    return; /* the first connection is no news */
  if (st == ST_UP)
    cc_log("%s: %s", r->display, "reachable again");
  else if (st == ST_DOWN)
    cc_log("%s: unreachable: %s; reads of blocks the clones do not own fail with EIO", r->display,
           why);
  else if (st == ST_MISMATCH)
    cc_log("%s: refused: %s", r->display, why);
}

static void
drop_handle(struct conn *c)
{
  if (c->h) {
    lib.nbd_close(c->h);
    c->h = NULL;
  }
}

/* Connect c if it has no handle, within the backoff rules; 0 or -EIO with a message. */
static int
ensure_connected(struct cc_remote *r, struct conn *c, const char *call)
{
  char err[512];
  int why, st = atomic_load(&r->state);
  int64_t t = now_ns();

  if (c->h)
    return 0;
  if ((st == ST_DOWN || st == ST_MISMATCH) && t < atomic_load(&r->next_try_ns))
    return cc_error_set(EIO, "%s: %s: %s (retrying)", call, r->display,
                        st == ST_DOWN ? "remote unreachable" : "remote refused");
  c->h = connect_checked(r, &why, err, sizeof err);
  if (!c->h) {
    int b = atomic_load(&r->backoff_ms);

    atomic_store(&r->next_try_ns, t + (int64_t)b * 1000000);
    atomic_store(&r->backoff_ms, b * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : b * 2);
    set_state(r, why, err);
    return cc_error_set(EIO, "%s: %s: %s", call, r->display, err);
  }
  atomic_store(&r->backoff_ms, BACKOFF_MIN_MS);
  set_state(r, ST_UP, NULL);
  return 0;
}

static void
conn_destructor(void *p)
{
  struct conn **pp;

  pthread_mutex_lock(&conns_lock);
  for (pp = &conns; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = ((struct conn *)p)->next;
      drop_handle(p);
      free(p);
      break;
    }
  pthread_mutex_unlock(&conns_lock);
}

/* The connection this thread uses for r (locked if shared: release with put_conn). */
static struct conn *
get_conn(struct cc_remote *r)
{
  struct conn *c;

  if (atomic_load(&r->multi) == 0) {
    pthread_mutex_lock(&r->shared_lock);
    return &r->shared;
  }
  c = pthread_getspecific(r->key);
  if (c)
    return c;
  c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->r = r;
  pthread_mutex_lock(&conns_lock);
  c->next = conns;
  conns = c;
  pthread_mutex_unlock(&conns_lock);
  pthread_setspecific(r->key, c);
  return c;
}

static void
put_conn(struct cc_remote *r, struct conn *c)
{
  if (c == &r->shared)
    pthread_mutex_unlock(&r->shared_lock);
}

/* A request failed on a connection that is gone, not slow: it may be one this thread made
 * before the remote restarted, so it is worth one fresh connection before calling the remote
 * down. */
static int
stale(struct conn *c)
{
  return !timed_out && !lib.nbd_aio_is_ready(c->h);
}

/* A request failed on c: drop the connection if it is gone, mark the remote down. */
static int
request_failed(struct cc_remote *r, struct conn *c, const char *call, uint64_t off)
{
  char err[512];
  int e = lib.nbd_get_errno();

  if (timed_out)
    snprintf(err, sizeof err, "no answer within %d ms", atomic_load(&request_timeout_ms));
  else
    snprintf(err, sizeof err, "%s", lib.nbd_get_error());
  if (timed_out || !lib.nbd_aio_is_ready(c->h)) {
    drop_handle(c);
    atomic_store(&r->next_try_ns, now_ns());
    set_state(r, ST_DOWN, err);
  }
  (void)e; /* whatever the remote said, the client sees EIO: only a few errnos cross NBD */
  return cc_error_set(EIO, "%s: %s: offset %" PRIu64 ": %s", call, r->display, off, err);
}

static int remote_pread(void *opaque, void *buf, uint64_t len, uint64_t off);

int
cc_remote_pread(struct cc_remote *r, void *buf, uint64_t len, uint64_t off)
{
  if (r->cache)
    return cc_rcache_read(r->cache, buf, len, off, remote_pread, r);
  return remote_pread(r, buf, len, off);
}

static int
remote_pread(void *opaque, void *buf, uint64_t len, uint64_t off)
{
  struct cc_remote *r = opaque;
  struct conn *c = get_conn(r);
  int rc = 0, tried = 0;

  if (!c)
    return cc_error_set(ENOMEM, "pread: %s: out of memory", r->display);
  while (len > 0) {
    uint64_t n = len < REQ_MAX ? len : REQ_MAX;

    if ((rc = ensure_connected(r, c, "pread")) < 0)
      break;
    if (timed_pread(c->h, buf, n, off, atomic_load(&request_timeout_ms)) == -1) {
      if (!tried && stale(c)) {
        tried = 1;
        drop_handle(c);
        continue;
      }
      rc = request_failed(r, c, "pread", off);
      break;
    }
    buf = (char *)buf + n;
    off += n;
    len -= n;
  }
  put_conn(r, c);
  return rc;
}

/* Block status answers are collected, then handed to the caller after the command completed
 * and the connection is released: the caller may read (a full clone reads the data runs it is
 * given), and a libnbd handle cannot be used from inside its own callback. */
struct walk_ctx {
  struct cc_remote *r;
  uint64_t pos, end;
  struct cc_seg *v;
  size_t n, cap;
  int nomem;
};

static int
status_cb(void *opaque, const char *metacontext, uint64_t offset, uint32_t *entries,
          size_t nr_entries, int *error)
{
  struct walk_ctx *w = opaque;

  (void)offset;
  (void)error;
  if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  for (size_t i = 0; i + 1 < nr_entries && w->pos < w->end; i += 2) {
    uint64_t len = entries[i];
    uint32_t flags = entries[i + 1];
    struct cc_seg s = {.offset = w->pos, .kind = CC_RUN_DATA};

    if (len == 0)
      break;
    s.length = len < w->end - w->pos ? len : w->end - w->pos;
    if (flags & LIBNBD_STATE_HOLE)
      s.kind = CC_RUN_HOLE;
    else if (flags & LIBNBD_STATE_ZERO)
      s.kind = CC_RUN_ZERO;
    else
      s.phys = w->pos, s.file = &w->r->as_data;
    if (w->n == w->cap) {
      size_t cap = w->cap ? 2 * w->cap : 64;
      struct cc_seg *v = realloc(w->v, cap * sizeof *v);
      if (!v) {
        w->nomem = 1;
        return 0;
      }
      w->v = v;
      w->cap = cap;
    }
    w->v[w->n++] = s;
    w->pos += s.length;
  }
  return 0;
}

/* One block-status request from w->pos (up to STATUS_MAX); the answers in w->v. */
static int
status_once(struct cc_remote *r, struct walk_ctx *w, int *all_data)
{
  struct conn *c = get_conn(r);
  int rc = 0, tried = 0;

  if (!c)
    return cc_error_set(ENOMEM, "extents: %s: out of memory", r->display);
  for (;;) {
    uint64_t n = w->end - w->pos < STATUS_MAX ? w->end - w->pos : STATUS_MAX;
    int64_t ck;

    if ((rc = ensure_connected(r, c, "extents")) < 0)
      break;
    if (!lib.nbd_can_meta_context(c->h, LIBNBD_CONTEXT_BASE_ALLOCATION)) {
      *all_data = 1; /* the remote reports nothing: all data, correct if not sparse */
      break;
    }
    ck = lib.nbd_aio_block_status(c->h, n, w->pos,
                                  (nbd_extent_callback){.callback = status_cb, .user_data = w},
                                  NBD_NULL_COMPLETION, 0);
    if (wait_command(c->h, ck, atomic_load(&request_timeout_ms)) == 0)
      break;
    if (!tried && stale(c) && w->n == 0) {
      tried = 1;
      drop_handle(c);
      continue;
    }
    rc = request_failed(r, c, "extents", w->pos);
    break;
  }
  put_conn(r, c);
  if (rc == 0 && w->nomem)
    rc = cc_error_set(ENOMEM, "extents: %s: out of memory", r->display);
  return rc;
}

int
cc_remote_walk(struct cc_remote *r, const struct cc_seg *seg, cc_seg_fn fn, void *opaque)
{
  struct walk_ctx w = {.r = r, .pos = seg->offset, .end = seg->offset + seg->length};
  int rc = 0;

  while (w.pos < w.end && rc == 0) {
    uint64_t before = w.pos;
    int all_data = 0;

    w.n = 0;
    if ((rc = status_once(r, &w, &all_data)) < 0) {
      /* The remote cannot answer: what the cache knows may (then the error is forgotten). */
      struct cc_seg rest = {.offset = w.pos, .length = w.end - w.pos, .kind = CC_RUN_DATA};
      int covered = 0, fr = 0;
      if (r->cache && w.n == 0)
        fr = cc_rcache_walk(r->cache, &rest, &r->as_data, fn, opaque, &covered);
      if (covered)
        rc = fr, w.pos = w.end;
      break;
    }
    for (size_t i = 0; i < w.n && rc == 0; i++)
      rc = fn(opaque, &w.v[i]);
    if (rc == 0 && (all_data || w.pos == before)) {
      /* No answer for the rest (or no block status at all): take it as data. */
      struct cc_seg s = {.offset = w.pos,
                         .length = w.end - w.pos,
                         .kind = CC_RUN_DATA,
                         .phys = w.pos,
                         .file = &r->as_data};
      rc = fn(opaque, &s);
      w.pos = w.end;
    }
  }
  free(w.v);
  return rc;
}

int
cc_remote_open(const char *path, int fd, struct cc_remote **out)
{
  struct cc_remote *r;
  char buf[4096];
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  int rc;

  *out = NULL;
  if (n < 0)
    return cc_error_set(errno, "open: %s: %s", path, strerror(errno));
  if (n == (ssize_t)sizeof buf - 1)
    return cc_error_set(EUCLEAN, "open: %s: remote descriptor too long", path);
  buf[n] = '\0';
  if ((r = calloc(1, sizeof *r)) == NULL)
    return cc_error_set(ENOMEM, "open: %s: out of memory", path);
  if ((rc = cc_remote_desc_parse(path, buf, &r->d)) < 0) {
    free(r);
    return rc;
  }
  snprintf(r->display, sizeof r->display, "template %s (%s)", r->d.name, r->d.uri);
  r->as_data = (struct cc_frozen){.fd = -1, .path = r->display, .size = r->d.size};
  if ((rc = pthread_key_create(&r->key, conn_destructor)) != 0) {
    free(r);
    return cc_error_set(rc, "open: %s: pthread_key_create: %s", path, strerror(rc));
  }
  pthread_mutex_init(&r->shared_lock, NULL);
  r->shared.r = r;
  atomic_init(&r->multi, -1);
  atomic_init(&r->state, ST_NEW);
  atomic_init(&r->next_try_ns, 0);
  atomic_init(&r->backoff_ms, BACKOFF_MIN_MS);
  if (cache_dir &&
      (rc = cc_rcache_open(cache_dir, r->d.fingerprint, r->d.size, cache_max, &r->cache)) < 0) {
    cc_remote_close(r);
    return rc;
  }
  *out = r;
  return 0;
}

uint64_t
cc_remote_size(const struct cc_remote *r)
{
  return r->d.size;
}

int
cc_remote_check(struct cc_remote *r)
{
  struct conn *c = get_conn(r);
  int rc;

  if (!c)
    return cc_error_set(ENOMEM, "open: %s: out of memory", r->display);
  rc = ensure_connected(r, c, "open");
  put_conn(r, c);
  /* Unreachable is not a reason to refuse the open: the clone's own blocks stay readable and
   * the rest recovers when the remote returns.  Serving something else is. */
  if (rc < 0 && atomic_load(&r->state) != ST_MISMATCH)
    rc = 0;
  return rc < 0 ? cc_error_set(EINVAL, "%s", cc_error_get()) : 0;
}

void
cc_remote_close(struct cc_remote *r)
{
  struct conn **pp;

  if (!r)
    return;
  pthread_mutex_lock(&conns_lock);
  pthread_key_delete(r->key);
  for (pp = &conns; *pp;) {
    struct conn *c = *pp;
    if (c->r == r) {
      *pp = c->next;
      drop_handle(c);
      free(c);
    } else {
      pp = &c->next;
    }
  }
  pthread_mutex_unlock(&conns_lock);
  drop_handle(&r->shared);
  cc_rcache_close(r->cache);
  pthread_mutex_destroy(&r->shared_lock);
  free(r);
}
