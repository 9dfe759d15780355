# Shared helpers for tests/integration/test-*.sh.  Source it first thing:
#
#   source "$(dirname "$0")/functions.sh"
#
# Environment (set by CTest, see CMakeLists.txt; defaults suit a build in $SRCDIR/build):
#   PLUGIN    path of nbdkit-cowchain-plugin.so
#   COWCHAIN  path of the cowchain CLI (tests that build pools skip without it)
#   CLIENT    path of the nbd-client-check helper
#   SRCDIR, BUILDDIR
#   COWCHAIN_VALGRIND=1  run every server under valgrind (slow; reports fail the test)
#
# A plugin built with -DCOWCHAIN_SANITIZE=ON is detected and run with the ASan runtime
# preloaded into nbdkit.
#
# Conventions: a missing tool exits 77 (CTest SKIP_RETURN_CODE); every test works in its own
# mktemp -d directory, removed on exit; servers listen on a unix socket in that directory,
# are started with a pidfile, killed by PID on exit and bounded by `timeout`.  The server's
# stderr is printed on exit so CTest can grep it for sanitizer reports.

set -euo pipefail

SRCDIR=${SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}
PLUGIN=${PLUGIN:-$BUILDDIR/server/nbdkit-cowchain-plugin.so}
COWCHAIN=${COWCHAIN:-$BUILDDIR/cli/cowchain}
CLIENT=${CLIENT:-$BUILDDIR/tests/integration/nbd-client-check}
# nbdsh runs `python3` from PATH; only the system one has the nbd module (NBDKIT-NOTES §0.12).
export PATH=/usr/bin:$PATH

TEST_NAME=$(basename "$0" .sh)
# Upper bound on anything we start; CTest's own TIMEOUT (300 s) is the outer bound.
SERVER_TIMEOUT=${SERVER_TIMEOUT:-240}

skip() {
  echo "$TEST_NAME: SKIP: $*"
  exit 77
}

fail() {
  echo "$TEST_NAME: FAIL: $*" >&2
  exit 1
}

