#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The pool is not world-readable (POOL.md 1.1): a fresh pool and every file its operations
# create are owner-only whatever the umask; a second local user can neither read a layer nor
# connect to the socket of `cowchain serve`; with `pool init --group` a member of the group can
# do both and an outsider still cannot.  check warns about a loosened file; --repair fixes it.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires nbdinfo
requires qemu-img
requires useradd
requires groupadd
requires runuser
requires_cowchain
[ "$(id -u)" -eq 0 ] || fail "must run as root (it creates a temporary user)"
if [ "$(basename "$(dirname "$COWCHAIN")")" = cli ] &&
  [ -f "$(dirname "$COWCHAIN")/../server/nbdkit-cowchain-plugin.so" ]; then
  unset COWCHAIN_PLUGIN
else
  export COWCHAIN_PLUGIN=$PLUGIN
fi

umask 000 # the modes must not depend on it
chmod 711 "$WORK" # other users may reach the pools; the pools themselves decide

# Two temporary users and a group, removed at exit.
SUFFIX=$$
OUTSIDER=ccout$SUFFIX
MEMBER=ccmem$SUFFIX
GROUP=ccgrp$SUFFIX
groupadd "$GROUP"
on_exit "groupdel '$GROUP' 2>/dev/null"
useradd -M -N -s /bin/sh "$OUTSIDER"
on_exit "userdel '$OUTSIDER' 2>/dev/null"
useradd -M -N -G "$GROUP" -s /bin/sh "$MEMBER"
on_exit "userdel '$MEMBER' 2>/dev/null"

as() {
  local u=$1
  shift
  timeout 30 runuser -u "$u" -- env -u LD_PRELOAD "$@"
}

# modes DIR: "MODE GROUP PATH" for every file and directory of a pool.
modes() {
  (cd "$1" && find . -printf '%m %g %y %p\n' | sort -k4)
}

