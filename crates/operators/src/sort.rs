//! [`SpillingSortExec`]: an external sort that finishes within its lease whatever the row width,
//! and [`SpillingSortRule`], which puts it in place of DataFusion's `SortExec`.
//!
//! DataFusion 55's sort reserves its merge memory after it has spilled, as batches arrive: with
//! wide rows, or with another partition's sort still holding its buffer, the merge is refused
//! memory it cannot spill and the query fails (`ExternalSorterMerge (cannot spill)`). Its TopK
//! (a sort with a limit) keeps all `k` rows in memory and fails when they do not fit. This sort:
//!
//! ```text
//!   start     reserve the merge memory first (SpillingSortMerge[p], cannot spill): enough for
//!             a two-way merge of runs whose batches are `B` bytes (B from the lease); when
//!             other partitions hold the lease, wait (up to 30s) for them to give it back
//!   input     each batch sorted on arrival (and cut to `fetch` rows), its keys converted to
//!             rows, both charged to SpillingSort[p] (spillable)
//!   refused   merge what is buffered into a sorted run on disk, in batches of about B bytes;
//!             with a fetch whose rows are small, the run is kept in memory instead (a TopK
//!             that shrinks rather than fails); a batch refused with nothing buffered is split
//!   end       no run on disk: merge the buffer and stream it out
//!             runs: free the buffer, grow the merge memory into it, fan-in = what it holds /
//!             (memory per input), merge the smallest runs into new runs until the rest fit
//!             one merge, then stream that merge out
//! ```
//!
//! Every allocation of the merge is known before it starts (see `merge.rs`), so a sort that has
//! its first reservation completes; only a single row larger than a quarter of the lease (which
//! no merge could hold with another) fails, with an error naming the operator, the row size and
//! the lease. Sorted batches with view columns are compacted before they are charged, so the
//! charge is what they hold.

use crate::delegate::delegate_plan;
use crate::merge::{compact_views, Merge, SortedStream};
use crate::spill::IpcFile;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::utils::memory::get_record_batch_memory_size;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, SpillFile, TaskContext};
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, SpillMetrics};
use datafusion::physical_plan::sorts::sort::{sort_batch, SortExec};
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::ExecutionPlanProperties;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// How long a sort waits for its first merge memory before it fails.
const MERGE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// DataFusion's `SortExec`, run by spillway's external sort. See the module docs.
#[derive(Debug)]
pub struct SpillingSortExec {
    sort: Arc<SortExec>,
    metrics: ExecutionPlanMetricsSet,
}

impl SpillingSortExec {
    /// Runs `sort` (its ordering, fetch and partitioning) as an external sort.
    pub fn new(sort: Arc<SortExec>) -> Self {
        Self { sort, metrics: ExecutionPlanMetricsSet::new() }
    }

    /// The sort it runs.
    pub fn sort(&self) -> &SortExec {
        &self.sort
    }
}

impl DisplayAs for SpillingSortExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "SpillingSortExec: expr=[{}]", ordering(&self.sort.expr().iter().collect::<Vec<_>>()))?;
        if let Some(n) = self.sort.fetch() {
            write!(f, ", fetch={n}")?;
        }
        write!(f, ", preserve_partitioning=[{}]", self.sort.preserve_partitioning())
    }
}

impl ExecutionPlan for SpillingSortExec {
    fn name(&self) -> &str {
        "SpillingSortExec"
    }

    delegate_plan!(sort, |plan: Arc<dyn ExecutionPlan>| {
        let sort = plan.downcast_ref::<SortExec>().ok_or_else(|| rebuilt_as_another("SortExec"))?.clone();
        Ok(Arc::new(Self::new(Arc::new(sort))) as Arc<dyn ExecutionPlan>)
    });

