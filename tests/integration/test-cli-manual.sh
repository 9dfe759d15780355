#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The manual (issue 18 item 5), through the installed tree:
# - `cmake --install` puts cowchain(1), the plugin's page, the bash completion and the systemd
#   units under the prefix; cowchain(1) has the sections a man page needs and documents every
#   command and every option that the commands' own --help lists (so a new option without a
#   manual entry fails here);
# - the installed completion, sourced alone, completes commands, subcommands, options and the
#   pool's names (templates, clones, CLONE@SNAP) from COMP_WORDS/COMP_CWORD, and from
#   COMP_LINE/COMP_POINT where bash splits CLONE@SNAP at '@';
# - --json of every listing and info command parses with jq and has the documented keys, in
#   the documented order (the man page calls them stable).
source "$(dirname "$0")/../lib/functions.sh"
requires cmake
requires jq
requires pod2man
requires podchecker
setup_pool
cc snapshot create vm1 s1 --description "first"
cc snapshot create vm1 s2
cc clone create web --from vm1@s1
cc template create blank --size 1M

say "cmake --install"
INST=$WORK/inst
cmake --install "$BUILDDIR" --prefix "$INST" >"$WORK/install.out" 2>&1 || {
  cat "$WORK/install.out"
  fail "cmake --install"
}
MAN=$INST/share/man/man1/cowchain.1
COMPL=$INST/share/bash-completion/completions/cowchain
for f in bin/cowchain share/man/man1/cowchain.1 share/man/man1/nbdkit-cowchain-plugin.1 \
  share/bash-completion/completions/cowchain lib/systemd/system/cowchain@.service \
  lib/systemd/system/cowchain@.socket; do
  [ -s "$INST/$f" ] || fail "cmake --install did not install $f"
done
grep -qx "ExecStart=$INST/bin/cowchain --pool %f serve" "$INST/lib/systemd/system/cowchain@.service" ||
  fail "the service does not run the installed cowchain"

say "cowchain(1)"
podchecker "$SRCDIR/docs/cowchain.pod" >/dev/null 2>&1 || fail "podchecker: $(podchecker "$SRCDIR/docs/cowchain.pod" 2>&1)"
for s in NAME SYNOPSIS DESCRIPTION COMMANDS "JSON OUTPUT" "EXIT STATUS" ENVIRONMENT FILES EXAMPLES "SEE ALSO"; do
  grep -q "^\.SH \"$s\"" "$MAN" || grep -q "^\.SH $s\$" "$MAN" || fail "cowchain(1) lacks the section $s"
done
POD=$SRCDIR/docs/cowchain.pod
# Every command of `cowchain --help`, with each option its own --help shows.
"$COWCHAIN" --help | sed -n 's/^  //p' | tr '|' '\n' | sed 's/^ *//' | awk '{print $1, $2}' |
  grep -E '^(pool|template|clone|snapshot|info|check|export|du|disk-xml|serve)\b' | sort -u >"$WORK/cmds"
n=0
while read -r a b; do
  case "$a" in pool | template | clone | snapshot) c="$a $b" ;; *) c=$a ;; esac
  "$COWCHAIN" $c --help >"$WORK/help.out" 2>&1 || fail "$c --help"
  grep -q "^=head2 $c\b" "$POD" || fail "cowchain(1) has no entry for '$c'"
  for o in $(head -n 1 "$WORK/help.out" | grep -o -- '--[a-z-]*' | sort -u); do
    grep -q -- "$o" "$POD" || fail "cowchain(1) does not mention $c $o"
  done
  n=$((n + 1))
done <"$WORK/cmds"
[ $n -ge 20 ] || fail "only $n commands found in cowchain --help"
for v in COWCHAIN_POOL COWCHAIN_PLUGIN LISTEN_FDS; do
  grep -q "$v" "$POD" || fail "cowchain(1) does not document \$$v"
done

