#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# template import of untrusted images (POOL.md 5.1): every image that names another file is
# refused with one line, the pool is unchanged and no byte of the named file reaches it;
# format mismatches, truncated images and size bombs are refused before anything is written;
# --allow-backing flattens a real two-layer qcow2 chain; a path with commas imports.
source "$(dirname "$0")/../lib/functions.sh"
requires qemu-img
requires qemu-io
requires_cowchain

HOST=$WORK/host # stands for the rest of the host: files the importer can read
mkdir -p "$HOST"
MARK="cowchain-secret-$$-$RANDOM-$RANDOM"
# A 1 MiB "host file" with the marker at several offsets (0, 64K, 512K).
secret_file() {
  rm -f "$1"
  truncate -s 1M "$1"
  for off in 0 64 512; do
    printf '%s\n' "$MARK" | dd of="$1" bs=1K seek=$off conv=notrunc status=none
  done
}
SECRET=$HOST/secret.txt
secret_file "$SECRET"

cc pool init
truncate -s 1M "$WORK/ok.raw"
cc template import base "$WORK/ok.raw"

# A listing (path, type, size, mode) and the checksum of every file of the pool.
pool_state() {
  (cd "$POOL" && find . -printf '%p %y %s %m\n' | sort && find . -type f | sort | xargs -r sha256sum)
}

# refused WHAT FILE FORMAT PATTERN [import args...]: exit non-zero, one line on stderr that names
# FILE's basename and matches PATTERN, pool unchanged, marker nowhere in the pool.
refused() {
  local what=$1 file=$2 fmt=$3 pattern=$4
  shift 4
  pool_state >"$WORK/before"
  if cc template import evil "$file" --format "$fmt" "$@" 2>"$WORK/err"; then
    fail "$what: imported"
  fi
  [ "$(wc -l <"$WORK/err")" -eq 1 ] || fail "$what: not one line: $(cat "$WORK/err")"
  grep -qF -- "$(basename "$file")" "$WORK/err" || fail "$what: message does not name the image"
  grep -qE -- "$pattern" "$WORK/err" || fail "$what: message '$(cat "$WORK/err")' !~ $pattern"
  pool_state >"$WORK/after"
  diff "$WORK/before" "$WORK/after" >&2 || fail "$what: the pool changed"
  if grep -rqF -- "$MARK" "$POOL"; then
    fail "$what: bytes of the referenced file are in the pool"
  fi
  echo "refused ($what): $(cat "$WORK/err")"
}

# 1. qcow2 with a backing file (the issue's example).
qemu-img create -q -f qcow2 -b "$SECRET" -F raw "$WORK/backing.qcow2" 1M
refused "qcow2 backing file" "$WORK/backing.qcow2" qcow2 "backing file .*secret.txt.*--allow-backing"

# 2. qcow2 with an external data file (raw data file, metadata preallocated: the image's
#    clusters map straight onto the host file).  qemu-img create truncates the data file, so
#    the secret is written into it afterwards.
qemu-img create -q -f qcow2 -o "data_file=$HOST/data.img,data_file_raw=on,preallocation=metadata" \
  "$WORK/datafile.qcow2" 1M
secret_file "$HOST/data.img"
qemu-img convert -O raw "$WORK/datafile.qcow2" "$HOST/probe.raw"
grep -qF "$MARK" "$HOST/probe.raw" || fail "setup: qemu-img does not read the data file"
refused "qcow2 data file" "$WORK/datafile.qcow2" qcow2 "data file .*data.img"

# 3. VMDK descriptors whose flat extent names a host file (CVE-2022-47951).
for type in monolithicFlat twoGbMaxExtentFlat; do
  cat >"$WORK/$type.vmdk" <<EOF
# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="$type"

RW 2048 FLAT "$SECRET" 0

ddb.virtualHWVersion = "4"
ddb.adapterType = "ide"
EOF
  refused "vmdk $type extent" "$WORK/$type.vmdk" vmdk "VMDK extent .*secret.txt"
done

# 4. A VMDK descriptor whose sparse extent is a VMDK somewhere else on the host.
qemu-img convert -O vmdk -o subformat=monolithicSparse "$SECRET" "$HOST/hidden.vmdk"
cat >"$WORK/sparse-desc.vmdk" <<EOF
# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="twoGbMaxExtentSparse"

RW 2048 SPARSE "$HOST/hidden.vmdk"

ddb.virtualHWVersion = "4"
ddb.adapterType = "ide"
EOF
refused "vmdk sparse extent" "$WORK/sparse-desc.vmdk" vmdk "VMDK extent .*hidden.vmdk"

# 5. A VMDK with a parent (a sparse VMDK's parentFileNameHint).
qemu-img create -q -f vmdk -b "$HOST/hidden.vmdk" -F vmdk "$WORK/child.vmdk" 1M
refused "vmdk parent" "$WORK/child.vmdk" vmdk "backing file .*hidden.vmdk"

# 6. vhdx and vdi with a parent: qemu-img cannot make one ("Backing file not supported for file
#    format") and qemu cannot read one, so there is nothing to refuse; prove that stays true.
for f in vdi vhdx; do
  if qemu-img create -q -f $f -b "$HOST/hidden.vmdk" -F vmdk "$WORK/child.$f" 1M 2>/dev/null; then
    fail "qemu-img now makes $f images with a parent: add them to this test"
  fi
