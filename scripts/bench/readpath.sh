# SPDX-License-Identifier: BSD-3-Clause
# scripts/bench/readpath.sh: the read path of issue 15 (sourced by run): I/O modes on a warm and
# a cold page cache and with cache=none, open time by depth (first open and reconnect), memory
# per allocated cluster.
#
# Series (one server start per peer and depth, seqread then randread; RP_ROUNDS rounds, the
# peer order flipping, best run counts):
#   warm   every file read once before (need_chains), 1 s warm-up run
#   cold   (--cold) the pages of every file of both chains and of the template are dropped
#          (posix_fadvise DONTNEED after fdatasync: only these files, not the machine's whole
#          page cache, which other people's jobs use) before each measured run; no warm-up
#   none   cache=none peers (cowchain cache=none, qemu-nbd --cache=none --aio=io_uring, nbdkit
#          file cache=none), pages dropped before each run as for cold
# Peers: cc-sync, cc-uring, cc-auto (the plugin with io=...), qemu-nbd (qcow2 chain, writeback
# or none), nbd-file (the raw template; the ceiling).

RP_DEPTHS=(1 64 256)
RP_OPEN_DEPTHS=(1 16 64 256)
RP_ROUNDS=${ROUNDS_OPT:-2} # --rounds; the best run of each peer counts, as in the depth series
((QUICK)) && RP_DEPTHS=(1 16) RP_OPEN_DEPTHS=(1 4 16) RP_ROUNDS=${ROUNDS_OPT:-1}

# Drop the page-cache pages of the bench's own files.
drop_files() {
  /usr/bin/python3 - "$TEMPLATE" "$POOL" "$RUNDIR/qcow2-chain/" "$RUNDIR/qcow2" <<'PY'
import os, sys
for root in sys.argv[1:]:
    paths = [root] if os.path.isfile(root) else [
        os.path.join(d, f) for d, _, fs in os.walk(root, followlinks=True) for f in fs]
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        os.close(fd)
PY
}

# start_rp_peer ID PEER DEPTH SERIES: sets PEER_URI.
start_rp_peer() {
  local id=$1 peer=$2 d=$3 series=$4 cache=() qcache=writeback fcache=()
  if [[ $series == none ]]; then
    cache=(cache=none) qcache=none fcache=(cache=none)
  fi
  case $peer in
    cc-sync | cc-uring | cc-auto)
      start_nbdkit "$id" "$PLUGIN" pool="$POOL" io="${peer#cc-}" "${cache[@]}" &&
        PEER_URI=$(uri "$id" "c$d") ;;
    qemu-nbd)
      start_qemu_nbd "$id" -r -f qcow2 --aio=io_uring --cache=$qcache -x top \
        "$RUNDIR/qcow2/top$d.qcow2" && PEER_URI=$(uri "$id" top) ;;
    nbd-file) start_nbdkit "$id" -r file file="$TEMPLATE" "${fcache[@]}" && PEER_URI=$(uri "$id" "") ;;
  esac
}

rp_series() {
  local series=$1 d peer peers wl round
  for ((round = 1; round <= RP_ROUNDS; round++)); do
  for d in "${RP_DEPTHS[@]}"; do
    peers=(cc-sync cc-uring cc-auto qemu-nbd)
    ((d == RP_DEPTHS[0])) && peers+=(nbd-file)
    # Even rounds take the peers in the opposite order; the report keeps each one's best run.
    ((round % 2 == 0)) && peers=($(printf '%s\n' "${peers[@]}" | tac))
    for peer in "${peers[@]}"; do
      start_rp_peer p "$peer" "$d" "$series" || die "$peer ($series) did not start"
      # The first open (index build) is not part of a read measurement.
      timeout 120 nbdinfo --size "$PEER_URI" >/dev/null || die "$peer: nbdinfo"
      for wl in seqread randread; do
        if [[ $series == warm ]]; then
          local w=$WARMUP
          [[ $wl == randread ]] && w=0 # the seqread warm-up already warmed this server
          ROUND=$round WARMUP=$w measure "rp-$series" "$peer" "$d" "$wl" "${SRV_PID[p]}" \
            "$PEER_URI"
        else
          drop_files
          ROUND=$round WARMUP=0 measure "rp-$series" "$peer" "$d" "$wl" "${SRV_PID[p]}" \
            "$PEER_URI"
        fi
      done
      stop_server p
    done
  done
  done
}

