#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A remote template (issue 17) meets issue 15's read path and issue 18's protected templates and
# resize: `template verify` and `check --deep` ask the remote again (match, other content,
# another size, writable now, unreachable: one error line each naming the template and URI);
# `clone resize` of a clone of a remote template reads the template then zeroes; the clone is
# read identically with io=auto, io=uring and cache=none, and on reconnects through the idle
# index cache.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_cowchain
requires qemu-img
requires qemu-io
requires nbdinfo

make_template_file "$WORK/base.raw"
chmod a-w "$WORK/base.raw"
RSOCK=$WORK/remote.sock

# start_remote FILE [NBDKIT-OPTS...]: the remote engine on $RSOCK (read-only unless -w is the
# first option).  Sets REMOTE_PID.
start_remote() {
  local file=$1 ro=-r i
  shift
  if [ "${1:-}" = -w ]; then
    ro=
    shift
  fi
  rm -f "$RSOCK" "$WORK/remote.pid"
  timeout "$SERVER_TIMEOUT" nbdkit -f $ro -U "$RSOCK" -P "$WORK/remote.pid" "$@" file "$file" \
    2>>"$WORK/remote.stderr" &
  for i in $(seq 300); do
    [ -s "$WORK/remote.pid" ] && break
    sleep 0.1
  done
  [ -s "$WORK/remote.pid" ] || fail "the remote nbdkit did not start"
  REMOTE_PID=$(cat "$WORK/remote.pid")
  SERVER_PIDS+=("$REMOTE_PID")
}
stop_remote() {
  kill -KILL "$REMOTE_PID" 2>/dev/null || true
  while kill -0 "$REMOTE_PID" 2>/dev/null; do sleep 0.1; done
  forget_server "$REMOTE_PID"
}

RURI="nbd+unix:///?socket=$RSOCK"
start_remote "$WORK/base.raw"
cc pool init
cc template add rt --uri "$RURI"
cc template add rtv --uri "$RURI" --verify
cc clone create vm1 --from rt

say "template verify and check --deep: the remote serves the recorded export"
has '^template rt: the remote serves the recorded export \(size, sampled fingerprint\)$' \
  cc template verify rt || fail "template verify rt: $(cat "$WORK/has.out")"
has '^template rtv: the remote serves the recorded export \(size, sampled fingerprint, whole-content hash\)$' \
  cc template verify rtv || fail "template verify rtv: $(cat "$WORK/has.out")"
has '^ok: template rt: the remote serves the recorded export' cc check --deep ||
  fail "check --deep: no note for rt: $(cat "$WORK/has.out")"
has '^ok: template rt: the remote serves the recorded export' cc check vm1 --deep ||
  fail "check vm1 --deep: the remote template it ends in was not asked"

say "clone resize of a clone of a remote template"
cc clone resize vm1 96M
cp "$WORK/base.raw" "$WORK/ref.raw"
chmod u+w "$WORK/ref.raw"
truncate -s 96M "$WORK/ref.raw"
has '^virtual size: 96.0 MiB \(100663296 bytes\)$' cc info vm1 || fail "info after resize: $(cat "$WORK/has.out")"

say "reads in every io mode and cache mode, and reconnects through the index cache"
for params in "" "io=uring" "io=sync" "cache=none" "io=uring cache=none" "index-cache=0"; do
  # shellcheck disable=SC2086 # word splitting intended: several parameters
  start_server -- $params
  for round in 1 2; do
    qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/ref.raw" ||
      fail "vm1 ($params, round $round) differs from the template grown to 96M"
    qemu-img compare -f raw -F raw "$(uri rt)" "$WORK/base.raw" ||
      fail "rt ($params, round $round) differs from the template"
  done
  qemu-io -f raw -c 'write -P 0x6e 95M 4096' "$(uri vm1)" >/dev/null
  qemu-io -f raw -c 'write -P 0x6e 95M 4096' "$WORK/ref.raw" >/dev/null
  qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/ref.raw" || fail "vm1 ($params) after a write"
  stop_server
done
grep -q "O_DIRECT refused" "$WORK"/nbdkit*.log && fail "cache=none tried O_DIRECT on something"

say "a remote serving something else"
stop_remote
cp "$WORK/base.raw" "$WORK/other.raw"
chmod u+w "$WORK/other.raw"
qemu-io -f raw -c 'write -P 0x44 0 4096' "$WORK/other.raw" >/dev/null
start_remote "$WORK/other.raw"
expect_fail cc template verify rt
[ "$(wc -l <"$WORK/expect_fail.out")" = 1 ] || fail "not one error line: $(cat "$WORK/expect_fail.out")"
grep -q "^cowchain: template verify: rt: nbd+unix:///?socket=$RSOCK: the remote serves OTHER CONTENT" \
  "$WORK/expect_fail.out" || fail "changed remote: wrong message: $(cat "$WORK/expect_fail.out")"
expect_fail cc check --deep
grep -q "^error: template verify: rt: .*OTHER CONTENT" "$WORK/expect_fail.out" ||
  fail "check --deep did not report the changed remote: $(cat "$WORK/expect_fail.out")"

say "another size, writable now, unreachable"
stop_remote
cp "$WORK/base.raw" "$WORK/big.raw"
chmod u+w "$WORK/big.raw"
truncate -s 128M "$WORK/big.raw"
start_remote "$WORK/big.raw"
expect_fail cc template verify rt
grep -q "the remote now serves 134217728 bytes, recorded 67108864" "$WORK/expect_fail.out" ||
  fail "resized remote: wrong message: $(cat "$WORK/expect_fail.out")"
stop_remote
start_remote "$WORK/other.raw" -w
expect_fail cc template verify rt
grep -q "^cowchain: template verify: rt: .*writable" "$WORK/expect_fail.out" ||
  fail "writable remote: wrong message: $(cat "$WORK/expect_fail.out")"
stop_remote
expect_fail cc template verify rt
grep -q "^cowchain: template verify: rt: nbd+unix" "$WORK/expect_fail.out" ||
  fail "unreachable remote: wrong message: $(cat "$WORK/expect_fail.out")"
[ "$(wc -l <"$WORK/expect_fail.out")" = 1 ] || fail "not one error line: $(cat "$WORK/expect_fail.out")"

say "back to the recorded export: verify and check pass again"
start_remote "$WORK/base.raw"
cc template verify rt >/dev/null
cc check --deep >/dev/null
say "ok"
