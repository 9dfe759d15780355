/* SPDX-License-Identifier: BSD-3-Clause */
/* A tiny client of the plugin's control socket, for the tests (the CLI's will live in pool/).
 *
 *   control-client SOCKET STEP...      run the steps in order on one connection:
 *       -c 'WORD WORD...'               send a request (each word percent-encoded here), print
 *                                       the reply lines; stop at the first "err"
 *       -x 'SHELL COMMAND'              run a command between requests (e.g. a record switch
 *                                       while the gates are closed)
 *   control-client --find POOL         list the .ctl sockets in POOL/run: "live PATH", or "stale
 * PATH removed" for a socket nobody listens on (ECONNREFUSED) control-client --mklayer POOL PARENT
 *                                       create an empty layer on PARENT (a layer of the pool) in
 *                                       POOL/tmp, make it durable, rename it to
 *                                       POOL/layers/UUID.cow and print that path
 *
 * Exit: 0 all ok, 1 an "err" reply (or a step failed), 2 cannot connect, 3 refused by the
 * server's peer check (EPERM).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/control-proto.h"
#include "common/error.h"
#include "overlay/overlay.h"

static int
run_steps(const char *path, int argc, char **argv)
{
  struct ccp_conn *c = malloc(sizeof *c);
  char *line = malloc(CCP_LINE_MAX + 1), *req = malloc(CCP_LINE_MAX + 1);
  int fd, rc = 0;

  if (!c || !line || !req)
    return 1;
  fd = ccp_connect(path, c, 10000);
  if (fd < 0) {
    fprintf(stderr, "control-client: %s: %s\n", path, strerror(-fd));
    free(c);
    free(line);
    free(req);
    return fd == -EPERM ? 3 : 2; /* EPERM: the server's peer check refused us */
  }
  for (int i = 0; i + 1 < argc && rc == 0; i += 2) {
    if (strcmp(argv[i], "-x") == 0) {
      fflush(stdout);
      if (system(argv[i + 1]) != 0) {
        fprintf(stderr, "control-client: step failed: %s\n", argv[i + 1]);
        rc = 1;
      }
      continue;
    }
    if (strcmp(argv[i], "-c") != 0) {
      fprintf(stderr, "control-client: unknown step %s\n", argv[i]);
      rc = 1;
      break;
    }
    /* Encode each space-separated word of the argument. */
    char *copy = strdup(argv[i + 1]), *save = NULL;
    req[0] = '\0';
    for (char *w = strtok_r(copy, " ", &save); w; w = strtok_r(NULL, " ", &save))
      ccp_append(req, CCP_LINE_MAX, w);
    free(copy);
    if (ccp_write_line(fd, req) < 0) {
      fprintf(stderr, "control-client: write: %m\n");
      rc = 1;
      break;
    }
    for (;;) {
      int r = ccp_read_line(c, line, 60000);

      if (r < 0) {
        fprintf(stderr, "control-client: reply to '%s': %s\n", argv[i + 1], strerror(-r));
        rc = 1;
        break;
      }
      printf("%s\n", line);
      if (strncmp(line, "data ", 5) == 0)
        continue;
      if (strncmp(line, "ok", 2) != 0)
        rc = 1;
      break;
    }
  }
  fflush(stdout);
  close(fd);
  free(c);
  free(line);
  free(req);
  return rc;
}

static int
find(const char *pool)
{
  char *dir;
  DIR *d;
  struct dirent *de;

  if (asprintf(&dir, "%s/run", pool) < 0 || !(d = opendir(dir)))
    return 1;
  while ((de = readdir(d)) != NULL) {
    size_t n = strlen(de->d_name);
    struct ccp_conn *c;
    char *p;
    int fd;

    if (n < 5 || strcmp(de->d_name + n - 4, ".ctl") != 0)
      continue;
    if (asprintf(&p, "%s/%s", dir, de->d_name) < 0 || !(c = malloc(sizeof *c)))
      return 1;
    fd = ccp_connect(p, c, 5000);
    if (fd >= 0) {
      printf("live %s\n", p);
      close(fd);
    } else if (fd == -ECONNREFUSED) {
      /* Nobody listens: a dead server's.  A live server's socket never refuses. */
      if (unlink(p) == 0)
        printf("stale %s removed\n", p);
    } else {
      printf("unreachable %s: %s\n", p, strerror(-fd));
    }
    free(c);
    free(p);
  }
  closedir(d);
  free(dir);
  return 0;
}

static int
mklayer(const char *pool, const char *parent)
{
  struct ovl_layer *l;
  struct ovl_info info;
  struct ovl_create_opts o = {0};
  uint8_t uuid[OVL_UUID_LEN];
  char us[37], *tmp, *dst, *pdir;
  const char *base = strrchr(parent, '/');
  int dfd;

  if (ovl_open(parent, OVL_RDONLY | OVL_NOLOCK, &l) < 0) {
    fprintf(stderr, "control-client: %s\n", cc_error_get());
    return 1;
  }
  ovl_get_info(l, &info);
  ovl_close(l);
  o.virtual_size = info.virtual_size;
  o.cluster_size = info.cluster_size;
  o.parent.kind = OVL_PARENT_LAYER;
  o.parent.path = base ? base + 1 : parent;
  memcpy(o.parent.uuid, info.uuid, OVL_UUID_LEN);
  o.parent.size = info.virtual_size;
  if (asprintf(&tmp, "%s/tmp/mklayer-%ld-0.cow", pool, (long)getpid()) < 0)
    return 1;
  if (ovl_create(tmp, &o, uuid) < 0) {
    fprintf(stderr, "control-client: %s\n", cc_error_get());
    return 1;
  }
  ovl_uuid_str(uuid, us);
  if (asprintf(&dst, "%s/layers/%s.cow", pool, us) < 0 || asprintf(&pdir, "%s/layers", pool) < 0)
    return 1;
  if (rename(tmp, dst) < 0) {
    perror("rename");
    return 1;
  }
  dfd = open(pdir, O_RDONLY | O_DIRECTORY);
  if (dfd < 0 || fsync(dfd) < 0) {
    perror(pdir);
    return 1;
  }
  close(dfd);
  printf("%s\n", dst);
  free(tmp);
  free(dst);
  free(pdir);
  return 0;
}

int
main(int argc, char **argv)
{
  if (argc == 3 && strcmp(argv[1], "--find") == 0)
    return find(argv[2]);
  if (argc == 4 && strcmp(argv[1], "--mklayer") == 0)
    return mklayer(argv[2], argv[3]);
  if (argc >= 2 && argv[1][0] != '-')
    return run_steps(argv[1], argc - 2, argv + 2);
  fprintf(stderr, "usage: control-client SOCKET [-c REQUEST | -x COMMAND]...\n"
                  "       control-client --find POOL\n"
                  "       control-client --mklayer POOL PARENT-LAYER\n");
  return 1;
}
