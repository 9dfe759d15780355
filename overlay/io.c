/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: the real system calls behind struct ovl_io_ops (see io.h). */
#include "overlay/io.h"

#include <fcntl.h>
#include <unistd.h>

static int
real_fallocate(int fd, int mode, off_t offset, off_t len)
{
  return fallocate(fd, mode, offset, len);
}

static ssize_t
real_copy_file_range(int fd_in, off_t *off_in, int fd_out, off_t *off_out, size_t len,
                     unsigned flags)
{
  return copy_file_range(fd_in, off_in, fd_out, off_out, len, flags);
}

const struct ovl_io_ops ovl_io_default = {
    .pwrite = pwrite,
    .fdatasync = fdatasync,
    .fallocate = real_fallocate,
    .ftruncate = ftruncate,
    .copy_file_range = real_copy_file_range,
};

const struct ovl_io_ops *ovl_io = &ovl_io_default;
