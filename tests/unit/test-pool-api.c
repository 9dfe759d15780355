/* SPDX-License-Identifier: BSD-3-Clause */
/* Unit tests of the pool API (pool/pool.h): names, records, exports, and the data guarantees
 * of snapshot create / revert / delete (merge) and full clone against a byte model.
 *
 * The model is the simplest possible oracle: one malloc'd byte array per state (the clone's
 * current disk and each snapshot), updated with memcpy/memset as the chain is written.  After
 * every pool operation every export must read back exactly its array.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pool/pool.h"
#include "common/error.h"
#include "tests/unit/util-overlay.h"
#include "tests/unit/util-pool.h"

#define DISK (4u << 20)

static char *pooldir;
static struct cc_pool *pool;

static void
setup(void)
{
  ptu_pool_new(&pooldir, &pool);
}

static void
teardown(void)
{
  ptu_pool_remove(&pooldir, &pool);
}

TestSuite(pool, .init = setup, .fini = teardown);

Test(pool, names)
{
  char name[CC_NAME_MAX + 1], snap[CC_NAME_MAX + 1], longname[70];

  cr_assert(cc_name_valid("vm1"));
  cr_assert(cc_name_valid("a.b_c-d"));
  cr_assert(cc_name_valid("9"));
  cr_assert(!cc_name_valid(""));
  cr_assert(!cc_name_valid(".."));
  cr_assert(!cc_name_valid("-x"));
  cr_assert(!cc_name_valid("a/b"));
  cr_assert(!cc_name_valid("a b"));
  cr_assert(!cc_name_valid("a\nb"));
  cr_assert(!cc_name_valid("a@b"));
  memset(longname, 'a', 64);
  longname[64] = '\0';
  cr_assert(cc_name_valid(longname));
  longname[64] = 'a';
  longname[65] = '\0';
  cr_assert(!cc_name_valid(longname));

  cr_assert_eq(cc_export_name_parse("vm1", name, snap), 0);
  cr_assert_str_eq(name, "vm1");
  cr_assert_str_eq(snap, "");
  cr_assert_eq(cc_export_name_parse("vm1@pre-up", name, snap), 0);
  cr_assert_str_eq(name, "vm1");
  cr_assert_str_eq(snap, "pre-up");
  cr_assert_eq(cc_export_name_parse("vm1@", name, snap), -EINVAL);
  cr_assert_eq(cc_export_name_parse("@s", name, snap), -EINVAL);
  cr_assert_eq(cc_export_name_parse("a@b@c", name, snap), -EINVAL);
  cr_assert_eq(cc_export_name_parse("../etc", name, snap), -EINVAL);
  cr_assert_eq(cc_export_name_parse(longname, name, snap), -EINVAL);
  cr_assert(strstr(cc_error_get(), "64") != NULL, "%s", cc_error_get());
}

Test(pool, records_round_trip)
{
  const char *desc = "100% sure: tabs\there, newline\nthere, UTF-8 \xc3\xa9, \"quotes\"";
  struct cc_template t;
  struct cc_clone c;

  cr_assert_eq(cc_template_create(pool, "base", 1000), 0, "%s", cc_error_get());
  cr_assert_eq(cc_pool_get_template(pool, "base", &t), 0);
  cr_assert_eq(t.size, 1024);
  cr_assert_eq(t.kind, CC_TEMPLATE_LAYER);
  cr_assert_eq(cc_clone_create(pool, "vm1", "base", 0, NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(cc_snapshot_create(pool, "vm1", "s1", desc), 0, "%s", cc_error_get());
  cr_assert_eq(cc_snapshot_create(pool, "vm1", "s2", NULL), 0, "%s", cc_error_get());
  cr_assert_eq(cc_pool_get_clone(pool, "vm1", &c), 0);
  cr_assert_eq(c.nsnaps, 2);
  cr_assert_str_eq(c.snaps[0].name, "s1");
  cr_assert_str_eq(c.snaps[0].description, desc);
  cr_assert_str_eq(c.snaps[1].description, "");
  cr_assert_eq(c.size, 1024);
  cr_assert_str_neq(c.top, c.snaps[1].layer);
  cc_clone_free(&c);

  cr_assert_eq(cc_pool_get_clone(pool, "nope", &c), -ENOENT);
  cr_assert_eq(cc_snapshot_create(pool, "vm1", "s1", NULL), -EEXIST);
  cr_assert_eq(cc_clone_create(pool, "base", "base", 0, NULL, NULL), -EEXIST);
  cr_assert_eq(cc_template_create(pool, "vm1", 512), -EEXIST);
}

/* Rewrite a record file under the pool by hand. */
static void
put_record(const char *sub, const char *name, const char *text)
{
  char path[4096];
  FILE *f;

  snprintf(path, sizeof path, "%s/%s/%s", pooldir, sub, name);
  f = fopen(path, "w");
  cr_assert_not_null(f);
  fputs(text, f);
  fclose(f);
}

