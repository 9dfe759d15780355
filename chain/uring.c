/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: reading a request's pieces on the calling thread's io_uring.
 *
 * Design notes
 * ------------
 * One ring per thread, created on the thread's first read and stored under a pthread key whose
 * destructor calls io_uring_queue_exit: nbdkit starts and joins worker threads per connection,
 * and a ring kept only in __thread storage would leak its fd at every join.  A ring used only
 * by its creating thread may be IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN (completion work runs
 * when we wait, which is exactly when we want it); kernels that refuse that get COOP_TASKRUN,
 * then no flags.  If io_uring itself is unavailable (ENOSYS: not built in, EPERM/EACCES:
 * disabled by sysctl or seccomp) the whole process switches to pread, saying so once through
 * cc_log; other setup failures (ENOMEM, EMFILE) make just that read use pread.
 *
 * One request = all of its file pieces, kept in flight up to the ring size (RING_ENTRIES), with
 * no IOSQE_IO_LINK: the pieces are independent, and a short read would cancel a linked
 * successor.  A short read resubmits its remainder; -EINTR/-EAGAIN resubmit the piece; a
 * result of 0 (end of file inside data the index says exists) is corruption: -EIO.
 *
 * The rule that must never break: every submitted SQE completes before we return, on error
 * paths too, because the buffers belong to the caller (nbdkit reuses its per-thread buffer
 * for the next request).  After the first error no new SQE is queued, but every one in flight
 * is still reaped.  If the ring itself fails (io_uring_enter refuses, not a per-op error) we
 * wait for what the kernel already consumed, then destroy the ring, which discards what it had
 * not: nothing can write into the buffer after we return.  Pieces are advanced in place as
 * they complete, so the caller can then finish the very same request with pread.
 */
#include "chain/internal.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#if defined(COWCHAIN_VALGRIND) && defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define MARK_DEFINED(p, n) VALGRIND_MAKE_MEM_DEFINED((p), (n))
#endif
#endif
#ifndef MARK_DEFINED
#define MARK_DEFINED(p, n) ((void)(p), (void)(n))
#endif

#define RING_ENTRIES 64u /* SQ size; the CQ is twice that, so in-flight reads never overflow */

struct cc_ring {
  struct io_uring ring;
};

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t ring_key;
static int key_ok;
static atomic_int uring_off;    /* 1: io_uring unavailable in this process, use pread */
static atomic_int logged_other; /* a non-fatal setup failure was logged once */

static void
ring_destroy(void *p)
{
  struct cc_ring *r = p;

  io_uring_queue_exit(&r->ring);
  free(r);
}

static void
key_init(void)
{
  key_ok = pthread_key_create(&ring_key, ring_destroy) == 0;
}

int
cc_uring_disabled(void)
{
  return atomic_load(&uring_off);
}

/* The calling thread's ring, created on first use; NULL (and a log line) if none. */
static struct cc_ring *
ring_get(void)
{
  static const unsigned setups[] = {
#if defined(IORING_SETUP_SINGLE_ISSUER) && defined(IORING_SETUP_DEFER_TASKRUN)
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
#endif
#ifdef IORING_SETUP_COOP_TASKRUN
    IORING_SETUP_COOP_TASKRUN,
#endif
    0,
  };
  struct cc_ring *r;
  int err = -EINVAL;

  pthread_once(&key_once, key_init);
  if (!key_ok) {
    if (!atomic_exchange(&uring_off, 1))
      cc_log("io_uring: cannot create a thread key: reading with pread");
    return NULL;
  }
  r = pthread_getspecific(ring_key);
  if (r)
    return r;
  r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  for (size_t i = 0; i < sizeof setups / sizeof setups[0]; i++) {
    err = io_uring_queue_init(RING_ENTRIES, &r->ring, setups[i]);
    if (err != -EINVAL)
      break;
  }
  if (err == 0 && pthread_setspecific(ring_key, r) != 0) {
    io_uring_queue_exit(&r->ring);
    err = -ENOMEM;
  }
  if (err == 0)
    return r;
  free(r);
  if (err == -ENOSYS || err == -EPERM || err == -EACCES) {
    if (!atomic_exchange(&uring_off, 1))
      cc_log("io_uring unavailable (%s): reading with pread", strerror(-err));
  } else if (!atomic_exchange(&logged_other, 1)) {
    cc_log("io_uring: ring setup failed (%s): reading with pread until it works", strerror(-err));
  }
  return NULL;
}

/* Forget this thread's ring after it failed as a whole. */
static void
ring_discard(struct cc_ring *r)
{
  pthread_setspecific(ring_key, NULL);
  ring_destroy(r);
}

struct exec {
  struct cc_piece *v;
  size_t n;
  size_t next;                  /* next piece never submitted */
  size_t requeue[RING_ENTRIES]; /* pieces to resubmit (remainders, EINTR) */
  size_t nrequeue;
  unsigned queued; /* SQEs prepared and not yet reaped (in the SQ or the kernel) */
  int err;         /* first error */
};

