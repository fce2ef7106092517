//! SQL model projects: a folder with `spillway.toml` and `models/*.sql`, one `SELECT` per file.
//!
//! # Crate overview
//!
//! ```text
//!   Config::load      spillway.toml, typed, read once (+ --set): budget, temp space, [governor],
//!        │            [defaults], [sources.*], [sinks.*], [models.*]
//!   Project::from_config(dir, &config)
//!        │              models/*.sql  (+ leading `-- spillway: key=value` settings)
//!        ▼
//!   Dag::build(&project)  tables referenced by each model (DataFusion's SQL parser)
//!        │                → upstream models, source tables, run order; cycles and unknown
//!        ▼                  tables are errors with file and line
//!   Dag::select("+model")  dbt-style selection
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
pub mod config;
mod dag;
mod error;
pub mod manifest;
mod project;
pub mod report;
pub mod results;
pub mod resume;
pub mod run;
mod settings;
pub mod sources;
pub mod views;

pub use config::{Config, ConfigFile, EngineSection, GovernorSection};
pub use dag::Dag;
pub use error::{Error, Result};
pub use project::{CdcSource, Model, Project, Refresh, SinkDef, SinkTarget, SourceDef, ViewDef, TPCH_TABLES};
pub use results::{Event, OnCluster, RunResults, Status, StepResult};
pub use run::{isolates, on_cluster, Observer, RunOptions};
pub use settings::{Class, Engine, LeaseSpec, ModelSettings, SettingsTable};
