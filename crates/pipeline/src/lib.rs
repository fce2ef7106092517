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
//! ```
//!
//! Running the DAG under the governor is the next step (issue #4); today `spillway plan` uses
//! this crate to validate a project and print its plan.
#![warn(missing_docs)]
#![allow(clippy::result_large_err)]

mod dag;
mod error;
mod project;
mod settings;

pub use dag::Dag;
pub use error::{Error, Result};
pub use project::{Model, Project, SinkDef, SourceDef, TPCH_TABLES};
pub use settings::{Class, LeaseSpec, ModelSettings, SettingsTable};
