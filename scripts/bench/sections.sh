# SPDX-License-Identifier: BSD-3-Clause
# scripts/bench/sections.sh: depth series, writes, many clients, io_uring ablation (sourced by run).
#
# Peers (names used in the results):
#   cc-uring    nbdkit + cowchain plugin, io=uring
#   cc-sync     nbdkit + cowchain plugin, io=sync
#   qemu-nbd    qemu-nbd --aio=io_uring --cache=writeback -f qcow2 on the equivalent qcow2 chain
#   nbd-file    nbdkit file plugin on the raw template (the ceiling for any nbdkit plugin)
#   qemu-nbd-el2, qemu-nbd-el2-128k   (writes) qcow2 overlays with extended_l2=on, 64 / 128 KiB clusters

READ_PEERS=(cc-uring cc-sync qemu-nbd)

# start_read_peer ID PEER DEPTH: starts the server, sets PEER_URI (not in a subshell: the
# server table lives in this shell).
start_read_peer() {
  local id=$1 peer=$2 d=$3
  case $peer in
    cc-uring) start_nbdkit "$id" "$PLUGIN" pool="$POOL" io=uring && PEER_URI=$(uri "$id" "c$d") ;;
    cc-sync) start_nbdkit "$id" "$PLUGIN" pool="$POOL" io=sync && PEER_URI=$(uri "$id" "c$d") ;;
    qemu-nbd)
      start_qemu_nbd "$id" -r -f qcow2 --aio=io_uring --cache=writeback -x top \
        "$RUNDIR/qcow2/top$d.qcow2" && PEER_URI=$(uri "$id" top) ;;
    nbd-file) start_nbdkit "$id" -r file file="$TEMPLATE" && PEER_URI=$(uri "$id" "") ;;
  esac
}

section_depth() {
  local d peer round peers order
  need_chains
  log "depth series: ${DEPTHS[*]}; peers ${READ_PEERS[*]} + nbd-file; ${RUNTIME}s per run," \
    "$ROUNDS round(s), depth and peer order alternating"
  for ((round = 1; round <= ROUNDS; round++)); do
    # Odd rounds go up in depth, even rounds down, and the peer order flips too, so no depth
    # or peer is always measured in the same part of the run.  The file plugin (the ceiling)
    # is measured next to depth DEPTHS[0], the point it is compared with.
    order=("${DEPTHS[@]}")
    ((round % 2 == 0)) && order=($(printf '%s\n' "${DEPTHS[@]}" | tac))
    for d in "${order[@]}"; do
      peers=("${READ_PEERS[@]}")
      ((d == DEPTHS[0])) && peers+=(nbd-file)
      ((round % 2 == 0)) && peers=($(printf '%s\n' "${peers[@]}" | tac))
      for peer in "${peers[@]}"; do
        # Each server gets one warm-up (first open, index build), before its first workload.
        start_read_peer p "$peer" "$d" || die "$peer did not start"
        [[ $peer == nbd-file ]] && d=0
        ROUND=$round measure depth "$peer" "$d" seqread "${SRV_PID[p]}" "$PEER_URI"
        ROUND=$round WARMUP=0 measure depth "$peer" "$d" randread "${SRV_PID[p]}" "$PEER_URI"
        [[ $peer == nbd-file ]] && d=${DEPTHS[0]}
        stop_server p
      done
    done
  done
}

