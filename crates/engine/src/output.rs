//! Where query results go: a file (Parquet, CSV, Arrow IPC or NDJSON, written while the stream
//! produces, published atomically by rename; see [`spillway_tiers::file`]) or a table printed to
//! the terminal.

use crate::error::{Error, Result};
use arrow::array::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use std::io::Write;

pub use spillway_tiers::file::{WriteOptions, WriteSummary};

/// Streams a result into `path`, published atomically (see [`spillway_tiers::file::write_stream`]).
pub async fn write_stream(
    stream: SendableRecordBatchStream,
    path: &std::path::Path,
    options: &WriteOptions,
) -> Result<WriteSummary> {
    Ok(spillway_tiers::file::write_stream(stream, path, options).await?)
}

/// An order-independent checksum of a result, comparable across engines: every value is
/// written as text (numbers of any type as floats with two decimals, so `1995`, `1995.0` and a
/// decimal `1995.00` agree; NULL as `NULL`; dates as `YYYY-MM-DD`), a row's values are joined
/// with `|`, and the 64-bit FNV-1a hashes of the rows are added up (wrapping), so row order
/// does not matter and nothing is kept. `bench/duckdb_tpch.py` computes the same.
pub async fn checksum(mut stream: SendableRecordBatchStream) -> Result<(u64, String)> {
    use arrow::array::{Array, Float64Array, StringArray};
    use arrow::compute::cast;
    use arrow::datatypes::DataType;
    let mut rows = 0u64;
    let mut sum = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let mut columns: Vec<Box<dyn Fn(usize) -> String>> = Vec::new();
        for col in batch.columns() {
            if col.data_type().is_numeric() {
                let f = cast(col, &DataType::Float64)?;
                let f = f.as_any().downcast_ref::<Float64Array>().cloned().expect("cast to Float64");
                columns.push(Box::new(move |i| {
                    if f.is_null(i) {
                        "NULL".into()
                    } else {
                        let v = f.value(i);
                        let text = format!("{v:.2}");
                        if text == "-0.00" {
                            "0.00".into()
                        } else {
                            text
                        }
                    }
                }));
            } else {
                let s = cast(col, &DataType::Utf8)?;
                let s = s.as_any().downcast_ref::<StringArray>().cloned().expect("cast to Utf8");
                columns.push(Box::new(move |i| if s.is_null(i) { "NULL".into() } else { s.value(i).to_string() }));
            }
        }
        for i in 0..batch.num_rows() {
            let row: Vec<String> = columns.iter().map(|c| c(i)).collect();
            sum = sum.wrapping_add(fnv1a(row.join("|").as_bytes()));
        }
        rows += batch.num_rows() as u64;
    }
    Ok((rows, format!("{sum:016x}")))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Prints the stream as a table. With `max_rows`, shows the first rows and counts the rest
/// without keeping them; without, prints every batch as it arrives. Returns the total rows.
pub async fn print_table(
    mut stream: SendableRecordBatchStream,
    max_rows: Option<usize>,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut shown: Vec<RecordBatch> = Vec::new();
    let mut shown_rows = 0usize;
    let mut total = 0u64;
    let io = |e: std::io::Error| Error::io("<stdout>", e);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        total += batch.num_rows() as u64;
        match max_rows {
            Some(max) if shown_rows < max => {
                let take = (max - shown_rows).min(batch.num_rows());
                shown_rows += take;
                shown.push(batch.slice(0, take));
            }
            Some(_) => {}
            None if batch.num_rows() > 0 => {
                writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(&[batch])?).map_err(io)?;
            }
            None => {}
        }
    }
    if max_rows.is_some() && (!shown.is_empty() || total == 0) {
        let schema_only = if shown.is_empty() { vec![RecordBatch::new_empty(stream.schema())] } else { shown };
        writeln!(out, "{}", arrow::util::pretty::pretty_format_batches(&schema_only)?).map_err(io)?;
    }
    match max_rows {
        Some(max) if total as usize > max => {
            writeln!(out, "{total} rows (showing the first {max}; use --max-rows or --output FILE for all)")
        }
        _ => writeln!(out, "{total} row{}", if total == 1 { "" } else { "s" }),
    }
    .map_err(io)?;
    Ok(total)
}
