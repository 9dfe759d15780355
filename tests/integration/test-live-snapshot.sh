#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14: `cowchain snapshot create` on served clones, under continuous writers.  Writers on
# two libnbd connections of vm1 tag every block with (block, sequence) and journal every
# write's issue and completion times; three live snapshots are taken under them by the CLI,
# then two multi-clone snapshots (vm1,vm2) under writers on both clones.  Each snapshot must be
# point-in-time against the journal (every write completed before the command started is in
# it, none issued after it returned, and one instant explains every block, across both clones
# for the multi-clone ones), the clones must hold every last write, the writers must see no
# error and no disconnect.  A clone of a live snapshot must read as the snapshot.  Everything
# is verified again after a server restart, and `check` must be clean.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
setup_pool
JW=$BUILDDIR/tests/integration/nbd-journal-writer
requires_built nbd-journal-writer "$JW"
cc clone create vm2 --from base
CC="$COWCHAIN --pool $POOL"

start_server
CTL=$POOL/run/nbdkit-$SERVER_PID.ctl
for i in $(seq 50); do [ -S "$CTL" ] && break; sleep 0.1; done
[ -S "$CTL" ] || fail "no control socket $CTL"

say "three live snapshots of vm1 under two writing connections"
"$JW" write "$SOCK" vm1 6 1000,2500,4000 "$WORK/j1" \
  "$CC snapshot create vm1 s1" "$CC snapshot create vm1 s2 --description 'under load'" \
  "$CC snapshot create vm1 s3" | tee "$WORK/w1.out" || fail "the writers saw an error"

say "two snapshots of vm1 and vm2 at one instant"
"$JW" write "$SOCK" vm1,vm2 4 1000,2500 "$WORK/j2" \
  "$CC snapshot create vm1,vm2 m1" "$CC snapshot create vm2,vm1 m2" | tee "$WORK/w2.out" ||
  fail "the writers saw an error (multi-clone)"

verify_all() {
  local k=0 s
  for s in s1 s2 s3; do
    "$JW" verify "$SOCK" "vm1@$s" "$WORK/j1" "frozen:$k" || fail "$1: vm1@$s is not point-in-time"
    k=$((k + 1))
  done
  "$JW" verify "$SOCK" "vm1@m1,vm2@m1" "$WORK/j2" frozen:0 || fail "$1: m1 is not one instant"
  "$JW" verify "$SOCK" "vm1@m2,vm2@m2" "$WORK/j2" frozen:1 || fail "$1: m2 is not one instant"
  "$JW" verify "$SOCK" vm1,vm2 "$WORK/j2" final || fail "$1: the clones lost writes"
  "$JW" verify "$SOCK" c1 "$WORK/j1" frozen:1 || fail "$1: the clone of vm1@s2 differs from it"
}

say "a clone of a live snapshot, served while vm1 is"
cc clone create c1 --from vm1@s2
verify_all "served"
grep -q '^snapshot s2 .* under%20load$' "$POOL/clones/vm1" || fail "description of s2"

stop_server
start_server
verify_all "after a restart"
stop_server
cc check || fail "check is not clean after live snapshots"
[ -z "$(ls "$POOL/tmp")" ] || { ls -l "$POOL/tmp"; fail "files left in tmp/"; }
grep -h 'write latency' "$WORK/w1.out" "$WORK/w2.out"
check_template_unchanged
