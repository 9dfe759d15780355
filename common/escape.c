/* SPDX-License-Identifier: BSD-3-Clause */
/* Escaping untrusted strings for one-line messages; see escape.h. */
#include "common/escape.h"

#include <stdio.h>
#include <string.h>

/* The escaped form of byte c into one[5]; returns its length. */
static size_t
escape_byte(unsigned char c, char one[5])
{
  if (c < 0x20 || c >= 0x7f)
    return (size_t)snprintf(one, 5, "\\x%02x", c);
  if (c == '\\')
    return (size_t)snprintf(one, 5, "\\\\");
  one[0] = (char)c;
  one[1] = '\0';
  return 1;
}

const char *
cc_escape(const char *s, char *buf, size_t len)
{
  size_t i = 0, need = 1, room;
  const char *p;
  char one[5];

  for (p = s; *p; p++)
    need += escape_byte((unsigned char)*p, one);
  /* Too long: keep room for "..." and stop before the first escape that does not fit. */
  room = need <= len ? len - 1 : len - 4;
  for (p = s; *p; p++) {
    size_t n = escape_byte((unsigned char)*p, one);
    if (i + n > room)
      break;
    memcpy(buf + i, one, n);
    i += n;
  }
  if (need > len) {
    memcpy(buf + i, "...", 3);
    i += 3;
  }
  buf[i] = '\0';
  return buf;
}

size_t
cc_utf8_seq(const char *s)
{
  const unsigned char *p = (const unsigned char *)s;
  size_t n;
  unsigned lo = 0x80, hi = 0xbf;

  if (p[0] >= 0xc2 && p[0] <= 0xdf)
    n = 2;
  else if (p[0] >= 0xe0 && p[0] <= 0xef) {
    n = 3;
    if (p[0] == 0xe0)
      lo = 0xa0; /* overlong */
    else if (p[0] == 0xed)
      hi = 0x9f; /* surrogates */
  } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
    n = 4;
    if (p[0] == 0xf0)
      lo = 0x90; /* overlong */
    else if (p[0] == 0xf4)
      hi = 0x8f; /* above U+10FFFF */
  } else
    return 0;
  if (p[1] < lo || p[1] > hi)
    return 0;
  for (size_t i = 2; i < n; i++)
    if (p[i] < 0x80 || p[i] > 0xbf)
      return 0;
  return n;
}
