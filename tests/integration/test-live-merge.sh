#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14 item 4: `cowchain snapshot delete` on a served clone (live merge, docs/POOL.md 6.2),
# under continuous writers.  Writers on two libnbd connections of vm1 tag every block and
# journal every write (nbd-journal-writer); four live snapshots are taken under them.  Then,
# under a second round of writers, two live deletes: s2, which sits below the snapshot s3 (its
# blocks go into s3's file, a frozen layer the server reads), and s4, right below the live top
# (its blocks go into the top through the server, piece by piece, a guest write winning over
# the older data).  s4 holds 32 MiB outside the journal's blocks too, which no writer touches:
# they must reach the top.  While this runs, a client keeps vm1@s3 open (a served frozen export
# whose chain held s2).  Afterwards every remaining snapshot must still be its point in time,
# vm1 must hold every last write, and the same after a server restart; `check` must be clean
# and the deleted layers must be gone.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
setup_pool
JW=$BUILDDIR/tests/integration/nbd-journal-writer
requires_built nbd-journal-writer "$JW"
CC="$COWCHAIN --pool $POOL"

start_server
CTL=$POOL/run/nbdkit-$SERVER_PID.ctl
for i in $(seq 50); do [ -S "$CTL" ] && break; sleep 0.1; done
[ -S "$CTL" ] || fail "no control socket $CTL"

say "four live snapshots of vm1 under two writing connections"
"$JW" write "$SOCK" vm1 5 800,1800,2800 "$WORK/j1" \
  "$CC snapshot create vm1 s1" \
  "qemu-io -f raw -c 'write -P 0x6b 8M 1M' '$(uri vm1)' >/dev/null && $CC snapshot create vm1 s2" \
  "$CC snapshot create vm1 s3" |
  tee "$WORK/w1.out" || fail "the writers saw an error"
qemu-io -f raw -c "write -P 0x5a 16M 32M" "$(uri vm1)" >/dev/null || fail "write 32 MiB"
cc snapshot create vm1 s4
layer_of() { sed -n "s/^snapshot $1 \([0-9a-f-]*\) .*/\1/p" "$POOL/clones/vm1"; }
S2=$(layer_of s2) S4=$(layer_of s4)
[ -n "$S2" ] && [ -n "$S4" ] || fail "no layers for s2, s4"

say "a client holds vm1@s3 open through the merges"
"$CLIENT" hold "$SOCK" vm1@s3 60 >"$WORK/hold.out" 2>&1 &
HOLDER=$!
for i in $(seq 100); do grep -q open "$WORK/hold.out" 2>/dev/null && break; sleep 0.05; done
grep -q open "$WORK/hold.out" || fail "holder of vm1@s3 did not connect"

say "live deletes under writers: s2 into the frozen s3, s4 into the live top"
# Over s4's 32 MiB the guest wrote 46M..47M before the merge and writes 47M..48M during it:
# both must win over s4's older bytes.
qemu-io -f raw -c "write -P 0x77 46M 1M" "$(uri vm1)" >/dev/null || fail "write 46M"
"$JW" write "$SOCK" vm1 6 500,2500 "$WORK/j2" \
  "$CC snapshot delete vm1 s2 >$WORK/d2.out 2>&1" \
  "qemu-io -f raw -c 'write -P 0x77 47M 1M' '$(uri vm1)' >/dev/null & $CC snapshot delete vm1 s4 >$WORK/d4.out 2>&1; r=\$?; wait; exit \$r" |
  tee "$WORK/w2.out" || fail "the writers saw an error during the live merges"
cat "$WORK/d2.out" "$WORK/d4.out"
grep -qE '\([0-9.]+ MiB copied\)' "$WORK/d2.out" || fail "s2's 1 MiB was not copied into s3"
# The server's chains were rebuilt without the deleted layers (forget): it holds neither open,
# though a client kept vm1@s3 (whose chain went through s2) open all along.
if ls -l "/proc/$SERVER_PID/fd" 2>/dev/null | grep -E "$S2|$S4"; then
  fail "the server still holds a deleted layer open"
fi
cc snapshot list vm1 >"$WORK/list"
! grep -qw s2 "$WORK/list" || fail "s2 still listed"
! grep -qw s4 "$WORK/list" || fail "s4 still listed"
[ ! -e "$POOL/layers/$S2.cow" ] || fail "the layer of s2 is still there"
[ ! -e "$POOL/layers/$S4.cow" ] || fail "the layer of s4 is still there"

verify_all() {
  "$JW" verify "$SOCK" vm1@s1 "$WORK/j1" frozen:0 || fail "$1: vm1@s1 is not point-in-time"
  "$JW" verify "$SOCK" vm1@s3 "$WORK/j1" frozen:2 || fail "$1: vm1@s3 is not point-in-time"
  "$JW" verify "$SOCK" vm1 "$WORK/j2" final || fail "$1: vm1 lost writes"
  for e in vm1@s3 vm1; do
    qemu-io -r -f raw -c "read -P 0x6b 8M 1M" "$(uri $e)" >"$WORK/read.out" 2>&1 &&
      ! grep -q 'Pattern verification failed' "$WORK/read.out" || fail "$1: $e lost s2's 1 MiB"
  done
  qemu-io -r -f raw -c "read -P 0x5a 16M 30M" -c "read -P 0x77 46M 2M" "$(uri vm1)" >"$WORK/read.out" 2>&1 &&
    ! grep -q 'Pattern verification failed' "$WORK/read.out" || fail "$1: s4's 32 MiB did not reach vm1"
}
verify_all "served"
kill "$HOLDER" 2>/dev/null || true
wait "$HOLDER" 2>/dev/null || true

stop_server
start_server
verify_all "after a restart"
stop_server
cc check || fail "check is not clean after live merges"
grep -h 'write latency' "$WORK/w1.out" "$WORK/w2.out"
check_template_unchanged
