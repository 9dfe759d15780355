/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain: the last error message of the calling thread.
 *
 * Convention for overlay/ and chain/: a function that fails returns a negative errno (or NULL
 * with errno set, where it returns a pointer) and, before returning, records one message in the
 * "call: object: reason" form with cc_error_set().  The caller (server/, cli/, tests) prints
 * cc_error_get() once.  The message is thread-local, so concurrent nbdkit workers don't clobber
 * each other, and stays valid until the thread's next cc_error_set().
 *
 * Messages quote names, paths and descriptions verbatim, whatever bytes they hold: they are
 * escaped where they are printed (cc_escape(), common/escape.h), not where they are built.
 * One place at the edge covers every message, including those of code not yet written, and
 * keeps the message usable by callers that do not print it (tests match on its text).
 */
#ifndef COWCHAIN_COMMON_ERROR_H
#define COWCHAIN_COMMON_ERROR_H

#include <errno.h>

/* The longest message, NUL included; longer ones are cut. */
#define CC_ERROR_MAX 1024

/* Record a message for the calling thread; returns -err so callers can write
 * "return cc_error_set(EIO, "read: %s: short read", path);".  err is a positive errno. */
int cc_error_set(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The calling thread's last message, or "" if none. */
const char *cc_error_get(void);

/* Forget the calling thread's message. */
void cc_error_clear(void);

#endif
