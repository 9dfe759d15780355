#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Crash injection for every pool operation (clone and snapshot operations here; template
# operations and deletes in test-cli-crash-templates.sh): COWCHAIN_CRASH_AT=N makes the pool code _exit(99)
# right after its N-th durable step.  For N = 1, 2, ... until the operation completes, on a
# fresh copy of the same pool: the pool must then be exactly "before" or exactly "after"
# (every export's name and bytes), `check` must find no errors (leftovers are leaks by design),
# `check --repair` must leave it with no leaks either, and the operation must then succeed.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/functions.sh"
requires_plugin
requires qemu-io

# A pool with history (and vm3, below): vm1 has snapshots s1 <- s2 and sits (after a revert) on s1 with its own
# writes; vm2 is a linked clone of vm1@s2; tdel is a template nothing uses.
truncate -s 4M "$WORK/base.raw"
qemu-io -f raw -c 'write -P 0x11 0 512k' -c 'write -P 0x22 2M 512k' "$WORK/base.raw" >/dev/null
cc pool init
cc template import base "$WORK/base.raw"
cc template create tdel --size 4M
cc clone create vm1 --from base
start_server
w() { qemu-io -f raw -c "$1" -c flush "$(uri "$2")" >/dev/null || fail "write $1"; }
# settle CMD: retry while the server is still closing the layer of the last client.
settle() {
  local i
  for i in $(seq 100); do
    "$@" 2>/dev/null && return 0
    sleep 0.1
  done
  "$@"
}
# vm3: r1 large <- r2 smaller <- a top with one small write: deleting r1 or r2 merges the child
# into the snapshot's layer (POOL.md 5.6), relinking the layer above for r1.
cc clone create vm3 --from base
w 'write -P 0xe1 0 2M' vm3
settle cc snapshot create vm3 r1
w 'write -P 0xe2 2M 512k' vm3
settle cc snapshot create vm3 r2
w 'write -P 0xe3 128k 4k' vm3
w 'write -P 0xa1 256k 512k' vm1
settle cc snapshot create vm1 s1
w 'write -P 0xb1 1M 1M' vm1
w 'write -z 0 64k' vm1
settle cc snapshot create vm1 s2
w 'write -P 0xc1 3M 256k' vm1
settle cc snapshot revert vm1 s1
w 'write -P 0xd1 1536k 128k' vm1
w 'discard 2M 256k' vm1
stop_server
SOCK=
cc clone create vm2 --from vm1@s2
truncate -s 1M "$WORK/new.raw"
qemu-io -f raw -c 'write -P 0x77 512k 4k' "$WORK/new.raw" >/dev/null
cp -a --sparse=always "$POOL" "$WORK/pool.orig"

# json_names: the "name" values of a JSON list from the CLI (one object per line; jq's start-up
# time would dominate this test).
json_names() {
  sed -n 's/^ *{"name": "\([^"]*\)".*/\1/p'
}

# signature POOL: every export's kind, name and sha256, one per line, sorted.
signature() {
  local p=$1 t c s
  {
    for t in $("$COWCHAIN" --pool "$p" template list --json | json_names); do
      echo "template $t $(export_sum "$p" "$t")"
    done
    for c in $("$COWCHAIN" --pool "$p" clone list --json | json_names); do
      echo "clone $c $(export_sum "$p" "$c")"
      for s in $("$COWCHAIN" --pool "$p" snapshot list "$c" --json | json_names); do
        echo "snapshot $c@$s $(export_sum "$p" "$c@$s")"
      done
    done
  } | sort
}
export_sum() {
  "$COWCHAIN" --pool "$1" export "$2" "$WORK/sig.raw" || fail "export $2 from $1"
  sha256sum <"$WORK/sig.raw" | cut -c1-16
}

# restore_pool: $POOL anew from the saved copy.  The copy's images have new inodes, which the
# template records' identity check refuses (POOL.md 3.1.1) until `template verify` re-hashes
# them and records the new identity.
restore_pool() {
  local t
  rm -rf "$POOL"
  cp -a --sparse=always "$WORK/pool.orig" "$POOL"
  for t in $(cd "$POOL/images" && ls); do
    cc template verify "${t%.raw}" >/dev/null || fail "template verify ${t%.raw} after the restore"
  done
}

# crash_loop NAME OP...: run "cowchain OP" crashing at every step; see the header comment.
crash_loop() {
  local name=$1 n rc before after now
  shift
  restore_pool
  before=$(signature "$POOL")
  cc "$@" || fail "$name: the operation fails without a crash"
  after=$(signature "$POOL")
  [ "$before" != "$after" ] || fail "$name: the operation changed nothing visible"
  for n in $(seq 1 40); do
    restore_pool
    rc=0
    COWCHAIN_CRASH_AT=$n cc "$@" 2>"$WORK/crash.err" || rc=$?
    if [ $rc -eq 0 ]; then
      [ "$(signature "$POOL")" = "$after" ] || fail "$name: completed run differs from after"
      echo "$name: $((n - 1)) crash points, all safe"
      return 0
    fi
    [ $rc -eq 99 ] || {
      cat "$WORK/crash.err" >&2
      fail "$name: step $n: exit $rc instead of the injected crash"
    }
    cc check >"$WORK/check.out" 2>&1 || {
      cat "$WORK/check.out" >&2
      fail "$name: crash after step $n: check finds errors"
    }
    now=$(signature "$POOL")
    if [ "$now" != "$before" ] && [ "$now" != "$after" ]; then
      diff <(echo "$before") <(echo "$now") >&2 || true
      diff <(echo "$after") <(echo "$now") >&2 || true
      fail "$name: crash after step $n: the pool is neither before nor after"
    fi
    cc check --repair >/dev/null || fail "$name: step $n: check --repair failed"
    has ', 0 errors, 0 leaks' cc check || {
      cc check >&2
      fail "$name: step $n: leaks remain after check --repair"
    }
    # The operation can be run (again) and completes.
    if [ "$now" = "$before" ]; then
      cc "$@" || fail "$name: step $n: rerun after the crash failed"
      [ "$(signature "$POOL")" = "$after" ] || fail "$name: step $n: rerun did not reach after"
    fi
  done
  fail "$name: still crashing after 40 steps"
}

# Two groups, so each test stays well under a minute; test-cli-crash-templates.sh runs the
# second one by sourcing this file with CRASH_GROUP=templates.
timed() {
  SECONDS=0
  crash_loop "$@"
  echo "  ($SECONDS s)"
}
if [ "${CRASH_GROUP:-clones}" = clones ]; then
  timed "clone create" clone create c2 --from base
  timed "linked clone of a snapshot" clone create c3 --from vm1@s2
  timed "full clone" clone create c4 --from vm1@s1 --full
  timed "snapshot create" snapshot create vm1 s3 --description "crash test"
  timed "snapshot revert" snapshot revert vm1 s2
  timed "snapshot delete (merge)" snapshot delete vm1 s1
  timed "snapshot delete (child into snapshot)" snapshot delete vm3 r2
  timed "snapshot delete (child into snapshot, relink)" snapshot delete vm3 r1
else
  timed "template promote" template promote vm1 gold
  timed "template import" template import t2 "$WORK/new.raw"
  timed "template create" template create t3 --size 1M
  timed "template delete" template delete tdel
  timed "clone delete" clone delete vm1
fi
