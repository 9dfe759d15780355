#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# CI's crash loop: 20 kill -9 points of the server during a verified write workload (see
# scripts/crashloop; the documented full run uses 200+ points).  A fixed seed per day would hide
# nothing and change the run daily; COWCHAIN_CRASH_SEED pins one to reproduce a failure.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
seed=${COWCHAIN_CRASH_SEED:-$(date +%s)}
exec timeout 220 bash "$here/scripts/crashloop" --points "${COWCHAIN_CRASH_POINTS:-20}" --seed "$seed"
