//! The shell's error type.

use std::path::PathBuf;

/// What can go wrong in the shell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement failed; `origin` is the file (or `<stdin>`, `<argument>`), `line` where the
    /// statement starts.
    #[error("{origin}:{line}: {source}")]
    Statement {
        /// Where the statement came from.
        origin: String,
        /// Its first line.
        line: usize,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
    /// Planning or running a statement failed (its message names line and column).
    #[error(transparent)]
    Engine(#[from] spillway_engine::Error),
    /// Opening a project failed.
    #[error(transparent)]
    Project(#[from] spillway_project::Error),
    /// Opening a project's views failed.
    #[error(transparent)]
    Views(#[from] spillway_live::Error),
    /// Formatting a result failed.
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A shell command (`.tables`, `\d`, ...) was not understood.
    #[error("{0}")]
    Command(String),
    /// The statement was cancelled (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// The terminal could not be read.
    #[error("reading the terminal: {0}")]
    Terminal(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    /// Whether this is (or wraps) a cancellation by Ctrl-C.
    pub fn is_interrupted(&self) -> bool {
        match self {
            Error::Interrupted => true,
            Error::Statement { source, .. } => source.is_interrupted(),
            _ => false,
        }
    }
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Error {
        Error::Engine(e.into())
    }
}

/// The shell's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