Test(pool, malformed_records_are_refused)
{
  struct cc_clone c;
  struct cc_template t;

  put_record("clones", "bad1",
             "cowchain-clone 1\ntop 12345\ncreated 2026-01-01T00:00:00Z\n"
             "size 512\n");
  cr_assert_eq(cc_pool_get_clone(pool, "bad1", &c), -EUCLEAN);
  cr_assert(strstr(cc_error_get(), "bad1") && strstr(cc_error_get(), "line 2"), "%s",
            cc_error_get());
  put_record("clones", "bad2", "cowchain-clone 1\ntop ../../../../etc/passwd\nsize 512\n");
  cr_assert_eq(cc_pool_get_clone(pool, "bad2", &c), -EUCLEAN);
  put_record("clones", "bad3", "cowchain-clone 2\n");
  cr_assert_eq(cc_pool_get_clone(pool, "bad3", &c), -EUCLEAN);
  put_record("clones", "bad4",
             "cowchain-clone 1\ntop 9d8a4117-2c5c-4107-91fc-f07faf60fc03\n"
             "size 512\nfuture-key x\n");
  cr_assert_eq(cc_pool_get_clone(pool, "bad4", &c), -EUCLEAN);
  put_record("templates", "t1", "cowchain-template 1\nkind qcow9\nsize 512\n");
  cr_assert_eq(cc_pool_get_template(pool, "t1", &t), -EUCLEAN);
}

Test(pool, exports)
{
  struct cc_export_info *e;
  enum cc_export_kind kind;
  struct cc_chain *c;
  struct cc_export_desc desc;
  char path[4096];
  size_t n;

  cr_assert_eq(cc_template_create(pool, "tb", 1 << 20), 0);
  cr_assert_eq(cc_clone_create(pool, "vm2", "tb", 0, NULL, NULL), 0);
  cr_assert_eq(cc_clone_create(pool, "vm1", "tb", 0, NULL, NULL), 0);
  cr_assert_eq(cc_snapshot_create(pool, "vm1", "s1", "hello"), 0);
  cr_assert_eq(cc_pool_list_exports(pool, &e, &n), 0, "%s", cc_error_get());
  cr_assert_eq(n, 4);
  cr_assert_str_eq(e[0].name, "tb");
  cr_assert_eq(e[0].kind, CC_EXPORT_TEMPLATE);
  cr_assert_str_eq(e[1].name, "vm1");
  cr_assert_eq(e[1].kind, CC_EXPORT_CLONE);
  cr_assert_str_eq(e[2].name, "vm1@s1");
  cr_assert_eq(e[2].kind, CC_EXPORT_SNAPSHOT);
  cr_assert(strstr(e[2].description, "hello"));
  cr_assert_str_eq(e[3].name, "vm2");
  cr_assert_eq(e[3].size, 1 << 20);
  free(e);

  cr_assert_eq(cc_pool_resolve_export(pool, "vm1@s1", path, sizeof path, &kind), 0);
  cr_assert_eq(kind, CC_EXPORT_SNAPSHOT);
  cr_assert(strstr(path, "/layers/") && strstr(path, ".cow"));
  cr_assert_eq(cc_pool_resolve_export(pool, "vm1@nope", path, sizeof path, &kind), -ENOENT);
  cr_assert_eq(cc_pool_resolve_export(pool, "../x", path, sizeof path, &kind), -EINVAL);

  /* A snapshot and a template are read-only whatever is asked; a clone is writable. */
  cr_assert_eq(cc_pool_open_export(pool, "vm1@s1", 0, CC_IO_SYNC, &c, &desc), 0, "%s",
               cc_error_get());
  cr_assert(!cc_chain_writable(c));
  cr_assert_eq(desc.kind, CC_EXPORT_SNAPSHOT);
  cr_assert_eq(desc.readonly, 1);
  cr_assert_eq(cc_pool_resolve_export(pool, "vm1@s1", path, sizeof path, &kind), 0);
  cr_assert_str_eq(desc.top, path);
  cc_chain_close(c);
  cr_assert_eq(cc_pool_open_export(pool, "tb", 0, CC_IO_SYNC, &c, NULL), 0, "%s", cc_error_get());
  cr_assert(!cc_chain_writable(c));
  cc_chain_close(c);
  cr_assert_eq(cc_pool_open_export(pool, "vm1", 0, CC_IO_SYNC, &c, &desc), 0, "%s", cc_error_get());
  cr_assert(cc_chain_writable(c));
  /* ... and says what it opened: the clone's current top, read-write. */
  cr_assert_eq(cc_pool_resolve_export(pool, "vm1", path, sizeof path, &kind), 0);
  cr_assert_str_eq(desc.top, path);
  cr_assert_str_eq(desc.name, "vm1");
  cr_assert_eq(desc.kind, CC_EXPORT_CLONE);
  cr_assert_eq(desc.readonly, 0);
  /* ... and while it is open, snapshotting it is refused with the reason. */
  cr_assert_eq(cc_snapshot_create(pool, "vm1", "s2", NULL), -EBUSY);
  cr_assert(strstr(cc_error_get(), "in use"), "%s", cc_error_get());
  cc_chain_close(c);
  cr_assert_eq(cc_pool_open_export(pool, "vm1", 1, CC_IO_SYNC, &c, &desc), 0);
  cr_assert(!cc_chain_writable(c));
  cr_assert_eq(desc.readonly, 1);
  /* A failed open names the export first, whatever chain/ said about the file. */
  cr_assert_eq(cc_pool_open_export(pool, "vm1@nope", 0, CC_IO_SYNC, &c, &desc), -ENOENT);
  cr_assert(strstr(cc_error_get(), "open: vm1@nope: "), "%s", cc_error_get());
  cc_chain_close(c);
}

