#!/usr/bin/env bash
# TPC-H, 22 queries, under one memory limit: spillway, plain DataFusion (GreedyMemoryPool of the
# same size) and DuckDB (memory_limit), each query in a fresh process, the three engines
# interleaved query by query, results checked against each other. Prints the markdown table
# docs/benchmarks.md records.
#
#   bench/tpch.sh 1 256MiB            # SF, budget [, queries e.g. 1,5,18]
#
# TIMEOUT=seconds per query (default 900). Data: ~/.cache/spillway/tpch-sf<SF> (generated once). DuckDB: installed by this script into
# bench/.venv from PyPI; without it the table has spillway and DataFusion only.
set -euo pipefail
sf=${1:-1}
mem=${2:-1GiB}
queries=${3:-$(seq -s, 1 22)}
timeout=${TIMEOUT:-900}
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
[ -x "$bin" ] || cargo build --release
data=${TPCH_DATA:-$HOME/.cache/spillway/tpch-sf$sf}
out=$(mktemp -d)
py=bench/.venv/bin/python
if [ ! -x "$py" ] || ! "$py" -c "import duckdb" 2>/dev/null; then
  python3 -m venv bench/.venv && bench/.venv/bin/pip install -q duckdb || echo "duckdb unavailable: skipping it" >&2
fi
has_duckdb=0
"$py" -c "import duckdb" 2>/dev/null && has_duckdb=1
for q in ${queries//,/ }; do
  "$bin" bench tpch --sf "$sf" --memory "$mem" --data "$data" --queries "$q" --timeout "$timeout" --json "$out/sd-$q.json" | grep "^q"
  if [ $has_duckdb = 1 ]; then
    "$py" bench/duckdb_tpch.py --data "$data" --sf "$sf" --memory "$mem" --queries "$q" --timeout "$timeout" --json "$out/duck-$q.json"
  fi
done
echo
echo "TPC-H SF$sf, --memory $mem, $(nproc) cores"
echo
python3 bench/report.py --memory "$mem" "$out"/*.json
echo
echo "raw rows: $out"
