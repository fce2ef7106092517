//! [`delegate_plan!`]: the one shape of this crate's wrappers around a DataFusion operator.
//!
//! `SpillingSortExec`, `BoundedMergeExec` and `WindowGuardExec` each hold the DataFusion plan they
//! stand for (a `SortExec`, a `SortPreservingMergeExec`, a `WindowAggExec`) and run it their own
//! way. Everything the planner asks of them (properties, children, distribution and ordering
//! requirements, expressions) is the inner plan's; the macro writes those methods once, so the
//! wrappers differ only in `name`, `execute` and how a rebuilt inner plan is wrapped again. Not
//! delegated on purpose: `dynamic_expressions_produced` (the wrappers do not update the inner
//! plan's dynamic filters) and `execute`.

/// Inside `impl ExecutionPlan for X`: delegates to `self.$inner` (which has `input()`), keeps
/// metrics in `self.metrics`, and wraps a rebuilt inner plan with `$wrap`.
macro_rules! delegate_plan {
    ($inner:ident, $wrap:expr) => {
        fn properties(&self) -> &std::sync::Arc<datafusion::physical_plan::PlanProperties> {
            self.$inner.properties()
        }

        fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            vec![self.$inner.input()]
        }

        fn apply_expressions(
            &self,
            f: &mut dyn FnMut(
                &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
            ) -> datafusion::error::Result<datafusion::common::tree_node::TreeNodeRecursion>,
        ) -> datafusion::error::Result<datafusion::common::tree_node::TreeNodeRecursion> {
            self.$inner.apply_expressions(f)
        }

        fn input_distribution_requirements(&self) -> datafusion::physical_plan::InputDistributionRequirements {
            self.$inner.input_distribution_requirements()
        }

        fn required_input_ordering(&self) -> Vec<Option<datafusion::physical_expr::OrderingRequirements>> {
            self.$inner.required_input_ordering()
        }

        fn benefits_from_input_partitioning(&self) -> Vec<bool> {
            self.$inner.benefits_from_input_partitioning()
        }

        fn maintains_input_order(&self) -> Vec<bool> {
            self.$inner.maintains_input_order()
        }

        fn replace_children(
            self: std::sync::Arc<Self>,
            children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
            options: datafusion::physical_plan::execution_plan::ReplaceChildrenOptions,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            let rebuilt = self.$inner.clone().replace_children(children, options)?;
            $wrap(rebuilt)
        }

        fn with_new_children(
            self: std::sync::Arc<Self>,
            children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
            self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
        }

        fn metrics(&self) -> Option<datafusion::physical_plan::metrics::MetricsSet> {
            Some(self.metrics.clone_inner())
        }
    };
}

pub(crate) use delegate_plan;
