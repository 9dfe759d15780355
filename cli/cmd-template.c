/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain command line: `pool init` and the `template` commands.
 *
 * Design notes
 * ------------
 * Parsing and printing only; each command is one call into pool/pool.h.  `template list
 * --json` prints an array of objects with fixed keys (name, kind, size, created, layer, hash) so
 * scripts can rely on it.
 */
#include "cli/cli.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static int
pool_init(int argc, char **argv)
{
  const char *group = NULL, *pos[1];
  const struct cli_opt opts[] = {{"--group", 1, &group, NULL}, {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "pool init",
      "[--group NAME]",
      "Create the pool directory (--pool DIR or $COWCHAIN_POOL) and its layout.  The pool is\n"
      "owner-only: directories 0700, files 0600, whatever the umask (every VM's disk is in it).\n"
      "--group NAME lets that group read it: directories 2750 and files 0640 with group NAME,\n"
      "and the NBD socket of `cowchain serve` 0660, so members can connect.",
      0,
      0,
      opts};
  int npos;

  PARSE_OR_RETURN(&cmd, argc, argv, pos, npos);
  if (cli_pool_dir == NULL)
    return usage_error("pool init", "no pool: pass --pool DIR or set COWCHAIN_POOL");
  if (cc_pool_init(cli_pool_dir, group) < 0)
    return die_pool();
  return 0;
}

int
cmd_pool(int argc, char **argv)
{
  static const struct cli_sub subs[] = {{"init", pool_init}, {NULL, NULL}};

  return cli_dispatch("pool", subs, argc, argv);
}

static const char *
kind_name(enum cc_template_kind k)
{
  return k == CC_TEMPLATE_RAW ? "raw" : k == CC_TEMPLATE_REMOTE ? "remote" : "layer";
}

struct add_args {
  const char *uri;
  int verify, writable;
};

static int
do_template_add(struct cc_pool *p, const char *const *pos, void *arg)
{
  const struct add_args *a = arg;

  return cc_template_add(p, pos[0], a->uri,
                         (a->verify ? CC_PROBE_VERIFY : 0) |
                             (a->writable ? CC_PROBE_ALLOW_WRITABLE : 0));
}

static int
template_add(int argc, char **argv)
{
  struct add_args a = {0};
  const char *pos[1];
  const struct cli_opt opts[] = {{"--uri", 1, &a.uri, NULL},
                                 {"--verify", 0, NULL, &a.verify},
                                 {"--allow-writable", 0, NULL, &a.writable},
                                 {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "template add",
      "NAME --uri NBD-URI [--verify] [--allow-writable]",
      "Make the NBD export NBD-URI of another server template NAME, without copying it:\n"
      "nbd://HOST[:PORT]/EXPORT, nbds://... (TLS), nbd+unix:///EXPORT?socket=/ABS/PATH; TLS-PSK\n"
      "as nbdinfo takes it: nbds+unix://USER@/?socket=/ABS/SOCK&tls-psk-file=/ABS/FILE.\n"
      "Records the URI, the size and a fingerprint of sampled blocks, which every open checks;\n"
      "--verify also hashes the whole content once.  A writable export is refused (it could\n"
      "change under the clones) unless --allow-writable.  `template delete` removes only the\n"
      "record, never anything on the remote.",
      1,
      1,
      opts};
  int npos;

  PARSE_OR_RETURN(&cmd, argc, argv, pos, npos);
  if (a.uri == NULL)
    return usage_error(cmd.name, "--uri NBD-URI is required");
  return cli_on_pool(do_template_add, pos, &a);
}

struct import_args {
  const char *format;
  int allow_backing;
};

static int
do_template_import(struct cc_pool *p, const char *const *pos, void *arg)
{
  const struct import_args *a = arg;

  return cc_template_import(p, pos[0], pos[1], a->format,
                            a->allow_backing ? CC_IMPORT_ALLOW_BACKING : 0, cli_progress_fn(),
                            "import");
}

static int
template_import(int argc, char **argv)
{
  struct import_args a = {0};
  const struct cli_opt opts[] = {{"--format", 1, &a.format, NULL},
                                 {"--allow-backing", 0, NULL, &a.allow_backing},
                                 {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "template import",
      "NAME FILE [--format raw|qcow2|vmdk|vdi|vhdx] [--allow-backing]",
      "Copy FILE into the pool as read-only template NAME.  Raw files are copied sparsely;\n"
      "other formats are converted with qemu-img.  The size is padded to a multiple of 512.\n"
      "A non-raw FILE is inspected first: an image that names another file (a backing file,\n"
      "a qcow2 data file, VMDK extents or descriptor, a json: or protocol name), whose format\n"
      "is not --format, or that is bigger than the pool's free space is refused.\n"
      "--allow-backing imports an image chain you trust, flattened: it READS THE FILES THE\n"
      "IMAGE NAMES (as the user running this command), so never use it on images from others.",
      2,
      2,
      opts};

  return cli_run_simple(&cmd, argc, argv, do_template_import, &a);
}

static int
do_template_create(struct cc_pool *p, const char *const *pos, void *arg)
{
  return cc_template_create(p, pos[0], *(uint64_t *)arg);
}

static int
template_create(int argc, char **argv)
{
  const char *size_s = NULL, *pos[1];
  const struct cli_opt opts[] = {{"--size", 1, &size_s, NULL}, {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "template create",
      "NAME --size SIZE",
      "Create an empty (all-zero) template of SIZE bytes; SIZE takes K, M, G, T suffixes.",
      1,
      1,
      opts};
  uint64_t size;
  int npos;

  PARSE_OR_RETURN(&cmd, argc, argv, pos, npos);
  if (size_s == NULL)
    return usage_error(cmd.name, "--size is required (usage: cowchain %s %s)", cmd.name, cmd.usage);
  if (parse_size(size_s, &size) < 0 || size == 0)
    return usage_error(cmd.name, "bad size '%s' (a number with an optional K, M, G or T suffix)",
                       size_s);
  return cli_on_pool(do_template_create, pos, &size);
}

static int
do_template_promote(struct cc_pool *p, const char *const *pos, void *arg)
{
  (void)arg;
  return cc_template_promote(p, pos[0], pos[1]);
}

static int
template_promote(int argc, char **argv)
{
  static const struct cli_cmd cmd = {
      "template promote",
      "CLONE NAME",
      "Freeze the current state of CLONE as template NAME (like qm template).  The clone keeps\n"
      "running on a new empty layer above it.",
      2,
      2,
      NULL};

  return cli_run_simple(&cmd, argc, argv, do_template_promote, NULL);
}

static int
do_template_delete(struct cc_pool *p, const char *const *pos, void *arg)
{
  (void)arg;
  return cc_template_delete(p, pos[0]);
}

static int
template_delete(int argc, char **argv)
{
  static const struct cli_cmd cmd = {
      "template delete",
      "NAME",
      "Delete template NAME.  Refused while any clone, snapshot or template depends on it.",
      1,
      1,
      NULL};

  return cli_run_simple(&cmd, argc, argv, do_template_delete, NULL);
}

static int
do_template_list(struct cc_pool *p, const char *const *pos, void *arg)
{
  struct cc_template *t;
  size_t n, i;
  int r;

  (void)pos;
  if ((r = cc_pool_list_templates(p, &t, &n)) < 0)
    return r;
  if (*(int *)arg) {
    printf("[");
    for (i = 0; i < n; i++) {
      char when[32];
      cc_time_format(t[i].created, CC_TIME_ISO, when, sizeof when);
      printf("%s\n  {\"name\": ", i ? "," : "");
      json_string(stdout, t[i].name);
      printf(", \"kind\": \"%s\", \"size\": %" PRIu64 ", \"created\": \"%s\", \"layer\": ",
             kind_name(t[i].kind), t[i].size, when);
      if (t[i].kind == CC_TEMPLATE_LAYER)
        json_string(stdout, t[i].layer);
      else
        printf("null");
      printf(", \"hash\": ");
      if (t[i].hash[0])
        json_string(stdout, t[i].hash);
      else
        printf("null");
      printf("}");
    }
    printf("%s]\n", n ? "\n" : "");
  } else {
    printf("%-24s %-6s %12s  %s\n", "NAME", "KIND", "SIZE", "CREATED");
    for (i = 0; i < n; i++) {
      char size[32], when[40];
      human_size(t[i].size, size, sizeof size);
      cc_time_format(t[i].created, CC_TIME_TABLE, when, sizeof when);
      printf("%-24s %-6s %12s  %s\n", t[i].name, kind_name(t[i].kind), size, when);
    }
  }
  free(t);
  return 0;
}

static int
template_list(int argc, char **argv)
{
  int json = 0;
  const struct cli_opt opts[] = {{"--json", 0, NULL, &json}, {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "template list", "[--json]", "List the templates of the pool.", 0, 0, opts};

  return cli_run_simple(&cmd, argc, argv, do_template_list, &json);
}

static int
do_template_verify(struct cc_pool *p, const char *const *pos, void *arg)
{
  int r, updated = 0;

  (void)arg;
  r = cc_template_verify(p, pos[0], cli_progress_fn(), "template verify", &updated);
  cli_progress_done();
  if (r < 0)
    return r;
  if (updated & CC_VERIFY_REMOTE)
    printf("template %s: the remote serves the recorded export (size, sampled fingerprint%s)\n",
           pos[0], updated & CC_VERIFY_WHOLE ? ", whole-content hash" : "");
  else
    printf("template %s: contents match the hash recorded at import%s\n", pos[0],
           updated & CC_VERIFY_IDENTITY ? "; the new file identity is recorded" : "");
  return 0;
}

static int
template_verify(int argc, char **argv)
{
  static const struct cli_cmd cmd = {
      "template verify",
      "NAME",
      "Re-hash the image of raw template NAME and compare it with the content hash recorded at\n"
      "import.  Exit status 0 if it is unchanged (a new file identity, after the pool was\n"
      "copied, is recorded so the template can be served again), 1 if it changed.  A remote\n"
      "template is asked again: size and sampled fingerprint, and the whole content if\n"
      "`template add --verify` recorded its hash.",
      1,
      1,
      NULL};

  return cli_run_simple(&cmd, argc, argv, do_template_verify, NULL);
}

int
cmd_template(int argc, char **argv)
{
  static const struct cli_sub subs[] = {
      {"add", template_add},       {"import", template_import},
      {"create", template_create}, {"promote", template_promote},
      {"list", template_list},     {"delete", template_delete},
      {"verify", template_verify}, {NULL, NULL},
  };

  return cli_dispatch("template", subs, argc, argv);
}
