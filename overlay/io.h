/* cowchain overlay: the system calls that change a layer file, behind one table so that the
 * crash-ordering tests can record every write and sync (tests/unit/test-overlay-crash.c) and
 * fault-injection tests can fail them.  Production code never changes the table. */
#ifndef COWCHAIN_OVERLAY_IO_H
#define COWCHAIN_OVERLAY_IO_H

#include <sys/types.h>

struct ovl_io_ops {
  ssize_t (*pwrite)(int fd, const void *buf, size_t count, off_t offset);
  int (*fdatasync)(int fd);
  int (*fallocate)(int fd, int mode, off_t offset, off_t len);
  int (*ftruncate)(int fd, off_t length);
};

/* The table in use; points at the real system calls unless a test replaced it. */
extern const struct ovl_io_ops *ovl_io;
extern const struct ovl_io_ops ovl_io_default;

#endif
