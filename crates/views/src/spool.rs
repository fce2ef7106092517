//! A change held for the rest of its transaction: in memory while the pool grants it, in the
//! temp space once the pool refuses, consolidated at the end.
//!
//! A transaction's change to a table, and each view's change, are needed until the commit (the
//! log, the sinks, the views that read a view). A [`Spool`] takes a change a piece at a time:
//! each piece is reserved from the pool before it is kept; when the pool refuses, what is kept
//! goes to Arrow IPC files in the temp space (the disk manager of the runtime, so spillway's
//! temp-space quota and its sweep of abandoned run folders), each row to one of 16 by a hash of
//! the whole row, and every later piece follows it there. [`Spool::finish`] consolidates it
//! (equal rows merged, weights summed, zeros dropped): in memory when the copy fits, otherwise
//! a file at a time into one new file, each merged in memory when it may fit and the pool grants
//! it, else split again with another hash (so a consolidation cannot be refused into failure;
//! before, it was DataFusion's aggregate, whose merge of its own spills cannot spill again).
//! The result, a [`Change`], is read back a piece at a time, each piece reserved while it is
//! read ([`Change::stream`]).
//!
//! So a transaction larger than the lease completes: what it holds in memory at once is a few
//! pieces, not the change.

use crate::error::{Result, ViewError};
use crate::flight::PIECE_ROWS;
use crate::zset::{relax_nullability, ZSet};
use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryReservation};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::SpillWriter;
use datafusion::execution::{SendableRecordBatchStream, SpillFile};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, SpillMetrics};
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use std::io::BufWriter;
use std::sync::Arc;

/// The column that carries a row's weight where a change is written out (the spool's files,
/// the views' log, changelog sinks).
pub const WEIGHT_COLUMN: &str = "_weight";

/// The rows of `z` with a [`WEIGHT_COLUMN`] column.
pub fn with_weights(z: &ZSet) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let schema = weighted(&z.schema());
    let mut columns: Vec<ArrayRef> = z.batch.columns().to_vec();
    columns.push(Arc::new(Int64Array::from(z.weights.clone())));
    RecordBatch::try_new(schema, columns)
}

/// A batch with a [`WEIGHT_COLUMN`] last, as a Z-set of `schema`.
pub fn from_weighted(batch: &RecordBatch, schema: &SchemaRef) -> Result<ZSet> {
    let w = batch.num_columns().checked_sub(1).ok_or_else(|| bad_file("a batch with no weight column"))?;
    let weights = batch
        .column(w)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| bad_file("the last column is not an Int64 weight"))?;
    if weights.null_count() > 0 {
        return Err(bad_file("a NULL weight"));
    }
    let rows = batch.project(&(0..w).collect::<Vec<_>>())?;
    ZSet::new(rows, weights.values().to_vec()).with_schema(schema.clone())
}

fn bad_file(what: &str) -> ViewError {
    ViewError::DataFusion(datafusion::error::DataFusionError::Execution(format!("a spooled change: {what}")))
}

