/* SPDX-License-Identifier: BSD-3-Clause */
/* Writes the fuzz seed corpus: small valid layer files in a few shapes (empty, with a parent,
 * data in several clusters, zeroed sub-clusters, 16 KiB and 128 KiB clusters). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "overlay/overlay.h"

static void
make(const char *dir, const char *name, uint64_t vsize, uint32_t cs, int parent, int writes)
{
  char path[4096];
  struct ovl_create_opts o = {.virtual_size = vsize, .cluster_size = cs};
  struct ovl_layer *l;
  uint8_t buf[6000];

  snprintf(path, sizeof path, "%s/%s", dir, name);
  remove(path);
  if (parent) {
    o.parent.kind = OVL_PARENT_LAYER;
    o.parent.path = "parent.cow";
    memset(o.parent.uuid, 0xab, sizeof o.parent.uuid);
    o.parent.size = vsize / 2;
  }
  if (ovl_create(path, &o, NULL) < 0 || ovl_open(path, OVL_RDWR, &l) < 0) {
    fprintf(stderr, "make-seeds: %s\n", cc_error_get());
    exit(1);
  }
  for (int i = 0; i < writes; i++) {
    memset(buf, 'a' + i, sizeof buf);
    uint64_t off = (uint64_t)i * 37 * 1024 % (vsize - sizeof buf);
    if (i % 3 == 2)
      ovl_zero(l, 20000, off, OVL_MAY_TRIM, NULL, NULL);
    else
      ovl_pwrite(l, buf, sizeof buf, off, 0, NULL, NULL);
  }
  if (ovl_close(l) < 0) {
    fprintf(stderr, "make-seeds: %s\n", cc_error_get());
    exit(1);
  }
}

int
main(int argc, char **argv)
{
  if (argc != 2) {
    fprintf(stderr, "usage: make-seeds DIR\n");
    return 2;
  }
  make(argv[1], "empty.cow", 1 << 20, 16384, 0, 0);
  make(argv[1], "parent.cow", 1 << 20, 16384, 1, 0);
  make(argv[1], "data16k.cow", 1 << 20, 16384, 1, 6);
  make(argv[1], "data128k.cow", 4 << 20, 0, 0, 4);
  make(argv[1], "odd-size.cow", (1 << 20) + 1536, 16384, 0, 3);
  return 0;
}
