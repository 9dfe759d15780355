#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Protected templates (issue 18 item 4): a template image written behind cowchain's back.
# - import records a content hash and the image's size, mtime and inode; a qcow2 import of the
#   same bytes records the same hash;
# - a write to images/base.raw: every new open (a connection to a clone on it, export) is
#   refused naming the template and the command to run; `check` reports it as an error;
# - the same write with the mtime put back by `touch -d`: the cheap identity matches (and the
#   changed byte is served: why the deep check exists), but `check --deep` and
#   `template verify` find the changed contents and fail;
# - the original byte restored: verify passes; a copied pool (new inodes) is refused until
#   `template verify` records the new identity.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires qemu-io
requires qemu-img
setup_pool
IMG=$POOL/images/base.raw

grep -Eq '^hash xxh64-64k:[0-9a-f]{16}$' "$POOL/templates/base" || fail "no hash in the record"
grep -Eq '^inode [0-9]+$' "$POOL/templates/base" || fail "no inode in the record"
grep -Eq '^mtime [0-9]+\.[0-9]{9}$' "$POOL/templates/base" || fail "no mtime in the record"
hash=$(sed -n 's/^hash //p' "$POOL/templates/base")
has "contents match" cc template verify base || fail "verify of an untouched template"
has "template base: contents match" cc check --deep || fail "check --deep of an untouched pool"

say "a qcow2 of the same bytes hashes the same"
qemu-img convert -f raw -O qcow2 "$WORK/base.raw" "$WORK/base.qcow2"
cc template import fromq "$WORK/base.qcow2" --format qcow2
[ "$(sed -n 's/^hash //p' "$POOL/templates/fromq")" = "$hash" ] || fail "qcow2 import hashed differently"
cc template delete fromq

start_server
qemu-img compare -q -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "vm1 before the write"
stop_server

say "a write to the image refuses new opens"
old_mtime=$(stat -c %y "$IMG")
orig=$(dd if="$IMG" bs=1 skip=5000 count=1 2>/dev/null | od -An -tx1 | tr -d ' ')
printf '\x99' | dd of="$IMG" bs=1 seek=5000 conv=notrunc 2>/dev/null
start_server
expect_fail qemu-io -f raw -r -c "read 0 4k" "$(uri vm1)"
log_has "open: vm1: template base: images/base.raw was modified since it was imported"
log_has "cowchain template verify base"
expect_fail cc export vm1 "$WORK/out.raw"
grep -q "template base: images/base.raw was modified" "$WORK/expect_fail.out" ||
  fail "export: $(cat "$WORK/expect_fail.out")"
expect_fail cc check
grep -q "error: template base: images/base.raw was modified" "$WORK/expect_fail.out" ||
  fail "check: $(cat "$WORK/expect_fail.out")"

say "the same write with the mtime restored: only the deep check sees it"
touch -d "$old_mtime" "$IMG"
has "0 errors" cc check || fail "plain check should pass on a matching identity"
qemu-io -f raw -r -c "read -P 0x99 5000 1" "$(uri vm1)" >/dev/null ||
  fail "the changed byte should be served once the identity matches"
expect_fail cc check --deep
grep -q "error: template verify: base: images/base.raw CHANGED since it was imported" "$WORK/expect_fail.out" ||
  fail "check --deep: $(cat "$WORK/expect_fail.out")"
expect_fail cc template verify base
grep -q "CHANGED" "$WORK/expect_fail.out" || fail "verify: $(cat "$WORK/expect_fail.out")"
cc check --deep --json >"$WORK/deep.json" || true
jq -e '.errors == 1 and any(.findings[]; .severity == "error" and (.message | test("base")))' \
  "$WORK/deep.json" >/dev/null || fail "check --deep --json: $(cat "$WORK/deep.json")"

say "the original byte back: verify passes and records the new mtime"
printf "\\x$orig" | dd of="$IMG" bs=1 seek=5000 conv=notrunc 2>/dev/null
has "new file identity is recorded" cc template verify base || fail "verify after the restore"
qemu-img compare -q -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "vm1 after the restore"
stop_server

say "a copied pool: check --deep records the new identities and passes"
cp -a "$POOL" "$WORK/pool3"
rm -f "$WORK/pool3/cowchain.sock"
"$COWCHAIN" --pool "$WORK/pool3" check --deep >"$WORK/deep3.out" || fail "check --deep of a copied pool: $(cat "$WORK/deep3.out")"
grep -q "new file identity recorded" "$WORK/deep3.out" || fail "check --deep did not record: $(cat "$WORK/deep3.out")"
"$COWCHAIN" --pool "$WORK/pool3" export vm1 "$WORK/vm1-3.raw" || fail "export from the checked copy"
cmp "$WORK/vm1-3.raw" "$WORK/base.raw" || fail "vm1 in the checked copy"

say "a copied pool: new inodes, refused until verify"
cp -a "$POOL" "$WORK/pool2"
POOL=$WORK/pool2
rm -f "$POOL/cowchain.sock"
start_server
expect_fail qemu-io -f raw -r -c "read 0 4k" "$(uri vm1)"
log_has "images/base.raw is not the file that was imported"
has "new file identity is recorded" cc template verify base || fail "verify in the copied pool"
qemu-img compare -q -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "vm1 in the copied pool"
has "0 errors" cc check --deep || fail "check --deep in the copied pool"