/// `schema` (made nullable) with a [`WEIGHT_COLUMN`] last.
fn weighted(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = relax_nullability(schema).fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(WEIGHT_COLUMN, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

fn spill_manager(runtime: &Arc<RuntimeEnv>, schema: &SchemaRef) -> SpillManager {
    SpillManager::new(runtime.clone(), SpillMetrics::new(&ExecutionPlanMetricsSet::new(), 0), weighted(schema))
        .with_batch_read_buffer_capacity(1)
}

/// A change being collected (see the module's doc).
pub struct Spool {
    what: String,
    schema: SchemaRef,
    runtime: Arc<RuntimeEnv>,
    /// What the pieces kept in memory take.
    reservation: MemoryReservation,
    parts: Vec<ZSet>,
    /// Rows in `parts`, and how many the last consolidation left.
    rows: usize,
    consolidated: usize,
    disk: Option<Partitioned>,
}

/// An IPC stream being written to a file of the temp space.
struct Written {
    file: Arc<dyn SpillFile>,
    ipc: StreamWriter<BufWriter<Box<dyn SpillWriter>>>,
    rows: u64,
    /// The largest batch written, in memory (what reading one back takes).
    largest: usize,
    /// What its batches took in memory, all together.
    bytes: usize,
}

/// The write buffer of a spool's file, and of each file a consolidation splits a change into.
const WRITE_BUFFER: usize = 64 << 10;
const SPLIT_BUFFER: usize = 16 << 10;

impl Written {
    fn create(runtime: &Arc<RuntimeEnv>, schema: &SchemaRef, what: &str) -> Result<Written> {
        Written::with_buffer(runtime, schema, what, WRITE_BUFFER)
    }

    fn with_buffer(runtime: &Arc<RuntimeEnv>, schema: &SchemaRef, what: &str, buffer: usize) -> Result<Written> {
        let file = runtime.disk_manager.create_tmp_file(what)?;
        let out = BufWriter::with_capacity(buffer, file.open_writer()?);
        let ipc = StreamWriter::try_new(out, &weighted(schema))?;
        Ok(Written { file, ipc, rows: 0, largest: 0, bytes: 0 })
    }

    fn write(&mut self, z: &ZSet) -> Result<()> {
        if z.is_empty() {
            return Ok(());
        }
        self.ipc.write(&with_weights(z)?)?;
        self.largest = self.largest.max(z.slice_bytes());
        self.bytes += z.slice_bytes();
        self.rows += z.len() as u64;
        Ok(())
    }

    fn finish(mut self, schema: SchemaRef) -> Result<Change> {
        self.ipc.finish()?;
        let mut out = self.ipc.into_inner()?.into_inner().map_err(|e| ViewError::Arrow(e.into_error().into()))?;
        out.finish()?;
        Ok(Change {
            schema,
            body: Body::Disk { file: self.file, rows: self.rows, largest: self.largest, bytes: self.bytes },
        })
    }
}

impl Spool {
    /// An empty spool for changes of `schema`, reserving from `runtime`'s pool under `what`
    /// (`view v (its change)`) and spilling to its disk manager.
    pub fn new(what: impl Into<String>, schema: SchemaRef, runtime: &Arc<RuntimeEnv>) -> Spool {
        let what = what.into();
        let reservation = MemoryConsumer::new(what.clone()).with_can_spill(true).register(&runtime.memory_pool);
        Spool {
            what,
            schema: relax_nullability(&schema),
            runtime: runtime.clone(),
            reservation,
            parts: Vec::new(),
            rows: 0,
            consolidated: 0,
            disk: None,
        }
    }

    /// Whether it has gone to disk.
    pub fn spilled(&self) -> bool {
        self.disk.is_some()
    }

    /// Keeps `z`: in memory when the pool grants its bytes, on disk otherwise. Kept in memory,
    /// the pieces are consolidated whenever their rows have doubled since the last time (an
    /// aggregate's change over many parts stays the size of its groups).
    pub fn push(&mut self, z: ZSet) -> Result<()> {
        if z.is_empty() {
            return Ok(());
        }
        if let Some(disk) = &mut self.disk {
            return disk.write(&z);
        }
        let bytes = z.slice_bytes();
        if self.reservation.size() + bytes > self.in_memory_cap() || self.reservation.try_grow(bytes).is_err() {
            self.spill()?;
            return self.disk.as_mut().expect("spilled").write(&z);
        }
        self.rows += z.len();
        self.parts.push(z);
        if self.parts.len() > 1 && self.rows >= 2 * self.consolidated.max(PIECE_ROWS) {
            self.consolidate_in_memory()?;
        }
        Ok(())
    }

    /// The most a spool keeps in memory: an eighth of the most the pool may hold. A transaction
    /// has several spools at once (the table's, each view's) and the views' state grows beside
    /// them; a change is cheap to write out and read back, state is not.
    fn in_memory_cap(&self) -> usize {
        match self.runtime.memory_pool.memory_limit() {
            MemoryLimit::Finite(n) => n / 8,
            MemoryLimit::Infinite | MemoryLimit::Unknown => usize::MAX,
        }
    }

    /// Every piece kept in memory merged into one consolidated piece, when the pool grants the
    /// copy; otherwise they go to disk.
    fn consolidate_in_memory(&mut self) -> Result<()> {
        let bytes: usize = self.parts.iter().map(|p| p.slice_bytes()).sum();
        // The concatenation and the consolidated copy, beside the pieces.
        if 3 * bytes > self.in_memory_cap() || self.reservation.try_grow(2 * bytes).is_err() {
            return self.spill();
        }
        let z = ZSet::concat(self.schema.clone(), std::mem::take(&mut self.parts))?.consolidate()?;
        self.rows = z.len();
        self.consolidated = z.len();
        self.reservation.resize(z.bytes());
        self.parts.push(z);
        Ok(())
    }

    /// What is kept in memory goes to files in the temp space, split by a hash of the row
    /// ([`SPILL_FANOUT`] of them); later pieces follow it there.
    fn spill(&mut self) -> Result<()> {
        if self.disk.is_some() {
            return Ok(());
        }
        let mut disk = Partitioned::create(&self.runtime, &self.schema, &self.what, SPILL_FANOUT, 0)?;
        for z in std::mem::take(&mut self.parts) {
            disk.write(&z)?;
        }
        self.rows = 0;
        self.reservation.free();
        // The files' write buffers.
        self.reservation.grow(SPILL_FANOUT * SPLIT_BUFFER);
        self.disk = Some(disk);
        // What the pieces took goes back to the system now, not when jemalloc's pages decay:
        // kept, it would count as untracked memory beside the lease.
        spillway_governor::jemalloc::purge_all_arenas();
        Ok(())
    }

    /// The change, consolidated: in memory when it was kept there and the pool grants the copy
    /// consolidation makes; otherwise from its file into a new one (see `consolidate_on_disk`).
    pub async fn finish(mut self) -> Result<Change> {
        if self.disk.is_none() {
            if self.parts.len() == 1 && self.rows == self.consolidated {
                let z = self.parts.pop().expect("one part");
                return Ok(Change { schema: self.schema, body: Body::Memory { z, _charge: Some(self.reservation) } });
            }
            if self.parts.is_empty() {
                return Ok(Change::empty(self.schema));
            }
            self.consolidate_in_memory()?;
            if let Some(z) = self.parts.pop() {
                return Ok(Change { schema: self.schema, body: Body::Memory { z, _charge: Some(self.reservation) } });
            }
        }
        let disk = self.disk.take().expect("spilled");
        let pieces = disk.finish(&self.schema)?;
        self.reservation.free();
        consolidate_on_disk(pieces, &self.schema, &self.runtime, &self.what, self.in_memory_cap()).await
    }
}

/// A consolidated change (from [`Spool::finish`]), in memory or in a file of the temp space
/// (removed when the last handle on it is dropped).
pub struct Change {
    schema: SchemaRef,
    body: Body,
}

enum Body {
    Memory {
        z: ZSet,
        /// Its bytes, reserved while it is held.
        _charge: Option<MemoryReservation>,
    },
    Disk {
        file: Arc<dyn SpillFile>,
        rows: u64,
        largest: usize,
        /// What its batches take in memory, all together.
        bytes: usize,
    },
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Change({} rows{})", self.rows(), if self.on_disk() { ", on disk" } else { "" })
    }
}

impl Change {
    /// `z` as a change held in memory (its bytes charged by whoever made it).
    pub fn memory(z: ZSet) -> Change {
        Change { schema: relax_nullability(&z.schema()), body: Body::Memory { z, _charge: None } }
    }

    /// No rows.
    pub fn empty(schema: SchemaRef) -> Change {
        Change::memory(ZSet::empty(relax_nullability(&schema)))
    }

    /// The schema of its rows.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows (not the sum of their weights).
    pub fn rows(&self) -> u64 {
        match &self.body {
            Body::Memory { z, .. } => z.len() as u64,
            Body::Disk { rows, .. } => *rows,
        }
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    /// Bytes of its file in the temp space (0 in memory).
    pub fn spilled_bytes(&self) -> u64 {
        match &self.body {
            Body::Memory { .. } => 0,
            Body::Disk { file, .. } => file.size().unwrap_or(0),
        }
    }

    /// What its rows take in memory, all together (what reading it whole would take).
    fn bytes(&self) -> usize {
        match &self.body {
            Body::Memory { z, .. } => z.slice_bytes(),
            Body::Disk { bytes, .. } => *bytes,
        }
    }

    /// Whether it is held in a file.
    pub fn on_disk(&self) -> bool {
        matches!(self.body, Body::Disk { .. })
    }

    /// Its rows in pieces: in memory, the one Z-set (the engine cuts it further); on disk, each
    /// batch of the file, read one at a time, with room for the largest of them reserved from
    /// `runtime`'s pool while the stream lives (refused: an error before anything is read).
    pub fn stream(&self, runtime: &Arc<RuntimeEnv>) -> Result<BoxStream<'static, Result<ZSet>>> {
        self.pieces(runtime, false)
    }

    /// [`Change::stream`]; `force`: its room taken whatever the pool says (a consolidation's
    /// reads, which must not fail: two batches).
    fn pieces(&self, runtime: &Arc<RuntimeEnv>, force: bool) -> Result<BoxStream<'static, Result<ZSet>>> {
        match &self.body {
            Body::Memory { z, .. } => Ok(futures::stream::iter([Ok(z.clone())]).boxed()),
            Body::Disk { file, largest, .. } => {
                let reservation = MemoryConsumer::new("a spooled change, read back").register(&runtime.memory_pool);
                // The batch read ahead and the one in use.
                if force {
                    reservation.grow(2 * largest);
                } else {
                    reservation.try_grow(2 * largest)?;
                }
                let batches = spill_manager(runtime, &self.schema).read_spill_as_stream(file.clone(), None)?;
                let schema = self.schema.clone();
                Ok(batches
                    .map(move |b| {
                        let _held = &reservation;
                        from_weighted(&b?, &schema)
                    })
                    .boxed())
            }
        }
    }

    /// Its rows with a [`WEIGHT_COLUMN`], as a stream of batches (what the log and changelog
    /// sinks write).
    pub fn weighted_stream(&self, runtime: &Arc<RuntimeEnv>) -> Result<SendableRecordBatchStream> {
        let pieces = self.stream(runtime)?;
        let schema = weighted(&self.schema);
        let out = pieces.map(|z| {
            z.and_then(|z| Ok(with_weights(&z)?)).map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, out)))
    }

    /// The whole change as one Z-set (read from its file when it is on disk).
    pub async fn collect(&self, runtime: &Arc<RuntimeEnv>) -> Result<ZSet> {
        if let Body::Memory { z, .. } = &self.body {
            return Ok(z.clone());
        }
        let parts: Vec<ZSet> = self.stream(runtime)?.try_collect().await?;
        ZSet::concat(self.schema.clone(), parts)
    }
}

