//! The engine's error type.

use std::path::PathBuf;

/// What can go wrong while setting up or running a query.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// DataFusion planning or execution failed (SQL errors name line and column).
    // Not a `source`: DataFusion's message already includes its causes, and a source would
    // print them a second time in the CLI's error chain.
    #[error("{0}")]
    DataFusion(datafusion::error::DataFusionError),
    /// The budget could not be resolved or lent.
    #[error(transparent)]
    Governor(#[from] spillway_governor::Error),
    /// A statement that would undermine the memory budget was refused.
    #[error("refused: {0}")]
    Forbidden(String),
    /// A table could not be registered.
    #[error("table {name:?} ({path}): {reason}")]
    Table {
        /// Table name.
        name: String,
        /// Path or glob it was to be read from.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing output failed.
    #[error("writing {}: {reason}", path.display())]
    Output {
        /// Output path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Arrow encoding or decoding failed.
    #[error("{0}")]
    Arrow(arrow::error::ArrowError),
    /// Parquet encoding failed.
    #[error("{0}")]
    Parquet(parquet::errors::ParquetError),
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::DataFusion(e)
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Arrow(e)
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Error::Parquet(e)
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
