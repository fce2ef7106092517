//! A spillway project as written: `spillway.toml` typed and read once, `models/*.sql` and
//! `views/*.sql` with their settings, the sources and sinks they name, and the dependency DAG.
//! What runs a project lives above this crate: the batch runner (`spillway-pipeline`) and the
//! views host (`spillway-live`) both start from a [`Project`] and neither depends on the other.
//!
//! # Crate overview
//!
//! ```text
//!   Config::load      spillway.toml, typed, read once (+ --set): budget, temp space, [governor],
//!        │            [engine], [defaults], [sources.*], [sinks.*], [models.*]
//!   Project::from_config(dir, &config)
//!        │              models/*.sql (+ leading `-- spillway: key=value` settings), views/*.sql
//!        ▼
//!   dag::Dag::build(&project)  tables referenced by each model (DataFusion's SQL parser)
//!        │                     → upstream models, source tables, run order; cycles and unknown
//!        ▼                       tables are errors with file and line
//!   dag::Dag::select("+model")  dbt-style selection
//!
//!   sources::prepare   the source tables registered in a session (TPC-H generated once, files,
//!                      PostgreSQL tables read through the engine's providers)
//!   fingerprint        content hashes that identify files (resume, applied change files)
//!   clock              timestamps as written in run results and status files
//! ```
#![warn(missing_docs)]
#![allow(clippy::result_large_err)]

pub mod clock;
mod cluster_url;
mod config;
pub mod dag;
mod error;
pub mod fingerprint;
mod project;
mod settings;
pub mod sources;

pub use cluster_url::ClusterUrl;
pub use config::{Config, ConfigFile, EngineSection, GovernorSection};
pub use error::{Error, Result};
pub use project::{
    line_of, section_line, CdcSource, Model, Project, Refresh, SinkDef, SinkTarget, SourceDef, ViewDef, TPCH_TABLES,
};
pub use settings::{Class, Engine, Isolate, LeaseSpec, ModelSettings, SettingsTable};
