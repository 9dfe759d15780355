# SPDX-License-Identifier: BSD-3-Clause
# scripts/bench/chains.sh: the template and the two equivalent chains (sourced by run).
#
#   $CACHE/template-SIZE.raw     pseudo-random template (AES-128-CTR keystream), made once, kept
#   $RUNDIR/layers/layer-i.cmds  qemu-io write commands of layer i (gen-layers.py, seeded)
#   $CACHE/qcow2-.../ov{i}.qcow2 qcow2 chain: ov1 on the raw template, ov{i} on ov{i-1} (cached;
#                                symlinked as $RUNDIR/qcow2/ov{i}.qcow2)
#   $RUNDIR/qcow2/top{D}.qcow2   an empty qcow2 overlay on ov{D} (the "clone" at depth D)
#   $POOL                        cowchain pool: template `base`, clone `deep` with snapshots
#                                s1..sMAX (layer i = the writes of layer-i.cmds), and clones
#                                c{D} --from deep@s{D} (an empty writable top on D layers), c0 on base
#
# Depth D therefore means D data layers between the template and an empty top, for both formats.

build_template() {
  TEMPLATE=$CACHE/template-$TEMPLATE_SIZE.raw
  if [[ ! -s $TEMPLATE ]]; then
    log "generating $TEMPLATE_SIZE pseudo-random template (cached in $CACHE)"
    # openssl dies of SIGPIPE when head has enough: check the size instead of the status.
    { openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:cowchain-bench </dev/zero 2>/dev/null |
      head -c "$TEMPLATE_SIZE" >"$TEMPLATE.tmp"; } || true
    [[ $(stat -c %s "$TEMPLATE.tmp") -eq $(numfmt --from=iec "$TEMPLATE_SIZE") ]] ||
      die "could not generate the template"
    mv "$TEMPLATE.tmp" "$TEMPLATE"
  fi
  TEMPLATE_BYTES=$(stat -c %s "$TEMPLATE")
  NCLUSTERS=$((TEMPLATE_BYTES / CLUSTER))
}

gen_layers() {
  mkdir -p "$RUNDIR/layers"
  PER_LAYER=$(/usr/bin/python3 "$BENCH/gen-layers.py" "$RUNDIR/layers" "$TEMPLATE_BYTES" \
    "$CLUSTER" "$MAXDEPTH" 1 "$SEED")
  log "layers: $MAXDEPTH x $PER_LAYER clusters of $((CLUSTER / 1024)) KiB (1%, seed $SEED)"
}

# The qcow2 chain depends only on the template, the seed and qemu, so it is cached.  Each layer is
# written as a standalone qcow2 (whole-cluster writes: no copy-on-write is involved, so the
# allocation is what a write through the chain would make) and then linked to the layer below
# with `qemu-img rebase -u` (metadata only): opening the whole chain for every layer made
# building 256 layers quadratic (minutes).
build_qcow2_chain() {
  local q i t0 d key
  key=qcow2-$TEMPLATE_SIZE-$MAXDEPTH-$PER_LAYER-$SEED
  q=$CACHE/$key
  t0=$(now_ns)
  if [[ ! -e $q/complete ]]; then
    rm -rf "$q"
    mkdir -p "$q"
    (
      cd "$q" || exit 1
      for ((i = 1; i <= MAXDEPTH; i++)); do
        qemu-img create -q -f qcow2 "ov$i.qcow2" "$TEMPLATE_BYTES" || exit 1
        timeout 600 qemu-io -t writeback -f qcow2 "ov$i.qcow2" <"$RUNDIR/layers/layer-$i.cmds" >/dev/null || exit 1
        if ((i == 1)); then
          qemu-img rebase -u -F raw -b "$TEMPLATE" ov1.qcow2 || exit 1
        else
          qemu-img rebase -u -F qcow2 -b "ov$((i - 1)).qcow2" "ov$i.qcow2" || exit 1
        fi
      done
    ) || die "building the qcow2 chain failed"
    touch "$q/complete"
    QCOW2_CACHED=false
  else
    QCOW2_CACHED=true
  fi
  QCOW2_BUILD_S=$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN { print (b - a) / 1e9 }')
  ln -sfn "$q" "$RUNDIR/qcow2-chain"
  mkdir -p "$RUNDIR/qcow2"
  for i in $(seq 1 "$MAXDEPTH"); do ln -sf "$q/ov$i.qcow2" "$RUNDIR/qcow2/ov$i.qcow2"; done
  for d in 0 "${DEPTHS[@]}"; do
    if ((d == 0)); then
      qemu-img create -q -f qcow2 -F raw -b "$TEMPLATE" "$RUNDIR/qcow2/top0.qcow2" "$TEMPLATE_BYTES"
    else
      qemu-img create -q -f qcow2 -F qcow2 -b "$q/ov$d.qcow2" "$RUNDIR/qcow2/top$d.qcow2" \
        "$TEMPLATE_BYTES"
    fi
  done
  log "qcow2 chain of $MAXDEPTH: ${QCOW2_BUILD_S}s (cached: $QCOW2_CACHED)"
}

