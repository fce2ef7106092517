//! [`NestedLoopGuardExec`]: inner cross joins and nested-loop joins whose build side does not
//! fit, joined block by block.
//!
//! DataFusion's `CrossJoinExec` and `NestedLoopJoinExec` collect their left (build) side into
//! memory, shared by every right partition, and fail with `ResourcesExhausted` when it does not
//! fit. The guard buffers the build side under a spillable reservation first. If it fits,
//! DataFusion's operator runs on it (on that reservation, see [`crate::prepaid`]). If not, the
//! build side goes to one file, each right partition to a file of its own, and the join runs
//! block by block: as much of the build side as fits, against the whole right partition (read
//! again per block). That is exact for inner joins (a cross join is one), which are the only ones
//! guarded: outer, semi and anti nested-loop joins need every build row's matches across all
//! blocks and all partitions at once, and stay as DataFusion plans them (charged to the lease).

use crate::buckets::{read_file, Partitioner};
use crate::grace::next_chunk;
use crate::metrics::JoinReport;
use crate::once::OnceExec;
use crate::prepaid::PrepaidPool;
use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, SpillFile, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, SpillMetrics};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputDistributionRequirements, PlanProperties,
};
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::mpsc::Sender;
use tokio::sync::OnceCell;

enum Build {
    InMemory { native: Arc<dyn ExecutionPlan>, probes: Arc<OnceExec>, task: Arc<TaskContext> },
    Spilled(Option<Arc<dyn SpillFile>>),
}

/// An inner cross or nested-loop join that goes block by block when its build side does not fit.
pub struct NestedLoopGuardExec {
    inner: Arc<dyn ExecutionPlan>,
    build: Arc<OnceCell<std::result::Result<Build, Arc<DataFusionError>>>>,
    metrics: ExecutionPlanMetricsSet,
}

impl std::fmt::Debug for NestedLoopGuardExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NestedLoopGuardExec({})", self.inner.name())
    }
}

struct Counters {
    out_of_core: Count,
    chunks: Count,
    spill: SpillMetrics,
    output_rows: Count,
}

impl NestedLoopGuardExec {
    /// Guards `inner`, a `CrossJoinExec` or an inner `NestedLoopJoinExec`.
    pub fn new(inner: Arc<dyn ExecutionPlan>) -> Self {
        Self { inner, build: Arc::default(), metrics: ExecutionPlanMetricsSet::new() }
    }

    fn left(&self) -> &Arc<dyn ExecutionPlan> {
        self.inner.children()[0]
    }

    fn right(&self) -> &Arc<dyn ExecutionPlan> {
        self.inner.children()[1]
    }

    /// This join's figures so far.
    pub fn report(&self) -> JoinReport {
        let m = self.metrics.clone_inner();
        let partitions = self.properties().partitioning.partition_count();
        JoinReport::from_metrics(format!("Inner ({})", self.inner.name()), partitions, &m)
    }

    fn counters(&self, partition: usize) -> Counters {
        Counters {
            out_of_core: MetricBuilder::new(&self.metrics).counter("out_of_core", partition),
            chunks: MetricBuilder::new(&self.metrics).counter("chunks", partition),
            spill: SpillMetrics::new(&self.metrics, partition),
            output_rows: MetricBuilder::new(&self.metrics).output_rows(partition),
        }
    }

