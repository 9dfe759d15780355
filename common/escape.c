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
