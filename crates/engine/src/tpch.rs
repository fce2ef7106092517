//! Embedded TPC-H data generation (the `tpchgen` / `tpchgen-arrow` crates) straight to Parquet,
//! so every demo, test and benchmark has real data without downloads.
//!
//! Layout written: `OUT/<table>/part-<n>.parquet`, one folder per table (what
//! [`register_data_dir`](crate::tables::register_data_dir) reads back). Each table is written into a
//! hidden temp folder and renamed into place when complete. Parts are generated on `threads`
//! threads; memory stays at a few batches per thread plus one Parquet row group per writer.

use crate::error::{Error, Result};
/// Row groups of generated tables are cut at about this encoded size (~100k lineitem rows, close
/// to DuckDB's 122,880-row groups), so scans of them stay small under tight budgets.
const ROW_GROUP_BYTES: usize = 16 << 20;
use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use spillway_tiers::file::{FileSink, WriteOptions};
use spillway_tiers::FileFormat;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tpchgen::generators::*;
use tpchgen_arrow::*;

/// The eight TPC-H tables.
pub const TABLES: [&str; 8] = ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"];

/// Approximate row count of `table` at scale factor `sf` (exact for all but lineitem).
pub fn expected_rows(table: &str, sf: f64) -> u64 {
    let per_sf = match table {
        "nation" => return 25,
        "region" => return 5,
        "part" => 200_000.0,
        "supplier" => 10_000.0,
        "partsupp" => 800_000.0,
        "customer" => 150_000.0,
        "orders" => 1_500_000.0,
        "lineitem" => 6_001_215.0,
        _ => 0.0,
    };
    (per_sf * sf).ceil().max(1.0) as u64
}

type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

fn batches(table: &str, sf: f64, part: i32, parts: i32) -> BatchIter {
    const BATCH: usize = 8192;
    match table {
        "nation" => Box::new(NationArrow::new(NationGenerator::new(sf, part, parts)).with_batch_size(BATCH)),
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(sf, part, parts)).with_batch_size(BATCH)),
        "part" => Box::new(PartArrow::new(PartGenerator::new(sf, part, parts)).with_batch_size(BATCH)),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(sf, part, parts)).with_batch_size(BATCH)),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts)).with_batch_size(BATCH)),
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(sf, part, parts)).with_batch_size(BATCH)),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(sf, part, parts)).with_batch_size(BATCH)),
        _ => Box::new(LineItemArrow::new(LineItemGenerator::new(sf, part, parts)).with_batch_size(BATCH)),
    }
}

/// The 22 TPC-H queries with the specification's validation parameters (`queries/tpch/qN.sql`),
/// in DataFusion's dialect; Q15's view is a CTE, and some `ORDER BY`s get a tie-breaker so that
/// results with `LIMIT` are deterministic.
const QUERIES: [&str; 22] = [
    include_str!("../queries/tpch/q1.sql"),
    include_str!("../queries/tpch/q2.sql"),
    include_str!("../queries/tpch/q3.sql"),
    include_str!("../queries/tpch/q4.sql"),
    include_str!("../queries/tpch/q5.sql"),
    include_str!("../queries/tpch/q6.sql"),
    include_str!("../queries/tpch/q7.sql"),
    include_str!("../queries/tpch/q8.sql"),
    include_str!("../queries/tpch/q9.sql"),
    include_str!("../queries/tpch/q10.sql"),
    include_str!("../queries/tpch/q11.sql"),
    include_str!("../queries/tpch/q12.sql"),
    include_str!("../queries/tpch/q13.sql"),
    include_str!("../queries/tpch/q14.sql"),
    include_str!("../queries/tpch/q15.sql"),
    include_str!("../queries/tpch/q16.sql"),
    include_str!("../queries/tpch/q17.sql"),
    include_str!("../queries/tpch/q18.sql"),
    include_str!("../queries/tpch/q19.sql"),
    include_str!("../queries/tpch/q20.sql"),
    include_str!("../queries/tpch/q21.sql"),
    include_str!("../queries/tpch/q22.sql"),
];

/// TPC-H query `n` (1 to 22) for scale factor `sf` (Q11's fraction is 0.0001 / SF).
pub fn query(n: usize, sf: f64) -> Option<String> {
    let text = QUERIES.get(n.checked_sub(1)?)?;
    Some(if n == 11 { text.replace("* 0.0001", &format!("* {}", 0.0001 / sf)) } else { text.to_string() })
}

/// The Arrow schema of a TPC-H table as generated (`None` for an unknown name).
pub fn schema(table: &str) -> Option<arrow::datatypes::SchemaRef> {
    Some(match table {
        "nation" => NationArrow::schema_ref(),
        "region" => RegionArrow::schema_ref(),
        "part" => PartArrow::schema_ref(),
        "supplier" => SupplierArrow::schema_ref(),
        "partsupp" => PartSuppArrow::schema_ref(),
        "customer" => CustomerArrow::schema_ref(),
        "orders" => OrderArrow::schema_ref(),
        "lineitem" => LineItemArrow::schema_ref(),
        _ => return None,
    })
}

