/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain: control protocol framing (see control-proto.h). */
#include "common/time.h"
#include "common/control-proto.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

void
ccp_init(struct ccp_conn *c, int fd)
{
  c->fd = fd;
  c->len = 0;
}

int
ccp_read_line(struct ccp_conn *c, char *line, int timeout_ms)
{
  long long deadline = timeout_ms < 0 ? 0 : cc_mono_ms() + timeout_ms;

  for (;;) {
    char *nl = memchr(c->buf, '\n', c->len);
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    ssize_t n;
    int wait, r;

    if (nl) {
      size_t l = (size_t)(nl - c->buf);

      memcpy(line, c->buf, l);
      line[l] = '\0';
      memmove(c->buf, nl + 1, c->len - l - 1);
      c->len -= l + 1;
      return (int)l;
    }
    if (c->len >= CCP_LINE_MAX)
      return -EMSGSIZE;
    wait = -1;
    if (timeout_ms >= 0) {
      long long left = deadline - cc_mono_ms();

      if (left <= 0)
        return -ETIMEDOUT;
      wait = (int)left;
    }
    r = poll(&pfd, 1, wait);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return -errno;
    if (r == 0)
      return -ETIMEDOUT;
    n = read(c->fd, c->buf + c->len, CCP_LINE_MAX - c->len);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      return -EPIPE;
    c->len += (size_t)n;
  }
}

int
ccp_write_line(int fd, const char *s)
{
  size_t len = strlen(s);
  char nl = '\n';

  while (len > 0) {
    ssize_t n = send(fd, s, len, MSG_NOSIGNAL);

    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    s += n;
    len -= (size_t)n;
  }
  for (;;) {
    ssize_t n = send(fd, &nl, 1, MSG_NOSIGNAL);

    if (n < 0 && errno == EINTR)
      continue;
    return n < 0 ? -errno : 0;
  }
}

int
ccp_encode(const char *in, char *out, size_t outlen)
{
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;

  if (*in == '\0') { /* an empty word is a lone "%" */
    if (outlen < 2)
      return -ENAMETOOLONG;
    strcpy(out, "%");
    return 0;
  }
  for (; *in; in++) {
    unsigned char b = (unsigned char)*in;

    if (b >= '!' && b <= '~' && b != '%') {
      if (o + 1 >= outlen)
        return -ENAMETOOLONG;
      out[o++] = (char)b;
    } else {
      if (o + 3 >= outlen)
        return -ENAMETOOLONG;
      out[o++] = '%';
      out[o++] = hex[b >> 4];
      out[o++] = hex[b & 15];
    }
  }
  out[o] = '\0';
  return 0;
}

static int
hexval(char ch)
{
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  return -1;
}

/* Decode word w in place. */
static int
decode(char *w)
{
  char *o = w;

  if (strcmp(w, "%") == 0) {
    *w = '\0';
    return 0;
  }
  for (char *p = w; *p; p++) {
    if (*p == '%') {
      int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);

      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
        return -EINVAL;
      *o++ = (char)(hi << 4 | lo);
      p += 2;
    } else {
      *o++ = *p;
    }
  }
  *o = '\0';
  return 0;
}

int
ccp_split(char *line, char **words, int max)
{
  int n = 0;
  char *save = NULL;

  for (char *w = strtok_r(line, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
    if (n == max)
      return -E2BIG;
    if (decode(w) < 0)
      return -EINVAL;
    words[n++] = w;
  }
  return n;
}

int
ccp_append(char *buf, size_t len, const char *word)
{
  size_t used = strlen(buf);
  int r;

  if (used > 0) {
    if (used + 2 > len)
      return -ENAMETOOLONG;
    buf[used++] = ' ';
    buf[used] = '\0';
  }
  r = ccp_encode(word, buf + used, len - used);
  if (r < 0)
    buf[used ? used - 1 : 0] = '\0';
  return r;
}

int
ccp_dial(const char *path)
{
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  int fd, r;

  if (strlen(path) >= sizeof addr.sun_path)
    return -ENAMETOOLONG;
  strcpy(addr.sun_path, path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    r = -errno;
    close(fd);
    return r;
  }
  return fd;
}

int
ccp_connect(const char *path, struct ccp_conn *c, int timeout_ms)
{
  char *line;
  int fd, r;

  if ((fd = ccp_dial(path)) < 0)
    return fd;
  ccp_init(c, fd);
  if (!(line = malloc(CCP_LINE_MAX + 1))) {
    close(fd);
    return -ENOMEM;
  }
  r = ccp_read_line(c, line, timeout_ms);
  if (r >= 0 && strncmp(line, "err ", 4) == 0 && atoi(line + 4) > 0)
    r = -atoi(line + 4); /* refused before the greeting, e.g. EACCES for another uid */
  else if (r >= 0 && strcmp(line, CCP_GREETING) != 0)
    r = -EPROTO;
  free(line);
  if (r < 0) {
    close(fd);
    return r;
  }
  return fd;
}
