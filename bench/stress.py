#!/usr/bin/env python3
"""The stress suite: ordinary query shapes under one memory limit, spillway and DuckDB side by side.

Every shape runs on two data sets: TPC-H (`spillway gen tpch`) and `strings`, generated here with
DuckDB (long strings, a heavily skewed key, a key that is mostly NULL). Each shape runs three times on
spillway at the budget (fresh process each; it counts as complete only if all three complete), once
on spillway with no memory limit (`--pool unbounded`: the reference answer), and once on DuckDB at
the same limit. Peaks come from the kernel: VmHWM (peak RSS, as the OOM killer and cgroups count)
and RssAnon, sampled from /proc/PID/status every 5ms.

    bench/stress.sh 1 256MiB            # SF, budget [, shapes: comma-separated names or prefixes]

Prints the markdown table docs/benchmarks.md records, and writes the raw rows as JSON.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

from duckdb_tpch import connect
from sizes import parse_size

TPCH = ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"]
STRINGS = ["s", "d"]

# (name, data set, SQL). {half} is half of lineitem's rows (a large OFFSET).
SHAPES = [
    # sorts and top-k
    ("sort_wide_string", "tpch", "SELECT l_comment, l_orderkey FROM lineitem ORDER BY l_comment"),
    ("sort_all_columns", "tpch", "SELECT * FROM lineitem ORDER BY l_shipdate, l_orderkey, l_linenumber"),
    ("sort_desc_two_keys", "tpch", "SELECT o_comment, o_totalprice FROM orders ORDER BY o_totalprice DESC, o_comment"),
    ("topk_small", "tpch", "SELECT * FROM lineitem ORDER BY l_extendedprice DESC, l_orderkey, l_linenumber LIMIT 100"),
    ("topk_large_offset", "tpch",
     "SELECT * FROM lineitem ORDER BY l_orderkey, l_linenumber LIMIT 10 OFFSET {half}"),
    ("topk_large_k", "tpch", "SELECT l_orderkey, l_comment FROM lineitem ORDER BY l_comment DESC LIMIT {half}"),
    # distinct
    ("distinct_wide", "tpch", "SELECT DISTINCT l_comment FROM lineitem"),
    ("distinct_three_keys", "tpch", "SELECT DISTINCT l_partkey, l_suppkey, l_returnflag FROM lineitem"),
    ("count_distinct", "tpch", "SELECT count(DISTINCT l_comment) FROM lineitem"),
    ("count_distinct_grouped", "tpch",
     "SELECT l_suppkey, count(DISTINCT l_partkey), count(DISTINCT l_comment) FROM lineitem GROUP BY l_suppkey"),
    # aggregate families
    ("agg_many_groups", "tpch",
     "SELECT l_orderkey, sum(l_quantity), avg(l_extendedprice), min(l_shipdate), max(l_comment), count(*) "
     "FROM lineitem GROUP BY l_orderkey"),
    ("agg_median", "tpch", "SELECT l_partkey, median(l_extendedprice) FROM lineitem GROUP BY l_partkey"),
    ("agg_percentile", "tpch",
     "SELECT l_suppkey, percentile_cont(0.9) WITHIN GROUP (ORDER BY l_extendedprice) FROM lineitem GROUP BY l_suppkey"),
    ("agg_array_agg", "tpch",
     "SELECT l_partkey, array_agg(l_comment ORDER BY l_comment) FROM lineitem GROUP BY l_partkey"),
    ("agg_string_agg", "tpch",
     "SELECT l_suppkey, string_agg(l_comment, ',' ORDER BY l_comment) FROM lineitem GROUP BY l_suppkey"),
    ("agg_stddev_corr", "tpch",
     "SELECT l_partkey, round(stddev(l_quantity), 6), round(var_pop(l_extendedprice / 1000), 6), round(corr(l_quantity, l_discount), 6) "
     "FROM lineitem GROUP BY l_partkey"),
    ("agg_bool_bit", "tpch",
     "SELECT o_custkey, bool_and(o_totalprice > 1000), bit_or(o_shippriority), max(o_comment) FROM orders GROUP BY o_custkey"),
    ("rollup", "tpch",
     "SELECT l_returnflag, l_linestatus, l_shipmode, sum(l_quantity), count(*) FROM lineitem "
     "GROUP BY ROLLUP (l_returnflag, l_linestatus, l_shipmode)"),
    ("cube_high_card", "tpch", "SELECT l_suppkey, l_returnflag, sum(l_extendedprice) FROM lineitem GROUP BY CUBE (l_suppkey, l_returnflag)"),
    ("grouping_sets_wide", "tpch",
     "SELECT l_orderkey, l_partkey, sum(l_quantity), max(l_comment) FROM lineitem GROUP BY GROUPING SETS ((l_orderkey), (l_partkey))"),
    ("having", "tpch", "SELECT l_orderkey, sum(l_quantity) q FROM lineitem GROUP BY l_orderkey HAVING sum(l_quantity) > 250"),
    # windows
    ("window_no_partition", "tpch",
     "SELECT row_number() OVER (ORDER BY l_comment, l_orderkey, l_linenumber) rn, l_orderkey FROM lineitem"),
    ("window_rank", "tpch",
     "SELECT l_suppkey, rank() OVER (PARTITION BY l_suppkey ORDER BY l_extendedprice DESC, l_orderkey, l_linenumber) r FROM lineitem"),
    ("window_whole_partition", "tpch",
     "SELECT l_orderkey, l_quantity / sum(l_quantity) OVER (PARTITION BY l_partkey) share FROM lineitem"),
    ("window_two_partitionings", "tpch",
     "SELECT l_orderkey, sum(l_quantity) OVER (PARTITION BY l_suppkey) a, avg(l_extendedprice) OVER (PARTITION BY l_partkey) b FROM lineitem"),
    ("window_running_sum", "tpch",
     "SELECT l_orderkey, sum(l_extendedprice) OVER (ORDER BY l_orderkey, l_linenumber ROWS UNBOUNDED PRECEDING) FROM lineitem"),
    ("window_lag_lead", "tpch",
     "SELECT l_orderkey, lag(l_extendedprice) OVER (PARTITION BY l_partkey ORDER BY l_shipdate, l_orderkey, l_linenumber) a, "
     "lead(l_comment) OVER (PARTITION BY l_partkey ORDER BY l_shipdate, l_orderkey, l_linenumber) b FROM lineitem"),
    ("window_over_all", "tpch", "SELECT l_orderkey, l_extendedprice / sum(l_extendedprice) OVER () FROM lineitem"),
    # joins
    ("join_inner", "tpch", "SELECT o_orderpriority, l_comment, o_comment FROM lineitem JOIN orders ON l_orderkey = o_orderkey"),
    ("join_left", "tpch", "SELECT c_custkey, c_name, o_orderkey, o_comment FROM customer LEFT JOIN orders ON c_custkey = o_custkey"),
    ("join_full_outer", "tpch",
     "SELECT o_orderkey, l_orderkey, l_comment FROM orders FULL OUTER JOIN lineitem ON o_orderkey = l_orderkey AND l_quantity > 49"),
    ("join_semi", "tpch",
     "SELECT o_orderkey, o_comment FROM orders WHERE EXISTS (SELECT 1 FROM lineitem WHERE l_orderkey = o_orderkey AND l_shipdate > l_receiptdate - 2)"),
    ("join_anti", "tpch",
     "SELECT c_custkey, c_comment FROM customer WHERE NOT EXISTS (SELECT 1 FROM orders WHERE o_custkey = c_custkey)"),
    ("join_fanout", "tpch",
     "SELECT count(*), sum(a.o_totalprice - b.o_totalprice) FROM orders a JOIN orders b ON a.o_custkey = b.o_custkey"),
    ("join_residual", "tpch",
     "SELECT p_partkey, ps_suppkey, ps_comment FROM part JOIN partsupp ON ps_partkey = p_partkey AND ps_supplycost < p_retailprice * 0.05"),
    ("join_non_equi", "tpch",
     "SELECT count(*) FROM supplier s JOIN customer c ON c.c_acctbal BETWEEN s.s_acctbal - 0.5 AND s.s_acctbal + 0.5 AND c.c_nationkey = 3"),
    ("join_cross", "tpch", "SELECT n_name, r_name, s_name, s_comment FROM nation CROSS JOIN region CROSS JOIN supplier"),
    # set operations, subqueries, CTEs
    ("union_all_sort", "tpch",
     "SELECT c FROM (SELECT l_comment c FROM lineitem UNION ALL SELECT o_comment FROM orders) ORDER BY c"),
    ("union_distinct", "tpch", "SELECT l_comment c FROM lineitem UNION SELECT o_comment FROM orders"),
    ("except_wide", "tpch", "SELECT l_comment FROM lineitem EXCEPT SELECT l_comment FROM lineitem WHERE l_quantity < 25"),
    ("intersect_wide", "tpch", "SELECT l_comment FROM lineitem INTERSECT SELECT l_comment FROM lineitem WHERE l_quantity < 25"),
    ("correlated_subquery", "tpch",
     "SELECT l_orderkey, l_linenumber FROM lineitem l WHERE l_quantity > (SELECT 1.5 * avg(l2.l_quantity) FROM lineitem l2 WHERE l2.l_partkey = l.l_partkey)"),
    ("in_subquery", "tpch",
     "SELECT o_orderkey, o_comment FROM orders WHERE o_orderkey IN (SELECT l_orderkey FROM lineitem WHERE l_quantity > 45)"),
    ("cte_twice", "tpch",
     "WITH t AS (SELECT l_orderkey k, sum(l_extendedprice) s FROM lineitem GROUP BY l_orderkey) "
     "SELECT a.k, a.s - b.s FROM t a JOIN t b ON a.k = b.k + 1"),
    ("very_wide_rows", "tpch",
     "SELECT l_orderkey, l_comment || l_comment || l_comment || l_comment || l_comment || l_comment || l_comment || l_comment AS w "
     "FROM lineitem ORDER BY w"),
    # the strings data set: long strings, skew, NULLs
    ("s_sort_long_strings", "strings", "SELECT id, txt FROM s ORDER BY txt"),
    ("s_distinct_long_strings", "strings", "SELECT DISTINCT txt FROM s"),
    ("s_group_skewed_string_agg", "strings",
     "SELECT skew, length(string_agg(substr(txt, 1, 8), ',' ORDER BY txt)) FROM s GROUP BY skew"),
    ("s_join_skewed", "strings", "SELECT s.id, d.name FROM s JOIN d ON s.skew = d.k"),
    ("s_left_join_nulls", "strings", "SELECT s.id, d.name FROM s LEFT JOIN d ON s.nul = d.k"),
    ("s_window_skewed_partition", "strings",
     "SELECT id, row_number() OVER (PARTITION BY skew ORDER BY txt, id) FROM s"),
    ("s_count_distinct_nulls", "strings", "SELECT skew, count(DISTINCT nul), count(nul), count(*) FROM s GROUP BY skew"),
    ("s_median_skewed", "strings", "SELECT skew, median(val) FROM s GROUP BY skew"),
]


def gen_strings(folder, sf):
    """The `strings` data set: s (sf x 1M rows) and d (100k rows), as Parquet."""
    import duckdb

    os.makedirs(folder, exist_ok=True)
    done = os.path.join(folder, ".done")
    if os.path.exists(done):
        return
    n = int(sf * 1_000_000)
    con = duckdb.connect()
    # Row groups of 10,000 rows (about 10MB of strings; a Parquet page is read whole, and 100,000
    # rows would make 100MB pages). Deterministic: everything derives from hash(i). skew: half the rows share key 0, the rest
    # spread over 50k keys; nul: NULL in 90% of rows; txt: 20 to 2,000 characters.
    con.execute(f"""COPY (
        SELECT i AS id,
               CASE WHEN hash(i) % 2 = 0 THEN 0 ELSE (hash(i * 7) % 50000)::BIGINT END AS skew,
               CASE WHEN hash(i * 3) % 10 = 0 THEN (hash(i * 5) % 100000)::BIGINT END AS nul,
               repeat(md5(i::VARCHAR), 1 + (hash(i * 11) % 62)::INT) AS txt,
               (hash(i * 13) % 1000000) / 100.0 AS val
        FROM range({n}) t(i)) TO '{folder}/s.parquet' (FORMAT parquet, ROW_GROUP_SIZE 10000)""")
    con.execute(f"""COPY (SELECT i AS k, 'name-' || md5(i::VARCHAR) AS name FROM range(100000) t(i))
        TO '{folder}/d.parquet' (FORMAT parquet)""")
    open(done, "w").close()


def duckdb_child(args):
    con = connect(args.memory, len(os.sched_getaffinity(0)), args.temp)
    for t in TPCH:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{args.tpch}/{t}/*.parquet')")
    for t in STRINGS:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{args.strings}/{t}.parquet')")
    # Streamed out as CSV to /dev/null, which formats every value as text the way spillway's
    # --checksum does; a checksum in Python would cost DuckDB more than the query. DuckDB's
    # answers are not compared (spillway's are, against its own unbounded run).
    rows = con.execute(f"COPY ({args.child}) TO '/dev/null' (FORMAT csv)").fetchone()[0]
    print(json.dumps({"rows": rows}))


def measure(cmd, timeout):
    """Runs cmd; returns (status, wall seconds, kernel peak RSS, sampled peak RssAnon, stdout, stderr)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    anon, hwm, timed_out = 0, 0, False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        anon = max(anon, int(line.split()[1]) * 1024)
                    elif line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]) * 1024)
        except OSError:
            pass
        if not timed_out and time.monotonic() - started > timeout:
            os.kill(proc.pid, signal.SIGKILL)
            timed_out = True
        time.sleep(0.005)
    wall = time.monotonic() - started
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if timed_out:
        state = "timeout"
    elif os.WIFSIGNALED(status):
        state = "killed"
    elif os.WEXITSTATUS(status) == 0:
        state = "ok"
    else:
        state = "error"
    # VmHWM (the kernel's peak RSS of the process) sampled until exit: wait4's ru_maxrss would
    # also count the RSS of this script at the fork.
    return state, wall, hwm, anon, out, err


