#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14 item 6: `snapshot create ... --quiesce SOCKET` against a stand-in guest agent
# (tests/lib/qga-standin.py) that records every command and what the clone's record named as
# its top at that moment.
#   - ok: sync, freeze, thaw in that order; at the freeze the record still names the old top,
#     at the thaw the new one (the commit point lies between freeze and thaw), and the
#     snapshot holds the data written before the command;
#   - an agent that refuses the freeze: no snapshot, one error line with the agent's reason,
#     and the guest is thawed anyway;
#   - an agent whose freeze outlives --quiesce-timeout: no snapshot, a thaw follows;
#   - an agent that does not answer, or no agent at all: no snapshot, one clear line;
#   - --quiesce-timeout without --quiesce, or a bad value: usage errors;
#   - a live snapshot with a relative --pool (paths exchanged with the server agree).
# The clone is served, with a connection open, in every case.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
requires python3
setup_pool
start_server
CTL=$POOL/run/nbdkit-$SERVER_PID.ctl
for i in $(seq 50); do [ -S "$CTL" ] && break; sleep 0.1; done
STANDIN=$SRCDIR/tests/lib/qga-standin.py

qemu-io -f raw -c 'write -P 0x61 0 64k' "$(uri vm1)" >/dev/null
"$CLIENT" hold "$SOCK" vm1 120 >"$WORK/hold.out" &
holder=$!
on_stop "kill $holder 2>/dev/null || true"
for i in $(seq 100); do grep -q open "$WORK/hold.out" 2>/dev/null && break; sleep 0.05; done

# agent MODE [ARGS...]: a stand-in agent on $AGENT (its log $AGENT_LOG), stopped at exit.
agent() {
  AGENT=$WORK/qga-$1.sock AGENT_LOG=$WORK/qga-$1.log
  rm -f "$AGENT" "$AGENT_LOG"
  timeout 120 python3 "$STANDIN" "$AGENT" "$AGENT_LOG" "$@" --watch "$POOL/clones/vm1" &
  local pid=$!
  on_stop "kill $pid 2>/dev/null || true"
  for i in $(seq 100); do [ -S "$AGENT" ] && break; sleep 0.05; done
  [ -S "$AGENT" ] || fail "the stand-in agent did not start"
}
top() { awk '$1 == "top" { print $2 }' "$POOL/clones/vm1"; }
nsnaps() { grep -c '^snapshot ' "$POOL/clones/vm1" || true; }

# ok
agent ok
OLD_TOP=$(top)
cc snapshot create vm1 q1 --quiesce "$AGENT" || fail "quiesced snapshot"
NEW_TOP=$(top)
cat "$AGENT_LOG"
[ "$(cat "$AGENT_LOG")" = "guest-sync-delimited FILE=$OLD_TOP
guest-fsfreeze-freeze FILE=$OLD_TOP
guest-fsfreeze-thaw FILE=$NEW_TOP" ] || fail "the agent's log is not sync, freeze (old top), thaw (new top)"
[ "$OLD_TOP" != "$NEW_TOP" ] || fail "the snapshot did not switch the top"
qemu-io -r -f raw -c 'read -P 0x61 0 64k' "$(uri vm1@q1)" | grep -q '^read 65536' ||
  fail "vm1@q1 does not hold the data written before it"

# refused
agent refuse
n=$(nsnaps)
OLD_TOP=$(top)
expect_fail cc snapshot create vm1 q2 --quiesce "$AGENT"
cat "$WORK/expect_fail.out"
[ "$(wc -l <"$WORK/expect_fail.out")" = 1 ] || fail "the refusal is not one line"
grep -q "snapshot create: vm1@q2: not taken: quiesce: $AGENT: the guest agent refused guest-fsfreeze-freeze: stand-in refuses" \
  "$WORK/expect_fail.out" || fail "the refusal does not say why"
[ "$(nsnaps)" = "$n" ] && [ "$(top)" = "$OLD_TOP" ] || fail "a refused quiesce made a snapshot"
grep -q '^guest-fsfreeze-thaw' "$AGENT_LOG" || fail "no thaw after a refused freeze"

# freeze outlives the timeout
agent hang --hang 2
expect_fail cc snapshot create vm1 q3 --quiesce "$AGENT" --quiesce-timeout 0.5
cat "$WORK/expect_fail.out"
grep -q "not taken: quiesce: $AGENT: the guest agent did not answer guest-fsfreeze-freeze within 500 ms" \
  "$WORK/expect_fail.out" || fail "the timeout is not reported"
[ "$(nsnaps)" = "$n" ] || fail "a timed-out quiesce made a snapshot"
[ "$(tail -1 "$AGENT_LOG" | cut -d' ' -f1)" = guest-fsfreeze-thaw ] || fail "no thaw after the timeout"

# an agent that answers nothing; no agent at all
agent mute
expect_fail cc snapshot create vm1 q4 --quiesce "$AGENT"
grep -q "is qemu-guest-agent running in the guest?" "$WORK/expect_fail.out" || fail "mute agent"
expect_fail cc snapshot create vm1 q5 --quiesce "$WORK/nothing.sock"
grep -q "cannot connect to the guest agent" "$WORK/expect_fail.out" || fail "missing agent"
[ "$(nsnaps)" = "$n" ] || fail "a failed quiesce made a snapshot"

# A relative --pool: the CLI and the server must agree on the paths they exchange.
(cd "$(dirname "$POOL")" && "$COWCHAIN" --pool "./$(basename "$POOL")" snapshot create vm1 rel1) ||
  fail "a live snapshot with a relative --pool"
qemu-io -r -f raw -c 'read -P 0x61 0 64k' "$(uri vm1@rel1)" | grep -q '^read 65536' ||
  fail "vm1@rel1 (relative --pool) does not hold the data"

# usage
expect_fail cc snapshot create vm1 q6 --quiesce-timeout 3
grep -q -- "--quiesce-timeout needs --quiesce" "$WORK/expect_fail.out" || fail "timeout alone"
expect_fail cc snapshot create vm1 q6 --quiesce "$AGENT" --quiesce-timeout -1
grep -q "bad --quiesce-timeout" "$WORK/expect_fail.out" || fail "bad timeout"

# The clone's connection saw nothing: its holder is still connected, and check is clean.
kill -0 "$holder" || fail "the held connection died"
cc check || fail "check after the quiesce tests"
say "ok"