    /// `inner` over new children, with fresh run-time state.
    fn piece(&self, build: Arc<dyn ExecutionPlan>, probe: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner
            .clone()
            .reset_state()?
            .replace_children(vec![build, probe], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    async fn collect(&self, task: &Arc<TaskContext>, c: &Counters) -> Result<Build> {
        let mut stream = self.left().execute(0, task.clone())?;
        let mut res = MemoryConsumer::new("NestedLoopBuild").with_can_spill(true).register(task.memory_pool());
        let (batches, over) = crate::grace::buffer(&mut stream, &mut res).await?;
        let Some(first_over) = over else {
            let left =
                Arc::new(OnceExec::new(Box::pin(MemoryStream::try_new(batches, self.left().schema(), None)?), "build"));
            let probes = Arc::new(OnceExec::slots_like(self.right(), "probe"));
            let native = self.piece(left, probes.clone())?;
            let task = PrepaidPool::task(task, res)?;
            return Ok(Build::InMemory { native, probes, task });
        };
        c.out_of_core.add(1);
        res.free();
        let mut p = self.writer(task, c);
        for batch in batches {
            p.push(&batch)?;
        }
        p.push(&first_over)?;
        p.push_stream(stream).await?;
        Ok(Build::Spilled(p.finish()?.files.remove(0)))
    }

    fn writer(&self, task: &Arc<TaskContext>, c: &Counters) -> Partitioner {
        Partitioner::new(
            vec![],
            self.left().schema(),
            0,
            1,
            false,
            1024,
            task.clone(),
            c.spill.clone(),
            "NestedLoop build",
        )
    }

    async fn run(
        self: Arc<Self>,
        partition: usize,
        task: Arc<TaskContext>,
        tx: Sender<Result<RecordBatch>>,
    ) -> Result<()> {
        let c = self.counters(partition);
        let build = self.build.get_or_init(|| async { self.collect(&task, &c).await.map_err(Arc::new) }).await;
        let build = build.as_ref().map_err(|e| DataFusionError::Shared(e.clone()))?;
        let out = match build {
            Build::InMemory { native, probes, task: prepaid } => {
                probes.fill(partition, self.right().execute(partition, task.clone())?)?;
                native.execute(partition, prepaid.clone())?
            }
            Build::Spilled(file) => {
                // This partition's right side to a file, read again for each block.
                let mut p = Partitioner::new(
                    vec![],
                    self.right().schema(),
                    0,
                    1,
                    false,
                    1024,
                    task.clone(),
                    c.spill.clone(),
                    "NestedLoop probe",
                );
                p.push_stream(self.right().execute(partition, task.clone())?).await?;
                let probe = p.finish()?.files.remove(0);
                return self.blocks(file.clone(), probe, &task, &c, &tx).await;
            }
        };
        forward(out, &c, &tx).await;
        Ok(())
    }

    async fn blocks(
        &self,
        build: Option<Arc<dyn SpillFile>>,
        probe: Option<Arc<dyn SpillFile>>,
        task: &Arc<TaskContext>,
        c: &Counters,
        tx: &Sender<Result<RecordBatch>>,
    ) -> Result<()> {
        let mut stream = read_file(build, &self.left().schema(), task)?;
        let mut pending: Option<RecordBatch> = None;
        loop {
            let res: MemoryReservation =
                MemoryConsumer::new("NestedLoopBlock").with_can_spill(true).register(task.memory_pool());
            let block = next_chunk(&mut stream, &mut pending, &res).await?;
            if block.is_empty() {
                return Ok(());
            }
            c.chunks.add(1);
            let left =
                Arc::new(OnceExec::new(Box::pin(MemoryStream::try_new(block, self.left().schema(), None)?), "build"));
            let right = Arc::new(OnceExec::new(read_file(probe.clone(), &self.right().schema(), task)?, "probe"));
            let out = self.piece(left, right)?.execute(0, PrepaidPool::task(task, res)?)?;
            if !forward(out, c, tx).await || pending.is_none() {
                return Ok(());
            }
        }
    }
}

/// Forwards `out` to `tx`; `false` if the consumer went away. Errors are forwarded too.
async fn forward(mut out: SendableRecordBatchStream, c: &Counters, tx: &Sender<Result<RecordBatch>>) -> bool {
    while let Some(batch) = out.next().await {
        if let Ok(b) = &batch {
            c.output_rows.add(b.num_rows());
        }
        let failed = batch.is_err();
        if tx.send(batch).await.is_err() || failed {
            return false;
        }
    }
    true
}

impl DisplayAs for NestedLoopGuardExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "NestedLoopGuardExec: ")?;
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for NestedLoopGuardExec {
    fn name(&self) -> &str {
        "NestedLoopGuardExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inner.children()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.inner.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false, false]
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(self.inner.clone().replace_children(children, options)?)))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(self.inner.clone().reset_state()?)))
    }

    fn execute(&self, partition: usize, task: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let this =
            Arc::new(Self { inner: self.inner.clone(), build: self.build.clone(), metrics: self.metrics.clone() });
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema(), 2);
        let tx = builder.tx();
        builder.spawn(async move { this.run(partition, task, tx).await });
        Ok(builder.build())
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
