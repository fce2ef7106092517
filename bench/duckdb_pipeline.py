#!/usr/bin/env python3
"""The examples/tpch pipeline in DuckDB, for comparison with `spillway run examples/tpch`.

The same model files (examples/tpch/models/*.sql) run in the order `spillway plan` prints, each
as `CREATE TABLE <model> AS <its SELECT>` in a DuckDB database file in a temp folder (so large
intermediates can live on disk, as spillway's do); checks must return no rows; the three sinks
are written with COPY. Same Parquet data, threads = cores, memory_limit = the budget,
preserve_insertion_order = false. Prints wall time and peak RSS (the kernel's, for the whole
child process) as JSON.

    bench/duckdb_pipeline.py --data examples/tpch/.spillway/data/tpch-sf10 --memory 2GiB

Needs `duckdb` (bench/tpch.sh installs it into bench/.venv).
"""
import argparse
import json
import resource
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from sizes import parse_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(ROOT, "examples", "tpch")
TABLES = ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"]
SINKS = {  # model -> COPY options, as examples/tpch/spillway.toml publishes them
    "revenue_by_nation_month": "(FORMAT parquet, COMPRESSION zstd)",
    "top_customers": "(FORMAT csv, HEADER)",
    "shipping_delays": "(FORMAT parquet, COMPRESSION zstd)",
}



def order(spillway):
    out = subprocess.run([spillway, "plan", PROJECT], check=True, capture_output=True, text=True).stdout
    return [m.group(1) for m in re.finditer(r"^\s+\d+\s+(\S+)", out, re.M)]


def child(args):
    import duckdb

    work = tempfile.mkdtemp(prefix="duckdb-pipeline-", dir=args.temp)
    try:
        con = duckdb.connect(os.path.join(work, "pipeline.duckdb"))
        con.execute(f"SET memory_limit = '{parse_size(args.memory) // (1 << 20)}MiB'")
        con.execute(f"SET threads = {len(os.sched_getaffinity(0))}")
        con.execute(f"SET temp_directory = '{work}/tmp'")
        con.execute("SET preserve_insertion_order = false")
        for t in TABLES:
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{args.data}/{t}/*.parquet')")
        steps = []
        for model in args.models.split(","):
            sql = open(os.path.join(PROJECT, "models", f"{model}.sql")).read()
            started = time.monotonic()
            if re.search(r"--\s*spillway:[^\n]*\bcheck\b(?!point)", sql):
                rows = con.execute(sql).fetchall()
                if rows:
                    raise SystemExit(f"check {model} failed: {rows[:5]}")
            else:
                con.execute(f"CREATE TABLE {model} AS {sql}")
                if model in SINKS:
                    ext = "csv" if "csv" in SINKS[model] else "parquet"
                    con.execute(f"COPY {model} TO '{work}/{model}.{ext}' {SINKS[model]}")
            steps.append({"model": model, "seconds": round(time.monotonic() - started, 3)})
        print(json.dumps(steps))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--memory", required=True, help="e.g. 2GiB")
    p.add_argument("--spillway", default=os.environ.get("SPILLWAY_BIN", os.path.join(ROOT, "target", "release", "spillway")))
    p.add_argument("--temp", default=os.path.join(os.path.expanduser("~"), ".cache", "spillway"))
    p.add_argument("--models", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data = os.path.abspath(args.data)
    if args.models:
        return child(args)
    os.makedirs(args.temp, exist_ok=True)
    models = order(args.spillway)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--data", args.data, "--memory", args.memory, "--temp", args.temp,
                             "--models", ",".join(models)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    wall = time.monotonic() - started
    # The largest peak RSS among reaped children: the pipeline child (`spillway plan` is small).
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    result = {"engine": "duckdb", "status": "ok" if proc.returncode == 0 else "error", "wall_s": round(wall, 2),
              "peak_rss_bytes": maxrss, "steps": json.loads(out) if proc.returncode == 0 else None,
              "error": None if proc.returncode == 0 else err.decode().strip().splitlines()[-1:]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
