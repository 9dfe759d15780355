#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A failed flush must not be "fixed" by retrying it.  When fdatasync fails with EIO, Linux (since
# 4.13) marks the dirty pages clean and reports the error once: the next fdatasync succeeds
# although the data never reached the disk.  fault-shim.so with FAULT_DROP=1 reproduces exactly
# that (it puts back the bytes the writes since the last good sync replaced).  A later flush may
# then only succeed if every acknowledged write is really there; the client checks it, and
# after a restart it is checked again.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_built hostile-client "$HOSTILE_CLIENT"
requires_built fault-shim "$FAULT_SHIM"
setup_pool

plain_env=("${SERVER_ENV[@]}")
with_shim "FAULT_TRIGGER=$WORK/fault" FAULT_DROP=1
start_server -- io=sync
timeout 120 "$HOSTILE_CLIENT" fsyncgate "$SOCK" vm1 "$WORK/fault" >"$WORK/path.out" ||
  fail "a flush succeeded after a failed one while acknowledged data was lost (fsyncgate)"
how=$(cat "$WORK/path.out")
echo "server path after the failed flush: $how"
stop_server

SERVER_ENV=("${plain_env[@]}")
start_server
timeout 60 "$HOSTILE_CLIENT" pattern "$SOCK" vm1 check 0 1048576 0xa || fail "A lost"
if [ "$how" = rewritten ]; then
  timeout 60 "$HOSTILE_CLIENT" pattern "$SOCK" vm1 check $((8 << 20)) 1048576 0xb ||
    fail "B was acknowledged by a successful flush, and is lost after a restart"
fi
stop_server
retry cc check vm1 >"$WORK/check.out" || {
  cat "$WORK/check.out" >&2
  fail "check finds errors"
}
check_template_unchanged
