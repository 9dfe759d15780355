#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/lab works: --make-template and 2 guests in the background, each on its own linked
# clone, each reaching its shell with its own identity; --status; --dry-run changes nothing;
# --down stops every guest and the server by PID and deletes the clones.
#
# Environment: COWCHAIN, PLUGIN (set by CTest; default: ./build), GUEST_TIMEOUT (default 120).
# Fails when qemu, a kernel, busybox-static (all installed by scripts/setup), the plugin or the
# CLI is missing.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_TIMEOUT=${GUEST_TIMEOUT:-120}
# shellcheck source=tests/lib/functions.sh
source "$HERE/../lib/functions.sh"
# shellcheck source=tests/e2e/guest-lib.sh
source "$HERE/guest-lib.sh"
export COWCHAIN PLUGIN

guest_requires
requires_plugin
requires_cowchain

LAB=$POOL/lab

# The lab's processes are daemons, not our children: at exit, stop what its pidfiles name, if
# --down did not (each checked to be qemu or nbdkit first, so a recycled PID is left alone).
stop_lab() {
  local f pid _
  for f in "$LAB"/*.pid; do
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    grep -qE 'qemu|nbdkit' "/proc/$pid/comm" 2>/dev/null || continue
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
  done
  if [ "$TEST_RC" -ne 0 ] && [ "$TEST_RC" -ne 77 ]; then
    for f in "$LAB"/*.console "$WORK"/*.out; do
      [ -s "$f" ] || continue
      echo "--- $f"
      tail -n 30 "$f"
    done
  fi
}
on_stop stop_lab

lab() {
  timeout 300 bash "$SRCDIR/scripts/lab" --pool "$POOL" "$@"
}

say "scripts/lab 2 --make-template"
lab 2 --make-template >"$WORK/up.out" 2>&1 || fail "scripts/lab 2 --make-template failed"
for c in lab1 lab2; do
  [ -s "$LAB/$c.pid" ] || fail "no pidfile for $c"
done

# Both guests reach their shell, each with its own identity.
for c in lab1 lab2; do
  for _ in $(seq $((GUEST_TIMEOUT * 5))); do
    grep -q "GUEST: LAB-READY id=$c" "$LAB/$c.console" 2>/dev/null && break
    sleep 0.2
  done
  grep -q "GUEST: LAB-READY id=$c" "$LAB/$c.console" ||
    fail "$c did not reach LAB-READY within $GUEST_TIMEOUT s"
  grep -q "GUEST: TEMPLATE-OK" "$LAB/$c.console" || fail "$c did not see the template's data"
  grep -q "GUEST: PREV-ID=none" "$LAB/$c.console" || fail "$c did not start from the template"
done
say "both guests are up"

lab --status >"$WORK/status.out" 2>&1 || fail "scripts/lab --status failed"
grep -q '^lab1: running' "$WORK/status.out" && grep -q '^lab2: running' "$WORK/status.out" ||
  fail "scripts/lab --status does not show both guests running"

# --dry-run prints the commands and starts nothing.
lab 3 --dry-run >"$WORK/dry.out" 2>&1 || fail "scripts/lab 3 --dry-run failed"
grep -q 'qemu-system-x86_64 .*cowchain.id=lab3' "$WORK/dry.out" ||
  fail "scripts/lab --dry-run did not print lab3's qemu command"
[ ! -e "$LAB/lab3.pid" ] || fail "scripts/lab --dry-run started lab3"
"$COWCHAIN" --pool "$POOL" clone list >"$WORK/clones.out"
! grep -q '^lab3 ' "$WORK/clones.out" || fail "scripts/lab --dry-run created the clone lab3"

pids=()
for f in "$LAB"/lab1.pid "$LAB"/lab2.pid "$LAB"/nbdkit.pid; do
  pids+=("$(cat "$f")")
done
say "scripts/lab --down"
lab --down >"$WORK/down.out" 2>&1 || fail "scripts/lab --down failed"
for pid in "${pids[@]}"; do
  ! kill -0 "$pid" 2>/dev/null || fail "process $pid still runs after --down"
done
"$COWCHAIN" --pool "$POOL" clone list >"$WORK/clones.out"
! grep -qE '^lab[0-9]+ ' "$WORK/clones.out" || fail "--down left lab clones: $(cat "$WORK/clones.out")"
"$COWCHAIN" --pool "$POOL" template list >"$WORK/templates.out"
grep -q '^guest ' "$WORK/templates.out" || fail "--down deleted the template"
say "guests and server stopped, clones deleted, template kept"
