#!/usr/bin/env python3
"""Many views in one `spillway views serve` process: hydration, then a change stream fed into the
project's change folders while the process runs, read back through its own `/status`.

    bench/views_many.sh tiny        # 1,000 views over a 1-row table (the Materialize case)
    bench/views_many.sh tpch 1      # the 22 TPC-H views over SF1, change files as fast as absorbed

Per case: hydration time, kernel RSS after hydration (VmRSS, after jemalloc's purge) and the
kernel peak (VmHWM) over the whole process, the views' state bytes, then for the stream: files and
change rows applied, change rows/s (rows over the time from the first file fed to the last
applied), latency from a file appearing (renamed into place) to its views' sinks published (p50,
p99, max over the last 1,000 files, as `/status` reports it), and RSS at the end.
`--rate 0` feeds the next file once the one before is applied (latency = the work of one
transaction); `--rate R` feeds R files per second whatever the process does (latency includes
waiting behind earlier files).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_KINDS = [
    "SELECT id, v + {i} AS x FROM t WHERE v > -{i}",
    "SELECT s, count(*) AS n, sum(v) AS total FROM t WHERE id >= {m} GROUP BY s",
    "SELECT min(v) AS lo, max(v) AS hi FROM t WHERE v <> {i}",
    "SELECT id, v FROM t ORDER BY v DESC LIMIT {k}",
    "SELECT a.id, b.v FROM t a JOIN t b ON a.id = b.id WHERE a.v > -{i}",
]


def tiny_project(work, views, files, memory, rows):
    shutil.rmtree(work, ignore_errors=True)
    for d in ["data", "views", "changes/t", "feed/t"]:
        os.makedirs(os.path.join(work, d))
    open(os.path.join(work, "data", "t.csv"), "w").write("id,v,s\n1,10,a\n")
    open(os.path.join(work, "spillway.toml"), "w").write(
        f'memory = "{memory}"\n\n[sources.t]\ntype = "csv"\npath = "data/t.csv"\nkey = ["id"]\nchanges = "changes/t"\n')
    for i in range(views):
        sql = TINY_KINDS[i % len(TINY_KINDS)].format(i=i, m=i % 7 - 5, k=1 + i % 5)
        open(os.path.join(work, "views", f"v{i:04d}.sql"), "w").write(sql + "\n")
    for j in range(files):
        open(os.path.join(work, "feed", "t", f"{j + 1:08d}.csv"), "w").write(tiny_change(j, rows))


def tiny_change(j, rows):
    """Change file j: an upsert of the first row; with R rows, R-1 new rows too, and the R-1 of
    the file before deleted (the table stays at most R rows)."""
    lines = ["id,v,s,_op", f"1,{j + 11},a,upsert"]
    for r in range(rows - 1):
        lines.append(f"{2 + j * rows + r},{r},b,insert")
        if j > 0:
            lines.append(f"{2 + (j - 1) * rows + r},,,delete")
    return "\n".join(lines) + "\n"


def tpch_project(work, sf, data, memory, bin_, orders, batches):
    """bench/views.py's project (the 22 TPC-H queries as views, a Parquet sink each), its change
    stream generated into feed/ and fed from there."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import views

    views.project(work, sf, data, memory)
    subprocess.run([bin_, "gen", "tpch-changes", "--data", data, "--orders", str(orders), "--batches", str(batches),
                    "--out", os.path.join(work, "feed")], check=True, capture_output=True)
    for t in os.listdir(os.path.join(work, "feed")):
        os.makedirs(os.path.join(work, "changes", t), exist_ok=True)


def get(url, path):
    with urllib.request.urlopen(url + path, timeout=10) as r:
        return r.read().decode()


