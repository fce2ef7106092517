//! [`OnceExec`]: a plan that hands out streams it was given, once each.
//!
//! The out-of-core join runs DataFusion's own `HashJoinExec` on pieces it has already produced:
//! batches it buffered while checking that a build side fits, a probe stream it has started, a
//! bucket read back from disk. Those are streams, not re-runnable plans; `OnceExec` lets a
//! `HashJoinExec` consume them as its children. Executing a partition a second time is an error.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use std::sync::{Arc, Mutex};

type Slot = Mutex<Option<SendableRecordBatchStream>>;

/// A plan whose partitions are streams handed over from outside.
pub struct OnceExec {
    slots: Vec<Slot>,
    label: &'static str,
    properties: Arc<PlanProperties>,
}

impl OnceExec {
    /// One partition: `stream`. `label` says what it is in plan displays ("build", "probe").
    pub fn new(stream: SendableRecordBatchStream, label: &'static str) -> Self {
        let schema: SchemaRef = stream.schema();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self { slots: vec![Mutex::new(Some(stream))], label, properties: Arc::new(properties) }
    }

    /// Like [`OnceExec::new`], declaring the orderings and equivalences of `like` (whose schema
    /// the stream has): for a piece of that plan's output, which is ordered as it is.
    pub fn ordered_like(stream: SendableRecordBatchStream, label: &'static str, like: &Arc<dyn ExecutionPlan>) -> Self {
        let properties = PlanProperties::new(
            like.properties().eq_properties.clone(),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self { slots: vec![Mutex::new(Some(stream))], label, properties: Arc::new(properties) }
    }

    /// As many empty partitions as `like` has, with its properties; fill each with
    /// [`OnceExec::fill`] before it is executed.
    pub fn slots_like(like: &Arc<dyn ExecutionPlan>, label: &'static str) -> Self {
        let n = like.properties().partitioning.partition_count();
        Self { slots: (0..n).map(|_| Mutex::new(None)).collect(), label, properties: like.properties().clone() }
    }

    /// Puts `stream` in partition `partition`.
    pub fn fill(&self, partition: usize, stream: SendableRecordBatchStream) -> Result<()> {
        let slot = self.slots.get(partition).ok_or_else(|| {
            DataFusionError::Internal(format!("OnceExec({}) has no partition {partition}", self.label))
        })?;
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
        Ok(())
    }
}

impl std::fmt::Debug for OnceExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OnceExec({})", self.label)
    }
}

impl DisplayAs for OnceExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "OnceExec: {}", self.label)
    }
}

impl ExecutionPlan for OnceExec {
    fn name(&self) -> &str {
        "OnceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("OnceExec has no children".into()))
        }
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(&self, partition: usize, _ctx: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        self.slots.get(partition).and_then(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take()).ok_or_else(|| {
            DataFusionError::Internal(format!(
                "OnceExec({}) partition {partition} executed twice or never filled",
                self.label
            ))
        })
    }
}
