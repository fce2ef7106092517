#!/usr/bin/env python3
"""Exactly once for views (issue #34): what the one-shot catch-up from PostgreSQL costs, and what
the checks added at start cost.

1. PostgreSQL: a shop schema (customers, orders, events; `--orders` rows) followed through a slot
   by three views with PostgreSQL sinks (the CI test's, two written by key). `--txns` random transactions (a few rows
   each), then one `spillway views apply` catches up: its wall time, transactions/s, and the view
   tables compared with PostgreSQL's own answer (EXCEPT ALL both ways; the bench fails if any
   differ). Then `views apply` with nothing new, `--runs` times: what a cron job pays when idle
   (it waits for PostgreSQL's keepalive between transactions).
2. Change files: a CSV source of `--rows` rows, one aggregate view, `--files` change files of 10
   rows each, applied by one `views apply` (files/s). A later start compares every applied file
   still in its folder with its recorded hash: `views apply` with nothing new, with the files kept
   and with them removed, timed by farm-bench A B A B when it is on PATH.

Run by bench/views_once.sh.
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from views_postgres import Server  # noqa: E402

VIEWS = {
    "revenue_by_region": "SELECT c.region, count(*) AS orders, sum(o.amount) AS revenue FROM orders o "
                         "JOIN customers c ON o.customer = c.id GROUP BY c.region",
    "open_orders": "SELECT o.id, o.customer, o.amount, o.status FROM orders o WHERE o.status = 'O'",
    "event_counts": "SELECT kind, count(*) AS events, sum(n) AS total FROM events GROUP BY kind",
}

# Sinks written by key (only the changed rows); event_counts is republished whole (three rows).
KEYS = {
    "revenue_by_region": ['mode = "upsert"', 'key = ["region"]'],
    "open_orders": ['mode = "upsert"', 'key = ["id"]'],
}


def run(bin_, args, env=None):
    t0 = time.time()
    out = subprocess.run([bin_] + args, capture_output=True, text=True, env={**os.environ, **(env or {})})
    took = time.time() - t0
    if out.returncode != 0:
        raise SystemExit(f"spillway {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return took, out.stdout


def postgres_part(bin_, work, orders, txns, runs, seed):
    server = Server()
    try:
        server.psql("tpch", f"""
            CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, region text);
            CREATE TABLE orders (id bigint PRIMARY KEY, customer int, amount numeric(12,2), status char(1));
            CREATE TABLE events (kind text, n int);
            ALTER TABLE events REPLICA IDENTITY FULL;
            INSERT INTO customers SELECT i, 'c' || i, (ARRAY['north','south','east',NULL])[1 + i % 4]
              FROM generate_series(1, 1000) i;
            INSERT INTO orders SELECT i, 1 + i % 1000, (i * 7 % 1000) / 10.0, (ARRAY['O','F','P'])[1 + i % 3]
              FROM generate_series(1, {orders}) i;
            INSERT INTO events SELECT (ARRAY['a','b','c'])[1 + i % 3], i % 5 FROM generate_series(1, 10000) i;""")
        d = os.path.join(work, "pg")
        os.makedirs(os.path.join(d, "views"))
        toml = ['memory = "1GiB"', ""]
        for t in ["customers", "orders", "events"]:
            toml += [f"[sources.{t}]", 'type = "postgres"', 'url_env = "BENCH_PG_URL"', f'table = "{t}"', "cdc = true", ""]
        for v, sql in VIEWS.items():
            open(os.path.join(d, "views", f"{v}.sql"), "w").write(sql + "\n")
            toml += [f"[sinks.{v}]", f'model = "{v}"', 'type = "postgres"', 'url_env = "BENCH_PG_URL"',
                     f'table = "view_{v}"'] + KEYS.get(v, []) + [""]
        open(os.path.join(d, "spillway.toml"), "w").write("\n".join(toml))
        env = {"BENCH_PG_URL": server.url(), "SPILLWAY_LOG": "warn"}
        first, _ = run(bin_, ["views", "apply", d], env)
        rng = random.Random(seed)
        sql, next_id, rows = [], orders + 1, 0
        for _ in range(txns):
            sql.append("BEGIN;")
            for _ in range(rng.randint(1, 4)):
                k = rng.random()
                if k < 0.4:
                    sql.append(f"INSERT INTO orders VALUES ({next_id}, {rng.randint(1, 1000)}, {rng.randint(0, 9999) / 10}, "
                               f"'{rng.choice('OFP')}');")
                    next_id += 1
                elif k < 0.7:
                    sql.append(f"UPDATE orders SET amount = amount + 1, status = '{rng.choice('OFP')}' "
                               f"WHERE id = {rng.randint(1, orders)};")
                elif k < 0.85:
                    sql.append(f"DELETE FROM events WHERE ctid = (SELECT ctid FROM events WHERE kind = "
                               f"'{rng.choice('abc')}' LIMIT 1);")
                else:
                    sql.append(f"INSERT INTO events VALUES ('{rng.choice('abcd')}', {rng.randint(0, 9)});")
                rows += 1
            sql.append("COMMIT;")
        script = os.path.join(work, "txns.sql")
        open(script, "w").write("\n".join(sql))
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.url(), "-f", script],
                       check=True, capture_output=True)
        took, out = run(bin_, ["views", "apply", d], env)
        applied = sum(1 for line in out.splitlines() if line.startswith("applied PostgreSQL transaction"))
        for v, q in VIEWS.items():
            diff = server.psql("tpch", f"SELECT count(*) FROM ((SELECT * FROM view_{v} EXCEPT ALL SELECT * FROM ({q}) a) "
                                       f"UNION ALL (SELECT * FROM ({q}) b EXCEPT ALL SELECT * FROM view_{v})) d")
            if diff != "0":
                raise SystemExit(f"view {v} differs from PostgreSQL's answer in {diff} rows")
        idle = sorted(run(bin_, ["views", "apply", d], env)[0] for _ in range(runs))
        held = server.psql("tpch", "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) FROM pg_replication_slots")
        print(f"postgres: first apply (slot, snapshot of {orders:,} orders, 3 views) {first:.2f}s")
        print(f"postgres: {txns:,} transactions ({rows:,} statements) committed; one `views apply` applied "
              f"{applied:,} of them (those that changed a followed table) in {took:.2f}s = {applied / took:,.0f} txn/s; "
              f"views equal PostgreSQL's answer")
        print(f"postgres: `views apply` with nothing new, {runs} runs: min {idle[0]:.2f}s, median "
              f"{statistics.median(idle):.2f}s, max {idle[-1]:.2f}s; WAL the slot holds after: {held} bytes")
    finally:
        server.stop()


def files_part(bin_, work, rows, files):
    d = os.path.join(work, "files")
    for sub in ["views", "data", "changes/t"]:
        os.makedirs(os.path.join(d, sub))
    with open(os.path.join(d, "data", "t.csv"), "w") as f:
        f.write("id,k,v\n")
        for i in range(rows):
            f.write(f"{i},{i % 1000},{i % 97}\n")
    open(os.path.join(d, "spillway.toml"), "w").write(
        'memory = "1GiB"\n\n[sources.t]\ntype = "csv"\npath = "data/t.csv"\nchanges = "changes/t"\n\n'
        '[sinks.by_k]\nmodel = "by_k"\npath = "output/by_k.csv"\n')
    open(os.path.join(d, "views", "by_k.sql"), "w").write("SELECT k, count(*) AS n, sum(v) AS total FROM t GROUP BY k\n")
    run(bin_, ["views", "apply", d])
    next_id = rows
    for i in range(1, files + 1):
        with open(os.path.join(d, "changes", "t", f"{i:06d}.csv"), "w") as f:
            f.write("id,k,v,_op\n")
            for _ in range(10):
                f.write(f"{next_id},{next_id % 1000},{next_id % 97},insert\n")
                next_id += 1
    took, out = run(bin_, ["views", "apply", d])
    print(f"files: {files:,} change files of 10 rows into one aggregate view over {rows:,} rows: one `views apply` "
          f"{took:.2f}s = {files / took:,.0f} files/s")
    kept = d
    gone = os.path.join(work, "files-removed")
    shutil.copytree(d, gone)
    shutil.rmtree(os.path.join(gone, "changes", "t"))
    os.makedirs(os.path.join(gone, "changes", "t"))
    if shutil.which("farm-bench"):
        out = subprocess.run(["farm-bench", "-n", "5", "--timeout", "600", "--vs", f"{bin_} views apply {gone}", "--",
                              bin_, "views", "apply", kept], capture_output=True, text=True)
        print(f"files: `views apply` with nothing new, the {files:,} applied files kept (A, each hashed once) "
              f"against removed (B):")
        print(out.stdout + out.stderr)
    else:
        a = statistics.median(run(bin_, ["views", "apply", kept])[0] for _ in range(5))
        b = statistics.median(run(bin_, ["views", "apply", gone])[0] for _ in range(5))
        print(f"files: `views apply` with nothing new: files kept {a:.3f}s, removed {b:.3f}s (median of 5)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--txns", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="spillway-views-once-")
    try:
        postgres_part(a.bin, work, a.orders, a.txns, a.runs, a.seed)
        files_part(a.bin, work, a.rows, a.files)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
