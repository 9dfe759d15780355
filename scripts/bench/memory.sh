# SPDX-License-Identifier: BSD-3-Clause
# scripts/bench/memory.sh: server memory with many clones open (sourced by run).
#
# One nbdkit (cowchain, io=uring) serving N clones of deep@s{HIST} (a HIST-snapshot shared
# history), N in MEM_COUNTS, all N connections held open at once by holdconns (each connection
# reads 16 blocks spread over its export); VmRSS, VmHWM and Threads of the server while held.
# Peer: N qemu-nbd processes, one per qcow2 overlay on ov{HIST}.qcow2 (summed).
# Bytes per allocated cluster: RSS of a server whose one client has read one block of every
# cluster of c{MAXDEPTH}, minus the same on c0 (no layers), over the clusters the MAXDEPTH layers
# allocate; the same for qemu-nbd on top{MAXDEPTH} vs top0.

build_holdconns() {
  HOLDCONNS=$RUNDIR/holdconns
  [[ -x $HOLDCONNS ]] && return 0
  # shellcheck disable=SC2046
  cc_c=${CC:-cc}
  $cc_c -O2 -Wall -o "$HOLDCONNS" "$BENCH/holdconns.c" $(pkg-config --cflags --libs libnbd) ||
    die "building holdconns failed"
}

# The sampler: sums over the given /proc/PID/{status,smaps_rollup} files.  PSS counts shared
# pages (libraries) once across processes, so it is the fair sum for N qemu-nbd processes.
MEMSAMPLE="awk '/^(VmRSS|VmHWM|Threads|Pss):/ { s[\$1] += \$2 } END { print s[\"VmRSS:\"], s[\"VmHWM:\"], s[\"Threads:\"], s[\"Pss:\"] }'"

# mem_hold STRIDE PIDS URIS...: hold the connections, sample; prints "rss hwm threads pss" (kB)
mem_hold() {
  local stride=$1 pids=$2 p files=; shift 2
  for p in $pids; do files+=" /proc/$p/status /proc/$p/smaps_rollup"; done
  timeout 600 "$HOLDCONNS" "$stride" "$MEMSAMPLE $files >'$RUNDIR/memsample'" "$@" ||
    die "holdconns failed"
  cat "$RUNDIR/memsample"
}

mem_record() {
  local peer=$1 kind=$2 n=$3 sample=$4 extra=${5:-null}
  local rss hwm thr pss
  read -r rss hwm thr pss <<<"$sample"
  record '{section:"memory", peer:$p, kind:$k, clones:$n, rss_kb:$r, hwm_kb:$h, threads:$t,
           pss_kb:$s, extra:$x}' --arg p "$peer" --arg k "$kind" --argjson n "$n" \
    --argjson r "$rss" --argjson h "$hwm" --argjson t "$thr" --argjson s "${pss:-0}" \
    --argjson x "$extra"
  log "memory $peer $kind n=$n: VmRSS $rss kB, VmHWM $hwm kB, PSS $pss kB, $thr threads"
}

section_memory() {
  local n i uris pids maxn=0 s0 s1 q=$RUNDIR/qcow2 m=$RUNDIR/mem stride
  need_chains
  build_holdconns
  mkdir -p "$m"
  for n in "${MEM_COUNTS[@]}"; do ((n > maxn)) && maxn=$n; done
  for ((i = 1; i <= maxn; i++)); do
    ccli clone create "m$i" --from "deep@s$HIST" >/dev/null || die "clone m$i"
    qemu-img create -q -f qcow2 -F qcow2 -b "$q/ov$HIST.qcow2" "$m/q$i.qcow2" "$TEMPLATE_BYTES"
  done
  stride=$((TEMPLATE_BYTES / 16))

  for n in "${MEM_COUNTS[@]}"; do
    start_nbdkit mem "$PLUGIN" pool="$POOL" io=uring || die "nbdkit"
    if ((n == MEM_COUNTS[0])); then
      mem_record cowchain idle 0 "$(eval "$MEMSAMPLE /proc/${SRV_PID[mem]}/status /proc/${SRV_PID[mem]}/smaps_rollup")"
    fi
    uris=()
    for ((i = 1; i <= n; i++)); do uris+=("$(uri mem "m$i")"); done
    mem_record cowchain clones "$n" "$(mem_hold "$stride" "${SRV_PID[mem]}" "${uris[@]}")"
    stop_server mem

    uris=(); pids=
    for ((i = 1; i <= n; i++)); do
      start_qemu_nbd "mq$i" -r -f qcow2 --aio=io_uring --cache=writeback -x q "$m/q$i.qcow2" ||
        die "qemu-nbd"
      uris+=("$(uri "mq$i" q)"); pids+=" ${SRV_PID[mq$i]}"
    done
    mem_record qemu-nbd clones "$n" "$(mem_hold "$stride" "$pids" "${uris[@]}")"
    stop_all_servers
  done

  # Bytes per allocated cluster (index + maps of MAXDEPTH layers).
  local clusters=$((MAXDEPTH * PER_LAYER))
  start_nbdkit mem "$PLUGIN" pool="$POOL" io=uring || die "nbdkit"
  s0=$(mem_hold "$CLUSTER" "${SRV_PID[mem]}" "$(uri mem c0)")
  stop_server mem
  start_nbdkit mem "$PLUGIN" pool="$POOL" io=uring || die "nbdkit"
  s1=$(mem_hold "$CLUSTER" "${SRV_PID[mem]}" "$(uri mem "c$MAXDEPTH")")
  stop_server mem
  mem_record cowchain per-cluster-base 1 "$s0"
  mem_record cowchain per-cluster-deep 1 "$s1" "$clusters"
  start_qemu_nbd mq -r -f qcow2 --aio=io_uring --cache=writeback -x q "$q/top0.qcow2" || die "qemu-nbd"
  s0=$(mem_hold "$CLUSTER" "${SRV_PID[mq]}" "$(uri mq q)")
  stop_server mq
  start_qemu_nbd mq -r -f qcow2 --aio=io_uring --cache=writeback -x q "$q/top$MAXDEPTH.qcow2" ||
    die "qemu-nbd"
  s1=$(mem_hold "$CLUSTER" "${SRV_PID[mq]}" "$(uri mq q)")
  stop_server mq
  mem_record qemu-nbd per-cluster-base 1 "$s0"
  mem_record qemu-nbd per-cluster-deep 1 "$s1" "$clusters"
}
