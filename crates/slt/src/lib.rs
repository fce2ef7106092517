//! DataFusion's own SQL test suite, run through a spillway session.
//!
//! The crates.io package `datafusion-sqllogictest` 55.2.0 ships 504 `.slt` files (queries with
//! their expected answers). This crate runs them without building that package (it would bring
//! `datafusion-spark`, `datafusion-substrait` and DataFusion's `avro` feature into our build): a
//! manifest in `suite/` that is never built is `cargo fetch`ed, and the files are read from cargo's
//! registry sources, then driven by the `sqllogictest` runner crate against either
//!
//! - [`Engine::Stock`]: a DataFusion session configured as DataFusion's own runner configures it
//!   (4 partitions, unbounded pool), or
//! - [`Engine::Spillway`]: a spillway session inside a lease of a given size: the lease pool,
//!   the grace hash join, spillway's sorts, sorted aggregates and window guards, and the SQL
//!   guard, exactly as `spillway sql` and the pipeline build it.
//!
//! A file counts for spillway when it passes on stock DataFusion; it must then pass on spillway.
//! What is left out, and why, is in [`Suite::files`] and [`skipped_record`]; the full run and the
//! counts are in docs/sqllogictest.md.
#![warn(missing_docs)]

mod normalize;

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::{common::collect, execute_stream};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::TryStreamExt;
use spillway_engine::session::SessionOptions;
use spillway_governor::{Governor, LeaseRequest, PoolOptions};
use spillway_tiers::{DiskQuota, QuotaTempFiles};
use sqllogictest::{ColumnType, DBOutput, Record};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The package whose `test_files/` this crate runs.
pub const PACKAGE: &str = "datafusion-sqllogictest-55.2.0";

/// Partitions per plan: DataFusion's runner hard-codes 4 so that plans are deterministic.
const PARTITIONS: usize = 4;

/// Files DataFusion's runner sets up in Rust before running them (tables, UDFs, type planners,
/// features: `TestContext::try_new_for_test_file` in the package): they cannot pass without that
/// harness, on either engine.
const NEEDS_HARNESS: &[&str] = &[
    "aggregate.slt",
    "arrow_field.slt",
    "async_udf.slt",
    "avro.slt",
    "cast_extension_type_metadata.slt",
    "cte.slt",
    "dictionary_struct.slt",
    "dynamic_file.slt",
    "encrypted_parquet.slt",
    "information_schema_columns.slt",
    "information_schema_table_types.slt",
    "joins.slt",
    "map.slt",
    "metadata.slt",
    "range_partitioning.slt",
    "union_function.slt",
];

/// What can go wrong running the suite. Its `Display` matches DataFusion's runner (`DataFusion
/// error: ...`), because `.slt` files match expected errors against that text.
#[derive(Debug, thiserror::Error)]
pub enum SltError {
    /// DataFusion planning or execution failed.
    #[error("DataFusion error: {}", .0.strip_backtrace())]
    DataFusion(DataFusionError),
    /// Arrow failed (formatting a value).
    #[error("Arrow error: {0}")]
    Arrow(#[from] ArrowError),
    /// spillway's SQL guard refused a statement by design (`COPY ... TO`, `SET` of a setting
    /// spillway sizes from the lease).
    #[error("refused by spillway: {0}")]
    Refused(String),
    /// spillway failed a statement outside DataFusion (the lease, the temp-space quota).
    #[error("spillway error: {0}")]
    Spillway(String),
    /// A file or folder could not be read, copied or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The package could not be found or fetched.
    #[error("the sqllogictest files could not be fetched: {0}")]
    Fetch(String),
    /// An `.slt` file could not be parsed.
    #[error("{}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
}

impl From<DataFusionError> for SltError {
    fn from(e: DataFusionError) -> Self {
        Self::DataFusion(e)
    }
}

impl From<spillway_engine::Error> for SltError {
    fn from(e: spillway_engine::Error) -> Self {
        match e {
            spillway_engine::Error::DataFusion(e) => Self::DataFusion(e),
            spillway_engine::Error::Arrow(e) => Self::Arrow(e),
            spillway_engine::Error::Forbidden(why) => Self::Refused(why),
            other => Self::Spillway(other.to_string()),
        }
    }
}

/// This crate's result type.
pub type Result<T, E = SltError> = std::result::Result<T, E>;

/// Column types as DataFusion's runner reports them (the letters after `query`).
#[derive(Debug, PartialEq, Eq, Clone)]
#[allow(missing_docs)]
pub enum DFColumnType {
    Boolean,
    DateTime,
    Integer,
    Float,
    Text,
    Timestamp,
    Another,
}

impl ColumnType for DFColumnType {
    fn from_char(value: char) -> Option<Self> {
        Some(match value {
            'B' => Self::Boolean,
            'D' => Self::DateTime,
            'I' => Self::Integer,
            'P' => Self::Timestamp,
            'R' => Self::Float,
            'T' => Self::Text,
            _ => Self::Another,
        })
    }

