#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14: fio's nbd engine (random writes, crc32c verification of every block, as it goes
# with verify_backlog and at the end) runs through repeated live snapshots of the clone it
# writes, taken by the CLI while fio's requests are in flight.  fio must see no error; then a
# verify-only pass through a new connection, and another after a server restart; `check`
# clean.  The last snapshot taken after fio finished must equal the clone.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_fio
setup_pool

run_fio() {
  fio_verify 1414 --bsrange=4k-128k --loops=6 "$@"
}

# snap_round N: snapshot f(N).
snap_round() {
  cc snapshot create vm1 "f$1" >/dev/null || fail "snapshot f$1 failed"
  echo "f$1"
}

start_server
loop_during snap_round 2 run_fio --do_verify=1 --verify_backlog=64
say "$DURING live snapshots taken while fio wrote"
[ "$DURING" -ge 2 ] || fail "fio finished before two snapshots were taken (make it write more)"
run_fio --verify_only=1
cc snapshot create vm1 last
qemu-img compare -q -f raw -F raw "$(uri vm1)" "$(uri vm1@last)" || fail "vm1@last differs from vm1"
stop_server
start_server
run_fio --verify_only=1
stop_server
cc check || fail "check after live snapshots under fio"
check_template_unchanged
