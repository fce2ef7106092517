//! File formats spillway writes (Parquet, Arrow IPC, CSV, NDJSON) and the streaming writer that
//! publishes a file atomically and durably.
//!
//! ```text
//!   stage_stream(stream, dest) ─▶ .NAME.spillway-tmp-<owner>  (staging::sweep first removes
//!        │                         the staging files of dead processes in dest's folder)
//!        ▼ Staged                  dropped unpublished: removed
//!   Staged::publish() ─▶ fsync(file) ─▶ rename onto dest ─▶ fsync(folder)
//! ```
//!
//! A model with several file sinks stages them all before publishing any
//! (`spillway-pipeline`'s publication), so a failure while writing publishes none.

use crate::error::{Error, Result};
use crate::quota::{DiskQuota, QuotaWriter};
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A file format spillway reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Apache Parquet (zstd).
    Parquet,
    /// CSV with a header row.
    Csv,
    /// Newline-delimited JSON.
    Json,
    /// Arrow IPC file format.
    Arrow,
}

impl FileFormat {
    /// The format for a file extension (without the dot), if known.
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext.to_ascii_lowercase().as_str() {
            "parquet" | "pq" => Some(FileFormat::Parquet),
            "csv" => Some(FileFormat::Csv),
            "json" | "ndjson" | "jsonl" => Some(FileFormat::Json),
            "arrow" | "ipc" | "feather" => Some(FileFormat::Arrow),
            _ => None,
        }
    }

    /// The format of a path, judged by its extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        path.extension().and_then(|e| e.to_str()).and_then(Self::from_extension)
    }
}

/// How files are written.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Parquet row groups are flushed once their encoded size reaches this (bounds the writer's
    /// buffer, which DataFusion cannot spill).
    pub row_group_bytes: usize,
    /// zstd level for Parquet (1-3 recommended).
    pub zstd_level: i32,
    /// Quota every byte is reserved from, if any.
    pub quota: Option<Arc<DiskQuota>>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { row_group_bytes: 128 << 20, zstd_level: 1, quota: None }
    }
}

type Out = BufWriter<Box<dyn Write + Send>>;

/// An open file being written batch by batch.
pub struct FileSink {
    kind: SinkKind,
    path: PathBuf,
    written: Arc<AtomicU64>,
    rows: u64,
}

enum SinkKind {
    Parquet(ArrowWriter<Out>, usize),
    Csv(arrow::csv::Writer<Out>),
    Json(arrow::json::LineDelimitedWriter<Out>),
    Arrow(arrow::ipc::writer::FileWriter<Out>),
}

impl FileSink {
    /// Creates `path` (mode 0600) and opens a writer of `format` for `schema`.
    pub fn create(format: FileFormat, path: &Path, schema: &SchemaRef, options: &WriteOptions) -> Result<Self> {
        let file =
            std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| Error::io(path, e))?;
        crate::rundir::set_mode(path, 0o600)?;
        Self::from_file(format, file, path, schema, options)
    }

    fn from_file(
        format: FileFormat,
        file: File,
        path: &Path,
        schema: &SchemaRef,
        options: &WriteOptions,
    ) -> Result<Self> {
        let written = Arc::new(AtomicU64::new(0));
        let file = EarlyWriteback { file, pending: 0 };
        let inner: Box<dyn Write + Send> = match &options.quota {
            Some(q) => Box::new(QuotaWriter::new(file, q.clone(), path, written.clone())),
            None => Box::new(CountingWriter { inner: file, written: written.clone() }),
        };
        let out = BufWriter::with_capacity(8 << 20, inner);
        let kind = match format {
            FileFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(options.zstd_level)?))
                    .build();
                SinkKind::Parquet(ArrowWriter::try_new(out, schema.clone(), Some(props))?, options.row_group_bytes)
            }
            FileFormat::Csv => SinkKind::Csv(arrow::csv::WriterBuilder::new().with_header(true).build(out)),
            FileFormat::Json => SinkKind::Json(arrow::json::LineDelimitedWriter::new(out)),
            FileFormat::Arrow => SinkKind::Arrow(arrow::ipc::writer::FileWriter::try_new(out, schema)?),
        };
        Ok(Self { kind, path: path.to_path_buf(), written, rows: 0 })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match &mut self.kind {
            SinkKind::Parquet(w, limit) => {
                w.write(batch)?;
                if w.in_progress_size() >= *limit {
                    w.flush()?;
                }
            }
            SinkKind::Csv(w) => w.write(batch)?,
            SinkKind::Json(w) => w.write(batch)?,
            SinkKind::Arrow(w) => w.write(batch)?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes that reached the file so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the footer and flushes; returns (rows, bytes on disk).
    pub fn finish(self) -> Result<(u64, u64)> {
        let io = |e: std::io::IntoInnerError<Out>| Error::io(&self.path, e.into_error());
        match self.kind {
            SinkKind::Parquet(w, _) => {
                w.close()?;
            }
            SinkKind::Csv(w) => w.into_inner().into_inner().map(drop).map_err(io)?,
            SinkKind::Json(mut w) => {
                w.finish()?;
                w.into_inner().into_inner().map(drop).map_err(io)?
            }
            SinkKind::Arrow(mut w) => {
                w.finish()?;
                w.into_inner()?.into_inner().map(drop).map_err(io)?
            }
        }
        Ok((self.rows, self.written.load(Ordering::Relaxed)))
    }
}

