//! Hand-off of intermediates between steps, and the temp space they live in.
//!
//! # Crate overview
//!
//! ```text
//!   SpillRoot::open(dir) ── dir/spillway/, swept of dead runs ──▶ RunDir (marker, removed on drop)
//!        │                                                          ├── handoff/   our files
//!        │                                                          └── datafusion/ operator spills
//!   DiskQuota ── one per process: every byte we write and every byte of every DataFusion
//!                session's spill files (QuotaTempFiles) is reserved from it
//!
//!   HandoffStore::write(step, stream, hints) ──▶ Arc<Intermediate>      (store)
//!        memory (Arc'd batches, lease grows) ─▶ Arrow IPC file ─▶ or Parquet from the start
//!   read::register(ctx, name, &intermediate)  zero-copy MemTable | mmap'd IPC | Parquet source
//!   file::stage_stream(stream, out.parquet) ─▶ Staged ─▶ publish(): fsync, rename, fsync dir (file)
//!   staging::sweep(dir)   staging files of dead processes; owner::Owner  who made what
//! ```
//!
//! # Where to start
//! - [`HandoffStore`] and [`store`] for the tier choice.
//! - [`SpillRoot`] / [`RunDir`] for cleanup guarantees.
#![warn(missing_docs)]
// Errors carry their numbers as text for one-line messages; they are rare and cold.
#![allow(clippy::result_large_err)]

pub mod durable;
mod error;
pub mod file;
pub mod owner;
pub mod quota;
pub mod read;
pub mod rundir;
mod space;
pub mod staging;
pub mod store;

pub use error::{Error, Result};
pub use file::{FileFormat, WriteOptions, WriteSummary};
pub use quota::{DiskQuota, QuotaTempFiles};
pub use rundir::{RunDir, SpillRoot, Swept};
pub use space::TempSpace;
pub use store::{BufferTally, HandoffStore, Hints, Intermediate, IntermediateInfo, Materialize, Tier, TierConfig};
