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
requires fio
requires fio --enghelp=nbd
setup_pool

run_fio() {
  (cd "$WORK" && timeout 250 fio --name=cowchain --ioengine=nbd --uri="$(uri vm1)" --size=48M \
    --rw=randwrite --bsrange=4k-128k --iodepth=16 --numjobs=1 --loops=6 \
    --verify=crc32c --verify_fatal=1 --randseed=1415 "$@" --output="$WORK/fio.out") || {
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
    if [ $n -ge 2 ]; then
      # Even rounds: f(n), right below the live top.  Odd: f(n-2), the one left below f(n),
      # merged into that frozen layer.
      if [ $((n % 2)) = 1 ]; then victim=f$((n - 2)); else victim=f$n; fi
      cc snapshot delete vm1 "$victim" >/dev/null ||
        { echo "delete $victim failed" >"$WORK/snap.err"; exit 1; }
      [ ! -e "$WORK/go" ] || echo "$victim" >>"$WORK/during"
    fi
    sleep 0.1
  done
) &
snapper=$!
run_fio --do_verify=1 --verify_backlog=64
rm -f "$WORK/go"
wait "$snapper" || { cat "$WORK/snap.err" 2>/dev/null; fail "a live snapshot or delete failed under fio"; }
during=$(wc -l <"$WORK/during" 2>/dev/null || echo 0)
say "$during live deletes done while fio wrote"
[ "$during" -ge 4 ] || fail "fio finished before four live deletes were done (make it write more)"
run_fio --verify_only=1
stop_server
start_server
run_fio --verify_only=1
stop_server
cc check || fail "check after live merges under fio"
has ' 0 errors, 0 leaks' cc check || { cat "$WORK/has.out"; fail "check: leaks after live merges"; }
check_template_unchanged
