#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# `cowchain serve`: runs nbdkit with the plugin found next to the CLI in the build tree, on
# POOL/cowchain.sock by default or TCP 127.0.0.1 with --port; plugin parameters pass through.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires nbdinfo
requires qemu-img
setup_pool
cc snapshot create vm1 s1

# The build tree's plugin is found relative to the CLI when it sits at BUILD/cli/cowchain.
if [ "$(basename "$(dirname "$COWCHAIN")")" = cli ] &&
  [ -f "$(dirname "$COWCHAIN")/../server/nbdkit-cowchain-plugin.so" ]; then
  unset COWCHAIN_PLUGIN
else
  export COWCHAIN_PLUGIN=$PLUGIN
fi

# A sanitizer build's plugin needs the ASan runtime preloaded into nbdkit (functions.sh); the
# clients that --run starts must not inherit it (qemu-img's coroutines upset ASan).
serve() {
  timeout 60 "${SERVER_ENV[@]}" "$COWCHAIN" --pool "$POOL" serve "$@"
}

# Default: Unix socket in the pool; every clone, snapshot and template is listed.
serve --run 'env -u LD_PRELOAD nbdinfo --list --json "$uri"' \
  >"$WORK/list.json" || fail "serve --run nbdinfo --list"
for e in base vm1 vm1@s1; do
  grep -q "\"export-name\": \"$e\"" "$WORK/list.json" || fail "export $e not listed"
done
grep -q "$POOL/cowchain.sock" "$WORK/list.json" || fail "not on POOL/cowchain.sock"

# Data through the served export, with a plugin parameter passed after the plugin.
serve --run \
  "env -u LD_PRELOAD qemu-img compare -q -f raw -F raw \"nbd+unix:///vm1@s1?socket=\$unixsocket\" '$WORK/base.raw'" \
  io=sync || fail "vm1@s1 through cowchain serve differs from the template"

# --port: TCP, bound to 127.0.0.1 only.
port=$((20000 + RANDOM % 20000))
serve --port "$port" --run \
  "env -u LD_PRELOAD nbdinfo --size nbd://127.0.0.1:$port/vm1 && ss -ltn | grep -q '127.0.0.1:$port '" \
  >"$WORK/size" || fail "serve --port"
[ "$(cat "$WORK/size")" = $((64 << 20)) ] || fail "wrong size over TCP"

# A stale socket left by a dead server does not stop the next one.
rm -f "$POOL/cowchain.sock"
/usr/bin/python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])" \
  "$POOL/cowchain.sock"
[ -S "$POOL/cowchain.sock" ] || fail "could not make a stale socket"
serve --run 'env -u LD_PRELOAD nbdinfo --size "nbd+unix:///vm1?socket=$unixsocket"' >/dev/null ||
  fail "serve with a stale socket"
check_template_unchanged