# Open time: nbdinfo --size (a whole connection: process start, handshake, open, close) on clone
# cD; the first connection builds the index, the next ones find it (index-cache, default) or
# rebuild it (index-cache=0, the behaviour before issue 15).  Medians (and minimums: on a shared
# machine interference only adds time).
rp_open() {
  local d i k firsts=() first first_min reconnect reconnect_min nocache floor times
  for d in "${RP_OPEN_DEPTHS[@]}"; do
    # First open: a fresh server each time (5 times), so nothing is cached in-process; then 9
    # reconnects to the last one.
    firsts=()
    for ((k = 0; k < 5; k++)); do
      start_nbdkit o "$PLUGIN" pool="$POOL" || die "nbdkit"
      firsts+=("$(time_cmd_ms nbdinfo --size "$(uri o "c$d")")")
      ((k < 4)) && stop_server o
    done
    first=$(printf '%s\n' "${firsts[@]}" | median)
    first_min=$(printf '%s\n' "${firsts[@]}" | sort -g | head -1)
    times=()
    for ((i = 0; i < 9; i++)); do times+=("$(time_cmd_ms nbdinfo --size "$(uri o "c$d")")"); done
    reconnect=$(printf '%s\n' "${times[@]}" | median)
    reconnect_min=$(printf '%s\n' "${times[@]}" | sort -g | head -1)
    stop_server o
    start_nbdkit o "$PLUGIN" pool="$POOL" index-cache=0 || die "nbdkit"
    times=()
    for ((i = 0; i < 5; i++)); do times+=("$(time_cmd_ms nbdinfo --size "$(uri o "c$d")")"); done
    nocache=$(printf '%s\n' "${times[@]}" | median)
    stop_server o
    # The floor: nbdinfo on the raw template (no chain at all).
    start_nbdkit o -r file file="$TEMPLATE" || die "nbdkit file"
    times=()
    for ((i = 0; i < 5; i++)); do times+=("$(time_cmd_ms nbdinfo --size "$(uri o "")")"); done
    floor=$(printf '%s\n' "${times[@]}" | median)
    stop_server o
    record '{section:"rp-open", depth:$d, first_ms:$f, first_min_ms:$fm, reconnect_ms:$r,
             reconnect_min_ms:$rm, nocache_ms:$n, file_ms:$x}' \
      --argjson d "$d" --argjson f "$first" --argjson fm "$first_min" --argjson r "$reconnect" \
      --argjson rm "$reconnect_min" --argjson n "$nocache" --argjson x "$floor"
    log "open d=$d: first ${first} ms (min $first_min), reconnect ${reconnect} ms" \
      "(min $reconnect_min; index-cache=0: ${nocache} ms; nbdkit file: ${floor} ms)"
  done
}

# The same in one process (scripts/bench/opentime.c): cowchain's own part of an open.
rp_opentime() {
  local a libs=() d out
  for a in pool/libcc_pool.a chain/libcc_chain.a overlay/libcc_overlay.a libcc_common.a; do
    libs+=("$BUILD/$a")
  done
  ${CC:-cc} -O2 -Wall -D_GNU_SOURCE -I"$ROOT" -o "$RUNDIR/opentime" "$BENCH/opentime.c" \
    "${libs[@]}" $(pkg-config --libs liburing libnbd nettle) -lpthread || { log "opentime: build failed"; return 0; }
  for d in "${RP_OPEN_DEPTHS[@]}"; do
    out=$(timeout 300 "$RUNDIR/opentime" "$POOL" "c$d" 9) || die "opentime c$d"
    record '{section:"rp-opentime", depth:$d, build_ms:$b, build_min_ms:$bm, cached_ms:$c,
             cached_min_ms:$cm}' --argjson d "$d" \
      --argjson b "$(awk '$1 == "build" { print $2 }' <<<"$out")" \
      --argjson bm "$(awk '$1 == "build" { print $3 }' <<<"$out")" \
      --argjson c "$(awk '$1 == "cached" { print $2 }' <<<"$out")" \
      --argjson cm "$(awk '$1 == "cached" { print $3 }' <<<"$out")"
    log "opentime c$d: $(tr '\n' ' ' <<<"$out")"
  done
}