# Writes: 4 KiB first writes (one per 128 KiB cluster: every one a would-be copy-up) and 4 KiB
# random writes, each into a fresh clone / fresh overlay / the raw copy; both end with a flush
# (fio end_fsync), so deferred metadata work is paid inside the measurement.
section_writes() {
  local peer wl u id n fw_ios
  need_pool
  fw_ios=$((TEMPLATE_BYTES / CLUSTER))
  WL[firstwrite]="--rw=write:$((CLUSTER / 1024 - 4))k --bs=4k --iodepth=32 --io_size=$((fw_ios * 4))k"
  mkdir -p "$RUNDIR/writes"
  cp --sparse=never "$TEMPLATE" "$RUNDIR/writes/raw-copy.raw"
  # Write the copy back now, or its 1 GiB of dirty pages is flushed during the measurements.
  sync "$RUNDIR/writes/raw-copy.raw"
  n=0
  local round
  for ((round = 1; round <= WRITE_ROUNDS; round++)); do
  for wl in firstwrite randwrite; do
    for peer in "${WRITE_PEERS[@]}"; do
      n=$((n + 1)); id=w$n
      local tcase; tcase=$(now_ns)
      case $peer in
        cc-*)
          ccli clone create "w$n" --from base >/dev/null || die "clone w$n"
          start_nbdkit "$id" "$PLUGIN" pool="$POOL" io="${peer#cc-}" || die "nbdkit"
          u=$(uri "$id" "w$n") ;;
        qemu-nbd*)
          local o=
          [[ $peer == qemu-nbd-el2 ]] && o="-o extended_l2=on"
          [[ $peer == qemu-nbd-el2-128k ]] && o="-o extended_l2=on,cluster_size=128k"
          # shellcheck disable=SC2086
          qemu-img create -q -f qcow2 $o -F raw -b "$TEMPLATE" "$RUNDIR/writes/w$n.qcow2" \
            "$TEMPLATE_BYTES" || die "qemu-img create"
          start_qemu_nbd "$id" -f qcow2 --aio=io_uring --cache=writeback -x w \
            "$RUNDIR/writes/w$n.qcow2" || die "qemu-nbd"
          u=$(uri "$id" w) ;;
        nbd-file)
          start_nbdkit "$id" file file="$RUNDIR/writes/raw-copy.raw" || die "nbdkit file"
          u=$(uri "$id" "") ;;
      esac
      ROUND=$round WARMUP=0 measure writes "$peer" 1 "$wl" "${SRV_PID[$id]}" "$u" --end_fsync=1
      stop_server "$id"
      # Not deleted here: freeing a 1 GiB file of 4 KiB-in-64 KiB extents took over a minute
      # on the shared disk.  The run directory goes at the end.
      log "writes $wl $peer: case took $(( ($(now_ns) - tcase) / 1000000 )) ms"
    done
  done
  done
}

