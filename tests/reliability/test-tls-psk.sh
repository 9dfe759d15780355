#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# TLS with a pre-shared key works with the plugin (nbdkit --tls=require --tls-psk=FILE): libnbd,
# nbdinfo (URI nbds+unix://alice@/vm1?socket=...&tls-psk-file=...) and qemu-img (tls-creds-psk)
# connect as user alice, read and write; a client without TLS, or with the wrong key, is refused.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires psktool
requires_built hostile-client "$HOSTILE_CLIENT"
# Debian's nbdkit (scripts/setup) is built with GnuTLS: without it the install is wrong.
nbdkit --dump-config | grep -q '^tls=yes' || fail "nbdkit was built without TLS"
setup_pool

mkdir "$WORK/psk" "$WORK/wrong"
psktool -u alice -p "$WORK/psk/keys.psk" >/dev/null
psktool -u alice -p "$WORK/wrong/keys.psk" >/dev/null
chmod 600 "$WORK"/psk/keys.psk "$WORK"/wrong/keys.psk
PSK=$WORK/psk/keys.psk

start_server --tls=require --tls-psk="$PSK"
H() { timeout 60 "$HOSTILE_CLIENT" "$@"; }
H tls "$SOCK" vm1 "$PSK" psk || fail "libnbd with TLS-PSK"
H tls "$SOCK" vm1 "$PSK" plain || fail "a client without TLS"
H tls "$SOCK" vm1 "$WORK/wrong/keys.psk" wrongkey || fail "a client with the wrong key"

# nbdinfo through a URI (libnbd's URI syntax: user before '@', the PSK file as a query field).
timeout 60 nbdinfo --json "nbds+unix://alice@/vm1?socket=$SOCK&tls-psk-file=$PSK" >"$WORK/info.json" ||
  fail "nbdinfo over TLS-PSK"
grep -q '"TLS": true' "$WORK/info.json" || {
  cat "$WORK/info.json" >&2
  fail "nbdinfo did not negotiate TLS"
}
if timeout 60 nbdinfo "nbd+unix:///vm1?socket=$SOCK" >/dev/null 2>&1; then
  fail "nbdinfo without TLS was served"
fi

# qemu-img: a tls-creds-psk object reads keys.psk from its directory.
if command -v qemu-img >/dev/null; then
  timeout 60 qemu-img convert -O raw \
    --object "tls-creds-psk,id=tls0,endpoint=client,dir=$WORK/psk,username=alice" \
    --image-opts "driver=raw,file.driver=nbd,file.path=$SOCK,file.export=base,file.tls-creds=tls0" \
    "$WORK/base-over-tls.raw" || fail "qemu-img over TLS-PSK"
  cmp "$WORK/base-over-tls.raw" "$WORK/base.raw" || fail "the template read over TLS differs"
fi
stop_server
SOCK= # (check_template_unchanged would read through the server without TLS)
check_template_unchanged
