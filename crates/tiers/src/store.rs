//! The hand-off store: places a step's output in memory, an Arrow IPC file or a Parquet file by
//! its measured size, and frees it when the last consumer is done.
//!
//! ```text
//!   stream ──▶ memory tier: Arc'd batches, lease grows with them (charged to the governor)
//!                │ measured bytes > in_memory_max (45%), or the budget will not lend more
//!                ▼ flush held batches, keep streaming
//!              Arrow IPC file (no full buffering at any point)
//!
//!   checkpoint | another heavy step runs | expected > parquet_above (80%) | materialize=parquet
//!          ──▶ Parquet (zstd, row groups bounded in bytes) from the first batch
//! ```
//!
//! Sizes are measured by the distinct Arrow buffers the batches hold ([`BufferTally`]), not by
//! summing each batch's memory size, which counts a buffer shared by many slices once per slice.

use crate::error::{Error, Result};
use crate::file::{FileFormat, FileSink, WriteOptions};
use crate::quota::DiskQuota;
use arrow::array::{Array, ArrayData, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use spillway_governor::{fmt_bytes, Governor, Lease};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where an intermediate lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// `Arc`'d Arrow batches in memory.
    Memory,
    /// An Arrow IPC file, read back memory-mapped.
    Ipc,
    /// A Parquet file (zstd).
    Parquet,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Memory => "memory",
            Tier::Ipc => "ipc",
            Tier::Parquet => "parquet",
        })
    }
}

/// A step author's override of the tier choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Materialize {
    /// Chosen by measured size (the default).
    #[default]
    Auto,
    /// Memory (still moves to IPC rather than exceed the budget).
    Memory,
    /// Arrow IPC file.
    Ipc,
    /// Parquet file.
    Parquet,
}

impl std::str::FromStr for Materialize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Materialize::Auto),
            "memory" => Ok(Materialize::Memory),
            "ipc" | "arrow" => Ok(Materialize::Ipc),
            "parquet" => Ok(Materialize::Parquet),
            _ => Err(Error::Invalid(format!("materialize = {s:?}: use auto, memory, ipc or parquet"))),
        }
    }
}

/// Thresholds of the tier choice.
#[derive(Debug, Clone)]
pub struct TierConfig {
    /// Results up to this many bytes stay in memory (default 45% of the budget).
    pub in_memory_max: u64,
    /// Results expected above this go straight to Parquet (default 80% of the budget).
    pub parquet_above: u64,
    /// Parquet row group bound in bytes (default 128MiB, at most an eighth of the budget).
    pub row_group_bytes: usize,
    /// zstd level of Parquet intermediates (default 1).
    pub zstd_level: i32,
}

impl TierConfig {
    /// The defaults for a budget of `budget` bytes.
    pub fn for_budget(budget: u64) -> Self {
        Self {
            in_memory_max: budget / 100 * 45,
            parquet_above: budget / 100 * 80,
            row_group_bytes: ((budget / 8) as usize).clamp(1 << 20, 128 << 20),
            zstd_level: 1,
        }
    }
}

/// What the writer knows about a result before it arrives.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// The author's override.
    pub materialize: Materialize,
    /// The step is a checkpoint: keep it on disk as Parquet so a run can resume from it.
    pub checkpoint: bool,
    /// Another heavy step is running: keep memory free for it.
    pub heavy_running: bool,
    /// Expected size in bytes, if estimated.
    pub expected_bytes: Option<u64>,
    /// Why `materialize` is what it is, when the step's readers chose it rather than its author
    /// (e.g. read by a Ballista cluster: Parquet).
    pub chosen_because: Option<String>,
}

/// What was recorded about an intermediate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntermediateInfo {
    /// The producing step.
    pub name: String,
    /// Where it was placed.
    pub tier: Tier,
    /// Rows.
    pub rows: u64,
    /// Bytes in memory (memory tier) or on disk (file tiers).
    pub bytes: u64,
    /// Time spent placing it (including waiting for the producer), milliseconds.
    pub write_ms: u64,
    /// Why this tier.
    pub reason: String,
    /// The file, for file tiers.
    pub path: Option<PathBuf>,
}

