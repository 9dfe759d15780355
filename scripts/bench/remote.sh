#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# scripts/bench/remote.sh: reads from a clone of a remote template (issue 17), short runs.
#
#   scripts/bench/remote.sh [--runtime S] [--size SIZE] [--delay MS]
#
# The remote engine is `nbdkit -r file` with the delay filter (1 ms per read by default) on a
# unix socket.  Three peers read the same bytes, measured in the same run:
#   cc-remote   a cowchain clone of that export (template add --uri), nothing written
#   cc-warm     the same clone on a second server with template-cache=DIR, read once in full
#               before measuring (the warm cache)
#   cc-local    a cowchain clone of the same image imported locally (the ceiling)
#   qemu-nbd    qemu-nbd serving a qcow2 overlay whose backing file is the same NBD export
# Workloads (fio, nbd engine, one connection): 4 KiB random reads (iodepth 32) and 1 MiB
# sequential reads (iodepth 8).  cc-remote and qemu-nbd have no cache in front of the remote:
# every read of template data is a cold remote read (the local image is in the page cache).
# Prints one line per measurement and the ratios; the numbers go into docs/BENCHMARKS.md by hand.
set -euo pipefail
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$SRC/build}
RUNTIME=2
SIZE=256M
DELAY=1
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --delay) DELAY=$2; shift 2 ;;
    *) echo "usage: $0 [--runtime S] [--size SIZE] [--delay MS]" >&2; exit 2 ;;
  esac
done
W=$(mktemp -d /tmp/cowchain-bench-remote.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
log() { echo "bench-remote: $*" >&2; }

# wait_pidfile FILE: the pid in FILE once a server wrote it.
wait_pidfile() {
  local i
  for i in $(seq 300); do [ -s "$1" ] && { cat "$1"; return 0; }; sleep 0.1; done
  echo "bench-remote: no pidfile $1" >&2
  exit 1
}

log "template: $SIZE of pseudo-random data"
{ openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:cowchain-bench </dev/zero 2>/dev/null |
  head -c "$SIZE" >"$W/base.raw"; } || true
chmod a-w "$W/base.raw"

timeout 900 nbdkit -f -r -U "$W/remote.sock" -P "$W/remote.pid" --filter=delay \
  file "$W/base.raw" delay-read="${DELAY}ms" 2>"$W/remote.log" &
PIDS+=("$(wait_pidfile "$W/remote.pid")")
RURI="nbd+unix:///?socket=$W/remote.sock"

export COWCHAIN_POOL=$W/pool
CC=$BUILD/cli/cowchain
$CC pool init
$CC template add rbase --uri "$RURI"
$CC template import lbase "$W/base.raw"
$CC clone create vmr --from rbase
$CC clone create vml --from lbase
timeout 900 nbdkit -f -U "$W/cc.sock" -P "$W/cc.pid" "$BUILD/server/nbdkit-cowchain-plugin.so" \
  pool="$W/pool" 2>"$W/cc.log" &
PIDS+=("$(wait_pidfile "$W/cc.pid")")

mkdir "$W/cache"
timeout 900 nbdkit -f -U "$W/warm.sock" -P "$W/warm.pid" "$BUILD/server/nbdkit-cowchain-plugin.so" \
  pool="$W/pool" template-cache="$W/cache" template-cache-size=2G 2>"$W/warm.log" &
PIDS+=("$(wait_pidfile "$W/warm.pid")")
log "warming the cache (reading the clone once)"
qemu-io -f raw -c "read 0 $SIZE" "nbd+unix:///vmr?socket=$W/warm.sock" >/dev/null
log "cache: $(du -h "$W"/cache/*.rcache | cut -f1) on disk"

qemu-img create -q -f qcow2 -F raw -b "$RURI" "$W/overlay.qcow2"
timeout 900 qemu-nbd -t -f qcow2 -k "$W/qemu.sock" --pid-file="$W/qemu.pid" -e 4 \
  "$W/overlay.qcow2" 2>"$W/qemu.log" &
PIDS+=("$(wait_pidfile "$W/qemu.pid")")
for i in $(seq 100); do [ -S "$W/qemu.sock" ] && break; sleep 0.1; done
[ -S "$W/qemu.sock" ] || { cat "$W/qemu.log" >&2; exit 1; }

declare -A URI=([cc-remote]="nbd+unix:///vmr?socket=$W/cc.sock"
  [cc-local]="nbd+unix:///vml?socket=$W/cc.sock"
  [cc-warm]="nbd+unix:///vmr?socket=$W/warm.sock"
  [qemu-nbd]="nbd+unix:///?socket=$W/qemu.sock")
declare -A WL=([randread-4k]="--rw=randread --bs=4k --iodepth=32"
  [seqread-1m]="--rw=read --bs=1M --iodepth=8")
declare -A R
for wl in randread-4k seqread-1m; do
  for peer in cc-local cc-warm cc-remote qemu-nbd; do
    # shellcheck disable=SC2086
    timeout $((RUNTIME * 4 + 60)) fio --ioengine=nbd --randrepeat=1 --norandommap \
      --output-format=json --output="$W/$peer-$wl.json" --name=m --uri="${URI[$peer]}" \
      ${WL[$wl]} --runtime="$RUNTIME" --time_based >/dev/null
    R[$peer,$wl]=$(jq '.jobs[0].read.iops' "$W/$peer-$wl.json")
    mib=$(jq '.jobs[0].read.bw_bytes / 1048576' "$W/$peer-$wl.json")
    printf '%-10s %-12s %10.0f IOPS %9.1f MiB/s\n' "$peer" "$wl" "${R[$peer,$wl]}" "$mib"
  done
done
for wl in randread-4k seqread-1m; do
  awk -v wl=$wl -v r="${R[cc-remote,$wl]}" -v l="${R[cc-local,$wl]}" -v q="${R[qemu-nbd,$wl]}" \
    -v w="${R[cc-warm,$wl]}" 'BEGIN { printf "%-12s cc-warm/cc-local %.3f   cc-remote/cc-local %.3f   cc-remote/qemu-nbd %.2f\n", wl, w / l, r / l, r / q }'
done
echo "machine: $(nproc) CPUs, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ), delay ${DELAY} ms/read, runtime ${RUNTIME} s, template $SIZE"
