#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14 item 4: fio's nbd engine (random writes, crc32c verification as it goes with
# verify_backlog and at the end) runs through repeated live snapshots and live deletes of the
# clone it writes: each round takes a snapshot, then deletes the one before it, alternating
# the snapshot right below the live top (merged into the top under fio's writes) and the one
# below another snapshot (merged into that frozen layer).  fio must see no error; then a
# verify-only pass through a new connection, and another after a server restart; `check`
# clean, and no layer left but the ones the records name.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_fio
setup_pool

run_fio() {
  fio_verify 1415 --bsrange=4k-128k --loops=6 "$@"
}

# snap_round N: snapshot f(N), then (from N = 2) delete one, which is merged live.
snap_round() {
  local victim
  cc snapshot create vm1 "f$1" >/dev/null || fail "snapshot f$1 failed"
  [ "$1" -ge 2 ] || return 0
  # Even rounds: f(n), right below the live top.  Odd: f(n-2), the one left below f(n), merged
  # into that frozen layer.
  if [ $(($1 % 2)) = 1 ]; then victim=f$(($1 - 2)); else victim=f$1; fi
  cc snapshot delete vm1 "$victim" >/dev/null || fail "delete $victim failed"
  echo "$victim"
}

start_server
loop_during snap_round 4 run_fio --do_verify=1 --verify_backlog=64
say "$DURING live deletes done while fio wrote"
[ "$DURING" -ge 4 ] || fail "fio finished before four live deletes were done (make it write more)"
run_fio --verify_only=1
stop_server
start_server
run_fio --verify_only=1
stop_server
cc check || fail "check after live merges under fio"
has ' 0 errors, 0 leaks' cc check || { cat "$WORK/has.out"; fail "check: leaks after live merges"; }
check_template_unchanged
