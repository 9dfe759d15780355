/* cowchain overlay: the real system calls behind struct ovl_io_ops (see io.h). */
#include "overlay/io.h"

#include <fcntl.h>
#include <unistd.h>

static int
real_fallocate(int fd, int mode, off_t offset, off_t len)
{
  return fallocate(fd, mode, offset, len);
}

const struct ovl_io_ops ovl_io_default = {
  .pwrite = pwrite,
  .fdatasync = fdatasync,
  .fallocate = real_fallocate,
  .ftruncate = ftruncate,
};

const struct ovl_io_ops *ovl_io = &ovl_io_default;
