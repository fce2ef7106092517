//! Where query results go: a file (Parquet, CSV, Arrow IPC or NDJSON, written while the stream
//! produces, published atomically by rename) or a table printed to the terminal.

use crate::error::{Error, Result};
use crate::tables::FileFormat;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// What was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Rows written.
    pub rows: u64,
    /// Size of the file on disk.
    pub bytes: u64,
}

/// Parquet row groups are flushed once their encoded size passes this many bytes, so the writer
/// never buffers more than this (DataFusion cannot spill a writer's buffer).
pub const PARQUET_ROW_GROUP_BYTES: usize = 64 << 20;

enum Sink {
    Parquet(ArrowWriter<File>, usize),
    Csv(arrow::csv::Writer<BufWriter<File>>),
    Json(arrow::json::LineDelimitedWriter<BufWriter<File>>),
    Arrow(arrow::ipc::writer::FileWriter<BufWriter<File>>),
}

impl Sink {
    fn open(format: FileFormat, file: File, schema: &SchemaRef, row_group_bytes: usize) -> Result<Sink> {
        Ok(match format {
            FileFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
                    .build();
                Sink::Parquet(ArrowWriter::try_new(file, schema.clone(), Some(props))?, row_group_bytes)
            }
            FileFormat::Csv => Sink::Csv(arrow::csv::WriterBuilder::new().with_header(true).build(BufWriter::new(file))),
            FileFormat::Json => Sink::Json(arrow::json::LineDelimitedWriter::new(BufWriter::new(file))),
            FileFormat::Arrow => Sink::Arrow(arrow::ipc::writer::FileWriter::try_new(BufWriter::new(file), schema)?),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            Sink::Parquet(w, limit) => {
                w.write(batch)?;
                if w.in_progress_size() >= *limit {
                    w.flush()?;
                }
            }
            Sink::Csv(w) => w.write(batch)?,
            Sink::Json(w) => w.write(batch)?,
            Sink::Arrow(w) => w.write(batch)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Parquet(w, _) => {
                w.close()?;
            }
            Sink::Csv(w) => w.into_inner().flush().map_err(arrow::error::ArrowError::from)?,
            Sink::Json(mut w) => {
                w.finish()?;
                w.into_inner().flush().map_err(arrow::error::ArrowError::from)?
            }
            Sink::Arrow(mut w) => {
                w.finish()?;
                w.into_inner()?.flush().map_err(arrow::error::ArrowError::from)?
            }
        }
        Ok(())
    }
}

/// A temp file next to the destination, removed on drop unless published.
struct Staged {
    tmp: PathBuf,
    published: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Streams `stream` into `path` (format from the extension). The file appears only when complete:
/// it is written under a hidden temp name in the same directory and renamed at the end, so a
/// failure leaves any previous file at `path` untouched and no partial file behind.
pub async fn write_stream(mut stream: SendableRecordBatchStream, path: &Path) -> Result<WriteSummary> {
    let out_err = |reason: String| Error::Output { path: path.to_path_buf(), reason };
    let format = FileFormat::from_path(path)
        .ok_or_else(|| out_err("unknown output type; use .parquet, .csv, .json/.ndjson or .arrow".into()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(out_err(format!("directory {} does not exist", dir.display())));
    }
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let staged = Staged { tmp: dir.join(format!(".{file_name}.tmp-{}", std::process::id())), published: false };
    let file = File::create(&staged.tmp).map_err(|e| Error::io(&staged.tmp, e))?;

    // Encoding and compression run on a writer thread, fed through a small bounded channel, so
    // the query keeps running while the file is written and at most two batches wait.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(2);
    let schema = stream.schema();
    let writer = std::thread::Builder::new()
        .name("spillway-writer".into())
        .spawn(move || -> Result<u64> {
            let mut sink = Sink::open(format, file, &schema, PARQUET_ROW_GROUP_BYTES)?;
            let mut rows = 0u64;
            while let Some(batch) = rx.blocking_recv() {
                rows += batch.num_rows() as u64;
                sink.write(&batch)?;
            }
            sink.finish()?;
            Ok(rows)
        })
        .map_err(|e| out_err(e.to_string()))?;

    let mut failure = None;
    while let Some(batch) = stream.next().await {
        match batch {
            Ok(b) => {
                if tx.send(b).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                failure = Some(Error::from(e));
                break;
            }
        }
    }
    drop(tx);
    let written = writer.join().map_err(|_| out_err("writer thread panicked".into()))?;
    if let Some(e) = failure {
        return Err(e);
    }
    let rows = written?;
    let mut staged = staged;
    std::fs::rename(&staged.tmp, path).map_err(|e| Error::io(path, e))?;
    staged.published = true;
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(WriteSummary { rows, bytes })
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
