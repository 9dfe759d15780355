#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Remote templates (issue 17): a template that is a read-only NBD export of another server.
# `nbdkit file` (read-only, with the delay and log filters) on its own unix socket stands in for
# the remote engine.  Clones, snapshots, full clones, promote, export and check work on it as on
# a local template; reads are identical to the template, writes never reach the remote, extents
# stay sparse; the remote killed and restarted under a reader gives EIO for the blocks the clone
# does not own (never zeroes) and recovers by itself; size and fingerprint mismatches are refused.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_cowchain
requires qemu-img
requires qemu-io
requires nbdcopy
requires nbdinfo
requires_built nbd-session "$BUILDDIR/tests/integration/nbd-session"
SESSION=$BUILDDIR/tests/integration/nbd-session

make_template_file "$WORK/base.raw"
chmod a-w "$WORK/base.raw"
sha256sum "$WORK/base.raw" >"$WORK/base.sha256"
RSOCK=$WORK/remote.sock
RLOG=$WORK/remote-requests.log

# start_remote FILE [NBDKIT-OPTS...]: the remote engine, read-only, on $RSOCK.  Sets REMOTE_PID.
start_remote() {
  local file=$1 i
  shift
  rm -f "$RSOCK" "$WORK/remote.pid"
  timeout "$SERVER_TIMEOUT" nbdkit -f -r -U "$RSOCK" -P "$WORK/remote.pid" "$@" \
    --filter=log --filter=delay file "$file" delay-read=1ms logfile="$RLOG" logappend=true \
    2>>"$WORK/remote.stderr" &
  for i in $(seq 300); do
    [ -s "$WORK/remote.pid" ] && break
    sleep 0.1
  done
  [ -s "$WORK/remote.pid" ] || fail "the remote nbdkit did not start"
  REMOTE_PID=$(cat "$WORK/remote.pid")
  SERVER_PIDS+=("$REMOTE_PID") # cleanup kills it by PID
}

stop_remote() {
  kill -KILL "$REMOTE_PID" 2>/dev/null || true
  while kill -0 "$REMOTE_PID" 2>/dev/null; do sleep 0.1; done
  forget_server "$REMOTE_PID"
}

RURI="nbd+unix:///?socket=$RSOCK"
start_remote "$WORK/base.raw"
cc pool init

say "template add: refusals"
expect_fail cc template add bad --uri "http://example.invalid/x"
grep -q "not an NBD URI" "$WORK/expect_fail.out" || fail "a non-NBD URI: wrong message"
expect_fail cc template add bad --uri "nbd+unix:///?socket=relative.sock"
grep -q "must be an absolute path" "$WORK/expect_fail.out" || fail "a relative socket: wrong message"
expect_fail cc template add bad --uri "nbd+unix:///?socket=$WORK/nothing.sock"
grep -q "template add: bad: nbd+unix" "$WORK/expect_fail.out" || fail "unreachable: message lacks the URI"
# A writable export could change under its clones.
cp "$WORK/base.raw" "$WORK/writable.raw"
chmod u+w "$WORK/writable.raw"
timeout "$SERVER_TIMEOUT" nbdkit -f -U "$WORK/w.sock" -P "$WORK/w.pid" file "$WORK/writable.raw" &
for i in $(seq 100); do [ -s "$WORK/w.pid" ] && break; sleep 0.1; done
WPID=$(cat "$WORK/w.pid")
SERVER_PIDS+=("$WPID")
expect_fail cc template add wr --uri "nbd+unix:///?socket=$WORK/w.sock"
grep -q "writable" "$WORK/expect_fail.out" || fail "a writable export: wrong message"
cc template add wr --uri "nbd+unix:///?socket=$WORK/w.sock" --allow-writable
grep -q "^writable 1$" "$POOL/images/wr.nbd" || fail "--allow-writable not recorded"
cc template delete wr
[ ! -e "$POOL/images/wr.nbd" ] || fail "template delete left the descriptor"
kill "$WPID"
forget_server "$WPID"
[ -z "$(ls "$POOL/templates")" ] || fail "a refused add left a record"

