#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The local read cache of remote templates (issue 17, template-cache=DIR): once a clone has been
# read, its template's blocks come from the cache, so they read with the remote gone, and after a
# server restart too; a cache block that fails its check is dropped and read from the remote
# again, never served; the size bound holds.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_cowchain
requires qemu-img
requires qemu-io
requires_built nbd-session "$BUILDDIR/tests/integration/nbd-session"
SESSION=$BUILDDIR/tests/integration/nbd-session

make_template_file "$WORK/base.raw"
RSOCK=$WORK/remote.sock
start_remote() {
  local i
  rm -f "$RSOCK" "$WORK/remote.pid"
  timeout "$SERVER_TIMEOUT" nbdkit -f -r -U "$RSOCK" -P "$WORK/remote.pid" \
    --filter=log file "$WORK/base.raw" logfile="$WORK/remote-requests.log" logappend=true &
  for i in $(seq 300); do [ -s "$WORK/remote.pid" ] && break; sleep 0.1; done
  [ -s "$WORK/remote.pid" ] || fail "the remote nbdkit did not start"
  REMOTE_PID=$(cat "$WORK/remote.pid")
  SERVER_PIDS+=("$REMOTE_PID")
}
stop_remote() {
  kill -KILL "$REMOTE_PID" 2>/dev/null || true
  while kill -0 "$REMOTE_PID" 2>/dev/null; do sleep 0.1; done
  forget_server "$REMOTE_PID"
}
# one_read OFF: read 4 KiB at OFF of vm1 on a fresh connection: "ok BYTE" or "err ERRNO".
one_read() {
  printf 'read %s 4096\nquit\n' "$1" | timeout 60 "$SESSION" "$SOCK" vm1
}

start_remote
cc pool init
cc template add rbase --uri "nbd+unix:///?socket=$RSOCK"
cc clone create vm1 --from rbase
mkdir "$WORK/cache"

say "a first read fills the cache"
start_server -v -- template-cache="$WORK/cache" template-cache-size=64M
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "vm1 differs (cold)"
# compare skips what block status calls holes: read every byte once, so all of it is cached.
qemu-io -f raw -c 'read 0 64M' "$(uri vm1)" >/dev/null
f=$(ls "$WORK"/cache/*.rcache)
[ -n "$f" ] || fail "no cache file"
# Data: 3 MiB of the template (the rest is zeroes, kept as entries without data).
a=$(allocated_bytes "$f")
echo "cache file: $a bytes allocated"
[ "$a" -ge $((3 * 1024 * 1024)) ] && [ "$a" -le $((8 * 1024 * 1024)) ] ||
  fail "cache holds $a bytes, expected the template's 3 MiB of data (plus its table)"

say "with the remote gone, cached blocks still read"
stop_remote
[ "$(one_read 0)" = "ok 11" ] || fail "cached block at 0 with the remote gone"
[ "$(one_read 62914560)" = "ok 33" ] || fail "cached block at 60M with the remote gone"
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "vm1 from the cache alone"

say "the cache survives a restart"
stop_server "$SERVER_PID"
start_server -v -- template-cache="$WORK/cache" template-cache-size=64M
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/base.raw" ||
  fail "vm1 after a restart with the remote gone"

say "a corrupt cache block is dropped, never served"
stop_server "$SERVER_PID"
# Block 32 (2 MiB, 0x22 data) lives at data_off + 32 * 64 KiB; data_off is the table rounded up
# to 64 KiB: 4096 + 1024 entries * 80 = 86016 -> 131072.
printf '\x99\x99\x99\x99' | dd of="$f" bs=1 seek=$((131072 + 32 * 65536 + 100)) conv=notrunc status=none
start_server -v -- template-cache="$WORK/cache" template-cache-size=64M
[ "$(one_read 2097152)" = "err EIO" ] || fail "a corrupt cache block was served with the remote gone"
log_has "block 32 fails its check: dropped"
start_remote
r=""
for i in $(seq 50); do
  r=$(one_read 2097152)
  [ "$r" = "ok 22" ] && break
  sleep 0.2
done
[ "$r" = "ok 22" ] || fail "block 32 did not come back from the remote: $r"
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "vm1 after the re-read"
stop_server "$SERVER_PID"

say "the size bound holds"
rm -rf "$WORK/cache" && mkdir "$WORK/cache"
start_server -v -- template-cache="$WORK/cache" template-cache-size=1M
qemu-io -f raw -c 'read 0 64M' "$(uri vm1)" >/dev/null
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "vm1 with a small cache"
a=$(allocated_bytes "$(ls "$WORK"/cache/*.rcache)")
echo "cache file: $a bytes allocated"
[ "$a" -le $((1024 * 1024 + 256 * 1024)) ] || fail "a 1M cache holds $a bytes"
say "ok"
