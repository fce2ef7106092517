//! A change held for the rest of its transaction: in memory while the pool grants it, in the
//! temp space once the pool refuses, consolidated at the end.
//!
//! A transaction's change to a table, and each view's change, are needed until the commit (the
//! log, the sinks, the views that read a view). A [`Spool`] takes a change a piece at a time:
//! each piece is reserved from the pool before it is kept; when the pool refuses, what is kept
//! goes to an Arrow IPC file in the temp space (the disk manager of the runtime, so spillway's
//! temp-space quota and its sweep of abandoned run folders) and every later piece is appended to
//! it. [`Spool::finish`] consolidates it (equal rows merged, weights summed, zeros dropped): in
//! memory when the copy fits, otherwise with DataFusion's aggregate over the file, which spills
//! under the same pool, into a second file. The result, a [`Change`], is read back a piece at a
//! time, each piece reserved while it is read ([`Change::stream`]).
//!
//! So a transaction larger than the lease completes: what it holds in memory at once is a few
//! pieces, not the change.

use crate::error::{Result, ViewError};
use crate::flight::PIECE_ROWS;
use crate::zset::{relax_nullability, ZSet};
use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::Column;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryReservation};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::SpillWriter;
use datafusion::execution::{SendableRecordBatchStream, SpillFile, TaskContext};
use datafusion::logical_expr::{col, lit, Expr};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, SpillMetrics};
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{SessionConfig, SessionContext};
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
    disk: Option<Written>,
}

/// An IPC stream being written to a file of the temp space.
struct Written {
    file: Arc<dyn SpillFile>,
    ipc: StreamWriter<BufWriter<Box<dyn SpillWriter>>>,
    rows: u64,
    /// The largest batch written, in memory (what reading one back takes).
    largest: usize,
}

impl Written {
    fn create(runtime: &Arc<RuntimeEnv>, schema: &SchemaRef, what: &str) -> Result<Written> {
        let file = runtime.disk_manager.create_tmp_file(what)?;
        let out = BufWriter::with_capacity(64 << 10, file.open_writer()?);
        let ipc = StreamWriter::try_new(out, &weighted(schema))?;
        Ok(Written { file, ipc, rows: 0, largest: 0 })
    }

    fn write(&mut self, z: &ZSet) -> Result<()> {
        if z.is_empty() {
            return Ok(());
        }
        self.ipc.write(&with_weights(z)?)?;
        self.largest = self.largest.max(z.slice_bytes());
        self.rows += z.len() as u64;
        Ok(())
    }

    fn finish(mut self, schema: SchemaRef) -> Result<Change> {
        self.ipc.finish()?;
        let mut out = self.ipc.into_inner()?.into_inner().map_err(|e| ViewError::Arrow(e.into_error().into()))?;
        out.finish()?;
        Ok(Change {
            schema,
            body: Body::Disk { file: self.file, rows: self.rows, largest: self.largest },
            consolidated: true,
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

    /// What is kept in memory goes to a file in the temp space; later pieces follow it there.
    fn spill(&mut self) -> Result<()> {
        if self.disk.is_some() {
            return Ok(());
        }
        let mut disk = Written::create(&self.runtime, &self.schema, &self.what)?;
        for z in std::mem::take(&mut self.parts) {
            disk.write(&z)?;
        }
        self.rows = 0;
        self.reservation.free();
        self.disk = Some(disk);
        // What the pieces took goes back to the system now, not when jemalloc's pages decay:
        // kept, it would count as untracked memory beside the lease.
        spillway_governor::jemalloc::purge_all_arenas();
        Ok(())
    }

    /// The change, consolidated: in memory when it was kept there and the pool grants the copy
    /// consolidation makes; otherwise consolidated from its file by DataFusion's aggregate into
    /// a new file.
    pub async fn finish(mut self) -> Result<Change> {
        if self.disk.is_none() {
            if self.parts.len() == 1 && self.rows == self.consolidated {
                let z = self.parts.pop().expect("one part");
                return Ok(Change {
                    schema: self.schema,
                    body: Body::Memory { z, _charge: Some(self.reservation) },
                    consolidated: true,
                });
            }
            if self.parts.is_empty() {
                return Ok(Change::empty(self.schema));
            }
            self.consolidate_in_memory()?;
            if let Some(z) = self.parts.pop() {
                return Ok(Change {
                    schema: self.schema,
                    body: Body::Memory { z, _charge: Some(self.reservation) },
                    consolidated: true,
                });
            }
        }
        let disk = self.disk.take().expect("spilled");
        let raw = disk.finish(self.schema.clone())?;
        match consolidate_on_disk(&raw, &self.runtime, &self.what).await {
            // The aggregate's merge of its own spills cannot spill again, and the lease may
            // refuse it even a few hundred KiB under pressure: the change is then kept as
            // written (the rows in the order the views made them, a row possibly retracted and
            // inserted again), which every consumer sums the same way.
            Err(ViewError::DataFusion(e))
                if matches!(e.find_root(), datafusion::error::DataFusionError::ResourcesExhausted(_)) =>
            {
                Ok(Change { consolidated: false, ..raw })
            }
            r => r,
        }
    }
}

/// A consolidated change (from [`Spool::finish`]), in memory or in a file of the temp space
/// (removed when the last handle on it is dropped).
pub struct Change {
    schema: SchemaRef,
    body: Body,
    /// False for a change on disk whose consolidation the lease could not hold.
    consolidated: bool,
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
        Change { schema: relax_nullability(&z.schema()), body: Body::Memory { z, _charge: None }, consolidated: true }
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

    /// Whether equal rows were merged (false only for a change on disk whose consolidation the
    /// lease could not hold: see [`Spool::finish`]).
    pub fn consolidated(&self) -> bool {
        self.consolidated
    }

    /// Whether it is held in a file.
    pub fn on_disk(&self) -> bool {
        matches!(self.body, Body::Disk { .. })
    }

    /// Its rows in pieces: in memory, the one Z-set (the engine cuts it further); on disk, each
    /// batch of the file, read one at a time, with room for the largest of them reserved from
    /// `runtime`'s pool while the stream lives (refused: an error before anything is read).
    pub fn stream(&self, runtime: &Arc<RuntimeEnv>) -> Result<BoxStream<'static, Result<ZSet>>> {
        match &self.body {
            Body::Memory { z, .. } => Ok(futures::stream::iter([Ok(z.clone())]).boxed()),
            Body::Disk { file, largest, .. } => {
                let reservation = MemoryConsumer::new("a spooled change, read back").register(&runtime.memory_pool);
                // The batch read ahead and the one in use.
                reservation.try_grow(2 * largest)?;
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

/// A spooled file as a table DataFusion can scan (once per execution).
struct SpooledPartition {
    file: Arc<dyn SpillFile>,
    schema: SchemaRef,
    runtime: Arc<RuntimeEnv>,
}

impl std::fmt::Debug for SpooledPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpooledPartition({:?})", self.file.path())
    }
}

impl PartitionStream for SpooledPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let manager = SpillManager::new(
            self.runtime.clone(),
            SpillMetrics::new(&ExecutionPlanMetricsSet::new(), 0),
            self.schema.clone(),
        )
        .with_batch_read_buffer_capacity(1);
        match manager.read_spill_as_stream(self.file.clone(), None) {
            Ok(s) => s,
            Err(e) => {
                Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), futures::stream::once(async { Err(e) })))
            }
        }
    }
}