/// How many files a spool's spilled pieces are split into as they are written.
const SPILL_FANOUT: usize = 16;
/// How many files a piece too large to merge in memory is split into at a time (at most: fewer
/// when fewer give pieces that fit).
const FANOUT: usize = 64;
/// Splits after which a piece is merged in memory whatever the pool says (64⁶ pieces: a piece
/// that still does not fit is rows that hash alike, which merge as they are read).
const MAX_SPLITS: u32 = 6;

/// A spilled change (its `pieces`, split by a hash of the row as they were written) consolidated
/// a piece at a time into one new file: each piece is merged in memory, reserved as it is read,
/// when it may fit (`cap`: three times its rows, for the rows, their encoding and the merged
/// copy); a piece that may not, or that the pool refuses, is split again with another hash.
/// Equal rows always land in the same piece, so the pieces' merges are the change's. Nothing
/// here can be refused into failure: a refusal splits.
async fn consolidate_on_disk(
    pieces: Vec<Change>,
    schema: &SchemaRef,
    runtime: &Arc<RuntimeEnv>,
    what: &str,
    cap: usize,
) -> Result<Change> {
    let mut reservation =
        MemoryConsumer::new(format!("{what} (consolidating)")).with_can_spill(true).register(&runtime.memory_pool);
    let mut out = Written::create(runtime, schema, what)?;
    let mut work: Vec<(Change, u32)> = pieces.into_iter().map(|p| (p, 1)).collect();
    while let Some((piece, splits)) = work.pop() {
        if piece.is_empty() {
            continue;
        }
        let fits = piece.bytes().saturating_mul(3) <= cap;
        // A batch's worth, or a piece split as far as it goes, is merged whatever the pool says:
        // splitting it further would not hold less (reading takes two batches).
        let least = piece.rows() <= PIECE_ROWS as u64 || splits >= MAX_SPLITS;
        if fits || least {
            if let Some(z) = merge(&piece, runtime, &mut reservation, least).await? {
                for at in (0..z.len()).step_by(PIECE_ROWS) {
                    let len = PIECE_ROWS.min(z.len() - at);
                    out.write(&ZSet::new(z.batch.slice(at, len), z.weights[at..at + len].to_vec()))?;
                }
                reservation.free();
                continue;
            }
        }
        let n = piece.bytes().saturating_mul(3).div_ceil(cap.max(1)).clamp(2, FANOUT);
        for part in split(&piece, runtime, &mut reservation, what, n, splits).await? {
            work.push((part, splits + 1));
        }
    }
    drop(reservation);
    // What the merges took goes back to the system (see [`Spool::spill`]).
    spillway_governor::jemalloc::purge_all_arenas();
    out.finish(schema.clone())
}

