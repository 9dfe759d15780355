# SPDX-License-Identifier: BSD-3-Clause
# scripts/bench/lib.sh: helpers shared by the benchmark sections (sourced by scripts/bench/run).
#
# Servers: every server is bound to a unix socket in its own mktemp directory, started in the
# foreground under `timeout` (so none can outlive the run by more than $SRV_MAX seconds) with a
# pidfile, and stopped by that PID.  Nothing here uses a fixed path, a TCP port or a broad kill.
#
# Results: every measurement is one JSON object appended to $RESULTS (JSON lines); report.py
# assembles them into docs/bench/results-DATE.json, the tables and the plots.

SRV_MAX=${SRV_MAX:-1800}
declare -A SRV_PID=() SRV_SOCK=() SRV_DIR=()

log() { printf '%s bench: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# record JSON: append one result object (a jq expression over --arg/--argjson values).
# usage: record '{section:"x", v:$v}' --argjson v 3
record() {
  local expr=$1; shift
  jq -cn "$@" "$expr" >>"$RESULTS"
}

# Wait until a server's pidfile and socket exist (or it died).
_srv_wait() {
  local id=$1 launcher=$2 i
  for ((i = 0; i < 300; i++)); do
    if [[ -s ${SRV_DIR[$id]}/pid && -S ${SRV_SOCK[$id]} ]]; then
      SRV_PID[$id]=$(<"${SRV_DIR[$id]}/pid")
      return 0
    fi
    kill -0 "$launcher" 2>/dev/null || break
    sleep 0.05
  done
  log "server $id did not start; its log:"
  sed 's/^/    /' "${SRV_DIR[$id]}/log" >&2 || true
  return 1
}

# start_nbdkit ID PLUGIN ARGS...: nbdkit -f -U sock -P pidfile PLUGIN ARGS (background).
start_nbdkit() {
  local id=$1; shift
  SRV_DIR[$id]=$(mktemp -d "$RUNDIR/srv.XXXXXX")
  SRV_SOCK[$id]=${SRV_DIR[$id]}/sock
  timeout "$SRV_MAX" nbdkit -f -U "${SRV_SOCK[$id]}" -P "${SRV_DIR[$id]}/pid" "$@" \
    >"${SRV_DIR[$id]}/log" 2>&1 &
  _srv_wait "$id" $!
}

# start_qemu_nbd ID ARGS... FILE: qemu-nbd -t (persistent) -k sock --pid-file (background).
start_qemu_nbd() {
  local id=$1; shift
  SRV_DIR[$id]=$(mktemp -d "$RUNDIR/srv.XXXXXX")
  SRV_SOCK[$id]=${SRV_DIR[$id]}/sock
  timeout "$SRV_MAX" qemu-nbd -t -e 128 -k "${SRV_SOCK[$id]}" --pid-file="${SRV_DIR[$id]}/pid" \
    "$@" >"${SRV_DIR[$id]}/log" 2>&1 &
  _srv_wait "$id" $!
}

# stop_server ID: SIGTERM the PID from the pidfile, wait, SIGKILL that PID if it lingers.
stop_server() {
  local id=$1 pid i
  pid=${SRV_PID[$id]:-}
  if [[ -n $pid ]]; then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  [[ -n ${SRV_DIR[$id]:-} ]] && rm -rf "${SRV_DIR[$id]}"
  unset "SRV_PID[$id]" "SRV_SOCK[$id]" "SRV_DIR[$id]"
}

stop_all_servers() {
  local id
  for id in "${!SRV_PID[@]}"; do stop_server "$id"; done
}

# uri ID EXPORT
uri() { printf 'nbd+unix:///%s?socket=%s' "$2" "${SRV_SOCK[$1]}"; }

# CPU seconds (user+system, all threads) used so far by the given PIDs, summed.
cpu_ticks() {
  local pid sum=0 t
  for pid in "$@"; do
    t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
    sum=$((sum + t))
  done
  echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)

# status_kb PID FIELD: a field of /proc/PID/status in kB (VmRSS, VmHWM) or a count (Threads).
status_field() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

now_ns() { date +%s%N; }

# Common fio options: one job, one NBD connection, the nbd engine (libnbd), JSON out.
FIO_COMMON=(--ioengine=nbd --randrepeat=1 --norandommap --random_generator=tausworthe64
            --output-format=json)

# fio_job OUT ARGS...: run fio under a timeout, its JSON into OUT (the nbd engine prints a
# line on stdout, so never parse fio's stdout).
fio_job() {
  local out=$1; shift
  timeout $((RUNTIME * 4 + 60)) fio "${FIO_COMMON[@]}" --output="$out" "$@" >/dev/null
}

# Workload definitions: name -> fio options.
declare -A WL=(
  [seqread]="--rw=read --bs=1M --iodepth=8"
  [randread]="--rw=randread --bs=4k --iodepth=32"
  [randwrite]="--rw=randwrite --bs=4k --iodepth=32"
)

# measure SECTION PEER DEPTH WORKLOAD PIDS URI [extra fio args...]
# Warm-up run of $WARMUP s (not measured; first open, page cache, index build), then a
# $RUNTIME s time-based run; server CPU from /proc/PID/stat around the measured run only.
# Appends one record; prints "iops mib_s" on stdout.
measure() {
  local section=$1 peer=$2 depth=$3 wl=$4 pids=$5 u=$6; shift 6
  local out c0 c1 t0 t1 timed=(--runtime="$RUNTIME" --time_based)
  # A workload with its own io_size (first writes) runs to completion instead.
  [[ ${WL[$wl]} == *--io_size=* ]] && timed=()
  # shellcheck disable=SC2086
  if ((WARMUP > 0)); then
    fio_job /dev/null --name=warm --uri="$u" ${WL[$wl]} --runtime="$WARMUP" --time_based "$@" ||
      die "fio warm-up failed: $section $peer $depth $wl"
  fi
  out=$RUNDIR/fio-$section-$peer-$depth-$wl-r${ROUND:-1}.json
  # shellcheck disable=SC2086
  c0=$(cpu_ticks $pids); t0=$(now_ns)
  # shellcheck disable=SC2086
  fio_job "$out" --name=m --uri="$u" ${WL[$wl]} "${timed[@]}" "$@" ||
    die "fio failed: $section $peer $depth $wl (see $out)"
  # shellcheck disable=SC2086
  t1=$(now_ns); c1=$(cpu_ticks $pids)
  record_fio "$section" "$peer" "$depth" "$wl" "$out" $((c1 - c0)) $((t1 - t0))
}

# record_fio SECTION PEER DEPTH WORKLOAD FIO_JSON CPU_TICKS WALL_NS [CLIENTS]
record_fio() {
  local section=$1 peer=$2 depth=$3 wl=$4 out=$5 ticks=$6 wall=$7 clients=${8:-1}
  jq -c --arg section "$section" --arg peer "$peer" --argjson depth "$depth" --arg wl "$wl" \
    --argjson round "${ROUND:-1}" \
    --argjson ticks "$ticks" --argjson hz "$CLK_TCK" --argjson wall "$wall" \
    --argjson clients "$clients" '
    [.jobs[] | (.read.total_ios + .write.total_ios)] as $ios
    | ([.jobs[] | .read.iops + .write.iops] | add) as $iops
    | ([.jobs[] | .read.bw_bytes + .write.bw_bytes] | add) as $bw
    | ($ios | add) as $n
    | { section: $section, peer: $peer, depth: $depth, workload: $wl, clients: $clients,
        round: $round,
        iops: $iops, mib_s: ($bw / 1048576), ios: $n,
        lat_mean_us: ([.jobs[] | (if .read.total_ios > 0 then .read.clat_ns.mean
                                   else .write.clat_ns.mean end)] | add / length / 1000),
        server_cpu_s: ($ticks / $hz), wall_s: ($wall / 1e9),
        cpu_us_per_io: (if $n > 0 then $ticks / $hz * 1e6 / $n else null end),
        client_cpu_us_per_io: (if $n > 0 then
          ([.jobs[] | (.usr_cpu + .sys_cpu) / 100 * .job_runtime * 1000] | add) / $n
          else null end) }' \
    "$out" | tee -a "$RESULTS" | jq -r '"\(.section) \(.peer) d=\(.depth) \(.workload) r\(.round): \(.iops|floor) IOPS \(.mib_s*10|floor/10) MiB/s \(.cpu_us_per_io // 0 | .*100|floor/100) us server CPU/IO, \(.client_cpu_us_per_io // 0 | .*100|floor/100) us fio CPU/IO"' >&2
}

# time_cmd_ms CMD...: run CMD under a timeout (ccli has its own), print its wall time in ms
# (fails if CMD fails).  The clock is bash's $EPOCHREALTIME, not date: two forks of date added
# ~3 ms to every figure, as much as a whole clone create spends on its syncs.
time_cmd_ms() {
  local t0 t1 to=(timeout 600)
  [[ $(type -t "$1") == function ]] && to=()
  t0=${EPOCHREALTIME/[.,]/}
  "${to[@]}" "$@" >/dev/null || return 1
  t1=${EPOCHREALTIME/[.,]/}
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1e3 }'
}

# median of numbers on stdin
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Drop nothing from the page cache, but make sure these files are in it (warm cache runs).
warm_files() { cat "$@" >/dev/null; }

# cowchain CLI on the bench pool, bounded.
ccli() { timeout 600 "$CLI" --pool "$POOL" "$@"; }

# cc_write EXPORT CMDFILE: run the qemu-io commands in CMDFILE against a cowchain export through
# a captive nbdkit (the server lives only for this one client).
cc_write() {
  local exp=$1 cmds=$2 out
  out=$(timeout 600 nbdkit -U - -e "$exp" "$PLUGIN" pool="$POOL" \
          --run "qemu-io -f raw \"\$uri\" < '$cmds'" 2>&1) || { printf '%s\n' "$out" >&2; return 1; }
  if grep -qiE 'error|failed' <<<"$out"; then printf '%s\n' "$out" | grep -iE 'error|failed' | head >&2; return 1; fi
}
