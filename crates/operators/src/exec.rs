//! [`GraceHashJoinExec`]: DataFusion's `HashJoinExec` made to complete within its memory share.
//!
//! It wraps a planned `HashJoinExec` and keeps its children, output partitioning and schema.
//! Each output partition starts like DataFusion's: it buffers its build side under a spillable
//! reservation. If the build side fits, DataFusion's own hash join runs on it (the fast path; for
//! a `CollectLeft` join, one shared join for all partitions, keeping its dynamic filter). If a
//! reservation fails, the partition goes out of core (see [`crate::grace`]).
//!
//! `CollectLeft` joins share one build side among all probe partitions. Out of core, the build
//! side is split once, shared; then
//! - joins whose output depends only on each probe row (inner, right, right semi/anti/mark) split
//!   each probe partition privately and keep the declared output partitioning;
//! - joins that emit unmatched build rows (left, full, left semi/anti/mark) must see all probe
//!   rows of a bucket together: every probe partition is split into shared buckets and output
//!   partition `i` joins buckets `i, i+n, ...` (DataFusion declares their output partitioning
//!   unknown, so nothing above relies on where rows come out).

use crate::buckets::Buckets;
use crate::grace::{self, build_keep, GraceOptions, JoinCtx, Probe, Side};
use crate::metrics::{GraceMetrics, JoinReport};
use crate::once::OnceExec;
use crate::prepaid::PrepaidPool;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::JoinType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, SpillFile, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::stream::{RecordBatchReceiverStreamBuilder, RecordBatchStreamAdapter};
use datafusion::physical_plan::InputDistributionRequirements;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties, Statistics,
};
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use tokio::sync::OnceCell;

type Shared<T> = OnceCell<std::result::Result<T, Arc<DataFusionError>>>;

fn shared_err(e: &Arc<DataFusionError>) -> DataFusionError {
    DataFusionError::Shared(e.clone())
}

/// The build side of a `CollectLeft` join, collected once for all output partitions.
enum Build {
    /// It fitted: DataFusion's join over the buffered batches, shared by all partitions, which
    /// hand it their probe streams through `probes`; it runs on the build side's reservation.
    InMemory { native: Arc<dyn ExecutionPlan>, probes: Arc<OnceExec>, task: Arc<TaskContext> },
    /// It did not: its buckets.
    Spilled(Arc<Buckets>),
}

#[derive(Default)]
struct CollectLeftState {
    build: Shared<Build>,
    /// Shared probe buckets (joins that emit unmatched build rows): `[bucket][probe partition]`.
    probe: Shared<Vec<Vec<Arc<dyn SpillFile>>>>,
}

/// A hash join that goes out of core when its build side does not fit. See the module docs.
pub struct GraceHashJoinExec {
    join: Arc<HashJoinExec>,
    options: GraceOptions,
    metrics: ExecutionPlanMetricsSet,
    state: Arc<CollectLeftState>,
}

impl std::fmt::Debug for GraceHashJoinExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraceHashJoinExec").field("join", &self.join).field("options", &self.options).finish()
    }
}

impl GraceHashJoinExec {
    /// Wraps `join`, which must be in `Partitioned` or `CollectLeft` mode, not null-aware and
    /// without a fetch limit ([`crate::rule::supported`] checks).
    pub fn new(join: Arc<HashJoinExec>, options: GraceOptions) -> Self {
        Self { join, options, metrics: ExecutionPlanMetricsSet::new(), state: Arc::default() }
    }

    /// The wrapped join as planned.
    pub fn join(&self) -> &Arc<HashJoinExec> {
        &self.join
    }

    fn describe(&self) -> String {
        let on = self.join.on().iter().map(|(l, r)| format!("({l}, {r})")).collect::<Vec<_>>().join(", ");
        let filter = self.join.filter().map(|f| format!(", filter={}", f.expression())).unwrap_or_default();
        format!("{} on=[{on}]{filter}", self.join.join_type())
    }

    /// This join's figures so far (after execution: what it did).
    pub fn report(&self) -> JoinReport {
        JoinReport::from_metrics(
            self.describe(),
            self.properties().partitioning.partition_count(),
            &self.metrics.clone_inner(),
        )
    }

