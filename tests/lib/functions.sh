# SPDX-License-Identifier: BSD-3-Clause
# The one shared library of the shell tests: tests/integration, tests/reliability, tests/e2e
# and scripts/crashloop.  Source it first thing:
#
#   source "$(dirname "$0")/../lib/functions.sh"
#
# Environment (set by CTest, see cowchain_add_script_tests in the top CMakeLists.txt; defaults
# suit a build in $SRCDIR/build):
#   PLUGIN    path of nbdkit-cowchain-plugin.so
#   COWCHAIN  path of the cowchain CLI
#   CLIENT    path of the nbd-client-check helper
#   HOSTILE_CLIENT, CRASH_WRITER, FAULT_SHIM   the reliability helpers
#   SRCDIR, BUILDDIR
#   COWCHAIN_VALGRIND=1  run every server under valgrind (slow; reports fail the test)
#   KEEP=1    keep the work directory
#
# A plugin built with -DCOWCHAIN_SANITIZE=ON is detected and run with the ASan runtime
# preloaded into nbdkit.
#
# A test that cannot run fails.  Everything the tests need is either built by us or installed
# by scripts/setup, so a missing tool, helper or working `pool init` is a failure (`requires*`,
# `fail`).  Only a limit of the machine itself (not root, no mount namespace, no /dev/kvm, ptrace
# refused, ...) may skip, through `machine_limit LIMIT DETAIL`, which names the limit and exits
# 77 (CTest SKIP_RETURN_CODE).  In CI (CI=true) scripts/test fails the run on any skip.
#
# Conventions: every test works in its own mktemp -d directory, removed on exit; servers
# listen on a unix socket in that directory, are started with a pidfile, killed by PID on exit
# and bounded by `timeout`.  The server's stderr is printed on exit so CTest can grep it for
# sanitizer reports.

set -euo pipefail

SRCDIR=${SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}
PLUGIN=${PLUGIN:-$BUILDDIR/server/nbdkit-cowchain-plugin.so}
COWCHAIN=${COWCHAIN:-$BUILDDIR/cli/cowchain}
CLIENT=${CLIENT:-$BUILDDIR/tests/integration/nbd-client-check}
HOSTILE_CLIENT=${HOSTILE_CLIENT:-$BUILDDIR/tests/reliability/hostile-client}
CRASH_WRITER=${CRASH_WRITER:-$BUILDDIR/tests/reliability/crash-writer}
FAULT_SHIM=${FAULT_SHIM:-$BUILDDIR/tests/reliability/fault-shim.so}
# nbdsh runs `python3` from PATH; only the system one (/usr/bin) has the nbd module, and a
# user-installed python (pyenv) may come first in PATH.
# mke2fs, debugfs and e2fsck live in /usr/sbin, which a user's PATH may lack.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH

TEST_NAME=$(basename "$0" .sh)
T0=$(date +%s)
# Upper bound on anything we start; CTest's own TIMEOUT (300 s) is the outer bound.
SERVER_TIMEOUT=${SERVER_TIMEOUT:-240}
# Upper bound of one wait_for: generous, because a wait is on a condition and ends as soon as it
# holds; only something stuck (or a machine far beyond its load) reaches it.
WAIT_TIMEOUT=${WAIT_TIMEOUT:-60}

# say MSG: a progress line with the seconds since the test started.
say() {
  echo "$TEST_NAME: [$(($(date +%s) - T0))s] $*"
}

fail() {
  echo "$TEST_NAME: FAIL: $*" >&2
  exit 1
}

# machine_limit LIMIT DETAIL: skip (exit 77) because this machine cannot run the test, naming
# the limit ("not root", "no /dev/kvm", ...).  Never for something we build or scripts/setup
# installs: that is a failure.
machine_limit() {
  local limit=$1
  shift
  echo "$TEST_NAME: SKIP: machine limit: $limit${*:+ ($*)}"
  exit 77
}

# skip LIMIT: kept for tests written before machine_limit; the same, one argument.
skip() {
  machine_limit "$*"
}

