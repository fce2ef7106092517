#!/usr/bin/env bash
# PostgreSQL in, PostgreSQL out (issue #17): the 22 TPC-H views followed from PostgreSQL through
# logical replication and kept in PostgreSQL tables while pgbench updates orders and lineitem.
#
#   bench/views_postgres.sh 1            # SF1, 1,000 changes/s offered for 120 s, 16GiB
#   RATE=200 RUN_SECONDS=60 MEMORY=4GiB bench/views_postgres.sh 0.1
#
# Env: IDENTITY (full: REPLICA IDENTITY FULL on every table; key: the primary key), MEMORY (16GiB), RATE (source changes/s offered, 1000), RUN_SECONDS (120), MAX_ROWS (lineitems a
# transaction's range covers at most, 1000), JSON, TPCH_DATA, SPILLWAY_BIN. Needs the PostgreSQL
# server binaries and pgbench (Debian: postgresql, postgresql-contrib).
set -euo pipefail
sf=${1:-1}
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
[ -x "$bin" ] || cargo build --release
data=${TPCH_DATA:-$HOME/.cache/spillway/tpch-sf$sf}
[ -f "$data/_SUCCESS" ] || "$bin" gen tpch --sf "$sf" --out "$data"
python3 bench/views_postgres.py --bin "$bin" --sf "$sf" --data "$data" --memory "${MEMORY:-16GiB}" \
  --rate "${RATE:-1000}" --seconds "${RUN_SECONDS:-120}" --max-rows "${MAX_ROWS:-1000}" \
  --json "${JSON:-/tmp/views-postgres-sf$sf.json}" --identity "${IDENTITY:-full}"
