#!/usr/bin/env bash
# The stress suite (bench/stress.py): 50+ query shapes on TPC-H and a generated data set with long
# strings, skew and NULLs; spillway three times at the budget, once unbounded (the reference
# answer), DuckDB once at the same limit; fresh process each. Prints the markdown table
# docs/benchmarks.md records.
#
#   bench/stress.sh 1 256MiB [shape,prefix,...]
#
# Data: ~/.cache/spillway/tpch-sf<SF> and ~/.cache/spillway/strings-sf<SF> (generated once).
# TIMEOUT=seconds per run (default 600).
set -euo pipefail
sf=${1:-1}
mem=${2:-256MiB}
shapes=${3:-}
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
[ -x "$bin" ] || cargo build --release
tpch=${TPCH_DATA:-$HOME/.cache/spillway/tpch-sf$sf}
strings=${STRINGS_DATA:-$HOME/.cache/spillway/strings-sf$sf}
[ -d "$tpch/lineitem" ] || "$bin" gen tpch --sf "$sf" --out "$tpch"
py=bench/.venv/bin/python
if [ ! -x "$py" ] || ! "$py" -c "import duckdb" 2>/dev/null; then
  python3 -m venv bench/.venv && bench/.venv/bin/pip install -q duckdb
fi
out=$(mktemp -d)
"$py" bench/stress.py --bin "$bin" --tpch "$tpch" --strings "$strings" --sf "$sf" --memory "$mem" \
  --shapes "$shapes" --timeout "${TIMEOUT:-600}" --json "$out/stress.json"
echo "raw rows: $out/stress.json"
