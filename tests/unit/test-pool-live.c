/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of pool/live.c without a server: the depth limit of snapshot create, snapshots of
 * several clones at once (offline), and the multi-clone intent (docs/POOL.md 6.3): readers apply
 * a pending intent, the next pool lock rolls it forward, check reports one it cannot.
 *
 * Served clones are tested through nbdkit in tests/integration/test-live-snapshot*.sh.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "overlay/overlay.h"
#include "pool/pool.h"
#include "tests/unit/util-overlay.h"
#include "tests/unit/util-pool.h"

#define DISK (1u << 20)

static char *pooldir;
static struct cc_pool *pool;

static void
setup(void)
{
  ptu_pool_new(&pooldir, &pool);
  cr_assert_eq(cc_template_create(pool, "base", DISK), 0, "%s", cc_error_get());
  cr_assert_eq(cc_clone_create(pool, "vm1", "base", 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(cc_clone_create(pool, "vm2", "base", 0, NULL, NULL), 0, "%s", cc_error_get());
}

static void
teardown(void)
{
  ptu_pool_remove(&pooldir, &pool);
}

TestSuite(pool_live, .init = setup, .fini = teardown);

static void
top_of(const char *clone, char uuid[CC_UUID_STR])
{
  struct cc_clone c;

  cr_assert_eq(cc_pool_get_clone(pool, clone, &c), 0, "%s", cc_error_get());
  strcpy(uuid, c.top);
  cc_clone_free(&c);
}

/* An empty layer on layer `parent` in layers/, named by its uuid (as pool_new_layer does). */
static void
new_layer(const char *parent, char uuid[CC_UUID_STR])
{
  char tmp[4096], final[4096], link[64];
  struct ovl_create_opts o = {.virtual_size = DISK, .mode = 0600};
  uint8_t u[OVL_UUID_LEN];
  struct ovl_layer *l;
  struct ovl_info info;

  snprintf(tmp, sizeof tmp, "%s/tmp/unit-layer.cow", pooldir);
  snprintf(final, sizeof final, "%s/layers/%s.cow", pooldir, parent);
  cr_assert_eq(ovl_open(final, OVL_RDONLY | OVL_NOLOCK, &l), 0, "%s", cc_error_get());
  ovl_get_info(l, &info);
  ovl_close(l);
  snprintf(link, sizeof link, "%s.cow", parent);
  o.parent.kind = OVL_PARENT_LAYER;
  o.parent.path = link;
  memcpy(o.parent.uuid, info.uuid, OVL_UUID_LEN);
  o.parent.size = DISK;
  cr_assert_eq(ovl_create(tmp, &o, u), 0, "%s", cc_error_get());
  ovl_uuid_str(u, uuid);
  snprintf(final, sizeof final, "%s/layers/%s.cow", pooldir, uuid);
  cr_assert_eq(rename(tmp, final), 0);
}

/* Point clone `clone`'s record at top `uuid` (by hand: the test builds chains faster than 4096
 * snapshot creates, each of which measures the depth). */
static void
set_top(const char *clone, const char *uuid)
{
  char path[4096];
  FILE *f;

  snprintf(path, sizeof path, "%s/clones/%s", pooldir, clone);
  f = fopen(path, "w");
  cr_assert(f);
  fprintf(f, "cowchain-clone 1\ntop %s\ncreated 2026-01-01T00:00:00Z\nsize %u\norigin base\n", uuid,
          DISK);
  fclose(f);
}

static int
has_snap(const char *clone, const char *snap)
{
  struct cc_clone c;
  int found = 0;

  cr_assert_eq(cc_pool_get_clone(pool, clone, &c), 0, "%s", cc_error_get());
  for (size_t i = 0; i < c.nsnaps; i++)
    found |= strcmp(c.snaps[i].name, snap) == 0;
  cc_clone_free(&c);
  return found;
}

/* 4096 files is the limit (CC_MAX_DEPTH): a snapshot that would pass it is refused up front,
 * naming the clone and the depth, and changes nothing. */
Test(pool_live, depth_limit, .timeout = 300)
{
  char top[CC_UUID_STR], before[CC_UUID_STR];

  otu_io_nosync();
  /* vm1 is its top on the template's layer: 2 files.  4093 more make 4095. */
  top_of("vm1", top);
  for (int i = 0; i < CC_MAX_DEPTH - 3; i++)
    new_layer(top, top);
  set_top("vm1", top);
  cr_assert_eq(cc_snapshot_create(pool, "vm1", "last", NULL), 0, "%s", cc_error_get());
  top_of("vm1", before);
  cr_assert_eq(cc_snapshot_create(pool, "vm1", "one-too-many", NULL), -EMLINK);
  cr_assert(strstr(cc_error_get(), "vm1: its chain already has 4096 files, the limit is 4096"),
            "%s", cc_error_get());
  top_of("vm1", top);
  cr_assert_str_eq(top, before, "a refused snapshot changed the clone");
  cr_assert(!has_snap("vm1", "one-too-many"));
  /* In a list, the deep clone stops the others too: all or nothing. */
  cr_assert_eq(cc_snapshot_create(pool, "vm2,vm1", "both", NULL), -EMLINK);
  cr_assert(!has_snap("vm2", "both"));
}

Test(pool_live, several_clones_offline)
{
  char t1[CC_UUID_STR], t2[CC_UUID_STR];
  struct cc_clone c;

  top_of("vm1", t1);
  top_of("vm2", t2);
  cr_assert_eq(cc_snapshot_create(pool, "vm1,vm2", "m", "two disks"), 0, "%s", cc_error_get());
  cr_assert_eq(cc_pool_get_clone(pool, "vm1", &c), 0);
  cr_assert_eq(c.nsnaps, 1);
  cr_assert_str_eq(c.snaps[0].layer, t1, "vm1@m is vm1's old top");
  cr_assert_str_eq(c.snaps[0].description, "two disks");
  cc_clone_free(&c);
  cr_assert_eq(cc_pool_get_clone(pool, "vm2", &c), 0);
  cr_assert_str_eq(c.snaps[0].layer, t2);
  cc_clone_free(&c);

  /* Refusals change nothing on any clone of the list. */
  cr_assert_eq(cc_snapshot_create(pool, "vm1,vm1", "x", NULL), -EINVAL);
  cr_assert(strstr(cc_error_get(), "vm1: named twice"), "%s", cc_error_get());
  cr_assert_eq(cc_snapshot_create(pool, "vm2,nope", "x", NULL), -ENOENT);
  cr_assert_eq(cc_snapshot_create(pool, ",vm1", "x", NULL), -EINVAL);
  cr_assert_eq(cc_snapshot_create(pool, "vm1,", "x", NULL), -EINVAL);
  cr_assert_eq(cc_snapshot_create(pool, "vm2,vm1", "m", NULL), -EEXIST);
  cr_assert(!has_snap("vm1", "x") && !has_snap("vm2", "x"));
  /* A clone whose top someone holds stops the whole list. */
  {
    char path[4096];
    struct ovl_layer *l;
    top_of("vm2", t2);
    snprintf(path, sizeof path, "%s/layers/%s.cow", pooldir, t2);
    cr_assert_eq(ovl_open(path, OVL_RDWR, &l), 0, "%s", cc_error_get());
    cr_assert_eq(cc_snapshot_create(pool, "vm1,vm2", "held", NULL), -EBUSY);
    cr_assert(strstr(cc_error_get(), "vm2"), "%s", cc_error_get());
    ovl_close(l);
  }
  cr_assert(!has_snap("vm1", "held"));
  {
    struct cc_check_summary sum;
    cr_assert_eq(cc_pool_check(pool, NULL, 0, NULL, NULL, &sum), 0, "%s", cc_error_get());
    cr_assert_eq(sum.leaks, 0, "a refusal left files behind");
  }
}

static void
write_intent(const char *text)
{
  char path[4096];
  FILE *f;

  snprintf(path, sizeof path, "%s/tmp/intent-999999-0.snap", pooldir);
  f = fopen(path, "w");
  cr_assert(f);
  fputs(text, f);
  fclose(f);
}

static int
intent_exists(void)
{
  char path[4096];

  snprintf(path, sizeof path, "%s/tmp/intent-999999-0.snap", pooldir);
  return access(path, F_OK) == 0;
}

static void
record_top(const char *clone, char uuid[CC_UUID_STR])
{
  char path[4096], line[256];
  FILE *f;

  snprintf(path, sizeof path, "%s/clones/%s", pooldir, clone);
  f = fopen(path, "r");
  cr_assert(f);
  uuid[0] = '\0';
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "top %36s", uuid) == 1)
      break;
  fclose(f);
}

