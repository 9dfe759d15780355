#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14: the control socket's lifecycle and access control.
#  - POOL/run (0700) holds nbdkit-PID.ctl (0600) of the serving process, also when nbdkit forks
#    to the background (bound after the fork: the daemon's pid, not the parent's);
#  - it greets, answers hello/held/connections, refuses unknown commands with err ENOSYS;
#  - it is removed when the server exits; a kill -9 leaves a stale one, which does not stop a
#    new server, and which a client removes (ECONNREFUSED) while the live one stays;
#  - another uid is refused (SO_PEERCRED), even when the file modes would let it connect;
#  - control=off: no socket.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
setup_pool
CTLC=$BUILDDIR/tests/integration/control-client
[ -x "$CTLC" ] || skip "control-client not built"

wait_socket() {
  local i
  for i in $(seq 50); do [ -S "$1" ] && return 0; sleep 0.1; done
  fail "no control socket $1"
}

start_server
A_PID=$SERVER_PID
CTL=$POOL/run/nbdkit-$A_PID.ctl
wait_socket "$CTL"
[ "$(stat -c %a "$POOL/run")" = 700 ] || fail "POOL/run has mode $(stat -c %a "$POOL/run")"
[ "$(stat -c %a "$CTL")" = 600 ] || fail "the socket has mode $(stat -c %a "$CTL")"
"$CTLC" "$CTL" -c hello >"$WORK/hello.out" || fail "hello"
grep -q "^ok cowchain-control 1 pid $A_PID pool $POOL\$" "$WORK/hello.out" ||
  { cat "$WORK/hello.out"; fail "hello reply"; }
"$CLIENT" hold "$SOCK" vm1 30 >"$WORK/hold.out" &
holder=$!
for i in $(seq 100); do grep -q open "$WORK/hold.out" 2>/dev/null && break; sleep 0.1; done
"$CLIENT" hold "$SOCK" base 30 >"$WORK/hold2.out" &
holder2=$!
for i in $(seq 100); do grep -q open "$WORK/hold2.out" 2>/dev/null && break; sleep 0.1; done
"$CTLC" "$CTL" -c held -c "connections vm1" -c "connections nosuch" >"$WORK/held.out" || fail "held"
cat "$WORK/held.out"
top=$(awk '$1 == "top" { print $2 }' "$POOL/clones/vm1")
grep -q "^data vm1 1 $POOL/layers/$top.cow rw\$" "$WORK/held.out" || fail "held: vm1"
grep -q "^data base 1 $POOL/images/base.raw ro\$" "$WORK/held.out" || fail "held: base"
[ "$(sed -n 3p "$WORK/held.out")" = "ok 2" ] || fail "held: count"
[ "$(sed -n 4p "$WORK/held.out")" = "ok 1" ] || fail "connections vm1"
[ "$(sed -n 5p "$WORK/held.out")" = "ok 0" ] || fail "connections nosuch"
if "$CTLC" "$CTL" -c "frobnicate a%b" >"$WORK/bad.out"; then fail "an unknown command succeeded"; fi
grep -q '^err 38 unknown command frobnicate' "$WORK/bad.out" || fail "unknown command reply"
if "$CTLC" "$CTL" -c "quiesce 100 base" >"$WORK/ro.out"; then fail "quiesce of a template"; fi
grep -q '^err 2 ' "$WORK/ro.out" || fail "quiesce of a read-only export: $(cat "$WORK/ro.out")"
kill "$holder" "$holder2"
wait "$holder" "$holder2" 2>/dev/null || true

# Another uid: refused by SO_PEERCRED.  The modes are opened up for this check only, so that
# the refusal really comes from the peer check and not from the file system.
if command -v useradd >/dev/null && command -v setpriv >/dev/null && [ "$(id -u)" = 0 ]; then
  user=ccctl$$
  useradd -M -r -s /usr/sbin/nologin "$user"
  on_exit "userdel $user 2>/dev/null"
  uid=$(id -u "$user")
  chmod 0711 "$WORK" "$POOL" "$POOL/run"
  chmod 0666 "$CTL"
  rc=0
  setpriv --reuid="$uid" --regid="$uid" --clear-groups "$CTLC" "$CTL" -c hello \
    >"$WORK/other.out" 2>&1 || rc=$?
  chmod 0600 "$CTL"
  chmod 0700 "$POOL/run" "$WORK"
  cat "$WORK/other.out"
  [ $rc -eq 3 ] || fail "uid $uid was not refused (exit $rc)"
  grep -q 'Operation not permitted' "$WORK/other.out" || fail "not refused by the peer check"
  "$CTLC" "$CTL" -c hello >/dev/null || fail "the server stopped answering after a refusal"
else
  echo "not root or no useradd/setpriv: other-uid check skipped"
fi

# Removed at exit.
stop_server
[ ! -e "$CTL" ] || fail "the socket outlived the server"

# kill -9 leaves a stale socket; a new server does not mind; a client cleans it up.
start_server
K_PID=$SERVER_PID
KCTL=$POOL/run/nbdkit-$K_PID.ctl
wait_socket "$KCTL"
kill -9 "$K_PID"
for i in $(seq 50); do kill -0 "$K_PID" 2>/dev/null || break; sleep 0.1; done
[ -S "$KCTL" ] || fail "kill -9 left no socket (the test proves nothing)"
start_server
B_PID=$SERVER_PID
BCTL=$POOL/run/nbdkit-$B_PID.ctl
wait_socket "$BCTL"
"$CTLC" "$BCTL" -c hello >/dev/null || fail "the new server's socket"
qemu-io -f raw -c 'write -P 0x42 0 4k' "$(uri vm1)" >/dev/null || fail "the new server serves"
"$CTLC" --find "$POOL" >"$WORK/find.out"
cat "$WORK/find.out"
grep -qx "stale $KCTL removed" "$WORK/find.out" || fail "the stale socket was not found"
grep -qx "live $BCTL" "$WORK/find.out" || fail "the live socket was not reported live"
[ ! -e "$KCTL" ] && [ -S "$BCTL" ] || fail "the wrong socket was removed"
stop_server

# control=off: no socket.
start_server -- control=off
[ ! -e "$POOL/run/nbdkit-$SERVER_PID.ctl" ] || fail "control=off still made a socket"
qemu-io -r -f raw -c 'read -P 0x42 0 4k' "$(uri vm1)" >/dev/null || fail "control=off: serving"
stop_server

# Forking to the background: the socket carries the daemon's pid.
rm -f "$WORK/d.pid"
timeout "$SERVER_TIMEOUT" "${SERVER_ENV[@]}" nbdkit -U "$WORK/d.sock" -P "$WORK/d.pid" \
  "$PLUGIN" pool="$POOL" 2>"$WORK/d.log"
for i in $(seq 100); do [ -s "$WORK/d.pid" ] && break; sleep 0.1; done
D_PID=$(cat "$WORK/d.pid")
SERVER_PIDS+=("$D_PID")
SERVER_LOGS+=("$WORK/d.log")
wait_socket "$POOL/run/nbdkit-$D_PID.ctl"
"$CTLC" "$POOL/run/nbdkit-$D_PID.ctl" -c hello | grep -q "pid $D_PID " || fail "daemon's hello"
kill "$D_PID"
for i in $(seq 100); do kill -0 "$D_PID" 2>/dev/null || break; sleep 0.1; done
[ ! -e "$POOL/run/nbdkit-$D_PID.ctl" ] || fail "the daemon left its socket"
check_template_unchanged
