#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# fio's nbd engine: random writes with crc32c verification on a clone, several jobs and
# requests in flight, then a verify-only pass through new connections and a new server.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires fio
# Debian's fio (scripts/setup) has the libnbd engine.
requires fio --enghelp=nbd
setup_pool

run_fio() {
  # fio saves verify state into the current directory; keep it in the work dir
  (cd "$WORK" && timeout 200 fio --name=cowchain --ioengine=nbd --uri="$(uri vm1)" --size=48M \
    --rw=randwrite --bsrange=512-128k --bs_unaligned=0 --iodepth=16 --numjobs=1 \
    --verify=crc32c --verify_fatal=1 --randseed=4242 --norandommap=0 "$@" \
    --output="$WORK/fio.out") || {
    cat "$WORK/fio.out" >&2
    fail "fio $*"
  }
  grep -q 'err= 0' "$WORK/fio.out" || {
    cat "$WORK/fio.out" >&2
    fail "fio reported errors"
  }
}

start_server
run_fio --do_verify=1
run_fio --verify_only=1
stop_server
start_server -- io=sync
run_fio --verify_only=1
check_template_unchanged
