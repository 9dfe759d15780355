/* SPDX-License-Identifier: BSD-3-Clause */
/* common/escape.c: cc_escape turns any bytes into one line of printable ASCII that says what
 * they were, and cuts long input at a whole escape with "...". */
#include <criterion/criterion.h>

#include <string.h>

#include "common/escape.h"

TestSuite(common_escape, .timeout = 10);

Test(common_escape, printable_ascii_passes)
{
  char buf[64];

  cr_assert_str_eq(cc_escape("vm1@s-1_x.y 'q'", buf, sizeof buf), "vm1@s-1_x.y 'q'");
  cr_assert_str_eq(cc_escape("", buf, sizeof buf), "");
}

Test(common_escape, control_del_non_ascii_and_backslash)
{
  char buf[128];

  cr_assert_str_eq(cc_escape("a\nb\rc\td\x1b[31me\x7f", buf, sizeof buf),
                   "a\\x0ab\\x0dc\\x09d\\x1b[31me\\x7f");
  /* invalid UTF-8 and valid UTF-8 alike: bytes >= 0x80 */
  cr_assert_str_eq(cc_escape("\xff\xfe n\xc3\xa4me", buf, sizeof buf), "\\xff\\xfe n\\xc3\\xa4me");
  /* a literal backslash cannot be mistaken for an escape */
  cr_assert_str_eq(cc_escape("\\x1b", buf, sizeof buf), "\\\\x1b");
}

Test(common_escape, every_byte_fits_the_documented_size)
{
  char in[256], buf[CC_ESCAPED_SIZE(255)];

  for (int i = 0; i < 255; i++)
    in[i] = (char)(i + 1);
  in[255] = '\0';
  cc_escape(in, buf, sizeof buf);
  cr_assert(strstr(buf, "...") == NULL, "cut although the buffer is big enough: %s", buf);
  for (const char *p = buf; *p; p++)
    cr_assert(*p >= 0x20 && *p < 0x7f, "byte 0x%02x in the output", (unsigned char)*p);
}

Test(common_escape, cut_at_a_whole_escape)
{
  char buf[10];

  /* "abc\x0a" is 7 bytes; "..." must not split the escape */
  cr_assert_str_eq(cc_escape("abc\ndefgh", buf, sizeof buf), "abc...");
  cr_assert_str_eq(cc_escape("abcdefghi", buf, sizeof buf), "abcdefghi");
  cr_assert_str_eq(cc_escape("abcdefghij", buf, sizeof buf), "abcdef...");
  cr_assert_str_eq(cc_escape("\n\n\n", buf, 4), "...");
  cr_assert_str_eq(cc_escape("ab", buf, 4), "ab");
}

Test(common_escape, utf8_sequences)
{
  cr_assert_eq(cc_utf8_seq("\xc3\xa4"), 2);
  cr_assert_eq(cc_utf8_seq("\xe2\x82\xac"), 3);
  cr_assert_eq(cc_utf8_seq("\xf0\x9f\x98\x80"), 4);
  cr_assert_eq(cc_utf8_seq("\xf4\x8f\xbf\xbf"), 4); /* U+10FFFF */
  cr_assert_eq(cc_utf8_seq("\xc0\xaf"), 0);         /* overlong '/' */
  cr_assert_eq(cc_utf8_seq("\xe0\x80\xaf"), 0);     /* overlong */
  cr_assert_eq(cc_utf8_seq("\xed\xa0\x80"), 0);     /* a surrogate */
  cr_assert_eq(cc_utf8_seq("\xf4\x90\x80\x80"), 0); /* above U+10FFFF */
  cr_assert_eq(cc_utf8_seq("\xe2\x82"), 0);         /* cut short by the end */
  cr_assert_eq(cc_utf8_seq("\xe2\x82x"), 0);        /* cut short */
  cr_assert_eq(cc_utf8_seq("\x80"), 0);             /* a lone continuation byte */
  cr_assert_eq(cc_utf8_seq("a"), 0);                /* ASCII is not a multi-byte sequence */
}
