#!/usr/bin/env bash
# The examples/tpch pipeline at scale factor SF under budget MEM, with hand-offs chosen by size
# (auto) and forced to Parquet and to memory, REPEATS times interleaved. Prints a markdown table:
# median wall time, max peak RSS from the kernel (/usr/bin/time), peak governed memory, tiers.
#
#   bench/pipeline.sh 10 2GiB 3
#
# TPC-H data is generated once into examples/tpch/.spillway/data/tpch-sf<SF>/ (not timed: the
# first run below is a warm-up that generates it).
set -euo pipefail
sf=${1:-10}
mem=${2:-2GiB}
repeats=${3:-3}
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
[ -x "$bin" ] || cargo build --release
out=$(mktemp -d)
run() { # mode rep
  local extra=()
  [ "$1" != auto ] && extra=(--materialize "$1")
  /usr/bin/time -f "%M %e" -o "$out/$1-$2.time" "$bin" run examples/tpch --memory "$mem" \
    --set "sources.tpch.sf=$sf" --plain "${extra[@]}" > "$out/$1-$2.log" 2>&1 || true
  cp examples/tpch/.spillway/runs/latest/run_results.json "$out/$1-$2.json"
}
run auto warmup
for rep in $(seq "$repeats"); do
  for mode in auto parquet memory; do run "$mode" "$rep"; done
done
python3 - "$out" "$repeats" "$sf" "$mem" <<'PY'
import json, statistics, sys, collections
out, repeats, sf, mem = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"examples/tpch, TPC-H SF{sf}, --memory {mem}, {repeats} interleaved runs per mode\n")
print("| hand-offs | completed | median wall (s) | runs (s) | max peak RSS, kernel (MiB) | max peak resident (MiB) | spilled (MiB) | tiers chosen |")
print("|---|---|---|---|---|---|---|---|")
for mode in ["auto", "parquet", "memory"]:
    walls, rss, res, ok, spilled, tiers = [], [], [], [], [], collections.Counter()
    for rep in range(1, repeats + 1):
        kb, wall = open(f"{out}/{mode}-{rep}.time").read().split()[-2:]
        r = json.load(open(f"{out}/{mode}-{rep}.json"))
        walls.append(float(wall)); rss.append(int(kb) / 1024); res.append(r["peak_resident_bytes"] / 2**20)
        ok.append(sum(s["status"] == "ok" for s in r["steps"])); spilled.append(r["spilled_bytes"] / 2**20)
        if rep == 1:
            tiers.update(s["tier"] for s in r["steps"] if s["tier"] not in (None, "check", "sink"))
    t = ", ".join(f"{k} {v}" for k, v in sorted(tiers.items()))
    print(f"| {mode} | {min(ok)}/9 | {statistics.median(walls):.1f} | {' '.join(f'{w:.1f}' for w in walls)} | {max(rss):.0f} | {max(res):.0f} | {max(spilled):.0f} | {t} |")
PY
echo
echo "logs and run_results.json files: $out"
