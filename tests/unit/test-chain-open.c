/* SPDX-License-Identifier: BSD-3-Clause */
/* chain/: opening a chain, and every way a chain can be broken.  Each fault must be a clear
 * error naming the layer and the fault ("open: CHILD: parent REL: ..."), never a crash. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>

#include "common/error.h"
#include "tests/unit/util-chain.h"
#include "tests/unit/util-overlay.h"

#define MiB (1024u * 1024u)

static void
teardown(void)
{
  otu_dir_fini();
  cc_chain_set_max_depth(0);
}

TestSuite(chain_open, .init = otu_dir_init, .fini = teardown, .timeout = 120);

static char *
path(const char *name)
{
  return otu_join(otu_dir, name);
}

static void
make_raw(const char *name, uint64_t size, uint8_t fill)
{
  char *p = path(name);
  int fd = open(p, O_WRONLY | O_CREAT | O_EXCL, 0644);
  uint8_t buf[4096];

  cr_assert(fd >= 0);
  memset(buf, fill, sizeof buf);
  cr_assert_eq(ftruncate(fd, (off_t)size), 0);
  for (uint64_t off = 0; off < size; off += sizeof buf)
    cr_assert(pwrite(fd, buf, size - off < sizeof buf ? size - off : sizeof buf, (off_t)off) > 0);
  close(fd);
  free(p);
}

/* Opening must fail with `err` and a message containing every fragment. */
static void
expect_open_error(const char *name, unsigned flags, int err, const char *frag1, const char *frag2)
{
  char *p = path(name);
  struct cc_chain *c = (struct cc_chain *)1;
  int r = cc_chain_open(p, flags, &c);
  const char *msg = cc_error_get();

  cr_log_info("%s", msg);
  cr_assert_eq(r, -err, "open %s: expected %d (%s), got %d: %s", name, -err, strerror(err), r, msg);
  cr_assert_null(c);
  cr_assert_not_null(strstr(msg, frag1), "message \"%s\" lacks \"%s\"", msg, frag1);
  if (frag2)
    cr_assert_not_null(strstr(msg, frag2), "message \"%s\" lacks \"%s\"", msg, frag2);
  cr_assert_eq(cc_chain_index_count(), 0, "a failed open leaves no index behind");
  free(p);
}

Test(chain_open, single_layer_no_parent)
{
  char *p = path("a.cow");
  struct cc_chain *c;
  uint8_t buf[4096];

  ctu_layer(p, MiB, 0, OVL_PARENT_NONE, NULL, NULL, 0, NULL);
  c = ctu_open(p, CC_RDWR);
  cr_assert_eq(cc_chain_size(c), MiB);
  cr_assert_eq(cc_chain_depth(c), 1);
  cr_assert_eq(cc_chain_writable(c), 1);
  cr_assert_null(cc_chain_index_id(c), "a writable layer without parent has no frozen part");
  cr_assert_eq(cc_chain_block_size(c), 4096);
  memset(buf, 0xff, sizeof buf);
  cr_assert_eq(cc_chain_pread(c, buf, sizeof buf, MiB - sizeof buf), 0);
  for (size_t i = 0; i < sizeof buf; i++)
    cr_assert_eq(buf[i], 0);
  cr_assert_eq(cc_chain_close(c), 0);
  free(p);
}

Test(chain_open, missing_parent)
{
  char *p = path("child.cow");
  uint8_t u[OVL_UUID_LEN] = {1};

  ctu_layer(p, MiB, 0, OVL_PARENT_LAYER, "gone.cow", u, MiB, NULL);
  expect_open_error("child.cow", CC_RDWR, ENOENT, "child.cow: parent gone.cow: missing", NULL);
  expect_open_error("child.cow", 0, ENOENT, "child.cow: parent gone.cow: missing", NULL);
  free(p);
}

Test(chain_open, missing_raw_parent_in_other_directory)
{
  char *sub = path("layers");
  char *p = path("layers/child.cow");

  cr_assert_eq(mkdir(sub, 0755), 0);
  ctu_layer(p, MiB, 0, OVL_PARENT_RAW, "../images/t.raw", NULL, MiB, NULL);
  expect_open_error("layers/child.cow", CC_RDWR, ENOENT, "parent ../images/t.raw: missing",
                    "layers/child.cow");
  free(sub);
  free(p);
}

Test(chain_open, missing_top)
{
  expect_open_error("nothing.cow", CC_RDWR, ENOENT, "nothing.cow", NULL);
  expect_open_error("nothing.cow", 0, ENOENT, "nothing.cow", NULL);
  expect_open_error("nothing.raw", CC_RAW, ENOENT, "nothing.raw", NULL);
}

