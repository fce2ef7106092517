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
    /// DataFusion's spill files passed the temp-space quota.
    #[error(
        "spill files passed the temp-space quota ({0}); raise --max-spill (or `max_spill` in \
         spillway.toml) or free disk space"
    )]
    SpillQuota(String),
    /// Writing an output or intermediate failed.
    #[error(transparent)]
    Tiers(spillway_tiers::Error),
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
}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        // DataFusion's own quota message points at `datafusion.runtime.max_temp_directory_size`,
        // which spillway refuses; say what to change here instead.
        let msg = e.to_string();
        if let Some(pos) = msg.find("exceeded the allowable limit of ") {
            let limit = msg[pos + 32..].split(". ").next().unwrap_or("").to_string();
            return Error::SpillQuota(format!("limit {limit}"));
        }
        Error::DataFusion(e)
    }
}

impl From<spillway_tiers::Error> for Error {
    fn from(e: spillway_tiers::Error) -> Self {
        match e {
            spillway_tiers::Error::DataFusion(e) => e.into(),
            other => Error::Tiers(other),
        }
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::Arrow(e)
    }
}

impl Error {
    /// Whether the error is DataFusion's `ResourcesExhausted` (a memory reservation was refused),
    /// however deeply it is wrapped: the failure a bigger lease or a disk hand-off can fix.
    pub fn is_resources_exhausted(&self) -> bool {
        match self {
            Error::DataFusion(e) => is_resources_exhausted(e),
            Error::Tiers(spillway_tiers::Error::DataFusion(e)) => is_resources_exhausted(e),
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `e` is, or wraps, `ResourcesExhausted`.
pub fn is_resources_exhausted(e: &datafusion::error::DataFusionError) -> bool {
    use datafusion::error::DataFusionError as E;
    match e.find_root() {
        E::ResourcesExhausted(_) => true,
        // Errors that crossed an Arrow boundary keep only their text.
        other => other.to_string().contains("Resources exhausted"),
    }
}