/// A step's output, placed. Shared by its consumers (`Arc`); freed when the last one drops it:
/// memory goes back to the governor, files are deleted (unless [`Intermediate::keep`] was called).
pub struct Intermediate {
    info: IntermediateInfo,
    schema: SchemaRef,
    data: Data,
}

enum Data {
    Memory { batches: Vec<RecordBatch>, _lease: Option<Lease> },
    File { path: PathBuf, bytes: u64, quota: Arc<DiskQuota>, keep: AtomicBool },
}

impl fmt::Debug for Intermediate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intermediate").field("info", &self.info).finish()
    }
}

impl Intermediate {
    /// The record of where and how it was placed.
    pub fn info(&self) -> &IntermediateInfo {
        &self.info
    }
    /// Its schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    /// The batches, for the memory tier.
    pub fn batches(&self) -> Option<&[RecordBatch]> {
        match &self.data {
            Data::Memory { batches, .. } => Some(batches),
            Data::File { .. } => None,
        }
    }
    /// The file, for file tiers.
    pub fn path(&self) -> Option<&Path> {
        match &self.data {
            Data::File { path, .. } => Some(path),
            Data::Memory { .. } => None,
        }
    }
    /// Keeps the file when the intermediate is dropped (for resuming a failed run). The caller
    /// becomes responsible for it.
    pub fn keep(&self) {
        if let Data::File { keep, .. } = &self.data {
            keep.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for Intermediate {
    fn drop(&mut self) {
        if let Data::File { path, bytes, quota, keep } = &self.data {
            if !keep.load(Ordering::Relaxed) {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove intermediate");
                }
                quota.release(*bytes);
            }
        }
    }
}

/// Counts the bytes of distinct Arrow buffers seen, so that slices sharing one buffer are
/// counted once.
#[derive(Debug, Default)]
pub struct BufferTally {
    seen: HashSet<usize>,
    bytes: u64,
}

impl BufferTally {
    /// Adds a batch; returns the bytes of buffers not seen before.
    pub fn add(&mut self, batch: &RecordBatch) -> u64 {
        let before = self.bytes;
        for col in batch.columns() {
            self.add_data(&col.to_data());
        }
        self.bytes - before
    }

    /// Total distinct bytes so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn add_data(&mut self, data: &ArrayData) {
        let nulls = data.nulls().map(|n| n.buffer());
        for buf in data.buffers().iter().chain(nulls) {
            if self.seen.insert(buf.data_ptr().as_ptr() as usize) {
                self.bytes += buf.capacity() as u64;
            }
        }
        for child in data.child_data() {
            self.add_data(child);
        }
    }
}

/// Places step outputs. One per run, in the run directory's `handoff/` folder.
#[derive(Debug, Clone)]
pub struct HandoffStore {
    governor: Governor,
    dir: PathBuf,
    quota: Arc<DiskQuota>,
    config: TierConfig,
}

impl HandoffStore {
    /// A store writing files into `dir` under `quota`, charging memory to `governor`.
    pub fn new(governor: Governor, dir: impl Into<PathBuf>, quota: Arc<DiskQuota>, config: TierConfig) -> Self {
        Self { governor, dir: dir.into(), quota, config }
    }

    /// The thresholds in force.
    pub fn config(&self) -> &TierConfig {
        &self.config
    }

    fn file_path(&self, name: &str, tier: Tier) -> PathBuf {
        let safe: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        let ext = if tier == Tier::Parquet { "parquet" } else { "arrow" };
        let mut path = self.dir.join(format!("{safe}.{ext}"));
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = self.dir.join(format!("{safe}-{n}.{ext}"));
        }
        path
    }

    fn open(&self, name: &str, tier: Tier, schema: &SchemaRef) -> Result<FileSink> {
        let options = WriteOptions {
            row_group_bytes: self.config.row_group_bytes,
            zstd_level: self.config.zstd_level,
            quota: Some(self.quota.clone()),
        };
        let format = if tier == Tier::Parquet { FileFormat::Parquet } else { FileFormat::Arrow };
        FileSink::create(format, &self.file_path(name, tier), schema, &options)
    }

