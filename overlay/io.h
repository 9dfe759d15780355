/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: the system calls that change a layer file, behind one table so that the
 * crash-ordering tests can record every write and sync (tests/unit/test-overlay-crash.c) and
 * fault-injection tests can fail them.  Production code never changes the table. */
#ifndef COWCHAIN_OVERLAY_IO_H
#define COWCHAIN_OVERLAY_IO_H

#include <stdint.h>
#include <sys/types.h>

struct ovl_io_ops {
  ssize_t (*pwrite)(int fd, const void *buf, size_t count, off_t offset);
  int (*fdatasync)(int fd);
  int (*fallocate)(int fd, int mode, off_t offset, off_t len);
  int (*ftruncate)(int fd, off_t length);
  /* Bulk fills (bulk.c).  NULL in a test's table: bulk.c copies with pread + pwrite instead, so
   * a table written before this member existed records every byte of a bulk fill too. */
  ssize_t (*copy_file_range)(int fd_in, off_t *off_in, int fd_out, off_t *off_out, size_t len,
                             unsigned flags);
  /* Bulk fills that bridge source gaps (bulk.c): share len bytes of fd_in at off_in into fd_out
   * at off_out (FICLONERANGE), or fail; never a byte copy.  NULL in a test's table: no bridging,
   * every fill is copied piece by piece as above. */
  int (*clone_range)(int fd_in, uint64_t off_in, uint64_t len, int fd_out, uint64_t off_out);
};

/* The table in use; points at the real system calls unless a test replaced it. */
extern const struct ovl_io_ops *ovl_io;
extern const struct ovl_io_ops ovl_io_default;

#endif
