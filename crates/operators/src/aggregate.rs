//! [`SortedAggregateRule`]: grouped aggregates whose per-group state grows with their input run
//! as a sort by the group keys followed by an aggregate that streams group by group.
//!
//! DataFusion's hash aggregate spills by sorting its state, but the state of `array_agg`,
//! `string_agg`, exact `median`/`percentile_cont` and `DISTINCT` aggregates is a list of the
//! group's values, which its accumulators under-count (an `array_agg` keeps slices that pin the
//! whole input batch): such an aggregate ran at twice its lease in real memory, or failed after
//! spilling. Sorted by the group keys, the input arrives group after group, and DataFusion's
//! aggregate over sorted input (`InputOrderMode::Sorted`) emits each group as soon as the next
//! one starts: it holds one group's state at a time. The sort is [`crate::SpillingSortExec`].
//!
//! ```text
//!   AggregateExec(FinalPartitioned)             AggregateExec(SinglePartitioned, sorted)
//!     RepartitionExec(hash)           ──▶         SpillingSortExec(group keys, per partition)
//!       AggregateExec(Partial)                      RepartitionExec(hash on the group keys)
//!         input                                       input
//! ```
//!
//! A `Single` aggregate (one input partition) gets the sort alone. Grouping sets (`ROLLUP`,
//! `CUBE`), aggregates without `GROUP BY` and those whose state is bounded (`sum`, `count`,
//! `min`, ...) are left to DataFusion, whose hash aggregate spills them.

use crate::sort::SpillingSortExec;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use std::sync::Arc;

/// Aggregate functions whose state holds (a sample of) every input value of the group.
const GROWING: &[&str] = &[
    "array_agg",
    "string_agg",
    "median",
    "percentile_cont",
    "percentile_disc",
    "quantile_cont",
    "quantile_disc",
    "nth_value",
];

/// Whether `agg` holds per-group state that grows with its input.
fn grows(agg: &AggregateExec) -> bool {
    agg.aggr_expr().iter().any(|a| a.is_distinct() || GROWING.contains(&a.fun().name()))
}

/// Rewrites grouped aggregates with growing state into a sort and a sorted aggregate. See the
/// module docs.
#[derive(Debug, Default)]
pub struct SortedAggregateRule;

impl SortedAggregateRule {
    fn rewrite(&self, node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(top) = node.downcast_ref::<AggregateExec>() else { return Ok(None) };
        if top.limit_options().is_some() || !top.group_expr().is_single() || top.group_expr().expr().is_empty() {
            return Ok(None);
        }
        // The aggregate that sees the raw rows, and what feeds the sorted one.
        let (leaf, feed, mode): (&AggregateExec, Arc<dyn ExecutionPlan>, AggregateMode) = match top.mode() {
            AggregateMode::Single => (top, top.input().clone(), AggregateMode::Single),
            AggregateMode::FinalPartitioned => {
                let Some(repartition) = top.input().downcast_ref::<RepartitionExec>() else { return Ok(None) };
                let Partitioning::Hash(_, n) = repartition.partitioning() else { return Ok(None) };
                let Some(partial) = repartition.input().downcast_ref::<AggregateExec>() else { return Ok(None) };
                if *partial.mode() != AggregateMode::Partial {
                    return Ok(None);
                }
                let keys = partial.group_expr().input_exprs();
                let feed = Arc::new(RepartitionExec::try_new(partial.input().clone(), Partitioning::Hash(keys, *n))?);
                (partial, feed, AggregateMode::SinglePartitioned)
            }
            _ => return Ok(None),
        };
        if !grows(leaf) || leaf.input_order_mode() != &datafusion::physical_plan::InputOrderMode::Linear {
            return Ok(None);
        }
        // Aggregates with their own ORDER BY (`string_agg(x, ',' ORDER BY y)`) need it within
        // each group: the sort adds it after the group keys when they all share one.
        let mut within: Option<&[PhysicalSortExpr]> = None;
        for a in leaf.aggr_expr().iter().filter(|a| !a.order_bys().is_empty()) {
            match within {
                Some(w) if w != a.order_bys() => return Ok(None),
                _ => within = Some(a.order_bys()),
            }
        }
        let keys = leaf.group_expr().input_exprs().into_iter().map(PhysicalSortExpr::new_default);
        let Some(ordering) = LexOrdering::new(keys.chain(within.unwrap_or_default().iter().cloned())) else {
            return Ok(None);
        };
        let sort = SortExec::new(ordering, feed).with_preserve_partitioning(mode == AggregateMode::SinglePartitioned);
        let sorted: Arc<dyn ExecutionPlan> = Arc::new(SpillingSortExec::new(Arc::new(sort)));
        let aggregate = AggregateExec::try_new(
            mode,
            leaf.group_expr().clone(),
            leaf.aggr_expr().to_vec(),
            leaf.filter_expr().to_vec(),
            sorted,
            leaf.input_schema(),
        )?;
        if aggregate.schema().fields().len() != top.schema().fields().len() {
            return Ok(None);
        }
        Ok(Some(Arc::new(aggregate)))
    }
}

impl PhysicalOptimizerRule for SortedAggregateRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match self.rewrite(&node)? {
            Some(new) => Ok(Transformed::yes(new)),
            None => Ok(Transformed::no(node)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "spillway_sorted_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
