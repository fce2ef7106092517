//! [`WindowGuardExec`]: DataFusion's `WindowAggExec`, fed one batch of whole `PARTITION BY`
//! groups at a time, with the memory it holds charged to the lease.
//!
//! DataFusion 55's `WindowAggExec` (window functions whose frame reaches the end of the
//! partition, e.g. `sum(x) OVER (PARTITION BY k)`) collects its whole input partition before
//! computing anything, without reserving memory: one window step could hold all of its input,
//! invisible to the pool. Its input arrives sorted by the `PARTITION BY` keys (DataFusion sorts
//! it, and that sort spills), so groups come one after another. The guard buffers input under a
//! reservation (that cannot spill), and whenever the reservation is refused, or the buffer passes
//! a few MiB, it hands the complete groups buffered so far to a fresh `WindowAggExec` and streams
//! its output on. Memory is then bounded by the largest single group; a group larger than the
//! lease (or a window without `PARTITION BY` over a large input: one group) fails with an error
//! that says so, instead of growing unseen.
//!
//! When every window function is an aggregate over its whole partition (`sum(x) OVER ()`,
//! `avg(x) OVER (PARTITION BY k)`: the value is the same for every row of the group), the guard
//! needs no group in memory at all: it feeds each group's rows to the aggregates' accumulators
//! as they arrive and keeps the rows, in memory while the reservation grants them and in a spill
//! file past that; at the end of the group it evaluates the accumulators and streams the rows
//! back with the values appended. A group larger than the lease then costs a write and a read.
//!
//! `BoundedWindowAggExec` (frames that end before the partition does: running sums, `rank`,
//! `row_number`, `lag`) already works incrementally and is left as it is.

use crate::delegate::delegate_plan;
use crate::merge::compact_views;
use crate::once::OnceExec;
use crate::spill::IpcFile;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{FieldRef, SchemaRef};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::utils::memory::get_record_batch_memory_size;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::window::PlainAggregateWindowExpr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::metrics::SpillMetrics;
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::windows::WindowAggExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::mpsc::Sender;

/// Complete groups are handed on once a sixteenth of the pool is buffered (within these bounds),
/// even if the lease has room: the sort feeding the window needs memory too.
fn flush_bytes(task: &TaskContext) -> usize {
    match task.memory_pool().memory_limit() {
        MemoryLimit::Finite(n) => (n / 16).clamp(256 << 10, 8 << 20),
        _ => 8 << 20,
    }
}

/// A `WindowAggExec` run group batch by group batch under a reservation. See the module docs.
#[derive(Debug)]
pub struct WindowGuardExec {
    window: Arc<WindowAggExec>,
    metrics: ExecutionPlanMetricsSet,
}

impl WindowGuardExec {
    /// Guards `window`.
    pub fn new(window: Arc<WindowAggExec>) -> Self {
        Self { window, metrics: ExecutionPlanMetricsSet::new() }
    }

    fn keys(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.window.window_expr()[0].partition_by().to_vec()
    }
}

impl DisplayAs for WindowGuardExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let keys = self.keys().iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ");
        let exprs = self.window.window_expr().iter().map(|w| w.name().to_string()).collect::<Vec<_>>().join(", ");
        write!(f, "WindowGuardExec: partition_by=[{keys}], wdw=[{exprs}]")
    }
}

/// The buffered input of one output partition.
struct Buffer {
    batches: Vec<RecordBatch>,
    bytes: usize,
    /// Where the last group in the buffer starts (batch, row): everything before it is complete.
    open: (usize, usize),
    last_key: Option<OwnedRow>,
}

impl Buffer {
    /// Splits off the complete groups (everything before the open one).
    fn take_complete(&mut self) -> Vec<RecordBatch> {
        let (b, r) = self.open;
        let mut done: Vec<RecordBatch> = self.batches.drain(..b).collect();
        if r > 0 {
            let first = self.batches.remove(0);
            done.push(first.slice(0, r));
            self.batches.insert(0, first.slice(r, first.num_rows() - r));
        }
        self.open = (0, 0);
        self.bytes = self.batches.iter().map(|b| b.get_array_memory_size()).sum();
        done
    }

    fn has_complete(&self) -> bool {
        self.open != (0, 0)
    }
}