    fn ctx(&self, partition: usize, task: &Arc<TaskContext>) -> Result<Arc<JoinCtx>> {
        // A template without run-time state; its mode is set per piece.
        let template = Arc::new(self.join.builder().reset_state().build()?);
        Ok(Arc::new(JoinCtx {
            template,
            task: task.clone(),
            options: self.options,
            metrics: GraceMetrics::new(&self.metrics, partition),
            partition,
        }))
    }

    fn execute_partitioned(&self, partition: usize, task: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let ctx = self.ctx(partition, &task)?;
        let build = self.join.left().execute(partition, task.clone())?;
        let probe = self.join.right().execute(partition, task)?;
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema(), 2);
        let tx = builder.tx();
        builder.spawn(async move {
            grace::join(ctx, build, Probe::Stream(probe), 0, tx).await?;
            Ok(())
        });
        Ok(builder.build())
    }

    /// Collects the shared build side of a `CollectLeft` join (first caller does the work).
    async fn collect_build(&self, ctx: &JoinCtx) -> Result<&Build> {
        let result =
            self.state.build.get_or_init(|| async { self.collect_build_uncached(ctx).await.map_err(Arc::new) }).await;
        result.as_ref().map_err(shared_err)
    }

    async fn collect_build_uncached(&self, ctx: &JoinCtx) -> Result<Build> {
        let mut build = self.join.left().execute(0, ctx.task.clone())?;
        let mut res = MemoryConsumer::new("GraceHashJoin[build]").with_can_spill(true).register(ctx.task.memory_pool());
        let (batches, overflow) = grace::buffer(&mut build, &mut res).await?;
        let Some(first_over) = overflow else {
            let keep = build_keep(&batches);
            let schema = self.join.left().schema();
            let left = Arc::new(OnceExec::new(Box::pin(MemoryStream::try_new(batches, schema, None)?), "build"));
            let probes = Arc::new(OnceExec::slots_like(self.join.right(), "probe"));
            // The builder keeps the dynamic filter DataFusion pushed into the probe side: this
            // join fills it, as the planned one would have.
            let native = self.join.builder().with_new_children(vec![left, probes.clone()])?.build()?;
            res.shrink(res.size().saturating_sub(keep));
            let task = PrepaidPool::task(&ctx.task, res)?;
            return Ok(Build::InMemory { native: Arc::new(native), probes, task });
        };
        ctx.metrics.went_out_of_core(0);
        let buffer_rows = ctx.split_buffer_rows(&batches, &res);
        let mut p = ctx.partitioner(Side::Build, 0, self.options.fanout, buffer_rows);
        for batch in batches {
            p.push(&batch)?;
        }
        p.push(&first_over)?;
        res.free();
        p.push_stream(build).await?;
        ctx.metrics.buckets.add(self.options.fanout);
        Ok(Build::Spilled(Arc::new(p.finish()?)))
    }

    /// Splits one probe partition into buckets at level 0.
    async fn split_probe(&self, partition: usize, ctx: &JoinCtx) -> Result<Vec<Option<Arc<dyn SpillFile>>>> {
        let rows = ctx.task.session_config().batch_size() / 4;
        let mut p = ctx.partitioner(Side::Probe, 0, self.options.fanout, rows);
        p.push_stream(self.join.right().execute(partition, ctx.task.clone())?).await?;
        Ok(p.finish()?.files)
    }

    /// Splits every probe partition at once into shared buckets.
    async fn split_all_probes(self: Arc<Self>, ctx: Arc<JoinCtx>) -> Result<Vec<Vec<Arc<dyn SpillFile>>>> {
        let n = self.join.right().output_partitioning().partition_count();
        let splits = futures::future::try_join_all((0..n).map(|j| {
            let this = self.clone();
            let ctx = ctx.clone();
            async move {
                // Aborted if this future is dropped (the query was cancelled).
                SpawnedTask::spawn(async move { this.split_probe(j, &ctx).await })
                    .join_unwind()
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
            }
        }))
        .await?;
        let mut buckets: Vec<Vec<Arc<dyn SpillFile>>> = vec![Vec::new(); self.options.fanout + 1];
        for split in splits {
            for (b, file) in split.into_iter().enumerate() {
                buckets[b].extend(file);
            }
        }
        Ok(buckets)
    }

    fn execute_collect_left(
        self: Arc<Self>,
        partition: usize,
        task: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let ctx = self.ctx(partition, &task)?;
        let schema = self.schema();
        let mut builder = RecordBatchReceiverStreamBuilder::new(schema.clone(), 2);
        let tx = builder.tx();
        builder.spawn(async move {
            let build = match self.collect_build(&ctx).await? {
                Build::InMemory { native, probes, task } => {
                    // The probe side runs in the query's own task (its operators reserve from
                    // the lease); the join itself on the build side's reservation.
                    probes.fill(partition, self.join.right().execute(partition, ctx.task.clone())?)?;
                    let mut out = native.execute(partition, task.clone())?;
                    while let Some(batch) = out.next().await {
                        let batch = batch?;
                        ctx.metrics.output_rows.add(batch.num_rows());
                        if tx.send(Ok(batch)).await.is_err() {
                            break;
                        }
                    }
                    return Ok(());
                }
                Build::Spilled(buckets) => buckets.clone(),
            };
            let jt = *self.join.join_type();
            let emits_build = matches!(
                jt,
                JoinType::Left | JoinType::Full | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark
            );
            if emits_build {
                let state = self.state.clone();
                let probes = state
                    .probe
                    .get_or_init(|| {
                        let this = self.clone();
                        let ctx = ctx.clone();
                        async move { this.split_all_probes(ctx).await.map_err(Arc::new) }
                    })
                    .await
                    .as_ref()
                    .map_err(shared_err)?
                    .clone();
                let n = self.join.right().output_partitioning().partition_count().max(1);
                let all = build.rows.len();
                grace::join_buckets(ctx, &build, probes, (partition..all).step_by(n), 1, tx).await?;
            } else {
                let probes = self.split_probe(partition, &ctx).await?;
                let probes = probes.into_iter().map(|f| f.into_iter().collect()).collect();
                grace::join_buckets(ctx, &build, probes, 0..build.rows.len(), 1, tx).await?;
            }
            Ok(())
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, builder.build().into_stream().map_err(|e| e))))
    }
}

