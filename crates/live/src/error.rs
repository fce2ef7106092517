//! The views host's error type: every variant names the view, the change file or the file (and
//! line where known).

use std::path::PathBuf;

/// What can go wrong hosting a project's views.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A problem at a place in a file.
    #[error("{}:{line}: {message}", path.display())]
    At {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A problem with how the views were asked for (e.g. a view that does not exist).
    #[error("{0}")]
    Usage(String),
    /// Several problems, each on its own line.
    #[error("{} problems:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Many(Vec<Error>),
    /// Another process writes the views store (one `views apply` or `views serve` at a time).
    #[error(
        "{}: the views are being written by {holder}: stop it first (`spillway views status` reads them meanwhile)",
        dir.display()
    )]
    ViewsLocked {
        /// The store (`.spillway/views/`).
        dir: PathBuf,
        /// Who holds the lock: its pid and command.
        holder: String,
    },
    /// A view cannot be planned or maintained (names its file and the line of the operator).
    #[error("{}:{line}: view {view}: {error}", path.display())]
    View {
        /// The view.
        view: String,
        /// Its file.
        path: PathBuf,
        /// 1-based line (of the operator refused, where found).
        line: usize,
        /// What the engine said (shown in this message, so not also as its cause).
        error: spillway_views::ViewError,
    },
    /// A change file cannot be applied: nothing of it was (its transaction is not recorded).
    #[error("{}: {error}", file.display())]
    Change {
        /// The change file.
        file: PathBuf,
        /// Why (shown in this message, so not also as its cause).
        error: spillway_views::ViewError,
    },
    /// A view's state does not fit in the views' lease: the transaction (or population) that
    /// grew it is not committed.
    #[error(
        "view {view}: its state ({}) does not fit in the views' lease of {} ({}); the views hold {} in all, the largest {largest}. Views' state is kept in memory: give the process more (--memory){}",
        spillway_governor::fmt_bytes(*state),
        spillway_governor::fmt_bytes(*lease),
        reason,
        spillway_governor::fmt_bytes(*total),
        match file { Some(f) => format!("; {} is not applied", f.display()), None => String::new() }
    )]
    ViewMemory {
        /// The view whose state grew.
        view: String,
        /// Its state, bytes.
        state: u64,
        /// Every view's state, bytes.
        total: u64,
        /// The lease, bytes.
        lease: u64,
        /// The largest views and their state (`q18 1.9GiB, q21 1.8GiB`).
        largest: String,
        /// What the pool said.
        reason: String,
        /// The change file whose transaction grew it (none during population).
        file: Option<PathBuf>,
    },
    /// The project as written is wrong, or one of its sources cannot be read.
    #[error(transparent)]
    Project(#[from] spillway_project::Error),
    /// Setting up a query session or reading a source failed.
    #[error(transparent)]
    Engine(#[from] spillway_engine::Error),
    /// Writing a sink's file or the temp space failed.
    #[error(transparent)]
    Tiers(#[from] spillway_tiers::Error),
    /// The budget could not be lent.
    #[error(transparent)]
    Governor(#[from] spillway_governor::Error),
    /// Following a slot or publishing a PostgreSQL sink failed (names the slot, sink or table).
    #[error(transparent)]
    Postgres(#[from] spillway_postgres::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn at(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        Error::At { path: path.into(), line, message: message.into() }
    }

    /// One error for a list of problems (the problem itself when there is one).
    pub(crate) fn many(mut problems: Vec<Error>) -> Option<Error> {
        match problems.len() {
            0 => None,
            1 => problems.pop(),
            _ => Some(Error::Many(problems)),
        }
    }
}

/// Result with the views host's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