/// Parts per table: about two million rows each, so threads share the big tables.
fn parts_for(table: &str, sf: f64) -> i32 {
    (expected_rows(table, sf) / 2_000_000 + 1).min(10_000) as i32
}

/// What one table came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSummary {
    /// Table name.
    pub table: String,
    /// Rows written.
    pub rows: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Folder of the table's files.
    pub path: PathBuf,
}

/// Generates all TPC-H tables at scale factor `sf` into `out` with `threads` threads.
/// `progress` is called with the rows of every batch written (from several threads).
pub fn generate(sf: f64, out: &Path, threads: usize, progress: &(dyn Fn(u64) + Sync)) -> Result<Vec<TableSummary>> {
    if !(sf > 0.0 && sf <= 10_000.0) {
        return Err(Error::Output { path: out.into(), reason: format!("scale factor {sf} is not in (0, 10000]") });
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Jobs: (table, part), largest tables first so the threads finish together.
    let mut jobs: Vec<(&str, i32, i32)> = Vec::new();
    for table in TABLES.iter().rev() {
        let parts = parts_for(table, sf);
        for part in 1..=parts {
            jobs.push((table, part, parts));
        }
    }
    // Staged beside the cache under names that say whose they are: a generator killed midway
    // leaves them, and the next one removes them (`staging::sweep`).
    spillway_tiers::staging::sweep(out);
    let staging: Vec<(String, PathBuf)> =
        TABLES.iter().map(|t| (t.to_string(), spillway_tiers::staging::staging_path(&out.join(t)))).collect();
    for (_, dir) in &staging {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let cleanup = || {
        for (_, dir) in &staging {
            let _ = std::fs::remove_dir_all(dir);
        }
    };

    let next = AtomicUsize::new(0);
    let rows_by_table = Mutex::new(std::collections::HashMap::<String, u64>::new());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(table, part, parts)) = jobs.get(i) else { return };
                let dir = &staging.iter().find(|(t, _)| t == table).expect("staged").1;
                let path = dir.join(format!("part-{part}.parquet"));
                match write_part(table, sf, part, parts, &path, progress) {
                    Ok(rows) => {
                        if let Ok(mut m) = rows_by_table.lock() {
                            *m.entry(table.to_string()).or_default() += rows;
                        }
                    }
                    Err(e) => {
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        cleanup();
        return Err(e);
    }
    let rows_by_table = rows_by_table.into_inner().unwrap_or_default();
    let mut summaries = Vec::new();
    for (table, dir) in &staging {
        let dest = out.join(table);
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(|e| Error::io(&dest, e))?;
        }
        std::fs::rename(dir, &dest).map_err(|e| Error::io(&dest, e))?;
        let bytes = std::fs::read_dir(&dest)
            .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0);
        summaries.push(TableSummary {
            table: table.clone(),
            rows: rows_by_table.get(table).copied().unwrap_or(0),
            bytes,
            path: dest,
        });
    }
    Ok(summaries)
}

fn write_part(
    table: &str,
    sf: f64,
    part: i32,
    parts: i32,
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let mut iter = batches(table, sf, part, parts).peekable();
    let schema = match iter.peek() {
        Some(Ok(b)) => b.schema(),
        Some(Err(_)) => return Err(iter.next().expect("peeked").expect_err("peeked error").into()),
        None => return Ok(0),
    };
    let options = WriteOptions { row_group_bytes: ROW_GROUP_BYTES, zstd_level: 1, quota: None };
    let mut sink = FileSink::create(FileFormat::Parquet, path, &schema, &options)?;
    for batch in iter {
        let batch = batch?;
        spillway_faults::point("sources-generating");
        sink.write(&batch)?;
        progress(batch.num_rows() as u64);
    }
    Ok(sink.finish()?.0)
}