    fn to_char(&self) -> char {
        match self {
            Self::Boolean => 'B',
            Self::DateTime => 'D',
            Self::Integer => 'I',
            Self::Timestamp => 'P',
            Self::Float => 'R',
            Self::Text => 'T',
            Self::Another => '?',
        }
    }
}

/// Which engine runs a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Stock DataFusion, configured as DataFusion's own runner configures it.
    Stock,
    /// A spillway session inside a lease of `lease` bytes.
    Spillway {
        /// The lease's size.
        lease: u64,
    },
}

/// How one file went on one engine.
#[derive(Debug, Clone, Default)]
pub struct FileOutcome {
    /// Records run (statements and queries).
    pub records: usize,
    /// Records left out for both engines ([`skipped_record`]).
    pub skipped: usize,
    /// The failed records' messages (at most [`MAX_MESSAGES`] kept), and how many failed.
    pub failures: Vec<String>,
    /// How many records failed.
    pub failed: usize,
    /// Of those, how many spillway's SQL guard refused by design (the records after them may
    /// fail too: a `COPY` that did not write its file, a `SET` that did not change a setting).
    pub refused: usize,
    /// Wall time of the file.
    pub elapsed: Duration,
}

/// Failure messages kept per file.
pub const MAX_MESSAGES: usize = 3;

impl FileOutcome {
    /// Whether every record passed.
    pub fn passed(&self) -> bool {
        self.failed == 0
    }
}

