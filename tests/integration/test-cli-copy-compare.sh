#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The copy engine and both merge directions (issue 16), byte for byte against qemu-img: a qcow2
# chain built by qemu-img with the same writes is the oracle (`qemu-img compare`).  The chains
# have holes, zeroes (write-zeroes, discard), writes that fill sub-clusters only in part, and a
# raw template whose size ends inside a sub-cluster.  Full clone, export to raw, and snapshot
# delete in each direction (into the child; the child into the snapshot's layer, with and
# without layers above the child) must all read the same as the oracle; so must a full clone
# made bigger than its source.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires qemu-io
requires qemu-img
setup_pool
# A second template whose last sub-cluster is partial: 8 MiB + 1536 bytes, data to the end.
truncate -s $((8 * 1048576 + 1536)) "$WORK/odd.raw"
qemu-io -f raw -c 'write -P 0x44 0 64k' -c "write -P 0x45 $((8 * 1048576 - 4096)) 5632" \
  "$WORK/odd.raw" >/dev/null
cc template import odd "$WORK/odd.raw"
cc clone create vm2 --from base
cc clone create vm3 --from odd
start_server

Q=$WORK/q
mkdir -p "$Q"
# step NAME QCOW CMD...: the qemu-io commands on clone NAME (through the server) and on the
# qcow2 image QCOW.
step() {
  local name=$1 q=$2 args=() c
  shift 2
  for c in "$@"; do
    args+=(-c "$c")
  done
  qemu-io -f raw "${args[@]}" -c flush "$(uri "$name")" >/dev/null || fail "qemu-io on $name: $*"
  qemu-io -f qcow2 "${args[@]}" "$q" >/dev/null || fail "qemu-io on $q"
}
# overlay NEW BACKING FMT: a qcow2 overlay (an external snapshot in qemu terms)
overlay() { qemu-img create -q -f qcow2 -F "$3" -b "$2" "$1" || fail "qemu-img create $1"; }
snap() { retry cc snapshot create "$1" "$2"; }
# same EXPORT QCOW
same() {
  qemu-img compare -q -f raw -F qcow2 "$(uri "$1")" "$2" || fail "$1 differs from $(basename "$2")"
}
same_file() {
  qemu-img compare -q -f raw -F qcow2 "$1" "$2" || fail "$1 differs from $(basename "$2")"
}
M=1048576

# vm1: s1 small (256 KiB in odd places), s2 large (8 MiB), then the top.
overlay "$Q/a1.qcow2" "$WORK/base.raw" raw
step vm1 "$Q/a1.qcow2" "write -P 0xa1 $((512 * 1024)) 128k" "write -P 0xa2 $((10 * M + 100)) 5000" \
  "write -z $((2 * M + 4096)) 8192" "discard $((60 * M)) 131072"
snap vm1 s1
overlay "$Q/a2.qcow2" "$Q/a1.qcow2" qcow2
step vm1 "$Q/a2.qcow2" "write -P 0xb1 $((16 * M)) $((8 * M))" "write -P 0xb2 $((2 * M + 1000)) 3000" \
  "write -z $((20 * M)) $((1 * M))"
snap vm1 s2
overlay "$Q/a3.qcow2" "$Q/a2.qcow2" qcow2
step vm1 "$Q/a3.qcow2" "write -P 0xc1 $((30 * M)) 64k" "write -z $((16 * M)) 4096" \
  "write -P 0xc2 $((63 * M + 512)) 512"
same vm1 "$Q/a3.qcow2"
same vm1@s1 "$Q/a1.qcow2"
same vm1@s2 "$Q/a2.qcow2"

