# SPDX-License-Identifier: BSD-3-Clause
# scripts/bench/ops.sh: pool operations as whole commands, timed with date +%s%N (sourced by run).
#
#   clone-create     cowchain clone create --from deep@s{D}   vs  qemu-img create -b ov{D}.qcow2
#   snapshot-create  cowchain snapshot create on a clone of deep@s{D} (N in a row, so the depth
#                    grows from D+1 to D+N)   vs  qemu-img create -b (an external qcow2 snapshot)
#   full-clone       cowchain clone create --full  vs  qemu-img convert -O qcow2  vs  cp --sparse=always
#   export           cowchain export deep@s{D} FILE (raw)  vs  qemu-img convert -O raw of the chain
#   merge            cowchain snapshot delete of a snapshot holding MERGE bytes, into its child
#                    vs  qemu-img rebase -b (safe mode) of the child onto the template
#   open-1T          nbdinfo --size on a clone of a 1 TiB-virtual empty template, against a running
#                    server, and with server start (nbdinfo -- [ server ]), vs qemu-nbd on qcow2
#   open-deep        the same on the depth-D clone (D = OPS_DEEP and MAXDEPTH): for nbdkit every
#                    new connection opens the export; qemu-nbd opens its image once at start, so
#                    its peer number includes the server start

# op_record OP PEER DEPTH MS_LIST [BYTES]
op_record() {
  local op=$1 peer=$2 d=$3 list=$4 bytes=${5:-0}
  jq -cn --arg op "$op" --arg peer "$peer" --argjson d "$d" --argjson b "$bytes" \
    --argjson ms "[$(tr ' ' ',' <<<"$list" | sed 's/^,//; s/,$//')]" '
    ($ms | sort) as $s
    | { section: "ops", op: $op, peer: $peer, depth: $d, n: ($s | length),
        median_ms: (if ($s | length) % 2 == 1 then $s[($s | length - 1) / 2]
                    else ($s[($s | length) / 2 - 1] + $s[($s | length) / 2]) / 2 end),
        min_ms: $s[0], max_ms: $s[-1], bytes: $b,
        mib_s: (if $b > 0 then $b / 1048576 / ($s[0] / 1000) else null end) }' |
    tee -a "$RESULTS" | jq -r '"ops \(.op) \(.peer) d=\(.depth): median \(.median_ms) ms"' >&2
}