# need_pool: a fresh pool holding the template as `base` (once per run).
POOL_READY=
need_pool() {
  [[ -n $POOL_READY ]] && return 0
  build_template
  rm -rf "$POOL"
  mkdir -p "$POOL"
  ccli pool init >/dev/null || die "cowchain pool init failed"
  ccli template import base "$TEMPLATE" >/dev/null || die "cowchain template import failed"
  POOL_READY=1
}

build_cowchain_pool() {
  local i t0 d
  need_pool
  ccli clone create deep --from base >/dev/null || die "cowchain clone create failed"
  t0=$(now_ns)
  CC_BUILD_HOW=$CHAIN_BUILDER
  if [[ $CC_BUILD_HOW == lib ]] && ! build_mkchain; then
    log "mkchain cannot be built against $BUILD: using the CLI path"
    CC_BUILD_HOW=cli
  fi
  if [[ $CC_BUILD_HOW == lib ]]; then
    timeout 900 "$RUNDIR/mkchain" "$POOL" deep "$RUNDIR/layers" 1 "$MAXDEPTH" ||
      die "mkchain failed"
  else
    for ((i = 1; i <= MAXDEPTH; i++)); do
      cc_write deep "$RUNDIR/layers/layer-$i.cmds" || die "writing layer $i through nbdkit failed"
      ccli snapshot create deep "s$i" >/dev/null || die "cowchain snapshot create deep s$i failed"
    done
  fi
  CC_BUILD_S=$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN { print (b - a) / 1e9 }')
  ccli clone create c0 --from base >/dev/null || die "clone c0"
  for d in "${DEPTHS[@]}"; do
    ccli clone create "c$d" --from "deep@s$d" >/dev/null || die "clone c$d"
  done
  log "cowchain chain of $MAXDEPTH built in ${CC_BUILD_S}s (builder: $CC_BUILD_HOW)"
}

# The deepest clone must read back exactly like the deepest qcow2 overlay.
verify_chains() {
  local u out
  start_nbdkit vfy "$PLUGIN" pool="$POOL" || die "nbdkit cowchain did not start"
  u=$(uri vfy "c$MAXDEPTH")
  if out=$(timeout 600 qemu-img compare -f raw -F qcow2 "$u" "$RUNDIR/qcow2/top$MAXDEPTH.qcow2" 2>&1); then
    CHAINS_IDENTICAL=true
  else
    CHAINS_IDENTICAL=false
    log "WARNING: cowchain c$MAXDEPTH and qcow2 top$MAXDEPTH differ: $out"
  fi
  stop_server vfy
  record '{section:"build", template_bytes:$tb, cluster:$cl, clusters_per_layer:$k, max_depth:$md,
           qcow2_build_s:$q, qcow2_cached:$qc, cowchain_build_s:$c, cowchain_builder:$how,
           chains_identical:$same}' --argjson qc "$QCOW2_CACHED" --arg how "$CC_BUILD_HOW" \
    --argjson tb "$TEMPLATE_BYTES" --argjson cl "$CLUSTER" --argjson k "$PER_LAYER" \
    --argjson md "$MAXDEPTH" --argjson q "$QCOW2_BUILD_S" --argjson c "$CC_BUILD_S" \
    --argjson same "$CHAINS_IDENTICAL"
}

# mkchain (scripts/bench/mkchain.c) against the build's static libraries.
build_mkchain() {
  [[ -x $RUNDIR/mkchain ]] && return 0
  local a libs=()
  for a in pool/libcc_pool.a chain/libcc_chain.a overlay/libcc_overlay.a libcc_common.a; do
    [[ -e $BUILD/$a ]] || return 1
    libs+=("$BUILD/$a")
  done
  ${CC:-cc} -O2 -Wall -D_GNU_SOURCE -I"$ROOT" -o "$RUNDIR/mkchain" "$BENCH/mkchain.c" "${libs[@]}" \
    $(pkg-config --libs liburing libnbd nettle) -lpthread 2>"$RUNDIR/mkchain.log"
}

CHAINS_READY=
need_chains() {
  [[ -n $CHAINS_READY ]] && return 0
  build_template
  gen_layers
  build_qcow2_chain
  build_cowchain_pool
  verify_chains
  log "warming the page cache"
  warm_files "$TEMPLATE" "$RUNDIR"/qcow2/*.qcow2 "$POOL"/layers/* "$POOL"/images/*
  CHAINS_READY=1
}
