#!/usr/bin/env bash
# A view as large as its input, with a contents sink: `views apply` populates it and writes the
# sink (then one small change file, written again). Before, the sink was written from the view's
# contents decoded whole (a second copy, unreserved); now a reserved chunk at a time.
#
#   bench/views_contents.sh 1                     # SF; BINS="old new old new" MEMORY=4GiB
#
# Prints, per run: the seconds, the kernel peak RSS (VmHWM, from ../shared/tools/peak-memory)
# and the view's state. Data: TPCH_DATA or ~/.cache/spillway/tpch-sf<SF> (generated once).
set -euo pipefail
sf=${1:-1}
cd "$(dirname "$0")/.."
bin=${SPILLWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/spillway}
data=${TPCH_DATA:-$HOME/.cache/spillway/tpch-sf$sf}
[ -d "$data/lineitem" ] || "$bin" gen tpch --sf "$sf" --out "$data"
work=${WORK:-/tmp/views-contents}
for b in ${BINS:-$bin}; do
  rm -rf "$work" && mkdir -p "$work/views" "$work/.spillway/data" "$work/changes/lineitem"
  ln -s "$(realpath "$data")" "$work/.spillway/data/tpch-sf$sf"
  cat > "$work/spillway.toml" <<TOML
memory = "${MEMORY:-4GiB}"

[sources.tpch]
type = "tpch"
sf = $sf
changes = "changes"
change_tables = ["lineitem"]

[sinks.wide]
model = "wide"
path = "output/wide.parquet"
TOML
  echo "SELECT l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity, l_extendedprice, l_discount, l_shipdate, l_comment FROM lineitem WHERE l_quantity > 0" > "$work/views/wide.sql"
  start=$(date +%s.%N)
  ../shared/tools/peak-memory -- "$b" views apply "$work" 2> "$work/peak.txt" > /dev/null
  printf '_op,l_orderkey,l_partkey,l_suppkey,l_linenumber,l_quantity,l_extendedprice,l_discount,l_tax,l_returnflag,l_linestatus,l_shipdate,l_commitdate,l_receiptdate,l_shipinstruct,l_shipmode,l_comment\ninsert,9999999,1,1,1,5,100.00,0.01,0.02,N,O,1998-01-01,1998-01-02,1998-01-03,NONE,AIR,new\n' > "$work/changes/lineitem/0001.csv"
  ../shared/tools/peak-memory -- "$b" views apply "$work" 2> "$work/peak2.txt" > /dev/null
  end=$(date +%s.%N)
  state=$(python3 -c "import json,sys; s=json.load(open('$work/.spillway/views/status.json')); print(sum(v['state_bytes'] for v in s['views']))")
  rows=$(python3 -c "import json; s=json.load(open('$work/.spillway/views/status.json')); print(s['views'][0]['rows'])")
  echo "$b: $(python3 -c "print(round($end-$start,1))")s for two applies; rows $rows; state $((state >> 20))MiB; peak (population + sink) $(tail -1 "$work/peak.txt"); peak (again + one change) $(tail -1 "$work/peak2.txt")"
done
