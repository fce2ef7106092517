//! [`SortWithoutTopKRule`]: sorts with a limit run as an external sort followed by a limit,
//! instead of DataFusion's TopK.
//!
//! ```text
//!   SortExec(fetch = n)            TopK: keeps n rows in a heap; its memory cannot spill
//!        ▼ rewritten to
//!   GlobalLimitExec(n)             (LocalLimitExec(n) per partition when partitioning is kept)
//!     SortExec(fetch = none)       an external sort: spills sorted runs when its share is full
//! ```
//!
//! TopK is the better plan when `n` rows fit, which is why this rule is not on by default: the
//! pipeline's escalation turns it on for a retry after a TopK was refused memory (a large `n`,
//! or wide rows).

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::ExecutionPlan;
use std::sync::Arc;

/// Rewrites every `SortExec` with a fetch into a limit over a full (spilling) sort.
#[derive(Debug, Default)]
pub struct SortWithoutTopKRule;

impl PhysicalOptimizerRule for SortWithoutTopKRule {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(sort) = node.downcast_ref::<SortExec>() else { return Ok(Transformed::no(node)) };
            let Some(fetch) = sort.fetch() else { return Ok(Transformed::no(node)) };
            let full: Arc<dyn ExecutionPlan> = Arc::new(
                SortExec::new(sort.expr().clone(), sort.input().clone())
                    .with_preserve_partitioning(sort.preserve_partitioning()),
            );
            let limited: Arc<dyn ExecutionPlan> = if sort.preserve_partitioning() {
                Arc::new(LocalLimitExec::new(full, fetch))
            } else {
                Arc::new(GlobalLimitExec::new(full, 0, Some(fetch)))
            };
            Ok(Transformed::yes(limited))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "spillway_sort_without_topk"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
