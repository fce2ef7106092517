#!/usr/bin/env bash
# What the grace hash join costs when everything fits: TPC-H queries with joins, each run
# alternately with spillway's GraceHashJoinExec and with DataFusion's own HashJoinExec
# (`spillway sql --native-joins`), under a budget large enough that no join goes out of core.
# Prints per-query medians and the total; docs/benchmarks.md records the table.
#
#   bench/joins.sh 10 8GiB 3          # SF, budget, repetitions [, queries]
set -euo pipefail
sf=${1:-10}
mem=${2:-8GiB}
reps=${3:-3}
queries=${4:-2,3,5,7,8,9,10,11,12,13,14,16,17,18,19,20,21,22}
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
data=${TPCH_DATA:-$HOME/.cache/spillway/tpch-sf$sf}
[ -d "$data" ] || "$bin" gen tpch --sf "$sf" --out "$data"
out=$(mktemp -d)
for q in ${queries//,/ }; do
  sql=$(cat "crates/engine/queries/tpch/q$q.sql")
  for r in $(seq 1 "$reps"); do
    for mode in grace native; do
      flag=(); [ $mode = native ] && flag=(--native-joins)
      "$bin" sql --memory "$mem" --checksum "${flag[@]}" --data "$data" --stats-json "$out/q$q-$mode-$r.json" -- "$sql" >/dev/null 2>&1 \
        || echo "q$q $mode run $r failed" >&2
    done
  done
done
python3 - "$out" "$queries" "$reps" <<'PY'
import json, statistics, sys, os
out, queries, reps = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
def load(q, mode):
    runs = [json.load(open(f"{out}/q{q}-{mode}-{r}.json")) for r in range(1, reps + 1) if os.path.exists(f"{out}/q{q}-{mode}-{r}.json")]
    return runs
print("| query | native HashJoinExec | GraceHashJoinExec | overhead | joins out of core |")
print("|---|---|---|---|---|")
tn = tg = 0.0
for q in queries:
    g, n = load(q, "grace"), load(q, "native")
    if not g or not n:
        print(f"| Q{q} | failed | | | |"); continue
    mg = statistics.median(x["elapsed_ms"] for x in g) / 1000
    mn = statistics.median(x["elapsed_ms"] for x in n) / 1000
    ooc = max(sum(1 for j in x.get("joins", []) if j["out_of_core_partitions"] > 0) for x in g)
    same = len({x["checksum"] for x in g + n}) == 1
    tn += mn; tg += mg
    print(f"| Q{q} | {mn:.2f}s | {mg:.2f}s | {100*(mg/mn-1):+.1f}% | {ooc}{'' if same else ' (RESULTS DIFFER)'} |")
print(f"| **total** | **{tn:.2f}s** | **{tg:.2f}s** | **{100*(tg/tn-1):+.1f}%** | |")
PY