impl DisplayAs for GraceHashJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "GraceHashJoinExec: mode={:?}, join_type={}, fanout={}, max_depth={}",
            self.join.partition_mode(),
            self.describe(),
            self.options.fanout,
            self.options.max_depth
        )
    }
}

impl ExecutionPlan for GraceHashJoinExec {
    fn name(&self) -> &str {
        "GraceHashJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.join.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.join.left(), self.join.right()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.join.apply_expressions(f)
    }

    fn dynamic_expressions_produced(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.join.dynamic_expressions_produced()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.join.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        // Out of core, output comes bucket by bucket.
        vec![false, false]
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let join = self.join.clone().replace_children(children, options)?;
        let join = join
            .downcast_ref::<HashJoinExec>()
            .ok_or_else(|| DataFusionError::Internal("GraceHashJoinExec lost its HashJoinExec".into()))?
            .builder()
            .build()?;
        Ok(Arc::new(Self::new(Arc::new(join), self.options)))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        let join = self.join.builder().reset_state().build()?;
        Ok(Arc::new(Self::new(Arc::new(join), self.options)))
    }

    fn execute(&self, partition: usize, task: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        match self.join.partition_mode() {
            PartitionMode::Partitioned => self.execute_partitioned(partition, task),
            PartitionMode::CollectLeft => {
                let this = Arc::new(Self {
                    join: self.join.clone(),
                    options: self.options,
                    metrics: self.metrics.clone(),
                    state: self.state.clone(),
                });
                this.execute_collect_left(partition, task)
            }
            PartitionMode::Auto => Err(DataFusionError::Internal("GraceHashJoinExec in Auto mode".into())),
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        self.join.statistics_from_inputs(input_stats, args)
    }
}
