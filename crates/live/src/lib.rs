//! Hosting live views: a project's `views/*.sql` kept exactly up to date, in one process, from
//! the change files of its sources and from PostgreSQL logical replication, with the engine of
//! `spillway-views`, under the process's lease. `spillway views apply|serve|status|explain` and
//! the SQL shell's views are this crate; it does not depend on the batch runner.
//!
//! # Dataflow
//!
//! ```text
//!   Views::open (host)      sources prepared and registered; views planned and populated in
//!        │                  dependency order; the log replayed (store)
//!        ▼
//!   change files (intake)   ─┐  a batch at a time, the table's types; rows kept by key resolve
//!   PostgreSQL slot (feed)  ─┤  deletes and updates; each batch's growth reserved first (accounting)
//!   (cdc: the slot's files)  │  → the transaction's Z-set, spooled (memory, or the temp space)
//!                            ▼
//!   txn::transaction        every view in order, a piece at a time: state charged before each
//!        │                  piece, each view's change spooled; recomputed views run again (recompute)
//!        ▼
//!   txn::log ─▶ store       the log entry, synced and renamed: the commit point
//!        ▼
//!   publish                 the changed views' sinks together (files, changelogs, PostgreSQL);
//!        │                  for the slot, only then is the position made durable
//!        ▼
//!   serve                   `views serve`: the long-lived loop, its snapshot, `/metrics`;
//!                           report: its HTML page
//! ```
#![warn(missing_docs)]
#![allow(clippy::result_large_err)]

mod accounting;
pub mod cdc;
mod error;
mod feed;
mod host;
mod intake;
mod publish;
mod recompute;
pub mod report;
pub mod serve;
mod store;
mod txn;

pub use error::{Error, Result};
pub use feed::AppliedTxn;
pub use host::{Access, Views};
pub use intake::{AppliedFile, ApplyReport};
pub use store::{Applied, CdcMark, Serving, Status, Store, ViewStatus, WriterLock, WEIGHT_COLUMN};
