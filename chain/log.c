/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: where the library's rare operational messages go.
 *
 * chain/ knows nothing of nbdkit, yet a few events deserve a line in the server's log (the
 * io_uring fallback, a file limit that could not be raised).  They go through one function
 * pointer, stderr by default; the plugin points it at nbdkit_debug.  Errors are not logged:
 * they are returned with cc_error_set() and reported once by the caller.
 */
#include "chain/internal.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#include "common/escape.h"

/* Escaped like every message that is printed (common/error.h): it may quote a path. */
static void
log_stderr(const char *msg)
{
  char buf[CC_ESCAPED_SIZE(512)];

  fprintf(stderr, "cowchain: %s\n", cc_escape(msg, buf, sizeof buf));
}

static _Atomic(void (*)(const char *)) log_fn = log_stderr;

void
cc_set_log(void (*fn)(const char *msg))
{
  atomic_store(&log_fn, fn ? fn : log_stderr);
}

void
cc_log(const char *fmt, ...)
{
  char msg[512];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  atomic_load (&log_fn)(msg);
}