# Memory per allocated cluster: one connection to c0 and to cMAX (each in a fresh server),
# every cluster touched (holdconns, stride = cluster), VmRSS and VmHWM while connected.
rp_memory() {
  local clusters=$((MAXDEPTH * PER_LAYER)) s0 s1
  build_holdconns
  start_nbdkit mem "$PLUGIN" pool="$POOL" || die "nbdkit"
  s0=$(mem_hold "$CLUSTER" "${SRV_PID[mem]}" "$(uri mem c0)")
  stop_server mem
  start_nbdkit mem "$PLUGIN" pool="$POOL" || die "nbdkit"
  s1=$(mem_hold "$CLUSTER" "${SRV_PID[mem]}" "$(uri mem "c$MAXDEPTH")")
  stop_server mem
  mem_record cowchain rp-per-cluster-base 1 "$s0"
  mem_record cowchain rp-per-cluster-deep 1 "$s1" "$clusters"
}

# COWCHAIN_BENCH_RP: the parts to run (default all: open memory warm cold none profile; cold
# only with --cold), for a quick re-measurement of one of them.
section_readpath() {
  local parts=" ${COWCHAIN_BENCH_RP:-open memory warm cold none profile} "
  need_chains
  log "read path: depths ${RP_DEPTHS[*]}, series warm$( ((COLD)) && echo ', cold'), none;" \
    "open time at ${RP_OPEN_DEPTHS[*]}; parts:$parts"
  [[ $parts == *" open "* ]] && rp_open && rp_opentime
  [[ $parts == *" memory "* ]] && rp_memory
  [[ $parts == *" warm "* ]] && rp_series warm
  [[ $parts == *" cold "* ]] && ((COLD)) && rp_series cold
  [[ $parts == *" none "* ]] && rp_series none
  if ((PROFILE)) && [[ $parts == *" profile "* ]]; then
    # Where the time of a first open at the deepest depth goes (index-cache=0: every
    # connection builds the index), and a depth-1 4 KiB random read's server CPU (io=auto,
    # warm page cache), for the report.
    start_nbdkit p "$PLUGIN" pool="$POOL" index-cache=0 || die "nbdkit"
    timeout 60 perf record -q -g -o "$RUNDIR/perf-open.data" -p "${SRV_PID[p]}" -- sleep 3 \
      >/dev/null 2>&1 &
    local perfpid=$! t_end=$(($(date +%s) + 3))
    sleep 0.3
    while (($(date +%s) < t_end)); do nbdinfo --size "$(uri p "c$MAXDEPTH")" >/dev/null; done
    wait "$perfpid" || true
    perf report -q -i "$RUNDIR/perf-open.data" --no-children --percent-limit 1 --stdio -g none \
      2>/dev/null | head -60 >"$OUTDIR/perf-readpath-open-d$MAXDEPTH.txt" || true
    stop_server p
    warm_files "$TEMPLATE" "$RUNDIR"/qcow2/*.qcow2 "$POOL"/layers/* "$POOL"/images/*
    start_rp_peer p cc-auto 1 warm || die "cc-auto"
    timeout 60 perf record -q -g -o "$RUNDIR/perf-rp.data" -p "${SRV_PID[p]}" -- sleep "$RUNTIME" \
      >/dev/null 2>&1 &
    local perfpid=$!
    fio_job /dev/null --name=p --uri="$PEER_URI" ${WL[randread]} --runtime="$RUNTIME" --time_based
    wait "$perfpid" || true
    perf report -q -i "$RUNDIR/perf-rp.data" --no-children --percent-limit 1 --stdio -g none \
      2>/dev/null | head -60 >"$OUTDIR/perf-readpath-d1-randread.txt" || true
    stop_server p
  fi
}
