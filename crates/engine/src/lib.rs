//! A DataFusion session that runs under a spillway lease.
//!
//! # Crate overview
//!
//! ```text
//!   Lease ─into_pool()─▶ LeasePool ─▶ session::context() ─▶ SessionContext
//!                                         │ spill files → the run directory (spillway-tiers)
//!   tables::register / register_data_dir ─┘
//!   query::run_sql(ctx, "SELECT ...") ─▶ guard::check ─▶ Query { plan, stream }
//!                                                   └──▶ output::write_stream / print_table
//!   tpch::generate(sf, dir) ─▶ dir/<table>/part-N.parquet
//! ```
//!
//! Everything streams: results are written or printed batch by batch, never collected.
#![warn(missing_docs)]
// Errors carry their numbers as text for one-line messages; they are rare and cold.
#![allow(clippy::result_large_err)]

mod error;
pub mod guard;
pub mod output;
pub mod query;
pub mod session;
pub mod tables;
pub mod tpch;

pub use error::{is_resources_exhausted, Error, Result};