# requires CMD [ARGS...]: fail unless CMD exists (and, with ARGS, runs successfully).  Every
# tool a test uses is installed by scripts/setup, so its absence is a broken setup, not a skip.
requires() {
  if [ $# -eq 1 ]; then
    command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed (scripts/setup installs it)"
  else
    "$@" >"$WORK/requires.out" 2>&1 || {
      cat "$WORK/requires.out" >&2
      fail "'$*' failed (scripts/setup installs what it needs)"
    }
  fi
}

# requires_built WHAT PATH: fail unless the helper we build is there.
requires_built() {
  [ -n "$2" ] && [ -e "$2" ] || fail "$1 not built: ${2:-unset} (build the tree first)"
}

requires_plugin() {
  requires nbdkit
  requires_built plugin "$PLUGIN"
}

requires_client() {
  requires_built nbd-client-check "$CLIENT"
}

# The pool-building tests need the cowchain CLI, and one whose pool init works: a broken
# pool init is our bug, so it fails every such test with the CLI's own message.
requires_cowchain() {
  [ -n "$COWCHAIN" ] && [ -x "$COWCHAIN" ] || fail "cowchain CLI not built: ${COWCHAIN:-unset}"
  local probe
  probe=$(mktemp -d /tmp/cowchain-probe.XXXXXX)
  if ! "$COWCHAIN" --pool "$probe/pool" pool init >"$probe/out" 2>&1; then
    cat "$probe/out" >&2
    rm -rf "$probe"
    fail "cowchain pool init does not work"
  fi
  rm -rf "$probe"
}

# The power-loss replays (tests/reliability/test-powerloss*.sh) trace real commands with strace
# and replay them with powerloss.py against the plugin and the CLI.  A kernel that refuses
# ptrace (seccomp, Yama, a container) is a limit of the machine.
requires_powerloss_trace() {
  requires_plugin
  requires qemu-io
  requires strace
  requires python3
  requires_cowchain
  strace -f -qq -o /dev/null true 2>/dev/null ||
    machine_limit "ptrace refused" "strace cannot trace a child here (seccomp, Yama or a container)"
}

# powerloss_sample DEFAULT_MAX_STATES: SEED and MAX_STATES of a sampled replay, from the
# environment or the clock and the default, printed so that a run can be replayed.
powerloss_sample() {
  SEED=${SEED:-$(date +%s)}
  MAX_STATES=${MAX_STATES:-$1}
  say "seed $SEED (SEED=$SEED MAX_STATES=$MAX_STATES to replay the same sample)"
}

WORK=$(mktemp -d /tmp/cowchain-$TEST_NAME.XXXXXX)
SERVER_PIDS=()
SERVER_LOGS=()

# on_stop CMD...: run CMD first at exit, before the servers are stopped (to stop their
# clients, e.g. guests).  on_exit CMD...: run CMD at exit, after the servers are stopped,
# before $WORK is removed.  Both see the test's exit status in $TEST_RC.
STOP_HOOKS=()
on_stop() {
  STOP_HOOKS+=("$*")
}
EXIT_HOOKS=()
on_exit() {
  EXIT_HOOKS+=("$*")
}

cleanup() {
  local rc=$? pid log i hook
  set +e
  TEST_RC=$rc
  for hook in "${STOP_HOOKS[@]}"; do
    eval "$hook"
  done
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
  if [ "${KEEP:-0}" = 1 ]; then
    echo "$TEST_NAME: work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  if [ $rc -eq 0 ]; then
    echo "$TEST_NAME: PASS ($(($(date +%s) - T0)) s)"
  elif [ $rc -ne 77 ]; then
    echo "$TEST_NAME: FAIL (exit $rc, $(($(date +%s) - T0)) s)"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for WHAT CMD...: run CMD every 0.1 s until it succeeds; fail "WHAT: not within N s"
# after WAIT_TIMEOUT seconds of wall-clock time.  Never a fixed count of sleeps: on a loaded
# machine those end early.  CMD should fail the test itself (`fail`) as soon as it sees that
# the condition can no longer come (the process it waits for exited), so a real failure is
# reported at once, with its output, rather than after the bound.
wait_for() {
  local what=$1 end=$((SECONDS + WAIT_TIMEOUT))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || fail "$what: not within $WAIT_TIMEOUT s"
    sleep 0.1
  done
}

# alive PID: PID is running (a killed server stays a zombie until its parent, timeout(1), reaps
# it, and kill -0 succeeds on a zombie).
alive() {
  local st
  st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

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
# (ASan must be the first library of the process, and nbdkit is not built with it); only the server gets the preload, never the clients.  Leak checking is
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
  WAIT_TIMEOUT=180
fi

# server_started PIDFILE WRAPPER LOG: the pidfile is written; fails the test if the server
# exited first.
server_started() {
  [ -s "$1" ] && return 0
  if ! kill -0 "$2" 2>/dev/null; then
    cat "$3" >&2
    fail "nbdkit exited during startup"
  fi
  return 1
}

# start_server [NBDKIT-OPTS...] [-- PLUGIN-ARGS...]: nbdkit on $WORK/sock (or $SOCK if set),
# serving $POOL, in the background; waits for the pidfile.  Sets SOCK and SERVER_PID.
start_server() {
  local opts=() args=() n=${#SERVER_PIDS[@]}
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
  wait_for "nbdkit's pidfile $pidfile" server_started "$pidfile" "$wrapper" "$log"
  SERVER_PID=$(cat "$pidfile")
  SERVER_PIDS+=("$SERVER_PID")
  SERVER_LOG=$log
}

# forget_server PID: PID is gone; cleanup must not signal it again (it may be reused).
forget_server() {
  local keep=() p
  for p in "${SERVER_PIDS[@]}"; do
    [ "$p" = "$1" ] || keep+=("$p")
  done
  SERVER_PIDS=("${keep[@]}")
}

# stop_server: stop the last server started (by PID) and wait for it.
stop_server() {
  local i
  kill "$SERVER_PID" 2>/dev/null || true
  for i in $(seq 100); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      forget_server "$SERVER_PID"
      return 0
    fi
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

# wait_control_socket: wait until the current server's control socket is there; sets CTL.
wait_control_socket() {
  CTL=$POOL/run/nbdkit-$SERVER_PID.ctl
  wait_for "control socket $CTL" control_socket_up
}

control_socket_up() {
  [ -S "$CTL" ] && return 0
  if ! alive "$SERVER_PID"; then
    cat "$SERVER_LOG" >&2
    fail "nbdkit $SERVER_PID exited before its control socket was up"
  fi
  return 1
}

# hold EXPORT...: a client keeps each EXPORT open through the current server (so the server
# holds its layers) until unhold, which the test's exit also runs; waits until every one is
# open.  A client that fails to connect fails the test with its output.
HOLDERS=()
hold() {
  local e
  for e in "$@"; do
    # Removed here, not by the redirection below: that runs in the child, maybe only after the
    # wait below has read the "open" of an earlier holder of the same export.
    rm -f "$WORK/hold-$e.out"
    # Bounded by SERVER_TIMEOUT, like the server: unhold ends it long before.
    "$CLIENT" hold "$SOCK" "$e" "$SERVER_TIMEOUT" >"$WORK/hold-$e.out" 2>&1 &
    HOLDERS+=("$!:$e")
  done
  for e in "${HOLDERS[@]}"; do
    wait_for "holder of ${e#*:} connected" holder_open "${e%%:*}" "${e#*:}"
  done
}

holder_open() { # PID EXPORT
  grep -q '^open$' "$WORK/hold-$2.out" 2>/dev/null && return 0
  if ! kill -0 "$1" 2>/dev/null; then
    cat "$WORK/hold-$2.out" >&2
    fail "holder of $2 exited before it had the export open"
  fi
  return 1
}

unhold() {
  local h
  for h in "${HOLDERS[@]}"; do
    kill "${h%%:*}" 2>/dev/null || true
    wait "${h%%:*}" 2>/dev/null || true
  done
  HOLDERS=()
}
on_stop unhold

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

# has REGEX CMD...: CMD succeeds and its stdout matches REGEX (captured first: `CMD | grep -q`
# can kill CMD with SIGPIPE, which pipefail turns into a failure).
has() {
  local re=$1
  shift
  "$@" >"$WORK/has.out" || fail "failed: $*"
  grep -Eq -- "$re" "$WORK/has.out"
}

# with_shim [VAR=VALUE...]: the next servers run with $FAULT_SHIM preloaded, matching the
# pool's layer files, with the shim's variables VAR=VALUE (FAULT_TRIGGER, FAULT_DROP, ...).
# The shim goes after the ASan runtime when the plugin is sanitized (that must come first).
with_shim() {
  local e=() v found=0
  for v in "${SERVER_ENV[@]}"; do
    case "$v" in
      LD_PRELOAD=*) e+=("$v:$FAULT_SHIM"); found=1 ;;
      *) e+=("$v") ;;
    esac
  done
  [ $found = 1 ] || e+=("LD_PRELOAD=$FAULT_SHIM")
  SERVER_ENV=("${e[@]}" "FAULT_MATCH=$POOL/layers/" "$@")
}

# requires_fio: fio with its nbd engine (Debian's fio has it; scripts/setup installs it).
requires_fio() {
  requires fio
  requires fio --enghelp=nbd
}

# fio_verify SEED ARGS...: fio's nbd engine on vm1 of the current server: random writes from
# seed SEED with crc32c verification (--do_verify=1, --verify_only=1 and the block sizes are the
# caller's ARGS; a verify-only pass must repeat the ARGS and SEED of the writes it checks).  Any
# error fio reports fails the test, with fio's output.
fio_verify() {
  local seed=$1
  shift
  # fio saves verify state into the current directory; keep it in the work dir
  (cd "$WORK" && timeout "$SERVER_TIMEOUT" fio --name=cowchain --ioengine=nbd --uri="$(uri vm1)" \
    --size=48M --rw=randwrite --iodepth=16 --numjobs=1 --verify=crc32c --verify_fatal=1 \
    --randseed="$seed" "$@" --output="$WORK/fio.out") || {
    cat "$WORK/fio.out" >&2
    fail "fio --randseed=$seed $*"
  }
  grep -q 'err= 0' "$WORK/fio.out" || {
    cat "$WORK/fio.out" >&2
    fail "fio reported errors"
  }
}

# loop_during STEP MIN CMD...: run CMD (e.g. fio_verify) while `STEP N` runs for N = 1, 2, ... in
# a background loop, 0.1 s apart, until CMD is done.  STEP fails the test (`fail`) when its
# operation fails: that ends the loop and, once CMD is done, the test.  What STEP prints names the
# operations it did; DURING is set to the number of those done while CMD was still running.  How
# many fit into one run of CMD depends on the machine's load, so CMD is run again (5 times at
# most) until DURING reaches MIN: CMD must be one that can run twice (fio's writes with the same
# seed write the same data again).  The caller checks DURING against MIN.
loop_during() {
  local step=$1 min=$2 loop pass
  shift 2
  touch "$WORK/loop.go"
  rm -f "$WORK/during"
  (
    n=0
    while [ -e "$WORK/loop.go" ]; do
      n=$((n + 1))
      "$step" "$n" >"$WORK/step.out" || exit 1
      # Counted only when CMD was still running once the operation was done.
      [ ! -e "$WORK/loop.go" ] || cat "$WORK/step.out" >>"$WORK/during"
      sleep 0.1
    done
  ) &
  loop=$!
  for pass in 1 2 3 4 5; do
    "$@"
    DURING=0
    [ ! -e "$WORK/during" ] || DURING=$(wc -l <"$WORK/during")
    [ "$DURING" -lt "$min" ] && [ $pass -lt 5 ] && kill -0 "$loop" 2>/dev/null || break
    say "$DURING of $min operations done while $1 ran: again"
  done
  rm -f "$WORK/loop.go"
  wait "$loop" || fail "$step failed while $1 ran"
  [ ! -e "$WORK/during" ] || DURING=$(wc -l <"$WORK/during")
}

# allocated_bytes FILE: bytes the file occupies on disk.
allocated_bytes() {
  echo $(($(stat -c %b "$1") * $(stat -c %B "$1")))
}
