#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A clone's top layer is locked while a server has it open for writing: another server cannot
# read it (EIO, the log names the holder), and can open it once it lets go.  Connections
# to one export within one server share the chain and do not lock each other out.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
setup_pool

start_server
A=$SOCK
"$CLIENT" hold "$A" vm1 30 >"$WORK/hold.out" &
holder=$!
for i in $(seq 100); do
  grep -q open "$WORK/hold.out" 2>/dev/null && break
  sleep 0.1
done
grep -q open "$WORK/hold.out" || fail "the holding client did not connect"
# Same server: more connections to the held export are fine (shared chain).
"$CLIENT" open "$A" vm1 >/dev/null || fail "a second connection to vm1 on the same server"

start_server
B=$SOCK
# B cannot serve vm1: it opens as an "unavailable" handle (so that nbdinfo --list on B still
# works, issue 14 item 8) that fails every read with EIO, naming the holder.
if qemu-io -r -f raw -c 'read 0 4k' "nbd+unix:///vm1?socket=$B" >"$WORK/read.out" 2>&1; then
  fail "a second server read vm1 while the first holds it"
fi
grep -q 'Input/output error' "$WORK/read.out" || { cat "$WORK/read.out"; fail "read of vm1 on B: not EIO"; }
log_has 'vm1'
grep -E 'error' "$SERVER_LOG" | grep -iE 'lock|held|busy|in use|pid' ||
  fail "the refusal does not say who holds vm1"
# Read-only exports on the same chain are not affected.
"$CLIENT" open "$B" base >/dev/null || fail "base refused while vm1 is held"

kill "$holder"
wait "$holder" 2>/dev/null || true
# Server A closes vm1 when its last connection goes; B can then open it.
ok=0
for i in $(seq 50); do
  if qemu-io -r -f raw -c 'read 0 4k' "nbd+unix:///vm1?socket=$B" >/dev/null 2>&1; then
    ok=1
    break
  fi
  sleep 0.2
done
[ $ok -eq 1 ] || fail "vm1 still refused after the holder disconnected"
check_template_unchanged
