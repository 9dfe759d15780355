#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14, item 8: while another process holds a clone, `nbdinfo --list` on this server still
# lists every export (exit 0); the held one says why it is unavailable and who holds it, and
# reading it fails with EIO instead of breaking the listing.  The holding server lists it as
# usual.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
requires jq
requires nbdinfo
setup_pool
cc clone create vm2 --from base
cc snapshot create vm2 s1

start_server
A=$SOCK
A_PID=$SERVER_PID
"$CLIENT" hold "$A" vm1 60 >"$WORK/hold.out" &
holder=$!
for i in $(seq 100); do
  grep -q open "$WORK/hold.out" 2>/dev/null && break
  sleep 0.1
done
grep -q open "$WORK/hold.out" || fail "the holding client did not connect"

start_server
B=$SOCK
want='["base","vm1","vm2","vm2@s1"]'
timeout 60 nbdinfo --list --json "nbd+unix:///?socket=$B" >"$WORK/list-b.json" ||
  fail "nbdinfo --list on B failed while A holds vm1"
got=$(jq -c '[.exports[]."export-name"] | sort' "$WORK/list-b.json")
[ "$got" = "$want" ] || fail "B lists $got, expected $want"
desc=$(jq -r '.exports[] | select(."export-name" == "vm1") | .description' "$WORK/list-b.json")
echo "vm1 on B: $desc"
case $desc in
*"unavailable on this server: in use by pid $A_PID"*) ;;
*) fail "vm1's description on B does not say who holds it: $desc" ;;
esac
desc2=$(jq -r '.exports[] | select(."export-name" == "vm2") | .description' "$WORK/list-b.json")
case $desc2 in *unavailable*) fail "vm2 is not held, yet: $desc2" ;; esac
if qemu-io -r -f raw -c 'read 0 4k' "nbd+unix:///vm1?socket=$B" >"$WORK/read.out" 2>&1; then
  fail "B read vm1 while A holds it"
fi
grep -q 'Input/output error' "$WORK/read.out" || fail "reading the held vm1 on B is not EIO"
# vm2 stays fully usable on B.
qemu-io -f raw -c 'write -P 0x5c 0 64k' -c 'read -P 0x5c 0 64k' "nbd+unix:///vm2?socket=$B" \
  >/dev/null || fail "vm2 on B"

# A holds vm1 itself: it lists it without a warning.  B goes first: it closes vm2's export (and
# lets go of its layer lock) only shortly after the client above exits, and A's listing opens
# vm2 too.
stop_server
SOCK=$A SERVER_PID=$A_PID
timeout 60 nbdinfo --list --json "nbd+unix:///?socket=$A" >"$WORK/list-a.json" ||
  fail "nbdinfo --list on A failed"
got=$(jq -c '[.exports[]."export-name"] | sort' "$WORK/list-a.json")
[ "$got" = "$want" ] || fail "A lists $got"
jq -r '.exports[].description' "$WORK/list-a.json" | grep -q unavailable &&
  fail "A calls one of its own exports unavailable"
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
check_template_unchanged
