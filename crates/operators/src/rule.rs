//! [`GraceJoinRule`]: the physical optimizer rule that puts [`GraceHashJoinExec`] in place of
//! DataFusion's hash joins, and [`NestedLoopGuardExec`] around its inner cross and nested-loop
//! joins.
//!
//! It runs last, after DataFusion has chosen join modes, inserted repartitions and pushed
//! dynamic filters, so the plan around each join is exactly what DataFusion would run. A join is
//! left as it is (and listed by `spillway sql --explain` as a plain `HashJoinExec`) when:
//! - it is a null-aware anti join (`NOT IN`): whether any build key is NULL is a property of the
//!   whole build side, so it cannot be decided bucket by bucket;
//! - it carries a fetch limit, or its output ordering is relied on (by an operator above that
//!   requires an input ordering, or as the query's final order): out of core, rows come out
//!   bucket by bucket. Which orderings are relied on is worked out top-down: a child's ordering
//!   matters when its parent requires one, or when the parent's ordering matters and the parent
//!   keeps its input's order.

use crate::exec::GraceHashJoinExec;
use crate::grace::GraceOptions;
use crate::nested::NestedLoopGuardExec;
use datafusion::common::config::ConfigOptions;
use datafusion::common::JoinType;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
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

/// Whether `join` can run as a [`GraceHashJoinExec`], given whether its output ordering is
/// relied on; see the module docs.
pub fn supported(join: &HashJoinExec, ordering_needed: bool) -> bool {
    matches!(join.partition_mode(), PartitionMode::Partitioned | PartitionMode::CollectLeft)
        && !join.null_aware
        && join.fetch().is_none()
        && !(ordering_needed && join.properties().output_ordering().is_some())
}

impl GraceJoinRule {
    fn rewrite(&self, plan: Arc<dyn ExecutionPlan>, ordering_needed: bool) -> Result<Arc<dyn ExecutionPlan>> {
        let required = plan.required_input_ordering();
        let keeps = plan.maintains_input_order();
        let children = plan.children();
        let mut changed = false;
        let mut new_children = Vec::with_capacity(children.len());
        for (i, child) in children.into_iter().enumerate() {
            let needed = required.get(i).is_some_and(|r| r.is_some())
                || (ordering_needed && keeps.get(i).copied().unwrap_or(false));
            let new = self.rewrite(child.clone(), needed)?;
            changed |= !Arc::ptr_eq(&new, child);
            new_children.push(new);
        }
        let plan = if changed {
            plan.replace_children(new_children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?
        } else {
            plan
        };
        if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
            if supported(join, ordering_needed) {
                return Ok(Arc::new(GraceHashJoinExec::new(Arc::new(join.builder().build()?), self.options)));
            }
        }
        let inner_nested_loop = plan.downcast_ref::<CrossJoinExec>().is_some()
            || plan.downcast_ref::<NestedLoopJoinExec>().is_some_and(|j| *j.join_type() == JoinType::Inner);
        if inner_nested_loop && !(ordering_needed && plan.output_ordering().is_some()) {
            return Ok(Arc::new(NestedLoopGuardExec::new(plan)));
        }
        Ok(plan)
    }
}

impl PhysicalOptimizerRule for GraceJoinRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        // The query's own result order counts as relied on: DataFusion drops an ORDER BY whose
        // input is already sorted.
        let root_ordered = plan.output_ordering().is_some();
        self.rewrite(plan, root_ordered)
    }

    fn name(&self) -> &str {
        "spillway_grace_hash_join"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