/// `raw` (a change on disk, not consolidated) consolidated by DataFusion: grouped by every
/// column, weights summed, zero sums dropped, written to a new file. The aggregate reserves
/// from the runtime's pool and spills to its disk manager like any batch query.
async fn consolidate_on_disk(raw: &Change, runtime: &Arc<RuntimeEnv>, what: &str) -> Result<Change> {
    let Body::Disk { file, .. } = &raw.body else { return Ok(Change::memory(raw.collect(runtime).await?)) };
    let schema = weighted(&raw.schema);
    let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), runtime.clone());
    let partition = SpooledPartition { file: file.clone(), schema: schema.clone(), runtime: runtime.clone() };
    let table = StreamingTable::try_new(schema.clone(), vec![Arc::new(partition)])?;
    let groups: Vec<Expr> =
        raw.schema.fields().iter().map(|f| Expr::Column(Column::new_unqualified(f.name().clone()))).collect();
    let weight = || Expr::Column(Column::new_unqualified(WEIGHT_COLUMN));
    let sum = datafusion::functions_aggregate::expr_fn::sum(weight()).alias(WEIGHT_COLUMN);
    let frame =
        ctx.read_table(Arc::new(table))?.aggregate(groups, vec![sum])?.filter(col(WEIGHT_COLUMN).not_eq(lit(0i64)))?;
    let mut batches = frame.execute_stream().await?;
    let mut out = Written::create(runtime, &raw.schema, what)?;
    while let Some(b) = batches.try_next().await? {
        out.write(&from_weighted(&b, &raw.schema)?)?;
    }
    drop(batches);
    // The aggregate's tables go back to the system (see [`Spool::spill`]).
    spillway_governor::jemalloc::purge_all_arenas();
    out.finish(raw.schema.clone())
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

    /// In a pool far smaller than the change, the spool goes to disk and DataFusion's aggregate
    /// consolidates it; the result is what consolidating in memory gives, it is read back
    /// within the pool, and its files are gone once it is dropped.
    #[tokio::test]
    async fn a_change_larger_than_the_pool_is_spilled_and_consolidated_on_disk() {
        let dir = tempfile::tempdir().expect("dir");
        let pool: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(2 << 20));
        let rt = runtime(pool.clone(), dir.path());
        let mut spool = Spool::new("view v (its change)", schema(), &rt);
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

    /// With room, the same pushes stay in memory and consolidate to the same rows.
    #[tokio::test]
    async fn a_change_that_fits_stays_in_memory() {
        let dir = tempfile::tempdir().expect("dir");
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 30));
        let rt = runtime(pool.clone(), dir.path());
        let mut spool = Spool::new("view v (its change)", schema(), &rt);
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
