#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The cowchain command without a server: every metadata command, its output formats (tables and
# --json parsed with jq), --help, and the pool layout it leaves behind.  Data is checked through
# `cowchain export` against the imported file with qemu-img compare.
source "$(dirname "$0")/../lib/functions.sh"
requires_cowchain
requires qemu-io
requires qemu-img
requires jq

make_template_file "$WORK/base.raw"

# Pool from --pool, --pool=DIR and $COWCHAIN_POOL.
cc pool init
[ "$(cat "$POOL/cowchain-pool")" = "cowchain-pool 1" ] || fail "marker"
for d in images layers templates clones tmp; do
  [ -d "$POOL/$d" ] || fail "pool init did not create $d/"
done
"$COWCHAIN" --pool="$POOL" template list >/dev/null || fail "--pool=DIR"
COWCHAIN_POOL=$POOL "$COWCHAIN" template list >/dev/null || fail "\$COWCHAIN_POOL"

# Templates.
cc template import base "$WORK/base.raw"
[ "$(stat -c %a "$POOL/images/base.raw")" = 400 ] || fail "template image is not 0400 (read-only, owner-only)"
[ "$(stat -c %s "$POOL/images/base.raw")" = $((64 << 20)) ] || fail "template image size"
# Sparse: the 3 MiB of data, not 64 MiB.
[ "$(allocated_bytes "$POOL/images/base.raw")" -lt $((8 << 20)) ] || fail "import is not sparse"
cc template create blank --size 1G
cc template create odd --size 1000 # rounded up to 512
printf 'abc' >"$WORK/small.raw"     # padded up to 512
cc template import small "$WORK/small.raw"
qemu-img create -q -f qcow2 "$WORK/q.qcow2" 4M
qemu-io -f qcow2 -c 'write -P 0x44 1M 64k' "$WORK/q.qcow2" >/dev/null
cc template import fromq "$WORK/q.qcow2" --format qcow2
for f in vmdk vdi vhdx; do
  qemu-img convert -f qcow2 -O "$f" "$WORK/q.qcow2" "$WORK/q.$f"
  cc template import "from$f" "$WORK/q.$f" --format "$f"
  expect_fail cc template import "x$f" "$WORK/q.$f" # no --format: refused with a hint
  grep -q "looks like $f; add --format $f" "$WORK/expect_fail.out" || fail "$f not recognized"
done

cc template list --json >"$WORK/t.json"
jq -e 'length == 8' "$WORK/t.json" >/dev/null || fail "template list --json: count"
jq -e '[.[].name] == ["base","blank","fromq","fromvdi","fromvhdx","fromvmdk","odd","small"]' \
  "$WORK/t.json" >/dev/null ||
  fail "template list --json: not sorted by name"
jq -e '.[] | select(.name=="blank") | .kind=="layer" and .size==1073741824' "$WORK/t.json" \
  >/dev/null || fail "blank template"
jq -e '.[] | select(.name=="odd") | .size==1024' "$WORK/t.json" >/dev/null || fail "odd size"
jq -e '.[] | select(.name=="small") | .size==512' "$WORK/t.json" >/dev/null || fail "small size"
jq -e '.[] | select(.name=="base") | .kind=="raw" and .layer==null' "$WORK/t.json" >/dev/null ||
  fail "base template"
has '^base +raw +64.0 MiB' cc template list || fail "template list table"

# Clones and snapshots.
cc clone create vm1 --from base
cc clone create vm2 --from blank
cc snapshot create vm1 s1 --description "before upgrade: 100% sure"
cc snapshot create vm1 s2
cc snapshot revert vm1 s1
cc snapshot create vm1 s3
cc clone create vm3 --from vm1@s2
cc clone list --json >"$WORK/c.json"
jq -e '[.[].name] == ["vm1","vm2","vm3"]' "$WORK/c.json" >/dev/null || fail "clone list --json"
jq -e '.[] | select(.name=="vm1") | .snapshots==3 and .size==67108864' "$WORK/c.json" >/dev/null ||
  fail "vm1 in clone list"