/* Queue SQEs while there is work, room, and no error. */
static void
fill(struct io_uring *ring, struct exec *x)
{
  while (!x->err && x->queued < RING_ENTRIES && (x->nrequeue > 0 || x->next < x->n)) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    size_t i;

    if (!sqe)
      break;
    i = x->nrequeue > 0 ? x->requeue[--x->nrequeue] : x->next++;
    io_uring_prep_read(sqe, x->v[i].fd, x->v[i].buf, (unsigned)x->v[i].len, x->v[i].phys);
    io_uring_sqe_set_data64(sqe, i);
    x->queued++;
  }
}

/* Account for one completion. */
static void
complete(struct exec *x, size_t i, int res)
{
  struct cc_piece *pc = &x->v[i];

  x->queued--;
  if (res == -EINTR || res == -EAGAIN) {
    if (!x->err)
      x->requeue[x->nrequeue++] = i;
  } else if (res < 0) {
    if (!x->err)
      x->err = cc_error_set(-res, "pread: %s: offset %llu: %s", pc->path,
                            (unsigned long long)pc->phys, strerror(-res));
  } else if (res == 0) {
    if (!x->err)
      x->err = cc_error_set(EIO,
                            "pread: %s: end of file at offset %llu inside allocated data "
                            "(file truncated or corrupt)",
                            pc->path, (unsigned long long)pc->phys);
  } else {
    MARK_DEFINED(pc->buf, (size_t)res);
    if ((size_t)res < pc->len) { /* short: resubmit the rest */
      pc->phys += (unsigned)res;
      pc->buf += res;
      pc->len -= (size_t)res;
      if (pc->len <= pc->tail) /* only the optional tail is missing: end of file */
        pc->len = 0;
      else if (!x->err)
        x->requeue[x->nrequeue++] = i;
    } else {
      pc->len = 0;
    }
  }
}

/* Reap every completion already posted. */
static void
reap(struct io_uring *ring, struct exec *x)
{
  struct io_uring_cqe *cqe;

  while (x->queued > 0 && io_uring_peek_cqe(ring, &cqe) == 0) {
    size_t i = (size_t)io_uring_cqe_get_data64(cqe);
    int res = cqe->res;

    io_uring_cqe_seen(ring, cqe);
    complete(x, i, res);
  }
}

/* After io_uring_enter itself failed: wait for the SQEs the kernel consumed (they still write
 * into the buffer), then drop the ring and with it the SQEs it never consumed.  Returns 0 when
 * every consumed SQE was reaped: then each piece says exactly what is left to read. */
static int
drain_broken(struct cc_ring *r, struct exec *x)
{
  unsigned unconsumed = io_uring_sq_ready(&r->ring);

  while (x->queued > unconsumed) {
    struct io_uring_cqe *cqe;
    int ret = io_uring_wait_cqe(&r->ring, &cqe);

    if (ret == -EINTR || ret == -EAGAIN)
      continue;
    if (ret < 0) {
      /* Cannot happen with a valid ring; if it does, keeping the ring alive is safer than
       * destroying it under reads in flight. */
      cc_log("io_uring: cannot reap in-flight reads (%s): keeping the ring", strerror(-ret));
      return ret;
    }
    size_t i = (size_t)io_uring_cqe_get_data64(cqe);
    int res = cqe->res;

    io_uring_cqe_seen(&r->ring, cqe);
    complete(x, i, res);
  }
  ring_discard(r);
  return 0;
}

/* Read n pieces on this thread's ring.  Returns 0, -errno, or CC_URING_UNAVAILABLE. */
int
cc_uring_exec(struct cc_piece *v, size_t n)
{
  struct exec x = {.v = v, .n = n};
  struct cc_ring *r;

  if (atomic_load(&uring_off))
    return CC_URING_UNAVAILABLE;
  r = ring_get();
  if (!r)
    return CC_URING_UNAVAILABLE;

  for (;;) {
    int ret;

    fill(&r->ring, &x);
    if (x.queued == 0)
      break; /* all done, or error and everything reaped */
    ret = io_uring_submit_and_wait(&r->ring, 1);
    if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
      /* The ring as a whole failed (e.g. EEXIST: a single-issuer ring used from a forked
       * child).  Once what the kernel took is reaped, the pieces say what is left: the
       * caller finishes them with pread and this thread gets a new ring next time. */
      if (drain_broken(r, &x) < 0 && !x.err)
        x.err = cc_error_set(-ret, "pread: io_uring_enter: %s", strerror(-ret));
      if (x.err)
        return x.err;
      cc_log("io_uring_enter failed (%s): this read finishes with pread", strerror(-ret));
      return CC_URING_UNAVAILABLE;
    }
    reap(&r->ring, &x);
  }
  return x.err;
}
