#!/usr/bin/env python3
"""The interactive shell's latencies, through a pseudo-terminal (docs/shell.md#measured).

    python3 bench/shell.py [SPILLWAY_BINARY] [--trials N]

Measures: start to first prompt; a trivial statement's round trip (Enter to its status line);
Ctrl-C during a sort that spills under 64MiB to `cancelled` (printed once the statement's memory
is back in the lease), after the sort ran 1, 2, 3 and 5 seconds. Prints one line per figure.
"""
import os
import pty
import select
import statistics
import sys
import time

import argparse

parser = argparse.ArgumentParser(description="the shell's latencies through a pseudo-terminal")
parser.add_argument("binary", nargs="?", default=os.path.expanduser("~/.cache/spillway-target/release/spillway"))
parser.add_argument("--trials", type=int, default=3)
opts = parser.parse_args()
binary, trials = opts.binary, opts.trials

def spawn():
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm"
        os.execv(binary, ["spillway", "sql", "--memory", "64MiB", "--history", os.devnull])  # keeps none
    return pid, fd


pending = b""


def until(fd, needle, timeout):
    """Reads until `needle`, keeping what follows it for the next call."""
    global pending
    end = time.time() + timeout
    while needle not in pending:
        if time.time() > end:
            raise SystemExit(f"timed out waiting for {needle!r}")
        ready, _, _ = select.select([fd], [], [], 0.01)
        if ready:
            try:
                pending += os.read(fd, 65536)
            except OSError:
                raise SystemExit(f"the shell ended waiting for {needle!r}: {pending[-2000:]!r}")
    pending = pending[pending.index(needle) + len(needle):]


def leave(pid, fd):
    global pending
    pending = b""
    os.write(fd, b"\x04")
    os.waitpid(pid, 0)
    os.close(fd)


starts, trips = [], []
cancels = {d: [] for d in (1, 2, 3, 5)}
for _ in range(trials):
    t = time.time()
    pid, fd = spawn()
    until(fd, b"spillway> ", 60)
    starts.append(time.time() - t)
    for _ in range(10):
        t = time.time()
        os.write(fd, b"SELECT 1;\r")
        until(fd, b" row in ", 60)
        trips.append(time.time() - t)
        until(fd, b"spillway> ", 60)
    for delay in cancels:
        os.write(fd, b"SELECT value FROM generate_series(1, 3000000000) ORDER BY value DESC;\r")
        time.sleep(delay)
        t = time.time()
        os.write(fd, b"\x03")
        until(fd, b"cancelled", 60)
        cancels[delay].append(time.time() - t)
        until(fd, b"spillway> ", 60)
    leave(pid, fd)


def ms(xs):
    return f"median {statistics.median(xs) * 1000:.0f}ms, max {max(xs) * 1000:.0f}ms ({len(xs)} samples)"


print(f"start to prompt: {ms(starts)}")
print(f"SELECT 1, Enter to its status line: {ms(trips)}")
for delay, xs in cancels.items():
    print(f"Ctrl-C after {delay}s of a spilling sort to `cancelled`: {ms(xs)}")
