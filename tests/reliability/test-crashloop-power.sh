#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# CI's power-cut loop: 20 power cuts of the server during a verified write workload
# (scripts/crashloop --power: every write not followed by a completed fdatasync is lost).
# COWCHAIN_CRASH_SEED pins the seed to reproduce a failure (it is printed).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
seed=${COWCHAIN_CRASH_SEED:-$(date +%s)}
exec timeout 220 bash "$here/scripts/crashloop" --power --points "${COWCHAIN_CRASH_POINTS:-20}" \
  --seed "$seed"
