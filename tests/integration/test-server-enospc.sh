#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# ENOSPC reaches the client as ENOSPC, nothing already written is lost, and the export works
# again once space is back.  The pool lives on a small tmpfs mounted in a private mount
# namespace (so the mount vanishes with the test, whatever happens); needs root.
# (Before tests/lib/functions.sh, which would make a work directory the exec leaves behind; its
# machine_limit says the same.  unshare is util-linux, in every Debian.)
if [ -z "${COWCHAIN_IN_NAMESPACE:-}" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test-server-enospc: SKIP: machine limit: not root (mounting a tmpfs needs root)"
    exit 77
  fi
  command -v unshare >/dev/null || {
    echo "test-server-enospc: FAIL: unshare is not installed (util-linux)" >&2
    exit 1
  }
  if ! unshare -m --propagation private true 2>/dev/null; then
    echo "test-server-enospc: SKIP: machine limit: no mount namespaces (unshare -m refused)"
    exit 77
  fi
  COWCHAIN_IN_NAMESPACE=1 exec unshare -m --propagation private bash "$0" "$@"
fi
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
requires qemu-io
requires_cowchain

mkdir "$WORK/fs"
mount -t tmpfs -o size=40M tmpfs "$WORK/fs" ||
  machine_limit "cannot mount a tmpfs" "root in a private mount namespace, and still refused"
on_exit umount "$WORK/fs"
POOL=$WORK/fs/pool
make_template_file "$WORK/base.raw" # 64 MiB virtual, 3 MiB of data
cc pool init
cc template import base "$WORK/base.raw"
cc clone create vm1 --from base
template_sum
# Leave ~12 MiB free, 8 MiB of it held by a file the client deletes to bring space back.
avail=$(df -B1 --output=avail "$WORK/fs" | tail -n 1)
fill=$((avail - 12 * 1024 * 1024))
[ "$fill" -gt 0 ] && fallocate -l "$fill" "$WORK/fs/fill0"
fallocate -l 8M "$WORK/fs/filler"
df -h "$WORK/fs"

start_server
"$CLIENT" enospc "$SOCK" vm1 "$WORK/fs/filler" || fail "ENOSPC handling"
log_has 'vm1'
# After a restart the data is all there (the client wrote patterns; re-run its read checks
# through qemu-io on the first MiB, which was flushed before the disk filled).
stop_server
rm -f "$WORK/fs/fill0"
start_server
qemu-io -f raw -r -c 'read 0 1M' "$(uri vm1)" >/dev/null || fail "vm1 unreadable after restart"
qemu-io -f raw -r -c 'read -P 0x11 0 1M' "$(uri base)" >/dev/null || fail "template changed"
check_template_unchanged
