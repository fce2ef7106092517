//! What each out-of-core join did: shown by `EXPLAIN ANALYZE` (as the operator's metrics) and
//! collected into a [`JoinReport`] per join for `run_results.json` and `spillway sql --stats-json`.

use crate::exec::GraceHashJoinExec;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, Gauge, MetricBuilder, MetricsSet, SpillMetrics,
};
use datafusion::physical_plan::ExecutionPlan;
use std::sync::Arc;

/// The counters of one output partition of a grace hash join.
#[derive(Clone)]
pub(crate) struct GraceMetrics {
    /// 1 when this partition's build side did not fit and it was split.
    pub out_of_core: Count,
    /// Buckets written (build and probe count once per bucket).
    pub buckets: Count,
    /// Deepest split level reached (1 = split once).
    pub depth: Gauge,
    /// Build chunks joined against a whole probe bucket (the last resort for one hot key).
    pub chunks: Count,
    /// Full outer joins of one hot key that were attempted in memory regardless.
    pub unbounded: Count,
    /// Bucket files, rows and bytes written.
    pub spill: SpillMetrics,
    /// Rows produced.
    pub output_rows: Count,
}

impl GraceMetrics {
    pub fn new(set: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        Self {
            out_of_core: MetricBuilder::new(set).counter("out_of_core", partition),
            buckets: MetricBuilder::new(set).counter("buckets", partition),
            depth: MetricBuilder::new(set).gauge("max_depth", partition),
            chunks: MetricBuilder::new(set).counter("chunks", partition),
            unbounded: MetricBuilder::new(set).counter("unbounded_attempts", partition),
            spill: SpillMetrics::new(set, partition),
            output_rows: MetricBuilder::new(set).output_rows(partition),
        }
    }

    /// Records that a piece at `level` did not fit and is being split (or chunked).
    pub fn went_out_of_core(&self, level: usize) {
        if level == 0 {
            self.out_of_core.add(1);
        }
        self.depth.set_max(level + 1);
    }
}

/// One join's figures after a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinReport {
    /// The join as `EXPLAIN` shows it: type and keys.
    pub join: String,
    /// Output partitions of the join.
    pub partitions: usize,
    /// Of those, how many went out of core (0: the join ran in memory, as DataFusion's would).
    pub out_of_core_partitions: usize,
    /// Buckets written.
    pub buckets: usize,
    /// Deepest recursion (0: never split; 1: split once; more: buckets split again).
    pub max_depth: usize,
    /// Build chunks joined one at a time (one key larger than the lease).
    pub chunks: usize,
    /// Bytes and rows written to bucket files.
    pub spilled_bytes: usize,
    /// Rows written to bucket files.
    pub spilled_rows: usize,
    /// Rows the join produced.
    pub output_rows: usize,
}

impl JoinReport {
    pub(crate) fn from_metrics(join: String, partitions: usize, m: &MetricsSet) -> Self {
        let sum = |name: &str| m.sum_by_name(name).map(|v| v.as_usize()).unwrap_or(0);
        let max_depth =
            m.iter().filter(|x| x.value().name() == "max_depth").map(|x| x.value().as_usize()).max().unwrap_or(0);
        Self {
            join,
            partitions,
            out_of_core_partitions: sum("out_of_core"),
            buckets: sum("buckets"),
            max_depth,
            chunks: sum("chunks"),
            spilled_bytes: m.spilled_bytes().unwrap_or(0),
            spilled_rows: m.spilled_rows().unwrap_or(0),
            output_rows: m.output_rows().unwrap_or(0),
        }
    }
}

/// Reports for every grace hash join in an executed plan, in plan order.
pub fn join_reports(plan: &Arc<dyn ExecutionPlan>) -> Vec<JoinReport> {
    let mut out = Vec::new();
    collect(plan, &mut out);
    out
}

fn collect(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<JoinReport>) {
    if let Some(join) = plan.downcast_ref::<GraceHashJoinExec>() {
        out.push(join.report());
    }
    if let Some(join) = plan.downcast_ref::<crate::nested::NestedLoopGuardExec>() {
        out.push(join.report());
    }
    for child in plan.children() {
        collect(child, out);
    }
}
