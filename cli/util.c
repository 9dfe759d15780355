/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain command line: argument parsing, error lines, sizes, times, JSON and progress.
 *
 * Design notes
 * ------------
 * Every failure is one line on stderr starting with "cowchain: ": the pool's own message
 * (already "op: object: reason") or a usage error naming the command and what to type.
 * error_line() prints every one of them and escapes the whole line (common/escape.h): it quotes
 * what the user typed and what chain/ put in its message (names, paths, descriptions, parent
 * links read from layer headers), any of which may hold a newline, an ESC sequence or invalid
 * UTF-8.  Escaping here, where the CLI prints, rather than where pool/ builds its
 * messages, is what guarantees nothing raw gets out: it covers every message, including those
 * of code written later, while chain/ keeps one convention for all its callers (error.h).
 * Text output that shows such strings on stdout (check findings, descriptions, backing files)
 * is escaped the same way; --json output goes through json_string.
 * Progress is drawn on stderr only when stderr is a terminal, so scripts and logs never see
 * carriage returns.  JSON is written by hand with fixed key order, so output stays stable.
 */
#include "cli/cli.h"

#include "common/escape.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The one error line: "cowchain: [CMD: ]MESSAGE", escaped as a whole. */
static int
error_line(int status, const char *cmd, const char *fmt, va_list ap)
{
  char line[CC_ERROR_MAX + 256], out[CC_ESCAPED_SIZE(CC_ERROR_MAX + 256)];
  int n = 0;

  cli_progress_done();
  if (cmd)
    n = snprintf(line, sizeof line, "%s: ", cmd);
  vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  fprintf(stderr, "cowchain: %s\n", cc_escape(line, out, sizeof out));
  return status;
}

int
cli_error(int status, const char *fmt, ...)
{
  va_list ap;
  int r;

  va_start(ap, fmt);
  r = error_line(status, NULL, fmt, ap);
  va_end(ap);
  return r;
}

int
usage_error(const char *cmd, const char *fmt, ...)
{
  va_list ap;
  int r;

  va_start(ap, fmt);
  r = error_line(EXIT_USAGE, cmd, fmt, ap);
  va_end(ap);
  return r;
}

int
die_pool(void)
{
  const char *msg = cc_error_get();

  return cli_error(1, "%s", msg[0] ? msg : "unknown error");
}

struct cc_pool *
cli_pool(void)
{
  struct cc_pool *p;

  if (cli_pool_dir == NULL) {
    cli_error(1, "no pool: pass --pool DIR or set COWCHAIN_POOL");
    return NULL;
  }
  if (cc_pool_open(cli_pool_dir, &p) < 0) {
    die_pool();
    return NULL;
  }
  return p;
}

static void
print_help(const struct cli_cmd *cmd)
{
  printf("usage: cowchain %s%s%s\n\n%s\n", cmd->name, cmd->usage[0] ? " " : "", cmd->usage,
         cmd->help);
}

int
cli_parse(const struct cli_cmd *cmd, int argc, char **argv, const char **pos, int *npos)
{
  int i, n = 0, opts_done = 0;

  for (i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (!opts_done && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
      print_help(cmd);
      return -1;
    }
    if (!opts_done && strcmp(a, "--") == 0) {
      opts_done = 1;
      continue;
    }
    if (!opts_done && a[0] == '-' && a[1] != '\0') {
      const struct cli_opt *o = cmd->opts;
      const char *eq = strchr(a, '=');
      size_t len = eq ? (size_t)(eq - a) : strlen(a);
      for (; o && o->name; o++)
        if (strlen(o->name) == len && strncmp(o->name, a, len) == 0)
          break;
      if (o == NULL || o->name == NULL)
        return usage_error(cmd->name, "unknown option '%s' (usage: cowchain %s %s)", a, cmd->name,
                           cmd->usage);
      if (o->has_arg) {
        if (eq)
          *o->value = eq + 1;
        else if (i + 1 < argc)
          *o->value = argv[++i];
        else
          return usage_error(cmd->name, "option '%s' needs a value", o->name);
      } else {
        if (eq)
          return usage_error(cmd->name, "option '%s' takes no value", o->name);
        *o->flag = 1;
      }
      continue;
    }
    if (n >= cmd->max_pos)
      return usage_error(cmd->name, "unexpected argument '%s' (usage: cowchain %s %s)", a,
                         cmd->name, cmd->usage);
    pos[n++] = a;
  }
  if (n < cmd->min_pos)
    return usage_error(cmd->name, "missing arguments (usage: cowchain %s %s)", cmd->name,
                       cmd->usage);
  *npos = n;
  return 0;
}