done

# 7. A json: backing file name, and a json: FILE.
qemu-img create -q -f qcow2 -u -F raw \
  -b "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$SECRET\"}}" \
  "$WORK/json-backing.qcow2" 1M
refused "json: backing file" "$WORK/json-backing.qcow2" qcow2 "backing file 'json:"
pool_state >"$WORK/before"
if cc template import evil "json:{\"driver\":\"raw\",\"file\":{\"filename\":\"$SECRET\"}}" \
  --format qcow2 2>"$WORK/err"; then
  fail "json: FILE imported"
fi
grep -q "json: or protocol name" "$WORK/err" || fail "json: FILE: $(cat "$WORK/err")"
pool_state | diff "$WORK/before" - >&2 || fail "json: FILE: the pool changed"

# 8. A detected format other than --format; a truncated image.
qemu-img create -q -f qcow2 "$WORK/plain.qcow2" 4M
qemu-io -f qcow2 -c 'write -P 0x5a 0 2M' "$WORK/plain.qcow2" >/dev/null
refused "format mismatch" "$WORK/plain.qcow2" vmdk "is qcow2, not vmdk"
head -c 300000 "$WORK/plain.qcow2" >"$WORK/truncated.qcow2"
refused "truncated qcow2" "$WORK/truncated.qcow2" qcow2 "qemu-img"
printf 'QFI\xfbgarbage' >"$WORK/garbage.qcow2"
refused "malformed qcow2" "$WORK/garbage.qcow2" qcow2 "qemu-img"

# 8b. A virtual size beyond the layer format's 4 EiB limit.  qemu's own formats stop below it
#     (qcow2 at 2^61), so a qemu-img that reports one stands in for a future format.
mkdir -p "$WORK/fakebin"
cat >"$WORK/fakebin/qemu-img" <<'EOF'
#!/bin/sh
[ "$1" = info ] || exec /usr/bin/qemu-img "$@"
printf '{"virtual-size": 9223372036854775296, "filename": "%s", "format": "qcow2"}\n' "$4"
EOF
chmod +x "$WORK/fakebin/qemu-img"
PATH=$WORK/fakebin:$PATH refused "format limit" "$WORK/plain.qcow2" qcow2 "beyond the 4 EiB limit"

# 9. Size bombs: a pool on a 16 MiB file system refuses an image holding 32 MiB of data
#    before writing, and imports a 1 GiB image holding 1 MiB (the copy is sparse).
requires mount
mkdir -p "$WORK/small"
mount -t tmpfs -o size=16m cowchain-test "$WORK/small" || fail "cannot mount a tmpfs (root?)"
on_exit "umount '$WORK/small'"
qemu-img create -q -f qcow2 "$WORK/big-data.qcow2" 64M
qemu-io -f qcow2 -c 'write -P 0x61 0 32M' "$WORK/big-data.qcow2" >/dev/null
qemu-img create -q -f qcow2 "$WORK/big-sparse.qcow2" 1G
qemu-io -f qcow2 -c 'write -P 0x62 512M 1M' "$WORK/big-sparse.qcow2" >/dev/null
POOL=$WORK/small/pool
cc pool init
refused "size bomb" "$WORK/big-data.qcow2" qcow2 "needs [0-9]+ bytes of data, the pool has [0-9]+ free"
cc template import sparse "$WORK/big-sparse.qcow2" --format qcow2
qemu-img compare -q -f raw -F qcow2 "$POOL/images/sparse.raw" "$WORK/big-sparse.qcow2" ||
  fail "sparse import differs"
POOL=$WORK/pool

# 10. --allow-backing flattens a real two-layer chain: base (0x11 at 0, 0x22 at 2M) under top
#     (0x33 over 1M..3M), with a relative backing link.
mkdir -p "$WORK/chain"
qemu-img create -q -f qcow2 "$WORK/chain/base.qcow2" 8M
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x22 2M 2M' "$WORK/chain/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$WORK/chain/top.qcow2" 8M
qemu-io -f qcow2 -c 'write -P 0x33 1M 2M' "$WORK/chain/top.qcow2" >/dev/null
refused "own chain without --allow-backing" "$WORK/chain/top.qcow2" qcow2 "--allow-backing"
cc template import flat "$WORK/chain/top.qcow2" --format qcow2 --allow-backing
qemu-img compare -q -f raw -F qcow2 "$POOL/images/flat.raw" "$WORK/chain/top.qcow2" ||
  fail "--allow-backing: the flattened template differs from the chain"
qemu-io -f raw -r -c 'read -P 0x22 3M 1M' "$POOL/images/flat.raw" | grep -q 'read 1048576' ||
  fail "--allow-backing: base data missing"
# --allow-backing still checks the format.
refused "format mismatch with --allow-backing" "$WORK/chain/top.qcow2" vdi "is qcow2, not vdi" \
  --allow-backing

# 11. Commas in the path are escaped for --image-opts.
mkdir -p "$WORK/a,b"
cp "$WORK/plain.qcow2" "$WORK/a,b/disk,1.qcow2"
cc template import commas "$WORK/a,b/disk,1.qcow2" --format qcow2
qemu-img compare -q -f raw -F qcow2 "$POOL/images/commas.raw" "$WORK/a,b/disk,1.qcow2" ||
  fail "comma path: imported data differs"

cc check
