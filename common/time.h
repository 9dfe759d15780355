/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain: the one formatter (and parser) of times, for pool/ records and cli/ output, and the
 * one reader of the monotonic clock.
 *
 * Every time cowchain stores or prints is seconds since the epoch shown in UTC, in one of two
 * spellings: ISO 8601 in records and --json ("2026-01-31T12:00:00Z", the form records are
 * parsed back from, docs/POOL.md section 3) and a table form for people
 * ("2026-01-31 12:00:00 +0000").
 */
#ifndef COWCHAIN_COMMON_TIME_H
#define COWCHAIN_COMMON_TIME_H

#include <stddef.h>
#include <stdint.h>

enum cc_time_style {
  CC_TIME_ISO,   /* 2026-01-31T12:00:00Z: records, JSON, export descriptions */
  CC_TIME_TABLE, /* 2026-01-31 12:00:00 +0000: CLI tables */
};

/* Format t (seconds since the epoch) into buf; 32 bytes is always enough. */
void cc_time_format(int64_t t, enum cc_time_style style, char *buf, size_t len);
/* Parse the ISO form back; -EINVAL if s is anything else. */
int cc_time_parse(const char *s, int64_t *out);

/* The monotonic clock (CLOCK_MONOTONIC) in milliseconds and microseconds: every deadline and
 * every measured interval (control protocol waits, guest agent waits, write stalls). */
int64_t cc_mono_ms(void);
int64_t cc_mono_us(void);

#endif
