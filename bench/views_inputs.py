#!/usr/bin/env python3
"""The size of the inputs the 22 TPC-H views read, projected to the columns they use, beside the
state the views hold (issue #35: state ≤ 2× the projected inputs).

    bench/.venv/bin/python bench/views_inputs.py --data ~/.cache/spillway/tpch-sf1 \
        [--status /tmp/sf1views/.spillway/views/status.json]

A column's size is its Arrow size in memory: 8 bytes a BIGINT or DOUBLE, 4 an INTEGER or DATE,
16 a DECIMAL (Decimal128), a 4-byte offset plus the bytes of a VARCHAR. A view's columns are
found in its SQL by TPC-H's column prefixes (l_, o_, c_, p_, ps_, s_, n_, r_). Printed twice:
each table's columns any view reads, counted once (what shared arrangements would hold), and
per view, summed over the views (what each view reading its own inputs would hold)."""
import argparse, glob, json, os, re

import duckdb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = os.path.join(ROOT, "crates", "engine", "queries", "tpch")
PREFIX = {"l": "lineitem", "o": "orders", "c": "customer", "p": "part", "ps": "partsupp", "s": "supplier",
          "n": "nation", "r": "region"}


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--data", required=True)
    a.add_argument("--status")
    a = a.parse_args()
    con = duckdb.connect()
    size = {}
    for t in sorted(set(PREFIX.values())):
        files = sorted(glob.glob(os.path.join(a.data, t, "*.parquet")))
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet({files!r})")
        for name, typ in con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {t})").fetchall():
            typ = typ.upper()
            if typ.startswith("VARCHAR"):
                n, chars = con.execute(f"SELECT count(*), sum(strlen({name})) FROM {t}").fetchone()
                size[(t, name)] = 4 * n + (chars or 0)
            else:
                width = 16 if typ.startswith("DECIMAL") else 4 if typ in ("INTEGER", "DATE") else 8
                size[(t, name)] = width * con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
    used = {}
    for q in range(1, 23):
        sql = open(os.path.join(QUERIES, f"q{q}.sql")).read()
        cols = set()
        for m in re.finditer(r"\b(ps|[locpsnr])_[a-z]+\b", sql):
            key = (PREFIX[m.group(1)], m.group(0))
            if key in size:
                cols.add(key)
        used[f"q{q:02d}"] = cols
    union = set().union(*used.values())
    once = sum(size[c] for c in union)
    per_view = {v: sum(size[c] for c in cols) for v, cols in used.items()}
    out = {"projected_inputs_once_bytes": once, "projected_inputs_per_view_sum_bytes": sum(per_view.values()),
           "per_view_bytes": per_view}
    if a.status:
        st = json.load(open(a.status))
        views = st.get("views", st)
        items = views.items() if isinstance(views, dict) else [(v["name"], v) for v in views]
        state = {n: v.get("state_bytes", 0) for n, v in items}
        total = sum(state.values())
        out["state_bytes"] = total
        out["state_over_inputs_once"] = round(total / once, 2)
        out["state_over_inputs_per_view_sum"] = round(total / sum(per_view.values()), 2)
        out["per_view_state_over_inputs"] = {v: round(state.get(v, 0) / per_view[v], 2) for v in per_view if per_view[v]}
    gib = lambda b: f"{b / 2**30:.3f}GiB"
    print(f"projected inputs, each column once: {gib(once)}; summed per view: {gib(sum(per_view.values()))}")
    if a.status:
        print(f"state {gib(out['state_bytes'])}: {out['state_over_inputs_once']}x the inputs once, "
              f"{out['state_over_inputs_per_view_sum']}x their per-view sum")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
