#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# End to end: QEMU guests boot from cowchain exports.
#
#   1. build a tiny ext4 root image (busybox + an init that records who booted) and an
#      initramfs with the virtio modules of the installed Debian kernel (tests/e2e/guest-lib.sh)
#   2. import the image as template "base", make three linked clones, serve the pool with the
#      plugin on a unix socket and boot three TCG guests at once, one per clone
#   3. check the consoles, then the disks themselves (exported through the server with nbdcopy
#      and read with debugfs, nothing mounted): each clone holds its own identity and data and
#      no other's, and the template export is byte-identical to the imported image; a clone
#      held by a running guest is snapshotted live (its revert refused, counting the guest's
#      connection), and snapshotted again once the guest is gone
#   4. snapshot clone1, boot and change a file, revert, boot and see the old content; delete
#      the snapshot (a merge) and boot again, checking the content survived
#   5. a linked clone of a snapshot boots with its parent's data and keeps its own apart
#   6. a live snapshot under a guest that writes and syncs without pause: a clone of it boots
#      (its kernel replays the journal, as after a power cut) and finds what was synced before
#      the snapshot; after that guest's clean shutdown e2fsck -fn finds the clone clean
#
# Environment: COWCHAIN, PLUGIN (set by CTest; default: ./build), GUEST_TIMEOUT (seconds per
# guest, default 120), GUEST_ACCEL (default tcg), KEEP=1 keeps the work directory.
# Fails when qemu, a kernel, busybox-static (all installed by scripts/setup), the plugin or the
# CLI is missing; skips only with GUEST_ACCEL=kvm on a machine without a usable /dev/kvm.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_TIMEOUT=${GUEST_TIMEOUT:-120}
SERVER_TIMEOUT=${SERVER_TIMEOUT:-600}
# shellcheck source=tests/lib/functions.sh
source "$HERE/../lib/functions.sh"
# shellcheck source=tests/e2e/guest-lib.sh
source "$HERE/guest-lib.sh"

# --- requirements -------------------------------------------------------------------------------
guest_requires
for t in nbdcopy nbdinfo timeout sha256sum e2fsck dumpe2fs; do
  requires "$t"
done
requires_plugin
requires_cowchain