/// Reserves `bytes` more: asked for (`false` when refused), or taken whatever the pool says.
fn reserve(reservation: &mut MemoryReservation, bytes: usize, force: bool) -> bool {
    if force {
        reservation.grow(bytes);
        true
    } else {
        reservation.try_grow(bytes).is_ok()
    }
}

/// `piece` read a batch at a time and merged in memory (each batch reserved before it is kept,
/// the merge's copy before it is made), or `None` when the pool refuses (what was reserved is
/// given back).
async fn merge(
    piece: &Change,
    runtime: &Arc<RuntimeEnv>,
    reservation: &mut MemoryReservation,
    force: bool,
) -> Result<Option<ZSet>> {
    let schema = piece.schema.clone();
    // Room for two batches read, taken whatever the pool says (see [`split`]).
    let mut batches = piece.pieces(runtime, true)?;
    let (mut parts, mut rows, mut merged) = (Vec::new(), 0usize, 0usize);
    loop {
        let next = batches.try_next().await?;
        let last = next.is_none();
        if let Some(z) = next {
            if !reserve(reservation, z.slice_bytes(), force) {
                reservation.free();
                return Ok(None);
            }
            rows += z.len();
            parts.push(z);
        }
        // Merged once at the end when the piece was judged to fit; merged as it grows (whenever
        // its rows double) when it is taken whatever the pool says, so that rows that repeat
        // (an aggregate's groups over many parts) hold only their merged size.
        let grown = force && rows >= 2 * merged.max(PIECE_ROWS);
        if parts.len() > 1 && (last || grown) || (last && rows != merged) {
            let bytes: usize = parts.iter().map(|p| p.slice_bytes()).sum();
            if !reserve(reservation, 2 * bytes, force) {
                reservation.free();
                return Ok(None);
            }
            let z = ZSet::concat(schema.clone(), std::mem::take(&mut parts))?.consolidate()?;
            (rows, merged) = (z.len(), z.len());
            reservation.resize(z.bytes());
            parts.push(z);
        }
        if last {
            return Ok(Some(parts.pop().unwrap_or_else(|| ZSet::empty(schema))));
        }
    }
}

