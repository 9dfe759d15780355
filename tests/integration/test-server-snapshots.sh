#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A chain of snapshots served live, checked against an independent oracle: the same writes
# applied to a qcow2 backing chain built with qemu-img.  Snapshots taken while the server
# runs appear as read-only exports, each equal to its qcow2 layer; revert and a clone from a
# snapshot read as the right state.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires qemu-img
requires qemu-io
setup_pool

start_server
K=1024
# Round r's writes: patterns at different places each round, overlapping earlier rounds,
# unaligned, across sub-cluster (4K) and cluster (128K) boundaries, plus write-zeroes over data.
round_cmds() {
  local r=$1
  echo "write -P 0x$((r + 40)) $((r * 192 * K + 100)) $((64 * K + r * 1000))"
  echo "write -P 0x$((r + 60)) $((r * 512 * K - 3 * K)) $((8 * K))"
  echo "write -P 0x$((r + 80)) $((r * 3 * 1024 * K + 5)) 5"
  echo "write -z $(((6 - r) * 100 * K)) $((20 * K + r))"
  echo "write -P 0x$((r + 20)) $((63 * 1024 * K - r * 4 * K)) $((4 * K))"
}
apply() { # apply ROUND TARGET [-f FMT]
  local r=$1 target=$2 fmt=${3:-raw} args=() c
  while read -r c; do
    args+=(-c "$c")
  done < <(round_cmds "$r")
  qemu-io -f "$fmt" "${args[@]}" "$target" >/dev/null || fail "round $r on $target"
}

prev=$WORK/base.raw
prevfmt=raw
for r in 1 2 3 4 5; do
  qemu-img create -q -f qcow2 -b "$prev" -F $prevfmt "$WORK/ov$r.qcow2"
  apply $r "$(uri vm1)"
  apply $r "$WORK/ov$r.qcow2" qcow2
  # Live: no connection is open now, so the server holds nothing of vm1.
  retry cc snapshot create vm1 s$r
  prev=$WORK/ov$r.qcow2
  prevfmt=qcow2
done
apply 6 "$(uri vm1)"
qemu-img create -q -f qcow2 -b "$prev" -F qcow2 "$WORK/ov6.qcow2"
apply 6 "$WORK/ov6.qcow2" qcow2

for r in 1 2 3 4 5; do
  qemu-img compare -f raw -F qcow2 "$(uri vm1@s$r)" "$WORK/ov$r.qcow2" >/dev/null ||
    fail "vm1@s$r differs from the qcow2 oracle"
done
qemu-img compare -f raw -F qcow2 "$(uri vm1)" "$WORK/ov6.qcow2" >/dev/null ||
  fail "vm1 differs from the qcow2 oracle"
# Snapshots stay read-only and unchanged by later writes.
qemu-io -f raw -c 'write -P 0x99 0 4k' "$(uri vm1@s2)" >/dev/null 2>&1 &&
  fail "vm1@s2 took a write"

# A clone from a snapshot, written to, leaves the snapshot alone.
cc clone create fork --from vm1@s3
qemu-img compare -f raw -F qcow2 "$(uri fork)" "$WORK/ov3.qcow2" >/dev/null ||
  fail "clone of vm1@s3 differs from the oracle"
qemu-io -f raw -c 'write -P 0x77 1M 1M' "$(uri fork)" >/dev/null
qemu-img compare -f raw -F qcow2 "$(uri vm1@s3)" "$WORK/ov3.qcow2" >/dev/null ||
  fail "writing to a clone of vm1@s3 changed vm1@s3"

# Revert while serving: vm1 reads as s2 again, later snapshots still there.
retry cc snapshot revert vm1 s2
qemu-img compare -f raw -F qcow2 "$(uri vm1)" "$WORK/ov2.qcow2" >/dev/null ||
  fail "vm1 after revert to s2 differs from the oracle"
qemu-img compare -f raw -F qcow2 "$(uri vm1@s5)" "$WORK/ov5.qcow2" >/dev/null ||
  fail "vm1@s5 changed by a revert"
check_template_unchanged
