//! The hand-off store's error type.

use std::path::PathBuf;

/// What can go wrong placing, reading or cleaning up intermediates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spill root cannot be used (not writable, not a directory, disk too full).
    #[error("spill directory {}: {reason}", path.display())]
    SpillRoot {
        /// The spill root.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Writing would take temp files past the disk quota.
    #[error(
        "disk quota for temp files exceeded writing {}: {used} in use + {asking} more > quota {quota} \
         (raise --max-spill, or `max_spill` in spillway.toml, or free space)",
        path.display()
    )]
    QuotaExceeded {
        /// The file being written.
        path: PathBuf,
        /// Bytes in use (ours and DataFusion's spill files), formatted.
        used: String,
        /// Bytes asked for, formatted.
        asking: String,
        /// The quota, formatted.
        quota: String,
    },
    /// The input stream failed (the step's own error).
    #[error("{0}")]
    DataFusion(datafusion::error::DataFusionError),
    /// Arrow encoding or decoding failed.
    #[error("{0}")]
    Arrow(arrow::error::ArrowError),
    /// Parquet encoding failed.
    #[error("{0}")]
    Parquet(parquet::errors::ParquetError),
    /// An option is not valid.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
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

impl From<Error> for datafusion::error::DataFusionError {
    fn from(e: Error) -> Self {
        match e {
            Error::DataFusion(e) => e,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        }
    }
}

/// Result with the tiers' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
