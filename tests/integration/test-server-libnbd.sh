#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# libnbd through every request type on a clone: read, write (+FUA), zero (plain, may-trim,
# fast), trim, block status, cache, flush; then multi-conn: a write flushed on one connection
# is read on another.  Both I/O modes.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
setup_pool
cc clone create vm2 --from base

for io in uring sync; do
  start_server -- io=$io
  "$CLIENT" rw "$SOCK" vm1 || fail "rw checks failed (io=$io)"
  "$CLIENT" multiconn "$SOCK" vm2 || fail "multi-conn checks failed (io=$io)"
  # Several connections at once, each with its own region, then a check through a new one.
  writers=()
  for i in 1 2 3 4; do
    qemu-io -f raw -c "write -P 0x7$i $((i * 4))M 1M" -c flush "$(uri vm2)" >/dev/null &
    writers+=($!)
  done
  # Not a bare `wait`: that would wait for the server too.
  for pid in "${writers[@]}"; do
    wait "$pid" || fail "a concurrent writer failed (io=$io)"
  done
  for i in 1 2 3 4; do
    qemu-io -f raw -r -c "read -P 0x7$i $((i * 4))M 1M" "$(uri vm2)" >/dev/null ||
      fail "concurrent connection $i lost its write (io=$io)"
  done
  stop_server
done
# Data written through io=uring and io=sync servers survives a restart.
start_server
qemu-io -f raw -r -c 'read -P 0x74 16M 1M' "$(uri vm2)" >/dev/null ||
  fail "data lost across a server restart"
check_template_unchanged