struct Run {
    window: Arc<WindowAggExec>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    task: Arc<TaskContext>,
    res: MemoryReservation,
    buffer: Buffer,
    converter: RowConverter,
    flushes: Count,
    flush_bytes: usize,
    tx: Sender<Result<RecordBatch>>,
}

impl Run {
    /// `WindowAggExec` needs the input twice over while it runs (its batches and their
    /// concatenation).
    fn need(batch: &RecordBatch) -> usize {
        2 * batch.get_array_memory_size()
    }

    fn refused(&self, e: DataFusionError) -> DataFusionError {
        let keys = self.keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ");
        let what = if keys.is_empty() {
            "a window function without PARTITION BY (its whole input is one group)".to_string()
        } else {
            format!("one PARTITION BY ({keys}) group of a window function")
        };
        DataFusionError::ResourcesExhausted(format!(
            "{what} holds {} and cannot be split: it does not fit the lease. {e}",
            fmt(self.buffer.bytes)
        ))
    }

    async fn push(&mut self, batch: RecordBatch) -> Result<bool> {
        if batch.num_rows() == 0 {
            return Ok(true);
        }
        let need = Self::need(&batch);
        if self.res.try_grow(need).is_err() {
            if self.buffer.has_complete() && !self.flush(false).await? {
                return Ok(false);
            }
            if let Err(e) = self.res.try_grow(need) {
                // A batch or two in hand are held anyway (they exist already); past that the
                // group does not fit.
                if self.buffer.batches.len() >= 2 {
                    return Err(self.refused(e));
                }
                self.res.grow(need);
            }
        }
        if self.keys.is_empty() {
            // No PARTITION BY: the whole input is one group.
            self.buffer.bytes += batch.get_array_memory_size();
            self.buffer.batches.push(batch);
            return Ok(true);
        }
        let columns = self
            .keys
            .iter()
            .map(|k| k.evaluate(&batch).and_then(|v| v.into_array(batch.num_rows())))
            .collect::<Result<Vec<_>>>()?;
        let rows = self.converter.convert_columns(&columns)?;
        let index = self.buffer.batches.len();
        if let Some(last) = &self.buffer.last_key {
            if last.row() != rows.row(0) {
                self.buffer.open = (index, 0);
            }
        }
        for i in 1..rows.num_rows() {
            if rows.row(i) != rows.row(i - 1) {
                self.buffer.open = (index, i);
            }
        }
        self.buffer.last_key = Some(rows.row(rows.num_rows() - 1).owned());
        self.buffer.bytes += batch.get_array_memory_size();
        self.buffer.batches.push(batch);
        if self.buffer.bytes >= self.flush_bytes && self.buffer.has_complete() {
            return self.flush(false).await;
        }
        Ok(true)
    }

    /// Runs the window over the complete groups (all of them at the end); `false` if the
    /// consumer went away.
    async fn flush(&mut self, all: bool) -> Result<bool> {
        let batches = if all { std::mem::take(&mut self.buffer.batches) } else { self.buffer.take_complete() };
        if all {
            self.buffer.bytes = 0;
        }
        if batches.is_empty() {
            return Ok(true);
        }
        self.flushes.add(1);
        let input = self.window.input().clone();
        let stream = Box::pin(MemoryStream::try_new(batches, input.schema(), None)?);
        let piece = Arc::new(OnceExec::ordered_like(stream, "window groups", &input));
        let plan = self
            .window
            .clone()
            .replace_children(vec![piece], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?;
        let mut out = plan.execute(0, self.task.clone())?;
        while let Some(batch) = out.next().await {
            if self.tx.send(Ok(batch?)).await.is_err() {
                return Ok(false);
            }
        }
        let held: usize = self.buffer.batches.iter().map(Self::need).sum();
        self.res.resize(held);
        Ok(true)
    }
}

fn fmt(bytes: usize) -> String {
    format!("{:.1}MiB", bytes as f64 / (1 << 20) as f64)
}

impl ExecutionPlan for WindowGuardExec {
    fn name(&self) -> &str {
        "WindowGuardExec"
    }

    delegate_plan!(window, guard);