/// A file not run, and why.
pub type LeftOut = (PathBuf, &'static str);

/// The package's files, copied to a work folder (the files write to `test_files/scratch/`, and
/// cargo's registry is not ours to write to).
#[derive(Debug)]
pub struct Suite {
    root: PathBuf,
}

impl Suite {
    /// Finds the package in cargo's registry (fetching it with `cargo fetch` on this crate's
    /// `suite/Cargo.toml` when it is not there) and copies its `test_files/` and `data/` into
    /// `work`.
    pub fn open(work: &Path) -> Result<Self> {
        let package = match find_package() {
            Some(p) => p,
            None => {
                fetch()?;
                find_package().ok_or_else(|| {
                    SltError::Fetch(format!("{PACKAGE} is not in cargo's registry after `cargo fetch`"))
                })?
            }
        };
        for dir in ["test_files", "data"] {
            copy_dir(&package.join(dir), &work.join(dir))?;
        }
        Ok(Self { root: work.to_path_buf() })
    }

    /// The folder the files' relative paths (`test_files/scratch/...`, `data/...`) resolve
    /// from: the process must run there (`std::env::set_current_dir`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every `.slt` file under `test_files/` (relative to it, sorted), and those left out with the
    /// reason: files that reach outside the package (`../`, DataFusion's `testing/` submodule,
    /// `/tmp`), files DataFusion's runner prepares in Rust ([`NEEDS_HARNESS`]), and the folders
    /// for other engines or harnesses (`spark/`, `pg_compat/`, `tpch`, `sqlite`).
    pub fn files(&self) -> Result<(Vec<PathBuf>, Vec<LeftOut>)> {
        let base = self.root.join("test_files");
        let mut all = Vec::new();
        walk(&base, &mut all)?;
        all.sort();
        let (mut run, mut left_out) = (Vec::new(), Vec::new());
        for path in all {
            let rel = path.strip_prefix(&base).unwrap_or(&path).to_path_buf();
            let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let text = std::fs::read_to_string(&path).map_err(|source| SltError::Io { path: path.clone(), source })?;
            let first = rel.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
            let why = if ["spark", "pg_compat", "tpch", "sqlite"].iter().any(|p| first.starts_with(p)) {
                Some("another engine's or harness's folder")
            } else if NEEDS_HARNESS.contains(&name) {
                Some("prepared in Rust by DataFusion's runner")
            } else if text.contains("../") || text.contains("testing/data") || text.contains("/tmp/") {
                Some("reads files outside the package")
            } else {
                None
            };
            match why {
                Some(why) => left_out.push((rel, why)),
                None => run.push(rel),
            }
        }
        Ok((run, left_out))
    }

    /// Runs `file` (relative to `test_files/`) on `engine`, in a fresh session.
    pub async fn run(&self, file: &Path, engine: Engine, governor: &Governor) -> Result<FileOutcome> {
        let path = self.root.join("test_files").join(file);
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("file");
        let scratch = self.root.join("test_files").join("scratch").join(stem);
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch).map_err(|source| SltError::Io { path: scratch.clone(), source })?;
        }
        std::fs::create_dir_all(&scratch).map_err(|source| SltError::Io { path: scratch.clone(), source })?;
        let records = sqllogictest::parse_file::<DFColumnType>(&path)
            .map_err(|e| SltError::Parse { path: path.clone(), reason: e.to_string() })?;
        let started = std::time::Instant::now();
        let ctx = self.session(file, engine, governor).await?;
        let spillway = matches!(engine, Engine::Spillway { .. });
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&refused);
        let mut runner = sqllogictest::Runner::new(move || {
            let (ctx, refused) = (ctx.clone(), Arc::clone(&counter));
            async move { Ok(Db { ctx, spillway, refused }) }
        });
        runner.add_label("Datafusion");
        runner.with_column_validator(sqllogictest::strict_column_validator);
        runner.with_normalizer(value_normalizer);
        runner.with_validator(df_value_validator);
        let mut outcome = FileOutcome::default();
        for record in records {
            if let Record::Halt { .. } = record {
                break;
            }
            if !matches!(record, Record::Statement { .. } | Record::Query { .. }) {
                // Control records (`control`, `hash-threshold`, includes, comments) configure
                // the runner.
                let _ = runner.run_async(record).await;
                continue;
            }
            if skipped_record(&record) {
                outcome.skipped += 1;
                continue;
            }
            outcome.records += 1;
            if let Err(e) = runner.run_async(record).await {
                outcome.failed += 1;
                if outcome.failures.len() < MAX_MESSAGES {
                    outcome.failures.push(e.to_string());
                }
            }
        }
        runner.shutdown_async().await;
        outcome.refused = refused.load(Ordering::Relaxed);
        outcome.elapsed = started.elapsed();
        Ok(outcome)
    }

    async fn session(&self, file: &Path, engine: Engine, governor: &Governor) -> Result<SessionContext> {
        match engine {
            Engine::Stock => {
                let config = SessionConfig::new().with_target_partitions(PARTITIONS);
                let state = SessionStateBuilder::new()
                    .with_config(config)
                    .with_runtime_env(Arc::new(RuntimeEnv::default()))
                    .with_default_features()
                    .build();
                Ok(SessionContext::new_with_state(state))
            }
            Engine::Spillway { lease } => {
                let name = file.display().to_string();
                let lease =
                    governor.lease(LeaseRequest::bytes(&name, lease)).await.map_err(spillway_engine::Error::from)?;
                let pool = lease.into_pool(PoolOptions { step: Some(name), ..PoolOptions::default() });
                let spill = self.root.join("spill");
                std::fs::create_dir_all(&spill).map_err(|source| SltError::Io { path: spill.clone(), source })?;
                let temp = QuotaTempFiles::new(spill, DiskQuota::new(8 << 30));
                let ctx = spillway_engine::session::context(pool, &SessionOptions::new(PARTITIONS, temp))?;
                // spillway's sessions turn the information schema on (for `\d` and friends); the
                // files expect DataFusion's default, and turn it on where they need it.
                ctx.state_ref().write().config_mut().options_mut().catalog.information_schema = false;
                Ok(ctx)
            }
        }
    }
}

/// Records left out on both engines:
/// - `EXPLAIN`: spillway's plans name its own operators (`GraceHashJoinExec`,
///   `SpillingSortExec`, ...) by design; answers are compared, plans are not;
/// - statements that set `datafusion.runtime.*` (a memory limit, a spill folder): spillway's
///   guard refuses them by design, since they would replace the lease's pool.
pub fn skipped_record(record: &Record<DFColumnType>) -> bool {
    let sql = match record {
        Record::Statement { sql, .. } | Record::Query { sql, .. } => sql,
        _ => return false,
    };
    let head = sql.trim_start().get(..7).unwrap_or("").to_ascii_uppercase();
    head == "EXPLAIN" || sql.to_ascii_lowercase().contains("datafusion.runtime.")
}

