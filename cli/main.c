/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain command line: global options and dispatch to the command families.
 *
 * Design notes
 * ------------
 * `cowchain [--pool DIR] COMMAND [SUBCOMMAND] ARGS`.  The pool comes from --pool, else
 * $COWCHAIN_POOL; a command that needs it and has neither fails with one line saying what to
 * type.  Every command family lives in its own file (cmd-*.c) and does nothing but parse,
 * call pool/pool.h and print, so the CLI, the plugin and the tests share one implementation
 * of every operation.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef COWCHAIN_VERSION
#define COWCHAIN_VERSION "dev"
#endif

const char *cli_pool_dir;

static void
usage(FILE *f)
{
  fprintf(f, "usage: cowchain [--pool DIR] COMMAND ...\n"
             "\n"
             "Linked clones and snapshots of VM disks, served over NBD.\n"
             "The pool is --pool DIR, else $COWCHAIN_POOL.\n"
             "\n"
             "  pool init\n"
             "  template import NAME FILE [--format raw|qcow2|vmdk|vdi|vhdx]\n"
             "  template add NAME --uri NBD-URI [--verify] [--allow-writable]\n"
             "  template create NAME --size SIZE\n"
             "  template promote CLONE NAME\n"
             "  template list [--json] | template delete NAME | template verify NAME\n"
             "  clone create NAME --from TEMPLATE|CLONE@SNAP [--full] [--size SIZE]\n"
             "  clone list [--json] | clone delete NAME | clone resize NAME SIZE\n"
             "  snapshot create CLONE[,CLONE...] SNAP [--description TEXT] [--quiesce SOCKET]\n"
             "  snapshot list CLONE [--json] | snapshot info CLONE SNAP [--json]\n"
             "  snapshot revert CLONE SNAP [--force] | snapshot delete CLONE SNAP\n"
             "  info NAME [--backing-chain] [--json]\n"
             "  check [NAME] [--deep] [--repair] [--json]\n"
             "  export NAME FILE [--format raw|qcow2]\n"
             "  du [--json]\n"
             "  disk-xml NAME [--dev vda] [--socket PATH | --tcp HOST:PORT]\n"
             "  serve [--port N] [nbdkit options...]\n"
             "\n"
             "Every command takes --help; the manual is cowchain(1).\n");
}

int
main(int argc, char **argv)
{
  const char *argv0 = argv[0];
  int i = 1;

  cli_pool_dir = getenv("COWCHAIN_POOL");
  if (cli_pool_dir && !*cli_pool_dir)
    cli_pool_dir = NULL;
  while (i < argc && argv[i][0] == '-') {
    if (strcmp(argv[i], "--pool") == 0) {
      if (i + 1 >= argc)
        return usage_error(NULL, "--pool needs a directory");
      cli_pool_dir = argv[i + 1];
      i += 2;
    } else if (strncmp(argv[i], "--pool=", 7) == 0) {
      cli_pool_dir = argv[i] + 7;
      i++;
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--version") == 0) {
      printf("cowchain %s\n", COWCHAIN_VERSION);
      return 0;
    } else {
      return usage_error(NULL, "unknown option '%s' (try 'cowchain --help')", argv[i]);
    }
  }
  if (i >= argc) {
    usage(stderr);
    return EXIT_USAGE;
  }
  argc -= i + 1;
  argv += i + 1;
  {
    const char *cmd = argv[-1];
    if (strcmp(cmd, "pool") == 0)
      return cmd_pool(argc, argv);
    if (strcmp(cmd, "template") == 0)
      return cmd_template(argc, argv);
    if (strcmp(cmd, "clone") == 0)
      return cmd_clone(argc, argv);
    if (strcmp(cmd, "snapshot") == 0)
      return cmd_snapshot(argc, argv);
    if (strcmp(cmd, "info") == 0)
      return cmd_info(argc, argv);
    if (strcmp(cmd, "check") == 0)
      return cmd_check(argc, argv);
    if (strcmp(cmd, "du") == 0)
      return cmd_du(argc, argv);
    if (strcmp(cmd, "export") == 0)
      return cmd_export(argc, argv);
    if (strcmp(cmd, "disk-xml") == 0)
      return cmd_disk_xml(argc, argv);
    if (strcmp(cmd, "serve") == 0)
      return cmd_serve(argc, argv, argv0);
    if (strcmp(cmd, "help") == 0) {
      usage(stdout);
      return 0;
    }
    return usage_error(NULL, "unknown command '%s' (try 'cowchain --help')", cmd);
  }
}