jq -e '.[] | select(.name=="vm3") | .origin=="vm1@s2" and .full==false' "$WORK/c.json" >/dev/null ||
  fail "vm3's origin"
has '^vm1 +64.0 MiB +3 ' cc clone list || fail "clone list table"

# The snapshot tree: s1 <- s2, s1 <- s3 (after the revert), vm1 sits on s3.
cc snapshot list vm1 --json >"$WORK/s.json"
jq -e '[.[].name] == ["s1","s2","s3"]' "$WORK/s.json" >/dev/null || fail "snapshot order"
jq -e '.[0].parent == null and .[1].parent == "s1" and .[2].parent == "s1"' "$WORK/s.json" \
  >/dev/null || fail "snapshot parents"
jq -e '[.[].current] == [false,false,true]' "$WORK/s.json" >/dev/null || fail "current snapshot"
jq -e '.[0].children == 2 and .[0].description == "before upgrade: 100% sure"' "$WORK/s.json" \
  >/dev/null || fail "children / description round trip"
cc snapshot list vm1 >"$WORK/s.txt"
grep -q 'Name.*Creation Time.*Parent.*Size' "$WORK/s.txt" || fail "snapshot list header"
grep -Eq '^ s3 \* ' "$WORK/s.txt" || fail "snapshot list marks the current snapshot"
has '^Description: *before upgrade: 100% sure$' cc snapshot info vm1 s1 ||
  fail "snapshot info description"
cc snapshot info vm1 s2 --json | jq -e '.name=="s2" and .clone=="vm1" and .parent=="s1"' \
  >/dev/null || fail "snapshot info --json"

# info, like qemu-img info.
has '^file format: cowchain$' cc info vm1 || fail "info format"
has '^virtual size: 64.0 MiB \(67108864 bytes\)$' cc info vm1 || fail "info virtual size"
cc info vm1 --json | jq -e '.image=="vm1" and .format=="cowchain" and ."cluster-size"==131072' \
  >/dev/null || fail "info --json"
cc info vm1 --backing-chain --json >"$WORK/i.json"
# top -> s3 (the top frozen after the revert to s1) -> s1 -> base
jq -e '[.[].role] == ["vm1 (top)","vm1@s3","vm1@s1","template base"]' "$WORK/i.json" \
  >/dev/null || fail "info --backing-chain roles"
jq -e '.[-1].filename=="images/base.raw" and .[-1].role=="template base"' "$WORK/i.json" \
  >/dev/null || fail "info --backing-chain bottom"
cc info base --json | jq -e '.format=="raw" and ."virtual-size"==67108864' >/dev/null ||
  fail "info on a template"
has '^role: vm1@s1$' cc info vm1@s1 --backing-chain || fail "info on a snapshot"

# Data: every export equals what it was made from.
cc export vm1 "$WORK/vm1.raw"
qemu-img compare -q -f raw -F raw "$WORK/vm1.raw" "$WORK/base.raw" || fail "vm1 != base"
[ "$(allocated_bytes "$WORK/vm1.raw")" -lt $((8 << 20)) ] || fail "export is not sparse"
cc export vm1@s2 "$WORK/s2.qcow2" --format qcow2
qemu-img info "$WORK/s2.qcow2" | grep -q 'file format: qcow2' || fail "export --format qcow2"
qemu-img compare -q -F raw "$WORK/s2.qcow2" "$WORK/base.raw" || fail "vm1@s2 qcow2 != base"
cc export fromq "$WORK/fromq.raw"
qemu-img compare -q -f raw -F qcow2 "$WORK/fromq.raw" "$WORK/q.qcow2" || fail "qcow2 import"
for f in vmdk vdi vhdx; do
  cc export "from$f" "$WORK/from$f.raw"
  qemu-img compare -q -f raw -F qcow2 "$WORK/from$f.raw" "$WORK/q.qcow2" || fail "$f import"
done
cc export vm2 "$WORK/vm2.raw"
[ "$(stat -c %s "$WORK/vm2.raw")" = $((1 << 30)) ] || fail "blank export size"
[ "$(allocated_bytes "$WORK/vm2.raw")" -lt $((1 << 20)) ] || fail "blank export not sparse"

