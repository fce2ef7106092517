//! Apache Ballista for spillway: models too big for one machine run on a Ballista cluster, the
//! rest stays local under the governor.
//!
//! ```text
//!   spillway cluster up ─▶ local::LocalCluster: the scheduler in this process (HOST:PORT)
//!                          └▶ N × `spillway cluster executor` children, each under a memory
//!                             cgroup of its share of the budget (rlimits without one), its
//!                             DataFusion pool a spillway lease of that share (executor.rs)
//!   spillway run, a model with engine = "ballista"
//!        ─▶ client::check(url)   before any work starts: a clear error naming the URL
//!        ─▶ client::session(url) a DataFusion session whose planner sends the plan to the
//!                                scheduler; the rows stream back to the client
//!        ─▶ client::job(plan)    Ballista's job id and timings, for run_results.json
//! ```
//!
//! What cannot cross to the cluster (spillway's grace join and other custom operators, custom
//! table providers without codecs, the memory tier) is listed in `docs/ballista.md`.

#![allow(clippy::result_large_err)]

pub mod client;
pub mod executor;
pub mod local;

pub use client::{check, job, session, JobGuard, JobInfo};

/// The largest gRPC message the executors send and the client and executors accept: a batch
/// of wide rows fetched from a shuffle or a result partition is one Arrow Flight message, and
/// Ballista's 16MiB default fails such a job ("encoded message length too large"; seen on TPC-H
/// Q10 at SF10).
pub const GRPC_MESSAGE_LIMIT: usize = 256 << 20;

/// What can go wrong talking to or running a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scheduler does not answer.
    #[error(
        "the Ballista cluster at {url} is not reachable: {why}; start one with `spillway cluster up` \
         or set [engine] url"
    )]
    Down {
        /// The scheduler.
        url: spillway_project::ClusterUrl,
        /// The connection error.
        why: String,
    },
    /// Ballista failed (starting the scheduler or an executor, or a query).
    #[error("ballista: {0}")]
    Ballista(String),
    /// DataFusion failed setting up a session.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The executor's budget could not be leased.
    #[error(transparent)]
    Governor(#[from] spillway_governor::Error),
}

impl From<ballista_core::error::BallistaError> for Error {
    fn from(e: ballista_core::error::BallistaError) -> Self {
        Error::Ballista(e.to_string())
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;
