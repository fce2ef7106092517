//! The SQL shell behind `spillway sql`: one session under one lease, fed statements from an
//! argument, a file, standard input or a terminal, all through the same path.
//!
//! # Crate overview
//!
//! ```text
//!   script::split(text)          statements (with the line each starts on) and the shell's own
//!        │                       commands (`.tables`, `\d NAME`, `\timing`, ...)
//!        ▼
//!   Shell::run_script            each item in order, stopping at the first error, which names
//!   Shell::execute               the file (or `<stdin>`, `<argument>`) and line:
//!        │                         query::run_sql (the guard, the lease) → format::write
//!        │                         → a status line: rows, time, peak memory, spilled bytes
//!        │                       batches pulled by a task of their own, so Ctrl-C (caught by
//!        │                       interrupt's own thread) cancels at once
//!        ▼
//!   interactive::run             a terminal: rustyline (history, multi-line statements ended by
//!                                `;`, completion of tables and columns), Ctrl-C cancels the
//!                                running statement, Ctrl-D leaves
//!   project::open                `--project DIR`: its sources, the last run's outputs and
//!                                its views as tables
//! ```
//!
//! The caller (the `spillway` binary) owns the budget: it creates the governor, leases the
//! memory and builds the [`SessionContext`](datafusion::prelude::SessionContext) the shell runs in.
#![warn(missing_docs)]
#![allow(clippy::result_large_err)]

mod complete;
mod error;
pub mod format;
pub mod interactive;
mod interrupt;
mod meta;
pub mod project;
pub mod script;
mod shell;

pub use error::{Error, Result};
pub use format::Format;
pub use shell::{Outcome, Shell, Target};
