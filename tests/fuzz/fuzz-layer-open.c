/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: a layer file's bytes, fully attacker-controlled.
 *
 * The file is opened exactly as the plugin and the CLI open layers (read-only, validated), and
 * if that succeeds every read API is driven over the whole virtual disk, so a map that passed
 * validation but still points somewhere wrong shows up as an ASan report.  The promise under
 * test: malformed input is a clear error, never a crash or an out-of-bounds access.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/error.h"
#include "overlay/overlay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char path[64];
  struct ovl_layer *l;
  int fd = memfd_create("fuzz-layer", MFD_CLOEXEC);

  if (fd < 0)
    abort();
  if (size && write(fd, data, size) != (ssize_t)size)
    abort();
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  if (ovl_open(path, OVL_RDONLY | OVL_NOLOCK, &l) == 0) {
    struct ovl_info info;
    struct ovl_extent ext[64];
    uint64_t vsize = ovl_virtual_size(l), pos = 0;
    static uint8_t buf[1 << 20];

    ovl_get_info(l, &info);
    /* walk the whole map, reading every extent (bounded: at most 1 MiB per extent read) */
    for (int rounds = 0; pos < vsize && rounds < 10000; rounds++) {
      int n = ovl_map(l, pos, vsize - pos, ext, 64);
      if (n <= 0)
        abort(); /* a valid layer always maps a non-empty range */
      for (int k = 0; k < n; k++) {
        uint64_t len = ext[k].length < sizeof buf ? ext[k].length : sizeof buf;
        (void)ovl_pread(l, buf, len, ext[k].offset, NULL, NULL);
      }
      pos = ext[n - 1].offset + ext[n - 1].length;
    }
    ovl_close(l);
  } else if (cc_error_get()[0] == '\0') {
    abort(); /* every refusal must say why */
  }
  cc_error_clear();
  close(fd);
  return 0;
}
