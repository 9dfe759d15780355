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

int
cmd_disk_xml(int argc, char **argv)
{
  const char *dev = "vda", *sock = NULL, *tcp = NULL, *pos[1], *bus;
  char path[PATH_MAX], sockbuf[PATH_MAX + 16], host[256] = "", *colon;
  const struct cli_opt opts[] = {{"--dev", 1, &dev, NULL},
                                 {"--socket", 1, &sock, NULL},
                                 {"--tcp", 1, &tcp, NULL},
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
  enum cc_export_kind kind;
  unsigned long port = 0;
  struct cc_pool *p;
  int npos, r;

  PARSE_OR_RETURN(&cmd, argc, argv, pos, npos);
  if (sock && tcp)
    return usage_error(cmd.name, "--socket and --tcp exclude each other");
  if ((bus = bus_of(dev)) == NULL)
    return usage_error(cmd.name, "--dev '%s': not a disk device name (vda, sdb, hdc, ...)", dev);
  if (tcp) {
    char *end;

    colon = strrchr(tcp, ':');
    if (!colon || colon == tcp || (size_t)(colon - tcp) >= sizeof host)
      return usage_error(cmd.name, "--tcp '%s': expected HOST:PORT (e.g. 127.0.0.1:10809)", tcp);
    port = strtoul(colon + 1, &end, 10);
    if (*end || port == 0 || port > 65535 || colon[1] < '0' || colon[1] > '9')
      return usage_error(cmd.name, "--tcp '%s': bad port (1-65535)", tcp);
    memcpy(host, tcp, (size_t)(colon - tcp));
    host[colon - tcp] = '\0';
    if (host[0] == '[' && host[strlen(host) - 1] == ']') { /* [::1]:10809 */
      memmove(host, host + 1, strlen(host));
      host[strlen(host) - 1] = '\0';
    }
  }
  if ((p = cli_pool()) == NULL)
    return 1;
  r = cc_pool_resolve_export(p, pos[0], path, sizeof path, &kind);
  if (r == 0 && !sock && !tcp) {
    char *abs = realpath(cc_pool_dir(p), NULL);

    snprintf(sockbuf, sizeof sockbuf, "%s/cowchain.sock", abs ? abs : cc_pool_dir(p));
    free(abs);
    sock = sockbuf;
  }
  cc_pool_close(p);
  if (r < 0)
    return die_pool();

  printf("<disk type='network' device='disk'>\n");
  printf("  <driver name='qemu' type='raw' cache='none'%s/>\n",
         kind == CC_EXPORT_CLONE ? " discard='unmap'" : "");
  printf("  <source protocol='nbd' name='");
  xml_attr(pos[0]);
  printf("'>\n");
  if (tcp) {
    printf("    <host name='");
    xml_attr(host);
    printf("' port='%lu'/>\n", port);
  } else {
    printf("    <host transport='unix' socket='");
    xml_attr(sock);
    printf("'/>\n");
  }
  printf("  </source>\n");
  printf("  <target dev='%s' bus='%s'/>\n", dev, bus);
  if (kind != CC_EXPORT_CLONE)
    printf("  <readonly/>\n");
  printf("</disk>\n");
  return 0;
}