# Many clients: NCLIENTS fio jobs at once, each on its own clone of the template (its own NBD
# connection), aggregate 4 KiB random-read IOPS.
section_clients() {
  local peer i id u pids args
  need_pool
  mkdir -p "$RUNDIR/clients"
  for ((i = 1; i <= NCLIENTS; i++)); do
    ccli clone create "mc$i" --from base >/dev/null || die "clone mc$i"
    qemu-img create -q -f qcow2 -F raw -b "$TEMPLATE" "$RUNDIR/clients/q$i.qcow2" \
      "$TEMPLATE_BYTES" || die "qemu-img create"
  done
  warm_files "$TEMPLATE" "$POOL"/images/*
  for peer in cc-uring cc-sync qemu-nbd nbd-file; do
    args=(); pids=
    case $peer in
      cc-*)
        start_nbdkit mc "$PLUGIN" pool="$POOL" io="${peer#cc-}" || die "nbdkit"
        pids=${SRV_PID[mc]}
        for ((i = 1; i <= NCLIENTS; i++)); do args+=(--name="j$i" --uri="$(uri mc "mc$i")"); done ;;
      qemu-nbd)
        for ((i = 1; i <= NCLIENTS; i++)); do
          start_qemu_nbd "mq$i" -r -f qcow2 --aio=io_uring --cache=writeback -x q \
            "$RUNDIR/clients/q$i.qcow2" || die "qemu-nbd $i"
          pids+=" ${SRV_PID[mq$i]}"
          args+=(--name="j$i" --uri="$(uri "mq$i" q)")
        done ;;
      nbd-file)
        start_nbdkit mc -r file file="$TEMPLATE" || die "nbdkit file"
        pids=${SRV_PID[mc]}
        for ((i = 1; i <= NCLIENTS; i++)); do args+=(--name="j$i" --uri="$(uri mc "")"); done ;;
    esac
    measure_multi clients "$peer" "$pids" "${args[@]}"
    stop_all_servers
  done
}

# measure_multi SECTION PEER PIDS JOBARGS...: one fio process, NCLIENTS jobs (one connection
# each), 4 KiB random reads, group reporting; server CPU summed over PIDS.
measure_multi() {
  local section=$1 peer=$2 pids=$3; shift 3
  local out c0 c1 t0 t1
  out=$RUNDIR/fio-$section-$peer.json
  # shellcheck disable=SC2086
  if ((WARMUP > 0)); then
    fio_job /dev/null ${WL[randread]} --runtime="$WARMUP" --time_based "$@" || die "fio warm-up"
  fi
  # shellcheck disable=SC2086
  c0=$(cpu_ticks $pids); t0=$(now_ns)
  # shellcheck disable=SC2086
  fio_job "$out" ${WL[randread]} --runtime="$RUNTIME" --time_based --group_reporting "$@" ||
    die "fio failed: $section $peer"
  # shellcheck disable=SC2086
  t1=$(now_ns); c1=$(cpu_ticks $pids)
  record_fio "$section" "$peer" 0 randread "$out" $((c1 - c0)) $((t1 - t0)) "$NCLIENTS"
}

# io_uring ablation: the uring/sync ratios come from the runs above (report.py); here, at each
# depth in ABL_DEPTHS, syscalls per I/O (perf stat on raw_syscalls:sys_enter) and a perf profile
# of each mode under 4 KiB random reads and 1 MiB sequential reads.
section_ablation() {
  local mode wl u pid out n d secs
  need_chains
  command -v perf >/dev/null || { log "perf not installed: no profiles"; return 0; }
  secs=$((RUNTIME > 2 ? RUNTIME - 1 : 1))
  for d in "${ABL_DEPTHS[@]}"; do
    for wl in randread seqread; do
      for mode in uring sync; do
        start_read_peer a "cc-$mode" "$d" || die "nbdkit"
        pid=${SRV_PID[a]} u=$PEER_URI
        # shellcheck disable=SC2086
        fio_job /dev/null --name=warm --uri="$u" ${WL[$wl]} --runtime=1 --time_based || die "fio"
        out=$RUNDIR/perf-$wl-$mode-$d
        # shellcheck disable=SC2086
        fio_job "$out.fio.json" --name=m --uri="$u" ${WL[$wl]} --runtime="$RUNTIME" --time_based &
        timeout $((RUNTIME + 30)) perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$out.stat" \
          -- sleep "$secs" 2>/dev/null || true
        wait $! || die "fio (ablation)"
        n=$(awk -F, '/raw_syscalls/ { print $1 }' "$out.stat" 2>/dev/null)
        record_fio ablation "cc-$mode" "$d" "$wl" "$out.fio.json" 0 0
        # syscalls counted over secs, I/Os over RUNTIME: report.py divides rates.
        if [[ $n =~ ^[0-9]+$ ]]; then
          record '{section:"ablation-syscalls", peer:$p, depth:$d, workload:$w, syscalls:$n,
                   seconds:$s}' --arg p "cc-$mode" --argjson d "$d" --arg w "$wl" \
            --argjson n "$n" --argjson s "$secs"
        fi
        if ((!PROFILE)); then stop_server a; continue; fi
        # shellcheck disable=SC2086
        fio_job /dev/null --name=p --uri="$u" ${WL[$wl]} --runtime="$RUNTIME" --time_based &
        timeout $((RUNTIME + 30)) perf record -q -g -p "$pid" -o "$out.data" \
          -- sleep "$secs" >/dev/null 2>&1 || true
        wait $! || die "fio (profile)"
        if [[ -s $out.data ]]; then
          mkdir -p "$OUTDIR"
          {
            echo "# perf record -g -p <nbdkit io=$mode> during fio $wl (${WL[$wl]}), depth $d"
            echo "# flat: perf report --stdio --no-children --sort dso,sym -g none --percent-limit 0.8"
            timeout 120 perf report -i "$out.data" --stdio --no-children --sort dso,sym -g none \
              --percent-limit 0.8 2>/dev/null | grep -v '^$' | grep -v '^# *$' | head -60 || true
            echo
            echo "# call graphs of the entries >= 4% (perf report --sort sym -g caller)"
            timeout 120 perf report -i "$out.data" --stdio --no-children --sort sym -g caller \
              --percent-limit 4 2>/dev/null | grep -v '^$' | grep -v '^#' | head -150 || true
          } >"$OUTDIR/perf-$wl-$mode-d$d.txt"
        fi
        stop_server a
      done
    done
  done
}
