#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Extents report holes and zeroes across the whole chain, so qemu-img convert and nbdcopy
# copy an export out sparsely (allocated size stays near the data size) and exactly.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires qemu-img
requires qemu-io
requires nbdcopy
requires nbdinfo
setup_pool

start_server
# Some data of the clone's own, and a zeroed range over template data.
qemu-io -f raw -c 'write -P 0x5c 8M 1M' -c 'write -z 2M 512k' -c 'discard 60M 1M' \
  "$(uri vm1)" >/dev/null
cp --sparse=always "$WORK/base.raw" "$WORK/ref.raw"
qemu-io -f raw -c 'write -P 0x5c 8M 1M' -c 'write -z 2M 512k' -c 'discard 60M 1M' \
  "$WORK/ref.raw" >/dev/null

# The map says where the data is: [0,1M) [2.5M,3M) [8M,9M) and nothing past 9M.
nbdinfo --map "$(uri vm1)" >"$WORK/map"
cat "$WORK/map"
awk '$3 == 0 { data += $2 } END { exit !(data >= 2621440 && data <= 4194304) }' "$WORK/map" ||
  fail "block status reports an unexpected amount of data"
nbdinfo --map "$(uri vm1)" | awk '$1 >= 9437184 && $3 == 0 { bad = 1 } END { exit bad }' ||
  fail "block status reports data past 9M"

MAX=$((8 * 1024 * 1024)) # 2.5 MiB of data, plus slack for filesystem granularity
for e in vm1 base; do
  qemu-img convert -f raw -O raw "$(uri $e)" "$WORK/convert-$e.raw"
  nbdcopy "$(uri $e)" "$WORK/nbdcopy-$e.raw"
  for f in "$WORK/convert-$e.raw" "$WORK/nbdcopy-$e.raw"; do
    [ "$(stat -c %s "$f")" -eq $((64 * 1024 * 1024)) ] || fail "$f: wrong size"
    a=$(allocated_bytes "$f")
    echo "$f: $a bytes allocated"
    [ "$a" -le $MAX ] || fail "$f: $a bytes allocated, more than $MAX: the copy is not sparse"
  done
done
for f in convert-vm1 nbdcopy-vm1; do
  cmp "$WORK/$f.raw" "$WORK/ref.raw" || fail "$f.raw differs from the reference"
done
for f in convert-base nbdcopy-base; do
  cmp "$WORK/$f.raw" "$WORK/base.raw" || fail "$f.raw differs from the template"
done
# And the other way: nbdcopy into a fresh clone, then compare.
cc clone create target --from base
nbdcopy "$WORK/ref.raw" "$(uri target)"
qemu-img compare -f raw -F raw "$(uri target)" "$WORK/ref.raw" || fail "nbdcopy into a clone"
check_template_unchanged
