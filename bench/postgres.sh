#!/usr/bin/env bash
# Loading TPC-H lineitem (SF1: 6,001,215 rows) from a model into PostgreSQL in each load mode,
# next to `psql \copy` of the same rows as CSV. Prints a markdown table: rows/s (load time is
# connect to commit, reading Parquet included for spillway), WAL bytes the server wrote.
#
#   bench/postgres.sh [SF] [REPEATS]
#
# Starts its own PostgreSQL (initdb into a temp dir, port 5499; stopped at the end) with stock
# durability (fsync on, wal_level=replica, synchronous_commit=on) and room to load without
# checkpoints: shared_buffers=2GB, max_wal_size=16GB, checkpoint_timeout=30min.
set -euo pipefail
sf=${1:-1}
repeats=${2:-3}
cd "$(dirname "$0")/.."
root=$(pwd)
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
[ -x "$bin" ] || cargo build --release
data=${DATA:-$root/bench/data/tpch-sf$sf}
[ -f "$data/_SUCCESS" ] || { "$bin" gen tpch --sf "$sf" --out "$data" && touch "$data/_SUCCESS"; }

pgbin=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")")
work=$(mktemp -d /tmp/spillway-pgbench-XXXX)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work"; as_pg=(runuser -u postgres --); fi
"${as_pg[@]}" "$pgbin/initdb" -D "$work/data" -U spillway --auth=trust -E UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/data" -l "$work/log" -w start -o \
  "-c port=5499 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c shared_buffers=2GB -c max_wal_size=16GB -c checkpoint_timeout=30min" >/dev/null
trap '"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null; rm -rf "$work"' EXIT
export SPILLWAY_PG_URL="postgresql://spillway@127.0.0.1:5499/postgres"
psql_() { psql -X -q -A -t -h 127.0.0.1 -p 5499 -U spillway -d postgres -v ON_ERROR_STOP=1 "$@"; }
out="$work/results"
mkdir -p "$out"

# run NAME SINK-SETTINGS [MODEL-SQL]: one project run, results kept as $out/NAME.json
run() {
  local name=$1 settings=$2 sql=${3:-SELECT * FROM lineitem}
  local p="$work/project"
  rm -rf "$p" && mkdir -p "$p/models"
  echo "$sql" > "$p/models/lineitem_pg.sql"
  cat > "$p/spillway.toml" <<TOML
[sources.lineitem]
type = "parquet"
path = "$data/lineitem"

[sinks.pg]
model = "lineitem_pg"
type = "postgres"
url_env = "SPILLWAY_PG_URL"
$settings
TOML
  "$bin" run "$p" --plain --memory 4GiB > "$out/$name.log" 2>&1 || { cat "$out/$name.log"; exit 1; }
  cp "$p/.spillway/runs/latest/run_results.json" "$out/$name.json"
}

run warmup 'table = "lineitem"'
for rep in $(seq "$repeats"); do
  run "replace-new-$rep" 'table = "fresh_'"$rep"'"'
  run "replace-$rep" 'table = "lineitem"'
  run "replace-sync-off-$rep" 'table = "lineitem"
synchronous_commit = "off"'
  run "replace-streams-2-$rep" 'table = "lineitem"
streams = 2'
  run "replace-unlogged-$rep" 'table = "scratch"
unlogged = true'
  run "replace-key-index-$rep" 'table = "keyed"
key = ["l_orderkey", "l_linenumber"]
indexes = ["l_shipdate"]'
  psql_ -c "TRUNCATE lineitem"
  run "append-$rep" 'table = "lineitem"
mode = "append"'
  run "upsert-$rep" 'table = "keyed"
mode = "upsert"
key = ["l_orderkey", "l_linenumber"]'
  psql_ -c "DROP TABLE fresh_$rep"
done

# Two COPY streams at once: two models (half the rows each) into two tables, side by side.
for rep in $(seq "$repeats"); do
  p="$work/project2"; rm -rf "$p" && mkdir -p "$p/models"
  echo "SELECT * FROM lineitem WHERE l_orderkey % 2 = 0" > "$p/models/even.sql"
  echo "SELECT * FROM lineitem WHERE l_orderkey % 2 = 1" > "$p/models/odd.sql"
  printf '[sources.lineitem]\ntype = "parquet"\npath = "%s/lineitem"\n' "$data" > "$p/spillway.toml"
  for m in even odd; do
    printf '[sinks.%s]\nmodel = "%s"\ntype = "postgres"\nurl_env = "SPILLWAY_PG_URL"\ntable = "half_%s"\n' "$m" "$m" "$m" >> "$p/spillway.toml"
  done
  "$bin" run "$p" --plain --memory 4GiB --jobs 2 > "$out/parallel-$rep.log" 2>&1
  cp "$p/.spillway/runs/latest/run_results.json" "$out/parallel-$rep.json"
