#!/usr/bin/env python3
"""PostgreSQL in, PostgreSQL out: the 22 TPC-H queries as views over TPC-H tables in PostgreSQL,
followed through logical replication by `spillway views serve` and kept in PostgreSQL tables,
while pgbench updates `orders` and `lineitem` (1 to ~1,250 rows a transaction) at a fixed rate.

Reports: sustained source changes/s, latency from the source COMMIT to the view tables' COMMIT
(p50/p99, from `serve`'s /status), the serve process's peak RSS against its budget, and the WAL the
slot holds back (sampled every second). Run by bench/views_postgres.sh.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = os.path.join(ROOT, "crates", "engine", "queries", "tpch")
KEYS = {
    "nation": ["n_nationkey"],
    "region": ["r_regionkey"],
    "part": ["p_partkey"],
    "supplier": ["s_suppkey"],
    "partsupp": ["ps_partkey", "ps_suppkey"],
    "customer": ["c_custkey"],
    "orders": ["o_orderkey"],
    "lineitem": ["l_orderkey", "l_linenumber"],
}


def pg_bin():
    base = "/usr/lib/postgresql"
    for v in sorted(os.listdir(base), reverse=True) if os.path.isdir(base) else []:
        if os.path.exists(os.path.join(base, v, "bin", "pg_ctl")):
            return os.path.join(base, v, "bin")
    return os.path.dirname(shutil.which("pg_ctl") or "/usr/bin/pg_ctl")


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self):
        self.bin = pg_bin()
        self.dir = tempfile.mkdtemp(prefix="spillway-bench-pg-")
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        data = os.path.join(self.dir, "data")
        subprocess.run(as_postgres([os.path.join(self.bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
                                    "--no-sync", "-E", "UTF8", "--locale=C"]), check=True, capture_output=True)
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                "-c wal_level=logical -c max_wal_size=8GB -c shared_buffers=1GB -c fsync=off "
                "-c max_replication_slots=10 -c max_wal_senders=10")
        subprocess.run(as_postgres([os.path.join(self.bin, "pg_ctl"), "-D", data, "-o", opts, "-l",
                                    os.path.join(self.dir, "log"), "-w", "start"]), check=True, capture_output=True)
        self.psql("postgres", "CREATE DATABASE tpch")

    def url(self, db="tpch"):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, db, sql):
        out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(db), "-c", sql],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return out.stdout.strip()

    def stop(self):
        subprocess.run(as_postgres([os.path.join(self.bin, "pg_ctl"), "-D", os.path.join(self.dir, "data"), "-m",
                                    "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def load(bin_, server, sf, data, work):
    """TPC-H into PostgreSQL with spillway's own sink (binary COPY), each table with its key."""
    d = os.path.join(work, "load")
    os.makedirs(os.path.join(d, "models"))
    os.makedirs(os.path.join(d, ".spillway", "data"))
    os.symlink(os.path.abspath(data), os.path.join(d, ".spillway", "data", f"tpch-sf{sf:g}"))
    toml = ['memory = "4GiB"', "", "[sources.tpch]", 'type = "tpch"', f"sf = {sf:g}", ""]
    for t, key in KEYS.items():
        open(os.path.join(d, "models", f"pg_{t}.sql"), "w").write(f"SELECT * FROM {t}\n")
        toml += [f"[sinks.{t}]", f'model = "pg_{t}"', 'type = "postgres"', 'url_env = "BENCH_PG_URL"',
                 f'table = "{t}"', f"key = {json.dumps(key)}", ""]
    open(os.path.join(d, "spillway.toml"), "w").write("\n".join(toml))
    t0 = time.time()
    subprocess.run([bin_, "run", d, "--plain"], check=True, capture_output=True, env={**os.environ, "BENCH_PG_URL": server.url()})
    return time.time() - t0


def views_project(work, sf, memory):
    d = os.path.join(work, "views")
    os.makedirs(os.path.join(d, "views"))
    toml = [f'memory = "{memory}"', ""]
    for t in KEYS:
        toml += [f"[sources.{t}]", 'type = "postgres"', 'url_env = "BENCH_PG_URL"', f'table = "{t}"', "cdc = true", ""]
    for q in range(1, 23):
        sql = open(os.path.join(QUERIES, f"q{q}.sql")).read()
        if q == 11:
            sql = sql.replace("* 0.0001", f"* {0.0001 / sf}")
        open(os.path.join(d, "views", f"q{q:02d}.sql"), "w").write(sql)
        toml += [f"[sinks.q{q:02d}]", f'model = "q{q:02d}"', 'type = "postgres"', 'url_env = "BENCH_PG_URL"',
                 f'table = "view_q{q:02d}"', ""]
    open(os.path.join(d, "spillway.toml"), "w").write("\n".join(toml))
    return d


def status(url):
    try:
        with urllib.request.urlopen(url + "/status", timeout=5) as r:
            return json.loads(r.read())
    except Exception:
        return None