/// Batch `batch` (0, 1, ...) of a TPC-H refresh-style change stream (the spec's RF1 and RF2,
/// plus updates), computed from the generated tables in `ctx` (the snapshot, never changed):
/// `orders` orders are deleted with their lineitems; as many new orders (copies of others under
/// new keys, so their dates and customers spread like the data's) are inserted with theirs; the
/// first lineitem of `orders / 2` other orders gets one more unit (quantity and price);
/// `orders / 4` customers' balances rise by 1.00, and so does the supply cost of every supplier
/// of `orders / 4` parts (an update is a delete of the old row and an insert of the new).
///
/// Every batch takes its own slice of a fixed order of each table, so batches 0 to N-1 applied
/// in turn never delete or update a row twice, as long as `N * orders * 3 / 2` stays below the
/// number of orders (and `N * orders / 4` below customers and parts). Returned as change
/// batches: the table's columns plus `_op`.
pub async fn refresh_changes(
    ctx: &datafusion::prelude::SessionContext,
    orders: usize,
    batch: u64,
) -> std::result::Result<Vec<(String, RecordBatch)>, datafusion::error::DataFusionError> {
    let cols = |table: &str, replace: &[(&str, &str)]| -> String {
        let schema = schema(table).expect("a TPC-H table");
        schema
            .fields()
            .iter()
            .map(|f| {
                let name = f.name();
                match replace.iter().find(|(c, _)| c == name) {
                    Some((_, e)) => format!("CAST({e} AS {}) AS {name}", sql_type(f.data_type())),
                    None => name.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let n = orders.max(1) as u64;
    let (half, quarter) = ((n / 2).max(1), (n / 4).max(1));
    let k = batch;
    let slice = |table: &str, key: &str, mult: u64, desc: bool, limit: u64| {
        let dir = if desc { "DESC" } else { "ASC" };
        format!("(SELECT {key} FROM {table} ORDER BY ({key} * {mult}) % 1000003 {dir}, {key} {dir} LIMIT {limit} OFFSET {})", k * limit)
    };
    let deleted = slice("orders", "o_orderkey", 7919, false, n);
    let updated = slice("orders", "o_orderkey", 7919, true, half);
    let copied = slice("orders", "o_orderkey", 104729, false, n);
    let customers = slice("customer", "c_custkey", 13, false, quarter);
    let parts = slice("part", "p_partkey", 17, false, quarter);
    let shift = format!("(SELECT max(o_orderkey) FROM orders) * {}", k + 1);
    let queries = [
        (
            "orders",
            format!("SELECT {}, 'delete' AS _op FROM orders WHERE o_orderkey IN {deleted}", cols("orders", &[])),
        ),
        (
            "lineitem",
            format!("SELECT {}, 'delete' AS _op FROM lineitem WHERE l_orderkey IN {deleted}", cols("lineitem", &[])),
        ),
        (
            "orders",
            format!(
                "SELECT {}, 'insert' AS _op FROM orders WHERE o_orderkey IN {copied}",
                cols("orders", &[("o_orderkey", &format!("o_orderkey + {shift}"))])
            ),
        ),
        (
            "lineitem",
            format!(
                "SELECT {}, 'insert' AS _op FROM lineitem WHERE l_orderkey IN {copied}",
                cols("lineitem", &[("l_orderkey", &format!("l_orderkey + {shift}"))])
            ),
        ),
        (
            "lineitem",
            format!(
                "SELECT {}, 'delete' AS _op FROM lineitem WHERE l_linenumber = 1 AND l_orderkey IN {updated}",
                cols("lineitem", &[])
            ),
        ),
        (
            "lineitem",
            format!(
                "SELECT {}, 'insert' AS _op FROM lineitem WHERE l_linenumber = 1 AND l_orderkey IN {updated}",
                cols(
                    "lineitem",
                    &[
                        ("l_quantity", "l_quantity + 1"),
                        ("l_extendedprice", "l_extendedprice + l_extendedprice / l_quantity")
                    ]
                )
            ),
        ),
        (
            "customer",
            format!("SELECT {}, 'delete' AS _op FROM customer WHERE c_custkey IN {customers}", cols("customer", &[])),
        ),
        (
            "customer",
            format!(
                "SELECT {}, 'insert' AS _op FROM customer WHERE c_custkey IN {customers}",
                cols("customer", &[("c_acctbal", "c_acctbal + 1.00")])
            ),
        ),
        (
            "partsupp",
            format!("SELECT {}, 'delete' AS _op FROM partsupp WHERE ps_partkey IN {parts}", cols("partsupp", &[])),
        ),
        (
            "partsupp",
            format!(
                "SELECT {}, 'insert' AS _op FROM partsupp WHERE ps_partkey IN {parts}",
                cols("partsupp", &[("ps_supplycost", "ps_supplycost + 1.00"), ("ps_availqty", "ps_availqty + 10")])
            ),
        ),
    ];
    let mut out = Vec::new();
    for (table, sql) in queries {
        for b in ctx.sql(&sql).await?.collect().await? {
            if b.num_rows() > 0 {
                out.push((table.to_string(), b));
            }
        }
    }
    Ok(out)
}

fn sql_type(t: &arrow::datatypes::DataType) -> String {
    use arrow::datatypes::DataType::*;
    match t {
        Int32 => "INT".into(),
        Int64 => "BIGINT".into(),
        Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        Date32 => "DATE".into(),
        _ => "VARCHAR".into(),
    }
}
