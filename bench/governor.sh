#!/usr/bin/env bash
# Governor benchmark (issue #2): one high-cardinality aggregate over TPC-H SF1 lineitem under
# a 256MiB budget, with spillway's governed pool and with DataFusion's stock pools, interleaved.
#
#   bench/governor.sh [SF] [MEMORY] [REPEATS]     (defaults: 1 256MiB 3)
#
# Prints one line per run: pool, memory, status, wall seconds, peak RSS (from /usr/bin/time -v),
# peak jemalloc resident and spilled bytes (from --stats-json). Data is generated once into
# bench/data/tpch-sf$SF.
set -euo pipefail
cd "$(dirname "$0")/.."
SF=${1:-1}
MEM=${2:-256MiB}
REPEATS=${3:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spillway-target}"
cargo build --release -q -p spillway-cli
BIN="$CARGO_TARGET_DIR/release/spillway"
DATA="bench/data/tpch-sf$SF"
[ -d "$DATA/lineitem" ] || "$BIN" gen tpch --sf "$SF" --out "$DATA"
SQL="SELECT l_orderkey, sum(l_extendedprice) FROM lineitem GROUP BY 1 ORDER BY 2 DESC"
# The same aggregate without the sort: DataFusion's sort over-counts the aggregate's sliced
# output (see docs/benchmarks.md) and spills under any pool smaller than that phantom size, so
# governor overhead is also measured on this query, where neither pool spills.
SQL_NOSORT="SELECT l_orderkey, sum(l_extendedprice) FROM lineitem GROUP BY 1"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

run() { # pool memory [sql] [label]
  local pool=$1 mem=$2 sql=${3:-$SQL} label=${4:-$1} status=ok
  if ! /usr/bin/time -v -o "$TMP/time" "$BIN" sql "$sql" --memory "$mem" --pool "$pool" --max-rows 1 \
      --data "$DATA" --stats-json "$TMP/stats.json" >/dev/null 2>"$TMP/err"; then
    status=$(grep -q "Resources exhausted" "$TMP/err" && echo resources-exhausted || echo error)
    rm -f "$TMP/stats.json"
  fi
  local rss_kb wall spilled=0
  rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$TMP/time")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$TMP/time" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  [ -f "$TMP/stats.json" ] && spilled=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['spilled_bytes'])" "$TMP/stats.json")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$mem" "$status" "$wall" "$rss_kb" "$spilled" >> "$TMP/results.tsv"
  if [ -f "$TMP/stats.json" ]; then
    python3 - "$label" "$mem" "$status" "$wall" "$rss_kb" "$TMP/stats.json" <<'PY'
import json, sys
pool, mem, status, wall, rss_kb, path = sys.argv[1:]
s = json.load(open(path))
print(f"{pool:10} {mem:>7} {status:20} wall {float(wall):6.2f}s  peak RSS {int(rss_kb)/1024:7.1f}MiB  "
      f"governed {s['peak_resident_bytes']/2**20:7.1f}MiB  spilled {s['spilled_bytes']/2**20:7.1f}MiB")
PY
  else
    printf '%-10s %7s %-20s wall %6.2fs  peak RSS %7.1fMiB\n' "$label" "$mem" "$status" "$wall" "$(awk -v k="$rss_kb" 'BEGIN{print k/1024}')"
  fi
}

for i in $(seq "$REPEATS"); do
  run spillway "$MEM"
  run greedy "$MEM"
  run spillway 8GiB     # room to spare: governor overhead against ...
  run greedy 8GiB       # ... DataFusion's stock pool of the same size and ...
  run unbounded 8GiB    # ... no pool at all
  run spillway 8GiB "$SQL_NOSORT" spillway-nosort
  run unbounded 8GiB "$SQL_NOSORT" unbounded-nosort
done

echo
echo "Medians over $REPEATS interleaved runs (SF$SF, $(nproc) cores):"
python3 - "$TMP/results.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter="\t"))
groups = {}
for pool, mem, status, wall, rss_kb, spilled in rows:
    groups.setdefault((pool, mem), []).append((status, float(wall), int(rss_kb) / 1024, int(spilled) / 2**20))
print("| pool | memory | completed | median wall (s) | max peak RSS (MiB) | spilled (MiB) |")
print("|---|---|---|---|---|---|")
for (pool, mem), runs in groups.items():
    ok = [r for r in runs if r[0] == "ok"]
    statuses = sorted({r[0] for r in runs})
    wall = statistics.median(r[1] for r in runs)
    print(f"| {pool} | {mem} | {len(ok)}/{len(runs)} ({', '.join(statuses)}) | {wall:.2f} | "
          f"{max(r[2] for r in runs):.1f} | {statistics.median(r[3] for r in runs):.1f} |")
PY
