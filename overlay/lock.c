/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain overlay: OFD locks on layer files.
 *
 * A writer holds an exclusive lock on the whole file, readers a shared one, for as long as the
 * layer is open.  OFD locks belong to the open file description, so two opens in one process
 * conflict exactly as two processes do, and closing an unrelated descriptor of the same file
 * releases nothing.  When a lock is refused we look the holder up in /proc/locks so the user is
 * told what to stop.
 */
#include "overlay/internal.h"

#include <fcntl.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

int
ovl_lock_fd(int fd, const char *path, bool exclusive)
{
  struct flock fl = {
      .l_type = exclusive ? F_WRLCK : F_RDLCK,
      .l_whence = SEEK_SET,
      .l_start = 0,
      .l_len = 0,
  };
  char holder[128];

  if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
    return 0;
  if (errno != EAGAIN && errno != EACCES)
    return cc_error_set(errno, "lock: %s: %s", path, strerror(errno));
  ovl_lock_holder(path, holder, sizeof holder);
  return cc_error_set(EBUSY, "open: %s: in use (locked %s by %s)", path,
                      exclusive ? "for reading or writing" : "for writing", holder);
}

/* Does this fdinfo text hold a lock line on dev/ino? */
static bool
fdinfo_locks(const char *fdinfo_path, dev_t dev, ino_t ino)
{
  FILE *f = fopen(fdinfo_path, "re");
  char line[256];
  bool found = false;

  if (!f)
    return false;
  while (!found && fgets(line, sizeof line, f)) {
    unsigned maj, min;
    unsigned long long i;

    /* "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:5678 0 EOF" */
    if (strncmp(line, "lock:", 5) != 0)
      continue;
    if (sscanf(line, "lock: %*[^:]: %*s %*s %*s %*d %x:%x:%llu", &maj, &min, &i) == 3 &&
        i == (unsigned long long)ino && makedev(maj, min) == dev)
      found = true;
  }
  fclose(f);
  return found;
}

/* OFD locks show pid -1 in /proc/locks, so find the holder through /proc/PID/fdinfo, whose
 * "lock:" lines list the locks of each open file description. */
void
ovl_lock_holder(const char *path, char *buf, size_t len)
{
  struct stat st;
  DIR *proc;
  struct dirent *d;
  long self = (long)getpid();

  snprintf(buf, len, "another process");
  if (stat(path, &st) == -1 || !(proc = opendir("/proc")))
    return;
  while ((d = readdir(proc)) != NULL) {
    char dir[64], comm_path[64], comm[64] = "";
    long pid = strtol(d->d_name, NULL, 10);
    DIR *fds;
    struct dirent *fd;
    bool hit = false;

    if (pid <= 0)
      continue;
    snprintf(dir, sizeof dir, "/proc/%ld/fdinfo", pid);
    if (!(fds = opendir(dir)))
      continue;
    while (!hit && (fd = readdir(fds)) != NULL) {
      char p[400];
      if (fd->d_name[0] == '.')
        continue;
      snprintf(p, sizeof p, "%s/%s", dir, fd->d_name);
      hit = fdinfo_locks(p, st.st_dev, st.st_ino);
    }
    closedir(fds);
    if (!hit)
      continue;
    snprintf(comm_path, sizeof comm_path, "/proc/%ld/comm", pid);
    FILE *c = fopen(comm_path, "re");
    if (c) {
      if (fgets(comm, sizeof comm, c))
        comm[strcspn(comm, "\n")] = '\0';
      fclose(c);
    }
    snprintf(buf, len, "%s %ld%s%s%s", pid == self ? "this process, pid" : "pid", pid,
             comm[0] ? " (" : "", comm, comm[0] ? ")" : "");
    break;
  }
  closedir(proc);
}
