/* SPDX-License-Identifier: BSD-3-Clause */
/* Thread-local last-error message; see error.h for the convention. */
#include "common/error.h"

#include <stdarg.h>
#include <stdio.h>

static __thread char last_error[CC_ERROR_MAX];

int
cc_error_set(int err, const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return -err;
}

const char *
cc_error_get(void)
{
  return last_error;
}

void
cc_error_clear(void)
{
  last_error[0] = '\0';
}