# libnbd is loaded on the first remote connection: without it, that one fails, saying why.
COWCHAIN_TEST_LIBNBD=libnbd-absent.so.0 expect_fail cc template add nolib --uri "$RURI"
grep -q "remote templates need libnbd, which could not be loaded: libnbd-absent.so.0" \
  "$WORK/expect_fail.out" || fail "without libnbd: wrong message: $(cat "$WORK/expect_fail.out")"
[ ! -e "$POOL/templates/nolib" ] || fail "a refused add (no libnbd) left a record"

say "template add, list, clones, snapshots"
cc template add rbase --uri "$RURI" --verify
has '^rbase +remote +64.0 MiB' cc template list || fail "template list: kind remote"
has '"kind": "remote"' cc template list --json || fail "template list --json: kind remote"
grep -q "^content sha256:$(cut -d' ' -f1 "$WORK/base.sha256")$" "$POOL/images/rbase.nbd" ||
  fail "--verify did not record the content hash"
[ "$(stat -c %a "$POOL/images/rbase.nbd")" = 400 ] || fail "the descriptor is not read-only"
cc clone create vm1 --from rbase
cc clone create vm2 --from rbase
cc snapshot create vm2 s1
cc clone create full --from rbase --full
cc check
has '^file format: nbd \(remote\)$' cc info rbase || fail "info of a remote template"
has 'images/rbase.nbd' cc info vm1 --backing-chain || fail "info --backing-chain ends at the remote"

start_server -v
say "reads identical to the template"
for e in rbase vm1 vm2 vm2@s1 full; do
  qemu-img compare -f raw -F raw "$(uri $e)" "$WORK/base.raw" || fail "$e differs from the template"
done
say "writes stay local"
: >"$RLOG.before"
qemu-io -f raw -c 'write -P 0x5c 8M 1M' -c 'write -P 0x5d 512 4096' -c 'write -z 2M 512k' \
  "$(uri vm1)" >/dev/null
cp --sparse=always "$WORK/base.raw" "$WORK/ref.raw"
chmod u+w "$WORK/ref.raw"
qemu-io -f raw -c 'write -P 0x5c 8M 1M' -c 'write -P 0x5d 512 4096' -c 'write -z 2M 512k' \
  "$WORK/ref.raw" >/dev/null
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/ref.raw" || fail "vm1 after writes"
grep -E "(Write|Zero|Trim)" "$RLOG" && fail "a write reached the remote"
grep -q "Read" "$RLOG" || fail "the log filter saw no reads: the remote was not used"
sha256sum -c --quiet "$WORK/base.sha256" || fail "the remote's file changed"

say "extents sparse"
nbdinfo --map "$(uri vm1)" >"$WORK/map"
cat "$WORK/map"
# [3M, 8M) is a hole of the remote and of the clone: reported as a hole, not data.
awk '$1 <= 3145728 && $1 + $2 >= 8388608 && $3 == 3 { ok = 1 } END { exit !ok }' "$WORK/map" ||
  fail "the remote's hole at 3M..8M is not a hole in vm1's extents"
nbdcopy "$(uri vm1)" "$WORK/copy.raw"
cmp "$WORK/copy.raw" "$WORK/ref.raw" || fail "nbdcopy of vm1"
a=$(allocated_bytes "$WORK/copy.raw")
[ "$a" -le $((8 * 1024 * 1024)) ] || fail "nbdcopy of vm1 allocated $a bytes: not sparse"
a=$(allocated_bytes "$POOL/layers/$(sed -n 's/^top //p' "$POOL/clones/full").cow")
[ "$a" -le $((8 * 1024 * 1024)) ] || fail "the full clone allocated $a bytes: not sparse"

