#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Power cut at every step of a live merge, `snapshot delete CLONE SNAP` on a served clone
# (docs/POOL.md 6.2), the power-loss counterpart of tests/integration/test-live-merge-crash.sh
# (kill -9).  Both positions: "top", the snapshot right below the live top (merged into the top
# by the server, piece by piece: merge-top, relink-top, forget), and "frozen", a snapshot below
# another snapshot (copied into that frozen layer by the CLI, through an unlocked handle).  The
# served clone has a client (live-writer.c, mode "during") that writes and flushes known blocks
# over the snapshot's data before and all through the command.  As in test-powerloss-live.sh,
# one strace traces the running nbdkit (every thread) and a driver that runs the client, the CLI
# and a journal of what the client saw complete, and powerloss.py --live-merge replays every
# prefix of that one sequence of file changes into its three models (drop, meta, data) and
# checks each distinct state a power cut leaves:
#   - `check` finds no errors, and only the leaks POOL.md names for this operation (S as a
#     leftover once the record dropped it, 6.2 step 6; a dirty bit or space past the frontier of
#     a layer being written, section 7; a stale tmp/ file, section 2); `check --repair` then
#     leaves none;
#   - "before" (the snapshot still listed, its bytes exactly as they were) or "after" (it is
#     gone), and "after" once the command had returned;
#   - every other snapshot reads exactly as before the command;
#   - the clone reads, 64 KiB block by block, what it read before the command, or the client's
#     block where the client issued one; never anything else (no torn or foreign block);
#   - no write the client saw flushed is lost; in "after" of the top position, no write that
#     completed before the CLI sent `relink-top` either (the relink flushes the top first: that
#     is how a guest write wins over the merged layer's block, even unflushed, e.g. block 4);
#   - from "before", the delete run again (offline) reaches "after" with the same clone bytes.
# The same checks are made again after `check --repair`.  The replay must end on the pool as
# it was when tracing stopped.  Every state made by the merge's own calls (the CLI's and the
# server's control session's) is checked; those of the client's writes fill up to MAX_STATES,
# sampled deterministically from the printed seed (SEED=... MAX_STATES=... replays one sample;
# MAX_STATES=0 checks them all).  The client paces its blocks 40 ms apart so that the merge's
# pieces fall among them; the summary says how many of S's blocks it wrote before their piece
# was copied (the fill skips them) and how many after (they overwrite the fill).
# Self-test: the top position's trace with the relink's header write moved before the flush of
# what the merge copied into the top must be caught (the states inside relink-top are checked).
# `powerloss.py --live-merge ... --list` prints every cut point.
source "$(dirname "$0")/../lib/functions.sh"
requires_powerloss_trace
PL=$(dirname "$0")/powerloss.py
LIVE_WRITER=${LIVE_WRITER:-$BUILDDIR/tests/reliability/live-writer}
requires_built live-writer "$LIVE_WRITER"
powerloss_sample 60

# The guest's blocks (powerloss.py: BASE 4M, 128 blocks of 64 KiB, bytes 1..128) are written
# over layers holding bytes it never writes (0xf9..0xfe), so a block's origin is always known.
# base: 0xfd under blocks 96..127 and beyond (10M..12.5M).  s1 (vm1) and r1 (vm2): data under
# blocks 0..63, a zeroed range over the template's data (11M..12.5M: blocks 112..127 and 512k
# the client never writes; the merge copies zeroes), data outside the client's range (13M) and
# a partial cluster (2M, 4k).  r2 (vm2, above r1): data over part of r1's (blocks 16..31) and
# beside it (14M).
truncate -s 16M "$WORK/base.raw"
qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0xfd 10M 2560k' "$WORK/base.raw" >/dev/null
cc pool init
cc template import base "$WORK/base.raw"
cc clone create vm1 --from base
cc clone create vm2 --from base
start_server
w() { qemu-io -f raw -c "$1" -c flush "$(uri "$2")" >/dev/null || fail "write $1 to $2"; }
for c in vm1 vm2; do
  w 'write -P 0xfb 4M 4M' $c
  w 'write -z 11M 1536k' $c
  w 'write -P 0xfc 13M 1M' $c
  w 'write -P 0xfa 2M 4k' $c
done
retry cc snapshot create vm1 s1
retry cc snapshot create vm2 r1
w 'write -P 0xfe 5M 1M' vm2
w 'write -P 0xf9 14M 512k' vm2
retry cc snapshot create vm2 r2
stop_server