def checksum_of(out):
    # spillway sql --checksum prints "N rows, checksum H"
    for line in out.splitlines():
        if ", checksum " in line:
            return line.split(", checksum ")[1].strip()
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", required=True)
    p.add_argument("--tpch", required=True)
    p.add_argument("--strings", required=True)
    p.add_argument("--sf", type=float, default=1.0)
    p.add_argument("--memory", required=True)
    p.add_argument("--shapes", default="")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--temp", default=os.path.join(os.path.expanduser("~"), ".cache", "spillway", "duckdb-temp"))
    p.add_argument("--no-duckdb", action="store_true")
    p.add_argument("--json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--gen", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return duckdb_child(args)
    if args.gen:
        return gen_strings(args.strings, args.sf)
    # In a child: this process stays small (its RSS would otherwise show in every child's peak).
    subprocess.run([sys.executable, os.path.abspath(__file__), "--gen", "--bin", "-", "--tpch", "-", "--strings",
                    args.strings, "--sf", str(args.sf), "--memory", args.memory], check=True)
    os.makedirs(args.temp, exist_ok=True)
    half = int(args.sf * 6_001_215) // 2
    budget = parse_size(args.memory)
    wanted = [w for w in args.shapes.split(",") if w]
    shapes = [s for s in SHAPES if not wanted or any(s[0].startswith(w) for w in wanted)]
    rows = []
    for name, data, sql in shapes:
        sql = sql.replace("{half}", str(half))
        tables = ["-d", args.tpch] if data == "tpch" else ["-d", args.strings]
        base = [args.bin, "sql", *tables, "--checksum", "--max-spill", "40GiB"]
        row = {"shape": name, "data": data, "sql": sql, "runs": []}
        ref = measure([*base, "--pool", "unbounded", "--memory", args.memory, sql], args.timeout)
        row["reference"] = checksum_of(ref[4]) if ref[0] == "ok" else None
        for _ in range(args.repeat):
            state, wall, rss, anon, out, err = measure([*base, "--memory", args.memory, sql], args.timeout)
            lines = [l for l in err.splitlines() if l.strip()]
            row["runs"].append({"status": state, "wall": wall, "rss": rss, "anon": anon,
                                "checksum": checksum_of(out), "error": None if state == "ok" else (lines[-1] if lines else state)[:300]})
        if not args.no_duckdb:
            script = os.path.abspath(__file__)
            state, wall, rss, anon, out, err = measure(
                [sys.executable, script, "--child", sql, "--bin", "-", "--tpch", args.tpch, "--strings", args.strings,
                 "--memory", args.memory, "--temp", args.temp], args.timeout)
            lines = [l for l in err.splitlines() if l.strip()]
            row["duckdb"] = {"status": state, "wall": wall, "rss": rss, "anon": anon,
                             "error": None if state == "ok" else (lines[-1] if lines else state)[:300]}
        rows.append(row)
        print(line_of(row, budget), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    print()
    print(table(rows, budget, args))


def summary(row, budget):
    runs = row["runs"]
    ok = [r for r in runs if r["status"] == "ok"]
    done = len(ok) == len(runs)
    wall = sorted(r["wall"] for r in ok)[len(ok) // 2] if ok else None
    rss = max(r["rss"] for r in runs) / budget
    anon = max(r["anon"] for r in runs) / budget
    equal = done and row["reference"] is not None and all(r["checksum"] == row["reference"] for r in ok)
    return done, len(ok), wall, rss, anon, equal


def line_of(row, budget):
    done, n, wall, rss, anon, equal = summary(row, budget)
    d = row.get("duckdb")
    duck = f"duckdb {d['status']} {d['wall']:.2f}s rss {d['rss'] / budget:.2f}" if d else ""
    err = next((r["error"] for r in row["runs"] if r["error"]), "")
    return (f"{row['shape']:<28} {n}/{len(row['runs'])} {'' if wall is None else f'{wall:.2f}s':>8} rss {rss:.2f} anon {anon:.2f} "
            f"{'equal' if equal else 'DIFFERENT' if done else ''}  {duck}  {err[:160]}")


def table(rows, budget, args):
    out = [f"Stress suite: SF{args.sf:g}, --memory {args.memory}, {len(os.sched_getaffinity(0))} cores; "
           f"spillway {args.repeat} runs per shape (complete = all {args.repeat}), DuckDB 1 run at the same limit.",
           "",
           "| shape | data | spillway | time | vs DuckDB | peak RSS / budget | anon / budget | = unbounded | DuckDB | DuckDB RSS / budget |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    totals = [0, 0, 0, 0]
    for row in rows:
        done, n, wall, rss, anon, equal = summary(row, budget)
        d = row.get("duckdb") or {}
        ratio = f"{wall / d['wall']:.2f}" if wall and d.get("status") == "ok" else "-"
        totals[0] += done
        totals[1] += done and rss <= 1.15
        totals[2] += equal
        totals[3] += d.get("status") == "ok"
        duck_rss = f"{d['rss'] / budget:.2f}" if d else "-"
        out.append(f"| {row['shape']} | {row['data']} | {n}/{len(row['runs'])} | {'-' if wall is None else f'{wall:.2f}s'} | {ratio} "
                   f"| {rss:.2f} | {anon:.2f} | {'yes' if equal else 'no'} | {d.get('status', '-')} | {duck_rss} |")
    out.append("")
    out.append(f"spillway complete {totals[0]}/{len(rows)}, complete within 1.15x {totals[1]}/{len(rows)}, "
               f"answers equal to the unbounded run {totals[2]}/{len(rows)}; DuckDB complete {totals[3]}/{len(rows)}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
