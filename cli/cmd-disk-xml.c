/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain command line: `disk-xml`, the libvirt <disk> element of an export.
 *
 * Design notes
 * ------------
 * libvirt's QEMU driver speaks NBD itself (protocol='nbd'), so a clone is a network disk:
 *
 *   <disk type='network' device='disk'>
 *     <driver name='qemu' type='raw' cache='none' discard='unmap'/>
 *     <source protocol='nbd' name='vm1'>
 *       <host transport='unix' socket='/srv/pool/cowchain.sock'/>
 *     </source>
 *     <target dev='vda' bus='virtio'/>
 *   </disk>
 *
 * format raw (the export is the guest's disk itself), cache='none' (the server does its own
 * durability: every flush reaches fdatasync), discard='unmap' (trims become zero
 * sub-clusters), and <readonly/> for a snapshot or template, which the server refuses to
 * write anyway: the guest should know.  The export is checked to exist so a typo fails here,
 * not when the domain starts.  Every value that comes from the user is XML-escaped.
 */
#include "cli/cli.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* Print s with & < > ' " escaped (attribute values are single-quoted). */
static void
xml_attr(const char *s)
{
  for (; *s; s++) {
    switch (*s) {
    case '&':
      fputs("&amp;", stdout);
      break;
    case '<':
      fputs("&lt;", stdout);
      break;
    case '>':
      fputs("&gt;", stdout);
      break;
    case '\'':
      fputs("&apos;", stdout);
      break;
    case '"':
      fputs("&quot;", stdout);
      break;
    default:
      putchar(*s);
    }
  }
}

/* The bus libvirt wants for a device name: vdX virtio, sdX scsi, hdX ide. */
static const char *
bus_of(const char *dev)
{
  size_t n = strlen(dev);

  if (n < 3 || n > 8 || strspn(dev + 2, "abcdefghijklmnopqrstuvwxyz") != n - 2)
    return NULL;
  if (strncmp(dev, "vd", 2) == 0)
    return "virtio";
  if (strncmp(dev, "sd", 2) == 0)
    return "scsi";
  if (strncmp(dev, "hd", 2) == 0)
    return "ide";
  return NULL;
}

struct disk_xml_args {
  const char *dev, *sock, *tcp, *bus;
  char host[256];
  unsigned long port;
};

static int
do_disk_xml(struct cc_pool *p, const char *const *pos, void *arg)
{
  struct disk_xml_args *a = arg;
  char path[PATH_MAX], sockbuf[PATH_MAX + 16];
  const char *sock = a->sock;
  enum cc_export_kind kind;
  int r;

  if ((r = cc_pool_resolve_export(p, pos[0], path, sizeof path, &kind)) < 0)
    return r;
  if (!sock && !a->tcp) {
    char *abs = realpath(cc_pool_dir(p), NULL);

    snprintf(sockbuf, sizeof sockbuf, "%s/cowchain.sock", abs ? abs : cc_pool_dir(p));
    free(abs);
    sock = sockbuf;
  }
  printf("<disk type='network' device='disk'>\n");
  printf("  <driver name='qemu' type='raw' cache='none'%s/>\n",
         kind == CC_EXPORT_CLONE ? " discard='unmap'" : "");
  printf("  <source protocol='nbd' name='");
  xml_attr(pos[0]);
  printf("'>\n");
  if (a->tcp) {
    printf("    <host name='");
    xml_attr(a->host);
    printf("' port='%lu'/>\n", a->port);
  } else {
    printf("    <host transport='unix' socket='");
    xml_attr(sock);
    printf("'/>\n");
  }
  printf("  </source>\n");
  printf("  <target dev='%s' bus='%s'/>\n", a->dev, a->bus);
  if (kind != CC_EXPORT_CLONE)
    printf("  <readonly/>\n");
  printf("</disk>\n");
  return 0;
}

int
cmd_disk_xml(int argc, char **argv)
{
  struct disk_xml_args a = {.dev = "vda"};
  const char *pos[1];
  char *colon;
  const struct cli_opt opts[] = {{"--dev", 1, &a.dev, NULL},
                                 {"--socket", 1, &a.sock, NULL},
                                 {"--tcp", 1, &a.tcp, NULL},
                                 {NULL, 0, NULL, NULL}};
  const struct cli_cmd cmd = {
      "disk-xml",
      "NAME [--dev vda] [--socket PATH | --tcp HOST:PORT]",
      "Print the libvirt <disk type='network'> element for export NAME (a clone, CLONE@SNAP\n"
      "or a template), for `virsh attach-device DOMAIN FILE` or a domain's <devices>: NBD,\n"
      "raw, read-only for snapshots and templates.  The server is the pool's socket\n"
      "(POOL/cowchain.sock, as `cowchain serve` makes it) unless --socket or --tcp says\n"
      "otherwise.  --dev's prefix picks the bus: vd virtio, sd scsi, hd ide.",
      1,
      1,
      opts};
  int npos;

  PARSE_OR_RETURN(&cmd, argc, argv, pos, npos);
  if (a.sock && a.tcp)
    return usage_error(cmd.name, "--socket and --tcp exclude each other");
  if ((a.bus = bus_of(a.dev)) == NULL)
    return usage_error(cmd.name, "--dev '%s': not a disk device name (vda, sdb, hdc, ...)", a.dev);
  if (a.tcp) {
    const char *tcp = a.tcp;
    char *end, *host = a.host;

    colon = strrchr(tcp, ':');
    if (!colon || colon == tcp || (size_t)(colon - tcp) >= sizeof a.host)
      return usage_error(cmd.name, "--tcp '%s': expected HOST:PORT (e.g. 127.0.0.1:10809)", tcp);
    a.port = strtoul(colon + 1, &end, 10);
    if (*end || a.port == 0 || a.port > 65535 || colon[1] < '0' || colon[1] > '9')
      return usage_error(cmd.name, "--tcp '%s': bad port (1-65535)", tcp);
    memcpy(host, tcp, (size_t)(colon - tcp));
    host[colon - tcp] = '\0';
    if (host[0] == '[' && host[strlen(host) - 1] == ']') { /* [::1]:10809 */
      memmove(host, host + 1, strlen(host));
      host[strlen(host) - 1] = '\0';
    }
  }
  return cli_on_pool(do_disk_xml, pos, &a);
}
