//! The out-of-core join of one build side with one probe side, decided at run time.
//!
//! ```text
//!  build ──buffer under a spillable reservation──┐
//!                                                ├─ all fits ──▶ DataFusion HashJoinExec (CollectLeft)
//!                                                │               on the buffered batches: fast path
//!                                                └─ a reservation fails ──▶ split both sides into
//!                                                    `fanout` bucket files by key hash (seed = level),
//!                                                    then join bucket by bucket, recursing into any
//!                                                    bucket whose build side still does not fit
//!  at `max_depth`, or when a split did not split (one key holds the bucket):
//!      build side in chunks that fit, each joined with the whole probe bucket (read again per chunk);
//!      joins that must see every build row against every probe row at once swap sides first.
//! ```
//!
//! Each piece is joined by DataFusion's own `HashJoinExec`, built from the planned join with its
//! join type, keys, filter, projection and null equality unchanged: rows with equal keys (and
//! NULL keys) always share a bucket, so the union of the bucket joins is the join, for every join
//! type. Only a full outer join whose single hottest key does not fit in the lease has no bounded
//! plan here; it is attempted in memory and fails with DataFusion's error naming the lease.

use crate::buckets::{read_file, Buckets, Partitioner};
use crate::metrics::GraceMetrics;
use crate::once::OnceExec;
use crate::prepaid::PrepaidPool;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{JoinType, NullEquality};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, SpillFile, TaskContext};
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::ExecutionPlan;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use tokio::sync::mpsc::Sender;

/// Knobs of the out-of-core join.
#[derive(Debug, Clone, Copy)]
pub struct GraceOptions {
    /// Buckets per split.
    pub fanout: usize,
    /// Splits before a bucket is joined in chunks instead.
    pub max_depth: usize,
}

impl Default for GraceOptions {
    fn default() -> Self {
        Self { fanout: 16, max_depth: 3 }
    }
}

/// Memory a build batch needs to be joined in memory by `HashJoinExec`: the batch, the copy
/// `concat_batches` makes of the whole build side, and the hash table (up to ~ 40 bytes a row,
/// as its bucket count rounds up to a power of two, plus the visited bitmap).
pub(crate) fn build_need(batch: &RecordBatch) -> usize {
    2 * batch.get_array_memory_size() + 48 * batch.num_rows() + 1024
}

/// Of [`build_need`], what `HashJoinExec` keeps reserved (it does not reserve the transient
/// copy): what is handed to it once the side is known to fit.
pub(crate) fn build_keep(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.get_array_memory_size() + 48 * b.num_rows() + 1024).sum()
}

/// Whether a join emits build (left) rows that found no match.
fn emits_unmatched_build(t: JoinType) -> bool {
    matches!(t, JoinType::Left | JoinType::Full | JoinType::LeftAnti | JoinType::LeftMark)
}

/// Whether a join emits probe (right) rows that found no match.
fn emits_unmatched_probe(t: JoinType) -> bool {
    matches!(t, JoinType::Right | JoinType::Full | JoinType::RightAnti | JoinType::RightMark)
}

/// Whether a join's result is the union of joining each part of its build side with the whole
/// probe side: true when no output depends on a probe row's matches across the whole build.
fn build_chunkable(t: JoinType) -> bool {
    matches!(t, JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark)
}

/// What one output partition of a join works with.
pub(crate) struct JoinCtx {
    /// The planned join with its run-time state cleared: the template of every piece.
    pub template: Arc<HashJoinExec>,
    pub task: Arc<TaskContext>,
    pub options: GraceOptions,
    pub metrics: GraceMetrics,
    pub partition: usize,
}

