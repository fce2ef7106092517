#!/usr/bin/env python3
"""The markdown tables of docs/benchmarks.md from bench/views.py's JSON (--json)."""
import json
import statistics
import sys

r = json.load(open(sys.argv[1]))
df = {x["query"]: x["wall_ms"] for x in r["recompute"]["datafusion_ms"] if x["status"] == "ok"}
duck = {x["query"]: x["wall_ms"] for x in r["recompute"].get("duckdb", []) if x["status"] == "ok"}
print(f"TPC-H SF{r['sf']:g}, --memory {r['memory']}, {r['cores']} cores; recompute of all 22 views once: "
      f"DataFusion {sum(df.values())/1000:.2f}s (a fresh process per query), DuckDB {sum(duck.values())/1000:.2f}s (warm, in one process)\n")
print("| orders/batch | change rows/batch | population | peak RSS (VmHWM) | state | per batch (all 22 views) | p50 / p99 per file | change rows/s | recompute ÷ incremental, DataFusion / DuckDB (median view) |")
print("|---|---|---|---|---|---|---|---|---|")
for s in r["scenarios"]:
    peak = json.loads(s["peak"][-1]) if s["peak"] else {}
    ratios_df, ratios_duck = [], []
    for v, ms in s["view_ms_per_batch"].items():
        q = int(v[1:])
        if ms > 0:
            if q in df:
                ratios_df.append(df[q] / ms)
            if q in duck:
                ratios_duck.append(duck[q] / ms)
    print(f"| {s['orders_per_batch']} | {s['rows_per_batch']:.0f} | {s['populate_ms']/1000:.1f}s | {peak.get('VmHWM_MiB', 0):.0f}MiB | "
          f"{s['state_bytes']/2**20:.0f}MiB | {s['batch_ms']:.1f}ms | {s['p50_file_ms']:.1f} / {s['p99_file_ms']:.1f}ms | "
          f"{s['rows_per_s']:.0f} | {statistics.median(ratios_df):.0f}× / {statistics.median(ratios_duck):.0f}× |")
print()
print("Per view, milliseconds per batch in the view itself (the rest of a batch's time is reading the change files, the log commit and publishing the sinks):\n")
heads = [s["orders_per_batch"] for s in r["scenarios"]]
print("| view | " + " | ".join(f"{h} orders" for h in heads) + " | DataFusion recompute | DuckDB recompute |")
print("|---|" + "---|" * (len(heads) + 2))
for q in range(1, 23):
    v = f"q{q:02d}"
    cells = [f"{s['view_ms_per_batch'].get(v, 0):.2f}" for s in r["scenarios"]]
    print(f"| Q{q} | " + " | ".join(cells) + f" | {df.get(q, 0)}ms | {duck.get(q, 0)}ms |")
