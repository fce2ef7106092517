#!/usr/bin/env bash
# DataFusion's own SQL test suite (datafusion-sqllogictest 55.2.0's .slt files) on stock DataFusion
# and through spillway sessions under a 1GiB and a 4MiB lease (crates/slt). Prints the counts
# docs/sqllogictest.md records; SLT_REPORT=FILE also writes every file's outcome as JSON.
#
#   bench/slt.sh
#
# Runs from the test build (same features as `cargo build`, no second build of DataFusion).
set -euo pipefail
cd "$(dirname "$0")/.."
SPILLWAY_SLT=all cargo nextest run --release --workspace -E 'package(spillway-slt) and test(a_fast_subset)' --no-capture 2>&1 \
  | sed -n '/^## datafusion-sqllogictest/,/^test a_fast/p'