def rss_kib(pid, field):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--sf", type=float, default=1)
    ap.add_argument("--data", required=True)
    ap.add_argument("--memory", default="16GiB")
    ap.add_argument("--rate", type=float, default=1000, help="source changes/s offered")
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--max-rows", type=int, default=1000)
    ap.add_argument("--json", default="/tmp/views-postgres.json")
    ap.add_argument("--identity", choices=["full", "key"], default="full")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="spillway-bench-views-pg-")
    server = Server()
    result = {"sf": a.sf, "memory": a.memory, "offered_changes_per_s": a.rate, "seconds": a.seconds}
    serve = None
    try:
        result["load_s"] = round(load(a.bin, server, a.sf, a.data, work), 1)
        print(f"loaded TPC-H SF{a.sf:g} into PostgreSQL in {result['load_s']}s", flush=True)
        # Updates and deletes carry the whole old row, so spillway keeps none of the tables' rows
        # in memory (with the default identity it keeps every row by key: docs/views-postgres.md).
        if a.identity == "full":
            server.psql("tpch", "; ".join(f"ALTER TABLE {t} REPLICA IDENTITY FULL" for t in KEYS))
        result["replica_identity"] = a.identity
        d = views_project(work, a.sf, a.memory)
        env = {**os.environ, "BENCH_PG_URL": server.url(), "SPILLWAY_LOG": "warn"}
        t0 = time.time()
        serve = subprocess.Popen([a.bin, "views", "serve", d, "--listen", "127.0.0.1:0", "--poll", "1s"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "serve.log"), "w"))
        url = None
        while True:
            if serve.poll() is not None:
                raise RuntimeError("serve exited: " + open(os.path.join(work, "serve.log")).read()[-3000:])
            try:
                url = json.load(open(os.path.join(d, ".spillway", "views", "serve.json")))["url"]
            except (OSError, ValueError):
                pass
            s = status(url) if url else None
            if s and s["phase"] == "live":
                break
            time.sleep(1)
        result["hydration_s"] = round(time.time() - t0, 1)
        print(f"22 views populated and published in {result['hydration_s']}s", flush=True)
        # The writer: each transaction updates a range of ~n lineitems and ~n/4 orders.
        max_key = int(6_000_000 * a.sf)
        width = max(4, a.max_rows)
        script = os.path.join(work, "writer.sql")
        open(script, "w").write(
            f"\\set k random(1, {max_key - width})\n\\set n random(1, {width})\n"
            "BEGIN;\n"
            "UPDATE lineitem SET l_quantity = l_quantity + 1 WHERE l_orderkey BETWEEN :k AND :k + :n;\n"
            "UPDATE orders SET o_totalprice = o_totalprice + 1 WHERE o_orderkey BETWEEN :k AND :k + :n;\n"
            "COMMIT;\n")
        per_txn = 1.25 * (width + 1) / 2  # mean lineitems + orders a transaction changes
        tps = a.rate / per_txn
        before = status(url)
        bench = subprocess.Popen(["pgbench", "-n", "-f", script, "-R", f"{tps:.3f}", "-T", str(a.seconds), "-c", "1",
                                  server.url()], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wal, rss = [], []
        while bench.poll() is None:
            held = server.psql("tpch", "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::int8 FROM pg_replication_slots")
            wal.append(int(held or 0))
            rss.append(rss_kib(serve.pid, "VmRSS"))
            time.sleep(1)
        # Let the views catch up with everything written (up to 10 minutes): a marker transaction
        # on a followed table commits after every writer transaction, so once the slot's durable
        # position passes where the WAL was before it, all of them are in the view tables.
        t_end = time.time()
        before_marker = server.psql("tpch", "SELECT pg_current_wal_lsn()")
        server.psql("tpch", "UPDATE region SET r_comment = r_comment WHERE r_regionkey = 0")
        while time.time() - t_end < 600:
            s = status(url)
            if s and s.get("slot_lsn") and server.psql("tpch", f"SELECT '{s['slot_lsn']}'::pg_lsn >= '{before_marker}'::pg_lsn") == "t":
                break
            time.sleep(0.2)
        catch_up = time.time() - t_end
        after = status(url)
        out = bench.communicate()[0]
        rows = after["change_rows"] - before["change_rows"]
        result.update({
            "pgbench": [l for l in out.splitlines() if "tps" in l or "latency" in l or "transactions" in l],
            "source_transactions": after["applied_now"] - before["applied_now"],
            "source_change_rows": rows,
            "sustained_changes_per_s": round(rows / (a.seconds + catch_up), 1),
            "catch_up_s": round(catch_up, 1),
            "latency_ms": after["latency"],
            "apply_ms": after["apply"],
            "wal_held_max_bytes": max(wal or [0]),
            "wal_held_last_bytes": (wal or [0])[-1],
            "rss_max_sampled_kib": max(rss or [0]),
            "peak_rss_kib": rss_kib(serve.pid, "VmHWM"),
            "serve_memory": after.get("memory"),
        })
    finally:
        if serve is not None and serve.poll() is None:
            serve.terminate()
            serve.wait(timeout=60)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    json.dump(result, open(a.json, "w"), indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
