/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain plugin: a per-export write gate (see gate.c for the design notes). */
#ifndef COWCHAIN_SERVER_GATE_H
#define COWCHAIN_SERVER_GATE_H

#include <pthread.h>
#include <stdatomic.h>

/* An all-zero struct gate is an open gate with nothing in flight (glibc's zeroed mutex and
 * condition variable equal their static initializers), so a calloc'ed export has one. */
struct gate {
  _Atomic unsigned long inflight; /* requests between gate_enter and gate_leave */
  _Atomic int closed;             /* set by gate_close: new entries wait */
  pthread_mutex_t lock;           /* guards the two condition variables' waits */
  pthread_cond_t drained;         /* inflight reached 0 while closed */
  pthread_cond_t reopened;        /* closed went back to 0 */
};

/* A write, zero, trim or flush enters before touching the chain and leaves after.  While the
 * gate is closed, entering waits (it never fails). */
void gate_enter(struct gate *g);
void gate_leave(struct gate *g);

/* Stop new entries and wait up to timeout_ms for the requests in flight to leave.  0 when the
 * gate is closed and empty; -ETIMEDOUT (the gate is open again, nothing changed) if they did
 * not drain in time; -EBUSY if it is already closed. */
int gate_close(struct gate *g, unsigned timeout_ms);

/* Reopen a closed gate and release the waiters. */
void gate_open(struct gate *g);

/* Requests in flight (for the control channel's reports and tests). */
unsigned long gate_inflight(struct gate *g);

#endif
