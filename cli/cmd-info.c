/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain command line: `info`, `check`, `du` and `export`.
 *
 * Design notes
 * ------------
 * `info` follows `qemu-img info`: the text keys ("virtual size", "disk size", "cluster_size",
 * "backing file") and, with --json, the keys qemu-img uses ("virtual-size", "actual-size",
 * "cluster-size", "backing-filename", "format") plus our own ("allocated-size", "zero-size",
 * "uuid", "role", "created", "dirty"), so people and scripts used to qemu-img feel at home.
 * With --backing-chain the text is one block per layer and the JSON an array, top first.
 */
#include "cli/cli.h"

#include "common/escape.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static void
print_layer_text(const struct cc_layer_info *l, const char *name)
{
  char vs[32], ds[32], as[32], when[40], esc[CC_ESCAPED_SIZE(sizeof l->parent)];

  human_size(l->virtual_size, vs, sizeof vs);
  human_size(l->disk_bytes, ds, sizeof ds);
  human_size(l->allocated_bytes, as, sizeof as);
  cc_time_format(l->created, CC_TIME_TABLE, when, sizeof when);
  printf("image: %s\n", name);
  printf("file: %s\n", l->file);
  printf("file format: %s\n",
         l->raw ? (strstr(l->file, ".nbd") ? "nbd (remote)" : "raw") : "cowchain");
  printf("virtual size: %s (%" PRIu64 " bytes)\n", vs, l->virtual_size);
  printf("disk size: %s\n", ds);
  printf("allocated: %s (%" PRIu64 " bytes)\n", as, l->allocated_bytes);
  if (!l->raw) {
    printf("zero: %" PRIu64 " bytes\n", l->zero_bytes);
    printf("cluster_size: %u\n", l->cluster_size);
    printf("uuid: %s\n", l->uuid);
    printf("created: %s\n", when);
    if (l->parent[0])
      printf("backing file: %s\n", cc_escape(l->parent, esc, sizeof esc)); /* from the header */
    if (l->dirty)
      printf("dirty: yes (not closed cleanly; 'cowchain check --repair' reclaims leaked space)\n");
  }
  if (l->role[0])
    printf("role: %s\n", l->role);
}

static void
print_layer_json(const struct cc_layer_info *l, const char *name, const char *indent)
{
  char when[32];

  cc_time_format(l->created, CC_TIME_ISO, when, sizeof when);
  printf("%s{\"image\": ", indent);
  json_string(stdout, name);
  printf(", \"filename\": ");
  json_string(stdout, l->file);
  printf(", \"format\": \"%s\", \"virtual-size\": %" PRIu64 ", \"actual-size\": %" PRIu64
         ", \"allocated-size\": %" PRIu64 ", \"zero-size\": %" PRIu64,
         l->raw ? (strstr(l->file, ".nbd") ? "nbd" : "raw") : "cowchain", l->virtual_size,
         l->disk_bytes, l->allocated_bytes, l->zero_bytes);
  if (l->raw) {
    printf(", \"cluster-size\": null, \"uuid\": null, \"created\": null, "
           "\"backing-filename\": null, \"dirty\": false");
  } else {
    printf(", \"cluster-size\": %u, \"uuid\": \"%s\", \"created\": \"%s\", \"backing-filename\": ",
           l->cluster_size, l->uuid, when);
    if (l->parent[0])
      json_string(stdout, l->parent);
    else
      printf("null");
    printf(", \"dirty\": %s", l->dirty ? "true" : "false");
  }
  printf(", \"role\": ");
  json_string(stdout, l->role);
  printf("}");
}

/* The limits stated up front (POOL.md 5.5): the chain's depth against CC_MAX_DEPTH, and the
 * data in frozen layers of the chain that no record names (an interrupted merge or promote left
 * them, POOL.md 5.6 and 5.8): what merging them away would copy. */
static void
print_chain_limits(const struct cc_layer_info *l, size_t n)
{
  uint64_t pending = 0;
  size_t unnamed = 0;
  char ps[32];

  for (size_t i = 1; i < n; i++)
    if (!l[i].raw && !l[i].role[0]) {
      unnamed++;
      pending += l[i].allocated_bytes;
    }
  human_size(pending, ps, sizeof ps);
  printf("chain depth: %zu of %d files\n", n, CC_MAX_DEPTH);
  printf("merge pending: %s (%" PRIu64 " bytes in %zu unnamed layers)\n", ps, pending, unnamed);
}

