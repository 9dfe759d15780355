#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14 item 4: kill -9 at every step of a live `snapshot delete` (docs/POOL.md 6.2), of the
# CLI (COWCHAIN_CRASH_AT=N: it exits right after its N-th durable step) and of the server
# (COWCHAIN_KILL_SERVER_AT=N: the CLI kills the server at its N-th step), in both positions:
# the snapshot below another snapshot (merged into that frozen layer) and the snapshot right
# below the live top (merged into the top through the server).  Clients hold vm1 and the upper
# snapshot open, so the server holds every layer involved.  After each crash the pool is
# before (the snapshot still listed) or after (gone), every remaining export reads what it read
# before the command, `check` finds no errors, a rerun of the delete completes it, and a
# surviving or restarted server goes on serving.  Finally `check --repair` leaves no leaks.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
setup_pool

ROUND=0
HOLDERS=()
PREV8=0 # what vm1 holds at 8M before a round (the template has nothing there)

wait_socket() {
  local i
  CTL=$POOL/run/nbdkit-$SERVER_PID.ctl
  for i in $(seq 50); do [ -S "$CTL" ] && return 0; sleep 0.1; done
  fail "no control socket $CTL"
}

alive() {
  local st
  st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

hold() { # EXPORT...
  local e i
  for e in "$@"; do
    "$CLIENT" hold "$SOCK" "$e" 60 >"$WORK/hold-$e.out" 2>&1 &
    HOLDERS+=($!)
  done
  for e in "$@"; do
    for i in $(seq 100); do grep -q open "$WORK/hold-$e.out" 2>/dev/null && break; sleep 0.05; done
    grep -q open "$WORK/hold-$e.out" || fail "holder of $e did not connect"
  done
}

unhold() {
  local h
  for h in "${HOLDERS[@]}"; do
    kill "$h" 2>/dev/null || true
    wait "$h" 2>/dev/null || true
  done
  HOLDERS=()
}
on_stop unhold

write_at() { # EXPORT PATTERN OFFSET LENGTH
  qemu-io -f raw -c "write -P $2 $3 $4" "$(uri "$1")" >/dev/null || fail "round $ROUND: write $1"
}

reads() { # EXPORT PATTERN OFFSET LENGTH
  qemu-io -r -f raw -c "read -P $2 $3 $4" "$(uri "$1")" >"$WORK/read.out" 2>&1 &&
    ! grep -q 'Pattern verification failed' "$WORK/read.out"
}

has_snap() {
  cc snapshot list vm1 >"$WORK/list.out" || fail "snapshot list"
  grep -q "^ $1\b" "$WORK/list.out"
}

# vm1: P at 4M (32k), T at 4M+32k (32k), Q at 8M; b: P at 4M (64k), Q at 8M; a: P at 4M, PREV8 at 8M.
verify_round() { # WHERE P Q T
  reads vm1 "$2" 4M 32k && reads vm1 "$4" 4160k 32k && reads vm1 "$3" 8M 64k ||
    fail "$1: vm1 lost data"
  reads "vm1@b$ROUND" "$2" 4M 64k && reads "vm1@b$ROUND" "$3" 8M 64k || fail "$1: vm1@b$ROUND changed"
  if has_snap "a$ROUND"; then
    reads "vm1@a$ROUND" "$2" 4M 64k && reads "vm1@a$ROUND" "$PREV8" 8M 64k ||
      fail "$1: vm1@a$ROUND changed"
  fi
}

# one_round MODE WHICH N: 0 when the delete ran to its end without a crash.
one_round() {
  local mode=$1 which=$2 n=$3 i rc=0 done_=0 killed=0 p q t snap where
  ROUND=$((ROUND + 1))
  p=$(((ROUND * 3) % 250 + 1)) q=$(((ROUND * 3 + 1) % 250 + 1)) t=$(((ROUND * 3 + 2) % 250 + 1))
  write_at vm1 $p 4M 64k
  cc snapshot create vm1 a$ROUND
  write_at vm1 $q 8M 64k
  cc snapshot create vm1 b$ROUND
  write_at vm1 $t 4160k 32k
  hold vm1 "vm1@b$ROUND"
  [ "$which" = frozen ] && snap=a$ROUND || snap=b$ROUND
  if [ "$mode" = cli ]; then
    COWCHAIN_CRASH_AT=$n cc snapshot delete vm1 $snap >"$WORK/cmd.out" 2>&1 || rc=$?
    case $rc in
      0) done_=1 ;;
      99) ;;
      *) cat "$WORK/cmd.out"; fail "round $ROUND (cli, $which, step $n): exit $rc" ;;
    esac
  else
    COWCHAIN_KILL_SERVER_AT=$n cc snapshot delete vm1 $snap >"$WORK/cmd.out" 2>&1 || rc=$?
    [ $rc -lt 124 ] || fail "round $ROUND (server, $which, step $n): the CLI crashed (exit $rc)"
    # A server killed at the last step may still be exiting when the CLI returns.
    for i in $(seq 50); do { [ $rc = 0 ] || ! alive "$SERVER_PID"; } && break; sleep 0.1; done
    if alive "$SERVER_PID"; then
      [ $rc = 0 ] || { cat "$WORK/cmd.out"; fail "round $ROUND: failed with the server alive"; }
      done_=1
    else
      killed=1
      forget_server "$SERVER_PID"
    fi
  fi
  if [ $killed = 1 ]; then
    unhold
    start_server
    wait_socket
    if has_snap "b$ROUND"; then hold vm1 "vm1@b$ROUND"; else hold vm1; fi
  fi
  has_snap $snap && where=before || where=after
  [ $done_ = 0 ] || [ $where = after ] || fail "round $ROUND: the delete succeeded, $snap still there"
  if [ "$which" = top ] && [ $where = after ]; then
    # b is gone: its bytes now live in the top; check the frozen a instead.
    reads vm1 $p 4M 32k && reads vm1 $t 4160k 32k && reads vm1 $q 8M 64k ||
      fail "round $ROUND ($mode, $which, step $n, after): vm1 lost data"
  else
    verify_round "round $ROUND ($mode, $which, step $n, $where)" $p $q $t
  fi
  cc check >"$WORK/check.out" 2>&1 || { cat "$WORK/check.out"; fail "round $ROUND: check"; }
  if [ $where = before ]; then
    cc snapshot delete vm1 $snap >"$WORK/rerun.out" 2>&1 ||
      { cat "$WORK/rerun.out"; fail "round $ROUND: the rerun of the delete failed"; }
    reads vm1 $p 4M 32k && reads vm1 $t 4160k 32k && reads vm1 $q 8M 64k ||
      fail "round $ROUND: vm1 lost data after the rerun"
  fi
  [ "$which" = top ] || { reads "vm1@b$ROUND" $p 4M 64k && reads "vm1@b$ROUND" $q 8M 64k; } ||
    fail "round $ROUND: vm1@b$ROUND changed by the rerun"
  unhold
  cc check >"$WORK/check.out" 2>&1 || { cat "$WORK/check.out"; fail "round $ROUND: check after"; }
  [ $((ROUND % 2)) = 1 ] || cc check --repair >/dev/null || fail "round $ROUND: check --repair"
  # Keep the chain short: the remaining snapshot of this round goes too (offline or live).
  cc snapshot delete vm1 $([ "$which" = frozen ] && echo b$ROUND || echo a$ROUND) >/dev/null ||
    fail "round $ROUND: delete of the other snapshot"
  PREV8=$q
  write_at vm1 $t 4160k 32k
  reads vm1 $t 4160k 32k || fail "round $ROUND: the server does not go on"
  return $((1 - done_))
}

start_server
wait_socket
for mode in cli server; do
  for which in frozen top; do
    for n in $(seq 1 30); do
      if one_round $mode $which $n; then
        say "$mode crash, $which: $((n - 1)) crash points, then the command completed"
        [ $n -gt 3 ] || fail "$mode $which: only $((n - 1)) steps (the hook does not fire?)"
        break
      fi
      [ $n -lt 30 ] || fail "$mode $which: still crashing at step 30"
    done
  done
done
stop_server
start_server
reads vm1 $PREV8 8M 64k || fail "after a restart: vm1"
stop_server
cc check --repair >/dev/null || fail "check --repair"
has ' 0 errors, 0 leaks' cc check || { cat "$WORK/has.out"; fail "check not clean at the end"; }
check_template_unchanged
