/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain: the control protocol's framing, shared by the plugin's control channel
 * (server/control.c) and its clients (the pool layer, tests).  docs/nbdkit-cowchain-plugin.pod,
 * section CONTROL SOCKET, is the specification; in short:
 *
 *   - a stream (AF_UNIX) of '\n'-terminated lines, at most CCP_LINE_MAX bytes each;
 *   - the server greets with "cowchain-control 1";
 *   - a request is one line of words separated by one space, each word percent-encoded: every
 *     byte outside '!'..'~', and '%' itself, is written %XX (uppercase hex), so a word may hold
 *     any bytes (paths with spaces, empty words as "%");
 *   - the server answers each request with zero or more "data WORDS..." lines and one final
 *     "ok WORDS..." or "err ERRNO MESSAGE" line (ERRNO a positive decimal errno, MESSAGE the
 *     rest of the line, not encoded).
 *
 * Functions return 0 (or a count) or a negative errno, like chain/.
 */
#ifndef COWCHAIN_COMMON_CONTROL_PROTO_H
#define COWCHAIN_COMMON_CONTROL_PROTO_H

#include <stddef.h>

#define CCP_VERSION 1
#define CCP_GREETING "cowchain-control 1"
#define CCP_LINE_MAX 65536
#define CCP_MAX_WORDS 256

/* A line reader on a file descriptor, with a buffer for what arrived beyond the line. */
struct ccp_conn {
  int fd;
  size_t len; /* bytes buffered in buf */
  char buf[CCP_LINE_MAX + 1];
};

void ccp_init(struct ccp_conn *c, int fd);

/* Read one line (without its '\n') into line (CCP_LINE_MAX + 1 bytes), waiting at most
 * timeout_ms (-1: forever).  Returns its length, -ETIMEDOUT, -EPIPE at end of file, -EMSGSIZE
 * for a line that is too long, or another -errno. */
int ccp_read_line(struct ccp_conn *c, char *line, int timeout_ms);

/* Write the whole string s and a '\n'. */
int ccp_write_line(int fd, const char *s);

/* Percent-encode `in` into out (size outlen); -ENAMETOOLONG if it does not fit. */
int ccp_encode(const char *in, char *out, size_t outlen);

/* Split `line` in place into at most max words (decoded in place); returns the count, or
 * -EINVAL for a malformed %XX or a NUL byte it would produce. */
int ccp_split(char *line, char **words, int max);

/* Append encoded `word` to the line buf (size len, NUL-terminated), with a space if the line
 * is not empty. */
int ccp_append(char *buf, size_t len, const char *word);

/* Connect a stream socket to the AF_UNIX path: the descriptor (close-on-exec), or -errno
 * (-ENAMETOOLONG for a path sun_path cannot hold).  Also used for the guest agent (pool/qga.c),
 * whose socket speaks JSON lines. */
int ccp_dial(const char *path);

/* Client side: connect to the control socket at path and read the greeting.  Returns the
 * descriptor, or -errno: -ECONNREFUSED for a socket nobody listens on (a dead server's:
 * the caller may unlink it), -EPERM (or another -errno) when the server refuses us with an
 * "err" line instead of the greeting (EPERM: its peer check), -EPROTO for anything else. */
int ccp_connect(const char *path, struct ccp_conn *c, int timeout_ms);

#endif
