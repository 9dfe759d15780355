/* SPDX-License-Identifier: BSD-3-Clause */
/* Formatting and parsing times; see time.h. */
#include "common/time.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#define ISO_FORMAT "%Y-%m-%dT%H:%M:%SZ"

void
cc_time_format(int64_t t, enum cc_time_style style, char *buf, size_t len)
{
  time_t tt = (time_t)t;
  struct tm tm;

  gmtime_r(&tt, &tm);
  strftime(buf, len, style == CC_TIME_TABLE ? "%Y-%m-%d %H:%M:%S +0000" : ISO_FORMAT, &tm);
}

int
cc_time_parse(const char *s, int64_t *out)
{
  struct tm tm;
  const char *end;

  memset(&tm, 0, sizeof tm);
  end = strptime(s, ISO_FORMAT, &tm);
  if (end == NULL || *end != '\0')
    return -EINVAL;
  *out = (int64_t)timegm(&tm);
  return 0;
}

int64_t
cc_mono_us(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
cc_mono_ms(void)
{
  return cc_mono_us() / 1000;
}