    /// The tier to start in, and why.
    fn initial_tier(&self, hints: &Hints) -> (Tier, String) {
        let c = &self.config;
        let set = |tier: Tier, what: &str| (tier, hints.chosen_because.clone().unwrap_or_else(|| what.to_string()));
        match hints.materialize {
            Materialize::Memory => set(Tier::Memory, "materialize = memory"),
            Materialize::Ipc => set(Tier::Ipc, "materialize = ipc"),
            Materialize::Parquet => set(Tier::Parquet, "materialize = parquet"),
            Materialize::Auto if hints.checkpoint => (Tier::Parquet, "checkpoint".into()),
            Materialize::Auto if hints.heavy_running => {
                (Tier::Parquet, "another heavy step is running: memory stays free for it".into())
            }
            Materialize::Auto => match hints.expected_bytes {
                Some(e) if e > c.parquet_above => {
                    (Tier::Parquet, format!("expected {} > parquet_above {}", fmt_bytes(e), fmt_bytes(c.parquet_above)))
                }
                _ => (Tier::Memory, format!("fits in memory (<= in_memory_max {})", fmt_bytes(c.in_memory_max))),
            },
        }
    }

    /// Consumes `stream` into a Parquet file at `dest` that outlives the run (a checkpoint):
    /// staged beside it, synced and renamed when complete ([`crate::file::stage_stream`]), so a
    /// crash leaves the previous file or the new one. It is not temp space (no quota), and
    /// dropping the intermediate keeps the file.
    pub async fn write_kept(
        &self,
        name: &str,
        stream: SendableRecordBatchStream,
        dest: &Path,
    ) -> Result<Arc<Intermediate>> {
        let started = Instant::now();
        spillway_faults::point("checkpoint-write");
        let schema = stream.schema();
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let options = WriteOptions {
            row_group_bytes: self.config.row_group_bytes,
            zstd_level: self.config.zstd_level,
            quota: None,
        };
        let staged = crate::file::stage_stream(stream, dest, &options).await?;
        spillway_faults::point("checkpoint-before-rename");
        let w = staged.publish()?;
        Ok(Arc::new(Intermediate {
            info: IntermediateInfo {
                name: name.into(),
                tier: Tier::Parquet,
                rows: w.rows,
                bytes: w.bytes,
                write_ms: started.elapsed().as_millis() as u64,
                reason: format!("checkpoint: kept for resume at {}", dest.display()),
                path: Some(dest.to_path_buf()),
            },
            schema,
            data: Data::File {
                path: dest.to_path_buf(),
                bytes: 0,
                quota: self.quota.clone(),
                keep: AtomicBool::new(true),
            },
        }))
    }

    /// Takes an Arrow IPC file another process wrote (an isolated model's output) as an IPC-tier
    /// intermediate without copying it: the file is moved into the store's folder and counted
    /// against the quota; it is read back memory-mapped, and deleted when the last reader is done.
    pub fn adopt_ipc(&self, name: &str, file: &Path, rows: u64, reason: &str) -> Result<Arc<Intermediate>> {
        let started = Instant::now();
        let schema = crate::read::ipc_schema(file)?;
        let path = self.file_path(name, Tier::Ipc);
        let bytes = std::fs::metadata(file).map_err(|e| Error::io(file, e))?.len();
        self.quota.reserve(&path, bytes)?;
        if let Err(e) = std::fs::rename(file, &path) {
            self.quota.release(bytes);
            return Err(Error::io(&path, e));
        }
        Ok(Arc::new(Intermediate {
            info: IntermediateInfo {
                name: name.into(),
                tier: Tier::Ipc,
                rows,
                bytes,
                write_ms: started.elapsed().as_millis() as u64,
                reason: reason.into(),
                path: Some(path.clone()),
            },
            schema,
            data: Data::File { path, bytes, quota: self.quota.clone(), keep: AtomicBool::new(false) },
        }))
    }

