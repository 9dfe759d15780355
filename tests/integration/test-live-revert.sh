#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14 item 5: operations that would change a disk under its connected clients.
#   - `snapshot revert` of a served clone with connections is refused with one line giving the
#     number of connections and the server; so is `clone delete`; neither changes anything;
#   - `snapshot revert --force` has the server evict the clients (their next requests fail
#     with ESHUTDOWN, nothing they send reaches the disk), then reverts; new connections read
#     the snapshot;
#   - a served clone without connections reverts and is deleted as offline ones;
#   - `clone create --from CLONE@SNAP` of a connected clone works; `template promote` of one
#     is refused naming the server.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
setup_pool
start_server
CTL=$POOL/run/nbdkit-$SERVER_PID.ctl
for i in $(seq 50); do [ -S "$CTL" ] && break; sleep 0.1; done

qemu-io -f raw -c 'write -P 0x61 0 64k' "$(uri vm1)" >/dev/null
cc snapshot create vm1 s1
qemu-io -f raw -c 'write -P 0x62 0 64k' "$(uri vm1)" >/dev/null

# A client that writes, waits for $WORK/go, then writes and reads again, printing the errnos.
start_client() {
  rm -f "$WORK/ready" "$WORK/go"
  "$CLIENT" evictee "$SOCK" vm1 "$WORK" >"$WORK/client.out" 2>&1 &
  client=$!
  for i in $(seq 200); do [ -e "$WORK/ready" ] && break; sleep 0.05; done
  [ -e "$WORK/ready" ] || { cat "$WORK/client.out"; fail "the client did not start"; }
}

start_client
"$CLIENT" hold "$SOCK" vm1 60 >"$WORK/hold.out" &
holder=$!
for i in $(seq 100); do grep -q open "$WORK/hold.out" 2>/dev/null && break; sleep 0.05; done
TOP=$(awk '$1 == "top" { print $2 }' "$POOL/clones/vm1")

expect_fail cc snapshot revert vm1 s1
cat "$WORK/expect_fail.out"
[ "$(wc -l <"$WORK/expect_fail.out")" = 1 ] || fail "the refusal is not one line"
grep -q "snapshot revert: vm1: 2 connections open on nbdkit pid $SERVER_PID" "$WORK/expect_fail.out" ||
  fail "the revert refusal does not give the connections and the server"
expect_fail cc clone delete vm1
cat "$WORK/expect_fail.out"
[ "$(wc -l <"$WORK/expect_fail.out")" = 1 ] || fail "the clone delete refusal is not one line"
grep -q "clone delete: vm1: 2 connections open on nbdkit pid $SERVER_PID" "$WORK/expect_fail.out" ||
  fail "the clone delete refusal does not give the connections"
[ "$(awk '$1 == "top" { print $2 }' "$POOL/clones/vm1")" = "$TOP" ] || fail "a refusal changed vm1"

# Works on a connected clone: a clone of its snapshot; refused clearly: promoting it.
cc clone create c1 --from vm1@s1
qemu-io -r -f raw -c 'read -P 0x61 0 64k' "$(uri c1)" | grep -q '^read 65536' || fail "c1"
# One snapshot of a served, connected clone and an offline one together.
cc snapshot create vm1,c1 mixed || fail "a snapshot of a served and an offline clone"
grep -q '^snapshot mixed ' "$POOL/clones/vm1" && grep -q '^snapshot mixed ' "$POOL/clones/c1" ||
  fail "the mixed snapshot is missing on one clone"
qemu-io -r -f raw -c 'read -P 0x63 0 4k' "$(uri vm1@mixed)" | grep -q '^read 4096' ||
  fail "vm1@mixed lacks the connected client's write"
expect_fail cc template promote vm1 t1
cat "$WORK/expect_fail.out"
grep -q "template promote: vm1: .*nbdkit" "$WORK/expect_fail.out" || fail "promote refusal"

# --force: the clients are evicted, then the revert happens.
cc snapshot revert vm1 s1 --force || fail "revert --force"
touch "$WORK/go"
wait "$client" || true
cat "$WORK/client.out"
grep -q '^write failed 108$' "$WORK/client.out" || fail "the evicted client's write did not fail with ESHUTDOWN"
grep -q '^read failed 108$' "$WORK/client.out" || fail "the evicted client's read did not fail with ESHUTDOWN"
qemu-io -r -f raw -c 'read -P 0x61 0 64k' "$(uri vm1)" | grep -q '^read 65536' ||
  fail "vm1 does not read as s1 after the forced revert"
kill "$holder"; wait "$holder" 2>/dev/null || true
# The server closes a connection shortly after its client has gone (tests/lib `retry`).
conns_zero() { has '^ok 0$' "$BUILDDIR/tests/integration/control-client" "$CTL" -c 'connections vm1'; }
retry conns_zero || fail "connections left after every client has gone"

# A served clone whose connections are gone reverts without --force, and can be deleted.
qemu-io -f raw -c 'write -P 0x65 0 64k' "$(uri vm1)" >/dev/null
retry cc snapshot revert vm1 s1 || fail "revert of a served clone without connections"
qemu-io -r -f raw -c 'read -P 0x61 0 64k' "$(uri vm1)" | grep -q '^read 65536' || fail "vm1 after revert"
retry cc clone delete c1 || fail "clone delete of a served clone without connections"
stop_server
cc check --repair >/dev/null
has ' 0 errors, 0 leaks' cc check || { cat "$WORK/has.out"; fail "check"; }
check_template_unchanged
