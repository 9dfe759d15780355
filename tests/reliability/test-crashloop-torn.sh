#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# CI's torn power-cut loop: 20 power cuts that keep a random subset of the 512-byte sectors of
# every un-synced write (scripts/crashloop --torn); "old or new" is checked per sector.
# COWCHAIN_CRASH_SEED pins the seed to reproduce a failure (it is printed).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
seed=${COWCHAIN_CRASH_SEED:-$(date +%s)}
exec timeout 220 bash "$here/scripts/crashloop" --torn --points "${COWCHAIN_CRASH_POINTS:-20}" \
  --seed "$seed"
