//! SQL model projects: a folder with `spillway.toml` and `models/*.sql`, one `SELECT` per file.
//!
//! # Crate overview
//!
//! ```text
//!   Project::load(dir)  spillway.toml ([defaults], [sources.*], [sinks.*], [models.*])
//!        │              models/*.sql  (+ leading `-- spillway: key=value` settings)
//!        ▼
//!   Dag::build(&project)  tables referenced by each model (DataFusion's SQL parser)
//!        │                → upstream models, source tables, run order; cycles and unknown
//!        ▼                  tables are errors with file and line
//!   Dag::select("+model")  dbt-style selection
//!        ▼
//!   check::validate       every model planned against its inputs' schemas: all problems at once
//!        ▼
//!   run::run              the DAG under the governor (leases, hand-offs, sinks, retries)
//!        ▼                → RunResults, events.jsonl, timeline.json in .spillway/runs/<id>/
//!   report::render        one HTML page: steps table and memory timeline chart
//! ```
//!
//! # Where to start
//! - [`run`](mod@run) for scheduling, retries and where outputs go.
//! - [`results`] for what a run records.
#![warn(missing_docs)]
#![allow(clippy::result_large_err)]

pub mod check;
mod dag;
mod error;
mod project;
pub mod report;
pub mod results;
pub mod run;
mod settings;
pub mod sources;

pub use dag::Dag;
pub use error::{Error, Result};
pub use project::{Model, Project, SinkDef, SinkTarget, SourceDef, TPCH_TABLES};
pub use results::{Event, RunResults, Status, StepResult};
pub use run::{Observer, RunOptions};
pub use settings::{Class, LeaseSpec, ModelSettings, SettingsTable};
