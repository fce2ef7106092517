#!/usr/bin/env python3
"""One machine, one budget (issue #20): N `spillway sql` processes started at once, each with a
budget of 40% of a machine budget, with the machine-wide ledger and without it (`--ledger off`),
side by side in one run.

    python3 bench/ledger.py [--processes 10] [--machine 2GiB] [--rows 30000000] [--binary PATH]

Each process sorts `--rows` integers (an external sort that fills its lease and spills). Prints,
per mode: wall time, the most processes holding leases at once (from the ledger file), and the
machine's peak memory in use above its level before the start (MemTotal - MemAvailable,
sampled every 10ms), against the machine budget.
"""
import argparse
import os
import subprocess
import tempfile
import threading
import time

from meminfo import used

parser = argparse.ArgumentParser()
parser.add_argument("--processes", type=int, default=10)
parser.add_argument("--machine", default="2GiB")
parser.add_argument("--rows", type=int, default=30_000_000)
parser.add_argument("--binary", default=os.path.expanduser("~/.cache/spillway-target/release/spillway"))
opts = parser.parse_args()

units = {"GiB": 1 << 30, "MiB": 1 << 20}
machine = int(float(opts.machine[:-3]) * units[opts.machine[-3:]])
each = f"{int(machine * 0.4) >> 20}MiB"




def run(ledger):
    tmp = tempfile.mkdtemp(prefix="spillway-ledger-bench-")
    path = os.path.join(tmp, "ledger") if ledger else "off"
    sql = f"SELECT value FROM generate_series(1, {opts.rows}) ORDER BY value DESC"
    base = used()
    peak = [0, 0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], used() - base)
            if ledger:
                try:
                    with open(path) as f:
                        peak[1] = max(peak[1], sum(1 for l in f if l.strip()))
                except OSError:
                    pass
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.time()
    procs = [subprocess.Popen([opts.binary, "sql", sql, "--max-rows", "1", "--memory", each,
                               "--machine-memory", opts.machine, "--ledger", path, "--spill-dir", tmp],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(opts.processes)]
    codes = [p.wait() for p in procs]
    wall = time.time() - t0
    done.set()
    t.join()
    failed = sum(1 for c in codes if c != 0)
    return wall, peak[0], peak[1], failed


print(f"{opts.processes} x spillway sql --memory {each} (40% of a {opts.machine} machine budget), "
      f"each sorting {opts.rows} integers")
for ledger in [True, False]:
    wall, peak, holders, failed = run(ledger)
    mode = "ledger" if ledger else "--ledger off"
    print(f"{mode:13} wall {wall:6.2f}s · peak machine memory in use +{peak / 1048576:7.1f}MiB "
          f"({peak / machine:.2f}x the machine budget) · most holders at once "
          f"{holders if ledger else '-'} · failed {failed}", flush=True)