# Full clone and export: the flattened chain, sparse.
retry cc clone create f1 --from vm1@s2 --full
same f1 "$Q/a2.qcow2"
stop_server
cc export vm1 "$WORK/vm1.raw"
same_file "$WORK/vm1.raw" "$Q/a3.qcow2"
cc export vm1@s1 "$WORK/s1.raw"
same_file "$WORK/s1.raw" "$Q/a1.qcow2"
[[ $(allocated_bytes "$WORK/vm1.raw") -lt $((24 * M)) ]] || fail "export is not sparse"
cc clone create f3 --from odd --full
qemu-img compare -q -f raw -F raw "$WORK/odd.raw" "$POOL/images/odd.raw" || fail "odd import"
start_server
qemu-img compare -q -f raw -F raw "$(uri f3)" "$WORK/odd.raw" || fail "full clone of odd"
# vm3 on odd: writes at the partial end, then a snapshot and a full clone of it.
cp --sparse=always "$WORK/odd.raw" "$WORK/odd-ref.raw"
qemu-io -f raw -c "write -P 0x46 $((8 * M - 8192)) 9728" -c flush "$(uri vm3)" >/dev/null
qemu-io -f raw -c "write -P 0x46 $((8 * M - 8192)) 9728" "$WORK/odd-ref.raw" >/dev/null
snap vm3 o1
retry cc clone create f4 --from vm3@o1 --full
qemu-img compare -q -f raw -F raw "$(uri f4)" "$WORK/odd-ref.raw" || fail "full clone of vm3@o1"
cc export vm3@o1 "$WORK/o1.raw"
qemu-img compare -q -f raw -F raw "$WORK/o1.raw" "$WORK/odd-ref.raw" || fail "export of vm3@o1"
# A full clone bigger than its source: the source's partial last sub-cluster is not the end of
# the new layer (it was refused as "not whole sub-clusters" before); the rest reads zero.
retry cc clone create f5 --from vm3@o1 --full --size 16M
cp --sparse=always "$WORK/odd-ref.raw" "$WORK/odd-16m.raw"
truncate -s 16M "$WORK/odd-16m.raw"
qemu-img compare -q -f raw -F raw "$(uri f5)" "$WORK/odd-16m.raw" || fail "full clone f5 (16M)"

# Merge into the child: s1 holds less than what s2's layer would have to give it.
retry cc snapshot delete vm1 s1 >"$WORK/d1.out"
grep -q 'merged into the layer above' "$WORK/d1.out" || fail "s1: wrong direction: $(cat "$WORK/d1.out")"
same vm1@s2 "$Q/a2.qcow2"
same vm1 "$Q/a3.qcow2"
cc check >/dev/null || fail "check after merge into the child"

# The child into the snapshot: s2 holds 8 MiB, vm1's top 68 KiB.
old_s2=$(cc snapshot info vm1 s2 --json | sed -n 's/.*"layer": *"\([^"]*\)".*/\1/p')
retry cc snapshot delete vm1 s2 >"$WORK/d2.out"
grep -q "merged into the snapshot's layer" "$WORK/d2.out" ||
  fail "s2: wrong direction: $(cat "$WORK/d2.out")"
same vm1 "$Q/a3.qcow2"
[[ -n $old_s2 ]] && grep -q "^top $old_s2" "$POOL/clones/vm1" || fail "vm1 is not on s2's layer"
cc check >/dev/null || fail "check after merge into the snapshot"

# The child into the snapshot when the child has a layer above it (relinked onto the
# snapshot's layer), and another snapshot after: vm2 t1 (large) <- t2 (small) <- top.
overlay "$Q/b1.qcow2" "$WORK/base.raw" raw
step vm2 "$Q/b1.qcow2" "write -P 0xd1 $((4 * M)) $((6 * M))" "write -z $((5 * M)) 8192"
snap vm2 t1
overlay "$Q/b2.qcow2" "$Q/b1.qcow2" qcow2
step vm2 "$Q/b2.qcow2" "write -P 0xd2 $((5 * M + 2048)) 4096" "discard $((6 * M)) 131072"
snap vm2 t2
overlay "$Q/b3.qcow2" "$Q/b2.qcow2" qcow2
step vm2 "$Q/b3.qcow2" "write -P 0xd3 $((5 * M)) 1024"
retry cc snapshot delete vm2 t1 >"$WORK/d3.out"
grep -q "merged into the snapshot's layer" "$WORK/d3.out" ||
  fail "t1: wrong direction: $(cat "$WORK/d3.out")"
same vm2@t2 "$Q/b2.qcow2"
same vm2 "$Q/b3.qcow2"
stop_server
cc check >"$WORK/check.out" || fail "check: $(cat "$WORK/check.out")"
cc check --repair >/dev/null
cc check >"$WORK/check2.out"
grep -q ', 0 errors, 0 leaks' "$WORK/check2.out" || fail "check after repair: $(cat "$WORK/check2.out")"
check_template_unchanged
echo ok
