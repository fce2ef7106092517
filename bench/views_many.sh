#!/usr/bin/env bash
# Many views in one long-lived `spillway views serve` process (see bench/views_serve.py).
#
#   bench/views_many.sh tiny          # 1,000 views over a 1-row table, and 1 view: per-view overhead
#   bench/views_many.sh tpch 1        # the 22 TPC-H views over SF1 fed a change stream
#   SOAK=600 RATE=10 ROWS=10 bench/views_many.sh tiny   # 10 minutes of changes, RSS sampled
#
# Env: MEMORY (2GiB), VIEWS, FILES and ROWS per file (tiny), ORDERS and BATCHES (tpch), RATE (files/s fed; 0 =
# the next once the one before is applied), JSON, TPCH_DATA, SPILLWAY_BIN.
set -euo pipefail
case=${1:-tiny}
sf=${2:-1}
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
[ -x "$bin" ] || cargo build --release
args=(--bin "$bin" --memory "${MEMORY:-2GiB}" --rate "${RATE:-0}" --json "${JSON:-/tmp/views-serve-$case.json}")
if [ "$case" = tpch ]; then
  data=${TPCH_DATA:-$HOME/.cache/spillway/tpch-sf$sf}
  [ -f "$data/_SUCCESS" ] || "$bin" gen tpch --sf "$sf" --out "$data"
  args+=(--sf "$sf" --data "$data" --orders "${ORDERS:-100}" --batches "${BATCHES:-20}")
else
  args+=(--views "${VIEWS:-1000}" --files "${FILES:-200}" --rows "${ROWS:-1}" --soak "${SOAK:-0}")
fi
python3 bench/views_serve.py "$case" "${args[@]}"
