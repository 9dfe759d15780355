#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# fio's nbd engine: random writes with crc32c verification on a clone, several jobs and
# requests in flight, then a verify-only pass through new connections and a new server.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_fio
setup_pool

run_fio() {
  fio_verify 4242 --bsrange=512-128k --bs_unaligned=0 --norandommap=0 "$@"
}

start_server
run_fio --do_verify=1
run_fio --verify_only=1
stop_server
start_server -- io=sync
run_fio --verify_only=1
check_template_unchanged
