/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain: printing untrusted strings on one line.
 *
 * Names, paths, snapshot descriptions and parent links come from users, NBD clients and files,
 * and any of them may hold a newline, an ESC sequence or invalid UTF-8.  Messages quote them
 * verbatim (cc_error_set does not escape: see error.h); whoever prints a message or such a
 * string to a terminal or a log passes it through cc_escape() first, so one message stays one
 * line and no control byte reaches the terminal.  The plugin (server/) and the CLI (cli/) both
 * use this one helper.
 */
#ifndef COWCHAIN_COMMON_ESCAPE_H
#define COWCHAIN_COMMON_ESCAPE_H

#include <stddef.h>

/* Room for the escaped form of n bytes: each becomes at most 4 ("\xNN"), plus the NUL. */
#define CC_ESCAPED_SIZE(n) (4 * (size_t)(n) + 1)

/* Copy `s` into buf (len >= 4) with every byte outside printable ASCII (0x20-0x7e: control
 * bytes, DEL and every byte >= 0x80, so also invalid UTF-8) written as \xNN and the backslash as
 * \\, so the output is one line of printable ASCII that says unambiguously what the bytes were.
 * If it does not fit, it is cut at a whole escape and ends with "...".  Returns buf. */
const char *cc_escape(const char *s, char *buf, size_t len);

/* Length (2-4) of the well-formed multi-byte UTF-8 sequence at `s` (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0 if the bytes there are not one.  JSON
 * output uses it to pass valid UTF-8 through and replace anything else. */
size_t cc_utf8_seq(const char *s);

#endif
