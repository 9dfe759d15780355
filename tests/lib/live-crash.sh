# SPDX-License-Identifier: BSD-3-Clause
# The kill-at-every-step harness of the live crash tests (tests/integration/test-live-*-crash.sh):
# a live pool operation is crashed at its first durable step, then its second, and so on until it
# runs to its end, once with the CLI dying (COWCHAIN_CRASH_AT=N: it exits 99 right after its N-th
# durable step) and once with the server killed (COWCHAIN_KILL_SERVER_AT=N: the CLI sends it
# SIGKILL at its N-th step and waits until it is gone).  Source it after functions.sh:
#
#   source "$(dirname "$0")/../lib/live-crash.sh"
#
# The test writes the round, `ROUND MODE VARIANT N`: it prepares the pool, runs the operation
# through crash_run, checks the state the crash left, and returns 0 when the operation ran to its
# end (CRASH_DONE=1), non-zero after a crash.  crash_every_step drives it.

# crash_every_step ROUND MIN MAX VARIANT...: for MODE cli then server and each VARIANT, run
# `ROUND MODE VARIANT N` for N = 1, 2, ... until it returns 0.  Fails when that is at N <= MIN (the
# operation has at least MIN durable steps: fewer means the hook does not fire) or not by N = MAX.
crash_every_step() {
  local round=$1 min=$2 max=$3 mode variant n
  shift 3
  for mode in cli server; do
    for variant in "$@"; do
      for n in $(seq 1 "$max"); do
        if "$round" "$mode" "$variant" "$n"; then
          say "$mode crash, $variant: $((n - 1)) crash points, then the command completed"
          [ "$n" -gt "$min" ] ||
            fail "$mode $variant: only $((n - 1)) steps (the hook does not fire?)"
          break
        fi
        [ "$n" -lt "$max" ] || fail "$mode $variant: still crashing at step $max"
      done
    done
  done
}

# crash_run WHAT MODE N CMD...: run CMD (a `cc` command) with the hook of MODE at step N, output in
# $WORK/cmd.out.  Sets CRASH_DONE=1 when the command ran to its end with the server alive, and
# CRASH_KILLED=1 when the server was killed: then the holders (its clients) are let go and a new
# server is started, with its control socket up, before crash_run returns.  WHAT names the round
# in failures.
crash_run() {
  local what=$1 mode=$2 n=$3 rc=0
  shift 3
  CRASH_DONE=0 CRASH_KILLED=0
  if [ "$mode" = cli ]; then
    COWCHAIN_CRASH_AT=$n "$@" >"$WORK/cmd.out" 2>&1 || rc=$?
    case $rc in
      0) CRASH_DONE=1 ;;
      99) ;;
      *) cat "$WORK/cmd.out"; fail "$what: exit $rc" ;;
    esac
    return 0
  fi
  COWCHAIN_KILL_SERVER_AT=$n "$@" >"$WORK/cmd.out" 2>&1 || rc=$?
  [ $rc -lt 124 ] || { cat "$WORK/cmd.out"; fail "$what: the CLI crashed (exit $rc)"; }
  # A killed server may still be exiting when the CLI returns (it waits only until the server's
  # control socket is closed): the server is either gone or answers, never both.
  wait_for "$what: nbdkit $SERVER_PID neither exits nor answers" server_settled
  if [ "$SERVER_STATE" = up ]; then
    [ $rc = 0 ] || { cat "$WORK/cmd.out"; fail "$what: failed with the server alive"; }
    CRASH_DONE=1
    return 0
  fi
  CRASH_KILLED=1
  forget_server "$SERVER_PID"
  unhold
  start_server
  wait_control_socket
}

# server_settled: the current server is gone (SERVER_STATE=gone) or answers a request on its
# socket (SERVER_STATE=up: a killed one never does, its sockets are closed).
server_settled() {
  if ! alive "$SERVER_PID"; then
    SERVER_STATE=gone
  elif timeout "$WAIT_TIMEOUT" "$CLIENT" list "$SOCK" >/dev/null 2>&1; then
    SERVER_STATE=up
  else
    return 1
  fi
}
