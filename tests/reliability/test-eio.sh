#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# EIO from the disk (docs/RELIABILITY.md: the request fails with that errno to the
# NBD client; nothing already written is lost; the export works again once the fault is gone).
# fault-shim.so, preloaded into nbdkit, fails reads, writes or syncs of the pool's layer files
# with EIO while a trigger file says so (no root, no device-mapper); io=sync because io_uring
# reads do not go through libc.  ENOSPC has its own test (tests/integration/test-server-enospc.sh).
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_built hostile-client "$HOSTILE_CLIENT"
requires_built fault-shim "$FAULT_SHIM"
setup_pool

plain_env=("${SERVER_ENV[@]}")
with_shim "FAULT_TRIGGER=$WORK/fault"
start_server -- io=sync
timeout 120 "$HOSTILE_CLIENT" eio "$SOCK" vm1 "$WORK/fault" >"$WORK/path.out" || fail "EIO handling"
# "retried": the flush retried after the failed one succeeded (B is durable); "sticky": the layer
# refused until reopened (B was never acknowledged; old or new).
how=$(cat "$WORK/path.out")
echo "after the failed flush: $how"
log_has 'vm1'
stop_server

# After a restart without the shim, everything acknowledged is there.
SERVER_ENV=("${plain_env[@]}")
start_server
specs=("0 1M 0xa" "4M 64K 0xc" "$((2 * 1024 * 1024 + 100)) 1000 0xd")
[ "$how" = retried ] && specs+=("1M 1M 0xb")
for spec in "${specs[@]}"; do
  set -- $spec
  off=$(numfmt --from=iec "$1")
  len=$(numfmt --from=iec "$2")
  timeout 60 "$HOSTILE_CLIENT" pattern "$SOCK" vm1 check "$off" "$len" "$3" ||
    fail "data at $1 lost after the EIO faults and a restart"
done
stop_server
retry cc check vm1 >"$WORK/check.out" || {
  cat "$WORK/check.out" >&2
  fail "check after the faults"
}
grep -q ', 0 errors, 0 leaks' "$WORK/check.out" || {
  cat "$WORK/check.out" >&2
  fail "check after the faults reports problems"
}
check_template_unchanged