/// Starts write-back of every 32MiB written (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does
/// not wait), so a large file streams to disk while it is written instead of piling up dirty
/// pages until the kernel throttles the writer.
struct EarlyWriteback {
    file: File,
    pending: u64,
}

impl Write for EarlyWriteback {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pending += n as u64;
        if self.pending >= 32 << 20 {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open fd; offset 0 / nbytes 0 means "the whole file"; the flag only
            // starts write-back of dirty pages and never blocks on completion.
            unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
            self.pending = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

struct CountingWriter<W> {
    inner: W,
    written: Arc<AtomicU64>,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What [`write_stream`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Rows written.
    pub rows: u64,
    /// Size of the file on disk.
    pub bytes: u64,
}

/// A complete file staged beside its destination, not yet published: removed when dropped
/// unpublished (a failure elsewhere, a panic).
#[derive(Debug)]
#[must_use = "a staged file is removed unless published"]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    summary: WriteSummary,
    published: bool,
}

impl Staged {
    /// Where it will be published.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// What was written.
    pub fn summary(&self) -> WriteSummary {
        self.summary
    }

    /// Publishes it: the staged file is synced, renamed onto the destination (replacing any
    /// previous file at once) and the folder synced.
    pub fn publish(mut self) -> Result<WriteSummary> {
        crate::durable::rename_synced_at(&self.tmp, &self.dest, Some("publish-after-rename"))?;
        self.published = true;
        Ok(self.summary)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The staging file beside `path` (format from `path`'s extension) and its writer; staging
/// files of dead processes in that folder are removed first.
fn begin_staged(path: &Path, schema: &SchemaRef, options: &WriteOptions) -> Result<(Staged, FileSink)> {
    let invalid = |reason: String| Error::Invalid(format!("{}: {reason}", path.display()));
    let format = FileFormat::from_path(path)
        .ok_or_else(|| invalid("unknown output type; use .parquet, .csv, .json/.ndjson or .arrow".into()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(invalid(format!("directory {} does not exist", dir.display())));
    }
    crate::staging::sweep(&dir);
    let staged = Staged {
        tmp: crate::staging::staging_path(path),
        dest: path.to_path_buf(),
        summary: WriteSummary::default(),
        published: false,
    };
    let _ = std::fs::remove_file(&staged.tmp);
    let sink = FileSink::create(format, &staged.tmp, schema, options)?;
    Ok((staged, sink))
}

/// Like [`stage_stream`], for a producer that lends each batch only until it makes the next
/// (a view's contents read a chunk at a time): `fill` hands its batches, in order, to the
/// function it is given, which writes each on this thread before returning.
pub fn stage_with<E: From<Error>>(
    path: &Path,
    schema: &SchemaRef,
    options: &WriteOptions,
    fill: impl FnOnce(&mut dyn FnMut(&RecordBatch) -> Result<()>) -> std::result::Result<(), E>,
) -> std::result::Result<Staged, E> {
    let (mut staged, mut sink) = begin_staged(path, schema, options)?;
    let filled = fill(&mut |batch| {
        spillway_faults::point("sink-staging");
        sink.write(batch)
    });
    let written = match filled {
        Ok(()) => sink.finish().map_err(E::from),
        Err(e) => Err(e),
    };
    if let Some(q) = &options.quota {
        // The published file is the caller's, not temp space: it leaves the quota either way.
        q.release(std::fs::metadata(&staged.tmp).map(|m| m.len()).unwrap_or(0));
    }
    let (rows, bytes) = written?;
    staged.summary = WriteSummary { rows, bytes };
    Ok(staged)
}

/// Streams `stream` into `path` and publishes it ([`stage_stream`] then [`Staged::publish`]): a
/// failure leaves any previous file at `path` untouched and no partial file behind.
pub async fn write_stream(
    stream: SendableRecordBatchStream,
    path: &Path,
    options: &WriteOptions,
) -> Result<WriteSummary> {
    stage_stream(stream, path, options).await?.publish()
}

/// Streams `stream` into a staging file beside `path` (format from `path`'s extension), complete
/// and unpublished. Staging files of dead processes in that folder are removed first. Encoding
/// runs on a writer thread fed through a two-batch channel, so the query keeps computing while
/// the file is written and at most two batches wait.
pub async fn stage_stream(
    mut stream: SendableRecordBatchStream,
    path: &Path,
    options: &WriteOptions,
) -> Result<Staged> {
    let invalid = |reason: String| Error::Invalid(format!("{}: {reason}", path.display()));
    let (mut staged, mut sink) = begin_staged(path, &stream.schema(), options)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(2);
    let writer = std::thread::Builder::new()
        .name("spillway-writer".into())
        .spawn(move || -> Result<(u64, u64)> {
            while let Some(batch) = rx.blocking_recv() {
                sink.write(&batch)?;
            }
            sink.finish()
        })
        .map_err(|e| invalid(e.to_string()))?;

    let mut failure = None;
    while let Some(batch) = stream.next().await {
        match batch {
            Ok(b) => {
                spillway_faults::point("sink-staging");
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
    let written = writer.join().map_err(|_| invalid("writer thread panicked".into()))?;
    if let Some(q) = &options.quota {
        // The published file is the caller's, not temp space: it leaves the quota either way.
        q.release(std::fs::metadata(&staged.tmp).map(|m| m.len()).unwrap_or(0));
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let (rows, bytes) = written?;
    staged.summary = WriteSummary { rows, bytes };
    Ok(staged)
}