# expect_modes DIR DIRMODE FILEMODE IMAGEMODE GROUP
expect_modes() {
  local dir=$1 dm=$2 fm=$3 im=$4 g=$5 m gr y p
  modes "$dir" >"$WORK/modes"
  while read -r m gr y p; do
    case "$y:$p" in
    # run/ holds the servers' control sockets: owner-only in every pool (POOL.md section 6)
    d:./run) [ "$m" = 700 ] || [ "$m" = 2700 ] || fail "$p: mode $m, expected 700" ;;
    s:./run/*) [ "$m" = 600 ] || fail "$p: socket mode $m, expected 600" ;;
    d:*) [ "$m" = "$dm" ] || fail "$p: mode $m, expected $dm" ;;
    s:*) [ "$m" = "${6:-$fm}" ] || fail "$p: socket mode $m, expected ${6:-$fm}" ;;
    f:./images/*) [ "$m" = "$im" ] || fail "$p: mode $m, expected $im" ;;
    f:*) [ "$m" = "$fm" ] || fail "$p: mode $m, expected $fm" ;;
    *) fail "$p: unexpected file type $y" ;;
    esac
    [ "$gr" = "$g" ] || fail "$p: group $gr, expected $g"
  done <"$WORK/modes"
  echo "modes of $dir: $(wc -l <"$WORK/modes") entries as expected"
}

# fill POOL: one of every kind of file an operation creates.
fill() {
  local P=$1
  truncate -s 4M "$WORK/base.raw"
  printf 'cowchain-base-data' | dd of="$WORK/base.raw" conv=notrunc status=none
  "$COWCHAIN" --pool "$P" template import base "$WORK/base.raw"
  qemu-img create -q -f qcow2 "$WORK/q.qcow2" 4M
  "$COWCHAIN" --pool "$P" template import q "$WORK/q.qcow2" --format qcow2
  "$COWCHAIN" --pool "$P" template create blank --size 1M
  "$COWCHAIN" --pool "$P" clone create vm1 --from base
  "$COWCHAIN" --pool "$P" snapshot create vm1 s1
  "$COWCHAIN" --pool "$P" clone create full --from vm1@s1 --full
}

# serve_bg POOL: `cowchain serve` in the background on POOL/cowchain.sock; sets SERVE_PID.
serve_bg() {
  local P=$1 i
  rm -f "$WORK/serve.pid"
  timeout "$SERVER_TIMEOUT" "${SERVER_ENV[@]}" "$COWCHAIN" --pool "$P" serve -P "$WORK/serve.pid" \
    2>>"$WORK/serve.log" &
  for i in $(seq 300); do
    [ -s "$WORK/serve.pid" ] && [ -S "$P/cowchain.sock" ] && break
    sleep 0.1
  done
  [ -s "$WORK/serve.pid" ] || fail "cowchain serve did not start: $(cat "$WORK/serve.log")"
  SERVE_PID=$(cat "$WORK/serve.pid")
  SERVER_PIDS+=("$SERVE_PID")
}

stop_serve() {
  kill "$SERVE_PID"
  for i in $(seq 100); do
    kill -0 "$SERVE_PID" 2>/dev/null || return 0
    sleep 0.1
  done
  fail "server $SERVE_PID did not stop"
}

# 1. Owner-only pool.
P1=$WORK/p1
"$COWCHAIN" --pool "$P1" pool init
expect_modes "$P1" 700 600 400 root
fill "$P1"
expect_modes "$P1" 700 600 400 root
layer=$P1/layers/$(sed -n 's/^top //p' "$P1/clones/vm1").cow
[ -f "$layer" ] || fail "no layer for vm1"

serve_bg "$P1"
expect_modes "$P1" 700 600 400 root 600
nbdinfo --size "nbd+unix:///vm1?socket=$P1/cowchain.sock" >/dev/null || fail "owner cannot connect"
if as "$OUTSIDER" cat "$layer" >/dev/null 2>&1; then
  fail "another user read a layer of an owner-only pool"
fi
if as "$OUTSIDER" nbdinfo --size "nbd+unix:///vm1?socket=$P1/cowchain.sock" >/dev/null 2>&1; then
  fail "another user connected to the socket of an owner-only pool"
fi
# Even with the directories opened up by hand, the files and the socket stay closed.
chmod 755 "$P1" "$P1/layers"
if as "$OUTSIDER" cat "$layer" >/dev/null 2>&1; then
  fail "another user read a 0600 layer"
fi
if as "$OUTSIDER" nbdinfo --size "nbd+unix:///vm1?socket=$P1/cowchain.sock" >/dev/null 2>&1; then
  fail "another user connected to a 0600 socket"
fi
stop_serve

# check warns about what is looser than the pool (exit 0), --repair tightens it.
chmod 644 "$layer"
"$COWCHAIN" --pool "$P1" check >"$WORK/check.out" || fail "check failed on warnings"
grep -q "^warning: layers: mode 755 is looser than the pool's 700" "$WORK/check.out" ||
  fail "no warning for layers/: $(cat "$WORK/check.out")"
grep -q "^warning: layers/.*\.cow: mode 644 is looser than the pool's 600" "$WORK/check.out" ||
  fail "no warning for the layer: $(cat "$WORK/check.out")"
"$COWCHAIN" --pool "$P1" check --json >"$WORK/check.json"
[ "$(jq .warnings "$WORK/check.json")" -eq 3 ] || fail "check --json: $(cat "$WORK/check.json")"
[ "$(jq '[.findings[] | select(.severity == "warning")] | length' "$WORK/check.json")" -eq 3 ] ||
  fail "check --json severities: $(cat "$WORK/check.json")"
"$COWCHAIN" --pool "$P1" check --repair >"$WORK/check.out"
"$COWCHAIN" --pool "$P1" check >"$WORK/check.out"
grep -q ", 0 errors, 0 leaks, 0 warnings" "$WORK/check.out" || fail "after repair: $(cat "$WORK/check.out")"
rm -f "$P1/cowchain.sock"
expect_modes "$P1" 700 600 400 root

# 2. A pool with a group: the member reads a layer and connects; the outsider does neither.
P2=$WORK/p2
"$COWCHAIN" --pool "$P2" pool init --group "$GROUP"
grep -qx "group $GROUP" "$P2/cowchain-pool" || fail "group not recorded in the marker"
expect_modes "$P2" 2750 640 440 "$GROUP"
fill "$P2"
expect_modes "$P2" 2750 640 440 "$GROUP"
layer=$P2/layers/$(sed -n 's/^top //p' "$P2/clones/vm1").cow
serve_bg "$P2"
expect_modes "$P2" 2750 640 440 "$GROUP" 660
as "$MEMBER" cat "$layer" >/dev/null || fail "a member of the group cannot read a layer"
as "$MEMBER" nbdinfo --size "nbd+unix:///vm1?socket=$P2/cowchain.sock" >"$WORK/size" ||
  fail "a member of the group cannot connect"
[ "$(cat "$WORK/size")" = $((4 << 20)) ] || fail "member: wrong size"
as "$MEMBER" qemu-io -r -f raw -c 'read -v 0 16' "nbd+unix:///base?socket=$P2/cowchain.sock" |
  grep -q "63 6f 77 63 68 61 69 6e 2d 62 61 73 65 2d 64 61" || fail "member: wrong data"
if as "$OUTSIDER" cat "$layer" >/dev/null 2>&1; then
  fail "an outsider read a layer of a group pool"
fi
if as "$OUTSIDER" nbdinfo --size "nbd+unix:///vm1?socket=$P2/cowchain.sock" >/dev/null 2>&1; then
  fail "an outsider connected to a group pool's socket"
fi
stop_serve
"$COWCHAIN" --pool "$P2" check >"$WORK/check.out"
grep -q ", 0 errors, 0 leaks, 0 warnings" "$WORK/check.out" || fail "group pool: $(cat "$WORK/check.out")"

# A group that does not exist is refused with one line, and nothing is created.
if "$COWCHAIN" --pool "$WORK/p3" pool init --group "nogroup-$SUFFIX-x" 2>"$WORK/err"; then
  fail "pool init accepted a group that does not exist"
fi
grep -q "no such group" "$WORK/err" || fail "bad group: $(cat "$WORK/err")"
[ ! -e "$WORK/p3" ] || fail "pool init --group with a bad group created $WORK/p3"
