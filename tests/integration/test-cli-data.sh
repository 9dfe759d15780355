#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Pool operations with real data written through the NBD server: snapshot create / revert /
# delete (merge), full clone and template promote keep every state's bytes, checked with
# qemu-img compare against raw reference files that got the same writes (an independent
# oracle).  Operations on a clone a client holds open are refused, naming the holder.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires qemu-io
requires qemu-img
setup_pool
start_server

M=$((1 << 20))
# write_both REF CMD...: the same qemu-io commands on vm1 (through the server) and on REF.
write_both() {
  local ref=$1 args=() c
  shift
  for c in "$@"; do
    args+=(-c "$c")
  done
  qemu-io -f raw "${args[@]}" -c flush "$(uri vm1)" >/dev/null || fail "qemu-io on vm1: $*"
  qemu-io -f raw "${args[@]}" "$ref" >/dev/null || fail "qemu-io on $ref"
}
# settle CMD...: run CMD, retrying for up to 10 s while it fails only because the server has
# not yet closed the layer of a client that just disconnected.
settle() {
  local i
  for i in $(seq 100); do
    if "$@" 2>"$WORK/settle.err"; then
      return 0
    fi
    # the layer still locked by the server, or (a served clone) its connection still counted
    grep -qE 'in use by|connections? open on nbdkit pid' "$WORK/settle.err" || break
    sleep 0.1
  done
  cat "$WORK/settle.err" >&2
  fail "failed: $*"
}
# same EXPORT REF
same() {
  qemu-img compare -q -f raw -F raw "$(uri "$1")" "$2" || fail "$1 differs from $(basename "$2")"
}

cp --sparse=always "$WORK/base.raw" "$WORK/r1.raw"
write_both "$WORK/r1.raw" "write -P 0xa1 $((512 * 1024)) $M" "write -z $((2 * M + 4096)) 8192" \
  "discard $((60 * M)) $((128 * 1024))" "write -P 0xa2 $((10 * M + 100)) 5000"
same vm1 "$WORK/r1.raw"

# A client holding vm1 open: a snapshot goes through the server (docs/POOL.md 6.1) and holds
# vm1's data; the operations that would change the disk under the client fail, naming it.
qemu-io -f raw -c 'sleep 4000' "$(uri vm1)" >/dev/null &
holder=$!
sleep 1
cc snapshot create vm1 busy || fail "a snapshot of a served clone"
same vm1@busy "$WORK/r1.raw"
expect_fail cc template promote vm1 busy
grep -q 'in use by' "$WORK/expect_fail.out" || fail "busy refusal does not name the holder"
grep -q 'nbdkit' "$WORK/expect_fail.out" || cat "$WORK/expect_fail.out"
expect_fail cc snapshot revert vm1 busy
expect_fail cc clone delete vm1
# check skips the layer being written (its dirty bit is expected) instead of reporting it.
cc check >"$WORK/check-busy.out" || fail "check fails while a client writes vm1"
grep -q 'in use by .*skipped' "$WORK/check-busy.out" || fail "check does not say vm1 is in use"
# info works on a served clone (no locks).
cc info vm1 --backing-chain >/dev/null || fail "info on a served clone"
wait $holder

settle cc snapshot create vm1 s1 --description "first"
same vm1@s1 "$WORK/r1.raw"
cp --sparse=always "$WORK/r1.raw" "$WORK/r2.raw"
write_both "$WORK/r2.raw" "write -P 0xb1 $((768 * 1024)) $M" "write -z 0 4096" \
  "write -P 0xb2 $((30 * M)) $((3 * M))"
settle cc snapshot create vm1 s2
cp --sparse=always "$WORK/r2.raw" "$WORK/r3.raw"
write_both "$WORK/r3.raw" "write -P 0xc1 $((2 * M)) $((2 * M))" "discard 0 $((256 * 1024))"
same vm1@s1 "$WORK/r1.raw"
same vm1@s2 "$WORK/r2.raw"
same vm1 "$WORK/r3.raw"

# Revert: vm1 reads as s1 again; s2 stays.
settle cc snapshot revert vm1 s1
same vm1 "$WORK/r1.raw"
same vm1@s2 "$WORK/r2.raw"
cp --sparse=always "$WORK/r1.raw" "$WORK/r4.raw"
write_both "$WORK/r4.raw" "write -P 0xd1 $((100 * 1024)) 4096" "write -P 0xd2 $((59 * M)) $((2 * M))"

# Delete s1 while a reader holds vm1@s2 (the server has s2's layer, so the merge is live,
# POOL.md 6.2): merged into both children (s2's layer and vm1's top); nobody loses a byte.
qemu-io -r -f raw -c 'sleep 3000' "$(uri vm1@s2)" >/dev/null &
holder=$!
sleep 1
cc snapshot delete vm1 s1 || fail "live delete of s1 under a reader of vm1@s2"
same vm1@s2 "$WORK/r2.raw"
wait $holder
same vm1 "$WORK/r4.raw"
same vm1@s2 "$WORK/r2.raw"
has '"s1"' cc snapshot list vm1 --json && fail "s1 still listed"
has '^backing file: ../images/base.raw$' cc info vm1 --backing-chain ||
  fail "vm1's top was not relinked to the template"

# Full clone of a snapshot: same bytes, no parent.
cc clone create full2 --from vm1@s2 --full
same full2 "$WORK/r2.raw"

# Promote: the template is vm1's state now; later writes to vm1 don't reach it.
settle cc template promote vm1 golden
same golden "$WORK/r4.raw"
same vm1 "$WORK/r4.raw"
cp --sparse=always "$WORK/r4.raw" "$WORK/r5.raw"
write_both "$WORK/r5.raw" "write -P 0xe1 0 $M"
same golden "$WORK/r4.raw"
same vm1 "$WORK/r5.raw"
cc clone create fromgolden --from golden
same fromgolden "$WORK/r4.raw"

# A snapshot under a template cannot be merged away (templates are immutable).
settle cc snapshot create vm1 s3
settle cc template promote vm1 golden2
expect_fail cc snapshot delete vm1 s3
grep -q 'templates are immutable' "$WORK/expect_fail.out" || fail "refusal reason"
same golden2 "$WORK/r5.raw"

# Delete s2: after the revert nothing sits on it but full2 was copied, not linked: it just goes.
settle cc snapshot delete vm1 s2
same vm1 "$WORK/r5.raw"
same full2 "$WORK/r2.raw"

check_template_unchanged # through the server too
stop_server
SOCK=
cc check | tee "$WORK/check.out"
grep -q ', 0 errors, 0 leaks' "$WORK/check.out" || fail "check not clean"
check_template_unchanged