section_ops() {
  local d i ms list q=$RUNDIR/qcow2 o=$RUNDIR/ops u t
  need_chains
  mkdir -p "$o"
  for d in 1 "$OPS_DEEP"; do
    list=
    for ((i = 1; i <= OPS_N; i++)); do
      ms=$(time_cmd_ms ccli clone create "oc$d-$i" --from "deep@s$d") || die "clone create"
      list+=" $ms"
    done
    op_record clone-create cowchain "$d" "$list"
    list=
    for ((i = 1; i <= OPS_N; i++)); do
      ms=$(time_cmd_ms qemu-img create -q -f qcow2 -F qcow2 -b "$q/ov$d.qcow2" "$o/x$d-$i.qcow2") ||
        die "qemu-img create"
      list+=" $ms"
    done
    op_record clone-create qemu-img "$d" "$list"
    ccli clone create "os$d" --from "deep@s$d" >/dev/null || die "clone os$d"
    list=
    for ((i = 1; i <= OPS_N; i++)); do
      ms=$(time_cmd_ms ccli snapshot create "os$d" "n$i") || die "snapshot create"
      list+=" $ms"
    done
    op_record snapshot-create cowchain "$d" "$list"
  done

  # Full clone (flatten) of the deepest ops chain.
  d=$OPS_DEEP
  ms=$(time_cmd_ms ccli clone create "full$d" --from "deep@s$d" --full) || die "full clone"
  op_record full-clone cowchain "$d" "$ms" "$TEMPLATE_BYTES"
  ms=$(time_cmd_ms qemu-img convert -f qcow2 -O qcow2 "$q/top$d.qcow2" "$o/full.qcow2") || die "convert"
  op_record full-clone qemu-img-convert "$d" "$ms" "$TEMPLATE_BYTES"
  rm -f "$o/full.qcow2"
  ms=$(time_cmd_ms cp --sparse=always "$TEMPLATE" "$o/full.raw") || die "cp"
  op_record full-clone cp-sparse 0 "$ms" "$TEMPLATE_BYTES"
  rm -f "$o/full.raw"
  ccli clone delete "full$d" >/dev/null 2>&1 || true

  # Export of the same chain to a raw file (sparse) vs qemu-img convert of the qcow2 chain.
  ms=$(time_cmd_ms ccli export "deep@s$d" "$o/export.raw") || die "export"
  op_record export cowchain "$d" "$ms" "$TEMPLATE_BYTES"
  rm -f "$o/export.raw"
  ms=$(time_cmd_ms qemu-img convert -f qcow2 -O raw "$q/top$d.qcow2" "$o/export.raw") ||
    die "convert -O raw"
  op_record export qemu-img-convert "$d" "$ms" "$TEMPLATE_BYTES"
  rm -f "$o/export.raw"

  # Merge: a snapshot holding MERGE bytes deleted into its child.
  local merge=$((TEMPLATE_BYTES / 8))
  printf 'write -q -P 0x5a 0 %s\n' "$merge" >"$o/merge1.cmds"
  printf 'write -q -P 0xa5 %s 1048576\n' "$merge" >"$o/merge2.cmds"
  ccli clone create mg --from base >/dev/null || die "clone mg"
  cc_write mg "$o/merge1.cmds" || die "merge write 1"
  ccli snapshot create mg m1 >/dev/null || die "snapshot m1"
  cc_write mg "$o/merge2.cmds" || die "merge write 2"
  ccli snapshot create mg m2 >/dev/null || die "snapshot m2"
  warm_files "$POOL"/layers/*
  ms=$(time_cmd_ms ccli snapshot delete mg m1) || die "snapshot delete"
  op_record merge cowchain 2 "$ms" "$merge"
  qemu-img create -q -f qcow2 -F raw -b "$TEMPLATE" "$o/m1.qcow2" "$TEMPLATE_BYTES"
  qemu-io -f qcow2 "$o/m1.qcow2" <"$o/merge1.cmds" >/dev/null
  qemu-img create -q -f qcow2 -F qcow2 -b "$o/m1.qcow2" "$o/m2.qcow2" "$TEMPLATE_BYTES"
  qemu-io -f qcow2 "$o/m2.qcow2" <"$o/merge2.cmds" >/dev/null
  ms=$(time_cmd_ms qemu-img rebase -f qcow2 -F raw -b "$TEMPLATE" "$o/m2.qcow2") || die "rebase"
  op_record merge qemu-img-rebase 2 "$ms" "$merge"
  rm -f "$o"/m?.qcow2

  # Open time of a clone of a 1 TiB-virtual template.
  ccli template create big --size 1T >/dev/null || die "template create big"
  ccli clone create bigc --from big >/dev/null || die "clone bigc"
  qemu-img create -q -f qcow2 "$o/big.qcow2" 1T
  qemu-img create -q -f qcow2 -F qcow2 -b "$o/big.qcow2" "$o/bigtop.qcow2" 1T
  start_nbdkit big "$PLUGIN" pool="$POOL" || die "nbdkit"
  start_qemu_nbd bigq -r -f qcow2 -x bigtop "$o/bigtop.qcow2" || die "qemu-nbd"
  for t in cowchain qemu-nbd; do
    list=
    for ((i = 1; i <= OPS_N; i++)); do
      if [[ $t == cowchain ]]; then u=$(uri big bigc); else u=$(uri bigq bigtop); fi
      ms=$(time_cmd_ms nbdinfo --size "$u") || die "nbdinfo"
      list+=" $ms"
    done
    op_record open-1T "$t" 1 "$list"
  done
  stop_server big; stop_server bigq
  list=
  for ((i = 1; i <= OPS_N; i++)); do
    ms=$(time_cmd_ms nbdinfo --size -- [ nbdkit "$PLUGIN" pool="$POOL" default=bigc ]) ||
      die "nbdinfo [ nbdkit ]"
    list+=" $ms"
  done
  op_record open-1T-with-start cowchain 1 "$list"
  list=
  for ((i = 1; i <= OPS_N; i++)); do
    ms=$(time_cmd_ms nbdinfo --size -- [ qemu-nbd -r -f qcow2 "$o/bigtop.qcow2" ]) ||
      die "nbdinfo [ qemu-nbd ]"
    list+=" $ms"
  done
  op_record open-1T-with-start qemu-nbd 1 "$list"

  # Open time of deep clones (what a new client waits for).
  local n=$(( OPS_N < 5 ? OPS_N : 5 ))
  start_nbdkit deep "$PLUGIN" pool="$POOL" || die "nbdkit"
  for d in $(printf '%s\n' "$OPS_DEEP" "$MAXDEPTH" | sort -nu); do
    list=
    for ((i = 1; i <= n; i++)); do
      ms=$(time_cmd_ms nbdinfo --size "$(uri deep "c$d")") || die "nbdinfo c$d"
      list+=" $ms"
    done
    op_record open-deep cowchain "$d" "$list"
    list=
    for ((i = 1; i <= n; i++)); do
      ms=$(time_cmd_ms nbdinfo --size -- [ qemu-nbd -r -f qcow2 "$q/top$d.qcow2" ]) ||
        die "nbdinfo [ qemu-nbd top$d ]"
      list+=" $ms"
    done
    op_record open-deep-with-start qemu-nbd "$d" "$list"
  done
  stop_server deep
}
