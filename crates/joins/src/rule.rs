//! [`GraceJoinRule`]: the physical optimizer rule that puts [`GraceHashJoinExec`] in place of
//! DataFusion's hash joins.
//!
//! It runs last, after DataFusion has chosen join modes, inserted repartitions and pushed
//! dynamic filters, so the plan around each join is exactly what DataFusion would run. A join is
//! left as it is (and listed by `spillway sql --explain` as a plain `HashJoinExec`) when:
//! - it is a null-aware anti join (`NOT IN`): whether any build key is NULL is a property of the
//!   whole build side, so it cannot be decided bucket by bucket;
//! - it carries a fetch limit, or declares an output ordering that a parent may rely on: out of
//!   core, rows come out bucket by bucket.

use crate::exec::GraceHashJoinExec;
use crate::grace::GraceOptions;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::ExecutionPlan;
use std::sync::Arc;

/// Replaces supported `HashJoinExec`s with [`GraceHashJoinExec`].
#[derive(Debug, Default)]
pub struct GraceJoinRule {
    options: GraceOptions,
}

impl GraceJoinRule {
    /// A rule that gives every join `options`.
    pub fn new(options: GraceOptions) -> Self {
        Self { options }
    }
}

/// Whether `join` can run as a [`GraceHashJoinExec`]; see the module docs.
pub fn supported(join: &HashJoinExec) -> bool {
    matches!(join.partition_mode(), PartitionMode::Partitioned | PartitionMode::CollectLeft)
        && !join.null_aware
        && join.fetch().is_none()
        && join.properties().output_ordering().is_none()
}

impl PhysicalOptimizerRule for GraceJoinRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if !supported(join) {
                return Ok(Transformed::no(node));
            }
            let wrapped = GraceHashJoinExec::new(Arc::new(join.builder().build()?), self.options);
            Ok(Transformed::yes(Arc::new(wrapped) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "spillway_grace_hash_join"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
