#!/usr/bin/env bash
# Exactly once for views (issue #34): a one-shot `views apply` catching up with PostgreSQL, an idle
# one, and the start-up cost of comparing applied change files with their hashes.
#
#   bench/views_once.sh                       # 1M orders, 2,000 transactions, 1,000 change files
#   TXNS=500 FILES=200 bench/views_once.sh
#
# Env: ORDERS, TXNS, RUNS, ROWS, FILES, SPILLWAY_BIN. Needs the PostgreSQL server binaries and psql.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
[ -x "$bin" ] || cargo build --release
python3 bench/views_once.py --bin "$bin" --orders "${ORDERS:-1000000}" --txns "${TXNS:-2000}" \
  --runs "${RUNS:-5}" --rows "${ROWS:-1000000}" --files "${FILES:-1000}"
