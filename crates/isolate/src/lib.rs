//! Isolated steps: one model's work in a child process of its own, under a memory cgroup.
//!
//! ```text
//!   runner (spillway run)                          child (spillway worker, hidden)
//!   lease from the governor ─┐
//!   cgroup: lease + headroom ├─ spawn + exec ───▶  moves itself into the cgroup (pre-exec),
//!     (or rlimits)           │  spec on stdin        then allocates: its own governor with the
//!   inputs as IPC/Parquet ───┘                       lease as its budget; runs the SQL; writes
//!                                                    the output as Arrow IPC; report on stdout
//!   exit status + cgroup: peak, OOM kills ◀──────────┘
//!   cgroup and the child's temp folder removed
//! ```
//!
//! The child is started by spawn + exec of the spillway binary, never by a `fork` of the
//! threaded runner that goes on running Rust code: between fork and exec it only writes `0` to
//! its cgroup's `cgroup.procs` (or sets rlimits), so it is inside its limit before it allocates
//! anything.
//!
//! - [`cgroup`]: finding the runner's own memory cgroup, making, reading and removing children's.
//! - [`Confinement`]: which isolation is in force on this machine (a cgroup, else rlimits).
//! - [`spawn`]: starting the child and telling an OOM kill from other deaths.
//! - [`worker`]: the child's side.
#![warn(missing_docs)]

pub mod cgroup;
mod confine;
pub mod spawn;
pub mod worker;

pub use confine::{headroom, Confinement};
pub use spawn::{confine, run_child, Death, Outcome};

use std::path::PathBuf;

/// What an isolated step is to do (JSON on the child's stdin).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepSpec {
    /// The model, for errors and the child's pool.
    pub model: String,
    /// Its SQL.
    pub sql: String,
    /// The lease the runner holds for it: the child's pool gets exactly this.
    pub lease_bytes: u64,
    /// The child's whole budget (the lease plus [`headroom`]); its cgroup limit.
    pub budget_bytes: u64,
    /// Partitions.
    pub partitions: usize,
    /// Sorts with a limit run as external sorts.
    pub no_topk: bool,
    /// Share of the lease kept for consumers that cannot spill.
    pub unspillable_reserve: f64,
    /// The child's temp folder (the runner removes it afterwards).
    pub spill_dir: PathBuf,
    /// Most disk space the child's temp files may take.
    pub max_spill: Option<u64>,
    /// Tables to register.
    pub tables: Vec<TableSpec>,
    /// Where the output goes (an Arrow IPC file).
    pub output: PathBuf,
}

/// One table an isolated step reads.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TableSpec {
    /// Its name in the SQL.
    pub name: String,
    /// A file, folder or glob.
    pub location: String,
    /// For an Arrow IPC hand-off file: its rows and bytes, so that it is read memory-mapped in
    /// partitions with the statistics the join planner needs (as in process).
    pub ipc: Option<(u64, u64)>,
}

/// What the child reports (JSON, the last line of its stdout).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StepReport {
    /// Rows written.
    pub rows: u64,
    /// Size of the output file.
    pub bytes: u64,
    /// Bytes operators spilled.
    pub spilled_bytes: u64,
    /// Joins' figures.
    pub joins: Vec<spillway_engine::query::JoinReport>,
    /// Most bytes reserved from the child's pool.
    pub peak_reserved: u64,
    /// The error, if the step failed.
    pub error: Option<String>,
    /// Whether it failed because a memory reservation was refused (the runner escalates).
    pub resources_exhausted: bool,
    /// The operator that cannot spill and was refused memory, if that is how it failed.
    pub refused: Option<String>,
}

/// What can go wrong around a child (its own failures come back in its [`StepReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Starting or talking to the child failed.
    #[error("isolated step {model}: {what}: {source}")]
    Io {
        /// The model.
        model: String,
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}
