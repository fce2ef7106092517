//! Runs SQL text as a stream: every statement is planned, checked by the [`guard`](crate::guard)
//! and executed; the last one's result comes back as a [`Query`] (a stream plus its physical plan,
//! whose metrics tell how much was spilled, and what each join did, once the stream is drained).

use crate::error::Result;
use crate::guard;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParserBuilder;
use futures::StreamExt;
use std::sync::Arc;

/// The running result of the last statement.
pub struct Query {
    /// The physical plan (read its metrics after draining `stream`).
    pub plan: Arc<dyn ExecutionPlan>,
    /// The result batches, produced as they are computed.
    pub stream: SendableRecordBatchStream,
}

/// Plans and starts `sql` (one or more `;`-separated statements). Statements before the last are
/// run to completion (their rows discarded); the last is returned as a stream.
pub async fn run_sql(ctx: &SessionContext, sql: &str) -> Result<Query> {
    let statements = DFParserBuilder::new(sql).build()?.parse_statements()?;
    if statements.is_empty() {
        return Err(datafusion::error::DataFusionError::Plan("no SQL statement was given".into()).into());
    }
    let last = statements.len() - 1;
    for (i, statement) in statements.into_iter().enumerate() {
        let state = ctx.state();
        let plan = state.statement_to_plan(statement).await?;
        guard::check(&plan)?;
        let df = ctx.execute_logical_plan(plan).await?;
        let physical = df.create_physical_plan().await?;
        let mut stream = execute_stream(Arc::clone(&physical), ctx.task_ctx())?;
        if i == last {
            return Ok(Query { plan: physical, stream });
        }
        while let Some(batch) = stream.next().await {
            batch?;
        }
    }
    unreachable!("the loop returns at the last statement")
}

pub use spillway_operators::{join_reports, JoinReport};

/// Bytes spilled to disk by every operator of `plan` (read after the stream is drained).
pub fn spilled_bytes(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) as u64;
    own + plan.children().into_iter().map(spilled_bytes).sum::<u64>()
}
