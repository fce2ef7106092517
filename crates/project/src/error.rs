//! The project's error type: every variant names the file (and line where known).

use std::path::PathBuf;

/// What can be wrong with a project as written, or with reading its sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
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
    /// A problem with how the work was asked for (e.g. a selection naming no model).
    #[error("{0}")]
    Usage(String),
    /// Models (or views) depend on each other in a cycle.
    #[error("dependency cycle: {0}")]
    Cycle(String),
    /// Several problems, each on its own line (loading reports all it finds).
    #[error("{} problems:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Many(Vec<Error>),
    /// `[engine] url` (or `--scheduler`) is not a `df://host:port` URL.
    #[error("{url:?} is not a Ballista scheduler URL: {why} (write df://host:port, e.g. df://localhost:50050)")]
    ClusterUrl {
        /// As written.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// Setting up a query session or reading a source failed.
    #[error(transparent)]
    Engine(#[from] spillway_engine::Error),
    /// Reading a PostgreSQL source failed (names the source and table).
    #[error(transparent)]
    Postgres(#[from] spillway_postgres::Error),
}

impl Error {
    /// A file that could not be read.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A problem at `line` of `path`.
    pub fn at(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        Error::At { path: path.into(), line, message: message.into() }
    }

    /// One error for a list of problems (the problem itself when there is one).
    pub fn many(mut problems: Vec<Error>) -> Option<Error> {
        match problems.len() {
            0 => None,
            1 => problems.pop(),
            _ => Some(Error::Many(problems)),
        }
    }
}

/// Result with the project's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
