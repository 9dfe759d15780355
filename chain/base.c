/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain chain: what a chain stands on (its bottom file), for identity checks above chain/.
 *
 * Design notes
 * ------------
 * pool/ protects raw templates by recording the image file's identity (size, mtime, inode) at
 * import and refusing to serve a chain whose image no longer matches (POOL.md 3.1.1).  The
 * check must look at the very file the chain holds open, not at a path looked up again (which
 * could name another file by then), so chain/ hands out the fstat of its bottom file's fd.
 * The index is immutable and its files stay open while the view is entered.
 */
#include "chain/internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"

int
cc_chain_raw_base(struct cc_chain *c, char *path, size_t pathlen, struct stat *st)
{
  unsigned ticket;
  struct cc_view *v = cc_view_enter(c, &ticket);
  int r = 0;

  /* A remote bottom (fd -1) is no raw image: the remote's fingerprint, checked at open, is its
   * identity (remote.c). */
  if (v->idx && v->idx->nlayers > 0 && v->idx->layers[0].ovl == NULL &&
      v->idx->layers[0].remote == NULL) {
    const struct cc_frozen *f = &v->idx->layers[0];

    if (fstat(f->fd, st) < 0)
      r = cc_error_set(errno, "fstat: %s: %s", f->path, strerror(errno));
    else {
      snprintf(path, pathlen, "%s", f->path);
      r = 1;
    }
  }
  cc_view_leave(c, ticket);
  return r;
}