/* ---- data model ---------------------------------------------------------------------------- */

static uint8_t *
model_dup(const uint8_t *m)
{
  uint8_t *d = malloc(DISK);
  cr_assert_not_null(d);
  memcpy(d, m, DISK);
  return d;
}

/* Random writes and zeroes on clone `name`, applied to model m too. */
static void
scribble(const char *name, uint8_t *m, unsigned seed)
{
  struct cc_chain *c;
  uint8_t buf[70000];
  int i;

  srand(seed);
  cr_assert_eq(cc_pool_open_export(pool, name, 0, CC_IO_SYNC, &c, NULL), 0, "%s", cc_error_get());
  for (i = 0; i < 40; i++) {
    uint64_t len = 1 + (uint64_t)rand() % sizeof buf;
    uint64_t off = (uint64_t)rand() % (DISK - len);
    if (rand() % 4 == 0) {
      cr_assert_eq(cc_chain_zero(c, len, off, (i & 1) ? CC_MAY_TRIM : 0), 0, "%s", cc_error_get());
      memset(m + off, 0, len);
    } else {
      memset(buf, rand() & 0xff, len);
      buf[0] ^= (uint8_t)i;
      cr_assert_eq(cc_chain_pwrite(c, buf, len, off, 0), 0, "%s", cc_error_get());
      memcpy(m + off, buf, len);
    }
  }
  cr_assert_eq(cc_chain_close(c), 0, "%s", cc_error_get());
}

static void
expect(const char *export_name, const uint8_t *m)
{
  struct cc_chain *c;
  uint8_t *buf = malloc(DISK);

  cr_assert_not_null(buf);
  cr_assert_eq(cc_pool_open_export(pool, export_name, 1, CC_IO_SYNC, &c, NULL), 0, "%s: %s",
               export_name, cc_error_get());
  cr_assert_eq(cc_chain_size(c), DISK);
  cr_assert_eq(cc_chain_pread(c, buf, DISK, 0), 0, "%s", cc_error_get());
  cc_chain_close(c);
  for (size_t i = 0; i < DISK; i++)
    if (buf[i] != m[i])
      cr_assert_fail("%s: byte %zu is %#x, expected %#x", export_name, i, buf[i], m[i]);
  free(buf);
}

