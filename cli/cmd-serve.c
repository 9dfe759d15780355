/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain command line: `serve`, which runs nbdkit with the cowchain plugin on the pool.
 *
 * Design notes
 * ------------
 * We exec nbdkit rather than embed a server: nbdkit owns sockets, TLS, threads and signals.
 * The plugin is looked for next to this binary in a build tree (../server/ relative to the
 * executable, so `build/cli/cowchain serve` uses the plugin built with it), then by name in
 * nbdkit's plugin directory.  $COWCHAIN_PLUGIN overrides both.
 *
 * Defaults: a Unix socket at POOL/cowchain.sock; --port N listens on TCP bound to 127.0.0.1
 * only (NBD has no authentication without TLS: exposing it wider must be a deliberate nbdkit
 * option).  Foreground (-f) unless --background, like qemu-nbd.  Other arguments are passed to
 * nbdkit: options before the plugin, KEY=VALUE plugin parameters after it.  Under socket
 * activation (systemd, cowchain@.socket) nbdkit gets no -U: it serves the passed socket.
 */
#include "cli/cli.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef NBDKIT_PLUGINDIR
#define NBDKIT_PLUGINDIR ""
#endif

/* nbdkit options that take a value as the next argument. */
static int
takes_value(const char *a)
{
  static const char *const opts[] = {"-D",        "--debug",
                                     "-e",        "--exportname",
                                     "--filter",  "-g",
                                     "--group",   "-i",
                                     "--ipaddr",  "--log",
                                     "-P",        "--pidfile",
                                     "-p",        "--port",
                                     "--run",     "--selinux-label",
                                     "-t",        "--threads",
                                     "--tls",     "--tls-certificates",
                                     "--tls-psk", "-u",
                                     "--user",    "-U",
                                     "--unix",    "--mask-handshake"};
  size_t i;

  for (i = 0; i < sizeof opts / sizeof opts[0]; i++)
    if (strcmp(a, opts[i]) == 0)
      return 1;
  return 0;
}

static void
find_plugin(char *buf, size_t len)
{
  const char *env = getenv("COWCHAIN_PLUGIN");
  char exe[PATH_MAX - 64];
  ssize_t n;

  if (env && *env) {
    snprintf(buf, len, "%s", env);
    return;
  }
  n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    char *slash;
    exe[n] = '\0';
    slash = strrchr(exe, '/');
    if (slash) {
      *slash = '\0';
      int m = snprintf(buf, len, "%s/../server/nbdkit-cowchain-plugin.so", exe);
      if (m > 0 && (size_t)m < len && access(buf, R_OK) == 0)
        return;
    }
  }
  /* nbdkit resolves a bare name in its plugindir (NBDKIT_PLUGINDIR at build time). */
  snprintf(buf, len, "cowchain");
}

/* Started by socket activation: $LISTEN_FDS sockets for this very process ($LISTEN_PID), which
 * exec keeps, so nbdkit sees the same. */
static int
socket_activated(void)
{
  const char *fds = getenv("LISTEN_FDS"), *pid = getenv("LISTEN_PID");

  return fds && pid && atoi(fds) > 0 && strtol(pid, NULL, 10) == (long)getpid();
}

/* Remove a socket left by a server that died, so nbdkit can bind; a live one stays. */
static void
clear_stale_socket(const char *path)
{
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  struct stat st;
  int fd;

  if (lstat(path, &st) == -1 || !S_ISSOCK(st.st_mode) || strlen(path) >= sizeof sa.sun_path)
    return;
  strcpy(sa.sun_path, path);
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1)
    return;
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1 && errno == ECONNREFUSED)
    unlink(path);
  close(fd);
}

