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
        Some(max) if total as usize > max => writeln!(
            out,
            "{total} rows (showing the first {max}; use --max-rows or --output FILE for all)"
        ),
        _ => writeln!(out, "{total} row{}", if total == 1 { "" } else { "s" }),
    }
    .map_err(io)?;
    Ok(total)
}
