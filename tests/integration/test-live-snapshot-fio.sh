#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14: fio's nbd engine (random writes, crc32c verification of every block, as it goes
# with verify_backlog and at the end) runs through repeated live snapshots of the clone it
# writes, taken by the CLI while fio's requests are in flight.  fio must see no error; then a
# verify-only pass through a new connection, and another after a server restart; `check`
# clean.  The last snapshot taken after fio finished must equal the clone.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires fio
requires fio --enghelp=nbd
setup_pool

run_fio() {
  (cd "$WORK" && timeout 250 fio --name=cowchain --ioengine=nbd --uri="$(uri vm1)" --size=48M \
    --rw=randwrite --bsrange=4k-128k --iodepth=16 --numjobs=1 --loops=6 \
    --verify=crc32c --verify_fatal=1 --randseed=1414 "$@" --output="$WORK/fio.out") || {
    cat "$WORK/fio.out" >&2
    fail "fio $*"
  }
  grep -q 'err= 0' "$WORK/fio.out" || {
    cat "$WORK/fio.out" >&2
    fail "fio reported errors"
  }
}

start_server
touch "$WORK/go"
(
  n=0
  while [ -e "$WORK/go" ]; do
    n=$((n + 1))
    cc snapshot create vm1 "f$n" || { echo "snapshot f$n failed" >"$WORK/snap.err"; exit 1; }
    # Counted only when fio was still writing once the snapshot was committed.
    [ ! -e "$WORK/go" ] || echo "f$n" >>"$WORK/during"
    sleep 0.1
  done
) &
snapper=$!
run_fio --do_verify=1 --verify_backlog=64
rm -f "$WORK/go"
wait "$snapper" || { cat "$WORK/snap.err" 2>/dev/null; fail "a live snapshot failed under fio"; }
during=$(wc -l <"$WORK/during" 2>/dev/null || echo 0)
say "$during live snapshots taken while fio wrote"
[ "$during" -ge 2 ] || fail "fio finished before two snapshots were taken (make it write more)"
run_fio --verify_only=1
cc snapshot create vm1 last
qemu-img compare -q -f raw -F raw "$(uri vm1)" "$(uri vm1@last)" || fail "vm1@last differs from vm1"
stop_server
start_server
run_fio --verify_only=1
stop_server
cc check || fail "check after live snapshots under fio"
check_template_unchanged