# A failed case must not leave the client waiting for its STOP files.
on_stop 'touch "$WORK/stop" "$WORK/stop.quit"'

TRACED=(openat open creat write pwrite64 pwritev writev rename renameat renameat2 unlink unlinkat
  rmdir fsync fdatasync ftruncate fallocate mkdir mkdirat copy_file_range sendfile splice link
  linkat symlink close lseek dup dup2 dup3 fchmod chmod fchmodat clone clone3 fork vfork execve
  sendto) # sendto: the control requests and replies (which the replay reads, not applies)

# merge_case WHERE CLONE SNAP: one traced live `snapshot delete CLONE SNAP` and its replay.
merge_case() {
  local where=$1 clone=$2 snap=$3 j=$WORK/journal
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
      w=$1 sock=$2 j=$3 work=$4 clone=$5 snap=$6 cc=$7 pool=$8
      LIVE_WRITER_PACE_MS=40 "$w" "$sock" "$j" "$work/ready" "$work/go" "$work/stop" during \
        "$clone" &
      pid=$!
      # a failed step ends this driver: the writer it started goes with it (on success the
      # writer stays, idle, until stop.quit)
      trap "kill \$pid 2>/dev/null" ERR
      while [ ! -e "$work/ready" ]; do kill -0 $pid; sleep 0.01; done
      echo start >>"$j"
      "$cc" --pool "$pool" snapshot delete "$clone" "$snap" >"$work/delete.out"
      echo done >>"$j"
      touch "$work/go"
      # Three more flushes after the command (or the last block: the client stops there).
      n=$(( $(grep -c "^flushed" "$j") + 3 ))
      while [ "$(grep -c "^flushed" "$j")" -lt $n ] && ! grep -qx "flushed $clone 127" "$j"; do
        kill -0 $pid
        sleep 0.01
      done
      touch "$work/stop"
      while [ ! -e "$work/stop.idle" ]; do kill -0 $pid; sleep 0.01; done
      echo end >>"$j"
      # strace would go on tracing the server it attached to: SIGINT makes it detach and exit.
      kill -INT $PPID' driver "$LIVE_WRITER" "$SOCK" "$j" "$WORK" "$clone" "$snap" \
    "$COWCHAIN" "$POOL" || true
  grep -qx end "$j" || fail "$clone@$snap ($where): the traced live merge failed"
  # The pool as tracing ended, the client still connected and idle; then it disconnects.
  rm -rf "$WORK/pool.end"
  cp -a --sparse=always "$POOL" "$WORK/pool.end"
  find "$WORK/pool.end/run" -type s -delete
  touch "$WORK/stop.quit"
  stop_server
  say "$clone@$snap ($where): $(wc -l <"$WORK/trace") trace lines, $(grep -c "^wrote" "$j")" \
    "writes"
  SECONDS=0
  timeout 280 python3 "$PL" --live-merge "$COWCHAIN" "$WORK/pool.orig" "$POOL" "$WORK/trace" "$j" \
    "$WORK" "$clone" "$snap" --position "$where" --server-tids "$TIDS" \
    --max-states "$MAX_STATES" --seed "$SEED" --final "$WORK/pool.end" >"$WORK/pl.out" || {
    cat "$WORK/pl.out"
    fail "live merge $clone@$snap ($where): a power cut leaves an unsafe pool"
  }
  cat "$WORK/pl.out"
  echo "  ($SECONDS s)"
}

merge_case top vm1 s1
# Self-test on the same trace: the relink's header write moved before the flush of the top
# (whose map does not yet name what merge-top copied from S): a cut must show the clone reading
# through to the template where S had data.
if timeout 280 python3 "$PL" --live-merge "$COWCHAIN" "$WORK/pool.orig" "$POOL" "$WORK/trace" \
  "$WORK/journal" "$WORK" vm1 s1 --position top --server-tids "$TIDS" \
  --relink-first >"$WORK/pl-bad.out" 2>&1; then
  cat "$WORK/pl-bad.out"
  fail "the replay did not notice a relink of the live top before its flush"
fi
grep -q "^powerloss: live merge vm1@s1 (top): cut [0-9]* of" "$WORK/pl-bad.out" ||
  { cat "$WORK/pl-bad.out"; fail "the self-test failed, but not at a cut point"; }
echo "self-test: a relink before the flush is caught: $(head -n 1 "$WORK/pl-bad.out")"
merge_case frozen vm2 r1