/// `piece`'s rows in `n` files of the temp space by a hash of the whole row (a new hash at each
/// split). What a batch takes while it is cut is reserved whatever the pool says: it is a few
/// batches, the least any consolidation needs.
async fn split(
    piece: &Change,
    runtime: &Arc<RuntimeEnv>,
    reservation: &mut MemoryReservation,
    what: &str,
    n: usize,
    splits: u32,
) -> Result<Vec<Change>> {
    let mut files = Partitioned::create(runtime, &piece.schema, what, n, splits)?;
    reservation.grow(n * SPLIT_BUFFER);
    let mut batches = piece.pieces(runtime, true)?;
    while let Some(z) = batches.try_next().await? {
        files.write(&z)?;
    }
    let parts = files.finish(&piece.schema);
    reservation.free();
    parts
}

/// Files of the temp space a change is written to, each row to the one its hash picks (a hash
/// of the whole row, seeded by how many splits came before, so that rows that shared a file
/// spread over the next ones). Each file's rows are gathered in memory, reserved, up to a
/// bound before they are written as one batch: a batch cut 16 ways would otherwise be written,
/// and read back, as 16 small ones.
struct Partitioned {
    files: Vec<Written>,
    hash: datafusion::common::hash_utils::RandomState,
    hashes: Vec<u64>,
    /// Rows gathered per file, and their bytes.
    held: Vec<(Vec<ZSet>, usize)>,
    /// The most a file gathers before it is written.
    bound: usize,
    reservation: MemoryReservation,
}