struct Db {
    ctx: SessionContext,
    spillway: bool,
    /// Statements spillway's guard refused, for [`FileOutcome::refused`].
    refused: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = SltError;
    type ColumnType = DFColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DFColumnType>> {
        let (schema, batches) = if self.spillway {
            let query = match spillway_engine::query::run_sql(&self.ctx, sql).await {
                Ok(query) => query,
                Err(e) => {
                    let e = SltError::from(e);
                    if matches!(e, SltError::Refused(_)) {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            };
            let schema = query.plan.schema();
            (schema, query.stream.try_collect::<Vec<_>>().await?)
        } else {
            let df = self.ctx.sql(sql).await?;
            let task = Arc::new(df.task_ctx());
            let plan = df.create_physical_plan().await?;
            let schema = plan.schema();
            (schema, collect(execute_stream(plan, task)?).await?)
        };
        let types = normalize::convert_schema_to_types(schema.fields());
        let rows = normalize::convert_batches(&schema, batches, false)?;
        if rows.is_empty() && types.is_empty() {
            Ok(DBOutput::StatementComplete(0))
        } else {
            Ok(DBOutput::Rows { types, rows })
        }
    }

    fn engine_name(&self) -> &str {
        "DataFusion"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }

    async fn shutdown(&mut self) {}
}

/// DataFusion's runner's value normaliser: trailing blanks do not count.
#[allow(clippy::ptr_arg)] // the signature sqllogictest's `Normalizer` requires
fn value_normalizer(s: &String) -> String {
    s.trim_end().to_string()
}

/// DataFusion's runner's validator: rows joined by blanks equal the expected lines, with
/// `<slt:ignore>` matching anything.
fn df_value_validator(normalizer: sqllogictest::Normalizer, actual: &[Vec<String>], expected: &[String]) -> bool {
    const IGNORE: &str = "<slt:ignore>";
    let expected: Vec<String> = expected.iter().map(normalizer).collect();
    let actual: Vec<String> = actual.iter().map(|row| row.join(" ").trim_end().to_string()).collect();
    if expected.iter().any(|l| l.contains(IGNORE)) {
        let (expected, actual) = (expected.join("\n"), actual.join("\n"));
        let mut pos = 0;
        for (i, fragment) in expected.split(IGNORE).enumerate() {
            if fragment.is_empty() {
                continue;
            }
            match actual[pos..].find(fragment) {
                Some(idx) if i > 0 || idx == 0 => pos += idx + fragment.len(),
                _ => return false,
            }
        }
        return true;
    }
    actual == expected
}

/// `cargo`'s home (`CARGO_HOME`, or `~/.cargo`).
fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

fn find_package() -> Option<PathBuf> {
    let src = cargo_home()?.join("registry").join("src");
    std::fs::read_dir(src)
        .ok()?
        .flatten()
        .map(|index| index.path().join(PACKAGE))
        .find(|p| p.join("test_files").is_dir())
}

/// `cargo fetch` of `suite/Cargo.toml`: downloads and unpacks the package (and, as cargo does,
/// its dependencies' sources) without building anything.
fn fetch() -> Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("suite").join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .arg("fetch")
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .map_err(|e| SltError::Fetch(format!("running cargo: {e}")))?;
    if !out.status.success() {
        return Err(SltError::Fetch(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| SltError::Io { path: dir.to_path_buf(), source })?;
    for entry in entries {
        let path = entry.map_err(|source| SltError::Io { path: dir.to_path_buf(), source })?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|source| SltError::Io { path: to.to_path_buf(), source })?;
    let entries = std::fs::read_dir(from).map_err(|source| SltError::Io { path: from.to_path_buf(), source })?;
    for entry in entries {
        let path = entry.map_err(|source| SltError::Io { path: from.to_path_buf(), source })?.path();
        let target = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).map_err(|source| SltError::Io { path: path.clone(), source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_and_runtime_settings_are_left_out() {
        let records = sqllogictest::parse::<DFColumnType>(
            "statement ok\nSET datafusion.runtime.memory_limit = '1M'\n\nquery TT\nexplain select 1\n----\n\nquery I\nselect 1\n----\n1\n",
        )
        .expect("parses");
        let skipped: Vec<bool> = records
            .iter()
            .filter(|r| matches!(r, Record::Statement { .. } | Record::Query { .. }))
            .map(skipped_record)
            .collect();
        assert_eq!(skipped, vec![true, true, false]);
    }

    #[test]
    fn the_validator_matches_datafusions() {
        let actual = vec![vec!["foo bar baz".to_string()]];
        assert!(!df_value_validator(value_normalizer, &actual, &["bar <slt:ignore>".to_string()]));
        assert!(df_value_validator(value_normalizer, &actual, &["foo <slt:ignore>".to_string()]));
        assert!(df_value_validator(value_normalizer, &actual, &["foo bar baz  ".to_string()]));
    }
}
