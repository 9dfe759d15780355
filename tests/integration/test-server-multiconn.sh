#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Connections to one export share one open chain (that is what makes multi-conn safe), and
# the chain is closed, its layer lock released, when the last connection goes: the CLI can
# then snapshot the clone while the server keeps running.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
requires nbdcopy
setup_pool

start_server -v -D cowchain.exports=1 -D nbdkit.backend.datapath=0
"$CLIENT" multiconn "$SOCK" vm1 || fail "multi-conn checks"
log_has 'exports: vm1: opened '
log_has 'exports: vm1: shared \(2 connections\)'
log_has 'exports: vm1: released \(0 connections left\)'

# nbdcopy uses several connections when the server offers multi-conn.
nbdcopy --connections=4 --threads=4 "$WORK/base.raw" "$(uri vm1)"
log_has 'exports: vm1: shared \([3-4] connections\)'
qemu-img compare -q -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "nbdcopy through 4 connections"

# Everything is closed: the clone's top is free for the CLI.
retry cc snapshot create vm1 after-copy || fail "snapshot refused after all connections closed"
qemu-img compare -q -f raw -F raw "$(uri vm1@after-copy)" "$WORK/base.raw" ||
  fail "the snapshot does not hold the copied data"

# While a connection is open, the same server hands new connections the same chain, and an
# operation the server cannot do for the CLI is refused because the server holds the top.
"$CLIENT" hold "$SOCK" vm1 20 >"$WORK/hold.out" &
holder=$!
for i in $(seq 100); do
  grep -q open "$WORK/hold.out" 2>/dev/null && break
  sleep 0.1
done
expect_fail cc template promote vm1 while-open
"$CLIENT" open "$SOCK" vm1 >/dev/null || fail "a second connection while one is held"
kill "$holder"
wait "$holder" 2>/dev/null || true
retry cc template promote vm1 after-close || fail "the chain stayed open after the last connection closed"
# Churn: many connections opening and closing at once, to one clone and to several others,
# so that opens race opens and closes (a loser would be refused by our own layer lock).
for i in 1 2 3; do
  cc clone create "churn$i" --from base
done
pids=()
for round in 1 2 3 4 5; do
  for e in vm1 vm1 vm1 churn1 churn2 churn3 vm1@after-copy base; do
    "$CLIENT" open "$SOCK" "$e" >/dev/null 2>"$WORK/churn-$round-$e-${#pids[@]}.err" &
    pids+=($!)
  done
done
bad=0
for pid in "${pids[@]}"; do
  wait "$pid" || bad=$((bad + 1))
done
if [ $bad -ne 0 ]; then
  cat "$WORK"/churn-*.err >&2
  fail "$bad of ${#pids[@]} concurrent opens failed"
fi
check_template_unchanged
