/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: checking (and repairing) one layer file.
 *
 * Opening already proves the header and every map invariant (FORMAT.md 5.3); what is left to
 * find is space the map does not reference.  With the write ordering of FORMAT.md section 7 the
 * only such space a crash can leave is past the allocation frontier, and dropping it is always
 * safe, because nothing references it.
 */
#include "overlay/internal.h"

#include <inttypes.h>
#include <sys/stat.h>

int
ovl_check(const char *path, int repair, struct ovl_check_result *res)
{
  struct ovl_layer *l;
  int r;

  memset(res, 0, sizeof *res);
  r = ovl_open(path, repair ? OVL_RDWR : (OVL_RDONLY | OVL_NOLOCK), &l);
  if (r < 0)
    return r;
  res->dirty = (l->hdr.incompat & OVL_INCOMPAT_DIRTY) != 0;
  res->corrupt = (l->hdr.incompat & OVL_INCOMPAT_CORRUPT) != 0;
  if (l->file_size > l->frontier)
    res->leaked_bytes = l->file_size - l->frontier;

  if (repair && (res->dirty || res->leaked_bytes)) {
    if (res->leaked_bytes) {
      if (ovl_io->ftruncate(l->fd, (off_t)l->frontier) == -1)
        r = cc_error_set(errno, "check: %s: truncating leaked space: %s", path, strerror(errno));
      else
        r = ovl_sync(l, "check");
    } else {
      /* A writer that stopped without a clean close may have left space it preallocated
       * past the end of the file (write.c); truncating to the file's own size drops it and
       * changes no byte of the file. */
      (void)ovl_io->ftruncate(l->fd, (off_t)l->file_size);
    }
    if (r == 0 && res->dirty) {
      struct ovl_header h = l->hdr;
      h.incompat &= ~OVL_INCOMPAT_DIRTY;
      r = ovl_header_write(l, &h);
      if (r == 0)
        l->dirty_on_disk = false;
    }
    if (r == 0)
      res->repaired = 1;
  }
  int rc = ovl_close(l);
  return r < 0 ? r : rc;
}
