#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14: gates held by `quiesce` and what happens when the client does not finish.
#  - while held, a write waits (it does not fail) and completes after `resume`;
#  - the client leaves without a record switch: nothing changes, writes flow again;
#  - the client switches the record, then leaves: the server follows the record (the new top);
#  - the hold expires: the server ends the session, nothing changed, writes flow again.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
setup_pool
CTLC=$BUILDDIR/tests/integration/control-client
[ -x "$CTLC" ] || skip "control-client not built"
start_server
CTL=$POOL/run/nbdkit-$SERVER_PID.ctl
for i in $(seq 50); do [ -S "$CTL" ] && break; sleep 0.1; done
"$CLIENT" hold "$SOCK" vm1 60 >"$WORK/hold.out" &
holder=$!
on_exit "kill $holder 2>/dev/null"
for i in $(seq 100); do grep -q open "$WORK/hold.out" 2>/dev/null && break; sleep 0.1; done
top() { awk '$1 == "top" { print $2 }' "$POOL/clones/vm1"; }
on_top() { "$CTLC" "$CTL" -c held | grep -q "^data vm1 [0-9]* $1 rw\$"; }
T=$POOL/layers/$(top).cow

# A write issued while the gate is closed waits, then lands.
"$CTLC" "$CTL" -c 'quiesce 5000 vm1' \
  -x "timeout 20 qemu-io -f raw -c 'write -P 0x61 0 64k' '$(uri vm1)' >'$WORK/w.out' 2>&1 & echo \$! >'$WORK/w.pid'; sleep 1" \
  -x "kill -0 \$(cat '$WORK/w.pid')" \
  -c 'resume' >"$WORK/q1.out" || { cat "$WORK/q1.out"; fail "quiesce/resume"; }
wpid=$(cat "$WORK/w.pid")
for i in $(seq 100); do kill -0 "$wpid" 2>/dev/null || break; sleep 0.1; done
grep -q 'wrote 65536/65536' "$WORK/w.out" || { cat "$WORK/w.out"; fail "the gated write failed"; }
qemu-io -r -f raw -c 'read -P 0x61 0 64k' "$(uri vm1)" >/dev/null || fail "the gated write is lost"

# Client leaves with the gates closed, record unchanged: nothing changed.
"$CTLC" "$CTL" -c 'quiesce 5000 vm1' >/dev/null || fail "quiesce"
on_top "$T" || fail "vm1 moved without a record switch"
timeout 20 qemu-io -f raw -c 'write -P 0x62 0 64k' "$(uri vm1)" >/dev/null ||
  fail "writes do not flow after an abandoned quiesce"

# Client switches the record, then leaves: the server follows the record.
N=$("$CTLC" --mklayer "$POOL" "$T")
NU=$(basename "$N" .cow)
TU=$(basename "$T" .cow)
"$CTLC" "$CTL" -c 'quiesce 5000 vm1' \
  -x "sed 's/^top $TU\$/top $NU/' '$POOL/clones/vm1' >'$POOL/tmp/r' && echo 'snapshot s1 $TU 2026-01-01T00:00:00Z' >>'$POOL/tmp/r' && sync '$POOL/tmp/r' && mv '$POOL/tmp/r' '$POOL/clones/vm1'" \
  >/dev/null || fail "quiesce + record"
for i in $(seq 50); do on_top "$N" && break; sleep 0.1; done
on_top "$N" || fail "the server did not follow the record to $N"
grep -q 'the pool record names' "$SERVER_LOG" || true
timeout 20 qemu-io -f raw -c 'write -P 0x63 64k 64k' "$(uri vm1)" >/dev/null || fail "write after"
qemu-io -r -f raw -c 'read -P 0x62 0 64k' "$(uri vm1@s1)" >/dev/null || fail "s1 content"
qemu-io -r -f raw -c 'read -P 0x11 64k 64k' "$(uri vm1@s1)" >/dev/null || fail "s1 got a later write"

# The hold expires: the session ends, nothing changed.
rc=0
"$CTLC" "$CTL" -c 'quiesce 300 vm1' -x 'sleep 1.5' -c hello >"$WORK/exp.out" 2>&1 || rc=$?
[ $rc -eq 1 ] || { cat "$WORK/exp.out"; fail "a command after an expired hold did not fail (exit $rc)"; }
on_top "$N" || fail "vm1 moved after an expired hold"
timeout 20 qemu-io -f raw -c 'write -P 0x64 0 4k' "$(uri vm1)" >/dev/null ||
  fail "writes do not flow after an expired hold"
kill "$holder"; wait "$holder" 2>/dev/null || true
stop_server
cc check || fail "check"
check_template_unchanged