    fn execute(&self, partition: usize, task: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let schema = self.sort.schema();
        if self.sort.fetch() == Some(0) {
            return Ok(Box::pin(datafusion::physical_plan::EmptyRecordBatchStream::new(schema)));
        }
        let input = self.sort.input().execute(partition, task.clone())?;
        let sorter = Sorter::new(&self.sort, partition, &task, &self.metrics)?;
        let stream = futures::stream::once(sorter.run(input)).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// `a ASC NULLS LAST, b DESC`, as DataFusion shows an ordering.
fn ordering(exprs: &[&datafusion::physical_expr::PhysicalSortExpr]) -> String {
    exprs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ")
}

fn rebuilt_as_another(what: &str) -> DataFusionError {
    DataFusionError::Internal(format!("{what} rebuilt as another plan"))
}

/// DataFusion's `SortPreservingMergeExec` (the merge of sorted partitions above a sort), run by
/// spillway's [`Merge`]: output batches of about `B` bytes whatever the row width (DataFusion's
/// holds every input batch that rows of an 8192-row output come from), with the memory of its
/// inputs' current batches reserved before it starts.
#[derive(Debug)]
pub struct BoundedMergeExec {
    merge: Arc<SortPreservingMergeExec>,
    metrics: ExecutionPlanMetricsSet,
}

impl BoundedMergeExec {
    /// Runs `merge` (its ordering and fetch).
    pub fn new(merge: Arc<SortPreservingMergeExec>) -> Self {
        Self { merge, metrics: ExecutionPlanMetricsSet::new() }
    }
}

impl DisplayAs for BoundedMergeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "BoundedMergeExec: [{}]", ordering(&self.merge.expr().iter().collect::<Vec<_>>()))?;
        if let Some(n) = self.merge.fetch() {
            write!(f, ", fetch={n}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for BoundedMergeExec {
    fn name(&self) -> &str {
        "BoundedMergeExec"
    }

    delegate_plan!(merge, |plan: Arc<dyn ExecutionPlan>| {
        let merge = plan
            .downcast_ref::<SortPreservingMergeExec>()
            .ok_or_else(|| rebuilt_as_another("SortPreservingMergeExec"))?;
        Ok(Arc::new(Self::new(Arc::new(merge.clone()))) as Arc<dyn ExecutionPlan>)
    });

    fn execute(&self, partition: usize, task: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.merge.input();
        let n = input.output_partitioning().partition_count();
        if n <= 1 {
            return self.merge.execute(partition, task);
        }
        let schema = input.schema();
        let fields = self
            .merge
            .expr()
            .iter()
            .map(|e| Ok(SortField::new_with_options(e.expr.data_type(&schema)?, e.options)))
            .collect::<Result<Vec<_>>>()?;
        let converter = Arc::new(RowConverter::new(fields)?);
        let lease = match task.memory_pool().memory_limit() {
            MemoryLimit::Finite(n) => n,
            _ => 1 << 30,
        };
        let bytes = batch_bytes(lease, task.session_config().target_partitions());
        let reservation = MemoryConsumer::new(format!("BoundedMerge[{partition}]")).register(task.memory_pool());
        // Each input's current batch, one waiting in the output, and the output.
        reservation.try_grow((2 * n + 1) * bytes)?;
        let mut inputs = Vec::with_capacity(n);
        for p in 0..n {
            let (converter, expr) = (converter.clone(), self.merge.expr().clone());
            let stream = input.execute(p, task.clone())?;
            inputs.push(
                stream
                    .map(move |batch| {
                        let batch = batch?;
                        let rows = key_rows(&expr, &converter, &batch)?;
                        Ok((batch, rows))
                    })
                    .boxed(),
            );
        }
        let rows = task.session_config().batch_size().max(1);
        let merge = Merge::new(inputs, rows, self.merge.fetch()).with_out_bytes(bytes);
        let out = MetricBuilder::new(&self.metrics).output_rows(partition);
        let stream = Holding { stream: merge, _held: reservation }.inspect_ok(move |b| out.add(b.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.merge.schema(), stream)))
    }
}

/// The sort keys of `batch` in Arrow's row format.
fn key_rows(expr: &LexOrdering, converter: &RowConverter, batch: &RecordBatch) -> Result<Rows> {
    let n = batch.num_rows();
    let columns =
        expr.iter().map(|e| e.expr.evaluate(batch).and_then(|v| v.into_array(n))).collect::<Result<Vec<_>>>()?;
    Ok(converter.convert_columns(&columns)?)
}

/// Bytes of one batch of a run (and of the sort's output batches): small enough that a merge
/// of many runs fits the share of one partition, large enough that batches stay efficient.
fn batch_bytes(lease: usize, partitions: usize) -> usize {
    (lease / (partitions.max(1) * 128)).clamp(32 << 10, 4 << 20)
}

/// Runs on disk before the smallest are merged (each holds an open file).
const MAX_RUNS: usize = 64;
/// The most runs one merge reads.
const MAX_FAN_IN: usize = 32;

struct Run {
    file: Arc<dyn SpillFile>,
    rows: usize,
    /// The largest batch written, in memory.
    max_batch: usize,
}

struct Sorter {
    name: String,
    expr: LexOrdering,
    fetch: Option<usize>,
    schema: SchemaRef,
    converter: Arc<RowConverter>,
    buffer: Vec<(RecordBatch, Rows)>,
    buffer_res: MemoryReservation,
    merge_res: MemoryReservation,
    runs: Vec<Run>,
    task: Arc<TaskContext>,
    lease: usize,
    batch_bytes: usize,
    max_batch_rows: usize,
    /// The widest rows seen (average per batch): data bytes and key-row bytes per row.
    row_data: usize,
    row_keys: usize,
    /// The most the buffer held, and the merge memory reserved at the start.
    buffer_peak: usize,
    merge_start: usize,
    spill: SpillMetrics,
    passes: Count,
}

impl Sorter {
    fn new(
        sort: &SortExec,
        partition: usize,
        task: &Arc<TaskContext>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Self> {
        let schema = sort.input().schema();
        let fields = sort
            .expr()
            .iter()
            .map(|e| Ok(SortField::new_with_options(e.expr.data_type(&schema)?, e.options)))
            .collect::<Result<Vec<_>>>()?;
        let lease = match task.memory_pool().memory_limit() {
            MemoryLimit::Finite(n) => n,
            _ => 1 << 30,
        };
        let partitions = task.session_config().target_partitions();
        let pool = task.memory_pool();
        Ok(Self {
            name: format!("SpillingSort[{partition}]"),
            expr: sort.expr().clone(),
            fetch: sort.fetch(),
            schema: sort.schema(),
            converter: Arc::new(RowConverter::new(fields)?),
            buffer: Vec::new(),
            buffer_res: MemoryConsumer::new(format!("SpillingSort[{partition}]")).with_can_spill(true).register(pool),
            merge_res: MemoryConsumer::new(format!("SpillingSortMerge[{partition}]")).register(pool),
            runs: Vec::new(),
            task: task.clone(),
            lease,
            batch_bytes: batch_bytes(lease, partitions),
            max_batch_rows: task.session_config().batch_size().max(1),
            row_data: 1,
            row_keys: 1,
            buffer_peak: 0,
            merge_start: 0,
            spill: SpillMetrics::new(metrics, partition),
            passes: MetricBuilder::new(metrics).counter("merge_passes", partition),
        })
    }

    async fn run(mut self, mut input: SendableRecordBatchStream) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        // The merge's memory comes first: everything after it can spill. When the lease is full
        // now (another partition's buffer, the channels of a repartition that started before
        // this partition did), it waits for them to finish and give memory back — for a while,
        // then fails as it would have at once.
        let first = 2 * self.per_input(self.batch_bytes) + self.batch_bytes;
        let started = std::time::Instant::now();
        while let Err(e) = self.merge_res.try_grow(first) {
            if started.elapsed() >= MERGE_WAIT {
                return Err(self.context(e, "reserving its merge memory"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.merge_start = first;
        while let Some(batch) = input.next().await {
            self.insert(batch?).await?;
        }
        drop(input);
        self.finish().await
    }

    fn context(&self, e: DataFusionError, doing: &str) -> DataFusionError {
        match e {
            DataFusionError::ResourcesExhausted(m) => {
                DataFusionError::ResourcesExhausted(format!("{} (external sort) failed {doing}: {m}", self.name))
            }
            e => e,
        }
    }

    /// Memory one input of a merge takes, with batches of `batch` bytes: its current batch, one
    /// whose rows wait in the output being built, one read ahead, and their key rows.
    fn per_input(&self, batch: usize) -> usize {
        let keys = batch.saturating_mul(self.row_keys) / self.row_data.max(1);
        3 * (batch + keys)
    }

    /// Rows per batch of a run and of the output: about `batch_bytes`.
    fn out_rows(&self) -> usize {
        (self.batch_bytes / self.row_data.max(1)).clamp(1, self.max_batch_rows)
    }

    fn rows_of(&self, batch: &RecordBatch) -> Result<Rows> {
        key_rows(&self.expr, &self.converter, batch)
    }

    async fn insert(&mut self, batch: RecordBatch) -> Result<()> {
        let mut queue = vec![batch];
        while let Some(batch) = queue.pop() {
            let n = batch.num_rows();
            if n == 0 {
                continue;
            }
            let sorted = compact_views(sort_batch(&batch, &self.expr, self.fetch)?)?;
            drop(batch);
            let rows = self.rows_of(&sorted)?;
            let data = get_record_batch_memory_size(&sorted);
            let bytes = data + rows.size();
            let m = sorted.num_rows().max(1);
            self.row_data = self.row_data.max(data / m);
            self.row_keys = self.row_keys.max(rows.size() / m);
            loop {
                if self.buffer_res.try_grow(bytes).is_ok() {
                    self.buffer.push((sorted, rows));
                    self.buffer_peak = self.buffer_peak.max(self.buffer_res.size());
                    break;
                }
                if !self.buffer.is_empty() {
                    self.spill().await?;
                    continue;
                }
                // Nothing buffered to spill: this batch alone is past the sort's share. Halves
                // are sorted again (cheap, they are in order), which also gives them buffers of
                // their own to be charged for.
                let m = sorted.num_rows();
                if m > 1 {
                    queue.push(sorted.slice(m / 2, m - m / 2));
                    queue.push(sorted.slice(0, m / 2));
                    break;
                }
                if bytes > self.lease / 4 {
                    return Err(DataFusionError::ResourcesExhausted(format!(
                        "{} (external sort): one row takes {} in memory; a merge must hold two of them and \
                         the lease is {}: give the step a larger lease (--memory, or profile M/L)",
                        self.name,
                        fmt(bytes),
                        fmt(self.lease)
                    )));
                }
                self.buffer_res.grow(bytes);
                self.buffer.push((sorted, rows));
                break;
            }
        }
        Ok(())
    }

    /// A merge of everything buffered (each buffered batch is one sorted input).
    fn merge_buffer(&mut self) -> Merge {
        let inputs: Vec<SortedStream> =
            std::mem::take(&mut self.buffer).into_iter().map(|b| futures::stream::iter([Ok(b)]).boxed()).collect();
        Merge::new(inputs, self.out_rows(), self.fetch).with_out_bytes(self.batch_bytes)
    }

    /// [`Self::merge_buffer`] for the output: the buffer's memory goes back to the lease batch
    /// by batch as the merge uses them up (the operators downstream need it).
    fn merge_buffer_releasing(&mut self) -> Merge {
        let sizes = self.buffer.iter().map(|(b, r)| get_record_batch_memory_size(b) + r.size()).collect();
        let reservation = self.buffer_res.take();
        self.merge_buffer().releasing(reservation, sizes)
    }

    /// Makes room: the buffer becomes a sorted run (in memory when a fetch makes it small).
    async fn spill(&mut self) -> Result<()> {
        if let Some(k) = self.fetch {
            let kept = k.saturating_mul(self.row_data + self.row_keys);
            if kept.saturating_mul(4) <= self.buffer_res.size() {
                let merged: Vec<RecordBatch> = self.merge_buffer().try_collect().await?;
                self.buffer_res.free();
                for batch in merged {
                    let rows = self.rows_of(&batch)?;
                    // Fewer bytes than were just freed: granted as they are.
                    self.buffer_res.grow(get_record_batch_memory_size(&batch) + rows.size());
                    self.buffer.push((batch, rows));
                }
                return Ok(());
            }
        }
        let merge = self.merge_buffer();
        let run = self.write_run(merge).await?;
        self.runs.push(run);
        self.buffer_res.free();
        if self.runs.len() >= MAX_RUNS {
            // Many small runs (a share squeezed by other operators): merge the smallest now, so
            // open files and the final merge's fan-in stay bounded.
            self.merge_smallest().await?;
        }
        Ok(())
    }

    /// Merges as many of the smallest runs as the merge memory (grown into what the lease
    /// grants) can hold, at least two, into one run. Returns the merge memory to its start size.
    async fn merge_smallest(&mut self) -> Result<()> {
        let base = self.merge_res.size();
        let per_input = self.per_input(self.max_run_batch());
        let out = self.batch_bytes;
        self.reserve_merge((per_input * self.runs.len().min(MAX_FAN_IN) + out).min(self.merge_cap()));
        let fan_in = (self.merge_res.size().saturating_sub(out) / per_input).clamp(2, MAX_FAN_IN);
        self.runs.sort_by_key(|r| std::cmp::Reverse(r.rows));
        let group = self.runs.split_off(self.runs.len() - fan_in.min(self.runs.len()));
        let inputs = group.iter().map(|r| self.read_run(r)).collect::<Result<Vec<_>>>()?;
        let merge = Merge::new(inputs, self.out_rows(), self.fetch).with_out_bytes(self.batch_bytes);
        let run = self.write_run(merge).await?;
        self.passes.add(1);
        drop(group);
        self.runs.push(run);
        if self.merge_res.size() > base {
            self.merge_res.shrink(self.merge_res.size() - base);
        }
        Ok(())
    }

    /// The most the merge memory grows to: half of what the buffer was granted (its share of
    /// the lease), or the start reservation. The operators that read the sort's output need
    /// memory too, and a wider merge only saves passes.
    fn merge_cap(&self) -> usize {
        (self.buffer_peak / 2).max(self.merge_start)
    }

    fn max_run_batch(&self) -> usize {
        self.runs.iter().map(|r| r.max_batch).max().unwrap_or(0).max(1)
    }

    async fn write_run(&self, mut merge: Merge) -> Result<Run> {
        let mut file = IpcFile::create(&self.task, "SpillingSort", &self.schema)?;
        let (mut rows, mut max_batch) = (0, 0);
        while let Some(batch) = merge.next().await {
            let batch = batch?;
            rows += batch.num_rows();
            max_batch = max_batch.max(get_record_batch_memory_size(&batch));
            file.write(&batch)?;
        }
        Ok(Run { file: file.finish(&self.spill)?, rows, max_batch })
    }

    fn read_run(&self, run: &Run) -> Result<SortedStream> {
        let stream = crate::spill::read(run.file.clone(), &self.schema, &self.task, Some(run.max_batch))?;
        let (converter, expr) = (self.converter.clone(), self.expr.clone());
        Ok(stream
            .map(move |batch| {
                let batch = batch?;
                let rows = key_rows(&expr, &converter, &batch)?;
                Ok((batch, rows))
            })
            .boxed())
    }

    /// Grows the merge memory toward `want`, taking what the lease grants. The start
    /// reservation (a two-way merge of batches of the planned size) is always held, so a merge
    /// can proceed whatever is granted here.
    fn reserve_merge(&mut self, want: usize) {
        let mut ask = want.saturating_sub(self.merge_res.size());
        while ask >= self.batch_bytes {
            if self.merge_res.try_grow(ask).is_ok() {
                break;
            }
            ask /= 2;
        }
    }

    async fn finish(mut self) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        if self.runs.is_empty() {
            let merge = self.merge_buffer_releasing();
            return Ok(Holding { stream: merge, _held: (self.buffer_res, self.merge_res) }.boxed());
        }
        if !self.buffer.is_empty() {
            let merge = self.merge_buffer();
            let run = self.write_run(merge).await?;
            self.runs.push(run);
        }
        self.buffer_res.free();
        let per_input = self.per_input(self.max_run_batch());
        let out = self.batch_bytes;
        self.reserve_merge((per_input * self.runs.len().min(MAX_FAN_IN) + out).min(self.merge_cap()));
        let fan_in = (self.merge_res.size().saturating_sub(out) / per_input).clamp(2, MAX_FAN_IN);
        while self.runs.len() > fan_in {
            // The smallest runs first: every pass then rewrites as few rows as it can.
            self.runs.sort_by_key(|r| std::cmp::Reverse(r.rows));
            let group = self.runs.split_off(self.runs.len() - fan_in);
            let inputs = group.iter().map(|r| self.read_run(r)).collect::<Result<Vec<_>>>()?;
            let merge = Merge::new(inputs, self.out_rows(), self.fetch).with_out_bytes(self.batch_bytes);
            let run = self.write_run(merge).await?;
            self.passes.add(1);
            drop(group);
            self.runs.push(run);
        }
        let inputs = self.runs.iter().map(|r| self.read_run(r)).collect::<Result<Vec<_>>>()?;
        let merge = Merge::new(inputs, self.out_rows(), self.fetch).with_out_bytes(self.batch_bytes);
        self.passes.add(1);
        Ok(Holding { stream: merge, _held: (self.merge_res, self.runs) }.boxed())
    }
}

/// A stream that keeps `_held` (reservations, run files) alive until it is dropped.
struct Holding<S, H> {
    stream: S,
    _held: H,
}

impl<S: Stream + Unpin, H: Unpin> Stream for Holding<S, H> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

fn fmt(bytes: usize) -> String {
    format!("{:.1}MiB", bytes as f64 / (1 << 20) as f64)
}

/// A guess at a row's width in memory, from its types (strings count 32 bytes).
fn row_width(schema: &SchemaRef) -> usize {
    schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Boolean => 1,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary => 36,
            DataType::Utf8View | DataType::BinaryView => 48,
            t => t.primitive_width().unwrap_or(64),
        })
        .sum::<usize>()
        .max(1)
}

/// Puts [`SpillingSortExec`] in place of every `SortExec` and [`BoundedMergeExec`] in place of
/// every `SortPreservingMergeExec`, except a TopK (a sort with a
/// limit) whose `k` rows fit easily: DataFusion's keeps a heap of `k` rows and prunes the scan
/// with a dynamic filter, which an external sort cannot beat when `k` is small.
#[derive(Debug)]
pub struct SpillingSortRule {
    lease: usize,
    topk: bool,
}

impl SpillingSortRule {
    /// For sessions whose lease is `lease` bytes.
    pub fn new(lease: u64) -> Self {
        Self { lease: lease as usize, topk: true }
    }

