#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A remote template behind TLS-PSK (issue 17): the remote nbdkit requires TLS with a PSK file
# (psktool), the URI carries the user and key file as nbdinfo takes them (nbds+unix://USER@/?
# socket=...&tls-psk-file=...), and a clone reads
# identical to the template.  Without the key, `template add` is refused.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_cowchain
requires qemu-img
requires psktool

make_template_file "$WORK/base.raw"
psktool -u alice -p "$WORK/keys.psk" >/dev/null
rm -f "$WORK/remote.sock"
timeout "$SERVER_TIMEOUT" nbdkit -f -r -U "$WORK/remote.sock" -P "$WORK/remote.pid" \
  --tls=require --tls-psk="$WORK/keys.psk" file "$WORK/base.raw" 2>"$WORK/remote.log" &
for i in $(seq 300); do [ -s "$WORK/remote.pid" ] && break; sleep 0.1; done
[ -s "$WORK/remote.pid" ] || fail "the remote nbdkit did not start"
SERVER_PIDS+=("$(cat "$WORK/remote.pid")")

cc pool init
expect_fail cc template add plain --uri "nbd+unix:///?socket=$WORK/remote.sock"
cc template add tbase \
  --uri "nbds+unix://alice@/?socket=$WORK/remote.sock&tls-psk-file=$WORK/keys.psk"
cc clone create vm1 --from tbase
start_server
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "vm1 differs from the template"
qemu-img compare -f raw -F raw "$(uri tbase)" "$WORK/base.raw" || fail "tbase differs"
say "ok"