impl JoinCtx {
    fn build_keys(&self) -> Vec<PhysicalExprRef> {
        self.template.on().iter().map(|(l, _)| l.clone()).collect()
    }
    fn probe_keys(&self) -> Vec<PhysicalExprRef> {
        self.template.on().iter().map(|(_, r)| r.clone()).collect()
    }
    fn build_schema(&self) -> SchemaRef {
        self.template.left().schema()
    }
    fn probe_schema(&self) -> SchemaRef {
        self.template.right().schema()
    }
    /// Whether a split at `level` sets NULL keys apart: only the first, since the buckets it
    /// makes hold no NULL keys; and only where NULL matches nothing.
    pub fn nulls_apart(&self, level: usize) -> bool {
        level == 0 && self.template.null_equality() == NullEquality::NullEqualsNothing
    }

    /// A partitioner of one side into `fanout` buckets at `level` (1 bucket: the whole side to
    /// one file), with NULL keys set apart where [`JoinCtx::nulls_apart`] says so.
    pub fn partitioner(&self, side: Side, level: usize, fanout: usize, buffer_rows: usize) -> Partitioner {
        let nulls_apart = fanout > 1 && self.nulls_apart(level);
        let (keys, schema, what) = match side {
            Side::Build => (self.build_keys(), self.build_schema(), "GraceHashJoin build bucket"),
            Side::Probe => (self.probe_keys(), self.probe_schema(), "GraceHashJoin probe bucket"),
        };
        Partitioner::new(
            keys,
            schema,
            level,
            fanout,
            nulls_apart,
            buffer_rows,
            self.task.clone(),
            self.metrics.spill.clone(),
            what,
        )
    }

    /// Rows each bucket buffers before writing, when a build side that held `batches` under
    /// `res` is split: the coalescing buffers of all buckets get half of what it was allowed.
    pub fn split_buffer_rows(&self, batches: &[RecordBatch], res: &MemoryReservation) -> usize {
        let held_rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if held_rows == 0 {
            return 64;
        }
        let row_bytes = (res.size() / held_rows).max(1);
        (res.size() / 2 / self.options.fanout / row_bytes).clamp(64, self.task.session_config().batch_size())
    }

    pub(crate) fn reservation(&self) -> MemoryReservation {
        MemoryConsumer::new(format!("GraceHashJoin[{}]", self.partition))
            .with_can_spill(true)
            .register(self.task.memory_pool())
    }
}

/// Which input of the join.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Build,
    Probe,
}

/// The probe side of a piece: a live stream, or bucket files (read one after the other) that can
/// be read again.
pub(crate) enum Probe {
    Stream(SendableRecordBatchStream),
    Files(Vec<Arc<dyn SpillFile>>),
}

impl Probe {
    fn open(self, ctx: &JoinCtx) -> Result<SendableRecordBatchStream> {
        match self {
            Probe::Stream(s) => Ok(s),
            Probe::Files(files) => read_files(&files, ctx),
        }
    }
}

fn read_files(files: &[Arc<dyn SpillFile>], ctx: &JoinCtx) -> Result<SendableRecordBatchStream> {
    let schema = ctx.probe_schema();
    if files.len() <= 1 {
        return read_file(files.first().cloned(), &schema, &ctx.task);
    }
    let streams = files.iter().map(|f| read_file(Some(f.clone()), &schema, &ctx.task)).collect::<Result<Vec<_>>>()?;
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter(streams).flatten())))
}

/// Sends `batch` on, counting its rows; `false` when the consumer has gone (the query was
/// cancelled or has what it needs).
async fn send(ctx: &JoinCtx, tx: &Sender<Result<RecordBatch>>, batch: RecordBatch) -> bool {
    ctx.metrics.output_rows.add(batch.num_rows());
    tx.send(Ok(batch)).await.is_ok()
}

