//! The governor's error type.

use std::time::Duration;

/// Everything that can go wrong when resolving a budget or borrowing from it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A size such as `4GiB`, `512MiB` or `60%` could not be parsed.
    #[error("invalid size {input:?}: {reason} (examples: 4GiB, 512MiB, 1.5GB, 60%)")]
    InvalidSize {
        /// What the user wrote.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The requested budget is larger than the memory this process may use.
    #[error(
        "budget {budget} is larger than the effective memory limit {limit} ({source_desc}); \
         use a smaller --memory or a percentage such as 60%"
    )]
    BudgetAboveLimit {
        /// Requested budget, formatted.
        budget: String,
        /// Effective limit, formatted.
        limit: String,
        /// Where the limit comes from.
        source_desc: String,
    },
    /// The requested budget is too small to run anything useful.
    #[error("budget {budget} is below the workable minimum of {minimum}")]
    BudgetTooSmall {
        /// Requested budget, formatted.
        budget: String,
        /// Smallest accepted budget, formatted.
        minimum: String,
    },
    /// A configuration value is out of range.
    #[error("invalid governor setting {name}: {reason}")]
    InvalidSetting {
        /// Setting name.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A lease asks for more than can ever be lent.
    #[error(
        "lease {name:?} asks for {requested} but at most {leasable} of the {budget} budget can be lent \
         (the rest is headroom for untracked allocations)"
    )]
    LeaseTooLarge {
        /// Lease name.
        name: String,
        /// Requested bytes, formatted.
        requested: String,
        /// Leasable bytes, formatted.
        leasable: String,
        /// Budget, formatted.
        budget: String,
    },
    /// A lease asks for more than the machine-wide ledger can ever lend to all processes.
    #[error(
        "lease {name:?} asks for {requested} but all spillway processes on this machine together may hold \
         at most {capacity} (the machine budget less headroom, ledger {ledger}); raise --machine-memory \
         or SPILLWAY_MACHINE_MEMORY, or ask for less"
    )]
    LeaseAboveMachine {
        /// Lease name.
        name: String,
        /// Requested bytes, formatted.
        requested: String,
        /// The ledger's capacity, formatted.
        capacity: String,
        /// The ledger file.
        ledger: String,
    },
    /// Waiting for a lease took longer than allowed.
    #[error(
        "lease {name:?} for {requested} timed out after {waited:?}: {leased} of {leasable} is lent out \
         (pressure {pressure}); held by {holders}; {ahead} request(s) were ahead in the queue"
    )]
    LeaseTimeout {
        /// Lease name.
        name: String,
        /// Requested bytes, formatted.
        requested: String,
        /// How long it waited.
        waited: Duration,
        /// Bytes lent out at the time, formatted.
        leased: String,
        /// Leasable bytes, formatted.
        leasable: String,
        /// Pressure level at the time.
        pressure: String,
        /// Current holders, `name (size)`, largest first.
        holders: String,
        /// Requests queued ahead of this one.
        ahead: usize,
    },
    /// The governor was shut down while a lease was waiting.
    #[error("governor closed while lease {0:?} was waiting")]
    Closed(String),
}

/// Result with the governor's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
