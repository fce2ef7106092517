//! Runs SQL text as a stream: every statement is planned, checked by the [`guard`](crate::guard)
//! and executed; the last one's result comes back as a [`Query`] (a stream plus its physical plan,
//! whose metrics tell how much was spilled, and what each join did, once the stream is drained).

use crate::error::Result;
use crate::guard;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParserBuilder;
use datafusion::sql::sqlparser::dialect::dialect_from_str;
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
    let statements = parse(ctx, sql)?;
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

/// Parses `sql` as `SessionContext::sql` does: the session's dialect and recursion limit.
fn parse(ctx: &SessionContext, sql: &str) -> Result<std::collections::VecDeque<datafusion::sql::parser::Statement>> {
    let state = ctx.state();
    let parser = &state.config().options().sql_parser;
    let dialect = dialect_from_str(parser.dialect).ok_or_else(|| {
        datafusion::error::DataFusionError::Plan(format!("Unsupported SQL dialect: {}", parser.dialect))
    })?;
    Ok(DFParserBuilder::new(sql)
        .with_dialect(dialect.as_ref())
        .with_recursion_limit(parser.recursion_limit.get())
        .build()?
        .parse_statements()?)
}

pub use spillway_operators::{join_reports, JoinReport};

/// Bytes spilled to disk by every operator of `plan` (read after the stream is drained).
pub fn spilled_bytes(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = plan.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) as u64;
    own + plan.children().into_iter().map(spilled_bytes).sum::<u64>()
}