/// `template` (a `HashJoinExec`, or one under the projection that `swap_inputs` adds) as a
/// one-partition `CollectLeft` join of `build` and `probe`.
fn instantiate(
    template: &Arc<dyn ExecutionPlan>,
    build: Arc<dyn ExecutionPlan>,
    probe: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(join) = template.downcast_ref::<HashJoinExec>() {
        return join
            .builder()
            .reset_state()
            .with_new_children(vec![build, probe])?
            .with_partition_mode(PartitionMode::CollectLeft)
            .recompute_properties()
            .build_exec();
    }
    if let Some(projection) = template.downcast_ref::<ProjectionExec>() {
        let inner = instantiate(projection.input(), build, probe)?;
        return Arc::new(projection.clone())
            .replace_children(vec![inner], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute));
    }
    Err(DataFusionError::Internal(format!("grace join: unexpected template {}", template.name())))
}

/// Joins `build` (in memory) with `probe` using DataFusion's hash join, forwarding the output.
/// The join's memory comes from `prepaid` first (see [`PrepaidPool`]).
#[allow(clippy::too_many_arguments)]
async fn in_memory(
    ctx: &JoinCtx,
    template: &Arc<dyn ExecutionPlan>,
    build: Vec<RecordBatch>,
    build_schema: SchemaRef,
    probe: SendableRecordBatchStream,
    prepaid: MemoryReservation,
    tx: &Sender<Result<RecordBatch>>,
) -> Result<bool> {
    prepaid.shrink(prepaid.size().saturating_sub(build_keep(&build)));
    let build = Box::pin(MemoryStream::try_new(build, build_schema, None)?);
    let plan = instantiate(template, Arc::new(OnceExec::new(build, "build")), Arc::new(OnceExec::new(probe, "probe")))?;
    let mut out = plan.execute(0, PrepaidPool::task(&ctx.task, prepaid)?)?;
    while let Some(batch) = out.next().await {
        if !send(ctx, tx, batch?).await {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Buffers `build` while `res` can grow; returns the buffered batches and the first batch that
/// did not fit (`None`: the whole side fits).
pub(crate) async fn buffer(
    build: &mut SendableRecordBatchStream,
    res: &mut MemoryReservation,
) -> Result<(Vec<RecordBatch>, Option<RecordBatch>)> {
    let mut batches = Vec::new();
    while let Some(batch) = build.next().await {
        let batch = batch?;
        if res.try_grow(build_need(&batch)).is_err() {
            return Ok((batches, Some(batch)));
        }
        batches.push(batch);
    }
    Ok((batches, None))
}

/// Joins one build side with one probe side within the reservation's share; see the module
/// docs. `level` is the recursion depth (0 for an output partition of the planned join).
/// Returns `false` if the consumer went away.
pub(crate) fn join(
    ctx: Arc<JoinCtx>,
    mut build: SendableRecordBatchStream,
    probe: Probe,
    level: usize,
    tx: Sender<Result<RecordBatch>>,
) -> BoxFuture<'static, Result<bool>> {
    async move {
        let mut res = ctx.reservation();
        let (batches, overflow) = buffer(&mut build, &mut res).await?;
        let template: Arc<dyn ExecutionPlan> = ctx.template.clone();
        let Some(first_over) = overflow else {
            return in_memory(&ctx, &template, batches, ctx.build_schema(), probe.open(&ctx)?, res, &tx).await;
        };
        ctx.metrics.went_out_of_core(level);
        if level >= ctx.options.max_depth {
            return chunked(&ctx, batches, first_over, build, probe, res, &tx).await;
        }

        // Split both sides into buckets. The coalescing buffers get half of what the build
        // side was allowed to hold.
        let fanout = ctx.options.fanout;
        let buffer_rows = ctx.split_buffer_rows(&batches, &res);
        let mut bp = ctx.partitioner(Side::Build, level, fanout, buffer_rows);
        for batch in batches {
            bp.push(&batch)?;
        }
        bp.push(&first_over)?;
        drop(first_over);
        res.free();
        bp.push_stream(build).await?;
        let built = bp.finish()?;
        let mut pp = ctx.partitioner(Side::Probe, level, fanout, buffer_rows);
        pp.push_stream(probe.open(&ctx)?).await?;
        let probed = pp.finish()?;
        ctx.metrics.buckets.add(fanout);

        let probe_files: Vec<Vec<Arc<dyn SpillFile>>> =
            probed.files.into_iter().map(|f| f.into_iter().collect()).collect();
        join_buckets(ctx, &built, probe_files, 0..built.rows.len(), level, tx).await
    }
    .boxed()
}

/// Joins the buckets `which` of a split at `level`: build bucket `b` with the probe files of
/// bucket `b`. Buckets that cannot produce output are skipped.
pub(crate) async fn join_buckets(
    ctx: Arc<JoinCtx>,
    built: &Buckets,
    mut probe_files: Vec<Vec<Arc<dyn SpillFile>>>,
    which: impl Iterator<Item = usize>,
    level: usize,
    tx: Sender<Result<RecordBatch>>,
) -> Result<bool> {
    let jt = *ctx.template.join_type();
    let total = built.total_rows();
    let template: Arc<dyn ExecutionPlan> = ctx.template.clone();
    for b in which {
        let probe = std::mem::take(&mut probe_files[b]);
        if b == ctx.options.fanout {
            // The NULL-key bucket: nothing matches; only unmatched rows come out.
            if emits_unmatched_build(jt) && built.rows[b] > 0 {
                let stream = built.read(b, &ctx.task)?;
                if !run_chunks(&ctx, &template, ctx.build_schema(), stream, &None, &ctx.probe_schema(), &tx).await? {
                    return Ok(false);
                }
            }
            if emits_unmatched_probe(jt) && !probe.is_empty() {
                let stream = Probe::Files(probe).open(&ctx)?;
                if !in_memory(&ctx, &template, vec![], ctx.build_schema(), stream, ctx.reservation(), &tx).await? {
                    return Ok(false);
                }
            }
            continue;
        }
        if built.rows[b] == 0 && !emits_unmatched_probe(jt) {
            continue;
        }
        if probe.is_empty() && !emits_unmatched_build(jt) {
            continue;
        }
        // A split that did not split (one key holds every row) will not split again.
        let next = if built.rows[b] == total && total > 1 { ctx.options.max_depth } else { level + 1 };
        let stream = built.read(b, &ctx.task)?;
        if !join(ctx.clone(), stream, Probe::Files(probe), next, tx.clone()).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The last resort for a build side that does not fit and cannot be split further.
async fn chunked(
    ctx: &JoinCtx,
    batches: Vec<RecordBatch>,
    first_over: RecordBatch,
    rest: SendableRecordBatchStream,
    probe: Probe,
    res: MemoryReservation,
    tx: &Sender<Result<RecordBatch>>,
) -> Result<bool> {
    // The probe side is read once per chunk: it must be a file.
    let probe_file = match probe {
        Probe::Files(f) if f.len() <= 1 => f.into_iter().next(),
        other => spill_probe(ctx, other.open(ctx)?).await?,
    };
    let jt = *ctx.template.join_type();
    let build_schema = ctx.build_schema();
    if build_chunkable(jt) {
        let template: Arc<dyn ExecutionPlan> = ctx.template.clone();
        let build = futures::stream::iter(batches.into_iter().chain(std::iter::once(first_over)).map(Ok)).chain(rest);
        res.free();
        return run_chunks(ctx, &template, build_schema, Box::pin(build), &probe_file, &ctx.probe_schema(), tx).await;
    }
    // Right, RightSemi, RightAnti and RightMark joins depend on each probe row's matches across
    // the whole build side; swapped, they are Left/LeftSemi/LeftAnti/LeftMark joins, which
    // chunk. A full outer join does not chunk either way, but swapped it may fit (one side of a
    // hot key is often small). The old build side becomes the probe, so it goes to a file first.
    res.free();
    let mut p = ctx.partitioner(Side::Build, 0, 1, 1024);
    for batch in batches {
        p.push(&batch)?;
    }
    p.push(&first_over)?;
    p.push_stream(rest).await?;
    let build_file = p.finish()?.files.remove(0);
    let swapped = ctx.template.builder().reset_state().build()?.swap_inputs(PartitionMode::CollectLeft)?;
    let mut new_build = read_file(probe_file.clone(), &ctx.probe_schema(), &ctx.task)?;
    if jt != JoinType::Full {
        return run_chunks(ctx, &swapped, ctx.probe_schema(), new_build, &build_file, &build_schema, tx).await;
    }
    let mut res = ctx.reservation();
    let (fits, over) = buffer(&mut new_build, &mut res).await?;
    if over.is_none() {
        let probe = read_file(build_file, &build_schema, &ctx.task)?;
        return in_memory(ctx, &swapped, fits, ctx.probe_schema(), probe, res, tx).await;
    }
    // Neither side of this full outer join's bucket fits: attempted in memory (on what the
    // reservation holds, and a small overdraft), which fails with the lease's error if it cannot.
    drop((fits, over, new_build));
    ctx.metrics.unbounded.add(1);
    let template: Arc<dyn ExecutionPlan> = ctx.template.clone();
    let plan = instantiate(
        &template,
        Arc::new(OnceExec::new(read_file(build_file, &build_schema, &ctx.task)?, "build")),
        Arc::new(OnceExec::new(read_file(probe_file, &ctx.probe_schema(), &ctx.task)?, "probe")),
    )?;
    let mut out = plan.execute(0, PrepaidPool::task(&ctx.task, res)?)?;
    while let Some(batch) = out.next().await {
        if !send(ctx, tx, batch?).await {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The next chunk of `build`: as many batches as `res` grants, and at least one (reserved if
/// the pool allows; the join reserves it again, and fails with DataFusion's error if it cannot).
/// The batch that did not fit is left in `pending` for the next chunk.
pub(crate) async fn next_chunk(
    build: &mut (impl futures::Stream<Item = Result<RecordBatch>> + Unpin),
    pending: &mut Option<RecordBatch>,
    res: &MemoryReservation,
) -> Result<Vec<RecordBatch>> {
    let mut chunk = Vec::new();
    if let Some(batch) = pending.take() {
        let _ = res.try_grow(build_need(&batch));
        chunk.push(batch);
    }
    while let Some(batch) = build.next().await {
        let batch = batch?;
        if res.try_grow(build_need(&batch)).is_err() && !chunk.is_empty() {
            *pending = Some(batch);
            break;
        }
        chunk.push(batch);
    }
    Ok(chunk)
}

/// Joins `build` chunk by chunk (each as much as `res` grants, at least one batch) with the
/// whole of `probe_file`, read again for each chunk.
#[allow(clippy::too_many_arguments)]
async fn run_chunks(
    ctx: &JoinCtx,
    template: &Arc<dyn ExecutionPlan>,
    build_schema: SchemaRef,
    mut build: impl futures::Stream<Item = Result<RecordBatch>> + Unpin,
    probe_file: &Option<Arc<dyn SpillFile>>,
    probe_schema: &SchemaRef,
    tx: &Sender<Result<RecordBatch>>,
) -> Result<bool> {
    let mut pending: Option<RecordBatch> = None;
    loop {
        let res = ctx.reservation();
        let chunk = next_chunk(&mut build, &mut pending, &res).await?;
        if chunk.is_empty() {
            return Ok(true);
        }
        ctx.metrics.chunks.add(1);
        let probe = read_file(probe_file.clone(), probe_schema, &ctx.task)?;
        if !in_memory(ctx, template, chunk, build_schema.clone(), probe, res, tx).await? {
            return Ok(false);
        }
        if pending.is_none() {
            return Ok(true);
        }
    }
}

/// Writes a whole probe stream to one file.
async fn spill_probe(ctx: &JoinCtx, stream: SendableRecordBatchStream) -> Result<Option<Arc<dyn SpillFile>>> {
    let mut p = ctx.partitioner(Side::Probe, 0, 1, 1024);
    p.push_stream(stream).await?;
    Ok(p.finish()?.files.remove(0))
}
