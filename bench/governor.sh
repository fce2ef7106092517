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
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

run() { # pool memory
  local pool=$1 mem=$2 status=ok
  if ! /usr/bin/time -v -o "$TMP/time" "$BIN" sql "$SQL" --memory "$mem" --pool "$pool" --max-rows 1 \
      --data "$DATA" --stats-json "$TMP/stats.json" >/dev/null 2>"$TMP/err"; then
    status=$(grep -q "Resources exhausted" "$TMP/err" && echo resources-exhausted || echo error)
    rm -f "$TMP/stats.json"
  fi
  local rss_kb wall
  rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$TMP/time")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$TMP/time" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  if [ -f "$TMP/stats.json" ]; then
    python3 - "$pool" "$mem" "$status" "$wall" "$rss_kb" "$TMP/stats.json" <<'PY'
import json, sys
pool, mem, status, wall, rss_kb, path = sys.argv[1:]
s = json.load(open(path))
print(f"{pool:10} {mem:>7} {status:20} wall {float(wall):6.2f}s  peak RSS {int(rss_kb)/1024:7.1f}MiB  "
      f"jemalloc resident {s['peak_resident_bytes']/2**20:7.1f}MiB  spilled {s['spilled_bytes']/2**20:7.1f}MiB")
PY
  else
    printf '%-10s %7s %-20s wall %6.2fs  peak RSS %7.1fMiB\n' "$pool" "$mem" "$status" "$wall" "$(awk -v k="$rss_kb" 'BEGIN{print k/1024}')"
  fi
}

for i in $(seq "$REPEATS"); do
  run spillway "$MEM"
  run greedy "$MEM"
  run spillway 8GiB     # the same query with room to spare: governor overhead ...
  run unbounded 8GiB    # ... against no pool at all
done
