#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Bad input to the cowchain command: each case exits non-zero, prints exactly one line on
# stderr, starting "cowchain: " and containing the expected words, and changes nothing.
source "$(dirname "$0")/../lib/functions.sh"
requires_cowchain

# bad EXPECTED-REGEX CMD...: CMD fails with one stderr line matching EXPECTED-REGEX.
bad() {
  local want=$1 rc=0
  shift
  "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  [ $rc -ne 0 ] || fail "succeeded: $*"
  [ $rc -lt 124 ] || fail "crashed (exit $rc): $*"
  [ "$(wc -l <"$WORK/err")" -eq 1 ] || {
    cat "$WORK/err" >&2
    fail "not exactly one stderr line: $*"
  }
  grep -Eq "^cowchain: .*$want" "$WORK/err" || {
    cat "$WORK/err" >&2
    fail "stderr lacks /$want/: $*"
  }
}

# No pool at all, and a directory that is not a pool.
(unset COWCHAIN_POOL; bad 'no pool: pass --pool DIR or set COWCHAIN_POOL' "$COWCHAIN" clone list)
bad 'not a cowchain pool' "$COWCHAIN" --pool "$WORK" clone list
bad "unknown command 'frobnicate'" "$COWCHAIN" --pool "$POOL" frobnicate
bad "unknown option '--bogus'" "$COWCHAIN" --bogus
bad "--pool needs a directory" "$COWCHAIN" --pool

cc pool init
bad 'already a pool' cc pool init
truncate -s 1M "$WORK/disk.raw"
cc template import base "$WORK/disk.raw"
cc clone create vm1 --from base
cc snapshot create vm1 s1
cp -a "$POOL" "$WORK/pool.before"

# Names.
bad "clone create: vm1: already exists" cc clone create vm1 --from base
bad "clone create: base: already exists \(a template\)" cc clone create base --from base
bad "template create: vm1: already exists \(a clone\)" cc template create vm1 --size 1M
bad "'\.\.': name must start with a letter or digit" cc clone create .. --from base
bad "'a/b': name may contain only" cc clone create a/b --from base
bad "'-x'|unknown option" cc clone create -x --from base
bad "longer than 64" cc clone create "$(printf 'a%.0s' $(seq 65))" --from base
bad "snapshot name" cc snapshot create vm1 'bad name'
bad "'vm1@s1@x'|more than one '@'" cc clone create c2 --from vm1@s1@x
bad "nope: no such clone or template" cc clone create c2 --from nope
bad "vm1@nope: no such snapshot" cc clone create c2 --from vm1@nope
bad "vm1: is a clone; clone from a snapshot" cc clone create c2 --from vm1
bad "vm9: no such clone" cc clone delete vm9
bad "vm9: no such clone" cc snapshot create vm9 s
bad "vm1@s1: already exists" cc snapshot create vm1 s1
bad "vm1@s9: no such snapshot" cc snapshot revert vm1 s9
bad "vm1@s9: no such snapshot" cc snapshot delete vm1 s9
bad "vm1@s9: no such snapshot" cc snapshot info vm1 s9
bad "vm9: no such clone or template" cc info vm9
bad "vm9: no such clone or template" cc export vm9 "$WORK/x.raw"
bad "nope: no such template" cc template delete nope

# Sizes and formats.
bad "bad size '12Q'" cc template create t --size 12Q
bad "bad size ''" cc template create t --size ''
bad "bad size '-5'" cc template create t --size -5
bad "bad size '0'" cc template create t --size 0
bad "bad size '99999999999T'" cc template create t --size 99999999999T
bad "--size is required" cc template create t
bad "--from is required" cc clone create c2
bad "unknown format 'zip'" cc template import t "$WORK/disk.raw" --format zip
bad "unknown format 'vmdk'" cc export vm1 "$WORK/x" --format vmdk
bad "No such file or directory" cc template import t "$WORK/missing.raw"
qemu-img create -q -f qcow2 "$WORK/q.qcow2" 1M 2>/dev/null && \
  bad "looks like qcow2; add --format qcow2" cc template import t "$WORK/q.qcow2"
bad "template import: /dev/null: not a regular file or block device" cc template import t /dev/null --format raw
: >"$WORK/empty.raw"
bad "empty image" cc template import t "$WORK/empty.raw"

bad "inside the pool" cc export vm1 "$POOL/images/base.raw"
bad "inside the pool" cc export vm1 "$POOL/x.raw"

# Usage.
bad "missing arguments \(usage: cowchain snapshot create CLONE\[,CLONE\.\.\.\] SNAP" cc snapshot create vm1
bad "unexpected argument 'extra'" cc clone list extra
bad "option '--format' needs a value" cc export vm1 "$WORK/x" --format
bad "option '--json' takes no value" cc clone list --json=yes
bad "unknown subcommand 'frob'" cc snapshot frob
bad "unknown subcommand 'frob'" cc template frob
bad "bad port 'http'" cc serve --port http
bad "the pool is given with --pool" cc serve pool=/x

# Nothing changed (records, layers, images, no tmp/ leftovers).
diff -r "$POOL" "$WORK/pool.before" || fail "a failed command changed the pool"
has ', 0 errors, 0 leaks' cc check || fail "check not clean"
