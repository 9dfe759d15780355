#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Every read mode of the plugin reads the same bytes: io=auto (the default), io=uring and
# cache=none (O_DIRECT, with its bounce buffer for unaligned requests) against io=sync, on a
# clone over a history of snapshots whose writes are unaligned and scattered.  Whole-disk copies
# (nbdcopy: large requests of many pieces, the io_uring batch) and unaligned small reads
# (qemu-io read -v: one piece, the fast path, the bounce buffer) must match byte for byte, and
# cache=none must leave the template's pages out of the page cache (fincore).
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires qemu-img
requires qemu-io
requires nbdcopy
requires fincore
setup_pool

# cache=none needs O_DIRECT from the file system holding the pool.
fstype=$(stat -f -c %T "$POOL")
probe=$POOL/.odirect-probe
if ! python3 -c 'import os, sys; os.close(os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600))' "$probe" 2>/dev/null; then
  rm -f "$probe"
  machine_limit "O_DIRECT" "the pool's file system ($fstype) refuses O_DIRECT (tmpfs does); run with TMPDIR-less /tmp on ext4/xfs"
fi
rm -f "$probe"

start_server -- io=sync
for r in 1 2 3 4; do
  qemu-io -f raw \
    -c "write -P 0x$((r + 40)) $((r * 777777 + 3)) $((r * 50000 + 17))" \
    -c "write -P 0x$((r + 50)) $((r * 5 * 1048576 - 1000)) 9000" \
    -c "write -z $((r * 300000)) $((r * 10000 + 1))" \
    -c "write -P 0x$((r + 60)) $((60 * 1048576 + r * 100000)) 4096" \
    "$(uri vm1)" >/dev/null || fail "writes of round $r"
  retry cc snapshot create vm1 s$r
done
qemu-io -f raw -c "write -P 0x77 $((2 * 1048576 + 123)) 333" "$(uri vm1)" >/dev/null
stop_server

# Unaligned reads: offsets and lengths not multiples of 512, across layers and the template's
# data and holes, and the last bytes of the disk.
size=$((64 * 1048576))
reads=$WORK/reads
: >"$reads"
seed=1
for i in $(seq 120); do
  seed=$(((seed * 1103515245 + 12345) % 2147483648))
  len=$((1 + seed % 70000))
  seed=$(((seed * 1103515245 + 12345) % 2147483648))
  off=$((seed % (size - len)))
  echo "-c" >>"$reads"
  echo "read -v $off $len" >>"$reads"
done
printf '%s\n' -c "read -v $((size - 4097)) 4097" >>"$reads"
mapfile -t readargs <"$reads"

# The template image's pages in the page cache, in bytes (fincore), and dropping them.
resident() { fincore -b -n -o RES "$POOL"/images/*.raw | awk '{ s += $1 } END { print s + 0 }'; }
drop_pages() {
  python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.fdatasync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$POOL"/images/*.raw
}

snapshot() { # snapshot NAME PLUGIN-ARGS...: whole-disk copy and the unaligned reads' dump
  local name=$1 res
  shift
  drop_pages
  [ "$(resident)" -lt 262144 ] || fail "cannot drop the template's pages ($(resident) bytes stay)"
  # -v: chain/'s messages (an O_DIRECT or io_uring fallback) are nbdkit debug lines.
  start_server -v -- "$@"
  nbdcopy "$(uri vm1)" "$WORK/$name.raw" || fail "$name: nbdcopy"
  # The template holds 3 MiB of data (make_template_file): a buffered copy brings it into the
  # page cache, cache=none (O_DIRECT) must not.
  res=$(resident)
  case " $* " in
  *" cache=none "*)
    [ "$res" -lt 524288 ] || fail "$name: $res bytes of the template in the page cache after an O_DIRECT copy" ;;
  *) [ "$res" -gt 2097152 ] || fail "$name: a buffered copy left only $res bytes in the page cache (the check is blind)" ;;
  esac
  qemu-io -f raw -r "${readargs[@]}" "$(uri vm1)" | grep -Ev '^read |ops; [0-9]' >"$WORK/$name.dump" ||
    fail "$name: qemu-io reads"
  if [ "$name" = sync ]; then
    nbdcopy "$(uri vm1@s2)" "$WORK/s2-ref.raw" || fail "sync: nbdcopy of s2"
  else
    qemu-img compare -q -f raw -F raw "$(uri vm1@s2)" "$WORK/s2-ref.raw" ||
      fail "$name: snapshot s2 reads differently than under io=sync"
  fi
  if grep -q 'O_DIRECT refused' "$SERVER_LOG"; then
    fail "$name: the plugin could not use O_DIRECT on $fstype"
  fi
  stop_server
}

snapshot sync io=sync
[ "$(wc -l <"$WORK/sync.dump")" -gt 1000 ] || fail "the reference dump is too short"
for mode in "auto" "uring" "auto cache=none" "sync cache=none" "uring cache=none"; do
  set -- $mode
  name=${mode// /-}
  args=(io=$1)
  [ $# -gt 1 ] && args+=("$2")
  snapshot "$name" "${args[@]}"
  cmp "$WORK/sync.raw" "$WORK/$name.raw" || fail "io=$mode: whole-disk copy differs from io=sync"
  cmp "$WORK/sync.dump" "$WORK/$name.dump" || fail "io=$mode: unaligned reads differ from io=sync"
  echo "io=$mode: same bytes as io=sync"
done
# And the disk is what was written (not just the same in every mode): a byte of round 4's
# first write and of the last write.
od -An -tx1 -j $((4 * 777777 + 3)) -N1 "$WORK/sync.raw" | grep -q 44 || fail "round 4 data missing"
od -An -tx1 -j $((2 * 1048576 + 200)) -N1 "$WORK/sync.raw" | grep -q 77 || fail "last write missing"
check_template_unchanged
