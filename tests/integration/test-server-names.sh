#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Export names are untrusted client input: unknown names are refused with a message naming
# them, malformed ones never become paths, and the empty name needs default=NAME.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_client
setup_pool

# A file a path-traversing name would reach if it became a path.
echo secret >"$WORK/x"

start_server
"$CLIENT" open "$SOCK" vm1 >/dev/null || fail "vm1 does not open"
"$CLIENT" open "$SOCK" base >/dev/null || fail "base does not open"

refused() {
  local rc=0
  "$CLIENT" open "$SOCK" "$1" >"$WORK/open.out" 2>&1 || rc=$?
  [ $rc -eq 3 ] || {
    cat "$WORK/open.out" >&2
    fail "export name '$(printf %q "$1")' was not refused (exit $rc)"
  }
}

refused nosuch
log_has 'nosuch'
refused vm1@nosnap
refused ''
log_has 'default=NAME'
long=$(printf 'a%.0s' $(seq 65))
for name in ../x ../../x a/b /x . .. .hidden -dash x@y@z vm1@ @snap vm1@../x "$long" \
  "vm1@$long" $'vm\n1' $'vm\t1' $'vm1\r' $'\x01' 'vm 1' 'vm1%40s' 'näme' 'vm1;rm'; do
  refused "$name"
done
# Names are logged escaped: a client cannot forge log lines.
if grep -q $'\x01' "$SERVER_LOG" || grep -q '^1.: name may contain' "$SERVER_LOG"; then
  fail "raw control characters from an export name reached the log"
fi
# 64 characters is the longest valid name: refused only because it does not exist.
refused "${long:1}"
log_has "${long:1}"

stop_server

# With default=vm1 the empty name is vm1.
start_server -- default=vm1
"$CLIENT" open "$SOCK" '' >/dev/null || fail "the empty name does not open default=vm1"
qemu-io -f raw -r -c 'read -P 0x11 0 64k' "nbd+unix:///?socket=$SOCK" >/dev/null ||
  fail "the default export does not read as vm1"
check_template_unchanged
