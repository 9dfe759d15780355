#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The plugin loads by path, documents its parameters (--help, --dump-plugin) and refuses a
# bad configuration with a message that says what to type instead.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin

"${SERVER_ENV[@]}" nbdkit "$PLUGIN" --help >"$WORK/help"
for word in 'pool=DIR' 'io=auto|sync|uring' 'cache=writeback|none' 'index-cache=SIZE' 'default=NAME'; do
  grep -qF -- "$word" "$WORK/help" || fail "--help does not mention $word"
done

"${SERVER_ENV[@]}" nbdkit "$PLUGIN" --dump-plugin >"$WORK/dump"
for line in name=cowchain magic_config_key=pool thread_model=parallel errno_is_preserved=0 \
  has_list_exports=1 has_extents=1 has_block_size=1 cowchain_io=auto,sync,uring \
  cowchain_io_default=auto cowchain_cache=writeback,none cowchain_name_max=64; do
  grep -qxF -- "$line" "$WORK/dump" || fail "--dump-plugin lacks $line"
done
grep -q '^cowchain_version=' "$WORK/dump" || fail "--dump-plugin lacks cowchain_version"

# Only plugin_init is exported (the static libraries' symbols stay inside).
if command -v nm >/dev/null; then
  nm -D --defined-only "$PLUGIN" | awk '$2 ~ /^[TDBR]$/ {print $3}' | sort >"$WORK/syms"
  grep -qx plugin_init "$WORK/syms" || fail "plugin_init is not exported"
  if grep -Evx 'plugin_init|cowchain_debug_.*|_init|_fini|__odr_asan\..*' "$WORK/syms"; then
    fail "the plugin exports more than plugin_init and its debug flags"
  fi
fi

# cmake --install puts it where `nbdkit cowchain` finds it (checked under DESTDIR, so the test
# never touches the system), and the installed copy loads.
if [ -f "$BUILDDIR/cmake_install.cmake" ] && command -v cmake >/dev/null &&
  plugindir=$(pkg-config --variable=plugindir nbdkit 2>/dev/null) && [ -n "$plugindir" ]; then
  DESTDIR=$WORK/inst cmake --install "$BUILDDIR" --component plugin >"$WORK/install.log" 2>&1 || {
    cat "$WORK/install.log" >&2
    fail "cmake --install failed"
  }
  installed=$WORK/inst$plugindir/nbdkit-cowchain-plugin.so
  [ -f "$installed" ] || fail "cmake --install did not install $installed"
  "${SERVER_ENV[@]}" nbdkit "$installed" --dump-plugin >"$WORK/dump2"
  grep -qx name=cowchain "$WORK/dump2" || fail "the installed plugin does not load"
fi

# Configuration errors: nbdkit must exit non-zero with a useful message, before serving.
run_bad() {
  local want=$1
  shift
  local rc=0 limit=30
  # With the ASan runtime preloaded, nbdkit's exit(1) can deadlock in libp11-kit's destructor
  # (a glibc locale lock; seen with Debian 12's nbdkit).  Not ours: accept a timeout there.
  [ "${#SERVER_ENV[@]}" -gt 1 ] && limit=10
  timeout $limit "${SERVER_ENV[@]}" nbdkit -f -U "$WORK/bad.sock" "$PLUGIN" "$@" \
    >"$WORK/bad.log" 2>&1 || rc=$?
  [ "${#SERVER_ENV[@]}" -gt 1 ] && [ $rc -eq 124 ] && rc=1
  [ $rc -ne 0 ] && [ $rc -lt 124 ] || {
    cat "$WORK/bad.log" >&2
    fail "nbdkit $* exited with $rc, expected a configuration error"
  }
  grep -qiE -- "$want" "$WORK/bad.log" || {
    cat "$WORK/bad.log" >&2
    fail "nbdkit $*: message lacks /$want/"
  }
}
run_bad 'pool directory is required|pool=DIR'
run_bad 'No such file' pool="$WORK/no-such-pool"
mkdir "$WORK/empty"
run_bad "$WORK/empty: not a cowchain pool" "$WORK/empty" # magic key; not a pool
run_bad 'io=uring' pool="$WORK/empty" io=fast
run_bad 'unknown parameter' pool="$WORK/empty" colour=blue
run_bad 'default=' pool="$WORK/empty" default=../etc
