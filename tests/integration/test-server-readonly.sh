#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Snapshots and templates are read-only exports: writes, zeroes and trims fail with EPERM and
# change nothing.  nbdkit -r makes clones read-only too.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
requires qemu-io
setup_pool

qemu_io() { qemu-io -f raw "$@"; }

start_server
qemu_io -c 'write -P 0x44 0 64k' "$(uri vm1)" >/dev/null
stop_server
cc snapshot create vm1 s1
start_server

for e in base vm1@s1; do
  "$CLIENT" readonly "$SOCK" "$e" || fail "$e is not read-only with EPERM"
  out=$(qemu_io -c 'write -P 0x55 0 4k' "$(uri "$e")" 2>&1) && fail "qemu-io wrote to $e"
  grep -qiE 'permission|read-only|not permitted' <<<"$out" ||
    fail "qemu-io write to $e: unexpected error: $out"
done
qemu_io -r -c 'read -P 0x44 0 64k' -c 'read -P 0x11 64k 960k' "$(uri vm1@s1)" >/dev/null ||
  fail "snapshot content changed"
qemu_io -r -c 'read -P 0x11 0 1M' "$(uri base)" >/dev/null || fail "template content changed"
# The clone itself still writes.
qemu_io -c 'write -P 0x66 0 4k' -c 'read -P 0x66 0 4k' "$(uri vm1)" >/dev/null ||
  fail "vm1 does not take writes"
stop_server

# nbdkit -r: every export read-only, the clone included.
start_server -r
"$CLIENT" readonly "$SOCK" vm1 || fail "vm1 is writable under nbdkit -r"
qemu_io -r -c 'read -P 0x66 0 4k' "$(uri vm1)" >/dev/null || fail "vm1 unreadable under -r"
check_template_unchanged
