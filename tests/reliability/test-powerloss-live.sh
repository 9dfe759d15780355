#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Power cut at every step of a live `snapshot create` (docs/POOL.md 6.1, and 6.3 for two
# clones at once), the power-loss counterpart of tests/integration/test-live-snapshot-crash.sh
# (kill -9).  A served clone has a client (live-writer.c) that writes known blocks
# through nbdkit, flushes them, leaves one write unflushed, and keeps writing and flushing
# after the command.  One strace traces the running nbdkit (attached with -p, every thread)
# and a driver that runs the client, the CLI and a journal of what the client saw complete:
# a single tracer prints the calls of all of them in one order that respects causality (each
# call when it returns, before that thread goes on; powerloss.py, "Live mode", explains why
# that order is sound, and why no timestamps have to be merged).  powerloss.py --live replays
# every prefix of that sequence of file changes into its three models (drop, meta, data) and
# checks each distinct state:
#   - `check` finds no errors, and `check --repair` leaves no leaks;
#   - the snapshot exists on every clone named or on none, and on all of them once the
#     command had returned (a returned command is durable);
#   - no write the client saw flushed before the cut is lost from the clone, no block is torn;
#   - once the command has returned, the snapshot holds every write that completed before the
#     command started (the unflushed one too: the server's settle of the old top made it
#     durable before it answered push-top), and the clone holds them too; before that, every
#     one completed before the command and flushed before the cut; in no state a write issued
#     after the command returned.
# The same checks are made again after `check --repair`.  The replay must end on the pool as
# it was when tracing stopped (copied while the client is still connected, idle), so no change
# went untraced (e.g. by a thread strace did not attach).  States past MAX_STATES are sampled
# (the seed is printed; a run has fewer, so all are checked).  Self-test: the same trace with
# the server's syncs inside the command left out (the settle of the old top:
# its flush and freeze) must be caught.  `powerloss.py --live ... --list` prints every cut point.
source "$(dirname "$0")/../lib/functions.sh"
requires_powerloss_trace
PL=$(dirname "$0")/powerloss.py
LIVE_WRITER=${LIVE_WRITER:-$BUILDDIR/tests/reliability/live-writer}
requires_built live-writer "$LIVE_WRITER"
powerloss_sample 400

truncate -s 16M "$WORK/base.raw"
qemu-io -f raw -c 'write -P 0x11 0 1M' "$WORK/base.raw" >/dev/null
cc pool init
cc template import base "$WORK/base.raw"
cc clone create vm1 --from base
cc clone create vm2 --from base
cc clone create vm3 --from base

TRACED=(openat open creat write pwrite64 pwritev writev rename renameat renameat2 unlink unlinkat
  rmdir fsync fdatasync ftruncate fallocate mkdir mkdirat copy_file_range ioctl sendfile splice link
  linkat symlink close lseek dup dup2 dup3 fchmod chmod fchmodat clone clone3 fork vfork execve)

# live_case MODE CLONES SNAP: one traced live snapshot and its replay.
live_case() {
  local mode=$1 clones=$2 snap=$3 j=$WORK/journal
  rm -f "$j" "$WORK"/{ready,go,stop,stop.idle,stop.quit} "$WORK/trace"
  start_server
  # The pool as tracing begins: the server is idle and everything synced.
  sync
  rm -rf "$WORK/pool.orig"
  cp -a --sparse=always "$POOL" "$WORK/pool.orig"
  find "$WORK/pool.orig/run" -type s -delete
  TIDS=$(ls /proc/"$SERVER_PID"/task | paste -sd,)
  echo "$TIDS" >"$WORK/tids"
  # (LeakSanitizer refuses to run under ptrace.)
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    timeout 120 strace -I 1 -f -qq -X raw -xx -s 67108864 -o "$WORK/trace" -p "$SERVER_PID" \
    -e trace="$(IFS=,; echo "${TRACED[*]}")" -- bash -c '
      set -e
      w=$1 sock=$2 j=$3 work=$4 mode=$5 clones=$6 snap=$7 cc=$8 pool=$9
      "$w" "$sock" "$j" "$work/ready" "$work/go" "$work/stop" "$mode" ${clones//,/ } &
      pid=$!
      # a failed step ends this driver: the writer it started goes with it (on success the
      # writer stays, idle, until stop.quit)
      trap "kill \$pid 2>/dev/null" ERR
      while [ ! -e "$work/ready" ]; do kill -0 $pid; sleep 0.01; done
      echo start >>"$j"
      "$cc" --pool "$pool" snapshot create "$clones" "$snap" >/dev/null
      echo done >>"$j"
      touch "$work/go"
      n=$(( $(grep -c "^flushed" "$j") + 3 * $(echo ${clones//,/ } | wc -w) ))
      while [ "$(grep -c "^flushed" "$j")" -lt $n ]; do kill -0 $pid; sleep 0.01; done
      touch "$work/stop"
      while [ ! -e "$work/stop.idle" ]; do kill -0 $pid; sleep 0.01; done
      echo end >>"$j"
      # strace would go on tracing the server it attached to: SIGINT makes it detach and exit.
      kill -INT $PPID' driver "$LIVE_WRITER" "$SOCK" "$j" "$WORK" "$mode" "$clones" "$snap" \
    "$COWCHAIN" "$POOL" || true
  grep -qx end "$j" || fail "$clones: the traced live snapshot failed"
  # The pool as tracing ended, the client still connected and idle (the replay must reach it:
  # no change went untraced); then the client disconnects.
  rm -rf "$WORK/pool.end"
  cp -a --sparse=always "$POOL" "$WORK/pool.end"
  find "$WORK/pool.end/run" -type s -delete
  touch "$WORK/stop.quit"
  stop_server
  say "$clones ($mode): $(wc -l <"$WORK/trace") trace lines, $(grep -c "^wrote" "$j") writes"
  SECONDS=0
  timeout 280 python3 "$PL" --live "$COWCHAIN" "$WORK/pool.orig" "$POOL" "$WORK/trace" "$j" \
    "$WORK" "$clones" "$snap" --server-tids "$TIDS" --max-states "$MAX_STATES" --seed "$SEED" \
    --final "$WORK/pool.end" >"$WORK/pl.out" || {
    cat "$WORK/pl.out"
    fail "live snapshot create $clones: a power cut leaves an unsafe pool"
  }
  cat "$WORK/pl.out"
  echo "  ($SECONDS s)"
}

live_case pause vm1 s1
# Self-test on the same trace: the server's fsync and fdatasync calls made while the command
# ran (between the driver's "start" and "done" journal lines: the settle of the old top after push-top,
# the freeze) are left out of the replay; the unflushed write the snapshot must hold is then
# lost, which must be caught.
if timeout 280 python3 "$PL" --live "$COWCHAIN" "$WORK/pool.orig" "$POOL" "$WORK/trace" \
  "$WORK/journal" "$WORK" vm1 s1 --server-tids "$TIDS" --max-states "$MAX_STATES" --seed "$SEED" \
  --drop-server-syncs >"$WORK/pl-bad.out" 2>&1; then
  cat "$WORK/pl-bad.out"
  fail "the replay did not notice a live snapshot without the server's syncs"
fi
echo "self-test: missing server syncs are caught: $(head -n 1 "$WORK/pl-bad.out")"
# Two clones at once (the intent, POOL.md 6.3), the client writing on through the command.
live_case during vm2,vm3 s2
