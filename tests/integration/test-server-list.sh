#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# nbdinfo --list lists every export, sorted, with a description, and succeeds on a pool with
# many clones (it opens every one).  Clones and snapshots the CLI creates or deletes while the
# server runs appear and disappear without a restart.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires nbdinfo
requires jq
requires_client
setup_pool

# Many clones, created in an order that is not the sorted one.
for i in $(seq 40 -1 1); do
  cc clone create "c$i" --from base
done
cc snapshot create vm1 s1
cc clone create zz --from vm1@s1

expected() {
  { echo base; echo vm1; echo vm1@s1; echo zz; seq 1 40 | sed 's/^/c/'; } | LC_ALL=C sort
}

start_server
listed() {
  timeout 120 nbdinfo --list --json "$(uri '')" >"$WORK/list.json" ||
    fail "nbdinfo --list failed"
  jq -r '.exports[]."export-name"' "$WORK/list.json"
}
listed >"$WORK/names"
expected >"$WORK/want"
diff -u "$WORK/want" "$WORK/names" || fail "nbdinfo --list: wrong exports"
# Sorted as the server sent them, not only as a set.
LC_ALL=C sort -c "$WORK/names" || fail "exports are not listed in sorted order"
# Every export has a description and its right access mode.
jq -e '[.exports[] | select((.description // "") == "")] | length == 0' "$WORK/list.json" \
  >/dev/null || fail "an export has no description"
jq -e '[.exports[] | select(."export-name" == "vm1") | ."is_read_only"] == [false]' \
  "$WORK/list.json" >/dev/null || fail "vm1 should be writable"
for ro in base vm1@s1; do
  jq -e --arg n "$ro" '[.exports[] | select(."export-name" == $n) | ."is_read_only"] == [true]' \
    "$WORK/list.json" >/dev/null || fail "$ro should be read-only"
done
# The raw NBD_OPT_LIST answer agrees.
"$CLIENT" list "$SOCK" | cut -f1 >"$WORK/optlist"
diff -u "$WORK/want" "$WORK/optlist" || fail "NBD_OPT_LIST: wrong exports"

# Live changes, same server.
cc clone create new1 --from base
retry cc snapshot create c7 before # nbdinfo had c7 open a moment ago
retry cc clone delete c3
listed >"$WORK/names2"
{ expected | grep -vx c3; echo new1; echo c7@before; } | LC_ALL=C sort >"$WORK/want2"
diff -u "$WORK/want2" "$WORK/names2" || fail "live changes not reflected"
"$CLIENT" open "$SOCK" new1 >/dev/null || fail "a clone created while serving does not open"
expect_fail "$CLIENT" open "$SOCK" c3
qemu-io -f raw -r -c 'read -P 0x11 0 1M' "$(uri c7@before)" >/dev/null ||
  fail "a snapshot created while serving does not read"

check_template_unchanged
