//! The crate's error type: every error names the sink or source and the table.

use datafusion::error::DataFusionError;

/// What can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// PostgreSQL refused, could not be reached, or the load could not be done as asked.
    #[error("{target}: {message}")]
    Postgres {
        /// `sink NAME → schema.table` or `source NAME`.
        target: String,
        /// What went wrong, with PostgreSQL's detail and hint when it gave them.
        message: String,
    },
    /// The rows being loaded failed to arrive (the model's query failed); nothing was committed.
    #[error("{target}: the model failed while loading, nothing was committed: {source}")]
    Input {
        /// `sink NAME → schema.table`.
        target: String,
        /// The query's error.
        source: DataFusionError,
    },
}

impl Error {
    /// The query's error when the rows being loaded failed to arrive (so the caller can tell a
    /// refused memory reservation, which a retry may fix, from a database problem).
    pub fn input_error(&self) -> Option<&DataFusionError> {
        match self {
            Error::Input { source, .. } => Some(source),
            Error::Postgres { .. } => None,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
