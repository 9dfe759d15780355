#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Names, paths and descriptions the user types (or a file in the pool holds) may contain
# newlines, ESC sequences, other control bytes and invalid UTF-8.  Every refusal that echoes one
# is still exactly one stderr line with no control byte in it (the CLI escapes what it prints:
# cli/util.c), nothing raw reaches stdout either, and the refused command changes nothing.
source "$(dirname "$0")/../lib/functions.sh"
requires_cowchain

# Control bytes a terminal would act on (tab and newline are judged separately: the line count).
CTRL='[\x00-\x08\x0b-\x1f\x7f\x80-\xff]'
has_ctrl() {
  LC_ALL=C grep -qaP "$CTRL" "$1"
}

# refused CMD...: CMD fails (not by a signal), prints exactly one line on stderr, starting with
# "cowchain: ", with no control or non-ASCII byte, and nothing raw on stdout.
refused() {
  local rc=0
  "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  local shown
  shown=$(printf '%q ' "$@")
  [ $rc -ne 0 ] || fail "succeeded: $shown"
  [ $rc -lt 124 ] || fail "crashed (exit $rc): $shown"
  if [ "$(wc -l <"$WORK/err")" -ne 1 ] || [ "$(tail -c 1 "$WORK/err" | od -An -c | tr -d ' ')" != '\n' ]; then
    od -c "$WORK/err" | head -20 >&2
    fail "stderr is not exactly one line: $shown"
  fi
  if has_ctrl "$WORK/err"; then
    od -c "$WORK/err" | head -20 >&2
    fail "a control or non-ASCII byte reached stderr: $shown"
  fi
  grep -q '^cowchain: ' "$WORK/err" || {
    cat -v "$WORK/err" >&2
    fail "stderr does not start with 'cowchain: ': $shown"
  }
  if has_ctrl "$WORK/out"; then
    od -c "$WORK/out" | head -20 >&2
    fail "a control or non-ASCII byte reached stdout: $shown"
  fi
}

cc pool init
truncate -s 1M "$WORK/disk.raw"
cc template import base "$WORK/disk.raw"
cc clone create vm1 --from base
cc snapshot create vm1 s1
cp -a "$POOL" "$WORK/pool.before"

names=(
  $'a\nb'                       # the issue's case: two lines
  $'\e[31mred\e[0m'             # a colour sequence
  $'\e]0;owned\a'               # OSC: sets the terminal title
  $'\e[2J\e[H'                  # clears the screen
  $'x\ry'                       # carriage return: overwrites the line
  $'\x01\x08\x7f'               # other control bytes, backspace, DEL
  $'bad\xff\xfe'                # invalid UTF-8
  $'ok\xc3'                     # a truncated UTF-8 sequence
  $'\x9b31m'                    # a C1 CSI byte
  $'vm1\n'                      # a valid name plus a newline
  "$(printf 'a%.0s' $(seq 70))"$'\n\e[1m'  # long, with the bad bytes past the cut
)
for n in "${names[@]}"; do
  # names
  refused cc clone create "$n" --from base
  refused cc clone create c2 --from "$n"
  refused cc clone create c2 --from "vm1@$n"
  refused cc clone create c2 --from "$n@s1"
  refused cc clone delete "$n"
  refused cc template create "$n" --size 1M
  refused cc template import "$n" "$WORK/disk.raw"
  refused cc template promote vm1 "$n"
  refused cc template promote "$n" t2
  refused cc template delete "$n"
  refused cc snapshot create vm1 "$n"
  refused cc snapshot create "$n" s2
  refused cc snapshot list "$n"
  refused cc snapshot info vm1 "$n"
  refused cc snapshot info "$n" s1
  refused cc snapshot revert vm1 "$n"
  refused cc snapshot delete vm1 "$n"
  refused cc info "$n"
  refused cc check "$n"
  refused cc export "$n" "$WORK/x.raw"
  # paths
  refused cc template import t2 "$WORK/$n.raw"
  refused cc export vm1 "$WORK/no/$n/x.raw"
  refused "$COWCHAIN" --pool "$WORK/$n" clone list
  # the words of the command line itself
  refused cc "$n"
  refused cc clone "$n"
  refused cc clone list "--$n"
  refused cc clone create c2 --from base "$n"
  refused cc template create t2 --size "$n"
  refused cc export vm1 "$WORK/x.raw" --format "$n"
done
[ ! -e "$WORK/x.raw" ] || fail "a refused export wrote its file"
diff -r "$WORK/pool.before" "$POOL" >&2 || fail "a refused command changed the pool"
echo "refusals: one clean line each, pool unchanged"

# Accepted strings are shown escaped too: a description with control bytes (stored as given)...
desc=$'evil\e[2J\nsecond line\x07\xff'
cc snapshot create vm1 s2 --description "$desc"
cc snapshot info vm1 s2 >"$WORK/info.txt"
! has_ctrl "$WORK/info.txt" || { cat -v "$WORK/info.txt" >&2; fail "snapshot info printed raw bytes"; }
[ "$(wc -l <"$WORK/info.txt")" -eq 11 ] || { cat -v "$WORK/info.txt" >&2; fail "the description broke the layout"; }
grep -qF 'Description:    evil\x1b[2J\x0asecond line\x07\xff' "$WORK/info.txt" ||
  { cat -v "$WORK/info.txt" >&2; fail "the description is not shown escaped"; }
# (JSON escapes control bytes as \u00NN, passes valid UTF-8 through and turns any other byte
# into U+FFFD, so the output is valid JSON that jq reads back.)
cc snapshot info vm1 s2 --json >"$WORK/info.json"
! LC_ALL=C grep -qaP '[\x00-\x08\x0b-\x1f\x7f]' "$WORK/info.json" ||
  fail "snapshot info --json printed a control byte"
jq -e . "$WORK/info.json" >/dev/null || { cat -v "$WORK/info.json" >&2; fail "snapshot info --json is not valid JSON"; }
cc snapshot create vm1 s3 --description $'caf\xc3\xa9 \xe2\x82\xac \xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80\xe2\x82'
cc snapshot info vm1 s3 --json >"$WORK/info3.json"
[ "$(jq -r .description "$WORK/info3.json")" = $'caf\xc3\xa9 \xe2\x82\xac \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd' ] ||
  { cat -v "$WORK/info3.json" >&2; fail "valid UTF-8 not kept or invalid bytes not replaced in --json"; }
# ...and a finding of check naming a stray file whose name holds them.
touch "$POOL/tmp/"$'stray\e[31m\nfile'
cc check >"$WORK/check.txt"
! has_ctrl "$WORK/check.txt" || { cat -v "$WORK/check.txt" >&2; fail "check printed raw bytes"; }
grep -qF 'tmp/stray\x1b[31m\x0afile: stale file' "$WORK/check.txt" ||
  { cat "$WORK/check.txt" >&2; fail "check does not name the stray file escaped"; }
