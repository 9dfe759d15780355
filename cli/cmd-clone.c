/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain command line: the `clone` and `snapshot` commands.
 *
 * Design notes
 * ------------
 * `snapshot list` prints what `virsh snapshot-list --parent` shows (Name, Creation Time,
 * Parent) plus the size of the snapshot's own layer; the snapshot the clone currently sits on
 * is marked with '*' in the table and "current": true in JSON.  JSON keys and their order are
 * fixed: scripts and tests parse them.
 */
#include "pool/qga.h"
#include "cli/cli.h"

#include "common/escape.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct clone_create_args {
  const char *from, *size_s;
  int full;
  uint64_t size;
};

static int
do_clone_create(struct cc_pool *p, const char *const *pos, void *arg)
{
  struct clone_create_args *a = arg;

  return cc_clone_create_size(p, pos[0], a->from, a->full, a->size, cli_progress_fn(),
                              "full clone");
}

static int
clone_create(int argc, char **argv)
{
  struct clone_create_args a = {0};
  const char *pos[1];
  int npos;
  const struct cli_opt opts[] = {{"--from", 1, &a.from, NULL},
                                 {"--full", 0, NULL, &a.full},
                                 {"--size", 1, &a.size_s, NULL},
                                 {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "clone create",
      "NAME --from TEMPLATE|CLONE@SNAP [--full] [--size SIZE]",
      "Create clone NAME.  A linked clone (the default) is a new empty layer on the source,\n"
      "made in constant time; --full copies the source's data into a standalone layer.\n"
      "--size makes the clone larger than its source (never smaller); the part beyond the\n"
      "source reads as zeroes.",
      1,
      1,
      opts};

  PARSE_OR_RETURN(&cmd, argc, argv, pos, npos);
  if (a.from == NULL)
    return usage_error(cmd.name, "--from is required (usage: cowchain %s %s)", cmd.name, cmd.usage);
  if (a.size_s && (parse_size(a.size_s, &a.size) < 0 || a.size == 0))
    return usage_error(cmd.name, "--size: '%s' is not a size (e.g. 20G, 512M, 1048576)", a.size_s);
  return cli_on_pool(do_clone_create, pos, &a);
}

static int
do_clone_resize(struct cc_pool *p, const char *const *pos, void *arg)
{
  return cc_clone_resize(p, pos[0], *(uint64_t *)arg);
}

static int
clone_resize(int argc, char **argv)
{
  const char *pos[2];
  int npos;
  uint64_t size;
  static const struct cli_cmd cmd = {
      "clone resize",
      "NAME SIZE",
      "Grow clone NAME to SIZE (K, M, G, T suffixes: powers of 1024).  The new part reads as\n"
      "zeroes; snapshots keep their size.  Shrinking is refused.  Refused while a server has\n"
      "the clone open: new connections after the resize see the new size.",
      2,
      2,
      NULL};

  PARSE_OR_RETURN(&cmd, argc, argv, pos, npos);
  if (parse_size(pos[1], &size) < 0 || size == 0)
    return usage_error(cmd.name, "'%s' is not a size (e.g. 20G, 512M, 1048576)", pos[1]);
  return cli_on_pool(do_clone_resize, pos, &size);
}

static int
do_clone_delete(struct cc_pool *p, const char *const *pos, void *arg)
{
  (void)arg;
  return cc_clone_delete(p, pos[0]);
}

static int
clone_delete(int argc, char **argv)
{
  static const struct cli_cmd cmd = {
      "clone delete",
      "NAME",
      "Delete clone NAME and its snapshots.  Layers that other clones were created from stay\n"
      "until nothing uses them.",
      1,
      1,
      NULL};

  return cli_run_simple(&cmd, argc, argv, do_clone_delete, NULL);
}

static int
do_clone_list(struct cc_pool *p, const char *const *pos, void *arg)
{
  struct cc_clone *c;
  size_t n, i;
  int r;

  (void)pos;
  if ((r = cc_pool_list_clones(p, &c, &n)) < 0)
    return r;
  if (*(int *)arg) {
    printf("[");
    for (i = 0; i < n; i++) {
      char when[32];
      cc_time_format(c[i].created, CC_TIME_ISO, when, sizeof when);
      printf("%s\n  {\"name\": ", i ? "," : "");
      json_string(stdout, c[i].name);
      printf(", \"size\": %" PRIu64 ", \"created\": \"%s\", \"snapshots\": %zu, \"top\": \"%s\""
             ", \"origin\": ",
             c[i].size, when, c[i].nsnaps, c[i].top);
      if (c[i].origin[0])
        json_string(stdout, c[i].origin);
      else
        printf("null");
      printf(", \"full\": %s}", c[i].full ? "true" : "false");
    }
    printf("%s]\n", n ? "\n" : "");
  } else {
    printf("%-24s %12s %9s  %-25s  %s\n", "NAME", "SIZE", "SNAPSHOTS", "CREATED", "FROM");
    for (i = 0; i < n; i++) {
      char size[32], when[40];
      human_size(c[i].size, size, sizeof size);
      cc_time_format(c[i].created, CC_TIME_TABLE, when, sizeof when);
      printf("%-24s %12s %9zu  %-25s  %s%s\n", c[i].name, size, c[i].nsnaps, when,
             c[i].origin[0] ? c[i].origin : "-", c[i].full ? " (full copy)" : "");
    }
  }
  cc_clone_list_free(c, n);
  return 0;
}

static int
clone_list(int argc, char **argv)
{
  int json = 0;
  const struct cli_opt opts[] = {{"--json", 0, NULL, &json}, {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {"clone list", "[--json]", "List the clones of the pool.", 0, 0, opts};

  return cli_run_simple(&cmd, argc, argv, do_clone_list, &json);
}

int
cmd_clone(int argc, char **argv)
{
  static const struct cli_sub subs[] = {
      {"create", clone_create}, {"list", clone_list}, {"delete", clone_delete},
      {"resize", clone_resize}, {NULL, NULL},
  };

  return cli_dispatch("clone", subs, argc, argv);
}

struct snapshot_create_args {
  const char *desc, *agent, *timeout_s;
  int timeout_ms;
};

static int
do_snapshot_create(struct cc_pool *p, const char *const *pos, void *arg)
{
  struct snapshot_create_args *a = arg;

  return cc_snapshot_create_quiesced(p, pos[0], pos[1], a->desc, a->agent, a->timeout_ms);
}

static int
snapshot_create(int argc, char **argv)
{
  struct snapshot_create_args a = {.timeout_ms = CC_QGA_FREEZE_MS};
  const char *pos[2];
  const struct cli_opt opts[] = {{"--description", 1, &a.desc, NULL},
                                 {"--quiesce", 1, &a.agent, NULL},
                                 {"--quiesce-timeout", 1, &a.timeout_s, NULL},
                                 {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "snapshot create",
      "CLONE[,CLONE...] SNAP [--description TEXT] [--quiesce SOCKET [--quiesce-timeout S]]",
      "Freeze the current state of CLONE as snapshot SNAP (exported read-only as CLONE@SNAP);\n"
      "the clone continues on a new empty layer.  A clone a server is serving is snapshotted\n"
      "through the server, its clients see no error: every write completed before the command\n"
      "is in the snapshot, none issued after it returned.  Several clones (vm1,vm2) get one\n"
      "snapshot at one instant, all or nothing.\n"
      "--quiesce SOCKET: application-consistent: the QEMU guest agent on that chardev socket\n"
      "freezes the guest's file systems first (guest-fsfreeze-freeze, at most S seconds,\n"
      "default 30) and thaws them after, always.  No answer or a refusal: no snapshot.",
      2,
      2,
      opts};
  int npos;

  PARSE_OR_RETURN(&cmd, argc, argv, pos, npos);
  if (a.timeout_s != NULL) {
    char *end;
    double secs;

    if (a.agent == NULL)
      return usage_error(cmd.name, "--quiesce-timeout needs --quiesce SOCKET");
    secs = strtod(a.timeout_s, &end);
    if (end == a.timeout_s || *end != '\0' || !(secs > 0 && secs <= 3600))
      return usage_error(
          cmd.name, "bad --quiesce-timeout '%s' (seconds, more than 0, at most 3600)", a.timeout_s);
    a.timeout_ms = (int)(secs * 1000);
  }
  return cli_on_pool(do_snapshot_create, pos, &a);
}

static void
print_snap_json(const struct cc_snapshot_info *s, const char *clone)
{
  char when[32];

  cc_time_format(s->s.created, CC_TIME_ISO, when, sizeof when);
  printf("{\"name\": ");
  json_string(stdout, s->s.name);
  printf(", \"clone\": ");
  json_string(stdout, clone);
  printf(", \"created\": \"%s\", \"parent\": ", when);
  if (s->parent[0])
    json_string(stdout, s->parent);
  else
    printf("null");
  printf(", \"current\": %s, \"children\": %zu, \"size\": %" PRIu64 ", \"disk_size\": %" PRIu64
         ", \"layer\": \"%s\", \"description\": ",
         s->current ? "true" : "false", s->children, s->allocated_bytes, s->disk_bytes, s->s.layer);
  json_string(stdout, s->s.description);
  printf("}");
}

struct snapshot_list_args {
  int json, info;
};

static int
do_snapshot_list_or_info(struct cc_pool *p, const char *const *pos, void *arg)
{
  const struct snapshot_list_args *a = arg;
  int json = a->json, info = a->info, r;
  struct cc_snapshot_info *s;
  size_t n, i;

  if ((r = cc_pool_snapshot_list(p, pos[0], &s, &n)) < 0)
    return r;
  if (info) {
    for (i = 0; i < n; i++)
      if (strcmp(s[i].s.name, pos[1]) == 0)
        break;
    if (i == n) {
      free(s);
      return cli_error(1, "snapshot info: %s@%s: no such snapshot", pos[0], pos[1]);
    }
    if (json) {
      print_snap_json(&s[i], pos[0]);
      printf("\n");
    } else {
      char when[40], size[32], disk[32], desc[CC_ESCAPED_SIZE(CC_DESC_MAX)];
      cc_time_format(s[i].s.created, CC_TIME_TABLE, when, sizeof when);
      human_size(s[i].allocated_bytes, size, sizeof size);
      human_size(s[i].disk_bytes, disk, sizeof disk);
      printf("Name:           %s\nClone:          %s\nExport:         %s@%s\n"
             "Creation Time:  %s\nParent:         %s\nChildren:       %zu\nCurrent:        %s\n"
             "Size:           %s\nDisk size:      %s\nLayer:          %s\nDescription:    %s\n",
             s[i].s.name, pos[0], pos[0], s[i].s.name, when, s[i].parent[0] ? s[i].parent : "-",
             s[i].children, s[i].current ? "yes" : "no", size, disk, s[i].s.layer,
             cc_escape(s[i].s.description, desc, sizeof desc));
    }
  } else if (json) {
    printf("[");
    for (i = 0; i < n; i++) {
      printf("%s\n  ", i ? "," : "");
      print_snap_json(&s[i], pos[0]);
    }
    printf("%s]\n", n ? "\n" : "");
  } else {
    printf(" %-22s %-27s %-22s %s\n", "Name", "Creation Time", "Parent", "Size");
    printf("---------------------------------------------------------------------------------"
           "---\n");
    for (i = 0; i < n; i++) {
      char when[40], size[32], name[CC_NAME_MAX + 3];
      cc_time_format(s[i].s.created, CC_TIME_TABLE, when, sizeof when);
      human_size(s[i].allocated_bytes, size, sizeof size);
      snprintf(name, sizeof name, "%s%s", s[i].s.name, s[i].current ? " *" : "");
      printf(" %-22s %-27s %-22s %s\n", name, when, s[i].parent[0] ? s[i].parent : "-", size);
    }
  }
  free(s);
  return 0;
}

static int
snapshot_list_or_info(int argc, char **argv, int info)
{
  struct snapshot_list_args a = {.info = info};
  const struct cli_opt opts[] = {{"--json", 0, NULL, &a.json}, {NULL, 0, NULL, NULL}};
  const struct cli_cmd list_cmd = {"snapshot list",
                                   "CLONE [--json]",
                                   "List the snapshots of CLONE with their parents ('*' marks "
                                   "the one the clone currently sits on).",
                                   1,
                                   1,
                                   opts};
  const struct cli_cmd info_cmd = {"snapshot info",
                                   "CLONE SNAP [--json]",
                                   "Show the details of snapshot SNAP of CLONE.",
                                   2,
                                   2,
                                   opts};

  return cli_run_simple(info ? &info_cmd : &list_cmd, argc, argv, do_snapshot_list_or_info, &a);
}

static int
snapshot_list(int argc, char **argv)
{
  return snapshot_list_or_info(argc, argv, 0);
}

static int
snapshot_info(int argc, char **argv)
{
  return snapshot_list_or_info(argc, argv, 1);
}

static int
do_snapshot_revert(struct cc_pool *p, const char *const *pos, void *arg)
{
  return cc_snapshot_revert_flags(p, pos[0], pos[1], *(int *)arg ? CC_REVERT_FORCE : 0);
}

static int
snapshot_revert(int argc, char **argv)
{
  int force = 0;
  const struct cli_opt opts[] = {{"--force", 0, NULL, &force}, {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "snapshot revert",
      "CLONE SNAP [--force]",
      "Give CLONE a new empty layer on snapshot SNAP: its writes since then are discarded.\n"
      "Later snapshots stay (snapshots form a tree).  Refused while clients are connected to\n"
      "CLONE (their caches would disagree with the disk); --force disconnects them first\n"
      "(their requests fail from then on).",
      2,
      2,
      opts};

  return cli_run_simple(&cmd, argc, argv, do_snapshot_revert, &force);
}

static int
do_snapshot_delete(struct cc_pool *p, const char *const *pos, void *arg)
{
  struct cc_merge_info m;
  char a[32], b[32];
  int r = cc_snapshot_delete_info(p, pos[0], pos[1], cli_progress_fn(), "merge", &m);

  (void)arg;
  if (r < 0)
    return r;
  human_size(m.written_bytes, a, sizeof a);
  switch (m.direction) {
  case CC_MERGE_INTO_CHILDREN:
    human_size(m.into_snapshot_bytes, b, sizeof b);
    if (m.into_snapshot_bytes)
      printf("%s@%s: merged into the layer above it (%s copied; the other direction: %s)\n", pos[0],
             pos[1], a, b);
    else
      printf("%s@%s: merged into the layer(s) above it (%s copied)\n", pos[0], pos[1], a);
    break;
  case CC_MERGE_INTO_SNAPSHOT:
    human_size(m.into_children_bytes, b, sizeof b);
    printf("%s@%s: the layer above it merged into the snapshot's layer, which takes its place "
           "(%s copied; the other direction: %s)\n",
           pos[0], pos[1], a, b);
    break;
  default:
    printf("%s@%s: name removed (another record still uses the layer)\n", pos[0], pos[1]);
  }
  return 0;
}

static int
snapshot_delete(int argc, char **argv)
{
  static const struct cli_cmd cmd = {
      "snapshot delete",
      "CLONE SNAP",
      "Delete snapshot SNAP of CLONE by merging its layer with the layers above it;\n"
      "no other state loses a byte.  Refused, with the reason, when that is unsafe.\n"
      "The merge copies whichever side is smaller: the snapshot's blocks that the layers\n"
      "above lack, into them; or, when one layer sits on the snapshot (and it is the same\n"
      "size), that layer's blocks into the snapshot's file, which then takes its place.\n"
      "The output says which direction was taken and how much was copied.\n"
      "On a clone a server is serving (a running guest), the merge is live: it always goes\n"
      "into the layers above, into the live top through the server so the guest's newer\n"
      "writes win, always finishes however fast the guest writes, and the connections\n"
      "switch to the new chain without a pause.",
      2,
      2,
      NULL};

  return cli_run_simple(&cmd, argc, argv, do_snapshot_delete, NULL);
}

int
cmd_snapshot(int argc, char **argv)
{
  static const struct cli_sub subs[] = {
      {"create", snapshot_create}, {"list", snapshot_list},     {"info", snapshot_info},
      {"revert", snapshot_revert}, {"delete", snapshot_delete}, {NULL, NULL},
  };

  return cli_dispatch("snapshot", subs, argc, argv);
}
