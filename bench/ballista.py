#!/usr/bin/env python3
"""Models on a Ballista cluster (issue #21), side by side in one run, on this one machine.

    python3 bench/ballista.py [--sf 10] [--memory 8GiB] [--cluster-memory 8GiB] [--executors 2]
                              [--trials 2] [--queries 1,2,...] [--binary PATH] [--skip-example]

1. examples/tpch at SF N: all models local, then with its heavy model (order_lines) and the two
   models that read it and publish (revenue_by_nation_month, shipping_delays) on a local cluster
   (`spillway cluster up --executors E --memory M`), alternated `--trials` times. The cluster is
   started before and stopped after each cluster run (not timed), so a local run has the machine
   to itself. On one machine the cluster is expected to be slower: the figure is the cost of the
   distributed path (planning and shipping the plan, shuffles through files, rows streamed back).
2. The 22 TPC-H queries at SF N, each as a model with engine = "ballista" run by itself
   (`spillway run --select qN`) on one cluster, each executor bounded by its share: per query its
   status, time, Ballista's execution time, and each executor's peak RSS (VmHWM is a high-water
   mark, so RSS is sampled every 20ms while the query runs) against its share; at the end each
   executor's cgroup peak (it also counts page cache).

TPC-H data is generated once into ~/.cache/spillway/bench-isolate/tpch-sf<N> (shared with
bench/isolate.py). A ledger of its own (/tmp/spillway-bench-ballista-ledger) keeps other spillway
processes out of the figures.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--sf", default="10")
parser.add_argument("--memory", default="8GiB", help="the local run's budget")
parser.add_argument("--cluster-memory", default="8GiB", help="the cluster's budget (split among executors)")
parser.add_argument("--executors", type=int, default=2)
parser.add_argument("--trials", type=int, default=2)
parser.add_argument("--queries", default=",".join(str(q) for q in range(1, 23)))
parser.add_argument("--binary", default=os.path.expanduser("~/.cache/spillway-target/release/spillway"))
parser.add_argument("--skip-example", action="store_true")
opts = parser.parse_args()

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.expanduser("~/.cache/spillway/bench-isolate")
os.makedirs(root, exist_ok=True)
env = dict(os.environ, SPILLWAY_LEDGER="/tmp/spillway-bench-ballista-ledger")
CLUSTER_MODELS = ["order_lines", "revenue_by_nation_month", "shipping_delays"]


def link_data(dir):
    data = os.path.join(root, f"tpch-sf{opts.sf}")
    os.makedirs(os.path.join(dir, ".spillway", "data"), exist_ok=True)
    if os.path.isdir(data):
        os.symlink(data, os.path.join(dir, ".spillway", "data", f"tpch-sf{opts.sf}"))


def keep_data(dir):
    data = os.path.join(dir, ".spillway", "data", f"tpch-sf{opts.sf}")
    cache = os.path.join(root, f"tpch-sf{opts.sf}")
    if not os.path.islink(data) and not os.path.isdir(cache) and os.path.isdir(data):
        shutil.move(data, cache)


class Cluster:
    def __init__(self):
        self.proc = subprocess.Popen(
            [opts.binary, "cluster", "up", "--port", "0", "--executors", str(opts.executors),
             "--memory", opts.cluster_memory], stdout=subprocess.PIPE, text=True, env=env)
        self.lines = []
        self.pids = {}
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.match(r"\s+(executor-\d+)\s+pid (\d+)\s+share (\S+)", line)
            if m:
                self.pids[m.group(1)] = (int(m.group(2)), m.group(3))
            if "cluster up at" in line:
                self.url = re.search(r"df://[0-9.]+:\d+", line).group(0)
            if line.startswith("Ctrl-C"):
                break
        self.peaks = {e: 0 for e in self.pids}
        self.stop_sampling = threading.Event()
        self.sampler = threading.Thread(target=self.sample, daemon=True)
        self.sampler.start()

    def rss(self, pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sample(self):
        while not self.stop_sampling.is_set():
            for e, (pid, _) in self.pids.items():
                self.peaks[e] = max(self.peaks[e], self.rss(pid))
            time.sleep(0.02)

    def reset_peaks(self):
        for e in self.peaks:
            self.peaks[e] = 0

    def stop(self):
        self.stop_sampling.set()
        self.proc.send_signal(signal.SIGTERM)
        rest = self.proc.stdout.read()
        self.proc.wait()
        return [l for l in rest.splitlines() if l.startswith("stopped ")]


def mib(b):
    return f"{b / 1048576:7.1f}MiB"


def example_run(mode, cluster=None):
    dir = os.path.join(root, f"ballista-{mode}-sf{opts.sf}")
    shutil.rmtree(dir, ignore_errors=True)
    shutil.copytree(os.path.join(here, "..", "examples", "tpch"), dir, ignore=shutil.ignore_patterns(".spillway", "output"))
    link_data(dir)
    cmd = [opts.binary, "run", dir, "--memory", opts.memory, "--set", f"sources.tpch.sf={opts.sf}", "--plain"]
    if cluster:
        cmd += ["--set", f"engine.url={cluster.url}"]
        for m in CLUSTER_MODELS:
            cmd += ["--set", f"models.{m}.engine=ballista"]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed: {out.stdout}\n{out.stderr}")
    keep_data(dir)
    results = json.load(open(os.path.join(dir, ".spillway", "runs", "latest", "run_results.json")))
    return wall, results


if not opts.skip_example:
    example_run("local")  # generates the data once, warms the page cache
    best = {}
    for trial in range(opts.trials):
        for mode in ["local", "cluster"]:
            cluster = Cluster() if mode == "cluster" else None
            wall, results = example_run(mode, cluster)
            stopped = cluster.stop() if cluster else []
            models_ms = results["elapsed_ms"] - results["sources_ready_ms"]
            print(f"trial {trial + 1} {mode:7}: models {models_ms}ms, wall {wall:.2f}s, peak resident here "
                  f"{mib(results['peak_resident_bytes'])}; {'; '.join(stopped)}", flush=True)
            b = best.get(mode)
            if b is None or models_ms < b[0]:
                best[mode] = (models_ms, results, stopped)
    (lms, local, _), (cms, remote, stopped) = best["local"], best["cluster"]
    print(f"\nexamples/tpch at SF{opts.sf}: local --memory {opts.memory} vs {', '.join(CLUSTER_MODELS)} on "
          f"{opts.executors} executors (--memory {opts.cluster_memory}), fastest of {opts.trials} (alternated)")
    print(f"{'model':32} {'local':>9} {'cluster':>9} {'on the cluster':>15} {'queued':>8}  tier here")
    lsteps = {s["name"]: s for s in local["steps"]}
    for s in remote["steps"]:
        c = s.get("cluster") or {}
        ran = f"{c['execution_ms']}ms" if c else "-"
        queued = f"{c['scheduling_ms']}ms" if c else "-"
        print(f"{s['name']:32} {lsteps[s['name']]['elapsed_ms']:7}ms {s['elapsed_ms']:7}ms {ran:>15} {queued:>8}  {s.get('tier')}")
    print(f"{'all models':32} {lms:7}ms {cms:7}ms")
    print("executors: " + "; ".join(stopped))

# The 22 queries, one model each, all on the cluster.
qdir = os.path.join(root, f"ballista-queries-sf{opts.sf}")
shutil.rmtree(qdir, ignore_errors=True)
os.makedirs(os.path.join(qdir, "models"))
queries = [int(q) for q in opts.queries.split(",")]
for q in queries:
    shutil.copy(os.path.join(here, "..", "crates", "engine", "queries", "tpch", f"q{q}.sql"),
                os.path.join(qdir, "models", f"q{q:02}.sql"))
link_data(qdir)
cluster = Cluster()
with open(os.path.join(qdir, "spillway.toml"), "w") as f:
    f.write(f'[engine]\ntype = "ballista"\nurl = "{cluster.url}"\n\n[sources.tpch]\ntype = "tpch"\nsf = {opts.sf}\n')
share = {e: s for e, (_, s) in cluster.pids.items()}
print(f"\nTPC-H SF{opts.sf} on {opts.executors} executors, --memory {opts.cluster_memory} "
      f"(share each: {', '.join(sorted(set(share.values())))}); each query by itself")
print(f"{'query':6} {'status':7} {'time':>8} {'on cluster':>11} " + " ".join(f"{e + ' peak RSS':>22}" for e in sorted(share)))
for q in queries:
    cluster.reset_peaks()
    t0 = time.time()
    out = subprocess.run([opts.binary, "run", qdir, "--select", f"q{q:02}", "--memory", "2GiB", "--plain"],
                         capture_output=True, text=True, env=env)
    wall = time.time() - t0
    keep_data(qdir)
    status, ran = "ok", "-"
    try:
        results = json.load(open(os.path.join(qdir, ".spillway", "runs", "latest", "run_results.json")))
        step = results["steps"][0]
        status = step["status"]
        c = step.get("cluster") or {}
        ran = f"{c.get('execution_ms', 0)}ms"
        if status != "ok":
            status = (step.get("error") or "error")[:160]
    except (OSError, ValueError, KeyError, IndexError):
        status = (out.stderr.strip().splitlines() or ["error"])[-1][:160]
    peaks = " ".join(f"{mib(cluster.peaks[e]) + ' of ' + share[e]:>22}" for e in sorted(share))
    print(f"q{q:<5} {status if status == 'ok' else 'error':7} {wall:7.2f}s {ran:>11} {peaks}", flush=True)
    if status != "ok":
        print(f"       {status}")
print("executors at the end: " + "; ".join(cluster.stop()))
