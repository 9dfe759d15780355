#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Bigger clones and growing (issue 18 item 3), through the plugin with qemu-img and qemu-io:
# `clone create --size` makes a clone larger than its template whose new part reads as zeroes;
# `clone resize` grows a clone in place, and by copying its top when the size needs a larger
# L1 region; shrinking and a smaller --size are refused with the reason; a resize while a
# client is connected is refused naming the holder, and the next connection sees the new size;
# a snapshot keeps its size; an odd-sized clone's last bytes survive the grow.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires qemu-io
requires qemu-img
requires_client
setup_pool

size_of() {
  qemu-img info --output=json "$(uri "$1")" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'
}

# A reference: the template's bytes, then zeroes.
cp --sparse=always "$WORK/base.raw" "$WORK/ref.raw"
truncate -s 128M "$WORK/ref.raw"

say "clone create --size"
cc clone create big --from base --size 128M
expect_fail cc clone create small --from base --size 32M
grep -q "smaller than the source" "$WORK/expect_fail.out" || fail "no reason: $(cat "$WORK/expect_fail.out")"
expect_fail cc clone create bad --from base --size lots
has '"size": 134217728' cc clone list --json || fail "clone list does not show 128 MiB"
cc clone create fullbig --from base --full --size 128M
cc export fullbig "$WORK/fullbig.raw"
cmp "$WORK/fullbig.raw" "$WORK/ref.raw" || fail "a full clone with --size differs from template + zeroes"

start_server
[ "$(size_of big)" = 134217728 ] || fail "big is not 128 MiB over NBD"
qemu-img compare -s -f raw -F raw "$(uri big)" "$WORK/ref.raw" || fail "big differs from template + zeroes"
qemu-io -f raw -c "write -P 0xc1 100M 1M" -c "write -P 0xc2 $((64 * 1024 * 1024 - 512)) 1024" "$(uri big)" ||
  fail "writes on big"
qemu-io -f raw "$WORK/ref.raw" -c "write -P 0xc1 100M 1M" -c "write -P 0xc2 $((64 * 1024 * 1024 - 512)) 1024" >/dev/null
qemu-io -f raw -r -c "read -P 0 65M 35M" -c "read -P 0xc1 100M 1M" -c "read -P 0 101M 27M" \
  -c "read -P 0xc2 $((64 * 1024 * 1024 - 512)) 1024" "$(uri big)" || fail "reads on big"
qemu-img compare -s -f raw -F raw "$(uri big)" "$WORK/ref.raw" || fail "big differs after writes"

say "resize while a client is connected is refused"
qemu-io -f raw -c "write -P 0x5a 8192 4096" "$(uri vm1)" >/dev/null || fail "write on vm1"
"$CLIENT" hold "$SOCK" vm1 60 >"$WORK/hold.out" &
HOLDER=$!
for _ in $(seq 300); do
  grep -q open "$WORK/hold.out" 2>/dev/null && break
  kill -0 $HOLDER 2>/dev/null || fail "the holding client died"
  sleep 0.1
done
grep -q open "$WORK/hold.out" || fail "the holding client did not connect"
expect_fail cc clone resize vm1 128M
grep -Eq "in use by .*nbdkit" "$WORK/expect_fail.out" || fail "no holder named: $(cat "$WORK/expect_fail.out")"
kill $HOLDER
wait $HOLDER 2>/dev/null || true
[ "$(size_of vm1)" = 67108864 ] || fail "vm1 changed size"

say "resize in place, snapshot keeps its size"
retry cc snapshot create vm1 pre
retry cc clone resize vm1 128M
top1=$(cc clone list --json | python3 -c 'import json,sys; print([c["top"] for c in json.load(sys.stdin) if c["name"]=="vm1"][0])')
[ "$(size_of vm1)" = 134217728 ] || fail "a new connection does not see 128 MiB"
[ "$(size_of vm1@pre)" = 67108864 ] || fail "the snapshot changed size"
cp --sparse=always "$WORK/base.raw" "$WORK/vm1.raw"
qemu-io -f raw -c "write -P 0x5a 8192 4096" "$WORK/vm1.raw" >/dev/null
qemu-img compare -s -f raw -F raw "$(uri vm1@pre)" "$WORK/vm1.raw" || fail "the snapshot's data changed"
truncate -s 128M "$WORK/vm1.raw"
qemu-img compare -s -f raw -F raw "$(uri vm1)" "$WORK/vm1.raw" || fail "vm1 after grow != data + zeroes"
qemu-io -f raw -c "write -P 0xd1 127M 1M" "$(uri vm1)" >/dev/null || fail "write in the new part"
qemu-io -f raw "$WORK/vm1.raw" -c "write -P 0xd1 127M 1M" >/dev/null

say "shrink refused"
expect_fail cc clone resize vm1 64M
grep -q "shrinking is refused" "$WORK/expect_fail.out" || fail "no reason: $(cat "$WORK/expect_fail.out")"
expect_fail cc clone resize nosuch 1G
grep -q "nosuch" "$WORK/expect_fail.out" || fail "the missing clone is not named"
retry cc clone resize vm1 128M # the same size: nothing to do

say "resize by copying the top (larger L1 region)"
retry cc clone resize vm1 20G
top2=$(cc clone list --json | python3 -c 'import json,sys; print([c["top"] for c in json.load(sys.stdin) if c["name"]=="vm1"][0])')
[ "$top1" != "$top2" ] || fail "a 20 GiB grow should have copied the top"
[ ! -e "$POOL/layers/$top1.cow" ] || fail "the old top was left behind"
[ "$(size_of vm1)" = 21474836480 ] || fail "vm1 is not 20 GiB"
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/vm1.raw" || fail "vm1 after the copy grow differs"
qemu-io -f raw -c "write -P 0xe1 19G 64k" -c "read -P 0xe1 19G 64k" -c "read -P 0 15G 1M" "$(uri vm1)" >/dev/null ||
  fail "I/O at 19 GiB"

say "an odd-sized clone"
cc template create odd --size $((1024 * 1024 + 512))
cc clone create o --from odd
qemu-io -f raw -c "write -P 0xf1 $((1024 * 1024)) 512" "$(uri o)" >/dev/null
retry cc clone resize o 2M
qemu-io -f raw -r -c "read -P 0xf1 $((1024 * 1024)) 512" -c "read -P 0 $((1024 * 1024 + 512)) $((1024 * 1024 - 512))" \
  "$(uri o)" >/dev/null || fail "odd clone after grow"
stop_server
cc check
check_template_unchanged
