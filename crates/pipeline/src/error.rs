//! The batch runner's error type: every variant names the file (and line where known).

use std::path::PathBuf;

/// What can be wrong with a project.
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
    /// A problem with how the run was asked for (e.g. a selection naming no model).
    #[error("{0}")]
    Usage(String),
    /// Several problems, each on its own line (validation reports all it finds).
    #[error("{} problems:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Many(Vec<Error>),
    /// The project as written is wrong, or one of its sources cannot be read.
    #[error(transparent)]
    Project(#[from] spillway_project::Error),
    /// Setting up a query session, reading a source or writing an output failed.
    #[error(transparent)]
    Engine(#[from] spillway_engine::Error),
    /// A run directory, hand-off or temp-space problem.
    #[error(transparent)]
    Tiers(#[from] spillway_tiers::Error),
    /// A check model returned rows.
    #[error("check {model} failed: it returned {rows} row(s), a check passes with none; first rows:\n{sample}")]
    Check {
        /// The check.
        model: String,
        /// Rows returned.
        rows: u64,
        /// The first rows, as a table.
        sample: String,
    },
    /// The budget could not be lent.
    #[error(transparent)]
    Governor(#[from] spillway_governor::Error),
    /// Loading into or reading from PostgreSQL failed (names the sink or source and table).
    #[error(transparent)]
    Postgres(#[from] spillway_postgres::Error),
    /// An isolated model's child process was killed by the kernel's OOM killer at its cgroup's
    /// limit.
    #[error(
        "oom-killed: the child process (pid {pid}) of {model} passed its memory limit of {} ({confinement}; peak {}); its temp files are removed",
        spillway_governor::fmt_bytes(*limit),
        peak.map_or("unknown".to_string(), spillway_governor::fmt_bytes)
    )]
    OomKilled {
        /// The model.
        model: String,
        /// The child's pid.
        pid: u32,
        /// `cgroup v1` or `cgroup v2`.
        confinement: String,
        /// Its limit, bytes.
        limit: u64,
        /// The most its cgroup held, bytes.
        peak: Option<u64>,
    },
    /// An isolated model's child process failed (its own error, or how it died).
    #[error("in its child process (pid {pid}): {message}")]
    Child {
        /// The child's pid.
        pid: u32,
        /// What it reported, or how it died and the end of its stderr.
        message: String,
        /// Whether a memory reservation was refused (the runner escalates as in process).
        resources_exhausted: bool,
    },
    /// Starting or talking to an isolated model's child failed.
    #[error(transparent)]
    Isolate(#[from] spillway_isolate::Error),
    /// The Ballista cluster is down, or a session on it could not be set up.
    #[error(transparent)]
    Cluster(#[from] spillway_cluster::Error),
    /// Publishing a model's sinks stopped partway: what was and was not published.
    #[error(
        "publishing {model}'s sinks stopped: published {}; not published {}: {cause}",
        if published.is_empty() { "none".to_string() } else { published.join(", ") },
        not_published.join(", ")
    )]
    Publish {
        /// The model.
        model: String,
        /// Sinks published before the failure.
        published: Vec<String>,
        /// Sinks not published (the failed one first).
        not_published: Vec<String>,
        /// What failed.
        cause: Box<Error>,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn at(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        Error::At { path: path.into(), line, message: message.into() }
    }
}

impl Error {
    /// Whether a memory reservation was refused (DataFusion's `ResourcesExhausted`): what a
    /// retry with a bigger lease or a disk hand-off can fix.
    pub fn is_resources_exhausted(&self) -> bool {
        match self {
            Error::Engine(e) | Error::Project(spillway_project::Error::Engine(e)) => e.is_resources_exhausted(),
            Error::Tiers(spillway_tiers::Error::DataFusion(e)) => spillway_engine::is_resources_exhausted(e),
            Error::Postgres(e) | Error::Project(spillway_project::Error::Postgres(e)) => {
                e.input_error().is_some_and(spillway_engine::is_resources_exhausted)
            }
            Error::Child { resources_exhausted, .. } => *resources_exhausted,
            _ => false,
        }
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

/// Result with the pipeline's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