    fn execute(&self, partition: usize, task: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.window.input().execute(partition, task.clone())?;
        let keys = self.keys();
        let schema = self.window.input().schema();
        let fields = keys.iter().map(|k| k.data_type(&schema).map(SortField::new)).collect::<Result<Vec<_>>>()?;
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.window.schema(), 2);
        if let Some(aggregates) = whole_partition_aggregates(&self.window) {
            let mut run = AggregateRun {
                aggregates,
                keys,
                converter: RowConverter::new(fields)?,
                last_key: None,
                group: Vec::new(),
                file: None,
                accumulators: Vec::new(),
                res: MemoryConsumer::new(format!("WindowGroup[{partition}]"))
                    .with_can_spill(true)
                    .register(task.memory_pool()),
                schema: self.window.schema(),
                input_schema: schema.clone(),
                spill: SpillMetrics::new(&self.metrics, partition),
                task: task.clone(),
                tx: builder.tx(),
            };
            run.reset()?;
            builder.spawn(async move {
                let mut input = input;
                while let Some(batch) = input.next().await {
                    if !run.push(batch?).await? {
                        return Ok(());
                    }
                }
                run.finish_group().await?;
                Ok(())
            });
            return Ok(builder.build());
        }
        let mut run = Run {
            window: self.window.clone(),
            keys,
            res: MemoryConsumer::new(format!("WindowPartitions[{partition}]")).register(task.memory_pool()),
            task: task.clone(),
            buffer: Buffer { batches: Vec::new(), bytes: 0, open: (0, 0), last_key: None },
            converter: RowConverter::new(fields)?,
            flushes: MetricBuilder::new(&self.metrics).counter("group_batches", partition),
            flush_bytes: flush_bytes(&task),
            tx: builder.tx(),
        };
        builder.spawn(async move {
            let mut input = input;
            while let Some(batch) = input.next().await {
                if !run.push(batch?).await? {
                    return Ok(());
                }
            }
            run.flush(true).await?;
            Ok(())
        });
        Ok(builder.build())
    }
}

/// The aggregates of `window` if every one of its functions is a plain aggregate (no `FILTER`)
/// over its whole partition, with the type each must produce.
fn whole_partition_aggregates(window: &WindowAggExec) -> Option<Vec<(Arc<AggregateFunctionExpr>, FieldRef)>> {
    window
        .window_expr()
        .iter()
        .map(|w| {
            let plain = w.as_any().downcast_ref::<PlainAggregateWindowExpr>()?;
            let frame = w.get_window_frame();
            let whole = frame.start_bound.is_unbounded() && (frame.end_bound.is_unbounded() || w.order_by().is_empty());
            // The FILTER clause is not exposed by DataFusion 55 but in its Debug form.
            let unfiltered = format!("{plain:?}").contains("filter: None");
            (whole && unfiltered).then(|| Some((Arc::new(plain.get_aggregate_expr().clone()), w.field().ok()?)))?
        })
        .collect()
}

/// One output partition of a window whose functions are all whole-partition aggregates. See
/// the module docs.
struct AggregateRun {
    aggregates: Vec<(Arc<AggregateFunctionExpr>, FieldRef)>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    converter: RowConverter,
    last_key: Option<OwnedRow>,
    /// The current group's rows held in memory (under `res`)...
    group: Vec<RecordBatch>,
    /// ...and, once it outgrew its share, written here instead.
    file: Option<IpcFile>,
    accumulators: Vec<Box<dyn Accumulator>>,
    res: MemoryReservation,
    schema: SchemaRef,
    input_schema: SchemaRef,
    spill: SpillMetrics,
    task: Arc<TaskContext>,
    tx: Sender<Result<RecordBatch>>,
}

impl AggregateRun {
    fn reset(&mut self) -> Result<()> {
        self.accumulators = self.aggregates.iter().map(|(a, _)| a.create_accumulator()).collect::<Result<_>>()?;
        Ok(())
    }

