//! Writing a table of a session to a file for another process to read: a PostgreSQL source for an
//! isolated model's child (Arrow IPC) or for a Ballista cluster (Parquet), a hand-off for the
//! cluster (Parquet).

use crate::error::Result;
use futures::StreamExt;
use spillway_tiers::file::{FileFormat, FileSink, WriteOptions};
use std::path::Path;

/// Streams table `table` of `ctx` into `path` as `format`, batch by batch; returns its rows and
/// bytes.
pub(super) async fn write_table(
    ctx: &datafusion::prelude::SessionContext,
    table: &str,
    path: &Path,
    format: FileFormat,
) -> Result<(u64, u64)> {
    let df = ctx.table(table).await.map_err(spillway_engine::Error::from)?;
    let mut stream = df.execute_stream().await.map_err(spillway_engine::Error::from)?;
    let mut sink = FileSink::create(format, path, &stream.schema(), &WriteOptions::default())?;
    while let Some(batch) = stream.next().await {
        sink.write(&batch.map_err(spillway_engine::Error::from)?)?;
    }
    Ok(sink.finish()?)
}
