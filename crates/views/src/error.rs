//! The engine's errors: a view shape it cannot maintain (named by operator), or a failure of
//! DataFusion or Arrow underneath.

use datafusion::error::DataFusionError;

/// What can go wrong building or maintaining a view.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The view contains an operator (or an expression in one) that cannot be maintained from
    /// changes. `operator` is the plan node (`Window`, `Limit`, ...), `reason` says why.
    #[error("{operator} cannot be maintained incrementally: {reason}")]
    Unsupported { operator: String, reason: String },
    /// A change names a table the view does not read, or has the wrong columns.
    #[error("change to {table}: {reason}")]
    BadChange { table: String, reason: String },
    /// A change deleted a row that was not there: an operator's state would hold a row (or a
    /// group would count its rows) a negative number of times. Refused: no later insert of the
    /// row could make the view right again.
    #[error("a change deleted a row that was not there: {operator} would hold {row} {count} time(s)")]
    AbsentRowDeleted {
        /// The operator's state (`the aggregate's group`, `the join's left input`).
        operator: String,
        /// The row (or group key), as `(column=value, ...)`.
        row: String,
        /// The multiplicity it would have.
        count: i64,
    },
    /// The view's lease had no room for a piece of a change in flight, or for a chunk of its
    /// contents being read (refused before it was built): the transaction (or the reading)
    /// stopped there.
    #[error("view {view}: the lease has no room for {} more of {what} ({} held): {reason}", crate::format_bytes(*bytes), crate::format_bytes(*held))]
    InFlight {
        /// The view.
        view: String,
        /// What was being built: its changes in flight, or its contents being read.
        what: &'static str,
        /// Bytes asked for.
        bytes: usize,
        /// Bytes the view held in flight already.
        held: usize,
        /// The pool's refusal.
        reason: String,
    },
    /// DataFusion failed (planning, expression evaluation, population).
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// Arrow failed (decoding rows, building batches).
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The engine's result.
pub type Result<T, E = ViewError> = std::result::Result<T, E>;

pub(crate) fn unsupported(operator: impl Into<String>, reason: impl Into<String>) -> ViewError {
    ViewError::Unsupported { operator: operator.into(), reason: reason.into() }
}