Test(pool, snapshot_tree_merge_keeps_every_state, .timeout = 60)
{
  uint8_t *cur = calloc(1, DISK), *s1, *s2, *s3, *v2;
  struct cc_check_summary sum;

  cr_assert_eq(cc_template_create(pool, "blank", DISK), 0);
  cr_assert_eq(cc_clone_create(pool, "vm", "blank", 0, NULL, NULL), 0);
  scribble("vm", cur, 1);
  cr_assert_eq(cc_snapshot_create(pool, "vm", "s1", NULL), 0, "%s", cc_error_get());
  s1 = model_dup(cur);
  scribble("vm", cur, 2);
  cr_assert_eq(cc_snapshot_create(pool, "vm", "s2", NULL), 0, "%s", cc_error_get());
  s2 = model_dup(cur);
  scribble("vm", cur, 3);
  /* Revert to s1: s2 stays; write a branch; snapshot it. */
  cr_assert_eq(cc_snapshot_revert(pool, "vm", "s1"), 0, "%s", cc_error_get());
  memcpy(cur, s1, DISK);
  expect("vm", cur);
  scribble("vm", cur, 4);
  cr_assert_eq(cc_snapshot_create(pool, "vm", "s3", NULL), 0, "%s", cc_error_get());
  s3 = model_dup(cur);
  scribble("vm", cur, 5);
  /* Another clone on s2, with its own writes. */
  cr_assert_eq(cc_clone_create(pool, "vm2", "vm@s2", 0, NULL, NULL), 0, "%s", cc_error_get());
  v2 = model_dup(s2);
  scribble("vm2", v2, 6);
  expect("vm@s1", s1);
  expect("vm@s2", s2);
  expect("vm@s3", s3);
  expect("vm", cur);
  expect("vm2", v2);

  /* s1 has two children (s2's and s3's layers): merge into both. */
  cr_assert_eq(cc_snapshot_delete(pool, "vm", "s1", NULL, NULL), 0, "%s", cc_error_get());
  expect("vm@s2", s2);
  expect("vm@s3", s3);
  expect("vm", cur);
  expect("vm2", v2);
  /* s2's only child is vm2's top, another clone. */
  cr_assert_eq(cc_snapshot_delete(pool, "vm", "s2", NULL, NULL), 0, "%s", cc_error_get());
  expect("vm2", v2);
  expect("vm@s3", s3);
  /* s3's child is vm's top. */
  cr_assert_eq(cc_snapshot_delete(pool, "vm", "s3", NULL, NULL), 0, "%s", cc_error_get());
  expect("vm", cur);
  expect("vm2", v2);

  /* A full clone is the same bytes, standalone. */
  cr_assert_eq(cc_snapshot_create(pool, "vm", "last", NULL), 0, "%s", cc_error_get());
  cr_assert_eq(cc_clone_create(pool, "full", "vm@last", 1, NULL, NULL), 0, "%s", cc_error_get());
  expect("full", cur);
  cr_assert_eq(cc_clone_delete(pool, "vm"), 0, "%s", cc_error_get());
  expect("full", cur);
  expect("vm2", v2);

  cr_assert_eq(cc_pool_check(pool, NULL, 0, NULL, NULL, &sum), 0, "%s", cc_error_get());
  cr_assert_eq(sum.errors, 0);
  cr_assert_eq(sum.leaks, 0);
  free(cur);
  free(s1);
  free(s2);
  free(s3);
  free(v2);
}