int
parse_size(const char *s, uint64_t *out)
{
  char *end;
  unsigned long long v;
  int shift = 0;

  if (s[0] < '0' || s[0] > '9')
    return -EINVAL;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno)
    return -EINVAL;
  if (*end != '\0') {
    static const char units[] = "KMGT";
    const char *u = strchr(units, toupper((unsigned char)*end));
    if (u == NULL)
      return -EINVAL;
    shift = 10 * (int)(u - units + 1);
    end++;
  }
  /* Accept "1G", "1GB", "1GiB" as the same thing: sizes here are always binary. */
  if (shift && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0))
    end += strlen(end);
  if (*end != '\0')
    return -EINVAL;
  if (shift && v > (UINT64_MAX >> shift))
    return -ERANGE;
  *out = (uint64_t)v << shift;
  return 0;
}

void
human_size(uint64_t n, char *buf, size_t len)
{
  static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = (double)n;
  int u = 0;

  while (v >= 1024 && u < 6) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(buf, len, "%" PRIu64 " B", n);
  else
    snprintf(buf, len, "%.1f %s", v, unit[u]);
}

void
json_string(FILE *f, const char *s)
{
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch == '\n')
      fputs("\\n", f);
    else if (ch == '\t')
      fputs("\\t", f);
    else if (ch < 0x20 || ch == 0x7f)
      fprintf(f, "\\u%04x", ch);
    else if (ch < 0x80)
      fputc(ch, f);
    else {
      /* valid UTF-8 passes through; any other byte would make the output invalid JSON, so it
       * becomes U+FFFD (the text output shows the bytes themselves, escaped) */
      size_t n = cc_utf8_seq(s);
      if (n == 0) {
        fputs("\\ufffd", f);
      } else {
        fwrite(s, 1, n, f);
        s += n - 1;
      }
    }
  }
  fputc('"', f);
}

static int progress_shown;

void
cli_progress(void *opaque, uint64_t done, uint64_t total)
{
  const char *what = opaque;

  if (total == 0)
    return;
  fprintf(stderr, "\r%s: %5.1f%%", what ? what : "progress", 100.0 * (double)done / (double)total);
  fflush(stderr);
  progress_shown = 1;
}

cc_progress_fn
cli_progress_fn(void)
{
  return isatty(2) ? cli_progress : NULL;
}

void
cli_progress_done(void)
{
  if (progress_shown) {
    fputc('\n', stderr);
    progress_shown = 0;
  }
}

int
cli_dispatch(const char *group, const struct cli_sub *subs, int argc, char **argv)
{
  const char *sub = argc ? argv[0] : "";
  char choices[256] = "";
  size_t len = 0;

  for (const struct cli_sub *c = subs; c->name; c++) {
    if (strcmp(sub, c->name) == 0)
      return c->run(argc - 1, argv + 1);
    len += (size_t)snprintf(choices + len, sizeof choices - len, "%s%s", c == subs ? "" : " | ",
                            c->name);
    if (len >= sizeof choices)
      len = sizeof choices - 1;
  }
  if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
    printf("usage: cowchain %s %s ...\n", group, choices);
    return 0;
  }
  if (argc == 0)
    return usage_error(group, "missing subcommand (%s)", choices);
  return usage_error(group, "unknown subcommand '%s' (%s)", sub, choices);
}

int
cli_on_pool(cli_pool_fn fn, const char *const *pos, void *arg)
{
  struct cc_pool *p;
  int r;

  if ((p = cli_pool()) == NULL)
    return 1;
  r = fn(p, pos, arg);
  cli_progress_done();
  cc_pool_close(p);
  return r < 0 ? die_pool() : r;
}

int
cli_run_simple(const struct cli_cmd *cmd, int argc, char **argv, cli_pool_fn fn, void *arg)
{
  const char *pos[4] = {NULL};
  int npos;

  PARSE_OR_RETURN(cmd, argc, argv, pos, npos);
  return cli_on_pool(fn, pos, arg);
}