struct info_args {
  int json, chain;
};

static int
do_info(struct cc_pool *p, const char *const *pos, void *arg)
{
  const struct info_args *a = arg;
  int json = a->json, chain = a->chain, r;
  struct cc_layer_info *l;
  size_t n, i, total;

  if ((r = cc_pool_backing_chain(p, pos[0], &l, &n)) < 0)
    return r;
  total = n;
  if (!chain)
    n = n ? 1 : 0;
  if (json && chain)
    printf("[\n");
  for (i = 0; i < n; i++) {
    /* The first entry is the export itself; below it, name each file by its path. */
    const char *name = i == 0 ? pos[0] : l[i].file;
    if (json) {
      print_layer_json(&l[i], name, chain ? "  " : "");
      printf("%s\n", chain && i + 1 < n ? "," : "");
    } else {
      if (i)
        printf("\n");
      print_layer_text(&l[i], name);
      if (i == 0)
        print_chain_limits(l, total);
    }
  }
  if (json && chain)
    printf("]\n");
  free(l);
  return 0;
}

int
cmd_info(int argc, char **argv)
{
  struct info_args a = {0};
  const struct cli_opt opts[] = {
      {"--json", 0, NULL, &a.json}, {"--backing-chain", 0, NULL, &a.chain}, {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "info",
      "NAME [--backing-chain] [--json]",
      "Show the top file of NAME (a clone, CLONE@SNAP or a template) like qemu-img info;\n"
      "--backing-chain shows every layer down to the template.",
      1,
      1,
      opts};

  return cli_run_simple(&cmd, argc, argv, do_info, &a);
}

static const char *const severity_tag[] = {"ok", "leak", "error", "warning"};

static void
report_line(void *opaque, int severity, const char *msg)
{
  int *json_count = opaque;
  const char *tag = severity_tag[severity < 0 ? 0 : severity > 3 ? 2 : severity];

  cli_progress_done(); /* a finding starts its own line after a progress line */

  if (json_count == NULL) {
    char esc[CC_ESCAPED_SIZE(1024)];
    /* Findings quote file names found in the pool and links read from headers. */
    printf("%s: %s\n", tag, cc_escape(msg, esc, sizeof esc));
    return;
  }
  printf("%s\n    {\"severity\": \"%s\", \"message\": ", (*json_count)++ ? "," : "", tag);
  json_string(stdout, msg);
  printf("}");
}

struct check_args {
  int repair, json, deep;
};

static int
do_check(struct cc_pool *p, const char *const *pos, void *arg)
{
  const struct check_args *a = arg;
  int repair = a->repair, json = a->json, count = 0, r;
  struct cc_check_summary sum;

  if (json)
    printf("{\"findings\": [");
  memset(&sum, 0, sizeof sum);
  if (a->deep)
    r = cc_pool_check_deep(p, pos[0], repair, report_line, json ? &count : NULL, cli_progress_fn(),
                           "check --deep", &sum);
  else
    r = cc_pool_check(p, pos[0], repair, report_line, json ? &count : NULL, &sum);
  cli_progress_done();
  if (json)
    printf("%s], \"layers_checked\": %u, \"errors\": %u, \"leaks\": %u, \"repaired\": %u, "
           "\"warnings\": %u}\n",
           count ? "\n  " : "", sum.layers_checked, sum.errors, sum.leaks, sum.repaired,
           sum.warnings);
  fflush(stdout);
  if (r < 0 || json)
    return r;
  printf("%u layers checked, %u errors, %u leaks, %u warnings%s", sum.layers_checked, sum.errors,
         sum.leaks, sum.warnings, repair ? "" : "\n");
  if (repair)
    printf(", %u repaired\n", sum.repaired);
  return 0;
}

int
cmd_check(int argc, char **argv)
{
  struct check_args a = {0};
  const struct cli_opt opts[] = {{"--repair", 0, NULL, &a.repair},
                                 {"--json", 0, NULL, &a.json},
                                 {"--deep", 0, NULL, &a.deep},
                                 {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "check",
      "[NAME] [--deep] [--repair] [--json]",
      "Validate every layer of NAME's chain (every record if NAME is omitted) and look for\n"
      "leftovers: layers and images no record reaches, stale files in tmp/, leaked space in\n"
      "layers.  Without NAME, also files and directories whose mode is looser than the pool's\n"
      "(warnings: owner-only, or the group of `pool init --group`).  --repair removes\n"
      "leftovers, reclaims leaked space and tightens modes; errors are only reported.\n"
      "A template image whose size, mtime or inode differs from its import is an error.\n"
      "--deep also re-hashes every template image against the hash recorded at import, asks\n"
      "every remote template's remote again (as `template verify`), and reads all data of\n"
      "every layer (progress on a terminal).\n"
      "Exit status: 0 clean (leaks and warnings are reported but are not errors), 1 errors.",
      0,
      1,
      opts};

  return cli_run_simple(&cmd, argc, argv, do_check, &a);
}

static int
do_du(struct cc_pool *p, const char *const *pos, void *arg)
{
  struct cc_du du;
  size_t i;
  int r;

  (void)pos;
  if ((r = cc_pool_du(p, &du)) < 0)
    return r;
  if (*(int *)arg) {
    printf("{\"entries\": [");
    for (i = 0; i < du.n; i++) {
      const struct cc_du_entry *e = &du.entries[i];
      printf("%s\n  {\"name\": ", i ? "," : "");
      json_string(stdout, e->name);
      printf(", \"kind\": \"%s\", \"virtual-size\": %" PRIu64 ", \"own\": %" PRIu64
             ", \"shared\": %" PRIu64 "}",
             e->template ? "template" : "clone", e->virtual_size, e->own_bytes, e->shared_bytes);
    }
    printf("%s], \"logical\": %" PRIu64 ", \"physical\": %" PRIu64 "}\n", du.n ? "\n" : "",
           du.logical, du.physical);
  } else {
    char a[32], b[32], c[32];
    printf("%-24s %-8s %12s %12s %12s\n", "NAME", "KIND", "SIZE", "OWN", "SHARED");
    for (i = 0; i < du.n; i++) {
      const struct cc_du_entry *e = &du.entries[i];
      human_size(e->virtual_size, a, sizeof a);
      human_size(e->own_bytes, b, sizeof b);
      human_size(e->shared_bytes, c, sizeof c);
      printf("%-24s %-8s %12s %12s %12s\n", e->name, e->template ? "template" : "clone", a, b, c);
    }
    human_size(du.logical, a, sizeof a);
    human_size(du.physical, b, sizeof b);
    printf("pool: logical %s, physical %s\n", a, b);
  }
  cc_du_free(&du);
  return 0;
}

int
cmd_du(int argc, char **argv)
{
  int json = 0;
  const struct cli_opt opts[] = {{"--json", 0, NULL, &json}, {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "du",
      "[--json]",
      "Space per template and clone: OWN is the disk space of layers only it uses (its top and\n"
      "snapshots), SHARED what it uses together with others (templates, snapshots other clones\n"
      "were made from).  The last line compares the pool's logical size with its disk usage.",
      0,
      0,
      opts};

  return cli_run_simple(&cmd, argc, argv, do_du, &json);
}

static int
do_export(struct cc_pool *p, const char *const *pos, void *arg)
{
  return cc_pool_export_file(p, pos[0], pos[1], *(const char **)arg, cli_progress_fn(), "export");
}

int
cmd_export(int argc, char **argv)
{
  const char *format = NULL, *pos[2];
  int npos;
  const struct cli_opt opts[] = {{"--format", 1, &format, NULL}, {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "export",
      "NAME FILE [--format raw|qcow2]",
      "Write the disk NAME (a clone, CLONE@SNAP or a template) to FILE: raw (the default,\n"
      "sparse) or qcow2 (through qemu-img).  FILE is replaced if it exists.",
      2,
      2,
      opts};

  PARSE_OR_RETURN(&cmd, argc, argv, pos, npos);
  if (format && strcmp(format, "raw") != 0 && strcmp(format, "qcow2") != 0)
    return usage_error(cmd.name, "unknown format '%s' (raw or qcow2)", format);
  return cli_on_pool(do_export, pos, &format);
}
