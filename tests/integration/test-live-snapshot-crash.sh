#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14: kill -9 at every step of a live `snapshot create` (docs/POOL.md 6.1 and 6.3), of
# one served clone and of two at once, both of the CLI (COWCHAIN_CRASH_AT=N: it exits right
# after its N-th durable step) and of the server (COWCHAIN_KILL_SERVER_AT=N: the CLI kills the
# server at its N-th step, then goes on as it can).  A client holds every clone open, so the
# server holds them and the CLI must go through the control socket.  After each crash:
#   - the pool is before or after: the snapshot exists on every clone or on none (readers
#     apply a pending intent), and every clone and every snapshot taken so far reads the data
#     written before its command (nothing lost);
#   - a surviving server goes on serving: a new write is read back;
#   - `check` finds no errors (it rolls a pending intent forward; the records then agree);
# and the rounds go on until the command completes without a crash.  Finally, after a
# restart, everything is read again and `check --repair` leaves no leaks.
source "$(dirname "$0")/../lib/functions.sh"
source "$(dirname "$0")/../lib/live-crash.sh"
requires_plugin
requires_client
setup_pool
cc clone create vm2 --from base

declare -A SNAPS # clone -> "snap:pattern ..." committed so far
declare -A DATA  # clone -> the pattern it holds now
ROUND=0

# write_pattern CLONE: a new pattern at 4 MiB, through the server.
write_pattern() {
  local p=$(((ROUND % 250) + 1))
  qemu-io -f raw -c "write -P $p 4M 64k" "$(uri "$1")" >/dev/null || fail "round $ROUND: write $1"
  DATA[$1]=$p
}

read_is() { # EXPORT PATTERN
  qemu-io -r -f raw -c "read -P $2 4M 64k" "$(uri "$1")" >"$WORK/read.out" 2>&1 &&
    ! grep -q 'Pattern verification failed' "$WORK/read.out"
}

has_snap() { # CLONE SNAP
  cc snapshot list "$1" >"$WORK/list.out" || fail "snapshot list $1"
  grep -q "^ $2\b" "$WORK/list.out"
}

verify_state() { # WHERE
  local c e snap pat
  for c in vm1 vm2; do
    read_is "$c" "${DATA[$c]}" || fail "$1: $c lost its data (pattern ${DATA[$c]})"
    for e in ${SNAPS[$c]:-}; do
      snap=${e%%:*}
      pat=${e##*:}
      read_is "$c@$snap" "$pat" || fail "$1: $c@$snap does not hold pattern $pat"
    done
  done
}

# one_round MODE CLONES N: returns 0 when the command ran to its end without a crash.
one_round() {
  local mode=$1 clones=$2 n=$3 snap c any=0 all=1
  ROUND=$((ROUND + 1))
  snap=r$ROUND
  for c in ${clones//,/ }; do write_pattern "$c"; done
  hold ${clones//,/ }
  crash_run "round $ROUND ($mode, step $n)" $mode $n cc snapshot create "$clones" "$snap"
  unhold
  # Before or after, for all the clones together.
  for c in ${clones//,/ }; do
    if has_snap "$c" "$snap"; then any=1; else all=0; fi
  done
  if [ $any = 1 ] && [ $all = 0 ]; then
    cat "$WORK/cmd.out"
    fail "round $ROUND ($mode, step $n): $snap exists on some of $clones only"
  fi
  if [ $all = 1 ]; then
    for c in ${clones//,/ }; do SNAPS[$c]="${SNAPS[$c]:-} $snap:${DATA[$c]}"; done
  fi
  [ $CRASH_DONE = 0 ] || [ $all = 1 ] ||
    fail "round $ROUND: the command succeeded without a snapshot"
  verify_state "round $ROUND ($mode, step $n, $([ $all = 1 ] && echo after || echo before))"
  cc check >"$WORK/check.out" 2>&1 || { cat "$WORK/check.out"; fail "round $ROUND: check"; }
  ! ls "$POOL/tmp" | grep -q '^intent-' || fail "round $ROUND: an intent is left after check"
  [ $((ROUND % 2)) = 1 ] || cc check --repair >/dev/null || fail "round $ROUND: check --repair"
  for c in ${clones//,/ }; do
    if [ $all = 1 ]; then
      grep -q "^snapshot $snap " "$POOL/clones/$c" || fail "round $ROUND: $c's record lacks $snap"
    fi
  done
  # A surviving or restarted server goes on.
  for c in ${clones//,/ }; do write_pattern "$c"; read_is "$c" "${DATA[$c]}" || fail "reread $c"; done
  return $((1 - CRASH_DONE))
}

start_server
wait_control_socket
for c in vm1 vm2; do DATA[$c]=0; done
crash_every_step one_round 3 40 vm1 vm1,vm2
stop_server
start_server
verify_state "after a restart"
stop_server
cc check --repair >/dev/null || fail "check --repair"
has ' 0 errors, 0 leaks' cc check || { cat "$WORK/has.out"; fail "check not clean at the end"; }
check_template_unchanged
