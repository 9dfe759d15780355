#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A hand-made layer whose parent link leaves the pool (POOL.md 1, FORMAT.md 4.1): its header
# names ../../outside/secret.raw.  The server refuses the export, the CLI refuses to export it,
# check reports it, and no byte of the outside file is ever read into an answer.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires nbdinfo
requires qemu-img
requires python3
setup_pool

MARK="cowchain-outside-$$-$RANDOM"
mkdir -p "$WORK/outside"
truncate -s 64M "$WORK/outside/secret.raw" # the size the link records, so only the path differs
printf '%s\n' "$MARK" | dd of="$WORK/outside/secret.raw" conv=notrunc status=none

top=$(sed -n 's/^top //p' "$POOL/clones/vm1")
[ -n "$top" ] || fail "no top in the clone record"
layer=$POOL/layers/$top.cow

# set_parent FILE PATH: rewrite both header slots' parent path and checksum (FORMAT.md 4.1).
set_parent() {
  python3 - "$1" "$2" <<'EOF'
import struct, sys
def crc32c(data):
    crc = 0xffffffff
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xffffffff
path, parent = sys.argv[1], sys.argv[2].encode()
with open(path, 'r+b') as f:
    for slot in (0, 4096):
        f.seek(slot)
        s = bytearray(f.read(4096))
        if s[:8] != b'COWCHAIN':
            continue
        hl = struct.unpack_from('<I', s, 12)[0]
        s[hl:] = bytes(4096 - hl)
        s[hl:hl + len(parent)] = parent
        struct.pack_into('<I', s, 100, len(parent))
        struct.pack_into('<I', s, 252, 0)
        struct.pack_into('<I', s, 252, crc32c(bytes(s[:hl + len(parent)])))
        f.seek(slot)
        f.write(s)
EOF
}
set_parent "$layer" ../../outside/secret.raw
# The link resolves where we think it does (the test proves a refusal, not a missing file).
[ -f "$POOL/layers/../../outside/secret.raw" ] || fail "setup: link does not reach the file"

# The server: the chain is refused with a message naming the fault; nothing is served.  (Since
# issue 14 item 8 an export the server cannot open is still listed and connects as an
# "unavailable" export whose every read fails with EIO: no byte of it is data.)
start_server
if nbdcopy "$(uri vm1)" - >"$WORK/copy" 2>"$WORK/err"; then
  fail "server served a chain whose parent leaves the pool"
fi
! grep -qF "$MARK" "$WORK/copy" || fail "the outside file was served"
grep -q "outside" "$SERVER_LOG" || fail "server log does not say why: $(cat "$SERVER_LOG")"
# Read-only opens too (the registry path): the snapshot-less clone via --readonly client.
if qemu-img convert -f raw -O raw "$(uri vm1)" "$WORK/leak.raw" 2>/dev/null; then
  fail "qemu-img read the export"
fi
[ ! -e "$WORK/leak.raw" ] || ! grep -qF "$MARK" "$WORK/leak.raw" || fail "the outside file was served"
# Other exports still work.
nbdinfo --size "$(uri base)" >/dev/null || fail "base no longer served"

# The CLI: export opens the chain through the pool and is refused with one line.
if cc export vm1 "$WORK/out.raw" 2>"$WORK/err"; then
  fail "cowchain export read a chain whose parent leaves the pool"
fi
[ "$(wc -l <"$WORK/err")" -eq 1 ] || fail "export: not one line: $(cat "$WORK/err")"
grep -q "resolves to .*outside" "$WORK/err" || fail "export: $(cat "$WORK/err")"
if [ -e "$WORK/out.raw" ] && grep -qF "$MARK" "$WORK/out.raw"; then
  fail "the outside file was exported"
fi
echo "refused: $(cat "$WORK/err")"

# check reports it as an error (exit 1).
if cc check >"$WORK/check.out" 2>&1; then
  cat "$WORK/check.out"
  fail "check passed a layer whose parent leaves the pool"
fi
grep -q "^error: .*leaves the pool" "$WORK/check.out" || fail "check: $(cat "$WORK/check.out")"

# The same through a layer-kind link and through a symlink in layers/.
set_parent "$layer" "../../outside/$top.cow"
cp "$layer" "$WORK/outside/$top.cow"
if cc export vm1 "$WORK/out2.raw" 2>"$WORK/err"; then
  fail "export followed a layer link out of the pool"
fi
grep -q "outside" "$WORK/err" || fail "layer link: $(cat "$WORK/err")"
set_parent "$layer" ../images/base.raw # repaired: vm1 reads again
cc export vm1 "$WORK/ok.raw" || fail "export after repairing the link"
mv "$layer" "$WORK/outside/real.cow"
ln -s "$WORK/outside/real.cow" "$layer"
if cc export vm1 "$WORK/out3.raw" 2>"$WORK/err"; then
  fail "export followed a symlinked layer out of the pool"
fi
grep -q "outside" "$WORK/err" || fail "symlink: $(cat "$WORK/err")"
cc check >"$WORK/check.out" 2>&1 && fail "check passed a symlinked layer"
grep -q "not a regular file" "$WORK/check.out" || fail "check symlink: $(cat "$WORK/check.out")"
rm "$layer"
mv "$WORK/outside/real.cow" "$layer"
# A layer-kind link of exactly the length of "UUID.cow" whose "uuid" is a path: info must not
# build a path from it (it once took any 36 bytes for a uuid) and check calls it an escape.
fake=../../outside/cowchain-escape-012345 # 36 bytes, so the link is 40 like UUID.cow
[ ${#fake} -eq 36 ] || fail "setup: fake uuid is ${#fake} bytes"
cc snapshot create vm1 s1 >/dev/null # vm1's new top links to a layer: "UUID.cow"
top2=$(sed -n 's/^top //p' "$POOL/clones/vm1")
cp "$layer" "$WORK/outside/${fake#../../outside/}.cow"
set_parent "$POOL/layers/$top2.cow" "$fake.cow"
cc info vm1 --backing-chain --json >"$WORK/info.json" 2>&1 || true
if grep -q '"filename": "[^"]*outside' "$WORK/info.json"; then
  cat "$WORK/info.json"
  fail "info --backing-chain followed a 40-byte link out of the pool"
fi
if cc check >"$WORK/check.out" 2>&1; then
  fail "check passed a 40-byte link that leaves the pool"
fi
grep -q "^error: .*leaves the pool" "$WORK/check.out" || fail "check (40 bytes): $(cat "$WORK/check.out")"
set_parent "$POOL/layers/$top2.cow" "$top.cow" # repaired
cc check >/dev/null || fail "check after repairing the 40-byte link"
check_template_unchanged