impl Partitioned {
    fn create(runtime: &Arc<RuntimeEnv>, schema: &SchemaRef, what: &str, n: usize, splits: u32) -> Result<Partitioned> {
        let files =
            (0..n).map(|_| Written::with_buffer(runtime, schema, what, SPLIT_BUFFER)).collect::<Result<Vec<_>>>()?;
        let hash = datafusion::common::hash_utils::RandomState::with_seed(u64::from(splits) + 1);
        // Half of a spool's eighth of the pool over the files, at most 1MiB each.
        let bound = match runtime.memory_pool.memory_limit() {
            MemoryLimit::Finite(limit) => limit / 16 / n,
            MemoryLimit::Infinite | MemoryLimit::Unknown => usize::MAX,
        }
        .min(1 << 20);
        let reservation = MemoryConsumer::new(format!("{what} (rows gathered to be written)"))
            .with_can_spill(true)
            .register(&runtime.memory_pool);
        Ok(Partitioned { files, hash, hashes: Vec::new(), held: vec![(Vec::new(), 0); n], bound, reservation })
    }

    fn write(&mut self, z: &ZSet) -> Result<()> {
        let n = self.files.len();
        // While `z` is cut: a hash and an index per row, and its rows again in the pieces
        // (bounded by the batch, taken whatever the pool says: the least a spill needs).
        let cutting = z.slice_bytes() + 12 * z.len();
        self.reservation.grow(cutting);
        self.hashes.clear();
        self.hashes.resize(z.len(), 0);
        datafusion::common::hash_utils::create_hashes(z.batch.columns(), &self.hash, &mut self.hashes)?;
        let mut to: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, h) in self.hashes.iter().enumerate() {
            to[(h % n as u64) as usize].push(i as u32);
        }
        for (k, rows) in to.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let part = z.take(rows)?;
            let bytes = part.slice_bytes();
            let (held, held_bytes) = &mut self.held[k];
            let keep = *held_bytes + bytes < self.bound && self.reservation.try_grow(bytes).is_ok();
            if keep {
                held.push(part);
                *held_bytes += bytes;
            } else {
                held.push(part);
                self.flush(k)?;
            }
        }
        self.reservation.shrink(cutting);
        Ok(())
    }

    /// File `k`'s gathered rows written as one batch.
    fn flush(&mut self, k: usize) -> Result<()> {
        let (held, bytes) = std::mem::take(&mut self.held[k]);
        if let Some(schema) = held.first().map(|z| z.schema()) {
            // The concatenated copy (at most the bound and a batch's piece).
            let copy: usize = held.iter().map(|z| z.slice_bytes()).sum();
            self.reservation.grow(copy);
            self.files[k].write(&ZSet::concat(schema, held)?)?;
            self.reservation.shrink(copy);
        }
        self.reservation.shrink(bytes.min(self.reservation.size()));
        Ok(())
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<Vec<Change>> {
        for k in 0..self.files.len() {
            self.flush(k)?;
        }
        self.files.into_iter().map(|f| f.finish(schema.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use datafusion::execution::memory_pool::{FairSpillPool, GreedyMemoryPool, MemoryPool};
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;

    fn runtime(pool: Arc<dyn MemoryPool>, dir: &std::path::Path) -> Arc<RuntimeEnv> {
        use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
        RuntimeEnvBuilder::new()
            .with_memory_pool(pool)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![dir.to_path_buf()])),
            )
            .build_arc()
            .expect("runtime")
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true), Field::new("s", DataType::Utf8, true)]))
    }

    /// Rows `k` in `from..to` with weight `w` (k's text as `s`, NULL for multiples of 7).
    fn piece(from: i64, to: i64, w: i64) -> ZSet {
        let ks: Vec<i64> = (from..to).collect();
        let ss: Vec<Option<String>> = ks.iter().map(|k| (k % 7 != 0).then(|| format!("row {k}"))).collect();
        let batch =
            RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(ks)), Arc::new(StringArray::from(ss))])
                .expect("batch");
        ZSet::uniform(batch, w)
    }

    /// What a change holds, as sorted `(k, s, weight)`.
    async fn rows(c: &Change, rt: &Arc<RuntimeEnv>) -> Vec<(i64, Option<String>, i64)> {
        let z = c.collect(rt).await.expect("collect");
        let ks = z.batch.column(0).as_any().downcast_ref::<Int64Array>().expect("k").clone();
        let ss = z.batch.column(1).as_any().downcast_ref::<StringArray>().expect("s").clone();
        let mut out: Vec<_> = (0..z.len())
            .map(|i| (ks.value(i), (!ss.is_null(i)).then(|| ss.value(i).to_string()), z.weights[i]))
            .collect();
        out.sort();
        out
    }

    /// Pieces pushed: 0..60,000 inserted, 20,000..50,000 deleted again and 40,000..50,000
    /// inserted twice more; consolidated, 0..20,000 and 50,000..60,000 once and
    /// 40,000..50,000 twice.
    async fn push_all(spool: &mut Spool) {
        for start in (0..60_000).step_by(5_000) {
            spool.push(piece(start, start + 5_000, 1)).expect("push");
        }
        for start in (20_000..50_000).step_by(5_000) {
            spool.push(piece(start, start + 5_000, -1)).expect("push");
        }
        spool.push(piece(40_000, 50_000, 2)).expect("push");
    }

    fn expected() -> Vec<(i64, Option<String>, i64)> {
        let mut z = vec![piece(0, 20_000, 1), piece(40_000, 50_000, 2), piece(50_000, 60_000, 1)];
        let mut out = Vec::new();
        for p in z.drain(..) {
            for i in 0..p.len() {
                let k = p.batch.column(0).as_any().downcast_ref::<Int64Array>().expect("k").value(i);
                out.push((k, (k % 7 != 0).then(|| format!("row {k}")), p.weights[i]));
            }
        }
        out.sort();
        out
    }

    /// In a pool far smaller than the change, the spool goes to disk and is consolidated from
    /// there, split into pieces that fit (and pieces of those); the result is what consolidating
    /// in memory gives, it is read back within the pool, and its files are gone once dropped.
    #[tokio::test]
    async fn a_change_larger_than_the_pool_is_spilled_and_consolidated_on_disk() {
        let (dir, pool, rt, mut spool) = spool_in(Arc::new(FairSpillPool::new(2 << 20)));
        push_all(&mut spool).await;
        assert!(spool.spilled(), "100,000 rows do not fit 2MiB");
        let change = spool.finish().await.expect("finish");
        assert!(change.on_disk());
        assert_eq!(change.rows(), 40_000);
        assert_eq!(pool.reserved(), 0, "nothing held between reads");
        // Read back a piece at a time within the pool (the whole change would not fit).
        let mut pieces = change.stream(&rt).expect("stream");
        let mut n = 0;
        while let Some(z) = pieces.try_next().await.expect("piece") {
            assert!(pool.reserved() < 2 << 20);
            n += z.len();
        }
        drop(pieces);
        assert_eq!(n, 40_000);
        let big = runtime(Arc::new(GreedyMemoryPool::new(1 << 30)), dir.path());
        assert_eq!(rows(&change, &big).await, expected());
        let files = || walk(dir.path());
        assert!(!files().is_empty(), "the change is in the temp space");
        drop(change);
        assert_eq!(files(), Vec::<std::path::PathBuf>::new(), "its file is removed with it");
    }

    /// A pool that refuses nearly everything: the spool goes to disk at once, and its
    /// consolidation splits the file until each piece is a batch's worth, merged within the
    /// little it takes; the rows are the same, nothing stays reserved, no file is left.
    #[tokio::test]
    async fn a_consolidation_the_pool_refuses_splits_until_it_completes() {
        let (dir, pool, _rt, mut spool) = spool_in(Arc::new(GreedyMemoryPool::new(64 << 10)));
        push_all(&mut spool).await;
        assert!(spool.spilled());
        let change = spool.finish().await.expect("a refused consolidation splits, it does not fail");
        assert!(change.on_disk());
        assert_eq!(pool.reserved(), 0, "nothing held once it is consolidated");
        let big = runtime(Arc::new(GreedyMemoryPool::new(1 << 30)), dir.path());
        assert_eq!(rows(&change, &big).await, expected());
        assert_eq!(walk(dir.path()).len(), 1, "the pieces' files are gone, the change's stays");
        drop(change);
        assert!(walk(dir.path()).is_empty());
    }

    /// With room, the same pushes stay in memory and consolidate to the same rows.
    #[tokio::test]
    async fn a_change_that_fits_stays_in_memory() {
        let (dir, pool, rt, mut spool) = spool_in(Arc::new(GreedyMemoryPool::new(1 << 30)));
        push_all(&mut spool).await;
        assert!(!spool.spilled());
        let change = spool.finish().await.expect("finish");
        assert!(!change.on_disk());
        assert!(pool.reserved() > 0, "the change is charged while it is held");
        assert_eq!(rows(&change, &rt).await, expected());
        drop(change);
        assert_eq!(pool.reserved(), 0);
        assert!(walk(dir.path()).is_empty());
    }

    /// A temp space, `pool`, a runtime over both and an empty spool on it.
    fn spool_in(pool: Arc<dyn MemoryPool>) -> (tempfile::TempDir, Arc<dyn MemoryPool>, Arc<RuntimeEnv>, Spool) {
        let dir = tempfile::tempdir().expect("dir");
        let rt = runtime(pool.clone(), dir.path());
        let spool = Spool::new("view v (its change)", schema(), &rt);
        (dir, pool, rt, spool)
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