    /// Consumes `stream` and places it. See the [module docs](self).
    pub async fn write(
        &self,
        name: &str,
        mut stream: SendableRecordBatchStream,
        hints: &Hints,
    ) -> Result<Arc<Intermediate>> {
        let started = Instant::now();
        let schema = stream.schema();
        let (mut tier, mut reason) = self.initial_tier(hints);
        // On any error below, a partial file is removed by `cleanup`. It is declared before the
        // sink so that it runs after the sink's drop has flushed (and counted) its last bytes.
        let mut cleanup = Cleanup { path: None, quota: &self.quota };
        let mut sink = None;
        let mut held: Vec<RecordBatch> = Vec::new();
        let mut lease = None;
        let mut tally = BufferTally::default();
        if tier == Tier::Memory {
            lease = self.governor.try_lease_now(&format!("handoff:{name}"), 0);
            if lease.is_none() {
                tier = Tier::Ipc;
                reason = "the budget is fully lent or others are waiting: straight to disk".into();
            }
        }
        if tier != Tier::Memory {
            spillway_faults::point(if tier == Tier::Parquet { "handoff-parquet-write" } else { "handoff-ipc-write" });
            let s = self.open(name, tier, &schema)?;
            cleanup.path = Some(s.path().to_path_buf());
            sink = Some(s);
        }
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if let Some(s) = sink.as_mut() {
                s.write(&batch)?;
                continue;
            }
            let add = tally.add(&batch);
            let lease_ref = lease.as_mut().expect("memory tier holds a lease");
            if tally.bytes() <= self.config.in_memory_max && lease_ref.try_grow(add) {
                held.push(batch);
                continue;
            }
            // Escalate: flush what is held to an IPC file, give the memory back, keep streaming.
            reason = if tally.bytes() > self.config.in_memory_max {
                format!("outgrew the memory tier (> in_memory_max {})", fmt_bytes(self.config.in_memory_max))
            } else {
                format!("the budget would not lend more than {} to hold it", fmt_bytes(lease_ref.bytes()))
            };
            tier = Tier::Ipc;
            spillway_faults::point("handoff-ipc-write");
            let mut s = self.open(name, tier, &schema)?;
            cleanup.path = Some(s.path().to_path_buf());
            for b in held.drain(..).chain(std::iter::once(batch)) {
                s.write(&b)?;
            }
            lease = None; // memory back to the governor
            sink = Some(s);
        }
        let write_ms = started.elapsed().as_millis() as u64;
        let intermediate = match sink {
            None => {
                let rows = held.iter().map(|b| b.num_rows() as u64).sum();
                Intermediate {
                    info: IntermediateInfo {
                        name: name.into(),
                        tier,
                        rows,
                        bytes: tally.bytes(),
                        write_ms,
                        reason,
                        path: None,
                    },
                    schema,
                    data: Data::Memory { batches: held, _lease: lease },
                }
            }
            Some(s) => {
                let path = s.path().to_path_buf();
                let (rows, bytes) = s.finish()?;
                cleanup.path = None;
                Intermediate {
                    info: IntermediateInfo {
                        name: name.into(),
                        tier,
                        rows,
                        bytes,
                        write_ms: started.elapsed().as_millis() as u64,
                        reason,
                        path: Some(path.clone()),
                    },
                    schema,
                    data: Data::File { path, bytes, quota: self.quota.clone(), keep: AtomicBool::new(false) },
                }
            }
        };
        tracing::debug!(info = ?intermediate.info, "intermediate placed");
        spillway_faults::point("handoff-done");
        Ok(Arc::new(intermediate))
    }
}

/// Removes a partial file (and returns its bytes to the quota) unless disarmed.
struct Cleanup<'a> {
    path: Option<PathBuf>,
    quota: &'a DiskQuota,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let bytes = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::remove_file(&p);
            self.quota.release(bytes);
        }
    }
}

/// Checks whether two arrays share their first data buffer (used to assert zero-copy hand-off).
pub fn same_buffers(a: &dyn Array, b: &dyn Array) -> bool {
    let (a, b) = (a.to_data(), b.to_data());
    match (a.buffers().first(), b.buffers().first()) {
        (Some(x), Some(y)) => x.as_ptr() == y.as_ptr(),
        _ => false,
    }
}