int
cmd_serve(int argc, char **argv, const char *argv0)
{
  char plugin[PATH_MAX], sock[PATH_MAX], pooldir[PATH_MAX + 8];
  const char *port = NULL;
  int i, n = 0, user_listen = 0, background = 0;
  char **av = calloc((size_t)argc * 2 + 16, sizeof *av);
  char **params = calloc((size_t)argc + 1, sizeof *params);
  int nparams = 0, rc = 1;
  struct cc_pool *p;

  (void)argv0;
  if (av == NULL || params == NULL) {
    rc = usage_error("serve", "out of memory");
    goto out;
  }
  av[n++] = "nbdkit";
  for (i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      printf(
          "usage: cowchain serve [--port N] [--background] [nbdkit options...] [io=sync]\n\n"
          "Run nbdkit with the cowchain plugin on this pool, in the foreground.  Every clone,\n"
          "CLONE@SNAP and template is an export.  Listens on the Unix socket POOL/cowchain.sock,\n"
          "or with --port N on TCP 127.0.0.1:N.  Other options go to nbdkit (see nbdkit(1)).\n"
          "The socket is 0600 (only the pool's owner may connect), or 0660 with the pool's\n"
          "group for a pool made with `pool init --group NAME`.  Started by socket activation\n"
          "($LISTEN_FDS, e.g. cowchain@.socket), it serves the socket it was passed.\n");
      rc = 0;
      goto out;
    }
    if (strcmp(a, "--port") == 0 || strncmp(a, "--port=", 7) == 0) {
      if (a[6] == '=')
        port = a + 7;
      else if (i + 1 < argc)
        port = argv[++i];
      else {
        rc = usage_error("serve", "--port needs a number");
        goto out;
      }
      if (strspn(port, "0123456789") != strlen(port) || !*port || strlen(port) > 5 ||
          atoi(port) <= 0 || atoi(port) > 65535) {
        rc = usage_error("serve", "bad port '%s' (1-65535)", port);
        goto out;
      }
      continue;
    }
    if (strcmp(a, "--background") == 0) {
      background = 1;
      continue;
    }
    if (a[0] == '-') {
      if (strcmp(a, "-U") == 0 || strcmp(a, "--unix") == 0 || strcmp(a, "-p") == 0 ||
          strncmp(a, "--unix=", 7) == 0 || strcmp(a, "-s") == 0 || strcmp(a, "--single") == 0 ||
          strcmp(a, "--vsock") == 0)
        user_listen = 1;
      av[n++] = (char *)a;
      if (takes_value(a) && i + 1 < argc)
        av[n++] = argv[++i];
      continue;
    }
    if (strchr(a, '=') == NULL) {
      rc = usage_error("serve", "unexpected argument '%s' (plugin parameters are KEY=VALUE)", a);
      goto out;
    }
    if (strncmp(a, "pool=", 5) == 0) {
      rc = usage_error("serve", "the pool is given with --pool, not pool=");
      goto out;
    }
    params[nparams++] = (char *)a;
  }
  if ((p = cli_pool()) == NULL)
    goto out;
  if (!background)
    av[n++] = "-f";
  if (port) {
    av[n++] = "-p";
    av[n++] = (char *)port;
    av[n++] = "-i";
    av[n++] = "127.0.0.1";
  } else if (socket_activated()) {
    /* systemd (or systemd-socket-activate) passed the listening socket: nbdkit serves it
     * (LISTEN_FDS); naming another one would be refused. */
  } else if (!user_listen) {
    snprintf(sock, sizeof sock, "%s/cowchain.sock", cc_pool_dir(p));
    clear_stale_socket(sock);
    av[n++] = "-U";
    av[n++] = sock;
  }
  find_plugin(plugin, sizeof plugin);
  av[n++] = plugin;
  {
    /* Absolute: nbdkit changes to / when it daemonizes (--background). */
    char *abs = realpath(cc_pool_dir(p), NULL);
    snprintf(pooldir, sizeof pooldir, "pool=%s", abs ? abs : cc_pool_dir(p));
    free(abs);
  }
  av[n++] = pooldir;
  for (i = 0; i < nparams; i++)
    av[n++] = params[i];
  av[n] = NULL;
  cc_pool_close(p);
  fflush(stdout);
  execvp("nbdkit", av);
  cli_error(1, "serve: nbdkit: %s (install nbdkit)", strerror(errno));
out:
  free(av);
  free(params);
  return rc;
}
