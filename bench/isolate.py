#!/usr/bin/env python3
"""The cost of isolated models (issue #20), side by side in one run: examples/tpch with every
model in process, then with every model isolated (`--set defaults.isolate=true`: a `spillway
worker` child per model under a memory cgroup), alternated `--trials` times.

    python3 bench/isolate.py [--sf 1] [--memory 4GiB] [--trials 3] [--binary PATH]

Prints, per model, the fastest elapsed time of each mode and the difference (spawn, hand-off
through files, teardown), then the whole run's; and the machine's memory in use (MemTotal -
MemAvailable, /proc/meminfo) above its level before the run, read 300ms after each model
finished (the memory returned to the OS after each model), and at the end of the run.

TPC-H data is generated once into ~/.cache/spillway/bench-isolate/tpch-sf<N> and shared by
both modes (a symlink into each project copy).
"""
import argparse
import json
import os
import shutil
import subprocess
import threading
import time

from meminfo import used

parser = argparse.ArgumentParser()
parser.add_argument("--sf", default="1")
parser.add_argument("--memory", default="4GiB")
parser.add_argument("--trials", type=int, default=3)
parser.add_argument("--binary", default=os.path.expanduser("~/.cache/spillway-target/release/spillway"))
opts = parser.parse_args()

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.expanduser("~/.cache/spillway/bench-isolate")
os.makedirs(root, exist_ok=True)




def project(mode):
    dir = os.path.join(root, f"{mode}-sf{opts.sf}")
    shutil.rmtree(dir, ignore_errors=True)
    shutil.copytree(os.path.join(here, "..", "examples", "tpch"), dir, ignore=shutil.ignore_patterns(".spillway", "output"))
    data = os.path.join(root, f"tpch-sf{opts.sf}")
    os.makedirs(os.path.join(dir, ".spillway", "data"), exist_ok=True)
    if os.path.isdir(data):
        os.symlink(data, os.path.join(dir, ".spillway", "data", f"tpch-sf{opts.sf}"))
    return dir


def run(mode):
    dir = project(mode)
    cmd = [opts.binary, "run", dir, "--memory", opts.memory, "--set", f"sources.tpch.sf={opts.sf}", "--plain",
           "--set", f"defaults.isolate={'true' if mode == 'isolated' else 'false'}"]
    base = used()
    after = {}
    done = threading.Event()

    def watch():
        seen = set()
        while not done.is_set():
            latest = os.path.join(dir, ".spillway", "runs", "latest", "events.jsonl")
            try:
                with open(latest) as f:
                    lines = f.readlines()
            except OSError:
                lines = []
            for line in lines:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("event") == "model_finished":
                    name = e.get("name") or e.get("step", {}).get("name")
                    if name not in seen:
                        seen.add(name)
                        time.sleep(0.3)
                        after[name] = used() - base
            time.sleep(0.02)

    t = threading.Thread(target=watch)
    t.start()
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    time.sleep(0.5)
    done.set()
    t.join()
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed: {out.stderr}")
    end = used() - base
    data = os.path.join(dir, ".spillway", "data", f"tpch-sf{opts.sf}")
    cache = os.path.join(root, f"tpch-sf{opts.sf}")
    if not os.path.islink(data) and not os.path.isdir(cache):
        shutil.move(data, cache)
    results = json.load(open(os.path.join(dir, ".spillway", "runs", "latest", "run_results.json")))
    steps = {s["name"]: s for s in results["steps"]}
    return wall, results["elapsed_ms"] - results["sources_ready_ms"], steps, after, end


def mib(b):
    return f"{b / 1048576:8.1f}MiB"


run("in-process")  # generates the data once, warms the page cache
best = {}
for trial in range(opts.trials):
    for mode in ["in-process", "isolated"]:
        wall, models_ms, steps, after, end = run(mode)
        b = best.setdefault(mode, {"models_ms": models_ms, "steps": steps, "after": after, "end": end, "wall": wall})
        if models_ms <= b["models_ms"]:
            b.update(models_ms=models_ms, wall=wall, after=after, end=end)
        for name, s in steps.items():
            if s["elapsed_ms"] < b["steps"][name]["elapsed_ms"]:
                b["steps"][name] = s
        print(f"trial {trial + 1} {mode:10}: models {models_ms}ms, wall {wall:.2f}s", flush=True)

inp, iso = best["in-process"], best["isolated"]
print(f"\nexamples/tpch at SF{opts.sf}, --memory {opts.memory}, fastest of {opts.trials} (alternated)")
print(f"{'model':32} {'in-process':>11} {'isolated':>11} {'cost':>8}  {'child peak':>12} {'limit':>12}  used after: in-proc / isolated")
for name, s in inp["steps"].items():
    i = iso["steps"][name]
    child = i.get("isolated") or {}
    print(f"{name:32} {s['elapsed_ms']:9}ms {i['elapsed_ms']:9}ms {i['elapsed_ms'] - s['elapsed_ms']:+6}ms "
          f"{mib(child.get('peak_bytes') or 0)} {mib(child.get('limit_bytes') or 0)}  "
          f"{mib(inp['after'].get(name, 0))} / {mib(iso['after'].get(name, 0))}")
print(f"{'all models':32} {inp['models_ms']:9}ms {iso['models_ms']:9}ms {iso['models_ms'] - inp['models_ms']:+6}ms")
print(f"machine memory in use above its level before the run, at the end: in-process {mib(inp['end'])}, isolated {mib(iso['end'])}")
