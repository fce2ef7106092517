//! Refuses statements that would undermine the budget or the temp-space guarantees.
//!
//! - `SET datafusion.runtime.memory_limit = ...` (and any other `datafusion.runtime.*` setting)
//!   makes DataFusion build a new runtime with its own pool, silently replacing the lease's pool;
//!   `RESET` of those settings does the same.
//! - The `datafusion.execution.*` settings spillway sizes from the lease (batch size, partitions,
//!   sort spill reservation and in-place threshold, spill file size): changing them from SQL
//!   would change how much memory each operator takes behind the lease's back.
//! - `COPY ... TO` writes files outside spillway's atomic publication and temp-space quota
//!   (`spillway sql --output` publishes instead).
//!
//! Each is refused with a clear error. (A model's SQL must be one query; `spillway-pipeline`'s
//! DAG refuses anything else before this is reached.)

use crate::error::{Error, Result};
use datafusion::logical_expr::{LogicalPlan, Statement};

/// `datafusion.execution.*` settings that spillway sizes from the lease.
const SIZED_BY_THE_LEASE: [&str; 6] = [
    "datafusion.execution.batch_size",
    "datafusion.execution.target_partitions",
    "datafusion.execution.sort_spill_reservation_bytes",
    "datafusion.execution.sort_in_place_threshold_bytes",
    "datafusion.execution.max_spill_file_size_bytes",
    "datafusion.execution.spill_compression",
];

/// Checks a planned statement; `Err(Error::Forbidden)` if it must not run.
pub fn check(plan: &LogicalPlan) -> Result<()> {
    if let LogicalPlan::Copy(c) = plan {
        return Err(Error::Forbidden(format!(
            "COPY ... TO {} would write outside spillway's atomic publication and temp-space quota: \
             use --output FILE (published when complete, never partial)",
            c.output_url
        )));
    }
    let variable = match plan {
        LogicalPlan::Statement(Statement::SetVariable(s)) => &s.variable,
        LogicalPlan::Statement(Statement::ResetVariable(r)) => &r.variable,
        _ => return Ok(()),
    };
    let lower = variable.to_ascii_lowercase();
    if let Some(setting) = SIZED_BY_THE_LEASE.iter().find(|s| **s == lower) {
        return Err(Error::Forbidden(format!(
            "`{setting}` cannot be changed from SQL: spillway sizes it from the memory lease, and \
             changing it would change how much memory operators take. Set the budget with --memory"
        )));
    }
    if variable.to_ascii_lowercase().starts_with("datafusion.runtime.") {
        return Err(Error::Forbidden(format!(
            "`{variable}` cannot be changed from SQL: it would replace spillway's memory pool and \
             spill directory. Set the budget with --memory (or `memory` in spillway.toml) and the \
             spill location with --spill-dir instead"
        )));
    }
    Ok(())
}
