/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain command line: what the files of cli/ share.
 *
 * Conventions: a command function gets argv starting at its first argument and returns the
 * process exit status (0 success, 1 failure, 2 bad usage).  Failures print exactly one line,
 * "cowchain: ...", on stderr, through die_pool() (the pool's message), usage_error() or
 * cli_error(), which escape it (util.c): never print an error line with fprintf.
 */
#ifndef COWCHAIN_CLI_H
#define COWCHAIN_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "pool/pool.h"
#include "common/error.h"
#include "common/time.h"

#define EXIT_USAGE 2

/* One option of a command.  has_arg: the option takes a value (stored in *value); otherwise
 * *flag is set to 1. */
struct cli_opt {
  const char *name; /* "--from" */
  int has_arg;
  const char **value;
  int *flag;
};

struct cli_cmd {
  const char *name;  /* "clone create" */
  const char *usage; /* "NAME --from SOURCE [--full]" */
  const char *help;  /* one paragraph */
  int min_pos, max_pos;
  const struct cli_opt *opts; /* NULL-name terminated, may be NULL */
};

/* Parse argv against cmd: fills options and up to max_pos positionals (pos[]).  Returns -1 if
 * the command should exit 0 (--help printed), 0 on success, EXIT_USAGE after one error line. */
int cli_parse(const struct cli_cmd *cmd, int argc, char **argv, const char **pos, int *npos);

/* Parse or leave the command: --help (exit 0) or a usage error (its exit code). */
#define PARSE_OR_RETURN(cmd, argc, argv, pos, npos)                                                \
  do {                                                                                             \
    int r_ = cli_parse(cmd, argc, argv, pos, &(npos));                                             \
    if (r_ != 0)                                                                                   \
      return r_ < 0 ? 0 : r_;                                                                      \
  } while (0)

int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Print "cowchain: MESSAGE" as the one error line, escaped; returns status. */
int cli_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A command group's subcommands ("clone create", "clone list", ...). */
struct cli_sub {
  const char *name;
  int (*run)(int argc, char **argv); /* argv[0] is the first word after the subcommand */
};

/* Run the subcommand argv[0] of `group` from `subs` (NULL-name terminated); --help lists them,
 * anything else is one usage error naming the choices. */
int cli_dispatch(const char *group, const struct cli_sub *subs, int argc, char **argv);
/* What a command does on the open pool, given its positionals and its own argument (its parsed
 * options): 0, a negative errno after cc_error_set() (the one error line, exit 1), or a
 * positive exit status after printing its own line. */
struct cc_pool;
typedef int (*cli_pool_fn)(struct cc_pool *p, const char *const *pos, void *arg);
/* The tail of every pool command: open the pool (--pool, $COWCHAIN_POOL), run fn, end any
 * progress line, close, and report fn's error.  Returns the exit code. */
int cli_on_pool(cli_pool_fn fn, const char *const *pos, void *arg);
/* The whole of a command whose options need no check of their own: parse `cmd` (at most 4
 * positionals; its options write into what arg points to), then cli_on_pool. */
int cli_run_simple(const struct cli_cmd *cmd, int argc, char **argv, cli_pool_fn fn, void *arg);

/* Print cc_error_get() as the one error line; returns 1. */
int die_pool(void);

/* The pool named by --pool or $COWCHAIN_POOL, opened; NULL after printing the error. */
struct cc_pool *cli_pool(void);
extern const char *cli_pool_dir;

int parse_size(const char *s, uint64_t *out);
void human_size(uint64_t n, char *buf, size_t len); /* "1.5 GiB" */
void json_string(FILE *f, const char *s);

/* Progress on stderr, only when it is a terminal; cli_progress_done ends the line. */
void cli_progress(void *opaque, uint64_t done, uint64_t total);
cc_progress_fn cli_progress_fn(void);
void cli_progress_done(void);

/* Commands (argv[0] is the first word after the command name). */
int cmd_pool(int argc, char **argv);
int cmd_template(int argc, char **argv);
int cmd_clone(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_du(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_serve(int argc, char **argv, const char *argv0);
int cmd_disk_xml(int argc, char **argv);

#endif
