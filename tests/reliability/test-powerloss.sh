#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Power loss during pool operations.  tests/integration/test-cli-crash*.sh kill the CLI after
# each durable step (process death: every write made so far survives in the page cache).  Here
# each operation runs once under strace, and powerloss.py replays every prefix of its writes,
# renames and syncs as a power loss would leave the disk: un-synced data and un-synced directory
# changes dropped (three models, see powerloss.py).  Each state must be "before" or "after",
# `check` clean, `check --repair` leak-free, and the operation must run again from "before".
source "$(dirname "$0")/../lib/functions.sh"
requires_powerloss_trace

# A pool with history, as in test-cli-crash.sh: vm1 has snapshots s1 <- s2 and sits (after a
# revert) on s1 with its own writes; vm2 is a linked clone of vm1@s2; tdel is a template
# nothing uses.
truncate -s 4M "$WORK/base.raw"
qemu-io -f raw -c 'write -P 0x11 0 512k' -c 'write -P 0x22 2M 512k' "$WORK/base.raw" >/dev/null
cc pool init
cc template import base "$WORK/base.raw"
cc clone create vm1 --from base
start_server
w() { qemu-io -f raw -c "$1" -c flush "$(uri "$2")" >/dev/null || fail "write $1"; }
# vm3: r1 large <- r2 smaller <- a top with one small write: deleting r1 or r2 merges the child
# into the snapshot's layer (POOL.md 5.6), relinking the layer above for r1.
cc clone create vm3 --from base
w 'write -P 0xe1 0 2M' vm3
retry cc snapshot create vm3 r1
w 'write -P 0xe2 2M 512k' vm3
retry cc snapshot create vm3 r2
w 'write -P 0xe3 128k 4k' vm3
w 'write -P 0xa1 256k 512k' vm1
retry cc snapshot create vm1 s1
w 'write -P 0xb1 1M 1M' vm1
retry cc snapshot create vm1 s2
w 'write -P 0xc1 3M 256k' vm1
retry cc snapshot revert vm1 s1
w 'write -P 0xd1 1536k 128k' vm1
stop_server
SOCK=
cc clone create vm2 --from vm1@s2
cc template create tdel --size 4M
truncate -s 1M "$WORK/new.raw"
qemu-io -f raw -c 'write -P 0x77 512k 4k' "$WORK/new.raw" >/dev/null
cp -a --sparse=always "$POOL" "$WORK/pool.orig"

total_cuts=0
total_states=0
powerloss() {
  local run=$WORK/run
  rm -rf "$run"
  cp -a --sparse=always "$WORK/pool.orig" "$run"
  # The copy's images have new inodes: record them (POOL.md 3.1.1) before the traced run.
  for t in $(cd "$run/images" && ls); do
    "$COWCHAIN" --pool "$run" template verify "${t%.raw}" >/dev/null || fail "template verify $t"
  done
  SECONDS=0
  # (LeakSanitizer refuses to run under ptrace: no leak check for the traced run of an ASan CLI.)
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    strace -f -qq -X raw -xx -s 67108864 -o "$WORK/trace" \
    -e trace=openat,open,creat,write,pwrite64,pwritev,writev,rename,renameat,renameat2,unlink,unlinkat,rmdir,fsync,fdatasync,ftruncate,fallocate,mkdir,mkdirat,copy_file_range,ioctl,sendfile,splice,link,linkat,symlink,close,lseek,dup,dup2,dup3,fchmod,chmod,fchmodat,clone,clone3,fork,vfork,execve \
    "$COWCHAIN" --pool "$run" "$@" || fail "$*: the traced run failed"
  timeout 280 python3 "$(dirname "$0")/powerloss.py" "$COWCHAIN" "$WORK/pool.orig" \
    "$WORK/trace" "$WORK" -- "$@" >"$WORK/pl.out" || {
    cat "$WORK/pl.out"
    fail "$*: a power loss leaves an unsafe pool"
  }
  cat "$WORK/pl.out"
  echo "  ($SECONDS s)"
  set -- $(sed -n 's/.*: \([0-9]*\) cut points, \([0-9]*\) distinct states.*/\1 \2/p' "$WORK/pl.out")
  total_cuts=$((total_cuts + $1))
  total_states=$((total_states + $2))
}
powerloss clone create c2 --from base
# The replay must be able to fail: drop the fsync that follows the new clone record's write
# (as if the CLI renamed the record into place without syncing it first); the "meta" model then
# leaves an empty record under the new name, which check must report.  The record is written
# and synced by a thread of its own (pool/durable.c), whose lines interleave with the others:
# its fsync is the next one of the same thread, perhaps split into "<unfinished ...>" and
# "<... fsync resumed>".
python3 - "$WORK/trace" "$WORK/trace.bad" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines(True)
rec = '\\x63\\x6f\\x77\\x63\\x68\\x61\\x69\\x6e\\x2d\\x63\\x6c\\x6f\\x6e\\x65'  # "cowchain-clone"
for i, l in enumerate(lines):
    if ' write(' in l and rec in l:
        tid = l.split(None, 1)[0]
        # (the write itself may be split too: skip its "<... write resumed>")
        j = next(j for j in range(i + 1, len(lines)) if lines[j].split(None, 1)[0] == tid and
                 '<... write resumed>' not in lines[j])
        if ' fsync(' not in lines[j]:
            sys.exit('the record write is not followed by its fsync: ' + lines[j])
        drop = [j]
        if lines[j].rstrip().endswith('<unfinished ...>'):
            drop.append(next(k for k in range(j + 1, len(lines))
                             if lines[k].split(None, 1)[0] == tid
                             and '<... fsync resumed>' in lines[k]))
        for k in reversed(drop):
            del lines[k]
        break
else:
    sys.exit('no record write in the trace')
open(sys.argv[2], 'w').writelines(lines)
PY
if timeout 280 python3 "$(dirname "$0")/powerloss.py" "$COWCHAIN" "$WORK/pool.orig" \
  "$WORK/trace.bad" "$WORK" -- clone create c2 --from base >"$WORK/pl-bad.out" 2>&1; then
  cat "$WORK/pl-bad.out"
  fail "the replay did not notice a record renamed into place before it was synced"
fi
echo "self-test: a missing fsync is caught: $(head -n 1 "$WORK/pl-bad.out")"
powerloss clone create c3 --from vm1@s2
powerloss clone create c4 --from vm1@s1 --full
powerloss snapshot create vm1 s3
powerloss snapshot revert vm1 s2
powerloss snapshot delete vm1 s1
powerloss snapshot delete vm3 r2
powerloss snapshot delete vm3 r1
powerloss template promote vm1 gold
powerloss template import t2 "$WORK/new.raw"
powerloss template create t3 --size 1M
powerloss template delete tdel
powerloss clone delete vm2
echo "powerloss: RESULT operations=13 cut_points=$total_cuts states=$total_states"
