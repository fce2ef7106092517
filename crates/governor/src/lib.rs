//! One memory budget for the whole process, enforced against real memory.
//!
//! # Crate overview
//!
//! ```text
//!   Budget::resolve(--memory 4GiB | 60%, limits::memory_limit())     (config, limits, size)
//!          │
//!          ▼
//!   Governor ── sampler thread ──▶ Timeline (jemalloc allocated/active/resident/retained, RSS)
//!      │                    ├────▶ Pressure level (normal / moderate / high / critical)
//!      │                    └────▶ purges jemalloc's free pages, trims resident code  (code)
//!      │ lease(name, bytes | S/M/L, heavy?)    FIFO queue, timeout, cancel  (lease)
//!      ▼
//!   Lease ── into_pool() ──▶ LeasePool: a DataFusion MemoryPool inside the lease      (pool)
//!      drop: bytes return to the budget, jemalloc arenas are purged
//!   Ledger: every spillway process's leases together within the machine budget      (ledger)
//! ```
//!
//! DataFusion's own accounting is voluntary: operators reserve memory from a `MemoryPool`, and
//! many allocations are never reserved. The governor therefore works on two levels: *leases* split
//! the budget between steps (a step waits rather than fails when memory is lent out), and the
//! *sampler* watches what the allocator really holds, turning it into a [`Pressure`] level that
//! makes spillable operators spill early and holds back new leases.
//!
//! # Where to start
//! - [`Governor::new`] and [`Governor::lease`] for the budget and its loans.
//! - [`LeasePool`] for how DataFusion operators are kept inside a lease.
//! - [`limits`] for how the effective memory limit and core count are detected.
#![warn(missing_docs)]
// Errors carry their numbers as text for one-line messages; they are rare and cold.
#![allow(clippy::result_large_err)]

pub mod chart;
mod code;
mod config;
mod error;
mod governor;
pub mod jemalloc;
mod lease;
pub mod ledger;
pub mod limits;
mod pool;
mod pressure;
mod size;
mod timeline;

pub use config::{Budget, GovernorConfig, Profile, ProfileSize, MIN_BUDGET};
pub use error::{Error, Result};
pub use governor::Governor;
pub use lease::{Lease, LeaseRequest, LeaseSize};
pub use ledger::LedgerConfig;
pub use pool::{LeasePool, PoolOptions, PoolStats, DEFAULT_UNSPILLABLE_RESERVE, GROW_STEP, SPILLED_FLOOR};
pub use pressure::{Pressure, PressureThresholds};
pub use size::{fmt_bytes, ByteSize, MemorySpec};
pub use timeline::{Sample, Timeline};
