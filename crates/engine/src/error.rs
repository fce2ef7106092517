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
    /// An operator's spill file would have passed the process's temp-space quota.
    #[error("spill files passed the temp-space quota: {0}")]
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
        // An operator's spill file refused by the process's temp-space quota: the quota's own
        // error travels inside DataFusion's (as an I/O error) and is found by type.
        if let Some(q) = quota_error(&e) {
            return Error::SpillQuota(q.to_string());
        }
        Error::DataFusion(e)
    }
}

/// Every error in `e`'s chain: `e`, its sources, and the errors I/O errors carry.
fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut next = Some(e);
    std::iter::from_fn(move || {
        let cur = next?;
        let inner = cur
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        next = inner.or_else(|| cur.source());
        Some(cur)
    })
}

/// The temp-space quota error inside `e`, if a quota refusal caused it.
pub fn quota_error(e: &datafusion::error::DataFusionError) -> Option<&spillway_tiers::Error> {
    chain(e)
        .find_map(|c| c.downcast_ref::<spillway_tiers::Error>())
        .filter(|t| matches!(t, spillway_tiers::Error::QuotaExceeded { .. }))
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

/// Whether `e` is, or wraps, `ResourcesExhausted` (found by type along its chain, also through
/// Arrow errors and shared errors; never by message text).
pub fn is_resources_exhausted(e: &datafusion::error::DataFusionError) -> bool {
    use datafusion::error::DataFusionError as E;
    matches!(e.find_root(), E::ResourcesExhausted(_))
        || chain(e).any(|c| matches!(c.downcast_ref::<E>().map(|d| d.find_root()), Some(E::ResourcesExhausted(_))))
}
