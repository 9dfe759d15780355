#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# systemd (issue 18 item 2): the installed units are valid (systemd-analyze verify), their
# instance is the pool path as `systemd-escape --path` spells it, and the server runs under
# socket activation: systemd-socket-activate listens on POOL/cowchain.sock as cowchain@.socket
# does and starts the service's ExecStart on the first connection, with the socket passed as
# LISTEN_FDS (nbdkit gets no -U); clients connect with nbdinfo, qemu-img and qemu-io, the
# socket ends up owner-only, and what was written survives a second activation.
# (PID 1 here need not be systemd, so the units are not started with systemctl.)
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires cmake
requires systemd-socket-activate
requires systemd-analyze
requires systemd-escape
requires nbdinfo
requires qemu-img
requires qemu-io
setup_pool

INST=$WORK/inst
cmake --install "$BUILDDIR" --prefix "$INST" >"$WORK/install.out" 2>&1 || {
  cat "$WORK/install.out"
  fail "cmake --install"
}
UNITS=$INST/lib/systemd/system
SERVICE=$UNITS/cowchain@.service
SOCKET=$UNITS/cowchain@.socket
systemd-analyze verify --man=no "$SERVICE" "$SOCKET" >"$WORK/verify.out" 2>&1 || {
  cat "$WORK/verify.out"
  fail "systemd-analyze verify of the installed units"
}
grep -q '^ListenStream=%f/cowchain.sock$' "$SOCKET" || fail "the socket unit does not listen on POOL/cowchain.sock"
grep -q '^SocketMode=0600$' "$SOCKET" || fail "the socket unit is not owner-only"

say "instance name"
inst=$(systemd-escape --path "$POOL")
[ "$(systemd-escape --unescape --path "$inst")" = "$POOL" ] || fail "escape round trip of $POOL"
# %f is "/" + the unescaped instance: the pool path.
exec_line=$(sed -n 's/^ExecStart=//p' "$SERVICE")
cmd=${exec_line//%f/$(systemd-escape --unescape --path "$inst")}
[ "$cmd" = "$INST/bin/cowchain --pool $POOL serve" ] || fail "ExecStart resolves to '$cmd'"

# activate: what cowchain@.socket + cowchain@.service do, with systemd-socket-activate.  Uses
# the build tree's plugin (the installed cowchain would look in nbdkit's plugin directory).
SOCK=$POOL/cowchain.sock
activate() {
  local n=${#SERVER_PIDS[@]} log wrapper i
  log=$WORK/activate$n.log
  rm -f "$SOCK"
  # shellcheck disable=SC2086
  timeout "$SERVER_TIMEOUT" env COWCHAIN_PLUGIN="$PLUGIN" systemd-socket-activate -l "$SOCK" \
    $cmd 2>"$log" &
  wrapper=$!
  SERVER_LOGS+=("$log")
  for i in $(seq 100); do
    [ -S "$SOCK" ] && break
    kill -0 $wrapper 2>/dev/null || fail "systemd-socket-activate exited: $(cat "$log")"
    sleep 0.1
  done
  [ -S "$SOCK" ] || fail "systemd-socket-activate did not listen on $SOCK"
  ACTIVATOR=$(pgrep -P $wrapper) || fail "no activator process"
  SERVER_PIDS+=("$ACTIVATOR")
  SERVER_PID=$ACTIVATOR
  SERVER_LOG=$log
}

say "socket activation"
activate
# Nothing runs the server before the first connection.
grep -q "nbdkit" "/proc/$ACTIVATOR/cmdline" && fail "the server started before any connection"
nbdinfo --list "nbd+unix:///?socket=$SOCK" >"$WORK/list.out" || fail "nbdinfo --list"
grep -q 'export="vm1"' "$WORK/list.out" || fail "vm1 is not listed: $(cat "$WORK/list.out")"
# The first connection started nbdkit in the activator's process, on the passed socket.
tr '\0' ' ' <"/proc/$ACTIVATOR/cmdline" >"$WORK/cmdline"
grep -q "nbdkit" "$WORK/cmdline" || fail "not nbdkit after the first connection: $(cat "$WORK/cmdline")"
grep -q -- " -U " "$WORK/cmdline" && fail "nbdkit was given a socket of its own: $(cat "$WORK/cmdline")"
tr '\0' '\n' <"/proc/$ACTIVATOR/environ" | grep -qx "LISTEN_FDS=1" || fail "nbdkit has no LISTEN_FDS"
log_has "Execing"
qemu-img compare -q -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "vm1 over the activated socket"
qemu-io -f raw -c "write -P 0x5c 1M 64k" "$(uri vm1)" >/dev/null || fail "write over the activated socket"
[ "$(stat -c %a "$SOCK")" = 600 ] || fail "socket mode $(stat -c %a "$SOCK"), the pool wants 600"
stop_server

say "a second activation serves what the first wrote"
activate
qemu-io -f raw -r -c "read -P 0x5c 1M 64k" -c "read -P 0x11 0 1M" "$(uri vm1)" >/dev/null ||
  fail "vm1 after a restart"
stop_server
cc check
check_template_unchanged
