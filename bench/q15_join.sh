#!/usr/bin/env bash
# TPC-H Q15 written as a join (bench/q15_join.sql), spillway and DuckDB side by side on the same
# Parquet files under the same memory limit, RUNS times each, interleaved: wall seconds and peak
# RSS (GNU time), and the result's row count.
#
#   bench/q15_join.sh 1 256MiB 5     # SF, budget, runs
set -euo pipefail
sf=${1:-1}
mem=${2:-256MiB}
runs=${3:-5}
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
data=${TPCH_DATA:-$HOME/.cache/spillway/tpch-sf$sf}
[ -d "$data" ] || "$bin" gen tpch --sf "$sf" --out "$data"
scripts/provision >/dev/null
py=bench/.venv/bin/python
duck_mem=$(echo "$mem" | sed 's/iB$/B/')
for i in $(seq "$runs"); do
  /usr/bin/time -f "spillway wall %es peak %MKiB" timeout 300 "$bin" sql --memory "$mem" --data "$data" --max-rows 0 -f bench/q15_join.sql 2>&1 >/dev/null | grep wall || echo "spillway: did not finish in 300s"
  /usr/bin/time -f "duckdb   wall %es peak %MKiB" "$py" -c "
import duckdb, sys
c = duckdb.connect()
c.execute(\"SET memory_limit='$duck_mem'\"); c.execute('SET preserve_insertion_order=false')
for t in ['supplier', 'lineitem']:
    c.execute(f\"CREATE VIEW {t} AS SELECT * FROM read_parquet('$data/{t}/*.parquet')\")
rows = c.execute(open('bench/q15_join.sql').read()).fetchall()
print(len(rows), 'row(s)', file=sys.stderr)
" 2>&1 | grep wall
done
