#!/usr/bin/env bash
# Incremental views: the 22 TPC-H queries as views, maintained through change batches, side by
# side with recomputing them with DataFusion and DuckDB (see bench/views.py).
#
#   bench/views.sh 1                 # SF; ORDERS="1 8 800 8000" BATCHES="5 5 3 2" MEMORY=4GiB
#
# Data: TPCH_DATA or ~/.cache/spillway/tpch-sf<SF> (generated once).
set -euo pipefail
sf=${1:-1}
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
[ -x "$bin" ] || cargo build --release
data=${TPCH_DATA:-$HOME/.cache/spillway/tpch-sf$sf}
[ -f "$data/_SUCCESS" ] || "$bin" gen tpch --sf "$sf" --out "$data"
py=bench/.venv/bin/python
if [ ! -x "$py" ] || ! "$py" -c "import duckdb" 2>/dev/null; then
  python3 -m venv bench/.venv && bench/.venv/bin/pip install -q duckdb
fi
"$py" bench/views.py --bin "$bin" --sf "$sf" --data "$data" --memory "${MEMORY:-4GiB}" \
  --orders "${ORDERS:-1 8 800 8000}" --batches "${BATCHES:-5 5 3 2}" --json "${JSON:-/tmp/views-bench.json}"
