//! Hand-off of intermediates between steps, and the temp space they live in.
//!
//! # Crate overview
//!
//! ```text
//!   SpillRoot::open(dir) ── sweeps run dirs of dead processes ──▶ RunDir (LOCK, removed on drop)
//!        │                                                          ├── handoff/   our files
//!        │                                                          └── datafusion/ operator spills
//!   DiskQuota ── every byte we write is reserved; DataFusion's spill usage counts too
//!
//!   HandoffStore::write(step, stream, hints) ──▶ Arc<Intermediate>      (store)
//!        memory (Arc'd batches, lease grows) ─▶ Arrow IPC file ─▶ or Parquet from the start
//!   read::register(ctx, name, &intermediate)  zero-copy MemTable | mmap'd IPC | Parquet source
//!   file::write_stream(stream, out.parquet)   atomic publish of user outputs   (file)
//! ```
//!
//! # Where to start
//! - [`HandoffStore`] and [`store`] for the tier choice.
//! - [`SpillRoot`] / [`RunDir`] for cleanup guarantees.
#![warn(missing_docs)]
// Errors carry their numbers as text for one-line messages; they are rare and cold.
#![allow(clippy::result_large_err)]

mod error;
pub mod file;
pub mod quota;
pub mod read;
pub mod rundir;
pub mod store;

pub use error::{Error, Result};
pub use file::{FileFormat, WriteOptions, WriteSummary};
pub use quota::DiskQuota;
pub use rundir::{RunDir, SpillRoot, Swept};
pub use store::{BufferTally, HandoffStore, Hints, Intermediate, IntermediateInfo, Materialize, Tier, TierConfig};
