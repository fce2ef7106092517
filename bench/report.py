#!/usr/bin/env python3
"""One markdown table from the JSON rows of `spillway bench tpch --json` and
`bench/duckdb_tpch.py --json` (any number of files): query x engine -> time, peak RSS, status;
ratio columns against spillway; a summary per engine. Results whose checksums differ from
spillway's are marked.

    bench/report.py --memory 1GiB spillway.json duckdb.json
"""
import argparse
import collections
import json
import math

from sizes import parse_size




def main():
    p = argparse.ArgumentParser()
    p.add_argument("--memory", required=True)
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    budget = parse_size(args.memory)
    rows = [r for f in args.files for r in json.load(open(f))]
    engines = [e for e in ["spillway", "datafusion", "duckdb"] if any(r["engine"] == e for r in rows)]
    by = collections.defaultdict(list)
    for r in rows:
        by[(r["query"], r["engine"])].append(r)
    queries = sorted({r["query"] for r in rows})

    def cell(q, e):
        rs = by.get((q, e))
        if not rs:
            return None
        ok = [r for r in rs if r["status"] == "ok"]
        pick = ok or rs
        return {
            "status": "ok" if len(ok) == len(rs) else pick[0]["status"] if not ok else f"ok {len(ok)}/{len(rs)}",
            "wall": sorted(r["wall_ms"] for r in pick)[len(pick) // 2] / 1000,
            "rss": max(r["peak_rss_bytes"] for r in rs),
            "checksum": pick[0].get("checksum"),
            "ok": bool(ok),
        }

    head = ["query"] + [f"{e} (s / MiB)" for e in engines]
    head += [f"spillway / {e}" for e in engines if e != "spillway" and "spillway" in engines]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for q in queries:
        cols = [f"Q{q}"]
        ours = cell(q, "spillway")
        for e in engines:
            c = cell(q, e)
            if c is None:
                cols.append("-")
                continue
            text = f"{c['wall']:.2f} / {c['rss'] / 2**20:.0f}" if c["ok"] else f"**{c['status']}** / {c['rss'] / 2**20:.0f}"
            if ours and ours["ok"] and c["ok"] and e != "spillway" and c["checksum"] != ours["checksum"]:
                text += " (result differs)"
            cols.append(text)
        for e in engines:
            if e == "spillway" or "spillway" not in engines:
                continue
            c = cell(q, e)
            cols.append(f"{ours['wall'] / c['wall']:.2f}" if ours and c and ours["ok"] and c["ok"] else "-")
        print("| " + " | ".join(cols) + " |")
    print()
    print("| engine | completed | sum of times (s) | geomean (s) | max peak RSS / budget |")
    print("|---|---|---|---|---|")
    for e in engines:
        cs = [cell(q, e) for q in queries]
        ok = [c for c in cs if c and c["ok"]]
        total = sum(c["wall"] for c in ok)
        geo = math.exp(sum(math.log(max(c["wall"], 0.001)) for c in ok) / len(ok)) if ok else float("nan")
        rss = max((c["rss"] for c in cs if c), default=0)
        print(f"| {e} | {len(ok)}/{len(queries)} | {total:.2f} | {geo:.3f} | {rss / 2**20:.0f}MiB / {budget / 2**20:.0f}MiB = {rss / budget:.2f} |")


if __name__ == "__main__":
    main()
