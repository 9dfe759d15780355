#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Issue 14: a live top switch through the control socket under continuous writers on two
# libnbd connections.  Each round, the old top must hold exactly a point-in-time state (every
# write completed before the push command was sent, none issued after its reply), the clone
# the last write of every block, the writers no error and no disconnect; and the same after a
# restart, with `check` clean.  Round 1 uses the crash-safe order for the pool layer (quiesce,
# durable record switch while the gates are closed, push-top: docs/POOL.md section 6), round 2
# a single push-top followed by the record switch.  The write stall is printed.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
setup_pool
CTLC=$BUILDDIR/tests/integration/control-client
JW=$BUILDDIR/tests/integration/nbd-journal-writer
[ -x "$CTLC" ] && [ -x "$JW" ] || skip "control-client or nbd-journal-writer not built"

# What the pool layer will do (issue 14's next step): clones/CLONE gets `top NEW` and a line
# for the old top as snapshot SNAP, replaced atomically and durably.
cat >"$WORK/switch.sh" <<SH
#!/bin/sh
set -e
f=$POOL/clones/\$1
t=$POOL/tmp/record-\$\$
sed "s/^top \$3\\\$/top \$4/" "\$f" >"\$t"
grep -q "^top \$4\\\$" "\$t"
echo "snapshot \$2 \$3 \$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"\$t"
sync "\$t"
mv "\$t" "\$f"
sync "$POOL/clones"
SH
chmod +x "$WORK/switch.sh"

top_uuid() { awk '$1 == "top" { print $2 }' "$POOL/clones/vm1"; }

start_server
CTL=$POOL/run/nbdkit-$SERVER_PID.ctl
for i in $(seq 50); do [ -S "$CTL" ] && break; sleep 0.1; done
[ -S "$CTL" ] || fail "no control socket $CTL"

# Round 1: quiesce, commit, push.
T1=$(top_uuid)
N1=$("$CTLC" --mklayer "$POOL" "$POOL/layers/$T1.cow")
N1U=$(basename "$N1" .cow)
"$JW" write "$SOCK" vm1 4 1500 "$WORK/j1" \
  "$CTLC $CTL -c 'quiesce 5000 vm1' -x '$WORK/switch.sh vm1 s1 $T1 $N1U' -c 'push-top vm1 $N1'" \
  | tee "$WORK/w1.out" || fail "round 1: the writers saw an error"
[ "$(top_uuid)" = "$N1U" ] || fail "round 1: the record was not switched"
"$JW" verify "$SOCK" vm1@s1 "$WORK/j1" frozen || fail "round 1: the snapshot is not point-in-time"
"$JW" verify "$SOCK" vm1 "$WORK/j1" final || fail "round 1: the clone lost writes"

# Round 2: one push-top, then the record.
T2=$N1U
N2=$("$CTLC" --mklayer "$POOL" "$N1")
N2U=$(basename "$N2" .cow)
"$JW" write "$SOCK" vm1 4 1500 "$WORK/j2" "$CTLC $CTL -c 'push-top vm1 $N2'" \
  | tee "$WORK/w2.out" || fail "round 2: the writers saw an error"
"$WORK/switch.sh" vm1 s2 "$T2" "$N2U"
"$JW" verify "$SOCK" vm1@s2 "$WORK/j2" frozen || fail "round 2: the snapshot is not point-in-time"
"$JW" verify "$SOCK" vm1@s1 "$WORK/j1" frozen || fail "round 2: snapshot s1 changed"
"$JW" verify "$SOCK" vm1 "$WORK/j2" final || fail "round 2: the clone lost writes"
# A new connection resolves vm1 to N2 and gets the server's entry, which sits on N2.
requires_client
"$CLIENT" hold "$SOCK" vm1 30 >"$WORK/hold.out" &
holder=$!
for i in $(seq 100); do grep -q open "$WORK/hold.out" 2>/dev/null && break; sleep 0.1; done
"$CTLC" "$CTL" -c held -c "connections vm1" >"$WORK/held.out" || fail "held"
cat "$WORK/held.out"
grep -q "^data vm1 1 $N2 rw\$" "$WORK/held.out" || fail "held does not show vm1 on $N2"
grep -q "^ok 1\$" "$WORK/held.out" || fail "connections vm1 is not 1"

# A push onto a layer that is not on the top is refused and changes nothing.
BAD=$("$CTLC" --mklayer "$POOL" "$POOL/layers/$T1.cow")
if "$CTLC" "$CTL" -c "push-top vm1 $BAD" >"$WORK/bad.out"; then
  fail "push-top accepted a layer whose parent is not the top"
fi
grep -q '^err 22 .*nothing switched' "$WORK/bad.out" || { cat "$WORK/bad.out"; fail "wrong refusal"; }
rm -f "$BAD"
qemu-io -f raw -c 'write -P 0x7e 16M 64k' -c 'read -P 0x7e 16M 64k' "$(uri vm1)" >/dev/null ||
  fail "vm1 not writable after a refused push"
kill "$holder"; wait "$holder" 2>/dev/null || true

# From disk.
stop_server
[ ! -e "$CTL" ] || fail "the control socket outlived its server"
start_server
"$JW" verify "$SOCK" vm1@s1 "$WORK/j1" frozen || fail "after restart: s1"
"$JW" verify "$SOCK" vm1@s2 "$WORK/j2" frozen || fail "after restart: s2"
qemu-io -r -f raw -c 'read -P 0x7e 16M 64k' "$(uri vm1)" >/dev/null || fail "after restart: vm1"
stop_server
cc check || fail "check is not clean after two live snapshots"
grep -h 'write latency' "$WORK/w1.out" "$WORK/w2.out"
check_template_unchanged