    /// Splits `batch` at group boundaries and adds each piece to its group; `false` if the
    /// consumer went away.
    async fn push(&mut self, batch: RecordBatch) -> Result<bool> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(true);
        }
        let mut starts = Vec::new();
        if !self.keys.is_empty() {
            let columns = self
                .keys
                .iter()
                .map(|k| k.evaluate(&batch).and_then(|v| v.into_array(n)))
                .collect::<Result<Vec<_>>>()?;
            let rows = self.converter.convert_columns(&columns)?;
            if self.last_key.as_ref().is_some_and(|last| last.row() != rows.row(0)) {
                starts.push(0);
            }
            starts.extend((1..n).filter(|&i| rows.row(i) != rows.row(i - 1)));
            self.last_key = Some(rows.row(n - 1).owned());
        }
        let mut from = 0;
        for start in starts.into_iter().chain([n]) {
            if start > from {
                self.add(batch.slice(from, start - from), n)?;
            }
            if start < n && !self.finish_group().await? {
                return Ok(false);
            }
            from = start;
        }
        Ok(true)
    }

    /// Adds rows of the current group: to its accumulators, and to memory or its file.
    fn add(&mut self, piece: RecordBatch, of: usize) -> Result<()> {
        for ((a, _), acc) in self.aggregates.iter().zip(self.accumulators.iter_mut()) {
            let args = a
                .expressions()
                .iter()
                .map(|e| e.evaluate(&piece).and_then(|v| v.into_array(piece.num_rows())))
                .collect::<Result<Vec<_>>>()?;
            acc.update_batch(&args)?;
        }
        if let Some(w) = &mut self.file {
            w.write(&compact_views(piece)?)?;
            return Ok(());
        }
        // A slice shares its batch's buffers: charge its part of them.
        let bytes = get_record_batch_memory_size(&piece).saturating_mul(piece.num_rows()) / of.max(1);
        if self.res.try_grow(bytes).is_ok() {
            self.group.push(piece);
            return Ok(());
        }
        let mut w = IpcFile::create(&self.task, "WindowGroup", &self.input_schema)?;
        for b in self.group.drain(..) {
            w.write(&compact_views(b)?)?;
        }
        w.write(&compact_views(piece)?)?;
        self.res.free();
        self.file = Some(w);
        Ok(())
    }

    /// Emits the current group with the aggregates' values; `false` if the consumer went away.
    async fn finish_group(&mut self) -> Result<bool> {
        let values = self
            .accumulators
            .iter_mut()
            .zip(&self.aggregates)
            .map(|(acc, (_, field))| acc.evaluate().and_then(|v| v.cast_to(field.data_type())))
            .collect::<Result<Vec<_>>>()?;
        self.reset()?;
        let mut rows: SendableRecordBatchStream = match self.file.take() {
            Some(w) => crate::spill::read(w.finish(&self.spill)?, &self.input_schema, &self.task, None)?,
            None => {
                let group = std::mem::take(&mut self.group);
                Box::pin(MemoryStream::try_new(group, self.input_schema.clone(), None)?)
            }
        };
        while let Some(batch) = rows.next().await {
            let batch = batch?;
            let mut columns = batch.columns().to_vec();
            for v in &values {
                columns.push(v.to_array_of_size(batch.num_rows())?);
            }
            if self.tx.send(Ok(RecordBatch::try_new(self.schema.clone(), columns)?)).await.is_err() {
                return Ok(false);
            }
        }
        self.res.free();
        Ok(true)
    }
}

/// `plan` (a `WindowAggExec`) guarded, if all its window functions share one `PARTITION BY`.
fn guard(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let Some(window) = plan.downcast_ref::<WindowAggExec>() else {
        return Ok(plan);
    };
    let first = window.window_expr()[0].partition_by();
    let same = window
        .window_expr()
        .iter()
        .all(|w| w.partition_by().len() == first.len() && w.partition_by().iter().zip(first).all(|(a, b)| a.eq(b)));
    if !same {
        return Ok(plan);
    }
    let window = WindowAggExec::try_new(
        window.window_expr().to_vec(),
        window.input().clone(),
        !window.partition_keys().is_empty(),
    )?;
    Ok(Arc::new(WindowGuardExec::new(Arc::new(window))))
}

/// Puts [`WindowGuardExec`] around every `WindowAggExec`.
#[derive(Debug, Default)]
pub struct WindowGuardRule;

impl PhysicalOptimizerRule for WindowGuardRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.downcast_ref::<WindowAggExec>().is_some() {
                Ok(Transformed::yes(guard(node)?))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "spillway_window_guard"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