    /// Never keeps DataFusion's TopK (a retry's plan after a TopK was refused memory).
    pub fn without_topk(mut self) -> Self {
        self.topk = false;
        self
    }

    /// Whether a TopK of `k` rows of `schema` is left to DataFusion: twice its rows (the heap
    /// and the batches they point into) within an eighth of a partition's part of the lease.
    fn topk_fits(&self, k: usize, schema: &SchemaRef, partitions: usize) -> bool {
        self.topk && k.saturating_mul(2 * row_width(schema)) <= self.lease / (8 * partitions.max(1))
    }
}

impl PhysicalOptimizerRule for SpillingSortRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let partitions = config.execution.target_partitions;
        plan.transform_up(|node| {
            if let Some(merge) = node.downcast_ref::<SortPreservingMergeExec>() {
                let merged: Arc<dyn ExecutionPlan> = Arc::new(BoundedMergeExec::new(Arc::new(merge.clone())));
                return Ok(Transformed::yes(merged));
            }
            let Some(sort) = node.downcast_ref::<SortExec>() else { return Ok(Transformed::no(node)) };
            if let Some(k) = sort.fetch() {
                if self.topk_fits(k, &sort.schema(), partitions) {
                    return Ok(Transformed::no(node));
                }
            }
            Ok(Transformed::yes(Arc::new(SpillingSortExec::new(Arc::new(sort.clone()))) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "spillway_spilling_sort"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