def proc_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def run(a):
    work = a.work
    cmd = [a.bin, "--memory", a.memory, "views", "serve", work, "--listen", "127.0.0.1:0", "--poll", "50ms"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = os.path.join(work, ".spillway", "views", "serve.json")
    url = None
    status = {}
    while True:
        if proc.poll() is not None:
            print(proc.stdout.read(), proc.stderr.read(), file=sys.stderr)
            sys.exit(f"serve exited with {proc.returncode}")
        if url is None and os.path.exists(marker):
            try:
                url = json.load(open(marker))["url"]
            except ValueError:
                pass
        if url:
            try:
                status = json.loads(get(url, "/status"))
                if status["phase"] == "live":
                    break
            except OSError:
                pass
        time.sleep(0.1)
    hydrate_s = time.time() - t0
    time.sleep(0.5)  # the sampler's next reading, after the purge
    out = {
        "case": a.case, "views": len(status["views"]), "memory": a.memory, "hydrate_s": round(hydrate_s, 2),
        "populate_ms": status["populate_ms"],
        "rss_after_hydration": proc_kib(proc.pid, "VmRSS"),
        "state_bytes": sum(v["state_bytes"] for v in status["views"]),
    }
    feed = os.path.join(work, "feed")
    files = sorted((f, t) for t in os.listdir(feed) for f in os.listdir(os.path.join(feed, t)))
    start = time.time()
    fed = 0
    if a.soak > 0:
        # Files made as they are fed, for --soak seconds at --rate; resident memory sampled.
        rss = []
        j = 0
        while time.time() - start < a.soak:
            name = f"{j + 1:08d}.csv"
            staged = os.path.join(work, "changes", "t", "." + name)
            open(staged, "w").write(tiny_change(j, a.rows))
            os.rename(staged, os.path.join(work, "changes", "t", name))
            j += 1
            fed += 1
            if not rss or time.time() - start >= len(rss) * a.soak / 20:
                rss.append((round(time.time() - start), proc_kib(proc.pid, "VmRSS")))
            time.sleep(max(0.0, start + fed / a.rate - time.time()))
        out["rss_samples"] = rss
        files = []
    for f, t in files:
        staged = os.path.join(work, "changes", t, "." + f)
        shutil.copyfile(os.path.join(feed, t, f), staged)
        os.rename(staged, os.path.join(work, "changes", t, f))
        fed += 1
        if a.rate > 0:
            time.sleep(max(0.0, start + fed / a.rate - time.time()))
        else:
            while json.loads(get(url, "/status"))["applied_now"] < fed:
                time.sleep(0.005)
    while True:
        status = json.loads(get(url, "/status"))
        if status["applied_now"] >= fed:
            break
        time.sleep(0.01)
    elapsed = time.time() - start
    out.update({
        "files": status["applied_now"], "change_rows": status["change_rows"],
        "rows_per_s": round(status["change_rows"] / elapsed, 1), "files_per_s": round(status["applied_now"] / elapsed, 2),
        "latency_ms": status["latency"], "apply_ms": status["apply"],
        "rss_end": proc_kib(proc.pid, "VmRSS"), "peak_rss": proc_kib(proc.pid, "VmHWM"),
        "state_bytes_end": sum(v["state_bytes"] for v in status["views"]),
        "budget": status["memory"]["budget"],
    })
    out["peak_rss_over_budget"] = round(out["peak_rss"] / out["budget"], 3)
    out["rss_after_hydration_per_view"] = out["rss_after_hydration"] // max(1, out["views"])
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode != 0:
        sys.exit(f"serve exited with {proc.returncode}: {stderr}")
    out["stopped"] = stdout.strip().splitlines()[-1]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["tiny", "tpch"])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--memory", default="2GiB")
    ap.add_argument("--views", type=int, default=1000, help="tiny: how many views")
    ap.add_argument("--files", type=int, default=200, help="tiny: change files")
    ap.add_argument("--rows", type=int, default=1, help="tiny: rows per change file (1: one upsert)")
    ap.add_argument("--sf", type=float, default=1)
    ap.add_argument("--data")
    ap.add_argument("--orders", type=int, default=100, help="tpch: orders per batch")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0, help="files per second fed; 0: the next once one is applied")
    ap.add_argument("--work", default="/tmp/spillway-views-serve-bench")
    ap.add_argument("--soak", type=float, default=0, help="tiny: feed made-up files at --rate for this many seconds")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.soak > 0 and a.rate <= 0:
        sys.exit("--soak needs --rate")
    results = []
    if a.case == "tiny":
        # One view first: the per-view overhead is what 1,000 add over it.
        for n in ([a.views] if a.soak > 0 else sorted({1, a.views})):
            tiny_project(a.work, n, a.files, a.memory, a.rows)
            r = run(a)
            results.append(r)
            print(json.dumps(r), flush=True)
        if len(results) == 2:
            one, many = results
            per_view = {
                "rss_per_view": (many["rss_after_hydration"] - one["rss_after_hydration"]) // (many["views"] - 1),
                "state_per_view": (many["state_bytes"] - one["state_bytes"]) // (many["views"] - 1),
            }
            print(json.dumps(per_view), flush=True)
            results.append(per_view)
    else:
        tpch_project(a.work, a.sf, a.data, a.memory, a.bin, a.orders, a.batches)
        r = run(a)
        results.append(r)
        print(json.dumps(r), flush=True)
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