/* A crash between the intent and the records: readers see "after" on every clone, the next
 * operation writes the records and removes the intent. */
Test(pool_live, intent_is_the_commit_point)
{
  char t1[CC_UUID_STR], t2[CC_UUID_STR], n1[CC_UUID_STR], n2[CC_UUID_STR], got[CC_UUID_STR];
  char text[1024];
  struct cc_clone c;

  top_of("vm1", t1);
  top_of("vm2", t2);
  new_layer(t1, n1);
  new_layer(t2, n2);
  snprintf(text, sizeof text,
           "cowchain-intent 1\n"
           "snapshot vm1 %s %s m 2026-01-31T12:05:00Z %%\n"
           "snapshot vm2 %s %s m 2026-01-31T12:05:00Z before%%20upgrade\n",
           t1, n1, t2, n2);
  write_intent(text);

  /* Readers apply it. */
  top_of("vm1", got);
  cr_assert_str_eq(got, n1);
  cr_assert_eq(cc_pool_get_clone(pool, "vm2", &c), 0);
  cr_assert_str_eq(c.top, n2);
  cr_assert_eq(c.nsnaps, 1);
  cr_assert_str_eq(c.snaps[0].layer, t2);
  cr_assert_str_eq(c.snaps[0].description, "before upgrade");
  cc_clone_free(&c);
  record_top("vm1", got);
  cr_assert_str_eq(got, t1, "the record file itself is not rewritten by a reader");

  /* The next operation rolls it forward (here: one on another clone). */
  cr_assert_eq(cc_clone_create(pool, "vm3", "base", 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert(!intent_exists(), "the intent is still there");
  record_top("vm1", got);
  cr_assert_str_eq(got, n1);
  record_top("vm2", got);
  cr_assert_str_eq(got, n2);
  cr_assert(has_snap("vm1", "m") && has_snap("vm2", "m"));
  {
    struct cc_check_summary sum;
    cr_assert_eq(cc_pool_check(pool, NULL, 0, NULL, NULL, &sum), 0, "%s", cc_error_get());
    cr_assert_eq(sum.errors, 0);
    cr_assert_eq(sum.leaks, 0, "the new tops are live, the old ones snapshots");
  }
}

/* An intent whose old top is no longer the record's top changes nothing (already replaced, or
 * the clone moved on); a malformed one decides nothing and check reports it. */
Test(pool_live, stale_and_malformed_intents)
{
  char t1[CC_UUID_STR], n1[CC_UUID_STR], x[CC_UUID_STR], got[CC_UUID_STR], text[1024];
  struct cc_check_summary sum;

  top_of("vm1", t1);
  new_layer(t1, n1);
  new_layer(t1, x);
  snprintf(text, sizeof text, "cowchain-intent 1\nsnapshot vm1 %s %s m 2026-01-31T12:05:00Z %%\n",
           x, n1);
  write_intent(text); /* x is not vm1's top */
  top_of("vm1", got);
  cr_assert_str_eq(got, t1);
  cr_assert(!has_snap("vm1", "m"));

  write_intent("cowchain-intent 1\nsnapshot vm1 not-a-uuid\n");
  top_of("vm1", got);
  cr_assert_str_eq(got, t1);
  cr_assert_eq(cc_pool_check(pool, NULL, 0, NULL, NULL, &sum), -EUCLEAN);
  cr_assert(intent_exists(), "check never removes an intent");
  cr_assert_eq(cc_pool_check(pool, NULL, 1, NULL, NULL, &sum), -EUCLEAN);
  cr_assert(intent_exists(), "check --repair never removes an intent");
}
