#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Concurrency: 8 fio clients (--ioengine=nbd, one connection each, 8 requests in flight) on 4
# clones of one template for 20 s, each writing its own half of a clone with crc32c verification
# as it goes (verify_backlog) and at the end; meanwhile readers compare the template export and a
# snapshot export with their sources (the frozen layers the clones share).  Then a restart and a
# verify-only pass of every region.  Multi-conn visibility (write on one connection, flush, read
# on another) is tests/integration/test-server-multiconn.sh; not repeated here.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_fio
setup_pool
for i in 2 3 4; do
  cc clone create "vm$i" --from base
done
cc clone create snapsrc --from base
cc snapshot create snapsrc s1

RUNTIME=${COWCHAIN_CONCURRENCY_SECONDS:-20}
# job EXPORT HALF MODE...: one fio client on one half of EXPORT (32 MiB), fixed seed per job.
job() {
  local e=$1 half=$2
  shift 2
  (cd "$WORK" && timeout $((RUNTIME + 120)) fio --name="$e-$half" --ioengine=nbd --uri="$(uri "$e")" \
    --offset=$((half * 32))M --size=32M --rw=randwrite --bsrange=4k-256k --iodepth=8 \
    --verify=crc32c --verify_fatal=1 --randseed=$((${e#vm} * 10 + half)) "$@" \
    --output="$WORK/fio-$e-$half.out")
}

start_server
pids=()
for e in vm1 vm2 vm3 vm4; do
  for half in 0 1; do
    job "$e" "$half" --time_based --runtime="$RUNTIME" --verify_backlog=128 --do_verify=1 &
    pids+=($!)
  done
done
# Readers of the shared frozen layers while the clones are written.
end=$((SECONDS + RUNTIME))
reads=0
while [ $SECONDS -lt $end ]; do
  timeout 60 qemu-img compare -q -f raw -F raw "$(uri base)" "$WORK/base.raw" ||
    fail "the template export changed while its clones were written"
  timeout 60 qemu-img compare -q -f raw -F raw "$(uri snapsrc@s1)" "$WORK/base.raw" ||
    fail "a snapshot on the same template changed while the clones were written"
  reads=$((reads + 1))
done
bad=0
for p in "${pids[@]}"; do
  wait "$p" || bad=$((bad + 1))
done
for f in "$WORK"/fio-*.out; do
  grep -q 'err= 0' "$f" || {
    cat "$f" >&2
    bad=$((bad + 1))
  }
done
[ $bad -eq 0 ] || fail "$bad fio clients failed verification"
echo "8 fio clients for $RUNTIME s: ok; $reads rounds of template/snapshot reads"
grep -h 'write: IOPS' "$WORK"/fio-*.out | head -n 8
for e in vm1 vm2 vm3 vm4; do
  timeout 60 qemu-img convert -f raw -O raw "$(uri "$e")" "$WORK/$e.img" || fail "$e unreadable"
done
stop_server

# Another server (io=sync this time): every clone reads exactly as before the restart.
start_server -- io=sync
for e in vm1 vm2 vm3 vm4; do
  timeout 60 qemu-img compare -q -f raw -F raw "$(uri "$e")" "$WORK/$e.img" ||
    fail "$e differs after a clean restart"
done
stop_server
retry cc check >"$WORK/check.out" || {
  cat "$WORK/check.out" >&2
  fail "check after the concurrent run"
}
grep -q ', 0 errors, 0 leaks' "$WORK/check.out" || {
  cat "$WORK/check.out" >&2
  fail "check after the concurrent run reports problems"
}
check_template_unchanged
