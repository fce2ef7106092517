//! The batch runner: a project's models (`models/*.sql`, one `SELECT` per file) validated and run
//! under the budget, with run results, resume and reports. The project as written (config,
//! models, DAG, sources) is `spillway-project`'s; live views are `spillway-live`'s.
//!
//! # Crate overview
//!
//! ```text
//!   spillway_project::{Config, Project, dag::Dag}   the project as written, its DAG, a selection
//!        ▼
//!   check::validate       every model planned against its inputs' schemas: all problems at once
//!        ▼
//!   resume::decide        with --resume: what the last run's manifest lets this one reuse
//!        ▼
//!   run::run              the DAG under the governor (leases, hand-offs, sinks, retries)
//!        ▼                → RunResults, events.jsonl, timeline.json, manifest.json in
//!                           .spillway/runs/<id>/; checkpoints in .spillway/state/
//!   report::render        one HTML page: steps table and memory timeline chart
//! ```
//!
//! # Where to start
//! - [`run`](mod@run) for scheduling, retries and where outputs go.
//! - [`results`] for what a run records.
#![warn(missing_docs)]
#![allow(clippy::result_large_err)]

pub mod check;
mod error;
pub mod manifest;
pub mod report;
pub mod results;
pub mod resume;
pub mod run;

pub use error::{Error, Result};
pub use results::{Event, OnCluster, RunResults, Status, StepResult};
pub use run::{isolates, on_cluster, Observer, RunOptions};
