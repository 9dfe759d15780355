#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The full clone's copy calls follow the source files' layout (issue 16, POOL.md 5.4): one call
# per run that is contiguous in a source file, not one per cluster in virtual order; on a file
# system that shares extents (XFS made with reflink=1, loop-mounted) the map tables between two
# runs of a layer and the template bytes the layers hide are bridged, so a layer's runs and the
# whole template are one FICLONERANGE each.  The calls are counted with strace on a chain whose
# physical layout is known (each layer's clusters are where its writes put them, in write
# order); the data is compared with `qemu-img convert` of the same snapshot through the server.
#
# The chain (128 KiB clusters; a 48 MiB template, 384 clusters, two L2 stretches):
#   s1 writes clusters 3, 10, 11, 300, 301, 40, 90 in this order: its file holds
#      [L2 0][3][10][11][L2 1][300][301][40][90]
#   s2 writes 50, 20, 7, 40 (hiding s1's 40) and zeroes 100: [L2 0][50][20][7][40]
# Visible: s2's four clusters (one run of its file), s1's 3,10,11 | 300,301 | 90 (three runs:
# an L2 table and the hidden 40 lie between), the template in ten runs: [0,3) [4,7) [8,10)
# [12,20) [21,40) [41,50) [51,90) [91,100) [101,300) [302,384).
#   In source order:  1 + 3 + 10 = 14 copy_file_range calls.
#   In virtual order (the engine before issue 16): 19 (s1's and s2's clusters one by one, the
#   template run [101,300) split at the L2 stretch).
#   With bridges (XFS): s2 one copy_file_range; s1 one clone over the L2 table, one copy for
#   90 (a hidden layer cluster is never bridged); the template one clone: 2 + 2 calls.
# Needs root for the XFS half (loop mount in a private mount namespace); without it the first
# half runs and the test ends with a machine-limit skip.
if [ -z "${COWCHAIN_IN_NAMESPACE:-}" ] && [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null &&
  unshare -m --propagation private true 2>/dev/null; then
  COWCHAIN_IN_NAMESPACE=1 exec unshare -m --propagation private bash "$0" "$@"
fi
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires qemu-io
requires qemu-img
requires strace
requires_cowchain

K=131072

# build_chain: template t, clone vm, snapshots s1 and s2 as above, in $POOL (server running).
build_chain() {
  local w=() c
  head -c $((384 * K)) /dev/urandom >"$WORK/t.raw"
  cc pool init
  cc template import t "$WORK/t.raw"
  cc clone create vm --from t
  start_server
  for c in 3 10 11 300 301 40 90; do w+=(-c "write -P 0x51 $((c * K)) $K"); done
  qemu-io -f raw "${w[@]}" -c flush "$(uri vm)" >/dev/null || fail "writing s1"
  retry cc snapshot create vm s1
  w=()
  for c in 50 20 7 40; do w+=(-c "write -P 0x52 $((c * K)) $K"); done
  qemu-io -f raw "${w[@]}" -c "write -z $((100 * K)) $K" -c flush "$(uri vm)" >/dev/null ||
    fail "writing s2"
  retry cc snapshot create vm s2
}

# clone_counted NAME WANT_CFR WANT_CLONES: full clone of vm@s2 under strace; the copy calls it
# made must be exactly these; then the clone must read as qemu-img convert of vm@s2.
clone_counted() {
  local name=$1 want_cfr=$2 want_clones=$3 cfr clones
  strace -qq -e trace=copy_file_range,ioctl -o "$WORK/$name.trace" \
    "$COWCHAIN" --pool "$POOL" clone create "$name" --from vm@s2 --full ||
    fail "full clone $name"
  cfr=$(grep -c '^copy_file_range(' "$WORK/$name.trace" || true)
  clones=$(grep -cE '^ioctl\(.*FICLONERANGE.* = 0$' "$WORK/$name.trace" || true)
  say "$name: $cfr copy_file_range, $clones FICLONERANGE"
  if [ "$cfr" != "$want_cfr" ] || [ "$clones" != "$want_clones" ]; then
    cat "$WORK/$name.trace" >&2
    fail "$name: $cfr copy_file_range and $clones clones; want $want_cfr and $want_clones"
  fi
  qemu-img convert -f raw -O raw "$(uri vm@s2)" "$WORK/$name.ref" || fail "qemu-img convert"
  cc export "$name" "$WORK/$name.raw"
  cmp "$WORK/$name.ref" "$WORK/$name.raw" || fail "$name differs from vm@s2"
  has ' 0 errors, 0 leaks' cc check || fail "check after $name: $(cat "$WORK/has.out")"
  rm -f "$WORK/$name.ref" "$WORK/$name.raw"
}

# 1. The work directory's file system.  One that shares extents gets the bridged counts.
head -c 65536 /dev/urandom >"$WORK/probe"
if cp --reflink=always "$WORK/probe" "$WORK/probe2" 2>/dev/null; then
  say "$WORK shares extents: expecting bridged copies"
  want=(2 2)
else
  want=(14 0)
fi
build_chain
template_sum
clone_counted f1 "${want[@]}"
check_template_unchanged
stop_server

# 2. XFS with reflink, loop-mounted.
if [ -z "${COWCHAIN_IN_NAMESPACE:-}" ]; then
  machine_limit "not root" "the XFS half needs a loop mount; the $WORK half passed"
fi
requires mkfs.xfs
truncate -s 512M "$WORK/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$WORK/xfs.img" || fail "mkfs.xfs"
mkdir "$WORK/xfs"
mount -o loop "$WORK/xfs.img" "$WORK/xfs" ||
  machine_limit "cannot loop-mount" "root in a private mount namespace, and still refused"
on_exit umount "$WORK/xfs"
POOL=$WORK/xfs/pool
build_chain
template_sum
clone_counted f2 2 2
check_template_unchanged
# The bridged template bytes are shared, not copied: the new layer holds more than it names
# (POOL.md 5.4), and less than the template and the layers it names together.
echo "full clone on XFS: $(cc info f2 --json)"