Test(chain_open, uuid_mismatch)
{
  char *a = path("a.cow"), *b = path("b.cow");
  uint8_t ua[OVL_UUID_LEN];

  ctu_layer(a, MiB, 0, OVL_PARENT_NONE, NULL, NULL, 0, ua);
  ctu_layer(b, MiB, 0, OVL_PARENT_LAYER, "a.cow", ua, MiB, NULL);
  /* Replace a.cow by another layer of the same size: same name, different identity. */
  cr_assert_eq(unlink(a), 0);
  ctu_layer(a, MiB, 0, OVL_PARENT_NONE, NULL, NULL, 0, NULL);
  expect_open_error("b.cow", CC_RDWR, EINVAL, "b.cow: parent a.cow: uuid mismatch", "expected");
  expect_open_error("b.cow", 0, EINVAL, "b.cow: parent a.cow: uuid mismatch", NULL);
  free(a);
  free(b);
}

Test(chain_open, layer_size_changed)
{
  char *a = path("a.cow"), *b = path("b.cow");
  uint8_t ua[OVL_UUID_LEN];

  ctu_layer(a, MiB, 0, OVL_PARENT_NONE, NULL, NULL, 0, ua);
  /* b records a's size as 512 KiB: a link made against another size. */
  ctu_layer(b, MiB, 0, OVL_PARENT_LAYER, "a.cow", ua, MiB / 2, NULL);
  expect_open_error("b.cow", CC_RDWR, EINVAL, "parent a.cow: size changed",
                    "(was 524288, now 1048576)");
  free(a);
  free(b);
}

Test(chain_open, raw_size_changed_larger)
{
  char *raw = path("t.raw"), *b = path("b.cow");

  make_raw("t.raw", MiB, 0x11);
  ctu_layer(b, 2 * MiB, 0, OVL_PARENT_RAW, "t.raw", NULL, MiB, NULL);
  cr_assert_eq(truncate(raw, 2 * MiB), 0);
  expect_open_error("b.cow", CC_RDWR, EINVAL, "b.cow: parent t.raw: size changed",
                    "(was 1048576, now 2097152)");
  free(raw);
  free(b);
}

Test(chain_open, raw_bottom_smaller_than_recorded)
{
  char *raw = path("t.raw"), *b = path("b.cow"), *c = path("c.cow");
  uint8_t ub[OVL_UUID_LEN];

  make_raw("t.raw", MiB, 0x11);
  ctu_layer(b, MiB, 0, OVL_PARENT_RAW, "t.raw", NULL, MiB, ub);
  ctu_layer(c, MiB, 0, OVL_PARENT_LAYER, "b.cow", ub, MiB, NULL);
  cr_assert_eq(truncate(raw, MiB - 4096), 0);
  /* The fault is two links down: the message names the layer whose link broke. */
  expect_open_error("c.cow", CC_RDWR, EINVAL, "b.cow: parent t.raw: size changed",
                    "(was 1048576, now 1044480)");
  expect_open_error("c.cow", 0, EINVAL, "b.cow: parent t.raw: size changed", NULL);
  free(raw);
  free(b);
  free(c);
}

/* a -> b -> a, made with ovl_set_parent (a layer cannot be created on its own child). */
Test(chain_open, cycle_of_two)
{
  char *a = path("a.cow"), *b = path("b.cow");
  uint8_t ua[OVL_UUID_LEN], ub[OVL_UUID_LEN];
  struct ovl_layer *l;

  ctu_layer(a, MiB, 0, OVL_PARENT_NONE, NULL, NULL, 0, ua);
  ctu_layer(b, MiB, 0, OVL_PARENT_LAYER, "a.cow", ua, MiB, ub);
  cr_assert_eq(ovl_open(a, OVL_RDWR, &l), 0, "%s", cc_error_get());
  struct ovl_parent par = {.kind = OVL_PARENT_LAYER, .path = "b.cow", .size = MiB};
  memcpy(par.uuid, ub, OVL_UUID_LEN);
  cr_assert_eq(ovl_set_parent(l, &par), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0);
  expect_open_error("b.cow", CC_RDWR, ELOOP, "cycle", "b.cow");
  expect_open_error("b.cow", 0, ELOOP, "cycle", NULL);
  expect_open_error("a.cow", 0, ELOOP, "cycle", NULL);
  free(a);
  free(b);
}