say "the remote goes away under a reader, and comes back"
rm -f "$WORK/ctl"
mkfifo "$WORK/ctl"
timeout 120 "$SESSION" "$SOCK" vm1 <"$WORK/ctl" >"$WORK/session.out" 2>&1 &
SESSION_PID=$!
exec 3>"$WORK/ctl"
ask() { # ask CMD: send one command, wait for its answer line
  local n
  n=$(wc -l <"$WORK/session.out")
  echo "$1" >&3
  for i in $(seq 300); do
    [ "$(wc -l <"$WORK/session.out")" -gt "$n" ] && break
    sleep 0.1
  done
  tail -n 1 "$WORK/session.out"
}
[ "$(ask 'read 62914560 4096')" = "ok 33" ] || fail "read before the fault"
stop_remote
[ "$(ask 'read 1048576 4096')" = "err EIO" ] || fail "unowned block with the remote gone: not EIO"
[ "$(ask 'read 2883584 4096')" = "err EIO" ] || fail "unowned block at 2.75M: not EIO"
[ "$(ask 'read 8388608 4096')" = "ok 5c" ] || fail "a block the clone owns failed with the remote gone"
[ "$(ask 'read 62914560 4096')" = "err EIO" ] || fail "unowned block at 60M: not EIO"
start_remote "$WORK/base.raw"
[ "$(ask 'until-ok 2883584 4096 20')" = "ok 22" ] || fail "reads did not recover"
[ "$(ask 'read 62914560 4096')" = "ok 33" ] || fail "read after recovery"
[ "$(ask 'read 8388608 4096')" = "ok 5c" ] || fail "owned block after recovery"
echo quit >&3
exec 3>&-
wait "$SESSION_PID" || fail "the session client failed"
cat "$WORK/session.out"
[ "$(grep -c 'template rbase .*: unreachable' "$SERVER_LOG")" = 1 ] ||
  fail "not exactly one 'unreachable' log line"
[ "$(grep -c 'template rbase .*: reachable again' "$SERVER_LOG")" = 1 ] ||
  fail "not exactly one 'reachable again' log line"
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/ref.raw" || fail "vm1 after the fault"

say "a remote serving something else is refused"
stop_server "$SERVER_PID"
stop_remote
cp "$WORK/base.raw" "$WORK/other.raw"
chmod u+w "$WORK/other.raw"
qemu-io -f raw -c 'write -P 0x44 0 4096' "$WORK/other.raw" >/dev/null
start_remote "$WORK/other.raw"
start_server -v
expect_fail qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/ref.raw"
log_has "template rbase \(nbd\+unix:///\?socket=$RSOCK\).*fingerprint mismatch"
expect_fail cc clone create vm3 --from rbase --full
grep -q "fingerprint mismatch" "$WORK/expect_fail.out" || fail "full clone of a changed remote"
stop_remote
truncate -s 32M "$WORK/other.raw"
start_remote "$WORK/other.raw"
expect_fail qemu-img compare -f raw -F raw "$(uri rbase)" "$WORK/base.raw"
log_has "template rbase \(nbd\+unix:///\?socket=$RSOCK\).*size changed \(recorded 67108864, remote 33554432\)"
stop_server "$SERVER_PID"
stop_remote

say "promote, export, check, delete"
start_remote "$WORK/base.raw"
cc export vm1 "$WORK/export.raw"
cmp "$WORK/export.raw" "$WORK/ref.raw" || fail "export of vm1"
cc template promote vm1 golden
cc clone create vm4 --from golden
cc export vm4 "$WORK/export4.raw"
cmp "$WORK/export4.raw" "$WORK/ref.raw" || fail "export of a clone of a promoted clone"
cc check
expect_fail cc template delete rbase
grep -q "in use by" "$WORK/expect_fail.out" || fail "delete of a used remote template: wrong message"
for c in vm1 vm2 vm4 full; do cc clone delete "$c"; done
expect_fail cc template delete rbase # golden's layer still sits on it
cc template delete golden
cc template delete rbase
[ ! -e "$POOL/images/rbase.nbd" ] && [ ! -e "$POOL/templates/rbase" ] || fail "delete left files"
cc check
sha256sum -c --quiet "$WORK/base.sha256" || fail "the remote's file changed"
grep -E "(Write|Zero|Trim)" "$RLOG" && fail "a write reached the remote"
say "ok"
