//! Operators that complete within their lease: joins, sorts, aggregates and windows.
//!
//! DataFusion 55's `HashJoinExec` cannot spill: when its build side does not fit the memory
//! pool it fails with `ResourcesExhausted`. This crate's [`GraceJoinRule`] replaces each hash
//! join with a [`GraceHashJoinExec`], which behaves like it while the build side fits and goes
//! out of core (a grace hash join, recursive, decided at run time) when it does not.
//! The same rule puts [`NestedLoopGuardExec`] around inner cross and nested-loop joins, which
//! then go block by block; [`WindowGuardRule`] bounds window functions that need whole
//! partitions.
//!
//! ```text
//!   rule.rs     GraceJoinRule: HashJoinExec ──▶ GraceHashJoinExec (last physical optimizer rule)
//!   exec.rs     GraceHashJoinExec: per output partition; CollectLeft build shared by partitions
//!   grace.rs    the algorithm: buffer build → fits? DataFusion's join : split into buckets, recurse
//!   buckets.rs  hash routing of batches into Arrow IPC bucket files in the spill directory
//!   nested.rs   NestedLoopGuardExec: inner cross / nested-loop joins block by block
//!   once.rs     OnceExec: hands a stream to DataFusion's join as a child plan
//!   prepaid.rs  PrepaidPool: the memory the grace join reserved, lent to the join it starts
//!   metrics.rs  per-join figures: out of core or not, buckets, depth, bytes spilled
//!   window.rs   WindowGuardRule / WindowGuardExec: WindowAggExec fed whole PARTITION BY groups,
//!               under a reservation (DataFusion's buffers its whole input, uncharged)
//!   sort.rs     SpillingSortRule / SpillingSortExec: every sort (and every TopK too large for
//!               its share) as an external sort whose merge memory is reserved before it spills
//!   aggregate.rs SortedAggregateRule: aggregates whose state grows with the input (array_agg,
//!               median, DISTINCT, ...) as a spilling sort by the group keys + a sorted aggregate
//!   delegate.rs delegate_plan!: the one shape of the wrappers around a DataFusion operator
//!   spill.rs    IpcFile: the operators' spill files (Arrow IPC in the quota'd spill directory)
//!   merge.rs    Merge: k-way merge of sorted runs with a known memory bound (loser tree)
//! ```
//!
//! Depends on DataFusion only; `spillway-engine` installs the rule in every session.
#![warn(missing_docs)]

mod aggregate;
mod buckets;
mod delegate;
mod exec;
mod grace;
mod merge;
mod metrics;
mod nested;
mod once;
mod prepaid;
mod rule;
mod sort;
mod spill;
mod window;

pub use aggregate::SortedAggregateRule;
pub use exec::GraceHashJoinExec;
pub use grace::GraceOptions;
pub use metrics::{join_reports, JoinReport};
pub use nested::NestedLoopGuardExec;
pub use once::OnceExec;
pub use rule::{supported, GraceJoinRule};
pub use sort::{BoundedMergeExec, SpillingSortExec, SpillingSortRule};
pub use window::{WindowGuardExec, WindowGuardRule};
