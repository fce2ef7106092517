//! Refuses statements that would undermine the budget.
//!
//! `SET datafusion.runtime.memory_limit = ...` (and any other `datafusion.runtime.*` setting)
//! makes DataFusion build a new runtime with its own pool, silently replacing the lease's pool;
//! `RESET` of those settings does the same. Both are refused with a clear error.

use crate::error::{Error, Result};
use datafusion::logical_expr::{LogicalPlan, Statement};

/// Checks a planned statement; `Err(Error::Forbidden)` if it must not run.
pub fn check(plan: &LogicalPlan) -> Result<()> {
    let variable = match plan {
        LogicalPlan::Statement(Statement::SetVariable(s)) => &s.variable,
        LogicalPlan::Statement(Statement::ResetVariable(r)) => &r.variable,
        _ => return Ok(()),
    };
    if variable.to_ascii_lowercase().starts_with("datafusion.runtime.") {
        return Err(Error::Forbidden(format!(
            "`{variable}` cannot be changed from SQL: it would replace spillway's memory pool and \
             spill directory. Set the budget with --memory (or `memory` in spillway.toml) and the \
             spill location with --spill-dir instead"
        )));
    }
    Ok(())
}