done

# psql \copy of the same rows as CSV (exported once, not timed), into an empty logged table.
"$bin" sql "SELECT * FROM lineitem" -t "lineitem=$data/lineitem" -o "$work/lineitem.csv" --memory 4GiB >/dev/null
ddl=$(psql_ -c "SELECT string_agg(quote_ident(attname) || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'lineitem'::regclass AND attnum > 0 AND NOT attisdropped")
for rep in $(seq "$repeats"); do
  psql_ -c "DROP TABLE IF EXISTS csv_copy" -c "CREATE TABLE csv_copy ($ddl)"
  wal0=$(psql_ -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8")
  t0=$(date +%s.%N)
  psql_ -c "\\copy csv_copy FROM '$work/lineitem.csv' WITH (FORMAT csv, HEADER true)"
  t1=$(date +%s.%N)
  wal1=$(psql_ -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8")
  rows=$(psql_ -c "SELECT count(*) FROM csv_copy")
  echo "{\"rows\": $rows, \"seconds\": $(python3 -c "print($t1 - $t0)"), \"wal\": $((wal1 - wal0))}" > "$out/csv-$rep.json"
done

python3 - "$out" "$repeats" "$sf" <<'PY'
import json, statistics, sys, os
out, repeats, sf = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def sinks(name):
    r = json.load(open(os.path.join(out, name + ".json")))
    return r, [s for st in r["steps"] for s in st["sinks"]]
rows = [
    ("replace into a new table (CREATE, COPY FREEZE, COMMIT)", "replace-new"),
    ("replace an existing table (new table, swap names)", "replace"),
    ("replace, synchronous_commit = off", "replace-sync-off"),
    ("replace, streams = 2 (two COPY connections into the new table)", "replace-streams-2"),
    ("replace, unlogged = true", "replace-unlogged"),
    ("replace with key (2 cols) + 1 index, built after the load", "replace-key-index"),
    ("append into an empty existing table (COPY, no FREEZE)", "append"),
    ("upsert on (l_orderkey, l_linenumber), every key present", "upsert"),
]
print(f"TPC-H SF{sf} lineitem, median of {repeats} runs\n")
print("| load | rows | time | rows/s | WAL |")
print("|---|---|---|---|---|")
gib = lambda b: f"{b / 2**20:,.0f}MiB"
for label, key in rows:
    runs = [sinks(f"{key}-{i}")[1][0] for i in range(1, repeats + 1)]
    t = statistics.median(s["elapsed_ms"] for s in runs) / 1000
    wal = statistics.median(s.get("wal_bytes") or 0 for s in runs)
    n = runs[0]["rows"]
    print(f"| spillway {label} | {n:,} | {t:.2f}s | {n / t / 1e6:.2f}M | {gib(wal)} |")
par = []
for i in range(1, repeats + 1):
    r, ss = sinks(f"parallel-{i}")
    st = [s for s in r["steps"]]
    span = (max(s["finished_ms"] for s in st) - min(s["leased_ms"] for s in st)) / 1000
    par.append((span, sum(s["rows"] for s in ss), sum(s.get("wal_bytes") or 0 for s in ss)))
t = statistics.median(p[0] for p in par)
print(f"| spillway 2 models at once into 2 tables (half each, --jobs 2) | {par[0][1]:,} | {t:.2f}s | {par[0][1] / t / 1e6:.2f}M | (both) {gib(statistics.median(p[2] for p in par))} |")
csv = [json.load(open(os.path.join(out, f"csv-{i}.json"))) for i in range(1, repeats + 1)]
t = statistics.median(c["seconds"] for c in csv)
print(f"| psql \\copy CSV into an empty logged table | {csv[0]['rows']:,} | {t:.2f}s | {csv[0]['rows'] / t / 1e6:.2f}M | {gib(statistics.median(c['wal'] for c in csv))} |")
PY