Test(chain_open, cycle_self)
{
  char *a = path("a.cow");
  uint8_t ua[OVL_UUID_LEN];
  struct ovl_layer *l;

  ctu_layer(a, MiB, 0, OVL_PARENT_NONE, NULL, NULL, 0, ua);
  cr_assert_eq(ovl_open(a, OVL_RDWR, &l), 0, "%s", cc_error_get());
  struct ovl_parent par = {.kind = OVL_PARENT_LAYER, .path = "a.cow", .size = MiB};
  memcpy(par.uuid, ua, OVL_UUID_LEN);
  cr_assert_eq(ovl_set_parent(l, &par), 0, "%s", cc_error_get());
  cr_assert_eq(ovl_close(l), 0);
  expect_open_error("a.cow", CC_RDWR, ELOOP, "a.cow: parent a.cow: cycle", NULL);
  expect_open_error("a.cow", 0, ELOOP, "a.cow: parent a.cow: cycle", NULL);
  free(a);
}

/* Depth limit, lowered through the test hook: 8 files open, 9 do not. */
Test(chain_open, too_deep)
{
  uint8_t u[OVL_UUID_LEN];
  char name[32], rel[32];

  make_raw("t.raw", 64 * 1024, 0x22);
  for (int i = 0; i < 8; i++) {
    char *p;

    snprintf(name, sizeof name, "l%d.cow", i);
    snprintf(rel, sizeof rel, "l%d.cow", i - 1);
    p = path(name);
    if (i == 0)
      ctu_layer(p, 64 * 1024, 0, OVL_PARENT_RAW, "t.raw", NULL, 64 * 1024, u);
    else
      ctu_layer(p, 64 * 1024, 0, OVL_PARENT_LAYER, rel, u, 64 * 1024, u);
    free(p);
  }
  cc_chain_set_max_depth(9);
  {
    char *p = path("l7.cow");
    struct cc_chain *c = ctu_open(p, CC_RDWR);

    cr_assert_eq(cc_chain_depth(c), 9);
    cc_chain_close(c);
    free(p);
  }
  cc_chain_set_max_depth(8);
  expect_open_error("l7.cow", CC_RDWR, ELOOP, "deeper than 8 layers", NULL);
  expect_open_error("l7.cow", 0, ELOOP, "deeper than 8 layers", NULL);
  /* l6 is 8 files deep with the raw image: it still opens. */
  {
    char *p = path("l6.cow");
    struct cc_chain *c = ctu_open(p, 0);

    cr_assert_eq(cc_chain_depth(c), 8);
    cc_chain_close(c);
    free(p);
  }
}

Test(chain_open, garbage_parent)
{
  char *b = path("b.cow");
  uint8_t u[OVL_UUID_LEN] = {7};

  make_raw("a.cow", 64 * 1024, 0x33); /* not a layer at all */
  ctu_layer(b, 64 * 1024, 0, OVL_PARENT_LAYER, "a.cow", u, 64 * 1024, NULL);
  {
    char *p = path("b.cow");
    struct cc_chain *c = NULL;
    int r = cc_chain_open(p, CC_RDWR, &c);

    cr_assert_lt(r, 0);
    cr_assert_null(c);
    cr_assert_not_null(strstr(cc_error_get(), "b.cow: parent a.cow: "), "%s", cc_error_get());
    free(p);
  }
  free(b);
}

Test(chain_open, raw_template_readonly)
{
  char *raw = path("t.raw");
  struct cc_chain *c;
  uint8_t buf[8192];
  int r;

  make_raw("t.raw", 3 * 4096 + 1000, 0x5a); /* any size: raw images need not be aligned */
  c = ctu_open(raw, CC_RAW);
  cr_assert_eq(cc_chain_size(c), 3 * 4096 + 1000);
  cr_assert_eq(cc_chain_depth(c), 1);
  cr_assert_eq(cc_chain_writable(c), 0);
  cr_assert_eq(cc_chain_pread(c, buf, 1000 + 4096, 2 * 4096), 0, "%s", cc_error_get());
  for (size_t i = 0; i < 1000 + 4096; i++)
    cr_assert_eq(buf[i], 0x5a);
  r = cc_chain_pwrite(c, buf, 512, 0, 0);
  cr_assert_eq(r, -EPERM);
  cr_assert_not_null(strstr(cc_error_get(), "read-only"), "%s", cc_error_get());
  cr_assert_eq(cc_chain_zero(c, 512, 0, 0), -EPERM);
  cr_assert_eq(cc_chain_flush(c), 0);
  cr_assert_eq(cc_chain_pread(c, buf, 2, 3 * 4096 + 999), -EINVAL, "beyond the end");
  cc_chain_close(c);

  {
    struct cc_chain *w = NULL;

    cr_assert_eq(cc_chain_open(raw, CC_RAW | CC_RDWR, &w), -EPERM);
    cr_assert_null(w);
  }
  free(raw);
}

