#!/usr/bin/env bash
# Crash safety, measured: SIGKILL at every fault point a run of examples/tpch ending in
# PostgreSQL reaches, then disk full and 20 processes at once. Prints, per fault point, how the
# run was stopped, what it left (run folders, staging files), what was left after the next start,
# whether `run --resume` completed and whether its outputs equal an uninterrupted run's; then the
# totals (points tried, leaks found, resumes equal).
#
#   bench/faults.sh [SF] [MEMORY]        defaults: SF 1, MEMORY 1GiB (CI runs the same at 0.1/48MiB)
#
# The campaign is the test `issue_13_sigkill_at_every_fault_point_loses_nothing_and_leaks_nothing`
# (crates/cli/tests/cli.rs) at a larger scale: one implementation, run by CI and by this script.
# It starts its own throwaway PostgreSQL server (initdb into a temp dir) as the tests do.
set -euo pipefail
sf=${1:-1}
memory=${2:-1GiB}
cd "$(dirname "$0")/.."
export SPILLWAY_FAULTS_SF="$sf" SPILLWAY_FAULTS_MEMORY="$memory"
echo "fault campaign: examples/tpch at sf $sf under $memory, ending in PostgreSQL"
start=$(date +%s)
cargo nextest run --release --workspace --no-fail-fast --no-capture -E \
  'test(issue_13_sigkill_at_every_fault_point) | test(issue_13_disk_full) | test(issue_13_twenty_processes)' 2>&1 |
  grep -E '^(point|[a-z0-9@-]+ +(SIGKILL|exit))|points tried|PASS|FAIL|Summary'
echo "wall time: $(( $(date +%s) - start ))s"