Test(pool, check_finds_faults_and_repairs_leftovers)
{
  struct cc_check_summary sum;
  struct cc_clone c;
  char path[4096];

  cr_assert_eq(cc_template_create(pool, "t", 1 << 20), 0);
  cr_assert_eq(cc_clone_create(pool, "vm", "t", 0, NULL, NULL), 0);
  cr_assert_eq(cc_pool_check(pool, NULL, 0, NULL, NULL, &sum), 0, "%s", cc_error_get());
  cr_assert_eq(sum.leaks + sum.errors, 0);

  /* A leftover layer and a stale tmp file (pid 999999999 does not exist). */
  snprintf(path, sizeof path, "%s/layers/00000000-0000-4000-8000-000000000001.cow", pooldir);
  {
    struct ovl_create_opts o = {.virtual_size = 1 << 20};
    uint8_t u[OVL_UUID_LEN];
    char tmpl[4096], us[37];
    snprintf(tmpl, sizeof tmpl, "%s/tmp/x.cow", pooldir);
    cr_assert_eq(ovl_create(tmpl, &o, u), 0);
    ovl_uuid_str(u, us);
    snprintf(path, sizeof path, "%s/layers/%s.cow", pooldir, us);
    cr_assert_eq(rename(tmpl, path), 0);
  }
  snprintf(path, sizeof path, "%s/tmp/rec-999999999-0", pooldir);
  close(open(path, O_CREAT | O_WRONLY, 0644));
  cr_assert_eq(cc_pool_check(pool, NULL, 0, NULL, NULL, &sum), 0, "%s", cc_error_get());
  cr_assert_eq(sum.errors, 0);
  cr_assert_eq(sum.leaks, 2);
  cr_assert_eq(cc_pool_check(pool, NULL, 1, NULL, NULL, &sum), 0, "%s", cc_error_get());
  cr_assert_eq(cc_pool_check(pool, NULL, 0, NULL, NULL, &sum), 0, "%s", cc_error_get());
  cr_assert_eq(sum.leaks, 0, "leaks left after repair: %u", sum.leaks);

  /* A missing top is an error naming the clone. */
  cr_assert_eq(cc_pool_get_clone(pool, "vm", &c), 0);
  snprintf(path, sizeof path, "%s/layers/%s.cow", pooldir, c.top);
  cc_clone_free(&c);
  cr_assert_eq(unlink(path), 0);
  cr_assert_eq(cc_pool_check(pool, "vm", 0, NULL, NULL, &sum), -EUCLEAN);
  cr_assert_geq(sum.errors, 1);
}

Test(pool, no_deletes_while_a_live_layer_is_unreadable)
{
  struct cc_clone c;
  char path[4096];

  cr_assert_eq(cc_template_create(pool, "t", 1 << 20), 0);
  cr_assert_eq(cc_clone_create(pool, "vm1", "t", 0, NULL, NULL), 0);
  cr_assert_eq(cc_snapshot_create(pool, "vm1", "s1", NULL), 0);
  cr_assert_eq(cc_clone_create(pool, "vm2", "vm1@s1", 0, NULL, NULL), 0);
  /* vm2's top sits on vm1@s1; with its header unreadable nobody can know that. */
  cr_assert_eq(cc_pool_get_clone(pool, "vm2", &c), 0);
  snprintf(path, sizeof path, "%s/layers/%s.cow", pooldir, c.top);
  cc_clone_free(&c);
  cr_assert_eq(truncate(path, 100), 0);
  cr_assert_eq(cc_clone_delete(pool, "vm1"), -EUCLEAN);
  cr_assert(strstr(cc_error_get(), "cannot tell what depends"), "%s", cc_error_get());
  cr_assert_eq(cc_snapshot_delete(pool, "vm1", "s1", NULL, NULL), -EUCLEAN);
  cr_assert_eq(cc_template_delete(pool, "t"), -EUCLEAN);
  /* vm1@s1's layer is still there. */
  cr_assert_eq(cc_pool_resolve_export(pool, "vm1@s1", path, sizeof path, NULL), 0);
  cr_assert_eq(access(path, F_OK), 0);
  /* The broken clone itself can be deleted; then everything else can. */
  cr_assert_eq(cc_clone_delete(pool, "vm2"), 0, "%s", cc_error_get());
  cr_assert_eq(cc_snapshot_delete(pool, "vm1", "s1", NULL, NULL), 0, "%s", cc_error_get());
  cr_assert_eq(cc_clone_delete(pool, "vm1"), 0, "%s", cc_error_get());
  cr_assert_eq(cc_template_delete(pool, "t"), 0, "%s", cc_error_get());
  snprintf(path, sizeof path, "%s/layers", pooldir);
  {
    DIR *d = opendir(path);
    struct dirent *e;
    int files = 0;
    cr_assert_not_null(d);
    while ((e = readdir(d)) != NULL)
      files += e->d_name[0] != '.';
    closedir(d);
    cr_assert_eq(files, 0, "%d layer files left after deleting everything", files);
  }
}