# requires CMD [ARGS...]: skip unless CMD exists (and, with ARGS, runs successfully).
requires() {
  if [ $# -eq 1 ]; then
    command -v "$1" >/dev/null 2>&1 || skip "$1 is not installed"
  else
    "$@" >/dev/null 2>&1 || skip "'$*' failed"
  fi
}

requires_plugin() {
  requires nbdkit
  [ -f "$PLUGIN" ] || skip "plugin not built: $PLUGIN"
}

requires_client() {
  [ -x "$CLIENT" ] || skip "nbd-client-check not built: $CLIENT"
}

# The pool-building tests need the cowchain CLI, and one whose pool init works.
requires_cowchain() {
  [ -n "$COWCHAIN" ] && [ -x "$COWCHAIN" ] || skip "cowchain CLI not built: ${COWCHAIN:-unset}"
  local probe
  probe=$(mktemp -d /tmp/cowchain-probe.XXXXXX)
  if ! "$COWCHAIN" --pool "$probe/pool" pool init >/dev/null 2>&1; then
    rm -rf "$probe"
    skip "cowchain pool init does not work yet"
  fi
  rm -rf "$probe"
}

WORK=$(mktemp -d /tmp/cowchain-$TEST_NAME.XXXXXX)
SERVER_PIDS=()
SERVER_LOGS=()

# on_exit CMD...: run CMD at exit, after the servers are stopped, before $WORK is removed.
EXIT_HOOKS=()
on_exit() {
  EXIT_HOOKS+=("$*")
}

cleanup() {
  local rc=$? pid log i hook
  set +e
  for pid in "${SERVER_PIDS[@]}"; do
    kill "$pid" 2>/dev/null
  done
  for pid in "${SERVER_PIDS[@]}"; do
    for i in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
  done
  # Printed for CTest's FAIL_REGULAR_EXPRESSION (sanitizers) and for whoever debugs a failure.
  for log in "${SERVER_LOGS[@]}"; do
    if [ -s "$log" ]; then
      echo "--- $log"
      cat "$log"
    fi
  done
  for hook in "${EXIT_HOOKS[@]}"; do
    eval "$hook"
  done
  rm -rf "$WORK"
  if [ $rc -eq 0 ]; then
    echo "$TEST_NAME: PASS"
  elif [ $rc -ne 77 ]; then
    echo "$TEST_NAME: FAIL (exit $rc)"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# cc ARGS...: the CLI on the test's pool.
POOL=$WORK/pool
cc() {
  "$COWCHAIN" --pool "$POOL" "$@"
}

# make_template_file FILE: a 64 MiB sparse raw image with recognizable data
#   [0, 1M) 0x11 | [1M, 2M) hole | [2M, 3M) 0x22 | [3M, 60M) hole | [60M, 61M) 0x33 | hole
make_template_file() {
  local f=$1
  rm -f "$f"
  truncate -s 64M "$f"
  qemu-io -f raw \
    -c 'write -P 0x11 0 1M' \
    -c 'write -P 0x22 2M 1M' \
    -c 'write -P 0x33 60M 1M' "$f"
}

# setup_pool: a pool with template "base" (imported from $WORK/base.raw) and clone "vm1".
# Records the template's checksum for check_template_unchanged.
setup_pool() {
  requires qemu-io
  requires_cowchain
  make_template_file "$WORK/base.raw"
  cc pool init
  cc template import base "$WORK/base.raw"
  cc clone create vm1 --from base
  template_sum
}

# Checksums of every template image file, to prove no test ever writes to one.
TEMPLATE_SUMS=$WORK/template.sha256
template_sum() {
  (cd "$POOL" && { find images -type f 2>/dev/null || true; } | sort | xargs -r sha256sum) \
    >"$TEMPLATE_SUMS"
}

check_template_unchanged() {
  [ -f "$TEMPLATE_SUMS" ] || return 0
  (cd "$POOL" && sha256sum --quiet -c "$TEMPLATE_SUMS") ||
    fail "a template image file changed"
  # And through the server, when one is running: the export still reads as the source file.
  if [ -n "${SERVER_PID:-}" ] && kill -0 "$SERVER_PID" 2>/dev/null && [ -f "$WORK/base.raw" ]; then
    qemu-img compare -q -f raw -F raw "$(uri base)" "$WORK/base.raw" ||
      fail "template export base differs from the file it was imported from"
  fi
  echo "template unchanged"
}

# A plugin built with -DCOWCHAIN_SANITIZE=ON needs the ASan runtime loaded first into nbdkit
# (NBDKIT-NOTES §4.4); only the server gets the preload, never the clients.  Leak checking is
# off for the server: nbdkit dlcloses the plugin, so leak stacks would be unreadable, and
# nbdkit itself leaks a little; valgrind is the leak tool for the plugin.
SERVER_ENV=(env)
# (No grep -q: under pipefail, nm's SIGPIPE would make the test fail to notice.)
if nm -D "$PLUGIN" 2>/dev/null | grep ' U __asan_init' >/dev/null; then
  SERVER_ENV=(env "LD_PRELOAD=$(gcc -print-file-name=libasan.so)"
    "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:${ASAN_OPTIONS:-}")
fi
# COWCHAIN_VALGRIND=1: run the server under valgrind (slow); errors fail the test via the log.
if [ "${COWCHAIN_VALGRIND:-0}" = 1 ]; then
  # nbdkit 1.32 leaks a few of its own per-connection blocks; they are allocated by nbdkit
  # itself (malloc called straight from /usr/bin/nbdkit), which plugin allocations never are.
  cat >"$WORK/nbdkit.supp" <<'SUPP'
{
   nbdkit-own-allocations
   Memcheck:Leak
   match-leak-kinds: definite,indirect
   fun:malloc
   obj:/usr/bin/nbdkit
   ...
}
{
   nbdkit-own-allocations-calloc
   Memcheck:Leak
   match-leak-kinds: definite,indirect
   fun:calloc
   obj:/usr/bin/nbdkit
   ...
}
SUPP
  SERVER_ENV+=(valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99
    --suppressions="$WORK/nbdkit.supp" --quiet)
  SERVER_TIMEOUT=280
fi

# start_server [NBDKIT-OPTS...] [-- PLUGIN-ARGS...]: nbdkit on $WORK/sock (or $SOCK if set),
# serving $POOL, in the background; waits for the pidfile.  Sets SOCK and SERVER_PID.
start_server() {
  local opts=() args=() n=${#SERVER_PIDS[@]} i
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    opts+=("$1")
    shift
  done
  [ $# -gt 0 ] && shift
  args=("$@")
  SOCK=$WORK/sock$n
  local pidfile=$WORK/nbdkit$n.pid log=$WORK/nbdkit$n.log
  rm -f "$SOCK" "$pidfile"
  # -f keeps it a child of ours (no daemon to lose); timeout bounds it if we are killed.
  timeout "$SERVER_TIMEOUT" "${SERVER_ENV[@]}" nbdkit -f -U "$SOCK" -P "$pidfile" "${opts[@]}" \
    "$PLUGIN" pool="$POOL" "${args[@]}" 2>"$log" &
  local wrapper=$!
  SERVER_LOGS+=("$log")
  for i in $(seq 300); do
    if [ -s "$pidfile" ]; then
      break
    fi
    if ! kill -0 "$wrapper" 2>/dev/null; then
      cat "$log" >&2
      fail "nbdkit exited during startup"
    fi
    sleep 0.1
  done
  [ -s "$pidfile" ] || fail "nbdkit did not write its pidfile within 30 s"
  SERVER_PID=$(cat "$pidfile")
  SERVER_PIDS+=("$SERVER_PID")
  SERVER_LOG=$log
}

# stop_server: stop the last server started (by PID) and wait for it.
stop_server() {
  local i
  kill "$SERVER_PID" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || return 0
    sleep 0.1
  done
  if [ "${#SERVER_ENV[@]}" -gt 1 ] && [ "${COWCHAIN_VALGRIND:-0}" != 1 ]; then
    # With the ASan runtime preloaded, nbdkit's exit can deadlock in libp11-kit's destructor
    # (freelocale waits on glibc's locale lock; seen with Debian 12's nbdkit, never without
    # ASan).  The plugin's work is done by then: don't fail the test over it.
    echo "$TEST_NAME: warning: nbdkit $SERVER_PID stuck at exit under ASan; killed" >&2
    kill -9 "$SERVER_PID" 2>/dev/null || true
    return 0
  fi
  fail "nbdkit $SERVER_PID did not exit after SIGTERM"
}

# uri EXPORT: the NBD URI of EXPORT on the current server.
uri() {
  echo "nbd+unix:///$1?socket=$SOCK"
}

# retry CMD...: run CMD until it succeeds, for up to 10 s.  nbdkit closes a connection's
# export (and releases its layer lock) shortly after the client has exited, so a CLI command
# right after a client can briefly find the clone in use.
retry() {
  local i
  for i in $(seq 50); do
    "$@" 2>"$WORK/retry.err" && return 0
    sleep 0.2
  done
  cat "$WORK/retry.err" >&2
  return 1
}

# expect_fail CMD...: CMD must fail (exit non-zero without being killed by a signal).
expect_fail() {
  local rc=0
  "$@" >"$WORK/expect_fail.out" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then
    cat "$WORK/expect_fail.out" >&2
    fail "unexpectedly succeeded: $*"
  fi
  if [ $rc -ge 124 ]; then
    cat "$WORK/expect_fail.out" >&2
    fail "crashed or timed out (exit $rc): $*"
  fi
}

# log_has REGEX: the current server's log contains REGEX.
log_has() {
  grep -Eq -- "$1" "$SERVER_LOG" || {
    cat "$SERVER_LOG" >&2
    fail "server log lacks /$1/"
  }
}

# allocated_bytes FILE: bytes the file occupies on disk.
allocated_bytes() {
  echo $(($(stat -c %b "$1") * $(stat -c %B "$1")))
}