# Everything we start in the background besides the servers is a job of this shell (a `timeout`
# wrapper around qemu) and writes a pidfile; at exit, before the servers stop, the jobs still
# running and the processes named by pidfiles still present are killed (each pidfile is
# removed once its process is known to be gone).
PIDFILES=()
kill_guests() {
  local pids=() pid f i
  for f in "${PIDFILES[@]}"; do
    [ -s "$f" ] && pids+=("$(cat "$f")")
  done
  mapfile -t -O "${#pids[@]}" pids < <(jobs -p)
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for i in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  done
}
on_stop kill_guests
# On a failure: the end of every console and qemu log (the server logs are printed anyway).
print_guest_logs() {
  local f
  [ "$TEST_RC" -ne 0 ] && [ "$TEST_RC" -ne 77 ] || return 0
  for f in "$WORK"/*.console "$WORK"/*.qemu.log; do
    [ -s "$f" ] || continue
    echo "--- $f"
    tail -n 40 "$f"
  done
}
on_exit print_guest_logs

# The CLI, bounded: a pool operation never takes two minutes here.
cc() {
  timeout 120 "$COWCHAIN" --pool "$POOL" "$@"
}

# --- guests -----------------------------------------------------------------------------------
declare -A GUEST_WRAPPER
# boot_start TAG EXPORT [KERNEL-ARGS...]: boot a guest from EXPORT in the background;
# its console goes to $WORK/TAG.console.
boot_start() {
  local tag=$1 export=$2
  shift 2
  local pidfile=$WORK/$tag.qemu.pid
  rm -f "$WORK/$tag.console" "$pidfile"
  GUEST_PIDFILE=$pidfile guest_qemu_argv "$tag" "$(uri "$export")" "$WORK/$tag.console" "$@"
  timeout -k 10 "$GUEST_TIMEOUT" "${GUEST_QEMU[@]}" </dev/null >"$WORK/$tag.qemu.log" 2>&1 &
  GUEST_WRAPPER[$tag]=$!
  PIDFILES+=("$pidfile")
}

# boot_wait TAG: wait for the guest to power off; fail on a timeout or a qemu error.
boot_wait() {
  local tag=$1 rc=0
  wait "${GUEST_WRAPPER[$tag]}" || rc=$?
  rm -f "$WORK/$tag.qemu.pid"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    fail "guest $tag did not power off within $GUEST_TIMEOUT s"
  fi
  [ $rc -eq 0 ] || fail "qemu for guest $tag exited $rc: $(tail -n 5 "$WORK/$tag.qemu.log")"
}

# boot_wait_line TAG LINE: wait (bounded) until the running guest TAG prints LINE.
boot_wait_line() {
  local tag=$1 line=$2 _
  for _ in $(seq $((GUEST_TIMEOUT * 5))); do
    if [ -f "$WORK/$tag.console" ] && tr -d '\r' <"$WORK/$tag.console" | grep -qF "GUEST: $line"; then
      return 0
    fi
    kill -0 "${GUEST_WRAPPER[$tag]}" 2>/dev/null ||
      fail "guest $tag stopped before printing 'GUEST: $line'"
    sleep 0.2
  done
  fail "guest $tag did not print 'GUEST: $line' within $GUEST_TIMEOUT s"
}

# boot_stop TAG: stop a running guest by PID (qemu exits cleanly on SIGTERM) and wait.
boot_stop() {
  local tag=$1 pidfile=$WORK/$1.qemu.pid
  [ -s "$pidfile" ] || fail "guest $tag has no pidfile"
  kill "$(cat "$pidfile")"
  wait "${GUEST_WRAPPER[$tag]}" || true
  rm -f "$pidfile"
}

# console_has TAG LINE...: each LINE ("GUEST: ..." without the prefix) is on TAG's console.
console_has() {
  local tag=$1 line
  shift
  for line in "$@"; do
    # The kernel may print on the serial line too; match whole lines, ignoring a CR.
    tr -d '\r' <"$WORK/$tag.console" | grep -qxF "GUEST: $line" ||
      fail "console of $tag lacks 'GUEST: $line' (see $WORK/$tag.console)"
  done
}

# console_lacks TAG LINE...: no LINE ("GUEST: ..." without the prefix) is on TAG's console.
console_lacks() {
  local tag=$1 line
  shift
  for line in "$@"; do
    if tr -d '\r' <"$WORK/$tag.console" | grep -qxF "GUEST: $line"; then
      fail "console of $tag has 'GUEST: $line' (see $WORK/$tag.console)"
    fi
  done
}

# console_value TAG KEY: the value of the last "GUEST: KEY=value" line of TAG's console.
console_value() {
  tr -d '\r' <"$WORK/$1.console" | sed -n "s/^GUEST: $2=//p" | tail -n 1
}

# busy_round TAG: the last round the busy writer of TAG reported synced (0 before the first).
busy_round() {
  local k
  k=$(console_value "$1" BUSY-SYNCED)
  case "$k" in
    '' | *[!0-9]*) echo 0 ;;
    *) echo "$k" ;;
  esac
}

# busy_wait TAG K: wait (bounded) until the running guest TAG has synced round K.
busy_wait() {
  local tag=$1 k=$2 _
  for _ in $(seq $((GUEST_TIMEOUT * 5))); do
    [ -f "$WORK/$tag.console" ] && [ "$(busy_round "$tag")" -ge "$k" ] && return 0
    kill -0 "${GUEST_WRAPPER[$tag]}" 2>/dev/null ||
      fail "guest $tag stopped before syncing round $k (last: $(busy_round "$tag"))"
    sleep 0.2
  done
  fail "guest $tag did not sync round $k within $GUEST_TIMEOUT s (last: $(busy_round "$tag"))"
}

# Each /state a guest wrote comes with new random data in /data.bin: state -> its sha256.
declare -A DATA_SHA
# note_write TAG STATE: remember the checksum of the data TAG's guest wrote with STATE.
note_write() {
  local sha
  sha=$(console_value "$1" WROTE-DATA-SHA)
  [ ${#sha} -eq 64 ] || fail "guest $1 did not report the checksum of the data it wrote"
  DATA_SHA[$2]=$sha
}

# console_state TAG STATE: TAG's guest found STATE, with the data written with it intact.
console_state() {
  console_has "$1" "STATE=$2" DATA-OK "DATA-SHA=${DATA_SHA[$2]}"
}

# --- disks, read without mounting ---------------------------------------------------------------
# fetch EXPORT FILE: copy an export to a raw file through the server.
fetch() {
  rm -f "$2"
  timeout 120 nbdcopy "$(uri "$1")" "$2" || fail "nbdcopy of export $1 failed"
}

# disk_cat IMG PATH: the file's content, read with debugfs.
disk_cat() {
  debugfs -R "cat $2" "$1" 2>/dev/null
}

# disk_ls IMG DIR: the names in DIR (without . and ..), one per line, sorted.
disk_ls() {
  debugfs -R "ls -p $2" "$1" 2>/dev/null | awk -F/ 'NF > 6 && $6 != "." && $6 != ".." { print $6 }' |
    LC_ALL=C sort
}

# check_disk IMG ID STATE [OWNERS]: the clone's disk says /id = ID, /owners = OWNERS (default:
# ID alone; a sorted, space-separated list), /state = STATE, and its file system is clean.
check_disk() {
  local img=$1 id=$2 state=$3 owners=${4:-$2} got
  got=$(disk_cat "$img" /id)
  [ "$got" = "$id" ] || fail "$img: /id is '$got', expected '$id'"
  got=$(disk_ls "$img" /owners | tr '\n' ' ')
  [ "$got" = "$owners " ] || fail "$img: /owners holds '$got', expected only '$owners'"
  got=$(disk_cat "$img" /state)
  [ "$got" = "$state" ] || fail "$img: /state is '$got', expected '$state'"
  if [ -n "${DATA_SHA[$state]:-}" ]; then
    rm -f "$WORK/data.bin"
    debugfs -R "dump /data.bin $WORK/data.bin" "$img" >/dev/null 2>&1
    got=$(sha256sum <"$WORK/data.bin" | cut -d' ' -f1)
    [ "$got" = "${DATA_SHA[$state]}" ] ||
      fail "$img: /data.bin is not the data written with state '$state'"
    rm -f "$WORK/data.bin"
  fi
  e2fsck -fn "$img" >"$WORK/e2fsck.log" 2>&1 || {
    cat "$WORK/e2fsck.log" >&2
    fail "$img: e2fsck found errors"
  }
}

check_template() {
  local sum
  (cd "$POOL" && sha256sum --quiet -c "$WORK/pool-images.sha256") ||
    fail "a template's image file in the pool changed"
  fetch base "$WORK/base.export.raw"
  sum=$(sha256sum <"$WORK/base.export.raw")
  [ "$sum" = "$TEMPLATE_SUM" ] || fail "template export 'base' differs from the imported image"
  rm -f "$WORK/base.export.raw"
}

# --- 1. images ----------------------------------------------------------------------------------
say "kernel $GUEST_KERNEL; building the initramfs and the root image"
GUEST_INITRD=$WORK/initrd.gz
guest_make_initramfs "$GUEST_INITRD" || fail "could not build the initramfs"
guest_make_rootfs "$WORK/root.img" 48M || fail "could not build the root image"
TEMPLATE_SUM=$(sha256sum <"$WORK/root.img")

# --- 2. pool: a template and three linked clones; three guests at once ------------------------
cc pool init >/dev/null || fail "pool init failed"
cc template import base "$WORK/root.img" || fail "template import failed"
# The template's data file(s) in the pool (docs/POOL.md: images/), never to be written again.
(cd "$POOL" && find . -path './images/*' -type f -exec sha256sum {} +) >"$WORK/pool-images.sha256"
CLONES=(clone1 clone2 clone3)
for c in "${CLONES[@]}"; do
  cc clone create "$c" --from base || fail "clone create $c failed"
done

start_server
say "booting ${CLONES[*]} at once"
for c in "${CLONES[@]}"; do
  boot_start "$c" "$c" "cowchain.id=$c" "cowchain.write=first-$c"
done
for c in "${CLONES[@]}"; do
  boot_wait "$c"
done
say "all three guests powered off"
for c in "${CLONES[@]}"; do
  console_has "$c" TEMPLATE-OK PREV-ID=none STATE=none "OWNERS=" DATA-SHA=none "WROTE-ID=$c" \
    REMOUNT-RO-OK "DONE id=$c"
  note_write "$c" "first-$c"
done

# --- 3. the disks; a clone held by a guest ----------------------------------------------------
for c in "${CLONES[@]}"; do
  fetch "$c" "$WORK/$c.raw"
  check_disk "$WORK/$c.raw" "$c" "first-$c"
done
# The template image never held an identity.
[ -z "$(disk_cat "$WORK/root.img" /id)" ] || fail "the template image has an /id"
check_template
say "each clone holds its own identity and no other's; the template is unchanged"

# A clone in use by a guest gets a live snapshot through the server (docs/POOL.md 6.1), which
# holds what the guest's disk held; reverting it under the guest is refused, naming the
# connection.  Once the guest is gone the same server need not stop for a snapshot either.
say "live snapshot of clone3 while a guest holds it, then after it stopped"
boot_start hold clone3 cowchain.mode=hold
boot_wait_line hold "HOLDING id="
cc snapshot create clone3 busy >"$WORK/busy.out" 2>&1 || {
  cat "$WORK/busy.out"
  fail "live snapshot create clone3 failed while a guest had clone3 open"
}
fetch clone3@busy "$WORK/busy.raw"
check_disk "$WORK/busy.raw" clone3 first-clone3
rm -f "$WORK/busy.raw"
rc=0
cc snapshot revert clone3 busy >"$WORK/busy.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || fail "snapshot revert clone3 succeeded under its guest"
[ $rc -lt 124 ] || fail "snapshot revert clone3 crashed or hung (exit $rc)"
grep -q 'clone3: 1 connection open on nbdkit pid' "$WORK/busy.out" || {
  cat "$WORK/busy.out"
  fail "the revert refusal does not count the guest's connection"
}
say "revert refused as expected: $(head -n 1 "$WORK/busy.out")"
boot_stop hold
cc snapshot create clone3 idle || fail "snapshot create clone3 failed after its guest stopped"
fetch clone3@idle "$WORK/idle.raw"
check_disk "$WORK/idle.raw" clone3 first-clone3
cc snapshot delete clone3 idle || fail "snapshot delete clone3 idle failed (no client)"
fetch clone3 "$WORK/clone3.raw"
check_disk "$WORK/clone3.raw" clone3 first-clone3
rm -f "$WORK/idle.raw"

# The CLI's export agrees with the server (the server is stopped: nothing holds the clone).
stop_server
cc export clone2 "$WORK/clone2.cli.raw" || fail "cowchain export clone2 failed"
cmp -s "$WORK/clone2.raw" "$WORK/clone2.cli.raw" ||
  fail "cowchain export clone2 differs from the server's export of clone2"
cc export base "$WORK/base.cli.raw" || fail "cowchain export base failed"
[ "$(sha256sum <"$WORK/base.cli.raw")" = "$TEMPLATE_SUM" ] ||
  fail "cowchain export base differs from the imported image"
rm -f "$WORK"/*.cli.raw "$WORK"/clone[23].raw

# --- 4. snapshot, change, revert, delete (merge) ---------------------------------------------
say "snapshot clone1@pre, boot and change /state"
cc snapshot create clone1 pre || fail "snapshot create clone1 pre failed"
start_server
boot_start snap1 clone1 "cowchain.write=after-snapshot"
boot_wait snap1
console_has snap1 TEMPLATE-OK PREV-ID=clone1 "OWNERS=clone1 " WROTE-STATE=after-snapshot \
  REMOUNT-RO-OK
console_state snap1 first-clone1
note_write snap1 after-snapshot
fetch clone1 "$WORK/clone1.raw"
check_disk "$WORK/clone1.raw" clone1 after-snapshot
# The snapshot is an export of its own and still holds the old state.
fetch clone1@pre "$WORK/pre.raw"
check_disk "$WORK/pre.raw" clone1 first-clone1
stop_server

say "revert clone1 to pre and boot"
cc snapshot revert clone1 pre || fail "snapshot revert clone1 pre failed"
start_server
boot_start revert clone1 "cowchain.write=after-revert"
boot_wait revert
console_has revert TEMPLATE-OK PREV-ID=clone1 "OWNERS=clone1 " WROTE-STATE=after-revert \
  REMOUNT-RO-OK
console_state revert first-clone1
note_write revert after-revert
stop_server

say "delete (merge) clone1@pre and boot"
cc snapshot delete clone1 pre || fail "snapshot delete clone1 pre failed"
start_server
boot_start merged clone1
boot_wait merged
console_has merged TEMPLATE-OK PREV-ID=clone1 "OWNERS=clone1 " REMOUNT-RO-OK
console_state merged after-revert
fetch clone1 "$WORK/clone1.raw"
check_disk "$WORK/clone1.raw" clone1 after-revert
# The snapshot is gone, as an export too.
if timeout 30 nbdinfo --size "$(uri clone1@pre)" >/dev/null 2>&1; then
  fail "export clone1@pre still exists after snapshot delete"
fi
# The other clones and the template did not move.
for c in clone2 clone3; do
  fetch "$c" "$WORK/$c.raw"
  check_disk "$WORK/$c.raw" "$c" "first-$c"
done
check_template
say "snapshot, revert and merge kept every clone's own data; the template is unchanged"

# --- 5. a linked clone of a snapshot ----------------------------------------------------------
say "clone clone2@s2 as clone2b and boot it"
cc snapshot create clone2 s2 || fail "snapshot create clone2 s2 failed"
cc clone create clone2b --from clone2@s2 || fail "clone create clone2b --from clone2@s2 failed"
boot_start clone2b clone2b cowchain.id=clone2b cowchain.write=first-clone2b
boot_wait clone2b
console_has clone2b TEMPLATE-OK PREV-ID=clone2 "OWNERS=clone2 " WROTE-ID=clone2b REMOUNT-RO-OK
console_state clone2b first-clone2
note_write clone2b first-clone2b
fetch clone2b "$WORK/clone2b.raw"
check_disk "$WORK/clone2b.raw" clone2b first-clone2b "clone2 clone2b"
for e in clone2 clone2@s2; do
  fetch "$e" "$WORK/c2.raw"
  check_disk "$WORK/c2.raw" clone2 first-clone2
done
check_template
stop_server
say "the clone of a snapshot has its parent's data and its own; the parent did not move"

# --- 6. a live snapshot under a writer, a clone of it booted as after a power cut -------------
# The snapshot of a guest writing without pause is crash-consistent (docs/POOL.md 6.1, 6.5): what
# a power cut at that instant would leave.  Its clone's kernel must replay the journal and find
# everything the guest had synced before the command: the marker, and every round of the writer
# whose sync had returned (its console line printed) before the command started.
say "live snapshot of live1 under a busy writer; its clone boots as after a power cut"
TOKEN=$(od -An -tx8 -N8 /dev/urandom | tr -d ' \n')
cc clone create live1 --from base || fail "clone create live1 failed"
start_server
boot_start writer live1 cowchain.id=live1 "cowchain.marker=$TOKEN" cowchain.mode=busy
boot_wait_line writer MARKER-SYNCED
# A few rounds first, so the snapshot falls in the middle of the writer's stream.
busy_wait writer 3
synced=$(busy_round writer)
t_snap=$(date +%s%N)
cc snapshot create live1 live >"$WORK/live.out" 2>&1 || {
  cat "$WORK/live.out"
  fail "live snapshot create live1 failed under a writing guest"
}
t_snap=$((($(date +%s%N) - t_snap) / 1000000))
after=$(busy_round writer)
# The guest keeps writing, on the new top: its syncs still return.
busy_wait writer $((after + 3))
console_has writer TEMPLATE-OK "WROTE-ID=live1" MARKER-SYNCED
# A fresh clone of a clean template: nothing to replay (the check below can tell).
console_lacks writer JOURNAL-REPLAYED
# The linked clone of the snapshot, made while the guest still writes live1.
cc clone create live1b --from live1@live || fail "clone create live1b --from live1@live failed"
say "snapshot in $t_snap ms between rounds $synced and $after; live1b made; stopping the writer"
boot_stop writer
# The snapshot is a file system in use: its journal needs recovery and holds commits (a journal
# with nothing to replay has start 0).
fetch live1@live "$WORK/live.raw"
dumpe2fs -h "$WORK/live.raw" >"$WORK/live.dumpe2fs" 2>/dev/null ||
  fail "dumpe2fs of the snapshot live1@live failed"
grep -q '^Filesystem features:.*needs_recovery' "$WORK/live.dumpe2fs" ||
  fail "the snapshot live1@live does not need journal recovery: not taken under a mounted file system?"
jstart=$(sed -n 's/^Journal start: *//p' "$WORK/live.dumpe2fs")
[ -n "$jstart" ] && [ "$jstart" != 0 ] || fail "the snapshot's journal is empty (start '$jstart')"
LIVE_SUM=$(sha256sum <"$WORK/live.raw")
rm -f "$WORK/live.raw"

boot_start live1b live1b cowchain.id=live1b "cowchain.expect=$TOKEN" "cowchain.synced=$synced" \
  cowchain.write=after-replay
boot_wait live1b
console_has live1b TEMPLATE-OK JOURNAL-REPLAYED MARKER-OK PREV-ID=live1 "OWNERS=live1 " \
  BUSY-BAD=0 WROTE-ID=live1b WROTE-STATE=after-replay REMOUNT-RO-OK "DONE id=live1b"
note_write live1b after-replay
last=$(console_value live1b BUSY-LAST)
[ -n "$last" ] && [ "$last" -ge "$synced" ] ||
  fail "live1b: the writer's last round found is '$last'; round $synced had synced before the snapshot"
say "live1b replayed the journal, found the marker and rounds up to $last (synced before: $synced)"
# The clone's guest did not move the snapshot; the template neither.
fetch live1@live "$WORK/live.raw"
[ "$(sha256sum <"$WORK/live.raw")" = "$LIVE_SUM" ] || fail "booting live1b changed live1@live"
rm -f "$WORK/live.raw"
check_template
stop_server
# The disk after that guest's clean shutdown, through the CLI: the marker, the identity, the
# data it wrote on the replayed file system, and a clean file system.
cc export live1b "$WORK/live1b.raw" || fail "cowchain export live1b failed"
got=$(disk_cat "$WORK/live1b.raw" /marker)
[ "$got" = "$TOKEN" ] || fail "live1b: /marker is '$got', expected '$TOKEN'"
check_disk "$WORK/live1b.raw" live1b after-replay "live1 live1b"
# e2fsck -n skips a journal that needs recovery without failing (a guest that synced, then
# powered off without unmounting, passes it): the superblock says whether the shutdown was clean.
dumpe2fs -h "$WORK/live1b.raw" >"$WORK/live1b.dumpe2fs" 2>/dev/null || fail "dumpe2fs of live1b failed"
if grep -q '^Filesystem features:.*needs_recovery' "$WORK/live1b.dumpe2fs" ||
  ! grep -q '^Filesystem state: *clean$' "$WORK/live1b.dumpe2fs"; then
  grep -E '^Filesystem (features|state):' "$WORK/live1b.dumpe2fs" >&2
  fail "live1b's file system was not left clean by its guest's shutdown"
fi
rm -f "$WORK/live1b.raw"
say "the clone of a live snapshot booted as after a power cut; e2fsck -fn finds it clean"