Test(pool, a_broken_template_nobody_uses_can_be_deleted)
{
  struct cc_template t;
  char path[4096];

  cr_assert_eq(cc_template_create(pool, "bad", 1 << 20), 0);
  cr_assert_eq(cc_template_create(pool, "good", 1 << 20), 0);
  cr_assert_eq(cc_clone_create(pool, "vm", "good", 0, NULL, NULL), 0);
  cr_assert_eq(cc_pool_get_template(pool, "bad", &t), 0);
  snprintf(path, sizeof path, "%s/layers/%s.cow", pooldir, t.layer);
  cr_assert_eq(truncate(path, 0), 0);
  cr_assert_eq(cc_template_delete(pool, "bad"), 0, "%s", cc_error_get());
  cr_assert_eq(access(path, F_OK), -1, "the broken layer was left behind");
  cr_assert_eq(cc_template_delete(pool, "good"), -EBUSY);
  cr_assert(strstr(cc_error_get(), "in use by vm"), "%s", cc_error_get());
}

/* check's findings, for tests that look at what it said. */
struct findings {
  unsigned errors;
  char text[4096];
};

static void
collect(void *opaque, int severity, const char *msg)
{
  struct findings *f = opaque;
  size_t len = strlen(f->text);

  if (severity == 2)
    f->errors++;
  snprintf(f->text + len, sizeof f->text - len, "%s\n", msg);
}

/* POOL.md: a cycle in the parent links is an error.  Two layers linked to each other under a
 * template record (the template's layer L1 made the child of a layer L2 that sits on L1), so
 * no clone's "writable top is a parent" check can find it for us. */
Test(pool, check_finds_a_parent_cycle)
{
  struct ovl_create_opts o = {.virtual_size = 1 << 20};
  struct findings f = {0};
  struct cc_check_summary sum;
  struct cc_template t;
  struct ovl_layer *l;
  uint8_t u1[OVL_UUID_LEN], u2[OVL_UUID_LEN];
  char p1[4096], p2[4096], tmp[4096], rel[64], us[37];

  cr_assert_eq(cc_template_create(pool, "t", 1 << 20), 0, "%s", cc_error_get());
  cr_assert_eq(cc_pool_get_template(pool, "t", &t), 0, "%s", cc_error_get());
  snprintf(p1, sizeof p1, "%s/layers/%s.cow", pooldir, t.layer);
  l = otu_open(p1, OVL_RDONLY);
  {
    struct ovl_info in;
    ovl_get_info(l, &in);
    memcpy(u1, in.uuid, OVL_UUID_LEN);
  }
  ovl_close(l);

  /* L2 on L1, named by its uuid like every pool layer. */
  snprintf(rel, sizeof rel, "%s.cow", t.layer);
  o.parent = (struct ovl_parent){.kind = OVL_PARENT_LAYER, .path = rel, .size = 1 << 20};
  memcpy(o.parent.uuid, u1, OVL_UUID_LEN);
  snprintf(tmp, sizeof tmp, "%s/tmp/l2.cow", pooldir);
  cr_assert_eq(ovl_create(tmp, &o, u2), 0, "%s", cc_error_get());
  ovl_uuid_str(u2, us);
  snprintf(p2, sizeof p2, "%s/layers/%s.cow", pooldir, us);
  cr_assert_eq(rename(tmp, p2), 0);
  cr_assert_eq(cc_pool_check(pool, NULL, 0, NULL, NULL, &sum), 0, "%s", cc_error_get());
  cr_assert_eq(sum.errors, 0, "the pool before the cycle is made");

  /* L1's parent becomes L2: L1 -> L2 -> L1. */
  snprintf(rel, sizeof rel, "%s.cow", us);
  l = otu_open(p1, OVL_RDWR);
  struct ovl_parent par = {.kind = OVL_PARENT_LAYER, .path = rel, .size = 1 << 20};
  memcpy(par.uuid, u2, OVL_UUID_LEN);
  cr_assert_eq(ovl_set_parent(l, &par), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());

  cr_assert_eq(cc_pool_check(pool, NULL, 0, collect, &f, &sum), -EUCLEAN,
               "check passed a pool with a parent cycle (%u layers checked, %u errors):\n%s",
               sum.layers_checked, sum.errors, f.text);
  cr_assert_geq(sum.errors, 1);
  cr_assert(strstr(f.text, "template t: cycle in the parent links") != NULL, "%s", f.text);
  /* Checking only the template finds it too. */
  cr_assert_eq(cc_pool_check(pool, "t", 0, NULL, NULL, &sum), -EUCLEAN);
  /* And --repair leaves both layers alone (errors are never repaired). */
  cr_assert_eq(cc_pool_check(pool, NULL, 1, NULL, NULL, &sum), -EUCLEAN);
  cr_assert_eq(access(p1, F_OK), 0);
  cr_assert_eq(access(p2, F_OK), 0);
}
