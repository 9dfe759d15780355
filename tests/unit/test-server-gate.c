/* SPDX-License-Identifier: BSD-3-Clause */
/* server/gate.c: the per-export write gate.
 *
 * - Open: enter/leave do not block; a zeroed gate is open.
 * - gate_close waits for the requests in flight, and no request is inside while it is closed,
 *   however many threads hammer it (100 close/open rounds under 4 threads).
 * - Entries while closed wait (they do not fail) and proceed after gate_open.
 * - A request that never leaves: gate_close times out with -ETIMEDOUT and the gate is open.
 * - A second gate_close is -EBUSY.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "server/gate.h"

TestSuite(server_gate, .timeout = 60);

struct ctx {
  struct gate g;
  atomic_int inside, stop, entered;
  atomic_long rounds;
};

static void *
hammer(void *opaque)
{
  struct ctx *c = opaque;

  while (!atomic_load(&c->stop)) {
    gate_enter(&c->g);
    atomic_fetch_add(&c->inside, 1);
    atomic_fetch_add(&c->rounds, 1);
    if ((atomic_load(&c->rounds) & 7) == 0)
      usleep(50); /* a slow request now and then */
    atomic_fetch_sub(&c->inside, 1);
    gate_leave(&c->g);
  }
  return NULL;
}

Test(server_gate, closed_means_nobody_inside)
{
  static struct ctx c; /* zeroed: an open gate */
  pthread_t t[4];

  for (int i = 0; i < 4; i++)
    cr_assert_eq(pthread_create(&t[i], NULL, hammer, &c), 0);
  for (int round = 0; round < 100; round++) {
    long before;

    usleep(500);
    cr_assert_eq(gate_close(&c.g, 5000), 0);
    cr_assert_eq(atomic_load(&c.inside), 0, "a request is inside a closed gate");
    before = atomic_load(&c.rounds);
    usleep(2000);
    cr_assert_eq(atomic_load(&c.inside), 0, "a request entered a closed gate");
    cr_assert_eq(atomic_load(&c.rounds), before, "a request completed while closed");
    cr_assert_eq(gate_close(&c.g, 10), -EBUSY);
    gate_open(&c.g);
  }
  atomic_store(&c.stop, 1);
  for (int i = 0; i < 4; i++)
    pthread_join(t[i], NULL);
  cr_assert_gt(atomic_load(&c.rounds), 100);
  cr_assert_eq(gate_inflight(&c.g), 0);
}

static void *
one_write(void *opaque)
{
  struct ctx *c = opaque;

  gate_enter(&c->g);
  atomic_store(&c->entered, 1);
  gate_leave(&c->g);
  return NULL;
}

Test(server_gate, entries_wait_then_proceed)
{
  static struct ctx c;
  pthread_t t;

  cr_assert_eq(gate_close(&c.g, 1000), 0);
  cr_assert_eq(pthread_create(&t, NULL, one_write, &c), 0);
  usleep(100000);
  cr_assert_eq(atomic_load(&c.entered), 0, "entered a closed gate");
  gate_open(&c.g);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&c.entered), 1, "the waiting request did not proceed");
}

Test(server_gate, stuck_request_times_out_and_reopens)
{
  static struct ctx c;
  struct timespec a, b;
  pthread_t t;

  gate_enter(&c.g); /* never leaves during the close */
  clock_gettime(CLOCK_MONOTONIC, &a);
  cr_assert_eq(gate_close(&c.g, 200), -ETIMEDOUT);
  clock_gettime(CLOCK_MONOTONIC, &b);
  cr_assert_geq((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000, 190);
  /* Open again: another request gets in at once. */
  cr_assert_eq(pthread_create(&t, NULL, one_write, &c), 0);
  pthread_join(t, NULL);
  cr_assert_eq(atomic_load(&c.entered), 1);
  gate_leave(&c.g);
  cr_assert_eq(gate_close(&c.g, 200), 0);
  gate_open(&c.g);
}
