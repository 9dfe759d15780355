#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# qemu-io pattern writes on a clone, straddling 4 KiB sub-cluster and 128 KiB cluster
# boundaries, checked twice: by read -P, and by qemu-img compare against a raw copy of the
# template that got the same commands (an independent oracle).  A fresh clone compares equal
# to its template.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires qemu-io
requires qemu-img
setup_pool
cc clone create fresh --from base

start_server
qemu-img compare -f raw -F raw "$(uri fresh)" "$WORK/base.raw" ||
  fail "a fresh clone differs from its template"
qemu-img compare -f raw -F raw "$(uri base)" "$WORK/base.raw" ||
  fail "the template export differs from its source file"

K=1024
cmds=(
  # inside the 0x11 region: straddle a cluster boundary (128K), keep neighbours
  "write -P 0xa1 $((126 * K)) $((4 * K))"
  # 4 bytes straddling a sub-cluster boundary, unaligned
  "write -P 0xa2 4094 4"
  # 1 byte at the last byte of a cluster, 1 byte at the first of the next
  "write -P 0xa3 $((128 * K - 1)) 1"
  "write -P 0xa4 $((256 * K)) 1"
  # a large write spanning three clusters, unaligned at both ends
  "write -P 0xa5 $((200 * K + 100)) $((300 * K))"
  # a write crossing from template data (0x11) into a template hole (1M)
  "write -P 0xa6 $((1024 * K - 6 * K)) $((12 * K))"
  # into a template hole
  "write -P 0xa7 $((1536 * K + 512)) $((5 * K))"
  # write-zeroes over template data, sub-cluster aligned and not
  "write -z $((640 * K)) $((128 * K))"
  "write -z $((8 * K + 100)) 3000"
  # discard over template data (0x22 at 2M): must read back as zeroes
  "discard $((2048 * K + 128 * K)) $((256 * K))"
  # rewrite part of the zeroed range
  "write -P 0xa8 $((700 * K)) $((4 * K))"
  # the last byte of the disk
  "write -P 0xa9 $((64 * 1024 * K - 1)) 1"
  "flush"
)
args=()
for c in "${cmds[@]}"; do
  args+=(-c "$c")
done
cp --sparse=always "$WORK/base.raw" "$WORK/ref.raw"
qemu-io -f raw "${args[@]}" "$(uri vm1)" || fail "qemu-io writes on vm1 failed"
qemu-io -f raw "${args[@]}" "$WORK/ref.raw" || fail "qemu-io writes on the reference failed"

qemu-io -f raw -r \
  -c "read -P 0x11 $((120 * K)) $((6 * K))" \
  -c "read -P 0xa1 $((126 * K)) $((2 * K - 1))" \
  -c "read -P 0xa3 $((128 * K - 1)) 1" \
  -c "read -P 0xa1 $((128 * K)) $((2 * K))" \
  -c "read -P 0x11 $((130 * K)) $((70 * K))" \
  -c "read -P 0x11 4088 6" \
  -c "read -P 0xa2 4094 4" \
  -c "read -P 0x11 4098 4000" \
  -c "read -P 0xa5 $((200 * K + 100)) $((300 * K))" \
  -c "read -P 0x11 $((500 * K + 100)) $((140 * K - 100))" \
  -c "read -P 0 $((640 * K)) $((60 * K))" \
  -c "read -P 0xa8 $((700 * K)) $((4 * K))" \
  -c "read -P 0 $((704 * K)) $((64 * K))" \
  -c "read -P 0x11 $((768 * K)) $((250 * K))" \
  -c "read -P 0xa6 $((1018 * K)) $((12 * K))" \
  -c "read -P 0 $((1030 * K)) $((506 * K))" \
  -c "read -P 0xa7 $((1536 * K + 512)) $((5 * K))" \
  -c "read -P 0 $((8 * K + 100)) 3000" \
  -c "read -P 0x22 $((2048 * K)) $((128 * K))" \
  -c "read -P 0 $((2176 * K)) $((256 * K))" \
  -c "read -P 0x22 $((2432 * K)) $((640 * K))" \
  -c "read -P 0xa9 $((64 * 1024 * K - 1)) 1" \
  "$(uri vm1)" || fail "read -P after writes on vm1"

qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/ref.raw" ||
  fail "vm1 differs from the reference after the same writes"
# The untouched sibling and the template did not see any of it.
qemu-img compare -f raw -F raw "$(uri fresh)" "$WORK/base.raw" ||
  fail "a sibling clone changed"

# Same again after a restart with io=sync: what was written is durable and reads the same.
stop_server
start_server -- io=sync
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/ref.raw" ||
  fail "vm1 differs from the reference after a restart (io=sync)"
# Several requests in flight on one connection.
qemu-io -f raw -c "aio_write -P 0xb1 $((4096 * K)) $((64 * K))" \
  -c "aio_write -P 0xb2 $((4160 * K)) $((64 * K))" \
  -c "aio_write -P 0xb3 $((4224 * K + 7)) $((64 * K))" -c aio_flush \
  -c "read -P 0xb1 $((4096 * K)) $((64 * K))" -c "read -P 0xb2 $((4160 * K)) $((64 * K))" \
  -c "read -P 0xb3 $((4224 * K + 7)) $((64 * K))" "$(uri vm1)" ||
  fail "aio writes on vm1"
check_template_unchanged
