#!/usr/bin/env python3
"""A transaction larger than the views' lease (issue #35, item 3): one change file rewriting every
row of a table (N deletes, N inserts) under a view passing every row (`moved`) and an aggregate
(`per_g`), applied by `spillway views apply` inside --memory, with DuckDB doing the same work
beside it in the same run (the same delete and insert in one transaction, then both views
recomputed), each under ../shared/tools/peak-memory.

    bench/views_big_txn.sh                      # 5,000,000 rows, 512MiB
    ROWS=1000000 MEMORY=128MiB bench/views_big_txn.sh

Prints one JSON object per engine and run; writes them to /tmp/views-big-txn.json."""
import argparse, json, os, re, shutil, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
PEAK = os.path.join(HERE, "..", "..", "shared", "tools", "peak-memory")


def project(d, rows):
    shutil.rmtree(d, ignore_errors=True)
    for sub in ["data", "views", "changes/t"]:
        os.makedirs(os.path.join(d, sub))
    with open(os.path.join(d, "data/t.csv"), "w") as f, open(os.path.join(d, "changes/t/0001.csv"), "w") as c:
        f.write("k,g,v\n")
        c.write("k,g,v,_op\n")
        for k in range(rows):
            g, v = k % 100, k % 1000
            f.write(f"{k},{g},{v}\n")
            c.write(f"{k},{g},{v},delete\n{k},{g},{v + 1},insert\n")
    with open(os.path.join(d, "views/moved.sql"), "w") as f:
        f.write("SELECT k, v FROM t WHERE v >= 0\n")
    with open(os.path.join(d, "views/per_g.sql"), "w") as f:
        f.write("SELECT g, count(*) AS n, sum(v) AS total FROM t GROUP BY g\n")
    with open(os.path.join(d, "spillway.toml"), "w") as f:
        f.write('[sources.t]\ntype = "csv"\npath = "data/t.csv"\nchanges = "changes/t"\n\n'
                '[sinks.moved]\nmodel = "moved"\npath = "output/moved.parquet"\n\n'
                '[sinks.moved_log]\nmodel = "moved"\npath = "output/log/moved.parquet"\nchangelog = true\n\n'
                '[sinks.per_g]\nmodel = "per_g"\npath = "output/per_g.parquet"\n')


def peak_of(stderr):
    for line in reversed(stderr.splitlines()):
        if line.startswith("{") and "VmHWM_MiB" in line:
            return json.loads(line)
    return {}


def spillway(binary, d, memory):
    for sub in [".spillway", "output", "spill"]:
        shutil.rmtree(os.path.join(d, sub), ignore_errors=True)
    cmd = [PEAK, "--", binary, "--memory", memory, "--spill-dir", os.path.join(d, "spill"), "views", "apply", d]
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t
    out = {"engine": "spillway", "binary": binary, "status": "ok" if p.returncode == 0 else "failed",
           "wall_s": round(wall, 2), **peak_of(p.stderr)}
    m = re.search(r"applied changes/t/0001.csv .* in ([0-9.]+)ms[^;\n]*(?:; ([0-9.]+\w+) of its changes spilled)?",
                  p.stdout, re.M)
    if m:
        out["transaction_ms"] = float(m.group(1))
        out["spilled"] = m.group(2) or "0B"
    else:
        out["error"] = (p.stderr.strip().splitlines() or [""])[-2 if len(p.stderr.strip().splitlines()) > 1 else -1][:300]
    return out


DUCK = r"""
import duckdb, sys, time
d, memory = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute(f"SET memory_limit='{memory}'; SET threads=2; SET temp_directory='{d}/duck-temp'")
con.execute(f"CREATE TABLE t AS SELECT * FROM read_csv('{d}/data/t.csv')")
t0 = time.time()
con.execute("BEGIN")
con.execute(f"CREATE TEMP TABLE c AS SELECT * FROM read_csv('{d}/changes/t/0001.csv')")
con.execute("DELETE FROM t WHERE (k, g, v) IN (SELECT k, g, v FROM c WHERE _op = 'delete')")
con.execute("INSERT INTO t SELECT k, g, v FROM c WHERE _op = 'insert'")
con.execute("COMMIT")
con.execute(f"COPY (SELECT k, v FROM t WHERE v >= 0) TO '{d}/duck-moved.parquet'")
con.execute(f"COPY (SELECT g, count(*) AS n, sum(v) AS total FROM t GROUP BY g) TO '{d}/duck-per_g.parquet'")
print(round((time.time() - t0) * 1000, 1))
"""


def duckdb(python, d, memory):
    limit = memory.replace("MiB", "MB").replace("GiB", "GB")
    shutil.rmtree(os.path.join(d, "duck-temp"), ignore_errors=True)
    t = time.time()
    p = subprocess.run([PEAK, "--", python, "-c", DUCK, d, limit], capture_output=True, text=True)
    out = {"engine": "duckdb", "status": "ok" if p.returncode == 0 else "failed", "wall_s": round(time.time() - t, 2),
           **peak_of(p.stderr)}
    if p.returncode == 0:
        out["transaction_ms"] = float(p.stdout.strip().splitlines()[-1])
    else:
        out["error"] = p.stderr.strip()[-300:]
    return out


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--bin", required=True)
    a.add_argument("--old-bin")
    a.add_argument("--python", default=sys.executable)
    a.add_argument("--rows", type=int, default=5_000_000)
    a.add_argument("--memory", default="512MiB")
    a.add_argument("--runs", type=int, default=2)
    a.add_argument("--dir", default="/tmp/views-big-txn")
    a = a.parse_args()
    project(a.dir, a.rows)
    results = []
    for _ in range(a.runs):
        for r in ([spillway(a.bin, a.dir, a.memory)] + ([spillway(a.old_bin, a.dir, a.memory)] if a.old_bin else [])
                  + [duckdb(a.python, a.dir, a.memory)]):
            r.update(rows=a.rows, change_rows=2 * a.rows, memory=a.memory)
            print(json.dumps(r), flush=True)
            results.append(r)
    with open("/tmp/views-big-txn.json", "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
