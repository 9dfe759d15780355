/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain plugin: a per-export write gate.
 *
 * Design notes
 *
 * A live snapshot needs a moment in which no write, zero, trim or flush is in flight on an
 * export, on any of its connections, while reads go on: the gate gives it.  Every such request
 * enters the gate before calling chain/ and leaves after; reads never touch it.
 *
 * Fast path (gate open): one atomic increment of `inflight` and one load of `closed` to enter,
 * one atomic decrement and one load to leave; no lock.  The two sides form a Dekker pair, all
 * seq_cst:
 *
 *   gate_enter:  inflight++; if closed: inflight--, wake the closer, wait for reopen, retry
 *   gate_close:  closed = 1; wait (under lock) until inflight == 0
 *
 * Either the entering request sees `closed` and backs off, or the closer sees its increment and
 * waits for it to leave: a request is never let in after gate_close returned.  Lost wake-ups
 * are avoided by taking `lock` around every signal and every check-then-wait: the closer
 * checks `inflight` under `lock` before sleeping, and a leaver that brings `inflight` to 0
 * while `closed` is set signals under `lock`.  Waiting requests sleep on `reopened` and retry
 * from the top once the gate opens.
 *
 * gate_close is bounded: if the requests in flight do not leave within the timeout (a stuck
 * disk), the gate reopens, the waiters are released and -ETIMEDOUT is returned, so a snapshot
 * fails cleanly instead of stalling the guest indefinitely.
 *
 * Only one closer at a time per gate is supported (the control channel serializes commands);
 * a second gate_close on a closed gate is -EBUSY.
 */
#include "server/gate.h"

#include <errno.h>
#include <time.h>

void
gate_enter(struct gate *g)
{
  for (;;) {
    atomic_fetch_add(&g->inflight, 1);
    if (!atomic_load(&g->closed))
      return;
    /* Closed: step back out (perhaps the closer is waiting for us), wait for the reopen. */
    pthread_mutex_lock(&g->lock);
    if (atomic_fetch_sub(&g->inflight, 1) == 1)
      pthread_cond_broadcast(&g->drained);
    while (atomic_load(&g->closed))
      pthread_cond_wait(&g->reopened, &g->lock);
    pthread_mutex_unlock(&g->lock);
  }
}

void
gate_leave(struct gate *g)
{
  if (atomic_fetch_sub(&g->inflight, 1) == 1 && atomic_load(&g->closed)) {
    pthread_mutex_lock(&g->lock);
    pthread_cond_broadcast(&g->drained);
    pthread_mutex_unlock(&g->lock);
  }
}

int
gate_close(struct gate *g, unsigned timeout_ms)
{
  struct timespec deadline;
  int r = 0;

  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_sec += timeout_ms / 1000;
  deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&g->lock);
  if (atomic_exchange(&g->closed, 1)) {
    pthread_mutex_unlock(&g->lock);
    return -EBUSY;
  }
  while (atomic_load(&g->inflight) != 0) {
    if (pthread_cond_clockwait(&g->drained, &g->lock, CLOCK_MONOTONIC, &deadline) == ETIMEDOUT &&
        atomic_load(&g->inflight) != 0) {
      atomic_store(&g->closed, 0);
      pthread_cond_broadcast(&g->reopened);
      r = -ETIMEDOUT;
      break;
    }
  }
  pthread_mutex_unlock(&g->lock);
  return r;
}

void
gate_open(struct gate *g)
{
  pthread_mutex_lock(&g->lock);
  atomic_store(&g->closed, 0);
  pthread_cond_broadcast(&g->reopened);
  pthread_mutex_unlock(&g->lock);
}

unsigned long
gate_inflight(struct gate *g)
{
  return atomic_load(&g->inflight);
}
