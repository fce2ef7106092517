#!/usr/bin/env bash
# A transaction larger than the views' lease (issue #35, item 3), spillway beside DuckDB.
#
#   bench/views_big_txn.sh                        # 5,000,000 rows rewritten inside 512MiB
#   ROWS=1000000 MEMORY=128MiB OLD_BIN=/tmp/spillway-old bench/views_big_txn.sh
#
# Env: ROWS, MEMORY, RUNS, SPILLWAY_BIN, OLD_BIN (a build to compare with). Needs bench/.venv
# with duckdb (scripts/provision makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
[ -x "$bin" ] || cargo build --release
py=bench/.venv/bin/python
[ -x "$py" ] || { echo "bench/.venv missing: run scripts/provision" >&2; exit 1; }
python3 bench/views_big_txn.py --bin "$bin" ${OLD_BIN:+--old-bin "$OLD_BIN"} --python "$py" \
  --rows "${ROWS:-5000000}" --memory "${MEMORY:-512MiB}" --runs "${RUNS:-2}"
