#!/usr/bin/env python3
"""DuckDB on the same TPC-H Parquet files spillway reads, under the same memory limit.

Each query runs in a fresh process (this script re-run with --child), and its peak RSS comes from
the kernel the same way `spillway bench tpch` measures it (wait4's ru_maxrss). DuckDB runs at its
best: threads = the core count, memory_limit = the budget, temp_directory on the same disk,
preserve_insertion_order = false. The queries are spillway's own files
(crates/engine/queries/tpch/qN.sql), and results get the same order-independent checksum as
`spillway sql --checksum` (numbers as floats with two decimals, rows hashed with FNV-1a and
summed), so the two engines' answers can be compared.

    bench/duckdb_tpch.py --data ~/.cache/spillway/tpch-sf1 --sf 1 --memory 1GiB --json duckdb.json

Needs the `duckdb` package; bench/tpch.sh installs it into bench/.venv and runs this.
"""
import argparse
import datetime
import decimal
import json
import os
import signal
import subprocess
import sys
import time

from sizes import parse_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = os.path.join(ROOT, "crates", "engine", "queries", "tpch")
TABLES = ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"]



def query_text(n, sf):
    with open(os.path.join(QUERIES, f"q{n}.sql")) as f:
        text = f.read()
    if n == 11:  # FRACTION = 0.0001 / SF, as spillway_engine::tpch::query does
        text = text.replace("* 0.0001", f"* {0.0001 / sf}")
    return text


def canonical(v):
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, decimal.Decimal)):
        s = f"{float(v):.2f}"
        return "0.00" if s == "-0.00" else s
    if isinstance(v, datetime.date):
        return v.isoformat()
    return str(v)


def fnv1a(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def connect(memory, threads, temp):
    """DuckDB at its best under `memory`: all cores, spills to `temp`, insertion order not kept."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{parse_size(memory) // (1 << 20)}MiB'")
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET temp_directory = '{temp}'")
    con.execute("SET preserve_insertion_order = false")
    return con


def child(args):
    con = connect(args.memory, args.threads, args.temp)
    for t in TABLES:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{args.data}/{t}/*.parquet')")
    cur = con.execute(query_text(args.child, args.sf))
    rows, total = 0, 0
    while True:
        chunk = cur.fetchmany(10000)
        if not chunk:
            break
        for row in chunk:
            total = (total + fnv1a("|".join(canonical(v) for v in row).encode())) & 0xFFFFFFFFFFFFFFFF
        rows += len(chunk)
    print(json.dumps({"rows": rows, "checksum": f"{total:016x}"}))


def run_one(args, n):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n), "--data", args.data, "--sf", str(args.sf),
           "--memory", args.memory, "--threads", str(args.threads), "--temp", args.temp]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if not timed_out and time.monotonic() - started > args.timeout:
            os.kill(proc.pid, signal.SIGKILL)
            timed_out = True
        time.sleep(0.02)
    wall_ms = int((time.monotonic() - started) * 1000)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = 0  # reaped above
    row = {"query": n, "engine": "duckdb", "status": "error", "wall_ms": wall_ms,
           "peak_rss_bytes": usage.ru_maxrss * 1024, "spilled_bytes": None, "rows": None, "checksum": None,
           "error": None}
    if timed_out:
        row["status"] = "timeout"
    elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        row["status"] = "oom-killed"
    elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        row["status"] = "ok"
        row.update(json.loads(out.strip().splitlines()[-1]))
    elif "Out of Memory" in err or "OutOfMemory" in err:
        row["status"] = "resources-exhausted"
    if row["status"] != "ok":
        lines = [l for l in err.splitlines() if l.strip()]
        row["error"] = (lines[-1] if lines else f"exit status {status}")[:400]
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="TPC-H Parquet folder (spillway gen tpch layout)")
    p.add_argument("--sf", type=float, default=1.0)
    p.add_argument("--memory", required=True, help="memory_limit, e.g. 1GiB")
    p.add_argument("--queries", default="", help="e.g. 1,5,18 (default all 22)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--temp", default=os.path.join(os.path.expanduser("~"), ".cache", "spillway", "duckdb-temp"))
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data = os.path.abspath(os.path.expanduser(args.data))
    if args.child:
        return child(args)
    os.makedirs(args.temp, exist_ok=True)
    queries = [int(q) for q in args.queries.split(",") if q] or list(range(1, 23))
    rows = []
    for n in queries:
        row = run_one(args, n)
        rows.append(row)
        print(f"q{n:02d} duckdb     {row['status']:<19} {row['wall_ms'] / 1000:>8.2f}s  RSS {row['peak_rss_bytes'] / 2**20:>8.1f}MiB  "
              f"{row['checksum'] or row['error'] or ''}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
