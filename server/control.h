/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain plugin: the control channel (see control.c for the design notes). */
#ifndef COWCHAIN_SERVER_CONTROL_H
#define COWCHAIN_SERVER_CONTROL_H

#include "pool/pool.h"

/* control=on|off (default on); -1 after nbdkit_error. */
int control_config(const char *value);

/* In .get_ready: the pool's absolute directory and the open pool. */
void control_init(const char *pool_dir, struct cc_pool *pool);

/* In .after_fork: bind POOL/run/nbdkit-PID.ctl and start the control thread (nothing when
 * control=off).  -1 after nbdkit_error. */
int control_start(void);

/* In .cleanup and .unload: stop the thread, remove the socket.  Idempotent. */
void control_stop(void);

/* The bound socket's path, or NULL. */
const char *control_socket_path(void);

#endif
