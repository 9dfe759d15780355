#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Connections come and go without leaking: after many connections (each with nbdkit's worker
# threads, each thread with its own io_uring ring) the server holds no more io_uring or layer
# file descriptors than before the first one.  With index-cache=0; with the default cache the
# idle indexes keep their files (unlocked), and another round of connections adds none.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
requires qemu-io
setup_pool
cc clone create vm2 --from base

count_fds() { # count_fds PATTERN: server fds whose link target matches PATTERN
  local n=0 f
  for f in /proc/"$SERVER_PID"/fd/*; do
    case "$(readlink "$f" 2>/dev/null)" in
      $1) n=$((n + 1)) ;;
    esac
  done
  echo $n
}
settle() { # let nbdkit finish closing the last connections
  local i
  for i in $(seq 50); do
    [ "$(count_fds "*$POOL/*")" -eq 0 ] && return 0
    sleep 0.2
  done
}

for io in uring sync; do
  start_server -- io=$io index-cache=0
  [ -d /proc/"$SERVER_PID"/fd ] || machine_limit "no /proc/PID/fd" "procfs is not mounted"
  rings0=$(count_fds 'anon_inode:\[io_uring\]')
  files0=$(count_fds "*$POOL/*")
  # While a connection is open, for the record (chain/ may fall back to pread).
  "$CLIENT" hold "$SOCK" vm1 3 >/dev/null &
  holder=$!
  sleep 1
  qemu-io -f raw -r -c 'read 0 1M' "$(uri vm1)" >/dev/null
  echo "io=$io: with a connection open: $(count_fds 'anon_inode:\[io_uring\]') io_uring fds," \
    "$(count_fds "*$POOL/*") pool files"
  wait "$holder" || fail "holding connection"
  for i in $(seq 12); do
    qemu-io -f raw -c "write -P $i $((i * 64))k 64k" -c "read -P $i $((i * 64))k 64k" \
      "$(uri vm1)" >/dev/null || fail "connection $i"
    "$CLIENT" multiconn "$SOCK" vm2 >/dev/null || fail "multiconn $i"
    qemu-io -f raw -r -c 'read -P 0x11 0 64k' "$(uri base)" >/dev/null || fail "base $i"
  done
  settle
  rings=$(count_fds 'anon_inode:\[io_uring\]')
  files=$(count_fds "*$POOL/*")
  echo "io=$io: io_uring fds $rings0 -> $rings, pool files $files0 -> $files"
  [ "$files" -eq "$files0" ] || fail "io=$io: $files pool files still open after all connections closed"
  # A ring or two may be cached for reuse; one per worker thread ever started would be ~500.
  [ "$rings" -le $((rings0 + 4)) ] || fail "io=$io: io_uring fds grew from $rings0 to $rings"
  stop_server
done
# The default cache: the idle indexes' files stay open, the same ones round after round.
start_server --
rounds=""
for round in 1 2 3; do
  for i in $(seq 4); do
    qemu-io -f raw -r -c 'read 0 64k' "$(uri vm1)" >/dev/null || fail "cache round $round"
    qemu-io -f raw -r -c 'read -P 0x11 0 64k' "$(uri base)" >/dev/null || fail "base $round"
  done
  sleep 1
  rounds="$rounds $(count_fds "*$POOL/*")"
done
echo "index-cache default: pool files open after each round:$rounds"
set -- $rounds
[ "$1" -eq "$2" ] && [ "$2" -eq "$3" ] || fail "idle index files grew between rounds:$rounds"
[ "$1" -le 2 ] || fail "$1 pool files held by idle indexes (one raw template expected)"
stop_server
check_template_unchanged
