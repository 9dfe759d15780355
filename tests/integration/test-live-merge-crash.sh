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
source "$(dirname "$0")/../lib/live-crash.sh"
requires_plugin
requires_client
setup_pool

ROUND=0
PREV8=0 # what vm1 holds at 8M before a round (the template has nothing there)

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
  local mode=$1 which=$2 n=$3 p q t snap where
  ROUND=$((ROUND + 1))
  p=$(((ROUND * 3) % 250 + 1)) q=$(((ROUND * 3 + 1) % 250 + 1)) t=$(((ROUND * 3 + 2) % 250 + 1))
  write_at vm1 $p 4M 64k
  cc snapshot create vm1 a$ROUND
  write_at vm1 $q 8M 64k
  cc snapshot create vm1 b$ROUND
  write_at vm1 $t 4160k 32k
  hold vm1 "vm1@b$ROUND"
  [ "$which" = frozen ] && snap=a$ROUND || snap=b$ROUND
  crash_run "round $ROUND ($mode, $which, step $n)" $mode $n cc snapshot delete vm1 $snap
  if [ $CRASH_KILLED = 1 ]; then
    if has_snap "b$ROUND"; then hold vm1 "vm1@b$ROUND"; else hold vm1; fi
  fi
  has_snap $snap && where=before || where=after
  [ $CRASH_DONE = 0 ] || [ $where = after ] ||
    fail "round $ROUND: the delete succeeded, $snap still there"
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
  return $((1 - CRASH_DONE))
}

start_server
wait_control_socket
crash_every_step one_round 3 30 frozen top
stop_server
start_server
reads vm1 $PREV8 8M 64k || fail "after a restart: vm1"
stop_server
cc check --repair >/dev/null || fail "check --repair"
has ' 0 errors, 0 leaks' cc check || { cat "$WORK/has.out"; fail "check not clean at the end"; }
check_template_unchanged
