/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: the real system calls behind struct ovl_io_ops (see io.h). */
#include "overlay/io.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
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

static int
real_clone_range(int fd_in, uint64_t off_in, uint64_t len, int fd_out, uint64_t off_out)
{
  struct file_clone_range a = {
      .src_fd = fd_in, .src_offset = off_in, .src_length = len, .dest_offset = off_out};

  return ioctl(fd_out, FICLONERANGE, &a);
}

const struct ovl_io_ops ovl_io_default = {
    .pwrite = pwrite,
    .fdatasync = fdatasync,
    .fallocate = real_fallocate,
    .ftruncate = ftruncate,
    .copy_file_range = real_copy_file_range,
    .clone_range = real_clone_range,
};

const struct ovl_io_ops *ovl_io = &ovl_io_default;