say "bash completion"
# shellcheck disable=SC1090
source "$COMPL"
complete -p cowchain | grep -q -- "-F _cowchain" || fail "no completion registered"
# comp WORD...: complete the last WORD (COMP_WORDS/COMP_CWORD only, as bash-completion tests do).
comp() {
  COMP_WORDS=("$COWCHAIN" "$@")
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  unset COMP_LINE COMP_POINT
  COMPREPLY=()
  _cowchain
  printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ' | sed 's/ $//'
}
expect() {
  local want=$1 got
  shift
  got=$(comp "$@")
  [ "$got" = "$want" ] || fail "completing '$*': got '$got', want '$want'"
}
expect "check clone" c
expect "create delete list resize" clone ""
expect "add create delete import list promote verify" template ""
expect "--description --help --quiesce --quiesce-timeout" snapshot create vm1 --
expect "--from --full --help --size" clone create new --
expect "--allow-writable --help --uri --verify" template add r --
expect "--deep --help --json --repair" check --
expect "--dev --help --socket --tcp" disk-xml vm1 --
expect "vda vdb vdc vdd" disk-xml vm1 --dev v
expect "qcow2 raw" export vm1 out --format ""
expect "vm1 web" --pool "$POOL" clone delete ""
expect "base blank" --pool "$POOL" template verify b
expect "base blank vm1@s1 vm1@s2" --pool "$POOL" clone create new --from ""
expect "s1 s2" --pool "$POOL" snapshot revert vm1 ""
expect "vm1@s1 vm1@s2" --pool "$POOL" info vm1@
COWCHAIN_POOL=$POOL expect "base blank vm1 vm1@s1 vm1@s2 web" disk-xml ""
# As bash calls it: COMP_LINE/COMP_POINT set, CLONE@SNAP split at '@' in COMP_WORDS.
COMP_WORDBREAKS=${COMP_WORDBREAKS:-$' \t\n"'"'"'@><=;|&(:'}
[[ "$COMP_WORDBREAKS" == *@* ]] || COMP_WORDBREAKS="$COMP_WORDBREAKS@"
COMP_LINE="cowchain --pool $POOL snapshot info vm1 s"
COMP_POINT=${#COMP_LINE}
COMP_WORDS=(cowchain --pool "$POOL" snapshot info vm1 s)
COMP_CWORD=6
_cowchain_cmd=()
PATH=$(dirname "$COWCHAIN"):$PATH _cowchain
[ "${COMPREPLY[*]}" = "s1 s2" ] || fail "COMP_LINE completion of a snapshot: '${COMPREPLY[*]}'"
COMP_LINE="cowchain --pool $POOL export vm1@s"
COMP_POINT=${#COMP_LINE}
COMP_WORDS=(cowchain --pool "$POOL" export vm1 @ s)
COMP_CWORD=6
PATH=$(dirname "$COWCHAIN"):$PATH _cowchain
[ "$(printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ')" = "s1 s2 " ] ||
  fail "COMP_LINE completion after '@' should give the part after it: '${COMPREPLY[*]}'"

say "--json of every listing and info command"
# keys CMD... -- KEYS: the first object's keys, in order.
keys() {
  local want=$1 filter=$2 got
  shift 2
  cc "$@" --json >"$WORK/j.json" || fail "$* --json"
  got=$(jq -c "$filter | keys_unsorted" "$WORK/j.json") || fail "$* --json: not JSON: $(cat "$WORK/j.json")"
  [ "$got" = "$want" ] || fail "$* --json keys: $got, documented: $want"
}
keys '["name","kind","size","created","layer","hash"]' '.[0]' template list
jq -e '.[] | select(.name == "base") | .hash | test("^xxh64-64k:[0-9a-f]{16}$")' "$WORK/j.json" >/dev/null ||
  fail "template list: base has no hash"
jq -e '.[] | select(.name == "blank") | .hash == null and (.layer | length == 36)' "$WORK/j.json" >/dev/null ||
  fail "template list: blank"
keys '["name","size","created","snapshots","top","origin","full"]' '.[0]' clone list
jq -e '[.[] | select(.name == "vm1")][0] | .snapshots == 2 and .origin == "base" and .full == false' \
  "$WORK/j.json" >/dev/null || fail "clone list: vm1"
keys '["name","clone","created","parent","current","children","size","disk_size","layer","description"]' '.[0]' snapshot list vm1
jq -e '.[1].parent == "s1" and .[1].current == true and .[0].description == "first"' "$WORK/j.json" >/dev/null ||
  fail "snapshot list: tree"
keys '["name","clone","created","parent","current","children","size","disk_size","layer","description"]' '.' snapshot info vm1 s1
infokeys='["image","filename","format","virtual-size","actual-size","allocated-size","zero-size","cluster-size","uuid","created","backing-filename","dirty","role"]'
keys "$infokeys" '.' info vm1
keys "$infokeys" '.[2]' info web --backing-chain
jq -e 'length == 3 and .[2].format == "raw" and .[2]["virtual-size"] == 67108864' "$WORK/j.json" >/dev/null ||
  fail "info --backing-chain"
keys '["findings","layers_checked","errors","leaks","repaired","warnings"]' '.' check
jq -e '.errors == 0' "$WORK/j.json" >/dev/null || fail "check --json: errors"
keys '["entries","logical","physical"]' '.' du
keys '["name","kind","virtual-size","own","shared"]' '.entries[0]' du
