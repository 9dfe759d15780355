#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Many cowchain commands at once on one pool: the pool lock serializes their steps, so every
# operation that should succeed does, exactly one of two racing creators of a name wins, and
# the pool checks clean afterwards with no leftovers.
source "$(dirname "$0")/../lib/functions.sh"
requires_cowchain

cc pool init
truncate -s 8M "$WORK/base.raw"
cc template import base "$WORK/base.raw"
for i in 1 2 3 4; do
  cc clone create "vm$i" --from base
done

pids=()
for i in 1 2 3 4; do
  # Per clone: a chain of snapshots, reverts and deletes; in parallel with the other clones.
  (
    set -e
    for s in a b c; do
      cc snapshot create "vm$i" "$s"
    done
    cc snapshot revert "vm$i" a
    cc snapshot delete "vm$i" b
    cc clone create "vm$i-x" --from "vm$i@c"
    cc clone create "vm$i-full" --from "vm$i@a" --full
  ) >"$WORK/worker$i.log" 2>&1 &
  pids+=($!)
done
# Racing creators of one name: exactly one wins, the others say "already exists".
for j in 1 2 3 4 5 6; do
  cc clone create race --from base >"$WORK/race$j.log" 2>&1 &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do
  wait "$p" || failed=$((failed + 1))
done
[ "$failed" -eq 5 ] || {
  cat "$WORK"/worker*.log "$WORK"/race*.log >&2
  fail "expected exactly the 5 losing racers to fail, got $failed failures"
}
[ "$(grep -l 'race: already exists' "$WORK"/race*.log | wc -l)" -eq 5 ] ||
  fail "the losing racers do not say 'already exists'"

[ "$(cc clone list --json | grep -c '"name"')" -eq 13 ] || fail "clone count"
for i in 1 2 3 4; do
  [ "$(cc snapshot list "vm$i" --json | grep -c '"name"')" -eq 2 ] || fail "vm$i snapshots"
done
has ', 0 errors, 0 leaks' cc check || {
  cc check >&2
  fail "check not clean after concurrent operations"
}
[ -z "$(ls "$POOL/tmp")" ] || fail "files left in tmp/"
