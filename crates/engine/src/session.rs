//! Builds a DataFusion [`SessionContext`] that runs inside a spillway lease: the lease's
//! [`LeasePool`] as memory pool, spill files from the process's one temp-space quota
//! ([`QuotaTempFiles`]: every session's spill files count against one `--max-spill`), parallelism
//! from the detected cores, and hash joins that go out of core (`spillway-operators`).

use crate::error::Result;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use spillway_governor::LeasePool;
use spillway_operators::{GraceJoinRule, SortedAggregateRule, SpillingSortRule, WindowGuardRule};
use spillway_tiers::QuotaTempFiles;
use std::sync::Arc;

/// How a session is set up, apart from its pool.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Partitions per plan; normally the detected core count.
    pub target_partitions: usize,
    /// Rows per batch (default 8192).
    pub batch_size: usize,
    /// Where DataFusion's operator spill files go, and the process's temp-space quota they
    /// count against (shared by every session and by the hand-off files).
    pub temp_files: Arc<QuotaTempFiles>,
    /// Replace DataFusion's hash joins (which cannot spill) with spillway's out-of-core grace
    /// hash join (`spillway-operators`). On by default under a lease; `false` runs DataFusion's own,
    /// to measure what the grace join costs.
    pub grace_joins: bool,
    /// Run sorts with a limit as external sorts (which spill) instead of TopK (which cannot):
    /// a retry's plan after a TopK was refused memory.
    pub no_topk: bool,
}

impl SessionOptions {
    /// Defaults with `cores` partitions and spill files from `temp_files`.
    pub fn new(cores: usize, temp_files: Arc<QuotaTempFiles>) -> Self {
        Self { target_partitions: cores.max(1), batch_size: 8192, temp_files, grace_joins: true, no_topk: false }
    }
}

/// A session whose operators reserve memory from `pool`, with DataFusion's memory settings
/// scaled to the lease (see [`build`]).
pub fn context(pool: Arc<LeasePool>, options: &SessionOptions) -> Result<SessionContext> {
    let limit = pool.max_bytes();
    build(pool, Some(limit), options)
}

/// A session over a stock DataFusion pool with DataFusion's default memory settings: the
/// baseline spillway is compared with (`spillway sql --pool greedy`). Spill files still go to
/// the run directory and count against the quota.
pub fn stock_context(pool: Arc<dyn MemoryPool>, options: &SessionOptions) -> Result<SessionContext> {
    build(pool, None, options)
}

/// With `tuned_for = Some(limit)`, two DataFusion settings are scaled to the lease:
/// - the spill-merge fan-in, because a sort's final merge reserves one buffered batch per spill
///   file it reads, as many as the pool grants (DataFusion notes this starves shared pools):
///   bounded so a merge takes about half its partition's share (~2MiB per stream), at least 2;
/// - `sort_spill_reservation_bytes`, set aside per partition for merging spill files, whose 10MiB
///   default would eat a small lease whole.
fn build(pool: Arc<dyn MemoryPool>, tuned_for: Option<u64>, options: &SessionOptions) -> Result<SessionContext> {
    let partitions = options.target_partitions.max(1);
    let fan_in = tuned_for.map(|limit| (limit / (partitions as u64 * (4 << 20))).clamp(2, 64) as usize);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(pool)
        .with_disk_manager_builder(options.temp_files.disk_manager(fan_in))
        .build_arc()?;
    let mut config = SessionConfig::new()
        .with_target_partitions(partitions)
        .with_batch_size(options.batch_size)
        .with_information_schema(true);
    if let Some(limit) = tuned_for {
        let per_partition = (limit as usize / (8 * partitions)).clamp(256 << 10, 10 << 20);
        let exec = &mut config.options_mut().execution;
        exec.sort_spill_reservation_bytes = per_partition;
        exec.sort_in_place_threshold_bytes = per_partition.min(1 << 20);
    }
    let mut state = SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features();
    if tuned_for.is_some() && options.grace_joins {
        // Last, so it sees the plan DataFusion would run: join modes chosen, repartitions in
        // place, dynamic filters pushed.
        state = state.with_physical_optimizer_rule(Arc::new(GraceJoinRule::default()));
    }
    if let Some(limit) = tuned_for {
        let sorts = SpillingSortRule::new(limit);
        let sorts = if options.no_topk { sorts.without_topk() } else { sorts };
        // The aggregate rule first: the sorts it adds are already spillway's.
        state = state
            .with_physical_optimizer_rule(Arc::new(SortedAggregateRule))
            .with_physical_optimizer_rule(Arc::new(sorts))
            .with_physical_optimizer_rule(Arc::new(WindowGuardRule));
    }
    Ok(SessionContext::new_with_state(state.build()))
}