Test(chain_open, readonly_layer_refuses_writes)
{
  char *a = path("a.cow");
  struct cc_chain *c;
  uint8_t buf[512] = {0};

  ctu_layer(a, MiB, 0, OVL_PARENT_NONE, NULL, NULL, 0, NULL);
  c = ctu_open(a, 0);
  cr_assert_eq(cc_chain_writable(c), 0);
  cr_assert_eq(cc_chain_pwrite(c, buf, sizeof buf, 0, 0), -EPERM);
  cr_assert_not_null(strstr(cc_error_get(), "a.cow"), "%s", cc_error_get());
  cr_assert_eq(cc_chain_zero(c, sizeof buf, 0, CC_MAY_TRIM), -EPERM);
  cr_assert_eq(cc_chain_flush(c), 0);
  cc_chain_close(c);
  free(a);
}

/* A frozen layer is locked shared: nobody may open it for writing while a chain uses it, and
 * a writable top is exclusive. */
Test(chain_open, locks)
{
  char *a = path("a.cow"), *b = path("b.cow");
  uint8_t ua[OVL_UUID_LEN];
  struct cc_chain *cb, *x = NULL;

  ctu_layer(a, MiB, 0, OVL_PARENT_NONE, NULL, NULL, 0, ua);
  ctu_layer(b, MiB, 0, OVL_PARENT_LAYER, "a.cow", ua, MiB, NULL);
  cb = ctu_open(b, CC_RDWR);
  cr_assert_eq(cc_chain_open(a, CC_RDWR, &x), -EBUSY, "frozen parent opened for writing");
  cr_assert_null(x);
  cr_assert_eq(cc_chain_open(b, CC_RDWR, &x), -EBUSY, "second writer");
  cr_assert_eq(cc_chain_open(b, 0, &x), -EBUSY, "reader of a layer being written");
  cc_chain_close(cb);
  x = ctu_open(b, CC_RDWR);
  cc_chain_close(x);
  free(a);
  free(b);
}

Test(chain_open, out_of_range)
{
  char *a = path("a.cow");
  struct cc_chain *c;
  uint8_t buf[1024];

  ctu_layer(a, MiB, 0, OVL_PARENT_NONE, NULL, NULL, 0, NULL);
  c = ctu_open(a, CC_RDWR);
  cr_assert_eq(cc_chain_pread(c, buf, 1024, MiB - 512), -EINVAL);
  cr_assert_eq(cc_chain_pwrite(c, buf, 1024, MiB - 512, 0), -EINVAL);
  cr_assert_eq(cc_chain_zero(c, 1024, MiB - 512, 0), -EINVAL);
  cr_assert_eq(cc_chain_pread(c, buf, 0, MiB), 0, "empty read at the end is fine");
  cr_assert_eq(cc_chain_pread(c, buf, 1, UINT64_MAX), -EINVAL);
  cc_chain_close(c);
  free(a);
}

/* The real limit: CC_MAX_DEPTH files open (raw image + 4095 layers), one more does not.
 * Layers are created without fdatasync (otu_io_nosync) to keep this quick. */
Test(chain_open, too_deep_real)
{
  struct rlimit rl;
  uint8_t u[OVL_UUID_LEN];
  char name[32], rel[32];

  cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_max < CC_MAX_DEPTH + 100)
    cr_skip_test("hard RLIMIT_NOFILE %lu is below the depth limit", (unsigned long)rl.rlim_max);
  otu_io_nosync();
  make_raw("t.raw", 4096, 0x22);
  for (int i = 0; i < CC_MAX_DEPTH; i++) {
    char *p;

    snprintf(name, sizeof name, "l%d.cow", i);
    snprintf(rel, sizeof rel, "l%d.cow", i - 1);
    p = path(name);
    if (i == 0)
      ctu_layer(p, 16384, 16384, OVL_PARENT_RAW, "t.raw", NULL, 4096, u);
    else
      ctu_layer(p, 16384, 16384, OVL_PARENT_LAYER, rel, u, 16384, u);
    free(p);
  }
  /* l4094 is 4096 files deep with the raw image */
  {
    char *p = path("l4094.cow");
    struct cc_chain *c = ctu_open(p, CC_RDWR);
    uint8_t buf[16384];

    cr_assert_eq(cc_chain_depth(c), CC_MAX_DEPTH);
    cr_assert_eq(cc_chain_pread(c, buf, sizeof buf, 0), 0, "%s", cc_error_get());
    for (size_t i = 0; i < sizeof buf; i++)
      cr_assert_eq(buf[i], i < 4096 ? 0x22 : 0, "byte %zu", i);
    cc_chain_close(c);
    free(p);
  }
  snprintf(name, sizeof name, "l%d.cow", CC_MAX_DEPTH - 1);
  expect_open_error(name, CC_RDWR, ELOOP, "deeper than 4096 layers", NULL);
  expect_open_error(name, 0, ELOOP, "deeper than 4096 layers", NULL);
}