# Full clone: standalone (no parent), same contents, sparse.
cc clone create full1 --from vm1@s1 --full
has '^full1 .* vm1@s1 \(full copy\)$' cc clone list || fail "clone list FROM column"
cc info full1 --backing-chain --json | jq -e 'length == 1 and .[0]."backing-filename"==null' \
  >/dev/null || fail "full clone has a parent"
cc export full1 "$WORK/full1.raw"
qemu-img compare -q -f raw -F raw "$WORK/full1.raw" "$WORK/base.raw" || fail "full clone data"
[ "$(cc info full1 --json | jq '."allocated-size"')" -eq $((3 << 20)) ] ||
  fail "full clone copied more than the data"

# Promote and template delete.
cc template promote vm3 golden
cc clone create vm4 --from golden
expect_fail cc template delete golden
grep -q 'golden: in use by vm3, vm4$' "$WORK/expect_fail.out" || fail "delete refusal names vm3 and vm4"
expect_fail cc template delete base
grep -q 'in use by' "$WORK/expect_fail.out" || fail "base delete refusal"
cc clone delete vm4
cc clone delete vm3
cc template delete golden
cc template delete odd
[ ! -e "$POOL/templates/odd" ] || fail "template record left"

# du
cc du --json >"$WORK/du.json"
jq -e '.entries | map(.name) | index("vm1") != null' "$WORK/du.json" >/dev/null || fail "du vm1"
jq -e '.physical > 0 and .logical >= .physical' "$WORK/du.json" >/dev/null || fail "du totals"
jq -e '.entries[] | select(.name=="full1") | .own > 0 and .shared == 0' "$WORK/du.json" \
  >/dev/null || fail "du: a full clone owns its data"
jq -e '.entries[] | select(.name=="base") | .shared > 0' "$WORK/du.json" >/dev/null ||
  fail "du: base is shared"
has '^pool: logical' cc du || fail "du table"

# clone delete keeps what others need: vm5 is made from vm1@s2.
cc clone create vm5 --from vm1@s2
cc clone delete vm1
cc export vm5 "$WORK/vm5.raw"
qemu-img compare -q -f raw -F raw "$WORK/vm5.raw" "$WORK/base.raw" || fail "vm5 lost its base"
cc info vm5 --backing-chain --json | jq -e 'length == 4' >/dev/null ||
  fail "vm5's chain (top, s2, s1, base) was cut"
cc check
cc check vm5
has ', 0 errors, 0 leaks' cc check || fail "check is not clean"
cc check --json >"$WORK/check.json"
jq -e '.errors == 0 and .leaks == 0 and .layers_checked > 0 and .findings == []' \
  "$WORK/check.json" >/dev/null || fail "check --json"
# A template image made writable is a leak that --repair fixes.
chmod 0644 "$POOL/images/base.raw"
cc check --json >"$WORK/check.json"
jq -e '.leaks == 1 and .findings[0].severity == "leak"' "$WORK/check.json" >/dev/null ||
  fail "check --json: the leak"
cc check >"$WORK/check.out"
grep -q 'template base: image is writable' "$WORK/check.out" || fail "check misses a writable template"
cc check --repair >/dev/null
[ "$(stat -c %a "$POOL/images/base.raw")" = 400 ] || fail "check --repair left the image writable"
check_template_unchanged

# --help on every command exits 0 and prints usage on stdout.
for c in "pool init" "template import" "template create" "template promote" "template list" \
  "template delete" "clone create" "clone list" "clone delete" "snapshot create" \
  "snapshot list" "snapshot info" "snapshot revert" "snapshot delete" info check du export serve; do
  # shellcheck disable=SC2086
  out=$("$COWCHAIN" $c --help) || fail "$c --help failed"
  echo "$out" | grep -q '^usage: cowchain' || fail "$c --help prints no usage"
done
"$COWCHAIN" --help | grep -q 'snapshot create' || fail "cowchain --help"
